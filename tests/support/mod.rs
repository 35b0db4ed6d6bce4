//! Shared helpers for the integration tests. Each test file does `mod support;`.
//!
//! The tests run against ONE throwaway PostgreSQL cluster started by `scripts/test.sh` (through
//! `scripts/postgres.sh`), which exports:
//!
//! - `CDC_TEST_PG_URL`  — `postgres://postgres@127.0.0.1:PORT/postgres` (superuser, trust auth)
//! - `CDC_TEST_PG_HOST` — `127.0.0.1`
//! - `CDC_TEST_PG_PORT` — the TCP port
//! - `CDC_TEST_PG_DIR`  — the cluster directory (data in `DIR/data`, log in `DIR/postgres.log`,
//!   unix socket in `DIR`)
//! - `CDC_TEST_PG_BIN`  — the directory holding `pg_ctl`, `psql`, ...
//! - `CDC_TEST_SEARCH_URL` — a search node (Elasticsearch/OpenSearch), only when one was started
//! - `CDC_TEST_TMP`     — the run's temp dir (temp dirs of [`temp_dir`] are created under it)
//!
//! The cluster also has a role `cdc` / password `cdc` (LOGIN REPLICATION) that must use
//! scram-sha-256 over TCP: see [`Pg::password_url`]. Give it the grants a test needs.
//!
//! Isolation: every test takes its own database from [`new_database`]; slot and publication
//! names only need to be unique per database (slots are cluster-wide: use [`unique_name`]).
//!
//! Blocking: the process helpers ([`cdc`], [`CdcProcess`], [`restart_postgres`]) block the
//! calling thread. Calling them from `#[tokio::test]` is fine: the waits are short and the cdc
//! process runs independently; only this test's own futures (e.g. its `TestDb` connection) pause.
//!
//! Restarts: [`restart_postgres`] restarts the shared cluster under every test of the same test
//! binary (cargo runs test binaries one after another, the tests inside one in parallel). Put
//! restart tests in a test file of their own, and hold [`serial`] in each of them.
#![allow(dead_code)]

pub mod metrics;
pub mod proxy;
pub mod ready;
pub mod receiver;
pub mod search;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use serde_json::Value;
pub use tempfile::TempDir;

/// How long [`cdc`] waits for a one-shot command before killing it.
pub const CDC_COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

// ------------------------------------------------------------------------------------------------
// The shared cluster
// ------------------------------------------------------------------------------------------------

/// The shared cluster started by `scripts/test.sh`.
#[derive(Debug, Clone)]
pub struct Pg {
    /// Superuser URL for database `postgres`.
    pub url: String,
    pub host: String,
    pub port: u16,
    /// The cluster directory (`data/`, `postgres.log`, unix socket).
    pub dir: PathBuf,
    /// The PostgreSQL bin directory.
    pub bin: PathBuf,
}

impl Pg {
    /// Superuser URL for database `db`.
    pub fn url_for(&self, db: &str) -> String {
        format!("postgres://postgres@{}:{}/{}", self.host, self.port, db)
    }

    /// URL of the password-authenticated role `cdc` (password `cdc`, scram-sha-256) for `db`.
    pub fn password_url(&self, db: &str) -> String {
        format!("postgres://cdc:cdc@{}:{}/{}", self.host, self.port, db)
    }

    /// The server log (useful in failure messages).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// A binary from the PostgreSQL bin dir (`psql`, `pg_recvlogical`, ...).
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }
}

const RUN_WITH_SCRIPT: &str = "run the tests with scripts/test.sh (it starts PostgreSQL)";

