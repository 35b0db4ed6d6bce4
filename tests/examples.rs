//! The configurations shipped in `examples/` stay valid: `cdc check` accepts each file (it may
//! then report that no database or search node answers at the example's address, exit 1, but
//! never a configuration error, exit 2).

mod support;

use support::{stderr_of, stdout_of};

#[test]
fn every_example_config_is_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let names: Vec<_> = files.iter().map(|p| p.file_name().unwrap().to_str().unwrap()).collect();
    for expected in [
        "cdc.compose.toml",
        "search.toml",
        "stdout.toml",
        "stream.toml",
        "webhook.toml",
    ] {
        assert!(names.contains(&expected), "examples/{expected} is missing: {names:?}");
    }
    // The variables the examples' comments tell the user to export.
    let env = [
        ("CDC_PG_PASSWORD", "secret"),
        ("CDC_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
        ("FEED_TOKEN", "0123456789abcdef"),
    ];
    for file in &files {
        let path = file.to_str().unwrap();
        let out = support::cdc_with_env(&["--config", path, "check"], &env);
        let (stdout, stderr) = (stdout_of(&out), stderr_of(&out));
        assert_ne!(
            out.status.code(),
            Some(2),
            "{path} is not a valid configuration:\n{stderr}"
        );
        assert!(
            stdout.contains(&format!("ok: {path} is valid")),
            "{path}: no \"is valid\" line\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
}

/// docker-compose.yml and the Dockerfile, checked by reading: no Docker engine runs where these
/// tests run, but `docker compose config` parses and resolves the file without one. The client
/// comes from scripts/compose.sh (CDC_TEST_COMPOSE, set by scripts/test.sh), or `docker compose`.
#[test]
fn docker_compose_gives_postgres_opensearch_cdc_and_a_receiver() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let compose = std::env::var("CDC_TEST_COMPOSE").unwrap_or_else(|_| "docker compose".to_string());
    let mut words = compose.split_whitespace();
    let mut cmd = std::process::Command::new(words.next().unwrap());
    cmd.args(words)
        .args(["config", "--format", "json"])
        .current_dir(root)
        .env_remove("CDC_PG_PORT")
        .env_remove("CDC_SEARCH_PORT");
    let out = match cmd.output() {
        Ok(out) if out.status.success() => out,
        Ok(out) if std::env::var_os("CDC_TEST_COMPOSE").is_some() => {
            panic!("`{compose} config` refused docker-compose.yml:\n{}", stderr_of(&out))
        }
        other => {
            eprintln!(
                "SKIPPED: no compose client (`{compose}`: {}); scripts/test.sh builds one with scripts/compose.sh",
                match other {
                    Ok(out) => stderr_of(&out),
                    Err(e) => e.to_string(),
                }
            );
            return;
        }
    };
    let config: serde_json::Value = serde_json::from_slice(&out.stdout).expect("compose config prints JSON");
    let services = &config["services"];
    let command = |name: &str| services[name]["command"].to_string();

    assert!(
        command("postgres").contains("wal_level=logical"),
        "{}",
        services["postgres"]
    );
    let init = services["postgres"]["volumes"].to_string();
    assert!(
        init.contains("examples/init.sql") && init.contains("docker-entrypoint-initdb.d"),
        "{init}"
    );

    let search = &services["opensearch"]["environment"];
    assert_eq!(search["discovery.type"], "single-node", "{search}");
    assert_eq!(search["DISABLE_SECURITY_PLUGIN"], "true", "{search}");

    for name in ["cdc-setup", "cdc"] {
        let s = &services[name];
        assert!(
            s["build"]["context"]
                .as_str()
                .is_some_and(|c| c == root.to_str().unwrap()),
            "{name}: {s}"
        );
        assert!(
            s["volumes"].to_string().contains("examples/cdc.compose.toml"),
            "{name}: {s}"
        );
        assert!(
            s["environment"]["CDC_WEBHOOK_SECRET"]
                .as_str()
                .unwrap()
                .starts_with("whsec_"),
            "{s}"
        );
    }
    assert_eq!(command("cdc-setup"), r#"["cdc","setup"]"#);
    assert_eq!(command("cdc"), r#"["cdc","run"]"#);
    let depends = &services["cdc"]["depends_on"];
    assert_eq!(
        depends["cdc-setup"]["condition"], "service_completed_successfully",
        "{depends}"
    );
    assert_eq!(depends["opensearch"]["condition"], "service_healthy", "{depends}");
    assert_eq!(depends["receiver"]["condition"], "service_started", "{depends}");
    assert_eq!(
        services["cdc"]["ports"][0]["target"], 9187,
        "the admin server is published"
    );

    assert!(
        services["receiver"]["volumes"]
            .to_string()
            .contains("examples/receiver.py"),
        "{}",
        services["receiver"]
    );

    // What the cdc container's config points at is what compose runs.
    let toml = std::fs::read_to_string(root.join("examples/cdc.compose.toml")).unwrap();
    for address in [
        "@postgres:5432/",
        "http://opensearch:9200",
        "http://receiver:8080/",
        "0.0.0.0:9187",
    ] {
        assert!(
            toml.contains(address),
            "examples/cdc.compose.toml does not use {address}"
        );
    }
    // A multi-stage Dockerfile: the runtime image carries the binary, not the toolchain.
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let stages = dockerfile.lines().filter(|l| l.starts_with("FROM ")).count();
    assert!(stages >= 2, "the Dockerfile has {stages} stage(s)");
    assert!(
        dockerfile.contains("COPY --from=build /src/target/release/cdc"),
        "{dockerfile}"
    );
}
