//! The shard's replica manager: roles from metadata images, one fetcher
//! task per leader node this shard follows, the ISR checks, and the ISR
//! changes sent to the controller (AlterPartition in meaning).
//!
//! Lives on every shard, for the replicas the node placement gives it.
//! Called by `Shard::apply` (roles), the fetch path (a follower's fetch
//! reaching a leader), and the server's timers (`check_isr`).

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{BrokerId, FetchRequest, OffsetForLeaderEpochRequest, TopicName};
use kafka_protocol::ResponseError;

use super::{ControlOp, ControlReply, Shard, ShardOp, ShardReply, CONTROLLER_SHARD};
use crate::clock::now_ms;
use crate::controller::{IsrChange, NodeView, NO_LEADER};
use crate::partition::Partition;
use crate::replication::client::{LeaderConnection, FETCH_VERSION, OFFSET_FOR_LEADER_EPOCH_VERSION};
use crate::replication::state::{truncation, Truncation};
use crate::wire::str_bytes;

/// Pause of a fetcher whose partitions all failed (a leader change the
/// image has not brought yet), so it does not spin.
const FETCH_ERROR_PAUSE_MS: u64 = 50;
/// Pause before resending ISR changes no controller answered.
const ISR_RETRY_MS: u64 = 200;
/// How long ISR changes gather before they go to the controller together.
const ISR_BATCH_MS: u64 = 10;

type Key = (String, i32);

/// Coordinator partitions (`__consumer_offsets`, `__transaction_state`)
/// this shard started or stopped leading in one metadata change: the
/// coordinators load or unload their state.
#[derive(Default)]
pub(crate) struct CoordinatorChanges {
    pub offsets_gained: Vec<i32>,
    pub offsets_lost: Vec<i32>,
    pub txn_gained: Vec<i32>,
    pub txn_lost: Vec<i32>,
}

impl Shard {
    /// Sets each local replica's role from `view`: leader where the image
    /// names this node (and the node is not fenced), else follower of the
    /// named leader; starts a fetcher for each leader node followed.
    /// Returns the coordinator partitions this shard started and stopped
    /// leading: their groups and transactional ids load and unload with
    /// leadership.
    pub(crate) fn update_roles(self: &Rc<Self>, view: &NodeView) -> CoordinatorChanges {
        let now = now_ms();
        let parts: Vec<(Key, Rc<Partition>)> = self
            .partitions
            .borrow()
            .iter()
            .map(|(t, i, p)| ((t.to_string(), i), p.clone()))
            .collect();
        let fenced: Vec<i32> = view
            .image
            .brokers
            .values()
            .filter(|b| b.fenced)
            .map(|b| b.id)
            .collect();
        let mut leaders_followed = Vec::new();
        let mut changes = CoordinatorChanges::default();
        for ((topic, index), p) in parts {
            let offsets = topic == crate::controller::OFFSETS_TOPIC;
            let txn_state = topic == crate::controller::TRANSACTION_STATE_TOPIC;
            let Some(meta) = view.image.partition(&topic, index) else {
                continue;
            };
            let leads = meta.leader == view.node_id && !view.fenced;
            if leads {
                match p.become_leader(view.node_id, meta, now) {
                    Ok(true) => {
                        tracing::debug!(
                            "{topic}-{index}: leader at epoch {} (ISR {:?})",
                            meta.leader_epoch,
                            meta.in_sync()
                        );
                        if offsets {
                            changes.offsets_gained.push(index);
                        }
                        if txn_state {
                            changes.txn_gained.push(index);
                        }
                    }
                    Ok(false) => {}
                    Err(e) => tracing::error!("{topic}-{index}: cannot take leadership: {e}"),
                }
                p.with_leadership(|l| l.set_ineligible(&fenced));
            } else {
                let leader = if meta.leader == view.node_id {
                    NO_LEADER
                } else {
                    meta.leader
                };
                let was_leader = p.is_leader();
                p.become_follower(leader, meta.leader_epoch);
                if offsets && was_leader {
                    changes.offsets_lost.push(index);
                }
                if txn_state && was_leader {
                    changes.txn_lost.push(index);
                }
                if leader != NO_LEADER && !leaders_followed.contains(&leader) {
                    leaders_followed.push(leader);
                }
            }
        }
        for leader in leaders_followed {
            if self.fetchers.borrow_mut().insert(leader) {
                let shard = self.clone();
                glommio::spawn_local(async move { shard.run_fetcher(leader).await }).detach();
            }
        }
        changes
    }

