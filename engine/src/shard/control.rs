//! The node's control plane, on the controller shard: runs metadata changes
//! when this node is the active controller and forwards them to it when it
//! is not; the broker's heartbeats and the active controller's side of them
//! (registration, fencing after `broker.session.timeout.ms`); publishing each
//! new image, with this node's placement, to every shard in order.
//!
//! Lives on: `CONTROLLER_SHARD` of every node. Called by `ops` (`ShardOp::
//! Control`), by `server` (startup, the CONTROLLER listener's connections).
//! Calls `controller` (planning, records, the raft quorum, the wire).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_listener::Event;
use glommio::sync::Semaphore;
use kafka_protocol::ResponseError;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{ControlOp, ControlReply, Shard};
use crate::config::BrokerConfig;
use crate::controller::placement::Placement;
use crate::controller::quorum::{not_controller, Quorum};
use crate::controller::records::changes;
use crate::controller::{
    self, refusal_from_wire, refusal_to_wire, transport, BrokerMeta, MetadataImage, NodeView, Refusal,
    TopicOutcome, WireRefusal,
};

/// Producer ids reserved per metadata write (Kafka's block size is 1000).
pub const PRODUCER_ID_BLOCK: i64 = 1000;
/// How often the active controller looks for brokers past their session.
const FENCE_CHECK_MS: u64 = 200;
/// Pause between attempts to reach the active controller.
const FORWARD_RETRY_MS: u64 = 100;

/// A request between nodes' control planes.
#[derive(Serialize, Deserialize)]
enum ControllerRequest {
    Control(ControlOp),
    /// A broker-only node's metadata: the image, when newer than `offset`.
    Fetch {
        offset: u64,
    },
}

#[derive(Serialize, Deserialize)]
enum ControllerResponse {
    Control { reply: WireReply, offset: u64 },
    NotController { leader: Option<i32> },
    Image(Option<Box<MetadataImage>>),
}

/// `ControlReply` between nodes.
#[derive(Serialize, Deserialize)]
enum WireReply {
    Topics(Vec<TopicOutcome>),
    Partitions(Vec<(String, i32, Option<WireRefusal>)>),
    Altered(Vec<Option<WireRefusal>>),
    ProducerId(Result<i64, WireRefusal>),
    Done(Result<(), WireRefusal>),
    Unavailable,
}

impl From<ControlReply> for WireReply {
    fn from(r: ControlReply) -> Self {
        match r {
            ControlReply::Topics(t) => WireReply::Topics(t),
            ControlReply::Partitions(e) => WireReply::Partitions(
                e.into_iter()
                    .map(|(t, p, r)| (t, p, r.as_ref().map(refusal_to_wire)))
                    .collect(),
            ),
            ControlReply::Altered(a) => {
                WireReply::Altered(a.iter().map(|o| o.as_ref().map(refusal_to_wire)).collect())
            }
            ControlReply::ProducerId(p) => WireReply::ProducerId(p.map_err(|e| refusal_to_wire(&e))),
            ControlReply::Done(d) => WireReply::Done(d.map_err(|e| refusal_to_wire(&e))),
            ControlReply::Unavailable => WireReply::Unavailable,
        }
    }
}

impl From<WireReply> for ControlReply {
    fn from(r: WireReply) -> Self {
        match r {
            WireReply::Topics(t) => ControlReply::Topics(t),
            WireReply::Partitions(e) => ControlReply::Partitions(
                e.into_iter()
                    .map(|(t, p, r)| (t, p, r.map(refusal_from_wire)))
                    .collect(),
            ),
            WireReply::Altered(a) => {
                ControlReply::Altered(a.into_iter().map(|o| o.map(refusal_from_wire)).collect())
            }
            WireReply::ProducerId(p) => ControlReply::ProducerId(p.map_err(refusal_from_wire)),
            WireReply::Done(d) => ControlReply::Done(d.map_err(refusal_from_wire)),
            WireReply::Unavailable => ControlReply::Unavailable,
        }
    }
}

