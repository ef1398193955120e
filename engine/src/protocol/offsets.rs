//! DeleteRecords and OffsetForLeaderEpoch: per-partition requests answered
//! by the owner shard, one op per owner.

use std::rc::Rc;

use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    DeleteRecordsRequest, DeleteRecordsResponse, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse,
};

use crate::shard::{DeleteRecordsPart, EpochPart, Shard, ShardOp, ShardReply};

pub async fn delete_records(shard: &Rc<Shard>, req: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let view = shard.view();
    let mut topics = Vec::with_capacity(req.topics.len());
    let mut slots: Vec<(usize, DeleteRecordsPartitionResult)> = Vec::new();
    let mut work = Vec::new();
    for (topic_index, topic) in req.topics.into_iter().enumerate() {
        let name = topic.name.to_string();
        topics.push(DeleteRecordsTopicResult::default().with_name(topic.name.clone()));
        for p in topic.partitions {
            let mut r = DeleteRecordsPartitionResult::default()
                .with_partition_index(p.partition_index)
                .with_low_watermark(-1);
            match view.owner(&name, p.partition_index) {
                Err(code) => r.error_code = code.code(),
                Ok(owner) => work.push((
                    owner,
                    DeleteRecordsPart {
                        slot: slots.len(),
                        topic: name.clone(),
                        partition: p.partition_index,
                        offset: p.offset,
                    },
                )),
            }
            slots.push((topic_index, r));
        }
    }
    let outcomes = shard
        .fan_out(
            work,
            |parts| ShardOp::DeleteRecords { parts },
            |reply| match reply {
                ShardReply::DeleteRecords(outcomes) => Some(outcomes),
                _ => None,
            },
        )
        .await;
    for o in outcomes {
        let r = &mut slots[o.slot].1;
        match o.error {
            Some(e) => {
                tracing::info!("delete records refused: {}", e.message);
                r.error_code = e.code.code();
            }
            None => r.low_watermark = o.low_watermark,
        }
    }
    for (topic_index, r) in slots {
        topics[topic_index].partitions.push(r);
    }
    DeleteRecordsResponse::default().with_topics(topics)
}

pub async fn offset_for_leader_epoch(
    shard: &Rc<Shard>,
    req: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let view = shard.view();
    let mut topics = Vec::with_capacity(req.topics.len());
    let mut slots: Vec<(usize, EpochEndOffset)> = Vec::new();
    let mut work = Vec::new();
    for (topic_index, topic) in req.topics.into_iter().enumerate() {
        let name = topic.topic.to_string();
        topics.push(OffsetForLeaderTopicResult::default().with_topic(topic.topic.clone()));
        for p in topic.partitions {
            let mut r = EpochEndOffset::default()
                .with_partition(p.partition)
                .with_leader_epoch(-1)
                .with_end_offset(-1);
            match view.owner(&name, p.partition) {
                Err(code) => r.error_code = code.code(),
                Ok(owner) => work.push((
                    owner,
                    EpochPart {
                        slot: slots.len(),
                        topic: name.clone(),
                        partition: p.partition,
                        current_leader_epoch: p.current_leader_epoch,
                        leader_epoch: p.leader_epoch,
                    },
                )),
            }
            slots.push((topic_index, r));
        }
    }
    let outcomes = shard
        .fan_out(
            work,
            |parts| ShardOp::LeaderEpochs { parts },
            |reply| match reply {
                ShardReply::LeaderEpochs(outcomes) => Some(outcomes),
                _ => None,
            },
        )
        .await;
    for o in outcomes {
        let r = &mut slots[o.slot].1;
        match o.error {
            Some(e) => r.error_code = e.code.code(),
            None => {
                r.leader_epoch = o.leader_epoch;
                r.end_offset = o.end_offset;
            }
        }
    }
    for (topic_index, r) in slots {
        topics[topic_index].partitions.push(r);
    }
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