    /// The partitions of this shard that follow `leader`.
    fn followed_from(&self, leader: i32) -> Vec<(Key, Rc<Partition>)> {
        self.partitions
            .borrow()
            .iter()
            .filter(|(_, _, p)| p.following().is_some_and(|f| f.leader == leader))
            .map(|(t, i, p)| ((t.to_string(), i), p.clone()))
            .collect()
    }

    /// Copies `leader`'s partitions to this shard's followers until none is
    /// left to follow from it: truncation first where needed, then long-
    /// polled fetches of all of them in one request.
    async fn run_fetcher(self: Rc<Self>, leader: i32) {
        let cluster = &self.config.cluster;
        // The connection and the (host, port) it was made to.
        let mut connection: Option<((String, u16), LeaderConnection)> = None;
        tracing::debug!(shard = self.id, "fetcher for leader {leader} started");
        loop {
            let parts = self.followed_from(leader);
            if parts.is_empty() || self.is_stopping() {
                tracing::debug!(shard = self.id, "fetcher for leader {leader} stopped");
                // Same tick as the check: an image that adds a partition
                // for this leader after it starts a new fetcher.
                self.fetchers.borrow_mut().remove(&leader);
                return;
            }
            let view = self.view();
            let Some(listener) = view.image.brokers.get(&leader).map(|b| (b.host.clone(), b.port)) else {
                glommio::timer::sleep(Duration::from_millis(cluster.replica_fetch_backoff_ms)).await;
                continue;
            };
            if connection.as_ref().is_none_or(|(at, _)| *at != listener) {
                connection = None;
                // Resolved once per connection: a host name's lookup blocks.
                let Some(addr) = std::net::ToSocketAddrs::to_socket_addrs(&(listener.0.as_str(), listener.1))
                    .ok()
                    .and_then(|mut a| a.next())
                else {
                    tracing::debug!(
                        "follower fetch: leader {leader}'s listener {listener:?} does not resolve"
                    );
                    glommio::timer::sleep(Duration::from_millis(cluster.replica_fetch_backoff_ms)).await;
                    continue;
                };
                match LeaderConnection::connect(
                    addr,
                    cluster.replica_socket_timeout_ms,
                    cluster.replica_fetch_response_max_bytes + (1 << 20),
                )
                .await
                {
                    Ok(c) => connection = Some((listener, c)),
                    Err(e) => {
                        tracing::debug!("follower fetch: cannot reach leader {leader} at {addr}: {e}");
                        glommio::timer::sleep(Duration::from_millis(cluster.replica_fetch_backoff_ms)).await;
                        continue;
                    }
                }
            }
            let Some((_, conn)) = connection.as_mut() else {
                continue;
            };
            let result = self.fetch_round(conn, leader, &parts).await;
            match result {
                Ok(true) => {}
                Ok(false) => glommio::timer::sleep(Duration::from_millis(FETCH_ERROR_PAUSE_MS)).await,
                Err(e) => {
                    tracing::debug!("follower fetch from leader {leader} failed: {e}");
                    connection = None;
                    glommio::timer::sleep(Duration::from_millis(cluster.replica_fetch_backoff_ms)).await;
                }
            }
        }
    }

