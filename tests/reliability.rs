//! Nothing is lost: kill -9 and restart, SIGTERM, idle slots advancing, a 1,000,000-row
//! transaction in bounded memory, an unreachable server. Real PostgreSQL, real processes.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{write_config, CdcProcess, StdoutSetup};

async fn setup(prefix: &str, ddl: &str, table: &str) -> StdoutSetup {
    support::stdout_setup(
        prefix,
        ddl,
        &format!("[[tables]]\ntable = \"{table}\"\nsinks = [\"out\"]"),
    )
    .await
}

fn run(s: &StdoutSetup) -> CdcProcess {
    s.run()
}

fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').unwrap();
    u64::from_str_radix(hi, 16).unwrap() << 32 | u64::from_str_radix(lo, 16).unwrap()
}

// Multi-threaded: the load runs as a task while the test blocks reading cdc's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_then_restart_delivers_every_change() {
    let s = setup("kill9", "CREATE TABLE items (id int PRIMARY KEY, n int);", "items").await;
    let mut first = run(&s);
    let load = {
        let url = s.db.url.clone();
        tokio::spawn(async move {
            let c = support::connect(&url).await;
            for t in 0..300 {
                let values: Vec<String> = (0..10).map(|i| format!("({}, {t})", t * 10 + i)).collect();
                c.batch_execute(&format!("INSERT INTO items VALUES {}", values.join(",")))
                    .await
                    .unwrap();
            }
        })
    };
    let mut seen: BTreeMap<String, Value> = BTreeMap::new();
    for e in first.next_events(500, Duration::from_secs(60)) {
        seen.insert(e["id"].as_str().unwrap().to_string(), e);
    }
    first.kill9();
    let before_restart = seen.len();
    let mut second = run(&s);
    load.await.unwrap();
    let mut ids: BTreeSet<i64> = seen.values().map(|e| e["new"]["id"].as_i64().unwrap()).collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    while ids.len() < 3000 && Instant::now() < deadline {
        for e in second.no_more_events(Duration::from_millis(500)) {
            ids.insert(e["new"]["id"].as_i64().unwrap());
            let id = e["id"].as_str().unwrap().to_string();
            if let Some(earlier) = seen.get(&id) {
                assert_eq!(earlier, &e, "a replayed event has the same id and the same content");
            }
            seen.insert(id, e);
        }
    }
    assert_eq!(
        ids.len(),
        3000,
        "every committed row arrived across the kill (had {before_restart} before it)"
    );
    assert_eq!(*ids.iter().next().unwrap(), 0);
    assert_eq!(*ids.iter().last().unwrap(), 2999);
}

