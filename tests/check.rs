//! `cdc check` on the far ends of the sinks: a webhook endpoint that does not answer (and, with
//! `--send-test`, one that refuses the signed test event), a settings file the search node
//! refuses, and cdc's state tables missing. Real PostgreSQL, a real OpenSearch node, real HTTP.

mod support;

use support::receiver::{Answer, Receiver};
use support::{new_database, stdout_of, write_config, TestDb};

/// A database with one mapped table, set up when `setup` is true, and a config with `sinks`.
async fn configured(prefix: &str, sinks: &str, extra_mapping: &str, setup: bool) -> (TestDb, support::TempDir, String) {
    let db = new_database(prefix).await;
    db.exec("CREATE TABLE items (id int PRIMARY KEY, title text);").await;
    let dir = support::temp_dir();
    let names: Vec<String> = sinks
        .lines()
        .filter_map(|l| l.strip_prefix("[sinks.").and_then(|l| l.strip_suffix(']')))
        .map(|n| format!("\"{n}\""))
        .collect();
    let toml = format!(
        "[source]\nurl = \"{}\"\nslot = \"{name}\"\npublication = \"{name}\"\n\n{sinks}\n\n[[tables]]\ntable = \"items\"\nsinks = [{}]\nindex = \"{name}_items\"\n{extra_mapping}\n",
        db.url,
        names.join(", "),
        name = db.name,
    );
    let path = write_config(dir.path(), &toml).to_str().unwrap().to_string();
    if setup {
        let out = support::cdc(&["--config", &path, "setup"]);
        assert!(out.status.success(), "{}", support::stderr_of(&out));
    }
    (db, dir, path)
}

fn lines_starting(text: &str, prefix: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn check_says_whether_a_webhook_endpoint_answers_and_takes_a_test_event() {
    let receiver = Receiver::start();
    let sinks = format!("[sinks.hook]\ntype = \"webhook\"\nurl = \"{}\"", receiver.url());
    let (_db, _dir, path) = configured("check_hook", &sinks, "", true).await;

    let up = support::cdc(&["--config", &path, "check"]);
    let text = stdout_of(&up);
    assert_eq!(up.status.code(), Some(0), "{text}");
    assert!(text.contains("ok: sink hook: ") && text.contains("answers"), "{text}");
    let probes = receiver.requests();
    assert!(
        !probes.is_empty() && probes.iter().all(|r| r.body.is_empty()),
        "a plain check asks without sending an event"
    );

    receiver.answer(Answer::Status(500, None));
    let refused = support::cdc(&["--config", &path, "check", "--send-test"]);
    let text = stdout_of(&refused);
    assert_eq!(refused.status.code(), Some(1), "{text}");
    let problems = lines_starting(&text, "problem: ");
    assert!(
        problems.len() == 1 && problems[0].contains("did not take the test event: HTTP 500"),
        "{text}"
    );

    receiver.answer(Answer::Ok);
    let took = support::cdc(&["--config", &path, "check", "--send-test"]);
    assert_eq!(took.status.code(), Some(0), "{}", stdout_of(&took));
    let events: Vec<_> = receiver
        .delivered()
        .iter()
        .filter(|r| !r.body.is_empty())
        .flat_map(|r| r.events())
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["op"], "test");

    // An endpoint that moved: every delivery would fail (cdc follows no redirect).
    receiver.answer(Answer::Redirect(301, "/moved".into()));
    let moved = support::cdc(&["--config", &path, "check"]);
    let text = stdout_of(&moved);
    assert_eq!(moved.status.code(), Some(1), "{text}");
    assert!(
        lines_starting(&text, "problem: ")
            .iter()
            .any(|l| l.contains("sink hook: ") && l.contains("redirect to") && l.contains("/moved")),
        "{text}"
    );

    receiver.down();
    let down = support::cdc(&["--config", &path, "check"]);
    let text = stdout_of(&down);
    assert_eq!(down.status.code(), Some(1), "{text}");
    assert!(
        lines_starting(&text, "problem: ")
            .iter()
            .any(|l| l.contains("sink hook: cannot reach") && l.contains("is the receiver running")),
        "{text}"
    );
}

