//! Postgres restarts mid-stream: cdc reconnects and resumes; nothing is lost. Its own test
//! binary, since it restarts the cluster every test shares.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_postgres_restart_mid_stream_loses_nothing() {
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
    let text = reqwest::get(format!("http://127.0.0.1:{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let value = |name: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name)
            .and_then(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => Some(v),
                _ => None,
            })
    };
    assert!(value("cdc_source_reconnects_total").is_some_and(|v| v >= 1.0), "{text}");
    assert_eq!(value("cdc_source_connected"), Some(1.0), "{text}");
    assert!(cdc.sigterm().success());
}