/// The shared cluster (from the `CDC_TEST_PG_*` variables). Panics with
/// "run the tests with scripts/test.sh (it starts PostgreSQL)" when they are unset.
pub fn pg() -> &'static Pg {
    static PG: OnceLock<Pg> = OnceLock::new();
    PG.get_or_init(|| {
        let url =
            env_nonempty("CDC_TEST_PG_URL").unwrap_or_else(|| panic!("CDC_TEST_PG_URL is not set: {RUN_WITH_SCRIPT}"));
        let port = env_nonempty("CDC_TEST_PG_PORT")
            .unwrap_or_else(|| panic!("CDC_TEST_PG_PORT is not set: {RUN_WITH_SCRIPT}"))
            .parse::<u16>()
            .unwrap_or_else(|e| panic!("CDC_TEST_PG_PORT is not a port ({e}): {RUN_WITH_SCRIPT}"));
        let dir = PathBuf::from(
            env_nonempty("CDC_TEST_PG_DIR").unwrap_or_else(|| panic!("CDC_TEST_PG_DIR is not set: {RUN_WITH_SCRIPT}")),
        );
        let bin = env_nonempty("CDC_TEST_PG_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
        let host = env_nonempty("CDC_TEST_PG_HOST").unwrap_or_else(|| "127.0.0.1".to_string());
        Pg {
            url,
            host,
            port,
            dir,
            bin,
        }
    })
}

/// The search node's URL (`CDC_TEST_SEARCH_URL`), when `scripts/test.sh` started one.
pub fn search_url() -> Option<String> {
    env_nonempty("CDC_TEST_SEARCH_URL")
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The repository root (where `Cargo.toml` and `scripts/` are).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A second throwaway cluster of the test's own (`scripts/postgres.sh start` with `envs`, e.g.
/// `CDC_PG_WAL_LEVEL=replica` or a TLS certificate), stopped when dropped.
pub struct ExtraCluster {
    dir: TempDir,
    /// Superuser URL (trust auth) for database `postgres`.
    pub url: String,
    pub port: u16,
}

impl ExtraCluster {
    pub fn start(envs: &[(&str, &str)]) -> ExtraCluster {
        let dir = temp_dir();
        let out = Command::new("bash")
            .arg(repo_root().join("scripts/postgres.sh"))
            .arg("start")
            .arg(dir.path().join("pg"))
            .envs(envs.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let exports = String::from_utf8_lossy(&out.stdout).into_owned();
        let value = |name: &str| {
            exports
                .lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}='")))
                .and_then(|l| l.strip_suffix('\''))
                .unwrap_or_else(|| panic!("postgres.sh prints {name}: {exports}"))
                .to_string()
        };
        ExtraCluster {
            url: value("CDC_TEST_PG_URL"),
            port: value("CDC_TEST_PG_PORT").parse().unwrap(),
            dir,
        }
    }
}

impl Drop for ExtraCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts/postgres.sh"))
            .arg("stop")
            .arg(self.dir.path().join("pg"))
            .output();
    }
}

