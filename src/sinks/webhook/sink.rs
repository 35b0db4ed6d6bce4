//! The webhook sink's loop: events → `events` filter → coalescing → batches per lane → lanes
//! (one request in flight each) → acknowledgements.
//!
//! The loop never waits on the network: it hands full or due batches to the lanes (waiting only
//! when a lane's queue is full, which is the back-pressure that slows the stream), and it hears
//! from the lanes which transactions' events were delivered or stored, to acknowledge them.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::batcher::{Batcher, Item, Ready};
use super::coalesce::Coalescer;
use super::config::WebhookConfig;
use super::delivery::{Batch, Endpoint, HandOff};
use super::encoder;
use super::ledger::{Ledger, TxnNo};
use super::recorder::Recorder;
use crate::checkpoint::Ack;
use crate::event::format_timestamp_us;
use crate::sinks::SinkMsg;
use crate::state::{self, Postgres};

/// Batches waiting per lane; beyond this the stream waits.
const LANE_QUEUE: usize = 4;

/// Events per transaction that a delivered batch stood for.
type Released = Vec<(TxnNo, u64)>;

/// A lane handed off one of its batches (delivered, stored, or made a dead letter).
struct HandedOff {
    lane: usize,
    number: u64,
    covers: Released,
}

pub async fn run(
    name: String,
    config: WebhookConfig,
    state_url: String,
    mut rx: mpsc::Receiver<SinkMsg>,
    ack: Ack,
) -> anyhow::Result<()> {
    let db = Postgres::new(&state_url);
    state::prepare(&db, &name).await?;
    let (recorder, recorder_task) = Recorder::spawn(db.clone(), name.clone());
    let endpoint = Arc::new(Endpoint::new(name, config, db, recorder)?);
    let stored = endpoint.outbox_len().await?;
    if stored > 0 {
        tracing::info!(sink = %endpoint.name, "{stored} batches wait in the outbox; they go first");
        endpoint.enter_outbox().await;
    }
    let mut sender = tokio::spawn(super::sender::run(endpoint.clone()));
    let (released_tx, mut released_rx) = mpsc::unbounded_channel();
    let mut lanes: Vec<Lane> = (0..endpoint.config.lanes.get())
        .map(|lane| Lane::spawn(lane, endpoint.clone(), released_tx.clone()))
        .collect();
    drop(released_tx);

    let mut pipeline = Pipeline::new(&endpoint);
    let mut msgs = Vec::with_capacity(1024);
    loop {
        let deadline = pipeline
            .deadline()
            .unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(3600));
        tokio::select! {
            biased;
            stopped = &mut sender => return Err(sender_error(&endpoint.name, stopped)),
            Some(released) = released_rx.recv() => pipeline.release(released),
            n = rx.recv_many(&mut msgs, 1024) => {
                if n == 0 {
                    break;
                }
                let now = Instant::now();
                for msg in msgs.drain(..) {
                    for ready in pipeline.accept(msg, now) {
                        dispatch(&endpoint, &mut lanes, ready).await?;
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => {}
        }
        for ready in pipeline.due(Instant::now()) {
            dispatch(&endpoint, &mut lanes, ready).await?;
        }
        if let Some(end_lsn) = pipeline.ledger.acknowledgeable() {
            ack.delivered(end_lsn);
        }
    }

    // Shutdown: send what is held, let the lanes finish, acknowledge what they delivered.
    for ready in pipeline.flush_all() {
        dispatch(&endpoint, &mut lanes, ready).await?;
    }
    endpoint.stop();
    let mut lane_error = None;
    for lane in lanes {
        drop(lane.tx);
        if let Err(e) = lane.task.await? {
            lane_error.get_or_insert(e);
        }
    }
    while let Some(released) = released_rx.recv().await {
        pipeline.release(released);
    }
    if let Some(end_lsn) = pipeline.ledger.acknowledgeable() {
        ack.delivered(end_lsn);
    }
    if sender.is_finished() {
        lane_error.get_or_insert(sender_error(&endpoint.name, sender.await));
    } else {
        sender.abort();
    }
    drop(endpoint);
    let _ = recorder_task.await;
    lane_error.map_or(Ok(()), Err)
}

/// The outbox sender only ends on an error no reconnect can fix: that error is the sink's.
fn sender_error(name: &str, stopped: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Error {
    match stopped {
        Ok(Err(e)) => e.context(format!("webhook sink {name}: the outbox sender stopped")),
        Ok(Ok(())) => anyhow::anyhow!("webhook sink {name}: the outbox sender stopped"),
        Err(join) => anyhow::anyhow!("webhook sink {name}: the outbox sender panicked: {join}"),
    }
}

/// Builds the request for a ready batch and queues it on its lane.
async fn dispatch(endpoint: &Endpoint, lanes: &mut [Lane], ready: Ready) -> anyhow::Result<()> {
    let lane = &mut lanes[ready.lane];
    let (batch, covers) = build(endpoint, ready.items);
    if lane.tx.send((batch, covers, ready.number)).await.is_ok() {
        return Ok(());
    }
    // A lane only stops on a state-database error: that error is the sink's.
    let stopped = (&mut lane.task).await?.err();
    Err(stopped.unwrap_or_else(|| anyhow::anyhow!("a delivery lane of webhook sink {} stopped", endpoint.name)))
}

/// The request body of a batch and the transactions it stands for.
fn build(endpoint: &Endpoint, items: Vec<Item>) -> (Batch, Released) {
    let events: Vec<Bytes> = items
        .iter()
        .map(|i| encoder::event_bytes(&i.event, endpoint.config.payload))
        .collect();
    let first = items.first().map(|i| i.event.id()).unwrap_or_default();
    let last = items.last().map(|i| i.event.id()).unwrap_or_default();
    let id = encoder::batch_id(&endpoint.name, &first, &last, items.len());
    let created_at = format_timestamp_us(chrono::Utc::now().timestamp_micros());
    let body = encoder::body("cdc.batch", &id, &endpoint.name, &created_at, &events);
    let mut released: Released = Vec::new();
    for txn in items.iter().flat_map(Item::txns) {
        // Items come in transaction order (coalescing aside): the last entry is the usual match,
        // and a batch of 500 one-row transactions is not 125,000 comparisons.
        if let Some((_, n)) = released.last_mut().filter(|(t, _)| *t == txn) {
            *n += 1;
            continue;
        }
        match released.iter_mut().find(|(t, _)| *t == txn) {
            Some((_, n)) => *n += 1,
            None => released.push((txn, 1)),
        }
    }
    (
        Batch {
            id,
            body,
            events: items.len(),
        },
        released,
    )
}

/// One ordered lane: one request in flight.
struct Lane {
    tx: mpsc::Sender<(Batch, Released, u64)>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Lane {
    fn spawn(lane: usize, endpoint: Arc<Endpoint>, released: mpsc::UnboundedSender<HandedOff>) -> Lane {
        let (tx, mut rx) = mpsc::channel::<(Batch, Released, u64)>(LANE_QUEUE);
        let task = tokio::spawn(async move {
            while let Some((batch, covers, number)) = rx.recv().await {
                if endpoint.hand_off(&batch).await? == HandOff::Done {
                    let _ = released.send(HandedOff { lane, number, covers });
                }
            }
            Ok(())
        });
        Lane { tx, task }
    }
}

/// Filter, coalescing, batching and the ledger: everything between a message and a request.
struct Pipeline {
    ops: Vec<crate::event::Op>,
    coalescer: Option<Coalescer>,
    batcher: Batcher,
    ledger: Ledger,
}

impl Pipeline {
    fn new(endpoint: &Endpoint) -> Pipeline {
        let c = &endpoint.config;
        Pipeline {
            ops: c.events.clone(),
            coalescer: c.coalesce.map(Coalescer::new),
            batcher: Batcher::new(c.lanes.get(), c.batch_max_events.get(), c.batch_max_wait),
            ledger: Ledger::new(),
        }
    }

    fn accept(&mut self, msg: SinkMsg, now: Instant) -> Vec<Ready> {
        match msg {
            SinkMsg::Event { event, .. } if self.ops.contains(&event.op) => {
                let item = Item::new(event, self.ledger.hold());
                match &mut self.coalescer {
                    Some(c) => c
                        .push(item, now)
                        .into_iter()
                        .filter_map(|i| self.batcher.push(i, now))
                        .collect(),
                    None => self.batcher.push(item, now).into_iter().collect(),
                }
            }
            SinkMsg::Event { .. } => Vec::new(),
            SinkMsg::Commit { end_lsn, .. } => {
                self.ledger.commit(end_lsn);
                Vec::new()
            }
        }
    }

    fn due(&mut self, now: Instant) -> Vec<Ready> {
        let released = self.coalescer.as_mut().map(|c| c.due(now)).unwrap_or_default();
        let mut ready: Vec<Ready> = released.into_iter().filter_map(|i| self.batcher.push(i, now)).collect();
        ready.extend(self.batcher.due(now));
        ready
    }

    fn flush_all(&mut self) -> Vec<Ready> {
        let now = Instant::now();
        let held = self.coalescer.as_mut().map(|c| c.drain()).unwrap_or_default();
        let mut ready: Vec<Ready> = held.into_iter().filter_map(|i| self.batcher.push(i, now)).collect();
        ready.extend(self.batcher.flush_all());
        ready
    }

    fn deadline(&self) -> Option<Instant> {
        let coalesce = self.coalescer.as_ref().and_then(Coalescer::deadline);
        [coalesce, self.batcher.deadline()].into_iter().flatten().min()
    }

    fn release(&mut self, done: HandedOff) {
        for (txn, count) in done.covers {
            self.ledger.release(txn, count);
        }
        self.batcher.handed_off(done.lane, done.number);
    }
}
