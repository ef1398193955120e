//! `__consumer_offsets` records in Kafka's own key/value schemas, so tools
//! that read the topic (Burrow, kafka-consumer-groups' dump formatter) decode
//! them: group-coordinator `OffsetCommitKey` (v1), `OffsetCommitValue` (v3
//! written, v0-v3 read), `GroupMetadataKey` (v2), `GroupMetadataValue` (v2,
//! or v3 when a member is static; v0-v3 read). Every key and value starts with its int16 schema
//! version; strings are int16-length, bytes int32-length, big-endian
//! (none of these versions is "flexible"). Plus the RecordBatch v2 framing
//! the coordinator appends through the normal partition path, and the
//! record walk used when a shard replays its partitions at startup.
//!
//! Decoding never panics: every read is bounds-checked and a malformed record
//! is an error the caller logs and skips.

use bytes::{BufMut, Bytes, BytesMut};

use crate::storage::batch::{BATCH_HEADER_BYTES, BATCH_OVERHEAD_BYTES, CRC_COVERED_START, MAGIC_V2};

/// Key versions 0 and 1 are offset commits, 2 is group metadata (Kafka's
/// `CoordinatorRecordType`).
pub const OFFSET_COMMIT_KEY_VERSION: i16 = 1;
pub const GROUP_METADATA_KEY_VERSION: i16 = 2;
/// Value versions written: what Kafka writes when no expire timestamp is
/// given (OffsetCommit v2+ without retention), and for groups with static members.
pub const OFFSET_COMMIT_VALUE_VERSION: i16 = 3;
/// Group metadata: v3 (what Kafka 2.3+ writes) only when a member is static,
/// since only v3 carries `groupInstanceId`; otherwise the equivalent v2,
/// which readers built before KIP-345 (Burrow 1.2) still decode.
pub const GROUP_METADATA_VALUE_VERSION_STATIC: i16 = 3;
pub const GROUP_METADATA_VALUE_VERSION: i16 = 2;

