//! `GET /events` on the admin server: one stream sink's events as Server-Sent Events.
//!
//! `?sink=NAME` picks the sink, `Authorization: Bearer TOKEN` must carry one of its tokens (401
//! without one or with an unknown one, 403 with another stream sink's), `table=` and `op=`
//! (comma-separated) narrow what the client gets, `Last-Event-ID` resumes and `from=oldest`
//! starts at the oldest buffered event. Each message is `id:` the event id, `event:` the op,
//! `data:` the event's shared JSON; `gap` and `lagged` messages say when events were missed.
//! Framing and heartbeats are axum's (`axum::response::sse`).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::Query;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};

use super::hub::{Entry, EventId, Fetched, Hub, Start, Subscription};
use crate::event::{Op, TableName};

/// Events copied from the ring per read; bounds how long a client holds the ring's read lock.
const FETCH: usize = 512;

/// The `/events` handler.
pub async fn events(headers: HeaderMap, Query(params): Query<Vec<(String, String)>>) -> Response {
    match open(&headers, &params) {
        Ok(response) => response,
        Err(refusal) => refusal.into_response(),
    }
}

/// A request refused, with the status and what to do about it.
struct Refusal(StatusCode, String);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let body = self.1 + "\n";
        if self.0 == StatusCode::UNAUTHORIZED {
            (self.0, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
        } else {
            (self.0, body).into_response()
        }
    }
}

fn bad_request(message: String) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST, message)
}

/// What one client asked for.
struct Filter {
    tables: Option<Vec<TableName>>,
    ops: Option<Vec<Op>>,
}

impl Filter {
    fn wants(&self, e: &Entry) -> bool {
        self.tables.as_ref().is_none_or(|t| t.iter().any(|t| *t == *e.table))
            && self.ops.as_ref().is_none_or(|o| o.contains(&e.op))
    }
}

