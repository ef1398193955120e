//! Executors, ownership and cross-shard routing.
//!
//! One glommio `LocalExecutor` per core (pinned), each running one `Shard`.
//! A shard owns the partitions the metadata image places on it: their logs,
//! their state, their I/O. Every shard accepts Kafka connections on the same
//! port (SO_REUSEPORT); a request that touches partitions of other shards is
//! split per owner, sent over glommio's channel mesh as one `ShardOp` per
//! destination shard, and the answers are merged by the protocol layer.
//! Shard 0 also runs the control work (metadata changes), which reaches the
//! other shards as ordered `ShardOp::Apply` messages.
//!
//! Back of envelope for the hop: a mesh message is a pointer-sized move into
//! a lock-free ring plus an eventfd wake when the peer sleeps; at 1 MiB
//! produce requests (~2.5k/s at disk speed) that is noise. The bytes of a
//! forwarded produce are a refcounted `Bytes` slice, never copied.

mod control;
mod hw_checkpoint;
mod ops;
mod partition_map;
mod replica;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use futures::channel::oneshot;
use futures::StreamExt;
use glommio::channels::channel_mesh::{Receivers, Senders};
use glommio::sync::Semaphore;

use crate::clock::now_ms;
use crate::config::BrokerConfig;
use crate::controller::{self, MetadataImage, NodeView};
use crate::partition::Partition;
use crate::storage::{offset_checkpoint, RecoveryMode};

pub use control::{fetch_first_image, ControlPlane};
pub use ops::{
    ControlOp, ControlReply, DeleteRecordsOutcome, DeleteRecordsPart, EpochOutcome, EpochPart, FetchOutcome,
    FetchPart, MarkerOutcome, MarkerPart, OffsetsOutcome, OffsetsPart, ProduceOutcome, ProducePart,
    ReplicaSize, WaitPart,
};

/// The shard that runs the node's control work: metadata changes (the
/// single writer of the image) and producer-id blocks. Control ops are sent
/// here; every other shard only applies the images it publishes.
pub const CONTROLLER_SHARD: usize = 0;

/// Work one shard asks of another. Each variant carries every part for the
/// destination shard, so a request fans out once per shard, not per partition.
pub enum ShardOp {
    Produce {
        parts: Vec<ProducePart>,
    },
    Fetch {
        parts: Vec<FetchPart>,
    },
    /// Returns when any listed partition has data past its offset, or after `timeout_ms`.
    Wait {
        parts: Vec<WaitPart>,
        timeout_ms: u64,
    },
    ListOffsets {
        parts: Vec<OffsetsPart>,
    },
    DeleteRecords {
        parts: Vec<DeleteRecordsPart>,
    },
    LeaderEpochs {
        parts: Vec<EpochPart>,
    },
    /// WriteTxnMarkers: end transactions on partitions this shard leads.
    TxnMarkers {
        parts: Vec<MarkerPart>,
    },
    /// DescribeLogDirs: this shard's replicas (those listed, or all).
    ReplicaSizes {
        wanted: Option<Vec<(String, i32)>>,
    },
    /// A new metadata image (with this node's placement) from the
    /// controller shard; applied in order.
    Apply {
        view: Arc<NodeView>,
    },
    /// Metadata changes, executed on shard 0 only.
    Control(ControlOp),
    /// A consumer-group request, executed on the group's coordinator shard.
    Group(Box<crate::group::GroupOp>),
    /// A transactional request, executed on the id's coordinator shard.
    Txn(Box<crate::txn::coordinator::TxnOp>),
    /// A metrics scrape: this shard's counters, histograms and partitions.
    Metrics,
    /// High watermarks of these partitions' replicas here (consumer lag).
    Watermarks {
        parts: Vec<(String, i32)>,
    },
}

pub enum ShardReply {
    Produce(Vec<ProduceOutcome>),
    Fetch(Vec<FetchOutcome>),
    Wait,
    ListOffsets(Vec<OffsetsOutcome>),
    DeleteRecords(Vec<DeleteRecordsOutcome>),
    LeaderEpochs(Vec<EpochOutcome>),
    TxnMarkers(Vec<MarkerOutcome>),
    ReplicaSizes(Vec<ReplicaSize>),
    Applied,
    Control(ControlReply),
    Group(crate::group::GroupReply),
    Txn(crate::txn::coordinator::TxnReply),
    Metrics(Box<crate::metrics::collect::ShardSample>),
    Watermarks(Vec<Option<i64>>),
}