#[tokio::test]
async fn sigterm_delivers_confirms_the_final_position_and_exits_0() {
    let s = setup("sigterm", "CREATE TABLE items (id int PRIMARY KEY);", "items").await;
    let mut cdc = run(&s);
    s.db.exec("INSERT INTO items SELECT generate_series(1, 100)").await;
    let events = cdc.next_events(100, Duration::from_secs(30));
    let last_commit = lsn(events.last().unwrap()["commit_lsn"].as_str().unwrap());
    let started = Instant::now();
    let status = cdc.sigterm();
    assert!(
        status.success(),
        "exit status {status:?}; stderr:\n{}",
        cdc.stderr_text()
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    let confirmed = s.db.confirmed_flush_lsn(&s.db.name).await.unwrap();
    assert!(
        confirmed > last_commit,
        "confirmed {confirmed:X} must be past the last commit {last_commit:X}"
    );
    // and a restart does not deliver those rows again
    let mut again = run(&s);
    s.db.exec("INSERT INTO items VALUES (101)").await;
    let next = again.next_events(1, Duration::from_secs(30));
    assert_eq!(next[0]["new"]["id"], 101);
}

#[tokio::test]
async fn an_idle_mapped_table_does_not_hold_wal_while_other_tables_write() {
    let s = setup(
        "idle",
        "CREATE TABLE items (id int PRIMARY KEY); CREATE TABLE busy (id serial PRIMARY KEY, pad text);",
        "items",
    )
    .await;
    let mut cdc = run(&s);
    s.db.exec("INSERT INTO items VALUES (1)").await;
    cdc.next_events(1, Duration::from_secs(30));
    let before = s.db.current_wal_lsn().await;
    // ~50 MB of WAL in a table cdc does not map
    for _ in 0..10 {
        s.db.exec("INSERT INTO busy (pad) SELECT repeat(md5(g::text), 32) FROM generate_series(1, 5000) g")
            .await;
    }
    let after = s.db.current_wal_lsn().await;
    assert!(
        after - before > 40_000_000,
        "the load wrote {} bytes of WAL",
        after - before
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut confirmed = 0;
    while Instant::now() < deadline {
        confirmed = s.db.confirmed_flush_lsn(&s.db.name).await.unwrap();
        if confirmed >= after {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        confirmed >= after,
        "confirmed {confirmed:X} did not reach {after:X}: the idle slot holds WAL"
    );
    assert!(cdc.no_more_events(Duration::from_millis(200)).is_empty());
}

#[tokio::test]
async fn a_million_row_transaction_streams_through_in_bounded_memory() {
    let s = setup("million", "CREATE TABLE big (id int PRIMARY KEY, title text);", "big").await;
    let mut cdc = run(&s);
    s.db.exec("INSERT INTO big SELECT g, 'row number ' || g FROM generate_series(1, 1000000) g")
        .await;
    let counted = cdc.count_events(1_000_000, Duration::from_secs(400));
    assert_eq!(counted, 1_000_000);
    let rss_kb = cdc.rss_peak_kb().expect("cdc is running");
    assert!(
        rss_kb < 100 * 1024,
        "peak RSS {rss_kb} kB: the transaction was held in memory"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_named_once_per_retry_and_cdc_keeps_trying() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let config = write_config(
        dir.path(),
        &format!("[source]\nurl = \"postgres://cdc@127.0.0.1:{port}/app\"\n\n[sinks.out]\ntype = \"stdout\"\n\n[[tables]]\ntable = \"items\"\nsinks = [\"out\"]\n"),
    );
    let mut cdc = CdcProcess::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    // Two attempts (1 s apart, then 2 s): wait for the second one's line, not for a fixed time.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while cdc.stderr_text().lines().filter(|l| l.contains("retrying in")).count() < 2
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let stderr = cdc.stderr_text();
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")),
        "the log names host and port:\n{stderr}"
    );
    assert!(stderr.contains("retrying in"), "{stderr}");
    assert!(
        stderr.lines().filter(|l| l.contains("retrying in")).count() >= 2,
        "it retried:\n{stderr}"
    );
    let status = cdc.sigterm();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn stop_at_delivers_everything_before_the_position_then_exits_0() {
    let s = setup("stopat", "CREATE TABLE items (id int PRIMARY KEY, body text);", "items").await;
    // one large transaction: the stop is at its end, never in its middle
    s.db.exec("INSERT INTO items SELECT g, repeat('x', 500) FROM generate_series(1, 20000) g")
        .await;
    // a position at or past the commit (see `current_wal_lsn`)
    let end = support::format_lsn(s.db.current_wal_lsn().await);
    let out = support::cdc(&["--config", &s.config, "run", "--stop-at", &end]);
    assert!(out.status.success(), "{}", support::stderr_of(&out));
    assert_eq!(support::stdout_of(&out).lines().count(), 20000);
    let confirmed = s.db.confirmed_flush_lsn(&s.db.name).await.unwrap();
    assert!(confirmed >= support::parse_lsn(&end), "the final position is confirmed");
}

#[tokio::test]
async fn a_wrong_password_ends_the_run_with_the_servers_message() {
    let s = setup("badpass", "CREATE TABLE items (id int PRIMARY KEY);", "items").await;
    let url = s.db.password_url().replacen("cdc:cdc@", "cdc:wrong@", 1);
    let config = std::fs::read_to_string(&s.config).unwrap().replace(&s.db.url, &url);
    let dir = support::temp_dir();
    let path = write_config(dir.path(), &config);
    let out = support::cdc_with_env_timeout(
        &["--config", path.to_str().unwrap(), "run"],
        &[],
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let err = support::stderr_of(&out);
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(!err.contains("retrying in"), "no retry can fix a wrong password: {err}");
}

/// The slot is dropped between two sessions of one run (its connection broken, then
/// `pg_drop_replication_slot` before cdc reconnects, as a teardown or a failover to a server
/// without it would): recreating it would silently skip what was committed in between, so cdc
/// stops with status 3 and the way back, and creates no slot.
#[tokio::test]
async fn a_slot_dropped_while_cdc_runs_ends_the_run_with_status_3_instead_of_a_silent_gap() {
    let s = setup("slot_gone", "CREATE TABLE items (id int PRIMARY KEY);", "items").await;
    let slot = s.db.name.clone();
    let mut cdc = run(&s);
    s.db.exec("INSERT INTO items VALUES (1)").await;
    assert_eq!(cdc.next_events(1, Duration::from_secs(30))[0]["new"]["id"], 1);
    // cdc reconnects after a backoff of a second or more: drop the slot as soon as its
    // walsender has let go of it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        s.db.exec(&format!(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{slot}' AND active"
        ))
        .await;
        if s.db
            .try_exec(&format!("SELECT pg_drop_replication_slot('{slot}')"))
            .await
            .is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "could not drop the slot within 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    s.db.exec("INSERT INTO items VALUES (2)").await;
    let status = cdc.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(3), "stderr:\n{}", cdc.stderr_text());
    assert!(
        cdc.stderr_text()
            .contains("disappeared while cdc was streaming from it"),
        "{}",
        cdc.stderr_text()
    );
    let slots =
        s.db.query_one_i64(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ))
        .await;
    assert_eq!(slots, 0, "cdc must not create a new slot over the gap");
}