    /// One round: OffsetForLeaderEpoch for the partitions that must
    /// truncate, then one Fetch for the others. Ok(false): nothing moved.
    async fn fetch_round(
        &self,
        conn: &mut LeaderConnection,
        leader: i32,
        parts: &[(Key, Rc<Partition>)],
    ) -> std::io::Result<bool> {
        let truncating: Vec<&(Key, Rc<Partition>)> = parts
            .iter()
            .filter(|(_, p)| p.following().is_some_and(|f| f.needs_truncation))
            .collect();
        let mut progressed = false;
        if !truncating.is_empty() {
            tracing::debug!(
                "asking leader {leader} where {} partitions diverge",
                truncating.len()
            );
            progressed = self.truncate_round(conn, &truncating).await?;
        }
        // The others fetch in the same round: one partition's truncation
        // never holds up the rest.
        let cluster = &self.config.cluster;
        let mut by_topic: HashMap<&str, Vec<FetchPartition>> = HashMap::new();
        let mut sent = HashMap::new();
        for ((topic, index), p) in parts {
            let Some(f) = p.following().filter(|f| !f.needs_truncation) else {
                continue;
            };
            let offset = p.log_end_offset();
            sent.insert((topic.as_str(), *index), (p.clone(), offset, f.leader_epoch));
            by_topic.entry(topic.as_str()).or_default().push(
                FetchPartition::default()
                    .with_partition(*index)
                    .with_current_leader_epoch(f.leader_epoch)
                    .with_fetch_offset(offset)
                    .with_last_fetched_epoch(-1)
                    .with_log_start_offset(p.log_start_offset())
                    .with_partition_max_bytes(cluster.replica_fetch_max_bytes.min(i32::MAX as usize) as i32),
            );
        }
        let request = FetchRequest::default()
            .with_replica_id(BrokerId(self.config.node_id))
            .with_max_wait_ms(cluster.replica_fetch_wait_max_ms.min(i32::MAX as u64) as i32)
            .with_min_bytes(1)
            .with_max_bytes(cluster.replica_fetch_response_max_bytes.min(i32::MAX as usize) as i32)
            .with_session_epoch(-1)
            .with_topics(
                by_topic
                    .into_iter()
                    .map(|(topic, partitions)| {
                        FetchTopic::default()
                            .with_topic(TopicName(str_bytes(topic)))
                            .with_partitions(partitions)
                    })
                    .collect(),
            );
        if sent.is_empty() {
            return Ok(progressed);
        }
        let timeout_ms = cluster.replica_socket_timeout_ms + cluster.replica_fetch_wait_max_ms;
        let response = conn.call(&request, FETCH_VERSION, timeout_ms).await?;

        // Each partition's append is its own log's write: they run together,
        // so a round costs about one write, not one per partition, before
        // the next fetch reports the new log ends to the leader.
        let mut appends = Vec::new();
        for topic in response.responses {
            for r in topic.partitions {
                let Some((p, offset, epoch)) = sent.get(&(topic.topic.as_str(), r.partition_index)) else {
                    continue;
                };
                // The role may have changed while the fetch waited.
                if p.following().is_none_or(|f| {
                    f.leader != leader || f.leader_epoch != *epoch || p.log_end_offset() != *offset
                }) {
                    continue;
                }
                appends.push(self.apply_fetched(p.clone(), *offset, topic.topic.as_str().to_owned(), r));
            }
        }
        for moved in futures::future::join_all(appends).await {
            progressed |= moved;
        }
        Ok(progressed)
    }

    /// Applies one partition's part of a follower fetch response: appends
    /// its records, or restarts at the leader's log start, or waits for the
    /// next image. True when the replica moved.
    async fn apply_fetched(
        &self,
        p: Rc<Partition>,
        offset: i64,
        topic: String,
        r: kafka_protocol::messages::fetch_response::PartitionData,
    ) -> bool {
        match ResponseError::try_from_code(r.error_code) {
            None => {
                let records = r.records.unwrap_or_default();
                if let Err(e) = p.append_replicated(&records, r.high_watermark).await {
                    tracing::warn!(
                        "{topic}-{}: replicated append failed: {}",
                        r.partition_index,
                        e.message
                    );
                    p.become_follower_again();
                    !records.is_empty()
                } else {
                    true
                }
            }
            Some(ResponseError::OffsetOutOfRange) => {
                if offset < r.log_start_offset {
                    // The leader deleted what this replica lacks: start
                    // over at its log start (Kafka's rule).
                    if let Err(e) = p.truncate_fully(r.log_start_offset).await {
                        tracing::error!(
                            "{topic}-{}: cannot restart at the leader's log start: {}",
                            r.partition_index,
                            e.message
                        );
                    }
                } else {
                    p.become_follower_again();
                }
                false
            }
            Some(code) => {
                tracing::debug!("{topic}-{}: follower fetch answered {code:?}", r.partition_index);
                false
            }
        }
    }

