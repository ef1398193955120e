//! RecordBatch v2 encoding for the producer and header-only parsing for the
//! consumer.
//!
//! The producer builds one batch layout up front (record framing, varints,
//! value positions) and, per batch sent, only patches the timestamps, the
//! optional keys and the CRC in place: no allocation and no re-encoding per
//! record. Every record value starts with a big-endian u64 of wall-clock
//! microseconds (the batch's intended send time), which the consumer reads
//! from the first record of each batch to measure end-to-end latency.
//!
//! Batch v2 header (Kafka `DefaultRecordBatch`), 61 bytes:
//! baseOffset i64 @0, batchLength i32 @8, partitionLeaderEpoch i32 @12,
//! magic i8 @16, crc u32 @17 (CRC32C of bytes 21..), attributes i16 @21,
//! lastOffsetDelta i32 @23, baseTimestamp i64 @27, maxTimestamp i64 @35,
//! producerId i64 @43, producerEpoch i16 @51, baseSequence i32 @53,
//! recordsCount i32 @57.

pub const BATCH_HEADER_BYTES: usize = 61;
const OFFSET_BATCH_LENGTH: usize = 8;
const OFFSET_MAGIC: usize = 16;
const OFFSET_CRC: usize = 17;
const OFFSET_ATTRIBUTES: usize = 21;
const OFFSET_LAST_OFFSET_DELTA: usize = 23;
const OFFSET_BASE_TIMESTAMP: usize = 27;
const OFFSET_MAX_TIMESTAMP: usize = 35;
const OFFSET_RECORDS_COUNT: usize = 57;
/// Bytes of each record value taken by the microsecond timestamp.
pub const VALUE_TIMESTAMP_BYTES: usize = 8;
/// Key length when `--keys uniform`.
pub const KEY_BYTES: usize = 8;
/// Bytes before batchLength's counted region (baseOffset + batchLength).
const LOG_OVERHEAD_BYTES: usize = 12;

/// How record keys are filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Keys {
    /// Null keys.
    None,
    /// 8-byte keys drawn uniformly at random for every batch.
    Uniform,
}

/// Where each record's key and value sit inside an encoded batch.
#[derive(Clone, Debug)]
pub struct BatchLayout {
    pub batch_bytes: usize,
    pub records_count: usize,
    /// Offset of every record's value inside the batch.
    value_offsets: Vec<u32>,
    /// Offset of every record's key (empty when keys are null).
    key_offsets: Vec<u32>,
}

fn zigzag_len(value: i64) -> usize {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a zigzag varint (up to 10 bytes) from `buf` at `*pos`.
fn get_varint(buf: &[u8], pos: &mut usize) -> Option<i64> {
    let mut result: u64 = 0;
    for shift in (0..70).step_by(7) {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        result |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(((result >> 1) as i64) ^ -((result & 1) as i64));
        }
    }
    None
}

impl BatchLayout {
    /// Encodes a batch of `records_count` records of `record_value_bytes`
    /// each (timestamps zero, CRC unset); `stamp` finishes it.
    pub fn encode(records_count: usize, record_value_bytes: usize, keys: Keys) -> (BatchLayout, Vec<u8>) {
        assert!(records_count >= 1 && records_count <= i32::MAX as usize);
        assert!(record_value_bytes >= VALUE_TIMESTAMP_BYTES);
        let key_len = match keys {
            Keys::None => None,
            Keys::Uniform => Some(KEY_BYTES),
        };
        let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + records_count * (record_value_bytes + 16));
        out.extend_from_slice(&0i64.to_be_bytes()); // baseOffset
        out.extend_from_slice(&0i32.to_be_bytes()); // batchLength, patched below
        out.extend_from_slice(&(-1i32).to_be_bytes()); // partitionLeaderEpoch
        out.push(2); // magic
        out.extend_from_slice(&0u32.to_be_bytes()); // crc, set by stamp
        out.extend_from_slice(&0i16.to_be_bytes()); // attributes: no compression, create time
        out.extend_from_slice(&((records_count - 1) as i32).to_be_bytes());
        out.extend_from_slice(&0i64.to_be_bytes()); // baseTimestamp
        out.extend_from_slice(&0i64.to_be_bytes()); // maxTimestamp
        out.extend_from_slice(&(-1i64).to_be_bytes()); // producerId
        out.extend_from_slice(&(-1i16).to_be_bytes()); // producerEpoch
        out.extend_from_slice(&(-1i32).to_be_bytes()); // baseSequence
        out.extend_from_slice(&(records_count as i32).to_be_bytes());
        debug_assert_eq!(out.len(), BATCH_HEADER_BYTES);

