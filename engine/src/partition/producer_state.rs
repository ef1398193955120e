//! Idempotent-producer state of one partition (Kafka's `ProducerStateManager`
//! and `ProducerAppendInfo`): per producer id, the current producer epoch and
//! the last [`BATCHES_REMEMBERED`] appended batches, so that a retried batch
//! is answered with its original offsets instead of being written twice, and
//! a batch that skips sequence numbers is refused.
//!
//! Lives on the shard that owns the partition, next to its `Log`; no other
//! thread touches it. The produce path calls [`ProducerStates::check`] before
//! appending a batch and [`ProducerStates::on_appended`] after; recovery
//! rebuilds it from a snapshot plus [`ProducerStates::replay`] of the batches
//! after the snapshot's offset. No I/O: snapshots are encoded to and decoded
//! from bytes, the caller reads and writes the files.
//!
//! Transactions (Kafka's `currentTxnFirstOffset`): a producer's first
//! transactional batch on this partition opens its transaction here; the
//! coordinator's marker (a control batch, `storage::txn_marker`) closes it
//! and yields a [`CompletedTxn`], which the partition turns into an
//! aborted-transaction index entry when it aborted. The smallest first
//! offset of the open transactions bounds the last stable offset. The produce
//! path must refuse control batches from clients before calling `check`, as
//! Kafka does; markers come through `check_marker` / `on_marker_appended`.
//!
//! Back-of-envelope: an entry is a `HashMap` slot (~40 bytes) plus a
//! `VecDeque` of at most 5 × 32-byte [`BatchMeta`] ≈ 200 bytes, so 10 000
//! producers writing to one partition hold ~2 MB. A snapshot entry is at most
//! 20 + 5 × 32 = 180 bytes. `check` is one hash lookup and a scan of 5 batches.

use std::collections::{BTreeMap, HashMap, VecDeque};

use zerocopy::byteorder::{BigEndian as BE, I16, I32, I64, U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::storage::batch::{self, BatchError, BatchHeader};

/// How many recent batches per producer are remembered for duplicate
/// detection (Kafka: 5, the most in-flight requests an idempotent producer
/// may have per connection).
pub const BATCHES_REMEMBERED: usize = 5;

/// Default `producer.id.expiration.ms` (one day).
pub const PRODUCER_ID_EXPIRATION_MS_DEFAULT: i64 = 86_400_000;

/// Kafka's `RecordBatch.NO_PRODUCER_EPOCH`, reported as the current epoch of
/// a producer this partition does not know.
pub const NO_PRODUCER_EPOCH: i16 = -1;

/// One appended batch of a producer, as remembered for duplicate detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchMeta {
    pub first_seq: i32,
    pub last_seq: i32,
    pub first_offset: i64,
    pub last_offset: i64,
    /// The batch's max timestamp, as Kafka's `BatchMetadata.timestamp`.
    pub timestamp_ms: i64,
}

/// What the partition knows about one producer id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerEntry {
    pub producer_epoch: i16,
    /// Oldest first; at most [`BATCHES_REMEMBERED`], offsets strictly
    /// increasing. Empty only after a marker moved the producer to a new
    /// epoch.
    pub batches: VecDeque<BatchMeta>,
    /// Last time this producer wrote, for expiration.
    pub last_timestamp_ms: i64,
    /// First offset of this producer's open transaction on this partition
    /// (Kafka's `currentTxnFirstOffset`).
    pub current_txn_first_offset: Option<i64>,
    /// Coordinator epoch of the last marker written for this producer
    /// (Kafka's `coordinatorEpoch`); -1 before any.
    pub coordinator_epoch: i32,
}

/// A transaction a marker closed on this partition: its records span
/// `first_offset..last_offset`, the marker is at `last_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompletedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
    pub aborted: bool,
}

/// Why a marker is refused before it is written.
#[derive(Debug, PartialEq, Eq)]
pub enum MarkerRefusal {
    /// -> INVALID_PRODUCER_EPOCH (47) / PRODUCER_FENCED.
    InvalidEpoch { current: i16, got: i16 },
    /// -> TRANSACTION_COORDINATOR_FENCED (52).
    CoordinatorFenced { current: i32, got: i32 },
}

impl ProducerEntry {
    fn last_offset(&self) -> Option<i64> {
        self.batches.back().map(|b| b.last_offset)
    }
}

/// The outcome of checking one incoming batch before it is appended.
#[derive(Debug, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Not idempotent (producer_id < 0): append, nothing to track.
    NotIdempotent,
    /// Append it; call [`ProducerStates::on_appended`] with the assigned
    /// offsets afterwards.
    Append,
    /// Exactly one of the remembered batches (same epoch, first_seq and
    /// last_seq): do not append; answer success with these offsets (Kafka
    /// answers NONE with the original offsets).
    Duplicate(BatchMeta),
    /// -> OUT_OF_ORDER_SEQUENCE_NUMBER (45).
    OutOfOrder {
        expected_first_seq: i32,
        got_first_seq: i32,
    },
    /// -> INVALID_PRODUCER_EPOCH (47).
    InvalidEpoch { current: i16, got: i16 },
    /// A non-transactional batch from a producer with an open transaction
    /// here -> INVALID_TXN_STATE (48), as Kafka.
    InvalidTxnState,
}

/// Producer states of one partition. Lives on the partition's owner shard
/// only (see the module doc); no I/O except through the snapshot helpers'
/// bytes.
#[derive(Default, Debug)]
pub struct ProducerStates {
    producers: HashMap<i64, ProducerEntry>,
    /// First offset -> producer id of every open transaction: derived from
    /// `producers`, kept in step by every change.
    open_txns: BTreeMap<i64, i64>,
}

/// The sequence number after `seq`; sequences wrap from `i32::MAX` to 0.
fn next_seq(seq: i32) -> i32 {
    seq.wrapping_add(1) & i32::MAX
}

/// Sequence of the last record of a batch starting at `first_seq` whose last
/// offset delta is `last_offset_delta` (Kafka's `incrementSequence`), or
/// `None` for a batch whose sequence range is impossible.
fn last_seq_of(first_seq: i32, last_offset_delta: i32) -> Option<i32> {
    if first_seq < 0 || last_offset_delta < 0 {
        return None;
    }
    Some(first_seq.wrapping_add(last_offset_delta) & i32::MAX)
}

impl ProducerStates {
    pub fn new() -> Self {
        Self::default()
    }

    /// The first sequence `check` accepts next from `producer_id` at
    /// `producer_epoch` (0 for an epoch it has not seen). The group
    /// coordinator numbers its TxnOffsetCommit batches with it: the client
    /// gives none for them.
    pub fn next_sequence(&self, producer_id: i64, producer_epoch: i16) -> i32 {
        self.producers
            .get(&producer_id)
            .filter(|e| e.producer_epoch == producer_epoch)
            .and_then(|e| e.batches.back())
            .map_or(0, |b| next_seq(b.last_seq))
    }

