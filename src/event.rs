//! The event: one row change, the one type every stage speaks.
//!
//! The source builds events from pgoutput messages, the router projects them per table mapping,
//! and every sink serializes them. An event's JSON form is documented in the README; it is
//! produced here once (`Event::to_json`) and shared as bytes by every sink that sends it whole.

use std::fmt;
use std::sync::{Arc, OnceLock};

use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::Serialize;
use serde_json::value::RawValue;

/// A PostgreSQL log sequence number. Displayed as Postgres does (`16/B374D848`).
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    pub fn parse(s: &str) -> Option<Lsn> {
        let (hi, lo) = s.trim().split_once('/')?;
        let hi = u64::from_str_radix(hi, 16).ok()?;
        let lo = u64::from_str_radix(lo, 16).ok()?;
        if hi > u32::MAX as u64 || lo > u32::MAX as u64 {
            return None;
        }
        Some(Lsn(hi << 32 | lo))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl fmt::Debug for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for Lsn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What happened to the row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Create,
    Update,
    Delete,
    Truncate,
}

impl Op {
    pub const ALL: [Op; 4] = [Op::Create, Op::Update, Op::Delete, Op::Truncate];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
        }
    }

    pub fn parse(s: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.as_str() == s)
    }
}

/// One column value, converted from Postgres' text form (see `source::values`).
#[derive(Clone, Debug)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    /// A number written exactly as Postgres printed it (numeric, float), already checked to be
    /// a valid JSON number, so no digit is lost to float rounding.
    Number(Box<str>),
    String(Box<str>),
    /// json / jsonb, embedded verbatim.
    Json(Box<RawValue>),
    Array(Vec<Value>),
    /// The column is TOASTed and did not change: Postgres did not send its value. It is never
    /// turned into null; the event lists such columns under `unchanged_toast`.
    UnchangedToast,
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        use Value::*;
        match (self, other) {
            (Null, Null) | (UnchangedToast, UnchangedToast) => true,
            (Bool(a), Bool(b)) => a == b,
            (Int(a), Int(b)) => a == b,
            (Number(a), Number(b)) | (String(a), String(b)) => a == b,
            (Json(a), Json(b)) => a.get() == b.get(),
            (Array(a), Array(b)) => a == b,
            _ => false,
        }
    }
}

impl Value {
    pub fn is_unchanged_toast(&self) -> bool {
        matches!(self, Value::UnchangedToast)
    }

    /// The value as text, as a filter or a document id compares it.
    pub fn as_text(&self) -> Option<std::borrow::Cow<'_, str>> {
        use std::borrow::Cow;
        match self {
            Value::Null | Value::UnchangedToast | Value::Array(_) => None,
            Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
            Value::Int(i) => Some(Cow::Owned(i.to_string())),
            Value::Number(n) => Some(Cow::Borrowed(n)),
            Value::String(s) => Some(Cow::Borrowed(s)),
            Value::Json(j) => Some(Cow::Borrowed(j.get())),
        }
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null | Value::UnchangedToast => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Number(n) => {
                // RawValue writes the digits through serde_json untouched.
                let raw: &RawValue = serde_json::from_str(n).map_err(serde::ser::Error::custom)?;
                raw.serialize(s)
            }
            Value::String(v) => s.serialize_str(v),
            Value::Json(j) => j.serialize(s),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
        }
    }
}

/// A row: column names (shared with the relation cache) and values, in table order.
/// Unchanged TOAST columns are left out of its JSON form.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Row(pub Vec<(Arc<str>, Value)>);

impl Row {
    pub fn get(&self, column: &str) -> Option<&Value> {
        self.0.iter().find(|(name, _)| &**name == column).map(|(_, v)| v)
    }

    /// This key's columns as `new` has them, when that moves the row to another key. None when
    /// the key stays, or when `new` lacks a key column (a projection without it). An unchanged
    /// TOAST value was not resent: it did not change.
    pub fn moved_to(&self, new: &Row) -> Option<Row> {
        fn after<'a>(new: &'a Row, name: &str, old: &'a Value) -> Option<&'a Value> {
            new.get(name).map(|v| if v.is_unchanged_toast() { old } else { v })
        }
        let mut moved = false;
        for (name, old) in &self.0 {
            moved |= after(new, name, old)? != old;
        }
        // Built only for a key that moved: routing calls this for every event.
        moved.then(|| {
            Row(self
                .0
                .iter()
                .filter_map(|(name, old)| Some((name.clone(), after(new, name, old)?.clone())))
                .collect())
        })
    }

    pub fn unchanged_toast(&self) -> impl Iterator<Item = &Arc<str>> {
        self.0
            .iter()
            .filter(|(_, v)| v.is_unchanged_toast())
            .map(|(name, _)| name)
    }
}

impl Serialize for Row {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (name, value) in &self.0 {
            if !value.is_unchanged_toast() {
                map.serialize_entry(&**name, value)?;
            }
        }
        map.end()
    }
}

