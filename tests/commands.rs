//! The commands around `cdc run`: configuration errors, `cdc check` on a misconfigured
//! database, `cdc setup` and `cdc teardown`, `--help`.

mod support;

use support::{new_database, stderr_of, stdout_of, write_config};

fn config_for(url: &str, slot: &str, tables: &str) -> String {
    format!("[source]\nurl = \"{url}\"\nslot = \"{slot}\"\npublication = \"{slot}\"\n\n[sinks.out]\ntype = \"stdout\"\n\n{tables}")
}

#[test]
fn a_broken_config_names_file_line_and_key_for_every_problem() {
    let dir = support::temp_dir();
    let path = write_config(
        dir.path(),
        "[source]\nurl = \"postgres://cdc:${CDC_TEST_UNSET_PASSWORD}@127.0.0.1/app\"\nslott = \"cdc\"\n\n[sinks.out]\ntype = \"stdout\"\n\n[[tables]]\ntable = \"items\"\nsinks = [\"ot\"]\nops = [\"insert\"]\n",
    );
    let path = path.to_str().unwrap();
    let out = support::cdc(&["--config", path, "check"]);
    assert_eq!(out.status.code(), Some(2), "stdout: {}", stdout_of(&out));
    let err = stderr_of(&out);
    assert!(
        err.contains("cdc.toml:2: source.url:") && err.contains("CDC_TEST_UNSET_PASSWORD"),
        "{err}"
    );
    assert!(
        err.contains("cdc.toml:3: source.slott: unknown key; did you mean \"slot\"?"),
        "{err}"
    );
    assert!(
        err.contains("cdc.toml:10: tables[0].sinks[0]:") && err.contains("\"out\""),
        "{err}"
    );
    assert!(
        err.contains("cdc.toml:11: tables[0].ops[0]:") && err.contains("insert"),
        "{err}"
    );
}

