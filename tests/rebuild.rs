//! `cdc rebuild-index` and `cdc verify` against a real PostgreSQL and a real OpenSearch node
//! (both started by scripts/test.sh). Each test has its own database and aliases named after it.
//!
//! The tests of this file hold [`support::serial`]: a rebuild uses several connections and
//! workers, and on the 2-core CI machine rebuilds racing each other only make every test slower.
//! Besides `cdc verify`, every test that checks an index compares it with the table document by
//! document itself ([`assert_index_equals_table`]).
// The serial guard is a std mutex held for a whole test on purpose: each test runs on its own
// runtime, and no other task of that runtime waits for the guard.
#![allow(clippy::await_holding_lock)]

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use support::search::{assert_index_equals_table, http, index_docs, node_url, raw_docs};
use support::{new_database, stderr_of, stdout_of, write_config, CdcProcess, TestDb};

/// The physical indexes whose name starts with `prefix`.
async fn indexes_named(node: &str, prefix: &str) -> Vec<String> {
    let (status, body) = http(
        reqwest::Method::GET,
        &format!("{node}/_cat/indices/{prefix}*?format=json&h=index"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut names: Vec<String> = body
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["index"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// The physical indexes behind an alias (empty when it does not exist).
async fn alias_targets(node: &str, alias: &str) -> Vec<String> {
    let (status, body) = http(reqwest::Method::GET, &format!("{node}/_alias/{alias}"), None).await;
    if status == 404 {
        return Vec::new();
    }
    let mut names: Vec<String> = body.as_object().unwrap().keys().cloned().collect();
    names.sort();
    names
}

async fn rebuild_slots(db: &TestDb) -> i64 {
    db.query_one_i64(&format!(
        "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'cdc_rebuild%' AND database = '{}'",
        db.name
    ))
    .await
}

struct Setup {
    db: TestDb,
    config: String,
    _dir: tempfile::TempDir,
}

/// A database with `ddl` (and `load`, run before the slot exists, so it is never streamed), a
/// config with the search sink(s) and `tables`, and `cdc setup` done.
async fn setup(prefix: &str, ddl: &str, load: &str, sinks: &[&str], tables: &str) -> Setup {
    let node = node_url();
    let db = new_database(prefix).await;
    db.exec(ddl).await;
    if !load.is_empty() {
        db.exec(load).await;
    }
    let dir = support::temp_dir();
    let mut text = format!(
        "[source]\nurl = \"{}\"\nslot = \"{name}\"\npublication = \"{name}\"\n\n",
        db.url,
        name = db.name
    );
    for sink in sinks {
        text += &format!("[sinks.{sink}]\ntype = \"elasticsearch\"\nurl = \"{node}\"\nflush_interval = \"100ms\"\n\n");
    }
    text += tables;
    let config = write_config(dir.path(), &text).to_str().unwrap().to_string();
    let out = support::cdc(&["--config", &config, "setup"]);
    assert!(out.status.success(), "cdc setup: {}", stderr_of(&out));
    Setup { db, config, _dir: dir }
}

const LOG_ENV: &[(&str, &str)] = &[("RUST_LOG", "cdc=info"), ("NO_COLOR", "1")];

impl Setup {
    fn run(&self) -> CdcProcess {
        CdcProcess::start(&["--config", &self.config, "run"], LOG_ENV)
    }

    /// `cdc ARGS --config ...`, waited for (at most 5 minutes).
    fn cdc(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["--config", &self.config];
        all.extend_from_slice(args);
        support::cdc_with_env_timeout(&all, LOG_ENV, Duration::from_secs(300))
    }

    fn rebuild(&self, table: &str, extra: &[&str]) -> std::process::Output {
        let mut args = vec!["rebuild-index", "--table", table];
        args.extend_from_slice(extra);
        let out = self.cdc(&args);
        assert!(
            out.status.success(),
            "cdc rebuild-index failed ({}):\n{}\n{}",
            out.status,
            stdout_of(&out),
            stderr_of(&out)
        );
        out
    }

    fn verify(&self, table: &str) -> std::process::Output {
        self.cdc(&["verify", "--table", table])
    }
}

const EVENTS_DDL: &str =
    "CREATE TABLE events (id bigserial PRIMARY KEY, state text NOT NULL, title text, n int NOT NULL DEFAULT 0, \
     price numeric(12,2), at timestamptz, secret text);";

fn events_load(rows: u32) -> String {
    format!(
        "INSERT INTO events (id, state, title, n, price, at, secret) \
         SELECT g, CASE WHEN g % 5 = 0 THEN 'hidden' ELSE 'published' END, 'title ' || g || ' ' || repeat('x', g % 50), g % 1000, \
                (g % 10000) / 100.0, timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second', 's' \
         FROM generate_series(1, {rows}) g; \
         SELECT setval('events_id_seq', 100000000);"
    )
}

fn events_mapping(index: &str, sink: &str) -> String {
    format!(
        "[[tables]]\ntable = \"events\"\nsinks = [\"{sink}\"]\nindex = \"{index}\"\ncolumns = [\"id\", \"state\", \"title\", \"n\", \"price\", \"at\"]\nfilter = {{ state = \"published\" }}\n\n"
    )
}

/// The documents of the events mapping, as the table says (numeric as numbers, timestamps as cdc
/// writes them).
const EVENTS_EXPECTED: &str =
    "SELECT id::text, jsonb_build_object('id', id, 'state', state, 'title', title, 'n', n, 'price', price, \
     'at', replace((at AT TIME ZONE 'UTC')::text, ' ', 'T') || 'Z')::text FROM events WHERE state = 'published'";

/// A writer of small transactions until stopped: inserts and updates, and with `destructive`
/// also filter moves both ways, primary-key changes and deletes. Returns the operations done.
fn spawn_writer(url: String, rows: i64, destructive: bool, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let db = support::connect(&url).await;
        let done = AtomicU64::new(0);
        let mut i: i64 = 0;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let id = (i * 7919) % rows + 1;
            let kinds = if destructive { 6 } else { 3 };
            let sql = match i % kinds {
                0 => format!("INSERT INTO events (state, title, n, price, at) VALUES ('published', 'new {i}', {i} % 1000, 1.50, now())"),
                1 => format!("UPDATE events SET title = 'edited {i}', n = n + 1 WHERE id = {id}"),
                2 => format!("UPDATE events SET price = price + 0.01, at = now() WHERE id IN ({id}, {id} + 1)"),
                3 => format!("UPDATE events SET state = CASE state WHEN 'hidden' THEN 'published' ELSE 'hidden' END WHERE id = {id}"),
                4 => format!("UPDATE events SET id = id + 1000000000 WHERE id = {id}"),
                _ => format!("DELETE FROM events WHERE id = {}", (i * 104729) % rows + 1),
            };
            db.batch_execute(&sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
            done.fetch_add(1, Ordering::Relaxed);
            // A steady few hundred transactions per second: a load cdc run keeps up with on 2 cores.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        done.load(Ordering::Relaxed)
    })
}

/// 200,000 rows rebuilt with 4 workers while a writer inserts, updates, moves rows across the filter,
/// changes keys and deletes, and `cdc run` streams the same changes into the old index: afterwards
/// the alias serves an index equal to the table, `cdc verify` agrees, the old index and the
/// temporary slot are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_during_writes_and_streaming_leaves_the_index_equal_to_the_table() {
    let _serial = support::serial();
    let node = node_url();
    let alias = support::unique_name("rb_busy");
    let s = setup(
        "rebuild_busy",
        EVENTS_DDL,
        &events_load(200_000),
        &["search"],
        &events_mapping(&alias, "search"),
    )
    .await;
    let mut cdc = s.run();
    // cdc run made the alias on its first write.
    s.db.exec("UPDATE events SET n = n + 1 WHERE id = 1").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while alias_targets(&node, &alias).await.is_empty() {
        assert!(Instant::now() < deadline, "cdc run never created {alias}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let old = alias_targets(&node, &alias).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(s.db.url.clone(), 200_000, true, stop.clone());
    let out = s.rebuild("public.events", &["--parallel", "4"]);
    stop.store(true, Ordering::Relaxed);
    let ops = writer.await.unwrap();
    assert!(ops > 50, "the writer ran during the rebuild ({ops} operations)");

    let summary = stdout_of(&out);
    assert!(
        summary.starts_with("public.events: ") && summary.contains(" rows, "),
        "{summary}"
    );
    let now = alias_targets(&node, &alias).await;
    assert_eq!(now.len(), 1);
    assert!(
        !old.contains(&now[0]),
        "the alias moved to a new index: {old:?} → {now:?}"
    );
    assert!(summary.contains(&format!("{alias} → {}", now[0])), "{summary}");
    assert_eq!(
        indexes_named(&node, &alias).await,
        now,
        "the old index was deleted, nothing else left"
    );
    assert_eq!(rebuild_slots(&s.db).await, 0, "the temporary slot is gone");

    assert_index_equals_table(&node, &alias, &s.db, EVENTS_EXPECTED, Duration::from_secs(120)).await;
    let verified = s.verify("public.events");
    assert!(
        verified.status.success(),
        "cdc verify: {}\n{}",
        stdout_of(&verified),
        stderr_of(&verified)
    );
    assert!(stdout_of(&verified).contains("missing 0, extra 0, different 0"));
    cdc.sigterm();
}

/// A first build (no alias yet, `cdc run` never started) makes the alias; `cdc verify` passes,
/// then reports a document deleted, one added and one modified behind cdc's back, and exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_a_missing_an_extra_and_a_modified_document_and_exits_1() {
    let _serial = support::serial();
    let node = node_url();
    let alias = support::unique_name("rb_verify");
    let s = setup(
        "rebuild_verify",
        EVENTS_DDL,
        &events_load(2_000),
        &["search"],
        &events_mapping(&alias, "search"),
    )
    .await;
    assert!(alias_targets(&node, &alias).await.is_empty());
    let out = s.rebuild("public.events", &[]);
    assert!(
        stdout_of(&out).contains("public.events: 1600 rows, 1600 documents"),
        "{}",
        stdout_of(&out)
    );
    assert_index_equals_table(&node, &alias, &s.db, EVENTS_EXPECTED, Duration::from_secs(30)).await;
    let clean = s.verify("public.events");
    assert!(clean.status.success(), "{}\n{}", stdout_of(&clean), stderr_of(&clean));

    let doc = format!("{node}/{alias}/_doc");
    let (status, body) = http(reqwest::Method::DELETE, &format!("{doc}/1?refresh=true"), None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(
        reqwest::Method::PUT,
        &format!("{doc}/999999?refresh=true"),
        Some(json!({"id": 999999, "title": "not in the table"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = http(
        reqwest::Method::POST,
        &format!("{node}/{alias}/_update/7?refresh=true"),
        Some(json!({"doc": {"title": "changed behind cdc's back"}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let found = s.verify("public.events");
    let text = stdout_of(&found);
    assert_eq!(found.status.code(), Some(1), "{text}\n{}", stderr_of(&found));
    assert!(text.contains("missing 1, extra 1, different 1"), "{text}");
    assert!(text.contains("missing (1), e.g.: 1\n"), "{text}");
    assert!(text.contains("extra (1), e.g.: 999999\n"), "{text}");
    assert!(text.contains("different (1), e.g.: 7: title\n"), "{text}");

    // A sample at least as large as both sides finds the same three, whatever it draws.
    let sampled = s.cdc(&["verify", "--table", "public.events", "--sample", "5000"]);
    let text = stdout_of(&sampled);
    assert_eq!(sampled.status.code(), Some(1), "{text}\n{}", stderr_of(&sampled));
    assert!(text.contains("missing 1, extra 1, different 1"), "{text}");
    let small = s.cdc(&["verify", "--table", "public.events", "--sample", "10"]);
    assert!(
        stdout_of(&small).contains(": 10 rows, 10 documents;"),
        "{}",
        stdout_of(&small)
    );
}

/// A partitioned table, mapped by its parent: the copy reads each leaf partition, and the
/// rebuilt index equals the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_table_is_rebuilt_from_all_its_partitions() {
    let _serial = support::serial();
    let node = node_url();
    let alias = support::unique_name("rb_parts");
    let s = setup(
        "rebuild_parts",
        "CREATE TABLE measures (id int NOT NULL, region text NOT NULL, value numeric, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
         CREATE TABLE measures_eu PARTITION OF measures FOR VALUES IN ('eu');
         CREATE TABLE measures_us PARTITION OF measures FOR VALUES IN ('us');",
        "INSERT INTO measures SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END, g / 4.0 FROM generate_series(1, 5000) g;",
        &["search"],
        &format!("[[tables]]\ntable = \"measures\"\nsinks = [\"search\"]\nindex = \"{alias}\"\n"),
    )
    .await;
    let out = s.rebuild("public.measures", &["--parallel", "3"]);
    assert!(
        stdout_of(&out).contains("public.measures: 5000 rows, 5000 documents"),
        "{}",
        stdout_of(&out)
    );
    let expected = "SELECT id || ':' || region, jsonb_build_object('id', id, 'region', region, 'value', value)::text FROM measures";
    assert_index_equals_table(&node, &alias, &s.db, expected, Duration::from_secs(30)).await;
    let verified = s.verify("public.measures");
    assert!(
        verified.status.success(),
        "{}\n{}",
        stdout_of(&verified),
        stderr_of(&verified)
    );
}

/// The rows of an inheritance child are not the parent's: `cdc setup` publishes the parent
/// `ONLY`, so the stream never carries them, and the rebuild and verify leave them out too.
#[tokio::test]
async fn an_inheritance_childs_rows_are_not_rebuilt_into_the_parents_index() {
    let _serial = support::serial();
    let node = node_url();
    let alias = support::unique_name("rb_inherit");
    let s = setup(
        "rebuild_inherit",
        "CREATE TABLE notes (id int PRIMARY KEY, body text); CREATE TABLE archived_notes () INHERITS (notes);",
        "INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 300) g;
         INSERT INTO archived_notes SELECT g, 'archived ' || g FROM generate_series(1001, 1100) g;",
        &["search"],
        &format!("[[tables]]\ntable = \"notes\"\nsinks = [\"search\"]\nindex = \"{alias}\"\n"),
    )
    .await;
    let out = s.rebuild("public.notes", &["--parallel", "2"]);
    assert!(
        stdout_of(&out).contains("public.notes: 300 rows, 300 documents"),
        "{}",
        stdout_of(&out)
    );
    let expected = "SELECT id::text, jsonb_build_object('id', id, 'body', body)::text FROM ONLY notes";
    assert_index_equals_table(&node, &alias, &s.db, expected, Duration::from_secs(30)).await;
    let verified = s.verify("public.notes");
    assert!(
        verified.status.success(),
        "{}\n{}",
        stdout_of(&verified),
        stderr_of(&verified)
    );
}

/// A table of many types, under a projection (a column left out) and a filter.
const TYPES_DDL: &str = "CREATE TABLE things (id int PRIMARY KEY, kind text NOT NULL, name text, price numeric(10,3), ratio float8, \
     flag bool, born date, seen timestamp, at timestamptz, span interval, tags text[], matrix int[], meta jsonb, raw bytea, \
     uid uuid, secret text, twice int GENERATED ALWAYS AS (id * 2) STORED);";

fn things_mapping(index: &str, sink: &str) -> String {
    format!(
        "[[tables]]\ntable = \"things\"\nsinks = [\"{sink}\"]\nindex = \"{index}\"\nexclude_columns = [\"secret\"]\nfilter = {{ kind = [\"a\", \"b\"] }}\n\n"
    )
}

const THINGS_ROWS: &str = "INSERT INTO things SELECT g, CASE g % 3 WHEN 0 THEN 'a' WHEN 1 THEN 'b' ELSE 'c' END, \
     'naïve ✓ \"q\" ' || g, g * 1.125, g / 7.0, g % 2 = 0, date '2026-01-01' + g, timestamp '2026-01-01 10:00:00.5' + g * interval '1 minute', \
     timestamptz '2026-01-01 10:00:00+02' + g * interval '1 second', g * interval '1 hour 2 minutes', ARRAY['x' || g, NULL, 'y'], \
     ARRAY[[g, g + 1], [g + 2, g + 3]], jsonb_build_object('n', g, 'deep', jsonb_build_object('x', 1.50, 'y', jsonb_build_array('z', g::text))), decode('00ff' || lpad(to_hex(g), 4, '0'), 'hex'), \
     md5(g::text)::uuid, 'hidden' FROM generate_series(1, 600) g";

/// The same rows under the same projection and filter, once streamed by `cdc run` and once
/// rebuilt: the same ids and byte-identical documents (a generated column, which pgoutput does
/// not send, is in neither).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_index_equals_the_streamed_one_under_a_filter_and_a_projection() {
    let _serial = support::serial();
    let node = node_url();
    let streamed = support::unique_name("rb_streamed");
    let rebuilt = support::unique_name("rb_rebuilt");
    let tables = things_mapping(&streamed, "streaming") + &things_mapping(&rebuilt, "rebuilding");
    let s = setup("rebuild_same", TYPES_DDL, "", &["streaming", "rebuilding"], &tables).await;
    let mut cdc = s.run();
    s.db.exec(THINGS_ROWS).await;
    s.db.exec("UPDATE things SET kind = 'c' WHERE id % 10 = 1; UPDATE things SET kind = 'a', name = 'moved in' WHERE id % 10 = 2 AND kind = 'c'; DELETE FROM things WHERE id % 25 = 0")
        .await;
    let lsn = s.db.current_wal_lsn().await;
    s.db.wait_confirmed_flush(&s.db.name, lsn, Duration::from_secs(120))
        .await;
    cdc.sigterm();

    // Only the rebuild writes the second index from here on.
    for index in alias_targets(&node, &rebuilt).await {
        let (status, body) = http(reqwest::Method::DELETE, &format!("{node}/{index}"), None).await;
        assert_eq!(status, 200, "{body}");
    }
    s.rebuild("public.things", &["--sink", "rebuilding", "--parallel", "2"]);

    let expected_ids =
        s.db.query_one_i64("SELECT count(*) FROM things WHERE kind IN ('a', 'b')")
            .await;
    let streamed_docs = raw_docs(&node, &streamed).await;
    let rebuilt_docs = raw_docs(&node, &rebuilt).await;
    assert_eq!(
        streamed_docs.len() as i64,
        expected_ids,
        "the stream indexed every matching row"
    );
    assert_eq!(
        streamed_docs.keys().collect::<Vec<_>>(),
        rebuilt_docs.keys().collect::<Vec<_>>(),
        "same ids"
    );
    for (id, doc) in &streamed_docs {
        assert_eq!(doc, &rebuilt_docs[id], "document {id} differs");
    }
    let sample = &streamed_docs["2"];
    assert!(
        !sample.contains("secret") && !sample.contains("twice") && sample.contains("\"name\":\"moved in\""),
        "{sample}"
    );
    let verified = s.cdc(&["verify", "--all"]);
    assert!(
        verified.status.success(),
        "{}\n{}",
        stdout_of(&verified),
        stderr_of(&verified)
    );
}

/// `cdc run` stopped while the rebuild runs and the writer keeps writing; started afterwards, it
/// writes what the rebuild did not apply through the alias into the new index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_while_cdc_run_is_stopped_is_completed_by_cdc_run_afterwards() {
    let _serial = support::serial();
    let node = node_url();
    let alias = support::unique_name("rb_stopped");
    let s = setup(
        "rebuild_stopped",
        EVENTS_DDL,
        &events_load(20_000),
        &["search"],
        &events_mapping(&alias, "search"),
    )
    .await;
    let mut cdc = s.run();
    s.db.exec("UPDATE events SET n = n + 1 WHERE id < 100").await;
    let lsn = s.db.current_wal_lsn().await;
    s.db.wait_confirmed_flush(&s.db.name, lsn, Duration::from_secs(60))
        .await;
    cdc.sigterm();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(s.db.url.clone(), 20_000, true, stop.clone());
    s.rebuild("public.events", &["--parallel", "2"]);
    stop.store(true, Ordering::Relaxed);
    assert!(writer.await.unwrap() > 20);
    // Changes after the rebuild's last position are for cdc run alone.
    s.db.exec("INSERT INTO events (state, title) VALUES ('published', 'after'); UPDATE events SET title = 'after' WHERE id = 3; DELETE FROM events WHERE id = 4; UPDATE events SET id = 2000000000 WHERE id = 6")
        .await;

    let mut cdc = s.run();
    assert_index_equals_table(&node, &alias, &s.db, EVENTS_EXPECTED, Duration::from_secs(120)).await;
    let verified = s.verify("public.events");
    assert!(
        verified.status.success(),
        "{}\n{}",
        stdout_of(&verified),
        stderr_of(&verified)
    );
    cdc.sigterm();
}

/// Searches on the alias during a rebuild (with `cdc run` streaming an insert/update writer)
/// never fail and never count fewer documents than before the rebuild started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_on_the_alias_never_fail_nor_shrink_during_a_rebuild() {
    let _serial = support::serial();
    let node = node_url();
    let alias = support::unique_name("rb_search");
    let s = setup(
        "rebuild_search",
        EVENTS_DDL,
        &events_load(30_000),
        &["search"],
        &events_mapping(&alias, "search"),
    )
    .await;
    s.rebuild("public.events", &[]);
    let mut cdc = s.run();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = spawn_writer(s.db.url.clone(), 30_000, false, stop.clone());

    let count_url = format!("{node}/{alias}/_count");
    let (status, body) = http(reqwest::Method::GET, &count_url, None).await;
    assert_eq!(status, 200, "{body}");
    let before = body["count"].as_u64().unwrap();
    assert!(before >= 24_000, "the first build indexed the table ({before})");
    let searching = Arc::new(AtomicBool::new(true));
    let searcher = {
        let searching = searching.clone();
        tokio::spawn(async move {
            let mut counts = Vec::new();
            while searching.load(Ordering::Relaxed) {
                let (status, body) = http(reqwest::Method::GET, &count_url, None).await;
                counts.push((status, body["count"].as_u64()));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            counts
        })
    };
    let out = s.rebuild("public.events", &["--parallel", "2"]);
    searching.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let counts = searcher.await.unwrap();
    assert!(
        counts.len() > 20,
        "the searches ran during the rebuild ({})",
        counts.len()
    );
    for (status, count) in &counts {
        assert_eq!(*status, 200, "a search failed during the rebuild");
        assert!(
            count.is_some_and(|c| c >= before),
            "a search saw {count:?} documents, fewer than the {before} before the rebuild; {}",
            stdout_of(&out)
        );
    }
    assert_index_equals_table(&node, &alias, &s.db, EVENTS_EXPECTED, Duration::from_secs(120)).await;
    cdc.sigterm();
}

/// Waits until the rebuild of `alias` has created its index (one not in `earlier`) and written
/// documents to it; returns the index.
async fn wait_for_copy(node: &str, alias: &str, rebuild: &mut CdcProcess, earlier: &[String]) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            rebuild.is_running(),
            "the rebuild ended before it was interrupted\n{}",
            rebuild.report()
        );
        let building = alias_targets(node, &format!("{alias}.rebuild")).await;
        if let Some(index) = building.iter().find(|i| !earlier.contains(i)) {
            http(reqwest::Method::POST, &format!("{node}/{index}/_refresh"), None).await;
            let (status, body) = http(reqwest::Method::GET, &format!("{node}/{index}/_count"), None).await;
            if status == 200 && body["count"].as_u64().is_some_and(|c| c > 0) {
                return index.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "no documents copied within 2 minutes\n{}",
            rebuild.report()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the rebuild logs that its copy is done: from there it is in the catch-up phase.
fn wait_for_catch_up(rebuild: &mut CdcProcess) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while !rebuild.stderr_text().contains("copy done: ") {
        assert!(
            rebuild.is_running(),
            "the rebuild ended before its catch-up phase\n{}",
            rebuild.report()
        );
        assert!(
            Instant::now() < deadline,
            "the copy did not end within 3 minutes\n{}",
            rebuild.report()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Where [`interrupt_rebuild`] stops a rebuild.
enum Phase {
    /// While it copies the table (some documents already in its new index).
    Copy,
    /// Copy done, changes still streaming, before the swap: held there by [`hold_catch_up`].
    CatchUp,
}

/// A slow rebuild of `table` (one worker, batches of 50) stopped by `signal` in `phase`; `left`
/// holds the half-built indexes of the earlier interrupted runs. The run removes the one the
/// previous run left (and says so), then fails before its swap: the old index keeps serving,
/// intact, and the temporary slot disappears. Returns the half-built index it leaves.
async fn interrupt_rebuild(
    s: &Setup,
    table: &str,
    alias: &str,
    phase: Phase,
    signal: libc::c_int,
    left: &[String],
) -> String {
    let node = node_url();
    let old = alias_targets(&node, alias).await;
    let before = raw_docs(&node, alias).await;
    let slow = [
        "--config",
        &s.config,
        "rebuild-index",
        "--table",
        table,
        "--parallel",
        "1",
        "--batch-size",
        "50",
    ];
    let mut rebuild = CdcProcess::start(&slow, LOG_ENV);
    let building = wait_for_copy(&node, alias, &mut rebuild, left).await;
    let hold = match phase {
        Phase::Copy => None,
        Phase::CatchUp => {
            let hold = hold_catch_up(&s.db, left.len()).await;
            wait_for_catch_up(&mut rebuild);
            Some(hold)
        }
    };

    rebuild.signal(signal);
    let status = rebuild.wait_exit(Duration::from_secs(30));
    assert!(!status.success(), "the rebuild was interrupted\n{}", rebuild.report());
    let log = rebuild.stderr_text();
    assert!(
        !log.contains("the alias now points at the new index"),
        "interrupted before the swap\n{}",
        rebuild.report()
    );
    if signal == libc::SIGINT {
        assert!(log.contains("interrupted by SIGINT"), "{}", rebuild.report());
    }
    if let Some(previous) = left.last() {
        assert!(
            log.contains(&format!("removing the half-built index {previous}")),
            "the run removed what the previous one left: {log}"
        );
    }
    assert_eq!(alias_targets(&node, alias).await, old, "the old index still serves");
    assert_eq!(raw_docs(&node, alias).await, before, "the old index is intact");
    let deadline = Instant::now() + Duration::from_secs(60);
    while rebuild_slots(&s.db).await > 0 {
        assert!(Instant::now() < deadline, "the temporary slot outlived its session");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Some(hold) = hold {
        hold.release().await;
    }
    building
}

/// What keeps a rebuild of the catch-up test's `docs` in its catch-up phase until released.
struct CatchUpHold {
    release: tokio::sync::oneshot::Sender<()>,
    migration: tokio::task::JoinHandle<()>,
}

/// Holds a rebuild of `docs` (whose copy is running) in its catch-up phase by a real condition,
/// no timing: a transaction holding an ACCESS EXCLUSIVE lock on the table (as a migration
/// would). An update of row `id = 1` (title `held {round}`) that leaves its TOASTed body
/// unchanged commits while the copy runs; the catch-up must read that value back from the
/// table, and its read waits behind the lock, which is granted once the copy's transaction ends
/// and held until [`CatchUpHold::release`].
async fn hold_catch_up(db: &TestDb, round: usize) -> CatchUpHold {
    // The update takes its row lock first; the migration's lock queues behind it and the copy.
    let writer = support::connect(&db.url).await;
    writer
        .batch_execute(&format!("BEGIN; UPDATE docs SET title = 'held {round}' WHERE id = 1"))
        .await
        .unwrap();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let url = db.url.clone();
    let migration = tokio::spawn(async move {
        let db = support::connect(&url).await;
        db.batch_execute("BEGIN; LOCK TABLE docs IN ACCESS EXCLUSIVE MODE")
            .await
            .unwrap();
        released.await.ok();
        db.batch_execute("ROLLBACK").await.unwrap();
    });
    let waiting_lock = "SELECT count(*) FROM pg_locks WHERE relation = 'docs'::regclass AND mode = 'AccessExclusiveLock' AND NOT granted";
    let deadline = Instant::now() + Duration::from_secs(60);
    while db.query_one_i64(waiting_lock).await == 0 {
        assert!(Instant::now() < deadline, "the migration's lock never queued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writer.batch_execute("COMMIT").await.unwrap();
    CatchUpHold { release, migration }
}

impl CatchUpHold {
    async fn release(self) {
        self.release.send(()).unwrap();
        self.migration.await.unwrap();
    }
}

/// After the last rebuild: its index, behind the alias, is the only one named after the alias,
/// no temporary slot is left, and the index equals the table.
async fn assert_cleaned_up(s: &Setup, alias: &str, expected: &str) {
    let node = node_url();
    let now = alias_targets(&node, alias).await;
    assert_eq!(indexes_named(&node, alias).await, now, "no stray index: {now:?}");
    assert_eq!(rebuild_slots(&s.db).await, 0);
    assert_index_equals_table(&node, alias, &s.db, expected, Duration::from_secs(30)).await;
}

/// kill -9, then SIGINT, in the copy phase: each time the old index keeps serving, intact, and
/// the temporary slot disappears; the next rebuild removes the half-built index (and says so),
/// succeeds, and leaves no stray index or slot. What a kill right after the swap leaves (the
/// private aliases) is set up by hand, as the window is too short to hit reliably.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_rebuild_leaves_the_old_index_serving_and_the_next_one_cleans_up() {
    let _serial = support::serial();
    let node = node_url();
    let alias = support::unique_name("rb_kill");
    let s = setup(
        "rebuild_kill",
        EVENTS_DDL,
        &events_load(40_000),
        &["search"],
        &events_mapping(&alias, "search"),
    )
    .await;
    s.rebuild("public.events", &[]);
    let old = alias_targets(&node, &alias).await;
    assert_eq!(raw_docs(&node, &alias).await.len(), 32_000);

    let mut left = Vec::new();
    for signal in [libc::SIGKILL, libc::SIGINT] {
        left.push(interrupt_rebuild(&s, "public.events", &alias, Phase::Copy, signal, &left).await);
    }

    // What a rebuild killed right after its swap leaves: the serving index still behind the
    // private alias, and the swapped-out index behind `<alias>.retired`.
    let swapped_out = format!("{alias}_swapped_out");
    let (status, body) = http(
        reqwest::Method::PUT,
        &format!("{node}/{swapped_out}"),
        Some(json!({"aliases": {format!("{alias}.retired"): {}}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(
        reqwest::Method::POST,
        &format!("{node}/_aliases"),
        Some(json!({"actions": [{"add": {"index": old[0], "alias": format!("{alias}.rebuild")}}]})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let out = s.rebuild("public.events", &[]);
    let log = stderr_of(&out);
    assert!(
        log.contains(&format!("removing the half-built index {}", left[1])),
        "{log}"
    );
    assert!(
        log.contains("removing the old index(es)") && log.contains(&swapped_out),
        "{log}"
    );
    assert!(
        !log.contains(&format!("removing the half-built index {}", old[0])),
        "{log}"
    );
    assert_cleaned_up(&s, &alias, EVENTS_EXPECTED).await;
}

/// kill -9, then SIGINT, in the catch-up phase (copy done, changes still streaming, before the
/// swap, held there by [`hold_catch_up`]): the old index keeps serving, intact, the temporary
/// slot disappears, and the next rebuild removes the half-built index and leaves no stray index
/// or slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_interrupted_in_its_catch_up_leaves_the_old_index_serving_and_the_next_one_cleans_up() {
    let _serial = support::serial();
    let node = node_url();
    let alias = support::unique_name("rb_catchup");
    let s = setup(
        "rebuild_catchup",
        "CREATE TABLE docs (id bigint PRIMARY KEY, title text NOT NULL, body text NOT NULL);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;",
        "INSERT INTO docs SELECT g, 'doc ' || g, CASE WHEN g = 1 THEN repeat('long body ', 600) ELSE 'body ' || g END \
         FROM generate_series(1, 20000) g;",
        &["search"],
        &format!("[[tables]]\ntable = \"docs\"\nsinks = [\"search\"]\nindex = \"{alias}\"\n"),
    )
    .await;
    let expected = "SELECT id::text, jsonb_build_object('id', id, 'title', title, 'body', body)::text FROM docs";
    s.rebuild("public.docs", &[]);
    assert_eq!(raw_docs(&node, &alias).await.len(), 20_000);

    let mut left = Vec::new();
    for signal in [libc::SIGKILL, libc::SIGINT] {
        left.push(interrupt_rebuild(&s, "public.docs", &alias, Phase::CatchUp, signal, &left).await);
    }

    let out = s.rebuild("public.docs", &[]);
    let log = stderr_of(&out);
    assert!(
        log.contains(&format!("removing the half-built index {}", left[1])),
        "{log}"
    );
    assert_cleaned_up(&s, &alias, expected).await;
    // The update held in the last run's catch-up is in the index.
    assert!(raw_docs(&node, &alias).await["1"].contains("\"title\":\"held 1\""));
}

/// `cdc verify` on tables keyed by types whose text cdc converts (a timestamptz key, whose
/// fractions sort differently once written with `Z`; a composite key of uuid, timestamp, bool,
/// bytea and numeric): the table is read in the index's id order, so a clean index verifies
/// with no difference even on the first look, and a missing, an extra and a modified document
/// are found and named by their ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_merges_timestamp_and_composite_keys_in_the_index_order() {
    let _serial = support::serial();
    let node = node_url();
    let stamps = support::unique_name("rb_stamps");
    let readings = support::unique_name("rb_readings");
    let s = setup(
        "rebuild_keys",
        "CREATE TABLE stamps (at timestamptz PRIMARY KEY, title text NOT NULL);
         CREATE TABLE readings (device uuid, at timestamp, ok bool, tag bytea, amount numeric, title text NOT NULL,
                                PRIMARY KEY (device, at, ok, tag, amount));",
        "INSERT INTO stamps SELECT timestamptz '2026-01-01 00:00:00+00' + g * interval '250 milliseconds', 'stamp ' || g \
         FROM generate_series(0, 2999) g;
         INSERT INTO stamps VALUES ('infinity', 'end'), ('-infinity', 'start'), ('0044-03-15 12:00:00+00 BC', 'ides');
         INSERT INTO readings SELECT ('00000000-0000-0000-0000-' || lpad(to_hex(g % 7), 12, '0'))::uuid, \
                timestamp '2026-01-01' + g * interval '1500 milliseconds', g % 3 = 0, decode(md5(g::text), 'hex'), \
                round((g % 5) / 2.0, 1), 'reading ' || g FROM generate_series(1, 2000) g;",
        &["search"],
        &format!(
            "[[tables]]\ntable = \"stamps\"\nsinks = [\"search\"]\nindex = \"{stamps}\"\ncolumns = [\"title\"]\n\n\
             [[tables]]\ntable = \"readings\"\nsinks = [\"search\"]\nindex = \"{readings}\"\n"
        ),
    )
    .await;
    // The stamps' documents leave `at` out (it is their id): the node would map it as a date
    // and refuse `infinity` and the BC date.
    let out = s.rebuild("public.stamps", &[]);
    assert!(
        stdout_of(&out).contains("public.stamps: 3003 rows, 3003 documents, 0 dead letters"),
        "{}",
        stdout_of(&out)
    );
    s.rebuild("public.readings", &[]);
    let docs = index_docs(&node, &stamps).await;
    assert_eq!(
        docs.len(),
        3003,
        "{:?}",
        docs.keys().filter(|id| !id.starts_with("2026")).collect::<Vec<_>>()
    );
    for (id, title) in [
        ("2026-01-01T00:00:00Z", "stamp 0"),
        ("2026-01-01T00:00:00.25Z", "stamp 1"),
        ("2026-01-01T00:00:00.5Z", "stamp 2"),
        ("infinity", "end"),
        ("0044-03-15 12:00:00+00 BC", "ides"),
    ] {
        assert_eq!(docs[id]["title"], title, "{id}");
    }
    let reading_docs = raw_docs(&node, &readings).await;
    assert_eq!(reading_docs.len(), 2000);
    let (sample_id, _) = reading_docs
        .iter()
        .find(|(_, doc)| doc.contains("\"title\":\"reading 3\""))
        .unwrap();
    let tag =
        s.db.query_opt_text("SELECT encode(decode(md5('3'), 'hex'), 'base64')")
            .await
            .unwrap();
    assert_eq!(
        *sample_id,
        format!("00000000-0000-0000-0000-000000000003:2026-01-01T00:00:04.5:true:{tag}:1.5")
    );

    let clean = s.cdc(&["verify", "--all"]);
    let text = stdout_of(&clean);
    assert!(clean.status.success(), "{text}\n{}", stderr_of(&clean));
    assert_eq!(text.matches("missing 0, extra 0, different 0").count(), 2, "{text}");
    assert!(text.contains(": 3003 rows, 3003 documents;"), "{text}");
    assert!(text.contains(": 2000 rows, 2000 documents;"), "{text}");
    assert!(
        !stderr_of(&clean).contains("looking at them again"),
        "both sides merged in the same order, so the first look found no difference: {}",
        stderr_of(&clean)
    );

    // Behind cdc's back: a stamp and a reading deleted, a stamp added, a stamp and a reading changed.
    let missing_reading = reading_docs.keys().nth(700).unwrap().clone();
    for (method, url, body) in [
        (
            reqwest::Method::DELETE,
            format!("{node}/{stamps}/_doc/2026-01-01T00:00:00.5Z?refresh=true"),
            None,
        ),
        (
            reqwest::Method::PUT,
            format!("{node}/{stamps}/_doc/2026-01-01T00:00:00.1Z?refresh=true"),
            Some(json!({"title": "not in the table"})),
        ),
        (
            reqwest::Method::POST,
            format!("{node}/{stamps}/_update/2026-01-01T00:00:01Z?refresh=true"),
            Some(json!({"doc": {"title": "changed"}})),
        ),
        (
            reqwest::Method::DELETE,
            format!("{node}/{readings}/_doc/{}?refresh=true", urlencode(&missing_reading)),
            None,
        ),
        (
            reqwest::Method::POST,
            format!("{node}/{readings}/_update/{}?refresh=true", urlencode(sample_id)),
            Some(json!({"doc": {"title": "changed"}})),
        ),
    ] {
        let (status, reply) = http(method, &url, body).await;
        assert!(status == 200 || status == 201, "{url}: {reply}");
    }
    for args in [&["verify", "--all"][..], &["verify", "--all", "--sample", "5000"]] {
        let found = s.cdc(args);
        let text = stdout_of(&found);
        assert_eq!(found.status.code(), Some(1), "{args:?}: {text}\n{}", stderr_of(&found));
        assert!(
            text.contains(&format!(
                "public.stamps → {stamps}: DIFFERS: 3003 rows, 3003 documents; missing 1, extra 1, different 1"
            )),
            "{args:?}: {text}"
        );
        assert!(text.contains("missing (1), e.g.: 2026-01-01T00:00:00.5Z\n"), "{text}");
        assert!(text.contains("extra (1), e.g.: 2026-01-01T00:00:00.1Z\n"), "{text}");
        assert!(
            text.contains("different (1), e.g.: 2026-01-01T00:00:01Z: title\n"),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "public.readings → {readings}: DIFFERS: 2000 rows, 1999 documents; missing 1, extra 0, different 1"
            )),
            "{args:?}: {text}"
        );
        assert!(
            text.contains(&format!("missing (1), e.g.: {missing_reading}\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("different (1), e.g.: {sample_id}: title\n")),
            "{text}"
        );
    }
}

/// Percent-encodes a document id for a URL path.
fn urlencode(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A row whose document id column is NULL is a dead letter for the rebuild as for the stream:
/// the same error and payload shape, counted in the summary line; `cdc verify` expects it out
/// of the index; once the row is fixed, `cdc dead-letters replay` indexes it (the letter names
/// the index being built, which replay maps back to the mapping).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_without_a_document_id_is_a_dead_letter_in_the_rebuild_as_in_the_stream() {
    let _serial = support::serial();
    let node = node_url();
    let alias = support::unique_name("rb_dead");
    let s = setup(
        "rebuild_dead",
        "CREATE TABLE tagged (id int PRIMARY KEY, slug text, title text NOT NULL);",
        "INSERT INTO tagged SELECT g, CASE WHEN g % 10 = 0 THEN NULL ELSE 'slug-' || g END, 'title ' || g FROM generate_series(1, 100) g;",
        &["search"],
        &format!("[[tables]]\ntable = \"tagged\"\nsinks = [\"search\"]\nindex = \"{alias}\"\nid = [\"slug\"]\n"),
    )
    .await;
    let out = s.rebuild("public.tagged", &[]);
    assert!(
        stdout_of(&out).contains("public.tagged: 100 rows, 90 documents, 10 dead letters in "),
        "{}",
        stdout_of(&out)
    );
    let letters = "SELECT count(*) FROM cdc.dead_letters WHERE kind = 'search' AND error = 'the document id column \"slug\" is null' \
                   AND payload::jsonb->'action' = 'null' AND payload::jsonb->'event'->'new'->>'slug' IS NULL";
    assert_eq!(
        s.db.query_one_i64(letters).await,
        10,
        "each row without an id is a dead letter"
    );
    let verified = s.verify("public.tagged");
    assert!(
        verified.status.success(),
        "{}\n{}",
        stdout_of(&verified),
        stderr_of(&verified)
    );
    assert!(
        stdout_of(&verified)
            .contains("90 rows, 90 documents; missing 0, extra 0, different 0; 10 row(s) without a document id"),
        "{}",
        stdout_of(&verified)
    );

    // The stream stores such a row the same way.
    let mut cdc = s.run();
    s.db.exec("INSERT INTO tagged VALUES (1000, NULL, 'streamed')").await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.db.query_one_i64(letters).await < 11 {
        assert!(
            Instant::now() < deadline,
            "the stream stored no dead letter\n{}",
            cdc.report()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cdc.sigterm();

    s.db.exec("UPDATE tagged SET slug = 'fixed-' || id WHERE slug IS NULL")
        .await;
    let replayed = s.cdc(&["dead-letters", "replay", "--all"]);
    assert!(
        replayed.status.success(),
        "{}\n{}",
        stdout_of(&replayed),
        stderr_of(&replayed)
    );
    assert!(
        stdout_of(&replayed).contains("11 delivered, 0 still refused"),
        "{}",
        stdout_of(&replayed)
    );
    assert_eq!(s.db.query_one_i64("SELECT count(*) FROM cdc.dead_letters").await, 0);
    let docs = index_docs(&node, &alias).await;
    assert_eq!(docs.len(), 101);
    assert_eq!(docs["fixed-10"]["title"], "title 10");
    assert_eq!(docs["fixed-1000"]["title"], "streamed");
    let verified = s.verify("public.tagged");
    assert!(
        verified.status.success(),
        "{}\n{}",
        stdout_of(&verified),
        stderr_of(&verified)
    );
}

/// A truncate and a new column while the copy runs (both wait for the copy's lock, so they
/// commit during the catch-up): the rebuild starts over from a new snapshot, and the index ends
/// equal to the table, the new column in its documents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncate_and_an_added_column_during_a_rebuild_end_in_an_index_equal_to_the_table() {
    let _serial = support::serial();
    let node = node_url();
    let alias = support::unique_name("rb_truncate");
    let s = setup(
        "rebuild_truncate",
        EVENTS_DDL,
        &events_load(20_000),
        &["search"],
        &events_mapping(&alias, "search").replace(
            "columns = [\"id\", \"state\", \"title\", \"n\", \"price\", \"at\"]",
            "exclude_columns = [\"secret\"]",
        ),
    )
    .await;
    let mut rebuild = CdcProcess::start(
        &[
            "--config",
            &s.config,
            "rebuild-index",
            "--table",
            "public.events",
            "--parallel",
            "1",
            "--batch-size",
            "50",
        ],
        LOG_ENV,
    );
    wait_for_copy(&node, &alias, &mut rebuild, &[]).await;
    // Blocks until the copy ends (its transaction holds the table's ACCESS SHARE lock).
    s.db.exec(
        "BEGIN; TRUNCATE events; ALTER TABLE events ADD COLUMN extra text DEFAULT 'x';
         INSERT INTO events (state, title, n, price, at, secret, extra) SELECT 'published', 'after ' || g, g, 1.00, now(), 's', 'e' || g FROM generate_series(1, 300) g;
         COMMIT;",
    )
    .await;
    let status = rebuild.wait_exit(Duration::from_secs(240));
    assert!(status.success(), "{}", rebuild.report());
    assert!(
        rebuild
            .stderr_text()
            .contains("truncated during the rebuild: starting over"),
        "{}",
        rebuild.report()
    );
    let expected = "SELECT id::text, (to_jsonb(e) - 'secret' || jsonb_build_object('at', replace((at AT TIME ZONE 'UTC')::text, ' ', 'T') || 'Z'))::text \
                    FROM events e WHERE state = 'published'";
    assert_index_equals_table(&node, &alias, &s.db, expected, Duration::from_secs(30)).await;
    let docs = index_docs(&node, &alias).await;
    assert_eq!(docs.len(), 300);
    assert!(docs
        .values()
        .all(|d| d["extra"].as_str().is_some_and(|e| e.starts_with('e'))));
    let verified = s.verify("public.events");
    assert!(
        verified.status.success(),
        "{}\n{}",
        stdout_of(&verified),
        stderr_of(&verified)
    );
}

/// `--help` describes both commands with examples; a selection that names nothing to rebuild
/// is an error that says what is mapped, before anything is touched.
#[test]
fn the_commands_explain_themselves_and_refuse_an_empty_selection() {
    for cmd in ["rebuild-index", "verify"] {
        let out = support::cdc(&[cmd, "--help"]);
        assert!(out.status.success(), "{cmd} --help");
        let text = stdout_of(&out);
        assert!(
            text.contains("Examples:") && text.contains("--table") && text.contains("--all"),
            "{text}"
        );
    }
    let dir = support::temp_dir();
    let config = write_config(
        dir.path(),
        "[source]\nurl = \"postgres://nobody@127.0.0.1:1/none\"\n\n[sinks.search]\ntype = \"elasticsearch\"\nurl = \"http://127.0.0.1:1\"\n\n[[tables]]\ntable = \"events\"\nsinks = [\"search\"]\n",
    );
    let config = config.to_str().unwrap();
    let out = support::cdc(&["--config", config, "rebuild-index", "--table", "public.other"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains(
            "no [[tables]] mapping sends public.other to a search sink; mapped to search sinks: public.events"
        ),
        "{}",
        stderr_of(&out)
    );
    let out = support::cdc(&["--config", config, "verify"]);
    assert!(!out.status.success());
    assert!(stderr_of(&out).contains("--table"), "{}", stderr_of(&out));
}