/// A table's schema-qualified name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: String,
    pub name: String,
}

impl TableName {
    /// `schema.table`, or `table` meaning `public.table`.
    pub fn parse(s: &str) -> TableName {
        match s.split_once('.') {
            Some((schema, name)) => TableName {
                schema: schema.to_string(),
                name: name.to_string(),
            },
            None => TableName {
                schema: "public".to_string(),
                name: s.to_string(),
            },
        }
    }

    /// The name quoted for SQL: `"schema"."table"`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// TRUNCATE options, as pgoutput reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TruncateFlags {
    pub cascade: bool,
    pub restart_identity: bool,
}

/// One row change (or one truncated table).
#[derive(Debug)]
pub struct Event {
    pub op: Op,
    pub table: Arc<TableName>,
    /// The primary key (or the mapping's `key` columns) of the row. For an update that changed
    /// the key, the *old* key. None for truncate.
    pub key: Option<Row>,
    /// The row before the change: the whole row under REPLICA IDENTITY FULL, only the key
    /// columns when the key changed under the default identity, otherwise None.
    pub old: Option<Row>,
    pub new: Option<Row>,
    /// For a routed change that altered the key: the key after it. The mapping's projection may
    /// have dropped key columns from `new`, and a search document must still move to its new id.
    /// None otherwise (the key did not change, or `new` holds it: source events).
    pub new_key: Option<Row>,
    /// For a routed update: the mapping's filter could not tell whether the row is in it now (a
    /// filter column's value was not sent: unchanged TOAST), so it was passed as an update. A
    /// sink that can read the row back checks the filter on it.
    pub membership_unknown: bool,
    /// Columns whose value changed. None when it cannot be known exactly (the old row was not
    /// sent: the table does not have REPLICA IDENTITY FULL).
    pub changed: Option<Vec<Arc<str>>>,
    /// The change's own WAL position.
    pub lsn: Lsn,
    /// The transaction's commit LSN, announced by Begin; with `seq` it makes the stable id.
    pub commit_lsn: Lsn,
    /// The position of this change within its transaction, from 0.
    pub seq: u32,
    pub xid: u32,
    /// Commit time, microseconds since the Unix epoch.
    pub committed_at_us: i64,
    pub truncate: Option<TruncateFlags>,
    json: OnceLock<bytes::Bytes>,
}

impl Event {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        op: Op,
        table: Arc<TableName>,
        key: Option<Row>,
        old: Option<Row>,
        new: Option<Row>,
        changed: Option<Vec<Arc<str>>>,
        position: Position,
    ) -> Event {
        Event {
            op,
            table,
            key,
            old,
            new,
            new_key: None,
            membership_unknown: false,
            changed,
            lsn: position.lsn,
            commit_lsn: position.commit_lsn,
            seq: position.seq,
            xid: position.xid,
            committed_at_us: position.committed_at_us,
            truncate: None,
            json: OnceLock::new(),
        }
    }

    /// A copy with other rows (the router's projection), same position and identity.
    pub fn with_rows(
        &self,
        key: Option<Row>,
        old: Option<Row>,
        new: Option<Row>,
        changed: Option<Vec<Arc<str>>>,
        op: Op,
    ) -> Event {
        Event {
            op,
            table: self.table.clone(),
            key,
            old,
            new,
            new_key: None,
            membership_unknown: false,
            changed,
            lsn: self.lsn,
            commit_lsn: self.commit_lsn,
            seq: self.seq,
            xid: self.xid,
            committed_at_us: self.committed_at_us,
            truncate: self.truncate,
            json: OnceLock::new(),
        }
    }

    /// Whether an update changed the key: Some(true) when the old key is known and differs.
    pub fn key_changed(&self) -> Option<bool> {
        if self.new_key.is_some() {
            return Some(true);
        }
        let (key, new) = (self.key.as_ref()?, self.new.as_ref()?);
        // A key column missing from `new` was projected out unchanged (a change sets `new_key`).
        Some(
            key.0
                .iter()
                .any(|(name, value)| new.get(name).is_some_and(|v| v != value && !v.is_unchanged_toast())),
        )
    }

    /// Key column `name`'s value after the change: the new key's, else the new row's, else the
    /// key's (it did not change).
    pub fn key_value_after(&self, name: &str) -> Option<&Value> {
        let key_after = self.new_key.as_ref().and_then(|k| k.get(name));
        let from_new = || {
            self.new
                .as_ref()
                .and_then(|n| n.get(name))
                .filter(|v| !v.is_unchanged_toast())
        };
        key_after
            .or_else(from_new)
            .or_else(|| self.key.as_ref().and_then(|k| k.get(name)))
    }

    pub fn position(&self) -> Position {
        Position {
            lsn: self.lsn,
            commit_lsn: self.commit_lsn,
            seq: self.seq,
            xid: self.xid,
            committed_at_us: self.committed_at_us,
        }
    }

    /// The stable id: `<commit_lsn>:<seq>`. A replay after a restart gives the same id.
    pub fn id(&self) -> String {
        EventId(self.commit_lsn, self.seq).to_string()
    }

    /// The event as one JSON object (no trailing newline), serialized once and shared.
    pub fn to_json(&self) -> &bytes::Bytes {
        self.json.get_or_init(|| {
            let mut buf = Vec::with_capacity(256);
            serde_json::to_writer(&mut buf, &EventJson(self)).expect("an event always serializes");
            bytes::Bytes::from(buf)
        })
    }
}

