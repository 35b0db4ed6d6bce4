//! Proves the test harness (tests/support, scripts/postgres.sh) works, without the cdc pipeline.

mod support;

use std::time::Duration;

use support::*;

#[tokio::test]
async fn databases_are_distinct_and_isolated() {
    let a = new_database("harness_a").await;
    let b = new_database("harness_b").await;
    assert_ne!(a.name, b.name);
    assert_ne!(a.url, b.url);

    a.exec("CREATE TABLE only_in_a (id bigint PRIMARY KEY, v text); INSERT INTO only_in_a VALUES (1, 'x'), (2, 'y');")
        .await;
    assert_eq!(a.query_one_i64("SELECT count(*) FROM only_in_a").await, 2);
    assert_eq!(
        a.query_one_i64("SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'")
            .await,
        1
    );
    assert_eq!(
        b.query_one_i64("SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'")
            .await,
        0
    );
    assert_eq!(
        a.query_opt_text("SELECT current_database()").await.as_deref(),
        Some(a.name.as_str())
    );
    assert_eq!(
        b.query_opt_text("SELECT current_database()").await.as_deref(),
        Some(b.name.as_str())
    );
    let err = b
        .try_exec("SELECT * FROM only_in_a")
        .await
        .expect_err("the table is absent in b");
    assert!(err.contains("does not exist"), "{err}");
}

#[tokio::test]
async fn cluster_is_configured_for_logical_replication() {
    let db = new_database("harness_cfg").await;
    assert_eq!(db.query_opt_text("SHOW wal_level").await.as_deref(), Some("logical"));
    assert!(db.query_one_i64("SHOW max_replication_slots").await >= 64);
    assert!(db.query_one_i64("SHOW max_connections").await >= 300);
}

#[tokio::test]
async fn slot_lsns_are_readable() {
    let db = new_database("harness_slot").await;
    let slot = unique_name("harness_slot");
    assert_eq!(db.confirmed_flush_lsn(&slot).await, None);

    let before = db.current_wal_lsn().await;
    db.exec(&format!(
        "SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"
    ))
    .await;
    let confirmed = db
        .confirmed_flush_lsn(&slot)
        .await
        .expect("the new slot has a confirmed_flush_lsn");
    assert!(
        confirmed >= before,
        "{} < {}",
        format_lsn(confirmed),
        format_lsn(before)
    );
    assert!(db.current_wal_lsn().await >= confirmed);
    assert_eq!(
        db.wait_confirmed_flush(&slot, confirmed, Duration::from_secs(5)).await,
        confirmed
    );
    assert!(!db.slot_active(&slot).await);

    db.drop_slots().await;
    assert_eq!(db.confirmed_flush_lsn(&slot).await, None);
}

#[test]
fn lsn_text_round_trips() {
    assert_eq!(parse_lsn("16/B374D848"), 0x16_B374_D848);
    assert_eq!(format_lsn(0x16_B374_D848), "16/B374D848");
    assert_eq!(parse_lsn("0/0"), 0);
}

#[tokio::test]
async fn password_role_needs_its_password() {
    let db = new_database("harness_pw").await;
    let client = connect(&db.password_url()).await;
    let row = client.query_one("SELECT current_user::text", &[]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "cdc");

    let wrong = db.password_url().replace("cdc:cdc@", "cdc:wrong@");
    let err = tokio_postgres::connect(&wrong, tokio_postgres::NoTls)
        .await
        .err()
        .expect("a wrong password is refused");
    assert!(
        pg_error(&err).contains("password authentication failed"),
        "{}",
        pg_error(&err)
    );
}

#[test]
fn cdc_help_works() {
    let out = cdc(&["--help"]);
    assert!(
        out.status.success(),
        "cdc --help failed: {}\n{}",
        out.status,
        stderr_of(&out)
    );
    assert!(stdout_of(&out).contains("Usage"), "no Usage in:\n{}", stdout_of(&out));
}

#[test]
fn cdc_process_helpers_work() {
    // `cdc --help` as a "long-running" process: its stdout lines are not JSON, so no events;
    // it exits 0 and closes stdout.
    let mut p = CdcProcess::start(&["--help"], &[("RUST_LOG", "info")]);
    assert!(p.pid() > 0);
    let st = p.wait_exit(Duration::from_secs(30));
    assert!(st.success(), "{}", p.report());
    assert!(p.no_more_events(Duration::from_millis(200)).is_empty());
    assert!(
        p.recent_lines().iter().any(|l| l.contains("Usage")),
        "{:?}",
        p.recent_lines()
    );
    assert!(p.lines_received() > 3);
    assert_eq!(p.sigterm().code(), Some(0)); // already exited: returns the status
}

#[test]
fn temp_dirs_and_configs() {
    let dir = temp_dir();
    let path = write_config(dir.path(), "x = 1\n");
    assert_eq!(path, dir.path().join("cdc.toml"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "x = 1\n");
    let kept = dir.path().to_path_buf();
    drop(dir);
    assert!(!kept.exists());
}

#[test]
fn unique_names_are_identifiers() {
    let a = unique_name("Some-Prefix");
    let b = unique_name("Some-Prefix");
    assert_ne!(a, b);
    assert!(a.starts_with("some_prefix_"), "{a}");
    let long = unique_name(&"x".repeat(100));
    assert!(long.len() <= 63, "{long}");
}
