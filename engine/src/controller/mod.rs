//! Cluster metadata: topics, their ids, partition→shard placement and topic
//! configs, as one immutable `MetadataImage`.
//!
//! Shard 0 is the single writer: every change (create/delete topics, add
//! partitions) runs there under one lock, is persisted to
//! `<data>/shardlog-metadata.json` (write, fsync, rename), and then reaches
//! every shard as an ordered `ShardOp::Apply` carrying the new image. Every
//! shard keeps a full copy of the latest image (`Arc`, read-only) so routing
//! never crosses a shard. A later issue replaces the file with a raft log.

pub mod metadata_log;
pub mod placement;
pub mod quorum;
pub mod records;
pub mod transport;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use kafka_protocol::ResponseError;

use crate::config::{topic, BrokerConfig};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A Kafka error code with the message sent to the client.
pub type Refusal = (ResponseError, String);

pub const METADATA_FILE: &str = "shardlog-metadata.json";
/// The internal topic holding consumer-group metadata and committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Kafka's `offsets.topic.segment.bytes` default.
pub const OFFSETS_TOPIC_SEGMENT_BYTES: u64 = 104_857_600;
/// The internal topic holding the transaction coordinator's state.
pub const TRANSACTION_STATE_TOPIC: &str = "__transaction_state";
/// Kafka's `transaction.state.log.segment.bytes` default.
pub const TRANSACTION_STATE_SEGMENT_BYTES: u64 = 104_857_600;
pub const TOPIC_NAME_MAX_CHARS: usize = 249;

/// One partition's place in the cluster. (Which core of its node holds
/// it is that node's own business: `placement::Placement`.)
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PartitionMeta {
    /// Broker ids holding a replica; the first is the preferred leader.
    #[serde(default)]
    pub replicas: Vec<i32>,
    /// The in-sync replicas: the leader and the followers caught up with
    /// it. Never empty once set: when the last member is fenced it stays,
    /// so a clean election can wait for it (empty in images of releases
    /// that had no ISR: read as all replicas).
    #[serde(default)]
    pub isr: Vec<i32>,
    /// The broker leading it, or -1 while none can (its broker is fenced).
    #[serde(default = "no_leader")]
    pub leader: i32,
    pub leader_epoch: i32,
    /// Bumped by every change to the partition (leader or ISR), as Kafka's
    /// partition epoch; an AlterPartition made from an older one is refused.
    #[serde(default)]
    pub partition_epoch: i32,
    /// A reassignment in progress (KIP-455): replicas being added (still
    /// catching up; already in `replicas`) and replicas to drop once every
    /// added one is in sync.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub adding_replicas: Vec<i32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removing_replicas: Vec<i32>,
}

impl PartitionMeta {
    /// A new partition on `replicas`, led by the first, all in sync.
    pub fn new(replicas: Vec<i32>) -> PartitionMeta {
        PartitionMeta {
            leader: replicas.first().copied().unwrap_or(NO_LEADER),
            isr: replicas.clone(),
            replicas,
            leader_epoch: 0,
            partition_epoch: 0,
            adding_replicas: Vec::new(),
            removing_replicas: Vec::new(),
        }
    }

    /// The ISR, as images without one mean it: every replica.
    pub fn in_sync(&self) -> &[i32] {
        if self.isr.is_empty() {
            &self.replicas
        } else {
            &self.isr
        }
    }

    /// The replicas a reassignment in progress ends with.
    pub fn target_replicas(&self) -> Vec<i32> {
        self.replicas
            .iter()
            .copied()
            .filter(|r| !self.removing_replicas.contains(r))
            .collect()
    }

    /// Ends a reassignment whose added replicas are all in sync: the
    /// removed ones leave the replicas and the ISR, and leadership moves to
    /// an in-sync target replica if the leader was removed. Returns whether
    /// it completed.
    fn complete_reassignment(&mut self, live: &std::collections::HashSet<i32>) -> bool {
        if self.adding_replicas.is_empty() && self.removing_replicas.is_empty() {
            return false;
        }
        if !self.adding_replicas.iter().all(|r| self.in_sync().contains(r)) {
            return false;
        }
        let target = self.target_replicas();
        if !self.in_sync().iter().any(|r| target.contains(r)) {
            return false;
        }
        self.settle_replicas(target, live);
        true
    }

    /// Puts the partition on `replicas` (ending or cancelling a
    /// reassignment): the ISR keeps its members among them (at least one,
    /// checked by the callers), leadership moves to a live one of those if
    /// the leader is not among them.
    fn settle_replicas(&mut self, replicas: Vec<i32>, live: &std::collections::HashSet<i32>) {
        let isr: Vec<i32> = self
            .in_sync()
            .iter()
            .copied()
            .filter(|r| replicas.contains(r))
            .collect();
        debug_assert!(!isr.is_empty(), "a partition keeps an in-sync replica");
        if !replicas.contains(&self.leader) {
            let next = isr
                .iter()
                .copied()
                .find(|r| live.contains(r))
                .unwrap_or(NO_LEADER);
            self.set_leader(next);
        }
        self.replicas = replicas;
        self.isr = isr;
        self.adding_replicas.clear();
        self.removing_replicas.clear();
    }

    fn set_leader(&mut self, leader: i32) {
        if leader != self.leader {
            self.leader = leader;
            self.leader_epoch += 1;
        }
    }
}

fn no_leader() -> i32 {
    NO_LEADER
}

/// Kafka's "no leader" broker id.
pub const NO_LEADER: i32 = -1;
/// The topic config (and broker default) that allows an unclean election.
pub const UNCLEAN_LEADER_ELECTION: &str = "unclean.leader.election.enable";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TopicMeta {
    pub name: String,
    pub id: Uuid,
    pub partitions: Vec<PartitionMeta>,
    /// Topic-level overrides (`retention.ms`, ...), validated on the way in.
    pub configs: BTreeMap<String, String>,
}

/// A registered broker, as the controller knows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BrokerMeta {
    pub id: i32,
    /// Changes at every start of the broker's process, so the controller
    /// tells a restart from a heartbeat.
    pub incarnation: Uuid,
    /// The advertised PLAINTEXT listener.
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
    /// Partitions it takes: its shards x `shard.partitions.max`.
    pub partitions_max: usize,
    /// Missed `broker.session.timeout.ms`: it leads nothing until it returns.
    pub fenced: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct MetadataImage {
    /// Increases with every change; shards assert they never apply an older image.
    pub epoch: u64,
    /// The metadata-log index of the last record in this image (0: none yet).
    #[serde(default)]
    pub offset: u64,
    pub cluster_id: String,
    #[serde(default)]
    pub brokers: BTreeMap<i32, BrokerMeta>,
    pub topics: BTreeMap<String, TopicMeta>,
    /// Producer ids below this were handed out in blocks and are never
    /// given out again, across restarts and nodes.
    #[serde(default)]
    pub producer_ids_reserved: i64,
    #[serde(skip)]
    ids: HashMap<Uuid, String>,
}

impl MetadataImage {
    pub fn new(cluster_id: String) -> Self {
        MetadataImage {
            cluster_id,
            ..Default::default()
        }
    }

    pub(crate) fn reindex(&mut self) {
        self.ids = self.topics.values().map(|t| (t.id, t.name.clone())).collect();
    }

    pub fn topic(&self, name: &str) -> Option<&TopicMeta> {
        self.topics.get(name)
    }

