//! One classic consumer group: Kafka's state machine (Empty,
//! PreparingRebalance, CompletingRebalance, Stable, Dead), its members,
//! generations and committed offsets. Pure logic: no I/O and no clock of its
//! own (every call gets `now_ms`), so it is unit-tested without an executor.
//! Parked JoinGroup/SyncGroup requests are oneshot senders kept on the
//! member; completing a rebalance answers them.
//!
//! Follows Kafka's `GroupCoordinator`/`ClassicGroup` behaviour and error
//! codes per state (KIP-345 static membership, KIP-394 member id required).

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use futures::channel::oneshot;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupResponse, SyncGroupResponse};
use kafka_protocol::ResponseError;

use super::records::{GroupValue, MemberValue, OffsetValue};
use crate::wire::str_bytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    Dead,
}

impl GroupState {
    /// The names Kafka reports in ListGroups/DescribeGroups.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// Kafka's timeout for a new member that joined but has not rejoined after
/// the rebalance it triggered (`GroupCoordinator.NewMemberJoinTimeoutMs`).
const NEW_MEMBER_JOIN_TIMEOUT_MS: i64 = 300_000;

pub struct Member {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    /// (protocol name, metadata) in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub assignment: Bytes,
    /// Join order: the first member becomes leader when there is none.
    seq: u64,
    is_new: bool,
    heartbeat_deadline_ms: i64,
    join_waiter: Option<oneshot::Sender<JoinGroupResponse>>,
    sync_waiter: Option<oneshot::Sender<SyncGroupResponse>>,
}

impl Member {
    fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(n, _)| n == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    fn matches(&self, protocols: &[(String, Bytes)]) -> bool {
        self.protocols == protocols
    }
}

/// What a JoinGroup asks for, decoded from any version.
pub struct JoinParams {
    pub member_id: String,
    pub group_instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a new member first gets MEMBER_ID_REQUIRED.
    pub require_known_member_id: bool,
}

/// What a SyncGroup says, decoded from any version.
pub struct SyncParams<'a> {
    pub member_id: &'a str,
    pub instance: Option<&'a str>,
    pub generation: i32,
    pub protocol_type: Option<&'a str>,
    pub protocol_name: Option<&'a str>,
    /// (member id, assignment); only the leader sends them.
    pub assignments: Vec<(String, Bytes)>,
}

/// The outcome of a join: answered now, or parked until the rebalance completes.
pub enum JoinOutcome {
    Now(JoinGroupResponse),
    Wait(oneshot::Receiver<JoinGroupResponse>),
}

pub enum SyncOutcome {
    Now(SyncGroupResponse),
    Wait(oneshot::Receiver<SyncGroupResponse>),
    /// The leader's assignment: persist `value` (generation `generation`), then
    /// call `complete_sync`; the caller's answer is on the receiver.
    Persist {
        value: GroupValue,
        generation: i32,
        assignments: HashMap<String, Bytes>,
        waiter: oneshot::Receiver<SyncGroupResponse>,
    },
}

/// Kafka's wire code of an outcome: 0 (NONE) or the error's.
pub fn code_of(error: Option<ResponseError>) -> i16 {
    error.map_or(0, |e| e.code())
}

/// A parked request whose client is still waiting for the answer.
fn waiting<T>(waiter: &Option<oneshot::Sender<T>>) -> bool {
    waiter.as_ref().is_some_and(|w| !w.is_canceled())
}

pub fn join_error(code: ResponseError, member_id: &str) -> JoinGroupResponse {
    JoinGroupResponse::default()
        .with_error_code(code.code())
        .with_generation_id(-1)
        .with_member_id(str_bytes(member_id))
        .with_protocol_name(None)
}

pub fn sync_error(code: ResponseError) -> SyncGroupResponse {
    SyncGroupResponse::default().with_error_code(code.code())
}

pub struct Group {
    pub id: String,
    pub state: GroupState,
    pub state_timestamp_ms: i64,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// group.instance.id -> member id (KIP-345).
    static_members: HashMap<String, String>,
    /// Members given an id by MEMBER_ID_REQUIRED that have not joined yet: id -> deadline.
    pending: HashMap<String, i64>,
    /// PreparingRebalance: when the rebalance completes regardless of who rejoined.
    rebalance_deadline_ms: i64,
    /// PreparingRebalance of an empty group (`group.initial.rebalance.delay.ms`):
    /// (next check, member count at the last check).
    initial_delay: Option<(i64, usize)>,
    next_seq: u64,
    pub offsets: HashMap<(String, i32), OffsetValue>,
}

/// Limits the group enforces, from the broker config.
pub struct Limits {
    pub max_size: usize,
    pub initial_rebalance_delay_ms: i64,
}

impl Group {
    pub fn new(id: String, now_ms: i64) -> Self {
        Group {
            id,
            state: GroupState::Empty,
            state_timestamp_ms: now_ms,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            static_members: HashMap::new(),
            pending: HashMap::new(),
            rebalance_deadline_ms: 0,
            initial_delay: None,
            next_seq: 0,
            offsets: HashMap::new(),
        }
    }

    /// A group rebuilt from `__consumer_offsets`: Empty, its generation and
    /// protocol type kept (members rejoin and get a new generation).
    pub fn loaded(id: String, value: &GroupValue, now_ms: i64) -> Self {
        let mut g = Group::new(id, now_ms);
        g.generation = value.generation;
        g.protocol_type = (!value.protocol_type.is_empty()).then(|| value.protocol_type.clone());
        if value.current_state_timestamp_ms > 0 {
            g.state_timestamp_ms = value.current_state_timestamp_ms;
        }
        g
    }

    fn set_state(&mut self, state: GroupState, now_ms: i64) {
        self.state = state;
        self.state_timestamp_ms = now_ms;
    }

