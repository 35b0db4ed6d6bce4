//! The stream sink over real HTTP: `cdc run` against the test Postgres, clients reading
//! `/events` on the admin server as Server-Sent Events (reqwest, parsed by the small SSE reader
//! below): every event of a 50k-change workload in commit order, resume with Last-Event-ID,
//! the gap after the buffer rolled over, filters, heartbeats, tokens, max_clients, and a
//! stalled client dropped with `lagged` while another keeps up and the slot advances.

// The two heavy tests hold `serial()` across awaits so they do not load the machine together.
#![allow(clippy::await_holding_lock)]

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{CdcProcess, TestDb};

const WAIT: Duration = Duration::from_secs(120);

/// A database with `ddl`, a config with `[admin]` and `sinks` (the tables map to `feed`
/// unless `tables` says otherwise), `cdc setup` done and `cdc run` ready.
struct Running {
    db: TestDb,
    cdc: CdcProcess,
    base: String,
    _dir: support::TempDir,
}

impl Running {
    async fn start(prefix: &str, ddl: &str, sinks: &str, tables: &str) -> Running {
        let db = support::new_database(prefix).await;
        db.exec(ddl).await;
        let port = support::free_port();
        let dir = support::temp_dir();
        let toml = format!(
            "[source]\nurl = \"{url}\"\nslot = \"{name}\"\npublication = \"{name}\"\n\n[admin]\nlisten = \"127.0.0.1:{port}\"\n\n{sinks}\n\n{tables}\n",
            url = db.url,
            name = db.name,
        );
        let config = support::write_config(dir.path(), &toml);
        let config = config.to_str().unwrap();
        let setup = support::cdc(&["--config", config, "setup"]);
        assert!(setup.status.success(), "{}", support::stderr_of(&setup));
        let cdc = CdcProcess::start(&["--config", config, "run"], &[("RUST_LOG", "cdc=info")]);
        let base = format!("http://127.0.0.1:{port}");
        let running = Running {
            db,
            cdc,
            base,
            _dir: dir,
        };
        running.wait_ready().await;
        running
    }

    /// Waits for `/ready` to answer 200 (streaming, every sink ok); returns its body.
    async fn wait_ready(&self) -> Value {
        support::ready::wait_ready(&self.base, WAIT, "200", |status, _| status == 200)
            .await
            .1
    }

    /// `GET /events?{query}` with a bearer token (None: no Authorization header).
    async fn get(&self, query: &str, token: Option<&str>, last_event_id: Option<&str>) -> reqwest::Response {
        let mut request = reqwest::Client::new().get(format!("{}/events?{query}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        request.send().await.expect("the admin server answers")
    }

    /// A client of `/events?{query}` that was accepted (200, text/event-stream).
    async fn client(&self, query: &str, token: &str, last_event_id: Option<&str>) -> Client {
        let response = self.get(query, Some(token), last_event_id).await;
        let status = response.status();
        if status != 200 {
            panic!("/events?{query} answered {status}: {}", response.text().await.unwrap());
        }
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Client {
            response,
            buf: Vec::new(),
        }
    }

    /// The value of `/metrics` sample `name` with label sink = `sink`.
    async fn metric(&self, name: &str, sink: &str) -> Option<f64> {
        support::metrics::value(&support::metrics::scrape(&self.base).await, name, &[("sink", sink)])
    }

    /// Polls `/metrics` until `name{sink}` satisfies `pred`.
    async fn wait_metric(&self, name: &str, sink: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.metric(name, sink).await;
            if let Some(v) = value.filter(|v| pred(*v)) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{name}{{sink={sink}}} never reached the expected value; last {value:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn done(mut self) {
        let status = self.cdc.sigterm();
        assert!(
            status.success(),
            "cdc run exited with {status}:\n{}",
            self.cdc.stderr_text()
        );
        self.db.drop_slots().await;
    }
}

/// One SSE message (or comment).
#[derive(Debug, Clone, Default)]
struct Msg {
    id: Option<String>,
    event: Option<String>,
    data: String,
    comment: Option<String>,
}

impl Msg {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("data is not JSON ({e}): {self:?}"))
    }
}

/// Reads an SSE response as the spec frames it: messages end with a blank line; `field: value`
/// lines; lines starting with `:` are comments.
struct Client {
    response: reqwest::Response,
    buf: Vec<u8>,
}

impl Client {
    /// The next message or comment; None at the end of the stream. Panics after `WAIT`.
    async fn next(&mut self) -> Option<Msg> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let frame: Vec<u8> = self.buf.drain(..end + 2).collect();
                let mut msg = Msg::default();
                for line in String::from_utf8(frame).unwrap().lines() {
                    if let Some(comment) = line.strip_prefix(':') {
                        msg.comment = Some(comment.trim_start().to_string());
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value).to_string();
                    match field {
                        "id" => msg.id = Some(value),
                        "event" => msg.event = Some(value),
                        "data" if msg.data.is_empty() => msg.data = value,
                        "data" => msg.data = format!("{}\n{value}", msg.data),
                        _ => {}
                    }
                }
                return Some(msg);
            }
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Ok(Ok(Some(bytes))) => self.buf.extend_from_slice(&bytes),
                Ok(Ok(None)) => return None,
                Ok(Err(e)) => panic!("reading the stream: {e}"),
                Err(_) => panic!(
                    "no complete message within {WAIT:?}; buffered: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
    }

    /// The next message that is not a comment (heartbeat).
    async fn next_message(&mut self) -> Option<Msg> {
        loop {
            let msg = self.next().await?;
            if msg.comment.is_none() {
                return Some(msg);
            }
        }
    }

    /// The next `n` events, each checked: `id:` is the JSON's id, `event:` its op.
    async fn events(&mut self, n: usize) -> Vec<Msg> {
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            let msg = self
                .next_message()
                .await
                .unwrap_or_else(|| panic!("the stream ended after {} of {n} events", got.len()));
            check_event(&msg);
            got.push(msg);
        }
        got
    }
}

