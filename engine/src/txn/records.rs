//! `__transaction_state` records in Kafka's own schemas, so the log is
//! Kafka's and its tools decode it: key `TransactionLogKey` v0 (int16
//! version, then the transactional id), value `TransactionLogValue` (int16
//! version, then the fields; v1 is flexible, with tagged fields). Written in
//! v1, as Kafka 4.0 does; v0 and v1 are read, unknown tags skipped. A null
//! value (a tombstone) deletes the transactional id.

use bytes::{Buf, BufMut};

const KEY_VERSION: i16 = 0;
pub const VALUE_VERSION: i16 = 1;
const TAG_PREVIOUS_PRODUCER_ID: u32 = 0;
const TAG_NEXT_PRODUCER_ID: u32 = 1;
const TAG_CLIENT_TRANSACTION_VERSION: u32 = 2;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("transaction log record truncated")]
    Truncated,
    #[error("unsupported transaction log {what} version {version}")]
    Version { what: &'static str, version: i16 },
    #[error("invalid transaction log record: {0}")]
    Invalid(&'static str),
}

/// Kafka's transaction states, by the byte the log stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnStatus {
    Empty = 0,
    Ongoing = 1,
    PrepareCommit = 2,
    PrepareAbort = 3,
    CompleteCommit = 4,
    CompleteAbort = 5,
    Dead = 6,
    PrepareEpochFence = 7,
}

impl TxnStatus {
    fn from_byte(b: i8) -> Result<Self, RecordError> {
        Ok(match b {
            0 => Self::Empty,
            1 => Self::Ongoing,
            2 => Self::PrepareCommit,
            3 => Self::PrepareAbort,
            4 => Self::CompleteCommit,
            5 => Self::CompleteAbort,
            6 => Self::Dead,
            7 => Self::PrepareEpochFence,
            _ => return Err(RecordError::Invalid("transaction status")),
        })
    }

    /// Every state, in log-byte order.
    pub const ALL: [TxnStatus; 8] = [
        Self::Empty,
        Self::Ongoing,
        Self::PrepareCommit,
        Self::PrepareAbort,
        Self::CompleteCommit,
        Self::CompleteAbort,
        Self::Dead,
        Self::PrepareEpochFence,
    ];

    /// The name DescribeTransactions and ListTransactions report.
    pub fn name(self) -> &'static str {
        match self {
            Self::Empty => "Empty",
            Self::Ongoing => "Ongoing",
            Self::PrepareCommit => "PrepareCommit",
            Self::PrepareAbort => "PrepareAbort",
            Self::CompleteCommit => "CompleteCommit",
            Self::CompleteAbort => "CompleteAbort",
            Self::Dead => "Dead",
            Self::PrepareEpochFence => "PrepareEpochFence",
        }
    }
}

/// One transactional id's state as the log keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnLogValue {
    pub producer_id: i64,
    /// Tag 0 (v1): -1 when unset.
    pub previous_producer_id: i64,
    /// Tag 1 (v1): -1 when unset.
    pub next_producer_id: i64,
    pub producer_epoch: i16,
    pub timeout_ms: i32,
    pub status: TxnStatus,
    /// Topic -> partitions; None (null) exactly when the status is Empty.
    pub partitions: Option<Vec<(String, Vec<i32>)>>,
    pub last_update_ms: i64,
    /// -1 when no transaction is open.
    pub start_ms: i64,
    /// Tag 2 (v1): 0 when unset.
    pub client_transaction_version: i16,
}

pub fn encode_key(transactional_id: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + transactional_id.len());
    out.put_i16(KEY_VERSION);
    put_string(&mut out, transactional_id);
    out
}

pub fn decode_key(mut bytes: &[u8]) -> Result<String, RecordError> {
    let version = take_i16(&mut bytes)?;
    if version != KEY_VERSION {
        return Err(RecordError::Version { what: "key", version });
    }
    let id = take_string(&mut bytes)?;
    if !bytes.is_empty() {
        return Err(RecordError::Invalid("bytes after the key"));
    }
    Ok(id)
}

