//! Consumer-group membership over Kafka's classic group protocol:
//! FindCoordinator, JoinGroup (with the MEMBER_ID_REQUIRED round trip),
//! SyncGroup (the leader computes a range assignment), Heartbeat,
//! OffsetCommit, OffsetFetch and LeaveGroup.
//!
//! Members use protocol type `consumer` with the `range` assignor and the
//! standard ConsumerProtocolSubscription/Assignment encoding (a big-endian
//! i16 version, then the struct at that version), so Java and librdkafka
//! consumers can share a group with this tool.
//!
//! Everything is blocking on one coordinator connection per member, separate
//! from the member's fetch connections (one per partition leader, in
//! `consume.rs`): JoinGroup is a long poll the broker parks until the
//! rebalance completes, and it must not stall behind a fetch (or the other
//! way round). The coordinator is the host:port FindCoordinator answers,
//! which in a cluster is the leader of the group's `__consumer_offsets`
//! partition, not necessarily the bootstrap broker.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    consumer_protocol_assignment, ApiKey, ConsumerProtocolAssignment, ConsumerProtocolSubscription,
    FindCoordinatorRequest, GroupId, HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest,
    OffsetCommitRequest, OffsetFetchRequest, SyncGroupRequest,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::stats::{self, Latency};
use crate::wire::{self, Conn, Error, Result};

/// The protocol type every Kafka consumer uses; members of other types
/// cannot join the same group.
pub const PROTOCOL_TYPE: &str = "consumer";
/// Kafka's RangeAssignor name, so a Java member can be elected leader and
/// assign for us (and the other way round).
pub const ASSIGNOR_NAME: &str = "range";
/// ConsumerProtocolSubscription/Assignment version written (Kafka 3.x+
/// clients write 3; older readers parse the fields they know).
pub const CONSUMER_PROTOCOL_VERSION: i16 = 3;

// Error codes this module reacts to (Kafka's `Errors`).
const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const NOT_COORDINATOR: i16 = 16;
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;
const MEMBER_ID_REQUIRED: i16 = 79;
const FENCED_INSTANCE_ID: i16 = 82;

/// Pause before retrying a call the coordinator could not serve yet.
const RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// How long FindCoordinator may keep answering "not available".
const FIND_COORDINATOR_WAIT: Duration = Duration::from_secs(30);
/// Headroom on top of the rebalance timeout for a parked JoinGroup (Kafka's
/// Java client adds 5 s too).
const JOIN_READ_SLACK: Duration = Duration::from_secs(5);
/// Join rounds per `join` call: MEMBER_ID_REQUIRED, a rebalance racing the
/// SyncGroup, or a retried coordinator error each take one.
const JOIN_ROUNDS_MAX: usize = 1000;

fn is_coordinator_retriable(code: i16) -> bool {
    matches!(
        code,
        COORDINATOR_LOAD_IN_PROGRESS | COORDINATOR_NOT_AVAILABLE | NOT_COORDINATOR
    )
}

/// Codes after which the member must join again (its generation is over).
fn needs_rejoin(code: i16) -> bool {
    matches!(
        code,
        REBALANCE_IN_PROGRESS | ILLEGAL_GENERATION | UNKNOWN_MEMBER_ID | FENCED_INSTANCE_ID
    )
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// Membership settings, Kafka's consumer config names in brackets.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GroupConfig {
    pub group_id: String,
    /// [session.timeout.ms] The coordinator drops a member silent this long.
    pub session_timeout_ms: i32,
    /// [heartbeat.interval.ms]
    pub heartbeat_interval_ms: u64,
    /// [max.poll.interval.ms] How long the coordinator waits for every
    /// member to rejoin during a rebalance.
    pub rebalance_timeout_ms: i32,
    /// [auto.commit.interval.ms] 0 = never commit.
    pub commit_interval_ms: u64,
}

/// A (topic name, partition) pair as the group protocol names them.
pub type NamedPartition = (String, i32);

// ---------------------------------------------------------------------------
// Subscription / assignment encoding and the range assignor (pure).

