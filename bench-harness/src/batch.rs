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

/// How record keys are chosen. With keys, a batch's partition follows
/// Kafka's default partitioner applied to the first record's key
/// (murmur2 mod partitions), so key skew becomes partition skew; the other
/// records' keys are drawn independently (an approximation: a real client
/// would split them across partitions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Keys {
    /// Null keys; partitions round-robin.
    None,
    /// 8-byte keys, uniform over `--key-count` ids.
    Uniform,
    /// 8-byte keys, Zipf-distributed over `--key-count` ids (`--zipf-exponent`).
    Zipf,
}

/// Kafka's RecordBatch compression codecs (attributes bits 0..2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    /// The codec id in a batch's attributes.
    pub fn attribute(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// Compresses a records section in the framing Kafka's clients write:
    /// gzip stream; snappy in xerial's framing (magic header, then
    /// length-prefixed 32 KiB raw blocks, as snappy-java's
    /// SnappyOutputStream); LZ4 frame format with independent blocks (KIP-57);
    /// a zstd frame.
    pub fn compress(self, records: &[u8]) -> std::io::Result<Vec<u8>> {
        use std::io::Write;
        match self {
            Compression::None => Ok(records.to_vec()),
            Compression::Gzip => {
                let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                enc.write_all(records)?;
                enc.finish()
            }
            Compression::Snappy => {
                let mut out = SNAPPY_XERIAL_HEADER.to_vec();
                let mut enc = snap::raw::Encoder::new();
                for block in records.chunks(SNAPPY_BLOCK_BYTES) {
                    let compressed = enc.compress_vec(block).map_err(std::io::Error::other)?;
                    out.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
                    out.extend_from_slice(&compressed);
                }
                Ok(out)
            }
            Compression::Lz4 => {
                let info = lz4_flex::frame::FrameInfo::new()
                    .block_mode(lz4_flex::frame::BlockMode::Independent)
                    .block_size(lz4_flex::frame::BlockSize::Max64KB);
                let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
                enc.write_all(records)?;
                enc.finish().map_err(std::io::Error::other)
            }
            Compression::Zstd => zstd::encode_all(records, 3),
        }
    }
}

/// snappy-java's stream header: magic, version 1, compatible version 1.
pub const SNAPPY_XERIAL_HEADER: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
/// snappy-java's default block size.
const SNAPPY_BLOCK_BYTES: usize = 32 * 1024;
/// Zipf tables hold one f64 per key; this bounds them to 8 MiB.
pub const ZIPF_KEYS_MAX: u64 = 1 << 20;

/// Draws key ids: uniform or Zipf (inverse CDF over a precomputed table).
#[derive(Clone, Debug)]
pub enum KeySampler {
    None,
    Uniform { keys: u64 },
    Zipf { cdf: Vec<f64> },
}

impl KeySampler {
    pub fn new(keys: Keys, key_count: u64, zipf_exponent: f64) -> KeySampler {
        assert!(key_count >= 1);
        match keys {
            Keys::None => KeySampler::None,
            Keys::Uniform => KeySampler::Uniform { keys: key_count },
            Keys::Zipf => {
                assert!(key_count <= ZIPF_KEYS_MAX && zipf_exponent > 0.0);
                let mut cdf = Vec::with_capacity(key_count as usize);
                let mut sum = 0.0;
                for k in 1..=key_count {
                    sum += 1.0 / (k as f64).powf(zipf_exponent);
                    cdf.push(sum);
                }
                for c in &mut cdf {
                    *c /= sum;
                }
                KeySampler::Zipf { cdf }
            }
        }
    }

    pub fn keyed(&self) -> bool {
        !matches!(self, KeySampler::None)
    }

    /// A key id (0 = the most frequent for Zipf).
    pub fn draw(&self, rng: &mut XorShift) -> u64 {
        match self {
            KeySampler::None => 0,
            KeySampler::Uniform { keys } => rng.next() % keys,
            KeySampler::Zipf { cdf } => {
                let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
                cdf.partition_point(|&c| c < u).min(cdf.len() - 1) as u64
            }
        }
    }
}

/// Attempts at drawing a key of a leader's partitions when the key ids are
/// too many to list (`KeysByPartition`): with p of n partitions led there,
/// n / p draws are expected (n <= 100000), so this is never reached by chance.
const KEY_REDRAWS_MAX: u64 = 1 << 30;

