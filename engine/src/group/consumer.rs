//! Kafka's consumer group protocol (KIP-848, `group.protocol=consumer`):
//! the coordinator assigns partitions itself and hands each member its
//! share through ConsumerGroupHeartbeat, incrementally: a partition moves to
//! a new owner only once its old owner reported that it gave it up.
//!
//! Three epochs, as in Kafka: the group epoch goes up with every change of
//! membership, subscriptions or subscribed topics' partition counts; the
//! target assignment is recomputed when its epoch is behind the group's; a
//! member's epoch reaches the target's once it has revoked everything it
//! must give up. Pure logic with the clock passed in, unit-tested without
//! an executor (`KIP848.md` is the research it follows).
//!
//! Not persisted (Kafka writes ConsumerGroup* records): after a coordinator
//! move or restart the members' heartbeats get UNKNOWN_MEMBER_ID and they
//! join again with epoch 0; their committed offsets are ordinary offset
//! records and survive.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::ResponseError;
use uuid::Uuid;

/// topic id -> partitions.
pub type Assignment = BTreeMap<Uuid, BTreeSet<i32>>;

/// The server-side assignors Kafka 4.0 ships; the first is the default.
pub const ASSIGNORS: [&str; 2] = ["uniform", "range"];

/// A member's epoch in a request: join, leave, static leave.
pub const JOIN_EPOCH: i32 = 0;
pub const LEAVE_EPOCH: i32 = -1;
pub const STATIC_LEAVE_EPOCH: i32 = -2;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerMember {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub member_epoch: i32,
    pub previous_member_epoch: i32,
    pub rebalance_timeout_ms: i32,
    pub subscribed_topic_names: Vec<String>,
    pub server_assignor: Option<String>,
    /// What the member may own now.
    pub assigned: Assignment,
    /// Given up in the last answer, not yet confirmed by the member; and
    /// since when (for the rebalance timeout).
    pub revoking: Assignment,
    pub revoking_since_ms: i64,
    /// The assignment last sent, to send only changes.
    last_sent: Option<Assignment>,
    pub last_heartbeat_ms: i64,
}

/// One ConsumerGroupHeartbeat, decoded.
pub struct HeartbeatParams {
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub rebalance_timeout_ms: i32,
    pub subscribed_topic_names: Option<Vec<String>>,
    pub server_assignor: Option<String>,
    /// The partitions the member owns, when it says (None: unchanged).
    pub owned: Option<Assignment>,
    pub client_id: String,
    pub client_host: String,
}

#[derive(Debug, PartialEq, Eq)]
pub struct HeartbeatOutcome {
    pub error: Option<ResponseError>,
    pub member_id: String,
    pub member_epoch: i32,
    /// The member's full assignment when it changed (None: unchanged).
    pub assignment: Option<Assignment>,
}

impl HeartbeatOutcome {
    fn error(member_id: &str, member_epoch: i32, e: ResponseError) -> Self {
        HeartbeatOutcome {
            error: Some(e),
            member_id: member_id.to_string(),
            member_epoch,
            assignment: None,
        }
    }
}

/// topic name -> (id, partition count): the topics that exist now.
pub type TopicsView = BTreeMap<String, (Uuid, i32)>;

#[derive(Clone, Debug, Default)]
pub struct ConsumerGroup {
    pub group_epoch: i32,
    pub assignment_epoch: i32,
    pub members: BTreeMap<String, ConsumerMember>,
    target: BTreeMap<String, Assignment>,
    /// The subscribed topics (name -> id, partitions) the target was computed for.
    subscribed: TopicsView,
}

fn count(a: &Assignment) -> usize {
    a.values().map(|p| p.len()).sum()
}

fn minus(a: &Assignment, b: &Assignment) -> Assignment {
    let mut out = Assignment::new();
    for (topic, parts) in a {
        let left: BTreeSet<i32> = parts
            .iter()
            .filter(|p| !b.get(topic).is_some_and(|o| o.contains(p)))
            .copied()
            .collect();
        if !left.is_empty() {
            out.insert(*topic, left);
        }
    }
    out
}

fn intersect(a: &Assignment, b: &Assignment) -> Assignment {
    let mut out = Assignment::new();
    for (topic, parts) in a {
        if let Some(other) = b.get(topic) {
            let both: BTreeSet<i32> = parts.intersection(other).copied().collect();
            if !both.is_empty() {
                out.insert(*topic, both);
            }
        }
    }
    out
}