        let mut value_offsets = Vec::with_capacity(records_count);
        let mut key_offsets = Vec::with_capacity(if key_len.is_some() { records_count } else { 0 });
        for i in 0..records_count {
            let offset_delta = i as i64;
            let key_field = match key_len {
                None => zigzag_len(-1),
                Some(n) => zigzag_len(n as i64) + n,
            };
            let body_len = 1 // attributes
                + zigzag_len(0) // timestampDelta
                + zigzag_len(offset_delta)
                + key_field
                + zigzag_len(record_value_bytes as i64)
                + record_value_bytes
                + zigzag_len(0); // headers count
            put_varint(&mut out, body_len as i64);
            out.push(0);
            put_varint(&mut out, 0);
            put_varint(&mut out, offset_delta);
            match key_len {
                None => put_varint(&mut out, -1),
                Some(n) => {
                    put_varint(&mut out, n as i64);
                    key_offsets.push(out.len() as u32);
                    out.resize(out.len() + n, 0);
                }
            }
            put_varint(&mut out, record_value_bytes as i64);
            value_offsets.push(out.len() as u32);
            // Filler that is not trivially compressible by the transport.
            out.extend((0..record_value_bytes).map(|j| (j as u8).wrapping_mul(31).wrapping_add(i as u8)));
            put_varint(&mut out, 0);
        }
        let batch_length = (out.len() - LOG_OVERHEAD_BYTES) as i32;
        out[OFFSET_BATCH_LENGTH..OFFSET_BATCH_LENGTH + 4].copy_from_slice(&batch_length.to_be_bytes());
        let layout = BatchLayout {
            batch_bytes: out.len(),
            records_count,
            value_offsets,
            key_offsets,
        };
        (layout, out)
    }

    /// Sets timestamps (batch: ms; every record value: µs), fresh keys from
    /// `rng` if keyed, and the CRC. `batch` is this layout's encoded batch,
    /// usually inside a request frame.
    pub fn stamp(&self, batch: &mut [u8], timestamp_us: u64, rng: &mut XorShift) {
        assert_eq!(batch.len(), self.batch_bytes);
        let timestamp_ms = (timestamp_us / 1000) as i64;
        batch[OFFSET_BASE_TIMESTAMP..OFFSET_BASE_TIMESTAMP + 8].copy_from_slice(&timestamp_ms.to_be_bytes());
        batch[OFFSET_MAX_TIMESTAMP..OFFSET_MAX_TIMESTAMP + 8].copy_from_slice(&timestamp_ms.to_be_bytes());
        let ts = timestamp_us.to_be_bytes();
        for &offset in &self.value_offsets {
            let at = offset as usize;
            batch[at..at + VALUE_TIMESTAMP_BYTES].copy_from_slice(&ts);
        }
        for &offset in &self.key_offsets {
            let at = offset as usize;
            batch[at..at + KEY_BYTES].copy_from_slice(&rng.next().to_be_bytes());
        }
        let crc = crc32c::crc32c(&batch[OFFSET_ATTRIBUTES..]);
        batch[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_be_bytes());
    }
}

/// A tiny PRNG for keys: no allocation, no dependency.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed | 1)
    }

    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// What the consumer reads from one batch, without touching its records
/// beyond the first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Whole batch on the wire, including baseOffset and batchLength.
    pub total_bytes: usize,
    pub last_offset_delta: i32,
    pub base_timestamp_ms: i64,
    pub records_count: i32,
    pub attributes: i16,
    pub crc: u32,
}

