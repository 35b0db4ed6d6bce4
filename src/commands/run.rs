//! `cdc run`: the daemon. Starts the sinks, streams from the slot through the router, and
//! confirms to Postgres only what every sink acknowledged. SIGINT/SIGTERM: stop reading, let the
//! sinks deliver what they hold, confirm the final position, exit 0. It exits non-zero when it
//! cannot say that: a sink failed (its own error is the last line), a sink did not deliver
//! what it held in time, or the final position was not confirmed.

use anyhow::Context;
use tokio::sync::watch;

use crate::checkpoint::Checkpoint;
use crate::config::Config;
use crate::event::Lsn;
use crate::router::Router;
use crate::sinks;
use crate::source::{standby, stream};

/// Runs until SIGINT/SIGTERM, or until every transaction up to `stop_at` is delivered.
pub async fn run(config: Config, stop_at: Option<Lsn>) -> anyhow::Result<()> {
    // SIGINT/SIGTERM handlers first (registered here, synchronously): a stop that comes while cdc
    // is still starting is a clean stop too, never the signal's default (death by SIGTERM).
    let signals = Signals::new()?;
    // Lives as long as the run: the admin server and the slot probe stop when it is dropped.
    let _admin = crate::admin::start(config.admin.as_ref(), &config.source).await?;
    let mut signals = Box::pin(signals.wait());
    // A standby starts its sinks only once the slot is free (see `standby`).
    tokio::select! {
        _ = standby::wait_for_slot(&config.source) => {}
        _ = &mut signals => {
            tracing::info!("shutdown requested while starting or standing by");
            return Ok(());
        }
    }
    let mut checkpoint = Checkpoint::new();
    let (senders, mut running) = sinks::spawn_all(&config, &mut checkpoint)?;
    let mut router = Router::new(&config.tables, senders);

    let (stop_tx, mut stop_rx) = watch::channel(false);
    let sink_failed = running.failed();
    tokio::spawn(async move {
        tokio::select! {
            _ = signals => tracing::info!("shutdown requested: delivering what the sinks hold, then confirming the final position"),
            _ = sink_failed => tracing::error!("a sink failed: stopping; the other sinks deliver what they hold"),
        }
        let _ = stop_tx.send(true);
    });

    tracing::info!(
        sinks = config.sinks.len(),
        tables = config.tables.len(),
        "cdc {} starting with {}",
        env!("CARGO_PKG_VERSION"),
        config.path.display()
    );
    let source = config.source.clone();
    let (streamed, mut router, mut running) = on_source_thread(move || async move {
        let streamed = stream::run(
            &source,
            &mut router,
            &mut running,
            &mut checkpoint,
            &mut stop_rx,
            stop_at,
        )
        .await;
        (streamed, router, running)
    })
    .await?;
    if let Ok(stream::Stop::Reached(lsn)) = &streamed {
        tracing::info!(%lsn, "reached the stop position");
    }
    // After a fatal error the sinks still deliver what they hold; after a shutdown this was done.
    router.close();
    let drained = running.drain().await;
    outcome(streamed, drained)
}

/// Runs the source on a thread of its own with a one-thread runtime: the replication client's
/// worker and the loop that decodes and routes its events take turns there, so a message from
/// the server wakes one thread, not a chain of them (a one-row transaction is three messages).
/// The sinks, the admin server and the signal handler stay on the multi-threaded runtime, where
/// webhook delivery and search requests run beside decoding (see `runtime` in `main.rs`).
async fn on_source_thread<F, Fut, T>(source: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("cdc-source".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("starting the source's runtime");
            let _ = tx.send(runtime.block_on(source()));
        })
        .context("starting the source thread")?;
    rx.await.context("the source thread panicked")
}

/// The run's result. A failed sink's own error wins over what the stream saw because of it (the
/// router found its channel closed, or the run stopped before confirming).
fn outcome(streamed: anyhow::Result<stream::Stop>, drained: anyhow::Result<()>) -> anyhow::Result<()> {
    match (streamed, drained) {
        (_, Err(sink)) => Err(sink),
        (Err(e), Ok(())) => Err(e),
        (Ok(stream::Stop::Unconfirmed), Ok(())) => Err(anyhow::anyhow!(
            "stopped while Postgres was unreachable: the final position was not confirmed; what was delivered since the last confirmed position is sent again at the next start"
        )),
        (Ok(_), Ok(())) => Ok(()),
    }
}

/// SIGINT and SIGTERM, listened for from the moment this is made.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_succeeds_only_after_a_clean_stop() {
        assert!(outcome(Ok(stream::Stop::Shutdown), Ok(())).is_ok());
        assert!(outcome(Ok(stream::Stop::Reached(Lsn(7))), Ok(())).is_ok());
        let unconfirmed = outcome(Ok(stream::Stop::Unconfirmed), Ok(())).unwrap_err();
        assert!(unconfirmed.to_string().contains("not confirmed"), "{unconfirmed}");
    }

    #[test]
    fn a_failed_sinks_own_error_wins_over_what_the_stream_saw() {
        let stream_saw = Err(anyhow::anyhow!("sink hook stopped"));
        let e = outcome(
            stream_saw,
            Err(anyhow::anyhow!("relation cdc.webhook_outbox does not exist")),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "relation cdc.webhook_outbox does not exist");
        let e = outcome(Err(anyhow::anyhow!("publication dropped")), Ok(())).unwrap_err();
        assert_eq!(e.to_string(), "publication dropped");
    }
}
