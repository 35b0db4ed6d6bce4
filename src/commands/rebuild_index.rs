//! `cdc rebuild-index`: rebuilds the search index of each selected mapping from a consistent
//! snapshot while the stream keeps it current, and swaps it in atomically (see `rebuild::job`).
//! Prints one summary line per table.

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::rebuild::job::{Job, Options};
use crate::rebuild::{self};

/// Which mappings a rebuild or a verify covers.
#[derive(Debug, Clone, clap::Args)]
pub struct Which {
    /// The table (schema.table; unqualified means public).
    #[arg(long, value_name = "TABLE", required_unless_present = "all", conflicts_with = "all")]
    pub table: Option<String>,
    /// Every table mapped to a search sink.
    #[arg(long)]
    pub all: bool,
    /// Only this search sink (default: every search sink the table is mapped to).
    #[arg(long, value_name = "NAME")]
    pub sink: Option<String>,
}

pub async fn run(config: &Config, which: &Which, options: &Options) -> anyhow::Result<()> {
    // The handler also covers a shell that started cdc with SIGINT ignored (a background job).
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        done = rebuild_all(config, which, options) => done,
        _ = tokio::signal::ctrl_c() => Err(interrupted("SIGINT")),
        _ = term.recv() => Err(interrupted("SIGTERM")),
    }
}

/// Stopping mid-way is safe at any step: the old index serves until the swap, the temporary slot
/// ends with this process, and the next rebuild removes what this one left.
fn interrupted(signal: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "interrupted by {signal}: the alias still points at the index it served (or at the new one, if the swap was done); the next rebuild removes what this one left"
    )
}

async fn rebuild_all(config: &Config, which: &Which, options: &Options) -> anyhow::Result<()> {
    let targets = rebuild::targets(config, which.table.as_deref(), which.all, which.sink.as_deref())?;
    for target in targets {
        let job = Job {
            source: &config.source,
            sink_name: target.sink,
            search: target.search,
            mapping: target.mapping,
            options,
        };
        let summary = job.run().await?;
        println!("{}", summary.line());
        if !summary.old.is_empty() {
            let verb = if options.keep_old { "kept" } else { "deleted" };
            println!("  previous index {verb}: {}", summary.old.join(", "));
        }
    }
    Ok(())
}
