//! Sparse offset index (`.index`) and time index (`.timeindex`), Kafka's
//! on-disk format.
//!
//! - `.index`: 8-byte entries `(relative offset u32 BE, file position u32 BE)`.
//!   An entry `(r, p)` says the batch with base offset `base + r` starts at
//!   byte `p` of the segment's `.log`. Both columns strictly increase.
//! - `.timeindex`: 12-byte entries `(timestamp i64 BE, relative offset u32 BE)`.
//!   An entry `(t, r)` says: every batch up to the one holding offset
//!   `base + r` has `max_timestamp <= t`, and that batch's is exactly `t`.
//!   Timestamps strictly increase; offsets strictly increase.
//!
//! Like Kafka, an entry is added once more than `index_interval_bytes` of log
//! were appended since the previous one, so the index is ~8 bytes per 4 KiB of
//! log (a full 1 GiB segment: 2 MiB `.index`, 3 MiB `.timeindex`). When a
//! segment is sealed a final time entry records its largest timestamp, so a
//! loaded `.timeindex`'s last entry is the segment's max timestamp.
//!
//! The indexes are derived data: kept in memory while a segment is active,
//! written at roll and at clean close, validated when loaded, and rebuilt
//! from the log when missing or invalid.

use zerocopy::byteorder::{BigEndian as BE, I64, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

pub const OFFSET_INDEX_ENTRY_BYTES: usize = 8;
pub const TIME_INDEX_ENTRY_BYTES: usize = 12;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy)]
#[repr(C)]
pub struct OffsetIndexEntry {
    pub relative_offset: U32<BE>,
    pub position: U32<BE>,
}
const _: () = assert!(std::mem::size_of::<OffsetIndexEntry>() == OFFSET_INDEX_ENTRY_BYTES);

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy)]
#[repr(C)]
pub struct TimeIndexEntry {
    pub timestamp: I64<BE>,
    pub relative_offset: U32<BE>,
}
const _: () = assert!(std::mem::size_of::<TimeIndexEntry>() == TIME_INDEX_ENTRY_BYTES);

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IndexError {
    #[error("index size {size_bytes} is not a multiple of the {entry_bytes}-byte entry")]
    BadSize { size_bytes: usize, entry_bytes: usize },
    #[error("index entry {entry} does not increase")]
    NotIncreasing { entry: usize },
    #[error("index entry {entry} points at position {position}, past the {log_bytes}-byte log")]
    PositionOutOfRange {
        entry: usize,
        position: u32,
        log_bytes: u64,
    },
    #[error("index entry {entry} names offset {offset}, outside [{base_offset}, {next_offset})")]
    OffsetOutOfRange {
        entry: usize,
        offset: i64,
        base_offset: i64,
        next_offset: i64,
    },
}

/// What a loaded index is checked against.
#[derive(Debug, Clone, Copy)]
pub struct IndexBounds {
    pub base_offset: i64,
    /// Exclusive upper bound of offsets in the segment (next segment's base,
    /// or `i64::MAX` when unknown).
    pub next_offset: i64,
    pub log_bytes: u64,
}

impl IndexBounds {
    fn check_offset(&self, entry: usize, relative: u32) -> Result<i64, IndexError> {
        let offset = self.base_offset + i64::from(relative);
        if offset >= self.next_offset {
            return Err(IndexError::OffsetOutOfRange {
                entry,
                offset,
                base_offset: self.base_offset,
                next_offset: self.next_offset,
            });
        }
        Ok(offset)
    }
}

/// In-memory offset index of one segment.
#[derive(Debug, Clone, Default)]
pub struct OffsetIndex {
    entries: Vec<(u32, u32)>,
}

impl OffsetIndex {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn last(&self) -> Option<(u32, u32)> {
        self.entries.last().copied()
    }

    /// Appends an entry. Both columns must strictly increase.
    pub fn append(&mut self, relative_offset: u32, position: u32) {
        if let Some((last_offset, last_position)) = self.last() {
            assert!(
                relative_offset > last_offset,
                "offset index offsets must increase"
            );
            assert!(position > last_position, "offset index positions must increase");
        }
        self.entries.push((relative_offset, position));
    }

