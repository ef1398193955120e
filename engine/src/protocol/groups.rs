//! Consumer-group APIs: FindCoordinator answered here (this broker is every
//! group's coordinator), everything else forwarded to the group's
//! coordinator shard as one `ShardOp::Group` per group and answered with
//! what that shard's `group` module returns.

use std::rc::Rc;

use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, ConsumerGroupDescribeRequest, ConsumerGroupDescribeResponse, ConsumerGroupHeartbeatRequest,
    ConsumerGroupHeartbeatResponse, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId, HeartbeatRequest,
    HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse,
    ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest,
    OffsetDeleteResponse, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse,
    TopicName, TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::ResponseError;

use crate::group::state::code_of;
use crate::group::{self, FetchedOffsets, GroupOp, GroupReply};
use crate::shard::{ControlOp, Shard, ShardOp, ShardReply};
use crate::wire::{str_bytes, AUTHORIZED_OPERATIONS_OMITTED};

/// FindCoordinator key types.
const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;
/// FindCoordinator v4 (KIP-699) batches keys.
const BATCHED_KEYS_VERSION: i16 = 4;

/// Runs `op` on the coordinator shard of `group_id`; None when there is none
/// (no `__consumer_offsets`, or the shard is shutting down).
async fn call_group(shard: &Rc<Shard>, group_id: &str, op: GroupOp) -> Option<GroupReply> {
    let target = group::coordinator_shard(&shard.view(), group_id)?;
    match shard.call(target, ShardOp::Group(Box::new(op))).await {
        ShardReply::Group(reply) => Some(reply),
        _ => None,
    }
}

pub fn find_coordinator(
    shard: &Rc<Shard>,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let image = shard.image();
    if image.topic(crate::txn::TRANSACTION_STATE_TOPIC).is_none() && req.key_type == KEY_TYPE_TRANSACTION {
        super::transactions::request_internal_topic(shard, ControlOp::CreateTransactionStateTopic);
    }
    if image.topic(group::OFFSETS_TOPIC).is_none() && req.key_type == KEY_TYPE_GROUP {
        super::transactions::request_internal_topic(shard, ControlOp::CreateOffsetsTopic);
    }
    let brokers = super::metadata::live_brokers(shard);
    let answer = |key: &StrBytes| -> Coordinator {
        // Group g's coordinator leads its `__consumer_offsets` partition,
        // transactional id t's its `__transaction_state` partition.
        let topic = match req.key_type {
            KEY_TYPE_GROUP => group::OFFSETS_TOPIC,
            _ => crate::txn::TRANSACTION_STATE_TOPIC,
        };
        let leader = image
            .topic(topic)
            .map(|t| crate::group::partition_for(key.as_str(), t.partitions.len() as i32))
            .and_then(|p| image.partition(topic, p))
            .and_then(|p| brokers.iter().find(|b| b.id == p.leader));
        let error = match req.key_type {
            KEY_TYPE_GROUP | KEY_TYPE_TRANSACTION if leader.is_some() => None,
            KEY_TYPE_GROUP => Some((
                ResponseError::CoordinatorNotAvailable,
                "the group's __consumer_offsets partition has no live leader",
            )),
            KEY_TYPE_TRANSACTION => Some((
                ResponseError::CoordinatorNotAvailable,
                "the transactional id's __transaction_state partition has no live leader",
            )),
            _ => Some((ResponseError::InvalidRequest, "unknown coordinator key type")),
        };
        let c = Coordinator::default().with_key(key.clone());
        match error {
            None => {
                let b = leader.expect("a key with no error has a leader");
                c.with_error_code(0)
                    .with_node_id(BrokerId(b.id))
                    .with_host(str_bytes(&b.host))
                    .with_port(i32::from(b.port))
            }
            Some((code, message)) => c
                .with_error_code(code.code())
                .with_error_message(Some(str_bytes(message)))
                .with_node_id(BrokerId(-1))
                .with_host(str_bytes(""))
                .with_port(-1),
        }
    };
    if version >= BATCHED_KEYS_VERSION {
        return FindCoordinatorResponse::default()
            .with_coordinators(req.coordinator_keys.iter().map(answer).collect());
    }
    let c = answer(&req.key);
    FindCoordinatorResponse::default()
        .with_error_code(c.error_code)
        .with_error_message(c.error_message)
        .with_node_id(c.node_id)
        .with_host(c.host)
        .with_port(c.port)
}