    /// Decides what to do with an incoming batch, with Kafka's rules: an
    /// epoch older than the current one is fenced; a new epoch (or unknown
    /// producer) must start at sequence 0; within the epoch a batch equal to
    /// a remembered one is a duplicate, anything else must continue right
    /// after the last remembered sequence. Pure: does not change state.
    ///
    /// Unlike Kafka (which accepts any sequence from a producer it has no
    /// record of), an unknown producer must start at 0; a client whose state
    /// expired gets OUT_OF_ORDER_SEQUENCE_NUMBER and bumps its epoch.
    pub fn check(&self, header: &BatchHeader) -> SequenceCheck {
        let producer_id = header.producer_id.get();
        if producer_id < 0 {
            return SequenceCheck::NotIdempotent;
        }
        let epoch = header.producer_epoch.get();
        let first_seq = header.base_sequence.get();
        let entry = self.producers.get(&producer_id);
        let current = entry.map_or(NO_PRODUCER_EPOCH, |e| e.producer_epoch);
        if epoch < 0 || epoch < current {
            return SequenceCheck::InvalidEpoch { current, got: epoch };
        }
        let same_epoch = entry.filter(|e| e.producer_epoch == epoch);
        let expected_first_seq = same_epoch
            .and_then(|e| e.batches.back())
            .map_or(0, |b| next_seq(b.last_seq));
        let Some(last_seq) = last_seq_of(first_seq, header.last_offset_delta.get()) else {
            return SequenceCheck::OutOfOrder {
                expected_first_seq,
                got_first_seq: first_seq,
            };
        };
        if let Some(duplicate) = same_epoch.and_then(|e| {
            e.batches
                .iter()
                .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
        }) {
            return SequenceCheck::Duplicate(*duplicate);
        }
        if first_seq != expected_first_seq {
            return SequenceCheck::OutOfOrder {
                expected_first_seq,
                got_first_seq: first_seq,
            };
        }
        if !header.is_transactional() && same_epoch.is_some_and(|e| e.current_txn_first_offset.is_some()) {
            return SequenceCheck::InvalidTxnState;
        }
        SequenceCheck::Append
    }

    /// Records a batch the log just appended at `first_offset..=last_offset`,
    /// after [`check`](Self::check) said [`SequenceCheck::Append`]. A new
    /// epoch replaces the producer's remembered batches. Ignores
    /// non-idempotent batches. `header` must carry the timestamps as written
    /// (after any LogAppendTime rewrite).
    ///
    /// Panics if the batch's sequence range is invalid, the offsets do not
    /// match its offset delta, its epoch goes back, or its offsets do not
    /// follow the producer's previous batch: each means the caller skipped
    /// `check` or the log assigned offsets wrongly.
    pub fn on_appended(&mut self, header: &BatchHeader, first_offset: i64, last_offset: i64, now_ms: i64) {
        let producer_id = header.producer_id.get();
        if producer_id < 0 {
            return;
        }
        let epoch = header.producer_epoch.get();
        let last_offset_delta = header.last_offset_delta.get();
        let first_seq = header.base_sequence.get();
        let Some(last_seq) = last_seq_of(first_seq, last_offset_delta) else {
            panic!("appended batch of producer {producer_id} has invalid base sequence {first_seq}");
        };
        assert!(
            0 <= first_offset && last_offset - first_offset == i64::from(last_offset_delta),
            "offsets {first_offset}..={last_offset} do not match lastOffsetDelta {last_offset_delta}"
        );
        if let Some(entry) = self.producers.get(&producer_id) {
            assert!(
                epoch >= entry.producer_epoch,
                "producer {producer_id} epoch went back from {} to {epoch}",
                entry.producer_epoch
            );
            assert!(
                entry.last_offset().is_none_or(|previous| first_offset > previous),
                "producer {producer_id} offsets do not increase: {first_offset} after {:?}",
                entry.last_offset()
            );
        }
        let meta = BatchMeta {
            first_seq,
            last_seq,
            first_offset,
            last_offset,
            timestamp_ms: header.max_timestamp.get(),
        };
        self.record(producer_id, epoch, meta, now_ms);
        if header.is_transactional() {
            self.open_txn(producer_id, first_offset);
        }
    }

    /// Opens `producer_id`'s transaction at `first_offset` unless one is open.
    fn open_txn(&mut self, producer_id: i64, first_offset: i64) {
        let entry = self.producers.get_mut(&producer_id).expect("recorded before");
        if entry.current_txn_first_offset.is_none() {
            entry.current_txn_first_offset = Some(first_offset);
            self.open_txns.insert(first_offset, producer_id);
        }
    }

