//! What the broker is doing, for Prometheus: each shard counts its own work
//! in thread-local cells (the shard's thread is their only writer and
//! reader: no lock, no atomic, no allocation per request), and a scrape of
//! `/metrics` on the controller shard asks every shard for its figures over
//! the mesh (`ShardOp::Metrics`), joins consumer-group commits with high
//! watermarks for lag, and writes Prometheus' text format (`exposition`).
//!
//! `http`: the listener (`metrics.listen`: `/metrics`, `/health`, `/ready`),
//! on shard 0. `collect`: one shard's sample and the node-wide scrape.
//! `probe`: each shard's reactor-delay probe and its ingress rate (for the
//! MB/s headroom).

pub mod collect;
pub mod exposition;
pub mod http;
pub mod probe;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

/// Request counters are kept for API keys below this (Kafka's highest is
/// in the 70s); higher keys are refused before they are counted.
pub const API_KEYS_COUNTED: usize = 128;

/// One shard's counters. Only ever increase (Prometheus counters), except
/// the gauges named so.
pub struct ShardCounters {
    pub requests: [Cell<u64>; API_KEYS_COUNTED],
    /// (API key, error code) → responses or response parts carrying it.
    /// Bounded: API keys below `API_KEYS_COUNTED` times Kafka's error
    /// codes; an entry is allocated at its first occurrence only.
    pub errors: RefCell<BTreeMap<(i16, i16), u64>>,
    pub produce_bytes: Cell<u64>,
    pub produce_records: Cell<u64>,
    /// Consumer reads (below the high watermark or the LSO).
    pub fetch_bytes: Cell<u64>,
    /// Follower reads (up to the log end): Kafka's ReplicationBytesOut.
    pub replication_fetch_bytes: Cell<u64>,
    /// Batches appended from a leader by this node's followers.
    pub replication_append_bytes: Cell<u64>,
    /// Read bytes sent with sendfile from the page cache, against bytes
    /// copied through memory (tail cache or O_DIRECT reads).
    pub zero_copy_read_bytes: Cell<u64>,
    pub copied_read_bytes: Cell<u64>,
    pub tail_cache_hits: Cell<u64>,
    pub tail_cache_misses: Cell<u64>,
    pub isr_shrinks: Cell<u64>,
    pub isr_expands: Cell<u64>,
    pub cleaner_passes: Cell<u64>,
    pub cleaner_bytes_before: Cell<u64>,
    pub cleaner_bytes_after: Cell<u64>,
    pub cleaner_records_removed: Cell<u64>,
    /// Gauge: a compaction pass runs now.
    pub cleaner_running: Cell<bool>,
    /// Reactor probe wake-ups later than `metrics.stall.threshold.ms`.
    pub reactor_stalls: Cell<u64>,
    pub metrics_connections_refused: Cell<u64>,
}

impl ShardCounters {
    const fn new() -> Self {
        ShardCounters {
            requests: [const { Cell::new(0) }; API_KEYS_COUNTED],
            errors: RefCell::new(BTreeMap::new()),
            produce_bytes: Cell::new(0),
            produce_records: Cell::new(0),
            fetch_bytes: Cell::new(0),
            replication_fetch_bytes: Cell::new(0),
            replication_append_bytes: Cell::new(0),
            zero_copy_read_bytes: Cell::new(0),
            copied_read_bytes: Cell::new(0),
            tail_cache_hits: Cell::new(0),
            tail_cache_misses: Cell::new(0),
            isr_shrinks: Cell::new(0),
            isr_expands: Cell::new(0),
            cleaner_passes: Cell::new(0),
            cleaner_bytes_before: Cell::new(0),
            cleaner_bytes_after: Cell::new(0),
            cleaner_records_removed: Cell::new(0),
            cleaner_running: Cell::new(false),
            reactor_stalls: Cell::new(0),
            metrics_connections_refused: Cell::new(0),
        }
    }
}

thread_local! {
    static COUNTERS: ShardCounters = const { ShardCounters::new() };
}

/// Runs `f` on this thread's counters.
pub fn with<T>(f: impl FnOnce(&ShardCounters) -> T) -> T {
    COUNTERS.with(f)
}