/// The key distribution split by the partition Kafka's default partitioner
/// picks for each key, so a connection to one leader draws only keys of the
/// partitions that leader leads, each as likely relative to the others as
/// in the whole distribution. Built only for keyed runs over several leaders.
pub struct KeysByPartition {
    partitions: usize,
    /// Probability that a drawn key lands on each partition.
    mass: Vec<f64>,
    /// Per partition: its key ids and their cumulative probability within
    /// it; None when there are more than `ZIPF_KEYS_MAX` ids (uniform keys
    /// only), where keys are drawn and redrawn instead.
    listed: Option<Vec<(Vec<u64>, Vec<f64>)>>,
}

impl KeysByPartition {
    pub fn new(sampler: &KeySampler, partitions: usize) -> KeysByPartition {
        assert!(partitions >= 1 && sampler.keyed());
        let weights: Vec<f64> = match sampler {
            KeySampler::None => unreachable!("keyed"),
            KeySampler::Uniform { keys } if *keys > ZIPF_KEYS_MAX => {
                // murmur2 spreads ids evenly; too many to list.
                return KeysByPartition {
                    partitions,
                    mass: vec![1.0 / partitions as f64; partitions],
                    listed: None,
                };
            }
            KeySampler::Uniform { keys } => vec![1.0 / *keys as f64; *keys as usize],
            KeySampler::Zipf { cdf } => {
                let mut previous = 0.0;
                cdf.iter()
                    .map(|&c| {
                        let w = c - previous;
                        previous = c;
                        w
                    })
                    .collect()
            }
        };
        let mut listed: Vec<(Vec<u64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); partitions];
        let mut mass = vec![0.0; partitions];
        for (key, &w) in weights.iter().enumerate() {
            let p = partition_for_key(&(key as u64).to_be_bytes(), partitions);
            mass[p] += w;
            listed[p].0.push(key as u64);
            listed[p].1.push(mass[p]);
        }
        for (p, (_, cdf)) in listed.iter_mut().enumerate() {
            for c in cdf.iter_mut() {
                *c /= mass[p];
            }
        }
        KeysByPartition {
            partitions,
            mass,
            listed: Some(listed),
        }
    }

    /// Probability that a key lands on one of `slots`.
    pub fn mass(&self, slots: &[usize]) -> f64 {
        slots.iter().map(|&s| self.mass[s]).sum()
    }

    /// A drawer of keys landing on `slots` only (ascending partition
    /// indexes, at least one with keys: `mass(slots) > 0`). Partitions no key
    /// maps to are left out, so a draw never picks an empty one.
    pub fn subset(&self, slots: &[usize]) -> KeySubset {
        let slots: Vec<usize> = slots.iter().copied().filter(|&s| self.mass[s] > 0.0).collect();
        assert!(!slots.is_empty(), "a key subset needs a partition with keys");
        let mut cdf = Vec::with_capacity(slots.len());
        let mut sum = 0.0;
        for &s in &slots {
            sum += self.mass[s];
            cdf.push(sum);
        }
        for c in &mut cdf {
            *c /= sum;
        }
        KeySubset { slots, cdf }
    }

    /// A key id of `subset`'s partitions: listed ids by partition then by
    /// key within it (exact); otherwise `sampler`'s draws until one lands
    /// there (None after `KEY_REDRAWS_MAX`).
    pub fn draw(&self, subset: &KeySubset, sampler: &KeySampler, rng: &mut XorShift) -> Option<u64> {
        let uniform = |rng: &mut XorShift| (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
        match &self.listed {
            Some(listed) => {
                let u = uniform(rng);
                let at = subset.cdf.partition_point(|&c| c < u).min(subset.cdf.len() - 1);
                let (ids, cdf) = &listed[subset.slots[at]];
                let u = uniform(rng);
                Some(ids[cdf.partition_point(|&c| c < u).min(ids.len() - 1)])
            }
            None => (0..KEY_REDRAWS_MAX).map(|_| sampler.draw(rng)).find(|key| {
                subset
                    .slots
                    .binary_search(&partition_for_key(&key.to_be_bytes(), self.partitions))
                    .is_ok()
            }),
        }
    }
}

