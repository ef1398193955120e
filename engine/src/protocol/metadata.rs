//! Metadata: brokers, topics, partition leaders; auto-creates topics as Kafka does.

use std::rc::Rc;

use kafka_protocol::messages::describe_topic_partitions_response::{
    Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, DescribeTopicPartitionsRequest, DescribeTopicPartitionsResponse, MetadataRequest,
    MetadataResponse, TopicName,
};
use kafka_protocol::ResponseError;
use uuid::Uuid;

use crate::controller::{validate_topic_name, BrokerMeta, MetadataImage, NewTopic, TopicMeta, NO_LEADER};
use crate::shard::{ControlOp, Shard, ShardOp, CONTROLLER_SHARD};
use crate::wire::{str_bytes, AUTHORIZED_OPERATIONS_OMITTED};

/// Metadata v4 added the client's say on auto-creation; before it, it was implied.
const ALLOW_AUTO_CREATE_VERSION: i16 = 4;

pub async fn handle(shard: &Rc<Shard>, req: MetadataRequest, version: i16) -> MetadataResponse {
    let config = &shard.config;
    let mut image = shard.image();
    let requested: Option<Vec<(Option<String>, Uuid)>> = match req.topics {
        // v0 sends an empty list for "all topics"; v1+ sends null.
        Some(list) if !(version == 0 && list.is_empty()) => Some(
            list.into_iter()
                .map(|t| (t.name.map(|n| n.to_string()), t.topic_id))
                .collect(),
        ),
        _ => None,
    };
    let allow_auto = config.auto_create_topics_enable
        && (version < ALLOW_AUTO_CREATE_VERSION || req.allow_auto_topic_creation);
    if let (Some(list), true) = (&requested, allow_auto) {
        let missing: Vec<NewTopic> = list
            .iter()
            .filter_map(|(name, _)| name.as_ref())
            .filter(|n| image.topic(n).is_none() && validate_topic_name(n).is_ok())
            .map(|n| NewTopic {
                name: n.clone(),
                num_partitions: -1,
                replication_factor: -1,
                assignments: Vec::new(),
                configs: Vec::new(),
            })
            .collect();
        if !missing.is_empty() {
            tracing::info!(
                "auto-creating topics {:?}",
                missing.iter().map(|t| &t.name).collect::<Vec<_>>()
            );
            let op = ControlOp::CreateTopics {
                topics: missing,
                validate_only: false,
            };
            shard.call(CONTROLLER_SHARD, ShardOp::Control(op)).await;
            image = shard.image();
        }
    }

    let topics: Vec<MetadataResponseTopic> = match requested {
        None => image.topics.values().map(|t| topic_response(&image, t)).collect(),
        Some(list) => list
            .into_iter()
            .map(|(name, id)| {
                let meta = match &name {
                    Some(n) => image.topic(n),
                    None => image.topic_by_id(&id),
                };
                match meta {
                    Some(t) => topic_response(&image, t),
                    None => missing_topic(&image, name, id),
                }
            })
            .collect(),
    };
    let live = live_brokers(shard);
    let controller_id = client_controller_id(shard, &live);
    let brokers = live
        .into_iter()
        .map(|b| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(b.id))
                .with_host(str_bytes(&b.host))
                .with_port(b.port as i32)
                .with_rack(b.rack.as_deref().map(str_bytes))
        })
        .collect();
    MetadataResponse::default()
        .with_brokers(brokers)
        .with_cluster_id(Some(str_bytes(&image.cluster_id)))
        .with_controller_id(BrokerId(controller_id))
        .with_topics(topics)
        .with_cluster_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED)
}

/// The brokers clients may use: every registered, unfenced broker; this one
/// with the address its configuration gives now (a single node restarted on
/// another port re-registers a moment after it starts listening).
pub fn live_brokers(shard: &Shard) -> Vec<BrokerMeta> {
    let config = &shard.config;
    shard
        .image()
        .brokers
        .values()
        .filter(|b| !b.fenced)
        .map(|b| {
            if b.id != config.node_id {
                return b.clone();
            }
            BrokerMeta {
                host: config.advertised_host.clone(),
                port: config.advertised_port,
                rack: config.cluster.rack.clone(),
                ..b.clone()
            }
        })
        .collect()
}

/// The "controller" clients are told of, as KRaft brokers answer: this
/// broker itself (any broker forwards admin requests to the active
/// controller, and this one just answered, so it is reachable, where a
/// controller that died a moment ago would hold admin clients until they
/// refresh their metadata); a live broker when this node is none.
pub fn client_controller_id(shard: &Shard, live: &[BrokerMeta]) -> i32 {
    let node_id = shard.config.node_id;
    if live.iter().any(|b| b.id == node_id) {
        return node_id;
    }
    live.first().map_or(-1, |b| b.id)
}

fn missing_topic(_image: &MetadataImage, name: Option<String>, id: Uuid) -> MetadataResponseTopic {
    let code = match &name {
        Some(n) if validate_topic_name(n).is_err() => ResponseError::InvalidTopicException,
        Some(_) => ResponseError::UnknownTopicOrPartition,
        None => ResponseError::UnknownTopicId,
    };
    MetadataResponseTopic::default()
        .with_error_code(code.code())
        .with_name(name.map(|n| TopicName(str_bytes(&n))))
        .with_topic_id(id)
        .with_topic_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED)
}