    pub fn topic_by_id(&self, id: &Uuid) -> Option<&TopicMeta> {
        self.ids.get(id).and_then(|n| self.topics.get(n))
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Option<&PartitionMeta> {
        let t = self.topics.get(topic)?;
        t.partitions.get(usize::try_from(partition).ok()?)
    }

    /// Brokers that may lead partitions now, by id.
    pub fn live_brokers(&self) -> Vec<&BrokerMeta> {
        self.brokers.values().filter(|b| !b.fenced).collect()
    }

    /// Partitions each broker holds (`internal`: also the broker's own topics).
    fn load_per_broker(&self, internal: bool) -> BTreeMap<i32, usize> {
        let mut load: BTreeMap<i32, usize> = self.brokers.keys().map(|id| (*id, 0)).collect();
        for t in self.topics.values().filter(|t| internal || !is_internal(&t.name)) {
            for p in &t.partitions {
                for r in &p.replicas {
                    *load.entry(*r).or_default() += 1;
                }
            }
        }
        load
    }

    /// Places `count` new partitions of one topic (`rf` replicas each) over
    /// the live brokers: round-robin, starting at the least-loaded, so a
    /// topic spreads evenly (12 over 3 brokers: 4 each) and topics even out
    /// the brokers between them. Refuses a factor above the live brokers and
    /// partitions past a broker's budget (its shards x `shard.partitions.max`).
    pub fn place(&self, count: usize, rf: i16) -> Result<Vec<PartitionMeta>, Refusal> {
        let load = self.load_per_broker(true);
        let mut live = self.live_brokers();
        if rf as usize > live.len() || live.is_empty() {
            return Err((
                ResponseError::InvalidReplicationFactor,
                format!(
                    "Unable to replicate the partition {rf} time(s): The target replication factor of {rf} cannot be reached because only {} broker(s) are registered.",
                    live.len()
                ),
            ));
        }
        live.sort_by_key(|b| (load.get(&b.id).copied().unwrap_or(0), b.id));
        let placed: Vec<PartitionMeta> = (0..count)
            .map(|i| PartitionMeta::new((0..rf as usize).map(|r| live[(i + r) % live.len()].id).collect()))
            .collect();
        // Internal topics are the broker's own and sized by its config, so
        // they do not count against the budget clients' topics share.
        let mut budget_load = self.load_per_broker(false);
        for p in &placed {
            for r in &p.replicas {
                *budget_load.entry(*r).or_default() += 1;
            }
        }
        for b in &live {
            let after = budget_load.get(&b.id).copied().unwrap_or(0);
            if after > b.partitions_max {
                return Err((
                    ResponseError::PolicyViolation,
                    format!(
                        "{count} more partitions exceed broker {}'s budget: {} partitions (its shards x shard.partitions.max), {} already placed",
                        b.id,
                        b.partitions_max,
                        after - placed.iter().filter(|p| p.replicas.contains(&b.id)).count()
                    ),
                ));
            }
        }
        Ok(placed)
    }

    /// The image with `__consumer_offsets` added (`partitions` partitions,
    /// compacted, never deleted by time or size), or None when it exists or
    /// no broker can take it yet.
    pub fn with_offsets_topic(&self, partitions: i32, rf: i16) -> Option<MetadataImage> {
        // Kafka's internal topic is compacted, never deleted by time or size,
        // and rolls at `offsets.topic.segment.bytes` (100 MiB), so the
        // cleaner gets sealed segments to compact long before 1 GiB.
        self.with_internal_topic(OFFSETS_TOPIC, partitions, rf, OFFSETS_TOPIC_SEGMENT_BYTES, &[])
    }

    /// `__transaction_state` as Kafka creates it: compacted, uncompressed
    /// (the coordinator reads its own records back in place), never
    /// elected uncleanly (a coordinator that lost a PrepareCommit would
    /// forget a decision it already gave), and `min.insync.replicas` from
    /// `transaction.state.log.min.isr`.
    pub fn with_transaction_state_topic(
        &self,
        partitions: i32,
        rf: i16,
        min_isr: usize,
    ) -> Option<MetadataImage> {
        let min_isr = min_isr.to_string();
        self.with_internal_topic(
            TRANSACTION_STATE_TOPIC,
            partitions,
            rf,
            TRANSACTION_STATE_SEGMENT_BYTES,
            &[
                ("compression.type", "uncompressed"),
                ("unclean.leader.election.enable", "false"),
                ("min.insync.replicas", &min_isr),
            ],
        )
    }

    fn with_internal_topic(
        &self,
        name: &str,
        partitions: i32,
        rf: i16,
        segment_bytes: u64,
        extra: &[(&str, &str)],
    ) -> Option<MetadataImage> {
        if self.topics.contains_key(name) {
            return None;
        }
        let mut configs = BTreeMap::new();
        configs.insert("cleanup.policy".to_string(), "compact".to_string());
        configs.insert("retention.ms".to_string(), "-1".to_string());
        configs.insert("retention.bytes".to_string(), "-1".to_string());
        configs.insert("segment.bytes".to_string(), segment_bytes.to_string());
        for (k, v) in extra {
            configs.insert(k.to_string(), v.to_string());
        }
        let partitions = self.place(partitions.max(1) as usize, rf).ok()?;
        Some(self.with_topic(TopicMeta {
            name: name.to_string(),
            id: Uuid::new_v4(),
            partitions,
            configs,
        }))
    }

    pub fn with_topic(&self, topic: TopicMeta) -> MetadataImage {
        let mut next = self.clone();
        next.epoch += 1;
        next.topics.insert(topic.name.clone(), topic);
        next.reindex();
        next
    }

    pub fn with_broker(&self, broker: BrokerMeta) -> MetadataImage {
        let mut next = self.clone();
        next.epoch += 1;
        next.brokers.insert(broker.id, broker);
        next
    }

    /// Reserves the next block of `count` producer ids; returns its first id.
    pub fn with_producer_ids_reserved(&self, count: i64) -> (MetadataImage, i64) {
        let mut next = self.clone();
        next.epoch += 1;
        let first = next.producer_ids_reserved;
        next.producer_ids_reserved += count;
        (next, first)
    }

    pub fn without_topic(&self, name: &str) -> MetadataImage {
        let mut next = self.clone();
        next.epoch += 1;
        next.topics.remove(name);
        next.reindex();
        next
    }

    /// Leadership and ISRs after broker `id` is fenced (`fenced`) or
    /// returns, as Kafka's controller does:
    /// - fenced: it leaves every ISR it is in, unless it is the last member
    ///   (then it stays, so a clean election can wait for it); partitions it
    ///   led get the first live ISR member as leader, or, with none and
    ///   `unclean.leader.election.enable` (the topic's, else `unclean_default`),
    ///   the first live replica, whose log becomes the truth (ISR = it); or
    ///   no leader.
    /// - back: partitions without a leader whose ISR holds it are led by it
    ///   again. (A follower rejoins the ISR when its leader says it caught
    ///   up: `with_isr`.)
    ///
    /// Every leader change bumps the leader epoch, every change the partition epoch.
    pub fn with_broker_fenced(&self, id: i32, fenced: bool, unclean_default: bool) -> MetadataImage {
        let mut next = self.clone();
        next.epoch += 1;
        if let Some(b) = next.brokers.get_mut(&id) {
            b.fenced = fenced;
        }
        let live: std::collections::HashSet<i32> = next.live_brokers().iter().map(|b| b.id).collect();
        for t in next.topics.values_mut() {
            let unclean = t
                .configs
                .get(UNCLEAN_LEADER_ELECTION)
                .map_or(unclean_default, |v| v.trim() == "true");
            for (index, p) in t.partitions.iter_mut().enumerate() {
                if !p.replicas.contains(&id) {
                    continue;
                }
                let before = p.clone();
                if p.isr.is_empty() {
                    p.isr = p.replicas.clone();
                }
                if fenced && p.isr.contains(&id) && p.isr.len() > 1 {
                    p.isr.retain(|r| *r != id);
                }
                if !live.contains(&p.leader) {
                    let clean = p.isr.iter().copied().find(|r| live.contains(r));
                    match clean {
                        Some(leader) => p.set_leader(leader),
                        None if unclean => match p.replicas.iter().copied().find(|r| live.contains(r)) {
                            Some(leader) => {
                                tracing::warn!(
                                    partition = %format!("{}-{index}", t.name),
                                    "unclean leader election: broker {leader} leads without being in sync (ISR was {:?}); records only the old ISR had are lost",
                                    p.isr
                                );
                                p.set_leader(leader);
                                p.isr = vec![leader];
                            }
                            None => p.set_leader(NO_LEADER),
                        },
                        None => p.set_leader(NO_LEADER),
                    }
                }
                if *p != before {
                    p.partition_epoch += 1;
                }
            }
        }
        next
    }

    /// ElectLeaders (KIP-460): for each listed partition (None: every
    /// partition where an election would change something), the preferred
    /// replica (the first) when it is live and in sync, or (`unclean`) a
    /// leader for a partition that has none: a live ISR member first, else
    /// any live replica, whose log becomes the truth. Answers per partition
    /// as Kafka does: ELECTION_NOT_NEEDED, PREFERRED_LEADER_NOT_AVAILABLE,
    /// ELIGIBLE_LEADERS_NOT_AVAILABLE, UNKNOWN_TOPIC_OR_PARTITION.
    pub fn with_elected_leaders(
        &self,
        unclean: bool,
        partitions: Option<&[(String, i32)]>,
    ) -> (MetadataImage, Vec<(String, i32, Option<Refusal>)>) {
        let mut next = self.clone();
        let live: std::collections::HashSet<i32> = self.live_brokers().iter().map(|b| b.id).collect();
        let wanted: Vec<(String, i32)> = match partitions {
            Some(list) => list.to_vec(),
            None => self
                .topics
                .values()
                .flat_map(|t| (0..t.partitions.len() as i32).map(move |i| (t.name.clone(), i)))
                .collect(),
        };
        let mut results = Vec::new();
        for (topic, index) in wanted {
            let Some(p) = next
                .topics
                .get_mut(&topic)
                .and_then(|t| t.partitions.get_mut(usize::try_from(index).unwrap_or(usize::MAX)))
            else {
                results.push((
                    topic,
                    index,
                    Some((
                        ResponseError::UnknownTopicOrPartition,
                        "This server does not host this topic-partition.".to_string(),
                    )),
                ));
                continue;
            };
            let outcome = if !unclean {
                let preferred = p.replicas.first().copied().unwrap_or(NO_LEADER);
                if p.leader == preferred {
                    Err((
                        ResponseError::ElectionNotNeeded,
                        "Leader election not needed for topic partition.".to_string(),
                    ))
                } else if !live.contains(&preferred) || !p.in_sync().contains(&preferred) {
                    Err((
                        ResponseError::PreferredLeaderNotAvailable,
                        format!(
                            "Failed to elect leader: preferred replica {preferred} is not live and in sync"
                        ),
                    ))
                } else {
                    Ok((preferred, None))
                }
            } else if live.contains(&p.leader) {
                Err((
                    ResponseError::ElectionNotNeeded,
                    "Leader election not needed for topic partition.".to_string(),
                ))
            } else if let Some(r) = p.in_sync().iter().copied().find(|r| live.contains(r)) {
                Ok((r, None))
            } else if let Some(r) = p.replicas.iter().copied().find(|r| live.contains(r)) {
                Ok((r, Some(vec![r])))
            } else {
                Err((
                    ResponseError::EligibleLeadersNotAvailable,
                    "Failed to elect leader: no replica is live".to_string(),
                ))
            };
            match outcome {
                Ok((leader, isr)) => {
                    if let Some(isr) = isr {
                        tracing::warn!(
                            "unclean leader election of {topic}-{index}: broker {leader} leads without being in sync (ISR was {:?})",
                            p.in_sync()
                        );
                        p.isr = isr;
                    }
                    p.set_leader(leader);
                    p.partition_epoch += 1;
                    results.push((topic, index, None));
                }
                // An election over everything answers only what it elected.
                Err(_) if partitions.is_none() => {}
                Err(refusal) => results.push((topic, index, Some(refusal))),
            }
        }
        if results.iter().any(|(_, _, r)| r.is_none()) {
            next.epoch += 1;
            (next, results)
        } else {
            (self.clone(), results)
        }
    }

    /// Partitions whose preferred replica is live, in sync and not leading
    /// (what `auto.leader.rebalance.enable` moves back), and the share of
    /// each broker's preferred partitions it does not lead, in percent.
    pub fn leader_imbalance(&self) -> (Vec<(String, i32)>, BTreeMap<i32, u32>) {
        let live: std::collections::HashSet<i32> = self.live_brokers().iter().map(|b| b.id).collect();
        let mut movable = Vec::new();
        let mut preferred_count: BTreeMap<i32, (u32, u32)> = BTreeMap::new();
        for t in self.topics.values() {
            for (i, p) in t.partitions.iter().enumerate() {
                let Some(&preferred) = p.replicas.first() else {
                    continue;
                };
                let entry = preferred_count.entry(preferred).or_default();
                entry.0 += 1;
                if p.leader != preferred {
                    entry.1 += 1;
                    if live.contains(&preferred) && p.in_sync().contains(&preferred) {
                        movable.push((t.name.clone(), i as i32));
                    }
                }
            }
        }
        let ratios = preferred_count
            .into_iter()
            .map(|(b, (total, not_led))| (b, not_led * 100 / total.max(1)))
            .collect();
        (movable, ratios)
    }

    /// AlterPartition: the leader of `topic_id`/`partition` (at
    /// `leader_epoch`, `partition_epoch`) reports a new ISR. Refused as
    /// Kafka refuses it: a stale epoch (FENCED_LEADER_EPOCH /
    /// INVALID_UPDATE_VERSION), a sender that does not lead
    /// (NOT_LEADER_OR_FOLLOWER), an ISR without the leader, with a
    /// non-replica or with a fenced broker (INVALID_REQUEST /
    /// INELIGIBLE_REPLICA).
    pub fn with_isr(
        &self,
        topic_id: &Uuid,
        partition: i32,
        leader: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        isr: Vec<i32>,
    ) -> Result<MetadataImage, Refusal> {
        let mut next = self.clone();
        next.apply_isr(&IsrChange {
            topic_id: *topic_id,
            partition,
            leader,
            leader_epoch,
            partition_epoch,
            isr,
        })?;
        next.epoch += 1;
        Ok(next)
    }

    /// `with_isr` in place, for a batch of changes in one image (Kafka's
    /// AlterPartition request carries many partitions): a refused change
    /// leaves the image as it was.
    pub fn apply_isr(&mut self, change: &IsrChange) -> Result<(), Refusal> {
        let IsrChange {
            ref topic_id,
            partition,
            leader,
            leader_epoch,
            partition_epoch,
            ref isr,
        } = *change;
        let name = self.topic_by_id(topic_id).map(|t| t.name.clone()).ok_or((
            ResponseError::UnknownTopicId,
            format!("no topic with id {topic_id}"),
        ))?;
        let p = self.partition(&name, partition).ok_or((
            ResponseError::UnknownTopicOrPartition,
            format!("no partition {name}-{partition}"),
        ))?;
        if leader != p.leader {
            return Err((
                ResponseError::NotLeaderOrFollower,
                format!(
                    "broker {leader} does not lead {name}-{partition} (broker {} does)",
                    p.leader
                ),
            ));
        }
        if leader_epoch != p.leader_epoch {
            return Err((
                ResponseError::FencedLeaderEpoch,
                format!("leader epoch {leader_epoch}, current {}", p.leader_epoch),
            ));
        }
        if partition_epoch != p.partition_epoch {
            return Err((
                ResponseError::InvalidUpdateVersion,
                format!("partition epoch {partition_epoch}, current {}", p.partition_epoch),
            ));
        }
        if !isr.contains(&leader) || isr.iter().any(|r| !p.replicas.contains(r)) {
            return Err((
                ResponseError::InvalidRequest,
                format!(
                    "ISR {isr:?} must hold the leader {leader} and only replicas {:?}",
                    p.replicas
                ),
            ));
        }
        if let Some(r) = isr
            .iter()
            .find(|r| !p.in_sync().contains(r) && self.brokers.get(r).is_none_or(|b| b.fenced))
        {
            return Err((
                ResponseError::IneligibleReplica,
                format!("broker {r} is fenced and cannot join the ISR"),
            ));
        }
        let live: std::collections::HashSet<i32> = self.live_brokers().iter().map(|b| b.id).collect();
        let t = self.topics.get_mut(&name).expect("checked above");
        let p = &mut t.partitions[partition as usize];
        p.isr = isr.clone();
        if p.complete_reassignment(&live) {
            tracing::info!(
                "reassignment of {name}-{partition} complete: replicas {:?}, leader {}",
                p.replicas,
                p.leader
            );
        }
        p.partition_epoch += 1;
        Ok(())
    }

    /// AlterPartitionReassignments (KIP-455) for one partition: `target`
    /// replicas (None cancels the one in progress). The new replicas join
    /// `replicas` now and catch up as followers; the old ones leave once
    /// every new one is in the ISR (`with_isr`), so the partition never has
    /// fewer in-sync copies than before.
    pub fn with_reassignment(
        &self,
        topic: &str,
        partition: i32,
        target: Option<Vec<i32>>,
    ) -> Result<MetadataImage, Refusal> {
        let live: std::collections::HashSet<i32> = self.live_brokers().iter().map(|b| b.id).collect();
        let mut next = self.clone();
        let p = next
            .topics
            .get_mut(topic)
            .and_then(|t| {
                t.partitions
                    .get_mut(usize::try_from(partition).unwrap_or(usize::MAX))
            })
            .ok_or((
                ResponseError::UnknownTopicOrPartition,
                format!("no partition {topic}-{partition}"),
            ))?;
        match target {
            None => {
                if p.adding_replicas.is_empty() && p.removing_replicas.is_empty() {
                    return Err((
                        ResponseError::NoReassignmentInProgress,
                        format!("no reassignment of {topic}-{partition} is in progress"),
                    ));
                }
                // Back to the replicas before it: the added ones leave.
                let original: Vec<i32> = p
                    .replicas
                    .iter()
                    .copied()
                    .filter(|r| !p.adding_replicas.contains(r))
                    .collect();
                if !p.in_sync().iter().any(|r| original.contains(r)) {
                    return Err((
                        ResponseError::InvalidReplicaAssignment,
                        format!("cancelling would leave {topic}-{partition} no in-sync replica"),
                    ));
                }
                p.settle_replicas(original, &live);
            }
            Some(target) => {
                if target.is_empty() || target.iter().enumerate().any(|(i, r)| target[..i].contains(r)) {
                    return Err((
                        ResponseError::InvalidReplicaAssignment,
                        format!("replicas {target:?} must be distinct and not empty"),
                    ));
                }
                if let Some(r) = target.iter().find(|r| !self.brokers.contains_key(r)) {
                    return Err((
                        ResponseError::InvalidReplicaAssignment,
                        format!("broker {r} is not registered"),
                    ));
                }
                // A new target replaces one in progress, from the original replicas.
                let current: Vec<i32> = p
                    .replicas
                    .iter()
                    .copied()
                    .filter(|r| !p.adding_replicas.contains(r) || target.contains(r))
                    .collect();
                if current == target {
                    p.adding_replicas.clear();
                    p.removing_replicas.clear();
                } else {
                    p.adding_replicas = target.iter().copied().filter(|r| !current.contains(r)).collect();
                    p.removing_replicas = current.iter().copied().filter(|r| !target.contains(r)).collect();
                    let mut replicas = target.clone();
                    replicas.extend(p.removing_replicas.iter().copied());
                    p.replicas = replicas;
                    p.isr.retain(|r| p.replicas.contains(r));
                    p.complete_reassignment(&live);
                }
            }
        }
        p.partition_epoch += 1;
        next.epoch += 1;
        Ok(next)
    }

    /// Reads the single-node metadata file of earlier releases (None when
    /// there is none). Its partitions all live on `node_id`, which leads them.
    pub fn load_legacy(data_dir: &Path, node_id: i32) -> std::io::Result<Option<MetadataImage>> {
        let path = data_dir.join(METADATA_FILE);
        let mut image = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<MetadataImage>(&bytes).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{path:?}: {e}"))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        for t in image.topics.values_mut() {
            for p in &mut t.partitions {
                if p.replicas.is_empty() {
                    p.replicas = vec![node_id];
                    p.isr = vec![node_id];
                    p.leader = node_id;
                }
            }
        }
        image.reindex();
        Ok(Some(image))
    }
}