pub struct ShardMsg {
    op: ShardOp,
    reply: oneshot::Sender<ShardReply>,
}

/// A metadata change that opens at least this many logs says how long it took.
const LOG_OPENS_REPORTED_FROM: usize = 100;

/// Shortest pause between two flush checks, whatever a topic's `flush.ms`.
const FLUSH_CHECK_MIN_MS: u64 = 10;

/// One core's share of the broker. Exists once per executor thread and is
/// touched only by that thread (`Rc`, `RefCell`, no locks).
pub struct Shard {
    pub id: usize,
    pub nr_shards: usize,
    pub config: Arc<BrokerConfig>,
    view: RefCell<Arc<NodeView>>,
    partitions: RefCell<partition_map::PartitionMap>,
    senders: Senders<ShardMsg>,
    peer_of_shard: Vec<usize>,
    /// The node's control plane (on `CONTROLLER_SHARD` only).
    pub control_plane: std::cell::OnceCell<Rc<ControlPlane>>,
    /// This shard's open segment files, shared by its logs (`log.fd.cache.size`).
    pub(crate) file_cache: Rc<crate::storage::FileCache>,
    /// The tail-cache budget shared by this shard's partitions (`log.cache.bytes`).
    tail_cache: Rc<crate::partition::tail_cache::CacheBudget>,
    /// Per destination shard: sends leave in call order.
    send_turns: Vec<crate::fifo::FifoLock>,
    /// Zero-copy sends running on the blocking-thread pool (`num.io.threads`).
    pub io_sends: Semaphore,
    connections: Cell<usize>,
    connections_max: usize,
    /// The consumer groups this shard coordinates (those of its
    /// `__consumer_offsets` partitions).
    pub(crate) groups: crate::group::Coordinator,
    /// The transactional ids this shard coordinates (those of its
    /// `__transaction_state` partitions).
    pub(crate) txns: crate::txn::coordinator::TxnCoordinator,
    stopping: Cell<bool>,
    /// Set once startup is done and the Kafka port is open (`/ready`).
    serving: Cell<bool>,
    /// Leader nodes this shard runs a fetcher task for (`replica`).
    fetchers: RefCell<std::collections::HashSet<i32>>,
    /// ISR changes waiting to go to the controller in one batch, and
    /// whether the task that sends them runs (`replica`).
    isr_queue: RefCell<Vec<(Rc<Partition>, controller::IsrChange)>>,
    isr_sender_running: Cell<bool>,
    /// High watermarks checkpointed before this start (`hw_checkpoint`),
    /// read at the first open; and what this shard last wrote.
    checkpointed_watermarks: std::cell::OnceCell<hw_checkpoint::Watermarks>,
    /// The data dir's recovery-point checkpoint of the last clean stop
    /// (empty after an unclean one), shared by the shards: a log's entry is
    /// taken at its first open, when its files are still as that stop left
    /// them.
    pub(crate) clean_log_ends: RefCell<Arc<std::sync::Mutex<offset_checkpoint::Offsets>>>,
    last_written_watermarks: RefCell<Vec<(String, i32, i64)>>,
    /// How this process opens a log for the first time: after an unclean
    /// stop, every log runs recovery, also those a metadata change (replayed
    /// by the quorum after start) opens later.
    pub(crate) open_mode: Cell<RecoveryMode>,
}

/// At shutdown, up to this many changed logs close with their own syncs;
/// more close unsynced under two syncs of the whole filesystem.
const SHUTDOWN_PER_LOG_SYNCS_MAX: usize = 256;