fn add(cell: &Cell<u64>, n: u64) {
    cell.set(cell.get().wrapping_add(n));
}

/// One request of type `api_key` read whole (unknown keys are not counted:
/// the connection closes on them).
pub fn count_request(api_key: i16) {
    if let Ok(i) = usize::try_from(api_key) {
        with(|c| {
            if let Some(cell) = c.requests.get(i) {
                add(cell, 1);
            }
        });
    }
}

/// Error codes of one response (0s are skipped).
pub fn count_errors(api_key: i16, codes: impl IntoIterator<Item = i16>) {
    if usize::try_from(api_key).map_or(true, |i| i >= API_KEYS_COUNTED) {
        return;
    }
    with(|c| {
        let mut errors = None;
        for code in codes.into_iter().filter(|&code| code != 0) {
            let errors = errors.get_or_insert_with(|| c.errors.borrow_mut());
            *errors.entry((api_key, code)).or_insert(0) += 1;
        }
    });
}

pub fn count_produce(bytes: u64, records: u64) {
    with(|c| {
        add(&c.produce_bytes, bytes);
        add(&c.produce_records, records);
    });
}

/// A read of `bytes`: by a follower (`replication`) or a consumer, sent
/// zero-copy or copied, served from the tail cache or not.
pub fn count_read(bytes: u64, replication: bool, zero_copy: bool, tail_cache_hit: bool) {
    with(|c| {
        add(
            if replication {
                &c.replication_fetch_bytes
            } else {
                &c.fetch_bytes
            },
            bytes,
        );
        add(
            if zero_copy {
                &c.zero_copy_read_bytes
            } else {
                &c.copied_read_bytes
            },
            bytes,
        );
        add(
            if tail_cache_hit {
                &c.tail_cache_hits
            } else {
                &c.tail_cache_misses
            },
            1,
        );
    });
}

pub fn count_replication_append(bytes: u64) {
    with(|c| add(&c.replication_append_bytes, bytes));
}

/// An ISR change this shard proposed: grown (`expand`) or shrunk.
pub fn count_isr_change(expand: bool) {
    with(|c| add(if expand { &c.isr_expands } else { &c.isr_shrinks }, 1));
}

pub fn cleaner_running(running: bool) {
    with(|c| c.cleaner_running.set(running));
}

pub fn count_cleaner_pass(bytes_before: u64, bytes_after: u64, records_removed: u64) {
    with(|c| {
        add(&c.cleaner_passes, 1);
        add(&c.cleaner_bytes_before, bytes_before);
        add(&c.cleaner_bytes_after, bytes_after);
        add(&c.cleaner_records_removed, records_removed);
    });
}

/// Per-partition counters, kept in the `Partition` (same shard).
#[derive(Default)]
pub struct PartitionCounters {
    pub bytes_in: Cell<u64>,
    pub records_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
}

impl PartitionCounters {
    pub fn produced(&self, bytes: u64, records: u64) {
        add(&self.bytes_in, bytes);
        add(&self.records_in, records);
        count_produce(bytes, records);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_count_and_error_zero_is_not_an_error() {
        count_request(0);
        count_request(0);
        count_request(-1);
        count_request(i16::MAX);
        count_errors(0, [0, 6, 6, 0, 7]);
        count_errors(i16::MAX, [6]);
        with(|c| {
            assert_eq!(c.requests[0].get(), 2);
            let errors = c.errors.borrow();
            assert_eq!(errors.get(&(0, 6)), Some(&2));
            assert_eq!(errors.get(&(0, 7)), Some(&1));
            assert_eq!(errors.len(), 2);
        });
        count_read(100, false, true, false);
        count_read(50, true, false, true);
        with(|c| {
            assert_eq!(c.fetch_bytes.get(), 100);
            assert_eq!(c.replication_fetch_bytes.get(), 50);
            assert_eq!(c.zero_copy_read_bytes.get(), 100);
            assert_eq!(c.copied_read_bytes.get(), 50);
            assert_eq!((c.tail_cache_hits.get(), c.tail_cache_misses.get()), (1, 1));
        });
    }
}