fn topic_response(image: &MetadataImage, t: &TopicMeta) -> MetadataResponseTopic {
    let live = |id: &i32| image.brokers.get(id).is_some_and(|b| !b.fenced);
    let partitions = t
        .partitions
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let ids = |f: &dyn Fn(&i32) -> bool| -> Vec<BrokerId> {
                p.replicas.iter().filter(|r| f(r)).map(|r| BrokerId(*r)).collect()
            };
            let error = if p.leader == NO_LEADER {
                ResponseError::LeaderNotAvailable.code()
            } else {
                0
            };
            MetadataResponsePartition::default()
                .with_error_code(error)
                .with_partition_index(i as i32)
                .with_leader_id(BrokerId(p.leader))
                .with_leader_epoch(p.leader_epoch)
                .with_replica_nodes(ids(&|_| true))
                // The controller's ISR, as Kafka reports it (its last
                // member stays listed while down, so a clean election waits).
                .with_isr_nodes(p.in_sync().iter().map(|r| BrokerId(*r)).collect())
                .with_offline_replicas(ids(&|r| !live(r)))
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(str_bytes(&t.name))))
        .with_topic_id(t.id)
        .with_is_internal(crate::controller::is_internal(&t.name))
        .with_partitions(partitions)
        .with_topic_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED)
}

/// DescribeTopicPartitions (KIP-966, Kafka 4's admin path for describing
/// topics): the requested topics (all of them when none is named) in name
/// order, their partitions from the cursor on, at most
/// min(`response_partition_limit`, `max.request.partition.size.limit`)
/// partitions per answer; `next_cursor` names the first partition left
/// out. A cursor naming a topic that was not requested is INVALID_REQUEST,
/// as in Kafka. Never creates topics.
pub fn describe_topic_partitions(
    shard: &Shard,
    req: DescribeTopicPartitionsRequest,
) -> DescribeTopicPartitionsResponse {
    let image = shard.image();
    let all = req.topics.is_empty();
    let mut names: Vec<String> = if all {
        image.topics.values().map(|t| t.name.clone()).collect()
    } else {
        req.topics.iter().map(|t| t.name.to_string()).collect()
    };
    names.sort_unstable();
    names.dedup();
    let cursor = req.cursor.map(|c| (c.topic_name.to_string(), c.partition_index));
    if let Some((topic, partition)) = &cursor {
        if (!all && !names.contains(topic)) || *partition < 0 {
            let topics = names
                .into_iter()
                .map(|n| {
                    DescribeTopicPartitionsResponseTopic::default()
                        .with_error_code(ResponseError::InvalidRequest.code())
                        .with_name(Some(TopicName(str_bytes(&n))))
                        .with_topic_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED)
                })
                .collect();
            return DescribeTopicPartitionsResponse::default().with_topics(topics);
        }
        names.retain(|n| n >= topic);
    }
    let limit = usize::try_from(req.response_partition_limit)
        .unwrap_or(0)
        .clamp(1, shard.config.max_request_partition_size_limit.max(1));
    let mut remaining = limit;
    let mut topics = Vec::new();
    let mut next_cursor = None;
    for (i, name) in names.iter().enumerate() {
        if remaining == 0 {
            next_cursor = Some(Cursor::default().with_topic_name(TopicName(str_bytes(name))));
            break;
        }
        let Some(meta) = image.topic(name) else {
            let code = if validate_topic_name(name).is_err() {
                ResponseError::InvalidTopicException
            } else {
                ResponseError::UnknownTopicOrPartition
            };
            topics.push(
                DescribeTopicPartitionsResponseTopic::default()
                    .with_error_code(code.code())
                    .with_name(Some(TopicName(str_bytes(name))))
                    .with_topic_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED),
            );
            continue;
        };
        let first = match &cursor {
            Some((topic, partition)) if i == 0 && topic == name => *partition as usize,
            _ => 0,
        };
        let mut described = topic_response(&image, meta);
        let mut partitions: Vec<MetadataResponsePartition> =
            described.partitions.drain(..).skip(first).collect();
        if partitions.len() > remaining {
            next_cursor = Some(
                Cursor::default()
                    .with_topic_name(TopicName(str_bytes(name)))
                    .with_partition_index((first + remaining) as i32),
            );
            partitions.truncate(remaining);
        }
        remaining -= partitions.len();
        topics.push(
            DescribeTopicPartitionsResponseTopic::default()
                .with_name(described.name)
                .with_topic_id(described.topic_id)
                .with_is_internal(described.is_internal)
                .with_partitions(partitions.into_iter().map(described_partition).collect())
                .with_topic_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED),
        );
        if next_cursor.is_some() {
            break;
        }
    }
    DescribeTopicPartitionsResponse::default()
        .with_topics(topics)
        .with_next_cursor(next_cursor)
}

/// A Metadata partition as DescribeTopicPartitions reports it. Eligible
/// leader replicas (KIP-966's ELR) are not kept: null, as Kafka answers
/// when ELR is off.
fn described_partition(p: MetadataResponsePartition) -> DescribeTopicPartitionsResponsePartition {
    DescribeTopicPartitionsResponsePartition::default()
        .with_error_code(p.error_code)
        .with_partition_index(p.partition_index)
        .with_leader_id(p.leader_id)
        .with_leader_epoch(p.leader_epoch)
        .with_replica_nodes(p.replica_nodes)
        .with_isr_nodes(p.isr_nodes)
        .with_eligible_leader_replicas(None)
        .with_last_known_elr(None)
        .with_offline_replicas(p.offline_replicas)
}
