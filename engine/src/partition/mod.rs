//! One partition's state machine on the shard that owns it: the log, the
//! leader epoch, the high watermark and the append notification that wakes
//! long-polling fetches.
//!
//! Lives on exactly one shard (the owner recorded in the metadata image) and
//! is touched by no other thread; other shards reach it through
//! `shard::ShardOp` messages. Its replica role (leader or follower, see
//! `replica`) decides who may append and how far consumers may read: up to
//! the high watermark, which the leader derives from what its in-sync
//! followers have fetched.

pub mod leader_epoch;
pub mod producer_state;
pub mod replica;
pub mod tail_cache;
pub mod txn_index;

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::ResponseError;

use crate::storage::recompress::{recompress, RecompressError, TopicCompression};
use crate::storage::{batch, AppendResult, Log, OtherFile, Records, StorageError};
use leader_epoch::LeaderEpochCache;
use producer_state::{CompletedTxn, MarkerRefusal, ProducerStates, SequenceCheck};
pub use replica::{Following, Role};
use tail_cache::{CacheBudget, PartitionCache};
use txn_index::{AbortedIndex, AbortedTxn};

/// Per-topic settings the partition enforces on its append path.
#[derive(Clone, Debug)]
pub struct PartitionPolicy {
    /// `max.message.bytes`: the largest record batch accepted.
    pub max_message_bytes: usize,
    /// `message.timestamp.type=LogAppendTime`: produce answers carry the append time.
    pub log_append_time: bool,
    /// `compression.type`: the codec batches are stored in.
    pub compression: TopicCompression,
}

/// Why a partition refused a request, already in Kafka's terms.
#[derive(Debug, Clone)]
pub struct PartitionError {
    pub code: ResponseError,
    pub message: String,
}

impl PartitionError {
    pub fn new(code: ResponseError, message: impl Into<String>) -> Self {
        PartitionError {
            code,
            message: message.into(),
        }
    }
}

impl From<std::io::Error> for PartitionError {
    fn from(e: std::io::Error) -> Self {
        PartitionError::new(ResponseError::KafkaStorageError, e.to_string())
    }
}

impl From<StorageError> for PartitionError {
    fn from(e: StorageError) -> Self {
        let code = match &e {
            StorageError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange,
            StorageError::InvalidBatch(_) => ResponseError::CorruptMessage,
            StorageError::Closed => ResponseError::NotLeaderOrFollower,
            StorageError::Io(_) | StorageError::Glommio(_) => ResponseError::KafkaStorageError,
            StorageError::Corrupt(_) => ResponseError::KafkaStorageError,
            StorageError::NonContiguous { .. } => ResponseError::OffsetOutOfRange,
        };
        PartitionError::new(code, e.to_string())
    }
}

/// What a fetch of one partition found.
pub struct ReadOutcome {
    pub records: Records,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub last_stable_offset: i64,
}

/// How far a read may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadLimit {
    /// A follower's: the log end.
    LogEnd,
    /// A read_uncommitted consumer's: the high watermark.
    HighWatermark,
    /// A read_committed consumer's: the last stable offset.
    LastStable,
}

pub struct Partition {
    topic: String,
    /// Distinguishes a re-created topic of the same name.
    topic_id: uuid::Uuid,
    index: i32,
    log: Rc<Log>,
    /// Epochs never go back; bumped by the controller when leadership moves.
    leader_epoch: Cell<i32>,
    /// Which epoch began at which offset (the leader-epoch checkpoint).
    epochs: RefCell<LeaderEpochCache>,
    /// Leader (with its followers' progress) or follower of another node.
    role: RefCell<Role>,
    /// Fired when the high watermark moves or the role changes: acks=all
    /// produces wait on it.
    replication_changed: event_listener::Event,
    /// Fired when the log end offset or the high watermark moves, or the
    /// role changes: long-polling fetches of this partition wait on it. Per
    /// partition, not per shard, so an append wakes only the fetches that
    /// read this partition.
    data_changed: event_listener::Event,
    policy: RefCell<PartitionPolicy>,
    /// Idempotent producers' recent sequences (Kafka's producer state).
    producers: RefCell<ProducerStates>,
    /// Held from the sequence check to the state update of an idempotent
    /// append, so a retry racing its original (a new connection while the
    /// first write is in flight) is seen as a duplicate; also held while a
    /// snapshot is taken, so the snapshot's offset matches its state.
    /// Non-idempotent appends never take it.
    /// Serialises idempotent appends (check, write, record) and snapshots,
    /// strictly in arrival order (see `fifo`).
    idempotent_lock: crate::fifo::FifoLock,
    /// Keeps arrival order for appends to a topic with a `compression.type`
    /// codec: one waiting for the blocking pool to re-encode it must not be
    /// overtaken by a later one (`append`).
    codec_order: crate::fifo::FifoLock,
    /// Log end offset covered by the last producer-state snapshot.
    snapshot_offset: Cell<i64>,
    /// A snapshot task started by `snapshot_after_roll` has not finished.
    snapshot_running: Cell<bool>,
    /// Recently appended batches, served to tail consumers from memory.
    cache: Rc<PartitionCache>,
    /// Aborted transactions of the log (`txn_index`).
    aborted: RefCell<AbortedIndex>,
    /// Bytes and records in and out, for the metrics endpoint.
    counters: crate::metrics::PartitionCounters,
}

