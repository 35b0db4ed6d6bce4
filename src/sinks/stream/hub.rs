//! One stream sink's buffer, shared by all its clients: a bounded ring of events with one
//! cursor per client.
//!
//! A ring with cursors rather than a channel per client, because resuming needs the recent
//! past (a channel only carries what comes after subscribing) and because one shared copy of
//! each event costs the same whatever the number of clients. The sink appends and never waits:
//! an event pushed out of the ring before a client read it makes that client lagged (it is
//! dropped, see `http`), so a slow client never slows replication or the other clients.
//!
//! The hubs are found by sink name in a process-wide registry, as the sinks' metrics are: the
//! admin server serves them without a handle threaded from `sinks::spawn_all`.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;

use super::StreamConfig;
use crate::admin::metrics::StreamStats;
use crate::config::TableMapping;
use crate::event::{Event, Lsn, Op, TableName};

/// An event id, `<commit_lsn>:<n>`, ordered as the stream is: by commit LSN, then by the
/// change's position in its transaction (as numbers: "0/9:10" comes after "0/9:2").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventId {
    pub commit_lsn: Lsn,
    pub n: u32,
}

impl EventId {
    pub fn parse(text: &str) -> Option<EventId> {
        let (lsn, n) = text.trim().rsplit_once(':')?;
        Some(EventId {
            commit_lsn: Lsn::parse(lsn)?,
            n: n.parse().ok()?,
        })
    }

    /// The first id after this one.
    fn next(self) -> EventId {
        EventId {
            n: self.n.saturating_add(1),
            ..self
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.commit_lsn, self.n)
    }
}

/// One buffered event: what a client filters on, and the event's JSON as every other sink
/// shares it (serialized once, whatever the number of clients).
pub struct Entry {
    pub id: EventId,
    pub id_text: Box<str>,
    pub op: Op,
    pub table: Arc<TableName>,
    pub json: Bytes,
}

impl Entry {
    pub fn of(event: &Event) -> Entry {
        let id = EventId {
            commit_lsn: event.commit_lsn,
            n: event.seq,
        };
        Entry {
            id,
            id_text: id.to_string().into(),
            op: event.op,
            table: event.table.clone(),
            json: event.to_json().clone(),
        }
    }
}

struct Ring {
    entries: VecDeque<Arc<Entry>>,
    /// The index of `entries[0]` among every event the sink buffered in this run.
    first: u64,
    /// The ring holds every event of this sink with this id or a later one; None until the
    /// first transaction arrived (before it, this run knows nothing).
    complete_from: Option<EventId>,
}

impl Ring {
    fn end(&self) -> u64 {
        self.first + self.entries.len() as u64
    }
}

/// Where a new client starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// At the next event (a new client).
    Live,
    /// At the oldest event in the buffer (`?from=oldest`).
    Oldest,
    /// After the client's `Last-Event-ID`.
    After(EventId),
}

/// The client asked to resume after an event the buffer no longer follows on from: events
/// between it and `oldest` (the oldest buffered id, if any) may be gone.
#[derive(Debug, PartialEq, Eq)]
pub struct Gap {
    pub oldest: Option<String>,
}

/// Why a client was refused.
#[derive(Debug, PartialEq, Eq)]
pub struct Full {
    pub max_clients: usize,
}

/// A client's place in the ring.
struct Cursor {
    /// Index of the next event to read.
    position: AtomicU64,
    lagged: AtomicBool,
    /// Counted out of `connected` (once: by the lag sweep or by the client going away).
    released: AtomicBool,
}

pub struct Hub {
    pub name: String,
    tokens: Vec<String>,
    /// The tables the sink's mappings send it.
    pub tables: Vec<TableName>,
    pub capacity: usize,
    pub heartbeat: Duration,
    max_clients: usize,
    ring: RwLock<Ring>,
    /// The ring's end index, for clients waiting for more.
    end: watch::Sender<u64>,
    closed: AtomicBool,
    clients: Mutex<Vec<Arc<Cursor>>>,
    connected: AtomicUsize,
    pub stats: StreamStats,
}

