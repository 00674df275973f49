//! The dedup index: MurmurHash3 signature → chunk id, a *hint* (every hit
//! is confirmed by BLAKE3 before sharing; reads never use it; it is rebuilt
//! from the chunk table at open).
//!
//! Memory: each entry is one 8-byte slot — the upper 32 bits are a
//! fingerprint of the signature, the lower 32 bits the chunk id — in an
//! open-addressing table with linear probing that grows by 1.5× when 7/8
//! full, so it stays between 7/12 and 7/8 full and an entry costs 9.1–13.7
//! bytes; the table is sharded 64 ways so writers rarely meet on a lock.
//! Slots are mapped with a multiply-shift ("fastrange"), so table sizes need
//! not be powers of two. A fingerprint collision
//! only costs a failed confirmation.
//!
//! Bounded memory (`max_entries`, 0 = unbounded): the index becomes a
//! *dedup window*, as VDO's: each shard keeps a current and a previous
//! generation; when the current one is full it becomes the previous one and
//! the old previous one is dropped. The newest writes are always indexed;
//! data older than the window is still stored and readable, it just no
//! longer deduplicates against new writes.
//!
//! Chunk ids at or above 2^32 are not indexed (they are stored normally).

use std::sync::Mutex;

const SHARDS: usize = 64;
const EMPTY: u64 = 0;
const MIN_SLOTS: usize = 64;

/// The stored fingerprint: 32 bits of the signature, independent of the
/// shard choice (top 6 bits); never 0 (0 marks an empty slot).
fn fp(murmur: u64) -> u64 {
    let f = (murmur >> 16) & 0xffff_ffff;
    if f == 0 { 1 } else { f }
}

/// An entry's home slot in a table of `n` slots, from its fingerprint
/// alone, so the table can be rehashed without keeping signatures.
fn home_of(f: u64, n: usize) -> usize {
    let h = f.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    ((h as u128 * n as u128) >> 64) as usize
}

#[derive(Default)]
struct Table {
    slots: Vec<u64>,
    len: usize,
}

impl Table {
    fn next(&self, i: usize) -> usize {
        if i + 1 == self.slots.len() { 0 } else { i + 1 }
    }

    fn find(&self, f: u64) -> Option<u64> {
        if self.slots.is_empty() {
            return None;
        }
        let mut i = home_of(f, self.slots.len());
        loop {
            let s = self.slots[i];
            if s == EMPTY {
                return None;
            }
            if s >> 32 == f {
                return Some(s & 0xffff_ffff);
            }
            i = self.next(i);
        }
    }

    fn insert(&mut self, slot: u64) {
        let f = slot >> 32;
        let mut i = home_of(f, self.slots.len());
        loop {
            let s = self.slots[i];
            if s == EMPTY {
                self.slots[i] = slot;
                self.len += 1;
                return;
            }
            if s >> 32 == f {
                // Same fingerprint: the newest chunk wins.
                self.slots[i] = slot;
                return;
            }
            i = self.next(i);
        }
    }

    fn resize(&mut self, n: usize) {
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; n]);
        self.len = 0;
        for s in old.into_iter().filter(|&s| s != EMPTY) {
            self.insert(s);
        }
    }

    /// Remove the entry with fingerprint `f` if it names `id`
    /// (backward-shift deletion: no tombstones).
    fn remove(&mut self, f: u64, id: u64) -> bool {
        if self.slots.is_empty() {
            return false;
        }
        let n = self.slots.len();
        let mut i = home_of(f, n);
        loop {
            let s = self.slots[i];
            if s == EMPTY {
                return false;
            }
            if s >> 32 == f {
                if s & 0xffff_ffff != id {
                    return false;
                }
                break;
            }
            i = self.next(i);
        }
        let mut hole = i;
        let mut j = self.next(i);
        loop {
            let s = self.slots[j];
            if s == EMPTY {
                break;
            }
            let h = home_of(s >> 32, n);
            // s may move into the hole unless its home lies in (hole, j].
            let stays = if hole <= j { h > hole && h <= j } else { h > hole || h <= j };
            if !stays {
                self.slots[hole] = s;
                hole = j;
            }
            j = self.next(j);
        }
        self.slots[hole] = EMPTY;
        self.len -= 1;
        true
    }
}

#[derive(Default)]
struct Shard {
    cur: Table,
    prev: Table,
}

/// The sharded index.
pub struct DedupIndex {
    shards: Vec<Mutex<Shard>>,
    /// Entries per shard generation before it turns over (0 = unbounded).
    cap_per_shard: usize,
}

impl DedupIndex {
    /// `max_entries` = 0: unbounded; else a window of about that many of
    /// the newest entries.
    pub fn new(max_entries: u64) -> DedupIndex {
        DedupIndex {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            cap_per_shard: if max_entries == 0 { 0 } else { ((max_entries as usize) / SHARDS / 2).max(MIN_SLOTS) },
        }
    }

