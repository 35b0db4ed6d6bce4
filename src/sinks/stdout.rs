//! The stdout sink: one JSON event per line. Output is flushed once per chunk of messages taken
//! from the channel (a run from the source, or several), then the chunk's last commit is acknowledged.

use std::io::Write;

use tokio::sync::mpsc;

use std::sync::Arc;

use crate::admin::metrics::SinkStats;
use crate::checkpoint::Ack;
use crate::config::StdoutConfig;
use crate::sinks::SinkMsg;

pub async fn run(
    _config: StdoutConfig,
    mut rx: mpsc::Receiver<SinkMsg>,
    ack: Ack,
    stats: Arc<SinkStats>,
) -> anyhow::Result<()> {
    // Writing to stdout blocks; a blocking thread keeps the runtime's workers free. Messages
    // are taken in chunks so one channel wake-up moves many events.
    let mut buf = Vec::with_capacity(256);
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::with_capacity(1 << 16, stdout.lock());
        while rx.blocking_recv_many(&mut buf, 1024) > 0 {
            let mut committed = None;
            let mut events = 0;
            for msg in buf.drain(..) {
                match msg {
                    SinkMsg::Event { event, .. } => {
                        out.write_all(event.to_json())?;
                        out.write_all(b"\n")?;
                        events += 1;
                    }
                    SinkMsg::Commit { end_lsn, .. } => committed = Some(end_lsn),
                }
            }
            // One flush per chunk, not per transaction: 200k one-row transactions would
            // otherwise be 200k write calls. The ack follows the flush.
            if let Some(end_lsn) = committed {
                out.flush()?;
                ack.delivered(end_lsn);
            }
            stats.events.inc_by(events);
        }
        out.flush()?;
        Ok(())
    })
    .await?
}
