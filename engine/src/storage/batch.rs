//! Kafka RecordBatch v2 header: parsing and validation.
//!
//! Layout (big-endian, Kafka's `DefaultRecordBatch`):
//!
//! | bytes  | field                  | CRC covered |
//! | ------ | ---------------------- | ----------- |
//! | 0..8   | baseOffset             | no          |
//! | 8..12  | batchLength            | no          |
//! | 12..16 | partitionLeaderEpoch   | no          |
//! | 16     | magic (= 2)            | no          |
//! | 17..21 | crc (CRC32C)           | no          |
//! | 21..61 | attributes .. count    | yes         |
//! | 61..   | records                | yes         |
//!
//! `batchLength` counts the bytes after itself, so a whole batch is
//! `batchLength + 12` bytes. Nothing here decompresses or parses records: the
//! produce path checks the header and CRC only.

use bytes::Bytes;
use zerocopy::byteorder::{BigEndian as BE, I16, I32, I64, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Size of the fixed RecordBatch v2 header.
pub const BATCH_HEADER_BYTES: usize = 61;
/// baseOffset + batchLength precede the part `batchLength` covers.
pub const BATCH_OVERHEAD_BYTES: usize = 12;
/// Smallest legal `batchLength`: a header with no records.
pub const BATCH_LENGTH_MIN: i32 = (BATCH_HEADER_BYTES - BATCH_OVERHEAD_BYTES) as i32;
/// Byte offset of the first CRC-covered byte (attributes).
pub const CRC_COVERED_START: usize = 21;
/// The only supported message format.
pub const MAGIC_V2: i8 = 2;

/// On-disk/wire RecordBatch v2 header, big-endian.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, Clone, Copy)]
#[repr(C)]
pub struct BatchHeader {
    pub base_offset: I64<BE>,
    pub batch_length: I32<BE>,
    pub partition_leader_epoch: I32<BE>,
    pub magic: i8,
    pub crc: U32<BE>,
    pub attributes: I16<BE>,
    pub last_offset_delta: I32<BE>,
    pub base_timestamp: I64<BE>,
    pub max_timestamp: I64<BE>,
    pub producer_id: I64<BE>,
    pub producer_epoch: I16<BE>,
    pub base_sequence: I32<BE>,
    pub records_count: I32<BE>,
}

const _: () = assert!(std::mem::size_of::<BatchHeader>() == BATCH_HEADER_BYTES);

impl BatchHeader {
    /// Compression codec: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
    pub fn compression(&self) -> u8 {
        (self.attributes.get() & 0x7) as u8
    }

    /// Timestamp type bit: true = LogAppendTime, false = CreateTime.
    pub fn timestamp_type_log_append(&self) -> bool {
        self.attributes.get() & 0x8 != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes.get() & 0x10 != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes.get() & 0x20 != 0
    }

    /// Offset of the last record: baseOffset + lastOffsetDelta.
    pub fn last_offset(&self) -> i64 {
        self.base_offset.get() + i64::from(self.last_offset_delta.get())
    }

    /// Whole batch size in bytes (batchLength + 12). Only meaningful for a
    /// header that passed [`parse_header`], which guarantees batchLength >= 49.
    pub fn total_bytes(&self) -> usize {
        usize::try_from(self.batch_length.get()).unwrap_or(0) + BATCH_OVERHEAD_BYTES
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum BatchError {
    #[error("record batch too short: {len} bytes, header needs {BATCH_HEADER_BYTES}")]
    TooShort { len: usize },
    #[error("record batch length {declared} does not fit the {available} bytes available")]
    BadLength { declared: i64, available: usize },
    #[error("unsupported record batch magic {0} (only v2 is supported)")]
    UnsupportedMagic(i8),
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error(
        "record batch lastOffsetDelta {last_offset_delta} inconsistent with recordsCount {records_count}"
    )]
    BadOffsetDelta {
        last_offset_delta: i32,
        records_count: i32,
    },
    #[error("empty records")]
    Empty,
}

/// Parses the header only (no CRC check): needs >= 61 bytes, magic 2, and a
/// `batchLength` >= 49 whose whole batch fits in `bytes`.
pub fn parse_header(bytes: &[u8]) -> Result<&BatchHeader, BatchError> {
    let (header, _) =
        BatchHeader::ref_from_prefix(bytes).map_err(|_| BatchError::TooShort { len: bytes.len() })?;
    if header.magic != MAGIC_V2 {
        return Err(BatchError::UnsupportedMagic(header.magic));
    }
    let declared = header.batch_length.get();
    let total = i64::from(declared) + BATCH_OVERHEAD_BYTES as i64;
    if declared < BATCH_LENGTH_MIN || total > bytes.len() as i64 {
        return Err(BatchError::BadLength {
            declared: i64::from(declared),
            available: bytes.len(),
        });
    }
    Ok(header)
}

/// Shape check of ONE whole batch, without the CRC: header as in
/// [`parse_header`], total length equals `bytes.len()`, and
/// `0 < recordsCount <= lastOffsetDelta + 1`. The append path re-checks
/// this cheaply to keep the log's invariants whatever its caller did.
pub fn check_shape(bytes: &[u8]) -> Result<&BatchHeader, BatchError> {
    let header = parse_header(bytes)?;
    if header.total_bytes() != bytes.len() {
        return Err(BatchError::BadLength {
            declared: i64::from(header.batch_length.get()),
            available: bytes.len(),
        });
    }
    let last_offset_delta = header.last_offset_delta.get();
    let records_count = header.records_count.get();
    if last_offset_delta < 0
        || records_count <= 0
        || i64::from(records_count) > i64::from(last_offset_delta) + 1
    {
        return Err(BatchError::BadOffsetDelta {
            last_offset_delta,
            records_count,
        });
    }
    Ok(header)
}

/// Full check of ONE whole batch: [`check_shape`] plus CRC32C over `bytes[21..]`.
pub fn validate(bytes: &[u8]) -> Result<&BatchHeader, BatchError> {
    let header = check_shape(bytes)?;
    let computed = crc32c::crc32c(&bytes[CRC_COVERED_START..]);
    let stored = header.crc.get();
    if computed != stored {
        return Err(BatchError::CrcMismatch { stored, computed });
    }
    Ok(header)
}

/// Splits a produce request's `records` blob (one or more concatenated
/// batches) into validated whole batches, zero-copy. An empty blob or a
/// trailing partial batch is an error.
pub fn split_validated(records: &Bytes) -> Result<Vec<Bytes>, BatchError> {
    if records.is_empty() {
        return Err(BatchError::Empty);
    }
    let mut batches = Vec::new();
    let mut position = 0usize;
    while position < records.len() {
        let rest = &records[position..];
        let header = parse_header(rest)?;
        let total = header.total_bytes();
        validate(&rest[..total])?;
        batches.push(records.slice(position..position + total));
        position += total;
    }
    debug_assert_eq!(position, records.len());
    Ok(batches)
}

/// Writes `base_offset` into the first 8 bytes of a batch (not CRC covered).
pub(crate) fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[..8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Writes `epoch` into partitionLeaderEpoch (bytes 12..16, not CRC covered),
/// as Kafka's leader does to every batch it appends: followers and consumers
/// learn from it which leader wrote the batch (the leader-epoch cache, and
/// divergence checks after a leader change).
pub(crate) fn set_partition_leader_epoch(batch: &mut [u8], epoch: i32) {
    batch[12..16].copy_from_slice(&epoch.to_be_bytes());
}

/// LogAppendTime: marks the batch's timestamps as the broker's (attribute
/// bit 3), sets maxTimestamp to `now_ms` and recomputes the CRC32C, as Kafka
/// does for `message.timestamp.type=LogAppendTime`. Record payloads are
/// untouched; consumers read every record's timestamp as maxTimestamp.
pub(crate) fn set_log_append_time(batch: &mut [u8], now_ms: i64) -> Result<(), BatchError> {
    const TIMESTAMP_TYPE_LOG_APPEND: i16 = 1 << 3;
    let header = BatchHeader::mut_from_prefix(batch)
        .map_err(|_| BatchError::TooShort { len: 0 })?
        .0;
    let attributes = header.attributes.get() | TIMESTAMP_TYPE_LOG_APPEND;
    header.attributes.set(attributes);
    header.max_timestamp.set(now_ms);
    let crc = crc32c::crc32c(&batch[CRC_COVERED_START..]);
    BatchHeader::mut_from_prefix(batch)
        .map_err(|_| BatchError::TooShort { len: 0 })?
        .0
        .crc
        .set(crc);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testutil::make_batch;

    #[test]
    fn log_append_time_rewrites_timestamp_type_and_keeps_the_crc_valid() {
        let mut batch = make_batch(0, 4, 10, 1_000).to_vec();
        set_log_append_time(&mut batch, 2_000).unwrap();
        let header = validate(&batch).expect("crc recomputed");
        assert!(header.timestamp_type_log_append());
        assert_eq!(header.max_timestamp.get(), 2_000);
        assert_eq!(header.records_count.get(), 4);
    }

    #[test]
    fn header_is_61_bytes_and_fields_decode() {
        let batch = make_batch(42, 3, 10, 1_000);
        let header = validate(&batch).expect("valid batch");
        assert_eq!(header.base_offset.get(), 42);
        assert_eq!(header.last_offset(), 44);
        assert_eq!(header.records_count.get(), 3);
        assert_eq!(header.base_timestamp.get(), 1_000);
        assert_eq!(header.max_timestamp.get(), 1_002);
        assert_eq!(header.total_bytes(), batch.len());
        assert_eq!(header.compression(), 0);
        assert!(!header.is_transactional());
        assert!(!header.is_control());
        assert!(!header.timestamp_type_log_append());
    }

    #[test]
    fn validate_rejects_flipped_payload_byte_with_crc_mismatch() {
        let mut bytes = make_batch(0, 2, 16, 5).to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        assert!(matches!(validate(&bytes), Err(BatchError::CrcMismatch { .. })));
    }

    #[test]
    fn base_offset_rewrite_keeps_crc_valid() {
        let mut bytes = make_batch(0, 2, 16, 5).to_vec();
        set_base_offset(&mut bytes, 1234);
        let header = validate(&bytes).expect("still valid");
        assert_eq!(header.base_offset.get(), 1234);
    }

    #[test]
    fn leader_epoch_stamp_keeps_crc_valid_and_touches_only_its_field() {
        let sent = make_batch(5, 3, 16, 7);
        let mut bytes = sent.to_vec();
        set_partition_leader_epoch(&mut bytes, 42);
        let header = validate(&bytes).expect("not CRC covered");
        assert_eq!(header.partition_leader_epoch.get(), 42);
        assert_eq!(header.base_offset.get(), 5);
        assert_eq!(&bytes[..12], &sent[..12]);
        assert_eq!(&bytes[16..], &sent[16..]);
    }

    #[test]
    fn validate_rejects_old_magic_short_and_bad_length() {
        let mut bytes = make_batch(0, 1, 4, 0).to_vec();
        assert_eq!(
            validate(&bytes[..30]).err(),
            Some(BatchError::TooShort { len: 30 })
        );
        bytes[16] = 1;
        assert_eq!(validate(&bytes).err(), Some(BatchError::UnsupportedMagic(1)));
        bytes[16] = 2;
        bytes[8..12].copy_from_slice(&10i32.to_be_bytes());
        assert!(matches!(
            validate(&bytes),
            Err(BatchError::BadLength { declared: 10, .. })
        ));
        let batch = make_batch(0, 1, 4, 0);
        let mut longer = batch.to_vec();
        longer.push(0);
        assert!(matches!(validate(&longer), Err(BatchError::BadLength { .. })));
    }

    #[test]
    fn validate_rejects_records_count_above_offset_delta() {
        let mut bytes = make_batch(0, 2, 4, 0).to_vec();
        // lastOffsetDelta = 0 while recordsCount = 2; fix the CRC so only the
        // offset-delta check can fail.
        bytes[23..27].copy_from_slice(&0i32.to_be_bytes());
        let crc = crc32c::crc32c(&bytes[CRC_COVERED_START..]);
        bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        assert_eq!(
            validate(&bytes).err(),
            Some(BatchError::BadOffsetDelta {
                last_offset_delta: 0,
                records_count: 2
            })
        );
    }

    #[test]
    fn split_validated_returns_each_batch_zero_copy() {
        let mut blob = Vec::new();
        for i in 0..3 {
            blob.extend_from_slice(&make_batch(i * 10, 5, 20, 100));
        }
        let blob = Bytes::from(blob);
        let batches = split_validated(&blob).expect("valid");
        assert_eq!(batches.len(), 3);
        assert_eq!(batches[0].as_ptr(), blob.as_ptr());
        let total: usize = batches.iter().map(Bytes::len).sum();
        assert_eq!(total, blob.len());
        assert_eq!(parse_header(&batches[2]).map(|h| h.base_offset.get()), Ok(20));
    }

    #[test]
    fn split_validated_rejects_empty_and_trailing_partial_batch() {
        assert_eq!(split_validated(&Bytes::new()), Err(BatchError::Empty));
        let mut blob = make_batch(0, 1, 8, 0).to_vec();
        let second = make_batch(1, 1, 8, 0);
        blob.extend_from_slice(&second[..second.len() - 3]);
        assert!(matches!(
            split_validated(&Bytes::from(blob)),
            Err(BatchError::BadLength { .. })
        ));
        let mut blob = make_batch(0, 1, 8, 0).to_vec();
        blob.extend_from_slice(&[0u8; 7]);
        assert_eq!(
            split_validated(&Bytes::from(blob)),
            Err(BatchError::TooShort { len: 7 })
        );
    }
}