impl Shard {
    /// The shard of executor `id`, before its logs are opened (`apply`).
    pub fn new(
        id: usize,
        nr_shards: usize,
        config: Arc<BrokerConfig>,
        senders: Senders<ShardMsg>,
        peer_of_shard: Vec<usize>,
    ) -> Shard {
        Shard {
            id,
            nr_shards,
            config: config.clone(),
            view: RefCell::new(Arc::new(NodeView::default())),
            partitions: RefCell::new(partition_map::PartitionMap::default()),
            senders,
            peer_of_shard,
            control_plane: std::cell::OnceCell::new(),
            file_cache: crate::storage::FileCache::new(config.log_fd_cache_size),
            tail_cache: crate::partition::tail_cache::CacheBudget::new(config.log_cache_bytes),
            io_sends: Semaphore::new(config.num_io_threads as u64),
            send_turns: (0..nr_shards).map(|_| crate::fifo::FifoLock::new()).collect(),
            connections: Cell::new(0),
            connections_max: config.max_connections.div_ceil(nr_shards),
            stopping: Cell::new(false),
            serving: Cell::new(false),
            fetchers: RefCell::new(std::collections::HashSet::new()),
            isr_queue: RefCell::new(Vec::new()),
            isr_sender_running: Cell::new(false),
            checkpointed_watermarks: std::cell::OnceCell::new(),
            clean_log_ends: RefCell::new(Arc::default()),
            last_written_watermarks: RefCell::new(Vec::new()),
            open_mode: Cell::new(RecoveryMode::Clean),
            groups: crate::group::Coordinator::new(config.group.clone()),
            txns: crate::txn::coordinator::TxnCoordinator::new(config.txn.clone()),
        }
    }

    /// Runs every op other shards send this one, each as its own task so a
    /// long-polling Wait never holds up the ops queued behind it.
    pub fn serve_mesh(self: &Rc<Self>, mut receivers: Receivers<ShardMsg>) {
        for (_, receiver) in receivers.streams() {
            let shard = self.clone();
            glommio::spawn_local(async move {
                while let Some(msg) = receiver.recv().await {
                    let shard = shard.clone();
                    glommio::spawn_local(async move {
                        let reply = shard.execute(msg.op).await;
                        let _ = msg.reply.send(reply);
                    })
                    .detach();
                }
            })
            .detach();
        }
    }

    /// From now on the shard refuses new work: accept loops and waits end.
    pub fn stop(&self) {
        self.stopping.set(true);
    }

    pub fn image(&self) -> Arc<MetadataImage> {
        self.view.borrow().image.clone()
    }

