//! The transaction coordinator of one shard: the transactional ids of the
//! `__transaction_state` partitions this shard leads (`SPEC.md` §3).
//!
//! Every change is decided by `state::TxnMeta` (pure), appended to the id's
//! partition with acks=all, and made current only once it is written, so a
//! new leader of that partition replays exactly what clients were told.
//! One change per id at a time: while a write or a transaction's markers
//! are in flight the id is `pending` and other requests for it get
//! CONCURRENT_TRANSACTIONS, which clients retry (Kafka's `pendingState`).
//! The coordinator epoch is the partition's leader epoch at load; a write
//! that finishes after the partition moved is answered NOT_COORDINATOR and
//! never applied.
//!
//! `RefCell` state touched by this shard only; no borrow is held across an
//! `.await`.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;

use super::markers::{self, MarkerResult, MarkerSpec};
use super::records::{self as txn_records, TxnStatus};
use super::state::{Decision, TxnError, TxnMeta};
use super::TRANSACTION_STATE_TOPIC;
use crate::clock::now_ms;
use crate::config::TxnConfig;
use crate::controller::NodeView;
use crate::group::records as log_records;
use crate::shard::{ControlOp, ControlReply, Shard, ShardOp, ShardReply, CONTROLLER_SHARD};

/// Bytes read per step when loading a `__transaction_state` partition.
const LOAD_READ_BYTES: usize = 1 << 20;

/// The `__transaction_state` partition of `transactional_id`, if the topic exists.
pub fn state_partition_of(view: &NodeView, transactional_id: &str) -> Option<i32> {
    let topic = view.image.topic(TRANSACTION_STATE_TOPIC)?;
    Some(super::partition_for(
        transactional_id,
        topic.partitions.len() as i32,
    ))
}

/// The shard of this node coordinating `transactional_id`, when this node
/// leads its `__transaction_state` partition.
pub fn coordinator_shard(view: &NodeView, transactional_id: &str) -> Option<usize> {
    let partition = state_partition_of(view, transactional_id)?;
    view.owner(TRANSACTION_STATE_TOPIC, partition).ok()
}

/// A transactional request forwarded to its coordinator shard.
pub enum TxnOp {
    InitProducerId {
        transactional_id: String,
        timeout_ms: i32,
        /// KIP-360: the producer id and epoch the client has, if any.
        expected: Option<(i64, i16)>,
    },
    /// AddPartitionsToTxn, and AddOffsetsToTxn with its group's
    /// `__consumer_offsets` partition.
    AddPartitions {
        transactional_id: String,
        producer_id: i64,
        producer_epoch: i16,
        partitions: Vec<(String, i32)>,
    },
    EndTxn {
        transactional_id: String,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
    },
    Describe {
        transactional_ids: Vec<String>,
    },
    /// Every id of this shard (ListTransactions fans out to every shard).
    List,
}

/// One id as DescribeTransactions and ListTransactions show it.
pub struct DescribedTxn {
    pub transactional_id: String,
    pub error: Option<ResponseError>,
    pub state: &'static str,
    pub timeout_ms: i32,
    pub start_ms: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub partitions: Vec<(String, i32)>,
}

impl DescribedTxn {
    /// An id described with nothing known of it: `error`, or found in no
    /// state (Kafka's answer shape for both).
    pub fn unknown(transactional_id: &str, error: Option<ResponseError>) -> DescribedTxn {
        DescribedTxn {
            transactional_id: transactional_id.to_string(),
            error,
            state: "",
            timeout_ms: 0,
            start_ms: -1,
            producer_id: -1,
            producer_epoch: -1,
            partitions: Vec::new(),
        }
    }
}

pub enum TxnReply {
    Init(Result<(i64, i16), ResponseError>),
    Done(Result<(), ResponseError>),
    Described(Vec<DescribedTxn>),
    /// (ids, whether a partition of this shard is still loading).
    Listed(Vec<DescribedTxn>, bool),
}

