//! The controller quorum: a raft-rs `RawNode` over the metadata log, driven
//! by one glommio task on the controller shard (ticks, messages from peers,
//! proposals, Ready handling). Committed entries are replayed onto the
//! metadata image; the latest image is what the node publishes to its
//! shards. Raft messages to peers leave through `transport::Peer` queues.
//!
//! Lives on: the controller shard (`shard::CONTROLLER_SHARD`) of every node
//! with the controller role. Called by `shard` (proposals, reads of the
//! image, leadership) and by the transport (messages from peers).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_listener::Event;
use futures::channel::oneshot;
use kafka_protocol::ResponseError;
use raft::prelude::{Entry, EntryType, Message};
use raft::{RawNode, StateRole, Storage};

use super::metadata_log::{snapshot_image, MetadataLog, MetadataStore};
use super::records::MetadataRecord;
use super::transport::Peer;
use super::{MetadataImage, Refusal};

/// One raft tick. Election and heartbeat timeouts are counted in ticks.
pub const TICK_MS: u64 = 50;
/// Messages from peers waiting for the driver; beyond this the oldest are
/// dropped (raft retries what matters).
const INBOX_MAX: usize = 4096;

/// raft-rs reserves id 0 ("none"), Kafka's node ids start at 0: a node's
/// raft id is its node id + 1.
pub fn raft_id(node_id: i32) -> u64 {
    node_id as u64 + 1
}

fn node_of(raft_id: u64) -> i32 {
    raft_id as i32 - 1
}

pub struct QuorumSettings {
    pub node_id: i32,
    pub voters: Vec<i32>,
    pub election_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub snapshot_interval_bytes: u64,
}

pub struct Quorum {
    node_id: u64,
    settings: QuorumSettings,
    raw: RefCell<RawNode<MetadataStore>>,
    log: RefCell<MetadataLog>,
    image: RefCell<Arc<MetadataImage>>,
    inbox: RefCell<VecDeque<Message>>,
    /// Proposal id -> who waits for its entry to be applied.
    pending: RefCell<HashMap<u64, oneshot::Sender<Result<u64, Refusal>>>>,
    next_proposal: Cell<u64>,
    peers: BTreeMap<u64, Rc<Peer>>,
    /// Fired on new input for the driver (messages, proposals, stop).
    input: Event,
    /// Fired when the image changes or leadership does.
    pub changed: Event,
    leader: Cell<u64>,
    stopping: Cell<bool>,
    /// When the last "no quorum" line was logged.
    last_alone_log: Cell<Option<Instant>>,
}

fn raft_logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

/// raft-rs logs through slog; its lines go to tracing at debug level (its
/// own info lines are per-election chatter; ours say what matters).
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;
    fn log(&self, record: &slog::Record, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::warn!(target: "raft", "{}", record.msg()),
            _ => tracing::debug!(target: "raft", "{}", record.msg()),
        }
        Ok(())
    }
}

/// The image after a committed entry, or None when the entry carries no
/// records (a new leader's empty entry, a configuration change).
pub fn apply_entry(image: &MetadataImage, entry: &Entry) -> Option<Result<MetadataImage, String>> {
    if entry.get_entry_type() != EntryType::EntryNormal
        || entry.data.is_empty()
        || entry.index <= image.offset
    {
        return None;
    }
    Some(
        serde_json::from_slice::<Vec<MetadataRecord>>(entry.get_data())
            .map_err(|e| e.to_string())
            .and_then(|records| image.replay(&records, entry.index).map_err(|e| e.to_string())),
    )
}

pub fn not_controller(leader: Option<i32>) -> Refusal {
    (
        ResponseError::NotController,
        match leader {
            Some(id) => format!("The active controller is node {id}."),
            None => "No active controller: the quorum has no leader.".to_string(),
        },
    )
}