fn open(headers: &HeaderMap, params: &[(String, String)]) -> Result<Response, Refusal> {
    let names = || Hub::all().iter().map(|h| h.name.clone()).collect::<Vec<_>>().join(", ");
    let param = |key: &str| params.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    if let Some((key, _)) = params
        .iter()
        .find(|(k, _)| !["sink", "table", "op", "from"].contains(&k.as_str()))
    {
        return Err(bad_request(format!(
            "unknown parameter {key:?}; use sink, table, op and from"
        )));
    }
    let Some(sink) = param("sink") else {
        return Err(bad_request(format!(
            "add ?sink=NAME, the stream sink to read (stream sinks: {})",
            names()
        )));
    };
    let Some(hub) = Hub::find(sink) else {
        // Every stream sink's hub is registered when the sinks start: none at all means they
        // have not started (cdc run is starting, or standing by for the slot) or none is configured.
        if Hub::all().is_empty() {
            return Err(Refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "no stream sink is serving here: cdc run is starting or standing by (see /ready), or none is configured; retry, or read from the cdc run that streams".to_string(),
            ));
        }
        return Err(Refusal(
            StatusCode::NOT_FOUND,
            format!("no stream sink named {sink:?} (stream sinks: {})", names()),
        ));
    };
    authorize(&hub, headers)?;

    let tables = match param("table") {
        None => None,
        Some(list) => Some(
            list.split(',')
                .map(|t| {
                    let table = TableName::parse(t.trim());
                    if hub.tables.contains(&table) {
                        Ok(table)
                    } else {
                        let carried: Vec<String> = hub.tables.iter().map(|t| t.to_string()).collect();
                        Err(bad_request(format!(
                            "sink {sink} carries no table {table}; its tables: {}",
                            carried.join(", ")
                        )))
                    }
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let ops = match param("op") {
        None => None,
        Some(list) => Some(
            list.split(',')
                .map(|o| {
                    Op::parse(o.trim())
                        .ok_or_else(|| bad_request(format!("op {o:?} is not one of create, update, delete, truncate")))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let last_event_id = match headers.get("last-event-id") {
        None => None,
        Some(value) => Some(value.to_str().ok().and_then(EventId::parse).ok_or_else(|| {
            bad_request(format!(
                "Last-Event-ID {value:?} is not an event id like \"16/B374D848:3\" (<commit_lsn>:<n>)"
            ))
        })?),
    };
    let start = match (last_event_id, param("from")) {
        (Some(last), _) => Start::After(last),
        (None, None) => Start::Live,
        (None, Some("oldest")) => Start::Oldest,
        (None, Some(other)) => {
            return Err(bad_request(format!(
                "from={other:?} is not known; use from=oldest to start at the oldest buffered event (without it: the next event)"
            )))
        }
    };
    let (subscription, gap) = hub.subscribe(start).map_err(|full| {
        Refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "stream sink {sink} already serves max_clients ({}) clients; try again later or raise max_clients",
                full.max_clients
            ),
        )
    })?;
    let first = gap.map(|gap| {
        Event::default().event("gap").data(
            serde_json::json!({
                "oldest": gap.oldest,
                "message": "events after your Last-Event-ID may be gone from the buffer: resynchronise, then read on from here (the oldest buffered event)",
            })
            .to_string(),
        )
    });
    let heartbeat = hub.heartbeat;
    let reader = Reader {
        subscription,
        filter: Filter { tables, ops },
        pending: VecDeque::new(),
        first,
        done: false,
        unsent: 0,
    };
    let stream = futures_util::stream::unfold(reader, |mut reader| async move {
        let event = reader.next().await?;
        Some((Ok::<_, Infallible>(event), reader))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(heartbeat).text("ping"))
        .into_response())
}

/// 401 without a bearer token or with one no stream sink has; 403 with another sink's.
fn authorize(hub: &Hub, headers: &HeaderMap) -> Result<(), Refusal> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let Some(token) = token else {
        return Err(Refusal(
            StatusCode::UNAUTHORIZED,
            format!(
                "send one of stream sink {}'s tokens as `Authorization: Bearer TOKEN`",
                hub.name
            ),
        ));
    };
    if hub.accepts(token) {
        return Ok(());
    }
    if Hub::all().iter().any(|other| other.accepts(token)) {
        return Err(Refusal(
            StatusCode::FORBIDDEN,
            format!("this token is not one of stream sink {}'s", hub.name),
        ));
    }
    Err(Refusal(
        StatusCode::UNAUTHORIZED,
        format!("wrong token for stream sink {}", hub.name),
    ))
}

/// One client's stream of messages.
struct Reader {
    subscription: Subscription,
    filter: Filter,
    /// Events fetched and not yet sent.
    pending: VecDeque<Arc<Entry>>,
    /// A `gap` message to send before anything else.
    first: Option<Event>,
    /// The final message was sent (or the sink stopped).
    done: bool,
    /// Events sent and not yet counted in the shared counter (counted in chunks: one shared
    /// atomic bumped per event by every client would be contended).
    unsent: u64,
}

impl Reader {
    async fn next(&mut self) -> Option<Event> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        loop {
            if let Some(entry) = self.pending.pop_front() {
                self.unsent += 1;
                // Valid UTF-8 always (serde_json wrote it), so this borrows, never copies.
                let data = String::from_utf8_lossy(&entry.json);
                return Some(Event::default().id(&*entry.id_text).event(entry.op.as_str()).data(data));
            }
            self.count_sent();
            if self.done {
                return None;
            }
            match self
                .subscription
                .fetch(FETCH, |e| self.filter.wants(e), &mut self.pending)
            {
                Fetched::More => {}
                Fetched::CaughtUp => {
                    if !self.subscription.wait().await {
                        return None;
                    }
                }
                Fetched::Lagged => {
                    self.done = true;
                    let hub = self.subscription.hub();
                    return Some(Event::default().event("lagged").data(
                        serde_json::json!({
                            "buffer": hub.capacity,
                            "message": "this client read more slowly than events arrived and fell further behind than the buffer: reconnect with Last-Event-ID (a gap message will say whether events were missed)",
                        })
                        .to_string(),
                    ));
                }
            }
        }
    }

    fn count_sent(&mut self) {
        if self.unsent > 0 {
            self.subscription
                .hub()
                .stats
                .sent
                .inc_by(std::mem::take(&mut self.unsent));
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.count_sent();
    }
}
