//! Event → bytes, and a batch of them → the request body.
//!
//! The body is an envelope around the events:
//! `{"type":"cdc.batch","version":1,"id":"msg_…","sink":"…","created_at":"…","events":[…]}`.
//! It is built by concatenating each event's cached JSON (`Event::to_json`), so an event is
//! serialized once however many endpoints receive it. The batch id is derived from the sink,
//! the ids of the batch's first and last events and its size: every retry of a stored batch
//! carries it, but a replay after a crash may cut batches differently (cuts depend on timing and
//! coalescing), so receivers dedupe by event id, which is always stable.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use sha2::{Digest, Sha256};

use super::config::Payload;
use crate::event::{Event, Op, Row};

/// Bumped when the envelope or the event objects change incompatibly.
pub const FORMAT_VERSION: u32 = 1;

/// The bytes an endpoint receives for one event. With `payload = "changed"` an update carries
/// the key and the changed columns only; when the changed columns are unknown (the table's old
/// row is not replicated: no REPLICA IDENTITY FULL) it carries the whole new row.
pub fn event_bytes(event: &Event, payload: Payload) -> Bytes {
    match (payload, event.op, &event.changed) {
        (Payload::Changed, Op::Update, Some(changed)) => {
            let keep = |name: &str| {
                changed.iter().any(|c| &**c == name) || event.key.as_ref().is_some_and(|k| k.get(name).is_some())
            };
            let new = event
                .new
                .as_ref()
                .map(|row| Row(row.0.iter().filter(|(name, _)| keep(name)).cloned().collect()));
            event
                .with_rows(event.key.clone(), None, new, Some(changed.clone()), Op::Update)
                .to_json()
                .clone()
        }
        _ => event.to_json().clone(),
    }
}

/// `msg_` + 32 hex digits, stable for the same sink and the same first and last event.
pub fn batch_id(sink: &str, first_event: &str, last_event: &str, count: usize) -> String {
    let mut h = Sha256::new();
    for part in [sink, first_event, last_event, &count.to_string()] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    let digest = h.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("msg_{hex}")
}

/// The id of a batch of events.
pub fn batch_id_of(sink: &str, events: &[Arc<Event>]) -> String {
    let first = events.first().map(|e| e.id()).unwrap_or_default();
    let last = events.last().map(|e| e.id()).unwrap_or_default();
    batch_id(sink, &first, &last, events.len())
}

/// The request body: the envelope with the given event objects, in order.
pub fn body(kind: &str, id: &str, sink: &str, created_at: &str, events: &[Bytes]) -> Bytes {
    // The head is under 256 bytes besides the names: one allocation, never a copy to grow it.
    let size = 256
        + kind.len()
        + id.len()
        + 2 * sink.len()
        + created_at.len()
        + events.iter().map(|e| e.len() + 1).sum::<usize>();
    let mut buf = BytesMut::with_capacity(size).writer();
    let head =
        serde_json::json!({"type": kind, "version": FORMAT_VERSION, "id": id, "sink": sink, "created_at": created_at});
    serde_json::to_writer(&mut buf, &head).expect("a JSON value always serializes");
    let mut buf = buf.into_inner();
    // Reopen the object to append the events array without re-serializing the events.
    buf.truncate(buf.len() - 1);
    buf.put_slice(b",\"events\":[");
    for (i, event) in events.iter().enumerate() {
        if i > 0 {
            buf.put_u8(b',');
        }
        buf.put_slice(event);
    }
    buf.put_slice(b"]}");
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Lsn, Position, TableName, Value};

    fn row(pairs: &[(&str, Value)]) -> Row {
        Row(pairs.iter().map(|(k, v)| (Arc::from(*k), v.clone())).collect())
    }

    fn update(changed: Option<&[&str]>) -> Event {
        let pos = Position {
            lsn: Lsn(0x10),
            commit_lsn: Lsn(0x20),
            seq: 1,
            xid: 7,
            committed_at_us: 0,
        };
        Event::new(
            Op::Update,
            Arc::new(TableName::parse("opinions")),
            Some(row(&[("id", Value::Int(9))])),
            Some(row(&[
                ("id", Value::Int(9)),
                ("title", Value::String("a".into())),
                ("body", Value::String("x".into())),
            ])),
            Some(row(&[
                ("id", Value::Int(9)),
                ("title", Value::String("b".into())),
                ("body", Value::String("x".into())),
            ])),
            changed.map(|c| c.iter().map(|n| Arc::from(*n)).collect()),
            pos,
        )
    }

    fn json(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn changed_payload_carries_only_the_changed_columns_and_the_key() {
        let e = json(&event_bytes(&update(Some(&["title"])), Payload::Changed));
        assert_eq!(e["new"], serde_json::json!({"id": 9, "title": "b"}));
        assert_eq!(e["old"], serde_json::Value::Null);
        assert_eq!(e["changed"], serde_json::json!(["title"]));
        assert_eq!(e["id"], "0/20:1", "the projected event keeps its stable id");
    }

    #[test]
    fn changed_payload_sends_the_whole_row_when_changes_are_unknown() {
        let e = json(&event_bytes(&update(None), Payload::Changed));
        assert_eq!(e["new"], serde_json::json!({"id": 9, "title": "b", "body": "x"}));
    }

    #[test]
    fn full_payload_shares_the_cached_bytes() {
        let event = update(Some(&["title"]));
        let bytes = event_bytes(&event, Payload::Full);
        assert_eq!(bytes.as_ptr(), event.to_json().as_ptr(), "no second serialization");
        assert_eq!(json(&bytes)["old"]["title"], "a");
    }

    #[test]
    fn the_body_is_an_envelope_around_the_events_in_order() {
        let events = [Bytes::from_static(br#"{"n":1}"#), Bytes::from_static(br#"{"n":2}"#)];
        let b = json(&body(
            "cdc.batch",
            "msg_1",
            "hook \"a\"",
            "2026-01-01T00:00:00Z",
            &events,
        ));
        assert_eq!(
            b,
            serde_json::json!({"type": "cdc.batch", "version": 1, "id": "msg_1", "sink": "hook \"a\"",
                "created_at": "2026-01-01T00:00:00Z", "events": [{"n": 1}, {"n": 2}]})
        );
        assert_eq!(
            json(&body("cdc.batch", "m", "s", "t", &[]))["events"],
            serde_json::json!([])
        );
    }

    #[test]
    fn a_batch_id_is_stable_and_depends_on_its_events_and_sink() {
        let id = batch_id("hook", "0/20:0", "0/20:24", 25);
        assert_eq!(id, batch_id("hook", "0/20:0", "0/20:24", 25));
        assert!(id.starts_with("msg_") && id.len() == 36);
        assert_ne!(id, batch_id("other", "0/20:0", "0/20:24", 25));
        assert_ne!(id, batch_id("hook", "0/20:25", "0/20:49", 25));
    }
}
