//! Topic administration and cluster description: CreateTopics, DeleteTopics,
//! CreatePartitions, AlterConfigs, IncrementalAlterConfigs (forwarded to
//! the controller on shard 0),
//! DescribeConfigs and DescribeCluster (answered from the local image).

use std::rc::Rc;

use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{CreatableTopicConfigs, CreatableTopicResult};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResourceResponse;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, BrokerId, CreatePartitionsRequest, CreatePartitionsResponse,
    CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    DescribeClusterRequest, DescribeClusterResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse, TopicName,
};
use kafka_protocol::ResponseError;

use crate::config::topic as topic_config;
use crate::controller::{ConfigAlteration, NewTopic, TopicOutcome, CONFIG_OP_SET};
use crate::shard::{ControlOp, ControlReply, Shard, ShardOp, ShardReply, CONTROLLER_SHARD};
use crate::wire::{str_bytes, AUTHORIZED_OPERATIONS_OMITTED};

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// DescribeConfigs config sources.
const SOURCE_TOPIC_CONFIG: i8 = 1;
const SOURCE_STATIC_BROKER_CONFIG: i8 = 4;
const SOURCE_DEFAULT_CONFIG: i8 = 5;
const DELETE_TOPICS_IDS_VERSION: i16 = 6;

/// Runs a metadata change on the controller shard.
async fn control(shard: &Rc<Shard>, op: ControlOp) -> Option<Vec<TopicOutcome>> {
    match shard.call(CONTROLLER_SHARD, ShardOp::Control(op)).await {
        ShardReply::Control(ControlReply::Topics(outcomes)) => Some(outcomes),
        _ => None,
    }
}

pub async fn create_topics(
    shard: &Rc<Shard>,
    req: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let names: Vec<TopicName> = req.topics.iter().map(|t| t.name.clone()).collect();
    let topics: Vec<NewTopic> = req
        .topics
        .into_iter()
        .map(|t| NewTopic {
            name: t.name.to_string(),
            num_partitions: t.num_partitions,
            replication_factor: t.replication_factor,
            assignments: t
                .assignments
                .into_iter()
                .map(|a| a.broker_ids.into_iter().map(|b| b.0).collect())
                .collect(),
            configs: t
                .configs
                .into_iter()
                .map(|c| (c.name.to_string(), c.value.map(|v| v.to_string())))
                .collect(),
        })
        .collect();
    let op = ControlOp::CreateTopics {
        topics,
        validate_only: req.validate_only,
    };
    let results = match control(shard, op).await {
        Some(outcomes) => outcomes
            .into_iter()
            .map(|o| {
                let mut r = CreatableTopicResult::default()
                    .with_name(TopicName(str_bytes(&o.name)))
                    .with_num_partitions(o.num_partitions)
                    .with_replication_factor(o.replication_factor);
                match &o.error {
                    Some((code, message)) => {
                        tracing::info!("create topic {:?} refused: {message}", o.name);
                        r.error_code = code.code();
                        r.error_message = Some(str_bytes(message));
                    }
                    None => {
                        r.topic_id = o.topic_id;
                        if version >= 5 {
                            r.configs = Some(
                                topic_entries(&o.configs, &shard.config)
                                    .map(|(k, value, source)| {
                                        CreatableTopicConfigs::default()
                                            .with_name(str_bytes(k))
                                            .with_value(Some(str_bytes(&value)))
                                            .with_config_source(source)
                                    })
                                    .collect(),
                            );
                        }
                    }
                }
                r
            })
            .collect(),
        None => names
            .into_iter()
            .map(|n| {
                CreatableTopicResult::default()
                    .with_name(n)
                    .with_error_code(ResponseError::NotController.code())
                    .with_num_partitions(-1)
                    .with_replication_factor(-1)
            })
            .collect(),
    };
    CreateTopicsResponse::default().with_topics(results)
}

