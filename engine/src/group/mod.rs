//! Consumer-group coordinator (Kafka's classic group protocol) and committed
//! offsets, persisted in `__consumer_offsets`.
//!
//! Group `g` lives on the shard that owns `__consumer_offsets` partition
//! `abs(javaHashCode(g)) % offsets.topic.num.partitions`; the protocol layer
//! forwards every group request there (`ShardOp::Group`). Each shard's
//! [`Coordinator`] holds only the groups of its own partitions (`RefCell`,
//! no locks), and writes their records through the normal partition append
//! path before answering. At startup a shard replays its partitions to
//! rebuild groups (Empty) and offsets.
//!
//! Back of envelope: a commit of one partition is one ~100-byte record,
//! a group metadata record ~200 bytes plus the members' subscriptions and
//! assignments (bounded by `group.member.metadata.max.bytes` and
//! `group.max.size`). A consumer commits every 5 s by default, so 10k
//! consumers are ~2k appends/s, far below one shard's append rate.

pub mod consumer;
pub mod records;
pub mod state;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::{
    GroupId, HeartbeatRequest, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse, SyncGroupRequest,
    SyncGroupResponse, TopicName, TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};
use kafka_protocol::ResponseError;

use crate::clock::now_ms;
use crate::config::GroupConfig;
use crate::controller::{MetadataImage, NodeView};
use crate::partition::Partition;
use crate::wire::{str_bytes, AUTHORIZED_OPERATIONS_OMITTED};
use consumer::{Assignment, ConsumerGroup, HeartbeatParams};
use kafka_protocol::messages::consumer_group_describe_response::DescribedGroup as ConsumerDescribedGroup;
use kafka_protocol::messages::{ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse};
use records::{OffsetValue, RecordKey};
use state::{Group, GroupState, JoinOutcome, JoinParams, Limits, SyncOutcome, SyncParams};

pub use crate::controller::OFFSETS_TOPIC;

/// How often a shard checks session timeouts and rebalance deadlines. The
/// sweep skips groups without members, so its cost is the live members.
pub const GROUP_TICK_MS: u64 = 100;

/// JoinGroup v9 (KIP-814) tells a rejoining static leader not to reassign.
const SKIP_ASSIGNMENT_VERSION: i16 = 9;

/// Bytes read per step when replaying a `__consumer_offsets` partition.
const REPLAY_READ_BYTES: usize = 1 << 20;

/// Java's `String.hashCode` (UTF-16 code units), as Kafka hashes group ids.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// Kafka's `Utils.abs(groupId.hashCode) % partitions`.
pub fn partition_for(group_id: &str, partitions: i32) -> i32 {
    let h = java_string_hash(group_id);
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    abs % partitions.max(1)
}

/// The `__consumer_offsets` partition holding `group_id`, if the topic exists.
pub fn offsets_partition_of(image: &MetadataImage, group_id: &str) -> Option<i32> {
    let topic = image.topic(OFFSETS_TOPIC)?;
    Some(partition_for(group_id, topic.partitions.len() as i32))
}

/// The shard of this node coordinating `group_id`: the one leading its
/// `__consumer_offsets` partition, when this node leads it.
pub fn coordinator_shard(view: &NodeView, group_id: &str) -> Option<usize> {
    let partition = offsets_partition_of(&view.image, group_id)?;
    view.owner(OFFSETS_TOPIC, partition).ok()
}

/// A group request forwarded to its coordinator shard.
pub enum GroupOp {
    Join {
        req: JoinGroupRequest,
        version: i16,
        client_id: String,
        client_host: String,
    },
    Sync {
        req: SyncGroupRequest,
    },
    Heartbeat {
        req: HeartbeatRequest,
    },
    Leave {
        req: LeaveGroupRequest,
        version: i16,
    },
    Commit {
        req: OffsetCommitRequest,
    },
    /// None: every committed offset of the group.
    Fetch {
        group_id: String,
        topics: Option<Vec<(String, Vec<i32>)>>,
        /// OffsetFetch v7+ RequireStable (read_committed consumers): a
        /// partition with a transactional commit not yet ended answers
        /// UNSTABLE_OFFSET_COMMIT.
        require_stable: bool,
    },
    /// TxnOffsetCommit: offsets that count once the producer's transaction commits.
    TxnCommit {
        req: TxnOffsetCommitRequest,
    },
    /// ConsumerGroupHeartbeat (KIP-848).
    ConsumerHeartbeat {
        req: ConsumerGroupHeartbeatRequest,
        version: i16,
        client_id: String,
        client_host: String,
    },
    ConsumerDescribe {
        group_id: String,
    },
    Describe {
        group_id: String,
        version: i16,
    },
    /// Every group of this shard (ListGroups fans out to all shards).
    List,
    Delete {
        group_id: String,
    },
    OffsetDelete {
        req: OffsetDeleteRequest,
    },
}

pub enum GroupReply {
    Join(JoinGroupResponse),
    Sync(SyncGroupResponse),
    Heartbeat(Option<ResponseError>),
    Leave(LeaveGroupResponse),
    Commit(OffsetCommitResponse),
    Fetch(FetchedOffsets),
    TxnCommit(TxnOffsetCommitResponse),
    ConsumerHeartbeat(ConsumerGroupHeartbeatResponse),
    ConsumerDescribe(ConsumerDescribedGroup),
    Describe(DescribedGroup),
    List(Vec<ListedGroup>),
    Delete(Option<ResponseError>),
    OffsetDelete(OffsetDeleteResponse),
}

/// One partition's committed offset (-1 when none).
pub struct FetchedOffset {
    pub partition: i32,
    /// UNSTABLE_OFFSET_COMMIT for a stable fetch of a pending transactional commit.
    pub error: Option<ResponseError>,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
}

pub struct FetchedOffsets {
    pub error: Option<ResponseError>,
    pub topics: Vec<(String, Vec<FetchedOffset>)>,
}

/// What the coordinator needs of the shard it runs on: the metadata view,
/// whether it still owns a group, its `__consumer_offsets` partitions (the
/// coordinator appends records to them and replays them at start), and a
/// wake-up for fetches long-polling those partitions. `shard::Shard`
/// implements it; the coordinator never reaches into the shard otherwise.
pub trait GroupStore {
    fn shard_id(&self) -> usize;
    fn image(&self) -> Arc<MetadataImage>;
    fn view(&self) -> Arc<NodeView>;
    /// Whether this shard still coordinates `group_id` (the image may have
    /// moved its partition since the request was routed).
    fn owns_group(&self, group_id: &str) -> bool {
        coordinator_shard(&self.view(), group_id) == Some(self.shard_id())
    }
    /// This shard's `__consumer_offsets` partition `index`, if it owns it.
    fn offsets_partition(&self, index: i32) -> Option<Rc<Partition>>;
}

/// The groups of one shard. Exists on every shard; touched only by it.
pub struct Coordinator {
    groups: RefCell<HashMap<String, Group>>,
    /// Transactional commits not yet ended, per producer id: (group,
    /// topic, partition) -> offset. A commit marker moves them into their
    /// groups, an abort marker drops them (Kafka's `pendingTransactionalOffsets`).
    pending: RefCell<HashMap<i64, BTreeMap<PendingKey, OffsetValue>>>,
    /// KIP-848 groups (memberships; their offsets are in `groups`).
    consumer_groups: RefCell<HashMap<String, ConsumerGroup>>,
    config: GroupConfig,
}

/// (group, topic, partition) of a pending transactional commit.
type PendingKey = (String, String, i32);

impl Coordinator {
    pub fn new(config: GroupConfig) -> Self {
        Coordinator {
            groups: RefCell::new(HashMap::new()),
            pending: RefCell::new(HashMap::new()),
            consumer_groups: RefCell::new(HashMap::new()),
            config,
        }
    }