impl BatchHeader {
    /// Parses the header at the start of `buf`; None if `buf` holds less
    /// than a whole batch (fetch responses may end with a partial one) or
    /// the magic is not 2.
    pub fn parse(buf: &[u8]) -> Option<BatchHeader> {
        if buf.len() < BATCH_HEADER_BYTES {
            return None;
        }
        let i64_at = |at: usize| i64::from_be_bytes(buf[at..at + 8].try_into().expect("8 bytes"));
        let i32_at = |at: usize| i32::from_be_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
        let batch_length = i32_at(OFFSET_BATCH_LENGTH);
        if batch_length < (BATCH_HEADER_BYTES - LOG_OVERHEAD_BYTES) as i32 || buf[OFFSET_MAGIC] != 2 {
            return None;
        }
        let total_bytes = LOG_OVERHEAD_BYTES + batch_length as usize;
        if buf.len() < total_bytes {
            return None;
        }
        Some(BatchHeader {
            base_offset: i64_at(0),
            total_bytes,
            last_offset_delta: i32_at(OFFSET_LAST_OFFSET_DELTA),
            base_timestamp_ms: i64_at(OFFSET_BASE_TIMESTAMP),
            records_count: i32_at(OFFSET_RECORDS_COUNT),
            attributes: i16::from_be_bytes([buf[OFFSET_ATTRIBUTES], buf[OFFSET_ATTRIBUTES + 1]]),
            crc: u32::from_be_bytes(buf[OFFSET_CRC..OFFSET_CRC + 4].try_into().expect("4 bytes")),
        })
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// CRC32C over the batch (`batch` = exactly this batch's bytes).
    pub fn crc_matches(&self, batch: &[u8]) -> bool {
        crc32c::crc32c(&batch[OFFSET_ATTRIBUTES..self.total_bytes]) == self.crc
    }

    /// The µs timestamp in the first 8 bytes of the first record's value,
    /// if the batch is uncompressed and that value is long enough.
    pub fn first_value_timestamp_us(&self, batch: &[u8]) -> Option<u64> {
        if self.attributes & 0x07 != 0 || self.records_count < 1 {
            return None;
        }
        let mut pos = BATCH_HEADER_BYTES;
        let _record_len = get_varint(batch, &mut pos)?;
        pos += 1; // attributes
        get_varint(batch, &mut pos)?; // timestampDelta
        get_varint(batch, &mut pos)?; // offsetDelta
        let key_len = get_varint(batch, &mut pos)?;
        if key_len > 0 {
            pos += key_len as usize;
        }
        let value_len = get_varint(batch, &mut pos)?;
        if value_len < VALUE_TIMESTAMP_BYTES as i64 {
            return None;
        }
        let bytes = batch.get(pos..pos + VALUE_TIMESTAMP_BYTES)?;
        Some(u64::from_be_bytes(bytes.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use kafka_protocol::records::RecordBatchDecoder;

    fn stamped(records: usize, value_bytes: usize, keys: Keys, ts_us: u64) -> (BatchLayout, Vec<u8>) {
        let (layout, mut batch) = BatchLayout::encode(records, value_bytes, keys);
        layout.stamp(&mut batch, ts_us, &mut XorShift::new(7));
        (layout, batch)
    }

    #[test]
    fn varints_round_trip() {
        for v in [
            0i64,
            1,
            -1,
            63,
            64,
            -65,
            8191,
            8192,
            i32::MAX as i64,
            i64::MIN,
            i64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), zigzag_len(v));
            let mut pos = 0;
            assert_eq!(get_varint(&out, &mut pos), Some(v));
            assert_eq!(pos, out.len());
        }
    }

    #[test]
    fn encoded_batch_decodes_with_kafka_protocol_and_crc_checks() {
        for keys in [Keys::None, Keys::Uniform] {
            for (records, value_bytes) in [(1, 8), (64, 1024), (200, 100), (70, 300)] {
                let ts_us = 1_763_000_000_123_456u64;
                let (layout, batch) = stamped(records, value_bytes, keys, ts_us);
                assert_eq!(batch.len(), layout.batch_bytes);
                let header = BatchHeader::parse(&batch).expect("whole batch");
                assert_eq!(header.total_bytes, batch.len());
                assert!(header.crc_matches(&batch));
                // Independent CRC check with the crc32c crate over the documented range.
                let crc = u32::from_be_bytes(batch[17..21].try_into().unwrap());
                assert_eq!(crc, crc32c::crc32c(&batch[21..]));

                let mut buf = Bytes::from(batch.clone());
                let set = RecordBatchDecoder::decode(&mut buf).expect("kafka-protocol decodes our batch");
                assert_eq!(set.records.len(), records);
                for (i, r) in set.records.iter().enumerate() {
                    assert_eq!(r.offset, i as i64);
                    assert_eq!(r.timestamp, (ts_us / 1000) as i64);
                    assert_eq!(
                        r.key.as_ref().map(|k| k.len()),
                        (keys == Keys::Uniform).then_some(KEY_BYTES)
                    );
                    let value = r.value.as_ref().expect("value");
                    assert_eq!(value.len(), value_bytes);
                    assert_eq!(u64::from_be_bytes(value[..8].try_into().unwrap()), ts_us);
                    assert!(r.headers.is_empty());
                }
                assert_eq!(header.first_value_timestamp_us(&batch), Some(ts_us));
                assert_eq!(header.records_count as usize, records);
                assert_eq!(header.last_offset(), records as i64 - 1);
            }
        }
    }

    #[test]
    fn restamping_changes_crc_and_stays_valid() {
        let (layout, mut batch) = stamped(10, 64, Keys::Uniform, 1_000_000);
        let first_crc = BatchHeader::parse(&batch).unwrap().crc;
        layout.stamp(&mut batch, 2_000_000, &mut XorShift::new(9));
        let header = BatchHeader::parse(&batch).unwrap();
        assert_ne!(header.crc, first_crc);
        assert!(header.crc_matches(&batch));
        assert_eq!(header.first_value_timestamp_us(&batch), Some(2_000_000));
        let mut buf = Bytes::from(batch);
        assert_eq!(RecordBatchDecoder::decode(&mut buf).unwrap().records.len(), 10);
    }

    #[test]
    fn corrupted_batch_fails_crc() {
        let (_, mut batch) = stamped(4, 32, Keys::None, 5);
        let last = batch.len() - 2;
        batch[last] ^= 0xff;
        assert!(!BatchHeader::parse(&batch).unwrap().crc_matches(&batch));
    }

    #[test]
    fn partial_batch_is_not_parsed() {
        let (_, batch) = stamped(4, 32, Keys::None, 5);
        assert!(BatchHeader::parse(&batch[..batch.len() - 1]).is_none());
        assert!(BatchHeader::parse(&batch[..20]).is_none());
    }
}