/// `reply` for `op` with every outcome that has no error of its own failed with `refusal`.
fn refused(op: &ControlOp, reply: Option<ControlReply>, refusal: Refusal) -> ControlReply {
    match (op, reply) {
        (_, Some(ControlReply::Topics(outcomes))) => ControlReply::Topics(
            outcomes
                .into_iter()
                .map(|mut o| {
                    o.error = o.error.or(Some(refusal.clone()));
                    o
                })
                .collect(),
        ),
        (_, Some(ControlReply::Altered(outcomes))) => ControlReply::Altered(
            outcomes
                .into_iter()
                .map(|o| o.or(Some(refusal.clone())))
                .collect(),
        ),
        (ControlOp::CreateTopics { topics, .. }, None) => ControlReply::Topics(
            topics
                .iter()
                .map(|t| TopicOutcome::refused(t.name.clone(), refusal.clone()))
                .collect(),
        ),
        (ControlOp::DeleteTopics { names }, None) => ControlReply::Topics(
            names
                .iter()
                .map(|n| TopicOutcome::refused(n.clone(), refusal.clone()))
                .collect(),
        ),
        (ControlOp::CreatePartitions { topics, .. }, None) => ControlReply::Topics(
            topics
                .iter()
                .map(|(n, _)| TopicOutcome::refused(n.clone(), refusal.clone()))
                .collect(),
        ),
        (ControlOp::AlterConfigs { changes, .. }, None) => {
            ControlReply::Altered(changes.iter().map(|_| Some(refusal.clone())).collect())
        }
        (ControlOp::ElectLeaders { partitions, .. }, _) => ControlReply::Partitions(
            partitions
                .iter()
                .flatten()
                .map(|(t, p)| (t.clone(), *p, Some(refusal.clone())))
                .collect(),
        ),
        (ControlOp::AlterPartitions { items }, _) => ControlReply::Partitions(
            items
                .iter()
                .map(|i| (i.topic_id.to_string(), i.partition, Some(refusal.clone())))
                .collect(),
        ),
        (ControlOp::Reassign { changes }, _) => ControlReply::Partitions(
            changes
                .iter()
                .map(|(t, p, _)| (t.clone(), *p, Some(refusal.clone())))
                .collect(),
        ),
        (ControlOp::ReserveProducerIds | ControlOp::AllocateProducerId, _) => {
            ControlReply::ProducerId(Err(refusal))
        }
        _ => ControlReply::Done(Err(refusal)),
    }
}

pub struct ControlPlane {
    node_id: i32,
    config: Arc<BrokerConfig>,
    nr_shards: usize,
    /// None on a broker-only node: its image comes from the controllers.
    quorum: Option<Rc<Quorum>>,
    /// Voter id -> its CONTROLLER listener.
    voter_addrs: BTreeMap<i32, SocketAddr>,
    /// Broker-only: the latest image fetched, the controller last heard of,
    /// and the event that announces either.
    fetched: RefCell<Arc<MetadataImage>>,
    leader_hint: Cell<Option<i32>>,
    changed: Event,
    /// One metadata change at a time, planned from the latest image.
    lock: Semaphore,
    /// (next, end) of this node's producer-id block.
    producer_ids: Cell<(i64, i64)>,
    /// Changes with every start of this process (`BrokerMeta::incarnation`).
    incarnation: Uuid,
    published: RefCell<Arc<NodeView>>,
    published_event: Event,
    /// Active controller only: when each broker was last heard from.
    last_seen: RefCell<HashMap<i32, Instant>>,
    leading_since: Cell<Option<Instant>>,
    /// When a controller last accepted this broker's heartbeat.
    heartbeat_accepted_at: Cell<Instant>,
    /// No heartbeat accepted for `broker.session.timeout.ms`: the controller
    /// has fenced this broker, so it leads nothing until it is heard again.
    self_fenced: Cell<bool>,
    /// Held for each heartbeat round trip; a controlled shutdown takes it
    /// last, so no heartbeat in flight can unfence the broker after it.
    heartbeat_round: Semaphore,
    heartbeats_stopped: Cell<bool>,
    /// Active controller only: the last `auto.leader.rebalance.enable` check.
    last_rebalance_check: Cell<Option<Instant>>,
}

impl ControlPlane {
    pub fn new(
        config: Arc<BrokerConfig>,
        nr_shards: usize,
        quorum: Option<Rc<Quorum>>,
        voter_addrs: BTreeMap<i32, SocketAddr>,
        published: Arc<NodeView>,
    ) -> Rc<ControlPlane> {
        let start_fenced = voter_addrs.len() > 1 || quorum.is_none();
        Rc::new(ControlPlane {
            node_id: config.node_id,
            nr_shards,
            quorum,
            voter_addrs,
            fetched: RefCell::new(published.image.clone()),
            leader_hint: Cell::new(None),
            changed: Event::new(),
            lock: Semaphore::new(1),
            producer_ids: Cell::new((0, 0)),
            incarnation: Uuid::new_v4(),
            published: RefCell::new(published),
            published_event: Event::new(),
            last_seen: RefCell::new(HashMap::new()),
            leading_since: Cell::new(None),
            heartbeat_accepted_at: Cell::new(Instant::now()),
            // In a cluster a starting broker leads nothing until a
            // controller has accepted its registration (and moved what it
            // led elsewhere if it restarted), as Kafka brokers start fenced.
            self_fenced: Cell::new(start_fenced),
            heartbeat_round: Semaphore::new(1),
            heartbeats_stopped: Cell::new(false),
            last_rebalance_check: Cell::new(None),
            config,
        })
    }