    /// The image and this node's placement, as of the last applied change.
    pub fn view(&self) -> Arc<NodeView> {
        self.view.borrow().clone()
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Option<Rc<Partition>> {
        self.partitions.borrow().get(topic, partition).cloned()
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.get()
    }

    /// Startup is done: logs recovered, the port open.
    pub fn set_serving(&self) {
        self.serving.set(true);
    }

    pub fn is_serving(&self) -> bool {
        self.serving.get()
    }

    /// This shard's partitions by topic and index (for the metrics scrape).
    pub(crate) fn partitions_sorted(&self) -> Vec<Rc<Partition>> {
        let mut partitions: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
        partitions.sort_unstable_by(|a, b| (a.topic(), a.index()).cmp(&(b.topic(), b.index())));
        partitions
    }

    /// (bytes held, budget) of the shard's tail cache.
    pub(crate) fn tail_cache_bytes(&self) -> (usize, usize) {
        (self.tail_cache.bytes_used(), self.config.log_cache_bytes)
    }

    /// (open client connections, this shard's share of `max.connections`).
    pub(crate) fn connection_counts(&self) -> (usize, usize) {
        (self.connections.get(), self.connections_max)
    }

    /// Admits one more client connection, or refuses it at `max.connections`.
    pub fn try_open_connection(&self) -> bool {
        if self.connections.get() >= self.connections_max {
            return false;
        }
        self.connections.set(self.connections.get() + 1);
        true
    }

    pub fn close_connection(&self) {
        debug_assert!(self.connections.get() > 0);
        self.connections.set(self.connections.get().saturating_sub(1));
    }

    /// Runs `op` on shard `target`: directly when it is this shard, else over the mesh.
    pub async fn call(self: &Rc<Self>, target: usize, op: ShardOp) -> ShardReply {
        if target == self.id {
            return self.execute(op).await;
        }
        let (tx, rx) = oneshot::channel();
        let msg = ShardMsg { op, reply: tx };
        let peer = self.peer_of_shard[target];
        // Sends to one shard leave in call order even when its channel is
        // full (pipelined Produce requests rely on it; see `fifo`).
        let turn = self.send_turns[target].ticket().acquire().await;
        let sent = self.senders.send_to(peer, msg).await;
        drop(turn);
        if sent.is_err() {
            // The peer's executor is gone: only during shutdown.
            return ShardReply::Control(ControlReply::Unavailable);
        }
        rx.await.unwrap_or(ShardReply::Control(ControlReply::Unavailable))
    }

    async fn open_partition(
        &self,
        topic: &controller::TopicMeta,
        index: i32,
        mode: RecoveryMode,
    ) -> Result<Rc<Partition>, crate::storage::StorageError> {
        let dir = controller::partition_dir(&self.config.data_dir, &topic.name, index);
        let log_config = crate::config::topic::log_config(&topic.configs, &self.config);
        // The leader-epoch checkpoint is read with the log's listing, where
        // that runs: after a reboot, one trip to the blocking pool per
        // partition at a start, not two.
        let log = crate::storage::Log::open_reading(
            &dir,
            log_config,
            mode,
            self.file_cache.clone(),
            &[crate::partition::leader_epoch::CHECKPOINT_FILE],
        )
        .await?;
        let report = log.recovery_report();
        // A cut tail is worth a line of its own; plain rescans after a crash
        // (every log of the shard) are summed up by `apply`.
        if report.bytes_truncated > 0 {
            tracing::warn!(
                partition = %format!("{}-{index}", topic.name),
                "recovery: scanned {} segments ({} batches), truncated {} bytes, rebuilt {} indexes",
                report.segments_scanned,
                report.batches_scanned,
                report.bytes_truncated,
                report.indexes_rebuilt
            );
        } else if report.recovered_anything() {
            tracing::debug!(
                partition = %format!("{}-{index}", topic.name),
                "recovery: scanned {} segments ({} batches), rebuilt {} indexes",
                report.segments_scanned,
                report.batches_scanned,
                report.indexes_rebuilt
            );
        }
        let policy = crate::config::topic::partition_policy(&topic.configs, &self.config);
        let epoch = topic.partitions[index as usize].leader_epoch;
        let clean_log_end = self
            .clean_log_ends
            .borrow()
            .lock()
            .ok()
            .and_then(|mut ends| ends.remove(&(topic.name.clone(), index)));
        let partition = Partition::open(
            topic.name.clone(),
            topic.id,
            index,
            log,
            epoch,
            policy,
            self.tail_cache.clone(),
            clean_log_end,
        )
        .await?;
        let checkpointed = self
            .checkpointed_watermarks
            .get_or_init(|| hw_checkpoint::load_all(&self.config.data_dir));
        if let Some(hw) = checkpointed.get(&(topic.name.clone(), index)) {
            partition.set_checkpointed_high_watermark(*hw);
        }
        Ok(Rc::new(partition))
    }

    /// Writes this shard's high-watermark checkpoint if any moved since the
    /// last one (`replica.high.watermark.checkpoint.interval.ms`, and at
    /// clean shutdown).
    pub(crate) fn checkpoint_high_watermarks(&self) {
        let mut watermarks: Vec<(String, i32, i64)> = self
            .partitions
            .borrow()
            .iter()
            .map(|(t, i, p)| (t.to_string(), i, p.high_watermark()))
            .collect();
        watermarks.sort_unstable();
        if *self.last_written_watermarks.borrow() == watermarks {
            return;
        }
        match hw_checkpoint::store(&self.config.data_dir, self.id, &watermarks) {
            Ok(()) => *self.last_written_watermarks.borrow_mut() = watermarks,
            Err(e) => tracing::error!(shard = self.id, "cannot write the high-watermark checkpoint: {e}"),
        }
    }

    /// Brings this shard's partitions in line with `image`: opens the new ones,
    /// deletes the removed ones, updates settings of the rest.
    pub(crate) async fn apply(self: &Rc<Self>, view: Arc<NodeView>, mode: RecoveryMode) {
        let old = self.image();
        let image = view.image.clone();
        assert!(image.epoch >= old.epoch, "metadata epoch went back");
        *self.view.borrow_mut() = view.clone();
        // Deleted, moved or re-created (new id) partitions go first, so a
        // re-created topic never opens over its predecessor's files.
        let gone: Vec<(String, i32)> = self
            .partitions
            .borrow()
            .iter()
            .filter(|(t, i, p)| {
                view.replica_shard(t, *i) != Some(self.id)
                    || image.topic(t).map(|m| m.id) != Some(p.topic_id())
            })
            .map(|(t, i, _)| (t.to_string(), i))
            .collect();
        let concurrency = self.config.num_recovery_threads_per_data_dir;
        let removed: Vec<(String, i32, Rc<Partition>)> = {
            let mut partitions = self.partitions.borrow_mut();
            gone.into_iter()
                .filter_map(|(t, i)| partitions.remove(&t, i).map(|p| (t, i, p)))
                .collect()
        };
        futures::stream::iter(removed)
            .for_each_concurrent(concurrency, |(topic, index, p)| {
                let image = &image;
                let view = &view;
                async move {
                    p.replication_moved();
                    // A partition that merely moved to another shard keeps
                    // its files; one deleted, or no longer replicated on
                    // this node (a reassignment moved it away), loses them,
                    // as Kafka's StopReplica with delete.
                    let topic_deleted = image.topic(&topic).map(|m| m.id) != Some(p.topic_id());
                    let replica_removed = image
                        .partition(&topic, index)
                        .is_some_and(|m| !m.replicas.contains(&view.node_id));
                    let result = if topic_deleted || replica_removed {
                        p.log().delete().await
                    } else {
                        p.log().close().await
                    };
                    if let Err(e) = result {
                        tracing::error!("cannot remove {topic}-{index}: {e}");
                    }
                }
            })
            .await;
        let mut to_open = Vec::new();
        for topic in image.topics.values() {
            for (index, _) in topic.partitions.iter().enumerate() {
                let index = index as i32;
                if view.placement.shard(&topic.id, index) != Some(self.id) {
                    continue;
                }
                let existing = self.partitions.borrow().get(&topic.name, index).cloned();
                match existing {
                    Some(p) if p.topic_id() == topic.id => {
                        let changed = old.topic(&topic.name).is_none_or(|t| t.configs != topic.configs);
                        if changed {
                            self.reconfigure(&p, topic);
                        }
                    }
                    _ => to_open.push((topic, index)),
                }
            }
        }
        // Opening is I/O (and a recovery scan after a crash): many at once,
        // so thousands of partitions open in about the time of the slowest
        // few rather than of all of them in turn.
        let opening = to_open.len();
        let open_started = std::time::Instant::now();
        let mut opened = futures::stream::iter(to_open)
            .map(
                |(topic, index)| async move { (topic, index, self.open_partition(topic, index, mode).await) },
            )
            .buffer_unordered(concurrency);
        let (mut recovered, mut logs_recovered) = (crate::storage::RecoveryReport::default(), 0usize);
        while let Some((topic, index, result)) = opened.next().await {
            match result {
                Ok(p) => {
                    let report = p.log().recovery_report();
                    if report.recovered_anything() {
                        recovered.add(&report);
                        logs_recovered += 1;
                    }
                    self.partitions.borrow_mut().insert(&topic.name, index, p);
                }
                Err(e) => tracing::error!("cannot open {}-{index}: {e}", topic.name),
            }
        }
        if logs_recovered > 0 {
            tracing::warn!(
                shard = self.id,
                "recovery: scanned {} segments ({} batches) of {logs_recovered} logs, truncated {} bytes, \
                 rebuilt {} indexes",
                recovered.segments_scanned,
                recovered.batches_scanned,
                recovered.bytes_truncated,
                recovered.indexes_rebuilt
            );
        }
        if opening >= LOG_OPENS_REPORTED_FROM {
            tracing::info!(
                shard = self.id,
                "opened {opening} logs in {} ms",
                open_started.elapsed().as_millis()
            );
        }
        // Every replica of the image has its role, those just opened too;
        // groups follow their `__consumer_offsets` partition's leadership,
        // transactional ids their `__transaction_state` partition's.
        let changes = self.update_roles(&view);
        for index in changes.offsets_lost {
            self.groups.unload_partition(&**self, index);
        }
        for index in changes.txn_lost {
            self.txns.unload_partition(index);
        }
        if !changes.offsets_gained.is_empty() {
            self.groups
                .load_partitions(&**self, &changes.offsets_gained)
                .await;
        }
        if !changes.txn_gained.is_empty() {
            self.txns.load_partitions(self, &changes.txn_gained).await;
        }
    }

    /// Applies a topic's new settings live; a retention change takes effect
    /// now rather than at the next `log.retention.check.interval.ms` sweep.
    fn reconfigure(&self, partition: &Rc<Partition>, topic: &controller::TopicMeta) {
        partition.set_policy(crate::config::topic::partition_policy(
            &topic.configs,
            &self.config,
        ));
        partition
            .log()
            .set_config(crate::config::topic::log_config(&topic.configs, &self.config));
        let p = partition.clone();
        glommio::spawn_local(async move {
            if let Err(e) = p.log().enforce_retention(now_ms()).await {
                tracing::error!("retention of {}-{} failed: {e}", p.topic(), p.index());
            }
        })
        .detach();
    }

    /// Retention for every partition of this shard, one at a time so a large
    /// deletion never holds the shard for long.
    pub(crate) async fn enforce_retention(&self) {
        let parts: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
        let now_ms = now_ms();
        for p in parts {
            match p.log().enforce_retention(now_ms).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    "retention deleted {n} segments of {}-{}, log start offset now {}",
                    p.topic(),
                    p.index(),
                    p.log_start_offset()
                ),
                Err(e) => tracing::error!("retention of {}-{} failed: {e}", p.topic(), p.index()),
            }
            glommio::yield_if_needed().await;
        }
    }

    /// Expires idle producers and snapshots producer state of every partition
    /// that has some (`Partition::snapshot_producers_with_state`).
    pub(crate) async fn checkpoint_producers(&self) {
        let parts: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
        let now_ms = now_ms();
        for p in parts {
            p.expire_producers(now_ms, self.config.producer_id_expiration_ms);
            if let Err(e) = p.snapshot_producers_with_state().await {
                tracing::error!("producer snapshot of {}-{} failed: {e}", p.topic(), p.index());
            }
            glommio::yield_if_needed().await;
        }
    }

    /// One compaction pass over each compacted log that is due (see
    /// `storage::cleaner`).
    pub(crate) async fn compact_logs(&self) {
        let parts: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
        let dedupe_buffer_bytes = self.config.log_cleaner_dedupe_buffer_size / self.nr_shards.max(1);
        let io_max_bytes_per_s =
            self.config.log_cleaner_io_max_bytes_per_second / self.nr_shards.max(1) as f64;
        for p in parts {
            crate::metrics::cleaner_running(true);
            let pass = p
                .log()
                .compact(now_ms(), dedupe_buffer_bytes, io_max_bytes_per_s)
                .await;
            crate::metrics::cleaner_running(false);
            match pass {
                Ok(Some(pass)) => {
                    crate::metrics::count_cleaner_pass(
                        pass.bytes_before,
                        pass.bytes_after,
                        pass.records_removed,
                    );
                    p.forget_cached_below(pass.clean_up_to_offset);
                    tracing::info!(
                    partition = %format!("{}-{}", p.topic(), p.index()),
                    segments = pass.cleaned.len(),
                    records_removed = pass.records_removed,
                    bytes_before = pass.bytes_before,
                    bytes_after = pass.bytes_after,
                    install_blocking_us = pass.install_blocking_us,
                    "compacted"
                    );
                }
                Ok(None) => {}
                Err(e) => tracing::error!("compaction of {}-{} failed: {e}", p.topic(), p.index()),
            }
            glommio::yield_if_needed().await;
        }
    }

    /// Flushes every log whose unsynced data is older than its `flush.ms`
    /// (the topic's, or `log.flush.interval.ms`); returns how long to sleep
    /// before the next check: `log.flush.scheduler.interval.ms`, or less when
    /// a log's `flush.ms` is shorter.
    pub(crate) async fn flush_overdue(&self) -> u64 {
        let parts: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
        let mut next_check_ms = self.config.log_flush_scheduler_interval_ms;
        let now = now_ms();
        for p in parts {
            let log = p.log();
            next_check_ms = next_check_ms.min(log.flush_interval_ms());
            if log.flush_overdue(now) {
                if let Err(e) = log.flush().await {
                    tracing::error!("flush of {}-{} failed: {e}", p.topic(), p.index());
                }
            }
            glommio::yield_if_needed().await;
        }
        next_check_ms.max(FLUSH_CHECK_MIN_MS)
    }

    /// Closes every log for a clean stop. Some(log ends) when all closed
    /// cleanly and are durable: the caller writes them as the data dir's
    /// recovery-point checkpoint, then the clean-shutdown marker. None: the
    /// next start runs recovery.
    pub(crate) async fn close_all(&self) -> Option<Vec<(String, i32, i64)>> {
        self.checkpoint_high_watermarks();
        let parts: Vec<Rc<Partition>> = self.partitions.borrow().values().cloned().collect();
        let clean = Cell::new(true);
        let concurrency = self.config.num_recovery_threads_per_data_dir;
        // Few changed logs: each closes with its own syncs. syncfs flushes
        // the whole filesystem, whatever else made it dirty (a build on the
        // same disk took minutes), so it pays only when per-log syncs would
        // cost more.
        // Logs a recovery opened count too: after a crash every log of the
        // shard has indexes to write, and closing 50,000 of them with their
        // own syncs overran shutdown.timeout.ms, so every later stop was
        // unclean as well.
        let changed = parts.iter().filter(|p| p.log().close_writes_files()).count();
        let deferred = changed > SHUTDOWN_PER_LOG_SYNCS_MAX;
        let written = Cell::new(false);
        // Deferred: files first, unsynced and many logs at once; then one
        // sync of the whole filesystem. Five fsyncs and a directory sync per
        // log made a stop with data in 10,000 partitions take 20.9 s; a
        // recovery point and marker file per log, 100,000 of them, most of
        // 23 s.
        futures::stream::iter(parts.iter())
            .for_each_concurrent(concurrency, |p| {
                let (clean, written) = (&clean, &written);
                async move {
                    if let Err(e) = p.snapshot_producers_with_state().await {
                        tracing::error!("producer snapshot of {}-{} failed: {e}", p.topic(), p.index());
                        clean.set(false);
                    }
                    let closed = if deferred {
                        p.log().close_deferred().await
                    } else {
                        p.log().close().await.map(|()| false)
                    };
                    match closed {
                        Ok(true) => written.set(true),
                        Ok(false) => {}
                        Err(e) => {
                            tracing::error!("closing {}-{} failed: {e}", p.topic(), p.index());
                            clean.set(false);
                        }
                    }
                }
            })
            .await;
        if !clean.get() {
            return None;
        }
        if written.get() {
            if let Err(e) = crate::storage::sync_filesystem(&self.config.data_dir).await {
                // No marker: the next start recovers these logs from their
                // recovery points, which is correct whatever did not land.
                tracing::error!("syncing the data dir at shutdown failed: {e}");
                return None;
            }
        }
        Some(
            parts
                .iter()
                .map(|p| (p.topic().to_string(), p.index(), p.log().log_end_offset()))
                .collect(),
        )
    }
}

