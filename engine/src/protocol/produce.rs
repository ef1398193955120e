//! Produce: validate per partition, split by owning shard, append, merge.

use std::rc::Rc;

use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use kafka_protocol::ResponseError;

use crate::controller::validate_topic_name;
use crate::shard::{ProduceOutcome, ProducePart, Shard, ShardOp, ShardReply};
use crate::wire::str_bytes;

const PRODUCE_TOPIC_IDS_VERSION: i16 = 13;

/// acks=-1 needs `min.insync.replicas` in-sync replicas, as Kafka enforces.
pub(crate) fn min_insync_replicas(
    overrides: &std::collections::BTreeMap<String, String>,
    broker: &crate::config::BrokerConfig,
) -> i32 {
    crate::config::topic::effective("min.insync.replicas", overrides, broker)
        .0
        .parse()
        .unwrap_or(broker.min_insync_replicas)
}

/// Returns None for acks=0 (no response is sent).
pub async fn handle(shard: &Rc<Shard>, req: ProduceRequest, version: i16) -> Option<ProduceResponse> {
    let view = shard.view();
    let image = &view.image;
    let acks = req.acks;
    let acks_valid = matches!(acks, -1..=1);
    // Request order is kept in `slots`; work is grouped by owner shard.
    let mut slots: Vec<(usize, PartitionProduceResponse)> = Vec::new();
    let mut topics: Vec<TopicProduceResponse> = Vec::with_capacity(req.topic_data.len());
    let mut work: Vec<(usize, ProducePart)> = Vec::new();
    for (topic_index, topic) in req.topic_data.into_iter().enumerate() {
        let meta = if version >= PRODUCE_TOPIC_IDS_VERSION {
            image.topic_by_id(&topic.topic_id)
        } else {
            image.topic(topic.name.as_str())
        };
        let name = meta
            .map(|m| m.name.clone())
            .unwrap_or_else(|| topic.name.to_string());
        let mut response = TopicProduceResponse::default();
        if version >= PRODUCE_TOPIC_IDS_VERSION {
            response.topic_id = topic.topic_id;
        } else {
            response.name = topic.name.clone();
        }
        topics.push(response);
        for data in topic.partition_data {
            let mut p = PartitionProduceResponse::default()
                .with_index(data.index)
                .with_base_offset(-1)
                .with_log_append_time_ms(-1)
                .with_log_start_offset(-1);
            let error = if !acks_valid {
                Some((
                    ResponseError::InvalidRequiredAcks,
                    "acks must be -1, 0 or 1".to_string(),
                ))
            } else if let Err((code, message)) = validate_topic_name(&name) {
                Some((code, message))
            } else if crate::controller::is_internal(&name) {
                // Only the group coordinator writes `__consumer_offsets`, as in
                // Kafka (ReplicaManager refuses client appends to internal topics).
                Some((
                    ResponseError::InvalidTopicException,
                    format!("Cannot append to internal topic {name}"),
                ))
            } else if meta.is_none() && version >= PRODUCE_TOPIC_IDS_VERSION {
                Some((
                    ResponseError::UnknownTopicId,
                    "This server does not host this topic ID.".into(),
                ))
            } else if let Some((required, in_sync)) = meta
                .map(|m| {
                    let in_sync = m
                        .partitions
                        .get(data.index.max(0) as usize)
                        .map_or(0, |p| p.in_sync().len());
                    (min_insync_replicas(&m.configs, &shard.config), in_sync)
                })
                .filter(|(required, in_sync)| acks == -1 && *required as usize > *in_sync && *in_sync > 0)
            {
                // Checked before the append, as Kafka does; a shrink while
                // the batch replicates gives NOT_ENOUGH_REPLICAS_AFTER_APPEND.
                Some((
                    ResponseError::NotEnoughReplicas,
                    format!("min.insync.replicas is {required} but only {in_sync} replicas are in sync"),
                ))
            } else {
                match view.owner(&name, data.index) {
                    Err(ResponseError::NotLeaderOrFollower) => Some((
                        ResponseError::NotLeaderOrFollower,
                        "This server is not the leader for that topic-partition.".into(),
                    )),
                    Err(code) => Some((code, "This server does not host this topic-partition.".into())),
                    Ok(owner) => match data.records {
                        None => Some((ResponseError::CorruptMessage, "no records".into())),
                        Some(records) => {
                            work.push((
                                owner,
                                ProducePart {
                                    slot: slots.len(),
                                    topic: name.clone(),
                                    partition: data.index,
                                    records,
                                    acks,
                                    min_insync_replicas: meta.map_or(1, |m| {
                                        min_insync_replicas(&m.configs, &shard.config).max(1) as usize
                                    }),
                                    timeout_ms: req.timeout_ms.max(0) as u64,
                                },
                            ));
                            None
                        }
                    },
                }
            };
            if let Some((code, message)) = error {
                if code == ResponseError::NotLeaderOrFollower {
                    // Routine after a leader move: the client refreshes its metadata.
                    tracing::debug!("produce to {name}-{} refused: {message}", data.index);
                } else {
                    tracing::warn!("produce to {name}-{} refused: {message}", data.index);
                }
                p.error_code = code.code();
                p.error_message = Some(str_bytes(&message));
            }
            slots.push((topic_index, p));
        }
    }

    let outcomes = shard
        .fan_out(
            work,
            |parts| ShardOp::Produce { parts },
            |reply| match reply {
                ShardReply::Produce(outcomes) => Some(outcomes),
                _ => None,
            },
        )
        .await;
    for ProduceOutcome {
        slot,
        error,
        base_offset,
        log_start_offset,
        log_append_time_ms,
    } in outcomes
    {
        let p = &mut slots[slot].1;
        match error {
            Some(e) => {
                p.error_code = e.code.code();
                p.error_message = Some(str_bytes(&e.message));
            }
            None => {
                p.base_offset = base_offset;
                p.log_start_offset = log_start_offset;
                p.log_append_time_ms = log_append_time_ms;
            }
        }
    }
    // A shard that went away mid-request leaves its parts unanswered.
    for (_, p) in slots.iter_mut() {
        if p.error_code == 0 && p.base_offset < 0 {
            p.error_code = ResponseError::NotLeaderOrFollower.code();
        }
    }
    if acks == 0 {
        return None;
    }
    for (topic_index, p) in slots {
        topics[topic_index].partition_responses.push(p);
    }
    Some(
        ProduceResponse::default()
            .with_responses(topics)
            .with_throttle_time_ms(0),
    )
}
