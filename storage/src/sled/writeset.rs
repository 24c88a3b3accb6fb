//! A write set: the puts and deletes of one mutating request, in order. It is the payload
//! of the request's journal record and what is applied to sled, live and at replay, with
//! single-key operations. Applying a write set twice, or applying a suffix of the journal
//! over a state that already holds some of it, ends in the same state: every operation
//! sets a key to a value or removes it.
//!
//! ```text
//! write set := op*        op := 1 key_len:2 key val_len:4 val   (put)
//!                               | 2 key_len:2 key               (delete)
//! ```

use crate::StoreError;

const PUT: u8 = 1;
const DEL: u8 = 2;

/// Puts and deletes, encoded as they are added.
#[derive(Debug, Default, Clone)]
pub(super) struct WriteSet {
    bytes: Vec<u8>,
    ops: usize,
}

impl WriteSet {
    pub(super) fn put(&mut self, key: &[u8], value: &[u8]) {
        self.bytes.reserve(7 + key.len() + value.len());
        self.bytes.push(PUT);
        self.bytes.extend_from_slice(&(key.len() as u16).to_le_bytes());
        self.bytes.extend_from_slice(key);
        self.bytes.extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(value);
        self.ops += 1;
    }

    /// A put whose value (`len` bytes) `fill` writes straight into the record, with no
    /// intermediate copy.
    pub(super) fn put_with(&mut self, key: &[u8], len: usize, fill: impl FnOnce(&mut Vec<u8>)) {
        self.bytes.reserve(7 + key.len() + len);
        self.bytes.push(PUT);
        self.bytes.extend_from_slice(&(key.len() as u16).to_le_bytes());
        self.bytes.extend_from_slice(key);
        self.bytes.extend_from_slice(&(len as u32).to_le_bytes());
        let start = self.bytes.len();
        fill(&mut self.bytes);
        debug_assert_eq!(
            self.bytes.len() - start,
            len,
            "put_with: the value has the announced length"
        );
        self.ops += 1;
    }

    pub(super) fn del(&mut self, key: &[u8]) {
        self.bytes.push(DEL);
        self.bytes.extend_from_slice(&(key.len() as u16).to_le_bytes());
        self.bytes.extend_from_slice(key);
        self.ops += 1;
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ops == 0
    }

    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// One operation of an encoded write set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op<'a> {
    Put(&'a [u8], &'a [u8]),
    Del(&'a [u8]),
}

/// The operations of an encoded write set; a malformed one is refused whole before any
/// operation is applied.
pub(super) fn decode(bytes: &[u8]) -> Result<Vec<Op<'_>>, StoreError> {
    let bad = || StoreError::Corrupt("journal write set");
    let mut ops = Vec::new();
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> Result<&[u8], StoreError> {
        let s = bytes.get(*at..*at + n).ok_or_else(bad)?;
        *at += n;
        Ok(s)
    };
    while at < bytes.len() {
        let tag = take(&mut at, 1)?[0];
        let klen = u16::from_le_bytes(take(&mut at, 2)?.try_into().map_err(|_| bad())?) as usize;
        let key = take(&mut at, klen)?;
        match tag {
            PUT => {
                let vlen = u32::from_le_bytes(take(&mut at, 4)?.try_into().map_err(|_| bad())?) as usize;
                ops.push(Op::Put(key, take(&mut at, vlen)?));
            }
            DEL => ops.push(Op::Del(key)),
            _ => return Err(bad()),
        }
    }
    Ok(ops)
}

/// Applies an encoded write set to `tree`, one key at a time.
pub(super) fn apply(tree: &sled::Tree, bytes: &[u8]) -> Result<(), StoreError> {
    for op in decode(bytes)? {
        match op {
            Op::Put(k, v) => tree.insert(k, v).map(drop),
            Op::Del(k) => tree.remove(k).map(drop),
        }
        .map_err(super::layout::backend)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn round_trip_in_order() {
        let mut ws = WriteSet::default();
        ws.put(b"a", b"1");
        ws.del(b"b");
        ws.put(b"", &[7; 300]);
        assert_eq!(
            decode(ws.as_bytes()).unwrap(),
            [Op::Put(b"a", b"1"), Op::Del(b"b"), Op::Put(b"", &[7; 300])]
        );
        assert!(decode(&ws.as_bytes()[..ws.as_bytes().len() - 1]).is_err());
        assert!(decode(&[9, 0, 0]).is_err());
        assert!(WriteSet::default().is_empty());
    }

    #[test]
    fn applying_twice_ends_in_the_same_state() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("t").unwrap();
        let mut ws = WriteSet::default();
        ws.put(b"k", b"v1");
        ws.put(b"k", b"v2");
        ws.put(b"gone", b"x");
        ws.del(b"gone");
        apply(&tree, ws.as_bytes()).unwrap();
        apply(&tree, ws.as_bytes()).unwrap();
        assert_eq!(tree.get(b"k").unwrap().as_deref(), Some(&b"v2"[..]));
        assert_eq!(tree.get(b"gone").unwrap(), None);
        assert_eq!(tree.len(), 1);
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = decode(&bytes);
        }
    }
}
