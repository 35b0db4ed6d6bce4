//! Postgres restarts mid-stream: cdc reconnects and resumes; nothing is lost. Its own test
//! binary, since it restarts (or stops) the cluster every test shares; each test holds
//! `serial()`.

// Each test holds `serial()` for its whole run, awaits included: every test has a runtime of its
// own, so a test waiting for the lock blocks only its own thread.
#![allow(clippy::await_holding_lock)]

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use support::receiver::Receiver;
use support::{new_database, write_config, CdcProcess, TestDb};

const WAIT: Duration = Duration::from_secs(90);

#[tokio::test]
async fn a_postgres_restart_mid_stream_loses_nothing() {
    let _serial = support::serial();
    let admin = support::free_port();
    let setup = support::stdout_setup(
        "pgrestart",
        "CREATE TABLE items (id int PRIMARY KEY)",
        &format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[[tables]]\ntable = \"items\"\nsinks = [\"out\"]"),
    )
    .await;
    let mut cdc = setup.run();
    let db = &setup.db;
    db.exec("INSERT INTO items SELECT generate_series(1, 500)").await;
    let mut ids: BTreeSet<i64> = cdc
        .next_events(500, Duration::from_secs(30))
        .iter()
        .map(|e| e["new"]["id"].as_i64().unwrap())
        .collect();

    support::restart_postgres();
    let db = support::reconnect(db).await;
    db.exec("INSERT INTO items SELECT generate_series(501, 1000)").await;

    let deadline = Instant::now() + Duration::from_secs(60);
    while ids.len() < 1000 && Instant::now() < deadline {
        for e in cdc.no_more_events(Duration::from_millis(500)) {
            ids.insert(e["new"]["id"].as_i64().unwrap());
        }
    }
    assert_eq!(ids.len(), 1000, "stderr:\n{}", cdc.stderr_text());
    assert!(
        cdc.stderr_text().contains("retrying in"),
        "the lost connection was logged"
    );
    // ... and counted, and the new session streams (the gauge is set when it starts).
    let samples = support::metrics::scrape(&format!("http://127.0.0.1:{admin}")).await;
    let value = |name| support::metrics::value(&samples, name, &[]);
    assert!(
        value("cdc_source_reconnects_total").is_some_and(|v| v >= 1.0),
        "{samples:#?}"
    );
    assert_eq!(value("cdc_source_connected"), Some(1.0), "{samples:#?}");
    assert!(cdc.sigterm().success());
}

/// A database with `cdc setup` done for a webhook sink `hook` on `items` pointing at `receiver`;
/// returns the config path. The retry schedule outlasts a restart (no batch becomes a dead letter).
async fn webhook_setup(prefix: &str, receiver: &Receiver, dir: &std::path::Path) -> (TestDb, String) {
    let db = new_database(prefix).await;
    db.exec("CREATE TABLE items (id int PRIMARY KEY)").await;
    let retry = vec!["\"500ms\""; 300].join(", ");
    let config = write_config(
        dir,
        &format!(
            "[source]\nurl = \"{url}\"\nslot = \"{n}\"\npublication = \"{n}\"\n\n[sinks.hook]\ntype = \"webhook\"\nurl = \"{hook}\"\nbatch_max_wait = \"0\"\ntimeout = \"2s\"\nretry = [{retry}]\n\n[[tables]]\ntable = \"items\"\nsinks = [\"hook\"]\n",
            url = db.url,
            n = db.name,
            hook = receiver.url(),
        ),
    );
    let config = config.to_str().unwrap().to_string();
    let setup = support::cdc(&["--config", &config, "setup"]);
    assert!(setup.status.success(), "{}", support::stderr_of(&setup));
    (db, config)
}

fn delivered_ids(receiver: &Receiver) -> BTreeSet<i64> {
    receiver
        .delivered_events()
        .iter()
        .map(|e| e["new"]["id"].as_i64().unwrap())
        .collect()
}