pub async fn join_group(
    shard: &Rc<Shard>,
    req: JoinGroupRequest,
    version: i16,
    client_id: String,
    client_host: String,
) -> JoinGroupResponse {
    let group_id = req.group_id.to_string();
    let member_id = req.member_id.to_string();
    let op = GroupOp::Join {
        req,
        version,
        client_id,
        client_host,
    };
    match call_group(shard, &group_id, op).await {
        Some(GroupReply::Join(resp)) => resp,
        _ => group::state::join_error(ResponseError::CoordinatorNotAvailable, &member_id),
    }
}

pub async fn sync_group(shard: &Rc<Shard>, req: SyncGroupRequest) -> SyncGroupResponse {
    let group_id = req.group_id.to_string();
    match call_group(shard, &group_id, GroupOp::Sync { req }).await {
        Some(GroupReply::Sync(resp)) => resp,
        _ => group::state::sync_error(ResponseError::CoordinatorNotAvailable),
    }
}

pub async fn heartbeat(shard: &Rc<Shard>, req: HeartbeatRequest) -> HeartbeatResponse {
    let group_id = req.group_id.to_string();
    let code = match call_group(shard, &group_id, GroupOp::Heartbeat { req }).await {
        Some(GroupReply::Heartbeat(code)) => code,
        _ => Some(ResponseError::CoordinatorNotAvailable),
    };
    HeartbeatResponse::default().with_error_code(code_of(code))
}

pub async fn leave_group(shard: &Rc<Shard>, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    let group_id = req.group_id.to_string();
    match call_group(shard, &group_id, GroupOp::Leave { req, version }).await {
        Some(GroupReply::Leave(resp)) => resp,
        _ => LeaveGroupResponse::default().with_error_code(ResponseError::CoordinatorNotAvailable.code()),
    }
}

pub async fn offset_commit(shard: &Rc<Shard>, req: OffsetCommitRequest) -> OffsetCommitResponse {
    use kafka_protocol::messages::offset_commit_response::{
        OffsetCommitResponsePartition, OffsetCommitResponseTopic,
    };
    let group_id = req.group_id.to_string();
    // Kept for the error answer: the request moves to the coordinator shard.
    let shape: Vec<(TopicName, Vec<i32>)> = req
        .topics
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.partitions.iter().map(|p| p.partition_index).collect(),
            )
        })
        .collect();
    match call_group(shard, &group_id, GroupOp::Commit { req }).await {
        Some(GroupReply::Commit(resp)) => resp,
        _ => OffsetCommitResponse::default().with_topics(
            shape
                .into_iter()
                .map(|(name, parts)| {
                    OffsetCommitResponseTopic::default()
                        .with_name(name)
                        .with_partitions(
                            parts
                                .into_iter()
                                .map(|p| {
                                    OffsetCommitResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_error_code(ResponseError::CoordinatorNotAvailable.code())
                                })
                                .collect(),
                        )
                })
                .collect(),
        ),
    }
}

async fn fetch_group(
    shard: &Rc<Shard>,
    group_id: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
    require_stable: bool,
) -> FetchedOffsets {
    let op = GroupOp::Fetch {
        group_id: group_id.to_string(),
        topics,
        require_stable,
    };
    match call_group(shard, group_id, op).await {
        Some(GroupReply::Fetch(f)) => f,
        _ => FetchedOffsets {
            error: Some(ResponseError::CoordinatorNotAvailable),
            topics: Vec::new(),
        },
    }
}