impl Quorum {
    /// Starts raft over `log` whose committed entries already produced
    /// `image`. `peers`: a message queue per other voter.
    pub fn new(
        settings: QuorumSettings,
        log: MetadataLog,
        image: MetadataImage,
        peers: BTreeMap<u64, Rc<Peer>>,
    ) -> Result<Rc<Quorum>, raft::Error> {
        let node_id = raft_id(settings.node_id);
        let election_tick = (settings.election_timeout_ms / TICK_MS).max(4) as usize;
        let config = raft::Config {
            id: node_id,
            election_tick,
            heartbeat_tick: (election_tick / 5).max(1),
            // Everything committed was replayed into `image` before this.
            applied: log
                .store()
                .initial_state()
                .map_or(0, |s| s.hard_state.commit)
                .max(image.offset)
                .max(log.snapshot_index()),
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            // A leader cut off from a majority steps down, so no node keeps
            // answering as the controller without a quorum behind it.
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        let raw = RawNode::new(&config, log.store(), &raft_logger())?;
        let quorum = Rc::new(Quorum {
            node_id,
            settings,
            raw: RefCell::new(raw),
            log: RefCell::new(log),
            image: RefCell::new(Arc::new(image)),
            inbox: RefCell::new(VecDeque::new()),
            pending: RefCell::new(HashMap::new()),
            next_proposal: Cell::new(1),
            peers,
            input: Event::new(),
            changed: Event::new(),
            leader: Cell::new(0),
            stopping: Cell::new(false),
            last_alone_log: Cell::new(None),
        });
        if quorum.settings.voters.len() == 1 {
            // A quorum of one needs no election timeout to pass.
            let _ = quorum.raw.borrow_mut().campaign();
        }
        Ok(quorum)
    }

    pub fn node_id(&self) -> i32 {
        node_of(self.node_id)
    }

    pub fn image(&self) -> Arc<MetadataImage> {
        self.image.borrow().clone()
    }

    pub fn voters(&self) -> &[i32] {
        &self.settings.voters
    }

    /// The active controller's node id, if the quorum has one.
    pub fn leader(&self) -> Option<i32> {
        match self.leader.get() {
            0 => None,
            id => Some(node_of(id)),
        }
    }

    pub fn is_leader(&self) -> bool {
        self.leader.get() == self.node_id
    }

    /// A raft message from a peer.
    pub fn step(&self, msg: Message) {
        let mut inbox = self.inbox.borrow_mut();
        if inbox.len() >= INBOX_MAX {
            inbox.pop_front();
        }
        inbox.push_back(msg);
        drop(inbox);
        self.input.notify(1);
    }

    pub fn stop(&self) {
        self.stopping.set(true);
        self.input.notify(1);
    }

    /// True when this node leads and has applied everything committed before
    /// its term, so a plan made from `image()` is made from the latest state.
    pub fn ready_to_plan(&self) -> bool {
        let raw = self.raw.borrow();
        raw.raft.state == StateRole::Leader
            && raw.raft.commit_to_current_term()
            && raw.raft.raft_log.applied >= raw.raft.raft_log.committed
    }

    /// Waits (up to the request timeout) until this node can plan, or says
    /// who the controller is.
    pub async fn await_ready_to_plan(&self) -> Result<(), Refusal> {
        let deadline = Instant::now() + Duration::from_millis(self.settings.request_timeout_ms);
        loop {
            if self.ready_to_plan() {
                return Ok(());
            }
            if self.leader().is_some_and(|l| l != self.node_id()) || Instant::now() >= deadline {
                return Err(not_controller(self.leader()));
            }
            let listener = self.changed.listen();
            if self.ready_to_plan() {
                return Ok(());
            }
            let _ = futures::future::select(
                listener,
                Box::pin(glommio::timer::sleep(Duration::from_millis(TICK_MS))),
            )
            .await;
        }
    }

    /// Appends one change (all of `records`, atomically) and waits until it
    /// is committed and applied here; returns its metadata offset.
    pub async fn propose(&self, records: Vec<MetadataRecord>) -> Result<u64, Refusal> {
        if records.is_empty() {
            return Ok(self.image().offset);
        }
        if !self.is_leader() {
            return Err(not_controller(self.leader()));
        }
        let data =
            serde_json::to_vec(&records).map_err(|e| (ResponseError::UnknownServerError, e.to_string()))?;
        let id = self.next_proposal.get();
        self.next_proposal.set(id + 1);
        if let Err(e) = self.raw.borrow_mut().propose(id.to_be_bytes().to_vec(), data) {
            return Err(not_controller_because(self.leader(), e));
        }
        let (tx, rx) = oneshot::channel();
        self.pending.borrow_mut().insert(id, tx);
        self.input.notify(1);
        let timeout = Duration::from_millis(self.settings.request_timeout_ms);
        let outcome = futures::future::select(rx, Box::pin(glommio::timer::sleep(timeout))).await;
        match outcome {
            futures::future::Either::Left((Ok(result), _)) => result,
            futures::future::Either::Left((Err(_), _)) => Err(not_controller(self.leader())),
            futures::future::Either::Right(_) => {
                self.pending.borrow_mut().remove(&id);
                Err((
                    ResponseError::RequestTimedOut,
                    format!(
                        "The metadata change was not committed within {} ms: the controller quorum has no majority.",
                        self.settings.request_timeout_ms
                    ),
                ))
            }
        }
    }

    /// The driver: ticks, steps messages, handles Ready. Ends at `stop`.
    pub async fn run(self: Rc<Self>) {
        let tick = Duration::from_millis(TICK_MS);
        let mut next_tick = Instant::now() + tick;
        while !self.stopping.get() {
            let listener = self.input.listen();
            if self.inbox.borrow().is_empty() && !self.raw.borrow().has_ready() {
                let wait = next_tick.saturating_duration_since(Instant::now());
                let _ = futures::future::select(listener, Box::pin(glommio::timer::sleep(wait))).await;
            }
            let messages: Vec<Message> = self.inbox.borrow_mut().drain(..).collect();
            for m in messages {
                // Messages from a stale term or an unknown peer are refused
                // by raft itself; nothing to do about them here.
                let _ = self.raw.borrow_mut().step(m);
            }
            self.report_peers();
            if Instant::now() >= next_tick {
                self.raw.borrow_mut().tick();
                next_tick = Instant::now() + tick;
                self.say_when_alone();
            }
            if let Err(e) = self.handle_ready() {
                // The metadata log cannot be written: going on would ack
                // changes that are not durable. Stop being a voter.
                tracing::error!("metadata log write failed, the controller stops: {e}");
                self.fail_pending(not_controller(None));
                return;
            }
            glommio::yield_if_needed().await;
        }
        self.fail_pending(not_controller(None));
    }

    /// Tells raft what became of messages to peers: a lost snapshot must be
    /// reported or the leader waits for that follower forever.
    fn report_peers(&self) {
        for (id, peer) in &self.peers {
            if peer.take_unreachable() {
                self.raw.borrow_mut().report_unreachable(*id);
            }
            if let Some(delivered) = peer.take_snapshot_outcome() {
                let status = if delivered {
                    raft::SnapshotStatus::Finish
                } else {
                    raft::SnapshotStatus::Failure
                };
                self.raw.borrow_mut().report_snapshot(*id, status);
            }
        }
    }

    fn say_when_alone(&self) {
        if self.leader.get() != 0 {
            self.last_alone_log.set(None);
            return;
        }
        let now = Instant::now();
        match self.last_alone_log.get() {
            None => self.last_alone_log.set(Some(now)),
            Some(since) if now.duration_since(since) >= Duration::from_secs(5) => {
                tracing::warn!(
                    "no controller quorum: waiting for a majority of voters {:?} to answer",
                    self.settings.voters
                );
                self.last_alone_log.set(Some(now));
            }
            Some(_) => {}
        }
    }

    fn fail_pending(&self, refusal: Refusal) {
        for (_, tx) in self.pending.borrow_mut().drain() {
            let _ = tx.send(Err(refusal.clone()));
        }
    }

    fn send(&self, messages: Vec<Message>) {
        for m in messages {
            match self.peers.get(&m.to) {
                Some(peer) => peer.send_raft(&m),
                None => tracing::debug!("raft message to unknown node {}", m.to),
            }
        }
    }

    fn handle_ready(&self) -> std::io::Result<()> {
        if !self.raw.borrow().has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.borrow_mut().ready();
        if let Some(ss) = ready.ss() {
            self.leadership_changed(ss.leader_id, ss.raft_state);
        }
        self.send(ready.take_messages());
        if !ready.snapshot().is_empty() {
            let snapshot = ready.snapshot().clone();
            let image = snapshot_image(&snapshot)?;
            self.log.borrow_mut().install_snapshot(snapshot)?;
            tracing::info!("installed a metadata snapshot at offset {}", image.offset);
            *self.image.borrow_mut() = Arc::new(image);
            self.changed.notify(usize::MAX);
        }
        self.apply(ready.take_committed_entries());
        self.log.borrow_mut().persist(ready.entries(), ready.hs())?;
        self.send(ready.take_persisted_messages());
        let mut light = self.raw.borrow_mut().advance(ready);
        if let Some(commit) = light.commit_index() {
            // Made durable now, so a restart replays every change it
            // acknowledged before it opens any partition.
            let mut log = self.log.borrow_mut();
            log.set_commit(commit);
            let hs = self.raw.borrow().raft.hard_state();
            log.persist(&[], Some(&hs))?;
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries());
        self.raw.borrow_mut().advance_apply();
        self.maybe_compact()?;
        Ok(())
    }

    fn leadership_changed(&self, leader: u64, role: StateRole) {
        let was = self.leader.replace(leader);
        if was == leader {
            return;
        }
        if leader == self.node_id && role == StateRole::Leader {
            tracing::info!(
                "became active controller (node {}, term {})",
                self.node_id(),
                self.raw.borrow().raft.term
            );
        } else if leader != 0 {
            tracing::info!("node {} is the active controller", node_of(leader));
        }
        if was == self.node_id {
            self.fail_pending(not_controller(self.leader()));
        }
        self.changed.notify(usize::MAX);
    }

    fn apply(&self, entries: Vec<Entry>) {
        for entry in entries {
            let Some(outcome) = apply_entry(&self.image(), &entry) else {
                continue;
            };
            let proposal = <[u8; 8]>::try_from(entry.get_context())
                .ok()
                .map(u64::from_be_bytes);
            let result = match outcome {
                Ok(next) => {
                    *self.image.borrow_mut() = Arc::new(next);
                    Ok(entry.index)
                }
                Err(e) => {
                    // Every node skips the same entry the same way, so images agree.
                    tracing::error!("metadata entry {} skipped: {e}", entry.index);
                    Err((ResponseError::UnknownServerError, e))
                }
            };
            if let Some(tx) = proposal.and_then(|id| self.pending.borrow_mut().remove(&id)) {
                let _ = tx.send(result);
            }
        }
        self.changed.notify(usize::MAX);
    }

    fn maybe_compact(&self) -> std::io::Result<()> {
        let image = self.image();
        let mut log = self.log.borrow_mut();
        if log.bytes_since_snapshot() >= self.settings.snapshot_interval_bytes
            && image.offset > log.snapshot_index()
        {
            log.compact(&image)?;
            tracing::info!("metadata snapshot at offset {}", image.offset);
        }
        Ok(())
    }
}

fn not_controller_because(leader: Option<i32>, e: raft::Error) -> Refusal {
    let (code, message) = not_controller(leader);
    (code, format!("{message} ({e})"))
}