    pub fn size(&self) -> usize {
        self.members.len() + self.pending.len()
    }

    /// Protocols every member supports.
    fn candidate_protocols(&self) -> Vec<String> {
        let mut members = self.members.values();
        let Some(first) = members.next() else {
            return Vec::new();
        };
        let mut candidates: Vec<String> = first.protocols.iter().map(|(n, _)| n.clone()).collect();
        for m in members {
            candidates.retain(|c| m.protocols.iter().any(|(n, _)| n == c));
        }
        candidates
    }

    fn supports_protocols(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        if self.members.is_empty() {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && self
                .candidate_protocols()
                .iter()
                .any(|c| protocols.iter().any(|(n, _)| n == c))
    }

    /// Each member votes for its most preferred candidate; most votes win,
    /// ties go to the protocol the earliest member prefers.
    fn select_protocol(&self) -> Option<String> {
        let candidates = self.candidate_protocols();
        let mut votes: Vec<(String, usize, u64)> = Vec::new();
        for m in self.members.values() {
            let Some((vote, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(n)) else {
                continue;
            };
            match votes.iter_mut().find(|(n, _, _)| n == vote) {
                Some(v) => {
                    v.1 += 1;
                    v.2 = v.2.min(m.seq);
                }
                None => votes.push((vote.clone(), 1, m.seq)),
            }
        }
        votes
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.2.cmp(&a.2)))
            .map(|(n, _, _)| n)
    }

    fn max_rebalance_timeout_ms(&self) -> i64 {
        self.members
            .values()
            .map(|m| i64::from(m.rebalance_timeout_ms))
            .max()
            .unwrap_or(0)
    }