    fn image(&self) -> Arc<MetadataImage> {
        match &self.quorum {
            Some(q) => q.image(),
            None => self.fetched.borrow().clone(),
        }
    }

    /// The active controller, as the quorum says or (broker-only) as last heard.
    fn leader(&self) -> Option<i32> {
        match &self.quorum {
            Some(q) => q.leader(),
            None => self.leader_hint.get(),
        }
    }

    fn is_leader(&self) -> bool {
        self.quorum.as_ref().is_some_and(|q| q.is_leader())
    }

    /// (the active controller as this node knows it, whether it is this node).
    pub(crate) fn controller_status(&self) -> (Option<i32>, bool) {
        (self.leader(), self.is_leader())
    }

    fn changed(&self) -> &Event {
        match &self.quorum {
            Some(q) => &q.changed,
            None => &self.changed,
        }
    }

    /// The view `node_id`'s shards route by, built from `image` and `previous` placement.
    pub fn view_for(
        node_id: i32,
        controller_id: i32,
        image: Arc<MetadataImage>,
        previous: &Placement,
        nr_shards: usize,
        fenced: bool,
    ) -> NodeView {
        NodeView {
            node_id,
            controller_id,
            fenced,
            placement: Placement::next(previous, &image, node_id, nr_shards),
            image,
        }
    }

    /// Runs `op`: here when this node is the active controller, else on it.
    /// Answers once this node's shards have applied the change.
    pub async fn submit(self: Rc<Self>, shard: &Rc<Shard>, op: ControlOp) -> ControlReply {
        if let ControlOp::AllocateProducerId = op {
            return ControlReply::ProducerId(self.allocate_producer_id(shard).await);
        }
        let (reply, offset) = self.execute_or_forward(op).await;
        self.await_published(offset).await;
        reply
    }

    async fn execute_or_forward(&self, op: ControlOp) -> (ControlReply, u64) {
        let timeout = Duration::from_millis(self.config.cluster.quorum_request_timeout_ms);
        let deadline = Instant::now() + timeout;
        let mut hint: Option<i32> = None;
        let voters: Vec<i32> = self.voter_addrs.keys().copied().collect();
        let mut next_voter = 0usize;
        loop {
            let target = match (self.leader().or(hint), &self.quorum) {
                (Some(id), Some(_)) if id == self.node_id => return self.execute(op).await,
                (None, Some(q)) if q.voters().len() == 1 => return self.execute(op).await,
                (Some(id), _) => Some(id),
                // A broker-only node that knows no controller asks the voters in turn.
                (None, None) if !voters.is_empty() => {
                    next_voter += 1;
                    Some(voters[(next_voter - 1) % voters.len()])
                }
                (None, _) => None,
            };
            if let Some(id) = target {
                match self.forward(id, &ControllerRequest::Control(op.clone())).await {
                    Ok(ControllerResponse::Control { reply, offset }) => {
                        if self.quorum.is_none() {
                            self.leader_hint.set(Some(id));
                        }
                        return (reply.into(), offset);
                    }
                    Ok(ControllerResponse::NotController { leader }) => {
                        hint = leader.filter(|l| *l != id);
                        if self.quorum.is_none() {
                            self.leader_hint.set(hint);
                        }
                    }
                    Ok(ControllerResponse::Image(_)) | Err(_) => {
                        hint = None;
                        if self.quorum.is_none() {
                            self.leader_hint.set(None);
                        }
                    }
                }
            }
            if Instant::now() >= deadline {
                return (refused(&op, None, not_controller(self.leader())), 0);
            }
            let listener = self.changed().listen();
            let pause = glommio::timer::sleep(Duration::from_millis(FORWARD_RETRY_MS));
            let _ = futures::future::select(listener, Box::pin(pause)).await;
        }
    }