/// What a shard routes by: the cluster image and where this node keeps its
/// replicas. Shipped as one `Arc` to every shard with each change.
#[derive(Clone, Debug, Default)]
pub struct NodeView {
    pub node_id: i32,
    /// The active controller's node id as this node last heard (-1: none).
    pub controller_id: i32,
    /// This broker lost its session with the controllers: it leads nothing.
    pub fenced: bool,
    pub image: Arc<MetadataImage>,
    pub placement: placement::Placement,
}

impl NodeView {
    /// The shard of this node that leads `topic`/`partition`: Kafka's
    /// UNKNOWN_TOPIC_OR_PARTITION when it does not exist, and
    /// NOT_LEADER_OR_FOLLOWER when another node (or none) leads it.
    pub fn owner(&self, topic: &str, partition: i32) -> Result<usize, ResponseError> {
        let t = self
            .image
            .topic(topic)
            .ok_or(ResponseError::UnknownTopicOrPartition)?;
        let p = usize::try_from(partition)
            .ok()
            .and_then(|i| t.partitions.get(i))
            .ok_or(ResponseError::UnknownTopicOrPartition)?;
        if p.leader != self.node_id || self.fenced {
            return Err(ResponseError::NotLeaderOrFollower);
        }
        self.placement
            .shard(&t.id, partition)
            .ok_or(ResponseError::NotLeaderOrFollower)
    }