impl Partition {
    /// Wraps a just-opened log: loads (or starts) its leader-epoch
    /// checkpoint and rebuilds idempotent-producer state from the newest
    /// snapshot plus the log after it. `clean_log_end`: the log end the data
    /// dir's recovery-point checkpoint holds for this log, when the last
    /// stop was clean and this is the log's first open since (see
    /// `snapshot_producers_with_state`).
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        topic: String,
        topic_id: uuid::Uuid,
        index: i32,
        log: Rc<Log>,
        leader_epoch: i32,
        policy: PartitionPolicy,
        cache_budget: Rc<CacheBudget>,
        clean_log_end: Option<i64>,
    ) -> Result<Self, StorageError> {
        // A new partition's directory holds no checkpoint or snapshot:
        // two lookups fewer each when 100,000 are created at once.
        let mut txn_files = Vec::new();
        let (epochs, (producers, snapshot_offset, replayed)) = if log.created_by_open() {
            (
                LeaderEpochCache::default(),
                (ProducerStates::new(), -1, Vec::new()),
            )
        } else {
            // The log's open listed the directory: no lookups for files
            // it did not see.
            let listed = log.take_other_files();
            let checkpoint = listed
                .as_ref()
                .map(|files| files.iter().find(|f| f.name == leader_epoch::CHECKPOINT_FILE));
            let epochs = match checkpoint {
                Some(None) => LeaderEpochCache::default(),
                Some(Some(OtherFile {
                    bytes: Some(bytes), ..
                })) => LeaderEpochCache::from_bytes(log.dir(), bytes),
                // Not read with the listing (the log was opened without
                // asking for it, or the file went in between).
                Some(Some(_)) | None => LeaderEpochCache::load(log.dir())?,
            };
            txn_files = txn_index_files(&log, listed.as_deref())?;
            (
                epochs,
                rebuild_producer_states(&log, clean_log_end, listed.as_deref()).await?,
            )
        };
        let partition = Partition {
            topic,
            topic_id,
            index,
            log,
            leader_epoch: Cell::new(leader_epoch),
            epochs: RefCell::new(epochs),
            role: RefCell::new(Role::Follower(Following::offline(leader_epoch))),
            replication_changed: event_listener::Event::new(),
            data_changed: event_listener::Event::new(),
            policy: RefCell::new(policy),
            producers: RefCell::new(producers),
            idempotent_lock: crate::fifo::FifoLock::new(),
            codec_order: crate::fifo::FifoLock::new(),
            snapshot_offset: Cell::new(snapshot_offset),
            snapshot_running: Cell::new(false),
            cache: PartitionCache::new(cache_budget),
            aborted: RefCell::new(AbortedIndex::default()),
            counters: crate::metrics::PartitionCounters::default(),
        };
        partition.load_aborted(&txn_files, replayed).await?;
        Ok(partition)
    }

    /// Fills the aborted-transaction index from the segments' `.txnindex`
    /// files and the aborts the producer-state replay found (a marker whose
    /// entry a crash lost), forgets entries past the log end (a marker the
    /// crash lost), and writes back the files of segments that changed.
    async fn load_aborted(
        &self,
        files: &[(i64, Vec<u8>)],
        replayed: Vec<CompletedTxn>,
    ) -> Result<(), StorageError> {
        let log_end = self.log.log_end_offset();
        let mut stale = Vec::new();
        {
            let mut aborted = self.aborted.borrow_mut();
            for (base, bytes) in files {
                let entries = txn_index::decode(bytes);
                if entries.len() * txn_index::ENTRY_BYTES != bytes.len()
                    || entries.iter().any(|e| e.last_offset >= log_end)
                {
                    stale.push(*base);
                }
                for entry in entries {
                    aborted.insert(entry);
                }
            }
            aborted.truncate_from(log_end);
            aborted.trim_below(self.log.log_start_offset());
        }
        self.absorb_replayed(replayed, stale).await
    }

    /// Adds the aborts a producer-state replay found to the index and
    /// rewrites the `.txnindex` files of their segments and of `also`.
    async fn absorb_replayed(
        &self,
        replayed: Vec<CompletedTxn>,
        mut also: Vec<i64>,
    ) -> Result<(), StorageError> {
        for completed in replayed.into_iter().filter(|c| c.aborted) {
            // The stable offset at its end is not known after the fact; the
            // entry after its marker is what Kafka's rebuild records too.
            let entry = AbortedTxn::of(completed, completed.last_offset + 1);
            if self.aborted.borrow_mut().insert(entry) {
                also.extend(self.log.segment_base_of(entry.last_offset));
            }
        }
        also.sort_unstable();
        also.dedup();
        for base in also {
            self.store_txn_index(base).await?;
        }
        Ok(())
    }

    /// After a truncation to `log_end`: forgets the aborts past it, adds the
    /// ones the rebuild replayed, rewrites the active segment's file.
    pub(crate) async fn aborted_after_truncation(
        &self,
        log_end: i64,
        replayed: Vec<CompletedTxn>,
    ) -> Result<(), StorageError> {
        self.aborted.borrow_mut().truncate_from(log_end);
        self.absorb_replayed(replayed, vec![self.log.active_base_offset()])
            .await
    }

    /// Writes segment `base`'s `.txnindex` from the index (temp file,
    /// fdatasync, rename: an entry must not be lost once its marker is
    /// answered), or removes it when the segment has no aborts.
    async fn store_txn_index(&self, base: i64) -> Result<(), StorageError> {
        let entries: Vec<AbortedTxn> = {
            let aborted = self.aborted.borrow();
            aborted
                .in_range(base, i64::MAX)
                .into_iter()
                .filter(|e| self.log.segment_base_of(e.last_offset) == Some(base))
                .collect()
        };
        let name = crate::storage::segment_file_name(base, crate::storage::TXN_INDEX_SUFFIX);
        if entries.is_empty() {
            return match std::fs::remove_file(self.log.dir().join(&name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            };
        }
        crate::storage::write_file_atomic(self.log.dir(), &name, txn_index::encode(&entries)).await
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn topic_id(&self) -> uuid::Uuid {
        self.topic_id
    }

    pub fn index(&self) -> i32 {
        self.index
    }

    pub fn log(&self) -> &Rc<Log> {
        &self.log
    }

    pub fn leader_epoch(&self) -> i32 {
        self.leader_epoch.get()
    }

    pub fn set_leader_epoch(&self, epoch: i32) {
        assert!(epoch >= self.leader_epoch.get(), "leader epoch went back");
        self.leader_epoch.set(epoch);
    }

    pub fn set_policy(&self, policy: PartitionPolicy) {
        *self.policy.borrow_mut() = policy;
    }

    /// The offset below which every record is on every in-sync replica:
    /// consumers read up to here.
    pub fn high_watermark(&self) -> i64 {
        match &*self.role.borrow() {
            Role::Leader(l) => l.high_watermark(),
            Role::Follower(f) => f.high_watermark.min(self.log.log_end_offset()),
        }
    }

    pub fn log_end_offset(&self) -> i64 {
        self.log.log_end_offset()
    }

    /// Bytes and records in and out, for the metrics endpoint.
    pub fn counters(&self) -> &crate::metrics::PartitionCounters {
        &self.counters
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log.log_start_offset()
    }

    /// Below this offset no record belongs to an open transaction, and
    /// every record is below the high watermark: read_committed consumers
    /// read up to here (Kafka's last stable offset).
    pub fn last_stable_offset(&self) -> i64 {
        let high_watermark = self.high_watermark();
        self.producers
            .borrow()
            .first_unstable_offset()
            .map_or(high_watermark, |first| first.min(high_watermark))
    }

    /// The aborted transactions a read_committed read from `from` may hold
    /// records of, up to the last stable offset: (producer id, first offset).
    pub fn aborted_transactions(&self, from: i64) -> Vec<(i64, i64)> {
        self.aborted.borrow().overlapping(from, self.last_stable_offset())
    }

    /// Checks the client's batches (header, lengths, CRC32C, size limit) and
    /// appends them. The payload is decompressed only when the topic's
    /// `compression.type` names a codec other than the batch's
    /// (`in_topic_codec`).
    pub async fn append(&self, records: &Bytes) -> Result<AppendResult, PartitionError> {
        self.check_leader()?;
        let (max_message_bytes, compression) = {
            let policy = self.policy.borrow();
            (policy.max_message_bytes, policy.compression)
        };
        // Drawn in the request's first poll, so in arrival order.
        let order = (compression != TopicCompression::Producer).then(|| self.codec_order.ticket());
        let batches = batch::split_validated(records).map_err(|e| {
            let code = match e {
                batch::BatchError::UnsupportedMagic(_) => ResponseError::UnsupportedForMessageFormat,
                _ => ResponseError::CorruptMessage,
            };
            PartitionError::new(code, format!("{}-{}: {e}", self.topic, self.index))
        })?;
        check_batch_sizes(&batches, max_message_bytes)?;
        let (batches, order) = match order {
            None => (batches, None),
            Some(ticket) => {
                let batches = self.in_topic_codec(batches, compression).await?;
                // Re-encoded batches must fit too, as in Kafka.
                check_batch_sizes(&batches, max_message_bytes)?;
                (batches, Some(ticket.acquire().await))
            }
        };
        let first = batches[0].clone();
        let header = batch::parse_header(&first)
            .map_err(|e| PartitionError::new(ResponseError::CorruptMessage, e.to_string()))?;
        if let Some(refusal) = batches.iter().find_map(|b| {
            let h = batch::parse_header(b).ok()?;
            if h.is_control() {
                // Only the coordinator ends transactions (WriteTxnMarkers), as in Kafka.
                Some("control batches are written by the transaction coordinator, not by producers")
            } else if h.is_transactional() && h.producer_id.get() < 0 {
                Some("a transactional batch needs a producer id")
            } else {
                None
            }
        }) {
            return Err(PartitionError::new(ResponseError::InvalidRecord, refusal));
        }
        if header.producer_id.get() < 0 {
            let write = self.write(batches);
            // Passing the turn on wakes the next append, which runs only
            // once this task yields: after `write`'s first poll below has
            // queued these batches in the log (it does so before any await).
            drop(order);
            return write.await;
        }
        if batches.len() != 1 {
            return Err(PartitionError::new(
                ResponseError::InvalidRecord,
                "an idempotent producer sends one batch per partition and request",
            ));
        }
        // The idempotent line keeps the order from here.
        let ticket = self.idempotent_lock.ticket();
        drop(order);
        let _turn = ticket.acquire().await;
        let check = self.producers.borrow().check(header);
        match check {
            SequenceCheck::NotIdempotent | SequenceCheck::Append => {}
            SequenceCheck::Duplicate(meta) => {
                return Ok(AppendResult {
                    base_offset: meta.first_offset,
                    last_offset: meta.last_offset,
                    log_append_time_ms: -1,
                    log_start_offset: self.log_start_offset(),
                })
            }
            SequenceCheck::OutOfOrder {
                expected_first_seq,
                got_first_seq,
            } => {
                return Err(PartitionError::new(
                    ResponseError::OutOfOrderSequenceNumber,
                    format!(
                        "producer {}: expected sequence {expected_first_seq}, got {got_first_seq}",
                        header.producer_id.get()
                    ),
                ))
            }
            SequenceCheck::InvalidEpoch { current, got } => {
                return Err(PartitionError::new(
                    ResponseError::InvalidProducerEpoch,
                    format!(
                        "producer {}: epoch {got} is older than {current}",
                        header.producer_id.get()
                    ),
                ))
            }
            SequenceCheck::InvalidTxnState => {
                return Err(PartitionError::new(
                    ResponseError::InvalidTxnState,
                    format!(
                        "producer {}: a non-transactional batch while its transaction is open",
                        header.producer_id.get()
                    ),
                ))
            }
        }
        let result = self.write(batches).await?;
        self.producers.borrow_mut().on_appended(
            header,
            result.base_offset,
            result.last_offset,
            crate::clock::now_ms(),
        );
        Ok(result)
    }

    /// `batches` in the topic's `compression.type` codec: those in another
    /// codec are decoded and encoded again on the blocking pool, never on
    /// the shard thread (a full decompress and compress per batch).
    async fn in_topic_codec(
        &self,
        batches: Vec<Bytes>,
        compression: TopicCompression,
    ) -> Result<Vec<Bytes>, PartitionError> {
        let TopicCompression::Codec(codec) = compression else {
            return Ok(batches);
        };
        let stale = move |b: &Bytes| batch::parse_header(b).is_ok_and(|h| compression.needs_recompression(h));
        if !batches.iter().any(stale) {
            return Ok(batches);
        }
        let encoded = glommio::executor()
            .spawn_blocking(move || -> Result<Vec<Bytes>, RecompressError> {
                let mut out = Vec::with_capacity(batches.len());
                for b in batches {
                    if stale(&b) {
                        out.extend(recompress(&b, codec)?);
                    } else {
                        out.push(b);
                    }
                }
                Ok(out)
            })
            .await;
        encoded.map_err(|e| {
            tracing::warn!("{}-{}: {e}", self.topic, self.index);
            PartitionError::new(
                ResponseError::CorruptMessage,
                format!("{}-{}: {e}", self.topic, self.index),
            )
        })
    }

    /// Appends to the log and the tail cache. Kafka answers the append time
    /// only for LogAppendTime topics, -1 otherwise.
    async fn write(&self, batches: Vec<Bytes>) -> Result<AppendResult, PartitionError> {
        let cached = batches.clone();
        let epoch = self.leader_epoch();
        // The checkpoint holds every epoch a record on disk carries.
        self.epochs.borrow_mut().store_if_unsaved(self.log.dir())?;
        let mut result = self.log.append_with_epoch(batches, epoch).await?;
        debug_assert!(result.last_offset >= result.base_offset);
        let log_append_time = self.policy.borrow().log_append_time;
        let stamp = log_append_time.then_some(result.log_append_time_ms);
        self.cache.insert(&cached, result.base_offset, stamp, Some(epoch));
        // Followers and consumers long-poll on this partition: wake them
        // before an acks=all produce starts waiting for the followers.
        self.data_changed.notify(usize::MAX);
        self.on_leader_appended(epoch)?;
        if !log_append_time {
            result.log_append_time_ms = -1;
        }
        Ok(result)
    }

    /// See `ProducerStates::next_sequence`.
    pub fn next_sequence(&self, producer_id: i64, producer_epoch: i16) -> i32 {
        self.producers.borrow().next_sequence(producer_id, producer_epoch)
    }

    /// WriteTxnMarkers on the leader: ends `producer_id`'s transaction on
    /// this partition with a commit or abort marker (`storage::txn_marker`),
    /// after Kafka's checks (the producer epoch and the coordinator epoch
    /// may not go back). An abort is indexed (`txn_index`, its segment's
    /// `.txnindex` written before the answer). Returns the marker's offset.
    pub async fn write_txn_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        coordinator_epoch: i32,
        commit: bool,
    ) -> Result<i64, PartitionError> {
        self.check_leader()?;
        let _turn = self.idempotent_lock.ticket().acquire().await;
        let checked = self
            .producers
            .borrow()
            .check_marker(producer_id, producer_epoch, coordinator_epoch);
        match checked {
            Ok(()) => {}
            Err(MarkerRefusal::InvalidEpoch { current, got }) => {
                return Err(PartitionError::new(
                    ResponseError::InvalidProducerEpoch,
                    format!("producer {producer_id}: marker epoch {got} is older than {current}"),
                ))
            }
            Err(MarkerRefusal::CoordinatorFenced { current, got }) => {
                return Err(PartitionError::new(
                    ResponseError::TransactionCoordinatorFenced,
                    format!("producer {producer_id}: coordinator epoch {got} is older than {current}"),
                ))
            }
        }
        let marker = crate::storage::txn_marker::Marker {
            commit,
            coordinator_epoch,
        };
        let now_ms = crate::clock::now_ms();
        let bytes = crate::storage::txn_marker::encode(producer_id, producer_epoch, marker, now_ms);
        let result = self.write(vec![bytes]).await?;
        let completed = self.producers.borrow_mut().on_marker_appended(
            producer_id,
            producer_epoch,
            marker,
            result.base_offset,
            now_ms,
        );
        if let Some(completed) = completed.filter(|c| c.aborted) {
            let entry = AbortedTxn::of(completed, self.last_stable_offset());
            self.aborted.borrow_mut().insert(entry);
            if let Some(base) = self.log.segment_base_of(entry.last_offset) {
                self.store_txn_index(base).await?;
            }
        }
        // The last stable offset may have moved: read_committed readers wait on it.
        self.data_changed.notify(usize::MAX);
        Ok(result.base_offset)
    }

    /// Forgets idempotent producers idle for `expiration_ms`.
    pub fn expire_producers(&self, now_ms: i64, expiration_ms: i64) {
        self.producers.borrow_mut().expire(now_ms, expiration_ms);
    }

    /// Compaction replaced the records below `offset`: the tail cache must
    /// not keep serving the batches it removed.
    pub fn forget_cached_below(&self, offset: i64) {
        self.cache.trim_below(offset);
    }

    /// Kafka snapshots producer state at every segment roll, so the replay
    /// after a crash never reads further back than the active segment. The
    /// snapshot needs the idempotent lock, which the append that rolled may
    /// still hold, so it runs as its own task. No-op without producers.
    /// Also with no producer state (as Kafka): after a crash the replay then
    /// starts at the active segment at the latest, even for a log no
    /// idempotent producer ever wrote.
    /// A log that never rolled (one segment) needs none: its replay is that
    /// segment, which a new partition's first append must not pay a file for.
    pub fn snapshot_after_roll(self: &Rc<Self>) {
        let rolled =
            self.log.segment_count() > 1 && self.log.active_base_offset() > self.snapshot_offset.get();
        if !rolled || self.snapshot_running.get() {
            return;
        }
        self.snapshot_running.set(true);
        let this = self.clone();
        glommio::spawn_local(async move {
            if let Err(e) = this.snapshot_producers().await {
                tracing::error!("producer snapshot of {}-{} failed: {e}", this.topic, this.index);
            }
            this.snapshot_running.set(false);
        })
        .detach();
    }

    /// Writes the producer-state snapshot `<log end offset>.snapshot` if
    /// anything was appended since the last one, and removes older ones.
    /// Small (about 200 bytes a producer) and rare: plain file I/O.
    /// As `snapshot_producers`, but with no producer state it writes
    /// nothing: for the periodic checkpoint (a crash replays from the last
    /// roll's snapshot at most, as Kafka, which takes no periodic ones) and
    /// a clean stop (the data dir's recovery-point checkpoint, written after
    /// every log closed, then says the state at this log end is empty:
    /// `Partition::open`'s `clean_log_end`). Plain producers writing to
    /// 100,000 partitions then cost no file per partition, neither every
    /// `log.flush.offset.checkpoint.interval.ms` nor at a stop.
    pub async fn snapshot_producers_with_state(&self) -> std::io::Result<()> {
        if self.producers.borrow().is_empty() {
            return Ok(());
        }
        self.snapshot_producers().await
    }

    pub async fn snapshot_producers(&self) -> std::io::Result<()> {
        let _turn = self.idempotent_lock.ticket().acquire().await;
        let log_end_offset = self.log.log_end_offset();
        // An empty log has nothing to replay, so no snapshot to bound it:
        // idle new partitions then cost a shutdown no file at all.
        let empty = log_end_offset == self.log.log_start_offset() && self.producers.borrow().is_empty();
        if log_end_offset == self.snapshot_offset.get() || empty {
            return Ok(());
        }
        let bytes = self.producers.borrow().encode_snapshot(log_end_offset);
        let dir = self.log.dir();
        let name = producer_state::snapshot_file_name(log_end_offset);
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, dir.join(&name))?;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let old = entry.file_name();
            let old = old.to_string_lossy();
            if producer_state::parse_snapshot_file_name(&old).is_some_and(|o| o != log_end_offset) {
                std::fs::remove_file(entry.path())?;
            }
        }
        self.snapshot_offset.set(log_end_offset);
        Ok(())
    }

    /// Whole batches from the one containing `offset`: from the tail cache
    /// when it holds that offset, else from the segment files (a zero-copy
    /// file slice when `zero_copy`, see `Log::read_records`). A consumer
    /// (`upto_log_end` false) reads only below the high watermark; a
    /// follower reads up to the log end.
    pub async fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        zero_copy: bool,
        upto_log_end: bool,
    ) -> Result<ReadOutcome, PartitionError> {
        let limit = if upto_log_end {
            ReadLimit::LogEnd
        } else {
            ReadLimit::HighWatermark
        };
        self.read_upto(offset, max_bytes, zero_copy, limit).await
    }

    /// `read` with the limit named: a read_committed consumer reads below
    /// the last stable offset.
    pub async fn read_upto(
        &self,
        offset: i64,
        max_bytes: usize,
        zero_copy: bool,
        read_limit: ReadLimit,
    ) -> Result<ReadOutcome, PartitionError> {
        let log_start_offset = self.log_start_offset();
        let high_watermark = self.high_watermark();
        let last_stable_offset = self.last_stable_offset();
        let log_end_offset = self.log.log_end_offset();
        let limit = match read_limit {
            ReadLimit::LogEnd => log_end_offset,
            ReadLimit::HighWatermark => high_watermark,
            ReadLimit::LastStable => last_stable_offset,
        };
        if offset >= limit && offset >= log_start_offset && offset <= log_end_offset {
            return Ok(ReadOutcome {
                records: Records::default(),
                high_watermark,
                log_start_offset,
                last_stable_offset,
            });
        }
        self.cache.trim_below(log_start_offset);
        let cached = (offset >= log_start_offset)
            .then(|| self.cache.read(offset, max_bytes))
            .flatten();
        // Past the watermark there are batches a consumer must not see: read
        // into memory and cut there (a file slice cannot be cut by offset).
        let bounded = limit < log_end_offset;
        let tail_cache_hit = cached.is_some();
        let records = match cached {
            Some(records) => Records::Memory(records),
            None => {
                self.log
                    .read_records(offset, max_bytes, zero_copy && !bounded)
                    .await?
            }
        };
        let replication = read_limit == ReadLimit::LogEnd;
        let read_bytes = records.len() as u64;
        crate::metrics::count_read(
            read_bytes,
            replication,
            matches!(records, Records::File(_)),
            tail_cache_hit,
        );
        if !replication {
            let out = &self.counters.bytes_out;
            out.set(out.get().wrapping_add(read_bytes));
        }
        let records = if bounded {
            Records::Memory(batches_below(records, limit)?)
        } else {
            records
        };
        Ok(ReadOutcome {
            records,
            high_watermark,
            log_start_offset: self.log_start_offset(),
            last_stable_offset,
        })
    }

    /// OffsetForLeaderEpoch: (epoch, end offset) from the checkpoint, after
    /// checking the client's view of the current epoch as Kafka does.
    pub fn end_offset_for_epoch(
        &self,
        requested_epoch: i32,
        current_leader_epoch: i32,
    ) -> Result<(i32, i64), PartitionError> {
        self.check_current_epoch(current_leader_epoch)?;
        // Kafka answers the latest epoch with the log end offset: a follower
        // keeps what the leader has, committed or not.
        Ok(self
            .epochs
            .borrow()
            .end_offset_for(requested_epoch, self.log.log_end_offset()))
    }

    fn check_current_epoch(&self, current_leader_epoch: i32) -> Result<(), PartitionError> {
        let ours = self.leader_epoch();
        match current_leader_epoch {
            -1 => Ok(()),
            e if e < ours => Err(PartitionError::new(
                ResponseError::FencedLeaderEpoch,
                format!("epoch {e} is older than the leader's {ours}"),
            )),
            e if e > ours => Err(PartitionError::new(
                ResponseError::UnknownLeaderEpoch,
                format!("epoch {e} is newer than the leader's {ours}"),
            )),
            _ => Ok(()),
        }
    }

    /// DeleteRecords: moves the log start offset to `offset` (-1: the high
    /// watermark) and returns the new low watermark.
    pub async fn delete_records(&self, offset: i64) -> Result<i64, PartitionError> {
        let high_watermark = self.high_watermark();
        let target = if offset == -1 { high_watermark } else { offset };
        if target < 0 || target > high_watermark {
            return Err(PartitionError::new(
                ResponseError::OffsetOutOfRange,
                format!("offset {offset} is outside 0..={high_watermark}"),
            ));
        }
        if target > self.log_start_offset() {
            self.log.advance_log_start_offset(target).await?;
        }
        Ok(self.log_start_offset())
    }

    /// ListOffsets: -2 earliest, -1 latest, -3 max timestamp, -4 earliest
    /// local; otherwise the first offset whose timestamp is >= `timestamp`.
    /// Returns (offset, timestamp); (-1, -1) when no record qualifies.
    pub async fn offset_for_timestamp(
        &self,
        timestamp: i64,
        read_committed: bool,
    ) -> Result<(i64, i64), PartitionError> {
        const LATEST: i64 = -1;
        const EARLIEST: i64 = -2;
        const MAX_TIMESTAMP: i64 = -3;
        const EARLIEST_LOCAL: i64 = -4;
        if timestamp != EARLIEST && timestamp != EARLIEST_LOCAL && !self.high_watermark_settled() {
            // KIP-207: a new leader's watermark may still lag what the old
            // leader exposed; answering it would take offsets back.
            return Err(PartitionError::new(
                ResponseError::OffsetNotAvailable,
                "the new leader's high watermark has not caught up yet",
            ));
        }
        match timestamp {
            LATEST if read_committed => Ok((self.last_stable_offset(), -1)),
            LATEST => Ok((self.high_watermark(), -1)),
            EARLIEST | EARLIEST_LOCAL => Ok((self.log_start_offset(), -1)),
            MAX_TIMESTAMP => match self.log.max_timestamp_batch().await? {
                None => Ok((-1, -1)),
                Some(batch) => {
                    let records = decode_records(&batch)?;
                    let best = records
                        .iter()
                        .max_by_key(|(offset, ts)| (*ts, -*offset))
                        .copied()
                        .unwrap_or((-1, -1));
                    Ok(best)
                }
            },
            t if t < 0 => Err(PartitionError::new(
                ResponseError::InvalidRequest,
                format!("unsupported ListOffsets timestamp {t}"),
            )),
            t => match self.log.find_batch_by_timestamp(t).await? {
                None => Ok((-1, -1)),
                Some(batch) => Ok(decode_records(&batch)?
                    .into_iter()
                    .find(|(_, ts)| *ts >= t)
                    .unwrap_or((-1, -1))),
            },
        }
    }
}

