//! The tail cache: recently appended batches kept in memory, so consumers
//! at the tail are served without touching the disk (segment reads are
//! O_DIRECT and bypass the page cache).
//!
//! Per shard, one `CacheBudget` (`log.cache.bytes`) is shared by the
//! `PartitionCache` of every partition the shard owns; when it is exceeded
//! the oldest entries of the shard, in append order, are evicted.
//!
//! Entries keep the producer's own buffer (a refcounted `Bytes` slice of the
//! request frame): nothing is copied on the produce path. The offsets the
//! log assigned are patched into the copy made when a fetch is answered —
//! a copy the response needs anyway. LogAppendTime batches are the
//! exception: their timestamp and CRC change on append, so the cache keeps
//! a rewritten copy.
//!
//! Budget note: a slice keeps its whole request frame alive, so the memory
//! held can exceed the bytes counted when one request carried many
//! partitions; the budget bounds it to at most the frames of the cached
//! batches (each at most `socket.request.max.bytes`).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::rc::{Rc, Weak};

use bytes::{Bytes, BytesMut};

use crate::storage::batch;

struct Entry {
    last_offset: i64,
    /// The leader epoch the log stamped, when the bytes lack it.
    leader_epoch: Option<i32>,
    /// The batch as stored, except that its baseOffset (and leader epoch)
    /// may be the producer's.
    bytes: Bytes,
}

/// A shard's cache budget and eviction order. Shard-local.
pub struct CacheBudget {
    bytes_max: usize,
    bytes_used: Cell<usize>,
    /// (cache, base offset) in insertion order; stale refs are skipped.
    order: RefCell<VecDeque<(Weak<PartitionCache>, i64)>>,
    live_entries: Cell<usize>,
}

impl CacheBudget {
    pub fn new(bytes_max: usize) -> Rc<Self> {
        Rc::new(CacheBudget {
            bytes_max,
            bytes_used: Cell::new(0),
            order: RefCell::new(VecDeque::new()),
            live_entries: Cell::new(0),
        })
    }

    pub fn bytes_used(&self) -> usize {
        self.bytes_used.get()
    }

    fn charge(&self, bytes: usize) {
        self.bytes_used.set(self.bytes_used.get() + bytes);
        self.live_entries.set(self.live_entries.get() + 1);
    }

    fn refund(&self, bytes: usize) {
        debug_assert!(self.bytes_used.get() >= bytes);
        self.bytes_used.set(self.bytes_used.get().saturating_sub(bytes));
        self.live_entries.set(self.live_entries.get().saturating_sub(1));
    }

    /// Evicts oldest entries until the budget holds.
    fn evict(&self) {
        while self.bytes_used.get() > self.bytes_max {
            let Some((cache, base)) = self.order.borrow_mut().pop_front() else {
                return;
            };
            if let Some(cache) = cache.upgrade() {
                cache.remove(base);
            }
        }
        // Entries trimmed by retention leave stale refs behind; keep the
        // queue within twice the live entries so it stays bounded.
        let live = self.live_entries.get();
        let mut order = self.order.borrow_mut();
        if order.len() > 2 * live + 64 {
            order.retain(|(cache, base)| {
                cache
                    .upgrade()
                    .is_some_and(|c| c.entries.borrow().contains_key(base))
            });
        }
    }
}

/// One partition's cached tail, keyed by base offset.
pub struct PartitionCache {
    entries: RefCell<BTreeMap<i64, Entry>>,
    budget: Rc<CacheBudget>,
}

impl Drop for PartitionCache {
    fn drop(&mut self) {
        for entry in self.entries.get_mut().values() {
            self.budget.refund(entry.bytes.len());
        }
    }
}

impl PartitionCache {
    pub fn new(budget: Rc<CacheBudget>) -> Rc<Self> {
        Rc::new(PartitionCache {
            entries: RefCell::new(BTreeMap::new()),
            budget,
        })
    }

    fn remove(&self, base: i64) {
        if let Some(entry) = self.entries.borrow_mut().remove(&base) {
            self.budget.refund(entry.bytes.len());
        }
    }

    /// Caches the batches of one completed append. `base_offset` is the
    /// offset the log gave the first batch; `log_append_time_ms` is set for
    /// LogAppendTime topics.
    /// `leader_epoch`: stamped into each batch as it is read (the log's copy
    /// has it; the cached client bytes do not); None keeps the bytes' own.
    pub fn insert(
        self: &Rc<Self>,
        batches: &[Bytes],
        base_offset: i64,
        log_append_time_ms: Option<i64>,
        leader_epoch: Option<i32>,
    ) {
        if self.budget.bytes_max == 0 {
            return;
        }
        let mut next = base_offset;
        for bytes in batches {
            let Ok(header) = batch::parse_header(bytes) else {
                return;
            };
            let base = next;
            let last = base + i64::from(header.last_offset_delta.get());
            next = last + 1;
            let bytes = match log_append_time_ms {
                None => bytes.clone(),
                Some(now_ms) => {
                    let mut copy = BytesMut::from(&bytes[..]);
                    batch::set_base_offset(&mut copy, base);
                    if batch::set_log_append_time(&mut copy, now_ms).is_err() {
                        return;
                    }
                    copy.freeze()
                }
            };
            let len = bytes.len();
            let previous = self.entries.borrow_mut().insert(
                base,
                Entry {
                    last_offset: last,
                    leader_epoch,
                    bytes,
                },
            );
            assert!(previous.is_none(), "offsets are never reused");
            self.budget.charge(len);
            self.budget
                .order
                .borrow_mut()
                .push_back((Rc::downgrade(self), base));
        }
        self.budget.evict();
    }

