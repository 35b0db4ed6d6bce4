//! The pgoutput wire format: one logical replication message (the payload of an XLogData
//! frame) → a struct borrowing from the message bytes.
//!
//! Covers protocol version 1 as documented in PostgreSQL's "Logical Replication Message
//! Formats": Begin, Commit, Origin, Relation, Type, Insert, Update, Delete, Truncate and
//! logical decoding messages. Streaming (v2+) and two-phase (v3+) messages are never requested
//! by cdc and decode as unknown tags.
//!
//! It is hand-written because nothing else does the job: pgwire-replication, the replication
//! client cdc uses, decodes only the Begin/Commit/Message boundaries and forwards every change
//! message as raw bytes, and no maintained crate decodes pgoutput into borrowed structs. The
//! decoder sits on the hot path (hundreds of thousands of messages a second on one core), so
//! names and values are slices of the message and a tuple costs one allocation, for its cells.
//!
//! Malformed input is an error, never a panic: every length is checked before it is used, and
//! a message must be consumed exactly, so a misunderstanding of the format (say, a protocol
//! version mismatch) shows up as an error rather than as garbage values.

use std::fmt;

use crate::event::Lsn;

/// One decoded pgoutput message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    Begin {
        /// The LSN of the transaction's commit record.
        final_lsn: Lsn,
        /// Microseconds since 2000-01-01 (Postgres' epoch).
        commit_time: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        /// The end of the commit record: the position to confirm once the transaction is done.
        end_lsn: Lsn,
        /// Microseconds since 2000-01-01 (Postgres' epoch).
        commit_time: i64,
    },
    Origin {
        commit_lsn: Lsn,
        name: &'a str,
    },
    Relation(Relation<'a>),
    Type {
        oid: u32,
        namespace: &'a str,
        name: &'a str,
    },
    Insert {
        relation: u32,
        new: TupleData<'a>,
    },
    Update {
        relation: u32,
        /// Sent only when the key changed (`Key`) or the table has REPLICA IDENTITY FULL (`Full`).
        old: Option<OldTuple<'a>>,
        new: TupleData<'a>,
    },
    Delete {
        relation: u32,
        old: OldTuple<'a>,
    },
    Truncate {
        cascade: bool,
        restart_identity: bool,
        relations: Vec<u32>,
    },
    /// `pg_logical_emit_message`.
    LogicalMessage {
        transactional: bool,
        lsn: Lsn,
        prefix: &'a str,
        content: &'a [u8],
    },
}