fn check_event(msg: &Msg) {
    let json = msg.json();
    assert_eq!(msg.id.as_deref(), json["id"].as_str(), "{msg:?}");
    assert_eq!(msg.event.as_deref(), json["op"].as_str(), "{msg:?}");
}

/// `<commit_lsn>:<n>` → (commit LSN, n), for ordering as numbers.
fn position(id: &str) -> (u64, u32) {
    let (lsn, n) = id.rsplit_once(':').unwrap();
    (support::parse_lsn(lsn), n.parse().unwrap())
}

fn ids(msgs: &[Msg]) -> Vec<String> {
    msgs.iter().map(|m| m.id.clone().unwrap()).collect()
}

/// The row id a message is about (the key; 0 for a truncate).
fn row(msg: &Msg) -> i64 {
    msg.json()["key"]["id"].as_i64().unwrap_or(0)
}

fn feed(extra: &str) -> String {
    format!("[sinks.feed]\ntype = \"stream\"\ntoken = [\"old-token\", \"new-token\"]\n{extra}\n")
}

fn tables(names: &[&str], sinks: &str) -> String {
    names
        .iter()
        .map(|t| format!("[[tables]]\ntable = \"{t}\"\nsinks = [{sinks}]\n"))
        .collect::<Vec<_>>()
        .join("\n")
}

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, title text, pad text);";
const ITEMS_ORDERS: &str =
    "CREATE TABLE items (id int PRIMARY KEY, title text, pad text); CREATE TABLE orders (id int PRIMARY KEY, qty int);";

/// One expected change: (table, op, row id).
type Change = (&'static str, &'static str, i64);