pub async fn delete_topics(
    shard: &Rc<Shard>,
    req: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let image = shard.image();
    // v6 names topics by name or id; earlier versions by name only.
    let mut unknown_ids = Vec::new();
    let mut names = Vec::new();
    if version >= DELETE_TOPICS_IDS_VERSION {
        for t in req.topics {
            match (t.name, image.topic_by_id(&t.topic_id)) {
                (Some(n), _) => names.push(n.to_string()),
                (None, Some(meta)) => names.push(meta.name.clone()),
                (None, None) => unknown_ids.push(t.topic_id),
            }
        }
    } else {
        names = req.topic_names.into_iter().map(|n| n.to_string()).collect();
    }
    let outcomes = control(shard, ControlOp::DeleteTopics { names: names.clone() })
        .await
        .unwrap_or_else(|| {
            names
                .iter()
                .map(|n| TopicOutcome {
                    name: n.clone(),
                    error: Some((ResponseError::NotController, "controller unavailable".into())),
                    topic_id: uuid::Uuid::nil(),
                    num_partitions: -1,
                    replication_factor: -1,
                    configs: Default::default(),
                })
                .collect()
        });
    let mut responses: Vec<DeletableTopicResult> = outcomes
        .into_iter()
        .map(|o| {
            let mut r = DeletableTopicResult::default()
                .with_name(Some(TopicName(str_bytes(&o.name))))
                .with_topic_id(o.topic_id);
            if let Some((code, message)) = o.error {
                r.error_code = code.code();
                r.error_message = Some(str_bytes(&message));
            } else {
                tracing::info!("deleted topic {:?}", o.name);
            }
            r
        })
        .collect();
    responses.extend(unknown_ids.into_iter().map(|id| {
        DeletableTopicResult::default()
            .with_topic_id(id)
            .with_error_code(ResponseError::UnknownTopicId.code())
    }));
    DeleteTopicsResponse::default().with_responses(responses)
}

pub async fn create_partitions(shard: &Rc<Shard>, req: CreatePartitionsRequest) -> CreatePartitionsResponse {
    let node = shard.config.node_id;
    let mut refused = Vec::new();
    let mut topics = Vec::new();
    for t in req.topics {
        let bad_assignment = t
            .assignments
            .as_ref()
            .is_some_and(|a| a.iter().any(|r| r.broker_ids.iter().any(|b| b.0 != node)));
        if bad_assignment {
            refused.push(
                CreatePartitionsTopicResult::default()
                    .with_name(t.name)
                    .with_error_code(ResponseError::InvalidReplicaAssignment.code())
                    .with_error_message(Some(str_bytes(&format!(
                        "Only broker {node} exists in this cluster."
                    )))),
            );
        } else {
            topics.push((t.name.to_string(), t.count));
        }
    }
    let op = ControlOp::CreatePartitions {
        topics,
        validate_only: req.validate_only,
    };
    let mut results: Vec<CreatePartitionsTopicResult> = control(shard, op)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|o| {
            let mut r = CreatePartitionsTopicResult::default().with_name(TopicName(str_bytes(&o.name)));
            if let Some((code, message)) = o.error {
                r.error_code = code.code();
                r.error_message = Some(str_bytes(&message));
            }
            r
        })
        .collect();
    results.extend(refused);
    CreatePartitionsResponse::default().with_results(results)
}

