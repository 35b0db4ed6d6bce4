//! A standby: two `cdc run` on one slot. The second waits while the first streams (its log and
//! `/ready` say so), and takes over when the first is killed, without losing or reordering a
//! change. Real PostgreSQL, real processes, the admin server over real HTTP.

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::CdcProcess;

/// GET `url`: (status, JSON body or Null). A refused connection is status 0.
async fn get(url: &str) -> (u16, Value) {
    match reqwest::get(url).await {
        Ok(r) => {
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
        }
        Err(_) => (0, Value::Null),
    }
}

/// Polls `base`/ready until the source's status is `want`; returns the answer.
async fn wait_source_status(base: &str, want: &str, timeout: Duration, cdc: &CdcProcess) -> (u16, Value) {
    let deadline = Instant::now() + timeout;
    loop {
        let (status, body) = get(&format!("{base}/ready")).await;
        if body["source"]["status"] == want {
            return (status, body);
        }
        assert!(
            Instant::now() < deadline,
            "{base}/ready never showed the source {want} within {timeout:?}; last: {status} {body}\n{}",
            cdc.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (op, row id, n) of a delivered event.
fn change(e: &Value) -> (String, i64, i64) {
    let op = e["op"].as_str().unwrap().to_string();
    (op, e["new"]["id"].as_i64().unwrap(), e["new"]["n"].as_i64().unwrap())
}

// Multi-threaded: the workload runs as a task while the test blocks reading cdc's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_waits_then_takes_over_a_killed_reader_without_loss_or_reordering() {
    let s = support::stdout_setup(
        "standby",
        "CREATE TABLE items (id int PRIMARY KEY, n int)",
        "[[tables]]\ntable = \"items\"\nsinks = [\"out\"]",
    )
    .await;
    // The same config but for the admin port (both run on this one machine).
    let config = std::fs::read_to_string(&s.config).unwrap();
    let with_admin = |name: &str, port: u16| {
        let toml = format!("{config}\n[admin]\nlisten = \"127.0.0.1:{port}\"\n");
        let path = s.dir.path().join(name);
        std::fs::write(&path, toml).unwrap();
        path.to_str().unwrap().to_string()
    };
    let (port_a, port_b) = (support::free_port(), support::free_port());
    let (config_a, config_b) = (with_admin("a.toml", port_a), with_admin("b.toml", port_b));
    let (base_a, base_b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );

    let mut active = CdcProcess::start(&["--config", &config_a, "run"], &[]);
    wait_source_status(&base_a, "streaming", Duration::from_secs(60), &active).await;
    let mut standby = CdcProcess::start(&["--config", &config_b, "run"], &[]);
    let (status, body) = wait_source_status(&base_b, "standby", Duration::from_secs(60), &standby).await;
    assert_eq!(status, 503, "a standby is not ready: {body}");
    assert!(
        body["problems"][0].as_str().unwrap().contains("standby"),
        "the reason comes first: {body}"
    );
    assert_eq!(get(&format!("{base_b}/health")).await.0, 200, "a standby is alive");
    assert_eq!(
        body["sinks"],
        serde_json::json!([]),
        "a standby starts its sinks only when it takes over"
    );
    assert!(
        standby.stderr_text().contains("standing by"),
        "the standby says so in its log:\n{}",
        standby.stderr_text()
    );

    // The workload: 1,500 rows, each inserted and then updated, one row per transaction.
    const ROWS: i64 = 1500;
    let workload = {
        let url = s.db.url.clone();
        tokio::spawn(async move {
            let c = support::connect(&url).await;
            for id in 0..ROWS {
                c.batch_execute(&format!("INSERT INTO items VALUES ({id}, 0)"))
                    .await
                    .unwrap();
                c.batch_execute(&format!("UPDATE items SET n = 1 WHERE id = {id}"))
                    .await
                    .unwrap();
            }
        })
    };
    let oracle: Vec<(String, i64, i64)> = (0..ROWS)
        .flat_map(|id| [("create".to_string(), id, 0), ("update".to_string(), id, 1)])
        .collect();

    // Kill the active reader under the running workload.
    let mut delivered = active.next_events(400, Duration::from_secs(120));
    active.kill9();
    let killed = Instant::now();
    delivered.extend(active.remaining_events(Duration::from_secs(10)));
    let (status, _) = wait_source_status(&base_b, "streaming", Duration::from_secs(60), &standby).await;
    let took_over = killed.elapsed();
    eprintln!("the standby took over {took_over:?} after the kill");
    assert_eq!(status, 200, "the standby is ready once it streams");
    assert!(
        took_over <= Duration::from_secs(10),
        "the standby took {took_over:?} to take over (the contract is 10 s):\n{}",
        standby.stderr_text()
    );
    assert!(
        standby.stderr_text().contains("taking over"),
        "{}",
        standby.stderr_text()
    );

    // What the killed reader delivered, then what the standby delivers: replays of events it
    // had already delivered are allowed (same id, same content), nothing else.
    workload.await.unwrap();
    let mut first_seen: std::collections::HashMap<String, Value> = std::collections::HashMap::new();
    let mut stream: Vec<Value> = Vec::new();
    let mut take = |e: Value, stream: &mut Vec<Value>| {
        let id = e["id"].as_str().unwrap().to_string();
        match first_seen.get(&id) {
            Some(earlier) => assert_eq!(earlier, &e, "a replayed event is the same event"),
            None => {
                first_seen.insert(id, e.clone());
                stream.push(e);
            }
        }
    };
    for e in delivered {
        take(e, &mut stream);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while stream.len() < oracle.len() && Instant::now() < deadline {
        for e in standby.no_more_events(Duration::from_millis(500)) {
            take(e, &mut stream);
        }
    }
    let got: Vec<(String, i64, i64)> = stream.iter().map(change).collect();
    let missing: HashSet<_> = oracle.iter().filter(|c| !got.contains(c)).collect();
    assert!(missing.is_empty(), "lost across the takeover: {missing:?}");
    assert_eq!(got, oracle, "every change once, in commit order, across the takeover");
    assert_eq!(standby.sigterm().code(), Some(0), "{}", standby.stderr_text());
}