    /// The shard holding this node's replica of `topic`/`partition`, led here or not.
    pub fn replica_shard(&self, topic: &str, partition: i32) -> Option<usize> {
        let t = self.image.topic(topic)?;
        self.placement.shard(&t.id, partition)
    }
}

/// One partition's ISR as its leader reports it (an AlterPartition item).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IsrChange {
    pub topic_id: Uuid,
    pub partition: i32,
    pub leader: i32,
    pub leader_epoch: i32,
    pub partition_epoch: i32,
    pub isr: Vec<i32>,
}

/// A CreateTopics entry, already decoded from the wire.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NewTopic {
    pub name: String,
    /// -1: `num.partitions`.
    pub num_partitions: i32,
    /// -1: `default.replication.factor`.
    pub replication_factor: i16,
    /// Manual replica assignment: partition -> broker ids.
    pub assignments: Vec<Vec<i32>>,
    pub configs: Vec<(String, Option<String>)>,
}

/// The answer for one topic of a create/delete/create-partitions request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TopicOutcome {
    pub name: String,
    #[serde(with = "wire_refusal")]
    pub error: Option<Refusal>,
    pub topic_id: Uuid,
    pub num_partitions: i32,
    pub replication_factor: i16,
    pub configs: BTreeMap<String, String>,
}

