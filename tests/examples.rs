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