#[test]
fn a_missing_config_file_says_which_file() {
    let out = support::cdc(&["--config", "/nonexistent/cdc.toml", "run"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr_of(&out);
    assert!(err.contains("/nonexistent/cdc.toml"), "{err}");
    assert!(
        err.contains("--config") && err.contains("examples/"),
        "with a hint: {err}"
    );
}

#[test]
fn every_command_has_help_with_an_example() {
    for cmd in ["run", "check", "setup", "teardown"] {
        let out = support::cdc(&[cmd, "--help"]);
        assert!(out.status.success(), "{cmd} --help");
        let text = stdout_of(&out);
        assert!(text.contains("Example"), "{cmd} --help has an example:\n{text}");
        assert!(text.contains("--config"), "{cmd} --help names --config:\n{text}");
    }
    let top = stdout_of(&support::cdc(&["--help"]));
    assert!(top.contains("Examples:") && top.contains("cdc setup"), "{top}");
}

#[tokio::test]
async fn check_reports_each_problem_of_a_misconfigured_database_with_its_fix() {
    let db = new_database("check").await;
    db.exec(
        "CREATE TABLE nokey (a int, b text);
         CREATE TABLE items (id int PRIMARY KEY, title text);
         CREATE ROLE plain_reader LOGIN;
         GRANT ALL ON ALL TABLES IN SCHEMA public TO plain_reader;",
    )
    .await;
    let dir = support::temp_dir();
    let url = db.url.replacen("postgres@", "plain_reader@", 1);
    let path = write_config(
        dir.path(),
        &config_for(
            &url,
            &db.name,
            "[[tables]]\ntable = \"nokey\"\nsinks = [\"out\"]\n\n[[tables]]\ntable = \"items\"\nsinks = [\"out\"]\ncolumns = [\"id\", \"titel\"]\n\n[[tables]]\ntable = \"missing\"\nsinks = [\"out\"]\n",
        ),
    );
    let out = support::cdc(&["--config", path.to_str().unwrap(), "check"]);
    let text = stdout_of(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let problems: Vec<&str> = text.lines().filter(|l| l.starts_with("problem: ")).collect();
    let has = |needle: &str| problems.iter().any(|l| l.contains(needle));
    assert!(
        has("role plain_reader lacks the REPLICATION attribute: ALTER ROLE plain_reader WITH REPLICATION"),
        "{text}"
    );
    assert!(
        has(&format!("publication {} does not exist: run `cdc setup`", db.name)),
        "{text}"
    );
    assert!(
        has("public.nokey has no primary key") && has("cdc setup --replica-identity-full public.nokey"),
        "{text}"
    );
    assert!(has("public.items has no column \"titel\""), "{text}");
    assert!(has("table public.missing does not exist"), "{text}");
    assert!(text.contains("ok: wal_level = logical"), "{text}");
    assert_eq!(problems.len(), 5, "exactly the five problems:\n{text}");
}

#[tokio::test]
async fn setup_makes_check_pass_is_idempotent_and_teardown_reports_the_retained_wal() {
    let db = new_database("setup").await;
    db.exec("CREATE TABLE items (id int PRIMARY KEY, title text); CREATE TABLE parts (id int, title text) PARTITION BY RANGE (id); CREATE TABLE parts_1 PARTITION OF parts FOR VALUES FROM (0) TO (100);").await;
    let dir = support::temp_dir();
    let path = write_config(
        dir.path(),
        &config_for(&db.url, &db.name, "[[tables]]\ntable = \"items\"\nsinks = [\"out\"]\n\n[[tables]]\ntable = \"parts\"\nsinks = [\"out\"]\nkey = [\"id\"]\n"),
    );
    let path = path.to_str().unwrap();

    let first = support::cdc(&["--config", path, "setup", "--replica-identity-full", "parts"]);
    assert!(first.status.success(), "{}", stderr_of(&first));
    assert!(
        stdout_of(&first).contains("created publication"),
        "{}",
        stdout_of(&first)
    );
    let again = support::cdc(&["--config", path, "setup"]);
    assert!(
        again.status.success() && stdout_of(&again).contains(&format!("replication slot {} exists", db.name)),
        "{}",
        stdout_of(&again)
    );
    assert_eq!(
        db.query_one_i64("SELECT count(*) FROM pg_publication WHERE pubviaroot")
            .await,
        1
    );
    assert_eq!(
        db.query_one_i64("SELECT count(*) FROM pg_namespace WHERE nspname = 'cdc'")
            .await,
        1,
        "cdc's state schema exists"
    );

    let check = support::cdc(&["--config", path, "check"]);
    assert_eq!(check.status.code(), Some(0), "{}", stdout_of(&check));
    assert!(stdout_of(&check).contains("all checks passed"));

    db.exec("INSERT INTO items SELECT g, 'x' FROM generate_series(1, 1000) g")
        .await;
    let down = support::cdc(&["--config", path, "teardown", "--drop-publication"]);
    assert!(down.status.success(), "{}", stderr_of(&down));
    let said = stdout_of(&down);
    assert!(
        said.contains(&format!("dropped replication slot {}", db.name)) && said.contains("of WAL"),
        "{said}"
    );
    assert_eq!(
        db.query_one_i64(&format!(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = '{}'",
            db.name
        ))
        .await,
        0
    );
}

#[tokio::test]
async fn setup_refuses_a_table_whose_writes_it_would_break_and_changes_nothing() {
    let db = new_database("setup_refuse").await;
    db.exec(
        "CREATE TABLE items (id int PRIMARY KEY); CREATE TABLE nopk (a int, b text); INSERT INTO nopk VALUES (1, 'x');",
    )
    .await;
    let dir = support::temp_dir();
    let tables = "[[tables]]\ntable = \"items\"\nsinks = [\"out\"]\n\n[[tables]]\ntable = \"nopk\"\nsinks = [\"out\"]\nkey = [\"a\"]\n";
    let path = write_config(dir.path(), &config_for(&db.url, &db.name, tables));
    let out = support::cdc(&["--config", path.to_str().unwrap(), "setup"]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("public.nopk has no primary key and no replica identity"),
        "{err}"
    );
    assert!(
        err.contains("ADD PRIMARY KEY") && err.contains("cdc setup --replica-identity-full public.nopk"),
        "both fixes: {err}"
    );
    assert_eq!(
        db.query_one_i64("SELECT count(*) FROM pg_publication").await,
        0,
        "nothing was published"
    );
    assert_eq!(
        db.query_one_i64("SELECT count(*) FROM pg_replication_slots WHERE slot_name = current_database()")
            .await,
        0
    );
    db.exec("UPDATE nopk SET b = 'y'; DELETE FROM nopk;").await;
}

/// Every case `cdc setup` accepts leaves the application's UPDATE and DELETE working.
#[tokio::test]
async fn after_setup_the_applications_updates_and_deletes_keep_working() {
    let db = new_database("setup_writes").await;
    db.exec(
        "CREATE TABLE pk (id int PRIMARY KEY, v text);
         CREATE TABLE full_nopk (a int, v text);
         CREATE TABLE by_index (id int, code text NOT NULL, v text);
         CREATE UNIQUE INDEX by_index_code ON by_index (code);
         ALTER TABLE by_index REPLICA IDENTITY USING INDEX by_index_code;
         CREATE TABLE parts_pk (id int, at date, v text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
         CREATE TABLE parts_pk_1 PARTITION OF parts_pk FOR VALUES FROM ('2020-01-01') TO ('2030-01-01');
         CREATE TABLE parts_full (id int, v text) PARTITION BY LIST (id);
         CREATE TABLE parts_full_1 PARTITION OF parts_full FOR VALUES IN (1, 2);",
    )
    .await;
    let dir = support::temp_dir();
    let mut tables = String::new();
    for (table, key) in [
        ("pk", ""),
        ("full_nopk", "key = [\"a\"]\n"),
        ("by_index", ""),
        ("parts_pk", ""),
        ("parts_full", "key = [\"id\"]\n"),
    ] {
        tables.push_str(&format!("[[tables]]\ntable = \"{table}\"\nsinks = [\"out\"]\n{key}\n"));
    }
    let path = write_config(dir.path(), &config_for(&db.url, &db.name, &tables));
    let path = path.to_str().unwrap();
    let out = support::cdc(&[
        "--config",
        path,
        "setup",
        "--replica-identity-full",
        "full_nopk",
        "--replica-identity-full",
        "parts_full",
    ]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    db.exec(
        "INSERT INTO pk VALUES (1, 'a'); INSERT INTO full_nopk VALUES (1, 'a'); INSERT INTO by_index VALUES (1, 'c1', 'a');
         INSERT INTO parts_pk VALUES (1, '2024-01-01', 'a'); INSERT INTO parts_full VALUES (1, 'a');",
    )
    .await;
    for table in ["pk", "full_nopk", "by_index", "parts_pk", "parts_full"] {
        db.try_exec(&format!("UPDATE {table} SET v = 'b'"))
            .await
            .unwrap_or_else(|e| panic!("UPDATE {table} after cdc setup: {e}"));
        db.try_exec(&format!("DELETE FROM {table}"))
            .await
            .unwrap_or_else(|e| panic!("DELETE FROM {table} after cdc setup: {e}"));
    }
    let check = support::cdc(&["--config", path, "check"]);
    assert_eq!(check.status.code(), Some(0), "{}", stdout_of(&check));
}

#[tokio::test]
async fn a_key_that_deletes_cannot_carry_is_refused_by_check_and_run() {
    let db = new_database("badkey").await;
    db.exec("CREATE TABLE items (id int PRIMARY KEY, sku text, title text);")
        .await;
    let dir = support::temp_dir();
    let tables = "[[tables]]\ntable = \"items\"\nsinks = [\"out\"]\nkey = [\"sku\"]\n";
    let path = write_config(dir.path(), &config_for(&db.url, &db.name, tables));
    let path = path.to_str().unwrap();
    assert!(support::cdc(&["--config", path, "setup"]).status.success());
    let check = support::cdc(&["--config", path, "check"]);
    let text = stdout_of(&check);
    assert_eq!(check.status.code(), Some(1), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("problem: public.items: the mapping's key") && l.contains("--replica-identity-full")),
        "{text}"
    );
    let run = support::cdc_with_env_timeout(&["--config", path, "run"], &[], std::time::Duration::from_secs(60));
    let err = stderr_of(&run);
    assert!(!run.status.success(), "{err}");
    assert!(err.contains("which Postgres does not send with deletes"), "{err}");
    assert!(!err.contains("retrying in"), "no retry can fix a key: {err}");
}

#[tokio::test]
async fn check_warns_about_a_document_id_outside_the_replica_identity() {
    let db = new_database("idwarn").await;
    db.exec("CREATE TABLE items (id int PRIMARY KEY, sku text);").await;
    let dir = support::temp_dir();
    let tables = "[[tables]]\ntable = \"items\"\nsinks = [\"out\"]\nid = [\"sku\"]\n";
    let path = write_config(dir.path(), &config_for(&db.url, &db.name, tables));
    let path = path.to_str().unwrap();
    assert!(support::cdc(&["--config", path, "setup"]).status.success());
    let check = support::cdc(&["--config", path, "check"]);
    let text = stdout_of(&check);
    assert_eq!(check.status.code(), Some(0), "a warning only: {text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("warning: public.items: the document id [\"sku\"]")),
        "{text}"
    );
}

#[tokio::test]
async fn run_on_a_cluster_without_logical_decoding_ends_with_the_fix() {
    let cluster = support::ExtraCluster::start(&[("CDC_PG_WAL_LEVEL", "replica")]);
    let client = support::connect(&cluster.url).await;
    client
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY); CREATE PUBLICATION cdc FOR TABLE items;")
        .await
        .unwrap();
    let dir = support::temp_dir();
    let tables = "[[tables]]\ntable = \"items\"\nsinks = [\"out\"]\n";
    let path = write_config(dir.path(), &config_for(&cluster.url, "cdc", tables));
    let run = support::cdc_with_env_timeout(
        &["--config", path.to_str().unwrap(), "run"],
        &[],
        std::time::Duration::from_secs(60),
    );
    let err = stderr_of(&run);
    assert!(!run.status.success(), "{err}");
    assert!(
        err.contains("wal_level is replica") && err.contains("ALTER SYSTEM SET wal_level = logical"),
        "{err}"
    );
    assert!(!err.contains("retrying in"), "no retry can fix wal_level: {err}");
}

/// An inheritance child has no primary key of its parent's: `cdc setup` publishes the mapped
/// table ONLY, so the application's writes on the child keep working, and `cdc check` reports a
/// published child (as a `cdc setup` without ONLY left it).
#[tokio::test]
async fn setup_publishes_only_the_mapped_table_not_its_inheritance_children() {
    let db = new_database("setup_inherit").await;
    db.exec(
        "CREATE TABLE items (id int PRIMARY KEY, v text);
         CREATE TABLE items_archive () INHERITS (items);
         INSERT INTO items_archive VALUES (1, 'a');",
    )
    .await;
    let dir = support::temp_dir();
    let tables = "[[tables]]\ntable = \"items\"\nsinks = [\"out\"]\n";
    let path = write_config(dir.path(), &config_for(&db.url, &db.name, tables));
    let path = path.to_str().unwrap();
    let out = support::cdc(&["--config", path, "setup"]);
    assert!(out.status.success(), "{}", stderr_of(&out));
    db.try_exec("UPDATE items_archive SET v = 'b'")
        .await
        .unwrap_or_else(|e| panic!("UPDATE of the inheritance child after cdc setup: {e}"));
    assert_eq!(
        db.query_opt_text("SELECT string_agg(tablename, ',') FROM pg_publication_tables")
            .await
            .as_deref(),
        Some("items")
    );
    let check = support::cdc(&["--config", path, "check"]);
    assert_eq!(check.status.code(), Some(0), "{}", stdout_of(&check));

    db.exec(&format!("ALTER PUBLICATION {} ADD TABLE items_archive", db.name))
        .await;
    assert!(db.try_exec("UPDATE items_archive SET v = 'c'").await.is_err());
    let check = support::cdc(&["--config", path, "check"]);
    let text = stdout_of(&check);
    assert_eq!(check.status.code(), Some(1), "{text}");
    let problems: Vec<&str> = text.lines().filter(|l| l.starts_with("problem: ")).collect();
    assert!(
        problems.len() == 1
            && problems[0].contains("public.items_archive has no primary key and no replica identity")
            && problems[0].contains(&format!(
                "ALTER PUBLICATION {} DROP TABLE ONLY \"public\".\"items_archive\"",
                db.name
            )),
        "{text}"
    );
}

/// A publication that keeps changes back (operations not published, a row filter, a column
/// list) is refused by `cdc setup` (changing nothing), `cdc check` and `cdc run`, each saying
/// what to run; the fix they name makes setup and check pass.
#[tokio::test]
async fn a_publication_that_keeps_changes_back_is_refused_with_the_fix() {
    let db = new_database("pub_gaps").await;
    let name = &db.name;
    db.exec(&format!(
        "CREATE TABLE items (id int PRIMARY KEY, title text);
         CREATE PUBLICATION {name} FOR TABLE items WITH (publish = 'insert');"
    ))
    .await;
    let dir = support::temp_dir();
    let tables = "[[tables]]\ntable = \"items\"\nsinks = [\"out\"]\n";
    let path = write_config(dir.path(), &config_for(&db.url, name, tables));
    let path = path.to_str().unwrap();
    let problems = |out: &std::process::Output| -> Vec<String> {
        stdout_of(out)
            .lines()
            .filter_map(|l| l.strip_prefix("problem: "))
            .map(str::to_string)
            .collect()
    };

    let setup = support::cdc(&["--config", path, "setup"]);
    let err = stderr_of(&setup);
    assert_eq!(setup.status.code(), Some(1), "{err}");
    let publish_fix = format!("ALTER PUBLICATION {name} SET (publish = 'insert, update, delete, truncate')");
    assert!(
        err.contains("nothing was changed")
            && err.contains(&format!("publication {name} does not publish update, delete, truncate"))
            && err.contains(&publish_fix)
            && err.contains("source.publication"),
        "{err}"
    );
    assert_eq!(
        db.query_one_i64("SELECT count(*) FROM pg_publication WHERE pubviaroot")
            .await,
        0,
        "the publication was not changed"
    );
    assert_eq!(
        db.query_one_i64("SELECT count(*) FROM pg_replication_slots WHERE slot_name = current_database()")
            .await,
        0,
        "no slot was created"
    );
    let check = support::cdc(&["--config", path, "check"]);
    assert_eq!(check.status.code(), Some(1), "{}", stdout_of(&check));
    assert!(
        problems(&check)
            .iter()
            .any(|p| p.contains("does not publish update, delete, truncate") && p.contains(&publish_fix)),
        "{}",
        stdout_of(&check)
    );
    let run = support::cdc_with_env_timeout(&["--config", path, "run"], &[], std::time::Duration::from_secs(60));
    let err = stderr_of(&run);
    assert!(!run.status.success(), "{err}");
    assert!(err.contains(&publish_fix), "{err}");
    assert!(!err.contains("retrying in"), "no retry can fix a publication: {err}");

    db.exec(&publish_fix).await;
    let rebuilt = format!(
        "BEGIN; ALTER PUBLICATION {name} DROP TABLE \"public\".\"items\"; \
         ALTER PUBLICATION {name} ADD TABLE ONLY \"public\".\"items\"; COMMIT;"
    );
    for (filtered, said) in [
        (
            "items WHERE (id > 10)",
            "a row filter on public.items (WHERE (id > 10))",
        ),
        ("items (id)", "a column list on public.items (id)"),
    ] {
        db.exec(&format!("ALTER PUBLICATION {name} SET TABLE {filtered}")).await;
        let setup = support::cdc(&["--config", path, "setup"]);
        let err = stderr_of(&setup);
        assert_eq!(setup.status.code(), Some(1), "{err}");
        assert!(err.contains(said) && err.contains(&rebuilt), "{err}");
        let check = support::cdc(&["--config", path, "check"]);
        assert_eq!(check.status.code(), Some(1), "{}", stdout_of(&check));
        assert!(
            problems(&check)
                .iter()
                .any(|p| p.contains(said) && p.contains(&rebuilt)),
            "{}",
            stdout_of(&check)
        );
    }

    db.exec(&rebuilt).await;
    let setup = support::cdc(&["--config", path, "setup"]);
    assert!(
        setup.status.success() && stdout_of(&setup).contains("covers every mapped table"),
        "{}{}",
        stdout_of(&setup),
        stderr_of(&setup)
    );
    let check = support::cdc(&["--config", path, "check"]);
    assert_eq!(check.status.code(), Some(0), "{}", stdout_of(&check));
}

/// `--replica-identity-full` on a table a long transaction holds: ALTER TABLE would queue for
/// its lock and block every query of the table meanwhile, so setup gives up within seconds,
/// leaves the table as it was, and the other sessions' queries go on.
#[tokio::test]
async fn replica_identity_full_gives_up_on_a_busy_table_without_blocking_it() {
    let db = new_database("setup_busy").await;
    db.exec("CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items VALUES (1, 'a');")
        .await;
    let dir = support::temp_dir();
    let tables = "[[tables]]\ntable = \"items\"\nsinks = [\"out\"]\n";
    let path = write_config(dir.path(), &config_for(&db.url, &db.name, tables))
        .to_str()
        .unwrap()
        .to_string();
    let holder = support::connect(&db.url).await;
    holder.batch_execute("BEGIN; SELECT * FROM items").await.unwrap();

    let started = std::time::Instant::now();
    let setup = tokio::task::spawn_blocking(move || {
        support::cdc(&["--config", &path, "setup", "--replica-identity-full", "items"])
    });
    // Once setup's ALTER TABLE queues for the lock, a plain read of the table queues behind it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !setup.is_finished()
        && db
            .query_one_i64("SELECT count(*) FROM pg_locks WHERE relation = 'items'::regclass AND NOT granted")
            .await
            == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "setup's ALTER TABLE did not wait for the lock within 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let reader = support::connect(&db.url).await;
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        reader.query_one("SELECT count(*) FROM items", &[]),
    )
    .await;
    assert!(
        matches!(read, Ok(Ok(_))),
        "a read of the table stayed blocked while the long transaction is open"
    );

    let out = setup.await.unwrap();
    let elapsed = started.elapsed();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("\"public\".\"items\" is busy: a long transaction holds a lock on it")
            && err.contains("Nothing else was changed for public.items")
            && err.contains("run `cdc setup` again when it is quiet"),
        "{err}"
    );
    assert!(elapsed < std::time::Duration::from_secs(30), "setup took {elapsed:?}");
    assert_eq!(
        db.query_opt_text("SELECT relreplident::text FROM pg_class WHERE oid = 'items'::regclass")
            .await
            .as_deref(),
        Some("d"),
        "the replica identity is unchanged"
    );
    assert_eq!(db.query_one_i64("SELECT count(*) FROM pg_publication").await, 0);

    holder.batch_execute("COMMIT").await.unwrap();
    let path = dir.path().join("cdc.toml");
    let again = support::cdc(&[
        "--config",
        path.to_str().unwrap(),
        "setup",
        "--replica-identity-full",
        "items",
    ]);
    assert!(again.status.success(), "{}", stderr_of(&again));
}
