//! ListOffsets: earliest, latest, max timestamp, or by timestamp, per partition on its owner.

use std::rc::Rc;

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};
use kafka_protocol::ResponseError;

use crate::shard::{OffsetsPart, Shard, ShardOp, ShardReply};

/// ListOffsets v4 added the leader epoch; older versions cannot carry it.
const LEADER_EPOCH_VERSION: i16 = 4;

pub async fn handle(shard: &Rc<Shard>, req: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
    let image = shard.image();
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
            match image.owner(&name, p.partition_index) {
                None => response.error_code = ResponseError::UnknownTopicOrPartition.code(),
                Some(owner) => work.push((
                    owner,
                    OffsetsPart {
                        slot: slots.len(),
                        topic: name.clone(),
                        partition: p.partition_index,
                        timestamp: p.timestamp,
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