fn holds(a: &Assignment, topic: &Uuid, partition: i32) -> bool {
    a.get(topic).is_some_and(|p| p.contains(&partition))
}

impl ConsumerGroup {
    /// Kafka's state names (ConsumerGroupDescribe, ListGroups).
    pub fn state_name(&self) -> &'static str {
        if self.members.is_empty() {
            "Empty"
        } else if self.assignment_epoch < self.group_epoch {
            "Assigning"
        } else if self
            .members
            .values()
            .any(|m| m.member_epoch != self.assignment_epoch || !m.revoking.is_empty())
        {
            "Reconciling"
        } else {
            "Stable"
        }
    }

    pub fn target_of(&self, member_id: &str) -> Assignment {
        self.target.get(member_id).cloned().unwrap_or_default()
    }

    /// The group's assignor: the one members ask for (the first member's,
    /// by id), else `uniform`.
    pub fn assignor(&self) -> &str {
        self.members
            .values()
            .find_map(|m| m.server_assignor.as_deref())
            .unwrap_or(ASSIGNORS[0])
    }

    /// One ConsumerGroupHeartbeat. `new_member_id` names a member that
    /// joins without an id (ConsumerGroupHeartbeat v0).
    pub fn heartbeat(
        &mut self,
        p: HeartbeatParams,
        topics: &TopicsView,
        max_members: usize,
        new_member_id: String,
        now_ms: i64,
    ) -> HeartbeatOutcome {
        if let Some(assignor) = &p.server_assignor {
            if !ASSIGNORS.contains(&assignor.as_str()) {
                return HeartbeatOutcome::error(
                    &p.member_id,
                    p.member_epoch,
                    ResponseError::UnsupportedAssignor,
                );
            }
        }
        let member_id = match p.member_epoch {
            JOIN_EPOCH => {
                let Some(subscribed) = p.subscribed_topic_names.clone() else {
                    return HeartbeatOutcome::error(
                        &p.member_id,
                        p.member_epoch,
                        ResponseError::InvalidRequest,
                    );
                };
                let id = if p.member_id.is_empty() {
                    new_member_id
                } else {
                    p.member_id.clone()
                };
                if !self.members.contains_key(&id) && self.members.len() >= max_members {
                    return HeartbeatOutcome::error(&id, p.member_epoch, ResponseError::GroupMaxSizeReached);
                }
                // A member that joins again starts from nothing: what it had
                // is free for the others.
                self.members.insert(
                    id.clone(),
                    ConsumerMember {
                        member_id: id.clone(),
                        instance_id: p.instance_id.clone(),
                        rack_id: p.rack_id.clone(),
                        client_id: p.client_id.clone(),
                        client_host: p.client_host.clone(),
                        member_epoch: 0,
                        previous_member_epoch: -1,
                        rebalance_timeout_ms: p.rebalance_timeout_ms,
                        subscribed_topic_names: subscribed,
                        server_assignor: p.server_assignor.clone(),
                        assigned: Assignment::new(),
                        revoking: Assignment::new(),
                        revoking_since_ms: now_ms,
                        last_sent: None,
                        last_heartbeat_ms: now_ms,
                    },
                );
                self.group_epoch += 1;
                id
            }
            LEAVE_EPOCH | STATIC_LEAVE_EPOCH => {
                if self.members.remove(&p.member_id).is_none() {
                    return HeartbeatOutcome::error(
                        &p.member_id,
                        p.member_epoch,
                        ResponseError::UnknownMemberId,
                    );
                }
                self.target.remove(&p.member_id);
                self.group_epoch += 1;
                return HeartbeatOutcome {
                    error: None,
                    member_id: p.member_id,
                    member_epoch: p.member_epoch,
                    assignment: None,
                };
            }
            epoch => {
                let Some(m) = self.members.get_mut(&p.member_id) else {
                    return HeartbeatOutcome::error(&p.member_id, epoch, ResponseError::UnknownMemberId);
                };
                // Kafka: a newer epoch than the member's, or an older one
                // other than its previous (with nothing owned beyond what it
                // was given), means the client lost track: it must rejoin.
                let stale_ok = epoch == m.previous_member_epoch
                    && p.owned.as_ref().is_some_and(|o| minus(o, &m.assigned).is_empty());
                if epoch > m.member_epoch || (epoch < m.member_epoch && !stale_ok) {
                    return HeartbeatOutcome::error(&p.member_id, epoch, ResponseError::FencedMemberEpoch);
                }
                m.last_heartbeat_ms = now_ms;
                m.rebalance_timeout_ms = p.rebalance_timeout_ms.max(0);
                if let Some(subscribed) = &p.subscribed_topic_names {
                    if *subscribed != m.subscribed_topic_names {
                        m.subscribed_topic_names = subscribed.clone();
                        self.group_epoch += 1;
                    }
                }
                if p.server_assignor.is_some() && p.server_assignor != m.server_assignor {
                    m.server_assignor = p.server_assignor.clone();
                    self.group_epoch += 1;
                }
                p.member_id.clone()
            }
        };
        self.refresh_target(topics);
        // Kafka sends the assignment on a full request (a join, or one
        // carrying the subscription and what the member owns) and whenever
        // it changed; librdkafka ignores one equal to what it has.
        let full = p.member_epoch == JOIN_EPOCH || (p.subscribed_topic_names.is_some() && p.owned.is_some());
        if full {
            if let Some(m) = self.members.get_mut(&member_id) {
                m.last_sent = None;
            }
        }
        let assignment = self.reconcile(&member_id, p.owned.as_ref(), now_ms);
        let m = &self.members[&member_id];
        HeartbeatOutcome {
            error: None,
            member_id,
            member_epoch: m.member_epoch,
            assignment,
        }
    }

    /// Recomputes the target assignment if the group moved on, or if a
    /// subscribed topic was created, deleted or grew.
    fn refresh_target(&mut self, topics: &TopicsView) {
        let wanted: BTreeSet<&String> = self
            .members
            .values()
            .flat_map(|m| m.subscribed_topic_names.iter())
            .collect();
        let subscribed: TopicsView = wanted
            .into_iter()
            .filter_map(|t| topics.get(t).map(|v| (t.clone(), *v)))
            .collect();
        if subscribed != self.subscribed {
            self.subscribed = subscribed;
            self.group_epoch += 1;
        }
        if self.assignment_epoch >= self.group_epoch {
            return;
        }
        self.target = match self.assignor() {
            "range" => assign_range(&self.members, &self.subscribed),
            _ => assign_uniform(&self.members, &self.subscribed, &self.target),
        };
        self.assignment_epoch = self.group_epoch;
    }

    /// Moves `member_id` toward its target (Kafka's CurrentAssignmentBuilder):
    /// first it revokes what it must give up, and keeps its epoch until it
    /// reports that done; then it takes the target's partitions no other
    /// member still holds, and its epoch becomes the target's. Returns the
    /// assignment to send when it changed.
    fn reconcile(&mut self, member_id: &str, owned: Option<&Assignment>, now_ms: i64) -> Option<Assignment> {
        let target = self.target_of(member_id);
        let assignment_epoch = self.assignment_epoch;
        // What every other member holds or is still giving up.
        let mut held_by_others = Assignment::new();
        for (id, m) in &self.members {
            if id != member_id {
                for (t, parts) in m.assigned.iter().chain(m.revoking.iter()) {
                    held_by_others
                        .entry(*t)
                        .or_default()
                        .extend(parts.iter().copied());
                }
            }
        }
        let m = self.members.get_mut(member_id).expect("reconciled members exist");
        if !m.revoking.is_empty() {
            // Done once the member no longer reports any revoked partition.
            let released = owned.is_some_and(|o| intersect(o, &m.revoking).is_empty());
            if released {
                m.revoking.clear();
            }
        }
        if m.revoking.is_empty() {
            let to_revoke = minus(&m.assigned, &target);
            if !to_revoke.is_empty() {
                m.assigned = intersect(&m.assigned, &target);
                m.revoking = to_revoke;
                m.revoking_since_ms = now_ms;
            } else {
                for (topic, parts) in &target {
                    for p in parts {
                        if !holds(&held_by_others, topic, *p) {
                            m.assigned.entry(*topic).or_default().insert(*p);
                        }
                    }
                }
                if m.member_epoch != assignment_epoch {
                    m.previous_member_epoch = m.member_epoch;
                    m.member_epoch = assignment_epoch;
                }
            }
        }
        if m.last_sent.as_ref() != Some(&m.assigned) {
            m.last_sent = Some(m.assigned.clone());
            return Some(m.assigned.clone());
        }
        None
    }

    /// Members silent for their session, or holding revoked partitions
    /// past their rebalance timeout, are removed (Kafka fences them).
    /// Returns the ids removed.
    pub fn expire(&mut self, session_timeout_ms: i64, now_ms: i64) -> Vec<String> {
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| {
                now_ms - m.last_heartbeat_ms > session_timeout_ms
                    || (!m.revoking.is_empty()
                        && now_ms - m.revoking_since_ms > i64::from(m.rebalance_timeout_ms))
            })
            .map(|m| m.member_id.clone())
            .collect();
        for id in &gone {
            self.members.remove(id);
            self.target.remove(id);
        }
        if !gone.is_empty() {
            self.group_epoch += 1;
        }
        gone
    }

    /// OffsetCommit for this group (Kafka 4.0's validateOffsetCommit): a
    /// member's epoch must be its current one, else STALE_MEMBER_EPOCH (the
    /// client heartbeats and retries); a commit naming no member (epoch < 0)
    /// is an admin's and only allowed while the group is empty.
    pub fn validate_commit(&self, member_id: &str, epoch: i32) -> Option<ResponseError> {
        if epoch < 0 && member_id.is_empty() {
            return (!self.members.is_empty()).then_some(ResponseError::UnknownMemberId);
        }
        let Some(m) = self.members.get(member_id) else {
            return Some(ResponseError::UnknownMemberId);
        };
        (epoch != m.member_epoch).then_some(ResponseError::StaleMemberEpoch)
    }
}

