//! Postgres restarts mid-stream: cdc reconnects and resumes; nothing is lost. Its own test
//! binary, since it restarts the cluster every test shares.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

#[tokio::test]
async fn a_postgres_restart_mid_stream_loses_nothing() {
    let setup = support::stdout_setup(
        "pgrestart",
        "CREATE TABLE items (id int PRIMARY KEY)",
        "[[tables]]\ntable = \"items\"\nsinks = [\"out\"]",
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
    assert!(cdc.sigterm().success());
}