/// Every topic config as (name, effective value, Kafka config source).
fn topic_entries<'a>(
    overrides: &'a std::collections::BTreeMap<String, String>,
    broker: &'a crate::config::BrokerConfig,
) -> impl Iterator<Item = (&'static str, String, i8)> + 'a {
    topic_config::TOPIC_KEYS.iter().map(move |k| {
        let (value, is_default) = topic_config::effective(k, overrides, broker);
        let source = if is_default {
            SOURCE_DEFAULT_CONFIG
        } else {
            SOURCE_TOPIC_CONFIG
        };
        (*k, value, source)
    })
}

fn wanted(keys: &Option<Vec<kafka_protocol::protocol::StrBytes>>, name: &str) -> bool {
    keys.as_ref().is_none_or(|k| k.iter().any(|k| k.as_str() == name))
}

pub fn describe_configs(shard: &Rc<Shard>, req: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let image = shard.image();
    let results = req
        .resources
        .into_iter()
        .map(|res| {
            let mut result = DescribeConfigsResult::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone());
            match res.resource_type {
                RESOURCE_TOPIC => match image.topic(res.resource_name.as_str()) {
                    None => {
                        result.error_code = ResponseError::UnknownTopicOrPartition.code();
                        result.error_message = Some(str_bytes("This server does not host this topic."));
                    }
                    Some(meta) => {
                        result.configs = topic_entries(&meta.configs, &shard.config)
                            .filter(|(k, _, _)| wanted(&res.configuration_keys, k))
                            .map(|(k, value, source)| {
                                DescribeConfigsResourceResult::default()
                                    .with_name(str_bytes(k))
                                    .with_value(Some(str_bytes(&value)))
                                    .with_config_source(source)
                                    .with_config_type(topic_config::config_type(k))
                            })
                            .collect();
                    }
                },
                RESOURCE_BROKER => {
                    let name = res.resource_name.as_str();
                    if !name.is_empty() && name != shard.config.node_id.to_string() {
                        result.error_code = ResponseError::InvalidRequest.code();
                        result.error_message = Some(str_bytes(&format!("Unexpected broker id {name}")));
                    } else {
                        result.configs = shard
                            .config
                            .describe()
                            .into_iter()
                            .filter(|(k, _, _)| wanted(&res.configuration_keys, k))
                            .map(|(k, value, is_default): (&str, String, bool)| {
                                DescribeConfigsResourceResult::default()
                                    .with_name(str_bytes(k))
                                    .with_value(Some(str_bytes(&value)))
                                    .with_read_only(true)
                                    .with_config_source(if is_default {
                                        SOURCE_DEFAULT_CONFIG
                                    } else {
                                        SOURCE_STATIC_BROKER_CONFIG
                                    })
                                    .with_config_type(2)
                            })
                            .collect();
                    }
                }
                other => {
                    result.error_code = ResponseError::InvalidRequest.code();
                    result.error_message = Some(str_bytes(&format!("Unsupported resource type {other}")));
                }
            }
            result
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

pub fn describe_cluster(
    shard: &Rc<Shard>,
    req: DescribeClusterRequest,
    version: i16,
) -> DescribeClusterResponse {
    let live = super::metadata::live_brokers(shard);
    // DescribeCluster names the active controller (operators read it);
    // Metadata, which admin clients route by, names this broker. When the
    // controller is no broker clients could reach, this broker stands in.
    let active = shard.view().controller_id;
    let controller_id = if live.iter().any(|b| b.id == active) {
        active
    } else {
        super::metadata::client_controller_id(shard, &live)
    };
    let brokers = live
        .into_iter()
        .map(|b| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(b.id))
                .with_host(str_bytes(&b.host))
                .with_port(b.port as i32)
                .with_rack(b.rack.as_deref().map(str_bytes))
        })
        .collect();
    DescribeClusterResponse::default()
        // v0 has no endpoint type; the field must stay at its default there.
        .with_endpoint_type(if version >= 1 { req.endpoint_type } else { 1 })
        .with_cluster_id(str_bytes(&shard.image().cluster_id))
        .with_controller_id(BrokerId(controller_id))
        .with_brokers(brokers)
        .with_cluster_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED)
}

/// One resource of an AlterConfigs / IncrementalAlterConfigs request.
struct ResourceChange {
    resource_type: i8,
    resource_name: kafka_protocol::protocol::StrBytes,
    entries: Vec<(String, i8, Option<String>)>,
}

