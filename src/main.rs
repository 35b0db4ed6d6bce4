//! The `cdc` command line: parses arguments, loads the configuration, calls one command.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cdc::commands;
use cdc::config;
use cdc::event::Lsn;

fn parse_lsn(s: &str) -> Result<Lsn, String> {
    Lsn::parse(s).ok_or_else(|| format!("{s:?} is not an LSN like 0/1A2B3C4D"))
}

const EXAMPLES: &str = "\
Examples:
  cdc check                          validate cdc.toml and the database before the first run
  cdc setup                          create the publication and the replication slot
  cdc run                            stream changes to the configured sinks until SIGTERM
  cdc rebuild-index --all            rebuild every search index aside, swap it in without downtime
  cdc verify --table public.events   compare an index with its table (exit 1 when they differ)
  cdc --config /etc/cdc.toml run
  CDC_CONFIG=/etc/cdc.toml RUST_LOG=cdc=debug cdc run";

#[derive(Parser)]
#[command(
    name = "cdc",
    version,
    about = "Stream PostgreSQL row changes to a search index, webhooks and stdout",
    long_about = "cdc reads a PostgreSQL logical replication slot (pgoutput), turns every committed row change into \
an event (create, update, delete, truncate, with old and new values and the changed columns), routes events \
through the [[tables]] mappings of one TOML file to sinks, and confirms the slot's position to Postgres only \
after every sink has delivered everything up to it. Nothing committed is lost across crashes or outages.",
    after_help = EXAMPLES
)]
struct Cli {
    /// The configuration file.
    #[arg(long, short, global = true, env = "CDC_CONFIG", default_value = "cdc.toml")]
    config: PathBuf,

    /// Log lines as text or as one JSON object each (overrides `[log] format`).
    #[arg(long, global = true, value_name = "FORMAT", value_parser = ["text", "json"])]
    log_format: Option<String>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: stream the slot to the sinks until SIGINT/SIGTERM.
    #[command(
        after_help = "Example:\n  cdc run --config cdc.toml\n\nLogs go to stderr (RUST_LOG=cdc=debug for more); the stdout sink writes events to stdout.\nOn SIGINT/SIGTERM cdc stops reading, lets sinks deliver what they hold, confirms the final position and exits 0;\nit exits 1 when a sink failed or did not deliver everything it received, or the final position was not confirmed;\nit exits 3 when Postgres invalidated the replication slot (the message gives the way back: cdc setup --recreate-slot, then cdc rebuild-index --all)."
    )]
    Run {
        /// Exit once the stream reaches this LSN (e.g. 0/1A2B3C4D, from SELECT pg_current_wal_lsn()):
        /// every transaction committed before it is delivered and confirmed. For benchmarks and catch-ups.
        #[arg(long, value_name = "LSN", value_parser = parse_lsn)]
        stop_at: Option<Lsn>,
    },
    /// Validate the configuration, then check the database: wal_level, publication, keys, slot, role.
    #[command(
        after_help = "Examples:\n  cdc check --config cdc.toml\n  cdc check --send-test\n\nEach problem is one line with its fix; the exit status is 1 when there is a problem."
    )]
    Check {
        /// Also send each webhook endpoint a signed test event (op "test") and require a 2xx;
        /// without it, an unsigned OPTIONS request only checks that something answers.
        #[arg(long)]
        send_test: bool,
    },
    /// Create the publication for the mapped tables and the replication slot (idempotent).
    #[command(
        after_help = "Examples:\n  cdc setup\n  cdc setup --replica-identity-full public.items --replica-identity-full public.orders"
    )]
    Setup {
        /// Also set REPLICA IDENTITY FULL on this table, so updates carry the whole old row and an
        /// exact list of changed columns. Repeatable.
        #[arg(long, value_name = "TABLE")]
        replica_identity_full: Vec<String>,
        /// Drop a slot Postgres invalidated (wal_status lost, `cdc run` exited 3) and create it
        /// again: streaming resumes from now; prints the gap receivers missed. Refused for a
        /// healthy slot.
        #[arg(long)]
        recreate_slot: bool,
    },
    /// Show the slot, each sink's dead letters and outbox, and (when `cdc run` answers on
    /// `[admin] listen`) its live state; works with the daemon down.
    #[command(
        after_help = "Examples:\n  cdc status\n  cdc status --json\n\nExit status 0 when the slot exists and is not lost and cdc run, when it answers, is ready; 1 otherwise."
    )]
    Status {
        /// One JSON object instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Drop the replication slot (and say how much WAL it was holding); stop `cdc run` first.
    #[command(after_help = "Example:\n  cdc teardown --drop-publication")]
    Teardown {
        /// Also drop the publication.
        #[arg(long)]
        drop_publication: bool,
    },
    /// Rebuild a table's search index from a consistent snapshot and swap it in without downtime.
    #[command(
        name = "rebuild-index",
        long_about = "Rebuild a table's search index from a consistent snapshot and swap it in without downtime.\n\n\
A temporary replication slot with an exported snapshot splits history at one point P: --parallel workers copy the \
snapshot into a new index <index>_<time> (version P-1, no refreshes or replicas while loading) while the slot's \
later changes stream into it with their commit LSNs as versions (newer always wins). Then refresh and replicas are \
restored, the alias is swapped in one atomic call, the slot's changes are applied up to the position after the \
swap (from there on `cdc run` writes through the alias), and the old index is deleted (unless --keep-old). Works \
with or without `cdc run` running, and for an alias that does not exist yet. Searches on the alias never see an \
empty or partial index; an interrupted rebuild leaves the old index serving and the next one removes what it left.",
        after_help = "Examples:\n  cdc rebuild-index --table public.events\n  cdc rebuild-index --all --parallel 8 --keep-old\n\nPrints one line per table: rows, documents, seconds, rows/s, and the index now behind the alias."
    )]
    RebuildIndex {
        #[command(flatten)]
        which: commands::rebuild_index::Which,
        /// Copy workers (each one Postgres connection and one bulk request in flight).
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
        parallel: u16,
        /// Keep the previous index (no longer behind the alias) instead of deleting it.
        #[arg(long)]
        keep_old: bool,
        /// Documents per bulk request (default: the sink's batch_max_docs).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        batch_size: Option<u32>,
    },
    /// Compare a search index with its table under the mapping; exit 1 when they differ.
    #[command(
        long_about = "Compare a search index with its table under the mapping; exit 1 when they differ.\n\n\
Streams the table (under a snapshot, projection and filter applied) and the index in document-id order and \
compares ids and documents by meaning. Prints the counts of missing, extra and different documents with up to 5 \
examples each (the id, and the fields that differ). A difference is looked at a second time (current row, current \
document) before it is reported, so a row changed while verifying is not a false alarm.",
        after_help = "Examples:\n  cdc verify --table public.events\n  cdc verify --all --sample 1000"
    )]
    Verify {
        #[command(flatten)]
        which: commands::rebuild_index::Which,
        /// Check N random rows and N random documents instead of everything.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        sample: Option<u32>,
    },
    /// Webhook sinks: send a test event, show delivery attempts.
    Webhook {
        #[command(subcommand)]
        command: commands::webhook::WebhookCommand,
    },
    /// Documents and batches a sink's receiver refused for themselves: list, replay, purge.
    #[command(name = "dead-letters")]
    DeadLetters {
        #[command(subcommand)]
        action: commands::dead_letters::DeadLettersAction,
    },
}