    /// May a marker for `producer_id` at `producer_epoch` from a coordinator
    /// at `coordinator_epoch` be written? Kafka's rules: the epoch may not go
    /// back, nor the coordinator epoch. A producer this partition does not
    /// know passes (its marker closes nothing). Pure.
    pub fn check_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        coordinator_epoch: i32,
    ) -> Result<(), MarkerRefusal> {
        let Some(entry) = self.producers.get(&producer_id) else {
            return Ok(());
        };
        if producer_epoch < entry.producer_epoch {
            return Err(MarkerRefusal::InvalidEpoch {
                current: entry.producer_epoch,
                got: producer_epoch,
            });
        }
        if coordinator_epoch < entry.coordinator_epoch {
            return Err(MarkerRefusal::CoordinatorFenced {
                current: entry.coordinator_epoch,
                got: coordinator_epoch,
            });
        }
        Ok(())
    }

    /// Records a marker the log just wrote at `offset`, after
    /// [`check_marker`](Self::check_marker) passed: closes the producer's
    /// open transaction. Returns what it closed (a transaction with no
    /// records here spans the marker alone, as in Kafka), or None for a
    /// producer this partition does not know.
    pub fn on_marker_appended(
        &mut self,
        producer_id: i64,
        producer_epoch: i16,
        marker: crate::storage::txn_marker::Marker,
        offset: i64,
        now_ms: i64,
    ) -> Option<CompletedTxn> {
        let entry = self.producers.get_mut(&producer_id)?;
        assert!(
            entry.current_txn_first_offset.is_none_or(|first| first < offset),
            "producer {producer_id}: marker at {offset} before its transaction's first offset"
        );
        if producer_epoch > entry.producer_epoch {
            entry.producer_epoch = producer_epoch;
            entry.batches.clear();
        }
        entry.coordinator_epoch = entry.coordinator_epoch.max(marker.coordinator_epoch);
        entry.last_timestamp_ms = entry.last_timestamp_ms.max(now_ms);
        let first_offset = entry.current_txn_first_offset.take();
        if let Some(first) = first_offset {
            self.open_txns.remove(&first);
        }
        Some(CompletedTxn {
            producer_id,
            first_offset: first_offset.unwrap_or(offset),
            last_offset: offset,
            aborted: !marker.commit,
        })
    }

    /// The first offset of the oldest open transaction: records from it on
    /// are not stable (Kafka's first unstable offset).
    pub fn first_unstable_offset(&self) -> Option<i64> {
        self.open_txns.keys().next().copied()
    }

    /// Open transactions, oldest first: (first offset, producer id).
    pub fn open_transactions(&self) -> impl Iterator<Item = (i64, i64)> + '_ {
        self.open_txns.iter().map(|(first, producer)| (*first, *producer))
    }

    /// Same as [`on_appended`](Self::on_appended) for one whole batch read
    /// back from the log during rebuild: offsets come from the header, the
    /// producer's last timestamp is the batch's max timestamp, and nothing is
    /// validated against the current state (Kafka's replication origin).
    /// Batches at or below the producer's last known offset are already
    /// reflected (e.g. by the snapshot the rebuild started from) and skipped,
    /// as are control batches and batches with an impossible sequence range.
    pub fn replay(&mut self, stored_batch: &[u8]) -> Result<Option<CompletedTxn>, BatchError> {
        let header = batch::check_shape(stored_batch)?;
        let producer_id = header.producer_id.get();
        if producer_id < 0 {
            return Ok(None);
        }
        if header.is_control() {
            return Ok(self.replay_marker(header, stored_batch));
        }
        let Some(last_seq) = last_seq_of(header.base_sequence.get(), header.last_offset_delta.get()) else {
            tracing::warn!(
                producer_id,
                base_offset = header.base_offset.get(),
                "skipping stored batch with an invalid base sequence"
            );
            return Ok(None);
        };
        let first_offset = header.base_offset.get();
        let already_known = self
            .producers
            .get(&producer_id)
            .and_then(ProducerEntry::last_offset)
            .is_some_and(|previous| first_offset <= previous);
        if already_known {
            return Ok(None);
        }
        let meta = BatchMeta {
            first_seq: header.base_sequence.get(),
            last_seq,
            first_offset,
            last_offset: header.last_offset(),
            timestamp_ms: header.max_timestamp.get(),
        };
        self.record(producer_id, header.producer_epoch.get(), meta, meta.timestamp_ms);
        if header.is_transactional() {
            self.open_txn(producer_id, first_offset);
        }
        Ok(None)
    }

    /// A stored marker: closes the producer's open transaction when that
    /// transaction started before it. Any other marker is already reflected
    /// (the snapshot the rebuild started from came after it), closed a
    /// transaction with no records here, or names a producer not known here:
    /// nothing to do.
    fn replay_marker(&mut self, header: &BatchHeader, stored_batch: &[u8]) -> Option<CompletedTxn> {
        let producer_id = header.producer_id.get();
        let offset = header.base_offset.get();
        let open_before = self
            .producers
            .get(&producer_id)?
            .current_txn_first_offset
            .is_some_and(|first| first < offset);
        if !open_before {
            return None;
        }
        let marker = crate::storage::txn_marker::decode(&bytes::Bytes::copy_from_slice(stored_batch))?;
        self.on_marker_appended(
            producer_id,
            header.producer_epoch.get(),
            marker,
            offset,
            header.max_timestamp.get(),
        )
    }

    fn record(&mut self, producer_id: i64, epoch: i16, meta: BatchMeta, now_ms: i64) {
        let entry = self
            .producers
            .entry(producer_id)
            .or_insert_with(|| ProducerEntry {
                producer_epoch: epoch,
                batches: VecDeque::with_capacity(BATCHES_REMEMBERED),
                last_timestamp_ms: now_ms,
                current_txn_first_offset: None,
                coordinator_epoch: -1,
            });
        if entry.producer_epoch != epoch {
            entry.producer_epoch = epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == BATCHES_REMEMBERED {
            entry.batches.pop_front();
        }
        entry.batches.push_back(meta);
        entry.last_timestamp_ms = now_ms;
        debug_assert!(entry.batches.len() <= BATCHES_REMEMBERED);
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// Drops producers idle for `expiration_ms` or longer (Kafka:
    /// `producer.id.expiration.ms`, default
    /// [`PRODUCER_ID_EXPIRATION_MS_DEFAULT`]).
    /// A producer with an open transaction here is kept: its transaction
    /// must end by a marker (or the coordinator's timeout abort) first.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) {
        self.producers.retain(|_, entry| {
            entry.current_txn_first_offset.is_some()
                || now_ms.saturating_sub(entry.last_timestamp_ms) < expiration_ms
        });
    }

    /// Encodes the state as a snapshot covering the log up to (excluding)
    /// `log_offset`, the log end offset. Entries are sorted by producer id,
    /// so equal states encode to equal bytes.
    pub fn encode_snapshot(&self, log_offset: i64) -> Vec<u8> {
        assert!(log_offset >= 0, "snapshot offset {log_offset} is negative");
        let mut entries: Vec<(&i64, &ProducerEntry)> = self.producers.iter().collect();
        entries.sort_unstable_by_key(|(producer_id, _)| **producer_id);
        let mut body = Vec::with_capacity(
            SNAPSHOT_BODY_HEADER_BYTES
                + self.producers.len()
                    * (SNAPSHOT_ENTRY_BYTES + SNAPSHOT_TXN_BYTES + 2 * SNAPSHOT_BATCH_BYTES),
        );
        let entry_count = u32::try_from(entries.len()).expect("entry count fits u32");
        let body_header = SnapshotBodyHeader {
            log_offset: I64::new(log_offset),
            entry_count: U32::new(entry_count),
        };
        body.extend_from_slice(body_header.as_bytes());
        for (producer_id, entry) in entries {
            let batch_count = u16::try_from(entry.batches.len()).expect("at most 5 batches");
            let encoded = SnapshotEntry {
                producer_id: I64::new(*producer_id),
                producer_epoch: I16::new(entry.producer_epoch),
                last_timestamp_ms: I64::new(entry.last_timestamp_ms),
                batch_count: U16::new(batch_count),
            };
            body.extend_from_slice(encoded.as_bytes());
            let txn = SnapshotTxn {
                current_txn_first_offset: I64::new(entry.current_txn_first_offset.unwrap_or(-1)),
                coordinator_epoch: I32::new(entry.coordinator_epoch),
            };
            body.extend_from_slice(txn.as_bytes());
            for meta in &entry.batches {
                assert!(
                    meta.last_offset < log_offset,
                    "producer {producer_id} batch at {} is past snapshot offset {log_offset}",
                    meta.last_offset
                );
                let encoded = SnapshotBatch {
                    first_seq: I32::new(meta.first_seq),
                    last_seq: I32::new(meta.last_seq),
                    first_offset: I64::new(meta.first_offset),
                    last_offset: I64::new(meta.last_offset),
                    timestamp_ms: I64::new(meta.timestamp_ms),
                };
                body.extend_from_slice(encoded.as_bytes());
            }
        }
        let header = SnapshotHeader {
            magic: SNAPSHOT_MAGIC,
            version: U16::new(SNAPSHOT_VERSION),
            body_bytes: U32::new(u32::try_from(body.len()).expect("snapshot body fits u32")),
            crc: U32::new(crc32c::crc32c(&body)),
        };
        let mut out = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + body.len());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Decodes a snapshot written by [`encode_snapshot`](Self::encode_snapshot)
    /// into its log offset and state. Checks the framing and CRC32C, then
    /// every count and invariant; never panics and never allocates more than
    /// the input can describe.
    pub fn decode_snapshot(bytes: &[u8]) -> Result<(i64, ProducerStates), SnapshotError> {
        let (version, body) = check_snapshot_frame(bytes)?;
        let (body_header, mut rest) = SnapshotBodyHeader::ref_from_prefix(body)
            .map_err(|_| SnapshotError::Truncated { what: "body header" })?;
        let log_offset = body_header.log_offset.get();
        if log_offset < 0 {
            return Err(SnapshotError::Invalid("negative log offset"));
        }
        let entry_count = body_header.entry_count.get();
        let entry_bytes_min = if version == SNAPSHOT_VERSION_NO_TXN {
            SNAPSHOT_ENTRY_BYTES + SNAPSHOT_BATCH_BYTES
        } else {
            SNAPSHOT_ENTRY_BYTES + SNAPSHOT_TXN_BYTES
        } as u64;
        if u64::from(entry_count) * entry_bytes_min > rest.len() as u64 {
            return Err(SnapshotError::ImpossibleCount {
                what: "entries",
                count: entry_count,
                remaining_bytes: rest.len(),
            });
        }
        // Bounded by the check above: at most rest.len() / 32 entries.
        let mut producers = HashMap::with_capacity(entry_count as usize);
        let mut open_txns = BTreeMap::new();
        for _ in 0..entry_count {
            let (producer_id, entry, after) = decode_entry(rest, log_offset, version)?;
            if let Some(first) = entry.current_txn_first_offset {
                if open_txns.insert(first, producer_id).is_some() {
                    return Err(SnapshotError::Invalid("two transactions start at one offset"));
                }
            }
            if producers.insert(producer_id, entry).is_some() {
                return Err(SnapshotError::Invalid("duplicate producer id"));
            }
            rest = after;
        }
        if !rest.is_empty() {
            return Err(SnapshotError::TrailingBytes { len: rest.len() });
        }
        Ok((log_offset, ProducerStates { producers, open_txns }))
    }
}