impl TopicOutcome {
    pub fn refused(name: String, (code, message): Refusal) -> Self {
        TopicOutcome::err(name, code, message)
    }

    fn err(name: String, code: ResponseError, message: impl Into<String>) -> Self {
        TopicOutcome {
            name,
            error: Some((code, message.into())),
            topic_id: Uuid::nil(),
            num_partitions: -1,
            replication_factor: -1,
            configs: BTreeMap::new(),
        }
    }
}

fn check_new_topic(
    image: &MetadataImage,
    t: &NewTopic,
    config: &BrokerConfig,
) -> Result<(i32, i16, BTreeMap<String, String>), Refusal> {
    validate_topic_name(&t.name)?;
    if image.topics.contains_key(&t.name) {
        return Err((
            ResponseError::TopicAlreadyExists,
            format!("Topic '{}' already exists.", t.name),
        ));
    }
    let (partitions, rf) = if t.assignments.is_empty() {
        let partitions = if t.num_partitions == -1 {
            config.num_partitions
        } else {
            t.num_partitions
        };
        let rf = if t.replication_factor == -1 {
            config.default_replication_factor
        } else {
            t.replication_factor
        };
        (partitions, rf)
    } else {
        if t.num_partitions != -1 || t.replication_factor != -1 {
            return Err((
                ResponseError::InvalidRequest,
                "Both numPartitions or replicationFactor and replicasAssignments were set.".into(),
            ));
        }
        let rf = t.assignments.first().map_or(0, |r| r.len());
        for replicas in &t.assignments {
            if replicas.len() != rf || replicas.is_empty() {
                return Err((
                    ResponseError::InvalidReplicaAssignment,
                    "All partitions should have the same number of replicas.".into(),
                ));
            }
            for (i, r) in replicas.iter().enumerate() {
                if replicas[..i].contains(r) {
                    return Err((
                        ResponseError::InvalidReplicaAssignment,
                        format!("Duplicate broker {r} in a replica assignment."),
                    ));
                }
                if image.brokers.get(r).is_none_or(|b| b.fenced) {
                    return Err((
                        ResponseError::InvalidReplicaAssignment,
                        format!("Broker {r} is not a live broker of this cluster."),
                    ));
                }
            }
        }
        (t.assignments.len() as i32, rf as i16)
    };
    if partitions <= 0 {
        return Err((
            ResponseError::InvalidPartitions,
            "Number of partitions must be larger than 0.".into(),
        ));
    }
    if rf <= 0 {
        return Err((
            ResponseError::InvalidReplicationFactor,
            "Replication factor must be larger than 0.".into(),
        ));
    }
    let mut configs = BTreeMap::new();
    for (key, value) in &t.configs {
        let Some(value) = value else { continue };
        if topic::ignored(key) {
            continue;
        }
        topic::validate(key, value).map_err(|m| (ResponseError::InvalidConfig, m))?;
        configs.insert(key.clone(), value.trim().to_string());
    }
    Ok((partitions, rf, configs))
}

/// Plans CreateTopics: the next image and one outcome per requested topic.
pub fn create_topics(
    image: &MetadataImage,
    topics: Vec<NewTopic>,
    config: &BrokerConfig,
) -> (MetadataImage, Vec<TopicOutcome>) {
    let mut next = image.clone();
    let mut outcomes = Vec::with_capacity(topics.len());
    let mut seen = std::collections::HashSet::new();
    for t in topics {
        if !seen.insert(t.name.clone()) {
            outcomes.push(TopicOutcome::err(
                t.name,
                ResponseError::InvalidRequest,
                "Duplicate topic name in request.",
            ));
            continue;
        }
        let checked = check_new_topic(&next, &t, config).and_then(|(partitions, rf, configs)| {
            let placed = if t.assignments.is_empty() {
                next.place(partitions as usize, rf)?
            } else {
                t.assignments
                    .iter()
                    .map(|replicas| PartitionMeta::new(replicas.clone()))
                    .collect()
            };
            Ok((placed, rf, configs))
        });
        match checked {
            Err((code, message)) => outcomes.push(TopicOutcome::err(t.name, code, message)),
            Ok((placed, rf, configs)) => {
                let meta = TopicMeta {
                    name: t.name.clone(),
                    id: Uuid::new_v4(),
                    partitions: placed,
                    configs: configs.clone(),
                };
                outcomes.push(TopicOutcome {
                    name: t.name,
                    error: None,
                    topic_id: meta.id,
                    num_partitions: meta.partitions.len() as i32,
                    replication_factor: rf,
                    configs,
                });
                next = next.with_topic(meta);
            }
        }
    }
    (next, outcomes)
}

pub fn delete_topics(image: &MetadataImage, names: Vec<String>) -> (MetadataImage, Vec<TopicOutcome>) {
    let mut next = image.clone();
    let mut outcomes = Vec::with_capacity(names.len());
    for name in names {
        match next.topics.get(&name) {
            Some(meta) => {
                let mut o = TopicOutcome::err(name.clone(), ResponseError::UnknownServerError, "");
                o.error = None;
                o.topic_id = meta.id;
                outcomes.push(o);
                next = next.without_topic(&name);
            }
            None => outcomes.push(TopicOutcome::err(
                name,
                ResponseError::UnknownTopicOrPartition,
                "This server does not host this topic-partition.",
            )),
        }
    }
    (next, outcomes)
}

/// CreatePartitions: `count` is the new total, which must exceed the current one.
pub fn create_partitions(
    image: &MetadataImage,
    topics: Vec<(String, i32)>,
) -> (MetadataImage, Vec<TopicOutcome>) {
    let mut next = image.clone();
    let mut outcomes = Vec::with_capacity(topics.len());
    for (name, count) in topics {
        let Some(meta) = next.topics.get(&name).cloned() else {
            outcomes.push(TopicOutcome::err(
                name,
                ResponseError::UnknownTopicOrPartition,
                "This server does not host this topic-partition.",
            ));
            continue;
        };
        let current = meta.partitions.len() as i32;
        if count <= current {
            let message = if count == current {
                format!("Topic already has {current} partitions.")
            } else {
                format!(
                    "Topic currently has {current} partitions, which is higher than the requested {count}."
                )
            };
            outcomes.push(TopicOutcome::err(name, ResponseError::InvalidPartitions, message));
            continue;
        }
        let rf = meta.partitions.first().map_or(1, |p| p.replicas.len().max(1)) as i16;
        let added = match next.place((count - current) as usize, rf) {
            Ok(added) => added,
            Err((code, message)) => {
                outcomes.push(TopicOutcome::err(name, code, message));
                continue;
            }
        };
        let mut grown = meta.clone();
        grown.partitions.extend(added);
        outcomes.push(TopicOutcome {
            name,
            error: None,
            topic_id: grown.id,
            num_partitions: count,
            replication_factor: rf,
            configs: grown.configs.clone(),
        });
        next = next.with_topic(grown);
    }
    (next, outcomes)
}

