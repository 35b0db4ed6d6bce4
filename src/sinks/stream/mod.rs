//! The stream sink: routed events kept in a bounded in-memory buffer and served to HTTP clients
//! as Server-Sent Events on the admin server (`GET /events?sink=NAME`), for receivers that
//! subscribe instead of exposing an endpoint of their own.
//!
//! It is a sink, so mappings choose what it carries and the checkpoint stays honest: a
//! transaction is acknowledged once it is in the buffer. That is its durability: clients that
//! were not connected, or fell further behind than the buffer, miss events and are told so
//! (`gap`, `lagged`); receivers that need every event after a crash use webhooks.
//!
//! Rooms: `hub` (the buffer shared by all clients, each with its own cursor, and the registry
//! the admin server finds it in), `http` (the `/events` handler: tokens, filters, resume, SSE).

pub mod http;
mod hub;

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use tokio::sync::mpsc;

pub use hub::{EventId, Hub};

use crate::admin::metrics::SinkStats;
use crate::checkpoint::Ack;
use crate::config::{parse_duration, Problem, SinkSettings};
use crate::sinks::SinkMsg;

/// What the user writes under `[sinks.NAME]` with `type = "stream"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    /// Bearer tokens clients authenticate with; several during a rotation.
    #[serde(default, deserialize_with = "tokens")]
    pub token: Vec<String>,
    /// Events kept in memory for clients that resume (`Last-Event-ID`) or read slowly.
    #[serde(default = "default_buffer")]
    pub buffer: NonZeroUsize,
    /// Clients at once; more are answered 503.
    #[serde(default = "default_max_clients")]
    pub max_clients: NonZeroUsize,
    /// A `: ping` comment after this long without an event, so proxies keep the connection.
    #[serde(default = "default_heartbeat", deserialize_with = "duration")]
    pub heartbeat: Duration,
}

impl SinkSettings for StreamConfig {
    fn validate(&mut self, _config_dir: &std::path::Path) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.token.is_empty() {
            problems.push(Problem::new(
                "token",
                "missing; set the token clients send as `Authorization: Bearer ...`, like token = \"${FEED_TOKEN}\" (a list during a rotation)",
            ));
        }
        for (i, token) in self.token.iter().enumerate() {
            // What a client can put after "Bearer " in one header: visible ASCII, no spaces.
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                problems.push(Problem::new(
                    format!("token[{i}]"),
                    "must be a non-empty string of visible ASCII characters without spaces (it is sent in an HTTP header)",
                ));
            }
        }
        if self.heartbeat.is_zero() {
            problems.push(Problem::new("heartbeat", "must be longer than zero, like \"15s\""));
        }
        problems
    }
}

fn default_buffer() -> NonZeroUsize {
    NonZeroUsize::new(100_000).expect("not zero")
}

fn default_max_clients() -> NonZeroUsize {
    NonZeroUsize::new(100).expect("not zero")
}

fn default_heartbeat() -> Duration {
    Duration::from_secs(15)
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse_duration(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// One token or a list.
fn tokens<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// The sink loop: events into the hub's buffer, then the acknowledgement of every transaction
/// whose commit was in the chunk. Nothing here waits for a client.
pub async fn run(
    hub: Arc<Hub>,
    mut rx: mpsc::Receiver<SinkMsg>,
    ack: Ack,
    stats: Arc<SinkStats>,
) -> anyhow::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut entries = Vec::with_capacity(1024);
    while rx.recv_many(&mut buf, 1024).await > 0 {
        let first_commit = match &buf[0] {
            SinkMsg::Event { event, .. } => event.commit_lsn,
            SinkMsg::Commit { commit_lsn, .. } => *commit_lsn,
        };
        let mut committed = None;
        for msg in buf.drain(..) {
            match msg {
                SinkMsg::Event { event, .. } => entries.push(hub::Entry::of(&event)),
                SinkMsg::Commit { end_lsn, .. } => committed = Some(end_lsn),
            }
        }
        let events = entries.len() as u64;
        hub.push(&mut entries, first_commit);
        // In the buffer is as far as this sink delivers (see the module's doc).
        if let Some(end_lsn) = committed {
            ack.delivered(end_lsn);
        }
        stats.events.inc_by(events);
    }
    // Clients read what the buffer holds, then their streams end.
    hub.close();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> Result<StreamConfig, toml::de::Error> {
        toml::from_str(toml)
    }

    #[test]
    fn defaults_and_token_lists() {
        let c = parse(r#"token = "t1""#).unwrap();
        assert_eq!(c.token, vec!["t1"]);
        assert_eq!(c.buffer.get(), 100_000);
        assert_eq!(c.max_clients.get(), 100);
        assert_eq!(c.heartbeat, Duration::from_secs(15));
        let c = parse(
            r#"token = ["old", "new"]
buffer = 10
max_clients = 2
heartbeat = "200ms""#,
        )
        .unwrap();
        assert_eq!(c.token, vec!["old", "new"]);
        assert_eq!((c.buffer.get(), c.max_clients.get()), (10, 2));
        assert_eq!(c.heartbeat, Duration::from_millis(200));
        assert!(parse("token = \"t\"\nbuffer = 0").is_err());
    }

    #[test]
    fn tokens_are_required_and_must_fit_a_header() {
        let mut c = parse("").unwrap();
        let problems = c.validate(std::path::Path::new("."));
        assert_eq!(problems[0].key, "token");
        assert!(problems[0].message.contains("Bearer"), "{problems:?}");
        let mut c = parse(r#"token = ["ok", "has space", ""]"#).unwrap();
        let keys: Vec<String> = c
            .validate(std::path::Path::new("."))
            .into_iter()
            .map(|p| p.key)
            .collect();
        assert_eq!(keys, vec!["token[1]", "token[2]"]);
    }
}
