//! The webhook sink against real HTTP receivers on 127.0.0.1 (tests/support/receiver.rs) and a
//! real PostgreSQL: batching, signatures, filters, the outbox under outages and kill -9,
//! Retry-After, 410, dead letters, block mode, lanes, rate limit and coalescing.
//!
//! Outages are shorter than in the issue's wording (10 s instead of 60 s) and retry schedules are
//! in seconds, to keep CI fast; the behaviour under test does not depend on the lengths.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::receiver::{verify_signature, Answer, Receiver};
use support::{new_database, write_config, CdcProcess, TestDb};

const WAIT: Duration = Duration::from_secs(60);
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// A database with `ddl` applied, `cdc setup` done and `cdc run` started with `sinks` and `tables`.
struct Running {
    db: TestDb,
    cdc: CdcProcess,
    config: String,
    _dir: tempfile::TempDir,
}

impl Running {
    fn restart(&mut self) {
        self.cdc = CdcProcess::start(&["--config", &self.config, "run"], &[]);
    }

    /// Stops cdc and drops the slot: the shared cluster's slots are limited.
    async fn done(mut self) {
        self.cdc.kill9();
        self.db.drop_slots().await;
    }

    async fn outbox_len(&self) -> i64 {
        self.db.query_one_i64("SELECT count(*) FROM cdc.webhook_outbox").await
    }
}

async fn start(prefix: &str, ddl: &str, sinks: &str, tables: &str, setup_args: &[&str]) -> Running {
    let db = new_database(prefix).await;
    db.exec(ddl).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[source]\nurl = \"{url}\"\nslot = \"{slot}\"\npublication = \"{slot}\"\n\n{sinks}\n\n{tables}\n",
            url = db.url,
            slot = db.name
        ),
    );
    let config = config.to_str().unwrap().to_string();
    let mut args = vec!["--config", &config, "setup"];
    args.extend_from_slice(setup_args);
    let setup = support::cdc(&args);
    assert!(
        setup.status.success(),
        "cdc setup failed: {}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let cdc = CdcProcess::start(&["--config", &config, "run"], &[]);
    Running {
        db,
        cdc,
        config,
        _dir: dir,
    }
}

/// A `[sinks.NAME]` webhook table pointing at `receiver`, with extra keys.
fn hook(name: &str, receiver: &Receiver, extra: &str) -> String {
    format!(
        "[sinks.{name}]\ntype = \"webhook\"\nurl = \"{}\"\n{extra}\n",
        receiver.url()
    )
}

fn table(name: &str, sinks: &[&str]) -> String {
    let sinks: Vec<String> = sinks.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[[tables]]\ntable = \"public.{name}\"\nsinks = [{}]\n",
        sinks.join(", ")
    )
}

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, title text, body text);";