fn registry() -> &'static RwLock<BTreeMap<String, Arc<Hub>>> {
    static HUBS: OnceLock<RwLock<BTreeMap<String, Arc<Hub>>>> = OnceLock::new();
    HUBS.get_or_init(Default::default)
}

impl Hub {
    /// Creates the hub of the stream sink `name` and makes it findable, before the sink's task
    /// first runs, so the admin server never sees a configured stream sink without its hub.
    pub fn register(name: &str, config: &StreamConfig, mappings: &[TableMapping]) -> Arc<Hub> {
        let mut tables: Vec<TableName> = mappings
            .iter()
            .filter(|m| m.sinks.iter().any(|s| s == name))
            .map(|m| m.table.clone())
            .collect();
        tables.sort();
        tables.dedup();
        let hub = Arc::new(Hub {
            name: name.to_string(),
            tokens: config.token.clone(),
            tables,
            capacity: config.buffer.get(),
            heartbeat: config.heartbeat,
            max_clients: config.max_clients.get(),
            ring: RwLock::new(Ring {
                entries: VecDeque::new(),
                first: 0,
                complete_from: None,
            }),
            end: watch::Sender::new(0),
            closed: AtomicBool::new(false),
            clients: Mutex::new(Vec::new()),
            connected: AtomicUsize::new(0),
            stats: crate::admin::metrics::global().stream_stats(name),
        });
        registry()
            .write()
            .expect("stream registry lock")
            .insert(name.to_string(), hub.clone());
        hub
    }

    pub fn find(name: &str) -> Option<Arc<Hub>> {
        registry().read().expect("stream registry lock").get(name).cloned()
    }

    /// Every stream sink's hub, by name.
    pub fn all() -> Vec<Arc<Hub>> {
        registry()
            .read()
            .expect("stream registry lock")
            .values()
            .cloned()
            .collect()
    }

    /// Whether `token` is one of this sink's (compared in constant time per token).
    pub fn accepts(&self, token: &str) -> bool {
        self.tokens.iter().fold(false, |found, t| {
            found | constant_time_eq(t.as_bytes(), token.as_bytes())
        })
    }

    /// Appends a chunk of events whose first message belongs to the transaction committed at
    /// `first_commit`, drops what no longer fits, and wakes the clients (not for a chunk of
    /// commits alone: transactions that routed nothing here change nothing for them).
    pub(super) fn push(&self, entries: &mut Vec<Entry>, first_commit: Lsn) {
        let mut ring = self.ring.write().expect("stream ring lock");
        ring.complete_from.get_or_insert(EventId {
            commit_lsn: first_commit,
            n: 0,
        });
        if entries.is_empty() {
            return;
        }
        ring.entries.extend(entries.drain(..).map(Arc::new));
        let excess = ring.entries.len().saturating_sub(self.capacity);
        if excess > 0 {
            let last_dropped = ring.entries[excess - 1].id;
            ring.entries.drain(..excess);
            ring.first += excess as u64;
            ring.complete_from = Some(last_dropped.next());
            // Under the ring's lock, so no client moves its cursor meanwhile.
            self.drop_lagged(ring.first);
        }
        let end = ring.end();
        drop(ring);
        self.end.send_replace(end);
    }

    /// The sink stopped: clients read what is buffered, then their streams end.
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.end.send_modify(|_| {});
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Marks every client whose next event was pushed out of the ring before `first`.
    fn drop_lagged(&self, first: u64) {
        let mut clients = self.clients.lock().expect("stream clients lock");
        clients.retain(|c| {
            if c.released.load(Ordering::Acquire) {
                return false;
            }
            if c.position.load(Ordering::Acquire) < first {
                self.lagged(c);
                return false;
            }
            true
        });
    }

    fn lagged(&self, cursor: &Cursor) {
        if !cursor.lagged.swap(true, Ordering::AcqRel) {
            self.stats.lagged.inc();
        }
        // A lagged client no longer counts against max_clients, even while its connection
        // lingers unread.
        self.release(cursor);
    }

    fn release(&self, cursor: &Cursor) {
        if !cursor.released.swap(true, Ordering::AcqRel) {
            self.connected.fetch_sub(1, Ordering::AcqRel);
            self.stats.clients.dec();
        }
    }