/// 50,000 changes from one connection, so commit order is the order below: a 20k-row insert,
/// 100 updates of 100 rows, 10 inserts of 1000 rows into a second table, 5 deletes of 1000
/// rows, 4,999 one-row updates and a truncate. Returns the transactions as the oracle: each
/// one's changes (the order of rows within one statement is the heap's, so compare sorted).
async fn workload(db: &TestDb) -> Vec<Vec<Change>> {
    let mut txns: Vec<Vec<Change>> = Vec::new();
    db.exec("INSERT INTO items SELECT g, 't' || g FROM generate_series(1, 20000) g")
        .await;
    txns.push((1..=20000).map(|i| ("items", "create", i)).collect());
    let mut sql = String::new();
    for k in 0..100 {
        sql += &format!(
            "BEGIN; UPDATE items SET title = title || '.u' WHERE id BETWEEN {} AND {}; COMMIT;\n",
            k * 100 + 1,
            k * 100 + 100
        );
        txns.push((k * 100 + 1..=k * 100 + 100).map(|i| ("items", "update", i)).collect());
    }
    db.exec(&sql).await;
    let mut sql = String::new();
    for k in 0..10 {
        sql += &format!(
            "BEGIN; INSERT INTO orders SELECT g, g % 7 FROM generate_series({}, {}) g; COMMIT;\n",
            k * 1000 + 1,
            k * 1000 + 1000
        );
        txns.push(
            (k * 1000 + 1..=k * 1000 + 1000)
                .map(|i| ("orders", "create", i))
                .collect(),
        );
    }
    db.exec(&sql).await;
    let mut sql = String::new();
    for k in 0..5 {
        let from = 10001 + k * 1000;
        sql += &format!(
            "BEGIN; DELETE FROM items WHERE id BETWEEN {from} AND {}; COMMIT;\n",
            from + 999
        );
        txns.push((from..from + 1000).map(|i| ("items", "delete", i)).collect());
    }
    db.exec(&sql).await;
    for chunk in (15001..=19999).collect::<Vec<i64>>().chunks(500) {
        let mut sql = String::new();
        for id in chunk {
            sql += &format!("BEGIN; UPDATE items SET title = 'single' WHERE id = {id}; COMMIT;\n");
            txns.push(vec![("items", "update", *id)]);
        }
        db.exec(&sql).await;
    }
    db.exec("TRUNCATE orders").await;
    txns.push(vec![("orders", "truncate", 0)]);
    assert_eq!(txns.iter().map(Vec::len).sum::<usize>(), 50_000);
    txns
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_receives_every_event_of_a_50k_change_workload_in_commit_order() {
    let _serial = support::serial();
    let r = Running::start(
        "stream_all",
        ITEMS_ORDERS,
        &feed(""),
        &tables(&["items", "orders"], "\"feed\""),
    )
    .await;
    let ready = r.wait_ready().await;
    let sink = &ready["sinks"][0];
    assert_eq!(
        (sink["name"].as_str(), sink["type"].as_str(), sink["status"].as_str()),
        (Some("feed"), Some("stream"), Some("ok")),
        "{ready}"
    );

    let mut client = r.client("sink=feed", "new-token", None).await;
    let oracle = {
        let db = support::reconnect(&r.db).await;
        tokio::spawn(async move { workload(&db).await })
    };
    let started = Instant::now();
    let events = client.events(50_000).await;
    let elapsed = started.elapsed();
    let oracle = oracle.await.unwrap();

    // Commit order: ids strictly increase as (commit LSN, n), and the transactions are the
    // workload's, one after the other.
    let positions: Vec<(u64, u32)> = events.iter().map(|m| position(m.id.as_deref().unwrap())).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "ids do not increase");
    let mut got: Vec<Vec<(String, String, i64)>> = Vec::new();
    let mut last_commit = None;
    for (msg, (commit, _)) in events.iter().zip(&positions) {
        if last_commit != Some(*commit) {
            got.push(Vec::new());
            last_commit = Some(*commit);
        }
        let json = msg.json();
        got.last_mut().unwrap().push((
            json["table"].as_str().unwrap().to_string(),
            msg.event.clone().unwrap(),
            row(msg),
        ));
    }
    assert_eq!(got.len(), oracle.len(), "transactions");
    for (i, (mut got, want)) in got.into_iter().zip(oracle).enumerate() {
        let mut want: Vec<(String, String, i64)> = want
            .into_iter()
            .map(|(t, o, id)| (t.to_string(), o.to_string(), id))
            .collect();
        got.sort();
        want.sort();
        assert!(
            got == want,
            "transaction {i} differs: got {:?}… want {:?}…",
            &got[..1],
            &want[..1]
        );
    }
    eprintln!("50,000 events in {elapsed:?} (debug build, test client)");

    let sent = r
        .wait_metric("cdc_stream_events_sent_total", "feed", |v| v >= 50_000.0)
        .await;
    assert_eq!(sent, 50_000.0);
    assert_eq!(r.metric("cdc_stream_clients_connected", "feed").await, Some(1.0));
    assert_eq!(r.metric("cdc_sink_events_total", "feed").await, Some(50_000.0));
    r.done().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reconnecting_with_last_event_id_misses_nothing_and_duplicates_nothing() {
    let r = Running::start("stream_resume", ITEMS, &feed(""), &tables(&["items"], "\"feed\"")).await;
    let mut first = r.client("sink=feed", "old-token", None).await;
    r.db.exec("INSERT INTO items SELECT g, 't' FROM generate_series(1, 1000) g")
        .await;
    // Stop in the middle of the transaction: ids within one commit must order by n, as numbers.
    let before = first.events(437).await;
    drop(first);
    r.db.exec("INSERT INTO items SELECT g, 't' FROM generate_series(1001, 1500) g; UPDATE items SET title = 'u' WHERE id <= 500")
        .await;
    r.db.exec("DELETE FROM items WHERE id > 1400").await;
    let last = before.last().unwrap().id.clone().unwrap();
    let mut second = r.client("sink=feed", "old-token", Some(&last)).await;
    let after = second.events(1000 - 437 + 1000 + 100).await;
    let all: Vec<Msg> = before.into_iter().chain(after).collect();
    let positions: Vec<(u64, u32)> = ids(&all).iter().map(|id| position(id)).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "a duplicate or out of order");
    let mut rows: Vec<i64> = all[..1500].iter().map(row).collect();
    rows.sort();
    assert_eq!(rows, (1..=1500).collect::<Vec<_>>(), "every insert once");

    // Resuming from the middle of the second transaction gives exactly its rest and what followed.
    let middle = all[1200].id.clone().unwrap();
    let mut third = r.client("sink=feed", "old-token", Some(&middle)).await;
    let rest = third.events(all.len() - 1201).await;
    assert_eq!(ids(&rest), ids(&all[1201..]));
    // Then live events follow.
    r.db.exec("INSERT INTO items VALUES (5000, 'live')").await;
    assert_eq!(row(&third.events(1).await[0]), 5000);
    assert_eq!(row(&second.events(1).await[0]), 5000);
    r.done().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn after_the_buffer_rolled_over_a_resuming_client_first_gets_a_gap() {
    let r = Running::start(
        "stream_gap",
        ITEMS,
        &feed("buffer = 100"),
        &tables(&["items"], "\"feed\""),
    )
    .await;
    let mut client = r.client("sink=feed", "old-token", None).await;
    r.db.exec("INSERT INTO items SELECT g, 't' FROM generate_series(1, 50) g")
        .await;
    let seen = client.events(50).await;
    drop(client);
    r.db.exec("INSERT INTO items SELECT g, 't' FROM generate_series(51, 350) g")
        .await;
    // Once the sink has buffered all 350 (it acknowledges as it buffers), 100 remain: 251…350.
    r.wait_metric("cdc_sink_events_total", "feed", |v| v >= 350.0).await;

    let last = seen.last().unwrap().id.clone().unwrap();
    let mut resumed = r.client("sink=feed", "old-token", Some(&last)).await;
    let gap = resumed.next_message().await.unwrap();
    assert_eq!(gap.event.as_deref(), Some("gap"), "{gap:?}");
    assert_eq!(gap.id, None, "a gap is not an event: Last-Event-ID stays the client's");
    let events = resumed.events(100).await;
    assert_eq!(gap.json()["oldest"].as_str(), events[0].id.as_deref(), "{gap:?}");
    assert_eq!(
        events.iter().map(row).collect::<Vec<_>>(),
        (251..=350).collect::<Vec<_>>()
    );

    // from=oldest: the same 100, no gap; a client that has everything resumes without one.
    let mut oldest = r.client("sink=feed&from=oldest", "old-token", None).await;
    assert_eq!(ids(&oldest.events(100).await), ids(&events));
    let newest = events.last().unwrap().id.clone().unwrap();
    let mut current = r.client("sink=feed", "old-token", Some(&newest)).await;
    r.db.exec("INSERT INTO items VALUES (351, 'live')").await;
    for client in [&mut resumed, &mut oldest, &mut current] {
        assert_eq!(row(&client.events(1).await[0]), 351);
    }
    r.done().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn filters_heartbeats_and_bad_requests() {
    let r = Running::start(
        "stream_filters",
        ITEMS_ORDERS,
        &feed("heartbeat = \"300ms\""),
        &tables(&["items", "orders"], "\"feed\""),
    )
    .await;
    let mut orders = r
        .client("sink=feed&table=public.orders&op=update,delete", "old-token", None)
        .await;
    let mut items = r.client("sink=feed&table=items", "old-token", None).await;
    // Nothing to send yet: heartbeats keep the connection.
    let ping = items.next().await.unwrap();
    assert_eq!(ping.comment.as_deref(), Some("ping"), "{ping:?}");

    r.db.exec("INSERT INTO items VALUES (1, 'a'); INSERT INTO orders VALUES (1, 1), (2, 2)")
        .await;
    r.db.exec("UPDATE orders SET qty = 5; UPDATE items SET title = 'b'; DELETE FROM orders WHERE id = 2")
        .await;
    let got = orders.events(3).await;
    let summary: Vec<(String, i64)> = got.iter().map(|m| (m.event.clone().unwrap(), row(m))).collect();
    assert_eq!(
        summary,
        [
            ("update".to_string(), 1),
            ("update".to_string(), 2),
            ("delete".to_string(), 2)
        ]
    );
    assert!(got.iter().all(|m| m.json()["table"] == "orders"));
    let got = items.events(2).await;
    assert_eq!(
        got.iter().map(|m| m.event.clone().unwrap()).collect::<Vec<_>>(),
        ["create", "update"]
    );

    for (query, last_event_id, status, says) in [
        (
            "sink=feed&table=public.nope",
            None,
            400,
            "sink feed carries no table public.nope; its tables: public.items, public.orders",
        ),
        ("sink=feed&op=upsert", None, 400, "op \"upsert\" is not one of create"),
        ("sink=feed&from=newest", None, 400, "use from=oldest"),
        ("sink=feed&tables=items", None, 400, "unknown parameter \"tables\""),
        ("sink=feed", Some("yesterday"), 400, "is not an event id like"),
        (
            "table=items",
            None,
            400,
            "add ?sink=NAME, the stream sink to read (stream sinks: feed)",
        ),
        (
            "sink=fed",
            None,
            404,
            "no stream sink named \"fed\" (stream sinks: feed)",
        ),
    ] {
        let response = r.get(query, Some("old-token"), last_event_id).await;
        assert_eq!(response.status(), status, "{query}");
        let body = response.text().await.unwrap();
        assert!(body.contains(says), "{query}: {body}");
    }
    r.done().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_checked_and_clients_above_max_clients_get_503() {
    let sinks = feed("max_clients = 2\nheartbeat = \"200ms\"")
        + "\n[sinks.other]\ntype = \"stream\"\ntoken = \"other-token\"\n";
    let r = Running::start("stream_auth", ITEMS, &sinks, &tables(&["items"], "\"feed\", \"other\"")).await;

    let response = r.get("sink=feed", None, None).await;
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert!(response.text().await.unwrap().contains("Authorization: Bearer TOKEN"));
    assert_eq!(r.get("sink=feed", Some("wrong"), None).await.status(), 401);
    let response = r.get("sink=feed", Some("other-token"), None).await;
    assert_eq!(response.status(), 403);
    assert!(response.text().await.unwrap().contains("not one of stream sink feed's"));
    let _other = r.client("sink=other", "other-token", None).await;

    // Both tokens of a rotation work; a third client is one too many.
    let first = r.client("sink=feed", "old-token", None).await;
    let _second = r.client("sink=feed", "new-token", None).await;
    let response = r.get("sink=feed", Some("old-token"), None).await;
    assert_eq!(response.status(), 503);
    assert!(response.text().await.unwrap().contains("max_clients (2)"));
    assert_eq!(r.metric("cdc_stream_clients_connected", "feed").await, Some(2.0));
    // A client that goes away frees its place (the server notices at its next write: a heartbeat).
    drop(first);
    r.wait_metric("cdc_stream_clients_connected", "feed", |v| v == 1.0)
        .await;
    let mut third = r.client("sink=feed", "old-token", None).await;
    r.db.exec("INSERT INTO items VALUES (1, 'a')").await;
    assert_eq!(row(&third.events(1).await[0]), 1);
    r.done().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_started_stream_sink_events_answers_503() {
    // As a standby, or while starting: the admin server answers before the sinks start.
    let r = Running::start(
        "stream_none",
        ITEMS,
        "[sinks.out]\ntype = \"stdout\"\n",
        &tables(&["items"], "\"out\""),
    )
    .await;
    let response = r.get("sink=feed", Some("old-token"), None).await;
    assert_eq!(response.status(), 503);
    assert!(response
        .text()
        .await
        .unwrap()
        .contains("no stream sink is serving here"));
    r.done().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_client_is_dropped_with_lagged_while_another_keeps_up_and_the_slot_advances() {
    let _serial = support::serial();
    let r = Running::start(
        "stream_lagged",
        ITEMS,
        &feed("buffer = 5000"),
        &tables(&["items"], "\"feed\""),
    )
    .await;
    let mut stalled = r.client("sink=feed", "old-token", None).await;
    let mut reader = r.client("sink=feed", "old-token", None).await;
    let (count_tx, mut count_rx) = tokio::sync::watch::channel(0usize);
    let reading = tokio::spawn(async move {
        let mut last = None;
        let mut count = 0;
        while let Some(msg) = reader.next_message().await {
            assert_ne!(msg.event.as_deref(), Some("lagged"), "the reading client was dropped");
            let at = position(msg.id.as_deref().unwrap());
            assert!(last < Some(at), "out of order");
            last = Some(at);
            count += 1;
            count_tx.send_replace(count);
        }
        count
    });

    // 1000 rows of ~1 kB per transaction; the reading client keeps up (each transaction waits
    // for it), the stalled one reads nothing, until its socket buffers and the 5000-event buffer
    // are full and the sink drops it.
    let mut rows = 0;
    let slot = r.db.name.clone();
    loop {
        r.db.exec(&format!(
            "INSERT INTO items SELECT g, 't', repeat('x', 1000) FROM generate_series({}, {}) g",
            rows + 1,
            rows + 1000
        ))
        .await;
        rows += 1000;
        let wanted = rows;
        tokio::time::timeout(WAIT, count_rx.wait_for(|n| *n >= wanted))
            .await
            .expect("the reading client fell behind")
            .unwrap();
        if r.metric("cdc_stream_clients_lagged_total", "feed").await == Some(1.0) {
            break;
        }
        assert!(rows < 300_000, "the stalled client was never dropped");
    }
    assert_eq!(r.metric("cdc_stream_clients_connected", "feed").await, Some(1.0));
    // Replication never waited for the stalled client: everything is confirmed.
    let wal = r.db.current_wal_lsn().await;
    r.db.wait_confirmed_flush(&slot, wal, WAIT).await;
    let ready = r.wait_ready().await;
    assert_eq!(ready["sinks"][0]["status"], "ok", "{ready}");

    // The stalled client reads again: what its connection held, then `lagged`, then the end.
    let mut got = 0;
    let mut last = None;
    loop {
        let msg = stalled.next_message().await.expect("the stream ends after lagged");
        if msg.event.as_deref() == Some("lagged") {
            assert_eq!(msg.json()["buffer"], 5000, "{msg:?}");
            break;
        }
        let at = position(msg.id.as_deref().unwrap());
        assert!(last < Some(at), "out of order");
        last = Some(at);
        got += 1;
    }
    assert!(stalled.next().await.is_none(), "the stream ends after lagged");
    assert!(got < rows, "{got} of {rows}");
    eprintln!("stalled client: dropped after {rows} rows; it had {got} in its connection");

    r.db.exec("INSERT INTO items VALUES (0, 'after')").await;
    let wanted = rows + 1;
    tokio::time::timeout(WAIT, count_rx.wait_for(|n| *n >= wanted))
        .await
        .expect("the reading client still receives")
        .unwrap();
    // Stopped before cdc, whose exit may cut the connection before the stream's last chunk.
    reading.abort();
    assert_eq!(*count_rx.borrow(), rows + 1, "every event once");
    r.done().await;
}

#[test]
fn a_stream_sink_without_the_admin_server_is_a_config_error() {
    let dir = support::temp_dir();
    let config = support::write_config(
        dir.path(),
        "[source]\nurl = \"postgres://127.0.0.1:1/x\"\n\n[sinks.feed]\ntype = \"stream\"\ntoken = \"t\"\n\n[[tables]]\ntable = \"items\"\nsinks = [\"feed\"]\n",
    );
    let out = support::cdc(&["--config", config.to_str().unwrap(), "run"]);
    assert_eq!(out.status.code(), Some(2), "{}", support::stderr_of(&out));
    assert!(
        support::stderr_of(&out).contains("cdc.toml:4: sinks.feed: a stream sink is served by the admin server, and there is no [admin]; add [admin] with listen"),
        "{}",
        support::stderr_of(&out)
    );
}