/// A process-wide lock for tests that must not overlap within one test binary (e.g. the ones
/// that call [`restart_postgres`]). Survives a panicking holder.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Restart the shared cluster (`scripts/postgres.sh restart DIR`: `pg_ctl restart -m fast`, same
/// port) and wait until it accepts connections again. Every open connection is cut: reconnect
/// with [`TestDb::reconnect`].
pub fn restart_postgres() {
    let pg = pg();
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/postgres.sh"))
        .arg("restart")
        .arg(&pg.dir)
        .stdin(Stdio::null())
        .output()
        .expect("running scripts/postgres.sh restart");
    if !out.status.success() {
        panic!(
            "scripts/postgres.sh restart {} failed ({}):\n{}{}",
            pg.dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Stop the shared cluster (`scripts/postgres.sh stop DIR`, fast shutdown): every connection is
/// cut and new ones are refused until [`restart_postgres`] starts it again. Hold [`serial`].
pub fn stop_postgres() {
    let pg = pg();
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/postgres.sh"))
        .arg("stop")
        .arg(&pg.dir)
        .stdin(Stdio::null())
        .output()
        .expect("running scripts/postgres.sh stop");
    assert!(
        out.status.success(),
        "scripts/postgres.sh stop {} failed ({}):\n{}{}",
        pg.dir.display(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ------------------------------------------------------------------------------------------------
// Databases
// ------------------------------------------------------------------------------------------------

/// A TCP port on 127.0.0.1 that was free a moment ago (nothing listens there), e.g. for an
/// unreachable server or a local HTTP receiver.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// A name unique within this test run: `prefix_counter_pid`, lowercased, only `[a-z0-9_]`,
/// at most 63 bytes (a valid unquoted identifier when `prefix` starts with a letter).
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let suffix = format!("_{}_{}", n, std::process::id());
    let mut clean: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() || clean.starts_with(|c: char| c.is_ascii_digit()) {
        clean.insert(0, 't');
    }
    clean.truncate(63 - suffix.len());
    clean + &suffix
}

/// Connect with tokio-postgres (no TLS); the connection task runs on the current tokio runtime.
pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to {url}: {}", pg_error(&e)));
    tokio::spawn(async move {
        // Errors here are connection drops (e.g. a restart); the client's calls report them.
        let _ = connection.await;
    });
    client
}

/// A database of its own for one test.
pub struct TestDb {
    pub name: String,
    /// Superuser URL of this database.
    pub url: String,
    pub client: tokio_postgres::Client,
}

/// A fresh, empty database with a unique name (see [`unique_name`]), for test isolation.
/// The database is left behind when the test ends (the cluster is thrown away after the run).
pub async fn new_database(prefix: &str) -> TestDb {
    let pg = pg();
    let name = unique_name(prefix);
    let admin = connect(&pg.url).await;
    // FILE_COPY (PG 15+) writes almost no WAL, where the default WAL_LOG writes the whole
    // template (~7 MB) that every running walsender would then read past.
    let created = match admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\" STRATEGY FILE_COPY"))
        .await
    {
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::SYNTAX_ERROR) => {
            admin.batch_execute(&format!("CREATE DATABASE \"{name}\"")).await
        }
        other => other,
    };
    created.unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {}", pg_error(&e)));
    drop(admin);
    let url = pg.url_for(&name);
    let client = connect(&url).await;
    TestDb { name, url, client }
}

impl TestDb {
    /// URL of this database for the password-authenticated role `cdc` (see [`Pg::password_url`]).
    pub fn password_url(&self) -> String {
        pg().password_url(&self.name)
    }

    /// Replace the client by a new connection (after [`restart_postgres`]).
    pub async fn reconnect(&mut self) {
        self.client = connect(&self.url).await;
    }

    /// Run one or more statements (simple query protocol); panics with the SQL and the error.
    pub async fn exec(&self, sql: &str) {
        if let Err(e) = self.client.batch_execute(sql).await {
            panic!(
                "SQL failed in database {}: {}\n--- SQL ---\n{sql}",
                self.name,
                pg_error(&e)
            );
        }
    }

    /// Like [`TestDb::exec`] but returns the error text instead of panicking.
    pub async fn try_exec(&self, sql: &str) -> Result<(), String> {
        self.client.batch_execute(sql).await.map_err(|e| pg_error(&e))
    }

    /// All rows of a query as text (NULL is `None`); simple query protocol, so any column type works.
    pub async fn query_text(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let msgs = self.client.simple_query(sql).await.unwrap_or_else(|e| {
            panic!(
                "query failed in database {}: {}\n--- SQL ---\n{sql}",
                self.name,
                pg_error(&e)
            )
        });
        msgs.into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => {
                    Some((0..row.len()).map(|i| row.get(i).map(str::to_string)).collect())
                }
                _ => None,
            })
            .collect()
    }

    /// The first column of the first row as text, `None` for no row or NULL.
    pub async fn query_opt_text(&self, sql: &str) -> Option<String> {
        self.query_text(sql)
            .await
            .into_iter()
            .next()
            .and_then(|row| row.into_iter().next().flatten())
    }

    /// The first column of the only/first row as an i64 (any integer type, e.g. `count(*)`).
    pub async fn query_one_i64(&self, sql: &str) -> i64 {
        let text = self
            .query_opt_text(sql)
            .await
            .unwrap_or_else(|| panic!("query returned no row or NULL: {sql}"));
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("query returned {text:?}, not an integer ({e}): {sql}"))
    }

    /// `confirmed_flush_lsn` of a slot from `pg_replication_slots`; `None` when the slot does
    /// not exist or has none.
    pub async fn confirmed_flush_lsn(&self, slot: &str) -> Option<u64> {
        let row = self
            .client
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .unwrap_or_else(|e| panic!("reading pg_replication_slots: {}", pg_error(&e)))?;
        let text: Option<String> = row.get(0);
        text.map(|t| parse_lsn(&t))
    }

    /// Whether a slot exists and a process is streaming from it.
    pub async fn slot_active(&self, slot: &str) -> bool {
        let row = self
            .client
            .query_opt("SELECT active FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
            .await
            .unwrap_or_else(|e| panic!("reading pg_replication_slots: {}", pg_error(&e)));
        row.map(|r| r.get::<_, bool>(0)).unwrap_or(false)
    }

    /// The end of the WAL inserted so far: at or past the end of every transaction committed
    /// until now, in any session. A position cdc reaches without further writes: after writes,
    /// wait for it with [`TestDb::wait_confirmed_flush`], or stop there with `--stop-at`.
    ///
    /// Not `pg_current_wal_lsn()`, the position written so far: the test cluster runs with
    /// `synchronous_commit = off`, where a commit returns before its WAL is written, so a wait
    /// for that position could end before cdc saw the commit. The insert position
    /// (`pg_current_wal_insert_lsn()`) includes it. The WAL writer flushes it soon after (within
    /// 3 × `wal_writer_delay`), the walsender decodes it, and once it has nothing more to send,
    /// its keepalive carries the end of the last record it read, which cdc confirms as soon as
    /// its sinks have acknowledged what came before (src/source/stream.rs, src/checkpoint.rs).
    ///
    /// When the last record ended exactly at the end of a WAL page, the insert position is past
    /// the next page's header, where no record ends until another one is written: this returns
    /// the page boundary then, the end of that record as the walsender reports it.
    ///
    /// Only the slot's confirmed position reaches it: a sink's acknowledged position stays at
    /// the end of the last transaction the sink received, while this one may include later WAL
    /// of other sessions (other tests share the cluster).
    pub async fn current_wal_lsn(&self) -> u64 {
        let row = self
            .client
            .query_one(
                "SELECT pg_current_wal_insert_lsn()::text, current_setting('wal_block_size')::bigint, \
                        pg_size_bytes(current_setting('wal_segment_size'))",
                &[],
            )
            .await
            .unwrap_or_else(|e| panic!("pg_current_wal_insert_lsn(): {}", pg_error(&e)));
        let (insert, page, segment) = (
            parse_lsn(&row.get::<_, String>(0)),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
        );
        // Page header sizes (PostgreSQL's SizeOfXLogLongPHD, first page of a segment, and
        // SizeOfXLogShortPHD).
        let header = if insert % segment as u64 == 40 {
            40
        } else if insert % page as u64 == 24 {
            24
        } else {
            0
        };
        insert - header
    }

    /// Poll until the slot's `confirmed_flush_lsn` is at least `at_least`; returns it.
    /// Panics after `timeout` with the last value seen.
    pub async fn wait_confirmed_flush(&self, slot: &str, at_least: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let seen = self.confirmed_flush_lsn(slot).await;
            if let Some(lsn) = seen {
                if lsn >= at_least {
                    return lsn;
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "slot {slot}: confirmed_flush_lsn did not reach {} within {timeout:?} (last seen: {})",
                    format_lsn(at_least),
                    seen.map(format_lsn).unwrap_or_else(|| "no slot / NULL".into())
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Drop the replication slots of this database (a stale slot holds WAL until the run ends),
    /// terminating any walsender still using one.
    pub async fn drop_slots(&self) {
        self.exec(&format!(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
               WHERE database = '{db}' AND active_pid IS NOT NULL;
             SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
               WHERE database = '{db}' AND NOT active;",
            db = self.name
        ))
        .await;
    }
}

/// A new [`TestDb`] for the same database (after [`restart_postgres`] cut the old connection).
pub async fn reconnect(db: &TestDb) -> TestDb {
    TestDb {
        name: db.name.clone(),
        url: db.url.clone(),
        client: connect(&db.url).await,
    }
}

/// A tokio-postgres error with the server's message, detail and hint when there are any.
pub fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code());
            if let Some(d) = db.detail() {
                s += &format!("\nDETAIL: {d}");
            }
            if let Some(h) = db.hint() {
                s += &format!("\nHINT: {h}");
            }
            s
        }
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(inner) = src {
                s += &format!(": {inner}");
                src = inner.source();
            }
            s
        }
    }
}