    /// Position of the last indexed batch whose relative offset is <= the
    /// target, or 0: scanning the log from there finds the batch holding it.
    pub fn lookup(&self, relative_offset: u32) -> u32 {
        let after = self.entries.partition_point(|&(r, _)| r <= relative_offset);
        if after == 0 {
            0
        } else {
            self.entries[after - 1].1
        }
    }

    /// The largest indexed position in `(after, at_most]`: a batch start, so
    /// `[x, it)` is whole batches for any batch start `x <= after`.
    pub fn batch_start_within(&self, after: u32, at_most: u32) -> Option<u32> {
        let end = self.entries.partition_point(|&(_, p)| p <= at_most);
        let position = self.entries[..end].last()?.1;
        (position > after).then_some(position)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * OFFSET_INDEX_ENTRY_BYTES);
        for &(relative_offset, position) in &self.entries {
            let entry = OffsetIndexEntry {
                relative_offset: U32::new(relative_offset),
                position: U32::new(position),
            };
            out.extend_from_slice(entry.as_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8], bounds: &IndexBounds) -> Result<Self, IndexError> {
        let entries = <[OffsetIndexEntry]>::ref_from_bytes(bytes).map_err(|_| IndexError::BadSize {
            size_bytes: bytes.len(),
            entry_bytes: OFFSET_INDEX_ENTRY_BYTES,
        })?;
        let mut index = OffsetIndex {
            entries: Vec::with_capacity(entries.len()),
        };
        for (i, entry) in entries.iter().enumerate() {
            let (relative, position) = (entry.relative_offset.get(), entry.position.get());
            if let Some((last_relative, last_position)) = index.last() {
                if relative <= last_relative || position <= last_position {
                    return Err(IndexError::NotIncreasing { entry: i });
                }
            }
            if u64::from(position) >= bounds.log_bytes {
                return Err(IndexError::PositionOutOfRange {
                    entry: i,
                    position,
                    log_bytes: bounds.log_bytes,
                });
            }
            bounds.check_offset(i, relative)?;
            index.entries.push((relative, position));
        }
        Ok(index)
    }

    fn truncate_last(&mut self) -> Option<(u32, u32)> {
        self.entries.pop()
    }
}

/// In-memory time index of one segment.
#[derive(Debug, Clone, Default)]
pub struct TimeIndex {
    entries: Vec<(i64, u32)>,
}

impl TimeIndex {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn last(&self) -> Option<(i64, u32)> {
        self.entries.last().copied()
    }

    /// Appends `(timestamp, relative offset)` if the timestamp is larger than
    /// the last entry's (the index only records new maxima).
    pub fn maybe_append(&mut self, timestamp: i64, relative_offset: u32) {
        match self.last() {
            Some((last_timestamp, _)) if timestamp <= last_timestamp => {}
            Some((_, last_offset)) => {
                assert!(relative_offset > last_offset, "time index offsets must increase");
                self.entries.push((timestamp, relative_offset));
            }
            None => self.entries.push((timestamp, relative_offset)),
        }
    }

    /// Relative offset of the last entry with timestamp < `timestamp`: every
    /// batch before the one holding that offset has a smaller max timestamp,
    /// so a search for the first batch with `max_timestamp >= timestamp` may
    /// start there. None: start at the segment's beginning.
    pub fn lookup_before(&self, timestamp: i64) -> Option<u32> {
        let after = self.entries.partition_point(|&(t, _)| t < timestamp);
        after.checked_sub(1).map(|i| self.entries[i].1)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.entries.len() * TIME_INDEX_ENTRY_BYTES);
        for &(timestamp, relative_offset) in &self.entries {
            let entry = TimeIndexEntry {
                timestamp: I64::new(timestamp),
                relative_offset: U32::new(relative_offset),
            };
            out.extend_from_slice(entry.as_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8], bounds: &IndexBounds) -> Result<Self, IndexError> {
        let entries = <[TimeIndexEntry]>::ref_from_bytes(bytes).map_err(|_| IndexError::BadSize {
            size_bytes: bytes.len(),
            entry_bytes: TIME_INDEX_ENTRY_BYTES,
        })?;
        let mut index = TimeIndex {
            entries: Vec::with_capacity(entries.len()),
        };
        for (i, entry) in entries.iter().enumerate() {
            let (timestamp, relative) = (entry.timestamp.get(), entry.relative_offset.get());
            if let Some((last_timestamp, last_relative)) = index.last() {
                if timestamp <= last_timestamp || relative <= last_relative {
                    return Err(IndexError::NotIncreasing { entry: i });
                }
            }
            bounds.check_offset(i, relative)?;
            index.entries.push((timestamp, relative));
        }
        Ok(index)
    }
}