struct Entry {
    meta: TxnMeta,
    /// Its `__transaction_state` partition.
    partition: i32,
    /// A write or the markers are in flight.
    pending: bool,
}

/// The transactional ids of one shard. Exists on every shard; touched only by it.
pub struct TxnCoordinator {
    ids: RefCell<HashMap<String, Entry>>,
    /// Loaded partitions this shard leads -> coordinator epoch.
    epochs: RefCell<BTreeMap<i32, i32>>,
    loading: RefCell<BTreeSet<i32>>,
    config: TxnConfig,
}

fn txn_error(e: TxnError) -> ResponseError {
    match e {
        TxnError::ConcurrentTransactions => ResponseError::ConcurrentTransactions,
        TxnError::ProducerFenced => ResponseError::ProducerFenced,
        TxnError::InvalidProducerIdMapping => ResponseError::InvalidProducerIdMapping,
        TxnError::InvalidTxnState => ResponseError::InvalidTxnState,
    }
}

/// Kafka's mapping of a failed `__transaction_state` append (§3.1).
fn append_error(code: ResponseError) -> ResponseError {
    match code {
        ResponseError::UnknownTopicOrPartition
        | ResponseError::NotEnoughReplicas
        | ResponseError::NotEnoughReplicasAfterAppend
        | ResponseError::RequestTimedOut => ResponseError::CoordinatorNotAvailable,
        ResponseError::NotLeaderOrFollower | ResponseError::KafkaStorageError => {
            ResponseError::NotCoordinator
        }
        ResponseError::MessageTooLarge | ResponseError::RecordListTooLarge => {
            ResponseError::UnknownServerError
        }
        other => other,
    }
}

impl TxnCoordinator {
    pub fn new(config: TxnConfig) -> Self {
        TxnCoordinator {
            ids: RefCell::new(HashMap::new()),
            epochs: RefCell::new(BTreeMap::new()),
            loading: RefCell::new(BTreeSet::new()),
            config,
        }
    }

    pub fn id_count(&self) -> usize {
        self.ids.borrow().len()
    }

    pub async fn execute(&self, shard: &Rc<Shard>, op: TxnOp) -> TxnReply {
        match op {
            TxnOp::InitProducerId {
                transactional_id,
                timeout_ms,
                expected,
            } => TxnReply::Init(
                self.init_producer_id(shard, &transactional_id, timeout_ms, expected)
                    .await,
            ),
            TxnOp::AddPartitions {
                transactional_id,
                producer_id,
                producer_epoch,
                partitions,
            } => TxnReply::Done(
                self.add_partitions(shard, &transactional_id, producer_id, producer_epoch, partitions)
                    .await,
            ),
            TxnOp::EndTxn {
                transactional_id,
                producer_id,
                producer_epoch,
                commit,
            } => TxnReply::Done(
                self.end_txn(shard, &transactional_id, producer_id, producer_epoch, commit)
                    .await,
            ),
            TxnOp::Describe { transactional_ids } => TxnReply::Described(
                transactional_ids
                    .iter()
                    .map(|id| self.describe(shard, id))
                    .collect(),
            ),
            TxnOp::List => {
                let ids = self.ids.borrow();
                let listed = ids
                    .iter()
                    .filter(|(_, e)| e.meta.status != TxnStatus::Dead)
                    .map(|(id, e)| described(id, &e.meta))
                    .collect();
                TxnReply::Listed(listed, !self.loading.borrow().is_empty())
            }
        }
    }

    /// The partition and coordinator epoch of `transactional_id`, if this
    /// shard coordinates it now.
    fn locate(&self, shard: &Shard, transactional_id: &str) -> Result<(i32, i32), ResponseError> {
        let view = shard.view();
        let partition = state_partition_of(&view, transactional_id).ok_or(ResponseError::NotCoordinator)?;
        if let Some(epoch) = self.epochs.borrow().get(&partition) {
            return Ok((partition, *epoch));
        }
        if self.loading.borrow().contains(&partition) {
            return Err(ResponseError::CoordinatorLoadInProgress);
        }
        Err(ResponseError::NotCoordinator)
    }