/// Every (topic id, partition) of the topics `member` subscribes to.
fn subscribed_partitions<'a>(
    m: &'a ConsumerMember,
    topics: &'a TopicsView,
) -> impl Iterator<Item = (Uuid, i32)> + 'a {
    m.subscribed_topic_names
        .iter()
        .filter_map(|t| topics.get(t))
        .flat_map(|(id, n)| (0..*n).map(move |p| (*id, p)))
}

/// Kafka's `uniform` assignor, sticky: every member gets an equal share
/// (±1) of the partitions it subscribes to, keeping what its previous
/// target gave it where the share allows.
fn assign_uniform(
    members: &BTreeMap<String, ConsumerMember>,
    topics: &TopicsView,
    previous: &BTreeMap<String, Assignment>,
) -> BTreeMap<String, Assignment> {
    let mut out: BTreeMap<String, Assignment> =
        members.keys().map(|id| (id.clone(), Assignment::new())).collect();
    let all: BTreeSet<(Uuid, i32)> = members
        .values()
        .flat_map(|m| subscribed_partitions(m, topics))
        .collect();
    if members.is_empty() || all.is_empty() {
        return out;
    }
    let quota_low = all.len() / members.len();
    let extra = all.len() % members.len();
    // The first `extra` members (by id) may hold one more.
    let quota: BTreeMap<&String, usize> = members
        .keys()
        .enumerate()
        .map(|(i, id)| (id, quota_low + usize::from(i < extra)))
        .collect();
    let mut taken: BTreeSet<(Uuid, i32)> = BTreeSet::new();
    for (id, m) in members {
        let may: BTreeSet<(Uuid, i32)> = subscribed_partitions(m, topics).collect();
        let mine = out.get_mut(id).expect("every member has an entry");
        let mut kept = 0;
        for (topic, parts) in previous.get(id).into_iter().flatten() {
            for p in parts {
                let key = (*topic, *p);
                if kept < quota[id] && may.contains(&key) && taken.insert(key) {
                    mine.entry(*topic).or_default().insert(*p);
                    kept += 1;
                }
            }
        }
    }
    for key in all.iter().filter(|k| !taken.contains(k)) {
        // The subscribed member with the fewest, below its quota first.
        let pick = members
            .iter()
            .filter(|(_, m)| subscribed_partitions(m, topics).any(|k| k == *key))
            .min_by_key(|(id, _)| {
                let n = count(&out[*id]);
                (n >= quota[id], n, (*id).clone())
            })
            .map(|(id, _)| id.clone());
        if let Some(id) = pick {
            out.get_mut(&id)
                .expect("every member has an entry")
                .entry(key.0)
                .or_default()
                .insert(key.1);
        }
    }
    out
}