/// (offset, timestamp) of every record in one stored batch. Decompresses:
/// only ListOffsets by timestamp pays this, never the produce or fetch path.
fn decode_records(batch: &Bytes) -> Result<Vec<(i64, i64)>, PartitionError> {
    let header = batch::parse_header(batch)
        .map_err(|e| PartitionError::new(ResponseError::CorruptMessage, e.to_string()))?;
    if header.timestamp_type_log_append() {
        let max_ts = header.max_timestamp.get();
        return Ok((header.base_offset.get()..=header.last_offset())
            .map(|o| (o, max_ts))
            .collect());
    }
    let mut buf = batch.clone();
    let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf)
        .map_err(|e| PartitionError::new(ResponseError::CorruptMessage, e.to_string()))?;
    Ok(set.records.iter().map(|r| (r.offset, r.timestamp)).collect())
}

/// Rebuilds producer state for a log just opened: the newest snapshot at or
/// below the log end offset, then every batch after it read back from the
/// log. Returns the state and the offset the snapshot covered.
/// The leading whole batches of `records` that end below `limit`.
fn batches_below(records: Records, limit: i64) -> Result<Bytes, PartitionError> {
    let Records::Memory(bytes) = records else {
        return Err(PartitionError::new(
            ResponseError::UnknownServerError,
            "a bounded read got a file slice",
        ));
    };
    let mut end = 0usize;
    while end < bytes.len() {
        let Ok(header) = batch::parse_header(&bytes[end..]) else {
            break;
        };
        if header.last_offset() >= limit || end + header.total_bytes() > bytes.len() {
            break;
        }
        end += header.total_bytes();
    }
    Ok(bytes.slice(..end))
}

