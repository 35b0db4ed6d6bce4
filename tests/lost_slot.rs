//! A slot Postgres invalidated: `cdc check` reports it, `cdc run` exits 3 with the way back,
//! `cdc setup --recreate-slot` recreates it (and refuses a healthy slot), and streaming resumes.
//! On a cluster of its own, since it sets max_slot_wal_keep_size, which would invalidate other
//! tests' slots.

mod support;

use std::time::{Duration, Instant};

use support::{stderr_of, stdout_of};

/// A second throwaway cluster, stopped when dropped.
struct Cluster {
    dir: support::TempDir,
    url: String,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = support::temp_dir();
        let script = support::repo_root().join("scripts/postgres.sh");
        let out = std::process::Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(dir.path().join("pg"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr_of(&out));
        let url = stdout_of(&out)
            .lines()
            .find_map(|l| l.strip_prefix("export CDC_TEST_PG_URL='"))
            .and_then(|l| l.strip_suffix('\''))
            .expect("postgres.sh prints the URL")
            .to_string();
        Cluster { dir, url }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let script = support::repo_root().join("scripts/postgres.sh");
        let _ = std::process::Command::new("bash")
            .arg(&script)
            .arg("stop")
            .arg(self.dir.path().join("pg"))
            .output();
    }
}

#[tokio::test]
async fn a_lost_slot_exits_3_with_the_way_back_and_recreate_slot_resumes() {
    let cluster = Cluster::start();
    let db = support::connect(&cluster.url).await;
    db.batch_execute("CREATE TABLE items (id int PRIMARY KEY, filler text)")
        .await
        .unwrap();
    let dir = support::temp_dir();
    let toml = format!(
        "[source]\nurl = \"{}\"\n\n[sinks.out]\ntype = \"stdout\"\n\n[[tables]]\ntable = \"items\"\nsinks = [\"out\"]\n",
        cluster.url
    );
    let config = support::write_config(dir.path(), &toml);
    let config = config.to_str().unwrap();
    let setup = support::cdc(&["--config", config, "setup"]);
    assert!(setup.status.success(), "{}", stderr_of(&setup));

    // A healthy slot is never recreated.
    let refused = support::cdc(&["--config", config, "setup", "--recreate-slot"]);
    assert!(!refused.status.success());
    assert!(stderr_of(&refused).contains("is not lost"), "{}", stderr_of(&refused));

    let mut cdc = support::CdcProcess::start(&["--config", config, "run"], &[]);
    db.batch_execute("INSERT INTO items VALUES (1, 'before')")
        .await
        .unwrap();
    let events = cdc.next_events(1, Duration::from_secs(60));
    assert_eq!(events[0]["new"]["id"], 1);
    assert!(cdc.sigterm().success(), "{}", cdc.stderr_text());

    // With cdc stopped, write WAL past a tiny max_slot_wal_keep_size until a checkpoint
    // invalidates the slot.
    // Statement by statement: a multi-statement query is one transaction, where ALTER SYSTEM is refused.
    for sql in [
        "ALTER SYSTEM SET max_slot_wal_keep_size = '1MB'",
        "SELECT pg_reload_conf()",
    ] {
        db.batch_execute(sql).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        for sql in [
            "INSERT INTO items SELECT g, repeat('x', 500) FROM generate_series(1, 2000) g ON CONFLICT (id) DO UPDATE SET filler = excluded.filler || 'y'",
            "SELECT pg_switch_wal()",
            "CHECKPOINT",
        ] {
            db.batch_execute(sql).await.unwrap();
        }
        let status: Option<String> = db
            .query_one(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'cdc'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if status.as_deref() == Some("lost") {
            break;
        }
        assert!(Instant::now() < deadline, "the slot is still {status:?}");
    }

    let check = support::cdc(&["--config", config, "check"]);
    let text = stdout_of(&check);
    assert_eq!(check.status.code(), Some(1), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("problem: slot cdc was invalidated by Postgres")
                && l.contains("`cdc setup --recreate-slot`")),
        "{text}"
    );

    let run = support::cdc_with_env_timeout(&["--config", config, "run"], &[], Duration::from_secs(120));
    let err = stderr_of(&run);
    assert_eq!(run.status.code(), Some(3), "{err}");
    assert!(
        err.contains("was invalidated by Postgres")
            && err.contains("cdc setup --recreate-slot")
            && err.contains("cdc rebuild-index --all"),
        "{err}"
    );
    assert!(
        !err.contains("retrying in"),
        "no retry can bring a lost slot back: {err}"
    );

    let recreated = support::cdc(&["--config", config, "setup", "--recreate-slot"]);
    let out = stdout_of(&recreated);
    assert!(recreated.status.success(), "{}{}", out, stderr_of(&recreated));
    assert!(
        out.contains("dropped the lost replication slot cdc") && out.contains("gap: the changes committed between"),
        "{out}"
    );

    for sql in ["ALTER SYSTEM RESET max_slot_wal_keep_size", "SELECT pg_reload_conf()"] {
        db.batch_execute(sql).await.unwrap();
    }
    let mut cdc = support::CdcProcess::start(&["--config", config, "run"], &[]);
    db.batch_execute("INSERT INTO items VALUES (-1, 'after')")
        .await
        .unwrap();
    let events = cdc.events_until(|e| e["new"]["id"] == -1, Duration::from_secs(60));
    assert_eq!(events.last().unwrap()["new"]["filler"], "after");
    assert!(cdc.sigterm().success(), "{}", cdc.stderr_text());
}
