//! `cdc verify`: compares each selected mapping's index with its table (see `rebuild::verify`);
//! exit status 1 when any differs.

use super::rebuild_index::Which;
use crate::config::Config;
use crate::rebuild::{self, verify};

/// Returns the exit status: 0 when every index equals its table, 1 otherwise.
pub async fn run(config: &Config, which: &Which, sample: Option<usize>) -> anyhow::Result<i32> {
    let targets = rebuild::targets(config, which.table.as_deref(), which.all, which.sink.as_deref())?;
    let mut clean = true;
    for target in targets {
        let report = verify::verify(&config.source.url, target.search, target.mapping, sample).await?;
        for line in report.lines() {
            println!("{line}");
        }
        clean &= report.is_clean();
    }
    Ok(if clean { 0 } else { 1 })
}