/// Why a producer-state snapshot was refused. The caller's answer to any of
/// them is the same: drop the snapshot and rebuild from an older one or from
/// the log.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("producer snapshot too short: {len} bytes, header needs {SNAPSHOT_HEADER_BYTES}")]
    TooShort { len: usize },
    #[error("producer snapshot has bad magic {0:02x?}")]
    BadMagic([u8; 4]),
    #[error("producer snapshot version {0} is not supported (expected {SNAPSHOT_VERSION})")]
    UnsupportedVersion(u16),
    #[error("producer snapshot declares {declared} body bytes, has {available}")]
    BadLength { declared: u32, available: usize },
    #[error("producer snapshot CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("producer snapshot truncated in {what}")]
    Truncated { what: &'static str },
    #[error("producer snapshot declares {count} {what}, impossible in {remaining_bytes} bytes")]
    ImpossibleCount {
        what: &'static str,
        count: u32,
        remaining_bytes: usize,
    },
    #[error("producer snapshot has {len} bytes after its last entry")]
    TrailingBytes { len: usize },
    #[error("producer snapshot is inconsistent: {0}")]
    Invalid(&'static str),
}

/// Snapshot file name for `log_offset`, like Kafka: 20-digit zero-padded
/// offset, `.snapshot` suffix.
pub fn snapshot_file_name(log_offset: i64) -> String {
    assert!(log_offset >= 0, "snapshot offset {log_offset} is negative");
    format!("{log_offset:020}{SNAPSHOT_FILE_SUFFIX}")
}

/// The offset in a name made by [`snapshot_file_name`], or `None` for any
/// other name.
pub fn parse_snapshot_file_name(name: &str) -> Option<i64> {
    let digits = name.strip_suffix(SNAPSHOT_FILE_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

pub const SNAPSHOT_FILE_SUFFIX: &str = ".snapshot";

// Snapshot layout, all big-endian:
//   header: magic "SLPS", version u16, body_bytes u32, crc32c(body) u32
//   body:   log_offset i64, entry_count u32,
//           entry_count × (producer_id i64, producer_epoch i16,
//                          last_timestamp_ms i64, batch_count u16,
//                          batch_count × (first_seq i32, last_seq i32,
//                                         first_offset i64, last_offset i64,
//                                         timestamp_ms i64))
const SNAPSHOT_MAGIC: [u8; 4] = *b"SLPS";
/// Version 2 adds each entry's transaction fields (`SnapshotTxn`) and
/// allows entries without batches (a marker with a new epoch clears them);
/// version 1 snapshots still load.
const SNAPSHOT_VERSION: u16 = 2;
const SNAPSHOT_VERSION_NO_TXN: u16 = 1;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy)]
#[repr(C)]
struct SnapshotHeader {
    magic: [u8; 4],
    version: U16<BE>,
    body_bytes: U32<BE>,
    crc: U32<BE>,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy)]
#[repr(C)]
struct SnapshotBodyHeader {
    log_offset: I64<BE>,
    entry_count: U32<BE>,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy)]
#[repr(C)]
struct SnapshotEntry {
    producer_id: I64<BE>,
    producer_epoch: I16<BE>,
    last_timestamp_ms: I64<BE>,
    batch_count: U16<BE>,
}

/// After each entry from version 2 on; -1: no open transaction.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy)]
#[repr(C)]
struct SnapshotTxn {
    current_txn_first_offset: I64<BE>,
    coordinator_epoch: I32<BE>,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy)]
#[repr(C)]
struct SnapshotBatch {
    first_seq: I32<BE>,
    last_seq: I32<BE>,
    first_offset: I64<BE>,
    last_offset: I64<BE>,
    timestamp_ms: I64<BE>,
}

const SNAPSHOT_HEADER_BYTES: usize = 14;
const SNAPSHOT_BODY_HEADER_BYTES: usize = 12;
const SNAPSHOT_ENTRY_BYTES: usize = 20;
const SNAPSHOT_BATCH_BYTES: usize = 32;
const SNAPSHOT_TXN_BYTES: usize = 12;
const _: () = assert!(std::mem::size_of::<SnapshotTxn>() == SNAPSHOT_TXN_BYTES);
const _: () = assert!(std::mem::size_of::<SnapshotHeader>() == SNAPSHOT_HEADER_BYTES);
const _: () = assert!(std::mem::size_of::<SnapshotBodyHeader>() == SNAPSHOT_BODY_HEADER_BYTES);
const _: () = assert!(std::mem::size_of::<SnapshotEntry>() == SNAPSHOT_ENTRY_BYTES);
const _: () = assert!(std::mem::size_of::<SnapshotBatch>() == SNAPSHOT_BATCH_BYTES);

/// Checks magic, version, length and CRC32C; returns the version and body.
fn check_snapshot_frame(bytes: &[u8]) -> Result<(u16, &[u8]), SnapshotError> {
    let (header, body) =
        SnapshotHeader::ref_from_prefix(bytes).map_err(|_| SnapshotError::TooShort { len: bytes.len() })?;
    if header.magic != SNAPSHOT_MAGIC {
        return Err(SnapshotError::BadMagic(header.magic));
    }
    if header.version.get() != SNAPSHOT_VERSION && header.version.get() != SNAPSHOT_VERSION_NO_TXN {
        return Err(SnapshotError::UnsupportedVersion(header.version.get()));
    }
    let declared = header.body_bytes.get();
    if u64::from(declared) != body.len() as u64 {
        return Err(SnapshotError::BadLength {
            declared,
            available: body.len(),
        });
    }
    let computed = crc32c::crc32c(body);
    let stored = header.crc.get();
    if computed != stored {
        return Err(SnapshotError::CrcMismatch { stored, computed });
    }
    Ok((header.version.get(), body))
}