    /// Asks the leader where each diverged epoch ended and truncates there.
    async fn truncate_round(
        &self,
        conn: &mut LeaderConnection,
        parts: &[&(Key, Rc<Partition>)],
    ) -> std::io::Result<bool> {
        let mut by_topic: HashMap<&str, Vec<OffsetForLeaderPartition>> = HashMap::new();
        let mut asked = HashMap::new();
        for ((topic, index), p) in parts.iter().map(|x| (&x.0, &x.1)) {
            let Some(f) = p.following() else { continue };
            let history = p.epoch_history();
            let Some(&(latest, _)) = history.last() else {
                // No epoch known (an empty log, or one from before epochs
                // were kept): keep only what the leader confirmed.
                let keep = f.high_watermark.min(p.log_end_offset());
                if let Err(e) = p.truncate_to(keep).await {
                    tracing::error!("{topic}-{index}: truncation failed: {}", e.message);
                    continue;
                }
                p.truncation_done();
                continue;
            };
            asked.insert((topic.as_str(), *index), (p.clone(), history, f.leader_epoch));
            by_topic.entry(topic.as_str()).or_default().push(
                OffsetForLeaderPartition::default()
                    .with_partition(*index)
                    .with_current_leader_epoch(f.leader_epoch)
                    .with_leader_epoch(latest),
            );
        }
        if by_topic.is_empty() {
            return Ok(true);
        }
        let request = OffsetForLeaderEpochRequest::default()
            .with_replica_id(BrokerId(self.config.node_id))
            .with_topics(
                by_topic
                    .into_iter()
                    .map(|(topic, partitions)| {
                        OffsetForLeaderTopic::default()
                            .with_topic(TopicName(str_bytes(topic)))
                            .with_partitions(partitions)
                    })
                    .collect(),
            );
        let response = conn
            .call(
                &request,
                OFFSET_FOR_LEADER_EPOCH_VERSION,
                self.config.cluster.replica_socket_timeout_ms,
            )
            .await?;
        let mut progressed = false;
        for topic in response.topics {
            for r in topic.partitions {
                let Some((p, history, epoch)) = asked.get(&(topic.topic.as_str(), r.partition)) else {
                    continue;
                };
                if p.following()
                    .is_none_or(|f| f.leader_epoch != *epoch || !f.needs_truncation)
                {
                    continue;
                }
                if r.error_code != 0 {
                    tracing::debug!(
                        "{}-{}: OffsetForLeaderEpoch answered error {}",
                        topic.topic.as_str(),
                        r.partition,
                        r.error_code
                    );
                    continue;
                }
                let end = p.log_end_offset();
                let (target, done) = match truncation(history, end, (r.leader_epoch, r.end_offset)) {
                    Truncation::To(offset) => (offset, true),
                    Truncation::ToAndAskAgain(offset) => (offset, false),
                };
                tracing::debug!(
                    "{}-{}: leader has epoch {} to {}; log end {end}, history {history:?}: truncate to {target}",
                    topic.topic.as_str(),
                    r.partition,
                    r.leader_epoch,
                    r.end_offset
                );
                if let Err(e) = p.truncate_to(target).await {
                    tracing::error!(
                        "{}-{}: truncation failed: {}",
                        topic.topic.as_str(),
                        r.partition,
                        e.message
                    );
                    continue;
                }
                // Asking again about the same history would get the same
                // answer: then this is as far as it goes.
                if done || p.epoch_history() == *history {
                    p.truncation_done();
                }
                progressed = true;
            }
        }
        Ok(progressed)
    }

    /// A follower's fetch reached this leader: records its progress and
    /// sends an ISR expansion the progress earned.
    pub(crate) fn on_follower_fetch(
        self: &Rc<Self>,
        p: &Rc<Partition>,
        follower: i32,
        fetch_offset: i64,
        current_leader_epoch: i32,
    ) -> Result<(), crate::partition::PartitionError> {
        let effect = p.on_follower_fetch(follower, fetch_offset, current_leader_epoch, now_ms())?;
        if let Some(isr) = effect.expand_isr {
            tracing::info!(
                "{}-{}: follower {follower} caught up at {fetch_offset}; asking to expand the ISR to {isr:?}",
                p.topic(),
                p.index()
            );
            self.propose_isr(p.clone(), isr);
        }
        Ok(())
    }

    /// Every `replica.lag.time.max.ms` / 2: drops followers that have not
    /// caught up for `replica.lag.time.max.ms` from the ISRs this shard leads.
    pub(crate) async fn check_isr(self: &Rc<Self>) {
        let lag_max_ms = self.config.cluster.replica_lag_time_max_ms as i64;
        let now = now_ms();
        let parts: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
        for p in parts {
            let shrink = p.with_leadership(|l| l.shrink(now, lag_max_ms).map(|isr| (isr, l.isr.clone())));
            if let Some(Some((isr, before))) = shrink {
                tracing::warn!(
                    partition = %format!("{}-{}", p.topic(), p.index()),
                    "{}-{}: shrinking the ISR from {before:?} to {isr:?}: followers not caught up for {lag_max_ms} ms",
                    p.topic(),
                    p.index()
                );
                self.propose_isr(p, isr);
            }
        }
    }