/// `[version i16][ConsumerProtocolSubscription at version]`.
pub fn encode_subscription(topics: &[String]) -> Result<Bytes> {
    let sub =
        ConsumerProtocolSubscription::default().with_topics(topics.iter().map(|t| str_bytes(t)).collect());
    encode_versioned(&sub)
}

/// `[version i16][ConsumerProtocolAssignment at version]`, partitions grouped by topic.
pub fn encode_assignment(partitions: &BTreeMap<String, Vec<i32>>) -> Result<Bytes> {
    let assignment = ConsumerProtocolAssignment::default().with_assigned_partitions(
        partitions
            .iter()
            .filter(|(_, ps)| !ps.is_empty())
            .map(|(topic, ps)| {
                consumer_protocol_assignment::TopicPartition::default()
                    .with_topic(wire::topic_name(topic))
                    .with_partitions(ps.clone())
            })
            .collect(),
    );
    encode_versioned(&assignment)
}

fn encode_versioned<M: Encodable>(message: &M) -> Result<Bytes> {
    let mut out = BytesMut::new();
    out.put_i16(CONSUMER_PROTOCOL_VERSION);
    message
        .encode(&mut out, CONSUMER_PROTOCOL_VERSION)
        .map_err(|e| wire::protocol_error("encode consumer protocol", e))?;
    Ok(out.freeze())
}

/// Reads the version prefix; a newer version is read as the newest known one
/// (newer versions only append fields, which is how Kafka's clients read them).
fn decode_versioned<M: Decodable>(mut data: Bytes, what: &str) -> Result<M> {
    if data.remaining() < 2 {
        return Err(Error::Protocol(format!("{what}: {} bytes", data.remaining())));
    }
    let version = data.get_i16();
    if version < 0 {
        return Err(Error::Protocol(format!("{what}: version {version}")));
    }
    M::decode(&mut data, version.min(CONSUMER_PROTOCOL_VERSION)).map_err(|e| wire::protocol_error(what, e))
}

/// Topics a member subscribes to.
pub fn decode_subscription(data: Bytes) -> Result<Vec<String>> {
    let sub: ConsumerProtocolSubscription = decode_versioned(data, "consumer subscription")?;
    Ok(sub.topics.iter().map(|t| t.to_string()).collect())
}