/// Item 6: the webhook sink's state connection reconnects. With the endpoint down the outbox
/// holds batches; Postgres restarts; the endpoint comes back: the outbox sender (and the lanes
/// storing more batches) must have reconnected for every event to arrive.
#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_restart_while_the_outbox_holds_batches_delivers_everything() {
    let _serial = support::serial();
    let receiver = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let (db, config) = webhook_setup("pgrestart_wh", &receiver, dir.path()).await;
    let mut cdc = CdcProcess::start(&["--config", &config, "run"], &[]);
    db.exec("INSERT INTO items VALUES (0)").await;
    receiver.wait_for_events(1, WAIT);

    receiver.down();
    db.exec("INSERT INTO items SELECT generate_series(1, 100)").await;
    let deadline = Instant::now() + WAIT;
    while db
        .query_one_i64("SELECT coalesce(sum(events), 0) FROM cdc.webhook_outbox")
        .await
        < 100
    {
        assert!(
            Instant::now() < deadline,
            "the outbox never held the batches:\n{}",
            cdc.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    support::restart_postgres();
    let db = support::reconnect(&db).await;
    db.exec("INSERT INTO items SELECT generate_series(101, 200)").await;
    receiver.up();

    let deadline = Instant::now() + WAIT;
    while delivered_ids(&receiver).len() < 201 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        delivered_ids(&receiver),
        (0..=200).collect::<BTreeSet<i64>>(),
        "stderr:\n{}",
        cdc.stderr_text()
    );
    assert!(cdc.is_running(), "{}", cdc.stderr_text());
    assert!(cdc.sigterm().success(), "{}", cdc.stderr_text());
    db.drop_slots().await;
}

/// Item 6: a webhook sink started while Postgres is down waits for it (as the source does)
/// instead of dying, and delivers once it is back.
#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_sink_started_while_postgres_is_down_waits_for_it() {
    let _serial = support::serial();
    let receiver = Receiver::start();
    let dir = tempfile::tempdir().unwrap();
    let (db, config) = webhook_setup("pgdown_wh", &receiver, dir.path()).await;

    support::stop_postgres();
    let mut cdc = CdcProcess::start(&["--config", &config, "run"], &[]);
    let deadline = Instant::now() + WAIT;
    while !cdc.stderr_text().contains("creating cdc's state schema") {
        assert!(
            Instant::now() < deadline && cdc.is_running(),
            "the sink did not report the outage:\n{}",
            cdc.stderr_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    support::restart_postgres();
    let db = support::reconnect(&db).await;
    db.exec("INSERT INTO items SELECT generate_series(1, 50)").await;
    let deadline = Instant::now() + WAIT;
    while delivered_ids(&receiver).len() < 50 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        delivered_ids(&receiver),
        (1..=50).collect::<BTreeSet<i64>>(),
        "stderr:\n{}",
        cdc.stderr_text()
    );
    assert!(cdc.sigterm().success(), "{}", cdc.stderr_text());
    db.drop_slots().await;
}

/// While Postgres is down, `/ready` says why the slot's figures (retained WAL, lag) cannot be
/// read and the log says it once; both clear when Postgres is back.
#[tokio::test]
async fn ready_says_why_the_slot_cannot_be_read_while_postgres_is_down() {
    let _serial = support::serial();
    let admin = support::free_port();
    let setup = support::stdout_setup(
        "pgdown_probe",
        "CREATE TABLE items (id int PRIMARY KEY)",
        &format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n[[tables]]\ntable = \"items\"\nsinks = [\"out\"]"),
    )
    .await;
    let mut cdc = setup.run();
    let base = format!("http://127.0.0.1:{admin}");
    // `/ready`'s source section once it satisfies `pred` (the probe reads the slot every 5 s).
    let source_when = |what: &'static str, pred: fn(&serde_json::Value) -> bool| {
        let base = base.clone();
        async move {
            let (_, mut body) =
                support::ready::wait_ready(&base, Duration::from_secs(60), what, |_, b| pred(&b["source"])).await;
            body["source"].take()
        }
    };
    source_when("the slot read while streaming", |s| {
        s["status"] == "streaming" && s["slot_wal_status"].is_string() && s["slot_error"].is_null()
    })
    .await;

    support::stop_postgres();
    let source = source_when("a slot error", |s| s["slot_error"].is_string()).await;
    let error = source["slot_error"].as_str().unwrap();
    assert!(
        error.contains("cannot connect to Postgres") || error.contains("reading the slot"),
        "{error}"
    );
    assert!(
        cdc.stderr_text().contains("cannot read the slot's figures"),
        "the log says it:\n{}",
        cdc.stderr_text()
    );

    support::restart_postgres();
    let db = support::reconnect(&setup.db).await;
    source_when("the slot read again", |s| s["slot_error"].is_null()).await;
    assert!(
        cdc.stderr_text().contains("reading the slot's figures works again"),
        "{}",
        cdc.stderr_text()
    );
    db.exec("INSERT INTO items VALUES (1)").await;
    assert_eq!(cdc.next_events(1, WAIT)[0]["new"]["id"], 1);
    assert!(cdc.sigterm().success(), "{}", cdc.stderr_text());
}