/// Kafka's `range` assignor: per topic, its subscribers in member-id order
/// take consecutive ranges, the first ones one partition more.
fn assign_range(
    members: &BTreeMap<String, ConsumerMember>,
    topics: &TopicsView,
) -> BTreeMap<String, Assignment> {
    let mut out: BTreeMap<String, Assignment> =
        members.keys().map(|id| (id.clone(), Assignment::new())).collect();
    for (name, (topic_id, n)) in topics {
        let subscribers: Vec<&String> = members
            .iter()
            .filter(|(_, m)| m.subscribed_topic_names.contains(name))
            .map(|(id, _)| id)
            .collect();
        if subscribers.is_empty() {
            continue;
        }
        let n = *n as usize;
        let per = n / subscribers.len();
        let extra = n % subscribers.len();
        let mut next = 0usize;
        for (i, id) in subscribers.into_iter().enumerate() {
            let take = per + usize::from(i < extra);
            if take > 0 {
                out.get_mut(id)
                    .expect("every member has an entry")
                    .entry(*topic_id)
                    .or_default()
                    .extend((next..next + take).map(|p| p as i32));
            }
            next += take;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> TopicsView {
        let mut t = TopicsView::new();
        t.insert("t".into(), (Uuid::from_u128(1), 6));
        t
    }

    fn join(g: &mut ConsumerGroup, id: &str, assignor: Option<&str>, now: i64) -> HeartbeatOutcome {
        g.heartbeat(
            params(id, 0, Some(vec!["t".into()]), assignor, None),
            &topics(),
            100,
            id.into(),
            now,
        )
    }

    fn params(
        id: &str,
        epoch: i32,
        subscribed: Option<Vec<String>>,
        assignor: Option<&str>,
        owned: Option<Assignment>,
    ) -> HeartbeatParams {
        HeartbeatParams {
            member_id: id.into(),
            member_epoch: epoch,
            instance_id: None,
            rack_id: None,
            rebalance_timeout_ms: 30_000,
            subscribed_topic_names: subscribed,
            server_assignor: assignor.map(String::from),
            owned,
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
        }
    }

    fn beat(g: &mut ConsumerGroup, id: &str, owned: &Assignment, now: i64) -> HeartbeatOutcome {
        let epoch = g.members[id].member_epoch;
        g.heartbeat(
            params(id, epoch, None, None, Some(owned.clone())),
            &topics(),
            100,
            String::new(),
            now,
        )
    }

    /// Heartbeats every member until nothing changes; returns what each owns.
    fn settle(g: &mut ConsumerGroup, owned: &mut BTreeMap<String, Assignment>, now: i64) {
        for _ in 0..10 {
            let ids: Vec<String> = g.members.keys().cloned().collect();
            for id in ids {
                let mine = owned.entry(id.clone()).or_default().clone();
                let out = beat(g, &id, &mine, now);
                assert_eq!(out.error, None);
                if let Some(a) = out.assignment {
                    owned.insert(id, a);
                }
            }
        }
    }

    fn no_partition_twice(owned: &BTreeMap<String, Assignment>) -> usize {
        let mut seen = BTreeSet::new();
        for a in owned.values() {
            for (t, parts) in a {
                for p in parts {
                    assert!(seen.insert((*t, *p)), "partition {p} owned twice");
                }
            }
        }
        seen.len()
    }

    #[test]
    fn a_member_alone_gets_everything_and_the_target_epoch() {
        let mut g = ConsumerGroup::default();
        let out = join(&mut g, "a", None, 0);
        assert_eq!(out.error, None);
        assert_eq!(out.member_epoch, g.assignment_epoch);
        assert_eq!(g.assignment_epoch, g.group_epoch);
        assert_eq!(count(&out.assignment.unwrap()), 6);
        assert_eq!(g.state_name(), "Stable");
    }

    #[test]
    fn partitions_move_only_after_the_old_owner_revokes_them() {
        let mut g = ConsumerGroup::default();
        let mut owned = BTreeMap::new();
        owned.insert("a".to_string(), join(&mut g, "a", None, 0).assignment.unwrap());
        // b joins: a must give up three before b gets them.
        let b = join(&mut g, "b", None, 1);
        assert_eq!(count(b.assignment.as_ref().unwrap()), 0, "nothing free yet");
        owned.insert("b".into(), b.assignment.unwrap());
        assert_eq!(g.state_name(), "Reconciling");
        // a's next heartbeat revokes; its epoch stays until it reports it.
        let a_epoch = g.members["a"].member_epoch;
        let a = beat(&mut g, "a", &owned["a"].clone(), 2);
        assert_eq!(count(a.assignment.as_ref().unwrap()), 3);
        assert_eq!(a.member_epoch, a_epoch);
        owned.insert("a".into(), a.assignment.unwrap());
        settle(&mut g, &mut owned, 3);
        assert_eq!(no_partition_twice(&owned), 6);
        assert_eq!(count(&owned["a"]), 3);
        assert_eq!(count(&owned["b"]), 3);
        assert_eq!(g.state_name(), "Stable");
        assert!(g.members.values().all(|m| m.member_epoch == g.assignment_epoch));
    }

    #[test]
    fn three_members_then_one_leaves_and_one_is_lost() {
        let mut g = ConsumerGroup::default();
        let mut owned = BTreeMap::new();
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            owned.insert(
                id.to_string(),
                join(&mut g, id, None, i as i64).assignment.unwrap(),
            );
            settle(&mut g, &mut owned, i as i64);
        }
        assert_eq!(no_partition_twice(&owned), 6);
        assert!(owned.values().all(|a| count(a) == 2));
        // c leaves: its two go to a and b at once (nobody holds them).
        let out = g.heartbeat(
            params("c", LEAVE_EPOCH, None, None, None),
            &topics(),
            100,
            String::new(),
            10,
        );
        assert_eq!((out.error, out.member_epoch), (None, LEAVE_EPOCH));
        owned.remove("c");
        settle(&mut g, &mut owned, 11);
        assert_eq!(no_partition_twice(&owned), 6);
        // b goes silent past the session timeout.
        g.members.get_mut("a").unwrap().last_heartbeat_ms = 50_000;
        assert_eq!(g.expire(45_000, 50_001), vec!["b".to_string()]);
        owned.remove("b");
        settle(&mut g, &mut owned, 50_002);
        assert_eq!(count(&owned["a"]), 6);
    }

    #[test]
    fn stale_and_future_epochs_are_fenced_and_unknown_members_told() {
        let mut g = ConsumerGroup::default();
        join(&mut g, "a", None, 0);
        let epoch = g.members["a"].member_epoch;
        let ahead = g.heartbeat(
            params("a", epoch + 5, None, None, None),
            &topics(),
            100,
            String::new(),
            1,
        );
        assert_eq!(ahead.error, Some(ResponseError::FencedMemberEpoch));
        let nobody = g.heartbeat(
            params("zz", 3, None, None, None),
            &topics(),
            100,
            String::new(),
            1,
        );
        assert_eq!(nobody.error, Some(ResponseError::UnknownMemberId));
        assert_eq!(g.validate_commit("a", epoch), None);
        assert_eq!(
            g.validate_commit("a", epoch - 1),
            Some(ResponseError::StaleMemberEpoch)
        );
        assert_eq!(
            g.validate_commit("a", epoch + 1),
            Some(ResponseError::StaleMemberEpoch)
        );
        assert_eq!(g.validate_commit("", -1), Some(ResponseError::UnknownMemberId));
    }

    #[test]
    fn range_gives_consecutive_partitions_and_bad_assignors_are_refused() {
        let mut g = ConsumerGroup::default();
        let mut owned = BTreeMap::new();
        owned.insert(
            "a".to_string(),
            join(&mut g, "a", Some("range"), 0).assignment.unwrap(),
        );
        owned.insert(
            "b".to_string(),
            join(&mut g, "b", Some("range"), 1).assignment.unwrap(),
        );
        settle(&mut g, &mut owned, 2);
        let id = Uuid::from_u128(1);
        assert_eq!(owned["a"][&id], BTreeSet::from([0, 1, 2]));
        assert_eq!(owned["b"][&id], BTreeSet::from([3, 4, 5]));
        let bad = g.heartbeat(
            params("c", 0, Some(vec!["t".into()]), Some("sticky"), None),
            &topics(),
            100,
            "c".into(),
            3,
        );
        assert_eq!(bad.error, Some(ResponseError::UnsupportedAssignor));
    }

    #[test]
    fn more_partitions_bump_the_group_epoch_and_reach_the_members() {
        let mut g = ConsumerGroup::default();
        let mut owned = BTreeMap::new();
        owned.insert("a".to_string(), join(&mut g, "a", None, 0).assignment.unwrap());
        let before = g.group_epoch;
        let mut grown = topics();
        grown.insert("t".into(), (Uuid::from_u128(1), 8));
        let epoch = g.members["a"].member_epoch;
        let out = g.heartbeat(
            params("a", epoch, None, None, Some(owned["a"].clone())),
            &grown,
            100,
            String::new(),
            1,
        );
        assert_eq!(g.group_epoch, before + 1);
        assert_eq!(count(&out.assignment.unwrap()), 8);
    }
}