/// Shared by both AlterConfigs flavours: topic changes go to the controller;
/// broker configs are static (set in the file or with --set), as Kafka's
/// read-only broker configs are.
async fn alter_resources(
    shard: &Rc<Shard>,
    resources: Vec<ResourceChange>,
    incremental: bool,
    validate_only: bool,
) -> Vec<(i8, kafka_protocol::protocol::StrBytes, i16, Option<String>)> {
    let mut answers: Vec<(i8, kafka_protocol::protocol::StrBytes, i16, Option<String>)> = Vec::new();
    let mut changes = Vec::new();
    let mut change_slots = Vec::new();
    for r in resources {
        match r.resource_type {
            RESOURCE_TOPIC => {
                change_slots.push(answers.len());
                changes.push(ConfigAlteration {
                    topic: r.resource_name.to_string(),
                    incremental,
                    entries: r.entries,
                });
                answers.push((r.resource_type, r.resource_name, 0, None));
            }
            RESOURCE_BROKER => answers.push((
                r.resource_type,
                r.resource_name,
                ResponseError::InvalidRequest.code(),
                Some("Broker configs are static here: set them in the config file or with --set".into()),
            )),
            other => answers.push((
                other,
                r.resource_name,
                ResponseError::InvalidRequest.code(),
                Some(format!("Unsupported resource type {other}")),
            )),
        }
    }
    if changes.is_empty() {
        return answers;
    }
    let op = ControlOp::AlterConfigs {
        changes,
        validate_only,
    };
    let outcomes = match shard.call(CONTROLLER_SHARD, ShardOp::Control(op)).await {
        ShardReply::Control(ControlReply::Altered(outcomes)) => outcomes,
        _ => vec![
            Some((ResponseError::NotController, "controller unavailable".to_string()));
            change_slots.len()
        ],
    };
    for (slot, outcome) in change_slots.into_iter().zip(outcomes) {
        if let Some((code, message)) = outcome {
            tracing::info!(
                "config change of topic {:?} refused: {message}",
                answers[slot].1.as_str()
            );
            answers[slot].2 = code.code();
            answers[slot].3 = Some(message);
        }
    }
    answers
}

pub async fn alter_configs(shard: &Rc<Shard>, req: AlterConfigsRequest) -> AlterConfigsResponse {
    let resources = req
        .resources
        .into_iter()
        .map(|r| ResourceChange {
            resource_type: r.resource_type,
            resource_name: r.resource_name,
            entries: r
                .configs
                .into_iter()
                .map(|c| (c.name.to_string(), CONFIG_OP_SET, c.value.map(|v| v.to_string())))
                .collect(),
        })
        .collect();
    let responses = alter_resources(shard, resources, false, req.validate_only)
        .await
        .into_iter()
        .map(|(resource_type, resource_name, error_code, message)| {
            AlterConfigsResourceResponse::default()
                .with_resource_type(resource_type)
                .with_resource_name(resource_name)
                .with_error_code(error_code)
                .with_error_message(message.map(|m| str_bytes(&m)))
        })
        .collect();
    AlterConfigsResponse::default().with_responses(responses)
}

pub async fn incremental_alter_configs(
    shard: &Rc<Shard>,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    let resources = req
        .resources
        .into_iter()
        .map(|r| ResourceChange {
            resource_type: r.resource_type,
            resource_name: r.resource_name,
            entries: r
                .configs
                .into_iter()
                .map(|c| {
                    (
                        c.name.to_string(),
                        c.config_operation,
                        c.value.map(|v| v.to_string()),
                    )
                })
                .collect(),
        })
        .collect();
    let responses = alter_resources(shard, resources, true, req.validate_only)
        .await
        .into_iter()
        .map(|(resource_type, resource_name, error_code, message)| {
            IncrementalResourceResponse::default()
                .with_resource_type(resource_type)
                .with_resource_name(resource_name)
                .with_error_code(error_code)
                .with_error_message(message.map(|m| str_bytes(&m)))
        })
        .collect();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}
