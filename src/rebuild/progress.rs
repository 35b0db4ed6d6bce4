//! What a rebuild shows while it copies: on a terminal, a progress bar per table (rows read of
//! Postgres' estimate, rate, ETA); otherwise a log line every 5 seconds.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

use super::copy::Counters;

/// A running display of one table's copy.
pub struct Progress {
    task: JoinHandle<()>,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Starts showing `counters`; `estimate` is Postgres' row estimate, when it has one.
    pub fn start(table: String, estimate: Option<u64>, counters: Arc<Counters>) -> Progress {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(estimate, ProgressDrawTarget::stderr());
            let template = "{prefix} [{bar:30}] {human_pos}/{human_len} rows, {per_sec}, ETA {eta}";
            bar.set_style(
                ProgressStyle::with_template(template)
                    .expect("a valid progress template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(table);
            let shown = bar.clone();
            let task = tokio::spawn(async move {
                loop {
                    let rows = counters.rows.load(Ordering::Relaxed);
                    if shown.length().is_some_and(|len| rows > len) {
                        shown.set_length(rows);
                    }
                    shown.set_position(rows);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            return Progress { task, bar: Some(bar) };
        }
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.tick().await;
            loop {
                tick.tick().await;
                let rows = counters.rows.load(Ordering::Relaxed);
                let rate = rows as f64 / started.elapsed().as_secs_f64().max(0.001);
                let of = estimate.map(|e| format!(" of ~{e}")).unwrap_or_default();
                tracing::info!(
                    table = %table,
                    "copied {rows}{of} rows ({:.0} rows/s), {} documents written",
                    rate,
                    counters.documents.load(Ordering::Relaxed)
                );
            }
        });
        Progress { task, bar: None }
    }

    /// Stops the display (the bar is cleared: the summary line follows).
    pub fn finish(self) {
        self.task.abort();
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