/// Decodes one entry at the start of `bytes`; returns it and the rest.
fn decode_entry(
    bytes: &[u8],
    log_offset: i64,
    version: u16,
) -> Result<(i64, ProducerEntry, &[u8]), SnapshotError> {
    let (encoded, mut rest) =
        SnapshotEntry::ref_from_prefix(bytes).map_err(|_| SnapshotError::Truncated { what: "entry" })?;
    let producer_id = encoded.producer_id.get();
    let producer_epoch = encoded.producer_epoch.get();
    if producer_id < 0 || producer_epoch < 0 {
        return Err(SnapshotError::Invalid("negative producer id or epoch"));
    }
    let (current_txn_first_offset, coordinator_epoch) = if version == SNAPSHOT_VERSION_NO_TXN {
        (None, -1)
    } else {
        let (txn, after) =
            SnapshotTxn::ref_from_prefix(rest).map_err(|_| SnapshotError::Truncated { what: "entry" })?;
        rest = after;
        let first = txn.current_txn_first_offset.get();
        if first < -1 || first >= log_offset {
            return Err(SnapshotError::Invalid("transaction first offset out of range"));
        }
        ((first >= 0).then_some(first), txn.coordinator_epoch.get())
    };
    let batch_count = encoded.batch_count.get();
    let batches_min = u16::from(version == SNAPSHOT_VERSION_NO_TXN);
    if batch_count < batches_min || usize::from(batch_count) > BATCHES_REMEMBERED {
        return Err(SnapshotError::ImpossibleCount {
            what: "batches",
            count: u32::from(batch_count),
            remaining_bytes: rest.len(),
        });
    }
    let mut batches = VecDeque::with_capacity(usize::from(batch_count));
    for _ in 0..batch_count {
        let (encoded, after) =
            SnapshotBatch::ref_from_prefix(rest).map_err(|_| SnapshotError::Truncated { what: "batch" })?;
        let meta = BatchMeta {
            first_seq: encoded.first_seq.get(),
            last_seq: encoded.last_seq.get(),
            first_offset: encoded.first_offset.get(),
            last_offset: encoded.last_offset.get(),
            timestamp_ms: encoded.timestamp_ms.get(),
        };
        check_batch_meta(&meta, batches.back(), log_offset)?;
        batches.push_back(meta);
        rest = after;
    }
    let entry = ProducerEntry {
        producer_epoch,
        batches,
        last_timestamp_ms: encoded.last_timestamp_ms.get(),
        current_txn_first_offset,
        coordinator_epoch,
    };
    Ok((producer_id, entry, rest))
}