fn ids(events: &[Value]) -> Vec<i64> {
    events
        .iter()
        .map(|e| e["new"]["id"].as_i64().or(e["key"]["id"].as_i64()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_inserts_arrive_as_four_hundred_signed_requests_of_twenty_five() {
    let receiver = Receiver::start();
    let extra = format!("secret = \"{SECRET}\"\nheaders = {{ Authorization = \"Bearer ci-token\" }}");
    let r = start(
        "wh_batch",
        ITEMS,
        &hook("hook", &receiver, &extra),
        &table("items", &["hook"]),
        &[],
    )
    .await;
    r.db.exec("INSERT INTO items SELECT g, 't' || g FROM generate_series(1, 10000) g")
        .await;

    let events = receiver.wait_for_events(10_000, WAIT);
    let requests = receiver.delivered();
    assert_eq!(requests.len(), 400);
    assert!(requests.iter().all(|q| q.events().len() == 25));
    assert_eq!(
        ids(&events),
        (1..=10_000).collect::<Vec<_>>(),
        "every row once, in commit order"
    );
    for q in &requests {
        assert!(verify_signature(SECRET, q), "signature of {:?}", q.header("webhook-id"));
        assert_eq!(q.header("authorization"), Some("Bearer ci-token"));
        assert_eq!(q.header("content-type"), Some("application/json"));
        let envelope = q.json();
        assert_eq!(envelope["type"], "cdc.batch");
        assert_eq!(envelope["version"], 1);
        assert_eq!(envelope["sink"], "hook");
        assert_eq!(
            envelope["id"].as_str(),
            q.header("webhook-id"),
            "the envelope id is the webhook-id"
        );
    }
    let distinct: HashSet<&str> = requests.iter().filter_map(|q| q.header("webhook-id")).collect();
    assert_eq!(distinct.len(), 400);
    r.done().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lone_change_is_sent_after_batch_max_wait() {
    let receiver = Receiver::start();
    let r = start(
        "wh_lone",
        ITEMS,
        &hook("hook", &receiver, "batch_max_wait = \"2s\""),
        &table("items", &["hook"]),
        &[],
    )
    .await;
    // Wait until cdc streams: a first change, delivered after the wait.
    r.db.exec("INSERT INTO items VALUES (1, 'warm-up')").await;
    receiver.wait_for_events(1, WAIT);

    let committed = Instant::now();
    r.db.exec("INSERT INTO items VALUES (2, 'lone')").await;
    receiver.wait_for_events(2, WAIT);
    let waited = receiver.delivered()[1].received - committed;
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(4),
        "sent {waited:?} after the commit"
    );
    assert_eq!(receiver.delivered().len(), 2, "one request per lone change");
    r.done().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_subscribed_ops_are_sent_and_updates_carry_only_changed_columns() {
    let receiver = Receiver::start();
    let sinks = hook(
        "hook",
        &receiver,
        "events = [\"create\", \"update\"]\npayload = \"changed\"\nbatch_max_wait = \"500ms\"",
    );
    let r = start(
        "wh_changed",
        ITEMS,
        &sinks,
        &table("items", &["hook"]),
        &["--replica-identity-full", "public.items"],
    )
    .await;
    r.db.exec("INSERT INTO items VALUES (1, 'a', 'long body')").await;
    r.db.exec("UPDATE items SET title = 'b' WHERE id = 1").await;
    r.db.exec("DELETE FROM items WHERE id = 1").await;
    r.db.exec("INSERT INTO items VALUES (2, 'end', 'x')").await;

    let events = receiver.wait_for_events(3, WAIT);
    let ops: Vec<&str> = events.iter().map(|e| e["op"].as_str().unwrap()).collect();
    assert_eq!(ops, ["create", "update", "create"], "no delete");
    assert_eq!(
        events[0]["new"],
        serde_json::json!({"id": 1, "title": "a", "body": "long body"})
    );
    assert_eq!(events[1]["new"], serde_json::json!({"id": 1, "title": "b"}));
    assert_eq!(events[1]["changed"], serde_json::json!(["title"]));
    assert_eq!(events[1]["old"], Value::Null);
    r.done().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_down_endpoint_neither_delays_the_other_nor_holds_the_slot_and_gets_everything_in_order_later() {
    let healthy = Receiver::start();
    let down = Receiver::start();
    let fast = "batch_max_wait = \"200ms\"\nretry = [\"1s\", \"2s\", \"2s\", \"2s\", \"2s\", \"2s\", \"2s\", \"2s\", \"2s\", \"2s\"]";
    let sinks = format!("{}\n{}", hook("healthy", &healthy, fast), hook("flaky", &down, fast));
    let r = start("wh_outage", ITEMS, &sinks, &table("items", &["healthy", "flaky"]), &[]).await;
    r.db.exec("INSERT INTO items VALUES (0, 'before')").await;
    down.wait_for_events(1, WAIT);

    down.down();
    let outage = Instant::now();
    for i in 1..=20 {
        let committed = Instant::now();
        r.db.exec(&format!("INSERT INTO items VALUES ({i}, 'during')")).await;
        healthy.wait_for_events(i as usize + 1, WAIT);
        let latency = healthy.delivered().last().unwrap().received - committed;
        assert!(
            latency < Duration::from_secs(2),
            "the healthy endpoint waited {latency:?} for change {i}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let lsn = r.db.current_wal_lsn().await;
    r.db.wait_confirmed_flush(&r.db.name, lsn, Duration::from_secs(60))
        .await;
    assert!(
        r.outbox_len().await > 0,
        "the down endpoint's batches wait in the outbox"
    );

    tokio::time::sleep(Duration::from_secs(10).saturating_sub(outage.elapsed())).await;
    down.up();
    let events = down.wait_for_events(21, WAIT);
    assert_eq!(ids(&events), (0..=20).collect::<Vec<_>>(), "everything, once, in order");
    wait_until(|| async { r.outbox_len().await == 0 }).await;

    // Back on the direct path: a new change arrives within the batch window.
    let committed = Instant::now();
    r.db.exec("INSERT INTO items VALUES (21, 'after')").await;
    down.wait_for_events(22, WAIT);
    assert!(down.delivered().last().unwrap().received - committed < Duration::from_secs(2));
    r.done().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_the_outbox_holds_batches_loses_nothing() {
    let receiver = Receiver::start();
    let sinks = hook("hook", &receiver, "batch_max_wait = \"100ms\"\nbatch_max_events = 10\nretry = [\"1s\", \"1s\", \"1s\", \"1s\", \"1s\", \"1s\", \"1s\", \"1s\", \"1s\", \"1s\"]");
    let mut r = start("wh_kill", ITEMS, &sinks, &table("items", &["hook"]), &[]).await;
    receiver.down();
    r.db.exec("INSERT INTO items SELECT g, 'x' FROM generate_series(1, 100) g")
        .await;
    wait_until(|| async { r.outbox_len().await == 10 }).await;

    r.cdc.kill9();
    r.db.exec("INSERT INTO items SELECT g, 'y' FROM generate_series(101, 150) g")
        .await;
    receiver.up();
    r.restart();

    receiver.wait_for_events(150, WAIT);
    wait_until(|| async { r.outbox_len().await == 0 }).await;
    let events = receiver.delivered_events();
    let mut seen: BTreeMap<i64, HashSet<String>> = BTreeMap::new();
    for e in &events {
        seen.entry(e["new"]["id"].as_i64().unwrap())
            .or_default()
            .insert(e["id"].as_str().unwrap().to_string());
    }
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        (1..=150).collect::<Vec<_>>(),
        "every row delivered"
    );
    assert!(
        seen.values().all(|ids| ids.len() == 1),
        "a duplicate, if any, carries the same event id"
    );
    r.done().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_after_is_respected() {
    let receiver = Receiver::start();
    receiver.answer(Answer::Status(429, Some("3".into())));
    let r = start(
        "wh_429",
        ITEMS,
        // Retry-After lengthens the 100 ms step; it is capped at the longest step, 10 s.
        &hook(
            "hook",
            &receiver,
            "batch_max_wait = \"100ms\"\nretry = [\"100ms\", \"10s\"]",
        ),
        &table("items", &["hook"]),
        &[],
    )
    .await;
    r.db.exec("INSERT INTO items VALUES (1, 'x')").await;
    let first = receiver.wait_for_requests(1, WAIT)[0].received;
    receiver.answer(Answer::Ok);
    receiver.wait_for_events(1, WAIT);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 2, "one refused, one delivered");
    let waited = requests[1].received - first;
    assert!(
        waited >= Duration::from_millis(2900),
        "retried after {waited:?}, not after Retry-After: 3"
    );
    assert_eq!(
        requests[0].header("webhook-id"),
        requests[1].header("webhook-id"),
        "a retry keeps the batch id"
    );
    assert_eq!(requests[0].body, requests[1].body, "and the body");
    r.done().await;
}

/// A moved endpoint is not a delivery: it answers the POST with `301 Location: /ok` (and would
/// answer a client that follows with a GET with 200). cdc does not follow, holds the batch (block
/// mode: the slot stays before it), retries it and says where the endpoint points; once the
/// endpoint answers 200 the event arrives.
#[tokio::test(flavor = "multi_thread")]
async fn a_redirect_is_not_a_delivery_and_is_retried() {
    let receiver = Receiver::start();
    let sinks = hook(
        "hook",
        &receiver,
        "batch_max_wait = \"100ms\"\non_exhausted = \"block\"\nretry = [\"200ms\"]",
    );
    let r = start("wh_redirect", ITEMS, &sinks, &table("items", &["hook"]), &[]).await;
    r.db.exec("INSERT INTO items VALUES (1, 'first')").await;
    receiver.wait_for_events(1, WAIT);
    let lsn = r.db.current_wal_lsn().await;
    r.db.wait_confirmed_flush(&r.db.name, lsn, WAIT).await;

    receiver.answer(Answer::Redirect(301, "/ok".into()));
    let before_change = r.db.current_wal_lsn().await;
    r.db.exec("INSERT INTO items VALUES (2, 'redirected')").await;
    // The first request, then three attempts at the redirected batch.
    let requests = receiver.wait_for_requests(4, WAIT);
    let held = r.db.confirmed_flush_lsn(&r.db.name).await.unwrap();
    assert!(held <= before_change, "the slot stayed before the redirected change");
    assert!(
        requests.iter().all(|q| q.method == "POST" && q.path == "/hook"),
        "no redirect was followed: {:?}",
        requests
            .iter()
            .map(|q| format!("{} {}", q.method, q.path))
            .collect::<Vec<_>>()
    );
    for attempt in &requests[1..] {
        assert_eq!(attempt.status, 301);
        assert_eq!(ids(&attempt.events()), [2], "each attempt carries the batch");
    }
    let ok_url = receiver.url().replace("/hook", "/ok");
    wait_until(|| async {
        let log = r.cdc.stderr_text();
        log.contains(&format!("redirect to {ok_url}")) && log.contains("configure the final URL")
    })
    .await;

    receiver.answer(Answer::Ok);
    let events = receiver.wait_for_events(2, WAIT);
    assert_eq!(ids(&events), [1, 2]);
    let end = r.db.current_wal_lsn().await;
    r.db.wait_confirmed_flush(&r.db.name, end, WAIT).await;
    r.done().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gone_disables_the_endpoint_and_its_batches_become_dead_letters() {
    let receiver = Receiver::start();
    receiver.answer(Answer::Status(410, None));
    let r = start(
        "wh_410",
        ITEMS,
        &hook("hook", &receiver, "batch_max_wait = \"100ms\""),
        &table("items", &["hook"]),
        &[],
    )
    .await;
    r.db.exec("INSERT INTO items VALUES (1, 'x')").await;
    receiver.wait_for_requests(1, WAIT);
    r.db.exec("INSERT INTO items VALUES (2, 'y')").await;
    wait_until(|| async {
        r.db.query_one_i64("SELECT count(*) FROM cdc.dead_letters WHERE sink = 'hook'")
            .await
            == 2
    })
    .await;
    assert_eq!(receiver.requests().len(), 1, "a disabled endpoint is not called again");
    let lsn = r.db.current_wal_lsn().await;
    r.db.wait_confirmed_flush(&r.db.name, lsn, Duration::from_secs(60))
        .await;
    assert!(r.cdc.stderr_text().contains("410 Gone"), "logged loudly");
    r.done().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exhausted_batch_becomes_a_dead_letter_and_its_replay_delivers_it() {
    let receiver = Receiver::start();
    receiver.answer(Answer::Status(500, None));
    let sinks = hook(
        "hook",
        &receiver,
        "batch_max_wait = \"100ms\"\nretry = [\"200ms\", \"200ms\"]",
    );
    let r = start("wh_dead", ITEMS, &sinks, &table("items", &["hook"]), &[]).await;
    r.db.exec("INSERT INTO items VALUES (1, 'x')").await;
    wait_until(|| async {
        r.db.query_one_i64("SELECT count(*) FROM cdc.dead_letters WHERE sink = 'hook'")
            .await
            == 1
    })
    .await;
    assert_eq!(receiver.requests().len(), 3, "the first attempt and two retries");
    assert_eq!(r.outbox_len().await, 0);

    receiver.answer(Answer::Ok);
    let replay = support::cdc(&["--config", &r.config, "dead-letters", "replay", "--all"]);
    assert!(replay.status.success(), "{}", support::stderr_of(&replay));
    assert_eq!(
        r.db.query_one_i64("SELECT count(*) FROM cdc.dead_letters WHERE sink = 'hook'")
            .await,
        0,
        "{}",
        support::stdout_of(&replay)
    );
    let events = receiver.wait_for_events(1, WAIT);
    assert_eq!(ids(&events), [1]);
    assert_eq!(
        receiver.delivered()[0].header("webhook-id"),
        receiver.requests()[0].header("webhook-id"),
        "the replay keeps the batch id"
    );
    r.done().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn block_mode_holds_the_slot_until_the_endpoint_takes_the_batch() {
    let receiver = Receiver::start();
    let sinks = format!(
        "{}\n[sinks.out]\ntype = \"stdout\"\n",
        hook(
            "strict",
            &receiver,
            "batch_max_wait = \"100ms\"\non_exhausted = \"block\"\nretry = [\"500ms\"]"
        )
    );
    let mut r = start("wh_block", ITEMS, &sinks, &table("items", &["strict", "out"]), &[]).await;
    r.db.exec("INSERT INTO items VALUES (1, 'first')").await;
    receiver.wait_for_events(1, WAIT);
    let lsn = r.db.current_wal_lsn().await;
    r.db.wait_confirmed_flush(&r.db.name, lsn, Duration::from_secs(60))
        .await;

    receiver.down();
    let before_change = r.db.current_wal_lsn().await;
    r.db.exec("INSERT INTO items VALUES (2, 'held')").await;
    r.cdc.events_until(|e| e["new"]["id"] == 2, WAIT);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = r.db.confirmed_flush_lsn(&r.db.name).await.unwrap();
    assert!(
        held <= before_change,
        "the slot stayed before the undelivered change although stdout is caught up"
    );
    assert_eq!(r.outbox_len().await, 0, "block mode stores nothing");

    receiver.up();
    let events = receiver.wait_for_events(2, WAIT);
    assert_eq!(ids(&events), [1, 2]);
    let end = r.db.current_wal_lsn().await;
    r.db.wait_confirmed_flush(&r.db.name, end, Duration::from_secs(60))
        .await;
    r.done().await;
}

/// Through a receiver that takes 100 ms per request, with `lanes` lanes: 2,000 rows (enough for
/// their keys to spread evenly), then 2 rounds of updates to all of them (4,000 events, 80
/// requests of 50). Returns the most requests the receiver was answering at once during the
/// updates, and every event delivered.
async fn concurrency_with_lanes(lanes: u32) -> (usize, Vec<Value>) {
    let receiver = Receiver::start();
    let sinks = hook(
        "hook",
        &receiver,
        &format!("batch_max_wait = \"200ms\"\nbatch_max_events = 50\nlanes = {lanes}"),
    );
    let r = start(
        &format!("wh_lanes{lanes}"),
        ITEMS,
        &sinks,
        &table("items", &["hook"]),
        &[],
    )
    .await;
    r.db.exec("INSERT INTO items SELECT g, '0' FROM generate_series(1, 2000) g")
        .await;
    receiver.wait_for_events(2000, WAIT);

    receiver.answer(Answer::Slow(Duration::from_millis(100)));
    receiver.reset_max_in_flight();
    for round in 1..=2 {
        r.db.exec(&format!("UPDATE items SET title = '{round}'")).await;
    }
    let events = receiver.wait_for_events(6000, WAIT);
    let concurrency = receiver.max_in_flight();
    r.done().await;
    (concurrency, events)
}

/// The contract of `lanes`: that many requests in flight at once, never more, and each row's
/// events in order. (Throughput is measured by scripts/bench/webhook.sh, not asserted here.)
#[tokio::test(flavor = "multi_thread")]
async fn four_lanes_send_up_to_four_requests_at_once_and_keep_every_rows_order() {
    let (one, _) = concurrency_with_lanes(1).await;
    assert_eq!(one, 1, "one lane sends one request at a time");
    let (four, events) = concurrency_with_lanes(4).await;
    // 80 requests of 100 ms each over 4 lanes: they overlap unless the lanes do not work.
    assert!(
        (2..=4).contains(&four),
        "lanes = 4: at most {four} requests were in flight at once"
    );
    let mut per_row: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for e in &events {
        per_row
            .entry(e["new"]["id"].as_i64().unwrap())
            .or_default()
            .push(e["new"]["title"].as_str().unwrap().to_string());
    }
    assert_eq!(per_row.len(), 2000);
    for (id, titles) in per_row {
        assert_eq!(titles, ["0", "1", "2"], "row {id} saw its changes out of order");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rate_limit_spaces_requests_at_the_receiver() {
    let receiver = Receiver::start();
    let sinks = hook(
        "hook",
        &receiver,
        "batch_max_wait = \"0\"\nbatch_max_events = 1\nrate_limit = \"4/1s\"",
    );
    let r = start("wh_rate", ITEMS, &sinks, &table("items", &["hook"]), &[]).await;
    r.db.exec("INSERT INTO items SELECT g, 'x' FROM generate_series(1, 8) g")
        .await;
    receiver.wait_for_events(8, WAIT);
    let at: Vec<Instant> = receiver.delivered().iter().map(|q| q.received).collect();
    // The promise: at most 4 requests in any window of 1 s. cdc spaces them at least 250 ms
    // apart when they leave; on the way to the receiver one request may be delayed more than the
    // next (a busy 2-core machine), so allow 150 ms of that: any 5 requests span ≥ 850 ms.
    for five in at.windows(5) {
        let span = five[4] - five[0];
        assert!(
            span >= Duration::from_millis(850),
            "5 requests within {span:?} under a limit of 4 per second: {:?}",
            at.iter().map(|t| *t - at[0]).collect::<Vec<_>>()
        );
    }
    r.done().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn coalescing_merges_quick_updates_of_a_row_into_one_event() {
    let receiver = Receiver::start();
    let sinks = hook("hook", &receiver, "batch_max_wait = \"0\"\ncoalesce = \"2s\"");
    let ddl = "CREATE TABLE docs (id int PRIMARY KEY, a int, b int, c int); INSERT INTO docs VALUES (1, 0, 0, 0), (2, 0, 0, 0);";
    let r = start(
        "wh_coalesce",
        ddl,
        &sinks,
        &table("docs", &["hook"]),
        &["--replica-identity-full", "public.docs"],
    )
    .await;
    r.db.exec("UPDATE docs SET a = 1 WHERE id = 1").await;
    r.db.exec("UPDATE docs SET b = 2 WHERE id = 1").await;
    r.db.exec("UPDATE docs SET c = 3 WHERE id = 1").await;
    r.db.exec("UPDATE docs SET a = 9 WHERE id = 2").await;
    let events = receiver.wait_for_events(2, WAIT);
    std::thread::sleep(Duration::from_secs(3));
    let events_later = receiver.delivered_events();
    assert_eq!(
        events_later.len(),
        2,
        "three updates of row 1 became one event: {events_later:?}"
    );
    let row1 = events.iter().find(|e| e["key"]["id"] == 1).unwrap();
    assert_eq!(row1["changed"], serde_json::json!(["a", "b", "c"]));
    assert_eq!(row1["new"], serde_json::json!({"id": 1, "a": 1, "b": 2, "c": 3}));
    assert_eq!(row1["old"], serde_json::json!({"id": 1, "a": 0, "b": 0, "c": 0}));
    r.done().await;
}

/// Without REPLICA IDENTITY FULL an update that leaves a TOASTed column alone does not carry it
/// (`unchanged_toast`). Coalesced with the insert before it, the one event still carries the
/// value the insert did.
#[tokio::test(flavor = "multi_thread")]
async fn coalescing_keeps_the_toasted_value_an_update_did_not_resend() {
    let receiver = Receiver::start();
    let sinks = hook("hook", &receiver, "batch_max_wait = \"0\"\ncoalesce = \"5s\"");
    // EXTERNAL: stored out of line and uncompressed, so a 3,000-byte value is surely TOASTed.
    let ddl = "CREATE TABLE docs (id int PRIMARY KEY, title text, body text); \
               ALTER TABLE docs ALTER body SET STORAGE EXTERNAL;";
    let r = start("wh_coalesce_toast", ddl, &sinks, &table("docs", &["hook"]), &[]).await;
    r.db.exec("INSERT INTO docs VALUES (1, 'a', repeat('x', 3000))").await;
    r.db.exec("UPDATE docs SET title = 'b' WHERE id = 1").await;
    let events = receiver.wait_for_events(1, WAIT);
    assert_eq!(events[0]["op"], "create", "{:?}", events[0]);
    assert_eq!(
        events[0]["new"],
        serde_json::json!({"id": 1, "title": "b", "body": "x".repeat(3000)}),
        "the insert's body, the update's title"
    );
    assert_eq!(events[0].get("unchanged_toast"), None);

    // Alone in its window, such an update does lack the body: what the merge above made up for.
    r.db.exec("UPDATE docs SET title = 'c' WHERE id = 1").await;
    let events = receiver.wait_for_events(2, WAIT);
    assert_eq!(events.len(), 2);
    assert_eq!(events[1]["new"], serde_json::json!({"id": 1, "title": "c"}));
    assert_eq!(events[1]["unchanged_toast"], serde_json::json!(["body"]));
    r.done().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_test_sends_a_signed_test_event_fails_on_non_2xx_and_attempts_lists_both() {
    let receiver = Receiver::start();
    let db = new_database("wh_test_cmd").await;
    db.exec(ITEMS).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[source]\nurl = \"{}\"\nslot = \"{slot}\"\npublication = \"{slot}\"\n\n{}\n{}",
            db.url,
            hook("hook", &receiver, &format!("secret = \"{SECRET}\"")),
            table("items", &["hook"]),
            slot = db.name
        ),
    );
    let config = config.to_str().unwrap();
    assert!(support::cdc(&["--config", config, "setup"]).status.success());
    let ok = support::cdc(&["--config", config, "webhook", "test", "hook"]);
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{out}{}", String::from_utf8_lossy(&ok.stderr));
    assert!(out.contains("answered 200") && out.contains(r#"{"ok":true}"#), "{out}");
    let request = &receiver.requests()[0];
    assert!(verify_signature(SECRET, request));
    assert_eq!(request.events()[0]["op"], "test");

    receiver.answer(Answer::Status(500, None));
    let failed = support::cdc(&["--config", config, "webhook", "test", "hook"]);
    assert_eq!(
        failed.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&failed.stdout)
    );
    assert!(String::from_utf8_lossy(&failed.stdout).contains("answered 500"));

    let attempts = support::cdc(&["--config", config, "webhook", "attempts", "hook"]);
    let listed = String::from_utf8_lossy(&attempts.stdout);
    assert!(
        attempts.status.success(),
        "{listed}{}",
        String::from_utf8_lossy(&attempts.stderr)
    );
    let lines: Vec<&str> = listed.lines().skip(1).collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert!(
        lines[0].contains("test") && lines[0].contains(" 500 ") && lines[0].contains("HTTP 500"),
        "newest first: {listed}"
    );
    assert!(lines[1].contains(" 200 "), "{listed}");
    db.drop_slots().await;
}

#[test]
fn the_receivers_verification_accepts_the_standard_webhooks_test_vector() {
    let vector: Value = serde_json::from_str(include_str!("data/standard-webhooks.json")).unwrap();
    let request = support::receiver::Request {
        received: Instant::now(),
        method: "POST".into(),
        path: "/hook".into(),
        headers: [
            ("webhook-id", vector["msg_id"].as_str().unwrap().to_string()),
            ("webhook-timestamp", vector["timestamp"].to_string()),
            (
                "webhook-signature",
                format!("v1,bogus= {}", vector["expected_signature"].as_str().unwrap()),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
        body: vector["payload"].as_str().unwrap().as_bytes().to_vec(),
        status: 200,
    };
    assert!(verify_signature(vector["secret"].as_str().unwrap(), &request));
    let mut tampered = request.clone();
    tampered.body.push(b' ');
    assert!(!verify_signature(vector["secret"].as_str().unwrap(), &tampered));
}

/// Polls `check` every 100 ms until it holds; panics after a minute.
async fn wait_until<F, Fut>(check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "condition not reached within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Item 8: with four lanes, a key-changing update goes behind the row's earlier events and the
/// row's later events (under the new key, which hashes to another lane) wait for it. Each row
/// carries a stable `row` column and a counter `n` raised by every change: at the receiver, in
/// arrival order, every row's counter must climb by one.
#[tokio::test(flavor = "multi_thread")]
async fn four_lanes_keep_each_rows_order_across_key_changes() {
    let receiver = Receiver::start();
    receiver.answer(Answer::Slow(Duration::from_millis(5)));
    let r = start(
        "wh_keychange",
        "CREATE TABLE kc (id int PRIMARY KEY, row int NOT NULL, n int NOT NULL);",
        &hook(
            "hook",
            &receiver,
            "lanes = 4\nbatch_max_events = 5\nbatch_max_wait = \"50ms\"",
        ),
        &table("kc", &["hook"]),
        &[],
    )
    .await;
    const ROWS: i64 = 200;
    const ROUNDS: i64 = 3;
    r.db.exec(&format!(
        "INSERT INTO kc SELECT g, g, 0 FROM generate_series(1, {ROWS}) g"
    ))
    .await;
    // Per row: a key change, then at once a plain update under the new key; rows interleaved.
    let mut sql = String::from("BEGIN;");
    for _ in 0..ROUNDS {
        for row in 1..=ROWS {
            sql.push_str(&format!(
                "UPDATE kc SET id = id + 1000, n = n + 1 WHERE row = {row};UPDATE kc SET n = n + 1 WHERE row = {row};"
            ));
        }
    }
    sql.push_str("COMMIT;");
    r.db.exec(&sql).await;

    let total = (ROWS * (1 + 2 * ROUNDS)) as usize;
    receiver.wait_for_events(total, WAIT);
    let mut requests = receiver.delivered();
    requests.sort_by_key(|q| q.received);
    let mut per_row: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for e in requests.iter().flat_map(|q| q.events()) {
        per_row
            .entry(e["new"]["row"].as_i64().unwrap())
            .or_default()
            .push(e["new"]["n"].as_i64().unwrap());
    }
    let expected: Vec<i64> = (0..=2 * ROUNDS).collect();
    let out_of_order: Vec<(&i64, &Vec<i64>)> = per_row.iter().filter(|(_, ns)| **ns != expected).collect();
    assert_eq!(per_row.len(), ROWS as usize);
    assert!(
        out_of_order.is_empty(),
        "{} rows arrived out of order, e.g. {:?}",
        out_of_order.len(),
        out_of_order.first()
    );
    // The key changes really moved rows across lanes: the old key is in `key`, the new in `new`.
    let moved = requests
        .iter()
        .flat_map(|q| q.events())
        .filter(|e| e["key"]["id"] != e["new"]["id"])
        .count();
    assert_eq!(moved, (ROWS * ROUNDS) as usize);
    r.done().await;
}

/// Item 7: publication and slot made by hand, no `cdc setup`: `cdc run` creates cdc's state
/// schema at start and says so, then delivers. Later, a sink error no reconnect can fix (its
/// outbox table dropped while the endpoint is down) ends the run with a non-zero exit and the
/// sink's own error as the last line.
#[tokio::test(flavor = "multi_thread")]
async fn run_without_setup_creates_the_state_schema_and_a_failing_sink_ends_the_run_with_its_error() {
    let receiver = Receiver::start();
    let db = new_database("wh_nosetup").await;
    db.exec(&format!(
        "{ITEMS} CREATE PUBLICATION \"{n}\" FOR TABLE items;",
        n = db.name
    ))
    .await;
    db.exec(&format!(
        "SELECT pg_create_logical_replication_slot('{n}', 'pgoutput')",
        n = db.name
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[source]\nurl = \"{url}\"\nslot = \"{n}\"\npublication = \"{n}\"\n\n{sinks}\n{tables}\n",
            url = db.url,
            n = db.name,
            sinks = hook("hook", &receiver, "batch_max_wait = \"0\"\nretry = [\"1h\"]"),
            tables = table("items", &["hook"]),
        ),
    );
    let mut cdc = CdcProcess::start(&["--config", config.to_str().unwrap(), "run"], &[]);
    db.exec("INSERT INTO items VALUES (1, 'first')").await;
    assert_eq!(ids(&receiver.wait_for_events(1, WAIT)), [1]);
    assert!(
        cdc.stderr_text().contains("created cdc's state tables"),
        "{}",
        cdc.stderr_text()
    );
    assert_eq!(db.query_one_i64("SELECT count(*) FROM cdc.webhook_outbox").await, 0);

    receiver.down();
    db.exec("DROP TABLE cdc.webhook_outbox").await;
    db.exec("INSERT INTO items VALUES (2, 'cannot be stored')").await;
    let status = cdc.wait_exit(WAIT);
    let stderr = cdc.stderr_text();
    assert!(!status.success(), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("\"cdc.webhook_outbox\" does not exist"),
        "the last line is the sink's own error: {last}\n{stderr}"
    );
    db.drop_slots().await;
}

/// Item 10: `cdc run --stop-at` exits 0 once everything up to the position is delivered and
/// confirmed; when a sink cannot deliver within the shutdown's drain (an endpoint that takes a
/// minute to answer), it exits non-zero and says so.
#[tokio::test(flavor = "multi_thread")]
async fn stop_at_exits_0_only_when_every_event_was_delivered() {
    let receiver = Receiver::start();
    let db = new_database("wh_stopat").await;
    db.exec(ITEMS).await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[source]\nurl = \"{url}\"\nslot = \"{n}\"\npublication = \"{n}\"\n\n{sinks}\n{tables}\n",
            url = db.url,
            n = db.name,
            sinks = hook("hook", &receiver, "batch_max_wait = \"0\"\ntimeout = \"120s\""),
            tables = table("items", &["hook"]),
        ),
    );
    let config = config.to_str().unwrap();
    assert!(support::cdc(&["--config", config, "setup"]).status.success());

    db.exec("INSERT INTO items SELECT g, 't' FROM generate_series(1, 100) g")
        .await;
    let end = support::format_lsn(db.current_wal_lsn().await);
    let out = support::cdc(&["--config", config, "run", "--stop-at", &end]);
    assert!(out.status.success(), "{}", support::stderr_of(&out));
    assert_eq!(receiver.delivered_events().len(), 100);

    receiver.answer(Answer::Slow(Duration::from_secs(60)));
    db.exec("INSERT INTO items VALUES (101, 'slow')").await;
    let end = support::format_lsn(db.current_wal_lsn().await);
    let out = support::cdc(&["--config", config, "run", "--stop-at", &end]);
    let stderr = support::stderr_of(&out);
    assert!(!out.status.success(), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("did not deliver what it held"), "{stderr}");
    db.drop_slots().await;
}