// Every event is many small, short-lived allocations (rows, values, JSON buffers), which
// glibc's malloc showed as a seventh of cdc's CPU time in profiles; mimalloc is cheaper there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Tokio's multi-threaded runtime. Measured on 2 cores (scripts/bench): a one-thread runtime
/// read one-row transactions about 15% faster, but held webhook batches of 500 to 45k events/s
/// against 59k here (likely because delivery and decoding then take turns); both kept up with
/// the walsender on the source benchmarks. So both: `cdc run` reads and routes on a thread of
/// its own with a one-thread runtime (`commands::run`), and the sinks run here.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("starting the async runtime")
}

/// Logs to stderr: text, or one JSON object per line (`timestamp`, `level`, `fields.message`,
/// the other fields, `target`) for log collectors.
fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("cdc=info,warn"));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    if json {
        builder.json().init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = config::load(&cli.config);
    // The file may ask for JSON logs, so logging starts once it is read; its own errors are
    // printed as they are (one per line, file:line first).
    let json = match cli.log_format.as_deref() {
        Some(format) => format == "json",
        None => config.as_ref().is_ok_and(|c| c.log_json),
    };
    init_logging(json);
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = runtime();
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { stop_at } => commands::run::run(config, stop_at).await.map(|_| 0),
            Command::Check { send_test } => commands::check::run(&config, send_test).await,
            Command::Setup {
                replica_identity_full,
                recreate_slot,
            } => commands::setup::run(&config, &replica_identity_full, recreate_slot)
                .await
                .map(|_| 0),
            Command::Status { json } => commands::status::run(&config, json).await,
            Command::Teardown { drop_publication } => {
                commands::teardown::run(&config, drop_publication).await.map(|_| 0)
            }
            Command::RebuildIndex {
                which,
                parallel,
                keep_old,
                batch_size,
            } => {
                let options = cdc::rebuild::job::Options {
                    parallel: usize::from(parallel),
                    keep_old,
                    batch_size: batch_size.map(|n| n as usize),
                };
                commands::rebuild_index::run(&config, &which, &options).await.map(|_| 0)
            }
            Command::Verify { which, sample } => {
                commands::verify::run(&config, &which, sample.map(|n| n as usize)).await
            }
            Command::Webhook { command } => commands::webhook::run(&config, command).await,
            Command::DeadLetters { action } => commands::dead_letters::run(&config, action).await.map(|_| 0),
        }
    });
    // Tasks still running (a sink's retries, the replication worker) may log: stop them first,
    // so an error is the last line a user or a script sees.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            // A lost slot is told apart: supervisors must not restart into it, and scripts can
            // run the way back the message gives.
            if cdc::source::errors::slot_gone(&e) {
                ExitCode::from(3)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
