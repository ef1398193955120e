//! The aborted-transaction index of one partition (Kafka's `.txnindex`):
//! for every aborted transaction, its producer id, first offset, last
//! offset (its abort marker) and the last stable offset when it ended. A
//! read_committed Fetch returns the aborted transactions its records may
//! hold, and the consumer drops those producers' records from each one's
//! first offset to its marker.
//!
//! On disk as Kafka keeps it: one file per segment, `<base>.txnindex`, for
//! the transactions whose marker is in that segment, 34-byte big-endian
//! entries (version 0 i16, producer id i64, first offset i64, last offset
//! i64, last stable offset i64). The segment's files are removed with it
//! (`segment::remove_segment_files`). In memory, every entry of the log,
//! sorted by last offset: aborts are rare, and the index holds only them.
//! Lives on the partition's owner shard.

use crate::partition::producer_state::CompletedTxn;

const ENTRY_VERSION: i16 = 0;
pub const ENTRY_BYTES: usize = 34;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
    pub last_stable_offset: i64,
}

impl AbortedTxn {
    pub fn of(completed: CompletedTxn, last_stable_offset: i64) -> Self {
        debug_assert!(completed.aborted, "only aborted transactions are indexed");
        AbortedTxn {
            producer_id: completed.producer_id,
            first_offset: completed.first_offset,
            last_offset: completed.last_offset,
            last_stable_offset,
        }
    }
}

/// A `.txnindex` file's bytes.
pub fn encode(entries: &[AbortedTxn]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_BYTES);
    for e in entries {
        out.extend_from_slice(&ENTRY_VERSION.to_be_bytes());
        out.extend_from_slice(&e.producer_id.to_be_bytes());
        out.extend_from_slice(&e.first_offset.to_be_bytes());
        out.extend_from_slice(&e.last_offset.to_be_bytes());
        out.extend_from_slice(&e.last_stable_offset.to_be_bytes());
    }
    out
}

/// The entries of a `.txnindex` file, up to the first one that is not a
/// whole, version-0 entry with sane offsets (a torn tail, or damage: what
/// follows it is not trusted; the log's markers rebuild what the producer
/// state's replay covers).
pub fn decode(bytes: &[u8]) -> Vec<AbortedTxn> {
    let i64_at = |b: &[u8], at: usize| i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let mut out = Vec::with_capacity(bytes.len() / ENTRY_BYTES);
    for chunk in bytes.chunks_exact(ENTRY_BYTES) {
        if i16::from_be_bytes([chunk[0], chunk[1]]) != ENTRY_VERSION {
            break;
        }
        let entry = AbortedTxn {
            producer_id: i64_at(chunk, 2),
            first_offset: i64_at(chunk, 10),
            last_offset: i64_at(chunk, 18),
            last_stable_offset: i64_at(chunk, 26),
        };
        if entry.producer_id < 0 || entry.first_offset < 0 || entry.first_offset > entry.last_offset {
            break;
        }
        out.push(entry);
    }
    out
}

/// Every aborted transaction of the log, sorted by last offset, one per
/// (producer, last offset).
#[derive(Default, Debug)]
pub struct AbortedIndex {
    entries: Vec<AbortedTxn>,
}

impl AbortedIndex {
    /// Adds `entry` unless it is known; true when added.
    pub fn insert(&mut self, entry: AbortedTxn) -> bool {
        let at = self
            .entries
            .partition_point(|e| e.last_offset < entry.last_offset);
        if self.entries[at..]
            .iter()
            .take_while(|e| e.last_offset == entry.last_offset)
            .any(|e| e.producer_id == entry.producer_id)
        {
            return false;
        }
        self.entries.insert(at, entry);
        true
    }

    /// Forgets the transactions whose marker is at or past `offset` (the
    /// log was truncated there).
    pub fn truncate_from(&mut self, offset: i64) {
        let keep = self.entries.partition_point(|e| e.last_offset < offset);
        self.entries.truncate(keep);
    }

    /// Forgets the transactions that ended below `offset` (the log start
    /// moved past them).
    pub fn trim_below(&mut self, offset: i64) {
        let drop = self.entries.partition_point(|e| e.last_offset < offset);
        self.entries.drain(..drop);
    }

    /// The aborted transactions a read from `from` up to (excluding) `to`
    /// may hold records of: (producer id, first offset), as Fetch returns
    /// them.
    pub fn overlapping(&self, from: i64, to: i64) -> Vec<(i64, i64)> {
        let start = self.entries.partition_point(|e| e.last_offset < from);
        self.entries[start..]
            .iter()
            .filter(|e| e.first_offset < to)
            .map(|e| (e.producer_id, e.first_offset))
            .collect()
    }

    /// The entries whose marker lies in `base..end`: one segment's file.
    pub fn in_range(&self, base: i64, end: i64) -> Vec<AbortedTxn> {
        self.entries
            .iter()
            .filter(|e| e.last_offset >= base && e.last_offset < end)
            .copied()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(producer_id: i64, first_offset: i64, last_offset: i64) -> AbortedTxn {
        AbortedTxn {
            producer_id,
            first_offset,
            last_offset,
            last_stable_offset: last_offset + 1,
        }
    }

    #[test]
    fn file_bytes_round_trip_and_a_torn_tail_is_dropped() {
        let entries = vec![txn(1, 0, 10), txn(2, 5, 20)];
        let bytes = encode(&entries);
        assert_eq!(bytes.len(), 2 * ENTRY_BYTES);
        assert_eq!(decode(&bytes), entries);
        assert_eq!(decode(&bytes[..ENTRY_BYTES + 7]), entries[..1]);
        let mut damaged = bytes.clone();
        damaged[ENTRY_BYTES] = 9; // the second entry's version
        assert_eq!(decode(&damaged), entries[..1]);
    }

    #[test]
    fn overlapping_returns_the_transactions_a_read_may_hold() {
        let mut index = AbortedIndex::default();
        for e in [txn(2, 30, 40), txn(1, 0, 10), txn(3, 35, 50)] {
            assert!(index.insert(e));
        }
        assert!(!index.insert(txn(1, 0, 10)), "known entries are not added twice");
        assert_eq!(index.overlapping(0, 100), vec![(1, 0), (2, 30), (3, 35)]);
        assert_eq!(index.overlapping(11, 100), vec![(2, 30), (3, 35)]);
        assert_eq!(index.overlapping(11, 33), vec![(2, 30)]);
        assert_eq!(index.overlapping(41, 100), vec![(3, 35)]);
        assert_eq!(index.in_range(20, 45), vec![txn(2, 30, 40)]);
        index.truncate_from(45);
        assert_eq!(index.len(), 2);
        index.trim_below(11);
        assert_eq!(index.overlapping(0, 100), vec![(2, 30)]);
    }
}