    /// Whole batches from the one containing `offset`, contiguous, up to
    /// `max_bytes` (the first always whole); None when `offset` is not cached.
    pub fn read(&self, offset: i64, max_bytes: usize) -> Option<Bytes> {
        let entries = self.entries.borrow();
        let (&first_base, first) = entries.range(..=offset).next_back()?;
        if first.last_offset < offset {
            return None;
        }
        let mut out = BytesMut::new();
        let mut expected = first_base;
        for (&base, entry) in entries.range(first_base..) {
            if base != expected || (!out.is_empty() && out.len() + entry.bytes.len() > max_bytes) {
                break;
            }
            let start = out.len();
            out.extend_from_slice(&entry.bytes);
            batch::set_base_offset(&mut out[start..], base);
            if let Some(epoch) = entry.leader_epoch {
                batch::set_partition_leader_epoch(&mut out[start..], epoch);
            }
            expected = entry.last_offset + 1;
        }
        Some(out.freeze())
    }

    /// Drops every entry from `offset` on: the log was truncated there.
    pub fn trim_from(&self, offset: i64) {
        let stale: Vec<i64> = self
            .entries
            .borrow()
            .iter()
            .filter(|(base, e)| **base >= offset || e.last_offset >= offset)
            .map(|(b, _)| *b)
            .collect();
        for base in stale {
            self.remove(base);
        }
    }

    /// Drops entries wholly below `offset` (retention, DeleteRecords).
    pub fn trim_below(&self, offset: i64) {
        let stale: Vec<i64> = self
            .entries
            .borrow()
            .iter()
            .take_while(|(_, e)| e.last_offset < offset)
            .map(|(b, _)| *b)
            .collect();
        for base in stale {
            self.remove(base);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testutil::make_batch;

    #[test]
    fn read_returns_cached_batches_with_assigned_offsets() {
        let budget = CacheBudget::new(1 << 20);
        let cache = PartitionCache::new(budget.clone());
        // The producer sent base offset 0; the log assigned 100 and 103.
        let a = make_batch(0, 3, 10, 1_000);
        let b = make_batch(0, 2, 10, 1_000);
        cache.insert(&[a.clone(), b.clone()], 100, None, None);
        let out = cache.read(101, 1 << 20).unwrap();
        assert_eq!(out.len(), a.len() + b.len());
        let first = batch::validate(&out[..a.len()]).unwrap();
        assert_eq!(first.base_offset.get(), 100);
        let second = batch::validate(&out[a.len()..]).unwrap();
        assert_eq!(second.base_offset.get(), 103);
        assert!(cache.read(99, 1 << 20).is_none());
        assert!(cache.read(105, 1 << 20).is_none());
        assert_eq!(budget.bytes_used(), a.len() + b.len());
    }

    #[test]
    fn read_stops_at_max_bytes_but_returns_the_first_batch_whole() {
        let cache = PartitionCache::new(CacheBudget::new(1 << 20));
        let a = make_batch(0, 1, 500, 1_000);
        cache.insert(std::slice::from_ref(&a), 0, None, None);
        cache.insert(std::slice::from_ref(&a), 1, None, None);
        assert_eq!(cache.read(0, 10).unwrap().len(), a.len());
        assert_eq!(cache.read(0, 2 * a.len()).unwrap().len(), 2 * a.len());
    }

    #[test]
    fn budget_evicts_oldest_entries_across_partitions() {
        let a = make_batch(0, 1, 1000, 1_000);
        let budget = CacheBudget::new(3 * a.len());
        let p1 = PartitionCache::new(budget.clone());
        let p2 = PartitionCache::new(budget.clone());
        p1.insert(std::slice::from_ref(&a), 0, None, None);
        p2.insert(std::slice::from_ref(&a), 0, None, None);
        p1.insert(std::slice::from_ref(&a), 1, None, None);
        p2.insert(std::slice::from_ref(&a), 1, None, None);
        assert!(budget.bytes_used() <= 3 * a.len());
        assert!(p1.read(0, 1 << 20).is_none(), "oldest entry evicted");
        assert!(p2.read(0, 1 << 20).is_some());
        drop(p2);
        assert_eq!(budget.bytes_used(), a.len());
    }

    #[test]
    fn trim_below_drops_entries_and_refunds_the_budget() {
        let a = make_batch(0, 2, 100, 1_000);
        let budget = CacheBudget::new(1 << 20);
        let cache = PartitionCache::new(budget.clone());
        cache.insert(&[a.clone(), a.clone(), a.clone()], 0, None, None);
        cache.trim_below(4);
        assert!(cache.read(1, 1 << 20).is_none());
        assert!(cache.read(4, 1 << 20).is_some());
        assert_eq!(budget.bytes_used(), a.len());
    }

    #[test]
    fn log_append_time_entries_are_rewritten_copies() {
        let cache = PartitionCache::new(CacheBudget::new(1 << 20));
        let a = make_batch(0, 2, 10, 1_000);
        cache.insert(std::slice::from_ref(&a), 7, Some(5_000), None);
        let out = cache.read(7, 1 << 20).unwrap();
        let header = batch::validate(&out).unwrap();
        assert!(header.timestamp_type_log_append());
        assert_eq!(header.max_timestamp.get(), 5_000);
        assert_eq!(header.base_offset.get(), 7);
    }

    #[test]
    fn zero_budget_caches_nothing() {
        let cache = PartitionCache::new(CacheBudget::new(0));
        cache.insert(&[make_batch(0, 1, 10, 1)], 0, None, None);
        assert!(cache.read(0, 100).is_none());
    }
}