#[tokio::test]
async fn check_reports_missing_state_tables_until_setup_creates_them() {
    let receiver = Receiver::start();
    let sinks = format!("[sinks.hook]\ntype = \"webhook\"\nurl = \"{}\"", receiver.url());
    let (db, dir, path) = configured("check_state", &sinks, "", false).await;
    let before = support::cdc(&["--config", &path, "check"]);
    let text = stdout_of(&before);
    assert!(
        !text.contains("problem: cdc's state"),
        "the role may create them, so only a warning: {text}"
    );
    assert!(
        lines_starting(&text, "warning: ")
            .iter()
            .any(|l| l.contains("cdc's state tables are missing")
                && l.contains("cdc.dead_letters")
                && l.contains("cdc setup")),
        "{text}"
    );
    // A role that may not create them cannot run: a problem.
    db.exec("CREATE ROLE no_create LOGIN REPLICATION; GRANT SELECT ON ALL TABLES IN SCHEMA public TO no_create;")
        .await;
    let url = db.url.replacen("postgres@", "no_create@", 1);
    let limited = std::fs::read_to_string(&path).unwrap().replace(&db.url, &url);
    std::fs::create_dir_all(dir.path().join("limited")).unwrap();
    let limited_path = write_config(&dir.path().join("limited"), &limited);
    let out = support::cdc(&["--config", limited_path.to_str().unwrap(), "check"]);
    let text = stdout_of(&out);
    assert!(
        lines_starting(&text, "problem: ")
            .iter()
            .any(|l| l.contains("cdc's state tables are missing") && l.contains("may not create them")),
        "{text}"
    );
    let setup = support::cdc(&["--config", &path, "setup"]);
    assert!(setup.status.success(), "{}", support::stderr_of(&setup));
    let after = support::cdc(&["--config", &path, "check"]);
    assert_eq!(after.status.code(), Some(0), "{}", stdout_of(&after));
    assert!(stdout_of(&after).contains("ok: cdc's state schema cdc is in place"));
    drop(db);
}

#[tokio::test]
async fn check_reports_a_settings_file_the_search_node_refuses() {
    let Some(node) = support::search_url() else {
        panic!("CDC_TEST_SEARCH_URL is not set: run the tests with scripts/test.sh (it starts the search node)");
    };
    let sinks = format!("[sinks.search]\ntype = \"elasticsearch\"\nurl = \"{node}\"");
    let dir = support::temp_dir();
    let good = dir.path().join("good.json");
    let bad = dir.path().join("bad.json");
    std::fs::write(&good, r#"{"mappings": {"properties": {"title": {"type": "text"}}}}"#).unwrap();
    // Valid JSON, but no such field type: only the node can tell.
    std::fs::write(&bad, r#"{"mappings": {"properties": {"title": {"type": "txet"}}}}"#).unwrap();

    let (_db, _d, path) = configured(
        "check_settings",
        &sinks,
        &format!("settings = {:?}", good.display().to_string()),
        true,
    )
    .await;
    let out = support::cdc(&["--config", &path, "check"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout_of(&out));

    let (_db, _d, path) = configured(
        "check_settings_bad",
        &sinks,
        &format!("settings = {:?}", bad.display().to_string()),
        true,
    )
    .await;
    let out = support::cdc(&["--config", &path, "check"]);
    let text = stdout_of(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let problems = lines_starting(&text, "problem: ");
    assert!(
        problems.len() == 1 && problems[0].contains("the node refuses the settings in") && problems[0].contains("txet"),
        "{text}"
    );
    // The throwaway indexes are gone.
    let listed = reqwest::get(format!("{node}/_cat/indices/cdc-check-*?format=json"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let indexes: serde_json::Value = serde_json::from_slice(&listed).unwrap();
    assert_eq!(indexes, serde_json::json!([]), "no throwaway index is left behind");
}