    /// Every committed offset of the groups coordinated here: (group,
    /// topic, partition, offset), for the metrics scrape's lag.
    pub(crate) fn committed_offsets(&self) -> Vec<(String, String, i32, i64)> {
        let groups = self.groups.borrow();
        let mut out = Vec::new();
        for (id, group) in groups.iter() {
            for ((topic, partition), value) in &group.offsets {
                out.push((id.clone(), topic.clone(), *partition, value.offset));
            }
        }
        out
    }

    /// (classic groups, KIP-848 consumer groups) coordinated here.
    pub(crate) fn group_counts(&self) -> (usize, usize) {
        (self.groups.borrow().len(), self.consumer_groups.borrow().len())
    }

    fn limits(&self) -> Limits {
        Limits {
            max_size: self.config.max_size,
            initial_rebalance_delay_ms: self.config.initial_rebalance_delay_ms as i64,
        }
    }

    pub fn group_count(&self) -> usize {
        self.groups.borrow().len()
    }
}

/// Kafka's mapping of a failed `__consumer_offsets` append to the error the
/// group client sees (GroupMetadataManager).
fn store_error(code: ResponseError, commit: bool) -> ResponseError {
    match code {
        ResponseError::UnknownTopicOrPartition
        | ResponseError::NotEnoughReplicas
        | ResponseError::RequestTimedOut
        | ResponseError::KafkaStorageError => ResponseError::CoordinatorNotAvailable,
        ResponseError::NotLeaderOrFollower => ResponseError::NotCoordinator,
        ResponseError::MessageTooLarge | ResponseError::RecordListTooLarge if commit => {
            ResponseError::InvalidCommitOffsetSize
        }
        _ => ResponseError::UnknownServerError,
    }
}