/// A table's description, sent before its first change in a session and after schema changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation<'a> {
    pub oid: u32,
    /// Empty for `pg_catalog`.
    pub namespace: &'a str,
    pub name: &'a str,
    /// The replica identity setting: b'd' default, b'n' nothing, b'f' full, b'i' index.
    pub replica_identity: u8,
    pub columns: Vec<RelationColumn<'a>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationColumn<'a> {
    /// Part of the replica identity (the key sent with updates and deletes).
    pub is_key: bool,
    pub name: &'a str,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// A row's column values, in table order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TupleData<'a> {
    pub cells: Vec<Cell<'a>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell<'a> {
    Null,
    /// A TOASTed value that did not change; Postgres does not send it.
    UnchangedToast,
    /// The type's text output.
    Text(&'a [u8]),
    /// The type's binary send form (only with the `binary` option, which cdc does not use).
    Binary(&'a [u8]),
}

/// The row before an update or delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OldTuple<'a> {
    pub kind: OldKind,
    pub tuple: TupleData<'a>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OldKind {
    /// 'K': only the replica identity columns are set, the others are NULL.
    Key,
    /// 'O': the whole old row (REPLICA IDENTITY FULL).
    Full,
}

/// Why a message could not be decoded. `tag` is the message's first byte.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty pgoutput message")]
    Empty,
    #[error("unknown pgoutput message tag {}", ShowByte(*.0))]
    UnknownTag(u8),
    #[error("pgoutput message {} is truncated: it ends inside {what}", ShowByte(*tag))]
    Truncated { tag: u8, what: &'static str },
    #[error("pgoutput message {}: {what} is not valid UTF-8", ShowByte(*tag))]
    BadUtf8 { tag: u8, what: &'static str },
    #[error("pgoutput message {}: unexpected byte {} for {what}", ShowByte(*tag), ShowByte(*found))]
    UnexpectedByte { tag: u8, what: &'static str, found: u8 },
    #[error("pgoutput message {}: negative length {len} for {what}", ShowByte(*tag))]
    NegativeLength { tag: u8, what: &'static str, len: i32 },
    #[error("pgoutput message {} has {count} unexpected trailing bytes", ShowByte(*tag))]
    TrailingBytes { tag: u8, count: usize },
}

/// A tag byte as a quoted character when printable, else as hex.
struct ShowByte(u8);

impl fmt::Display for ShowByte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_ascii_graphic() || self.0 == b' ' {
            write!(f, "'{}'", self.0 as char)
        } else {
            write!(f, "0x{:02X}", self.0)
        }
    }
}

/// Decodes one pgoutput message (protocol version 1).
pub fn decode(data: &[u8]) -> Result<Message<'_>, DecodeError> {
    let (&tag, rest) = data.split_first().ok_or(DecodeError::Empty)?;
    let mut r = Reader { rest, tag };
    let msg = match tag {
        b'B' => Message::Begin {
            final_lsn: r.lsn("the final LSN")?,
            commit_time: r.i64("the commit time")?,
            xid: r.u32("the xid")?,
        },
        b'C' => Message::Commit {
            flags: r.u8("the flags")?,
            commit_lsn: r.lsn("the commit LSN")?,
            end_lsn: r.lsn("the end LSN")?,
            commit_time: r.i64("the commit time")?,
        },
        b'O' => Message::Origin {
            commit_lsn: r.lsn("the origin's commit LSN")?,
            name: r.str("the origin name")?,
        },
        b'R' => Message::Relation(r.relation()?),
        b'Y' => Message::Type {
            oid: r.u32("the type OID")?,
            namespace: r.str("the type namespace")?,
            name: r.str("the type name")?,
        },
        b'I' => {
            let relation = r.u32("the relation OID")?;
            r.expect(b'N', "the new tuple marker")?;
            Message::Insert {
                relation,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation = r.u32("the relation OID")?;
            let old = match r.u8("the tuple marker")? {
                b'N' => None,
                marker => {
                    let old = r.old_tuple(marker)?;
                    r.expect(b'N', "the new tuple marker")?;
                    Some(old)
                }
            };
            Message::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32("the relation OID")?;
            let marker = r.u8("the old tuple marker")?;
            Message::Delete {
                relation,
                old: r.old_tuple(marker)?,
            }
        }
        b'T' => {
            let count = r.u32("the relation count")? as usize;
            let options = r.u8("the options")?;
            // Capped by what the message can hold, so a corrupt count cannot reserve gigabytes.
            let mut relations = Vec::with_capacity(count.min(r.rest.len() / 4));
            for _ in 0..count {
                relations.push(r.u32("a truncated relation's OID")?);
            }
            Message::Truncate {
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
                relations,
            }
        }
        b'M' => {
            let transactional = r.u8("the flags")? & 1 != 0;
            let lsn = r.lsn("the message LSN")?;
            let prefix = r.str("the message prefix")?;
            let len = r.len("the message content")?;
            Message::LogicalMessage {
                transactional,
                lsn,
                prefix,
                content: r.take(len, "the message content")?,
            }
        }
        _ => return Err(DecodeError::UnknownTag(tag)),
    };
    r.finish()?;
    Ok(msg)
}

/// A cursor over the bytes after the tag; `what` names the field for error messages.
struct Reader<'a> {
    rest: &'a [u8],
    tag: u8,
}

impl<'a> Reader<'a> {
    fn truncated(&self, what: &'static str) -> DecodeError {
        DecodeError::Truncated { tag: self.tag, what }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(self.truncated(what));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let (head, tail) = self.rest.split_first_chunk::<N>().ok_or(self.truncated(what))?;
        self.rest = tail;
        Ok(*head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    fn lsn(&mut self, what: &'static str) -> Result<Lsn, DecodeError> {
        Ok(Lsn(u64::from_be_bytes(self.array(what)?)))
    }

    /// An Int32 byte count.
    fn len(&mut self, what: &'static str) -> Result<usize, DecodeError> {
        let len = self.i32(what)?;
        usize::try_from(len).map_err(|_| DecodeError::NegativeLength {
            tag: self.tag,
            what,
            len,
        })
    }

    /// A NUL-terminated string.
    fn str(&mut self, what: &'static str) -> Result<&'a str, DecodeError> {
        let nul = self.rest.iter().position(|&b| b == 0).ok_or(self.truncated(what))?;
        let s = std::str::from_utf8(&self.rest[..nul]).map_err(|_| DecodeError::BadUtf8 { tag: self.tag, what })?;
        self.rest = &self.rest[nul + 1..];
        Ok(s)
    }

    fn expect(&mut self, byte: u8, what: &'static str) -> Result<(), DecodeError> {
        match self.u8(what)? {
            b if b == byte => Ok(()),
            found => Err(DecodeError::UnexpectedByte {
                tag: self.tag,
                what,
                found,
            }),
        }
    }

    fn relation(&mut self) -> Result<Relation<'a>, DecodeError> {
        let oid = self.u32("the relation OID")?;
        let namespace = self.str("the relation namespace")?;
        let name = self.str("the relation name")?;
        let replica_identity = self.u8("the replica identity")?;
        let count = self.u16("the column count")? as usize;
        // Each column takes at least 10 bytes (flags, NUL, type OID, modifier).
        let mut columns = Vec::with_capacity(count.min(self.rest.len() / 10));
        for _ in 0..count {
            columns.push(RelationColumn {
                is_key: self.u8("a column's flags")? & 1 != 0,
                name: self.str("a column name")?,
                type_oid: self.u32("a column's type OID")?,
                type_modifier: self.i32("a column's type modifier")?,
            });
        }
        Ok(Relation {
            oid,
            namespace,
            name,
            replica_identity,
            columns,
        })
    }

    fn old_tuple(&mut self, marker: u8) -> Result<OldTuple<'a>, DecodeError> {
        let kind = match marker {
            b'K' => OldKind::Key,
            b'O' => OldKind::Full,
            found => {
                return Err(DecodeError::UnexpectedByte {
                    tag: self.tag,
                    what: "the old tuple marker",
                    found,
                })
            }
        };
        Ok(OldTuple {
            kind,
            tuple: self.tuple()?,
        })
    }

    fn tuple(&mut self) -> Result<TupleData<'a>, DecodeError> {
        let count = self.u16("the tuple's column count")? as usize;
        // Each cell takes at least its kind byte.
        let mut cells = Vec::with_capacity(count.min(self.rest.len()));
        for _ in 0..count {
            let cell = match self.u8("a cell's kind")? {
                b'n' => Cell::Null,
                b'u' => Cell::UnchangedToast,
                b't' => {
                    let len = self.len("a text value's length")?;
                    Cell::Text(self.take(len, "a text value")?)
                }
                b'b' => {
                    let len = self.len("a binary value's length")?;
                    Cell::Binary(self.take(len, "a binary value")?)
                }
                found => {
                    return Err(DecodeError::UnexpectedByte {
                        tag: self.tag,
                        what: "a cell's kind",
                        found,
                    })
                }
            };
            cells.push(cell);
        }
        Ok(TupleData { cells })
    }

    fn finish(self) -> Result<(), DecodeError> {
        match self.rest.len() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes { tag: self.tag, count }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds messages per "Logical Replication Message Formats" in the PostgreSQL docs.
    #[derive(Default)]
    struct Enc(Vec<u8>);

    impl Enc {
        fn tag(tag: u8) -> Enc {
            Enc(vec![tag])
        }
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn i16(mut self, v: i16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i64(mut self, v: i64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn string(mut self, s: &str) -> Self {
            self.0.extend_from_slice(s.as_bytes());
            self.0.push(0);
            self
        }
        fn bytes(mut self, b: &[u8]) -> Self {
            self.0.extend_from_slice(b);
            self
        }
        /// TupleData: Int16 column count, then per column a kind byte and, for 't'/'b', an
        /// Int32 length and the bytes.
        fn tuple(mut self, cells: &[Cell<'_>]) -> Self {
            self = self.i16(cells.len() as i16);
            for cell in cells {
                self = match *cell {
                    Cell::Null => self.u8(b'n'),
                    Cell::UnchangedToast => self.u8(b'u'),
                    Cell::Text(t) => self.u8(b't').i32(t.len() as i32).bytes(t),
                    Cell::Binary(b) => self.u8(b'b').i32(b.len() as i32).bytes(b),
                };
            }
            self
        }
    }

    fn t(s: &str) -> Cell<'_> {
        Cell::Text(s.as_bytes())
    }

    fn begin() -> Vec<u8> {
        Enc::tag(b'B').i64(0x16_B374_D848).i64(817_000_000_123_456).i32(751).0
    }
    fn commit() -> Vec<u8> {
        Enc::tag(b'C')
            .u8(0)
            .i64(0x16_B374_D848)
            .i64(0x16_B374_D878)
            .i64(817_000_000_123_456)
            .0
    }
    fn origin_msg() -> Vec<u8> {
        Enc::tag(b'O').i64(0x1234).string("upstream").0
    }
    fn relation() -> Vec<u8> {
        Enc::tag(b'R')
            .i32(16_384)
            .string("public")
            .string("items")
            .u8(b'd')
            .i16(3)
            .u8(1)
            .string("id")
            .i32(23)
            .i32(-1)
            .u8(0)
            .string("title")
            .i32(1043)
            .i32(104)
            .u8(0)
            .string("prix_ü")
            .i32(1700)
            .i32(655_366)
            .0
    }
    fn type_msg() -> Vec<u8> {
        Enc::tag(b'Y').i32(90_001).string("public").string("mood").0
    }
    fn insert() -> Vec<u8> {
        Enc::tag(b'I')
            .i32(16_384)
            .u8(b'N')
            .tuple(&[t("7"), Cell::Null, t("1.50")])
            .0
    }
    fn update_plain() -> Vec<u8> {
        Enc::tag(b'U')
            .i32(16_384)
            .u8(b'N')
            .tuple(&[t("7"), t("b"), Cell::UnchangedToast])
            .0
    }
    fn update_key() -> Vec<u8> {
        Enc::tag(b'U')
            .i32(16_384)
            .u8(b'K')
            .tuple(&[t("7"), Cell::Null, Cell::Null])
            .u8(b'N')
            .tuple(&[t("8"), t("b"), Cell::UnchangedToast])
            .0
    }
    fn update_full() -> Vec<u8> {
        Enc::tag(b'U')
            .i32(16_384)
            .u8(b'O')
            .tuple(&[t("7"), t("a"), t("1.50")])
            .u8(b'N')
            .tuple(&[t("7"), t("b"), t("1.50")])
            .0
    }
    fn delete_key() -> Vec<u8> {
        Enc::tag(b'D')
            .i32(16_384)
            .u8(b'K')
            .tuple(&[t("7"), Cell::Null, Cell::Null])
            .0
    }
    fn delete_full() -> Vec<u8> {
        Enc::tag(b'D')
            .i32(16_384)
            .u8(b'O')
            .tuple(&[t("7"), t("a"), Cell::Binary(&[0, 1, 2])])
            .0
    }
    fn truncate() -> Vec<u8> {
        Enc::tag(b'T').i32(2).u8(3).i32(16_384).i32(16_390).0
    }
    fn logical_msg() -> Vec<u8> {
        Enc::tag(b'M')
            .u8(1)
            .i64(0x1A2B_3C4D)
            .string("cdc")
            .i32(5)
            .bytes(b"hi\0\xFFx")
            .0
    }

    fn all_valid() -> Vec<Vec<u8>> {
        vec![
            begin(),
            commit(),
            origin_msg(),
            relation(),
            type_msg(),
            insert(),
            update_plain(),
            update_key(),
            update_full(),
            delete_key(),
            delete_full(),
            truncate(),
            logical_msg(),
            // an empty tuple and an empty relation are valid too
            Enc::tag(b'I').i32(1).u8(b'N').tuple(&[]).0,
            Enc::tag(b'R').i32(1).string("").string("t").u8(b'n').i16(0).0,
        ]
    }

    #[test]
    fn begin_and_commit() {
        assert_eq!(
            decode(&begin()).unwrap(),
            Message::Begin {
                final_lsn: Lsn(0x16_B374_D848),
                commit_time: 817_000_000_123_456,
                xid: 751
            }
        );
        assert_eq!(
            decode(&commit()).unwrap(),
            Message::Commit {
                flags: 0,
                commit_lsn: Lsn(0x16_B374_D848),
                end_lsn: Lsn(0x16_B374_D878),
                commit_time: 817_000_000_123_456
            }
        );
    }

    #[test]
    fn xid_and_lsn_use_the_full_unsigned_range() {
        let msg = Enc::tag(b'B').i64(-1).i64(-5).i32(-1).0;
        assert_eq!(
            decode(&msg).unwrap(),
            Message::Begin {
                final_lsn: Lsn(u64::MAX),
                commit_time: -5,
                xid: u32::MAX
            }
        );
    }

    #[test]
    fn origin() {
        assert_eq!(
            decode(&origin_msg()).unwrap(),
            Message::Origin {
                commit_lsn: Lsn(0x1234),
                name: "upstream"
            }
        );
    }

    #[test]
    fn relation_with_key_flags() {
        let msg = relation();
        let Message::Relation(rel) = decode(&msg).unwrap() else {
            panic!("not a relation")
        };
        assert_eq!(rel.oid, 16_384);
        assert_eq!(
            (rel.namespace, rel.name, rel.replica_identity),
            ("public", "items", b'd')
        );
        assert_eq!(
            rel.columns,
            vec![
                RelationColumn {
                    is_key: true,
                    name: "id",
                    type_oid: 23,
                    type_modifier: -1
                },
                RelationColumn {
                    is_key: false,
                    name: "title",
                    type_oid: 1043,
                    type_modifier: 104
                },
                RelationColumn {
                    is_key: false,
                    name: "prix_ü",
                    type_oid: 1700,
                    type_modifier: 655_366
                },
            ]
        );
    }

    #[test]
    fn relation_in_pg_catalog_has_an_empty_namespace_and_other_identities() {
        for identity in [b'n', b'f', b'i'] {
            let msg = Enc::tag(b'R')
                .i32(1)
                .string("")
                .string("t")
                .u8(identity)
                .i16(1)
                .u8(3)
                .string("c")
                .i32(25)
                .i32(-1)
                .0;
            let Message::Relation(rel) = decode(&msg).unwrap() else {
                panic!("not a relation")
            };
            assert_eq!((rel.namespace, rel.replica_identity), ("", identity));
            // only bit 1 of the flags means "key"
            assert!(rel.columns[0].is_key);
        }
    }

    #[test]
    fn type_message() {
        assert_eq!(
            decode(&type_msg()).unwrap(),
            Message::Type {
                oid: 90_001,
                namespace: "public",
                name: "mood"
            }
        );
    }

    #[test]
    fn insert_with_null_cells() {
        assert_eq!(
            decode(&insert()).unwrap(),
            Message::Insert {
                relation: 16_384,
                new: TupleData {
                    cells: vec![t("7"), Cell::Null, t("1.50")]
                }
            }
        );
    }

    #[test]
    fn text_values_may_be_empty_or_hold_any_bytes() {
        let msg = Enc::tag(b'I')
            .i32(1)
            .u8(b'N')
            .tuple(&[Cell::Text(b""), Cell::Text(b"\0\xFF\n")])
            .0;
        let Message::Insert { new, .. } = decode(&msg).unwrap() else {
            panic!("not an insert")
        };
        assert_eq!(new.cells, vec![Cell::Text(b""), Cell::Text(b"\0\xFF\n")]);
    }

    #[test]
    fn update_without_old_tuple_keeps_unchanged_toast() {
        assert_eq!(
            decode(&update_plain()).unwrap(),
            Message::Update {
                relation: 16_384,
                old: None,
                new: TupleData {
                    cells: vec![t("7"), t("b"), Cell::UnchangedToast]
                }
            }
        );
    }

    #[test]
    fn update_with_key_old_tuple() {
        assert_eq!(
            decode(&update_key()).unwrap(),
            Message::Update {
                relation: 16_384,
                old: Some(OldTuple {
                    kind: OldKind::Key,
                    tuple: TupleData {
                        cells: vec![t("7"), Cell::Null, Cell::Null]
                    }
                }),
                new: TupleData {
                    cells: vec![t("8"), t("b"), Cell::UnchangedToast]
                },
            }
        );
    }

    #[test]
    fn update_with_full_old_tuple() {
        assert_eq!(
            decode(&update_full()).unwrap(),
            Message::Update {
                relation: 16_384,
                old: Some(OldTuple {
                    kind: OldKind::Full,
                    tuple: TupleData {
                        cells: vec![t("7"), t("a"), t("1.50")]
                    }
                }),
                new: TupleData {
                    cells: vec![t("7"), t("b"), t("1.50")]
                },
            }
        );
    }

    #[test]
    fn delete_with_key_and_with_full_old_tuple() {
        assert_eq!(
            decode(&delete_key()).unwrap(),
            Message::Delete {
                relation: 16_384,
                old: OldTuple {
                    kind: OldKind::Key,
                    tuple: TupleData {
                        cells: vec![t("7"), Cell::Null, Cell::Null]
                    }
                }
            }
        );
        assert_eq!(
            decode(&delete_full()).unwrap(),
            Message::Delete {
                relation: 16_384,
                old: OldTuple {
                    kind: OldKind::Full,
                    tuple: TupleData {
                        cells: vec![t("7"), t("a"), Cell::Binary(&[0, 1, 2])]
                    }
                }
            }
        );
    }

    #[test]
    fn truncate_with_two_relations_and_both_flags() {
        assert_eq!(
            decode(&truncate()).unwrap(),
            Message::Truncate {
                cascade: true,
                restart_identity: true,
                relations: vec![16_384, 16_390]
            }
        );
        for (options, cascade, restart_identity) in [(0, false, false), (1, true, false), (2, false, true)] {
            let msg = Enc::tag(b'T').i32(1).u8(options).i32(5).0;
            assert_eq!(
                decode(&msg).unwrap(),
                Message::Truncate {
                    cascade,
                    restart_identity,
                    relations: vec![5]
                }
            );
        }
    }

    #[test]
    fn logical_message() {
        assert_eq!(
            decode(&logical_msg()).unwrap(),
            Message::LogicalMessage {
                transactional: true,
                lsn: Lsn(0x1A2B_3C4D),
                prefix: "cdc",
                content: b"hi\0\xFFx"
            }
        );
        let msg = Enc::tag(b'M').u8(0).i64(1).string("p").i32(0).0;
        assert_eq!(
            decode(&msg).unwrap(),
            Message::LogicalMessage {
                transactional: false,
                lsn: Lsn(1),
                prefix: "p",
                content: b""
            }
        );
    }

    #[test]
    fn errors_name_what_went_wrong() {
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
        assert_eq!(
            decode(b"Z").unwrap_err().to_string(),
            "unknown pgoutput message tag 'Z'"
        );
        assert_eq!(
            decode(&[0x01]).unwrap_err().to_string(),
            "unknown pgoutput message tag 0x01"
        );
        assert_eq!(
            decode(&begin()[..10]).unwrap_err().to_string(),
            "pgoutput message 'B' is truncated: it ends inside the commit time"
        );
        let bad_name = Enc::tag(b'Y').i32(1).string("public").bytes(b"m\xFFd\0").0;
        assert_eq!(
            decode(&bad_name),
            Err(DecodeError::BadUtf8 {
                tag: b'Y',
                what: "the type name"
            })
        );
        let bad_cell = Enc::tag(b'I').i32(1).u8(b'N').i16(1).u8(b'x').0;
        assert_eq!(
            decode(&bad_cell).unwrap_err().to_string(),
            "pgoutput message 'I': unexpected byte 'x' for a cell's kind"
        );
        let bad_marker = Enc::tag(b'D').i32(1).u8(b'N').tuple(&[]).0;
        assert!(matches!(
            decode(&bad_marker),
            Err(DecodeError::UnexpectedByte {
                tag: b'D',
                found: b'N',
                ..
            })
        ));
        let no_new = Enc::tag(b'U').i32(1).u8(b'K').tuple(&[]).u8(b'K').tuple(&[]).0;
        assert!(matches!(
            decode(&no_new),
            Err(DecodeError::UnexpectedByte {
                tag: b'U',
                found: b'K',
                ..
            })
        ));
        let negative = Enc::tag(b'I').i32(1).u8(b'N').i16(1).u8(b't').i32(-1).0;
        assert_eq!(
            decode(&negative),
            Err(DecodeError::NegativeLength {
                tag: b'I',
                what: "a text value's length",
                len: -1
            })
        );
        let mut trailing = commit();
        trailing.push(0);
        assert_eq!(
            decode(&trailing).unwrap_err().to_string(),
            "pgoutput message 'C' has 1 unexpected trailing bytes"
        );
    }

    #[test]
    fn every_truncated_prefix_is_an_error() {
        for msg in all_valid() {
            decode(&msg).unwrap();
            for end in 0..msg.len() {
                assert!(decode(&msg[..end]).is_err(), "prefix {end} of {msg:?} decoded");
            }
        }
    }

    #[test]
    fn huge_counts_fail_without_reserving_memory() {
        let msg = Enc::tag(b'T').i32(i32::MAX).u8(0).i32(1).0;
        assert!(matches!(decode(&msg), Err(DecodeError::Truncated { tag: b'T', .. })));
        let msg = Enc::tag(b'I').i32(1).u8(b'N').i16(-1).0;
        assert!(matches!(decode(&msg), Err(DecodeError::Truncated { tag: b'I', .. })));
        let msg = Enc::tag(b'M').u8(0).i64(1).string("p").i32(i32::MAX).0;
        assert!(matches!(decode(&msg), Err(DecodeError::Truncated { tag: b'M', .. })));
    }

    /// xorshift64*: deterministic noise without a dependency.
    struct Noise(u64);

    impl Noise {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
    }

    #[test]
    fn random_and_corrupted_input_never_panics() {
        let mut noise = Noise(0x9E37_79B9_7F4A_7C15);
        let tags = b"BCORYIUDTMZ";
        for _ in 0..20_000 {
            let len = (noise.next() % 64) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| noise.next() as u8).collect();
            if let Some(first) = buf.first_mut() {
                *first = tags[(noise.next() % tags.len() as u64) as usize];
            }
            let _ = decode(&buf);
        }
        for msg in all_valid() {
            for _ in 0..2_000 {
                let mut corrupt = msg.clone();
                for _ in 0..1 + noise.next() % 3 {
                    let i = (noise.next() % corrupt.len() as u64) as usize;
                    corrupt[i] = noise.next() as u8;
                }
                let _ = decode(&corrupt);
            }
        }
    }
}