impl Shard {
    /// Runs one op per owner shard for `work` (owner, part), all shards at
    /// once, and returns every outcome. A shard that is gone (shutdown)
    /// contributes none; callers answer its parts with an error.
    pub async fn fan_out<P, O>(
        self: &Rc<Self>,
        work: Vec<(usize, P)>,
        op: impl Fn(Vec<P>) -> ShardOp,
        outcomes: impl Fn(ShardReply) -> Option<Vec<O>>,
    ) -> Vec<O> {
        let calls = self
            .group_by_owner(work)
            .into_iter()
            .map(|(owner, parts)| self.call(owner, op(parts)));
        futures::future::join_all(calls)
            .await
            .into_iter()
            .filter_map(outcomes)
            .flatten()
            .collect()
    }

    /// Flattens a list of per-partition items into one op per owning shard,
    /// keeping each item's position (`slot`) so answers can be merged back.
    pub fn group_by_owner<T>(&self, items: Vec<(usize, T)>) -> Vec<(usize, Vec<T>)> {
        let mut by_shard: Vec<Vec<T>> = (0..self.nr_shards).map(|_| Vec::new()).collect();
        for (owner, item) in items {
            by_shard[owner].push(item);
        }
        by_shard
            .into_iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .collect()
    }
}

/// The consumer-group coordinator's view of its shard.
impl crate::group::GroupStore for Shard {
    fn shard_id(&self) -> usize {
        self.id
    }

    fn image(&self) -> Arc<MetadataImage> {
        Shard::image(self)
    }

    fn view(&self) -> Arc<NodeView> {
        Shard::view(self)
    }

    fn offsets_partition(&self, index: i32) -> Option<Rc<Partition>> {
        self.partition(crate::group::OFFSETS_TOPIC, index)
    }
}