/// The invariants `on_appended` keeps, re-checked on what a snapshot claims.
fn check_batch_meta(
    meta: &BatchMeta,
    previous: Option<&BatchMeta>,
    log_offset: i64,
) -> Result<(), SnapshotError> {
    if meta.first_offset < 0 || meta.first_offset > meta.last_offset || meta.last_offset >= log_offset {
        return Err(SnapshotError::Invalid("batch offsets out of range"));
    }
    if previous.is_some_and(|p| meta.first_offset <= p.last_offset) {
        return Err(SnapshotError::Invalid("batch offsets do not increase"));
    }
    let last_offset_delta = i32::try_from(meta.last_offset - meta.first_offset)
        .map_err(|_| SnapshotError::Invalid("batch spans too many offsets"))?;
    if last_seq_of(meta.first_seq, last_offset_delta) != Some(meta.last_seq) {
        return Err(SnapshotError::Invalid(
            "batch sequence range does not match offsets",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::batch::{validate, CRC_COVERED_START};
    use crate::storage::testutil::make_batch;

    /// A header-valid batch at `base_offset` with `n_records` records from
    /// producer `producer_id`/`epoch`, first sequence `base_seq`.
    fn idempotent_batch(
        base_offset: i64,
        producer_id: i64,
        epoch: i16,
        base_seq: i32,
        n_records: usize,
    ) -> Vec<u8> {
        let mut bytes = make_batch(base_offset, n_records, 8, 1_000 + base_offset).to_vec();
        let (header, _) = BatchHeader::mut_from_prefix(&mut bytes).expect("header fits");
        header.producer_id = I64::new(producer_id);
        header.producer_epoch = I16::new(epoch);
        header.base_sequence = I32::new(base_seq);
        let crc = crc32c::crc32c(&bytes[CRC_COVERED_START..]);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        validate(&bytes).expect("helper builds valid batches");
        bytes
    }

    fn header(bytes: &[u8]) -> &BatchHeader {
        validate(bytes).expect("valid batch")
    }

    /// Checks `bytes`, requires Append, and records it at its header offsets.
    fn append(states: &mut ProducerStates, bytes: &[u8]) {
        let h = header(bytes);
        assert_eq!(states.check(h), SequenceCheck::Append);
        states.on_appended(h, h.base_offset.get(), h.last_offset(), h.max_timestamp.get());
    }

    const PID: i64 = 7;

    #[test]
    fn batch_without_producer_id_is_not_idempotent_and_not_tracked() {
        let mut states = ProducerStates::new();
        let bytes = make_batch(0, 3, 8, 0);
        let h = header(&bytes);
        assert_eq!(states.check(h), SequenceCheck::NotIdempotent);
        states.on_appended(h, 0, 2, 0);
        assert!(states.is_empty());
    }

    #[test]
    fn first_batch_of_new_producer_must_have_sequence_zero() {
        let states = ProducerStates::new();
        let bytes = idempotent_batch(0, PID, 0, 3, 2);
        assert_eq!(
            states.check(header(&bytes)),
            SequenceCheck::OutOfOrder {
                expected_first_seq: 0,
                got_first_seq: 3
            }
        );
        let bytes = idempotent_batch(0, PID, 0, 0, 2);
        assert_eq!(states.check(header(&bytes)), SequenceCheck::Append);
    }

    #[test]
    fn in_order_batches_are_accepted_and_remembered() {
        let mut states = ProducerStates::new();
        append(&mut states, &idempotent_batch(0, PID, 0, 0, 3));
        append(&mut states, &idempotent_batch(3, PID, 0, 3, 1));
        append(&mut states, &idempotent_batch(10, PID, 0, 4, 5));
        let entry = states.get(PID).expect("tracked");
        assert_eq!(entry.producer_epoch, 0);
        assert_eq!(entry.batches.len(), 3);
        assert_eq!(
            entry.batches.back(),
            Some(&BatchMeta {
                first_seq: 4,
                last_seq: 8,
                first_offset: 10,
                last_offset: 14,
                timestamp_ms: 1_014,
            })
        );
        assert_eq!(states.len(), 1);
    }

    #[test]
    fn sequence_gap_is_out_of_order_with_expected_sequence() {
        let mut states = ProducerStates::new();
        append(&mut states, &idempotent_batch(0, PID, 0, 0, 3));
        let bytes = idempotent_batch(3, PID, 0, 5, 1);
        assert_eq!(
            states.check(header(&bytes)),
            SequenceCheck::OutOfOrder {
                expected_first_seq: 3,
                got_first_seq: 5
            }
        );
    }

    #[test]
    fn negative_base_sequence_is_out_of_order() {
        let mut states = ProducerStates::new();
        append(&mut states, &idempotent_batch(0, PID, 0, 0, 3));
        let bytes = idempotent_batch(3, PID, 0, -5, 1);
        assert_eq!(
            states.check(header(&bytes)),
            SequenceCheck::OutOfOrder {
                expected_first_seq: 3,
                got_first_seq: -5
            }
        );
    }

    #[test]
    fn retry_of_each_of_last_five_batches_is_duplicate_and_sixth_oldest_is_out_of_order() {
        let mut states = ProducerStates::new();
        let mut sent = Vec::new();
        for i in 0..6 {
            let bytes = idempotent_batch(i * 2, PID, 0, (i * 2) as i32, 2);
            append(&mut states, &bytes);
            sent.push(bytes);
        }
        for (i, bytes) in sent.iter().enumerate().skip(1) {
            // Retried with a new base offset, as a client would (it's unset).
            let mut retried = bytes.clone();
            batch::set_base_offset(&mut retried, -1);
            let i = i as i64;
            assert_eq!(
                states.check(header(&retried)),
                SequenceCheck::Duplicate(BatchMeta {
                    first_seq: (i * 2) as i32,
                    last_seq: (i * 2 + 1) as i32,
                    first_offset: i * 2,
                    last_offset: i * 2 + 1,
                    timestamp_ms: 1_000 + i * 2 + 1,
                })
            );
        }
        assert_eq!(
            states.check(header(&sent[0])),
            SequenceCheck::OutOfOrder {
                expected_first_seq: 12,
                got_first_seq: 0
            }
        );
        assert_eq!(states.get(PID).map(|e| e.batches.len()), Some(BATCHES_REMEMBERED));
    }

    #[test]
    fn retry_with_same_first_but_different_last_sequence_is_not_duplicate() {
        let mut states = ProducerStates::new();
        append(&mut states, &idempotent_batch(0, PID, 0, 0, 3));
        let bytes = idempotent_batch(0, PID, 0, 0, 2);
        assert_eq!(
            states.check(header(&bytes)),
            SequenceCheck::OutOfOrder {
                expected_first_seq: 3,
                got_first_seq: 0
            }
        );
    }

    #[test]
    fn older_epoch_is_invalid_epoch() {
        let mut states = ProducerStates::new();
        append(&mut states, &idempotent_batch(0, PID, 3, 0, 1));
        let bytes = idempotent_batch(1, PID, 2, 1, 1);
        assert_eq!(
            states.check(header(&bytes)),
            SequenceCheck::InvalidEpoch { current: 3, got: 2 }
        );
        let bytes = idempotent_batch(1, PID + 1, -2, 0, 1);
        assert_eq!(
            states.check(header(&bytes)),
            SequenceCheck::InvalidEpoch {
                current: NO_PRODUCER_EPOCH,
                got: -2
            }
        );
    }

    #[test]
    fn new_epoch_resets_sequence_to_zero() {
        let mut states = ProducerStates::new();
        append(&mut states, &idempotent_batch(0, PID, 0, 0, 4));
        append(&mut states, &idempotent_batch(4, PID, 0, 4, 4));
        let non_zero = idempotent_batch(8, PID, 1, 8, 1);
        assert_eq!(
            states.check(header(&non_zero)),
            SequenceCheck::OutOfOrder {
                expected_first_seq: 0,
                got_first_seq: 8
            }
        );
        append(&mut states, &idempotent_batch(8, PID, 1, 0, 2));
        let entry = states.get(PID).expect("tracked");
        assert_eq!(entry.producer_epoch, 1);
        assert_eq!(entry.batches.len(), 1);
        // The old epoch's batches are no longer duplicates: the epoch is fenced.
        let old = idempotent_batch(4, PID, 0, 4, 4);
        assert_eq!(
            states.check(header(&old)),
            SequenceCheck::InvalidEpoch { current: 1, got: 0 }
        );
    }

    #[test]
    fn sequence_wraps_from_i32_max_to_zero() {
        let mut states = ProducerStates::new();
        // Reach the top of the range by replaying a stored batch (a client
        // would need 2^31 records to get there).
        states
            .replay(&idempotent_batch(0, PID, 0, i32::MAX - 2, 2))
            .expect("valid batch");
        append(&mut states, &idempotent_batch(2, PID, 0, i32::MAX, 1));
        let after_max = idempotent_batch(3, PID, 0, 1, 1);
        assert_eq!(
            states.check(header(&after_max)),
            SequenceCheck::OutOfOrder {
                expected_first_seq: 0,
                got_first_seq: 1
            }
        );
        append(&mut states, &idempotent_batch(3, PID, 0, 0, 2));
        append(&mut states, &idempotent_batch(5, PID, 0, 2, 1));
    }

    #[test]
    fn batch_spanning_i32_max_wraps_its_last_sequence() {
        let mut states = ProducerStates::new();
        states
            .replay(&idempotent_batch(0, PID, 0, i32::MAX - 3, 2))
            .expect("valid batch");
        // Sequences MAX-1, MAX, 0.
        let spanning = idempotent_batch(2, PID, 0, i32::MAX - 1, 3);
        append(&mut states, &spanning);
        let last = states.get(PID).and_then(|e| e.batches.back().copied());
        assert_eq!(last.map(|b| (b.first_seq, b.last_seq)), Some((i32::MAX - 1, 0)));
        assert_eq!(
            states.check(header(&spanning)),
            SequenceCheck::Duplicate(last.expect("remembered"))
        );
        append(&mut states, &idempotent_batch(5, PID, 0, 1, 1));
    }

    #[test]
    fn check_does_not_change_state() {
        let mut states = ProducerStates::new();
        append(&mut states, &idempotent_batch(0, PID, 0, 0, 1));
        let before = states.get(PID).cloned();
        let _ = states.check(header(&idempotent_batch(1, PID, 0, 1, 1)));
        let _ = states.check(header(&idempotent_batch(1, PID, 5, 0, 1)));
        assert_eq!(states.get(PID).cloned(), before);
    }

    #[test]
    #[should_panic(expected = "offsets do not increase")]
    fn on_appended_panics_when_offsets_go_back() {
        let mut states = ProducerStates::new();
        append(&mut states, &idempotent_batch(10, PID, 0, 0, 1));
        let bytes = idempotent_batch(5, PID, 0, 1, 1);
        states.on_appended(header(&bytes), 5, 5, 0);
    }

    #[test]
    fn expire_drops_producers_idle_for_expiration() {
        let mut states = ProducerStates::new();
        let a = idempotent_batch(0, 1, 0, 0, 1);
        let b = idempotent_batch(1, 2, 0, 0, 1);
        states.on_appended(header(&a), 0, 0, 1_000);
        states.on_appended(header(&b), 1, 1, 5_000);
        states.expire(10_999, 10_000);
        assert_eq!(states.len(), 2);
        states.expire(11_000, 10_000);
        assert!(states.get(1).is_none());
        assert!(states.get(2).is_some());
        states.expire(i64::MAX, PRODUCER_ID_EXPIRATION_MS_DEFAULT);
        assert!(states.is_empty());
    }

    /// Several producers, epochs and more than five batches each; returns
    /// the stored batches in log order.
    fn populated_log() -> Vec<Vec<u8>> {
        let mut log = Vec::new();
        let mut offset = 0i64;
        let mut next_seq = [0i32; 3];
        for round in 0..8 {
            for (producer, seq) in next_seq.iter_mut().enumerate() {
                let epoch = if producer == 2 && round >= 4 { 1 } else { 0 };
                if producer == 2 && round == 4 {
                    *seq = 0;
                }
                let n_records = 1 + (round + producer) % 3;
                log.push(idempotent_batch(
                    offset,
                    100 + producer as i64,
                    epoch,
                    *seq,
                    n_records,
                ));
                log.push(make_batch(offset + n_records as i64, 1, 4, 0).to_vec());
                offset += n_records as i64 + 1;
                *seq += n_records as i32;
            }
        }
        log
    }

    fn states_from_appends(log: &[Vec<u8>]) -> ProducerStates {
        let mut states = ProducerStates::new();
        for bytes in log {
            let h = header(bytes);
            if states.check(h) != SequenceCheck::NotIdempotent {
                append(&mut states, bytes);
            }
        }
        states
    }

    fn assert_same_state(a: &ProducerStates, b: &ProducerStates) {
        assert_eq!(a.producers, b.producers);
    }

    #[test]
    fn replay_of_stored_batches_rebuilds_same_state_as_on_appended() {
        let log = populated_log();
        let live = states_from_appends(&log);
        assert_eq!(live.len(), 3);
        assert_eq!(live.get(102).map(|e| e.producer_epoch), Some(1));
        let mut rebuilt = ProducerStates::new();
        for bytes in &log {
            rebuilt.replay(bytes).expect("valid stored batch");
        }
        assert_same_state(&live, &rebuilt);
        // Replaying batches already covered (e.g. by a snapshot) is a no-op.
        for bytes in &log {
            rebuilt.replay(bytes).expect("valid stored batch");
        }
        assert_same_state(&live, &rebuilt);
    }

    #[test]
    fn replay_rejects_a_malformed_batch() {
        let mut states = ProducerStates::new();
        let bytes = idempotent_batch(0, PID, 0, 0, 2);
        assert!(states.replay(&bytes[..bytes.len() - 1]).is_err());
        assert!(states.is_empty());
    }

    fn log_end_offset(log: &[Vec<u8>]) -> i64 {
        log.last().map_or(0, |b| header(b).last_offset() + 1)
    }

    #[test]
    fn snapshot_round_trips() {
        let log = populated_log();
        let states = states_from_appends(&log);
        let end = log_end_offset(&log);
        let bytes = states.encode_snapshot(end);
        let (offset, decoded) = ProducerStates::decode_snapshot(&bytes).expect("valid snapshot");
        assert_eq!(offset, end);
        assert_same_state(&states, &decoded);
        assert_eq!(decoded.encode_snapshot(end), bytes);

        let empty = ProducerStates::new().encode_snapshot(0);
        let (offset, decoded) = ProducerStates::decode_snapshot(&empty).expect("valid snapshot");
        assert_eq!(offset, 0);
        assert!(decoded.is_empty());
    }

    #[test]
    fn decode_rejects_each_flipped_byte() {
        let log = populated_log();
        let bytes = states_from_appends(&log).encode_snapshot(log_end_offset(&log));
        for position in 0..bytes.len() {
            let mut corrupt = bytes.clone();
            corrupt[position] ^= 0x01;
            assert!(
                ProducerStates::decode_snapshot(&corrupt).is_err(),
                "flip at {position} accepted"
            );
        }
        let mut corrupt = bytes.clone();
        corrupt[SNAPSHOT_HEADER_BYTES + 3] ^= 0xff;
        assert!(matches!(
            ProducerStates::decode_snapshot(&corrupt),
            Err(SnapshotError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn decode_rejects_truncation_at_every_length() {
        let log = populated_log();
        let bytes = states_from_appends(&log).encode_snapshot(log_end_offset(&log));
        for len in 0..bytes.len() {
            assert!(
                ProducerStates::decode_snapshot(&bytes[..len]).is_err(),
                "prefix of {len} bytes accepted"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(ProducerStates::decode_snapshot(&longer).is_err());
    }

    /// Frames `body` with a valid header and CRC, to reach the checks behind
    /// the CRC.
    fn framed(body: &[u8]) -> Vec<u8> {
        let header = SnapshotHeader {
            magic: SNAPSHOT_MAGIC,
            version: U16::new(SNAPSHOT_VERSION),
            body_bytes: U32::new(body.len() as u32),
            crc: U32::new(crc32c::crc32c(body)),
        };
        let mut out = header.as_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn decode_rejects_impossible_counts_behind_a_valid_crc() {
        let mut body = 10i64.to_be_bytes().to_vec();
        body.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            ProducerStates::decode_snapshot(&framed(&body)),
            Err(SnapshotError::ImpossibleCount { what: "entries", .. })
        ));

        let log = populated_log();
        let end = log_end_offset(&log);
        let bytes = states_from_appends(&log).encode_snapshot(end);
        let mut body = bytes[SNAPSHOT_HEADER_BYTES..].to_vec();
        // First entry's batch_count is the last 2 bytes of its 20-byte header.
        let batch_count_at = SNAPSHOT_BODY_HEADER_BYTES + SNAPSHOT_ENTRY_BYTES - 2;
        body[batch_count_at..batch_count_at + 2].copy_from_slice(&6u16.to_be_bytes());
        assert!(matches!(
            ProducerStates::decode_snapshot(&framed(&body)),
            Err(SnapshotError::ImpossibleCount { what: "batches", .. })
        ));

        // A snapshot offset below the batches it holds is inconsistent.
        let mut body = bytes[SNAPSHOT_HEADER_BYTES..].to_vec();
        body[..8].copy_from_slice(&1i64.to_be_bytes());
        assert_eq!(
            ProducerStates::decode_snapshot(&framed(&body)).err(),
            Some(SnapshotError::Invalid("batch offsets out of range"))
        );
    }

    #[test]
    fn decode_survives_random_garbage_without_panicking() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let log = populated_log();
        let valid = states_from_appends(&log).encode_snapshot(log_end_offset(&log));
        let valid_body = &valid[SNAPSHOT_HEADER_BYTES..];
        for round in 0..6_000 {
            let input = match round % 3 {
                // Pure noise: stops at the frame.
                0 => {
                    let len = (next() % 600) as usize;
                    let noise: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                    assert!(ProducerStates::decode_snapshot(&noise).is_err());
                    continue;
                }
                // Noise behind a valid frame and CRC: reaches the body checks.
                1 => {
                    let len = (next() % 600) as usize;
                    framed(&(0..len).map(|_| next() as u8).collect::<Vec<u8>>())
                }
                // A valid body with a few bytes changed, re-framed: reaches
                // the entry and batch checks.
                _ => {
                    let mut body = valid_body.to_vec();
                    for _ in 0..1 + next() % 4 {
                        let position = (next() % body.len() as u64) as usize;
                        body[position] = next() as u8;
                    }
                    framed(&body)
                }
            };
            if let Ok((offset, states)) = ProducerStates::decode_snapshot(&input) {
                // Whatever is accepted must satisfy the encoder's invariants.
                let again = ProducerStates::decode_snapshot(&states.encode_snapshot(offset));
                assert_eq!(again.map(|(_, s)| s.producers), Ok(states.producers));
            }
        }
    }

    #[test]
    fn snapshot_file_name_is_twenty_digit_offset() {
        assert_eq!(snapshot_file_name(0), "00000000000000000000.snapshot");
        assert_eq!(snapshot_file_name(1234), "00000000000000001234.snapshot");
        assert_eq!(snapshot_file_name(i64::MAX), "09223372036854775807.snapshot");
        for offset in [0, 1, 1234, i64::MAX] {
            assert_eq!(
                parse_snapshot_file_name(&snapshot_file_name(offset)),
                Some(offset)
            );
        }
        for name in [
            "00000000000000001234.log",
            "0000000000000001234.snapshot",
            "000000000000000001234.snapshot",
            "-0000000000000001234.snapshot",
            "+0000000000000001234.snapshot",
            "99999999999999999999.snapshot",
            "0000000000000000123a.snapshot",
            ".snapshot",
        ] {
            assert_eq!(parse_snapshot_file_name(name), None, "{name}");
        }
    }

    /// `idempotent_batch` flagged transactional.
    fn txn_batch(base_offset: i64, producer_id: i64, epoch: i16, base_seq: i32, n_records: usize) -> Vec<u8> {
        let mut bytes = idempotent_batch(base_offset, producer_id, epoch, base_seq, n_records);
        let (header, _) = BatchHeader::mut_from_prefix(&mut bytes).expect("header fits");
        header.attributes = I16::new(header.attributes.get() | 0x10);
        let crc = crc32c::crc32c(&bytes[CRC_COVERED_START..]);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        bytes
    }

    fn marker_at(offset: i64, producer_id: i64, epoch: i16, commit: bool) -> Vec<u8> {
        let marker = crate::storage::txn_marker::Marker {
            commit,
            coordinator_epoch: 1,
        };
        let mut bytes = crate::storage::txn_marker::encode(producer_id, epoch, marker, 5_000).to_vec();
        bytes[..8].copy_from_slice(&offset.to_be_bytes());
        bytes
    }

    #[test]
    fn a_transaction_opens_at_its_first_batch_and_a_marker_closes_it() {
        let mut states = ProducerStates::new();
        append(&mut states, &txn_batch(10, PID, 0, 0, 2));
        append(&mut states, &txn_batch(12, PID, 0, 2, 2));
        append(&mut states, &txn_batch(14, 8, 0, 0, 1));
        assert_eq!(states.first_unstable_offset(), Some(10));
        assert_eq!(
            states.open_transactions().collect::<Vec<_>>(),
            vec![(10, PID), (14, 8)]
        );
        // A non-transactional batch while the transaction is open is refused.
        let plain = idempotent_batch(16, PID, 0, 4, 1);
        assert_eq!(
            states.check(validate(&plain).unwrap()),
            SequenceCheck::InvalidTxnState
        );
        // Markers: an older epoch or coordinator epoch is refused.
        assert_eq!(
            states.check_marker(PID, -1, 0),
            Err(MarkerRefusal::InvalidEpoch { current: 0, got: -1 })
        );
        assert_eq!(states.check_marker(PID, 0, 0), Ok(()));
        let abort = crate::storage::txn_marker::Marker {
            commit: false,
            coordinator_epoch: 3,
        };
        let done = states.on_marker_appended(PID, 0, abort, 16, 2_000).unwrap();
        assert_eq!(
            done,
            CompletedTxn {
                producer_id: PID,
                first_offset: 10,
                last_offset: 16,
                aborted: true
            }
        );
        assert_eq!(
            states.check_marker(PID, 0, 2),
            Err(MarkerRefusal::CoordinatorFenced { current: 3, got: 2 })
        );
        assert_eq!(states.first_unstable_offset(), Some(14));
        // After the marker the producer writes outside a transaction again.
        let plain = idempotent_batch(17, PID, 0, 4, 1);
        assert_eq!(states.check(validate(&plain).unwrap()), SequenceCheck::Append);
        // A marker with a new epoch (the coordinator fenced the producer)
        // resets its sequences.
        let commit = crate::storage::txn_marker::Marker {
            commit: true,
            coordinator_epoch: 3,
        };
        states.on_marker_appended(8, 1, commit, 18, 2_000).unwrap();
        assert_eq!(states.first_unstable_offset(), None);
        assert!(states.get(8).unwrap().batches.is_empty());
        let restart = idempotent_batch(19, 8, 1, 0, 1);
        assert_eq!(states.check(validate(&restart).unwrap()), SequenceCheck::Append);
    }

    #[test]
    fn replay_and_snapshots_rebuild_open_transactions_and_their_ends() {
        let log = [
            txn_batch(0, PID, 0, 0, 2),
            txn_batch(2, 8, 0, 0, 1),
            marker_at(3, PID, 0, false),
            txn_batch(4, PID, 0, 2, 1),
        ];
        let mut replayed = ProducerStates::new();
        let mut ended = Vec::new();
        for bytes in &log {
            ended.extend(replayed.replay(bytes).unwrap());
        }
        assert_eq!(
            ended,
            vec![CompletedTxn {
                producer_id: PID,
                first_offset: 0,
                last_offset: 3,
                aborted: true
            }]
        );
        assert_eq!(
            replayed.open_transactions().collect::<Vec<_>>(),
            vec![(2, 8), (4, PID)]
        );
        // A snapshot keeps the open transactions; a replay of the log again
        // over it ends nothing twice.
        let (offset, mut loaded) = ProducerStates::decode_snapshot(&replayed.encode_snapshot(5)).unwrap();
        assert_eq!(offset, 5);
        assert_eq!(
            loaded.open_transactions().collect::<Vec<_>>(),
            vec![(2, 8), (4, PID)]
        );
        for bytes in &log {
            assert_eq!(loaded.replay(bytes).unwrap(), None);
        }
        assert_eq!(loaded.producers, replayed.producers);
    }

    #[test]
    fn version_1_snapshots_still_load() {
        let mut states = ProducerStates::new();
        append(&mut states, &idempotent_batch(0, PID, 0, 0, 2));
        let mut bytes = states.encode_snapshot(2);
        // Re-frame the body as version 1: drop the 12 transaction bytes
        // after the 20-byte entry.
        let body_start = SNAPSHOT_HEADER_BYTES;
        let entry_end = body_start + SNAPSHOT_BODY_HEADER_BYTES + SNAPSHOT_ENTRY_BYTES;
        bytes.drain(entry_end..entry_end + SNAPSHOT_TXN_BYTES);
        let body = bytes[body_start..].to_vec();
        bytes[4..6].copy_from_slice(&SNAPSHOT_VERSION_NO_TXN.to_be_bytes());
        bytes[6..10].copy_from_slice(&(body.len() as u32).to_be_bytes());
        bytes[10..14].copy_from_slice(&crc32c::crc32c(&body).to_be_bytes());
        let (_, loaded) = ProducerStates::decode_snapshot(&bytes).unwrap();
        assert_eq!(loaded.producers, states.producers);
    }
}