impl Coordinator {
    /// Appends coordinator records to this shard's `__consumer_offsets`
    /// partition of `group_id`; acknowledged once the write completed.
    async fn append_group_records<S: GroupStore>(
        &self,
        store: &S,
        group_id: &str,
        records: Vec<(Bytes, Option<Bytes>)>,
        commit: bool,
    ) -> Result<(), ResponseError> {
        if records.is_empty() {
            return Ok(());
        }
        let image = store.image();
        let partitions = image
            .topic(OFFSETS_TOPIC)
            .map_or(0, |t| t.partitions.len() as i32);
        let index = partition_for(group_id, partitions);
        let Some(partition) = store.offsets_partition(index) else {
            return Err(ResponseError::NotCoordinator);
        };
        let batch = records::encode_batch(&records, now_ms());
        let epoch = partition.leader_epoch();
        let appended = match partition.append(&batch).await {
            // Kafka's coordinator writes with acks=all, so a commit it
            // acknowledges survives the loss of its leader.
            Ok(result) => {
                partition
                    .await_replicated(
                        result.last_offset,
                        epoch,
                        1,
                        self.config.offsets_commit_timeout_ms,
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        match appended {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::error!(
                    group = group_id,
                    "cannot write to {OFFSETS_TOPIC}-{index}: {}",
                    e.message
                );
                Err(store_error(e.code, commit))
            }
        }
    }

    async fn persist_group<S: GroupStore>(
        &self,
        store: &S,
        group_id: &str,
        value: &records::GroupValue,
    ) -> Result<(), ResponseError> {
        let key = records::encode_key(&RecordKey::Group {
            group: group_id.to_string(),
        });
        let value = records::encode_group_value(value);
        self.append_group_records(store, group_id, vec![(key, Some(value))], false)
            .await
    }

    /// Writes the metadata of groups that just became Empty (a later start
    /// sees their new generation). Failures are logged: the group state in
    /// memory is right and the next change writes it again.
    async fn persist_emptied<S: GroupStore>(&self, store: &S, emptied: Vec<(String, records::GroupValue)>) {
        for (group_id, value) in emptied {
            if let Err(e) = self.persist_group(store, &group_id, &value).await {
                tracing::warn!(group = %group_id, "cannot persist empty group: {e:?}");
            }
        }
    }

    pub async fn execute<S: GroupStore>(&self, store: &S, op: GroupOp) -> GroupReply {
        match op {
            GroupOp::Join {
                req,
                version,
                client_id,
                client_host,
            } => GroupReply::Join(self.join_group(store, req, version, client_id, client_host).await),
            GroupOp::Sync { req } => GroupReply::Sync(self.sync_group(store, req).await),
            GroupOp::Heartbeat { req } => GroupReply::Heartbeat(self.heartbeat(store, req)),
            GroupOp::Leave { req, version } => GroupReply::Leave(self.leave_group(store, req, version).await),
            GroupOp::Commit { req } => GroupReply::Commit(self.commit_offsets(store, req).await),
            GroupOp::Fetch {
                group_id,
                topics,
                require_stable,
            } => GroupReply::Fetch(self.fetch_offsets(store, &group_id, topics, require_stable)),
            GroupOp::TxnCommit { req } => GroupReply::TxnCommit(self.txn_commit_offsets(store, req).await),
            GroupOp::ConsumerHeartbeat {
                req,
                version,
                client_id,
                client_host,
            } => GroupReply::ConsumerHeartbeat(self.consumer_heartbeat(
                store,
                req,
                version,
                client_id,
                client_host,
            )),
            GroupOp::ConsumerDescribe { group_id } => {
                GroupReply::ConsumerDescribe(self.consumer_describe(store, &group_id))
            }
            GroupOp::Describe { group_id, version } => {
                GroupReply::Describe(self.describe_group(store, &group_id, version))
            }
            GroupOp::List => GroupReply::List(self.list_groups()),
            GroupOp::Delete { group_id } => GroupReply::Delete(self.delete_group(store, &group_id).await),
            GroupOp::OffsetDelete { req } => GroupReply::OffsetDelete(self.delete_offsets(store, req).await),
        }
    }

    async fn join_group<S: GroupStore>(
        &self,
        store: &S,
        req: JoinGroupRequest,
        version: i16,
        client_id: String,
        client_host: String,
    ) -> JoinGroupResponse {
        let cfg = &self.config;
        let group_id = req.group_id.to_string();
        let member_id = req.member_id.to_string();
        let err = |code| state::join_error(code, &member_id);
        if group_id.is_empty() {
            return err(ResponseError::InvalidGroupId);
        }
        if !store.owns_group(&group_id) {
            return err(ResponseError::NotCoordinator);
        }
        if self
            .consumer_groups
            .borrow()
            .get(&group_id)
            .is_some_and(|g| !g.members.is_empty())
        {
            // Kafka would take the member into the KIP-848 group as a
            // classic-protocol member; shardlog keeps the protocols apart.
            return err(ResponseError::InconsistentGroupProtocol);
        }
        if req.session_timeout_ms < cfg.min_session_timeout_ms
            || req.session_timeout_ms > cfg.max_session_timeout_ms
        {
            return err(ResponseError::InvalidSessionTimeout);
        }
        let metadata_bytes: usize = req
            .protocols
            .iter()
            .map(|p| p.name.len() + p.metadata.len())
            .sum();
        if metadata_bytes > cfg.member_metadata_max_bytes {
            tracing::warn!(
                group = %group_id,
                "JoinGroup protocol metadata of {metadata_bytes} bytes exceeds group.member.metadata.max.bytes {}",
                cfg.member_metadata_max_bytes
            );
            return err(ResponseError::InvalidRequest);
        }
        let params = JoinParams {
            member_id: member_id.clone(),
            group_instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
            client_id: client_id.clone(),
            client_host,
            session_timeout_ms: req.session_timeout_ms,
            // v0 has no rebalance timeout: Kafka uses the session timeout.
            rebalance_timeout_ms: if version == 0 {
                req.session_timeout_ms
            } else {
                req.rebalance_timeout_ms
            },
            protocol_type: req.protocol_type.to_string(),
            protocols: req
                .protocols
                .iter()
                .map(|p| (p.name.to_string(), p.metadata.clone()))
                .collect(),
            require_known_member_id: version >= 4,
        };
        let new_member_id = format!("{client_id}-{}", uuid::Uuid::new_v4());
        let limits = self.limits();
        let outcome = {
            let mut groups = self.groups.borrow_mut();
            if !groups.contains_key(&group_id) {
                if !member_id.is_empty() {
                    return err(ResponseError::UnknownMemberId);
                }
                if groups.len() >= cfg.shard_groups_max {
                    tracing::warn!(group = %group_id, "shard.groups.max {} reached", cfg.shard_groups_max);
                    return err(ResponseError::CoordinatorNotAvailable);
                }
                groups.insert(group_id.clone(), Group::new(group_id.clone(), now_ms()));
            }
            let group = groups.get_mut(&group_id).expect("inserted above");
            group.join(params, new_member_id, &limits, now_ms())
        };
        let mut resp = match outcome {
            JoinOutcome::Now(resp) if resp.error_code == 0 => {
                // Answered at once in Stable: a static member replaced its old
                // id (KIP-345). Kafka stores the group before answering, so a
                // restart knows the new member id.
                let value = self
                    .groups
                    .borrow()
                    .get(&group_id)
                    .map(|g| g.to_value(None, now_ms()));
                if let Some(value) = value {
                    if let Err(code) = self.persist_group(store, &group_id, &value).await {
                        return err(code);
                    }
                }
                resp
            }
            JoinOutcome::Now(resp) => resp,
            // Cancelled: the member was removed or sent a newer join.
            JoinOutcome::Wait(rx) => rx.await.unwrap_or_else(|_| err(ResponseError::UnknownMemberId)),
        };
        // KIP-814's skip_assignment exists from v9; an older static leader
        // reassigns, and SyncGroup in Stable hands back the current assignment.
        if version < SKIP_ASSIGNMENT_VERSION {
            resp.skip_assignment = false;
        }
        resp
    }

    async fn sync_group<S: GroupStore>(&self, store: &S, req: SyncGroupRequest) -> SyncGroupResponse {
        let group_id = req.group_id.to_string();
        if !store.owns_group(&group_id) {
            return state::sync_error(ResponseError::NotCoordinator);
        }
        let assignments = req
            .assignments
            .iter()
            .map(|a| (a.member_id.to_string(), a.assignment.clone()))
            .collect();
        let outcome = {
            let mut groups = self.groups.borrow_mut();
            let Some(group) = groups.get_mut(&group_id) else {
                return state::sync_error(ResponseError::UnknownMemberId);
            };
            let params = SyncParams {
                member_id: req.member_id.as_str(),
                instance: req.group_instance_id.as_deref(),
                generation: req.generation_id,
                protocol_type: req.protocol_type.as_deref(),
                protocol_name: req.protocol_name.as_deref(),
                assignments,
            };
            group.sync(params, now_ms())
        };
        let cancelled = || state::sync_error(ResponseError::RebalanceInProgress);
        match outcome {
            SyncOutcome::Now(resp) => resp,
            SyncOutcome::Wait(rx) => rx.await.unwrap_or_else(|_| cancelled()),
            SyncOutcome::Persist {
                value,
                generation,
                assignments,
                waiter,
            } => {
                let persisted = self.persist_group(store, &group_id, &value).await;
                let limits = self.limits();
                if let Some(group) = self.groups.borrow_mut().get_mut(&group_id) {
                    group.complete_sync(generation, assignments, persisted, &limits, now_ms());
                }
                waiter.await.unwrap_or_else(|_| cancelled())
            }
        }
    }

    fn heartbeat<S: GroupStore>(&self, store: &S, req: HeartbeatRequest) -> Option<ResponseError> {
        let group_id = req.group_id.to_string();
        if !store.owns_group(&group_id) {
            return Some(ResponseError::NotCoordinator);
        }
        let mut groups = self.groups.borrow_mut();
        match groups.get_mut(&group_id) {
            None => Some(ResponseError::UnknownMemberId),
            Some(g) => g.heartbeat(
                req.member_id.as_str(),
                req.group_instance_id.as_deref(),
                req.generation_id,
                now_ms(),
            ),
        }
    }

    async fn leave_group<S: GroupStore>(
        &self,
        store: &S,
        req: LeaveGroupRequest,
        version: i16,
    ) -> LeaveGroupResponse {
        let group_id = req.group_id.to_string();
        // v0-2 name one member; v3+ a batch (KIP-345).
        let members: Vec<(String, Option<String>)> = if version < 3 {
            vec![(req.member_id.to_string(), None)]
        } else {
            req.members
                .iter()
                .map(|m| {
                    (
                        m.member_id.to_string(),
                        m.group_instance_id.as_ref().map(|s| s.to_string()),
                    )
                })
                .collect()
        };
        let mut results = Vec::with_capacity(members.len());
        let mut emptied = Vec::new();
        let top = if !store.owns_group(&group_id) {
            Some(ResponseError::NotCoordinator)
        } else {
            let limits = self.limits();
            let mut groups = self.groups.borrow_mut();
            for (member_id, instance) in &members {
                let code = match groups.get_mut(&group_id) {
                    None => Some(ResponseError::UnknownMemberId),
                    Some(g) => {
                        let (code, became_empty) = g.leave(member_id, instance.as_deref(), &limits, now_ms());
                        if became_empty {
                            emptied.push((group_id.clone(), g.to_value(None, now_ms())));
                        }
                        code
                    }
                };
                results.push(
                    MemberResponse::default()
                        .with_member_id(str_bytes(member_id))
                        .with_group_instance_id(instance.as_deref().map(str_bytes))
                        .with_error_code(state::code_of(code)),
                );
            }
            None
        };
        self.persist_emptied(store, emptied).await;
        // v0-2 carry the one member's error at the top level.
        let top_code = match (top, version < 3) {
            (Some(code), _) => code.code(),
            (None, true) => results.first().map_or(0, |m| m.error_code),
            (None, false) => 0,
        };
        LeaveGroupResponse::default()
            .with_error_code(top_code)
            .with_members(if version >= 3 { results } else { Vec::new() })
    }

    async fn commit_offsets<S: GroupStore>(
        &self,
        store: &S,
        req: OffsetCommitRequest,
    ) -> OffsetCommitResponse {
        let group_id = req.group_id.to_string();
        let cfg = &self.config;
        let answer = |f: &dyn Fn(&str, i32) -> Option<ResponseError>| {
            OffsetCommitResponse::default().with_topics(
                req.topics
                    .iter()
                    .map(|t| {
                        OffsetCommitResponseTopic::default()
                            .with_name(t.name.clone())
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        OffsetCommitResponsePartition::default()
                                            .with_partition_index(p.partition_index)
                                            .with_error_code(state::code_of(f(
                                                t.name.as_str(),
                                                p.partition_index,
                                            )))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            )
        };
        let group_error = if group_id.is_empty() {
            Some(ResponseError::InvalidGroupId)
        } else if !store.owns_group(&group_id) {
            Some(ResponseError::NotCoordinator)
        } else {
            let mut groups = self.groups.borrow_mut();
            let generation = req.generation_id_or_member_epoch;
            let consumer_group = self
                .consumer_groups
                .borrow()
                .get(&group_id)
                .map(|g| g.validate_commit(req.member_id.as_str(), generation));
            match groups.get(&group_id) {
                // A KIP-848 group: its members commit with their epoch; the
                // offsets live in the group's classic entry, made on first use.
                _ if consumer_group.is_some() => {
                    let refused = consumer_group.flatten();
                    if refused.is_none() && !groups.contains_key(&group_id) {
                        groups.insert(group_id.clone(), Group::new(group_id.clone(), now_ms()));
                    }
                    refused
                }
                None if generation >= 0 => Some(ResponseError::IllegalGeneration),
                None if groups.len() >= cfg.shard_groups_max => Some(ResponseError::CoordinatorNotAvailable),
                None => {
                    // A group that does not use Kafka's membership (generation -1) commits freely.
                    groups.insert(group_id.clone(), Group::new(group_id.clone(), now_ms()));
                    None
                }
                Some(g) => g.validate_commit(
                    req.member_id.as_str(),
                    req.group_instance_id.as_deref(),
                    generation,
                ),
            }
        };
        if group_error.is_some() {
            return answer(&|_, _| group_error);
        }
        let now = now_ms();
        let image = store.image();
        let mut values: BTreeMap<(String, i32), OffsetValue> = BTreeMap::new();
        let mut refused: HashMap<(String, i32), ResponseError> = HashMap::new();
        let mut records = Vec::new();
        for t in &req.topics {
            for p in &t.partitions {
                let key = (t.name.to_string(), p.partition_index);
                // As Kafka: only existing partitions, which also bounds a
                // group's offsets by the partitions of the cluster.
                if image.partition(&key.0, key.1).is_none() {
                    refused.insert(key, ResponseError::UnknownTopicOrPartition);
                    continue;
                }
                let metadata = p.committed_metadata.as_deref().unwrap_or("").to_string();
                if metadata.len() > cfg.offset_metadata_max_bytes {
                    refused.insert(key, ResponseError::OffsetMetadataTooLarge);
                    continue;
                }
                let value = OffsetValue {
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata,
                    commit_timestamp_ms: now,
                    expire_timestamp_ms: -1,
                };
                let key = RecordKey::Offset {
                    group: group_id.clone(),
                    topic: t.name.to_string(),
                    partition: p.partition_index,
                };
                records.push((
                    records::encode_key(&key),
                    Some(records::encode_offset_value(&value)),
                ));
                values.insert((t.name.to_string(), p.partition_index), value);
            }
        }
        let written = self.append_group_records(store, &group_id, records, true).await;
        if written.is_ok() {
            if let Some(g) = self.groups.borrow_mut().get_mut(&group_id) {
                for (k, v) in &values {
                    g.offsets.insert(k.clone(), v.clone());
                }
            }
        }
        answer(
            &|topic, partition| match refused.get(&(topic.to_string(), partition)) {
                Some(code) => Some(*code),
                None => written.err(),
            },
        )
    }

    /// TxnOffsetCommit (SPEC.md §4): the offsets go to the group's
    /// `__consumer_offsets` partition as one transactional batch of the
    /// producer, acks=all, and stay pending until the transaction's marker
    /// reaches that partition (`end_transaction`).
    async fn txn_commit_offsets<S: GroupStore>(
        &self,
        store: &S,
        req: TxnOffsetCommitRequest,
    ) -> TxnOffsetCommitResponse {
        use kafka_protocol::messages::txn_offset_commit_response::{
            TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
        };
        let cfg = &self.config;
        let group_id = req.group_id.to_string();
        let answer = |error: &dyn Fn(&str, i32) -> Option<ResponseError>| {
            TxnOffsetCommitResponse::default().with_topics(
                req.topics
                    .iter()
                    .map(|t| {
                        TxnOffsetCommitResponseTopic::default()
                            .with_name(t.name.clone())
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        TxnOffsetCommitResponsePartition::default()
                                            .with_partition_index(p.partition_index)
                                            .with_error_code(state::code_of(error(
                                                t.name.as_str(),
                                                p.partition_index,
                                            )))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            )
        };
        let group_error = if group_id.is_empty() {
            Some(ResponseError::InvalidGroupId)
        } else if !store.owns_group(&group_id) {
            Some(ResponseError::NotCoordinator)
        } else {
            let groups = self.groups.borrow();
            match groups.get(&group_id) {
                None if req.generation_id >= 0 => Some(ResponseError::IllegalGeneration),
                None => None,
                Some(g) => g.validate_txn_commit(
                    req.member_id.as_str(),
                    req.group_instance_id.as_deref(),
                    req.generation_id,
                ),
            }
        };
        if group_error.is_some() {
            return answer(&|_, _| group_error);
        }
        let now = now_ms();
        let image = store.image();
        let mut values: BTreeMap<PendingKey, OffsetValue> = BTreeMap::new();
        let mut refused: HashMap<(String, i32), ResponseError> = HashMap::new();
        let mut records = Vec::new();
        for t in &req.topics {
            for p in &t.partitions {
                let key = (t.name.to_string(), p.partition_index);
                if image.partition(&key.0, key.1).is_none() {
                    refused.insert(key, ResponseError::UnknownTopicOrPartition);
                    continue;
                }
                let metadata = p.committed_metadata.as_deref().unwrap_or("").to_string();
                if metadata.len() > cfg.offset_metadata_max_bytes {
                    refused.insert(key, ResponseError::OffsetMetadataTooLarge);
                    continue;
                }
                let value = OffsetValue {
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata,
                    commit_timestamp_ms: now,
                    expire_timestamp_ms: -1,
                };
                let record_key = RecordKey::Offset {
                    group: group_id.clone(),
                    topic: key.0.clone(),
                    partition: key.1,
                };
                records.push((
                    records::encode_key(&record_key),
                    Some(records::encode_offset_value(&value)),
                ));
                values.insert((group_id.clone(), key.0, key.1), value);
            }
        }
        let written = self
            .append_txn_records(store, &group_id, req.producer_id.0, req.producer_epoch, records)
            .await;
        if written.is_ok() && !values.is_empty() {
            self.pending
                .borrow_mut()
                .entry(req.producer_id.0)
                .or_default()
                .extend(values);
        }
        answer(
            &|topic, partition| match refused.get(&(topic.to_string(), partition)) {
                Some(code) => Some(*code),
                None => written.err(),
            },
        )
    }

    /// Appends a transactional producer's offset records to the group's
    /// partition, numbered by the partition's own sequence for that producer
    /// (the client sends none for these).
    async fn append_txn_records<S: GroupStore>(
        &self,
        store: &S,
        group_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        records: Vec<(Bytes, Option<Bytes>)>,
    ) -> Result<(), ResponseError> {
        if records.is_empty() {
            return Ok(());
        }
        let image = store.image();
        let partitions = image
            .topic(OFFSETS_TOPIC)
            .map_or(0, |t| t.partitions.len() as i32);
        let index = partition_for(group_id, partitions);
        let Some(partition) = store.offsets_partition(index) else {
            return Err(ResponseError::NotCoordinator);
        };
        let producer = records::TxnProducer {
            producer_id,
            producer_epoch,
            base_sequence: partition.next_sequence(producer_id, producer_epoch),
        };
        let batch = records::encode_txn_batch(&records, now_ms(), producer);
        let epoch = partition.leader_epoch();
        let appended = match partition.append(&batch).await {
            Ok(result) => {
                partition
                    .await_replicated(
                        result.last_offset,
                        epoch,
                        1,
                        self.config.offsets_commit_timeout_ms,
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        appended.map_err(|e| {
            tracing::warn!(
                group = group_id,
                producer_id,
                "transactional offsets refused by {OFFSETS_TOPIC}-{index}: {}",
                e.message
            );
            match e.code {
                ResponseError::InvalidProducerEpoch | ResponseError::InvalidTxnState => e.code,
                code => store_error(code, true),
            }
        })
    }

    /// A transaction marker was written to this shard's
    /// `__consumer_offsets` partition `index`: the producer's pending
    /// offsets of that partition's groups become committed, or are dropped.
    pub fn end_transaction(&self, index: i32, partitions: i32, producer_id: i64, commit: bool) {
        let ended: Vec<(PendingKey, OffsetValue)> = {
            let mut pending = self.pending.borrow_mut();
            let Some(offsets) = pending.get_mut(&producer_id) else {
                return;
            };
            let keys: Vec<PendingKey> = offsets
                .keys()
                .filter(|(group, _, _)| partition_for(group, partitions) == index)
                .cloned()
                .collect();
            let ended = keys
                .into_iter()
                .filter_map(|k| offsets.remove_entry(&k))
                .collect();
            if offsets.is_empty() {
                pending.remove(&producer_id);
            }
            ended
        };
        if !commit {
            return;
        }
        let mut groups = self.groups.borrow_mut();
        for ((group, topic, partition), value) in ended {
            if !groups.contains_key(&group) && groups.len() >= self.config.shard_groups_max {
                tracing::warn!(group = %group, "shard.groups.max reached: committed transactional offset dropped");
                continue;
            }
            groups
                .entry(group.clone())
                .or_insert_with(|| Group::new(group, now_ms()))
                .offsets
                .insert((topic, partition), value);
        }
    }

    /// ConsumerGroupHeartbeat (KIP-848; `KIP848.md`): validated as Kafka
    /// 4.0 does, then the group's pure state machine (`consumer`) answers.
    fn consumer_heartbeat<S: GroupStore>(
        &self,
        store: &S,
        req: ConsumerGroupHeartbeatRequest,
        version: i16,
        client_id: String,
        client_host: String,
    ) -> ConsumerGroupHeartbeatResponse {
        let group_id = req.group_id.to_string();
        let refuse = |code: ResponseError, message: &str| {
            ConsumerGroupHeartbeatResponse::default()
                .with_error_code(code.code())
                .with_error_message(Some(str_bytes(message)))
                .with_member_epoch(req.member_epoch)
        };
        let epoch = req.member_epoch;
        if group_id.is_empty() {
            return refuse(ResponseError::InvalidRequest, "GroupId can't be empty.");
        }
        // v1 (KIP-1082): the client names itself.
        if req.member_id.is_empty() && (version >= 1 || epoch > 0 || epoch == consumer::LEAVE_EPOCH) {
            return refuse(ResponseError::InvalidRequest, "MemberId can't be empty.");
        }
        if epoch < consumer::STATIC_LEAVE_EPOCH {
            return refuse(ResponseError::InvalidRequest, "MemberEpoch is invalid.");
        }
        if req
            .subscribed_topic_regex
            .as_deref()
            .is_some_and(|r| !r.is_empty())
        {
            return refuse(
                ResponseError::InvalidRequest,
                "SubscribedTopicRegex is not supported by this broker; subscribe to topic names.",
            );
        }
        if epoch == consumer::JOIN_EPOCH
            && (req.rebalance_timeout_ms == -1
                || req.topic_partitions.as_ref().is_none_or(|t| !t.is_empty())
                || (req.subscribed_topic_names.is_none() && req.subscribed_topic_regex.is_none()))
        {
            return refuse(
                ResponseError::InvalidRequest,
                "A join needs RebalanceTimeoutMs, empty TopicPartitions and a subscription.",
            );
        }
        if !store.owns_group(&group_id) {
            return refuse(
                ResponseError::NotCoordinator,
                "Not the coordinator of this group.",
            );
        }
        if self
            .groups
            .borrow()
            .get(&group_id)
            .is_some_and(|g| !g.members.is_empty())
        {
            return refuse(
                ResponseError::GroupIdNotFound,
                &format!("Group {group_id} is not a consumer group."),
            );
        }
        let mut consumer_groups = self.consumer_groups.borrow_mut();
        if !consumer_groups.contains_key(&group_id) {
            if epoch != consumer::JOIN_EPOCH {
                // Kafka answers GROUP_ID_NOT_FOUND, fatal to librdkafka; the
                // group's membership is not persisted here, so after a move or
                // a restart its members are told to join again instead.
                return refuse(ResponseError::UnknownMemberId, "Unknown member: join again.");
            }
            if consumer_groups.len() + self.groups.borrow().len() >= self.config.shard_groups_max {
                return refuse(
                    ResponseError::CoordinatorNotAvailable,
                    "shard.groups.max reached.",
                );
            }
            consumer_groups.insert(group_id.clone(), ConsumerGroup::default());
        }
        let group = consumer_groups.get_mut(&group_id).expect("inserted above");
        // The topics the group needs: those its members and this request name.
        let image = store.image();
        let names: BTreeSet<String> = group
            .members
            .values()
            .flat_map(|m| m.subscribed_topic_names.iter().cloned())
            .chain(req.subscribed_topic_names.iter().flatten().map(|t| t.to_string()))
            .collect();
        let topics: consumer::TopicsView = names
            .into_iter()
            .filter_map(|name| {
                let t = image.topic(&name)?;
                Some((name, (t.id, t.partitions.len() as i32)))
            })
            .collect();
        let owned = req.topic_partitions.as_ref().map(|tps| {
            let mut a = Assignment::new();
            for tp in tps {
                a.entry(tp.topic_id)
                    .or_default()
                    .extend(tp.partitions.iter().copied());
            }
            a
        });
        let params = HeartbeatParams {
            member_id: req.member_id.to_string(),
            member_epoch: epoch,
            instance_id: req.instance_id.as_ref().map(|s| s.to_string()),
            rack_id: req.rack_id.as_ref().map(|s| s.to_string()),
            rebalance_timeout_ms: req.rebalance_timeout_ms,
            subscribed_topic_names: req
                .subscribed_topic_names
                .as_ref()
                .map(|ts| ts.iter().map(|t| t.to_string()).collect()),
            server_assignor: req.server_assignor.as_ref().map(|s| s.to_string()),
            owned,
            client_id,
            client_host,
        };
        let out = group.heartbeat(
            params,
            &topics,
            self.config.consumer_max_size,
            uuid::Uuid::new_v4().to_string(),
            now_ms(),
        );
        if let Some(code) = out.error {
            return refuse(code, "Heartbeat refused.");
        }
        let assignment = out.assignment.map(|a| {
            use kafka_protocol::messages::consumer_group_heartbeat_response::{
                Assignment as Given, TopicPartitions,
            };
            Given::default().with_topic_partitions(
                a.into_iter()
                    .map(|(topic_id, parts)| {
                        TopicPartitions::default()
                            .with_topic_id(topic_id)
                            .with_partitions(parts.into_iter().collect())
                    })
                    .collect(),
            )
        });
        ConsumerGroupHeartbeatResponse::default()
            .with_member_id(Some(str_bytes(&out.member_id)))
            .with_member_epoch(out.member_epoch)
            .with_heartbeat_interval_ms(self.config.consumer_heartbeat_interval_ms)
            .with_assignment(assignment)
    }

    fn consumer_describe<S: GroupStore>(&self, store: &S, group_id: &str) -> ConsumerDescribedGroup {
        use kafka_protocol::messages::consumer_group_describe_response::{
            Assignment as Described, Member, TopicPartitions,
        };
        let base = ConsumerDescribedGroup::default()
            .with_group_id(GroupId(str_bytes(group_id)))
            .with_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED);
        if !store.owns_group(group_id) {
            return base.with_error_code(ResponseError::NotCoordinator.code());
        }
        let groups = self.consumer_groups.borrow();
        let Some(g) = groups.get(group_id) else {
            return base
                .with_error_code(ResponseError::GroupIdNotFound.code())
                .with_error_message(Some(str_bytes(&format!("Group {group_id} not found."))));
        };
        let image = store.image();
        let described = |a: &Assignment| {
            Described::default().with_topic_partitions(
                a.iter()
                    .map(|(id, parts)| {
                        let name = image.topic_by_id(id).map(|t| t.name.clone()).unwrap_or_default();
                        TopicPartitions::default()
                            .with_topic_id(*id)
                            .with_topic_name(TopicName(str_bytes(&name)))
                            .with_partitions(parts.iter().copied().collect())
                    })
                    .collect(),
            )
        };
        let members = g
            .members
            .values()
            .map(|m| {
                Member::default()
                    .with_member_id(str_bytes(&m.member_id))
                    .with_instance_id(m.instance_id.as_deref().map(str_bytes))
                    .with_rack_id(m.rack_id.as_deref().map(str_bytes))
                    .with_member_epoch(m.member_epoch)
                    .with_client_id(str_bytes(&m.client_id))
                    .with_client_host(str_bytes(&m.client_host))
                    .with_subscribed_topic_names(
                        m.subscribed_topic_names
                            .iter()
                            .map(|t| TopicName(str_bytes(t)))
                            .collect(),
                    )
                    .with_assignment(described(&m.assigned))
                    .with_target_assignment(described(&g.target_of(&m.member_id)))
                    .with_member_type(1)
            })
            .collect();
        base.with_group_state(str_bytes(g.state_name()))
            .with_group_epoch(g.group_epoch)
            .with_assignment_epoch(g.assignment_epoch)
            .with_assignor_name(str_bytes(g.assignor()))
            .with_members(members)
    }

    fn fetch_offsets<S: GroupStore>(
        &self,
        store: &S,
        group_id: &str,
        topics: Option<Vec<(String, Vec<i32>)>>,
        require_stable: bool,
    ) -> FetchedOffsets {
        if !store.owns_group(group_id) {
            return FetchedOffsets {
                error: Some(ResponseError::NotCoordinator),
                topics: Vec::new(),
            };
        }
        let groups = self.groups.borrow();
        let offsets = groups.get(group_id).map(|g| &g.offsets);
        let pending = self.pending.borrow();
        let lookup = |topic: &str, partition: i32| {
            let key = (group_id.to_string(), topic.to_string(), partition);
            if require_stable && pending.values().any(|offsets| offsets.contains_key(&key)) {
                return FetchedOffset {
                    partition,
                    error: Some(ResponseError::UnstableOffsetCommit),
                    offset: -1,
                    leader_epoch: -1,
                    metadata: String::new(),
                };
            }
            let v = offsets.and_then(|o| o.get(&(topic.to_string(), partition)));
            FetchedOffset {
                partition,
                error: None,
                offset: v.map_or(-1, |v| v.offset),
                leader_epoch: v.map_or(-1, |v| v.leader_epoch),
                metadata: v.map_or(String::new(), |v| v.metadata.clone()),
            }
        };
        let topics = match topics {
            Some(topics) => topics
                .into_iter()
                .map(|(t, parts)| {
                    let fetched = parts.into_iter().map(|p| lookup(&t, p)).collect();
                    (t, fetched)
                })
                .collect(),
            None => {
                let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
                for (t, p) in offsets.into_iter().flat_map(|o| o.keys()) {
                    by_topic.entry(t.clone()).or_default().push(*p);
                }
                by_topic
                    .into_iter()
                    .map(|(t, mut parts)| {
                        parts.sort_unstable();
                        let fetched = parts.into_iter().map(|p| lookup(&t, p)).collect();
                        (t, fetched)
                    })
                    .collect()
            }
        };
        FetchedOffsets { error: None, topics }
    }

    fn describe_group<S: GroupStore>(&self, store: &S, group_id: &str, version: i16) -> DescribedGroup {
        let base = DescribedGroup::default()
            .with_group_id(GroupId(str_bytes(group_id)))
            .with_authorized_operations(AUTHORIZED_OPERATIONS_OMITTED);
        if !store.owns_group(group_id) {
            return base.with_error_code(ResponseError::NotCoordinator.code());
        }
        let groups = self.groups.borrow();
        let Some(g) = groups.get(group_id).filter(|g| g.state != GroupState::Dead) else {
            // Kafka answers an unknown group as Dead; v6+ with GROUP_ID_NOT_FOUND.
            let code = if version >= 6 {
                ResponseError::GroupIdNotFound.code()
            } else {
                0
            };
            return base.with_error_code(code).with_group_state(str_bytes("Dead"));
        };
        let stable = g.state == GroupState::Stable;
        let protocol = g.protocol.clone().unwrap_or_default();
        let members = g
            .members
            .values()
            .map(|m| {
                let (metadata, assignment) = if stable {
                    let md = m
                        .protocols
                        .iter()
                        .find(|(n, _)| *n == protocol)
                        .map(|(_, md)| md.clone())
                        .unwrap_or_default();
                    (md, m.assignment.clone())
                } else {
                    (Bytes::new(), Bytes::new())
                };
                DescribedGroupMember::default()
                    .with_member_id(str_bytes(&m.member_id))
                    .with_group_instance_id(m.group_instance_id.as_deref().map(str_bytes))
                    .with_client_id(str_bytes(&m.client_id))
                    .with_client_host(str_bytes(&m.client_host))
                    .with_member_metadata(metadata)
                    .with_member_assignment(assignment)
            })
            .collect();
        base.with_error_code(0)
            .with_group_state(str_bytes(g.state.name()))
            .with_protocol_type(str_bytes(g.protocol_type.as_deref().unwrap_or("")))
            .with_protocol_data(str_bytes(if stable { &protocol } else { "" }))
            .with_members(members)
    }

    fn list_groups(&self) -> Vec<ListedGroup> {
        let consumer_groups = self.consumer_groups.borrow();
        let modern = consumer_groups.iter().map(|(id, g)| {
            ListedGroup::default()
                .with_group_id(GroupId(str_bytes(id)))
                .with_protocol_type(str_bytes("consumer"))
                .with_group_state(str_bytes(g.state_name()))
                .with_group_type(str_bytes("consumer"))
        });
        self.groups
            .borrow()
            .values()
            .filter(|g| g.state != GroupState::Dead && !consumer_groups.contains_key(&g.id))
            .map(|g| {
                ListedGroup::default()
                    .with_group_id(GroupId(str_bytes(&g.id)))
                    .with_protocol_type(str_bytes(g.protocol_type.as_deref().unwrap_or("")))
                    .with_group_state(str_bytes(g.state.name()))
                    .with_group_type(str_bytes("classic"))
            })
            .chain(modern)
            .collect()
    }

    async fn delete_group<S: GroupStore>(&self, store: &S, group_id: &str) -> Option<ResponseError> {
        if !store.owns_group(group_id) {
            return Some(ResponseError::NotCoordinator);
        }
        let tombstones = {
            let groups = self.groups.borrow();
            match groups.get(group_id) {
                None => return Some(ResponseError::GroupIdNotFound),
                Some(g) if g.state == GroupState::Dead => return Some(ResponseError::GroupIdNotFound),
                Some(g) if g.state != GroupState::Empty => return Some(ResponseError::NonEmptyGroup),
                Some(g) => group_tombstones(g),
            }
        };
        if let Err(code) = self
            .append_group_records(store, group_id, tombstones, false)
            .await
        {
            return Some(code);
        }
        let mut groups = self.groups.borrow_mut();
        // A member may have joined while the tombstones were written; Kafka
        // checks once, before the write, too. The group is gone either way.
        if let Some(mut g) = groups.remove(group_id) {
            g.kill(now_ms());
        }
        None
    }

    async fn delete_offsets<S: GroupStore>(
        &self,
        store: &S,
        req: OffsetDeleteRequest,
    ) -> OffsetDeleteResponse {
        let group_id = req.group_id.to_string();
        let top = |code: ResponseError| OffsetDeleteResponse::default().with_error_code(code.code());
        if !store.owns_group(&group_id) {
            return top(ResponseError::NotCoordinator);
        }
        let mut results: Vec<(TopicName, Vec<PartitionOutcome>)> = Vec::new();
        let mut records = Vec::new();
        let mut deleted = Vec::new();
        {
            let groups = self.groups.borrow();
            let Some(g) = groups.get(&group_id).filter(|g| g.state != GroupState::Dead) else {
                return top(ResponseError::GroupIdNotFound);
            };
            let subscribed = if g.state == GroupState::Empty {
                Vec::new()
            } else {
                match g.subscribed_topics() {
                    Some(topics) => topics,
                    None => return top(ResponseError::NonEmptyGroup),
                }
            };
            for t in &req.topics {
                let topic = t.name.to_string();
                let is_subscribed = subscribed.contains(&topic);
                let mut parts = Vec::new();
                for p in &t.partitions {
                    if is_subscribed {
                        parts.push((p.partition_index, Some(ResponseError::GroupSubscribedToTopic)));
                        continue;
                    }
                    let key = (topic.clone(), p.partition_index);
                    if g.offsets.contains_key(&key) {
                        records.push(offset_tombstone(&group_id, &topic, p.partition_index));
                        deleted.push(key);
                    }
                    parts.push((p.partition_index, None));
                }
                results.push((t.name.clone(), parts));
            }
        }
        let written = self.append_group_records(store, &group_id, records, true).await;
        if let Err(code) = written {
            return top(code);
        }
        if let Some(g) = self.groups.borrow_mut().get_mut(&group_id) {
            for key in &deleted {
                g.offsets.remove(key);
            }
        }
        OffsetDeleteResponse::default().with_error_code(0).with_topics(
            results
                .into_iter()
                .map(|(name, parts)| {
                    OffsetDeleteResponseTopic::default()
                        .with_name(name)
                        .with_partitions(
                            parts
                                .into_iter()
                                .map(|(p, code)| {
                                    OffsetDeleteResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_error_code(state::code_of(code))
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
    }

    /// Session timeouts and rebalance deadlines of this shard's groups.
    pub async fn tick<S: GroupStore>(&self, store: &S) {
        let limits = self.limits();
        let now = now_ms();
        for (id, g) in self.consumer_groups.borrow_mut().iter_mut() {
            for member in g.expire(self.config.consumer_session_timeout_ms, now) {
                tracing::info!(group = %id, "member {member} removed: no heartbeat within its session or revocation within its rebalance timeout");
            }
        }
        let emptied: Vec<(String, records::GroupValue)> = {
            let mut groups = self.groups.borrow_mut();
            groups
                .values_mut()
                .filter_map(|g| {
                    g.tick(&limits, now)
                        .then(|| (g.id.clone(), g.to_value(None, now)))
                })
                .collect()
        };
        self.persist_emptied(store, emptied).await;
    }

    /// `offsets.retention.minutes`: offsets of Empty groups expire (Kafka
    /// 2.1+: counted from when the group became empty, or from the commit
    /// for groups that never had members); an Empty group left without
    /// offsets is deleted. Tombstones are written first.
    pub async fn expire_offsets<S: GroupStore>(&self, store: &S) {
        let retention_ms = self.config.offsets_retention_ms;
        let now = now_ms();
        let work: Vec<Expiry> = {
            let groups = self.groups.borrow();
            let pending = self.pending.borrow();
            let consumer_groups = self.consumer_groups.borrow();
            groups
                .values()
                .filter(|g| g.state == GroupState::Empty)
                // As Kafka: not while a transaction may still commit offsets
                // for it, nor while a KIP-848 group has members.
                .filter(|g| {
                    !pending
                        .values()
                        .flat_map(|o| o.keys())
                        .any(|(group, _, _)| *group == g.id)
                })
                .filter(|g| consumer_groups.get(&g.id).is_none_or(|c| c.members.is_empty()))
                .filter_map(|g| {
                    let expired: Vec<(String, i32)> = g
                        .offsets
                        .iter()
                        .filter(|(_, v)| {
                            let base = if g.protocol_type.is_some() {
                                g.state_timestamp_ms
                            } else {
                                v.commit_timestamp_ms
                            };
                            base.saturating_add(retention_ms) <= now
                        })
                        .map(|(k, _)| k.clone())
                        .collect();
                    let delete_group = expired.len() == g.offsets.len();
                    (!expired.is_empty()
                        || (g.offsets.is_empty() && g.state_timestamp_ms.saturating_add(retention_ms) <= now))
                        .then(|| (g.id.clone(), expired, delete_group))
                })
                .collect()
        };
        for (group_id, expired, delete_group) in work {
            let mut tombstones: Vec<(Bytes, Option<Bytes>)> = expired
                .iter()
                .map(|(t, p)| offset_tombstone(&group_id, t, *p))
                .collect();
            if delete_group {
                let key = RecordKey::Group {
                    group: group_id.clone(),
                };
                tombstones.push((records::encode_key(&key), None));
            }
            if let Err(e) = self
                .append_group_records(store, &group_id, tombstones, false)
                .await
            {
                tracing::warn!(group = %group_id, "cannot expire offsets: {e:?}");
                continue;
            }
            let mut groups = self.groups.borrow_mut();
            let Some(g) = groups.get_mut(&group_id) else {
                continue;
            };
            for key in &expired {
                g.offsets.remove(key);
            }
            tracing::info!(group = %group_id, "expired {} offsets", expired.len());
            if delete_group && g.state == GroupState::Empty && g.offsets.is_empty() {
                groups.remove(&group_id);
            }
        }
    }

    /// KAFKA-2000: committed offsets of a deleted topic are deleted too
    /// (tombstones), so a topic re-created under the same name starts
    /// without the old topic's positions. Runs on every shard after it
    /// applied an image that removed or re-created topics.
    pub async fn forget_deleted_topics<S: GroupStore>(
        &self,
        store: &S,
        old: &MetadataImage,
        new: &MetadataImage,
    ) {
        let deleted: Vec<&str> = old
            .topics
            .values()
            .filter(|t| new.topic(&t.name).map(|n| n.id) != Some(t.id))
            .map(|t| t.name.as_str())
            .collect();
        if deleted.is_empty() {
            return;
        }
        let work: Vec<(String, Vec<(String, i32)>)> = {
            let groups = self.groups.borrow();
            groups
                .values()
                .filter_map(|g| {
                    let gone: Vec<(String, i32)> = g
                        .offsets
                        .keys()
                        .filter(|(t, _)| deleted.contains(&t.as_str()))
                        .cloned()
                        .collect();
                    (!gone.is_empty()).then(|| (g.id.clone(), gone))
                })
                .collect()
        };
        for (group_id, gone) in work {
            let tombstones = gone
                .iter()
                .map(|(t, p)| offset_tombstone(&group_id, t, *p))
                .collect();
            if let Err(e) = self
                .append_group_records(store, &group_id, tombstones, false)
                .await
            {
                tracing::warn!(group = %group_id, "cannot delete offsets of deleted topics: {e:?}");
                continue;
            }
            if let Some(g) = self.groups.borrow_mut().get_mut(&group_id) {
                for key in &gone {
                    g.offsets.remove(key);
                }
            }
        }
    }

    /// Forgets the groups of `__consumer_offsets` partition `index`: this
    /// node no longer leads it, so another coordinates them (Kafka's
    /// unloading on resignation).
    pub fn unload_partition<S: GroupStore>(&self, store: &S, index: i32) {
        let partitions = store
            .image()
            .topic(OFFSETS_TOPIC)
            .map_or(0, |t| t.partitions.len() as i32);
        self.consumer_groups
            .borrow_mut()
            .retain(|id, _| partition_for(id, partitions) != index);
        for offsets in self.pending.borrow_mut().values_mut() {
            offsets.retain(|(group, _, _), _| partition_for(group, partitions) != index);
        }
        self.pending.borrow_mut().retain(|_, offsets| !offsets.is_empty());
        let mut groups = self.groups.borrow_mut();
        let before = groups.len();
        groups.retain(|id, _| partition_for(id, partitions) != index);
        if groups.len() != before {
            tracing::info!(
                "{OFFSETS_TOPIC}-{index}: no longer led here; unloaded {} groups",
                before - groups.len()
            );
        }
    }

    /// Rebuilds the groups and offsets of the `__consumer_offsets`
    /// partitions `indexes` this shard leads (at start, or when it takes
    /// over their leadership): last record per key wins, tombstones delete.
    /// Reads to the log end: a new leader's log holds every acknowledged
    /// commit even while its high watermark catches up.
    pub async fn load_partitions<S: GroupStore>(&self, store: &S, indexes: &[i32]) {
        let image = store.image();
        let Some(topic) = image.topic(OFFSETS_TOPIC) else {
            return;
        };
        for index in indexes {
            self.unload_partition(store, *index);
        }
        let mut latest: BTreeMap<RecordKey, Option<Bytes>> = BTreeMap::new();
        // Transactional commits by producer, until their marker (log order).
        let mut open: HashMap<i64, BTreeMap<RecordKey, Bytes>> = HashMap::new();
        let mut records_read = 0usize;
        for index in 0..topic.partitions.len() as i32 {
            if !indexes.contains(&index) {
                continue;
            }
            let Some(partition) = store.offsets_partition(index).filter(|p| p.is_leader()) else {
                continue;
            };
            let mut offset = partition.log_start_offset();
            while offset < partition.log_end_offset() {
                // A copying read: replay parses the bytes in memory (a copying
                // read's records are always in memory, so to_bytes copies nothing).
                let read = match partition.read(offset, REPLAY_READ_BYTES, false, true).await {
                    Ok(r) => r.records.to_bytes(),
                    Err(e) => {
                        tracing::error!(
                            "replay of {OFFSETS_TOPIC}-{index} stopped at {offset}: {}",
                            e.message
                        );
                        break;
                    }
                };
                let read = match read {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        tracing::error!("replay of {OFFSETS_TOPIC}-{index} stopped at {offset}: {e}");
                        break;
                    }
                };
                let (recs, next, skipped) = match records::read_batches(&read) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!("replay of {OFFSETS_TOPIC}-{index} stopped at {offset}: {e}");
                        break;
                    }
                };
                if skipped > 0 {
                    tracing::warn!(
                        "{OFFSETS_TOPIC}-{index}: skipped {skipped} compressed or control batches"
                    );
                }
                for item in recs {
                    let rec = match item {
                        records::LogItem::Record(rec) => rec,
                        records::LogItem::Marker { producer_id, commit } => {
                            let ended = open.remove(&producer_id).unwrap_or_default();
                            if commit {
                                latest.extend(ended.into_iter().map(|(k, v)| (k, Some(v))));
                            }
                            continue;
                        }
                    };
                    match records::decode_key(&rec.key) {
                        Ok(key) if rec.txn_producer_id >= 0 => {
                            if let Some(value) = rec.value {
                                open.entry(rec.txn_producer_id).or_default().insert(key, value);
                                records_read += 1;
                            }
                        }
                        Ok(key) => {
                            // A tombstone also deletes a pending commit (Kafka).
                            if rec.value.is_none() {
                                for pending in open.values_mut() {
                                    pending.remove(&key);
                                }
                            }
                            latest.insert(key, rec.value);
                            records_read += 1;
                        }
                        Err(e) => {
                            tracing::warn!("{OFFSETS_TOPIC}-{index} offset {}: bad key: {e}", rec.offset)
                        }
                    }
                }
                if next <= offset {
                    break;
                }
                offset = next;
                glommio::yield_if_needed().await;
            }
        }
        let now = now_ms();
        {
            let mut pending = self.pending.borrow_mut();
            for (producer_id, offsets) in open {
                for (key, value) in offsets {
                    let RecordKey::Offset {
                        group,
                        topic,
                        partition,
                    } = key
                    else {
                        continue;
                    };
                    match records::decode_offset_value(&value) {
                        Ok(v) => {
                            pending
                                .entry(producer_id)
                                .or_default()
                                .insert((group, topic, partition), v);
                        }
                        Err(e) => tracing::warn!(group = %group, "bad transactional offset record: {e}"),
                    }
                }
            }
        }
        let mut groups = self.groups.borrow_mut();
        for (key, value) in latest {
            let Some(value) = value else { continue };
            match key {
                RecordKey::Group { group } => match records::decode_group_value(&value) {
                    Ok(v) => {
                        let offsets = groups.remove(&group).map(|g| g.offsets).unwrap_or_default();
                        let mut g = Group::loaded(group.clone(), &v, now);
                        g.offsets = offsets;
                        groups.insert(group, g);
                    }
                    Err(e) => tracing::warn!(group = %group, "bad group metadata record: {e}"),
                },
                RecordKey::Offset {
                    group,
                    topic,
                    partition,
                } => match records::decode_offset_value(&value) {
                    // A topic deleted before its offsets' tombstones were written.
                    Ok(_) if image.topic(&topic).is_none() => {}
                    Ok(v) => {
                        groups
                            .entry(group.clone())
                            .or_insert_with(|| Group::new(group, now))
                            .offsets
                            .insert((topic, partition), v);
                    }
                    Err(e) => tracing::warn!(group = %group, "bad offset record: {e}"),
                },
            }
        }
        if records_read > 0 {
            tracing::info!(
                shard = store.shard_id(),
                "loaded {OFFSETS_TOPIC} partitions {indexes:?}: {records_read} records, {} groups on this shard",
                groups.len()
            );
        }
    }
}

/// A partition's answer: its index and error (None = NONE).
type PartitionOutcome = (i32, Option<ResponseError>);

/// Offsets to expire in one group: (group, (topic, partition)s, delete the group too).
type Expiry = (String, Vec<(String, i32)>, bool);

/// The tombstone (null value) of one committed offset.
fn offset_tombstone(group: &str, topic: &str, partition: i32) -> (Bytes, Option<Bytes>) {
    let key = RecordKey::Offset {
        group: group.to_string(),
        topic: topic.to_string(),
        partition,
    };
    (records::encode_key(&key), None)
}

/// Tombstones for every offset of `g` and for its metadata.
fn group_tombstones(g: &Group) -> Vec<(Bytes, Option<Bytes>)> {
    let mut out: Vec<(Bytes, Option<Bytes>)> = g
        .offsets
        .keys()
        .map(|(t, p)| offset_tombstone(&g.id, t, *p))
        .collect();
    out.push((
        records::encode_key(&RecordKey::Group { group: g.id.clone() }),
        None,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_partition_matches_kafkas_hash() {
        // Java: "test-group".hashCode() == -1137393735 ... checked against the
        // definition s[0]*31^(n-1) + ... + s[n-1] in wrapping i32 arithmetic.
        assert_eq!(java_string_hash(""), 0);
        assert_eq!(java_string_hash("a"), 97);
        assert_eq!(java_string_hash("ab"), 97 * 31 + 98);
        // "polygenelubricants".hashCode() is Integer.MIN_VALUE; Utils.abs maps it to 0.
        assert_eq!(java_string_hash("polygenelubricants"), i32::MIN);
        assert_eq!(partition_for("polygenelubricants", 50), 0);
        assert_eq!(partition_for("ab", 50), (97 * 31 + 98) % 50);
    }
}