/// `"16/B374D848"` → u64. Panics on anything else.
pub fn parse_lsn(text: &str) -> u64 {
    let (hi, lo) = text
        .trim()
        .split_once('/')
        .unwrap_or_else(|| panic!("not an LSN: {text:?}"));
    let hi = u64::from_str_radix(hi, 16).unwrap_or_else(|_| panic!("not an LSN: {text:?}"));
    let lo = u64::from_str_radix(lo, 16).unwrap_or_else(|_| panic!("not an LSN: {text:?}"));
    (hi << 32) | lo
}

/// u64 → `"16/B374D848"`.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

// ------------------------------------------------------------------------------------------------
// Files
// ------------------------------------------------------------------------------------------------

/// A temp dir removed on drop (under `CDC_TEST_TMP` when set, else the system temp dir).
pub fn temp_dir() -> TempDir {
    let mut b = tempfile::Builder::new();
    b.prefix("cdc-t-");
    match env_nonempty("CDC_TEST_TMP") {
        Some(base) if Path::new(&base).is_dir() => b.tempdir_in(base),
        _ => b.tempdir(),
    }
    .expect("creating a temp dir")
}

/// Write `toml` to `dir/cdc.toml`; returns its path.
pub fn write_config(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("cdc.toml");
    fs::write(&path, toml).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

// ------------------------------------------------------------------------------------------------
// One-shot cdc commands
// ------------------------------------------------------------------------------------------------

/// The cdc binary under test.
pub fn cdc_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cdc"))
}