/// The value in version 1 (flexible); tags only for fields off their default.
pub fn encode_value(v: &TxnLogValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.put_i16(VALUE_VERSION);
    out.put_i64(v.producer_id);
    out.put_i16(v.producer_epoch);
    out.put_i32(v.timeout_ms);
    out.put_i8(v.status as i8);
    match &v.partitions {
        None => put_uvarint(&mut out, 0),
        Some(topics) => {
            put_uvarint(&mut out, topics.len() as u64 + 1);
            for (topic, partitions) in topics {
                put_compact_string(&mut out, topic);
                put_uvarint(&mut out, partitions.len() as u64 + 1);
                for p in partitions {
                    out.put_i32(*p);
                }
                put_uvarint(&mut out, 0); // the element's tags
            }
        }
    }
    out.put_i64(v.last_update_ms);
    out.put_i64(v.start_ms);
    let mut tags: Vec<(u32, Vec<u8>)> = Vec::new();
    if v.previous_producer_id != -1 {
        tags.push((
            TAG_PREVIOUS_PRODUCER_ID,
            v.previous_producer_id.to_be_bytes().to_vec(),
        ));
    }
    if v.next_producer_id != -1 {
        tags.push((TAG_NEXT_PRODUCER_ID, v.next_producer_id.to_be_bytes().to_vec()));
    }
    if v.client_transaction_version != 0 {
        tags.push((
            TAG_CLIENT_TRANSACTION_VERSION,
            v.client_transaction_version.to_be_bytes().to_vec(),
        ));
    }
    put_uvarint(&mut out, tags.len() as u64);
    for (tag, data) in tags {
        put_uvarint(&mut out, u64::from(tag));
        put_uvarint(&mut out, data.len() as u64);
        out.extend_from_slice(&data);
    }
    out
}

pub fn decode_value(mut bytes: &[u8]) -> Result<TxnLogValue, RecordError> {
    let version = take_i16(&mut bytes)?;
    if !(0..=VALUE_VERSION).contains(&version) {
        return Err(RecordError::Version {
            what: "value",
            version,
        });
    }
    let flexible = version >= 1;
    let producer_id = take_i64(&mut bytes)?;
    let producer_epoch = take_i16(&mut bytes)?;
    let timeout_ms = take_i32(&mut bytes)?;
    let status = TxnStatus::from_byte(take_i8(&mut bytes)?)?;
    let count = if flexible {
        take_uvarint(&mut bytes)?.checked_sub(1)
    } else {
        u64::try_from(take_i32(&mut bytes)?).ok()
    };
    let partitions = match count {
        None => None,
        Some(n) => {
            // At least 3 bytes per topic: bounded by what the input can hold.
            if n > bytes.len() as u64 {
                return Err(RecordError::Truncated);
            }
            let mut topics = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let topic = if flexible {
                    take_compact_string(&mut bytes)?
                } else {
                    take_string(&mut bytes)?
                };
                let ids = if flexible {
                    take_uvarint(&mut bytes)?
                        .checked_sub(1)
                        .ok_or(RecordError::Invalid("null partition list"))?
                } else {
                    u64::try_from(take_i32(&mut bytes)?)
                        .map_err(|_| RecordError::Invalid("null partition list"))?
                };
                if ids * 4 > bytes.len() as u64 {
                    return Err(RecordError::Truncated);
                }
                let mut partitions = Vec::with_capacity(ids as usize);
                for _ in 0..ids {
                    partitions.push(take_i32(&mut bytes)?);
                }
                if flexible {
                    skip_tags(&mut bytes)?;
                }
                topics.push((topic, partitions));
            }
            Some(topics)
        }
    };
    let last_update_ms = take_i64(&mut bytes)?;
    let start_ms = take_i64(&mut bytes)?;
    let mut value = TxnLogValue {
        producer_id,
        previous_producer_id: -1,
        next_producer_id: -1,
        producer_epoch,
        timeout_ms,
        status,
        partitions,
        last_update_ms,
        start_ms,
        client_transaction_version: 0,
    };
    if flexible {
        let tags = take_uvarint(&mut bytes)?;
        for _ in 0..tags {
            let tag = take_uvarint(&mut bytes)?;
            let size = usize::try_from(take_uvarint(&mut bytes)?).map_err(|_| RecordError::Truncated)?;
            if size > bytes.len() {
                return Err(RecordError::Truncated);
            }
            let (data, rest) = bytes.split_at(size);
            match (tag, size) {
                (0, 8) => value.previous_producer_id = i64::from_be_bytes(data.try_into().expect("8 bytes")),
                (1, 8) => value.next_producer_id = i64::from_be_bytes(data.try_into().expect("8 bytes")),
                (2, 2) => value.client_transaction_version = i16::from_be_bytes([data[0], data[1]]),
                _ => {} // a tag this version does not know
            }
            bytes = rest;
        }
    }
    Ok(value)
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.put_i16(s.len() as i16);
    out.extend_from_slice(s.as_bytes());
}