/// `listed`: the files in the log's directory (`Log::take_other_files`),
/// or None to list it here.
/// The log's `.txnindex` files: (segment base, bytes). From the listing
/// when there is one (only the files it saw are read).
fn txn_index_files(log: &Log, listed: Option<&[OtherFile]>) -> std::io::Result<Vec<(i64, Vec<u8>)>> {
    let names: Vec<String> = match listed {
        Some(files) => files.iter().map(|f| f.name.clone()).collect(),
        None => std::fs::read_dir(log.dir())?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().map(String::from))
            .collect(),
    };
    let mut out = Vec::new();
    for name in names {
        let Some(base) = name
            .strip_suffix(crate::storage::TXN_INDEX_SUFFIX)
            .and_then(|stem| stem.strip_suffix('.'))
            .filter(|digits| digits.len() == 20)
            .and_then(|digits| digits.parse::<i64>().ok())
        else {
            continue;
        };
        match crate::storage::read_small_file(&log.dir().join(&name)) {
            Ok(bytes) => out.push((base, bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Also returns the transactions the replay saw end (their markers).
async fn rebuild_producer_states(
    log: &Log,
    clean_log_end: Option<i64>,
    listed: Option<&[OtherFile]>,
) -> Result<(ProducerStates, i64, Vec<CompletedTxn>), StorageError> {
    let dir = log.dir().to_path_buf();
    let log_end_offset = log.log_end_offset();
    let mut snapshots: Vec<i64> = match listed {
        Some(files) => files
            .iter()
            .filter_map(|file| producer_state::parse_snapshot_file_name(&file.name))
            .collect(),
        None => std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| producer_state::parse_snapshot_file_name(&e.file_name().to_string_lossy()))
            .collect(),
    };
    if clean_log_end == Some(log_end_offset) {
        // Closed clean at this end: its state is the snapshot there, or,
        // without one, empty (`snapshot_producers_with_state`); older
        // snapshots are not read.
        if !snapshots.contains(&log_end_offset) {
            return Ok((ProducerStates::new(), log_end_offset, Vec::new()));
        }
        snapshots = vec![log_end_offset];
    }
    snapshots.sort_unstable();
    let mut states = ProducerStates::new();
    let mut from = log.log_start_offset();
    let mut covered = -1;
    for offset in snapshots.into_iter().rev() {
        let path = dir.join(producer_state::snapshot_file_name(offset));
        if offset > log_end_offset {
            tracing::warn!(path = %path.display(), "producer snapshot beyond the log end; removing it");
            std::fs::remove_file(&path)?;
            continue;
        }
        match ProducerStates::decode_snapshot(&std::fs::read(&path)?) {
            Ok((snapshot_offset, loaded)) if snapshot_offset == offset => {
                states = loaded;
                from = from.max(offset);
                covered = offset;
                break;
            }
            Ok(_) | Err(_) => {
                tracing::warn!(path = %path.display(), "unreadable producer snapshot; removing it");
                std::fs::remove_file(&path)?;
            }
        }
    }
    let mut offset = from;
    let mut replayed = 0u64;
    let mut completed = Vec::new();
    while offset < log_end_offset {
        let chunk = log.read(offset, 1 << 20).await?;
        let mut position = 0usize;
        while position < chunk.len() {
            let header = batch::parse_header(&chunk[position..])?;
            let end = position + header.total_bytes();
            let Some(stored) = chunk.get(position..end) else {
                break;
            };
            match states.replay(stored) {
                Ok(Some(txn)) => completed.push(txn),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), "skipping a batch in producer-state rebuild: {e}")
                }
            }
            offset = offset.max(header.last_offset() + 1);
            position = end;
            replayed += 1;
        }
        if position == 0 {
            break;
        }
    }
    // Debug without producers: after a crash every log replays its active
    // segment, and 100,000 lines would say nothing.
    if replayed > 0 && !states.is_empty() {
        tracing::info!(dir = %dir.display(), "producer state rebuilt from offset {from}: {replayed} batches, {} producers", states.len());
    } else if replayed > 0 {
        tracing::debug!(dir = %dir.display(), "producer state rebuilt from offset {from}: {replayed} batches, no producers");
    }
    Ok((states, covered, completed))
}