/// Some partitions' share of a `KeysByPartition`: which partition a key is
/// drawn for, in proportion to their masses.
#[derive(Clone, Debug)]
pub struct KeySubset {
    slots: Vec<usize>,
    cdf: Vec<f64>,
}

/// Kafka's `Utils.murmur2` (the default partitioner's hash).
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let length = data.len();
    let mut h: u32 = SEED ^ (length as u32);
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's default partition for a key: `toPositive(murmur2(key)) % n`.
pub fn partition_for_key(key: &[u8], partitions: usize) -> usize {
    ((murmur2(key) & 0x7fff_ffff) as usize) % partitions
}

/// One encoded batch and where its keys and values sit, so that each send
/// patches timestamps, keys and the CRC in place (uncompressed), or only the
/// header timestamps and the CRC (compressed: the records are opaque).
#[derive(Clone, Debug)]
pub struct BatchLayout {
    pub batch_bytes: usize,
    pub records_count: usize,
    /// Sum of the record values' bytes.
    pub value_bytes: u64,
    /// Offset of every record's value inside the batch (uncompressed only).
    value_offsets: Vec<u32>,
    /// Offset of every record's key (uncompressed and keyed only).
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
    /// Encodes a batch with one record per entry of `value_sizes` (timestamps
    /// zero, CRC unset; `stamp` finishes it). Keys are 8-byte big-endian ids
    /// from `sampler`, or null. Values are the 8-byte timestamp followed by
    /// random words (`fill_text`).
    pub fn encode_with(
        value_sizes: &[usize],
        sampler: &KeySampler,
        compression: Compression,
        rng: &mut XorShift,
    ) -> std::io::Result<(BatchLayout, Vec<u8>)> {
        let records_count = value_sizes.len();
        assert!(records_count >= 1 && records_count <= i32::MAX as usize);
        assert!(value_sizes.iter().all(|&n| n >= VALUE_TIMESTAMP_BYTES));
        let keyed = sampler.keyed();
        let words = vocabulary();
        let value_bytes: usize = value_sizes.iter().sum();
        let mut records = Vec::with_capacity(value_bytes + records_count * (KEY_BYTES + 16));
        let mut value_offsets = Vec::with_capacity(records_count);
        let mut key_offsets = Vec::with_capacity(if keyed { records_count } else { 0 });
        for (i, &record_value_bytes) in value_sizes.iter().enumerate() {
            let offset_delta = i as i64;
            let key_field = if keyed {
                zigzag_len(KEY_BYTES as i64) + KEY_BYTES
            } else {
                zigzag_len(-1)
            };
            let body_len = 1 // attributes
                + zigzag_len(0) // timestampDelta
                + zigzag_len(offset_delta)
                + key_field
                + zigzag_len(record_value_bytes as i64)
                + record_value_bytes
                + zigzag_len(0); // headers count
            put_varint(&mut records, body_len as i64);
            records.push(0);
            put_varint(&mut records, 0);
            put_varint(&mut records, offset_delta);
            if keyed {
                put_varint(&mut records, KEY_BYTES as i64);
                key_offsets.push((BATCH_HEADER_BYTES + records.len()) as u32);
                records.extend_from_slice(&sampler.draw(rng).to_be_bytes());
            } else {
                put_varint(&mut records, -1);
            }
            put_varint(&mut records, record_value_bytes as i64);
            value_offsets.push((BATCH_HEADER_BYTES + records.len()) as u32);
            records.extend_from_slice(&[0; VALUE_TIMESTAMP_BYTES]);
            fill_text(
                &mut records,
                record_value_bytes - VALUE_TIMESTAMP_BYTES,
                &words,
                rng,
            );
            put_varint(&mut records, 0);
        }
        let body = compression.compress(&records)?;
        let batch_length = (BATCH_HEADER_BYTES - LOG_OVERHEAD_BYTES + body.len()) as i32;
        let mut out = Vec::with_capacity(BATCH_HEADER_BYTES + body.len());
        out.extend_from_slice(&0i64.to_be_bytes()); // baseOffset
        out.extend_from_slice(&batch_length.to_be_bytes());
        out.extend_from_slice(&(-1i32).to_be_bytes()); // partitionLeaderEpoch
        out.push(2); // magic
        out.extend_from_slice(&0u32.to_be_bytes()); // crc, set by stamp
        out.extend_from_slice(&compression.attribute().to_be_bytes()); // create time, no txn
        out.extend_from_slice(&((records_count - 1) as i32).to_be_bytes());
        out.extend_from_slice(&0i64.to_be_bytes()); // baseTimestamp
        out.extend_from_slice(&0i64.to_be_bytes()); // maxTimestamp
        out.extend_from_slice(&(-1i64).to_be_bytes()); // producerId
        out.extend_from_slice(&(-1i16).to_be_bytes()); // producerEpoch
        out.extend_from_slice(&(-1i32).to_be_bytes()); // baseSequence
        out.extend_from_slice(&(records_count as i32).to_be_bytes());
        debug_assert_eq!(out.len(), BATCH_HEADER_BYTES);
        out.extend_from_slice(&body);
        let compressed = compression != Compression::None;
        let layout = BatchLayout {
            batch_bytes: out.len(),
            records_count,
            value_bytes: value_bytes as u64,
            value_offsets: if compressed { Vec::new() } else { value_offsets },
            key_offsets: if compressed { Vec::new() } else { key_offsets },
        };
        Ok((layout, out))
    }