/// Partitions assigned to this member, sorted. An empty assignment (a
/// member left without partitions) is zero bytes on the wire.
pub fn decode_assignment(data: Bytes) -> Result<Vec<NamedPartition>> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    let assignment: ConsumerProtocolAssignment = decode_versioned(data, "consumer assignment")?;
    let mut out: Vec<NamedPartition> = assignment
        .assigned_partitions
        .iter()
        .flat_map(|tp| tp.partitions.iter().map(move |&p| (tp.topic.0.to_string(), p)))
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Kafka's RangeAssignor: per topic, members subscribed to it sorted by
/// member id, partitions sorted by id; member i of m gets a contiguous
/// range of n / m partitions, the first n % m members one more. Every
/// member gets an entry (possibly empty), so each receives an assignment.
pub fn range_assign(
    subscriptions: &[(String, Vec<String>)],
    partitions_per_topic: &BTreeMap<String, Vec<i32>>,
) -> BTreeMap<String, BTreeMap<String, Vec<i32>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<i32>>> = subscriptions
        .iter()
        .map(|(member, _)| (member.clone(), BTreeMap::new()))
        .collect();
    for (topic, partitions) in partitions_per_topic {
        let mut members: Vec<&String> = subscriptions
            .iter()
            .filter(|(_, topics)| topics.contains(topic))
            .map(|(member, _)| member)
            .collect();
        members.sort();
        members.dedup();
        if members.is_empty() {
            continue;
        }
        let mut partitions = partitions.clone();
        partitions.sort_unstable();
        partitions.dedup();
        let per_member = partitions.len() / members.len();
        let with_extra = partitions.len() % members.len();
        for (i, member) in members.into_iter().enumerate() {
            let start = per_member * i + i.min(with_extra);
            let len = per_member + usize::from(i < with_extra);
            let mine = partitions[start..start + len].to_vec();
            if let Some(assigned) = out.get_mut(member) {
                assigned.insert(topic.clone(), mine);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The member.

/// API versions picked once per coordinator connection.
#[derive(Clone, Copy, Debug)]
struct GroupVersions {
    join: i16,
    sync: i16,
    heartbeat: i16,
    leave: i16,
    commit: i16,
    fetch_offsets: i16,
}

/// What one member saw, merged into the run's group report.
pub struct MemberStats {
    /// Every generation this member got an assignment in.
    pub generations: Vec<i32>,
    /// Joins after the first assignment (rebalances this member took part in).
    pub rebalances: u64,
    /// From the first JoinGroup to the first assignment.
    pub first_assignment_us: Option<u64>,
    pub commits: u64,
    /// Commits refused (rebalance, fenced generation): the member rejoins.
    pub commit_failures: u64,
    pub commit_latency: Histogram<u64>,
}

/// The group part of a consume report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GroupReport {
    pub group_id: String,
    pub members: usize,
    /// Every generation some member of this run got an assignment in, sorted.
    pub generations: Vec<i32>,
    /// Joins after a member's first assignment, summed over members.
    pub rebalances: u64,
    /// From a member's first JoinGroup to its first assignment (join
    /// latency, waiting for the other members included), one sample per member.
    pub time_to_first_assignment: Option<Latency>,
    pub commits: u64,
    pub commit_failures: u64,
    pub commit_latency: Option<Latency>,
    /// After the run: records between the committed offsets and the end
    /// offsets (0 = a restarted group resumes exactly at the end). None
    /// without commits or end offsets (tail reads stopped by the clock).
    pub committed_behind_end_records: Option<u64>,
}

impl GroupReport {
    pub fn merge(
        config: &GroupConfig,
        members: &[MemberStats],
        committed_behind_end_records: Option<u64>,
    ) -> GroupReport {
        let mut generations: Vec<i32> = members
            .iter()
            .flat_map(|m| m.generations.iter().copied())
            .collect();
        generations.sort_unstable();
        generations.dedup();
        let mut first = stats::new_histogram();
        let mut commit_latency = stats::new_histogram();
        for m in members {
            if let Some(us) = m.first_assignment_us {
                stats::record(&mut first, us);
            }
            stats::merge(&mut commit_latency, &m.commit_latency);
        }
        GroupReport {
            group_id: config.group_id.clone(),
            members: members.len(),
            generations,
            rebalances: members.iter().map(|m| m.rebalances).sum(),
            time_to_first_assignment: Latency::of(&first),
            commits: members.iter().map(|m| m.commits).sum(),
            commit_failures: members.iter().map(|m| m.commit_failures).sum(),
            commit_latency: Latency::of(&commit_latency),
            committed_behind_end_records,
        }
    }

    pub fn line(&self) -> String {
        let first = self
            .time_to_first_assignment
            .as_ref()
            .map_or_else(|| "-".to_string(), |l| format!("{} µs", l.max_us));
        let commit_p99 = self
            .commit_latency
            .as_ref()
            .map_or_else(|| "-".to_string(), |l| format!("{} µs", l.p99_us));
        format!(
            "group {}: {} members, generations {:?}, {} rebalances, first assignment after {first} (slowest member), \
             {} commits ({} refused), commit p99 {commit_p99}",
            self.group_id, self.members, self.generations, self.rebalances, self.commits, self.commit_failures
        )
    }
}

/// Outcome of a heartbeat or commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Still a member of the current generation.
    Member,
    /// The generation is over (rebalance or fenced): join again.
    Rejoin,
}

pub struct Member {
    conn: Conn,
    config: GroupConfig,
    topics: Vec<String>,
    versions: GroupVersions,
    member_id: String,
    /// -1 outside a generation (before the first join, after a fence).
    generation: i32,
    /// When the first JoinGroup was sent.
    join_started: Option<Instant>,
    last_heartbeat: Instant,
    last_commit: Instant,
    pub stats: MemberStats,
}

/// Asks `bootstrap` for `group_id`'s coordinator ("host:port"), retrying
/// while it is not available yet (bounded by `FIND_COORDINATOR_WAIT`).
pub fn find_coordinator(bootstrap: &str, group_id: &str) -> Result<String> {
    let mut conn = Conn::open(bootstrap)?;
    // v1-v3 take one key; v4+ batch keys and this asks for one group only.
    let version = conn.versions.pick(ApiKey::FindCoordinator, 3)?;
    let req = FindCoordinatorRequest::default()
        .with_key(str_bytes(group_id))
        .with_key_type(0);
    let deadline = Instant::now() + FIND_COORDINATOR_WAIT;
    loop {
        let resp = conn.call(&req, version)?;
        if resp.error_code == 0 {
            if resp.host.is_empty() || resp.port <= 0 {
                return Ok(bootstrap.to_string());
            }
            return Ok(format!("{}:{}", resp.host.as_str(), resp.port));
        }
        if !is_coordinator_retriable(resp.error_code) || Instant::now() > deadline {
            return Err(Error::Broker(format!(
                "FindCoordinator {group_id}: error {} {:?}",
                resp.error_code,
                resp.error_message.as_ref().map(|m| m.to_string())
            )));
        }
        std::thread::sleep(RETRY_BACKOFF);
    }
}

impl Member {
    /// Opens a connection to `coordinator` for a member of `config.group_id`
    /// subscribing to `topics`. No request to the group yet.
    pub fn connect(coordinator: &str, config: &GroupConfig, topics: &[String]) -> Result<Member> {
        let conn = Conn::open(coordinator)?;
        let v = &conn.versions;
        let versions = GroupVersions {
            join: v.pick(ApiKey::JoinGroup, 9)?,
            sync: v.pick(ApiKey::SyncGroup, 5)?,
            heartbeat: v.pick(ApiKey::Heartbeat, 4)?,
            leave: v.pick(ApiKey::LeaveGroup, 5)?,
            // v9+ belong to the KIP-848 protocol; v8 is the newest classic one.
            commit: v.pick(ApiKey::OffsetCommit, 8)?,
            // v8+ batch groups; v7 is the newest single-group shape.
            fetch_offsets: v.pick(ApiKey::OffsetFetch, 7)?,
        };
        // A JoinGroup is parked until the rebalance completes, which may take
        // up to the rebalance timeout.
        let join_wait = Duration::from_millis(config.rebalance_timeout_ms.max(0) as u64) + JOIN_READ_SLACK;
        conn.stream
            .set_read_timeout(Some(join_wait.max(wire::SOCKET_TIMEOUT)))?;
        let now = Instant::now();
        Ok(Member {
            conn,
            config: config.clone(),
            topics: topics.to_vec(),
            versions,
            member_id: String::new(),
            generation: -1,
            join_started: None,
            last_heartbeat: now,
            last_commit: now,
            stats: MemberStats {
                generations: Vec::new(),
                rebalances: 0,
                first_assignment_us: None,
                commits: 0,
                commit_failures: 0,
                commit_latency: stats::new_histogram(),
            },
        })
    }

    pub fn generation(&self) -> i32 {
        self.generation
    }

    /// Joins (or rejoins) the group and returns this member's partitions.
    /// None when `give_up()` says so between rounds (run over).
    pub fn join(&mut self, give_up: &dyn Fn() -> bool) -> Result<Option<Vec<NamedPartition>>> {
        let metadata = encode_subscription(&self.topics)?;
        let join_started = *self.join_started.get_or_insert_with(Instant::now);
        for _ in 0..JOIN_ROUNDS_MAX {
            if give_up() {
                return Ok(None);
            }
            let req = JoinGroupRequest::default()
                .with_group_id(GroupId(str_bytes(&self.config.group_id)))
                .with_session_timeout_ms(self.config.session_timeout_ms)
                .with_rebalance_timeout_ms(self.config.rebalance_timeout_ms)
                .with_member_id(str_bytes(&self.member_id))
                .with_protocol_type(StrBytes::from_static_str(PROTOCOL_TYPE))
                .with_protocols(vec![JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str(ASSIGNOR_NAME))
                    .with_metadata(metadata.clone())]);
            let resp = self.conn.call(&req, self.versions.join)?;
            match resp.error_code {
                0 => {}
                MEMBER_ID_REQUIRED => {
                    // KIP-394: the broker names us; join again with that id.
                    self.member_id = resp.member_id.to_string();
                    continue;
                }
                UNKNOWN_MEMBER_ID | FENCED_INSTANCE_ID => {
                    self.member_id.clear();
                    continue;
                }
                REBALANCE_IN_PROGRESS | ILLEGAL_GENERATION => continue,
                code if is_coordinator_retriable(code) => {
                    std::thread::sleep(RETRY_BACKOFF);
                    continue;
                }
                code => {
                    return Err(Error::Broker(format!(
                        "JoinGroup {}: error {code}",
                        self.config.group_id
                    )))
                }
            }
            self.member_id = resp.member_id.to_string();
            let generation = resp.generation_id;
            let is_leader = resp.leader.as_str() == self.member_id && !resp.skip_assignment;
            let assignments = if is_leader {
                self.leader_assignments(&resp.members)?
            } else {
                Vec::new()
            };
            let req = SyncGroupRequest::default()
                .with_group_id(GroupId(str_bytes(&self.config.group_id)))
                .with_generation_id(generation)
                .with_member_id(str_bytes(&self.member_id))
                .with_protocol_type(Some(StrBytes::from_static_str(PROTOCOL_TYPE)))
                .with_protocol_name(Some(
                    resp.protocol_name
                        .clone()
                        .unwrap_or_else(|| StrBytes::from_static_str(ASSIGNOR_NAME)),
                ))
                .with_assignments(assignments);
            let sync = self.conn.call(&req, self.versions.sync)?;
            match sync.error_code {
                0 => {}
                UNKNOWN_MEMBER_ID | FENCED_INSTANCE_ID => {
                    self.member_id.clear();
                    continue;
                }
                REBALANCE_IN_PROGRESS | ILLEGAL_GENERATION => continue,
                code if is_coordinator_retriable(code) => {
                    std::thread::sleep(RETRY_BACKOFF);
                    continue;
                }
                code => {
                    return Err(Error::Broker(format!(
                        "SyncGroup {}: error {code}",
                        self.config.group_id
                    )))
                }
            }
            let assigned = decode_assignment(sync.assignment)?;
            self.generation = generation;
            let now = Instant::now();
            self.last_heartbeat = now;
            self.last_commit = now;
            if self.stats.first_assignment_us.is_none() {
                self.stats.first_assignment_us = Some(now.duration_since(join_started).as_micros() as u64);
            } else {
                self.stats.rebalances += 1;
            }
            self.stats.generations.push(generation);
            return Ok(Some(assigned));
        }
        Err(Error::Broker(format!(
            "group {}: no assignment after {JOIN_ROUNDS_MAX} join rounds",
            self.config.group_id
        )))
    }

    /// The leader's range assignment of every member's subscribed topics.
    fn leader_assignments(
        &mut self,
        members: &[kafka_protocol::messages::join_group_response::JoinGroupResponseMember],
    ) -> Result<Vec<SyncGroupRequestAssignment>> {
        let mut subscriptions = Vec::with_capacity(members.len());
        for m in members {
            subscriptions.push((m.member_id.to_string(), decode_subscription(m.metadata.clone())?));
        }
        let mut topics: Vec<&String> = subscriptions.iter().flat_map(|(_, t)| t).collect();
        topics.sort();
        topics.dedup();
        let mut partitions_per_topic = BTreeMap::new();
        for topic in topics {
            match self.conn.metadata(topic) {
                Ok(meta) => {
                    partitions_per_topic.insert(topic.clone(), meta.partition_ids());
                }
                // A topic someone subscribes to that does not exist (yet)
                // gets no partitions, as in Kafka.
                Err(Error::Broker(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let assignment = range_assign(&subscriptions, &partitions_per_topic);
        assignment
            .iter()
            .map(|(member, assigned)| -> Result<SyncGroupRequestAssignment> {
                Ok(SyncGroupRequestAssignment::default()
                    .with_member_id(str_bytes(member))
                    .with_assignment(encode_assignment(assigned)?))
            })
            .collect()
    }

    pub fn heartbeat_due(&self) -> bool {
        self.last_heartbeat.elapsed() >= Duration::from_millis(self.config.heartbeat_interval_ms)
    }

    pub fn commit_due(&self) -> bool {
        self.config.commit_interval_ms > 0
            && self.last_commit.elapsed() >= Duration::from_millis(self.config.commit_interval_ms)
    }

    pub fn commits_enabled(&self) -> bool {
        self.config.commit_interval_ms > 0
    }

    pub fn heartbeat(&mut self) -> Result<Standing> {
        self.last_heartbeat = Instant::now();
        let req = HeartbeatRequest::default()
            .with_group_id(GroupId(str_bytes(&self.config.group_id)))
            .with_generation_id(self.generation)
            .with_member_id(str_bytes(&self.member_id));
        let resp = self.conn.call(&req, self.versions.heartbeat)?;
        match resp.error_code {
            0 => Ok(Standing::Member),
            // Try again at the next interval, as Kafka's clients do.
            code if is_coordinator_retriable(code) => Ok(Standing::Member),
            code if needs_rejoin(code) => {
                if code != REBALANCE_IN_PROGRESS {
                    self.generation = -1;
                }
                if code == UNKNOWN_MEMBER_ID || code == FENCED_INSTANCE_ID {
                    self.member_id.clear();
                }
                Ok(Standing::Rejoin)
            }
            code => Err(Error::Broker(format!(
                "Heartbeat {}: error {code}",
                self.config.group_id
            ))),
        }
    }

    /// Commits `offsets` (next offset to read per partition) for the current
    /// generation. Outside a generation nothing is sent.
    pub fn commit(&mut self, offsets: &[(NamedPartition, i64)]) -> Result<Standing> {
        self.last_commit = Instant::now();
        if self.generation < 0 {
            return Ok(Standing::Rejoin);
        }
        if offsets.is_empty() {
            return Ok(Standing::Member);
        }
        let mut by_topic: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
        for ((topic, partition), offset) in offsets {
            by_topic.entry(topic.as_str()).or_default().push(
                OffsetCommitRequestPartition::default()
                    .with_partition_index(*partition)
                    .with_committed_offset(*offset),
            );
        }
        let req = OffsetCommitRequest::default()
            .with_group_id(GroupId(str_bytes(&self.config.group_id)))
            .with_generation_id_or_member_epoch(self.generation)
            .with_member_id(str_bytes(&self.member_id))
            .with_topics(
                by_topic
                    .into_iter()
                    .map(|(topic, partitions)| {
                        OffsetCommitRequestTopic::default()
                            .with_name(wire::topic_name(topic))
                            .with_partitions(partitions)
                    })
                    .collect(),
            );
        let sent = Instant::now();
        let resp = self.conn.call(&req, self.versions.commit)?;
        stats::record(&mut self.stats.commit_latency, sent.elapsed().as_micros() as u64);
        self.stats.commits += 1;
        let mut standing = Standing::Member;
        for t in &resp.topics {
            for p in &t.partitions {
                match p.error_code {
                    0 => {}
                    code if needs_rejoin(code) => standing = Standing::Rejoin,
                    // Not committed this time; the next commit carries it.
                    code if is_coordinator_retriable(code) => {}
                    code => {
                        return Err(Error::Broker(format!(
                            "OffsetCommit {} {}/{}: error {code}",
                            self.config.group_id,
                            t.name.0.as_str(),
                            p.partition_index
                        )))
                    }
                }
            }
        }
        if standing == Standing::Rejoin {
            self.stats.commit_failures += 1;
        }
        Ok(standing)
    }

    /// Committed offsets of `partitions` (absent: nothing committed).
    pub fn committed(&mut self, partitions: &[NamedPartition]) -> Result<HashMap<NamedPartition, i64>> {
        fetch_committed(
            &mut self.conn,
            self.versions.fetch_offsets,
            &self.config.group_id,
            partitions,
        )
    }

    /// Leaves the group so the others rebalance now rather than after the
    /// session timeout. Errors are the coordinator's business: the member is
    /// gone either way.
    pub fn leave(&mut self) -> Result<()> {
        if self.member_id.is_empty() {
            return Ok(());
        }
        let req = LeaveGroupRequest::default().with_group_id(GroupId(str_bytes(&self.config.group_id)));
        // v3 (KIP-345) moved the member id into a batch of members.
        let req = if self.versions.leave >= 3 {
            req.with_members(vec![
                MemberIdentity::default().with_member_id(str_bytes(&self.member_id))
            ])
        } else {
            req.with_member_id(str_bytes(&self.member_id))
        };
        let resp = self.conn.call(&req, self.versions.leave)?;
        self.generation = -1;
        self.member_id.clear();
        if resp.error_code != 0
            && !needs_rejoin(resp.error_code)
            && !is_coordinator_retriable(resp.error_code)
        {
            return Err(Error::Broker(format!("LeaveGroup: error {}", resp.error_code)));
        }
        Ok(())
    }
}

/// OffsetFetch of `partitions` for `group_id` on a coordinator connection,
/// retrying while the coordinator loads (bounded by `FIND_COORDINATOR_WAIT`).
pub fn fetch_committed(
    conn: &mut Conn,
    version: i16,
    group_id: &str,
    partitions: &[NamedPartition],
) -> Result<HashMap<NamedPartition, i64>> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (topic, partition) in partitions {
        by_topic.entry(topic.as_str()).or_default().push(*partition);
    }
    let req = OffsetFetchRequest::default()
        .with_group_id(GroupId(str_bytes(group_id)))
        .with_topics(Some(
            by_topic
                .into_iter()
                .map(|(topic, ps)| {
                    OffsetFetchRequestTopic::default()
                        .with_name(wire::topic_name(topic))
                        .with_partition_indexes(ps)
                })
                .collect(),
        ));
    let deadline = Instant::now() + FIND_COORDINATOR_WAIT;
    loop {
        let resp = conn.call(&req, version)?;
        if is_coordinator_retriable(resp.error_code) && Instant::now() < deadline {
            std::thread::sleep(RETRY_BACKOFF);
            continue;
        }
        if resp.error_code != 0 {
            return Err(Error::Broker(format!(
                "OffsetFetch {group_id}: error {}",
                resp.error_code
            )));
        }
        let mut out = HashMap::new();
        for t in &resp.topics {
            for p in &t.partitions {
                if p.error_code != 0 {
                    return Err(Error::Broker(format!(
                        "OffsetFetch {group_id} {}/{}: error {}",
                        t.name.0.as_str(),
                        p.partition_index,
                        p.error_code
                    )));
                }
                // -1: nothing committed for this partition.
                if p.committed_offset >= 0 {
                    out.insert((t.name.0.to_string(), p.partition_index), p.committed_offset);
                }
            }
        }
        return Ok(out);
    }
}

/// Committed offsets of `group_id` without joining: FindCoordinator via
/// `bootstrap`, then one OffsetFetch.
pub fn committed_offsets(
    bootstrap: &str,
    group_id: &str,
    partitions: &[NamedPartition],
) -> Result<HashMap<NamedPartition, i64>> {
    let coordinator = find_coordinator(bootstrap, group_id)?;
    let mut conn = Conn::open(&coordinator)?;
    let version = conn.versions.pick(ApiKey::OffsetFetch, 7)?;
    fetch_committed(&mut conn, version, group_id, partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// "member:topic,topic" per member.
    fn subs(members: &[&str]) -> Vec<(String, Vec<String>)> {
        members
            .iter()
            .map(|m| {
                let (member, topics) = m.split_once(':').unwrap();
                (
                    member.to_string(),
                    topics.split(',').map(str::to_string).collect(),
                )
            })
            .collect()
    }

    fn topics(ts: &[(&str, i32)]) -> BTreeMap<String, Vec<i32>> {
        ts.iter()
            .map(|&(t, n)| (t.to_string(), (0..n).collect()))
            .collect()
    }

    #[test]
    fn range_gives_the_first_members_one_extra_partition() {
        // Kafka's RangeAssignor example: 2 consumers, 3 partitions each of t0, t1.
        let a = range_assign(&subs(&["c1:t0,t1", "c0:t0,t1"]), &topics(&[("t0", 3), ("t1", 3)]));
        assert_eq!(a["c0"]["t0"], vec![0, 1]);
        assert_eq!(a["c0"]["t1"], vec![0, 1]);
        assert_eq!(a["c1"]["t0"], vec![2]);
        assert_eq!(a["c1"]["t1"], vec![2]);

        // 10 partitions over 3 members: 4, 3, 3.
        let a = range_assign(&subs(&["a:t", "b:t", "c:t"]), &topics(&[("t", 10)]));
        assert_eq!(a["a"]["t"], vec![0, 1, 2, 3]);
        assert_eq!(a["b"]["t"], vec![4, 5, 6]);
        assert_eq!(a["c"]["t"], vec![7, 8, 9]);
    }

    #[test]
    fn range_covers_every_partition_once_and_leaves_extra_members_empty() {
        for partitions in 0..20 {
            for members in 1..8 {
                let names: Vec<String> = (0..members).map(|m| format!("m{m:02}")).collect();
                let s: Vec<(String, Vec<String>)> =
                    names.iter().map(|m| (m.clone(), vec!["t".to_string()])).collect();
                let a = range_assign(&s, &topics(&[("t", partitions)]));
                assert_eq!(a.len(), members, "every member gets an entry");
                let mut all: Vec<i32> = a
                    .values()
                    .flat_map(|m| m.get("t").cloned().unwrap_or_default())
                    .collect();
                all.sort_unstable();
                assert_eq!(all, (0..partitions).collect::<Vec<_>>());
                let sizes: Vec<usize> = a.values().map(|m| m.get("t").map_or(0, Vec::len)).collect();
                let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
                assert!(hi - lo <= 1, "{partitions} over {members}: {sizes:?}");
            }
        }
    }

    #[test]
    fn range_only_assigns_topics_a_member_subscribes_to() {
        let a = range_assign(&subs(&["a:t0", "b:t0,t1"]), &topics(&[("t0", 2), ("t1", 2)]));
        assert_eq!(a["a"].get("t1"), None);
        assert_eq!(a["a"]["t0"], vec![0]);
        assert_eq!(a["b"]["t0"], vec![1]);
        assert_eq!(a["b"]["t1"], vec![0, 1]);
    }

    #[test]
    fn subscription_and_assignment_round_trip() {
        let topics = vec!["a".to_string(), "bench-7".to_string()];
        let bytes = encode_subscription(&topics).unwrap();
        assert_eq!(&bytes[..2], &CONSUMER_PROTOCOL_VERSION.to_be_bytes());
        assert_eq!(decode_subscription(bytes).unwrap(), topics);

        let mut assigned = BTreeMap::new();
        assigned.insert("b".to_string(), vec![3, 1]);
        assigned.insert("a".to_string(), vec![0]);
        assigned.insert("empty".to_string(), vec![]);
        let bytes = encode_assignment(&assigned).unwrap();
        assert_eq!(
            decode_assignment(bytes).unwrap(),
            vec![("a".to_string(), 0), ("b".to_string(), 1), ("b".to_string(), 3)]
        );
        assert!(decode_assignment(Bytes::new()).unwrap().is_empty());
    }

    #[test]
    fn older_and_newer_versions_decode_and_garbage_is_an_error() {
        // A v0 subscription (what old clients send): topics and user data only.
        let sub = ConsumerProtocolSubscription::default().with_topics(vec![str_bytes("t")]);
        let mut v0 = BytesMut::new();
        v0.put_i16(0);
        sub.encode(&mut v0, 0).unwrap();
        assert_eq!(decode_subscription(v0.freeze()).unwrap(), vec!["t".to_string()]);

        // A future version: read as the newest known one, trailing fields ignored.
        let mut v9 = BytesMut::new();
        v9.put_i16(9);
        sub.encode(&mut v9, CONSUMER_PROTOCOL_VERSION).unwrap();
        v9.put_slice(b"future fields");
        assert_eq!(decode_subscription(v9.freeze()).unwrap(), vec!["t".to_string()]);

        assert!(decode_subscription(Bytes::from_static(&[0])).is_err());
        assert!(decode_subscription(Bytes::from_static(&[0xff, 0xff, 0, 0])).is_err());
        assert!(decode_assignment(Bytes::from_static(&[0, 3, 0x7f, 0xff, 0xff, 0xff])).is_err());
    }
}