pub async fn consumer_heartbeat(
    shard: &Rc<Shard>,
    req: ConsumerGroupHeartbeatRequest,
    version: i16,
    client_id: String,
    client_host: String,
) -> ConsumerGroupHeartbeatResponse {
    let group_id = req.group_id.to_string();
    let epoch = req.member_epoch;
    let op = GroupOp::ConsumerHeartbeat {
        req,
        version,
        client_id,
        client_host,
    };
    match call_group(shard, &group_id, op).await {
        Some(GroupReply::ConsumerHeartbeat(resp)) => resp,
        _ => ConsumerGroupHeartbeatResponse::default()
            .with_error_code(ResponseError::CoordinatorNotAvailable.code())
            .with_member_epoch(epoch),
    }
}

pub async fn consumer_describe(
    shard: &Rc<Shard>,
    req: ConsumerGroupDescribeRequest,
) -> ConsumerGroupDescribeResponse {
    use kafka_protocol::messages::consumer_group_describe_response::DescribedGroup as Described;
    let calls = req.group_ids.into_iter().map(|g| async move {
        let op = GroupOp::ConsumerDescribe {
            group_id: g.to_string(),
        };
        match call_group(shard, g.as_str(), op).await {
            Some(GroupReply::ConsumerDescribe(d)) => d,
            _ => Described::default()
                .with_group_id(g)
                .with_error_code(ResponseError::CoordinatorNotAvailable.code())
                .with_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED),
        }
    });
    ConsumerGroupDescribeResponse::default().with_groups(futures::future::join_all(calls).await)
}

/// TxnOffsetCommit v0-1 clients do not know COORDINATOR_LOAD_IN_PROGRESS.
const TXN_COMMIT_LOAD_IN_PROGRESS_VERSION: i16 = 2;

pub async fn txn_offset_commit(
    shard: &Rc<Shard>,
    req: TxnOffsetCommitRequest,
    version: i16,
) -> TxnOffsetCommitResponse {
    use kafka_protocol::messages::txn_offset_commit_response::{
        TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
    };
    let group_id = req.group_id.to_string();
    let shape: Vec<(TopicName, Vec<i32>)> = req
        .topics
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                t.partitions.iter().map(|p| p.partition_index).collect(),
            )
        })
        .collect();
    let mut resp = match call_group(shard, &group_id, GroupOp::TxnCommit { req }).await {
        Some(GroupReply::TxnCommit(resp)) => resp,
        _ => TxnOffsetCommitResponse::default().with_topics(
            shape
                .into_iter()
                .map(|(name, parts)| {
                    TxnOffsetCommitResponseTopic::default()
                        .with_name(name)
                        .with_partitions(
                            parts
                                .into_iter()
                                .map(|p| {
                                    TxnOffsetCommitResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_error_code(ResponseError::CoordinatorNotAvailable.code())
                                })
                                .collect(),
                        )
                })
                .collect(),
        ),
    };
    if version < TXN_COMMIT_LOAD_IN_PROGRESS_VERSION {
        for p in resp.topics.iter_mut().flat_map(|t| t.partitions.iter_mut()) {
            if p.error_code == ResponseError::CoordinatorLoadInProgress.code() {
                p.error_code = ResponseError::CoordinatorNotAvailable.code();
            }
        }
    }
    resp
}

/// OffsetFetch v8 (KIP-709) asks for many groups at once.
const MULTI_GROUP_FETCH_VERSION: i16 = 8;