    /// A new client, positioned by `start`; with the gap it must be told about when it asked
    /// to resume after events the buffer no longer follows on from. Refused above `max_clients`.
    pub fn subscribe(self: &Arc<Self>, start: Start) -> Result<(Subscription, Option<Gap>), Full> {
        let reserved = self.connected.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < self.max_clients).then_some(n + 1)
        });
        if reserved.is_err() {
            return Err(Full {
                max_clients: self.max_clients,
            });
        }
        self.stats.clients.inc();
        let ring = self.ring.read().expect("stream ring lock");
        let mut gap = None;
        let position = match start {
            Start::Live => ring.end(),
            Start::Oldest => ring.first,
            Start::After(last) => match ring.complete_from {
                // Every event after `last` is still here: start right after it.
                Some(from) if last.next() >= from => ring.first + ring.entries.partition_point(|e| e.id <= last) as u64,
                _ => {
                    gap = Some(Gap {
                        oldest: ring.entries.front().map(|e| e.id_text.to_string()),
                    });
                    ring.first
                }
            },
        };
        let cursor = Arc::new(Cursor {
            position: AtomicU64::new(position),
            lagged: AtomicBool::new(false),
            released: AtomicBool::new(false),
        });
        {
            let mut clients = self.clients.lock().expect("stream clients lock");
            clients.retain(|c| !c.released.load(Ordering::Acquire));
            clients.push(cursor.clone());
        }
        drop(ring);
        let subscription = Subscription {
            hub: self.clone(),
            cursor,
            end: self.end.subscribe(),
        };
        Ok((subscription, gap))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What a fetch found.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    /// Events were scanned (some may have been filtered out); fetch again.
    More,
    /// Nothing new yet: wait.
    CaughtUp,
    /// Events this client had not read were pushed out of the buffer: it is dropped.
    Lagged,
}

/// One client's hold on the hub; dropping it (the client went away) frees its place.
pub struct Subscription {
    hub: Arc<Hub>,
    cursor: Arc<Cursor>,
    end: watch::Receiver<u64>,
}

impl Subscription {
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Copies into `out` the events matching `wanted` among the next `max` of the ring.
    pub fn fetch(&self, max: usize, wanted: impl Fn(&Entry) -> bool, out: &mut VecDeque<Arc<Entry>>) -> Fetched {
        let ring = self.hub.ring.read().expect("stream ring lock");
        let position = self.cursor.position.load(Ordering::Acquire);
        if self.cursor.lagged.load(Ordering::Acquire) || position < ring.first {
            self.hub.lagged(&self.cursor);
            return Fetched::Lagged;
        }
        let start = (position - ring.first) as usize;
        if start >= ring.entries.len() {
            return Fetched::CaughtUp;
        }
        let stop = ring.entries.len().min(start + max);
        out.extend(ring.entries.range(start..stop).filter(|e| wanted(e)).cloned());
        // Stored under the ring's lock: the lag sweep runs under it too, so it never sees a
        // position older than what this client already holds.
        self.cursor.position.store(ring.first + stop as u64, Ordering::Release);
        Fetched::More
    }

