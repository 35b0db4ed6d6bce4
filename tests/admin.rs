//! The admin server of `cdc run` over real HTTP: `/health`, `/metrics` (parsed as Prometheus
//! text), `/ready` (streaming, sinks ok / retrying / stalled), and JSON logs.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::metrics::{scrape, value, Sample};
use support::ready::{get, ready, wait_ready};

/// `cdc run` with its admin server, on a database of its own holding `items (id, title)`.
struct Running {
    db: support::TestDb,
    cdc: support::CdcProcess,
    /// The config file's path.
    config: String,
    /// The admin server: `http://127.0.0.1:PORT`.
    base: String,
    _dir: support::TempDir,
}

impl Running {
    /// Writes the config: `[source]` on a new database (slot and publication named after it),
    /// followed by what `config` returns for that name (more `[source]` keys, the sinks and the
    /// tables), then `[admin]` on a free port with the keys in `admin`. Runs `cdc setup`, starts
    /// `cdc run` and waits until `/ready` reports the source streaming.
    async fn start(prefix: &str, admin: &str, config: impl FnOnce(&str) -> String) -> Running {
        let db = support::new_database(prefix).await;
        db.exec("CREATE TABLE items (id int PRIMARY KEY, title text)").await;
        let port = support::free_port();
        let dir = support::temp_dir();
        let toml = format!(
            "[source]\nurl = \"{url}\"\nslot = \"{name}\"\npublication = \"{name}\"\n\n{rest}\n\n[admin]\nlisten = \"127.0.0.1:{port}\"\n{admin}\n",
            url = db.url,
            name = db.name,
            rest = config(&db.name),
        );
        let config = support::write_config(dir.path(), &toml).to_str().unwrap().to_string();
        let setup = support::cdc(&["--config", &config, "setup"]);
        assert!(setup.status.success(), "cdc setup: {}", support::stderr_of(&setup));
        let cdc = support::CdcProcess::start(&["--config", &config, "run"], &[]);
        let base = format!("http://127.0.0.1:{port}");
        let (_, body) = wait_ready(&base, Duration::from_secs(60), "the source streaming", |_, b| {
            b["source"]["status"] == "streaming"
        })
        .await;
        // Nothing is written yet: no sink has anything to deliver, whether it can or not.
        let sinks = body["sinks"].as_array().unwrap();
        assert!(sinks.iter().all(|s| s["status"] == "ok"), "{body}");
        Running {
            db,
            cdc,
            config,
            base,
            _dir: dir,
        }
    }
}