/// IncrementalAlterConfigs operations.
pub const CONFIG_OP_SET: i8 = 0;
pub const CONFIG_OP_DELETE: i8 = 1;
pub const CONFIG_OP_APPEND: i8 = 2;
pub const CONFIG_OP_SUBTRACT: i8 = 3;

/// A refusal between nodes: the Kafka error code and its message.
pub type WireRefusal = (i16, String);

pub fn refusal_to_wire((code, message): &Refusal) -> WireRefusal {
    (code.code(), message.clone())
}

pub fn refusal_from_wire((code, message): WireRefusal) -> Refusal {
    (
        ResponseError::try_from_code(code).unwrap_or(ResponseError::UnknownServerError),
        message,
    )
}

/// serde for `Option<Refusal>` (kafka-protocol's error type has none).
pub mod wire_refusal {
    use super::{refusal_from_wire, refusal_to_wire, Refusal, WireRefusal};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(r: &Option<Refusal>, s: S) -> Result<S::Ok, S::Error> {
        r.as_ref().map(refusal_to_wire).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Refusal>, D::Error> {
        Ok(Option::<WireRefusal>::deserialize(d)?.map(refusal_from_wire))
    }
}

/// One topic's config change from AlterConfigs (`incremental: false`: the
/// listed values replace every override) or IncrementalAlterConfigs.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ConfigAlteration {
    pub topic: String,
    pub incremental: bool,
    /// (name, operation, value)
    pub entries: Vec<(String, i8, Option<String>)>,
}

fn altered_overrides(
    current: &BTreeMap<String, String>,
    change: &ConfigAlteration,
    broker: &BrokerConfig,
) -> Result<BTreeMap<String, String>, Refusal> {
    let mut seen = std::collections::HashSet::new();
    let mut next = if change.incremental {
        current.clone()
    } else {
        BTreeMap::new()
    };
    for (name, op, value) in &change.entries {
        if !seen.insert(name.as_str()) {
            return Err((
                ResponseError::InvalidRequest,
                format!("Duplicate config key {name}"),
            ));
        }
        if topic::ignored(name) {
            continue;
        }
        let list = |v: &str| -> Vec<String> {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        };
        let new_value = match (*op, value) {
            (CONFIG_OP_DELETE, _) | (CONFIG_OP_SET, None) => None,
            (CONFIG_OP_SET, Some(v)) => Some(v.trim().to_string()),
            (CONFIG_OP_APPEND | CONFIG_OP_SUBTRACT, Some(v)) => {
                if topic::config_type(name) != topic::CONFIG_TYPE_LIST {
                    return Err((
                        ResponseError::InvalidConfig,
                        format!("Config value append/subtract is not allowed for config key {name}"),
                    ));
                }
                let (base, _) = topic::effective(name, current, broker);
                let mut items = list(current.get(name).unwrap_or(&base));
                for item in list(v) {
                    if *op == CONFIG_OP_APPEND {
                        if !items.contains(&item) {
                            items.push(item);
                        }
                    } else {
                        items.retain(|i| *i != item);
                    }
                }
                Some(items.join(","))
            }
            (CONFIG_OP_APPEND | CONFIG_OP_SUBTRACT, None) => {
                return Err((ResponseError::InvalidConfig, format!("No value given for {name}")))
            }
            (other, _) => {
                return Err((
                    ResponseError::InvalidRequest,
                    format!("Unknown config operation {other}"),
                ))
            }
        };
        match new_value {
            Some(v) => {
                topic::validate(name, &v).map_err(|m| (ResponseError::InvalidConfig, m))?;
                next.insert(name.clone(), v);
            }
            None => {
                if !topic::TOPIC_KEYS.contains(&name.as_str()) {
                    return Err((
                        ResponseError::InvalidConfig,
                        format!("Unknown topic config name: {name}"),
                    ));
                }
                next.remove(name);
            }
        }
    }
    Ok(next)
}

/// Plans config changes: each topic's change is all-or-nothing.
pub fn alter_configs(
    image: &MetadataImage,
    changes: Vec<ConfigAlteration>,
    broker: &BrokerConfig,
) -> (MetadataImage, Vec<Option<Refusal>>) {
    let mut next = image.clone();
    let mut outcomes = Vec::with_capacity(changes.len());
    for change in changes {
        let Some(meta) = next.topics.get(&change.topic).cloned() else {
            outcomes.push(Some((
                ResponseError::UnknownTopicOrPartition,
                format!("Topic {} does not exist", change.topic),
            )));
            continue;
        };
        match altered_overrides(&meta.configs, &change, broker) {
            Err(refusal) => outcomes.push(Some(refusal)),
            Ok(configs) => {
                outcomes.push(None);
                if configs != meta.configs {
                    next = next.with_topic(TopicMeta { configs, ..meta });
                }
            }
        }
    }
    (next, outcomes)
}

/// Kafka's cluster ids are 22-character url-safe base64 of a UUID; any unique string works for clients.
pub fn random_cluster_id() -> String {
    Uuid::new_v4().simple().to_string()[..22].to_string()
}

/// Kafka's topic name rule: 1–249 chars of `[a-zA-Z0-9._-]`, not `.` or `..`.
/// Topics the broker creates and owns (`__consumer_offsets`,
/// `__transaction_state`).
pub fn is_internal(name: &str) -> bool {
    name == OFFSETS_TOPIC || name == TRANSACTION_STATE_TOPIC
}