    /// Sends `isr` to the controller for `p`; the committed change comes
    /// back in an image (`Partition::become_leader` settles it). Changes
    /// queue for up to `ISR_BATCH_MS` and go as one AlterPartitions (one
    /// metadata change for many partitions, as Kafka batches its
    /// AlterPartition requests), so thousands of followers rejoining cost a
    /// few changes, not thousands.
    fn propose_isr(self: &Rc<Self>, p: Rc<Partition>, isr: Vec<i32>) {
        let Some((leader_epoch, partition_epoch, expand)) = p.with_leadership(|l| {
            let expand = isr.len() > l.isr.len();
            l.propose(isr.clone());
            (l.leader_epoch, l.partition_epoch, expand)
        }) else {
            return;
        };
        crate::metrics::count_isr_change(expand);
        let change = IsrChange {
            topic_id: p.topic_id(),
            partition: p.index(),
            leader: self.config.node_id,
            leader_epoch,
            partition_epoch,
            isr,
        };
        self.isr_queue.borrow_mut().push((p, change));
        if !self.isr_sender_running.replace(true) {
            let shard = self.clone();
            glommio::spawn_local(async move { shard.send_isr_changes().await }).detach();
        }
    }

    /// Sends the queued ISR changes until none is left. Only a refusal for
    /// good (INVALID_REQUEST, INELIGIBLE_REPLICA) drops one; a stale epoch
    /// waits for the image on its way; an unanswered one is sent again while
    /// it is still pending, since a request that timed out may yet be
    /// applied (the simulation's seed 1277 shows what giving up loses).
    async fn send_isr_changes(self: Rc<Self>) {
        loop {
            glommio::timer::sleep(Duration::from_millis(ISR_BATCH_MS)).await;
            let batch: Vec<(Rc<Partition>, IsrChange)> = std::mem::take(&mut *self.isr_queue.borrow_mut())
                .into_iter()
                .filter(|(p, c)| p.isr_pending(c.leader_epoch, c.partition_epoch, &c.isr))
                .collect();
            if batch.is_empty() || self.is_stopping() {
                self.isr_sender_running.set(false);
                return;
            }
            let items = batch.iter().map(|(_, c)| c.clone()).collect();
            let reply = self
                .call(
                    CONTROLLER_SHARD,
                    ShardOp::Control(ControlOp::AlterPartitions { items }),
                )
                .await;
            let answers = match reply {
                ShardReply::Control(ControlReply::Partitions(answers)) if answers.len() == batch.len() => {
                    answers
                }
                _ => Vec::new(),
            };
            if answers.is_empty() {
                // No controller answered: all again, after a pause.
                self.isr_queue.borrow_mut().extend(batch);
                glommio::timer::sleep(Duration::from_millis(ISR_RETRY_MS)).await;
                continue;
            }
            for ((p, change), (_, _, refusal)) in batch.into_iter().zip(answers) {
                match refusal {
                    None => {}
                    Some((
                        code @ (ResponseError::InvalidRequest | ResponseError::IneligibleReplica),
                        message,
                    )) => {
                        tracing::info!(
                            "{}-{}: ISR {:?} refused ({code:?}): {message}",
                            p.topic(),
                            p.index(),
                            change.isr
                        );
                        p.isr_refused(change.leader_epoch, change.partition_epoch, &change.isr);
                    }
                    Some((
                        ResponseError::FencedLeaderEpoch
                        | ResponseError::InvalidUpdateVersion
                        | ResponseError::NotLeaderOrFollower
                        | ResponseError::UnknownTopicId
                        | ResponseError::UnknownTopicOrPartition,
                        _,
                    )) => {}
                    Some((code, _)) => {
                        tracing::debug!(
                            "{}-{}: ISR change not answered ({code:?}); resending",
                            p.topic(),
                            p.index()
                        );
                        self.isr_queue.borrow_mut().push((p, change));
                    }
                }
            }
        }
    }
}