    /// Waits until the ring has events past this client's position. False when the sink
    /// stopped and the client has read everything.
    pub async fn wait(&mut self) -> bool {
        let position = self.cursor.position.load(Ordering::Acquire);
        let hub = &self.hub;
        match self.end.wait_for(|end| *end > position || hub.is_closed()).await {
            Ok(end) => *end > position,
            Err(_) => false,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.release(&self.cursor);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroUsize;

    fn hub(name: &str, buffer: usize, max_clients: usize) -> Arc<Hub> {
        let config = StreamConfig {
            token: vec!["t".into()],
            buffer: NonZeroUsize::new(buffer).unwrap(),
            max_clients: NonZeroUsize::new(max_clients).unwrap(),
            heartbeat: Duration::from_secs(15),
        };
        Hub::register(name, &config, &[])
    }

    fn entry(lsn: u64, n: u32) -> Entry {
        let id = EventId {
            commit_lsn: Lsn(lsn),
            n,
        };
        Entry {
            id,
            id_text: id.to_string().into(),
            op: Op::Create,
            table: Arc::new(TableName::parse("items")),
            json: Bytes::from_static(b"{}"),
        }
    }

    fn ids(sub: &Subscription) -> Vec<String> {
        let mut out = VecDeque::new();
        while sub.fetch(3, |_| true, &mut out) == Fetched::More {}
        out.iter().map(|e| e.id_text.to_string()).collect()
    }

    #[test]
    fn ids_order_by_commit_lsn_then_position_as_numbers() {
        let id = |s| EventId::parse(s).unwrap();
        assert!(id("0/9:10") > id("0/9:2"), "not compared as strings");
        assert!(id("0/10:0") > id("0/9:99"));
        assert!(id("1/0:0") > id("0/FFFFFFFF:5"));
        assert_eq!(id("16/B374D848:3").to_string(), "16/B374D848:3");
        for bad in ["", "0/9", "0/9:", "x:1", "0/9:-1", "0/9:1:2"] {
            assert_eq!(EventId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_resumed_client_gets_every_later_event_once() {
        let hub = hub("unit_resume", 100, 10);
        hub.push(&mut vec![entry(10, 0), entry(10, 1), entry(10, 2)], Lsn(10));
        hub.push(&mut vec![entry(20, 0), entry(20, 1)], Lsn(20));
        let after = |s: &str| Start::After(EventId::parse(s).unwrap());
        let (sub, gap) = hub.subscribe(after("0/A:1")).unwrap();
        assert_eq!(gap, None);
        assert_eq!(ids(&sub), ["0/A:2", "0/14:0", "0/14:1"]);
        let (sub, gap) = hub.subscribe(after("0/14:1")).unwrap();
        assert_eq!((gap, ids(&sub).len()), (None, 0));
        let (sub, _) = hub.subscribe(Start::Live).unwrap();
        assert!(ids(&sub).is_empty());
        let (sub, _) = hub.subscribe(Start::Oldest).unwrap();
        assert_eq!(ids(&sub).len(), 5);
        // Before the first buffered transaction: this run cannot know what came between.
        let (sub, gap) = hub.subscribe(after("0/5:0")).unwrap();
        assert_eq!(gap.unwrap().oldest.as_deref(), Some("0/A:0"));
        assert_eq!(ids(&sub).len(), 5);
    }

    #[test]
    fn a_client_behind_the_rolled_over_buffer_gets_a_gap_with_the_oldest_id() {
        let hub = hub("unit_gap", 3, 10);
        hub.push(&mut (0..5).map(|n| entry(10, n)).collect(), Lsn(10));
        let after = |s: &str| Start::After(EventId::parse(s).unwrap());
        let (sub, gap) = hub.subscribe(after("0/A:0")).unwrap();
        assert_eq!(gap.unwrap().oldest.as_deref(), Some("0/A:2"));
        assert_eq!(ids(&sub), ["0/A:2", "0/A:3", "0/A:4"]);
        // The last dropped event: the client has everything before the oldest.
        let (sub, gap) = hub.subscribe(after("0/A:1")).unwrap();
        assert_eq!(gap, None);
        assert_eq!(ids(&sub).len(), 3);
    }

    #[test]
    fn a_client_left_behind_is_dropped_and_frees_its_place() {
        let hub = hub("unit_lagged", 4, 2);
        let (slow, _) = hub.subscribe(Start::Live).unwrap();
        let (fast, _) = hub.subscribe(Start::Live).unwrap();
        assert_eq!(hub.subscribe(Start::Live).err(), Some(Full { max_clients: 2 }));
        hub.push(&mut (0..3).map(|n| entry(10, n)).collect(), Lsn(10));
        assert_eq!(ids(&fast).len(), 3);
        hub.push(&mut (3..6).map(|n| entry(10, n)).collect(), Lsn(10));
        assert_eq!(ids(&fast).len(), 3, "the fast client is not held back by the slow one");
        let mut out = VecDeque::new();
        assert_eq!(slow.fetch(10, |_| true, &mut out), Fetched::Lagged);
        assert_eq!(hub.stats.lagged.get(), 1);
        let (_third, _) = hub.subscribe(Start::Live).expect("the lagged client's place is free");
        drop(slow);
        assert_eq!(hub.connected.load(Ordering::Acquire), 2, "released once");
    }
}