pub fn validate_topic_name(name: &str) -> Result<(), Refusal> {
    let invalid = |why: String| Err((ResponseError::InvalidTopicException, why));
    if name.is_empty() {
        return invalid("Topic name is illegal, it can't be empty".into());
    }
    if name == "." || name == ".." {
        return invalid("Topic name cannot be \".\" or \"..\"".into());
    }
    if name.len() > TOPIC_NAME_MAX_CHARS {
        return invalid(format!(
            "Topic name is illegal, it can't be longer than {TOPIC_NAME_MAX_CHARS} characters"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return invalid(format!(
            "Topic name \"{name}\" is illegal, it contains a character other than ASCII alphanumerics, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// The directory of one partition's log, as Kafka names it.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: i32) -> PathBuf {
    data_dir.join(format!("{topic}-{partition}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_a-b").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name(".").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("bad name!").is_err());
        assert!(validate_topic_name(&"a".repeat(249)).is_ok());
        assert!(validate_topic_name(&"a".repeat(250)).is_err());
    }

    fn one_broker(partitions_max: usize) -> MetadataImage {
        MetadataImage::new("c".into()).with_broker(BrokerMeta {
            id: 1,
            incarnation: Uuid::new_v4(),
            host: "127.0.0.1".into(),
            port: 9092,
            rack: None,
            partitions_max,
            fenced: false,
        })
    }

    fn image_with_topic() -> MetadataImage {
        let image = one_broker(100);
        let topic = TopicMeta {
            name: "t".into(),
            id: Uuid::new_v4(),
            partitions: image.place(1, 1).unwrap(),
            configs: BTreeMap::new(),
        };
        image.with_topic(topic)
    }

    fn change(incremental: bool, entries: &[(&str, i8, Option<&str>)]) -> ConfigAlteration {
        ConfigAlteration {
            topic: "t".into(),
            incremental,
            entries: entries
                .iter()
                .map(|(n, o, v)| (n.to_string(), *o, v.map(String::from)))
                .collect(),
        }
    }

    #[test]
    fn incremental_alter_sets_and_deletes_overrides() {
        let image = image_with_topic();
        let (next, out) = alter_configs(
            &image,
            vec![change(true, &[("retention.ms", CONFIG_OP_SET, Some("1000"))])],
            &BrokerConfig::default(),
        );
        assert_eq!(out, vec![None]);
        assert_eq!(next.topic("t").unwrap().configs["retention.ms"], "1000");
        assert!(next.epoch > image.epoch);
        let (after, out) = alter_configs(
            &next,
            vec![change(true, &[("retention.ms", CONFIG_OP_DELETE, None)])],
            &BrokerConfig::default(),
        );
        assert_eq!(out, vec![None]);
        assert!(after.topic("t").unwrap().configs.is_empty());
    }

    #[test]
    fn bad_config_values_change_nothing() {
        let image = image_with_topic();
        let (next, out) = alter_configs(
            &image,
            vec![change(
                true,
                &[
                    ("retention.ms", CONFIG_OP_SET, Some("5")),
                    ("segment.bytes", CONFIG_OP_SET, Some("x")),
                ],
            )],
            &BrokerConfig::default(),
        );
        assert_eq!(out[0].as_ref().unwrap().0, ResponseError::InvalidConfig);
        assert_eq!(next.epoch, image.epoch);
        assert!(next.topic("t").unwrap().configs.is_empty());
        let (_, out) = alter_configs(
            &image,
            vec![change(true, &[("segment.ms", CONFIG_OP_APPEND, Some("1"))])],
            &BrokerConfig::default(),
        );
        assert_eq!(out[0].as_ref().unwrap().0, ResponseError::InvalidConfig);
    }

    #[test]
    fn non_incremental_alter_replaces_all_overrides() {
        let image = image_with_topic();
        let (next, _) = alter_configs(
            &image,
            vec![change(true, &[("retention.ms", CONFIG_OP_SET, Some("1000"))])],
            &BrokerConfig::default(),
        );
        let (after, out) = alter_configs(
            &next,
            vec![change(false, &[("segment.ms", CONFIG_OP_SET, Some("60000"))])],
            &BrokerConfig::default(),
        );
        assert_eq!(out, vec![None]);
        let configs = &after.topic("t").unwrap().configs;
        assert_eq!(configs.len(), 1);
        assert_eq!(configs["segment.ms"], "60000");
    }

    #[test]
    fn partitions_beyond_a_brokers_budget_are_refused() {
        let config = BrokerConfig::default();
        let topic = |name: &str, n| NewTopic {
            name: name.into(),
            num_partitions: n,
            replication_factor: -1,
            assignments: Vec::new(),
            configs: Vec::new(),
        };
        // One broker of 2 shards x shard.partitions.max 4.
        let image = one_broker(8);
        let (image, out) = create_topics(&image, vec![topic("a", 6)], &config);
        assert!(out[0].error.is_none());
        let (image, out) = create_topics(&image, vec![topic("b", 3)], &config);
        assert_eq!(out[0].error.as_ref().unwrap().0, ResponseError::PolicyViolation);
        assert!(image.topic("b").is_none());
        let (image, out) = create_partitions(&image, vec![("a".into(), 9)]);
        assert_eq!(out[0].error.as_ref().unwrap().0, ResponseError::PolicyViolation);
        let (image, out) = create_partitions(&image, vec![("a".into(), 8)]);
        assert!(out[0].error.is_none());
        assert_eq!(image.topic("a").unwrap().partitions.len(), 8);
    }

    #[test]
    fn replication_factor_above_the_live_brokers_is_refused() {
        let config = BrokerConfig::default();
        let image = one_broker(100);
        let topic = NewTopic {
            name: "r".into(),
            num_partitions: 1,
            replication_factor: 2,
            assignments: Vec::new(),
            configs: Vec::new(),
        };
        let (_, out) = create_topics(&image, vec![topic], &config);
        assert_eq!(
            out[0].error.as_ref().unwrap().0,
            ResponseError::InvalidReplicationFactor
        );
        let (_, out) = create_topics(
            &MetadataImage::new("c".into()),
            vec![NewTopic {
                name: "n".into(),
                num_partitions: 1,
                replication_factor: 1,
                assignments: Vec::new(),
                configs: Vec::new(),
            }],
            &config,
        );
        assert_eq!(
            out[0].error.as_ref().unwrap().0,
            ResponseError::InvalidReplicationFactor,
            "no live broker"
        );
    }

    #[test]
    fn a_legacy_metadata_file_is_taken_over_with_this_node_leading() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = r#"{"epoch":7,"cluster_id":"old","topics":{"t":{"name":"t","id":"6f0c2a5e-4b8e-4a49-9a43-0d2f1f7c9b11","partitions":[{"shard":1,"leader_epoch":0},{"shard":0,"leader_epoch":2}],"configs":{}}},"producer_ids_reserved":2000}"#;
        std::fs::write(dir.path().join(METADATA_FILE), legacy).unwrap();
        let image = MetadataImage::load_legacy(dir.path(), 4).unwrap().unwrap();
        let t = image.topic("t").unwrap();
        assert!(t
            .partitions
            .iter()
            .all(|p| p.replicas == vec![4] && p.leader == 4));
        assert_eq!(t.partitions[1].leader_epoch, 2);
        assert_eq!(
            (image.cluster_id.as_str(), image.producer_ids_reserved),
            ("old", 2000)
        );
        assert!(MetadataImage::load_legacy(tempfile::tempdir().unwrap().path(), 4)
            .unwrap()
            .is_none());
    }

    fn three_brokers() -> MetadataImage {
        let mut image = MetadataImage::new("c".into());
        for id in 1..=3 {
            image = image.with_broker(BrokerMeta {
                id,
                incarnation: Uuid::new_v4(),
                host: "127.0.0.1".into(),
                port: 9090 + id as u16,
                rack: None,
                partitions_max: 100,
                fenced: false,
            });
        }
        let topic = TopicMeta {
            name: "r".into(),
            id: Uuid::new_v4(),
            partitions: vec![PartitionMeta::new(vec![1, 2, 3])],
            configs: BTreeMap::new(),
        };
        image.with_topic(topic)
    }

    fn part(image: &MetadataImage) -> PartitionMeta {
        image.partition("r", 0).unwrap().clone()
    }

    fn with_broker(image: MetadataImage, id: i32) -> MetadataImage {
        image.with_broker(BrokerMeta {
            id,
            incarnation: Uuid::new_v4(),
            host: "127.0.0.1".into(),
            port: 9090 + id as u16,
            rack: None,
            partitions_max: 100,
            fenced: false,
        })
    }

    #[test]
    fn preferred_and_unclean_elections_answer_as_kafka_does() {
        let image = three_brokers().with_broker_fenced(1, true, false);
        let asked = [("r".to_string(), 0), ("r".to_string(), 5)];
        // Preferred replica 1 is fenced and out of the ISR.
        let (_, out) = image.with_elected_leaders(false, Some(&asked));
        assert_eq!(
            out[0].2.as_ref().unwrap().0,
            ResponseError::PreferredLeaderNotAvailable
        );
        assert_eq!(
            out[1].2.as_ref().unwrap().0,
            ResponseError::UnknownTopicOrPartition
        );
        // Back, caught up (ISR grows): preferred election moves leadership home.
        let back = image.with_broker_fenced(1, false, false);
        let p = part(&back);
        let back = back
            .with_isr(
                &back.topic("r").unwrap().id,
                0,
                p.leader,
                p.leader_epoch,
                p.partition_epoch,
                vec![2, 3, 1],
            )
            .unwrap();
        let (movable, ratios) = back.leader_imbalance();
        assert_eq!((movable.len(), ratios.get(&1)), (1, Some(&100)));
        let (elected, out) = back.with_elected_leaders(false, None);
        assert_eq!(out, vec![("r".to_string(), 0, None)]);
        let p = part(&elected);
        assert_eq!((p.leader, p.leader_epoch), (1, 2));
        let (_, out) = elected.with_elected_leaders(false, Some(&asked[..1]));
        assert_eq!(out[0].2.as_ref().unwrap().0, ResponseError::ElectionNotNeeded);
        // Unclean: every ISR member gone, a live out-of-sync replica leads alone.
        let gone = three_brokers()
            .with_broker_fenced(2, true, false)
            .with_broker_fenced(3, true, false)
            .with_broker_fenced(1, true, false);
        assert_eq!(part(&gone).isr, vec![1]);
        let gone = gone.with_broker_fenced(2, false, false);
        assert_eq!(part(&gone).leader, NO_LEADER, "clean: waits for broker 1");
        let (elected, out) = gone.with_elected_leaders(true, Some(&asked[..1]));
        assert_eq!(out[0].2, None);
        let p = part(&elected);
        assert_eq!((p.leader, p.isr.as_slice()), (2, &[2][..]));
    }

    #[test]
    fn a_reassignment_adds_first_and_removes_once_the_new_replica_is_in_sync() {
        let image = with_broker(three_brokers(), 4);
        let id = image.topic("r").unwrap().id;
        // Move the replica on broker 1 (the leader) to broker 4.
        let moving = image.with_reassignment("r", 0, Some(vec![4, 2, 3])).unwrap();
        let p = part(&moving);
        assert_eq!(p.replicas, vec![4, 2, 3, 1]);
        assert_eq!(
            (p.adding_replicas.as_slice(), p.removing_replicas.as_slice()),
            (&[4][..], &[1][..])
        );
        assert_eq!(
            (p.leader, p.isr.as_slice()),
            (1, &[1, 2, 3][..]),
            "nothing moves until 4 caught up"
        );
        // Broker 4 caught up: the leader adds it to the ISR, which completes the move.
        let done = moving
            .with_isr(&id, 0, 1, p.leader_epoch, p.partition_epoch, vec![1, 2, 3, 4])
            .unwrap();
        let p = part(&done);
        assert_eq!(p.replicas, vec![4, 2, 3]);
        assert!(p.adding_replicas.is_empty() && p.removing_replicas.is_empty());
        assert_eq!(p.isr, vec![2, 3, 4]);
        assert_ne!(p.leader, 1, "the removed leader hands over");
        assert!(p.isr.contains(&p.leader));
        // A cancelled reassignment goes back to the replicas before it (in
        // Kafka's order: the target's first).
        let cancelled = moving.with_reassignment("r", 0, None).unwrap();
        let p = part(&cancelled);
        assert_eq!((p.replicas.as_slice(), p.leader), (&[2, 3, 1][..], 1));
        assert!(p.adding_replicas.is_empty() && p.removing_replicas.is_empty());
        assert_eq!(
            image.with_reassignment("r", 0, None).unwrap_err().0,
            ResponseError::NoReassignmentInProgress
        );
        assert_eq!(
            image.with_reassignment("r", 0, Some(vec![9])).unwrap_err().0,
            ResponseError::InvalidReplicaAssignment
        );
        // The records replay to the same image (followers of the metadata log).
        let replayed = image
            .replay(&records::changes(&image, &moving), image.offset + 1)
            .unwrap();
        assert_eq!(part(&replayed), part(&moving));
    }

    #[test]
    fn a_fenced_leader_is_replaced_from_the_isr_and_the_last_member_stays() {
        let image = three_brokers();
        let image = image.with_broker_fenced(1, true, false);
        let p = part(&image);
        assert_eq!((p.leader, p.isr.as_slice(), p.leader_epoch), (2, &[2, 3][..], 1));
        let image = image.with_broker_fenced(2, true, false);
        let image = image.with_broker_fenced(3, true, false);
        let p = part(&image);
        assert_eq!(
            (p.leader, p.isr.as_slice()),
            (NO_LEADER, &[3][..]),
            "the last in-sync replica stays"
        );
        // Broker 1 returns: not in sync, so the partition waits (clean election).
        let image = image.with_broker_fenced(1, false, false);
        assert_eq!(part(&image).leader, NO_LEADER);
        // Broker 3, the last in sync, returns and leads.
        let image = image.with_broker_fenced(3, false, false);
        let p = part(&image);
        assert_eq!(p.leader, 3);
        assert_eq!(
            (p.leader_epoch, p.partition_epoch),
            (4, 4),
            "every leader change bumps both: {p:?}"
        );
    }

    #[test]
    fn unclean_election_takes_a_live_replica_only_when_enabled() {
        let image = three_brokers();
        let p = part(&image);
        let image = image
            .with_isr(
                &image.topic("r").unwrap().id,
                0,
                1,
                p.leader_epoch,
                p.partition_epoch,
                vec![1],
            )
            .unwrap();
        let clean = image.with_broker_fenced(1, true, false);
        assert_eq!(part(&clean).leader, NO_LEADER, "2 and 3 are live but not in sync");
        let unclean = image.with_broker_fenced(1, true, true);
        let p = part(&unclean);
        assert_eq!((p.leader, p.isr.as_slice()), (2, &[2][..]));
        // The topic's own setting wins over the broker default.
        let mut topic = image.topic("r").unwrap().clone();
        topic
            .configs
            .insert(UNCLEAN_LEADER_ELECTION.into(), "true".into());
        let image = image.with_topic(topic);
        assert_eq!(part(&image.with_broker_fenced(1, true, false)).leader, 2);
    }

    #[test]
    fn alter_partition_is_refused_from_stale_or_wrong_senders() {
        let image = three_brokers();
        let id = image.topic("r").unwrap().id;
        let p = part(&image);
        let code = |r: Result<MetadataImage, Refusal>| r.err().map(|(c, _)| c);
        assert_eq!(
            code(image.with_isr(&id, 0, 2, p.leader_epoch, p.partition_epoch, vec![2])),
            Some(ResponseError::NotLeaderOrFollower)
        );
        assert_eq!(
            code(image.with_isr(&id, 0, 1, p.leader_epoch + 1, p.partition_epoch, vec![1])),
            Some(ResponseError::FencedLeaderEpoch)
        );
        assert_eq!(
            code(image.with_isr(&id, 0, 1, p.leader_epoch, p.partition_epoch + 1, vec![1])),
            Some(ResponseError::InvalidUpdateVersion)
        );
        assert_eq!(
            code(image.with_isr(&id, 0, 1, p.leader_epoch, p.partition_epoch, vec![2, 3])),
            Some(ResponseError::InvalidRequest)
        );
        let shrunk = image
            .with_isr(&id, 0, 1, p.leader_epoch, p.partition_epoch, vec![1])
            .unwrap();
        let q = part(&shrunk);
        assert_eq!(
            (q.isr.as_slice(), q.partition_epoch),
            (&[1][..], p.partition_epoch + 1)
        );
        // A fenced broker cannot rejoin.
        let fenced = shrunk.with_broker_fenced(3, true, false);
        let q = part(&fenced);
        assert_eq!(
            code(fenced.with_isr(&id, 0, 1, q.leader_epoch, q.partition_epoch, vec![1, 3])),
            Some(ResponseError::IneligibleReplica)
        );
        assert!(fenced
            .with_isr(&id, 0, 1, q.leader_epoch, q.partition_epoch, vec![1, 2])
            .is_ok());
    }
}