pub async fn offset_fetch(shard: &Rc<Shard>, req: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
    if version < MULTI_GROUP_FETCH_VERSION {
        let topics = req.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.name.to_string(), t.partition_indexes))
                .collect()
        });
        let fetched = fetch_group(shard, req.group_id.as_str(), topics, req.require_stable).await;
        let topics = fetched
            .topics
            .into_iter()
            .map(|(name, parts)| {
                OffsetFetchResponseTopic::default()
                    .with_name(TopicName(str_bytes(&name)))
                    .with_partitions(
                        parts
                            .into_iter()
                            .map(|p| {
                                OffsetFetchResponsePartition::default()
                                    .with_partition_index(p.partition)
                                    .with_committed_offset(p.offset)
                                    .with_committed_leader_epoch(p.leader_epoch)
                                    .with_metadata(Some(str_bytes(&p.metadata)))
                                    .with_error_code(code_of(p.error))
                            })
                            .collect(),
                    )
            })
            .collect();
        return OffsetFetchResponse::default()
            .with_error_code(code_of(fetched.error))
            .with_topics(topics);
    }
    let require_stable = req.require_stable;
    let calls = req.groups.into_iter().map(|g| async move {
        let topics = g.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.name.to_string(), t.partition_indexes))
                .collect()
        });
        let fetched = fetch_group(shard, g.group_id.as_str(), topics, require_stable).await;
        let topics = fetched
            .topics
            .into_iter()
            .map(|(name, parts)| {
                OffsetFetchResponseTopics::default()
                    .with_name(TopicName(str_bytes(&name)))
                    .with_partitions(
                        parts
                            .into_iter()
                            .map(|p| {
                                OffsetFetchResponsePartitions::default()
                                    .with_partition_index(p.partition)
                                    .with_committed_offset(p.offset)
                                    .with_committed_leader_epoch(p.leader_epoch)
                                    .with_metadata(Some(str_bytes(&p.metadata)))
                                    .with_error_code(code_of(p.error))
                            })
                            .collect(),
                    )
            })
            .collect();
        OffsetFetchResponseGroup::default()
            .with_group_id(g.group_id)
            .with_error_code(code_of(fetched.error))
            .with_topics(topics)
    });
    OffsetFetchResponse::default().with_groups(futures::future::join_all(calls).await)
}

pub async fn describe_groups(
    shard: &Rc<Shard>,
    req: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let calls = req.groups.into_iter().map(|g| async move {
        let op = GroupOp::Describe {
            group_id: g.to_string(),
            version,
        };
        match call_group(shard, g.as_str(), op).await {
            Some(GroupReply::Describe(d)) => d,
            _ => DescribedGroup::default()
                .with_group_id(g)
                .with_error_code(ResponseError::CoordinatorNotAvailable.code())
                .with_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED),
        }
    });
    DescribeGroupsResponse::default().with_groups(futures::future::join_all(calls).await)
}

pub async fn list_groups(shard: &Rc<Shard>, req: ListGroupsRequest) -> ListGroupsResponse {
    let calls =
        (0..shard.nr_shards).map(|target| shard.call(target, ShardOp::Group(Box::new(GroupOp::List))));
    let wanted = |filter: &[StrBytes], value: &str| {
        filter.is_empty() || filter.iter().any(|f| f.eq_ignore_ascii_case(value))
    };
    let mut groups = Vec::new();
    let mut error = None;
    for reply in futures::future::join_all(calls).await {
        match reply {
            ShardReply::Group(GroupReply::List(listed)) => groups.extend(listed.into_iter().filter(|g| {
                wanted(&req.states_filter, g.group_state.as_str())
                    && wanted(&req.types_filter, g.group_type.as_str())
            })),
            _ => error = Some(ResponseError::CoordinatorNotAvailable),
        }
    }
    groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
    ListGroupsResponse::default()
        .with_error_code(code_of(error))
        .with_groups(groups)
}

pub async fn delete_groups(shard: &Rc<Shard>, req: DeleteGroupsRequest) -> DeleteGroupsResponse {
    let calls = req.groups_names.into_iter().map(|g: GroupId| async move {
        let op = GroupOp::Delete {
            group_id: g.to_string(),
        };
        let code = match call_group(shard, g.as_str(), op).await {
            Some(GroupReply::Delete(code)) => code,
            _ => Some(ResponseError::CoordinatorNotAvailable),
        };
        DeletableGroupResult::default()
            .with_group_id(g)
            .with_error_code(code_of(code))
    });
    DeleteGroupsResponse::default().with_results(futures::future::join_all(calls).await)
}

pub async fn offset_delete(shard: &Rc<Shard>, req: OffsetDeleteRequest) -> OffsetDeleteResponse {
    let group_id = req.group_id.to_string();
    match call_group(shard, &group_id, GroupOp::OffsetDelete { req }).await {
        Some(GroupReply::OffsetDelete(resp)) => resp,
        _ => OffsetDeleteResponse::default().with_error_code(ResponseError::CoordinatorNotAvailable.code()),
    }
}
