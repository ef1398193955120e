//! Test helpers: a minimal RecordBatch v2 encoder (uncompressed, no headers),
//! so storage tests write the bytes a real client would send.

use bytes::Bytes;

// Self-contained (no crate imports) so benches can include it with #[path].
const BATCH_HEADER_BYTES: usize = 61;
const BATCH_OVERHEAD_BYTES: usize = 12;
const CRC_COVERED_START: usize = 21;
const MAGIC_V2: i8 = 2;

fn put_varint(out: &mut Vec<u8>, value: i64) {
    // Zig-zag, then base-128 little-endian groups (Kafka's varint/varlong).
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Encodes a valid v2 batch of `n_records` records (null key, value of
/// `value_bytes` bytes), record `i` timestamped `timestamp_ms + i`.
pub fn make_batch(base_offset: i64, n_records: usize, value_bytes: usize, timestamp_ms: i64) -> Bytes {
    assert!(n_records >= 1, "a batch holds at least one record");
    let mut records = Vec::with_capacity(n_records * (value_bytes + 16));
    let mut body = Vec::with_capacity(value_bytes + 16);
    for i in 0..n_records {
        body.clear();
        body.push(0); // record attributes
        put_varint(&mut body, i as i64); // timestamp delta
        put_varint(&mut body, i as i64); // offset delta
        put_varint(&mut body, -1); // null key
        put_varint(&mut body, value_bytes as i64);
        body.extend((0..value_bytes).map(|b| (b as u8).wrapping_add(i as u8)));
        put_varint(&mut body, 0); // no headers
        put_varint(&mut records, body.len() as i64);
        records.extend_from_slice(&body);
    }
    let total = BATCH_HEADER_BYTES + records.len();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&base_offset.to_be_bytes());
    out.extend_from_slice(&((total - BATCH_OVERHEAD_BYTES) as i32).to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes()); // partition leader epoch
    out.push(MAGIC_V2 as u8);
    out.extend_from_slice(&0u32.to_be_bytes()); // crc, filled below
    out.extend_from_slice(&0i16.to_be_bytes()); // attributes
    out.extend_from_slice(&((n_records - 1) as i32).to_be_bytes());
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out.extend_from_slice(&(timestamp_ms + n_records as i64 - 1).to_be_bytes());
    out.extend_from_slice(&(-1i64).to_be_bytes()); // producer id
    out.extend_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    out.extend_from_slice(&(-1i32).to_be_bytes()); // base sequence
    out.extend_from_slice(&(n_records as i32).to_be_bytes());
    debug_assert_eq!(out.len(), BATCH_HEADER_BYTES);
    out.extend_from_slice(&records);
    let crc = crc32c::crc32c(&out[CRC_COVERED_START..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(out)
}