/// MESSAGE_TOO_LARGE for a batch over `max.message.bytes`.
fn check_batch_sizes(batches: &[Bytes], max_message_bytes: usize) -> Result<(), PartitionError> {
    match batches.iter().find(|b| b.len() > max_message_bytes) {
        Some(too_big) => Err(PartitionError::new(
            ResponseError::MessageTooLarge,
            format!(
                "batch of {} bytes exceeds max.message.bytes {max_message_bytes}",
                too_big.len()
            ),
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testutil::make_batch;
    use crate::storage::{FileCache, LogConfig, RecoveryMode};

    use crate::test_executor::run;

    fn policy() -> PartitionPolicy {
        PartitionPolicy {
            max_message_bytes: 1 << 20,
            log_append_time: false,
            compression: TopicCompression::Producer,
        }
    }

    #[test]
    fn catch_up_reads_return_the_same_bytes_as_tail_reads() {
        run(|| async {
            let dir = tempfile::tempdir().unwrap();
            let log = Log::open(
                dir.path(),
                LogConfig::default(),
                RecoveryMode::Clean,
                FileCache::new(16),
            )
            .await
            .unwrap();
            let budget = CacheBudget::new(64 << 20);
            let p = Partition::open(
                "t".into(),
                uuid::Uuid::nil(),
                0,
                log.clone(),
                0,
                policy(),
                budget.clone(),
                None,
            )
            .await
            .unwrap();
            p.lead_alone();
            for i in 0..20 {
                // Producers send base offset 0; the log assigns the real ones.
                p.append(&make_batch(0, 1 + i % 4, 200, 1_000 + i as i64))
                    .await
                    .unwrap();
            }
            let end = p.high_watermark();
            assert!(budget.bytes_used() > 0, "appends are cached");
            for offset in 0..end {
                let tail = p
                    .read(offset, 1 << 20, false, false)
                    .await
                    .unwrap()
                    .records
                    .to_bytes()
                    .unwrap();
                let disk = log.read(offset, 1 << 20).await.unwrap();
                assert_eq!(tail, disk, "offset {offset}");
            }
        });
    }

    /// `batch` stamped as producer `producer_id` (epoch 0) from `sequence`.
    fn idempotent(batch: Bytes, producer_id: i64, sequence: i32) -> Bytes {
        let mut b = batch.to_vec();
        b[43..51].copy_from_slice(&producer_id.to_be_bytes());
        b[51..53].copy_from_slice(&0i16.to_be_bytes());
        b[53..57].copy_from_slice(&sequence.to_be_bytes());
        let crc = crc32c::crc32c(&b[21..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        Bytes::from(b)
    }

    fn snapshot_files(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".snapshot"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn every_segment_roll_snapshots_producer_state_and_keeps_only_the_newest() {
        run(|| async {
            let dir = tempfile::tempdir().unwrap();
            let config = LogConfig {
                segment_bytes: 4096,
                ..LogConfig::default()
            };
            let log = Log::open(dir.path(), config, RecoveryMode::Clean, FileCache::new(16))
                .await
                .unwrap();
            let p = Partition::open(
                "t".into(),
                uuid::Uuid::nil(),
                0,
                log.clone(),
                0,
                policy(),
                CacheBudget::new(1 << 20),
                None,
            )
            .await
            .unwrap();
            p.lead_alone();
            let p = Rc::new(p);
            for _ in 0..8 {
                p.append(&make_batch(0, 1, 1000, 1_000)).await.unwrap();
                p.snapshot_after_roll();
            }
            assert!(log.segment_count() > 1);
            glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
            // Also with no producer state (as Kafka), so a crash replays the
            // active segment at most; older snapshots are removed.
            let files = snapshot_files(dir.path());
            assert_eq!(files.len(), 1, "{files:?}");
            let offset: i64 = files[0].trim_end_matches(".snapshot").parse().unwrap();
            assert!(
                offset >= log.active_base_offset(),
                "taken after the last roll: {offset}"
            );
            for sequence in 0..8 {
                p.append(&idempotent(make_batch(0, 1, 1000, 1_000), 7, sequence))
                    .await
                    .unwrap();
                p.snapshot_after_roll();
            }
            glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
            let files = snapshot_files(dir.path());
            assert_eq!(files.len(), 1, "{files:?}");
            let offset: i64 = files[0].trim_end_matches(".snapshot").parse().unwrap();
            assert!(
                offset > 8,
                "taken after a roll among the idempotent appends: {offset}"
            );
        });
    }

    #[test]
    fn reads_below_the_cache_come_from_disk_and_below_the_log_start_fail() {
        run(|| async {
            let dir = tempfile::tempdir().unwrap();
            let log = Log::open(
                dir.path(),
                LogConfig::default(),
                RecoveryMode::Clean,
                FileCache::new(16),
            )
            .await
            .unwrap();
            let batch = make_batch(0, 1, 1000, 1_000);
            // A budget of three batches: the older ones are read from disk.
            let budget = CacheBudget::new(3 * batch.len());
            let p = Partition::open(
                "t".into(),
                uuid::Uuid::nil(),
                0,
                log.clone(),
                0,
                policy(),
                budget,
                None,
            )
            .await
            .unwrap();
            p.lead_alone();
            for _ in 0..10 {
                p.append(&batch).await.unwrap();
            }
            for offset in 0..10 {
                let read = p
                    .read(offset, 1, true, true)
                    .await
                    .unwrap()
                    .records
                    .to_bytes()
                    .unwrap();
                let header = batch::validate(&read).unwrap();
                assert_eq!(header.base_offset.get(), offset);
            }
            p.delete_records(5).await.unwrap();
            assert!(p.read(4, 1, true, true).await.is_err());
            assert_eq!(p.read(9, 1, true, true).await.unwrap().records.len(), batch.len());
        });
    }
}