    /// An uncompressed batch of `records_count` equal records; keys uniform
    /// over 2^64 when `keys` is not None.
    #[cfg(test)]
    pub fn encode(records_count: usize, record_value_bytes: usize, keys: Keys) -> (BatchLayout, Vec<u8>) {
        let keys = if keys == Keys::None {
            Keys::None
        } else {
            Keys::Uniform
        };
        BatchLayout::encode_with(
            &vec![record_value_bytes; records_count],
            &KeySampler::new(keys, u64::MAX, 1.0),
            Compression::None,
            &mut XorShift::new(records_count as u64),
        )
        .expect("uncompressed encoding does no I/O")
    }

    /// Sets timestamps (batch: ms; every record value: µs, uncompressed
    /// only), fresh keys from `sampler` (uncompressed and keyed; the first
    /// is `first_key` when given: the key that chose the partition), and the
    /// CRC. `batch` is this layout's encoded batch, usually inside a request
    /// frame.
    pub fn stamp_with(
        &self,
        batch: &mut [u8],
        timestamp_us: u64,
        sampler: &KeySampler,
        first_key: Option<u64>,
        rng: &mut XorShift,
    ) {
        assert_eq!(batch.len(), self.batch_bytes);
        let timestamp_ms = (timestamp_us / 1000) as i64;
        batch[OFFSET_BASE_TIMESTAMP..OFFSET_BASE_TIMESTAMP + 8].copy_from_slice(&timestamp_ms.to_be_bytes());
        batch[OFFSET_MAX_TIMESTAMP..OFFSET_MAX_TIMESTAMP + 8].copy_from_slice(&timestamp_ms.to_be_bytes());
        let ts = timestamp_us.to_be_bytes();
        for &offset in &self.value_offsets {
            let at = offset as usize;
            batch[at..at + VALUE_TIMESTAMP_BYTES].copy_from_slice(&ts);
        }
        for (i, &offset) in self.key_offsets.iter().enumerate() {
            let at = offset as usize;
            let key = match first_key {
                Some(k) if i == 0 => k,
                _ => sampler.draw(rng),
            };
            batch[at..at + KEY_BYTES].copy_from_slice(&key.to_be_bytes());
        }
        let crc = crc32c::crc32c(&batch[OFFSET_ATTRIBUTES..]);
        batch[OFFSET_CRC..OFFSET_CRC + 4].copy_from_slice(&crc.to_be_bytes());
    }

    /// `stamp_with` with keys uniform over 2^64.
    #[cfg(test)]
    pub fn stamp(&self, batch: &mut [u8], timestamp_us: u64, rng: &mut XorShift) {
        let sampler = KeySampler::Uniform { keys: u64::MAX };
        self.stamp_with(batch, timestamp_us, &sampler, None, rng);
    }
}

/// Words values are made of, the same in every run (fixed seed).
const VOCABULARY_WORDS: usize = 256;

fn vocabulary() -> Vec<Vec<u8>> {
    let mut rng = XorShift::new(42);
    (0..VOCABULARY_WORDS)
        .map(|w| (0..3 + w % 8).map(|_| b'a' + (rng.next() % 26) as u8).collect())
        .collect()
}

