//! `cdc run`: the daemon. Starts the sinks, streams from the slot through the router, and
//! confirms to Postgres only what every sink acknowledged. SIGINT/SIGTERM: stop reading, let the
//! sinks deliver what they hold, confirm the final position, exit 0.

use tokio::sync::watch;

use crate::checkpoint::Checkpoint;
use crate::config::Config;
use crate::event::Lsn;
use crate::router::{Router, SinkStopped};
use crate::sinks;
use crate::source::stream;

/// Runs until SIGINT/SIGTERM, or until every transaction up to `stop_at` is delivered.
pub async fn run(config: Config, stop_at: Option<Lsn>) -> anyhow::Result<()> {
    let mut checkpoint = Checkpoint::new();
    let (senders, mut running) = sinks::spawn_all(&config, &mut checkpoint)?;
    let mut router = Router::new(&config.tables, senders);

    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested: delivering what the sinks hold, then confirming the final position");
        let _ = stop_tx.send(true);
    });

    tracing::info!(
        sinks = config.sinks.len(),
        tables = config.tables.len(),
        "cdc {} starting with {}",
        env!("CARGO_PKG_VERSION"),
        config.path.display()
    );
    let streamed = stream::run(
        &config.source,
        &mut router,
        &mut running,
        &mut checkpoint,
        &mut stop_rx,
        stop_at,
    )
    .await;
    if let Ok(stream::Stop::Reached(lsn)) = &streamed {
        tracing::info!(%lsn, "reached the stop position");
    }
    // After a fatal error the sinks still deliver what they hold; after a shutdown this was done.
    router.close();
    let sink_error = running.drain().await;
    match (streamed, sink_error) {
        // The stream stopped because a sink ended: the sink's own error says why, last.
        (Err(e), Some(sink)) if e.chain().any(|cause| cause.is::<SinkStopped>()) => Err(sink),
        (Err(e), _) | (Ok(_), Some(e)) => Err(e),
        (Ok(_), None) => Ok(()),
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
