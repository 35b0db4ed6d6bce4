//! The search sink against a real PostgreSQL and a real OpenSearch node (both started by
//! scripts/test.sh): after workloads, crashes, outages and refused documents, the index equals
//! the table under its mapping, compared document by document. Each test has its own database,
//! and its indexes are named after it, so tests share the node without seeing each other.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::search::{assert_index_equals_table, http, index_docs, node_url, versioned_docs};
use support::{new_database, write_config, CdcProcess, TestDb};

struct Setup {
    db: TestDb,
    config: String,
    dir: tempfile::TempDir,
}

/// A database with `ddl`, a config with one search sink (`sink_extra` lines appended to it) and
/// the `tables` mappings, and `cdc setup` done.
async fn setup(prefix: &str, ddl: &str, node: &str, sink_extra: &str, tables: &str, full: &[&str]) -> Setup {
    setup_with_settings(prefix, ddl, node, sink_extra, tables, full, None).await
}

/// [`setup`], with `settings.json` (index settings a mapping can name) written beside the config.
async fn setup_with_settings(
    prefix: &str,
    ddl: &str,
    node: &str,
    sink_extra: &str,
    tables: &str,
    full: &[&str],
    settings: Option<Value>,
) -> Setup {
    let db = new_database(prefix).await;
    db.exec(ddl).await;
    let dir = support::temp_dir();
    if let Some(settings) = settings {
        std::fs::write(dir.path().join("settings.json"), settings.to_string()).unwrap();
    }
    let config = config_text(&db, node, sink_extra, tables);
    let config = write_config(dir.path(), &config).to_str().unwrap().to_string();
    let mut args = vec!["--config", &config, "setup"];
    for table in full {
        args.extend(["--replica-identity-full", table]);
    }
    let out = support::cdc(&args);
    assert!(out.status.success(), "cdc setup: {}", support::stderr_of(&out));
    Setup { db, config, dir }
}

fn config_text(db: &TestDb, node: &str, sink_extra: &str, tables: &str) -> String {
    format!(
        "[source]\nurl = \"{}\"\nslot = \"{name}\"\npublication = \"{name}\"\n\n[sinks.search]\ntype = \"elasticsearch\"\nurl = \"{node}\"\nflush_interval = \"100ms\"\n{sink_extra}\n\n{tables}",
        db.url,
        name = db.name
    )
}

/// Plain logs (no colours), so tests can read fields like `stale=3`.
const LOG_ENV: &[(&str, &str)] = &[("RUST_LOG", "cdc=info"), ("NO_COLOR", "1")];

fn run(s: &Setup) -> CdcProcess {
    CdcProcess::start(&["--config", &s.config, "run"], LOG_ENV)
}

const EVENTS_DDL: &str = "CREATE TABLE events (id int PRIMARY KEY, name text, state text, views int DEFAULT 0, secret text, deleted_at int);";

fn events_mapping(index: &str) -> String {
    format!(
        "[[tables]]\ntable = \"events\"\nsinks = [\"search\"]\nindex = \"{index}\"\ncolumns = [\"id\", \"name\", \"state\", \"deleted_at\"]\nfilter = {{ state = \"published\", deleted_at = \"null\" }}\n"
    )
}

const EVENTS_EXPECTED: &str =
    "SELECT id::text, jsonb_build_object('id', id, 'name', name, 'state', state, 'deleted_at', deleted_at)::text \
     FROM events WHERE state = 'published' AND deleted_at IS NULL";

/// Inserts, updates of indexed and projected-out columns, filter moves both ways, deletes and
/// primary-key updates, in transactions of several sizes; `round` varies the rows touched.
async fn mixed_workload(db: &TestDb, round: i32, rows: i32) {
    let base = round * 100_000;
    db.exec(&format!(
        "INSERT INTO events (id, name, state, secret) \
         SELECT {base} + g, 'n' || g, CASE WHEN g % 3 = 0 THEN 'draft' ELSE 'published' END, 's' FROM generate_series(1, {rows}) g"
    ))
    .await;
    for step in 0..10 {
        db.exec(&format!(
            "BEGIN;
             UPDATE events SET name = name || '.{step}' WHERE id % 7 = {step} % 7 AND id > {base};
             UPDATE events SET views = views + 1 WHERE id % 5 = {step} % 5 AND id > {base};
             UPDATE events SET state = CASE state WHEN 'draft' THEN 'published' ELSE 'draft' END WHERE id % 11 = {step} AND id > {base};
             UPDATE events SET deleted_at = {step} WHERE id % 13 = {step} AND id > {base};
             COMMIT;"
        ))
        .await;
        db.exec(&format!("DELETE FROM events WHERE id % 17 = {step} AND id > {base}"))
            .await;
    }
    db.exec(&format!(
        "UPDATE events SET id = id + 50000 WHERE id % 19 = 0 AND id > {base} AND id < {base} + 50000"
    ))
    .await;
    for i in 1..=20 {
        db.exec(&format!(
            "UPDATE events SET name = 'single {i}' WHERE id = {base} + {i}"
        ))
        .await;
    }
}

#[tokio::test]
async fn after_a_mixed_workload_and_a_truncate_the_index_equals_the_table() {
    let node = node_url();
    let index = support::unique_name("mixed");
    let s = setup(
        "search_mixed",
        EVENTS_DDL,
        &node,
        "",
        &events_mapping(&index),
        &["public.events"],
    )
    .await;
    let mut cdc = run(&s);
    mixed_workload(&s.db, 0, 400).await;
    assert_index_equals_table(&node, &index, &s.db, EVENTS_EXPECTED, Duration::from_secs(60)).await;

    s.db.exec("TRUNCATE events").await;
    mixed_workload(&s.db, 1, 200).await;
    assert_index_equals_table(&node, &index, &s.db, EVENTS_EXPECTED, Duration::from_secs(60)).await;
    assert!(
        cdc.stderr_text()
            .contains("truncate: pointed the alias at a fresh empty index"),
        "the truncate is logged"
    );
    let (_, aliases) = http(reqwest::Method::GET, &format!("{node}/_alias/{index}"), None).await;
    assert_eq!(
        aliases.as_object().unwrap().len(),
        1,
        "the old index was dropped with the swap: {aliases}"
    );
    cdc.sigterm();
}

#[tokio::test]
async fn the_same_without_replica_identity_full() {
    let node = node_url();
    let index = support::unique_name("mixed_default_identity");
    let s = setup(
        "search_default_identity",
        EVENTS_DDL,
        &node,
        "",
        &events_mapping(&index),
        &[],
    )
    .await;
    let mut cdc = run(&s);
    mixed_workload(&s.db, 0, 300).await;
    assert_index_equals_table(&node, &index, &s.db, EVENTS_EXPECTED, Duration::from_secs(60)).await;
    cdc.sigterm();
}