    fn shard(&self, murmur: u64) -> std::sync::MutexGuard<'_, Shard> {
        self.shards[(murmur >> 58) as usize % SHARDS].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start loading the cache line `get(murmur)` will read first. A
    /// lookup of a unique block misses the cache on that line (94 % of
    /// `get`'s time in a profile); the write path prefetches a whole
    /// request's lines while it hashes, so the misses overlap.
    pub fn prefetch(&self, murmur: u64) {
        let s = self.shard(murmur);
        if s.cur.slots.is_empty() {
            return;
        }
        let at = &s.cur.slots[home_of(fp(murmur), s.cur.slots.len())];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch is a hint; it never faults and reads nothing
        // into the program. The address is of a live slot.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at as *const u64 as *const i8)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let _ = at;
    }

    pub fn get(&self, murmur: u64) -> Option<u64> {
        let f = fp(murmur);
        let s = self.shard(murmur);
        s.cur.find(f).or_else(|| s.prev.find(f))
    }

    pub fn insert(&self, murmur: u64, id: u64) {
        if id >= 1 << 32 {
            return;
        }
        let cap = self.cap_per_shard;
        let mut s = self.shard(murmur);
        let need = s.cur.len + 1;
        if s.cur.slots.is_empty() || need * 8 > s.cur.slots.len() * 7 {
            if cap != 0 && need > cap {
                // The window is full: the current generation becomes the
                // previous one and the oldest entries are forgotten.
                let cur = std::mem::take(&mut s.cur);
                s.prev = cur;
                let n = (cap * 8 / 7 + 1).max(MIN_SLOTS);
                s.cur.slots = vec![EMPTY; n];
            } else {
                let n = (s.cur.slots.len() * 3 / 2).max(MIN_SLOTS);
                s.cur.resize(n);
            }
        }
        s.cur.insert((fp(murmur) << 32) | id);
    }

    /// Drop the entry if it names `id` (GC freed the chunk).
    pub fn remove(&self, murmur: u64, id: u64) {
        let f = fp(murmur);
        let mut s = self.shard(murmur);
        if !s.cur.remove(f, id) {
            s.prev.remove(f, id);
        }
    }

    pub fn clear(&self) {
        for s in &self.shards {
            *s.lock().unwrap_or_else(|p| p.into_inner()) = Shard::default();
        }
    }

    pub fn entries(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|p| p.into_inner());
                (s.cur.len + s.prev.len) as u64
            })
            .sum()
    }

    /// Bytes of RAM the index holds.
    pub fn memory_bytes(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|p| p.into_inner());
                ((s.cur.slots.len() + s.prev.slots.len()) * 8) as u64
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(i: u64) -> u64 {
        i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i << 7)
    }

    #[test]
    fn inserts_find_and_removes_keep_probe_chains_intact() {
        let ix = DedupIndex::new(0);
        for i in 0..50_000u64 {
            ix.insert(sig(i), 16 + i);
        }
        for i in 0..50_000u64 {
            assert_eq!(ix.get(sig(i)), Some(16 + i), "entry {i}");
        }
        for i in (0..50_000u64).step_by(3) {
            ix.remove(sig(i), 16 + i);
        }
        for i in 0..50_000u64 {
            let want = if i % 3 == 0 { None } else { Some(16 + i) };
            assert_eq!(ix.get(sig(i)), want, "entry {i} after removals");
        }
    }

    #[test]
    fn memory_per_entry_stays_under_14_bytes_at_every_size() {
        let ix = DedupIndex::new(0);
        let n = 1_000_000u64;
        let mut worst = 0f64;
        for i in 0..n {
            ix.insert(sig(i), 16 + i);
            if i > 100_000 && i % 10_000 == 0 {
                worst = worst.max(ix.memory_bytes() as f64 / ix.entries() as f64);
            }
        }
        assert!(worst <= 14.0, "{worst} bytes per entry at worst");
        assert_eq!(ix.entries(), n);
    }

    #[test]
    fn a_capped_index_keeps_the_newest_entries_in_bounded_memory() {
        let ix = DedupIndex::new(100_000);
        for i in 0..1_000_000u64 {
            ix.insert(sig(i), 16 + i);
        }
        assert!(ix.entries() <= 100_000 + 64 * 64, "{} entries", ix.entries());
        assert!(ix.memory_bytes() <= 100_000 * 20, "{} bytes", ix.memory_bytes());
        // The newest writes are still found.
        for i in 999_000..1_000_000u64 {
            assert_eq!(ix.get(sig(i)), Some(16 + i));
        }
    }
}