fn put_compact_string(out: &mut Vec<u8>, s: &str) {
    put_uvarint(out, s.len() as u64 + 1);
    out.extend_from_slice(s.as_bytes());
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_i8(b: &mut &[u8]) -> Result<i8, RecordError> {
    (b.remaining() >= 1)
        .then(|| b.get_i8())
        .ok_or(RecordError::Truncated)
}

fn take_i16(b: &mut &[u8]) -> Result<i16, RecordError> {
    (b.remaining() >= 2)
        .then(|| b.get_i16())
        .ok_or(RecordError::Truncated)
}

fn take_i32(b: &mut &[u8]) -> Result<i32, RecordError> {
    (b.remaining() >= 4)
        .then(|| b.get_i32())
        .ok_or(RecordError::Truncated)
}

fn take_i64(b: &mut &[u8]) -> Result<i64, RecordError> {
    (b.remaining() >= 8)
        .then(|| b.get_i64())
        .ok_or(RecordError::Truncated)
}

fn take_uvarint(b: &mut &[u8]) -> Result<u64, RecordError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.first().ok_or(RecordError::Truncated)?;
        *b = &b[1..];
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(RecordError::Invalid("varint too long"))
}

fn take_bytes(b: &mut &[u8], len: usize) -> Result<String, RecordError> {
    if len > b.len() {
        return Err(RecordError::Truncated);
    }
    let (s, rest) = b.split_at(len);
    *b = rest;
    String::from_utf8(s.to_vec()).map_err(|_| RecordError::Invalid("string not UTF-8"))
}

fn take_string(b: &mut &[u8]) -> Result<String, RecordError> {
    let len = usize::try_from(take_i16(b)?).map_err(|_| RecordError::Invalid("null string"))?;
    take_bytes(b, len)
}

fn take_compact_string(b: &mut &[u8]) -> Result<String, RecordError> {
    let len = take_uvarint(b)?
        .checked_sub(1)
        .ok_or(RecordError::Invalid("null string"))?;
    take_bytes(b, usize::try_from(len).map_err(|_| RecordError::Truncated)?)
}

fn skip_tags(b: &mut &[u8]) -> Result<(), RecordError> {
    for _ in 0..take_uvarint(b)? {
        take_uvarint(b)?;
        let size = usize::try_from(take_uvarint(b)?).map_err(|_| RecordError::Truncated)?;
        if size > b.len() {
            return Err(RecordError::Truncated);
        }
        *b = &b[size..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn ongoing() -> TxnLogValue {
        TxnLogValue {
            producer_id: 1000,
            previous_producer_id: -1,
            next_producer_id: -1,
            producer_epoch: 0,
            timeout_ms: 60_000,
            status: TxnStatus::Ongoing,
            partitions: Some(vec![("t".to_string(), vec![0])]),
            last_update_ms: 1_700_000_000_000,
            start_ms: 1_699_999_990_000,
            client_transaction_version: 0,
        }
    }

    #[test]
    fn the_key_is_kafkas() {
        assert_eq!(encode_key("txn-1"), hex("0000 0005 74786e2d31"));
        assert_eq!(decode_key(&hex("0000 0005 74786e2d31")).unwrap(), "txn-1");
        assert!(decode_key(&hex("0001 0005 74786e2d31")).is_err());
    }

    #[test]
    fn values_match_kafkas_bytes_in_both_versions() {
        let v1 = hex("0001 00000000000003e8 0000 0000ea60 01 02 0274 02 00000000 00 0000018bcfe56800 0000018bcfe540f0 00");
        assert_eq!(encode_value(&ongoing()), v1);
        assert_eq!(decode_value(&v1).unwrap(), ongoing());
        let v0 = hex("0000 00000000000003e8 0000 0000ea60 01 00000001 0001 74 00000001 00000000 0000018bcfe56800 0000018bcfe540f0");
        assert_eq!(decode_value(&v0).unwrap(), ongoing());
    }

    #[test]
    fn tags_round_trip_and_unknown_ones_are_skipped() {
        let mut v = ongoing();
        v.status = TxnStatus::Empty;
        v.partitions = None;
        v.start_ms = -1;
        v.previous_producer_id = 7;
        v.client_transaction_version = 2;
        let bytes = encode_value(&v);
        assert_eq!(decode_value(&bytes).unwrap(), v);
        // An extra tag 9 of 3 bytes after the known ones.
        let mut with_unknown = bytes.clone();
        let tags_at = with_unknown.len() - (1 + 1 + 1 + 8 + 1 + 1 + 2);
        with_unknown[tags_at] += 1;
        with_unknown.extend_from_slice(&[9, 3, 1, 2, 3]);
        assert_eq!(decode_value(&with_unknown).unwrap(), v);
    }

    #[test]
    fn truncated_or_garbled_values_are_errors_not_panics() {
        let bytes = encode_value(&ongoing());
        for len in 0..bytes.len() {
            assert!(decode_value(&bytes[..len]).is_err(), "length {len}");
        }
        let mut bad_status = bytes.clone();
        bad_status[2 + 8 + 2 + 4] = 42;
        assert_eq!(
            decode_value(&bad_status),
            Err(RecordError::Invalid("transaction status"))
        );
        let mut huge = bytes;
        huge[2 + 8 + 2 + 4 + 1] = 0x7f; // 126 topics claimed
        assert!(decode_value(&huge).is_err());
    }
}