#[tokio::test]
async fn kill_9_during_the_load_and_a_restart_leave_the_index_equal() {
    let node = node_url();
    let index = support::unique_name("kill9");
    // Small batches, so the kill lands between requests with many positions unconfirmed.
    let s = setup(
        "search_kill9",
        EVENTS_DDL,
        &node,
        "batch_max_docs = 50",
        &events_mapping(&index),
        &["public.events"],
    )
    .await;
    let mut first = run(&s);
    let load = {
        let url = s.db.url.clone();
        tokio::spawn(async move {
            let c = support::connect(&url).await;
            for t in 0..200 {
                c.batch_execute(&format!(
                    "INSERT INTO events (id, name, state) SELECT {t} * 10 + g, 'n', 'published' FROM generate_series(0, 9) g;
                     UPDATE events SET name = 'v{t}' WHERE id < {t} * 10 AND id % 10 = {t} % 10;"
                ))
                .await
                .unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    first.kill9();
    let mut second = run(&s);
    load.await.unwrap();
    assert_index_equals_table(&node, &index, &s.db, EVENTS_EXPECTED, Duration::from_secs(90)).await;
    second.sigterm();
}

#[tokio::test]
async fn replaying_everything_from_an_older_slot_never_overwrites_newer_documents() {
    let node = node_url();
    let index = support::unique_name("replay");
    let s = setup(
        "search_replay",
        EVENTS_DDL,
        &node,
        "",
        &events_mapping(&index),
        &["public.events"],
    )
    .await;
    // A second slot from before the changes: running cdc on it replays all of them, stale.
    let old_slot = format!("{}_old", s.db.name);
    s.db.exec(&format!(
        "SELECT pg_create_logical_replication_slot('{old_slot}', 'pgoutput')"
    ))
    .await;
    let mut cdc = run(&s);
    s.db.exec("INSERT INTO events (id, name, state) SELECT g, 'first', 'published' FROM generate_series(1, 100) g")
        .await;
    s.db.exec("UPDATE events SET name = 'second' WHERE id <= 50").await;
    s.db.exec("UPDATE events SET name = 'third' WHERE id <= 25").await;
    s.db.exec("DELETE FROM events WHERE id > 90").await;
    assert_index_equals_table(&node, &index, &s.db, EVENTS_EXPECTED, Duration::from_secs(60)).await;
    cdc.sigterm();

    // One document per request: nothing coalesces, so every older version reaches the node.
    let replay_config = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace(&format!("slot = \"{}\"", s.db.name), &format!("slot = \"{old_slot}\""))
        .replace("flush_interval", "batch_max_docs = 1\nflush_interval");
    let replay_path = s.dir.path().join("replay.toml");
    std::fs::write(&replay_path, replay_config).unwrap();
    let stop_at = support::format_lsn(s.db.current_wal_lsn().await);
    // The stream reports reaching a position once WAL goes past it.
    s.db.exec("CREATE TABLE unrelated (); DROP TABLE unrelated;").await;
    let mut replay = CdcProcess::start(
        &["--config", replay_path.to_str().unwrap(), "run", "--stop-at", &stop_at],
        LOG_ENV,
    );
    assert!(
        replay.wait_exit(Duration::from_secs(60)).success(),
        "{}",
        replay.stderr_text()
    );
    assert_index_equals_table(&node, &index, &s.db, EVENTS_EXPECTED, Duration::from_secs(5)).await;
    let log = replay.stderr_text();
    let stale: u64 = log
        .split("stale=")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // 100 inserts, 50 + 25 updates and 10 deletes replayed; all but the newest change of each
    // row are older than what the index holds.
    assert!(
        stale >= 75,
        "the replayed older writes were refused as stale, not applied (stale={stale}):\n{log}"
    );
}

#[tokio::test]
async fn a_twenty_second_node_outage_loses_nothing_and_cdc_keeps_running() {
    // This test stops its node, so it starts one of its own.
    let node_dir = support::temp_dir();
    let node = start_node(node_dir.path());
    let index = support::unique_name("outage");
    let s = setup(
        "search_outage",
        EVENTS_DDL,
        &node,
        "request_timeout = \"5s\"",
        &events_mapping(&index),
        &["public.events"],
    )
    .await;
    let mut cdc = run(&s);
    s.db.exec("INSERT INTO events (id, name, state) SELECT g, 'before', 'published' FROM generate_series(1, 200) g")
        .await;
    assert_index_equals_table(&node, &index, &s.db, EVENTS_EXPECTED, Duration::from_secs(60)).await;

    stop_node(node_dir.path());
    let outage = Instant::now();
    for round in 0..10 {
        s.db.exec(&format!(
            "INSERT INTO events (id, name, state) SELECT 1000 + {round} * 100 + g, 'during', 'published' FROM generate_series(1, 50) g;
             UPDATE events SET name = 'during {round}' WHERE id % 10 = {round};
             DELETE FROM events WHERE id = {round} * 3 + 1;"
        ))
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let lsn_during = s.db.current_wal_lsn().await;
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(outage.elapsed())).await;
    let confirmed = s.db.confirmed_flush_lsn(&s.db.name).await.unwrap();
    assert!(
        confirmed < lsn_during,
        "the slot's position is held while the node is down"
    );
    assert!(
        cdc.is_running(),
        "cdc keeps running while the node is down:\n{}",
        cdc.stderr_text()
    );

    let restarted = start_node(node_dir.path());
    assert_eq!(restarted, node, "the node comes back on the same address");
    s.db.exec("UPDATE events SET name = 'after' WHERE id <= 5").await;
    assert_index_equals_table(&node, &index, &s.db, EVENTS_EXPECTED, Duration::from_secs(90)).await;
    assert!(cdc.is_running(), "cdc never exited");
    let log = cdc.stderr_text();
    // Connection refused while down, maybe "not ready" while starting: a line per change of
    // state, not one per retry (there were dozens).
    let warnings = log.matches("retrying with backoff").count();
    assert!(
        (1..=4).contains(&warnings),
        "the outage is logged once per state, not per retry ({warnings} lines):\n{log}"
    );
    assert!(log.contains("recovered from"), "the recovery is logged:\n{log}");
    cdc.sigterm();
    stop_node(node_dir.path());
}

fn start_node(dir: &Path) -> String {
    let out = std::process::Command::new("bash")
        .arg(support::repo_root().join("scripts/search-node.sh"))
        .arg("start")
        .arg(dir)
        .output()
        .expect("running scripts/search-node.sh");
    assert!(
        out.status.success(),
        "search-node.sh start: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("export CDC_TEST_SEARCH_URL="))
        .expect("the script prints the URL")
        .to_string()
}

fn stop_node(dir: &Path) {
    let out = std::process::Command::new("bash")
        .arg(support::repo_root().join("scripts/search-node.sh"))
        .arg("stop")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "search-node.sh stop: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until cdc stored `n` dead letters in the test's database.
async fn wait_for_dead_letters(db: &TestDb, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored = db.query_one_i64("SELECT count(*) FROM cdc.dead_letters").await;
        if stored >= n {
            assert_eq!(stored, n, "exactly the refused documents are dead letters");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{stored} dead letters after 60 s, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_refused_document_becomes_a_dead_letter_and_replays_once_the_mapping_is_fixed() {
    let node = node_url();
    let index = support::unique_name("dead");
    // The index maps `n` as an integer: the row whose `n` is not a number is refused for itself.
    let settings = json!({"mappings": {"properties": {"n": {"type": "integer"}}}});
    let mapping = |extra: &str| {
        format!("[[tables]]\ntable = \"notes\"\nsinks = [\"search\"]\nindex = \"{index}\"\nsettings = \"settings.json\"\n{extra}")
    };
    let ddl = "CREATE TABLE notes (id int PRIMARY KEY, title text, n text);";
    let s = setup_with_settings("search_dead", ddl, &node, "", &mapping(""), &[], Some(settings)).await;
    let mut cdc = run(&s);

    s.db.exec("INSERT INTO notes SELECT g, 't' || g, CASE WHEN g = 7 THEN 'seven' ELSE g::text END FROM generate_series(1, 50) g").await;
    let after = s.db.current_wal_lsn().await;
    wait_for_dead_letters(&s.db, 1).await;
    s.db.wait_confirmed_flush(&s.db.name, after, Duration::from_secs(60))
        .await;
    let expected = "SELECT id::text, jsonb_build_object('id', id, 'title', title, 'n', n)::text FROM notes";
    assert_index_equals_table(
        &node,
        &index,
        &s.db,
        &format!("{expected} WHERE id <> 7"),
        Duration::from_secs(10),
    )
    .await;

    let listed = support::stdout_of(&support::cdc(&["--config", &s.config, "dead-letters", "list"]));
    assert_eq!(listed.lines().count(), 1, "one dead letter:\n{listed}");
    assert!(
        listed.contains(&index) && listed.contains("mapper_parsing_exception"),
        "{listed}"
    );

    let refused = support::cdc(&["--config", &s.config, "dead-letters", "replay", "--all"]);
    assert!(!refused.status.success(), "replaying before the fix is refused again");
    assert!(
        support::stdout_of(&support::cdc(&["--config", &s.config, "dead-letters", "list"])).contains("2 attempt(s)")
    );

    // The fix: cdc's mapping leaves the column out of the documents.
    std::fs::write(
        &s.config,
        config_text(&s.db, &node, "", &mapping("exclude_columns = [\"n\"]\n")),
    )
    .unwrap();
    let replayed = support::cdc(&[
        "--config",
        &s.config,
        "dead-letters",
        "replay",
        "--id",
        listed.split('\t').next().unwrap(),
    ]);
    assert!(
        replayed.status.success(),
        "{}{}",
        support::stdout_of(&replayed),
        support::stderr_of(&replayed)
    );
    let docs = index_docs(&node, &index).await;
    assert_eq!(docs.get("7"), Some(&json!({"id": 7, "title": "t7"})));
    assert_eq!(docs.len(), 50);
    assert_eq!(
        support::stdout_of(&support::cdc(&["--config", &s.config, "dead-letters", "list"])).trim(),
        "no dead letters"
    );
    cdc.sigterm();
}

#[tokio::test]
async fn a_dead_letter_of_a_row_deleted_since_replays_as_a_delete() {
    let node = node_url();
    let index = support::unique_name("dead_deleted");
    let settings = json!({"mappings": {"properties": {"n": {"type": "integer"}}}});
    let mapping = format!(
        "[[tables]]\ntable = \"notes\"\nsinks = [\"search\"]\nindex = \"{index}\"\nsettings = \"settings.json\"\n"
    );
    let ddl = "CREATE TABLE notes (id int PRIMARY KEY, n text);";
    let s = setup_with_settings("search_dead_deleted", ddl, &node, "", &mapping, &[], Some(settings)).await;
    let mut cdc = run(&s);
    s.db.exec("INSERT INTO notes VALUES (1, '1'), (2, 'two')").await;
    let after = s.db.current_wal_lsn().await;
    wait_for_dead_letters(&s.db, 1).await;
    s.db.wait_confirmed_flush(&s.db.name, after, Duration::from_secs(60))
        .await;
    cdc.sigterm();
    // The row goes while cdc is stopped; its delete is still in the slot, but replay comes first.
    s.db.exec("DELETE FROM notes WHERE id = 2").await;
    let replayed = support::cdc(&["--config", &s.config, "dead-letters", "replay", "--all"]);
    assert!(replayed.status.success(), "{}", support::stderr_of(&replayed));
    assert!(
        support::stdout_of(&replayed).contains("deleted"),
        "{}",
        support::stdout_of(&replayed)
    );
    let docs = index_docs(&node, &index).await;
    assert_eq!(docs.keys().collect::<Vec<_>>(), vec!["1"]);
}

/// About 100 kB of incompressible text, so Postgres stores it out of line (TOAST).
const BIG_TEXT: &str = "(SELECT string_agg(md5(random()::text || g), '') FROM generate_series(1, 3200) g)";

async fn toast_keeps_text(prefix: &str, full: &[&str]) {
    let node = node_url();
    let index = support::unique_name(prefix);
    let mapping = format!("[[tables]]\ntable = \"docs\"\nsinks = [\"search\"]\nindex = \"{index}\"\n");
    let s = setup(
        prefix,
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text);",
        &node,
        "",
        &mapping,
        full,
    )
    .await;
    let mut cdc = run(&s);
    s.db.exec(&format!(
        "INSERT INTO docs SELECT g, 't', {BIG_TEXT} FROM generate_series(1, 20) g"
    ))
    .await;
    let expected = "SELECT id::text, jsonb_build_object('id', id, 'title', title, 'body', body)::text FROM docs";
    assert_index_equals_table(&node, &index, &s.db, expected, Duration::from_secs(60)).await;
    for round in 0..5 {
        s.db.exec(&format!(
            "UPDATE docs SET title = 'round {round}' WHERE id % 5 = {round} OR id = 1"
        ))
        .await;
    }
    s.db.exec("BEGIN; UPDATE docs SET title = 'x' WHERE id = 2; DELETE FROM docs WHERE id = 3; UPDATE docs SET title = 'y' WHERE id = 4; COMMIT;").await;
    assert_index_equals_table(&node, &index, &s.db, expected, Duration::from_secs(60)).await;
    let docs = index_docs(&node, &index).await;
    assert!(
        docs.values()
            .all(|d| d["body"].as_str().is_some_and(|b| b.len() > 100_000)),
        "every document keeps its large text"
    );
    cdc.sigterm();
}

#[tokio::test]
async fn a_large_toasted_text_survives_updates_of_other_columns_with_replica_identity_full() {
    toast_keeps_text("search_toast_full", &["public.docs"]).await;
}

#[tokio::test]
async fn a_large_toasted_text_survives_updates_of_other_columns_without_replica_identity_full() {
    toast_keeps_text("search_toast_default", &[]).await;
}

#[tokio::test]
async fn composite_keys_custom_ids_and_projections_make_the_expected_documents() {
    let node = node_url();
    let by_key = support::unique_name("orders_by_key");
    let by_slug = support::unique_name("orders_by_slug");
    let mappings = format!(
        "[[tables]]\ntable = \"orders\"\nsinks = [\"search\"]\nindex = \"{by_key}\"\nexclude_columns = [\"secret\"]\n\n\
         [[tables]]\ntable = \"orders\"\nsinks = [\"search\"]\nindex = \"{by_slug}\"\nid = [\"slug\"]\ncolumns = [\"slug\", \"title\"]\n"
    );
    let ddl = "CREATE TABLE orders (tenant text, n int, slug text NOT NULL UNIQUE, title text, secret text, PRIMARY KEY (tenant, n));";
    let s = setup("search_ids", ddl, &node, "", &mappings, &["public.orders"]).await;
    let mut cdc = run(&s);
    s.db.exec("INSERT INTO orders SELECT CASE WHEN g % 2 = 0 THEN 'acme' ELSE 'globex' END, g, 'slug-' || g, 'title ' || g, 'pw' FROM generate_series(1, 40) g").await;
    s.db.exec("UPDATE orders SET title = 'renamed' WHERE n % 3 = 0").await;
    s.db.exec("UPDATE orders SET n = n + 100 WHERE n % 4 = 0").await;
    s.db.exec("UPDATE orders SET slug = slug || '-moved' WHERE n % 5 = 0")
        .await;
    s.db.exec("DELETE FROM orders WHERE n % 7 = 0").await;
    let by_key_sql = "SELECT tenant || ':' || n, jsonb_build_object('tenant', tenant, 'n', n, 'slug', slug, 'title', title)::text FROM orders";
    let by_slug_sql = "SELECT slug, jsonb_build_object('slug', slug, 'title', title)::text FROM orders";
    assert_index_equals_table(&node, &by_key, &s.db, by_key_sql, Duration::from_secs(60)).await;
    assert_index_equals_table(&node, &by_slug, &s.db, by_slug_sql, Duration::from_secs(60)).await;
    cdc.sigterm();
}

/// A projection without the key columns must not hide a key change (the document moves to its
/// new id), and an id the node would refuse (empty, over 512 bytes) must become a dead letter
/// instead of failing the bulk request of every other row with it.
#[tokio::test]
async fn hidden_key_changes_and_ids_the_node_refuses_leave_the_index_equal_to_the_table() {
    let node = node_url();
    let index = support::unique_name("titles");
    let mappings =
        format!("[[tables]]\ntable = \"titles\"\nsinks = [\"search\"]\nindex = \"{index}\"\ncolumns = [\"title\"]\n");
    let ddl = "CREATE TABLE titles (id text PRIMARY KEY, title text);";
    let s = setup("search_hidden_key", ddl, &node, "", &mappings, &[]).await;
    let mut cdc = run(&s);
    s.db.exec("INSERT INTO titles SELECT 'k' || g, 'title ' || g FROM generate_series(1, 30) g")
        .await;
    s.db.exec("INSERT INTO titles VALUES ('', 'empty'), (repeat('x', 600), 'long'), ('k31', 'same batch')")
        .await;
    s.db.exec("UPDATE titles SET id = id || '-moved' WHERE id IN ('k1', 'k2', 'k3')")
        .await;
    s.db.exec("UPDATE titles SET id = 'was-empty' WHERE id = ''").await;
    s.db.exec("DELETE FROM titles WHERE id IN (repeat('x', 600), 'k3-moved')")
        .await;
    s.db.exec("INSERT INTO titles VALUES ('k32', 'after')").await;
    let expected = "SELECT id, jsonb_build_object('title', title)::text FROM titles";
    assert_index_equals_table(&node, &index, &s.db, expected, Duration::from_secs(60)).await;
    wait_for_dead_letters(&s.db, 2).await;
    let reasons = s.db.query_text("SELECT error FROM cdc.dead_letters").await;
    assert!(
        reasons.iter().all(|r| r[0]
            .as_deref()
            .is_some_and(|e| e.contains("search nodes accept 1 to 512 bytes"))),
        "{reasons:?}"
    );
    cdc.sigterm();
}

/// Without REPLICA IDENTITY FULL an update does not resend a large value stored out of line, so
/// a filter on that column cannot be decided from the event: the row is read back and the filter
/// checked on it, and a row out of the filter gets no document.
#[tokio::test]
async fn a_filter_on_an_unsent_toast_value_is_checked_on_the_row_read_back() {
    let node = node_url();
    let index = support::unique_name("posts");
    let mappings = format!(
        "[[tables]]\ntable = \"posts\"\nsinks = [\"search\"]\nindex = \"{index}\"\nfilter = {{ state = \"published\", body = \"null\" }}\n"
    );
    let ddl = "CREATE TABLE posts (id int PRIMARY KEY, state text, body text); ALTER TABLE posts ALTER body SET STORAGE EXTERNAL;";
    let s = setup("search_toast_filter", ddl, &node, "", &mappings, &[]).await;
    let mut cdc = run(&s);
    s.db.exec(
        "INSERT INTO posts SELECT g, 'draft', CASE WHEN g % 2 = 0 THEN repeat('long body ', 500) END FROM generate_series(1, 20) g",
    )
    .await;
    // Even rows: their body is not resent, so the filter is undecided until read back.
    s.db.exec("UPDATE posts SET state = 'published'").await;
    s.db.exec("UPDATE posts SET body = repeat('later ', 600) WHERE id IN (1, 3)")
        .await;
    let expected = "SELECT id::text, jsonb_build_object('id', id, 'state', state, 'body', body)::text \
                    FROM posts WHERE state = 'published' AND body IS NULL";
    assert_index_equals_table(&node, &index, &s.db, expected, Duration::from_secs(60)).await;
    cdc.sigterm();
}

#[tokio::test]
async fn check_reports_the_node_and_each_alias() {
    let node = node_url();
    let index = support::unique_name("check");
    let s = setup("search_check", EVENTS_DDL, &node, "", &events_mapping(&index), &[]).await;
    let out = support::cdc(&["--config", &s.config, "check"]);
    let text = support::stdout_of(&out);
    assert!(text.contains("is OpenSearch 2."), "{text}");
    assert!(text.contains(&format!("index {index} does not exist yet")), "{text}");

    let unreachable = format!("http://127.0.0.1:{}", support::free_port());
    std::fs::write(&s.config, config_text(&s.db, &unreachable, "", &events_mapping(&index))).unwrap();
    let out = support::cdc(&["--config", &s.config, "check"]);
    assert!(!out.status.success());
    assert!(
        support::stdout_of(&out).contains(&format!("cannot reach {unreachable}")),
        "{}",
        support::stdout_of(&out)
    );
}

/// The integ-test node has no security plugin, so this puts a gate in front of it: a small HTTP
/// proxy that answers 401 as a secured node does unless the request carries `user:password`
/// (Basic), and forwards everything else to the real node. It runs on a runtime thread of its
/// own, so a test blocked on a `cdc` command does not stall it. Returns its URL.
fn gated_node(node: String, user: &str, password: &str) -> String {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", std_listener.local_addr().unwrap());
    let expected = {
        use base64::Engine;
        format!(
            "basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    };
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(proxy(std_listener, node, expected));
    });
    url
}

async fn proxy(std_listener: std::net::TcpListener, node: String, expected: String) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
    let client = reqwest::Client::new();
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let (client, node, expected) = (client.clone(), node.clone(), expected.clone());
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut read = BufReader::new(read);
            loop {
                let mut head = Vec::new();
                let mut line = String::new();
                while read.read_line(&mut line).await.unwrap_or(0) > 2 {
                    head.push(std::mem::take(&mut line));
                }
                let Some(request_line) = head.first() else { return };
                let mut parts = request_line.split_whitespace();
                let (method, path) = (parts.next().unwrap().to_string(), parts.next().unwrap().to_string());
                let header = |name: &str| {
                    head.iter().find_map(|h| {
                        h.split_once(':')
                            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                            .map(|(_, v)| v.trim().to_string())
                    })
                };
                let mut body = vec![0; header("content-length").and_then(|l| l.parse().ok()).unwrap_or(0)];
                read.read_exact(&mut body).await.unwrap();
                let (status, answer) = if header("authorization").map(|a| a.to_lowercase())
                    == Some(expected.to_lowercase())
                {
                    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
                    let mut request = client.request(method, format!("{node}{path}")).body(body);
                    if let Some(content_type) = header("content-type") {
                        request = request.header("content-type", content_type);
                    }
                    let response = request.send().await.unwrap();
                    (response.status().as_u16(), response.bytes().await.unwrap().to_vec())
                } else {
                    let error = json!({"error": {"type": "security_exception", "reason": "unable to authenticate user"}, "status": 401});
                    (401, error.to_string().into_bytes())
                };
                let head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    answer.len()
                );
                if write.write_all(head.as_bytes()).await.is_err() || write.write_all(&answer).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[tokio::test]
async fn a_wrong_password_is_a_clear_error_retried_until_fixed() {
    let node = gated_node(node_url(), "elastic", "right");
    let index = support::unique_name("credentials");
    let wrong = "username = \"elastic\"\npassword = \"wrong\"";
    let s = setup(
        "search_credentials",
        EVENTS_DDL,
        &node,
        wrong,
        &events_mapping(&index),
        &[],
    )
    .await;

    let check = support::cdc(&["--config", &s.config, "check"]);
    assert!(!check.status.success());
    assert!(
        support::stdout_of(&check).contains("refused the credentials (HTTP 401)"),
        "{}",
        support::stdout_of(&check)
    );

    let mut cdc = run(&s);
    s.db.exec("INSERT INTO events (id, name, state) SELECT g, 'n', 'published' FROM generate_series(1, 30) g")
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(cdc.is_running(), "cdc keeps retrying:\n{}", cdc.stderr_text());
    let log = cdc.stderr_text();
    assert_eq!(
        log.matches("refused the credentials").count(),
        1,
        "said once, not per retry:\n{log}"
    );
    cdc.sigterm();

    std::fs::write(
        &s.config,
        config_text(
            &s.db,
            &node,
            "username = \"elastic\"\npassword = \"right\"",
            &events_mapping(&index),
        ),
    )
    .unwrap();
    let mut cdc = run(&s);
    assert_index_equals_table(&node_url(), &index, &s.db, EVENTS_EXPECTED, Duration::from_secs(60)).await;
    cdc.sigterm();
}

/// Waits until every document of `index` satisfies `pred` (and there are `n`); returns them.
async fn wait_versioned_docs(
    node: &str,
    index: &str,
    n: usize,
    pred: impl Fn(u64, &str) -> bool,
) -> BTreeMap<String, (u64, String)> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let docs = versioned_docs(node, index).await;
        if docs.len() == n && docs.values().all(|(version, source)| pred(*version, source)) {
            return docs;
        }
        assert!(
            Instant::now() < deadline,
            "index {index} did not reach {n} documents as expected within 90 s: {:?}",
            docs.iter()
                .map(|(id, (v, s))| (id, v, &s[..s.len().min(80)]))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// About 32 kB of random bytes: stored out of line (TOAST).
const BIG_BYTES: &str =
    "(SELECT string_agg(decode(md5(random()::text || g), 'hex'), ''::bytea) FROM generate_series(1, 2000) g)";

/// [`BIG_TEXT`], different for each row of a `SELECT ... FROM ... k` (a row's document then
/// shows whether it was read back from its own row).
const BIG_TEXT_OF_ROW: &str =
    "(SELECT string_agg(md5(random()::text || g || k::text), '') FROM generate_series(1, 3200) g)";

/// Key types whose text form differs from cdc's converted form, each in a table of its own
/// with the same value columns; the timestamptz one is time-partitioned.
const KEY_TABLES: &[(&str, &str, &str)] = &[
    (
        "k_timestamptz",
        "id int, created_at timestamptz",
        "(1, '2024-01-01 00:00:00+00'::timestamptz), (2, '2024-06-01 12:30:00.123456+00'), (3, '2024-03-01 10:00:00+05')",
    ),
    (
        "k_timestamp",
        "k timestamp",
        "('2024-01-01 00:00:00'::timestamp), ('2024-06-01 12:30:00.5'), ('2024-12-31 23:59:59.999999')",
    ),
    ("k_bytea", "k bytea", r"('\x00'::bytea), ('\xdeadbeef'), ('\x0a0bff')"),
    ("k_char", "k char(6)", "('a'::char(6)), ('ab cd'), ('abcdef')"),
    ("k_numeric", "k numeric", "(1.50), (0), (-12345678901234567890.123456789)"),
    (
        "k_uuid",
        "k uuid",
        "('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid), ('00000000-0000-0000-0000-000000000000'), \
         ('ffffffff-ffff-ffff-ffff-ffffffffffff')",
    ),
    ("k_text", "k text", "('plain'), ('with space'), ('ünï:cøde')"),
];

const VALUE_COLUMNS: &str = "title text, body text, blob bytea, v_n numeric, v_b bool, v_f float8, v_inet inet, \
     v_c char(3), v_j jsonb, v_arr int[], v_iv interval, v_ts timestamptz";

#[tokio::test]
async fn keys_of_every_type_find_their_rows_and_every_path_writes_the_same_document() {
    let node = node_url();
    let prefix = support::unique_name("paths");
    let mut ddl = String::new();
    let mut mappings = String::new();
    for (table, key, _) in KEY_TABLES {
        let primary_key = key
            .split(", ")
            .map(|c| c.split(' ').next().unwrap())
            .collect::<Vec<_>>();
        let partitioned = if *table == "k_timestamptz" {
            format!(
                " PARTITION BY RANGE (created_at); CREATE TABLE {table}_2024 PARTITION OF {table} \
                 FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')"
            )
        } else {
            String::new()
        };
        ddl += &format!(
            "CREATE TABLE {table} ({key}, {VALUE_COLUMNS}, PRIMARY KEY ({})){partitioned};\n",
            primary_key.join(", ")
        );
        // The same rows in two indexes: `_a` takes every document, `_b` refuses them all until
        // its mapping is fixed, so its documents come from `cdc dead-letters replay`.
        mappings += &format!(
            "[[tables]]\ntable = \"{table}\"\nsinks = [\"search\"]\nindex = \"{prefix}_{table}_a\"\n\n\
             [[tables]]\ntable = \"{table}\"\nsinks = [\"search\"]\nindex = \"{prefix}_{table}_b\"\nsettings = \"settings.json\"\n\n"
        );
    }
    let strict = json!({"mappings": {"dynamic": "strict"}});
    let s = setup_with_settings("search_paths", &ddl, &node, "", &mappings, &[], Some(strict)).await;
    let mut cdc = run(&s);
    for (table, key, keys) in KEY_TABLES {
        let names: Vec<&str> = key.split(", ").map(|c| c.split(' ').next().unwrap()).collect();
        s.db.exec(&format!(
            "INSERT INTO {table} ({}, title, body, blob, v_n, v_b, v_f, v_inet, v_c, v_j, v_arr, v_iv, v_ts) \
             SELECT k.*, k::text, {BIG_TEXT_OF_ROW}, {BIG_BYTES}, 1.50, true, 0.1, '10.0.0.1', 'ab', '{{\"a\": [1.25, 2.50]}}', \
             '{{1,NULL,3}}', '1 day 02:00:00', '2024-01-01 00:00:00+00' FROM (VALUES {keys}) AS k",
            names.join(", ")
        ))
        .await;
    }
    // Written by the stream: every value was in the insert.
    let mut streamed = BTreeMap::new();
    for (table, _, _) in KEY_TABLES {
        let docs = wait_versioned_docs(&node, &format!("{prefix}_{table}_a"), 3, |_, _| true).await;
        streamed.insert(*table, docs);
    }

    // An update that resends nothing large: body and blob are read back by key.
    let before_update = s.db.current_wal_lsn().await;
    for (table, _, _) in KEY_TABLES {
        s.db.exec(&format!("UPDATE {table} SET title = title")).await;
    }
    let after_update = s.db.current_wal_lsn().await;
    for (table, _, _) in KEY_TABLES {
        let index = format!("{prefix}_{table}_a");
        let read_back = wait_versioned_docs(&node, &index, 3, |version, _| version > before_update).await;
        for (id, (_, source)) in &read_back {
            assert_eq!(
                Some(source),
                streamed[table].get(id).map(|(_, s)| s),
                "{table} {id}: the document read back is byte for byte the streamed one"
            );
        }
    }
    s.db.wait_confirmed_flush(&s.db.name, after_update, Duration::from_secs(60))
        .await;
    // Each row's insert and update, refused by the strict indexes: none dropped as "row gone".
    wait_for_dead_letters(&s.db, 2 * 3 * KEY_TABLES.len() as i64).await;

    for (table, _, _) in KEY_TABLES {
        let (status, body) = http(
            reqwest::Method::PUT,
            &format!("{node}/{prefix}_{table}_b/_mapping"),
            Some(json!({"dynamic": true})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    let replayed = support::cdc(&["--config", &s.config, "dead-letters", "replay", "--all"]);
    assert!(
        replayed.status.success(),
        "{}{}",
        support::stdout_of(&replayed),
        support::stderr_of(&replayed)
    );
    assert!(
        !support::stdout_of(&replayed).contains("deleted"),
        "live rows replay as documents, never as deletes:\n{}",
        support::stdout_of(&replayed)
    );
    for (table, _, _) in KEY_TABLES {
        let replayed = versioned_docs(&node, &format!("{prefix}_{table}_b")).await;
        let sources = |docs: &BTreeMap<String, (u64, String)>| -> BTreeMap<String, String> {
            docs.iter().map(|(id, (_, s))| (id.clone(), s.clone())).collect()
        };
        assert_eq!(
            sources(&replayed),
            sources(&streamed[table]),
            "{table}: the replayed documents are byte for byte the streamed ones"
        );
    }
    cdc.sigterm();
}

#[tokio::test]
async fn an_oversized_request_is_split_and_a_document_over_the_limit_becomes_a_dead_letter() {
    let node = node_url();
    // Each sink goes through a proxy that answers 413 above 300 kB, as a node does above its
    // http.max_content_length. `big` cuts batches of up to 5 MB (the default), so its requests
    // are refused and must be split; `small` cuts at 250 kB and must count the real bytes of
    // documents read back (each was guessed at 1 kB) to stay under the limit.
    let (big, small) = (support::proxy::Proxy::start(&node), support::proxy::Proxy::start(&node));
    big.limit_body(300_000);
    small.limit_body(300_000);
    let prefix = support::unique_name("oversized");
    let db = new_database("search_oversized").await;
    db.exec("CREATE TABLE docs (id int PRIMARY KEY, title text, body text);")
        .await;
    let dir = support::temp_dir();
    let config = format!(
        "[source]\nurl = \"{url}\"\nslot = \"{name}\"\npublication = \"{name}\"\n\n\
         [sinks.big]\ntype = \"elasticsearch\"\nurl = \"{big}\"\nflush_interval = \"100ms\"\n\n\
         [sinks.small]\ntype = \"elasticsearch\"\nurl = \"{small}\"\nflush_interval = \"100ms\"\nbatch_max_bytes = 250000\n\n\
         [[tables]]\ntable = \"docs\"\nsinks = [\"big\"]\nindex = \"{prefix}_big\"\n\n\
         [[tables]]\ntable = \"docs\"\nsinks = [\"small\"]\nindex = \"{prefix}_small\"\n",
        url = db.url,
        name = db.name,
        big = big.url,
        small = small.url,
    );
    let config = write_config(dir.path(), &config).to_str().unwrap().to_string();
    let out = support::cdc(&["--config", &config, "setup"]);
    assert!(out.status.success(), "cdc setup: {}", support::stderr_of(&out));
    let mut cdc = CdcProcess::start(&["--config", &config, "run"], LOG_ENV);

    // 20 documents of about 100 kB in one transaction, and one of about 400 kB.
    db.exec(&format!(
        "BEGIN; INSERT INTO docs SELECT g, 't', {BIG_TEXT} FROM generate_series(1, 20) g;
         INSERT INTO docs VALUES (99, 'huge', repeat({BIG_TEXT}, 4)); COMMIT;"
    ))
    .await;
    let after_insert = db.current_wal_lsn().await;
    let expected =
        "SELECT id::text, jsonb_build_object('id', id, 'title', title, 'body', body)::text FROM docs WHERE id <> 99";
    for index in [format!("{prefix}_big"), format!("{prefix}_small")] {
        assert_index_equals_table(&node, &index, &db, expected, Duration::from_secs(90)).await;
    }
    db.wait_confirmed_flush(&db.name, after_insert, Duration::from_secs(60))
        .await;
    assert!(big.too_large() >= 2, "the 2 MB request was refused, then its halves");
    let letters = db
        .query_text("SELECT sink, error FROM cdc.dead_letters ORDER BY sink")
        .await;
    assert_eq!(letters.len(), 2, "the 400 kB document, once per sink: {letters:?}");
    for letter in &letters {
        let error = letter[1].as_deref().unwrap();
        assert!(
            error.contains("HTTP 413") && error.contains("http.max_content_length"),
            "the dead letter says what is wrong and what to change: {error}"
        );
    }
    let small_refused = small.too_large();
    assert_eq!(small_refused, 1, "only the 400 kB document was too large for `small`");

    // Updates that resend no body: each document is read back (and guessed at 1 kB).
    db.exec("UPDATE docs SET title = 'updated' WHERE id <= 20").await;
    let after_update = db.current_wal_lsn().await;
    for index in [format!("{prefix}_big"), format!("{prefix}_small")] {
        assert_index_equals_table(&node, &index, &db, expected, Duration::from_secs(90)).await;
    }
    db.wait_confirmed_flush(&db.name, after_update, Duration::from_secs(60))
        .await;
    assert_eq!(
        small.too_large(),
        small_refused,
        "`small` counted the documents read back by their real size: no request over the limit"
    );
    assert_eq!(db.query_one_i64("SELECT count(*) FROM cdc.dead_letters").await, 2);
    cdc.sigterm();
}

/// Starts `cdc run` on a config whose index cannot be created; returns the last stderr line
/// once cdc has exited (it must, with a failure status).
async fn run_until_it_fails(s: &Setup, insert: &str) -> String {
    let mut cdc = run(s);
    s.db.exec(insert).await;
    let status = cdc.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "cdc exits with a failure status");
    let log = cdc.stderr_text();
    log.lines().last().unwrap_or_default().to_string()
}

#[tokio::test]
async fn errors_no_retry_can_fix_end_the_run_with_the_nodes_message() {
    let node = node_url();
    let index = support::unique_name("unfixable");
    let mapping = format!(
        "[[tables]]\ntable = \"notes\"\nsinks = [\"search\"]\nindex = \"{index}\"\nsettings = \"settings.json\"\n"
    );
    let settings = json!({"mappings": {"properties": {"n": {"type": "no_such_type"}}}});
    let ddl = "CREATE TABLE notes (id int PRIMARY KEY, n text);";
    let s = setup_with_settings("search_unfixable", ddl, &node, "", &mapping, &[], Some(settings)).await;

    let last = run_until_it_fails(&s, "INSERT INTO notes VALUES (1, 'a')").await;
    assert!(
        last.starts_with("error: ")
            && last.contains("mapper_parsing_exception")
            && last.contains("no_such_type")
            && last.contains("settings.json"),
        "the last line is the node's message: {last}"
    );

    std::fs::remove_file(s.dir.path().join("settings.json")).unwrap();
    let last = run_until_it_fails(&s, "INSERT INTO notes VALUES (2, 'b')").await;
    assert!(
        last.starts_with("error: ") && last.contains("settings.json") && last.contains(&index),
        "the last line names the missing file and the index: {last}"
    );
    let (status, _) = http(reqwest::Method::GET, &format!("{node}/_alias/{index}"), None).await;
    assert_eq!(status, 404, "no index was made");
}

#[tokio::test]
async fn a_held_older_write_never_brings_a_deleted_document_back() {
    // This test restarts its node (which forgets deletes), so it starts one of its own.
    let node_dir = support::temp_dir();
    let node = start_node(node_dir.path());
    let proxy = support::proxy::Proxy::start(&node);
    let index = support::unique_name("held");
    // cdc waits for the held request rather than giving up on it.
    let s = setup(
        "search_held",
        EVENTS_DDL,
        &proxy.url,
        "request_timeout = \"600s\"",
        &events_mapping(&index),
        &[],
    )
    .await;
    let mut cdc = run(&s);
    s.db.exec("INSERT INTO events (id, name, state) VALUES (1, 'first', 'published'), (2, 'first', 'published')")
        .await;
    assert_index_equals_table(&node, &index, &s.db, EVENTS_EXPECTED, Duration::from_secs(60)).await;
    let delete_line = |id: u32| format!("{{\"delete\":{{\"_index\":\"{index}\",\"_id\":\"{id}\"");

    // Released at once: the update lands, then the delete.
    proxy.hold_containing("held-2");
    s.db.exec("UPDATE events SET name = 'held-2' WHERE id = 2").await;
    proxy.wait_held(1, Duration::from_secs(30)).await;
    s.db.exec("DELETE FROM events WHERE id = 2").await;
    let after = s.db.current_wal_lsn().await;
    proxy.release();
    s.db.wait_confirmed_flush(&s.db.name, after, Duration::from_secs(60))
        .await;
    assert!(!index_docs(&node, &index).await.contains_key("2"));
    let bodies = proxy.bulk_bodies();
    let update = bodies.iter().position(|b| b.contains("held-2")).unwrap();
    let delete = bodies.iter().position(|b| b.contains(&delete_line(2))).unwrap();
    assert!(update < delete, "the delete was sent after the update was answered");

    // Held across a node restart: the node forgets the delete's tombstone, so only the order
    // of the requests keeps the older update from bringing the document back.
    proxy.hold_containing("held-1");
    s.db.exec("UPDATE events SET name = 'held-1' WHERE id = 1").await;
    proxy.wait_held(2, Duration::from_secs(30)).await;
    s.db.exec("DELETE FROM events WHERE id = 1").await;
    let after = s.db.current_wal_lsn().await;
    let delete_sent_while_held = proxy
        .bulk_forwarded(|b| b.contains(&delete_line(1)), Duration::from_secs(10))
        .await;
    stop_node(node_dir.path());
    assert_eq!(
        start_node(node_dir.path()),
        node,
        "the node comes back on the same address"
    );
    proxy.release();
    s.db.wait_confirmed_flush(&s.db.name, after, Duration::from_secs(120))
        .await;
    assert!(
        index_docs(&node, &index).await.is_empty(),
        "the deleted rows' documents stay deleted"
    );
    assert!(
        !delete_sent_while_held,
        "a later action on a document waits while an earlier one is unresolved"
    );
    cdc.sigterm();
    stop_node(node_dir.path());
}

#[tokio::test]
async fn an_update_whose_table_was_dropped_since_becomes_a_dead_letter_instead_of_holding_the_slot() {
    let node = node_url();
    let index = support::unique_name("dropped");
    let mapping = format!("[[tables]]\ntable = \"docs\"\nsinks = [\"search\"]\nindex = \"{index}\"\n");
    let ddl = "CREATE TABLE docs (id int PRIMARY KEY, title text, body text);";
    let s = setup("search_dropped", ddl, &node, "", &mapping, &[]).await;
    let mut cdc = run(&s);
    s.db.exec(&format!("INSERT INTO docs VALUES (1, 't', {BIG_TEXT})"))
        .await;
    let expected = "SELECT id::text, jsonb_build_object('id', id, 'title', title, 'body', body)::text FROM docs";
    assert_index_equals_table(&node, &index, &s.db, expected, Duration::from_secs(60)).await;
    cdc.sigterm();

    // The update resends no body; by the time cdc reads it back, the table is gone.
    s.db.exec("UPDATE docs SET title = 'changed'").await;
    s.db.exec("DROP TABLE docs").await;
    let after = s.db.current_wal_lsn().await;
    let mut cdc = run(&s);
    s.db.wait_confirmed_flush(&s.db.name, after, Duration::from_secs(60))
        .await;
    wait_for_dead_letters(&s.db, 1).await;
    let error = s.db.query_opt_text("SELECT error FROM cdc.dead_letters").await.unwrap();
    assert!(error.contains("no longer exists"), "{error}");
    cdc.sigterm();
}

#[tokio::test]
async fn writes_resume_within_seconds_after_a_long_outage_ends() {
    let node = node_url();
    let proxy = support::proxy::Proxy::start(&node);
    let index = support::unique_name("outage");
    // A second table whose index cdc first needs during the outage: creating it is retried
    // apart from the bulk requests.
    let notes = support::unique_name("outage_notes");
    let s = setup(
        "search_outage",
        &format!("{EVENTS_DDL} CREATE TABLE notes (id int PRIMARY KEY, body text);"),
        &proxy.url,
        "",
        &format!(
            "{}\n[[tables]]\ntable = \"notes\"\nsinks = [\"search\"]\nindex = \"{notes}\"\n",
            events_mapping(&index)
        ),
        &[],
    )
    .await;
    let notes_expected = "SELECT id::text, jsonb_build_object('id', id, 'body', body)::text FROM notes";
    let mut cdc = run(&s);
    s.db.exec("INSERT INTO events (id, name, state) VALUES (1, 'before', 'published')")
        .await;
    assert_index_equals_table(&node, &index, &s.db, EVENTS_EXPECTED, Duration::from_secs(60)).await;

    // The node is gone for 35 s: the backoff has doubled past 25 s by then, and the next
    // attempt would come 15–30 s after the node is back.
    proxy.down();
    s.db.exec("INSERT INTO events (id, name, state) VALUES (2, 'during', 'published')")
        .await;
    s.db.exec("INSERT INTO notes (id, body) VALUES (1, 'during')").await;
    let outage = Duration::from_secs(35);
    tokio::time::sleep(outage).await;
    assert!(
        !index_docs(&node, &index).await.contains_key("2"),
        "nothing reached the node during the outage"
    );
    proxy.up();
    let back = Instant::now();
    assert_index_equals_table(&node, &index, &s.db, EVENTS_EXPECTED, Duration::from_secs(60)).await;
    assert_index_equals_table(&node, &notes, &s.db, notes_expected, Duration::from_secs(60)).await;
    let resumed = back.elapsed();
    assert!(
        resumed < Duration::from_secs(10),
        "the writes waited {resumed:?} after the node was back (they should notice within about a second)\n{}",
        cdc.stderr_text()
    );
    assert!(cdc.sigterm().success());
}

#[tokio::test]
async fn an_index_creation_that_timed_out_leaves_one_index_behind_the_alias() {
    let node = node_url();
    let proxy = support::proxy::Proxy::start(&node);
    let index = support::unique_name("slowcreate");
    // The node is slow to create the index: cdc's request times out and cdc tries again, and
    // then both requests reach the node.
    proxy.hold_containing(&format!("\"aliases\":{{\"{index}\""));
    let s = setup(
        "search_slowcreate",
        EVENTS_DDL,
        &proxy.url,
        "request_timeout = \"1s\"",
        &events_mapping(&index),
        &[],
    )
    .await;
    let mut cdc = run(&s);
    s.db.exec("INSERT INTO events (id, name, state) VALUES (1, 'a', 'published')")
        .await;
    proxy.wait_held(2, Duration::from_secs(60)).await;
    proxy.release();

    assert_index_equals_table(&node, &index, &s.db, EVENTS_EXPECTED, Duration::from_secs(60)).await;
    let (status, aliases) = http(reqwest::Method::GET, &format!("{node}/_alias/{index}"), None).await;
    assert_eq!(status, 200);
    let behind: Vec<&String> = aliases.as_object().unwrap().keys().collect();
    assert_eq!(behind.len(), 1, "one index behind the alias: {aliases}");
    s.db.exec("INSERT INTO events (id, name, state) VALUES (2, 'b', 'published')")
        .await;
    assert_index_equals_table(&node, &index, &s.db, EVENTS_EXPECTED, Duration::from_secs(60)).await;
    assert!(cdc.sigterm().success(), "{}", cdc.stderr_text());
}
