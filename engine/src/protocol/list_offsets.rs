//! ListOffsets: earliest, latest, max timestamp, or by timestamp, per partition on its owner.

use std::rc::Rc;

use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse, TopicName};

use crate::shard::{OffsetsPart, Shard, ShardOp, ShardReply};

/// ListOffsets v4 added the leader epoch; older versions cannot carry it.
const LEADER_EPOCH_VERSION: i16 = 4;

pub async fn handle(shard: &Rc<Shard>, req: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
    let view = shard.view();
    let mut slots: Vec<(usize, ListOffsetsPartitionResponse)> = Vec::new();
    let mut topics = Vec::with_capacity(req.topics.len());
    let mut work = Vec::new();
    for (topic_index, topic) in req.topics.into_iter().enumerate() {
        let name = topic.name.to_string();
        topics.push(ListOffsetsTopicResponse::default().with_name(topic.name.clone()));
        for p in topic.partitions {
            let mut response = ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_offset(-1)
                .with_timestamp(-1)
                .with_leader_epoch(-1);
            match view.owner(&name, p.partition_index) {
                Err(code) => response.error_code = code.code(),
                Ok(owner) => work.push((
                    owner,
                    OffsetsPart {
                        slot: slots.len(),
                        topic: name.clone(),
                        partition: p.partition_index,
                        timestamp: p.timestamp,
                        read_committed: req.isolation_level == 1,
                    },
                )),
            }
            slots.push((topic_index, response));
        }
    }
    let outcomes = shard
        .fan_out(
            work,
            |parts| ShardOp::ListOffsets { parts },
            |reply| match reply {
                ShardReply::ListOffsets(outcomes) => Some(outcomes),
                _ => None,
            },
        )
        .await;
    for o in outcomes {
        let r = &mut slots[o.slot].1;
        match o.error {
            Some(e) => r.error_code = e.code.code(),
            None => {
                r.offset = o.offset;
                r.timestamp = o.timestamp;
                if version >= LEADER_EPOCH_VERSION {
                    r.leader_epoch = o.leader_epoch;
                }
            }
        }
    }
    for (topic_index, r) in slots {
        topics[topic_index].partitions.push(r);
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// ListOffsets v0, decoded and encoded here because the kafka-protocol crate
/// follows Kafka 4.0, which dropped it (KIP-896). Burrow 1.2 (Debian's)
/// asks every broker for its log end offsets with v0 and evaluates no lag
/// without them. v0 answers a list of offsets; this broker answers one (the
/// offset v1 would answer), which is what clients read.
///
/// Request: replica_id int32, [topic string, [partition int32, timestamp
/// int64, max_num_offsets int32]]. Response: [topic string, [partition
/// int32, error_code int16, [offset int64]]].
pub async fn handle_v0(shard: &Rc<Shard>, body: &[u8]) -> Result<bytes::Bytes, String> {
    use bytes::BufMut;
    let mut r = V0Reader { buf: body, pos: 0 };
    r.i32()?; // replica id
    let topic_count = r.count()?;
    let mut topics = Vec::new();
    for _ in 0..topic_count {
        let name = r.string()?;
        let partition_count = r.count()?;
        let mut partitions = Vec::new();
        for _ in 0..partition_count {
            let partition_index = r.i32()?;
            let timestamp = r.i64()?;
            r.i32()?; // max_num_offsets: one offset is answered
            partitions.push(
                ListOffsetsPartition::default()
                    .with_partition_index(partition_index)
                    .with_timestamp(timestamp),
            );
        }
        topics.push(
            ListOffsetsTopic::default()
                .with_name(TopicName(crate::wire::str_bytes(&name)))
                .with_partitions(partitions),
        );
    }
    let resp = handle(shard, ListOffsetsRequest::default().with_topics(topics), 1).await;
    let mut out = bytes::BytesMut::new();
    out.put_i32(resp.topics.len() as i32);
    for t in &resp.topics {
        let name = t.name.as_bytes();
        out.put_i16(name.len() as i16);
        out.put_slice(name);
        out.put_i32(t.partitions.len() as i32);
        for p in &t.partitions {
            out.put_i32(p.partition_index);
            out.put_i16(p.error_code);
            if p.error_code == 0 && p.offset >= 0 {
                out.put_i32(1);
                out.put_i64(p.offset);
            } else {
                out.put_i32(0);
            }
        }
    }
    Ok(out.freeze())
}

/// Bounds-checked big-endian reads for the hand-decoded v0 request.
struct V0Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl V0Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        let end = end.ok_or_else(|| format!("ListOffsets v0 request truncated at byte {}", self.pos))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn i32(&mut self) -> Result<i32, String> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i64(&mut self) -> Result<i64, String> {
        let hi = self.i32()? as u32 as u64;
        let lo = self.i32()? as u32 as u64;
        Ok(((hi << 32) | lo) as i64)
    }

    /// An array length; bounded by the bytes left, so a bogus count cannot
    /// make the loops above run long.
    fn count(&mut self) -> Result<usize, String> {
        let n = self.i32()?;
        let left = self.buf.len() - self.pos;
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= left)
            .ok_or_else(|| format!("ListOffsets v0 array length {n} invalid"))
    }

    fn string(&mut self) -> Result<String, String> {
        let b = self.take(2)?;
        let len = i16::from_be_bytes([b[0], b[1]]);
        let len = usize::try_from(len).map_err(|_| "ListOffsets v0 null topic name".to_string())?;
        String::from_utf8(self.take(len)?.to_vec())
            .map_err(|_| "ListOffsets v0 topic name not UTF-8".to_string())
    }
}