/// Run `cdc ARGS`, wait (at most [`CDC_COMMAND_TIMEOUT`]), return status, stdout and stderr.
pub fn cdc(args: &[&str]) -> Output {
    cdc_with_env(args, &[])
}

/// [`cdc`] with extra environment variables.
pub fn cdc_with_env(args: &[&str], envs: &[(&str, &str)]) -> Output {
    cdc_with_env_timeout(args, envs, CDC_COMMAND_TIMEOUT)
}

/// [`cdc`] with extra environment variables and a timeout; panics (after killing it) when the
/// command is still running at the timeout.
pub fn cdc_with_env_timeout(args: &[&str], envs: &[(&str, &str)], timeout: Duration) -> Output {
    let mut child = Command::new(cdc_bin())
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", cdc_bin().display()));
    let out_reader = read_all_on_thread(child.stdout.take().unwrap());
    let err_reader = read_all_on_thread(child.stderr.take().unwrap());
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait().expect("waiting for cdc") {
            Some(status) => break status,
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let stdout = out_reader.join().unwrap_or_default();
                let stderr = err_reader.join().unwrap_or_default();
                panic!(
                    "`cdc {}` still running after {timeout:?}; killed it.\n--- stdout ---\n{}\n--- stderr ---\n{}",
                    args.join(" "),
                    String::from_utf8_lossy(&stdout),
                    String::from_utf8_lossy(&stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

fn read_all_on_thread<R: Read + Send + 'static>(mut r: R) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// stdout of an [`Output`] as a String.
pub fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr of an [`Output`] as a String.
pub fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

// ------------------------------------------------------------------------------------------------
// A running `cdc run`
// ------------------------------------------------------------------------------------------------

/// How many recent stdout lines a [`CdcProcess`] keeps for reports.
pub const RECENT_LINES: usize = 10_000;

/// A line of the process's stdout.
#[derive(Debug, Clone)]
pub struct Line {
    pub raw: String,
    /// The line parsed as JSON, when it is JSON.
    pub json: Option<Value>,
}

/// A running cdc process (typically `cdc run`). stdout is read line by line on a thread; JSON
/// lines are the events. stderr goes to `stderr.log` in a temp dir of its own and is printed when
/// the test panics while this value is alive (and in every panic message of the helpers).
pub struct CdcProcess {
    child: Child,
    args: Vec<String>,
    lines: Receiver<Line>,
    /// Lines received and not yet returned as events (non-JSON lines are skipped there).
    pending: VecDeque<Line>,
    /// The last [`RECENT_LINES`] stdout lines received (JSON or not), oldest first; bounded so
    /// a million-event test does not keep a million strings.
    recent: VecDeque<String>,
    /// How many stdout lines / events have been received so far.
    lines_received: u64,
    eof: bool,
    exit: Option<ExitStatus>,
    peak_rss_kb: std::cell::Cell<Option<u64>>,
    log_dir: TempDir,
    stderr_path: PathBuf,
    reader: Option<JoinHandle<()>>,
}

impl CdcProcess {
    /// Start `cdc ARGS` with extra environment variables (`RUST_LOG` defaults to `cdc=debug`
    /// unless set here or in the environment).
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> CdcProcess {
        let log_dir = temp_dir();
        let stderr_path = log_dir.path().join("stderr.log");
        let stderr_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .expect("creating the stderr log");
        let mut cmd = Command::new(cdc_bin());
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr_file));
        if std::env::var_os("RUST_LOG").is_none() && !envs.iter().any(|(k, _)| *k == "RUST_LOG") {
            cmd.env("RUST_LOG", "cdc=debug");
        }
        cmd.envs(envs.iter().copied());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", cdc_bin().display()));
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let raw = String::from_utf8_lossy(&buf).trim_end_matches(['\n', '\r']).to_string();
                        let json = serde_json::from_str::<Value>(&raw).ok();
                        if tx.send(Line { raw, json }).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        CdcProcess {
            child,
            args: args.iter().map(|s| s.to_string()).collect(),
            lines: rx,
            pending: VecDeque::new(),
            recent: VecDeque::new(),
            lines_received: 0,
            eof: false,
            exit: None,
            peak_rss_kb: std::cell::Cell::new(None),
            log_dir,
            stderr_path,
            reader: Some(reader),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The stderr log so far.
    pub fn stderr_text(&self) -> String {
        fs::read(&self.stderr_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Path of the stderr log.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// The exit status, if the process has exited (does not wait).
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.sample_rss();
            if let Ok(Some(st)) = self.child.try_wait() {
                self.exit = Some(st);
            }
        }
        self.exit
    }

    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Wait for the process to exit on its own (e.g. `cdc run --stop-at`, or a fatal error);
    /// panics after `timeout` (and kills it).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_status() {
                return st;
            }
            if Instant::now() >= deadline {
                let report = self.report();
                self.kill9();
                panic!("cdc still running after {timeout:?}; killed it.\n{report}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Move one received line into `pending`, waiting until `deadline`. False on timeout or EOF.
    fn pull(&mut self, deadline: Instant) -> bool {
        if self.eof {
            return false;
        }
        let now = Instant::now();
        let wait = deadline.saturating_duration_since(now);
        match self.lines.recv_timeout(wait) {
            Ok(line) => {
                self.lines_received += 1;
                if self.recent.len() == RECENT_LINES {
                    self.recent.pop_front();
                }
                self.recent.push_back(line.raw.clone());
                self.pending.push_back(line);
                true
            }
            Err(RecvTimeoutError::Timeout) => {
                self.sample_rss();
                false
            }
            Err(RecvTimeoutError::Disconnected) => {
                self.eof = true;
                false
            }
        }
    }

    /// The next JSON line from `pending`, skipping non-JSON lines.
    fn pop_event(&mut self) -> Option<Value> {
        while let Some(line) = self.pending.pop_front() {
            if let Some(v) = line.json {
                return Some(v);
            }
        }
        None
    }

    /// The next `n` events (JSON stdout lines). Panics with what arrived so far (and stderr)
    /// when fewer arrive within `timeout` or the process closes stdout first.
    pub fn next_events(&mut self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            if let Some(v) = self.pop_event() {
                got.push(v);
                continue;
            }
            if !self.pull(deadline) {
                let why = if self.eof { "stdout closed" } else { "timed out" };
                panic!(
                    "expected {n} events within {timeout:?}, got {} ({why}):\n{}\n{}",
                    got.len(),
                    show_events(&got),
                    self.report()
                );
            }
        }
        got
    }

    /// Events up to and including the first one matching `pred`. Panics with what arrived when
    /// none matches within `timeout`.
    pub fn events_until(&mut self, pred: impl Fn(&Value) -> bool, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            if let Some(v) = self.pop_event() {
                let done = pred(&v);
                got.push(v);
                if done {
                    return got;
                }
                continue;
            }
            if !self.pull(deadline) {
                let why = if self.eof { "stdout closed" } else { "timed out" };
                panic!(
                    "no matching event within {timeout:?} ({why}); {} other events arrived:\n{}\n{}",
                    got.len(),
                    show_events(&got),
                    self.report()
                );
            }
        }
    }

    /// Count (and discard) the next `n` events; returns `n`. For big volumes, where keeping
    /// the events would cost memory. Panics with the count so far when they do not arrive within
    /// `timeout`.
    pub fn count_events(&mut self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut count = 0;
        while count < n {
            if self.pop_event().is_some() {
                count += 1;
                continue;
            }
            if !self.pull(deadline) {
                let why = if self.eof { "stdout closed" } else { "timed out" };
                panic!(
                    "expected {n} events within {timeout:?}, counted {count} ({why})\n{}",
                    self.report()
                );
            }
        }
        count
    }

    /// The last stdout lines received (JSON or not), oldest first (at most [`RECENT_LINES`]).
    pub fn recent_lines(&self) -> Vec<String> {
        self.recent.iter().cloned().collect()
    }

    /// The raw stdout lines received so far, oldest first (exact text, e.g. to check number
    /// digits that JSON parsing would round). Bounded: the last [`RECENT_LINES`].
    pub fn raw_lines(&self) -> Vec<String> {
        self.recent_lines()
    }

    /// How many stdout lines have been received so far (JSON or not).
    pub fn lines_received(&self) -> u64 {
        self.lines_received
    }

    /// Whatever events arrive within `quiet` (use it to assert that nothing more comes).
    pub fn no_more_events(&mut self, quiet: Duration) -> Vec<Value> {
        let deadline = Instant::now() + quiet;
        let mut got = Vec::new();
        loop {
            while let Some(v) = self.pop_event() {
                got.push(v);
            }
            if !self.pull(deadline) {
                // Timed out, or stdout closed (nothing more can come).
                return got;
            }
        }
    }

    /// After the process exited: every remaining event up to EOF (waits at most `timeout`).
    pub fn remaining_events(&mut self, timeout: Duration) -> Vec<Value> {
        self.no_more_events(timeout)
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        self.sample_rss();
        if self.exit.is_none() {
            let _ = self.child.kill();
            if let Ok(st) = self.child.wait() {
                self.exit = Some(st);
            }
        }
    }

    /// Send SIGTERM and wait up to 15 s for the exit; panics (after SIGKILL) if still running.
    pub fn sigterm(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(15))
    }

    /// Send a signal (e.g. `libc::SIGINT`) if the process is still running.
    pub fn signal(&mut self, sig: libc::c_int) {
        if self.try_status().is_none() {
            // SAFETY: kill(2) with the pid of our own, not yet reaped child.
            unsafe {
                libc::kill(self.child.id() as libc::pid_t, sig);
            }
        }
    }

    /// VmHWM (peak resident set, kB) from /proc/<pid>/status, sampled now while alive; after
    /// the exit, the last value sampled (sampled on every wait/timeout of these helpers).
    pub fn rss_peak_kb(&self) -> Option<u64> {
        self.sample_rss();
        self.peak_rss_kb.get()
    }

    fn sample_rss(&self) {
        if self.exit.is_some() {
            return;
        }
        if let Some(kb) = read_vm_hwm(self.child.id()) {
            let peak = self.peak_rss_kb.get().map_or(kb, |p| p.max(kb));
            self.peak_rss_kb.set(Some(peak));
        }
    }

    /// A description for failure messages: args, status, recent stdout lines, stderr tail.
    pub fn report(&mut self) -> String {
        let status = match self.try_status() {
            Some(st) => format!("exited: {st}"),
            None => "still running".to_string(),
        };
        let skip = self.recent.len().saturating_sub(20);
        let stdout_tail: Vec<&str> = self.recent.iter().skip(skip).map(String::as_str).collect();
        format!(
            "--- cdc {} (pid {}, {status}; {} stdout lines received) ---\n--- last stdout lines ---\n{}\n--- stderr ({}) ---\n{}",
            self.args.join(" "),
            self.child.id(),
            self.lines_received,
            stdout_tail.join("\n"),
            self.stderr_path.display(),
            tail(&self.stderr_text(), 200)
        )
    }

    /// Keep the log dir (stderr.log) after this value is dropped; returns its path.
    pub fn keep_logs(&mut self) -> PathBuf {
        let dir = std::mem::replace(&mut self.log_dir, temp_dir());
        dir.keep()
    }
}

impl Drop for CdcProcess {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        let report = if panicking { Some(self.report()) } else { None };
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // The reader thread ends at EOF on its own; never join it here (a grandchild holding
        // the pipe open must not hang the test).
        drop(self.reader.take());
        if let Some(report) = report {
            eprintln!("\n==== cdc process at test failure ====\n{report}\n====");
            let _ = std::io::stderr().flush();
        }
    }
}

fn read_vm_hwm(pid: u32) -> Option<u64> {
    let mut s = String::new();
    File::open(format!("/proc/{pid}/status"))
        .ok()?
        .read_to_string(&mut s)
        .ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let mut s = String::new();
    if start > 0 {
        s += &format!("[... {start} earlier lines ...]\n");
    }
    s + &all[start..].join("\n")
}

fn show_events(events: &[Value]) -> String {
    if events.is_empty() {
        return "(none)".into();
    }
    events.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n")
}

// ------------------------------------------------------------------------------------------------
// A database streamed to a stdout sink
// ------------------------------------------------------------------------------------------------

/// A fresh database with `ddl` applied, a config sending `tables` (`[[tables]]` entries) to a
/// stdout sink named `out`, and `cdc setup` done. Slot and publication are named after the
/// database, so tests never share them.
pub struct StdoutSetup {
    pub db: TestDb,
    /// The config file's path.
    pub config: String,
    pub dir: TempDir,
}

pub async fn stdout_setup(prefix: &str, ddl: &str, tables: &str) -> StdoutSetup {
    let db = new_database(prefix).await;
    db.exec(ddl).await;
    let dir = temp_dir();
    let toml = format!(
        "[source]\nurl = \"{url}\"\nslot = \"{slot}\"\npublication = \"{slot}\"\n\n[sinks.out]\ntype = \"stdout\"\n\n{tables}\n",
        url = db.url,
        slot = db.name,
    );
    let config = write_config(dir.path(), &toml).to_str().unwrap().to_string();
    let setup = cdc(&["--config", &config, "setup"]);
    assert!(setup.status.success(), "cdc setup failed: {}", stderr_of(&setup));
    StdoutSetup { db, config, dir }
}

impl StdoutSetup {
    /// Starts `cdc run` on this setup's config.
    pub fn run(&self) -> CdcProcess {
        CdcProcess::start(&["--config", &self.config, "run"], &[])
    }
}
