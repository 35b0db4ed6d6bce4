//! `cdc run` against a real PostgreSQL: every op, every type, schema changes, truncate, order.
//! Each test has its own database and slot; the cluster is the one scripts/test.sh started.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{CdcProcess, TestDb};

const WAIT: Duration = Duration::from_secs(30);

/// A database with `ddl` applied, `tables` sent to stdout, and `cdc run` started.
struct Running {
    db: TestDb,
    cdc: CdcProcess,
    _dir: support::TempDir,
}

async fn start(prefix: &str, ddl: &str, tables: &str) -> Running {
    let setup = support::stdout_setup(prefix, ddl, tables).await;
    let cdc = setup.run();
    Running {
        db: setup.db,
        cdc,
        _dir: setup.dir,
    }
}

fn ops(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["op"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn insert_update_delete_become_create_update_delete_events() {
    let mut r = start(
        "ops",
        "CREATE TABLE items (id int PRIMARY KEY, title text, price numeric(10,2));",
        "[[tables]]\ntable = \"public.items\"\nsinks = [\"out\"]\n",
    )
    .await;
    r.db.exec("INSERT INTO items VALUES (7, 'a', 1.50)").await;
    r.db.exec("UPDATE items SET title = 'b' WHERE id = 7").await;
    r.db.exec("DELETE FROM items WHERE id = 7").await;
    let events = r.cdc.next_events(3, WAIT);
    assert_eq!(ops(&events), ["create", "update", "delete"]);

    let create = &events[0];
    assert_eq!(create["schema"], "public");
    assert_eq!(create["table"], "items");
    assert_eq!(create["key"], json!({"id": 7}));
    assert_eq!(create["new"], json!({"id": 7, "title": "a", "price": 1.50}));
    assert!(create["old"].is_null());

    let update = &events[1];
    assert_eq!(update["new"]["title"], "b");
    // without REPLICA IDENTITY FULL the old row is unknown, and so is the exact change list
    assert!(update["old"].is_null());
    assert!(update["changed"].is_null());

    let delete = &events[2];
    assert_eq!(delete["key"], json!({"id": 7}));
    assert_eq!(delete["old"], json!({"id": 7}));
    assert!(delete["new"].is_null());

    for e in &events {
        let commit_lsn = e["commit_lsn"].as_str().unwrap();
        assert!(
            e["id"].as_str().unwrap().starts_with(&format!("{commit_lsn}:")),
            "id is <commit_lsn>:<n>: {e}"
        );
        assert!(e["xid"].as_u64().unwrap() > 0);
        assert!(e["committed_at"].as_str().unwrap().ends_with('Z'));
        assert!(e["lsn"].as_str().unwrap().contains('/'));
    }
    // the numeric keeps the database's digits
    assert!(
        r.cdc.raw_lines().iter().any(|l| l.contains("\"price\":1.50")),
        "{:?}",
        r.cdc.raw_lines()
    );
}

#[tokio::test]
async fn replica_identity_full_gives_the_old_row_and_exact_changed_columns() {
    let mut r = start(
        "full",
        "CREATE TABLE items (id int PRIMARY KEY, title text, price int, body text);
         ALTER TABLE items REPLICA IDENTITY FULL;
         ALTER TABLE items ALTER COLUMN body SET STORAGE EXTERNAL;",
        "[[tables]]\ntable = \"items\"\nsinks = [\"out\"]\n",
    )
    .await;
    let big = "x".repeat(100_000);
    r.db.exec(&format!("INSERT INTO items VALUES (1, 'a', 10, '{big}')"))
        .await;
    r.db.exec("UPDATE items SET title = 'b' WHERE id = 1").await;
    r.db.exec("UPDATE items SET id = 2 WHERE id = 1").await;
    let events = r.cdc.next_events(3, WAIT);
    let update = &events[1];
    assert_eq!(update["changed"], json!(["title"]));
    assert_eq!(update["old"]["title"], "a");
    assert_eq!(update["old"]["price"], 10);
    // the TOASTed, unchanged body is filled from the old row, never null
    assert_eq!(update["new"]["body"].as_str().unwrap().len(), 100_000);

    let key_change = &events[2];
    assert_eq!(key_change["key"], json!({"id": 1}), "a key change carries the old key");
    assert_eq!(key_change["new"]["id"], 2);
    assert_eq!(key_change["changed"], json!(["id"]));
}

#[tokio::test]
async fn unchanged_toast_is_marked_not_nulled_without_full_identity() {
    let mut r = start(
        "toast",
        "CREATE TABLE docs (id int PRIMARY KEY, title text, body text);
         ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;",
        "[[tables]]\ntable = \"docs\"\nsinks = [\"out\"]\n",
    )
    .await;
    let big = "é".repeat(60_000);
    r.db.exec(&format!("INSERT INTO docs VALUES (1, 'a', '{big}')")).await;
    r.db.exec("UPDATE docs SET title = 'b' WHERE id = 1").await;
    let events = r.cdc.next_events(2, WAIT);
    assert_eq!(events[0]["new"]["body"].as_str().unwrap().chars().count(), 60_000);
    let update = &events[1];
    assert!(
        update["new"].get("body").is_none(),
        "an unchanged TOAST value is not sent as null: {update}"
    );
    assert_eq!(update["unchanged_toast"], json!(["body"]));
    assert_eq!(update["new"]["title"], "b");
}

#[tokio::test]
async fn key_change_without_full_identity_carries_the_old_key() {
    let mut r = start(
        "keychange",
        "CREATE TABLE items (id int PRIMARY KEY, title text);",
        "[[tables]]\ntable = \"items\"\nsinks = [\"out\"]\n",
    )
    .await;
    r.db.exec("INSERT INTO items VALUES (1, 'a'); UPDATE items SET id = 5 WHERE id = 1;")
        .await;
    let events = r.cdc.next_events(2, WAIT);
    assert_eq!(events[1]["op"], "update");
    assert_eq!(events[1]["key"], json!({"id": 1}));
    assert_eq!(events[1]["old"], json!({"id": 1}));
    assert_eq!(events[1]["new"], json!({"id": 5, "title": "a"}));
}

#[tokio::test]
async fn every_type_converts_exactly() {
    let mut r = start(
        "types",
        "CREATE TYPE mood AS ENUM ('sad', 'happy');
         CREATE DOMAIN positive AS int CHECK (VALUE > 0);
         CREATE TABLE t (
           id int PRIMARY KEY, i2 int2, i8 int8, n numeric, n_big numeric, n_small numeric, n_nan numeric,
           f4 float4, f8 float8, f_inf float8, f_nan float8, b bool, t text, vc varchar(10), ch char(3),
           u uuid, ip inet, m mood, j json, jb jsonb, by bytea, d date, ts timestamp, tstz timestamptz,
           tm time, iv interval, dom positive, ai int[], a2 int[][], at text[], aj jsonb[], am mood[], nul text, uni text);",
        "[[tables]]\ntable = \"t\"\nsinks = [\"out\"]\n",
    )
    .await;
    r.db.exec(
        r#"INSERT INTO t VALUES (1, -32768, 9223372036854775807, 1.50, 123456789012345678901234567890.123456789,
           0.000000000000000000000000000001, 'NaN', 1.5, 0.1, '-Infinity', 'NaN', true, 'hello', 'v', 'ab',
           'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '192.168.0.1/24', 'happy', '{"a": [1, 2.50]}', '{"b": {"c": null}}',
           '\x00ff10', '2026-11-24', '2026-11-24 18:30:00.123456', '2026-11-24 20:30:00.5+02', '18:30:00',
           '1 year 2 mons 3 days 04:05:06', 5, '{1,NULL,3}', '{{1,2},{3,4}}', '{"a,b","with \"quote\"",NULL,"NULL"}',
           ARRAY['{"x":1}'::jsonb], '{sad,happy}', NULL, 'ünïcødé ✓ 日本')"#,
    )
    .await;
    let e = &r.cdc.next_events(1, WAIT)[0];
    let new = &e["new"];
    assert_eq!(new["i2"], -32768);
    assert_eq!(new["i8"], json!(9223372036854775807i64));
    assert_eq!(new["n_nan"], "NaN");
    assert_eq!(new["f4"], 1.5);
    assert_eq!(new["f8"], 0.1);
    assert_eq!(new["f_inf"], "-Infinity");
    assert_eq!(new["f_nan"], "NaN");
    assert_eq!(new["b"], true);
    assert_eq!(new["t"], "hello");
    assert_eq!(new["vc"], "v");
    assert_eq!(new["ch"], "ab ");
    assert_eq!(new["u"], "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert_eq!(new["ip"], "192.168.0.1/24");
    assert_eq!(new["m"], "happy");
    assert_eq!(new["j"], json!({"a": [1, 2.50]}));
    assert_eq!(new["jb"], json!({"b": {"c": null}}));
    assert_eq!(new["by"], "AP8Q");
    assert_eq!(new["d"], "2026-11-24");
    assert_eq!(new["ts"], "2026-11-24T18:30:00.123456");
    assert_eq!(new["tstz"], "2026-11-24T18:30:00.5Z");
    assert_eq!(new["tm"], "18:30:00");
    assert_eq!(new["iv"], "P1Y2M3DT4H5M6S");
    assert_eq!(new["dom"], 5);
    assert_eq!(new["ai"], json!([1, null, 3]));
    assert_eq!(new["a2"], json!([[1, 2], [3, 4]]));
    assert_eq!(new["at"], json!(["a,b", "with \"quote\"", null, "NULL"]));
    assert_eq!(new["aj"], json!([{"x": 1}]));
    assert_eq!(new["am"], json!(["sad", "happy"]));
    assert!(new["nul"].is_null() && new.as_object().unwrap().contains_key("nul"));
    assert_eq!(new["uni"], "ünïcødé ✓ 日本");
    // exact digits, no float rounding
    let line = r
        .cdc
        .raw_lines()
        .iter()
        .find(|l| l.contains("\"n_big\""))
        .unwrap()
        .clone();
    assert!(
        line.contains("\"n_big\":123456789012345678901234567890.123456789"),
        "{line}"
    );
    assert!(line.contains("\"n_small\":0.000000000000000000000000000001"), "{line}");
    assert!(line.contains("\"n\":1.50"), "{line}");
}

#[tokio::test]
async fn schema_changes_mid_stream_are_followed_without_restart() {
    let mut r = start(
        "schema",
        "CREATE TABLE items (id int PRIMARY KEY, title text, price int);",
        "[[tables]]\ntable = \"items\"\nsinks = [\"out\"]\n",
    )
    .await;
    r.db.exec("INSERT INTO items VALUES (1, 'a', 10)").await;
    r.db.exec("ALTER TABLE items ADD COLUMN tags text[]; INSERT INTO items VALUES (2, 'b', 20, '{x}')")
        .await;
    r.db.exec("ALTER TABLE items DROP COLUMN price; INSERT INTO items VALUES (3, 'c', '{y}')")
        .await;
    r.db.exec("ALTER TABLE items RENAME COLUMN title TO name; INSERT INTO items VALUES (4, 'd', NULL)")
        .await;
    r.db.exec(
        "ALTER TABLE items ALTER COLUMN name TYPE int USING length(name); INSERT INTO items VALUES (5, 42, NULL)",
    )
    .await;
    let events = r.cdc.next_events(5, WAIT);
    assert_eq!(events[0]["new"], json!({"id": 1, "title": "a", "price": 10}));
    assert_eq!(
        events[1]["new"],
        json!({"id": 2, "title": "b", "price": 20, "tags": ["x"]})
    );
    assert_eq!(events[2]["new"], json!({"id": 3, "title": "c", "tags": ["y"]}));
    assert_eq!(events[3]["new"], json!({"id": 4, "name": "d", "tags": null}));
    assert_eq!(events[4]["new"], json!({"id": 5, "name": 42, "tags": null}));
}

#[tokio::test]
async fn truncate_of_several_tables_gives_one_event_per_table_with_its_flags() {
    let mut r = start(
        "truncate",
        "CREATE TABLE a (id serial PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY, a_id int REFERENCES a(id));",
        "[[tables]]\ntable = \"a\"\nsinks = [\"out\"]\n[[tables]]\ntable = \"b\"\nsinks = [\"out\"]\n",
    )
    .await;
    r.db.exec("INSERT INTO a DEFAULT VALUES; TRUNCATE a RESTART IDENTITY CASCADE;")
        .await;
    let events = r.cdc.next_events(3, WAIT);
    assert_eq!(events[0]["op"], "create");
    let truncated: Vec<_> = events[1..]
        .iter()
        .map(|e| (e["op"].as_str().unwrap(), e["table"].as_str().unwrap()))
        .collect();
    assert!(
        truncated.contains(&("truncate", "a")) && truncated.contains(&("truncate", "b")),
        "{truncated:?}"
    );
    assert_eq!(
        events[1]["truncate"],
        json!({"cascade": true, "restart_identity": true})
    );
    assert_eq!(events[1]["commit_lsn"], events[2]["commit_lsn"]);
}

#[tokio::test]
async fn transactions_over_several_tables_arrive_in_commit_order() {
    let mut r = start(
        "order",
        "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY); CREATE TABLE ignored (id int PRIMARY KEY);",
        "[[tables]]\ntable = \"a\"\nsinks = [\"out\"]\n[[tables]]\ntable = \"b\"\nsinks = [\"out\"]\n",
    )
    .await;
    // Two sessions interleave; commit order is tx2 then tx1.
    let other = support::connect(&r.db.url).await;
    other
        .batch_execute("BEGIN; INSERT INTO a VALUES (1); INSERT INTO b VALUES (1);")
        .await
        .unwrap();
    r.db.exec("BEGIN; INSERT INTO b VALUES (2); INSERT INTO ignored VALUES (2); INSERT INTO a VALUES (2); COMMIT;")
        .await;
    other.batch_execute("INSERT INTO a VALUES (3); COMMIT;").await.unwrap();
    let events = r.cdc.next_events(5, WAIT);
    let seen: Vec<(String, i64)> = events
        .iter()
        .map(|e| {
            (
                e["table"].as_str().unwrap().to_string(),
                e["new"]["id"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("b".into(), 2),
            ("a".into(), 2),
            ("a".into(), 1),
            ("b".into(), 1),
            ("a".into(), 3)
        ]
    );
    assert_eq!(
        events[0]["id"],
        format!("{}:0", events[0]["commit_lsn"].as_str().unwrap())
    );
    assert_eq!(
        events[1]["id"],
        format!("{}:1", events[1]["commit_lsn"].as_str().unwrap()),
        "ids count the transaction's routed changes"
    );
    assert!(events[0]["commit_lsn"].as_str() != events[2]["commit_lsn"].as_str());
    assert!(
        r.cdc.no_more_events(Duration::from_millis(500)).is_empty(),
        "the unmapped table is ignored"
    );
}

#[tokio::test]
async fn projection_ops_and_key_from_the_mapping() {
    let mut r = start(
        "mapping",
        // A key outside the primary key needs the whole old row, or deletes could not carry it.
        "CREATE TABLE items (id int PRIMARY KEY, sku text, title text, secret text); ALTER TABLE items REPLICA IDENTITY FULL;",
        r#"[[tables]]
table = "items"
sinks = ["out"]
exclude_columns = ["secret"]
key = ["sku"]
ops = ["create", "delete"]
"#,
    )
    .await;
    r.db.exec("INSERT INTO items VALUES (1, 'A-1', 't', 's'); UPDATE items SET title = 'u'; DELETE FROM items;")
        .await;
    let events = r.cdc.next_events(2, WAIT);
    assert_eq!(ops(&events), ["create", "delete"]);
    assert_eq!(events[0]["new"], json!({"id": 1, "sku": "A-1", "title": "t"}));
    assert_eq!(events[0]["key"], json!({"sku": "A-1"}));
    assert_eq!(
        events[1]["key"],
        json!({"sku": "A-1"}),
        "the delete names the row by the same key"
    );
}

#[tokio::test]
async fn a_partitioned_table_is_mapped_by_its_parent() {
    let mut r = start(
        "partitions",
        "CREATE TABLE measures (id int, at date, v int, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
         CREATE TABLE measures_2025 PARTITION OF measures FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
         CREATE TABLE measures_2026 PARTITION OF measures FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');",
        "[[tables]]\ntable = \"measures\"\nsinks = [\"out\"]\n",
    )
    .await;
    r.db.exec("INSERT INTO measures VALUES (1, '2025-06-01', 10), (2, '2026-06-01', 20)")
        .await;
    let events = r.cdc.next_events(2, WAIT);
    for e in &events {
        assert_eq!(e["table"], "measures", "partition changes carry the parent's name: {e}");
    }
    assert_eq!(events[1]["key"], json!({"id": 2, "at": "2026-06-01"}));
}

/// Under REPLICA IDENTITY USING INDEX a delete carries only the index's columns, so that index,
/// not the primary key, is the key of every event of the table.
#[tokio::test]
async fn the_identity_index_is_the_key_under_replica_identity_using_index() {
    let mut r = start(
        "using_index",
        "CREATE TABLE items (id int PRIMARY KEY, code text NOT NULL, title text);
         CREATE UNIQUE INDEX items_code ON items (code);
         ALTER TABLE items REPLICA IDENTITY USING INDEX items_code;",
        "[[tables]]\ntable = \"items\"\nsinks = [\"out\"]\n",
    )
    .await;
    r.db.exec("INSERT INTO items VALUES (1, 'c-1', 'a')").await;
    r.db.exec("UPDATE items SET title = 'b' WHERE id = 1").await;
    r.db.exec("DELETE FROM items WHERE id = 1").await;
    let events = r.cdc.next_events(3, WAIT);
    assert_eq!(ops(&events), ["create", "update", "delete"]);
    for event in &events {
        assert_eq!(event["key"], json!({"code": "c-1"}), "{event}");
    }
    assert_eq!(events[2]["old"], json!({"code": "c-1"}));
}

/// A column the mapping's filter needs is renamed while cdc runs: a filter cannot decide on a
/// column that is not there, so routing on would drop every insert without a word. cdc stops
/// with exit status 1 and says what to fix, before confirming the change it could not route.
#[tokio::test]
async fn a_filter_column_renamed_mid_run_stops_cdc_with_the_fix_and_loses_nothing() {
    let s = support::stdout_setup(
        "filter_renamed",
        "CREATE TABLE items (id int PRIMARY KEY, state text);",
        "[[tables]]\ntable = \"items\"\nsinks = [\"out\"]\nfilter = { state = \"published\" }",
    )
    .await;
    let mut cdc = s.run();
    s.db.exec("INSERT INTO items VALUES (1, 'published')").await;
    assert_eq!(cdc.next_events(1, Duration::from_secs(30))[0]["new"]["id"], 1);
    s.db.exec("ALTER TABLE items RENAME COLUMN state TO status").await;
    let before = s.db.current_wal_lsn().await;
    s.db.exec("INSERT INTO items VALUES (2, 'published')").await;
    let status = cdc.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "stderr:\n{}", cdc.stderr_text());
    let stderr = cdc.stderr_text();
    assert!(
        stderr.contains("no longer has the column(s) [\"state\"]") && stderr.contains("Fix the mapping"),
        "{stderr}"
    );
    let confirmed = s.db.confirmed_flush_lsn(&s.db.name).await.unwrap();
    assert!(
        confirmed <= before,
        "confirmed {confirmed:X} passed the insert cdc could not route (WAL was at {before:X} before it)"
    );
}