    fn join_response(&self, member_id: &str, with_members: bool) -> JoinGroupResponse {
        let protocol = self.protocol.clone().unwrap_or_default();
        let members = if with_members {
            self.members
                .values()
                .map(|m| {
                    JoinGroupResponseMember::default()
                        .with_member_id(str_bytes(&m.member_id))
                        .with_group_instance_id(m.group_instance_id.as_deref().map(str_bytes))
                        .with_metadata(m.metadata(&protocol))
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinGroupResponse::default()
            .with_error_code(0)
            .with_generation_id(self.generation)
            .with_protocol_type(self.protocol_type.as_deref().map(str_bytes))
            .with_protocol_name(Some(str_bytes(&protocol)))
            .with_leader(str_bytes(self.leader.as_deref().unwrap_or("")))
            .with_member_id(str_bytes(member_id))
            .with_members(members)
    }

    // --- JoinGroup -------------------------------------------------------------------

    pub fn join(
        &mut self,
        p: JoinParams,
        new_member_id: String,
        limits: &Limits,
        now_ms: i64,
    ) -> JoinOutcome {
        if self.state == GroupState::Dead {
            return JoinOutcome::Now(join_error(ResponseError::CoordinatorNotAvailable, &p.member_id));
        }
        if !self.supports_protocols(&p.protocol_type, &p.protocols) {
            return JoinOutcome::Now(join_error(ResponseError::InconsistentGroupProtocol, &p.member_id));
        }
        if p.member_id.is_empty() {
            self.join_new(p, new_member_id, limits, now_ms)
        } else {
            self.join_current(p, limits, now_ms)
        }
    }

    fn join_new(&mut self, p: JoinParams, member_id: String, limits: &Limits, now_ms: i64) -> JoinOutcome {
        if let Some(instance) = p.group_instance_id.clone() {
            if let Some(old_id) = self.static_members.get(&instance).cloned() {
                return self.replace_static_member(p, old_id, member_id, limits, now_ms);
            }
        }
        if self.size() >= limits.max_size {
            return JoinOutcome::Now(join_error(ResponseError::GroupMaxSizeReached, ""));
        }
        if p.group_instance_id.is_none() && p.require_known_member_id {
            // KIP-394: the member retries with this id; it counts against the
            // group size until it joins or its session timeout passes.
            self.pending
                .insert(member_id.clone(), now_ms + i64::from(p.session_timeout_ms));
            return JoinOutcome::Now(join_error(ResponseError::MemberIdRequired, &member_id));
        }
        self.add_member_and_rebalance(p, member_id, limits, now_ms)
    }

    fn join_current(&mut self, p: JoinParams, limits: &Limits, now_ms: i64) -> JoinOutcome {
        let member_id = p.member_id.clone();
        if self.pending.remove(&member_id).is_some() {
            return self.add_member_and_rebalance(p, member_id, limits, now_ms);
        }
        if let Err(code) = self.validate_member(&member_id, p.group_instance_id.as_deref()) {
            return JoinOutcome::Now(join_error(code, &member_id));
        }
        let is_leader = self.leader.as_deref() == Some(member_id.as_str());
        let matches = self
            .members
            .get(&member_id)
            .is_some_and(|m| m.matches(&p.protocols));
        match self.state {
            GroupState::PreparingRebalance => self.update_member_and_rebalance(p, limits, now_ms),
            GroupState::CompletingRebalance if matches => {
                // A retried join of this generation: answer it again.
                JoinOutcome::Now(self.join_response(&member_id, is_leader))
            }
            GroupState::Stable if matches && !is_leader => {
                JoinOutcome::Now(self.join_response(&member_id, false))
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.update_member_and_rebalance(p, limits, now_ms)
            }
            GroupState::Empty | GroupState::Dead => {
                JoinOutcome::Now(join_error(ResponseError::UnknownMemberId, &member_id))
            }
        }
    }

    /// Known member id (and instance id, when given) or Kafka's error for it.
    fn validate_member(&self, member_id: &str, instance: Option<&str>) -> Result<(), ResponseError> {
        if let Some(instance) = instance {
            match self.static_members.get(instance) {
                Some(id) if id == member_id => return Ok(()),
                Some(_) => return Err(ResponseError::FencedInstanceId),
                None => {}
            }
        }
        if self.members.contains_key(member_id) {
            Ok(())
        } else {
            Err(ResponseError::UnknownMemberId)
        }
    }

    fn add_member_and_rebalance(
        &mut self,
        p: JoinParams,
        member_id: String,
        limits: &Limits,
        now_ms: i64,
    ) -> JoinOutcome {
        let (tx, rx) = oneshot::channel();
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.members.is_empty() {
            self.protocol_type = Some(p.protocol_type.clone());
        }
        if let Some(instance) = &p.group_instance_id {
            self.static_members.insert(instance.clone(), member_id.clone());
        }
        self.members.insert(
            member_id.clone(),
            Member {
                member_id: member_id.clone(),
                group_instance_id: p.group_instance_id,
                client_id: p.client_id,
                client_host: p.client_host,
                session_timeout_ms: p.session_timeout_ms,
                rebalance_timeout_ms: p.rebalance_timeout_ms,
                protocols: p.protocols,
                assignment: Bytes::new(),
                seq,
                is_new: true,
                heartbeat_deadline_ms: now_ms + NEW_MEMBER_JOIN_TIMEOUT_MS,
                join_waiter: Some(tx),
                sync_waiter: None,
            },
        );
        if self.leader.is_none() {
            self.leader = Some(member_id);
        }
        self.maybe_prepare_rebalance(limits, now_ms);
        self.check_join_complete(now_ms);
        JoinOutcome::Wait(rx)
    }

    fn update_member_and_rebalance(&mut self, p: JoinParams, limits: &Limits, now_ms: i64) -> JoinOutcome {
        let (tx, rx) = oneshot::channel();
        if let Some(m) = self.members.get_mut(&p.member_id) {
            m.protocols = p.protocols;
            m.session_timeout_ms = p.session_timeout_ms;
            m.rebalance_timeout_ms = p.rebalance_timeout_ms;
            m.client_id = p.client_id;
            m.client_host = p.client_host;
            // A second join from the same member replaces the first; the old
            // request's receiver sees a cancelled sender.
            m.join_waiter = Some(tx);
        }
        self.maybe_prepare_rebalance(limits, now_ms);
        self.check_join_complete(now_ms);
        JoinOutcome::Wait(rx)
    }

    /// KIP-345: a static member restarted with a new member id. In Stable with
    /// unchanged protocols it takes over the old id's place and assignment
    /// without a rebalance; otherwise it rebalances as a changed member.
    fn replace_static_member(
        &mut self,
        p: JoinParams,
        old_id: String,
        new_id: String,
        limits: &Limits,
        now_ms: i64,
    ) -> JoinOutcome {
        let Some(mut member) = self.members.remove(&old_id) else {
            self.static_members
                .remove(p.group_instance_id.as_deref().unwrap_or(""));
            return self.add_member_and_rebalance(p, new_id, limits, now_ms);
        };
        // The old incarnation's parked requests learn they are fenced.
        if let Some(w) = member.join_waiter.take() {
            let _ = w.send(join_error(ResponseError::FencedInstanceId, &old_id));
        }
        if let Some(w) = member.sync_waiter.take() {
            let _ = w.send(sync_error(ResponseError::FencedInstanceId));
        }
        let protocols_unchanged = member.matches(&p.protocols);
        member.member_id = new_id.clone();
        member.client_id = p.client_id.clone();
        member.client_host = p.client_host.clone();
        member.session_timeout_ms = p.session_timeout_ms;
        member.rebalance_timeout_ms = p.rebalance_timeout_ms;
        member.heartbeat_deadline_ms = now_ms + i64::from(p.session_timeout_ms);
        self.members.insert(new_id.clone(), member);
        if let Some(instance) = &p.group_instance_id {
            self.static_members.insert(instance.clone(), new_id.clone());
        }
        if self.leader.as_deref() == Some(old_id.as_str()) {
            self.leader = Some(new_id.clone());
        }
        match self.state {
            GroupState::Stable if protocols_unchanged => {
                let is_leader = self.leader.as_deref() == Some(new_id.as_str());
                // KIP-814: the leader gets the member list but must not
                // reassign (skip_assignment, JoinGroup v9+).
                let resp = self
                    .join_response(&new_id, is_leader)
                    .with_skip_assignment(is_leader);
                JoinOutcome::Now(resp)
            }
            _ => {
                let params = JoinParams {
                    member_id: new_id,
                    ..p
                };
                self.update_member_and_rebalance(params, limits, now_ms)
            }
        }
    }

    // --- rebalance ---------------------------------------------------------------------

    fn maybe_prepare_rebalance(&mut self, limits: &Limits, now_ms: i64) {
        if matches!(
            self.state,
            GroupState::Stable | GroupState::CompletingRebalance | GroupState::Empty
        ) {
            self.prepare_rebalance(limits, now_ms);
        }
    }

    fn prepare_rebalance(&mut self, limits: &Limits, now_ms: i64) {
        if self.state == GroupState::CompletingRebalance {
            self.reset_assignments(ResponseError::RebalanceInProgress);
        }
        self.rebalance_deadline_ms = now_ms + self.max_rebalance_timeout_ms();
        self.initial_delay = (self.state == GroupState::Empty)
            .then_some((now_ms + limits.initial_rebalance_delay_ms, self.members.len()));
        self.set_state(GroupState::PreparingRebalance, now_ms);
    }

    /// Clears every assignment and answers parked SyncGroups with `code`.
    fn reset_assignments(&mut self, code: ResponseError) {
        for m in self.members.values_mut() {
            m.assignment = Bytes::new();
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(sync_error(code));
            }
        }
    }

    /// Every member has a live JoinGroup parked. A request its connection
    /// dropped does not count: that member is gone unless it joins again.
    fn all_joined(&self) -> bool {
        self.pending.is_empty() && self.members.values().all(|m| waiting(&m.join_waiter))
    }

    /// Completes the rebalance early once every member rejoined (not during
    /// the initial delay, which waits for more members on purpose).
    fn check_join_complete(&mut self, now_ms: i64) -> bool {
        if self.state == GroupState::PreparingRebalance && self.initial_delay.is_none() && self.all_joined() {
            self.complete_join(now_ms);
            return true;
        }
        false
    }

    /// Ids of the members matching `keep` (collected, so the caller can then
    /// remove them).
    fn member_ids_where(&self, keep: impl Fn(&Member) -> bool) -> Vec<String> {
        self.members
            .values()
            .filter(|m| keep(m))
            .map(|m| m.member_id.clone())
            .collect()
    }

    /// Ends PreparingRebalance: members that did not rejoin are removed, the
    /// generation advances, the leader gets everyone's metadata. Returns
    /// true when the group became Empty (its metadata must be persisted).
    fn complete_join(&mut self, now_ms: i64) -> bool {
        self.initial_delay = None;
        let gone: Vec<String> = self.member_ids_where(|m| !waiting(&m.join_waiter));
        for id in gone {
            self.remove_member(&id);
        }
        self.generation = self.generation.wrapping_add(1);
        if self.members.is_empty() {
            self.protocol = None;
            self.leader = None;
            self.set_state(GroupState::Empty, now_ms);
            return true;
        }
        self.protocol = self.select_protocol();
        // Kafka's pending-sync timeout: members get the rebalance timeout to
        // send SyncGroup (see `tick`).
        self.rebalance_deadline_ms = now_ms + self.max_rebalance_timeout_ms();
        self.set_state(GroupState::CompletingRebalance, now_ms);
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let is_leader = self.leader.as_deref() == Some(id.as_str());
            let resp = self.join_response(&id, is_leader);
            if let Some(m) = self.members.get_mut(&id) {
                m.is_new = false;
                m.heartbeat_deadline_ms = now_ms + i64::from(m.session_timeout_ms);
                if let Some(w) = m.join_waiter.take() {
                    let _ = w.send(resp);
                }
            }
        }
        false
    }

    fn remove_member(&mut self, member_id: &str) -> Option<Member> {
        let m = self.members.remove(member_id)?;
        if let Some(instance) = &m.group_instance_id {
            if self.static_members.get(instance).map(String::as_str) == Some(member_id) {
                self.static_members.remove(instance);
            }
        }
        if self.leader.as_deref() == Some(member_id) {
            self.leader = self
                .members
                .values()
                .min_by_key(|m| m.seq)
                .map(|m| m.member_id.clone());
        }
        Some(m)
    }

    /// A member left or timed out. Returns true when the group became Empty.
    fn remove_member_and_update(&mut self, member_id: &str, limits: &Limits, now_ms: i64) -> bool {
        if self.remove_member(member_id).is_none() {
            return false;
        }
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.prepare_rebalance(limits, now_ms);
                self.check_join_complete(now_ms) && self.state == GroupState::Empty
            }
            GroupState::PreparingRebalance => {
                self.check_join_complete(now_ms) && self.state == GroupState::Empty
            }
            GroupState::Empty | GroupState::Dead => false,
        }
    }

    /// Timers: session expiry, pending-member expiry, rebalance deadlines.
    /// Returns true when the group became Empty (persist its metadata).
    pub fn tick(&mut self, limits: &Limits, now_ms: i64) -> bool {
        if self.members.is_empty() && self.pending.is_empty() && self.state != GroupState::PreparingRebalance
        {
            return false;
        }
        self.pending.retain(|_, deadline| *deadline > now_ms);
        let mut became_empty = false;
        let expired: Vec<String> = self.member_ids_where(|m| {
            // A member parked in JoinGroup/SyncGroup is alive (Kafka's
            // shouldKeepAlive), unless its connection dropped the request.
            let parked = waiting(&m.join_waiter) || waiting(&m.sync_waiter);
            !parked && m.heartbeat_deadline_ms <= now_ms
        });
        for id in expired {
            tracing::info!(group = %self.id, member = %id, "member session expired; removing it");
            became_empty |= self.remove_member_and_update(&id, limits, now_ms);
        }
        if self.state == GroupState::PreparingRebalance {
            match self.initial_delay {
                Some((check_ms, seen)) if now_ms >= check_ms => {
                    // Kafka's InitialDelayedJoin: keep waiting while members
                    // keep arriving, up to the rebalance timeout; only a new
                    // group (generation 0) extends the delay (Kafka sets
                    // `newMemberAdded` only then), a reused one waits it once.
                    let remaining = self.rebalance_deadline_ms - now_ms;
                    if self.generation == 0 && self.members.len() > seen && remaining > 0 {
                        let next = now_ms + limits.initial_rebalance_delay_ms.min(remaining);
                        self.initial_delay = Some((next, self.members.len()));
                    } else {
                        became_empty |= self.complete_join(now_ms);
                    }
                }
                Some(_) => {}
                None => {
                    if self.all_joined() || now_ms >= self.rebalance_deadline_ms {
                        became_empty |= self.complete_join(now_ms);
                    }
                }
            }
        }
        if self.state == GroupState::CompletingRebalance && now_ms >= self.rebalance_deadline_ms {
            // A member (the leader above all) that joined but never sent
            // SyncGroup within the rebalance timeout would hold the group in
            // CompletingRebalance forever while it heartbeats: Kafka (3.2+)
            // removes such members and rebalances the rest.
            let unsynced: Vec<String> = self.member_ids_where(|m| !waiting(&m.sync_waiter));
            for id in unsynced {
                tracing::info!(group = %self.id, member = %id, "no SyncGroup within the rebalance timeout; removing the member");
                became_empty |= self.remove_member_and_update(&id, limits, now_ms);
            }
        }
        // New members that never rejoined expire after the join timeout.
        let stale: Vec<String> = self
            .member_ids_where(|m| m.is_new && !waiting(&m.join_waiter) && m.heartbeat_deadline_ms <= now_ms);
        for id in stale {
            became_empty |= self.remove_member_and_update(&id, limits, now_ms);
        }
        became_empty
    }

    // --- SyncGroup ---------------------------------------------------------------------

    pub fn sync(&mut self, p: SyncParams<'_>, now_ms: i64) -> SyncOutcome {
        let SyncParams {
            member_id,
            instance,
            generation,
            protocol_type,
            protocol_name,
            assignments,
        } = p;
        if self.state == GroupState::Dead {
            return SyncOutcome::Now(sync_error(ResponseError::CoordinatorNotAvailable));
        }
        if let Err(code) = self.validate_member(member_id, instance) {
            return SyncOutcome::Now(sync_error(code));
        }
        if generation != self.generation {
            return SyncOutcome::Now(sync_error(ResponseError::IllegalGeneration));
        }
        let type_mismatch = protocol_type.is_some_and(|t| self.protocol_type.as_deref() != Some(t));
        let name_mismatch = protocol_name.is_some_and(|n| self.protocol.as_deref() != Some(n));
        if type_mismatch || name_mismatch {
            return SyncOutcome::Now(sync_error(ResponseError::InconsistentGroupProtocol));
        }
        match self.state {
            GroupState::Empty | GroupState::Dead => {
                SyncOutcome::Now(sync_error(ResponseError::UnknownMemberId))
            }
            GroupState::PreparingRebalance => {
                SyncOutcome::Now(sync_error(ResponseError::RebalanceInProgress))
            }
            GroupState::Stable => match self.members.get(member_id) {
                Some(m) => SyncOutcome::Now(self.sync_response(m.assignment.clone())),
                None => SyncOutcome::Now(sync_error(ResponseError::UnknownMemberId)),
            },
            GroupState::CompletingRebalance => {
                let (tx, rx) = oneshot::channel();
                let is_leader = self.leader.as_deref() == Some(member_id);
                if let Some(m) = self.members.get_mut(member_id) {
                    m.sync_waiter = Some(tx);
                    m.heartbeat_deadline_ms = now_ms + i64::from(m.session_timeout_ms);
                }
                if !is_leader {
                    return SyncOutcome::Wait(rx);
                }
                let assignments: HashMap<String, Bytes> = assignments
                    .into_iter()
                    .filter(|(id, _)| self.members.contains_key(id))
                    .collect();
                SyncOutcome::Persist {
                    value: self.to_value(Some(&assignments), now_ms),
                    generation: self.generation,
                    assignments,
                    waiter: rx,
                }
            }
        }
    }

    fn sync_response(&self, assignment: Bytes) -> SyncGroupResponse {
        SyncGroupResponse::default()
            .with_error_code(0)
            .with_protocol_type(self.protocol_type.as_deref().map(str_bytes))
            .with_protocol_name(self.protocol.as_deref().map(str_bytes))
            .with_assignment(assignment)
    }

    /// After the leader's assignment was persisted (or failed to be).
    pub fn complete_sync(
        &mut self,
        generation: i32,
        assignments: HashMap<String, Bytes>,
        persisted: Result<(), ResponseError>,
        limits: &Limits,
        now_ms: i64,
    ) {
        if self.state != GroupState::CompletingRebalance || self.generation != generation {
            // The group moved on while the write was in flight; its waiters were answered.
            return;
        }
        if let Err(code) = persisted {
            self.reset_assignments(code);
            self.prepare_rebalance(limits, now_ms);
            return;
        }
        for (id, m) in self.members.iter_mut() {
            m.assignment = assignments.get(id).cloned().unwrap_or_default();
        }
        self.set_state(GroupState::Stable, now_ms);
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let Some(assignment) = self.members.get(&id).map(|m| m.assignment.clone()) else {
                continue;
            };
            let resp = self.sync_response(assignment);
            if let Some(w) = self.members.get_mut(&id).and_then(|m| m.sync_waiter.take()) {
                let _ = w.send(resp);
            }
        }
    }

    // --- Heartbeat / LeaveGroup -----------------------------------------------------------

    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance: Option<&str>,
        generation: i32,
        now_ms: i64,
    ) -> Option<ResponseError> {
        match self.state {
            GroupState::Dead => return Some(ResponseError::CoordinatorNotAvailable),
            GroupState::Empty => return Some(ResponseError::UnknownMemberId),
            _ => {}
        }
        if let Err(code) = self.validate_member(member_id, instance) {
            return Some(code);
        }
        if generation != self.generation {
            return Some(ResponseError::IllegalGeneration);
        }
        if let Some(m) = self.members.get_mut(member_id) {
            m.heartbeat_deadline_ms = now_ms + i64::from(m.session_timeout_ms);
        }
        match self.state {
            GroupState::PreparingRebalance => Some(ResponseError::RebalanceInProgress),
            _ => None,
        }
    }

    /// One member of a LeaveGroup. Returns (error, became_empty).
    pub fn leave(
        &mut self,
        member_id: &str,
        instance: Option<&str>,
        limits: &Limits,
        now_ms: i64,
    ) -> (Option<ResponseError>, bool) {
        if self.state == GroupState::Dead {
            return (Some(ResponseError::CoordinatorNotAvailable), false);
        }
        // KIP-345 batch leave names static members by instance id only.
        let member_id = match (member_id.is_empty(), instance) {
            (true, Some(instance)) => match self.static_members.get(instance) {
                Some(id) => id.clone(),
                None => return (Some(ResponseError::UnknownMemberId), false),
            },
            _ => member_id.to_string(),
        };
        if self.pending.remove(&member_id).is_some() {
            return (None, false);
        }
        if let Err(code) = self.validate_member(&member_id, instance) {
            return (Some(code), false);
        }
        (None, self.remove_member_and_update(&member_id, limits, now_ms))
    }

    // --- offsets -------------------------------------------------------------------------

    /// Kafka's validateOffsetCommit: who may commit in which state.
    pub fn validate_commit(
        &self,
        member_id: &str,
        instance: Option<&str>,
        generation: i32,
    ) -> Option<ResponseError> {
        if self.state == GroupState::Dead {
            return Some(ResponseError::CoordinatorNotAvailable);
        }
        if generation >= 0 || !member_id.is_empty() || instance.is_some() {
            if let Err(code) = self.validate_member(member_id, instance) {
                return Some(code);
            }
            if generation != self.generation {
                return Some(ResponseError::IllegalGeneration);
            }
            if self.state == GroupState::CompletingRebalance {
                return Some(ResponseError::RebalanceInProgress);
            }
        } else if self.state != GroupState::Empty {
            // Only members commit to a group that has members.
            return Some(ResponseError::UnknownMemberId);
        }
        None
    }

    /// Kafka's validation of a TxnOffsetCommit (classic group): a request
    /// naming a member or generation must match it; one naming none is
    /// accepted in any state. Never REBALANCE_IN_PROGRESS.
    pub fn validate_txn_commit(
        &self,
        member_id: &str,
        instance: Option<&str>,
        generation: i32,
    ) -> Option<ResponseError> {
        if self.state == GroupState::Dead {
            return Some(ResponseError::CoordinatorNotAvailable);
        }
        if generation >= 0 || !member_id.is_empty() || instance.is_some() {
            if let Err(code) = self.validate_member(member_id, instance) {
                return Some(code);
            }
            if generation != self.generation {
                return Some(ResponseError::IllegalGeneration);
            }
        }
        None
    }

    /// Topics the members of a `consumer` group subscribe to, from their
    /// subscription metadata (OffsetDelete refuses those).
    pub fn subscribed_topics(&self) -> Option<Vec<String>> {
        use kafka_protocol::messages::ConsumerProtocolSubscription;
        use kafka_protocol::protocol::Decodable;
        if self.protocol_type.as_deref() != Some("consumer") {
            return None;
        }
        let protocol = self.protocol.clone().unwrap_or_default();
        let mut topics = Vec::new();
        for m in self.members.values() {
            let mut buf = m.metadata(&protocol);
            if buf.len() < 2 {
                continue;
            }
            let version = i16::from_be_bytes([buf[0], buf[1]]);
            let _ = bytes::Buf::get_i16(&mut buf);
            let version = version.clamp(0, 3);
            if let Ok(sub) = ConsumerProtocolSubscription::decode(&mut buf, version) {
                topics.extend(sub.topics.iter().map(|t| t.to_string()));
            }
        }
        Some(topics)
    }

    /// The group's metadata record (`assignments` overrides the members' current ones).
    pub fn to_value(&self, assignments: Option<&HashMap<String, Bytes>>, now_ms: i64) -> GroupValue {
        let protocol = self.protocol.clone().unwrap_or_default();
        GroupValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader: self.leader.clone(),
            current_state_timestamp_ms: now_ms,
            members: self
                .members
                .values()
                .map(|m| MemberValue {
                    member_id: m.member_id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    subscription: m.metadata(&protocol),
                    assignment: assignments
                        .map(|a| a.get(&m.member_id).cloned().unwrap_or_default())
                        .unwrap_or_else(|| m.assignment.clone()),
                })
                .collect(),
        }
    }

    /// Drops every member and parked request (group deleted or shard stopping).
    pub fn kill(&mut self, now_ms: i64) {
        for m in self.members.values_mut() {
            if let Some(w) = m.join_waiter.take() {
                let _ = w.send(join_error(ResponseError::CoordinatorNotAvailable, &m.member_id));
            }
            if let Some(w) = m.sync_waiter.take() {
                let _ = w.send(sync_error(ResponseError::CoordinatorNotAvailable));
            }
        }
        self.members.clear();
        self.static_members.clear();
        self.pending.clear();
        self.set_state(GroupState::Dead, now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_size: 3,
        initial_rebalance_delay_ms: 100,
    };

    fn params(member_id: &str, instance: Option<&str>, protocols: &[&str]) -> JoinParams {
        JoinParams {
            member_id: member_id.into(),
            group_instance_id: instance.map(String::from),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 1_000,
            rebalance_timeout_ms: 5_000,
            protocol_type: "consumer".into(),
            protocols: protocols
                .iter()
                .map(|p| (p.to_string(), Bytes::from(format!("md-{p}"))))
                .collect(),
            require_known_member_id: true,
        }
    }

    fn sp<'a>(
        member_id: &'a str,
        instance: Option<&'a str>,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> SyncParams<'a> {
        SyncParams {
            member_id,
            instance,
            generation,
            protocol_type: None,
            protocol_name: None,
            assignments,
        }
    }

    fn now(outcome: JoinOutcome) -> JoinGroupResponse {
        match outcome {
            JoinOutcome::Now(r) => r,
            JoinOutcome::Wait(_) => panic!("expected an immediate answer"),
        }
    }

    fn wait(outcome: JoinOutcome) -> oneshot::Receiver<JoinGroupResponse> {
        match outcome {
            JoinOutcome::Wait(rx) => rx,
            JoinOutcome::Now(r) => panic!("expected to wait, got error {}", r.error_code),
        }
    }

    /// Joins `id` as a new member: MEMBER_ID_REQUIRED, then the real join.
    fn join_member(
        g: &mut Group,
        id: &str,
        protocols: &[&str],
        t: i64,
    ) -> oneshot::Receiver<JoinGroupResponse> {
        let first = now(g.join(params("", None, protocols), id.into(), &LIMITS, t));
        assert_eq!(first.error_code, ResponseError::MemberIdRequired.code());
        assert_eq!(first.member_id.as_str(), id);
        wait(g.join(params(id, None, protocols), "unused".into(), &LIMITS, t))
    }

    fn stable_group_of_two() -> Group {
        let mut g = Group::new("g".into(), 0);
        let mut a = join_member(&mut g, "a", &["range"], 0);
        let mut b = join_member(&mut g, "b", &["range"], 0);
        assert_eq!(g.state, GroupState::PreparingRebalance);
        // b arrived during the initial delay: it is extended once.
        assert!(!g.tick(&LIMITS, 100));
        assert_eq!(g.state, GroupState::PreparingRebalance);
        assert!(!g.tick(&LIMITS, 200));
        assert_eq!(g.state, GroupState::CompletingRebalance);
        let ja = a.try_recv().unwrap().unwrap();
        let jb = b.try_recv().unwrap().unwrap();
        assert_eq!((ja.generation_id, jb.generation_id), (1, 1));
        assert_eq!(ja.leader.as_str(), "a");
        assert_eq!(ja.members.len(), 2, "the leader gets every member");
        assert!(jb.members.is_empty());
        let SyncOutcome::Persist {
            generation,
            assignments,
            ..
        } = g.sync(
            sp(
                "a",
                None,
                1,
                vec![
                    ("a".into(), Bytes::from_static(b"A")),
                    ("b".into(), Bytes::from_static(b"B")),
                ],
            ),
            200,
        )
        else {
            panic!("leader sync persists")
        };
        g.complete_sync(generation, assignments, Ok(()), &LIMITS, 200);
        assert_eq!(g.state, GroupState::Stable);
        g
    }

    #[test]
    fn two_members_join_sync_and_become_stable() {
        let mut g = stable_group_of_two();
        match g.sync(sp("b", None, 1, vec![]), 100) {
            SyncOutcome::Now(r) => assert_eq!(&r.assignment[..], b"B"),
            _ => panic!("stable sync answers at once"),
        }
        assert_eq!(g.heartbeat("b", None, 1, 200), None);
        assert_eq!(
            g.heartbeat("b", None, 0, 200),
            Some(ResponseError::IllegalGeneration)
        );
        assert_eq!(
            g.heartbeat("zz", None, 1, 200),
            Some(ResponseError::UnknownMemberId)
        );
    }

    #[test]
    fn expired_member_triggers_rebalance_and_survivor_gets_next_generation() {
        let mut g = stable_group_of_two();
        assert_eq!(g.heartbeat("a", None, 1, 900), None);
        // b stops heartbeating: its session (1000 ms from 100) ends at 1100.
        assert!(!g.tick(&LIMITS, 1_200));
        assert_eq!(g.state, GroupState::PreparingRebalance);
        assert!(!g.members.contains_key("b"));
        assert_eq!(
            g.heartbeat("a", None, 1, 1_250),
            Some(ResponseError::RebalanceInProgress)
        );
        let mut rx = wait(g.join(params("a", None, &["range"]), "x".into(), &LIMITS, 1_300));
        let resp = rx.try_recv().unwrap().expect("completes once everyone rejoined");
        assert_eq!(resp.generation_id, 2);
        assert_eq!(g.state, GroupState::CompletingRebalance);
    }

    #[test]
    fn a_member_whose_parked_join_was_dropped_still_expires() {
        let mut g = stable_group_of_two();
        // b rejoins with new protocols (a rebalance), then its connection drops the request.
        drop(wait(g.join(
            params("b", None, &["range", "roundrobin"]),
            "x".into(),
            &LIMITS,
            900,
        )));
        assert_eq!(g.state, GroupState::PreparingRebalance);
        assert_eq!(
            g.heartbeat("a", None, 1, 1_000),
            Some(ResponseError::RebalanceInProgress)
        );
        let mut a = wait(g.join(params("a", None, &["range"]), "x".into(), &LIMITS, 1_000));
        // b's session (from the join response at 200) ended at 1200.
        g.tick(&LIMITS, 1_300);
        assert!(!g.members.contains_key("b"));
        let resp = a.try_recv().unwrap().expect("a alone completes the rebalance");
        assert_eq!((resp.generation_id, resp.members.len()), (2, 1));
    }

    #[test]
    fn inconsistent_protocols_and_stale_generations_are_refused() {
        let mut g = stable_group_of_two();
        let mut other = params("", None, &["roundrobin"]);
        other.require_known_member_id = false;
        assert_eq!(
            now(g.join(other, "c".into(), &LIMITS, 100)).error_code,
            ResponseError::InconsistentGroupProtocol.code()
        );
        let mut wrong_type = params("", None, &["range"]);
        wrong_type.protocol_type = "connect".into();
        assert_eq!(
            now(g.join(wrong_type, "c".into(), &LIMITS, 100)).error_code,
            ResponseError::InconsistentGroupProtocol.code()
        );
        assert_eq!(
            g.validate_commit("a", None, 0),
            Some(ResponseError::IllegalGeneration)
        );
        assert_eq!(
            g.validate_commit("nobody", None, 1),
            Some(ResponseError::UnknownMemberId)
        );
        assert_eq!(
            g.validate_commit("", None, -1),
            Some(ResponseError::UnknownMemberId)
        );
        assert_eq!(g.validate_commit("a", None, 1), None);
        assert!(matches!(
            g.sync(sp("nobody", None, 1, vec![]), 100),
            SyncOutcome::Now(r) if r.error_code == ResponseError::UnknownMemberId.code()
        ));
        assert_eq!(g.state, GroupState::Stable, "bad requests leave the group alone");
    }

    #[test]
    fn group_max_size_counts_pending_members() {
        let mut g = stable_group_of_two();
        let first = now(g.join(params("", None, &["range"]), "c".into(), &LIMITS, 100));
        assert_eq!(first.error_code, ResponseError::MemberIdRequired.code());
        let full = now(g.join(params("", None, &["range"]), "d".into(), &LIMITS, 100));
        assert_eq!(full.error_code, ResponseError::GroupMaxSizeReached.code());
    }

    #[test]
    fn static_member_rejoining_in_stable_keeps_generation_and_assignment() {
        let mut g = Group::new("g".into(), 0);
        let mut rx = wait(g.join(params("", Some("i1"), &["range"]), "s1".into(), &LIMITS, 0));
        g.tick(&LIMITS, 100);
        let resp = rx.try_recv().unwrap().unwrap();
        assert_eq!(resp.generation_id, 1);
        let SyncOutcome::Persist {
            generation,
            assignments,
            ..
        } = g.sync(
            sp("s1", Some("i1"), 1, vec![("s1".into(), Bytes::from_static(b"A"))]),
            100,
        )
        else {
            panic!("leader sync persists")
        };
        g.complete_sync(generation, assignments, Ok(()), &LIMITS, 100);
        // Restart: same instance id, no member id.
        let again = now(g.join(params("", Some("i1"), &["range"]), "s2".into(), &LIMITS, 200));
        assert_eq!(again.error_code, 0);
        assert_eq!(again.generation_id, 1, "no rebalance");
        assert_eq!(again.member_id.as_str(), "s2");
        assert_eq!(g.state, GroupState::Stable);
        assert_eq!(
            g.heartbeat("s1", Some("i1"), 1, 300),
            Some(ResponseError::FencedInstanceId)
        );
        assert_eq!(g.heartbeat("s2", Some("i1"), 1, 300), None);
        match g.sync(sp("s2", Some("i1"), 1, vec![]), 300) {
            SyncOutcome::Now(r) => assert_eq!(&r.assignment[..], b"A"),
            _ => panic!("stable sync"),
        }
    }

    #[test]
    fn last_member_leaving_empties_the_group() {
        let mut g = stable_group_of_two();
        assert_eq!(g.leave("a", None, &LIMITS, 200), (None, false));
        assert_eq!(g.leader.as_deref(), Some("b"));
        assert_eq!(g.leave("b", None, &LIMITS, 200), (None, true));
        assert_eq!(g.state, GroupState::Empty);
        assert_eq!(g.generation, 2);
        assert_eq!(
            g.leave("b", None, &LIMITS, 200).0,
            Some(ResponseError::UnknownMemberId)
        );
        assert_eq!(g.validate_commit("", None, -1), None);
    }

    #[test]
    fn a_reused_empty_group_waits_the_initial_delay_once() {
        let mut g = stable_group_of_two();
        g.leave("a", None, &LIMITS, 200);
        g.leave("b", None, &LIMITS, 200);
        assert_eq!(g.state, GroupState::Empty);
        let mut c = join_member(&mut g, "c", &["range"], 1_000);
        let mut d = join_member(&mut g, "d", &["range"], 1_000);
        // d arrived during the delay, but the group is not new (generation
        // 2): Kafka extends the delay only for generation 0.
        assert!(!g.tick(&LIMITS, 1_100));
        assert_eq!(g.state, GroupState::CompletingRebalance);
        let (jc, jd) = (c.try_recv().unwrap().unwrap(), d.try_recv().unwrap().unwrap());
        assert_eq!((jc.generation_id, jd.generation_id), (3, 3));
    }

    #[test]
    fn a_leader_that_never_syncs_is_removed_after_the_rebalance_timeout() {
        let mut g = Group::new("g".into(), 0);
        let _a = join_member(&mut g, "a", &["range"], 0);
        let _b = join_member(&mut g, "b", &["range"], 0);
        assert!(!g.tick(&LIMITS, 100));
        assert!(!g.tick(&LIMITS, 200));
        assert_eq!(g.state, GroupState::CompletingRebalance);
        assert_eq!(g.leader.as_deref(), Some("a"));
        // The follower syncs; the leader only heartbeats.
        let SyncOutcome::Wait(mut b_sync) = g.sync(sp("b", None, 1, vec![]), 300) else {
            panic!("a follower waits for the leader's assignment")
        };
        for t in (1_000..5_200).step_by(500) {
            assert_eq!(g.heartbeat("a", None, 1, t), None);
            g.tick(&LIMITS, t);
        }
        // Past the 5 s rebalance timeout: the leader is gone, the follower's
        // parked SyncGroup is told to rejoin.
        assert!(!g.tick(&LIMITS, 5_300));
        assert!(!g.members.contains_key("a"));
        assert_eq!(g.state, GroupState::PreparingRebalance);
        let answer = b_sync.try_recv().unwrap().unwrap();
        assert_eq!(answer.error_code, ResponseError::RebalanceInProgress.code());
    }

    #[test]
    fn most_voted_common_protocol_is_selected() {
        let mut g = Group::new("g".into(), 0);
        let _a = join_member(&mut g, "a", &["roundrobin", "range"], 0);
        let _b = join_member(&mut g, "b", &["range", "roundrobin"], 0);
        let _c = join_member(&mut g, "c", &["range"], 0);
        g.tick(&LIMITS, 100);
        g.tick(&LIMITS, 200);
        assert_eq!(g.protocol.as_deref(), Some("range"));
    }
}
