//! Actions → a batch → one bulk request body.
//!
//! A batch holds at most one action per document: a later change to the same document replaces
//! the earlier one (its version is the same or higher, and it is what the table now says), so a
//! burst of edits to one row costs one write.

use std::collections::HashMap;

use bytes::Bytes;

use super::encoder::{write_bulk_lines, Action, DocKey};

#[derive(Default)]
pub struct Batch {
    actions: Vec<Action>,
    positions: HashMap<DocKey, usize>,
    bytes: usize,
    /// Changes that were coalesced away (for the stats).
    pub coalesced: u64,
}

impl Batch {
    pub fn push(&mut self, action: Action) {
        self.bytes += action.size();
        match self.positions.get(&action.doc) {
            Some(&i) => {
                self.bytes -= self.actions[i].size();
                self.actions[i] = action;
                self.coalesced += 1;
            }
            None => {
                self.positions.insert(action.doc.clone(), self.actions.len());
                self.actions.push(action);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.actions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The documents this batch writes.
    pub fn docs(&self) -> impl Iterator<Item = &DocKey> {
        self.positions.keys()
    }

    /// Empties the batch, returning its actions.
    pub fn take(&mut self) -> Vec<Action> {
        self.positions.clear();
        self.bytes = 0;
        std::mem::take(&mut self.actions)
    }
}

/// The `_bulk` body for `actions`, in order (the response's items follow the same order).
pub fn build(actions: &[Action]) -> Bytes {
    let mut buf = Vec::with_capacity(actions.iter().map(Action::size).sum());
    for action in actions {
        write_bulk_lines(&mut buf, action);
    }
    Bytes::from(buf)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::event::{Event, Lsn, Op, Position, TableName};
    use crate::sinks::search::encoder::Write;

    fn action(id: &str, version: u64, write: Write) -> Action {
        let position = Position {
            commit_lsn: Lsn(version),
            ..Position::default()
        };
        let event = Arc::new(Event::new(
            Op::Create,
            Arc::new(TableName::parse("t")),
            None,
            None,
            None,
            None,
            position,
        ));
        Action {
            doc: DocKey {
                index: Arc::from("t"),
                id: id.into(),
            },
            version,
            write,
            event,
        }
    }

    #[test]
    fn several_changes_to_one_document_coalesce_to_the_last() {
        let mut batch = Batch::default();
        batch.push(action("1", 10, Write::Index(b"{\"v\":1}".to_vec())));
        batch.push(action("2", 10, Write::Index(b"{\"v\":1}".to_vec())));
        batch.push(action("1", 11, Write::Index(b"{\"v\":2}".to_vec())));
        batch.push(action("2", 12, Write::Delete));
        assert_eq!(batch.len(), 2);
        assert_eq!(batch.coalesced, 2);
        let body = build(&batch.take());
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            "{\"index\":{\"_index\":\"t\",\"_id\":\"1\",\"version\":11,\"version_type\":\"external_gte\"}}\n{\"v\":2}\n\
             {\"delete\":{\"_index\":\"t\",\"_id\":\"2\",\"version\":12,\"version_type\":\"external_gte\"}}\n"
        );
        assert!(batch.is_empty());
        assert_eq!(batch.bytes(), 0);
    }

    #[test]
    fn the_byte_count_follows_replacements() {
        let mut batch = Batch::default();
        batch.push(action("1", 10, Write::Index(vec![b' '; 1000])));
        let big = batch.bytes();
        batch.push(action("1", 11, Write::Delete));
        assert_eq!(big - batch.bytes(), 1000);
    }
}