/// Both indexes of one segment plus the state that decides when the next
/// entry is due. Fed one batch at a time, in log order, by appends, scans and
/// rebuilds alike, so all three produce the same entries.
#[derive(Debug, Clone)]
pub struct SegmentIndex {
    base_offset: i64,
    pub offsets: OffsetIndex,
    pub times: TimeIndex,
    bytes_since_entry: u64,
    /// Forces an entry for the next batch (used when resuming a scan at a
    /// removed entry's position).
    entry_due: bool,
    /// Largest batch max_timestamp seen and the base offset of the first
    /// batch that has it; `i64::MIN` when the segment is empty.
    max_timestamp: i64,
    offset_of_max_timestamp: i64,
}

impl SegmentIndex {
    pub fn new(base_offset: i64) -> Self {
        SegmentIndex {
            base_offset,
            offsets: OffsetIndex::default(),
            times: TimeIndex::default(),
            bytes_since_entry: 0,
            entry_due: false,
            max_timestamp: i64::MIN,
            offset_of_max_timestamp: base_offset,
        }
    }

    /// Builds from loaded, validated index files.
    pub fn from_loaded(base_offset: i64, offsets: OffsetIndex, times: TimeIndex) -> Self {
        let mut index = SegmentIndex::new(base_offset);
        if let Some((timestamp, relative)) = times.last() {
            index.max_timestamp = timestamp;
            index.offset_of_max_timestamp = base_offset + i64::from(relative);
        }
        index.offsets = offsets;
        index.times = times;
        index
    }

    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }

    /// `(max timestamp, offset of the first batch holding it)`, None if empty.
    pub fn max_timestamp(&self) -> Option<(i64, i64)> {
        (self.max_timestamp != i64::MIN).then_some((self.max_timestamp, self.offset_of_max_timestamp))
    }

    fn relative(&self, offset: i64) -> u32 {
        let relative = offset - self.base_offset;
        assert!(
            (0..=i64::from(u32::MAX)).contains(&relative),
            "offset {offset} outside segment at {}",
            self.base_offset
        );
        relative as u32
    }

    /// Records one batch appended at `position` (Kafka's LogSegment.append).
    pub fn on_batch(
        &mut self,
        base_offset: i64,
        position: u64,
        total_bytes: u64,
        max_timestamp: i64,
        index_interval_bytes: u32,
    ) {
        assert!(position <= u64::from(u32::MAX), "segment position exceeds u32");
        if max_timestamp > self.max_timestamp {
            self.max_timestamp = max_timestamp;
            self.offset_of_max_timestamp = base_offset;
        }
        if self.entry_due || self.bytes_since_entry > u64::from(index_interval_bytes) {
            let relative = self.relative(base_offset);
            self.offsets.append(relative, position as u32);
            if self.max_timestamp != i64::MIN {
                let relative_max = self.relative(self.offset_of_max_timestamp);
                self.times.maybe_append(self.max_timestamp, relative_max);
            }
            self.bytes_since_entry = 0;
            self.entry_due = false;
        }
        self.bytes_since_entry += total_bytes;
    }

    /// Adds the final time entry recording the segment's max timestamp.
    pub fn seal(&mut self) {
        if let Some((timestamp, offset)) = self.max_timestamp() {
            let relative = self.relative(offset);
            let newer = self.times.last().is_none_or(|(t, _)| timestamp > t);
            if newer {
                self.times.maybe_append(timestamp, relative);
            }
        }
    }

    /// Removes the last offset entry (and the time entries at or after it)
    /// and returns `(position, offset)` from which a scan must resume to
    /// re-derive them; `(0, base)` with a fresh index when there is none.
    pub fn resume_point(&mut self) -> (u64, i64) {
        let Some((relative, position)) = self.offsets.truncate_last() else {
            *self = SegmentIndex::new(self.base_offset);
            return (0, self.base_offset);
        };
        while self.times.last().is_some_and(|(_, r)| r >= relative) {
            self.times.entries.pop();
        }
        match self.times.last() {
            Some((timestamp, r)) => {
                self.max_timestamp = timestamp;
                self.offset_of_max_timestamp = self.base_offset + i64::from(r);
            }
            None => {
                self.max_timestamp = i64::MIN;
                self.offset_of_max_timestamp = self.base_offset;
            }
        }
        self.entry_due = true;
        self.bytes_since_entry = 0;
        (u64::from(position), self.base_offset + i64::from(relative))
    }

    /// Drops every entry of the batches at or after the last indexed batch
    /// starting at or below `offset` and returns `(position, offset)` of that
    /// batch: scanning from there re-derives the entries for whatever is
    /// kept, and passes the batch holding `offset` (truncation cuts there).
    /// `(0, base)` with a fresh index when no entry is at or below `offset`.
    pub fn rewind_to(&mut self, offset: i64) -> (u64, i64) {
        assert!(
            offset >= self.base_offset,
            "offset {offset} below segment {}",
            self.base_offset
        );
        // Bounded by the entry count: each round drops one entry or returns.
        loop {
            let (position, resume_offset) = self.resume_point();
            if resume_offset <= offset {
                return (position, resume_offset);
            }
        }
    }

    /// Position from which to scan for the batch holding `offset`.
    pub fn position_for_offset(&self, offset: i64) -> u64 {
        let relative = (offset - self.base_offset).clamp(0, i64::from(u32::MAX)) as u32;
        u64::from(self.offsets.lookup(relative))
    }

    /// Position from which to scan for the first batch whose max timestamp
    /// is >= `timestamp`.
    pub fn position_for_timestamp(&self, timestamp: i64) -> u64 {
        match self.times.lookup_before(timestamp) {
            Some(relative) => u64::from(self.offsets.lookup(relative)),
            None => 0,
        }
    }

    /// True when one more append of up to `batches` batches / `bytes` bytes
    /// could overflow either index's `segment_index_bytes` budget (one entry
    /// is kept in reserve for the seal entry).
    pub fn would_overflow(
        &self,
        segment_index_bytes: u32,
        batches: usize,
        bytes: u64,
        index_interval_bytes: u32,
    ) -> bool {
        let new_entries_max = (batches as u64).min(bytes / u64::from(index_interval_bytes.max(1)) + 1);
        let offsets_max = u64::from(segment_index_bytes) / OFFSET_INDEX_ENTRY_BYTES as u64;
        let times_max = u64::from(segment_index_bytes) / TIME_INDEX_ENTRY_BYTES as u64;
        self.offsets.len() as u64 + new_entries_max + 1 > offsets_max
            || self.times.len() as u64 + new_entries_max + 1 > times_max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(log_bytes: u64) -> IndexBounds {
        IndexBounds {
            base_offset: 100,
            next_offset: i64::MAX,
            log_bytes,
        }
    }

    #[test]
    fn offset_index_lookup_returns_floor_entry_position() {
        let mut index = OffsetIndex::default();
        index.append(10, 4_000);
        index.append(20, 9_000);
        assert_eq!(index.lookup(0), 0);
        assert_eq!(index.lookup(9), 0);
        assert_eq!(index.lookup(10), 4_000);
        assert_eq!(index.lookup(19), 4_000);
        assert_eq!(index.lookup(25), 9_000);
    }

    #[test]
    fn offset_index_round_trips_through_kafka_format() {
        let mut index = OffsetIndex::default();
        index.append(1, 100);
        index.append(7, 5_000);
        let bytes = index.encode();
        assert_eq!(bytes.len(), 16);
        assert_eq!(&bytes[..8], &[0, 0, 0, 1, 0, 0, 0, 100]);
        let loaded = OffsetIndex::decode(&bytes, &bounds(10_000)).expect("valid");
        assert_eq!(loaded.entries, index.entries);
    }

    #[test]
    fn offset_index_decode_rejects_bad_size_order_and_positions() {
        let mut index = OffsetIndex::default();
        index.append(1, 100);
        index.append(7, 5_000);
        let bytes = index.encode();
        assert!(matches!(
            OffsetIndex::decode(&bytes[..12], &bounds(10_000)),
            Err(IndexError::BadSize { .. })
        ));
        assert!(matches!(
            OffsetIndex::decode(&bytes, &bounds(4_000)),
            Err(IndexError::PositionOutOfRange { entry: 1, .. })
        ));
        let mut swapped = bytes[8..].to_vec();
        swapped.extend_from_slice(&bytes[..8]);
        assert_eq!(
            OffsetIndex::decode(&swapped, &bounds(10_000)).map(|i| i.len()),
            Err(IndexError::NotIncreasing { entry: 1 })
        );
        let tight = IndexBounds {
            next_offset: 105,
            ..bounds(10_000)
        };
        assert!(matches!(
            OffsetIndex::decode(&bytes, &tight),
            Err(IndexError::OffsetOutOfRange { entry: 1, .. })
        ));
    }

    #[test]
    fn time_index_keeps_only_new_maxima_and_finds_start_before_timestamp() {
        let mut index = TimeIndex::default();
        index.maybe_append(1_000, 0);
        index.maybe_append(900, 5);
        index.maybe_append(2_000, 10);
        assert_eq!(index.len(), 2);
        assert_eq!(index.lookup_before(1_000), None);
        assert_eq!(index.lookup_before(1_001), Some(0));
        assert_eq!(index.lookup_before(5_000), Some(10));
        let loaded = TimeIndex::decode(&index.encode(), &bounds(1)).expect("valid");
        assert_eq!(loaded.entries, index.entries);
        assert!(matches!(
            TimeIndex::decode(&[0u8; 13], &bounds(1)),
            Err(IndexError::BadSize { .. })
        ));
    }

    #[test]
    fn segment_index_adds_entry_after_interval_bytes() {
        let mut index = SegmentIndex::new(100);
        let mut position = 0;
        for i in 0..10 {
            index.on_batch(100 + i, position, 1_000, 5_000 + i, 2_500);
            position += 1_000;
        }
        // Entries once more than 2,500 bytes accumulated: before batches 3, 6, 9.
        assert_eq!(index.offsets.entries, vec![(3, 3_000), (6, 6_000), (9, 9_000)]);
        assert_eq!(index.max_timestamp(), Some((5_009, 109)));
        index.seal();
        assert_eq!(index.times.last(), Some((5_009, 9)));
        assert_eq!(index.position_for_offset(107), 6_000);
        assert_eq!(index.position_for_timestamp(5_007), 6_000);
    }

    #[test]
    fn segment_index_resume_point_drops_last_entry() {
        let mut index = SegmentIndex::new(0);
        let mut position = 0;
        for i in 0..10 {
            index.on_batch(i, position, 1_000, i, 2_500);
            position += 1_000;
        }
        let (resume_position, resume_offset) = index.resume_point();
        assert_eq!((resume_position, resume_offset), (9_000, 9));
        index.on_batch(9, 9_000, 1_000, 9, 2_500);
        assert_eq!(index.offsets.last(), Some((9, 9_000)));
    }

    #[test]
    fn segment_index_rewound_and_rescanned_equals_one_built_from_the_kept_batches() {
        // (base offset, max timestamp) of 2-offset, 700-byte batches; the
        // timestamps go back and forth so the time index keeps only maxima.
        let batches: Vec<(i64, i64)> = (0..30).map(|i| (100 + 2 * i, (i * 37) % 23)).collect();
        let feed = |index: &mut SegmentIndex, from: usize, to: usize| {
            for (i, &(base, timestamp)) in batches.iter().enumerate().take(to).skip(from) {
                index.on_batch(base, i as u64 * 700, 700, timestamp, 1_500);
            }
        };
        let mut full = SegmentIndex::new(100);
        feed(&mut full, 0, batches.len());
        full.seal();
        for kept in [0usize, 1, 2, 5, 17, 29] {
            // Cut at the batch `kept`, from an offset inside it.
            let mut rewound = full.clone();
            let (position, offset) = rewound.rewind_to(batches[kept].0 + 1);
            assert!(offset <= batches[kept].0);
            let from = usize::try_from(position / 700).expect("position");
            assert_eq!(batches[from].0, offset);
            feed(&mut rewound, from, kept);
            let mut fresh = SegmentIndex::new(100);
            feed(&mut fresh, 0, kept);
            assert_eq!(rewound.offsets.encode(), fresh.offsets.encode(), "kept {kept}");
            assert_eq!(rewound.times.encode(), fresh.times.encode(), "kept {kept}");
            assert_eq!(rewound.max_timestamp(), fresh.max_timestamp(), "kept {kept}");
        }
    }
}