    fn still_coordinator(&self, partition: i32, epoch: i32) -> bool {
        self.epochs.borrow().get(&partition) == Some(&epoch)
    }

    /// Appends `meta` as `transactional_id`'s state (acks=all); the caller
    /// applies it once this returns Ok.
    async fn write(
        &self,
        shard: &Shard,
        transactional_id: &str,
        partition_index: i32,
        coordinator_epoch: i32,
        meta: &TxnMeta,
    ) -> Result<(), ResponseError> {
        let Some(partition) = shard.partition(TRANSACTION_STATE_TOPIC, partition_index) else {
            return Err(ResponseError::NotCoordinator);
        };
        let key = Bytes::from(txn_records::encode_key(transactional_id));
        let value = Bytes::from(txn_records::encode_value(&meta.to_log_value()));
        let batch = log_records::encode_batch(&[(key, Some(value))], now_ms());
        let epoch = partition.leader_epoch();
        let written = match partition.append(&batch).await {
            Ok(result) => {
                partition
                    .await_replicated(
                        result.last_offset,
                        epoch,
                        self.config.state_log_min_isr,
                        self.config.state_log_write_timeout_ms,
                    )
                    .await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            tracing::error!(
                transactional_id,
                "cannot write to {TRANSACTION_STATE_TOPIC}-{partition_index}: {}",
                e.message
            );
            return Err(append_error(e.code));
        }
        if !self.still_coordinator(partition_index, coordinator_epoch) {
            return Err(ResponseError::NotCoordinator);
        }
        Ok(())
    }

    /// Takes the id's turn: its current state, marked pending. Err when
    /// another change is in flight.
    fn begin(&self, transactional_id: &str) -> Result<Option<TxnMeta>, ResponseError> {
        let mut ids = self.ids.borrow_mut();
        match ids.get_mut(transactional_id) {
            None => Ok(None),
            Some(e) if e.pending => Err(ResponseError::ConcurrentTransactions),
            Some(e) => {
                e.pending = true;
                Ok(Some(e.meta.clone()))
            }
        }
    }

    /// Ends the id's turn, making `written` current if given.
    fn finish(&self, transactional_id: &str, written: Option<TxnMeta>) {
        if let Some(e) = self.ids.borrow_mut().get_mut(transactional_id) {
            e.pending = false;
            if let Some(meta) = written {
                e.meta = meta;
            }
        }
    }

    async fn allocate_producer_id(&self, shard: &Rc<Shard>) -> Result<i64, ResponseError> {
        match shard
            .call(CONTROLLER_SHARD, ShardOp::Control(ControlOp::AllocateProducerId))
            .await
        {
            ShardReply::Control(ControlReply::ProducerId(Ok(id))) => Ok(id),
            ShardReply::Control(ControlReply::ProducerId(Err((code, message)))) => {
                tracing::error!("cannot allocate a producer id: {message}");
                Err(code)
            }
            _ => Err(ResponseError::CoordinatorNotAvailable),
        }
    }

    async fn init_producer_id(
        &self,
        shard: &Rc<Shard>,
        transactional_id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
    ) -> Result<(i64, i16), ResponseError> {
        let (partition, coordinator_epoch) = self.locate(shard, transactional_id)?;
        if !self.ids.borrow().contains_key(transactional_id) {
            if self.ids.borrow().len() >= self.config.shard_transactional_ids_max {
                tracing::warn!(
                    transactional_id,
                    "shard.transactional.ids.max {} reached",
                    self.config.shard_transactional_ids_max
                );
                return Err(ResponseError::CoordinatorNotAvailable);
            }
            let producer_id = self.allocate_producer_id(shard).await?;
            // Another request may have added it meanwhile: that one wins.
            self.ids
                .borrow_mut()
                .entry(transactional_id.to_string())
                .or_insert_with(|| Entry {
                    meta: TxnMeta::new(producer_id, timeout_ms, now_ms()),
                    partition,
                    pending: false,
                });
        }
        let Some(meta) = self.begin(transactional_id)? else {
            return Err(ResponseError::ConcurrentTransactions);
        };
        // Only an exhausted epoch takes a new producer id (§3.2).
        let fresh = if meta.producer_epoch >= i16::MAX - 1 {
            match self.allocate_producer_id(shard).await {
                Ok(id) => Some(id),
                Err(e) => {
                    self.finish(transactional_id, None);
                    return Err(e);
                }
            }
        } else {
            None
        };
        let decision = meta.init_producer_id(expected, timeout_ms, now_ms(), || {
            fresh.expect("allocated above for an exhausted epoch")
        });
        match decision {
            Decision::Write(next) => {
                let written = self
                    .write(shard, transactional_id, partition, coordinator_epoch, &next)
                    .await;
                match written {
                    Ok(()) => {
                        let answer = (next.producer_id, next.producer_epoch);
                        self.finish(transactional_id, Some(next));
                        Ok(answer)
                    }
                    Err(e) => {
                        self.finish(transactional_id, None);
                        Err(e)
                    }
                }
            }
            Decision::FenceOngoing { fenced_epoch } => {
                // A new producer instance while the old one's transaction is
                // open: abort it at the next epoch, which fences the old
                // instance on every partition; the client retries until the
                // abort is complete (Kafka never returns the fenced epoch).
                tracing::info!(
                    transactional_id,
                    "InitProducerId with a transaction open: aborting it at epoch {fenced_epoch}"
                );
                let abort = meta
                    .abort_at(fenced_epoch, now_ms())
                    .expect("an open transaction");
                match self
                    .prepare_end(shard, transactional_id, partition, coordinator_epoch, abort)
                    .await
                {
                    Ok(()) => Err(ResponseError::ConcurrentTransactions),
                    Err(e) => Err(e),
                }
            }
            Decision::Done => {
                self.finish(transactional_id, None);
                Ok((meta.producer_id, meta.producer_epoch))
            }
            Decision::Refuse(e) => {
                self.finish(transactional_id, None);
                Err(txn_error(e))
            }
        }
    }

    async fn add_partitions(
        &self,
        shard: &Rc<Shard>,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        partitions: Vec<(String, i32)>,
    ) -> Result<(), ResponseError> {
        let (partition, coordinator_epoch) = self.locate(shard, transactional_id)?;
        let Some(meta) = self.begin(transactional_id)? else {
            return Err(ResponseError::InvalidProducerIdMapping);
        };
        match meta.add_partitions(producer_id, producer_epoch, &partitions, now_ms()) {
            Decision::Write(next) => {
                let written = self
                    .write(shard, transactional_id, partition, coordinator_epoch, &next)
                    .await;
                let ok = written.is_ok();
                self.finish(transactional_id, ok.then_some(next));
                written
            }
            Decision::Done | Decision::FenceOngoing { .. } => {
                self.finish(transactional_id, None);
                Ok(())
            }
            Decision::Refuse(e) => {
                self.finish(transactional_id, None);
                Err(txn_error(e))
            }
        }
    }

    async fn end_txn(
        &self,
        shard: &Rc<Shard>,
        transactional_id: &str,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
    ) -> Result<(), ResponseError> {
        let (partition, coordinator_epoch) = self.locate(shard, transactional_id)?;
        let current = self.ids.borrow().get(transactional_id).map(|e| e.meta.clone());
        let Some(current) = current else {
            return Err(ResponseError::InvalidProducerIdMapping);
        };
        // A wrong producer is told so even while a change is in flight (§3.5).
        if let Decision::Refuse(e @ (TxnError::InvalidProducerIdMapping | TxnError::ProducerFenced)) =
            current.end_txn(producer_id, producer_epoch, commit, now_ms())
        {
            return Err(txn_error(e));
        }
        let Some(meta) = self.begin(transactional_id)? else {
            return Err(ResponseError::InvalidProducerIdMapping);
        };
        match meta.end_txn(producer_id, producer_epoch, commit, now_ms()) {
            Decision::Write(prepare) => {
                self.prepare_end(shard, transactional_id, partition, coordinator_epoch, prepare)
                    .await
            }
            Decision::Done | Decision::FenceOngoing { .. } => {
                self.finish(transactional_id, None);
                Ok(())
            }
            Decision::Refuse(e) => {
                self.finish(transactional_id, None);
                Err(txn_error(e))
            }
        }
    }

    /// Writes a PrepareCommit/PrepareAbort state (the id's turn is held),
    /// then hands the transaction to its completion task, which keeps the
    /// turn until CompleteCommit/CompleteAbort is written: the decision is
    /// durable once this returns Ok, so the client is answered at once.
    async fn prepare_end(
        &self,
        shard: &Rc<Shard>,
        transactional_id: &str,
        partition: i32,
        coordinator_epoch: i32,
        prepare: TxnMeta,
    ) -> Result<(), ResponseError> {
        if let Err(e) = self
            .write(shard, transactional_id, partition, coordinator_epoch, &prepare)
            .await
        {
            self.finish(transactional_id, None);
            return Err(e);
        }
        if let Some(e) = self.ids.borrow_mut().get_mut(transactional_id) {
            e.meta = prepare;
        }
        spawn_completion(shard, transactional_id.to_string(), partition, coordinator_epoch);
        Ok(())
    }

    /// The completion task's body: markers to every partition of the
    /// transaction, round after round until each took it, then the
    /// Complete state. Stops when this shard stops coordinating the id's
    /// partition (the new coordinator resumes from the Prepare state).
    async fn complete(
        &self,
        shard: &Rc<Shard>,
        transactional_id: &str,
        partition: i32,
        coordinator_epoch: i32,
    ) {
        let meta = match self.ids.borrow().get(transactional_id) {
            Some(e) => e.meta.clone(),
            None => return,
        };
        let commit = match meta.status {
            TxnStatus::PrepareCommit => true,
            TxnStatus::PrepareAbort => false,
            other => {
                tracing::error!(transactional_id, "completion started in state {}", other.name());
                self.finish(transactional_id, None);
                return;
            }
        };
        let spec = MarkerSpec {
            producer_id: meta.producer_id,
            producer_epoch: meta.producer_epoch,
            coordinator_epoch,
            commit,
        };
        let backoff = Duration::from_millis(self.config.marker_retry_backoff_ms);
        let mut left: Vec<(String, i32)> = meta.partitions.iter().cloned().collect();
        while !left.is_empty() {
            if !self.still_coordinator(partition, coordinator_epoch) || shard.is_stopping() {
                return;
            }
            let mut retry = Vec::new();
            for (key, result) in markers::send_round(shard, spec, &left).await {
                match result {
                    MarkerResult::Done => {}
                    MarkerResult::Retry => retry.push(key),
                    MarkerResult::Fenced(code) => {
                        // Kafka's answer: a newer producer epoch or coordinator
                        // owns the partition; this coordinator must not complete.
                        tracing::error!(
                            transactional_id,
                            "marker on {}-{} refused with {code:?}; the transaction stays prepared",
                            key.0,
                            key.1
                        );
                        return;
                    }
                }
            }
            left = retry;
            if !left.is_empty() {
                glommio::timer::sleep(backoff).await;
            }
        }
        let Some(done) = meta.complete(now_ms()) else {
            return;
        };
        loop {
            if !self.still_coordinator(partition, coordinator_epoch) || shard.is_stopping() {
                return;
            }
            match self
                .write(shard, transactional_id, partition, coordinator_epoch, &done)
                .await
            {
                Ok(()) => {
                    self.finish(transactional_id, Some(done));
                    return;
                }
                // Kafka retries CompleteX on COORDINATOR_NOT_AVAILABLE, forever.
                Err(ResponseError::CoordinatorNotAvailable) => glommio::timer::sleep(backoff).await,
                Err(e) => {
                    tracing::warn!(transactional_id, "cannot complete the transaction: {e:?}");
                    return;
                }
            }
        }
    }

    fn describe(&self, shard: &Shard, transactional_id: &str) -> DescribedTxn {
        let mut out = DescribedTxn::unknown(transactional_id, None);
        if transactional_id.is_empty() {
            out.error = Some(ResponseError::InvalidRequest);
            return out;
        }
        if let Err(e) = self.locate(shard, transactional_id) {
            out.error = Some(e);
            return out;
        }
        match self.ids.borrow().get(transactional_id) {
            Some(e) if e.meta.status != TxnStatus::Dead => described(transactional_id, &e.meta),
            _ => {
                out.error = Some(ResponseError::TransactionalIdNotFound);
                out
            }
        }
    }

    /// Open transactions past their timeout are aborted at the next epoch,
    /// which fences the producer that left them (§3.7).
    pub async fn abort_timed_out(&self, shard: &Rc<Shard>) {
        let now = now_ms();
        let expired: Vec<(String, i32)> = self
            .ids
            .borrow()
            .iter()
            .filter(|(_, e)| !e.pending && e.meta.timed_out(now))
            .map(|(id, e)| (id.clone(), e.partition))
            .collect();
        for (transactional_id, partition) in expired {
            let Some(coordinator_epoch) = self.epochs.borrow().get(&partition).copied() else {
                continue;
            };
            let Ok(Some(meta)) = self.begin(&transactional_id) else {
                continue;
            };
            let abort = meta
                .timed_out(now_ms())
                .then(|| meta.abort_at(meta.producer_epoch.saturating_add(1), now_ms()))
                .flatten();
            let Some(abort) = abort else {
                self.finish(&transactional_id, None);
                continue;
            };
            tracing::info!(
                transactional_id = %transactional_id,
                producer_id = meta.producer_id,
                "transaction open for longer than its timeout of {} ms: aborting it at epoch {}",
                meta.timeout_ms,
                abort.producer_epoch
            );
            if let Err(e) = self
                .prepare_end(shard, &transactional_id, partition, coordinator_epoch, abort)
                .await
            {
                tracing::warn!(transactional_id = %transactional_id, "cannot abort the timed-out transaction: {e:?}");
            }
        }
    }

    /// This shard no longer leads `partition`: its ids go (completion tasks
    /// in flight see the epoch change and stop).
    pub fn unload_partition(&self, partition: i32) {
        self.epochs.borrow_mut().remove(&partition);
        self.loading.borrow_mut().remove(&partition);
        let mut ids = self.ids.borrow_mut();
        let before = ids.len();
        ids.retain(|_, e| e.partition != partition);
        if ids.len() != before {
            tracing::info!(
                "{TRANSACTION_STATE_TOPIC}-{partition}: no longer led here; unloaded {} transactional ids",
                before - ids.len()
            );
        }
    }

    /// Rebuilds the ids of the `__transaction_state` partitions `indexes`
    /// this shard now leads (at start, or on taking over their
    /// leadership): last record per id wins, tombstones delete. Reads to
    /// the log end: the new leader's log holds every write a client was
    /// answered for. Transactions found prepared are completed again.
    pub async fn load_partitions(&self, shard: &Rc<Shard>, indexes: &[i32]) {
        for index in indexes {
            self.unload_partition(*index);
            self.loading.borrow_mut().insert(*index);
        }
        for index in indexes {
            let Some(partition) = shard
                .partition(TRANSACTION_STATE_TOPIC, *index)
                .filter(|p| p.is_leader())
            else {
                self.loading.borrow_mut().remove(index);
                continue;
            };
            let coordinator_epoch = partition.leader_epoch();
            let mut latest: HashMap<String, Option<TxnMeta>> = HashMap::new();
            let mut records_read = 0usize;
            let mut offset = partition.log_start_offset();
            while offset < partition.log_end_offset() {
                let read = match partition.read(offset, LOAD_READ_BYTES, false, true).await {
                    Ok(r) => r.records.to_bytes(),
                    Err(e) => {
                        tracing::error!(
                            "load of {TRANSACTION_STATE_TOPIC}-{index} stopped at {offset}: {}",
                            e.message
                        );
                        break;
                    }
                };
                let read = match read {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        tracing::error!("load of {TRANSACTION_STATE_TOPIC}-{index} stopped at {offset}: {e}");
                        break;
                    }
                };
                let (items, next, _) = match log_records::read_batches(&read) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!("load of {TRANSACTION_STATE_TOPIC}-{index} stopped at {offset}: {e}");
                        break;
                    }
                };
                for rec in items.into_iter().filter_map(log_records::LogItem::into_record) {
                    let id = match txn_records::decode_key(&rec.key) {
                        Ok(id) => id,
                        Err(e) => {
                            tracing::warn!(
                                "{TRANSACTION_STATE_TOPIC}-{index} offset {}: key skipped: {e}",
                                rec.offset
                            );
                            continue;
                        }
                    };
                    records_read += 1;
                    match rec.value.map(|v| txn_records::decode_value(&v)) {
                        None => {
                            latest.insert(id, None);
                        }
                        Some(Ok(v)) => {
                            latest.insert(id, Some(TxnMeta::from_log_value(&v)));
                        }
                        Some(Err(e)) => tracing::error!(
                            transactional_id = %id,
                            "{TRANSACTION_STATE_TOPIC}-{index} offset {}: value skipped: {e}",
                            rec.offset
                        ),
                    }
                }
                if next <= offset {
                    break;
                }
                offset = next;
                glommio::yield_if_needed().await;
            }
            if !self.loading.borrow().contains(index) || !partition.is_leader() {
                // Lost again while loading.
                continue;
            }
            let mut prepared = Vec::new();
            {
                let mut ids = self.ids.borrow_mut();
                for (id, meta) in latest {
                    let Some(meta) = meta else { continue };
                    let is_prepared =
                        matches!(meta.status, TxnStatus::PrepareCommit | TxnStatus::PrepareAbort);
                    if is_prepared {
                        prepared.push(id.clone());
                    }
                    ids.insert(
                        id,
                        Entry {
                            meta,
                            partition: *index,
                            pending: is_prepared,
                        },
                    );
                }
            }
            self.loading.borrow_mut().remove(index);
            self.epochs.borrow_mut().insert(*index, coordinator_epoch);
            if records_read > 0 {
                tracing::info!(
                    shard = shard.id,
                    "loaded {TRANSACTION_STATE_TOPIC}-{index} at coordinator epoch {coordinator_epoch}: \
                     {records_read} records, {} prepared transactions to complete",
                    prepared.len()
                );
            }
            for id in prepared {
                spawn_completion(shard, id, *index, coordinator_epoch);
            }
        }
    }
}

fn described(transactional_id: &str, meta: &TxnMeta) -> DescribedTxn {
    DescribedTxn {
        transactional_id: transactional_id.to_string(),
        error: None,
        state: meta.status.name(),
        timeout_ms: meta.timeout_ms,
        start_ms: meta.start_ms,
        producer_id: meta.producer_id,
        producer_epoch: meta.producer_epoch,
        partitions: meta.partitions.iter().cloned().collect(),
    }
}

/// Runs the completion of a prepared transaction as its own task on this
/// shard: the client has its answer already.
fn spawn_completion(shard: &Rc<Shard>, transactional_id: String, partition: i32, coordinator_epoch: i32) {
    let shard = shard.clone();
    glommio::spawn_local(async move {
        shard
            .txns
            .complete(&shard, &transactional_id, partition, coordinator_epoch)
            .await
    })
    .detach();
}