#[tokio::test]
async fn metrics_health_and_ready_follow_a_run() {
    let port = support::free_port();
    let setup = support::stdout_setup(
        "admin_metrics",
        "CREATE TABLE items (id int PRIMARY KEY, title text)",
        &format!("[admin]\nlisten = \"127.0.0.1:{port}\"\n\n[[tables]]\ntable = \"items\"\nsinks = [\"out\"]"),
    )
    .await;
    let mut cdc = support::CdcProcess::start(&["--config", &setup.config, "--log-format", "json", "run"], &[]);
    let base = format!("http://127.0.0.1:{port}");

    let (_, body) = wait_ready(&base, Duration::from_secs(60), "ready", |s, _| s == 200).await;
    assert_eq!(body["source"]["status"], "streaming", "{body}");
    assert_eq!(body["sinks"][0]["name"], "out", "{body}");
    assert_eq!(body["sinks"][0]["status"], "ok", "{body}");
    assert_eq!(get(&format!("{base}/health")).await, (200, "ok\n".to_string()));

    let db = &setup.db;
    db.exec("INSERT INTO items VALUES (1, 'a'), (2, 'b'), (3, 'c')").await;
    db.exec("UPDATE items SET title = 'z' WHERE id = 2").await;
    db.exec("DELETE FROM items WHERE id = 3").await;
    let events = cdc.next_events(5, Duration::from_secs(60));
    let last_lsn = support::parse_lsn(events[4]["lsn"].as_str().unwrap()) as f64;

    // The counters are bumped as the events pass; the confirmed position follows within the
    // stream's 200 ms tick; the slot probe reads the catalog every 5 s.
    let deadline = Instant::now() + Duration::from_secs(60);
    let samples = loop {
        let samples = scrape(&base).await;
        let table = |op| {
            value(
                &samples,
                "cdc_source_events_total",
                &[("table", "public.items"), ("op", op)],
            )
        };
        let done = table("create") == Some(3.0)
            && table("update") == Some(1.0)
            && table("delete") == Some(1.0)
            && value(&samples, "cdc_sink_events_total", &[("sink", "out")]) == Some(5.0)
            && value(&samples, "cdc_sink_acknowledged_lsn", &[("sink", "out")]).is_some_and(|v| v > last_lsn)
            && value(&samples, "cdc_source_confirmed_lsn", &[]).is_some_and(|v| v > last_lsn)
            && value(&samples, "cdc_source_retained_wal_bytes", &[]).is_some_and(|v| v > 0.0);
        if done {
            break samples;
        }
        assert!(
            Instant::now() < deadline,
            "/metrics never showed the 5 changes acknowledged and confirmed past {last_lsn}:\n{samples:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(value(&samples, "cdc_source_connected", &[]), Some(1.0));
    assert_eq!(value(&samples, "cdc_source_reconnects_total", &[]), Some(0.0));
    assert_eq!(
        value(&samples, "cdc_sink_dead_letters_total", &[("sink", "out")]),
        Some(0.0)
    );
    assert!(
        value(&samples, "cdc_source_received_lsn", &[]).is_some_and(|v| v > last_lsn),
        "{samples:#?}"
    );

    let (status, body) = ready(&base).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sinks"][0]["status"], "ok", "{body}");
    assert_eq!(body["problems"], serde_json::json!([]), "{body}");

    // cdc status: the slot from Postgres, the live figures from the running daemon.
    let out = support::cdc(&["--config", &setup.config, "status"]);
    let text = support::stdout_of(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", support::stderr_of(&out));
    assert!(
        text.contains(&format!("slot {}: in use, wal_status reserved", db.name)),
        "{text}"
    );
    assert!(text.contains("sink out (stdout): 0 dead letters"), "{text}");
    assert!(text.contains("cdc run: ready; source streaming"), "{text}");
    assert!(text.contains("  sink out: ok, acknowledged "), "{text}");
    let out = support::cdc(&["--config", &setup.config, "status", "--json"]);
    let json: Value = serde_json::from_slice(&out.stdout).expect("cdc status --json prints JSON");
    assert_eq!(json["live"]["ready"], true, "{json}");
    assert_eq!(json["slot"]["active"], true, "{json}");
    assert_eq!(json["sinks"][0]["dead_letters"], 0, "{json}");

    let status = cdc.sigterm();
    assert!(status.success(), "cdc run exited with {status}:\n{}", cdc.stderr_text());
    // With the daemon down, status still reads the slot.
    let out = support::cdc(&["--config", &setup.config, "status"]);
    let text = support::stdout_of(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("not in use (cdc run is not streaming)"), "{text}");
    assert!(
        text.contains("cdc run: no live figures: cdc run is not answering on"),
        "{text}"
    );
    // --log-format json: every line cdc logged is one JSON object with a level and a message.
    let stderr = cdc.stderr_text();
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "too few log lines:\n{stderr}");
    for line in &lines {
        let parsed: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}\n{stderr}"));
        assert!(
            parsed["level"].is_string() && parsed["fields"]["message"].is_string(),
            "{line}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("admin server on http://127.0.0.1")),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_sink_that_cannot_deliver_is_retrying_then_stalled() {
    let dead = support::free_port();
    // Nothing to deliver at the start: the sink is ok although the node is down. (Not
    // necessarily ready: other tests' writes may already count as WAL the slot holds, over
    // max_retained_wal = 1B.)
    let mut r = Running::start("admin_stall", "stall_after = \"5s\"", |_| {
        format!(
            "warn_retained_wal = \"1B\"\nmax_retained_wal = \"1B\"\n\n\
             [sinks.search]\ntype = \"elasticsearch\"\nurl = \"http://127.0.0.1:{dead}\"\nflush_interval = \"100ms\"\n\n\
             [[tables]]\ntable = \"items\"\nsinks = [\"search\"]\n"
        )
    })
    .await;
    r.db.exec("INSERT INTO items VALUES (1, 'a')").await;
    // The sink fails and retries: "retrying", still ready until stall_after (5 s) passes
    // without an acknowledgement.
    let (_, body) = wait_ready(&r.base, Duration::from_secs(30), "the sink retrying", |_, b| {
        b["sinks"][0]["status"] != "ok"
    })
    .await;
    assert_eq!(body["sinks"][0]["status"], "retrying", "{body}");
    let error = body["sinks"][0]["error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains(&format!("127.0.0.1:{dead}")), "{body}");

    let (status, body) = wait_ready(&r.base, Duration::from_secs(60), "the sink stalled", |_, b| {
        b["sinks"][0]["status"] == "stalled"
    })
    .await;
    assert_eq!(status, 503);
    assert_eq!(body["sinks"][0]["status"], "stalled", "{body}");
    assert!(body["sinks"][0]["pending_seconds"].as_f64().unwrap() >= 5.0, "{body}");
    // The insert was committed before the stall clock started; the lag is refreshed every 200 ms.
    assert!(body["source"]["lag_seconds"].as_f64().unwrap() >= 4.5, "{body}");
    let problems = body["problems"].to_string();
    assert!(
        problems.contains("sink search: stalled") && problems.contains(&format!("127.0.0.1:{dead}")),
        "the problem names the sink and its last error: {body}"
    );

    // The slot holds the insert's WAL at least: over max_retained_wal (/ready) and
    // warn_retained_wal (the log), once the slot probe (every 5 s) has read it.
    let (_, body) = wait_ready(&r.base, Duration::from_secs(60), "the retained WAL", |_, b| {
        b["problems"].to_string().contains("more than max_retained_wal")
    })
    .await;
    assert!(body["source"]["retained_wal_bytes"].as_i64().unwrap() > 1, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !r.cdc.stderr_text().contains("more than warn_retained_wal (1 bytes)") {
        assert!(
            Instant::now() < deadline,
            "no retained-WAL warning:\n{}",
            r.cdc.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let out = support::cdc(&["--config", &r.config, "status"]);
    let text = support::stdout_of(&out);
    assert_eq!(out.status.code(), Some(1), "not ready: {text}");
    assert!(
        text.contains("cdc run: NOT ready") && text.contains("  sink search: stalled"),
        "{text}"
    );

    let samples = scrape(&r.base).await;
    assert!(
        value(&samples, "cdc_sink_retries_total", &[("sink", "search")]).is_some_and(|v| v >= 1.0),
        "{samples:#?}"
    );
    assert_eq!(
        value(&samples, "cdc_sink_events_total", &[("sink", "search")]),
        Some(0.0)
    );
    let acked = value(&samples, "cdc_sink_acknowledged_lsn", &[("sink", "search")]).unwrap();
    let received = value(&samples, "cdc_source_received_lsn", &[]).unwrap();
    assert!(acked < received, "acknowledged {acked} is behind received {received}");
    r.cdc.kill9();
}

#[tokio::test]
async fn search_and_webhook_sinks_count_their_requests_and_dead_letters() {
    let node = support::search_url()
        .expect("CDC_TEST_SEARCH_URL is not set: run the tests with scripts/test.sh (it starts the search node)");
    let ok = support::receiver::Receiver::start();
    let gone = support::receiver::Receiver::start();
    gone.answer(support::receiver::Answer::Status(410, None));
    // Failing, with a retry far away: its batches wait in the outbox.
    let down = support::receiver::Receiver::start();
    down.answer(support::receiver::Answer::Status(500, None));
    let mut r = Running::start("admin_sinks", "", |name| {
        format!(
            "[sinks.search]\ntype = \"elasticsearch\"\nurl = \"{node}\"\nflush_interval = \"100ms\"\n\n\
             [sinks.hook]\ntype = \"webhook\"\nurl = \"{ok}\"\nbatch_max_wait = \"0\"\n\n\
             [sinks.gone]\ntype = \"webhook\"\nurl = \"{gone}\"\nbatch_max_wait = \"0\"\n\n\
             [sinks.down]\ntype = \"webhook\"\nurl = \"{down}\"\nbatch_max_wait = \"0\"\nretry = [\"1h\"]\n\n\
             [[tables]]\ntable = \"items\"\nsinks = [\"search\", \"hook\", \"gone\", \"down\"]\nindex = \"{name}\"\n",
            ok = ok.url(),
            gone = gone.url(),
            down = down.url(),
        )
    })
    .await;

    r.db.exec("INSERT INTO items SELECT g, 'row ' || g FROM generate_series(1, 50) g")
        .await;
    let events = ok.wait_for_events(50, Duration::from_secs(60));
    // A sink's acknowledged position is the end of the last transaction it settled: past the
    // insert's commit record once it has settled the insert.
    let committed = support::parse_lsn(events[49]["commit_lsn"].as_str().unwrap()) as f64;

    // Every sink settled the 50 events: written to the index, delivered, or (410 Gone) stored
    // as dead letters; each acknowledged the transaction.
    let deadline = Instant::now() + Duration::from_secs(60);
    let samples = loop {
        let samples = scrape(&r.base).await;
        let of = |name: &str, sink: &str| value(&samples, name, &[("sink", sink)]);
        let done = of("cdc_sink_events_total", "search") == Some(50.0)
            && of("cdc_sink_events_total", "hook") == Some(50.0)
            && of("cdc_sink_dead_letters_total", "gone") == Some(50.0)
            && ["search", "hook", "gone", "down"]
                .iter()
                .all(|s| of("cdc_sink_acknowledged_lsn", s).is_some_and(|v| v > committed));
        if done {
            break samples;
        }
        assert!(
            Instant::now() < deadline,
            "the sinks' counters never showed 50 events settled:\n{samples:#?}\n{}",
            r.cdc.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let of = |name: &str, sink: &str| value(&samples, name, &[("sink", sink)]);
    for sink in ["search", "hook"] {
        // Documents per request and events per batch add up to what was sent.
        assert_eq!(
            of("cdc_sink_batch_events_sum", sink),
            Some(50.0),
            "{sink}: {samples:#?}"
        );
        assert!(
            of("cdc_sink_request_duration_seconds_count", sink).is_some_and(|n| n >= 1.0),
            "{sink}: {samples:#?}"
        );
        assert_eq!(of("cdc_sink_requests_in_flight", sink), Some(0.0), "{sink}");
        assert_eq!(of("cdc_sink_dead_letters_total", sink), Some(0.0), "{sink}");
    }
    assert_eq!(of("cdc_sink_events_total", "gone"), Some(0.0));
    // cdc status counts the dead letters from Postgres.
    let out = support::cdc(&["--config", &r.config, "status"]);
    let text = support::stdout_of(&out);
    // (Rows of cdc.dead_letters: a webhook's are batches of up to 25 events.)
    let batches =
        r.db.query_one_i64("SELECT count(*) FROM cdc.dead_letters WHERE sink = 'gone'")
            .await;
    assert!(batches >= 2, "50 events in batches of at most 25");
    assert!(
        text.contains(&format!(
            "sink gone (webhook): {batches} dead letters, 0 batches in the outbox"
        )),
        "{text}"
    );
    assert!(text.contains("sink search (elasticsearch): 0 dead letters"), "{text}");

    // The endpoint that answered 410 is disabled, not retrying: /ready is 503 for it alone and
    // says what to do. The failing one is retrying, its batches in the outbox, and counted
    // alike in /ready, /metrics, `cdc status` and the table (once the probe, every 5 s, read them).
    let stored =
        r.db.query_one_i64("SELECT count(*) FROM cdc.webhook_outbox WHERE sink = 'down'")
            .await;
    assert!(stored >= 2, "50 events in batches of at most 25, all stored: {stored}");
    let sink = |body: &Value, name: &str| {
        body["sinks"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no sink {name} in {body}"))
    };
    let (status, body) = wait_ready(&r.base, Duration::from_secs(60), "the backlog counted", |_, b| {
        sink(b, "down")["outbox_batches"] == stored
    })
    .await;
    assert_eq!(status, 503, "{body}");
    let gone_state = sink(&body, "gone");
    assert_eq!(gone_state["status"], "disabled", "{body}");
    assert_eq!(gone_state["dead_letters"], batches, "{body}");
    assert_eq!(gone_state["outbox_batches"], 0, "{body}");
    let reason = gone_state["error"].as_str().unwrap_or_default();
    assert!(
        reason.contains("answered 410 Gone") && reason.contains("cdc dead-letters replay --all"),
        "{body}"
    );
    let problems = body["problems"].as_array().unwrap();
    assert_eq!(
        problems.len(),
        1,
        "only the disabled endpoint makes it not ready: {body}"
    );
    assert!(
        problems[0].as_str().unwrap().starts_with("sink gone: disabled: "),
        "{body}"
    );
    assert_eq!(sink(&body, "down")["status"], "retrying", "{body}");
    assert_eq!(sink(&body, "down")["dead_letters"], 0, "{body}");
    assert_eq!(sink(&body, "search")["outbox_batches"], Value::Null, "{body}");
    assert_eq!(sink(&body, "hook")["status"], "ok", "{body}");
    let samples = scrape(&r.base).await;
    let of = |name: &str, sink: &str| value(&samples, name, &[("sink", sink)]);
    assert_eq!(of("cdc_webhook_outbox_batches", "down"), Some(stored as f64));
    assert_eq!(of("cdc_webhook_outbox_batches", "gone"), Some(0.0));
    assert_eq!(of("cdc_webhook_outbox_batches", "search"), None, "not a webhook");
    assert_eq!(of("cdc_sink_disabled", "gone"), Some(1.0));
    assert_eq!(of("cdc_sink_disabled", "hook"), Some(0.0));
    let out = support::cdc(&["--config", &r.config, "status"]);
    let text = support::stdout_of(&out);
    assert_eq!(out.status.code(), Some(1), "not ready: {text}");
    assert!(
        text.contains(&format!(
            "sink down (webhook): 0 dead letters, {stored} batches in the outbox"
        )),
        "{text}"
    );
    assert!(
        text.contains("  sink gone: disabled, acknowledged ") && text.contains("answered 410 Gone"),
        "{text}"
    );
    r.cdc.kill9();
}

/// A webhook endpoint in block mode that keeps failing holds the slot: once `stall_after` passes
/// without an acknowledgement, `/ready` is 503 naming the sink, and the lag grows. When the
/// endpoint answers again, the sink catches up, `/ready` is 200 again and the lag falls to 0.
#[tokio::test]
async fn a_blocked_webhook_stalls_ready_and_both_recover_when_the_endpoint_is_back() {
    use support::receiver::{Answer, Receiver};
    let receiver = Receiver::start();
    receiver.answer(Answer::Status(500, None));
    let mut r = Running::start("admin_block", "stall_after = \"3s\"", |_| {
        format!(
            "[sinks.hook]\ntype = \"webhook\"\nurl = \"{hook}\"\non_exhausted = \"block\"\nretry = [\"500ms\"]\nbatch_max_wait = \"0\"\n\n\
             [[tables]]\ntable = \"items\"\nsinks = [\"hook\"]\n",
            hook = receiver.url(),
        )
    })
    .await;
    let (status, body) = ready(&r.base).await;
    assert_eq!(status, 200, "ready before anything is written: {body}");

    r.db.exec("INSERT INTO items VALUES (1, 'held')").await;
    let (_, body) = wait_ready(
        &r.base,
        Duration::from_secs(60),
        "the blocked sink stalled",
        |status, b| status == 503 && b["sinks"][0]["status"] == "stalled",
    )
    .await;
    assert!(
        body["problems"].to_string().contains("sink hook: stalled"),
        "the reason names the sink: {body}"
    );
    let lag = |samples: &[Sample]| value(samples, "cdc_source_lag_seconds", &[]).unwrap();
    // The lag grows while the endpoint fails (it is the held insert's age, refreshed every 200 ms).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held = lag(&scrape(&r.base).await);
        if held >= 4.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lag did not grow while the endpoint failed: {held}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    receiver.answer(Answer::Ok);
    let events = receiver.wait_for_events(1, Duration::from_secs(60));
    assert_eq!(events[0]["new"]["title"], "held");
    wait_ready(&r.base, Duration::from_secs(60), "ready again", |status, b| {
        status == 200 && b["sinks"][0]["status"] == "ok"
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = lag(&scrape(&r.base).await);
        if now == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the lag never fell back to 0: {now}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(r.cdc.sigterm().success(), "{}", r.cdc.stderr_text());
}

/// The lag contract on the search sink: while the node cannot be reached (a proxy in front of
/// the real node closes every connection), the rows written wait: the lag in bytes and in
/// seconds rise, `/ready` is 503 naming the sink and one stall is counted; once the node is back
/// the documents arrive, both lags fall and `/ready` is 200 again. Then the same with one
/// transaction larger than the sink's channel, which waits mid-stream (its Commit unread): the
/// lag in seconds and the stall still show it.
#[tokio::test]
async fn lag_rises_while_the_search_node_is_unreachable_and_falls_when_it_is_back() {
    let node = support::search::node_url();
    let proxy = support::proxy::Proxy::start(&node);
    let mut r = Running::start("admin_search_lag", "stall_after = \"3s\"", |name| {
        format!(
            "[sinks.search]\ntype = \"elasticsearch\"\nurl = \"{proxy}\"\nflush_interval = \"100ms\"\n\n\
             [[tables]]\ntable = \"items\"\nsinks = [\"search\"]\nindex = \"{name}\"\n",
            proxy = proxy.url,
        )
    })
    .await;
    let (status, body) = ready(&r.base).await;
    assert_eq!(status, 200, "ready before anything is written: {body}");
    // A first row through the proxy: the index exists and the sink is caught up.
    r.db.exec("INSERT INTO items VALUES (0, 'before')").await;
    let docs = |want: usize| {
        let (node, index) = (node.clone(), r.db.name.clone());
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let n = support::search::raw_docs(&node, &index).await.len();
                if n == want {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "the index holds {n} documents, expected {want}"
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };
    docs(1).await;
    let metric = |name: &'static str| {
        let base = r.base.clone();
        async move { value(&scrape(&base).await, name, &[]).unwrap_or_else(|| panic!("no {name}")) }
    };

    let stalls = |samples: &[Sample]| value(samples, "cdc_sink_stalls_total", &[("sink", "search")]);
    // (Creating the index may have taken longer than stall_after on a busy node: count from here.)
    let stalls_before = stalls(&scrape(&r.base).await).unwrap();

    proxy.down();
    let before = r.db.current_wal_lsn().await;
    // About 10 MB of WAL (incompressible text under the TOAST threshold), far above what the
    // other tests sharing the cluster write while the lag is read back after the recovery; in
    // 200 transactions, so that the first ones reach the sink whole and wait for it there, and
    // the slot's confirmed position stays before them.
    r.db.exec(
        "DO $$ BEGIN FOR t IN 0..199 LOOP \
           INSERT INTO items SELECT g, (SELECT string_agg(md5(g::text || '.' || i::text), '') \
             FROM generate_series(1, 30) i) FROM generate_series(t * 50 + 1, t * 50 + 50) g; \
           COMMIT; \
         END LOOP; END $$",
    )
    .await;
    let held = (r.db.current_wal_lsn().await - before) as f64;
    assert!(held > 5e6, "the insert wrote {held} bytes of WAL");

    // Both lags rise: the bytes once the slot probe (every 5 s) has read the slot, the seconds
    // with the held transaction's age.
    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut first_seconds, mut risen) = (None, false);
    while !risen {
        let samples = scrape(&r.base).await;
        let bytes = value(&samples, "cdc_source_lag_bytes", &[]).unwrap();
        let seconds = value(&samples, "cdc_source_lag_seconds", &[]).unwrap();
        let first = *first_seconds.get_or_insert(seconds);
        risen = bytes >= held && seconds > first && seconds >= 2.0;
        assert!(
            Instant::now() < deadline,
            "the lag did not rise while the node was unreachable: {bytes} bytes (held {held}), {seconds} s\n{}",
            r.cdc.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, body) = wait_ready(
        &r.base,
        Duration::from_secs(60),
        "the search sink stalled",
        |status, b| status == 503 && b["sinks"][0]["status"] == "stalled",
    )
    .await;
    let problems = body["problems"].to_string();
    assert!(
        problems.contains("sink search: stalled") && problems.contains(&proxy.url.replace("http://", "")),
        "the reason names the sink and the node it cannot reach: {body}"
    );
    // Counted once while it lasts: still one more after two stall_after windows.
    wait_ready(&r.base, Duration::from_secs(60), "the stall lasting 6 s", |_, b| {
        b["sinks"][0]["status"] == "stalled" && b["sinks"][0]["pending_seconds"].as_f64().unwrap_or(0.0) >= 6.0
    })
    .await;
    assert_eq!(stalls(&scrape(&r.base).await), Some(stalls_before + 1.0));

    proxy.up();
    docs(10001).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (bytes, seconds) = (
            metric("cdc_source_lag_bytes").await,
            metric("cdc_source_lag_seconds").await,
        );
        if seconds == 0.0 && bytes < held {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lag did not fall after the node came back: {bytes} bytes (held {held}), {seconds} s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, body) = wait_ready(&r.base, Duration::from_secs(60), "ready again", |status, b| {
        status == 200 && b["sinks"][0]["status"] == "ok"
    })
    .await;
    assert_eq!(body["problems"], serde_json::json!([]), "{body}");
    // (Not necessarily still +1: a request whose retry timer outlasts the outage may keep the
    // sink without progress for another stall_after once the others are through.)
    let stalls_before = stalls(&scrape(&r.base).await).unwrap();

    // One transaction of 10,000 rows: more messages than the sink's channel holds (4096).
    proxy.down();
    r.db.exec("UPDATE items SET title = 'again' WHERE id > 0").await;
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let seconds = metric("cdc_source_lag_seconds").await;
        if seconds >= 2.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lag in seconds did not rise while a large transaction waited: {seconds} s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_ready(
        &r.base,
        Duration::from_secs(60),
        "the search sink stalled on the large transaction",
        |status, b| status == 503 && b["sinks"][0]["status"] == "stalled",
    )
    .await;
    assert_eq!(stalls(&scrape(&r.base).await), Some(stalls_before + 1.0));
    proxy.up();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let docs = support::search::raw_docs(&node, &r.db.name).await;
        let updated = docs.values().filter(|d| d.contains("\"again\"")).count();
        if updated == 10000 {
            break;
        }
        assert!(Instant::now() < deadline, "{updated} of 10000 documents updated");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_ready(
        &r.base,
        Duration::from_secs(60),
        "ready after the large transaction",
        |status, b| status == 200 && b["source"]["lag_seconds"] == 0.0,
    )
    .await;
    assert!(r.cdc.sigterm().success(), "{}", r.cdc.stderr_text());
}
