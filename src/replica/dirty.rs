//! The dirty set: blocks whose latest value the peer has not durably
//! confirmed (DRBD's out-of-sync bitmap plus its activity log in one).
//!
//! Invariant: a block leaves the set only when the peer durably
//! acknowledges a batch that carried the block's *latest* value. Each mark
//! gets a fresh *stamp*; a batch remembers the stamps it carried, and an
//! acknowledgement removes a block only if its stamp is unchanged. A block
//! rewritten while its previous value was in flight therefore stays dirty.
//!
//! Each entry also records what currently *covers* it: nothing (resync
//! must send it), a pending map read for a resync batch, or a batch in
//! flight. On disconnect every cover is dropped, because unacknowledged
//! batches die with the connection.
//!
//! Only the keys are persistent (stamps and covers are per process); the
//! persisted form is run-length encoded ([`super::rle_encode`]).
//!
//! Depends on the shared types in `replica` only.

use super::{BlockKey, BlockRange, Guid, rle_encode};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

/// What currently takes care of shipping a dirty block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cover {
    /// Nobody: resync must send it.
    None,
    /// A resync map read with this request id is pending.
    Reading(u64),
    /// A batch with this number carries the latest value.
    Batch(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    stamp: u64,
    cover: Cover,
}

#[derive(Debug, Clone, Default)]
pub struct DirtySet {
    map: BTreeMap<BlockKey, Entry>,
    next_stamp: u64,
}

impl DirtySet {
    pub fn new() -> DirtySet {
        DirtySet::default()
    }

    /// Rebuild from the persisted ranges (nothing covers them).
    pub fn from_ranges(ranges: &[BlockRange]) -> DirtySet {
        let mut s = DirtySet::new();
        s.add_ranges(ranges);
        s
    }

    /// Add ranges (a peer's dirty set, a verify mismatch, a full scan).
    pub fn add_ranges(&mut self, ranges: &[BlockRange]) {
        for r in ranges {
            for k in r.keys() {
                self.mark(k, Cover::None);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn contains(&self, k: &BlockKey) -> bool {
        self.map.contains_key(k)
    }

    /// Mark a block as changed; returns (stamp, newly added). A newly
    /// added block must be persisted before the change can be lost.
    pub fn mark(&mut self, key: BlockKey, cover: Cover) -> (u64, bool) {
        self.next_stamp += 1;
        let stamp = self.next_stamp;
        let fresh = self.map.insert(key, Entry { stamp, cover }).is_none();
        (stamp, fresh)
    }

    pub fn cover_of(&self, key: &BlockKey) -> Option<Cover> {
        self.map.get(key).map(|e| e.cover)
    }

    pub fn stamp(&self, key: &BlockKey) -> Option<u64> {
        self.map.get(key).map(|e| e.stamp)
    }

    /// Set the cover of a block if it still has `stamp`.
    pub fn cover(&mut self, key: &BlockKey, stamp: u64, cover: Cover) -> bool {
        match self.map.get_mut(key) {
            Some(e) if e.stamp == stamp => {
                e.cover = cover;
                true
            }
            _ => false,
        }
    }

    /// The peer durably holds the value of `key` carried at `stamp`.
    pub fn confirm(&mut self, key: &BlockKey, stamp: u64) -> bool {
        if self.map.get(key).is_some_and(|e| e.stamp == stamp) {
            self.map.remove(key);
            true
        } else {
            false
        }
    }

    /// Drop every cover: the batches and reads died with the connection.
    pub fn uncover_all(&mut self) {
        for e in self.map.values_mut() {
            e.cover = Cover::None;
        }
    }

    /// Blocks nobody covers: what resync still has to send.
    pub fn uncovered(&self) -> usize {
        self.map.values().filter(|e| e.cover == Cover::None).count()
    }

    /// Blocks not yet confirmed by a resync or live batch ack, excluding
    /// those covered by a live batch in flight (`is_live`).
    pub fn to_go(&self, is_live: impl Fn(u64) -> bool) -> usize {
        self.map.values().filter(|e| !matches!(e.cover, Cover::Batch(b) if is_live(b))).count()
    }

    /// Up to `max` uncovered blocks in ascending order, starting after
    /// `cursor` and wrapping around once (resync order: linear, resumable).
    pub fn next_uncovered(&self, cursor: Option<BlockKey>, max: usize) -> Vec<(BlockKey, u64)> {
        let after = match cursor {
            Some(c) => self.map.range((Bound::Excluded(c), Bound::Unbounded)),
            None => self.map.range(..),
        };
        let before = match cursor {
            Some(c) => self.map.range(..=c),
            None => self.map.range(..BlockKey { layer: Guid::BLANK, block_no: 0 }),
        };
        after.chain(before).filter(|(_, e)| e.cover == Cover::None).take(max).map(|(k, e)| (*k, e.stamp)).collect()
    }

    /// The run-length encoded keys (the persisted / wire form).
    pub fn ranges(&self) -> Vec<BlockRange> {
        rle_encode(self.map.keys().copied())
    }

    /// Layers with dirty blocks.
    pub fn layers(&self) -> BTreeSet<Guid> {
        self.map.keys().map(|k| k.layer).collect()
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(b: u64) -> BlockKey {
        BlockKey { layer: Guid([1; 16]), block_no: b }
    }

    #[test]
    fn a_block_rewritten_in_flight_stays_dirty_after_the_old_ack() {
        let mut d = DirtySet::new();
        let (s1, fresh) = d.mark(k(1), Cover::Batch(1));
        assert!(fresh);
        let (s2, fresh) = d.mark(k(1), Cover::Batch(2));
        assert!(!fresh);
        assert!(!d.confirm(&k(1), s1));
        assert!(d.contains(&k(1)));
        assert!(d.confirm(&k(1), s2));
        assert!(d.is_empty());
    }

    #[test]
    fn resync_order_is_ascending_from_the_cursor_and_wraps() {
        let mut d = DirtySet::new();
        for b in [5, 1, 9, 3] {
            d.mark(k(b), Cover::None);
        }
        let got: Vec<u64> = d.next_uncovered(Some(k(3)), 10).iter().map(|(k, _)| k.block_no).collect();
        assert_eq!(got, vec![5, 9, 1, 3]);
        let first: Vec<u64> = d.next_uncovered(None, 2).iter().map(|(k, _)| k.block_no).collect();
        assert_eq!(first, vec![1, 3]);
    }
}