fn group_value_version(v: &GroupValue) -> i16 {
    if v.members.iter().any(|m| m.group_instance_id.is_some()) {
        GROUP_METADATA_VALUE_VERSION_STATIC
    } else {
        GROUP_METADATA_VALUE_VERSION
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RecordError {
    #[error("record truncated at byte {0}")]
    Truncated(usize),
    #[error("unsupported {what} version {version}")]
    Version { what: &'static str, version: i16 },
    #[error("invalid {0}")]
    Invalid(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RecordKey {
    Offset {
        group: String,
        topic: String,
        partition: i32,
    },
    Group {
        group: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct OffsetValue {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
    /// Only value v1 carries it; -1 otherwise.
    pub expire_timestamp_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MemberValue {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub subscription: Bytes,
    pub assignment: Bytes,
}

#[derive(Debug, Clone, PartialEq)]
pub struct GroupValue {
    pub protocol_type: String,
    pub generation: i32,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub current_state_timestamp_ms: i64,
    pub members: Vec<MemberValue>,
}

// --- encoding ------------------------------------------------------------------------

fn put_string(buf: &mut BytesMut, s: &str) {
    // Kafka strings are at most i16::MAX bytes; callers bound their input
    // (group ids, topic names and client ids arrive as Kafka strings).
    let len = s.len().min(i16::MAX as usize);
    buf.put_i16(len as i16);
    buf.put_slice(&s.as_bytes()[..len]);
}

fn put_nullable_string(buf: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => put_string(buf, s),
        None => buf.put_i16(-1),
    }
}

fn put_bytes(buf: &mut BytesMut, b: &[u8]) {
    buf.put_i32(b.len() as i32);
    buf.put_slice(b);
}

pub fn encode_key(key: &RecordKey) -> Bytes {
    let mut buf = BytesMut::new();
    match key {
        RecordKey::Offset {
            group,
            topic,
            partition,
        } => {
            buf.put_i16(OFFSET_COMMIT_KEY_VERSION);
            put_string(&mut buf, group);
            put_string(&mut buf, topic);
            buf.put_i32(*partition);
        }
        RecordKey::Group { group } => {
            buf.put_i16(GROUP_METADATA_KEY_VERSION);
            put_string(&mut buf, group);
        }
    }
    buf.freeze()
}

pub fn encode_offset_value(v: &OffsetValue) -> Bytes {
    let mut buf = BytesMut::with_capacity(32 + v.metadata.len());
    buf.put_i16(OFFSET_COMMIT_VALUE_VERSION);
    buf.put_i64(v.offset);
    buf.put_i32(v.leader_epoch);
    put_string(&mut buf, &v.metadata);
    buf.put_i64(v.commit_timestamp_ms);
    buf.freeze()
}

pub fn encode_group_value(v: &GroupValue) -> Bytes {
    let mut buf = BytesMut::new();
    let version = group_value_version(v);
    buf.put_i16(version);
    put_string(&mut buf, &v.protocol_type);
    buf.put_i32(v.generation);
    put_nullable_string(&mut buf, v.protocol.as_deref());
    put_nullable_string(&mut buf, v.leader.as_deref());
    buf.put_i64(v.current_state_timestamp_ms);
    buf.put_i32(v.members.len() as i32);
    for m in &v.members {
        put_string(&mut buf, &m.member_id);
        if version >= 3 {
            put_nullable_string(&mut buf, m.group_instance_id.as_deref());
        }
        put_string(&mut buf, &m.client_id);
        put_string(&mut buf, &m.client_host);
        buf.put_i32(m.rebalance_timeout_ms);
        buf.put_i32(m.session_timeout_ms);
        put_bytes(&mut buf, &m.subscription);
        put_bytes(&mut buf, &m.assignment);
    }
    buf.freeze()
}

// --- decoding ------------------------------------------------------------------------

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], RecordError> {
        let end = self.pos.checked_add(n).ok_or(RecordError::Truncated(self.pos))?;
        let s = self
            .buf
            .get(self.pos..end)
            .ok_or(RecordError::Truncated(self.pos))?;
        self.pos = end;
        Ok(s)
    }

    fn i8(&mut self) -> Result<i8, RecordError> {
        Ok(self.take(1)?[0] as i8)
    }

    fn i16(&mut self) -> Result<i16, RecordError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Result<i32, RecordError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i64(&mut self) -> Result<i64, RecordError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    fn nullable_string(&mut self) -> Result<Option<String>, RecordError> {
        let len = self.i16()?;
        if len < 0 {
            return Ok(None);
        }
        let b = self.take(len as usize)?;
        String::from_utf8(b.to_vec())
            .map(Some)
            .map_err(|_| RecordError::Invalid("utf-8 string"))
    }

    fn string(&mut self) -> Result<String, RecordError> {
        self.nullable_string()?.ok_or(RecordError::Invalid("null string"))
    }

    fn bytes(&mut self) -> Result<Bytes, RecordError> {
        let len = self.i32()?;
        if len < 0 {
            return Ok(Bytes::new());
        }
        Ok(Bytes::copy_from_slice(self.take(len as usize)?))
    }

    fn varlong(&mut self) -> Result<i64, RecordError> {
        let mut value: u64 = 0;
        for shift in (0..70).step_by(7) {
            let b = self.take(1)?[0];
            value |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        Err(RecordError::Invalid("varint longer than 10 bytes"))
    }

    fn varint(&mut self) -> Result<i32, RecordError> {
        i32::try_from(self.varlong()?).map_err(|_| RecordError::Invalid("varint out of range"))
    }
}

pub fn decode_key(bytes: &[u8]) -> Result<RecordKey, RecordError> {
    let mut r = Reader::new(bytes);
    match r.i16()? {
        0 | 1 => Ok(RecordKey::Offset {
            group: r.string()?,
            topic: r.string()?,
            partition: r.i32()?,
        }),
        2 => Ok(RecordKey::Group { group: r.string()? }),
        version => Err(RecordError::Version { what: "key", version }),
    }
}

pub fn decode_offset_value(bytes: &[u8]) -> Result<OffsetValue, RecordError> {
    let mut r = Reader::new(bytes);
    let version = r.i16()?;
    if !(0..=3).contains(&version) {
        return Err(RecordError::Version {
            what: "offset commit value",
            version,
        });
    }
    let offset = r.i64()?;
    let leader_epoch = if version >= 3 { r.i32()? } else { -1 };
    let metadata = r.string()?;
    let commit_timestamp_ms = r.i64()?;
    let expire_timestamp_ms = if version == 1 { r.i64()? } else { -1 };
    Ok(OffsetValue {
        offset,
        leader_epoch,
        metadata,
        commit_timestamp_ms,
        expire_timestamp_ms,
    })
}

pub fn decode_group_value(bytes: &[u8]) -> Result<GroupValue, RecordError> {
    let mut r = Reader::new(bytes);
    let version = r.i16()?;
    if !(0..=3).contains(&version) {
        return Err(RecordError::Version {
            what: "group metadata value",
            version,
        });
    }
    let protocol_type = r.string()?;
    let generation = r.i32()?;
    let protocol = r.nullable_string()?;
    let leader = r.nullable_string()?;
    let current_state_timestamp_ms = if version >= 2 { r.i64()? } else { -1 };
    let count = r.i32()?;
    if count < 0 {
        return Err(RecordError::Invalid("member count"));
    }
    let mut members = Vec::new();
    for _ in 0..count {
        let member_id = r.string()?;
        let group_instance_id = if version >= 3 { r.nullable_string()? } else { None };
        let client_id = r.string()?;
        let client_host = r.string()?;
        let session_or_rebalance = r.i32()?;
        let (rebalance_timeout_ms, session_timeout_ms) = if version >= 1 {
            (session_or_rebalance, r.i32()?)
        } else {
            (session_or_rebalance, session_or_rebalance)
        };
        members.push(MemberValue {
            member_id,
            group_instance_id,
            client_id,
            client_host,
            rebalance_timeout_ms,
            session_timeout_ms,
            subscription: r.bytes()?,
            assignment: r.bytes()?,
        });
    }
    Ok(GroupValue {
        protocol_type,
        generation,
        protocol,
        leader,
        current_state_timestamp_ms,
        members,
    })
}

// --- record batches ------------------------------------------------------------------

fn put_varlong(buf: &mut BytesMut, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        buf.put_u8((z as u8) | 0x80);
        z >>= 7;
    }
    buf.put_u8(z as u8);
}

/// One uncompressed RecordBatch v2 (no producer id) holding `records`
/// (key, value or None for a tombstone), all stamped `timestamp_ms`.
/// `baseOffset` is 0: the log assigns the real one.
pub fn encode_batch(records: &[(Bytes, Option<Bytes>)], timestamp_ms: i64) -> Bytes {
    encode_batch_as(records, timestamp_ms, None)
}

/// A transactional producer's records (TxnOffsetCommit): the batch carries
/// its id, epoch and `base_sequence` and the transactional flag, so the
/// offsets count only once the transaction's commit marker follows.
pub struct TxnProducer {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

/// Batch attribute bit 4: the batch belongs to a transaction.
const TRANSACTIONAL_ATTRIBUTE: i16 = 0x10;

pub fn encode_txn_batch(
    records: &[(Bytes, Option<Bytes>)],
    timestamp_ms: i64,
    producer: TxnProducer,
) -> Bytes {
    encode_batch_as(records, timestamp_ms, Some(producer))
}

fn encode_batch_as(
    records: &[(Bytes, Option<Bytes>)],
    timestamp_ms: i64,
    producer: Option<TxnProducer>,
) -> Bytes {
    let mut body = BytesMut::new();
    for (i, (key, value)) in records.iter().enumerate() {
        let mut rec = BytesMut::with_capacity(16 + key.len() + value.as_ref().map_or(0, |v| v.len()));
        rec.put_i8(0); // attributes
        put_varlong(&mut rec, 0); // timestamp delta
        put_varlong(&mut rec, i as i64); // offset delta
        put_varlong(&mut rec, key.len() as i64);
        rec.put_slice(key);
        match value {
            Some(v) => {
                put_varlong(&mut rec, v.len() as i64);
                rec.put_slice(v);
            }
            None => put_varlong(&mut rec, -1),
        }
        put_varlong(&mut rec, 0); // headers
        put_varlong(&mut body, rec.len() as i64);
        body.put_slice(&rec);
    }
    let mut out = BytesMut::with_capacity(BATCH_HEADER_BYTES + body.len());
    out.put_i64(0); // baseOffset
    out.put_i32((BATCH_HEADER_BYTES - BATCH_OVERHEAD_BYTES + body.len()) as i32);
    out.put_i32(-1); // partitionLeaderEpoch
    out.put_i8(MAGIC_V2);
    out.put_u32(0); // crc, filled below
                    // No compression, CreateTime; transactional for a producer's records.
    out.put_i16(if producer.is_some() {
        TRANSACTIONAL_ATTRIBUTE
    } else {
        0
    });
    out.put_i32(records.len().saturating_sub(1) as i32);
    out.put_i64(timestamp_ms);
    out.put_i64(timestamp_ms);
    match &producer {
        Some(p) => {
            out.put_i64(p.producer_id);
            out.put_i16(p.producer_epoch);
            out.put_i32(p.base_sequence);
        }
        None => {
            out.put_i64(-1); // producerId
            out.put_i16(-1); // producerEpoch
            out.put_i32(-1); // baseSequence
        }
    }
    out.put_i32(records.len() as i32);
    out.put_slice(&body);
    let crc = crc32c::crc32c(&out[CRC_COVERED_START..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    out.freeze()
}

/// One record read back from the log: its offset, key and value (None =
/// tombstone), and the producer of a transactional batch (-1 otherwise).
pub struct LogRecord {
    pub offset: i64,
    pub key: Bytes,
    pub value: Option<Bytes>,
    pub txn_producer_id: i64,
}

/// What a coordinator log holds, in log order: records, and the markers
/// that end a producer's transactional records (TxnOffsetCommit).
pub enum LogItem {
    Record(LogRecord),
    Marker { producer_id: i64, commit: bool },
}

impl LogItem {
    pub fn into_record(self) -> Option<LogRecord> {
        match self {
            LogItem::Record(r) => Some(r),
            LogItem::Marker { .. } => None,
        }
    }
}

/// Walks the batches in `bytes` (whole batches, as `Partition::read` returns
/// them) and returns their records and markers plus the offset after the
/// last batch. Compressed batches are skipped (the coordinator never writes
/// them) and reported in the count.
pub fn read_batches(bytes: &Bytes) -> Result<(Vec<LogItem>, i64, usize), RecordError> {
    let mut out = Vec::new();
    let mut next_offset = -1;
    let mut skipped = 0;
    let mut pos = 0;
    while pos + BATCH_HEADER_BYTES <= bytes.len() {
        let header = crate::storage::batch::parse_header(&bytes[pos..])
            .map_err(|_| RecordError::Invalid("batch header"))?;
        let total = header.total_bytes();
        let base_offset = header.base_offset.get();
        next_offset = header.last_offset() + 1;
        let producer_id = header.producer_id.get();
        if header.is_control() {
            let batch = bytes.slice(pos..pos + total);
            match crate::storage::txn_marker::decode(&batch) {
                Some(marker) => out.push(LogItem::Marker {
                    producer_id,
                    commit: marker.commit,
                }),
                None => skipped += 1,
            }
            pos += total;
            continue;
        }
        if header.compression() != 0 {
            skipped += 1;
            pos += total;
            continue;
        }
        let txn_producer_id = if header.is_transactional() {
            producer_id
        } else {
            -1
        };
        let count = header.records_count.get();
        let mut r = Reader::new(&bytes[pos + BATCH_HEADER_BYTES..pos + total]);
        for _ in 0..count.max(0) {
            let len = r.varint()?;
            let start = r.pos;
            r.i8()?;
            r.varlong()?;
            let offset_delta = r.varint()?;
            let key_len = r.varint()?;
            let key = if key_len < 0 {
                Bytes::new()
            } else {
                Bytes::copy_from_slice(r.take(key_len as usize)?)
            };
            let value_len = r.varint()?;
            let value = if value_len < 0 {
                None
            } else {
                Some(Bytes::copy_from_slice(r.take(value_len as usize)?))
            };
            // Headers are not used by coordinator records: skip to the record end.
            let end = start
                .checked_add(usize::try_from(len).map_err(|_| RecordError::Invalid("record length"))?)
                .ok_or(RecordError::Invalid("record length"))?;
            if end < r.pos {
                return Err(RecordError::Invalid("record length"));
            }
            r.take(end - r.pos)?;
            out.push(LogItem::Record(LogRecord {
                offset: base_offset + i64::from(offset_delta),
                key,
                value,
                txn_producer_id,
            }));
        }
        pos += total;
    }
    Ok((out, next_offset, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_commit_key_matches_kafkas_bytes() {
        // Kafka: version 1, group "g", topic "t", partition 3.
        let key = RecordKey::Offset {
            group: "g".into(),
            topic: "t".into(),
            partition: 3,
        };
        let expected: &[u8] = &[0, 1, 0, 1, b'g', 0, 1, b't', 0, 0, 0, 3];
        assert_eq!(&encode_key(&key)[..], expected);
        assert_eq!(decode_key(expected).unwrap(), key);
        let group_key: &[u8] = &[0, 2, 0, 2, b'g', b'1'];
        assert_eq!(
            decode_key(group_key).unwrap(),
            RecordKey::Group { group: "g1".into() }
        );
    }

    #[test]
    fn offset_commit_value_v3_matches_kafkas_bytes_and_round_trips() {
        let v = OffsetValue {
            offset: 42,
            leader_epoch: -1,
            metadata: "m".into(),
            commit_timestamp_ms: 1000,
            expire_timestamp_ms: -1,
        };
        let expected: &[u8] = &[
            0, 3, // version
            0, 0, 0, 0, 0, 0, 0, 42, // offset
            0xff, 0xff, 0xff, 0xff, // leader epoch
            0, 1, b'm', // metadata
            0, 0, 0, 0, 0, 0, 0x03, 0xe8, // commit timestamp
        ];
        assert_eq!(&encode_offset_value(&v)[..], expected);
        assert_eq!(decode_offset_value(expected).unwrap(), v);
    }

    #[test]
    fn offset_commit_value_v1_carries_an_expire_timestamp() {
        let bytes: &[u8] = &[
            0, 1, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 10,
        ];
        let v = decode_offset_value(bytes).unwrap();
        assert_eq!(
            (v.offset, v.commit_timestamp_ms, v.expire_timestamp_ms),
            (7, 9, 10)
        );
    }

    #[test]
    fn group_metadata_value_round_trips_and_rejects_truncation() {
        let v = GroupValue {
            protocol_type: "consumer".into(),
            generation: 5,
            protocol: Some("range".into()),
            leader: Some("m1".into()),
            current_state_timestamp_ms: 123,
            members: vec![MemberValue {
                member_id: "m1".into(),
                group_instance_id: Some("i1".into()),
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
                rebalance_timeout_ms: 300_000,
                session_timeout_ms: 10_000,
                subscription: Bytes::from_static(b"sub"),
                assignment: Bytes::from_static(b"asg"),
            }],
        };
        let bytes = encode_group_value(&v);
        assert_eq!(&bytes[..2], &[0, 3]);
        assert_eq!(decode_group_value(&bytes).unwrap(), v);
        for cut in 0..bytes.len() {
            assert!(decode_group_value(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut dynamic = v.clone();
        dynamic.members[0].group_instance_id = None;
        let bytes = encode_group_value(&dynamic);
        assert_eq!(
            &bytes[..2],
            &[0, 2],
            "no static member: v2, which Burrow 1.2 reads"
        );
        assert_eq!(decode_group_value(&bytes).unwrap(), dynamic);
        let empty = GroupValue {
            protocol_type: "consumer".into(),
            generation: 6,
            protocol: None,
            leader: None,
            current_state_timestamp_ms: 1,
            members: vec![],
        };
        assert_eq!(decode_group_value(&encode_group_value(&empty)).unwrap(), empty);
    }

    #[test]
    fn empty_group_metadata_value_matches_kafkas_bytes() {
        let v = GroupValue {
            protocol_type: "consumer".into(),
            generation: 2,
            protocol: None,
            leader: None,
            current_state_timestamp_ms: 5,
            members: vec![],
        };
        let expected: &[u8] = &[
            0, 2, // version
            0, 8, b'c', b'o', b'n', b's', b'u', b'm', b'e', b'r', // protocolType
            0, 0, 0, 2, // generation
            0xff, 0xff, // protocol: null
            0xff, 0xff, // leader: null
            0, 0, 0, 0, 0, 0, 0, 5, // currentStateTimestamp
            0, 0, 0, 0, // members: empty
        ];
        assert_eq!(&encode_group_value(&v)[..], expected);
        assert_eq!(decode_group_value(expected).unwrap(), v);
    }

    #[test]
    fn batches_pass_validation_and_read_back() {
        let records = vec![
            (Bytes::from_static(b"k1"), Some(Bytes::from_static(b"v1"))),
            (Bytes::from_static(b"k2"), None),
        ];
        let batch = encode_batch(&records, 77);
        crate::storage::batch::validate(&batch).unwrap();
        let (read, next, skipped) = read_batches(&batch).unwrap();
        let read: Vec<LogRecord> = read.into_iter().filter_map(LogItem::into_record).collect();
        assert_eq!((next, skipped, read.len()), (2, 0, 2));
        assert_eq!(read[0].txn_producer_id, -1);
        assert_eq!(read[0].key, Bytes::from_static(b"k1"));
        assert_eq!(read[0].value, Some(Bytes::from_static(b"v1")));
        assert_eq!(read[1].offset, 1);
        assert_eq!(read[1].value, None);
    }
}