/// Where a change sits in the WAL and its transaction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Position {
    pub lsn: Lsn,
    pub commit_lsn: Lsn,
    pub seq: u32,
    pub xid: u32,
    pub committed_at_us: i64,
}

/// Formats microseconds since the Unix epoch as RFC 3339 UTC with microseconds.
pub fn format_timestamp_us(us: i64) -> String {
    match chrono::DateTime::from_timestamp_micros(us) {
        // Not `format` with a pattern: that parses the pattern at every call, which showed in
        // profiles of one-row transactions (one commit time per event).
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        None => us.to_string(),
    }
}

/// Every event of a transaction has the same commit time: format it once per transaction, not
/// once per event (formatting was a tenth of the serialization cost of a small event).
fn with_commit_time<R>(us: i64, f: impl FnOnce(&str) -> R) -> R {
    thread_local! {
        static LAST: std::cell::RefCell<(i64, String)> = const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if last.0 != us {
            *last = (us, format_timestamp_us(us));
        }
        f(&last.1)
    })
}

/// `<commit_lsn>:<seq>`, written without an intermediate String.
struct EventId(Lsn, u32);

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.0, self.1)
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

struct EventJson<'a>(&'a Event);

impl Serialize for EventJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.0;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("id", &EventId(e.commit_lsn, e.seq))?;
        map.serialize_entry("op", &e.op)?;
        map.serialize_entry("schema", &e.table.schema)?;
        map.serialize_entry("table", &e.table.name)?;
        map.serialize_entry("key", &e.key)?;
        map.serialize_entry("old", &e.old)?;
        map.serialize_entry("new", &e.new)?;
        map.serialize_entry("changed", &e.changed.as_ref().map(|c| Names(c)))?;
        if let Some(new) = &e.new {
            if new.unchanged_toast().next().is_some() {
                map.serialize_entry(
                    "unchanged_toast",
                    &Names(&new.unchanged_toast().cloned().collect::<Vec<_>>()),
                )?;
            }
        }
        if let Some(flags) = &e.truncate {
            map.serialize_entry("truncate", flags)?;
        }
        map.serialize_entry("lsn", &e.lsn)?;
        map.serialize_entry("commit_lsn", &e.commit_lsn)?;
        map.serialize_entry("xid", &e.xid)?;
        with_commit_time(e.committed_at_us, |t| map.serialize_entry("committed_at", t))?;
        map.end()
    }
}

struct Names<'a>(&'a [Arc<str>]);

impl Serialize for Names<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for n in self.0 {
            seq.serialize_element(&**n)?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: &[(&str, Value)]) -> Row {
        Row(pairs.iter().map(|(k, v)| (Arc::from(*k), v.clone())).collect())
    }

    #[test]
    fn lsn_round_trips_through_postgres_text() {
        let lsn = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(lsn.0, 0x16_B374_D848);
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert_eq!(Lsn::parse("nope"), None);
    }

    #[test]
    fn event_json_has_the_documented_shape() {
        let table = Arc::new(TableName::parse("items"));
        let pos = Position {
            lsn: Lsn(0x1A2B3B00),
            commit_lsn: Lsn(0x1A2B3C4D),
            seq: 3,
            xid: 751,
            committed_at_us: 1_795_545_000_123_456,
        };
        let e = Event::new(
            Op::Update,
            table,
            Some(row(&[("id", Value::Int(7))])),
            Some(row(&[
                ("id", Value::Int(7)),
                ("title", Value::String("a".into())),
                ("price", Value::Number("1.50".into())),
            ])),
            Some(row(&[
                ("id", Value::Int(7)),
                ("title", Value::String("b".into())),
                ("price", Value::Number("1.50".into())),
                ("body", Value::UnchangedToast),
            ])),
            Some(vec![Arc::from("title")]),
            pos,
        );
        let json: serde_json::Value = serde_json::from_slice(e.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id":"0/1A2B3C4D:3","op":"update","schema":"public","table":"items","key":{"id":7},
                "old":{"id":7,"title":"a","price":1.50},"new":{"id":7,"title":"b","price":1.50},
                "changed":["title"],"unchanged_toast":["body"],"lsn":"0/1A2B3B00","commit_lsn":"0/1A2B3C4D","xid":751,
                "committed_at":"2026-11-24T18:30:00.123456Z"})
        );
        // numeric digits are kept exactly as Postgres printed them
        assert!(std::str::from_utf8(e.to_json()).unwrap().contains("\"price\":1.50"));
    }
}