/// Appends `len` bytes of random words separated by spaces: text like a
/// log line or JSON field values, which codecs shrink 2-3x (gzip/zstd
/// about 3.3x, lz4/snappy 2.3-2.5x on 1 KiB records)
/// (a realistic payload, unlike random bytes or one repeated pattern).
fn fill_text(out: &mut Vec<u8>, len: usize, words: &[Vec<u8>], rng: &mut XorShift) {
    let end = out.len() + len;
    // Each step appends at least one byte, so at most `len` steps.
    while out.len() < end {
        let word = &words[(rng.next() % words.len() as u64) as usize];
        let take = word.len().min(end - out.len());
        out.extend_from_slice(&word[..take]);
        if out.len() < end {
            out.push(b' ');
        }
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

    /// When the producer meant to send this batch, in µs: the first
    /// record's value timestamp when uncompressed; for compressed batches
    /// (records opaque without decompressing) the header's ms timestamp,
    /// plus 500 µs so the truncation error is ±0.5 ms rather than 0..1 ms.
    pub fn send_timestamp_us(&self, batch: &[u8]) -> Option<u64> {
        if self.attributes & 0x07 != 0 {
            return u64::try_from(self.base_timestamp_ms)
                .ok()
                .map(|ms| ms * 1000 + 500);
        }
        self.first_value_timestamp_us(batch)
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

    /// Undoes each codec with its own crate and Kafka's framing rules.
    fn decompress(compression: Compression, body: &[u8]) -> Vec<u8> {
        use std::io::Read;
        let mut out = Vec::new();
        match compression {
            Compression::None => out.extend_from_slice(body),
            Compression::Gzip => {
                flate2::read::GzDecoder::new(body).read_to_end(&mut out).unwrap();
            }
            Compression::Snappy => {
                assert_eq!(&body[..16], SNAPPY_XERIAL_HEADER, "xerial header");
                let mut rest = &body[16..];
                while !rest.is_empty() {
                    let len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
                    let block = snap::raw::Decoder::new()
                        .decompress_vec(&rest[4..4 + len])
                        .unwrap();
                    assert!(block.len() <= SNAPPY_BLOCK_BYTES);
                    out.extend_from_slice(&block);
                    rest = &rest[4 + len..];
                }
            }
            Compression::Lz4 => {
                assert_eq!(&body[..4], &[0x04, 0x22, 0x4d, 0x18], "LZ4 frame magic");
                lz4_flex::frame::FrameDecoder::new(body)
                    .read_to_end(&mut out)
                    .unwrap();
            }
            Compression::Zstd => out = zstd::decode_all(body).unwrap(),
        }
        out
    }

    #[test]
    fn every_codec_round_trips_with_kafka_framing_and_crc() {
        let sampler = KeySampler::new(Keys::Zipf, 100, 1.1);
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            // 80 records of 8..1500 bytes: more than one snappy block and LZ4 block.
            let mut rng = XorShift::new(11);
            let sizes: Vec<usize> = (0..80).map(|_| 8 + (rng.next() % 1493) as usize).collect();
            let (layout, mut batch) =
                BatchLayout::encode_with(&sizes, &sampler, compression, &mut rng).unwrap();
            layout.stamp_with(&mut batch, 1_700_000_000_250_000, &sampler, Some(3), &mut rng);
            let header = BatchHeader::parse(&batch).expect("whole batch");
            assert_eq!(header.total_bytes, batch.len());
            assert_eq!(header.attributes, compression.attribute(), "{compression:?}");
            assert_eq!(crc32c::crc32c(&batch[21..]), header.crc, "{compression:?}");
            assert_eq!(header.records_count, 80);
            assert_eq!(layout.value_bytes, sizes.iter().sum::<usize>() as u64);

            // Rebuild the batch uncompressed (attributes 0, new CRC) and let
            // kafka-protocol decode the records.
            let records = decompress(compression, &batch[BATCH_HEADER_BYTES..]);
            let mut plain = batch[..BATCH_HEADER_BYTES].to_vec();
            plain.extend_from_slice(&records);
            let length = (plain.len() - LOG_OVERHEAD_BYTES) as i32;
            plain[8..12].copy_from_slice(&length.to_be_bytes());
            plain[21..23].copy_from_slice(&0i16.to_be_bytes());
            let crc = crc32c::crc32c(&plain[21..]);
            plain[17..21].copy_from_slice(&crc.to_be_bytes());
            let set = RecordBatchDecoder::decode(&mut Bytes::from(plain)).expect("records decode");
            assert_eq!(set.records.len(), 80);
            for (r, &size) in set.records.iter().zip(&sizes) {
                assert_eq!(r.timestamp, 1_700_000_000_250);
                assert_eq!(r.value.as_ref().unwrap().len(), size);
                let key = u64::from_be_bytes(r.key.as_ref().unwrap()[..].try_into().unwrap());
                assert!(key < 100);
            }
            let sent_us = header.send_timestamp_us(&batch).unwrap();
            if compression == Compression::None {
                assert_eq!(sent_us, 1_700_000_000_250_000);
                let first = set.records[0].key.as_ref().unwrap();
                assert_eq!(first[..], 3u64.to_be_bytes(), "first key is the partition's key");
            } else {
                assert_eq!(sent_us, 1_700_000_000_250_500);
                assert!(
                    batch.len() < records.len() + BATCH_HEADER_BYTES,
                    "{compression:?} compresses"
                );
            }
        }
    }

    #[test]
    fn murmur2_matches_kafka() {
        // Values from Kafka's UtilsTest.testMurmur2.
        assert_eq!(murmur2(b"21"), -973932308);
        assert_eq!(murmur2(b"foobar"), -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58897971
        );
        assert_eq!(murmur2(b"abc"), 479470107);
    }

    #[test]
    fn zipf_keys_are_skewed_and_uniform_keys_are_not() {
        let mut rng = XorShift::new(5);
        let zipf = KeySampler::new(Keys::Zipf, 1000, 1.0);
        let uniform = KeySampler::new(Keys::Uniform, 1000, 1.0);
        let draws = 100_000;
        let zipf_hits = (0..draws).filter(|_| zipf.draw(&mut rng) == 0).count();
        let uniform_hits = (0..draws).filter(|_| uniform.draw(&mut rng) == 0).count();
        // P(key 0) = 1/H(1000) ≈ 0.134 under Zipf(1); 0.001 uniform.
        assert!((12_000..15_000).contains(&zipf_hits), "{zipf_hits}");
        assert!(uniform_hits < 300, "{uniform_hits}");
        assert!((0..draws).all(|_| zipf.draw(&mut rng) < 1000));
    }

    #[test]
    fn keys_split_by_partition_keep_their_relative_odds() {
        let zipf = KeySampler::new(Keys::Zipf, 1000, 1.0);
        let split = KeysByPartition::new(&zipf, 6);
        let all: f64 = split.mass(&[0, 1, 2, 3, 4, 5]);
        assert!((all - 1.0).abs() < 1e-9, "{all}");
        // Key 0 (the most frequent) and the partition it lands on.
        let hot = partition_for_key(&0u64.to_be_bytes(), 6);
        let others: Vec<usize> = (0..6).filter(|&p| p != hot).collect();
        let mut rng = XorShift::new(9);
        let subset = split.subset(&[hot]);
        let draws = 50_000;
        let mut hits = 0;
        for _ in 0..draws {
            let key = split.draw(&subset, &zipf, &mut rng).unwrap();
            assert_eq!(partition_for_key(&key.to_be_bytes(), 6), hot);
            hits += usize::from(key == 0);
        }
        // Within its partition key 0 is drawn with P(0) / mass(partition).
        let want = (1.0 / (1..=1000).map(|k| 1.0 / k as f64).sum::<f64>()) / split.mass(&[hot]);
        let got = hits as f64 / draws as f64;
        assert!((got - want).abs() < 0.02, "got {got}, want {want}");
        let subset = split.subset(&others);
        assert!((0..draws).all(|_| {
            let key = split.draw(&subset, &zipf, &mut rng).unwrap();
            others.contains(&partition_for_key(&key.to_be_bytes(), 6))
        }));

        // Too many uniform ids to list: drawn and redrawn, even masses.
        let wide = KeySampler::new(Keys::Uniform, u64::MAX, 1.0);
        let split = KeysByPartition::new(&wide, 4);
        assert!((split.mass(&[1, 3]) - 0.5).abs() < 1e-12);
        let subset = split.subset(&[1, 3]);
        for _ in 0..1000 {
            let key = split.draw(&subset, &wide, &mut rng).unwrap();
            assert!([1, 3].contains(&partition_for_key(&key.to_be_bytes(), 4)));
        }
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