    async fn forward(&self, leader: i32, request: &ControllerRequest) -> std::io::Result<ControllerResponse> {
        let addr = *self
            .voter_addrs
            .get(&leader)
            .ok_or_else(|| std::io::Error::other(format!("node {leader} is not a voter")))?;
        let request = serde_json::to_vec(request).map_err(std::io::Error::other)?;
        let answer = transport::call(
            addr,
            &request,
            self.config.cluster.quorum_request_timeout_ms,
            self.config.socket_request_max_bytes,
        )
        .await?;
        serde_json::from_slice(&answer).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// What a peer node asks of this one.
    pub async fn handle_request(self: Rc<Self>, request: Vec<u8>) -> Vec<u8> {
        let response = match serde_json::from_slice::<ControllerRequest>(&request) {
            Ok(ControllerRequest::Fetch { offset }) => {
                let image = self.image();
                ControllerResponse::Image((image.offset > offset).then(|| Box::new(image.as_ref().clone())))
            }
            Ok(ControllerRequest::Control(op)) => {
                if self.is_leader() {
                    let (reply, offset) = self.execute(op).await;
                    ControllerResponse::Control {
                        reply: reply.into(),
                        offset,
                    }
                } else {
                    ControllerResponse::NotController {
                        leader: self.leader(),
                    }
                }
            }
            Err(e) => {
                tracing::warn!("bad controller request: {e}");
                ControllerResponse::NotController { leader: None }
            }
        };
        serde_json::to_vec(&response).unwrap_or_default()
    }

    /// Plans `op` on the latest image and commits it through the quorum;
    /// returns the reply and the change's metadata offset.
    async fn execute(&self, op: ControlOp) -> (ControlReply, u64) {
        if let ControlOp::Heartbeat(b) = &op {
            self.last_seen.borrow_mut().insert(b.id, Instant::now());
            if !self.heartbeat_changes(b) {
                return (ControlReply::Done(Ok(())), 0);
            }
        }
        let Some(quorum) = &self.quorum else {
            return (refused(&op, None, not_controller(self.leader())), 0);
        };
        let Ok(_permit) = self.lock.acquire_permit(1).await else {
            return (ControlReply::Unavailable, 0);
        };
        if let Err(refusal) = quorum.await_ready_to_plan().await {
            return (refused(&op, None, refusal), 0);
        }
        let image = quorum.image();
        let (next, reply, validate_only) = self.plan(&image, &op);
        if validate_only || next.epoch == image.epoch {
            return (reply, image.offset);
        }
        match quorum.propose(changes(&image, &next)).await {
            Ok(offset) => (reply, offset),
            Err(refusal) => (refused(&op, Some(reply), refusal), 0),
        }
    }

    fn plan(&self, image: &MetadataImage, op: &ControlOp) -> (MetadataImage, ControlReply, bool) {
        let config = &self.config;
        match op.clone() {
            ControlOp::CreateTopics {
                topics,
                validate_only,
            } => {
                let (next, outcomes) = controller::create_topics(image, topics, config);
                (next, ControlReply::Topics(outcomes), validate_only)
            }
            ControlOp::DeleteTopics { names } => {
                let (next, outcomes) = controller::delete_topics(image, names);
                (next, ControlReply::Topics(outcomes), false)
            }
            ControlOp::CreatePartitions {
                topics,
                validate_only,
            } => {
                let (next, outcomes) = controller::create_partitions(image, topics);
                (next, ControlReply::Topics(outcomes), validate_only)
            }
            ControlOp::AlterConfigs {
                changes,
                validate_only,
            } => {
                let (next, outcomes) = controller::alter_configs(image, changes, config);
                (next, ControlReply::Altered(outcomes), validate_only)
            }
            ControlOp::ReserveProducerIds => {
                let (next, first) = image.with_producer_ids_reserved(PRODUCER_ID_BLOCK);
                (next, ControlReply::ProducerId(Ok(first)), false)
            }
            ControlOp::CreateOffsetsTopic => {
                let next = image.with_offsets_topic(
                    config.group.offsets_topic_num_partitions,
                    config.cluster.offsets_topic_replication_factor,
                );
                let reply = if next.is_some() || image.topic(controller::OFFSETS_TOPIC).is_some() {
                    ControlReply::Done(Ok(()))
                } else {
                    ControlReply::Done(Err((
                        ResponseError::CoordinatorNotAvailable,
                        "not enough live brokers for __consumer_offsets".into(),
                    )))
                };
                (next.unwrap_or_else(|| image.clone()), reply, false)
            }
            ControlOp::CreateTransactionStateTopic => {
                let txn = &config.txn;
                let next = image.with_transaction_state_topic(
                    txn.state_log_num_partitions,
                    txn.state_log_replication_factor,
                    txn.state_log_min_isr,
                );
                let reply = if next.is_some() || image.topic(controller::TRANSACTION_STATE_TOPIC).is_some() {
                    ControlReply::Done(Ok(()))
                } else {
                    ControlReply::Done(Err((
                        ResponseError::CoordinatorNotAvailable,
                        "not enough live brokers for __transaction_state".into(),
                    )))
                };
                (next.unwrap_or_else(|| image.clone()), reply, false)
            }
            ControlOp::Heartbeat(b) => {
                let was_fenced = image.brokers.get(&b.id).is_some_and(|old| old.fenced);
                // (A broker alone has no one to hand over to.)
                let restarted = image
                    .brokers
                    .get(&b.id)
                    .is_some_and(|old| !old.fenced && old.incarnation != b.incarnation)
                    && image.live_brokers().iter().any(|o| o.id != b.id);
                let mut next = image.with_broker(BrokerMeta {
                    fenced: was_fenced,
                    ..b.clone()
                });
                if restarted {
                    // A restart within its session may have lost writes it
                    // never flushed: like Kafka's controller, move its
                    // leaderships to in-sync followers and take it out of
                    // the ISRs (where it is not the last member); it
                    // rejoins once it has caught up again.
                    tracing::info!("broker {} restarted: its partitions elect again", b.id);
                    next = next
                        .with_broker_fenced(b.id, true, config.unclean_leader_election_enable)
                        .with_broker_fenced(b.id, false, config.unclean_leader_election_enable);
                }
                if was_fenced {
                    tracing::info!("broker {} is back: unfenced", b.id);
                    next = next.with_broker_fenced(b.id, false, config.unclean_leader_election_enable);
                } else if !image.brokers.contains_key(&b.id) {
                    tracing::info!("broker {} registered at {}:{}", b.id, b.host, b.port);
                }
                // The last voter's broker to register brings `__consumer_offsets`
                // in the same change, so it spreads over every broker and a
                // client that sees them all also sees it.
                let voters = self.quorum.as_ref().map_or(0, |q| q.voters().len());
                if next.topic(controller::OFFSETS_TOPIC).is_none() && next.live_brokers().len() >= voters {
                    if let Some(with_offsets) = next.with_offsets_topic(
                        config.group.offsets_topic_num_partitions,
                        config.cluster.offsets_topic_replication_factor,
                    ) {
                        next = with_offsets;
                    }
                }
                (next, ControlReply::Done(Ok(())), false)
            }
            ControlOp::FenceBroker(id) => {
                let next = match image.brokers.get(&id) {
                    Some(b) if !b.fenced => {
                        tracing::warn!(
                            "broker {id} missed its session ({} ms): fenced, its partitions have no leader until it returns",
                            config.cluster.broker_session_timeout_ms
                        );
                        image.with_broker_fenced(id, true, config.unclean_leader_election_enable)
                    }
                    _ => image.clone(),
                };
                (next, ControlReply::Done(Ok(())), false)
            }
            ControlOp::ElectLeaders { unclean, partitions } => {
                let (next, results) = image.with_elected_leaders(unclean, partitions.as_deref());
                for (t, p, r) in &results {
                    if r.is_none() {
                        let leader = next.partition(t, *p).map_or(-1, |m| m.leader);
                        tracing::info!(
                            "{} election of {t}-{p}: broker {leader} leads",
                            if unclean { "unclean" } else { "preferred" }
                        );
                    }
                }
                (next, ControlReply::Partitions(results), false)
            }
            ControlOp::Reassign { changes } => {
                let mut next = image.clone();
                let mut results = Vec::with_capacity(changes.len());
                for (topic, partition, target) in changes {
                    match next.with_reassignment(&topic, partition, target.clone()) {
                        Ok(after) => {
                            let p = after.partition(&topic, partition).cloned();
                            tracing::info!(
                                "reassignment of {topic}-{partition} to {target:?}: replicas {:?}, adding {:?}, removing {:?}",
                                p.as_ref().map(|p| p.replicas.clone()),
                                p.as_ref().map(|p| p.adding_replicas.clone()),
                                p.as_ref().map(|p| p.removing_replicas.clone())
                            );
                            next = after;
                            results.push((topic, partition, None));
                        }
                        Err(refusal) => results.push((topic, partition, Some(refusal))),
                    }
                }
                (next, ControlReply::Partitions(results), false)
            }
            ControlOp::ControlledShutdown(id) => {
                let next = match image.brokers.get(&id) {
                    Some(b) if !b.fenced => {
                        tracing::info!("broker {id} is shutting down: moving its leaderships");
                        image.with_broker_fenced(id, true, config.unclean_leader_election_enable)
                    }
                    _ => image.clone(),
                };
                (next, ControlReply::Done(Ok(())), false)
            }
            ControlOp::AlterPartitions { items } => {
                // One image for the whole batch: cloning it per item would
                // cost O(partitions) each (10,000 followers rejoining).
                let mut next = image.clone();
                let mut results = Vec::with_capacity(items.len());
                let mut changed = 0usize;
                for item in &items {
                    let name = image
                        .topic_by_id(&item.topic_id)
                        .map_or_else(|| item.topic_id.to_string(), |t| t.name.clone());
                    match next.apply_isr(item) {
                        Ok(()) => {
                            changed += 1;
                            tracing::debug!(
                                "ISR of {name}-{} changed to {:?} (leader {})",
                                item.partition,
                                item.isr,
                                item.leader
                            );
                            results.push((name, item.partition, None));
                        }
                        Err(refusal) => results.push((name, item.partition, Some(refusal))),
                    }
                }
                if changed > 0 {
                    next.epoch += 1;
                    tracing::info!(
                        "ISR changes of {changed} partitions applied ({} asked)",
                        items.len()
                    );
                }
                (next, ControlReply::Partitions(results), false)
            }
            ControlOp::AllocateProducerId => (image.clone(), ControlReply::Unavailable, true),
        }
    }

    /// Whether a heartbeat changes the image: a new or restarted broker,
    /// new listeners, or one coming back from fenced.
    fn heartbeat_changes(&self, b: &BrokerMeta) -> bool {
        match self.image().brokers.get(&b.id) {
            None => true,
            Some(old) => {
                old.fenced
                    || *old
                        != BrokerMeta {
                            fenced: old.fenced,
                            ..b.clone()
                        }
            }
        }
    }

    /// Hands out ids from this node's block; a new block is reserved through
    /// the controller, so an id is never given twice in the cluster.
    async fn allocate_producer_id(&self, _shard: &Rc<Shard>) -> Result<i64, Refusal> {
        let (next_id, block_end) = self.producer_ids.get();
        if next_id < block_end {
            self.producer_ids.set((next_id + 1, block_end));
            return Ok(next_id);
        }
        match self.execute_or_forward(ControlOp::ReserveProducerIds).await.0 {
            ControlReply::ProducerId(Ok(first)) => {
                self.producer_ids.set((first + 1, first + PRODUCER_ID_BLOCK));
                Ok(first)
            }
            ControlReply::ProducerId(Err(refusal)) => Err(refusal),
            _ => Err((ResponseError::CoordinatorNotAvailable, "no controller".into())),
        }
    }

    /// Waits (bounded) until this node's image holds `offset`.
    async fn await_image(&self, offset: u64) {
        let deadline = Instant::now() + Duration::from_millis(self.config.cluster.quorum_request_timeout_ms);
        while self.image().offset < offset && Instant::now() < deadline {
            if self.quorum.is_none() {
                self.fetch_image().await;
                if self.image().offset >= offset {
                    break;
                }
            }
            let listener = self.changed().listen();
            if self.image().offset >= offset {
                break;
            }
            let pause = glommio::timer::sleep(Duration::from_millis(FORWARD_RETRY_MS));
            let _ = futures::future::select(listener, Box::pin(pause)).await;
        }
    }

    /// Waits (bounded) until this node's shards have applied `offset`.
    async fn await_published(&self, offset: u64) {
        let deadline = Instant::now() + Duration::from_millis(self.config.cluster.quorum_request_timeout_ms);
        while self.published.borrow().image.offset < offset && Instant::now() < deadline {
            let listener = self.published_event.listen();
            if self.published.borrow().image.offset >= offset {
                break;
            }
            let pause = glommio::timer::sleep(Duration::from_millis(FORWARD_RETRY_MS));
            let _ = futures::future::select(listener, Box::pin(pause)).await;
        }
    }

    /// Publishes every new image (and controller change) to all shards, in order.
    pub async fn publish_loop(self: Rc<Self>, shard: Rc<Shard>) {
        loop {
            let listener = self.changed().listen();
            let image = self.image();
            let controller_id = self.leader().unwrap_or(-1);
            let current = self.published.borrow().clone();
            let fenced = self.self_fenced.get();
            if image.epoch != current.image.epoch
                || controller_id != current.controller_id
                || fenced != current.fenced
            {
                let view = Arc::new(Self::view_for(
                    self.node_id,
                    controller_id,
                    image,
                    &current.placement,
                    self.nr_shards,
                    fenced,
                ));
                shard.broadcast(view.clone()).await;
                *self.published.borrow_mut() = view;
                self.published_event.notify(usize::MAX);
                continue;
            }
            if shard.is_stopping() {
                return;
            }
            listener.await;
        }
    }

    /// This broker's registration as the controller should know it.
    fn broker_meta(&self) -> BrokerMeta {
        BrokerMeta {
            id: self.node_id,
            incarnation: self.incarnation,
            host: self.config.advertised_host.clone(),
            port: self.config.advertised_port,
            rack: self.config.cluster.rack.clone(),
            partitions_max: self.nr_shards * self.config.shard_partitions_max,
            fenced: false,
        }
    }

    /// The broker's heartbeats, every `broker.heartbeat.interval.ms`.
    pub async fn heartbeat_loop(self: Rc<Self>, shard: Rc<Shard>) {
        let interval = Duration::from_millis(self.config.cluster.broker_heartbeat_interval_ms);
        while !shard.is_stopping() {
            let Ok(round) = self.heartbeat_round.acquire_permit(1).await else {
                return;
            };
            if self.heartbeats_stopped.get() {
                return;
            }
            match self
                .execute_or_forward(ControlOp::Heartbeat(self.broker_meta()))
                .await
            {
                (ControlReply::Done(Ok(())), offset) => {
                    // Lead nothing on an image older than the registration
                    // (a restart's elections are in it).
                    self.await_image(offset).await;
                    self.heartbeat_accepted(self.image().offset >= offset)
                }
                (ControlReply::Done(Err((code, message))), _) => {
                    tracing::debug!("heartbeat not accepted ({code:?}): {message}");
                    self.heartbeat_accepted(false);
                }
                _ => self.heartbeat_accepted(false),
            }
            if self.quorum.is_none() {
                self.fetch_image().await;
            }
            drop(round);
            glommio::timer::sleep(interval).await;
        }
    }

    /// Kafka's controlled shutdown: stops heartbeating, then asks the
    /// controller to fence this broker now (its leaderships move to in-sync
    /// followers, it leaves the ISRs) and waits until this node's shards
    /// have applied that. A quorum of one, or a controller-only node, has
    /// no one to hand over to.
    pub async fn controlled_shutdown(self: Rc<Self>) {
        let alone = self.quorum.is_some() && self.voter_addrs.len() <= 1;
        if alone || !self.config.cluster.roles.broker {
            return;
        }
        self.heartbeats_stopped.set(true);
        let _round = self.heartbeat_round.acquire_permit(1).await;
        let started = Instant::now();
        match self
            .execute_or_forward(ControlOp::ControlledShutdown(self.node_id))
            .await
        {
            (ControlReply::Done(Ok(())), offset) => {
                self.await_image(offset).await;
                self.await_published(offset).await;
                tracing::info!(
                    "controlled shutdown: leaderships moved to other replicas in {} ms",
                    started.elapsed().as_millis()
                );
            }
            _ => tracing::warn!("controlled shutdown: no controller answered; stopping anyway"),
        }
    }

    /// Tracks this broker's own session: past `broker.session.timeout.ms`
    /// without an accepted heartbeat the controller has fenced it, so it
    /// stops leading (its view says so) rather than serve as current a
    /// metadata view the cluster has moved past.
    fn heartbeat_accepted(&self, accepted: bool) {
        let session = Duration::from_millis(self.config.cluster.broker_session_timeout_ms);
        let fenced = if accepted {
            self.heartbeat_accepted_at.set(Instant::now());
            false
        } else {
            // Fenced stays fenced (a starting broker too) until accepted.
            self.self_fenced.get() || self.heartbeat_accepted_at.get().elapsed() > session
        };
        if fenced != self.self_fenced.replace(fenced) {
            if fenced {
                tracing::warn!(
                    "no controller accepted this broker's heartbeats for {} ms: it leads no partition until one does",
                    session.as_millis()
                );
            } else {
                tracing::info!("heartbeats accepted again: leading this broker's partitions");
            }
            self.changed().notify(usize::MAX);
        }
    }

    /// A broker-only node's metadata: the image from the controller it
    /// heartbeats to, when newer than its own.
    async fn fetch_image(&self) {
        let Some(leader) = self.leader() else { return };
        let offset = self.fetched.borrow().offset;
        match self.forward(leader, &ControllerRequest::Fetch { offset }).await {
            Ok(ControllerResponse::Image(Some(image))) => {
                let mut image = *image;
                image.reindex();
                if image.offset > self.fetched.borrow().offset {
                    *self.fetched.borrow_mut() = Arc::new(image);
                    self.changed.notify(usize::MAX);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!("metadata fetch from controller {leader} failed: {e}"),
        }
    }

    /// The active controller's duties: fence brokers past their session,
    /// create `__consumer_offsets`.
    pub async fn leader_loop(self: Rc<Self>, shard: Rc<Shard>) {
        let session = Duration::from_millis(self.config.cluster.broker_session_timeout_ms);
        while !shard.is_stopping() {
            glommio::timer::sleep(Duration::from_millis(FENCE_CHECK_MS)).await;
            let Some(quorum) = self.quorum.as_ref().filter(|q| q.is_leader()) else {
                self.leading_since.set(None);
                continue;
            };
            let now = Instant::now();
            let since = *self.leading_since.get().get_or_insert(now);
            self.leading_since.set(Some(since));
            let image = quorum.image();
            let expired: Vec<i32> = image
                .brokers
                .values()
                // This node's own broker heartbeats locally; a controller-only
                // node has none, so its old registration is fenced too.
                .filter(|b| !b.fenced && (b.id != self.node_id || !self.config.cluster.roles.broker))
                .filter(|b| {
                    // A new controller gives every broker a full session first.
                    let seen = self
                        .last_seen
                        .borrow()
                        .get(&b.id)
                        .copied()
                        .unwrap_or(since)
                        .max(since);
                    now.duration_since(seen) > session
                })
                .map(|b| b.id)
                .collect();
            for id in expired {
                let _ = self.execute(ControlOp::FenceBroker(id)).await;
            }
            // `__consumer_offsets` once every voter's broker registered (so
            // it spreads over all of them), or a session after this node
            // took over with fewer; a FindCoordinator asks for it earlier.
            let live = image.live_brokers().len();
            let everyone = live >= quorum.voters().len();
            let waited = now.duration_since(since) > session && live > 0;
            if image.topic(controller::OFFSETS_TOPIC).is_none() && (everyone || waited) {
                let _ = self.execute(ControlOp::CreateOffsetsTopic).await;
            }
            let cluster = &self.config.cluster;
            // As Kafka's: the first check an interval after taking over.
            let last_check = self.last_rebalance_check.get().unwrap_or(since).max(since);
            let rebalance_due = now.duration_since(last_check)
                >= Duration::from_millis(cluster.leader_imbalance_check_interval_ms);
            if cluster.auto_leader_rebalance_enable && rebalance_due {
                self.last_rebalance_check.set(Some(now));
                let (movable, ratios) = image.leader_imbalance();
                let over = ratios
                    .values()
                    .any(|r| *r > cluster.leader_imbalance_per_broker_percentage);
                if over && !movable.is_empty() {
                    tracing::info!(
                        "leader imbalance {ratios:?} (%) over leader.imbalance.per.broker.percentage: electing preferred leaders of {} partitions",
                        movable.len()
                    );
                    let _ = self
                        .execute(ControlOp::ElectLeaders {
                            unclean: false,
                            partitions: Some(movable),
                        })
                        .await;
                }
            }
        }
    }
}

/// A broker-only node's first image, before its shards start: asks the
/// voters in turn until one answers, and says every few seconds that it is
/// waiting. Blocking: runs on the main thread before any executor exists.
pub fn fetch_first_image(
    voter_addrs: &BTreeMap<i32, SocketAddr>,
    timeout_ms: u64,
    frame_max_bytes: usize,
) -> MetadataImage {
    let request = serde_json::to_vec(&ControllerRequest::Fetch { offset: 0 }).expect("serializable request");
    let started = Instant::now();
    let mut last_said = Instant::now();
    loop {
        for (id, addr) in voter_addrs {
            let answer = transport::call_blocking(*addr, &request, timeout_ms, frame_max_bytes)
                .ok()
                .and_then(|answer| serde_json::from_slice::<ControllerResponse>(&answer).ok());
            if let Some(ControllerResponse::Image(Some(image))) = answer {
                let mut image = *image;
                image.reindex();
                tracing::info!("metadata from controller {id}: offset {}", image.offset);
                return image;
            }
        }
        if last_said.elapsed() >= Duration::from_secs(5) {
            tracing::warn!(
                "waiting for the controller quorum ({:?}) for {} s",
                voter_addrs.keys().collect::<Vec<_>>(),
                started.elapsed().as_secs()
            );
            last_said = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(FORWARD_RETRY_MS * 5));
    }
}
