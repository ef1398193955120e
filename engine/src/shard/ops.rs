//! What a shard does with each `ShardOp`: the per-shard half of produce,
//! fetch, list-offsets and metadata changes. Runs on the shard that owns the
//! partitions named in the op.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use kafka_protocol::ResponseError;

use super::{Shard, ShardOp, ShardReply};
use crate::controller::{ConfigAlteration, NewTopic, NodeView, Refusal, TopicOutcome};
use crate::partition::{PartitionError, ReadLimit};
use crate::storage::Records;

pub struct ProducePart {
    pub slot: usize,
    pub topic: String,
    pub partition: i32,
    pub records: Bytes,
    /// -1: answer once the ISR has the records (and `min_insync_replicas` hold).
    pub acks: i16,
    pub min_insync_replicas: usize,
    pub timeout_ms: u64,
}

pub struct ProduceOutcome {
    pub slot: usize,
    pub error: Option<PartitionError>,
    pub base_offset: i64,
    pub log_start_offset: i64,
    pub log_append_time_ms: i64,
}

pub struct FetchPart {
    pub slot: usize,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub max_bytes: usize,
    /// The fetching follower's node id; -1 for a consumer.
    pub replica_id: i32,
    pub current_leader_epoch: i32,
    /// A read_committed consumer: reads below the last stable offset and
    /// gets the aborted transactions.
    pub read_committed: bool,
}

pub struct FetchOutcome {
    pub slot: usize,
    pub error: Option<PartitionError>,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub last_stable_offset: i64,
    /// For read_committed: (producer id, first offset) of the aborted
    /// transactions the records may hold.
    pub aborted_transactions: Option<Vec<(i64, i64)>>,
    pub records: Records,
}

pub struct WaitPart {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// A follower waits for the log end, a consumer for the high watermark.
    pub upto_log_end: bool,
    /// A read_committed consumer waits for the last stable offset.
    pub read_committed: bool,
    /// The high watermark the first read answered: a follower's wait also
    /// ends when it moves, so followers learn it at once (as Kafka completes
    /// delayed fetches on a watermark change) and a new leader starts from it.
    pub high_watermark_seen: i64,
}

/// One partition of one WriteTxnMarkers marker.
pub struct MarkerPart {
    pub slot: usize,
    pub topic: String,
    pub partition: i32,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub coordinator_epoch: i32,
    pub commit: bool,
}

pub struct MarkerOutcome {
    pub slot: usize,
    pub error: Option<PartitionError>,
}

pub struct OffsetsPart {
    pub slot: usize,
    pub topic: String,
    pub partition: i32,
    pub timestamp: i64,
    /// LATEST is the last stable offset for a read_committed client.
    pub read_committed: bool,
}

pub struct OffsetsOutcome {
    pub slot: usize,
    pub error: Option<PartitionError>,
    pub offset: i64,
    pub timestamp: i64,
    pub leader_epoch: i32,
}

pub struct DeleteRecordsPart {
    pub slot: usize,
    pub topic: String,
    pub partition: i32,
    /// -1: up to the high watermark.
    pub offset: i64,
}

pub struct DeleteRecordsOutcome {
    pub slot: usize,
    pub error: Option<PartitionError>,
    pub low_watermark: i64,
}

pub struct EpochPart {
    pub slot: usize,
    pub topic: String,
    pub partition: i32,
    pub current_leader_epoch: i32,
    pub leader_epoch: i32,
}

pub struct ReplicaSize {
    pub topic: String,
    pub partition: i32,
    pub size_bytes: u64,
    /// How far this replica's log end is behind the high watermark it knows.
    pub offset_lag: i64,
}

pub struct EpochOutcome {
    pub slot: usize,
    pub error: Option<PartitionError>,
    pub leader_epoch: i32,
    pub end_offset: i64,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub enum ControlOp {
    CreateTopics {
        topics: Vec<NewTopic>,
        validate_only: bool,
    },
    DeleteTopics {
        names: Vec<String>,
    },
    CreatePartitions {
        topics: Vec<(String, i32)>,
        validate_only: bool,
    },
    AlterConfigs {
        changes: Vec<ConfigAlteration>,
        validate_only: bool,
    },
    /// InitProducerId for an idempotent producer: a fresh, never reused id
    /// (from this node's block; answered on the node).
    AllocateProducerId,
    /// A block of `PRODUCER_ID_BLOCK` ids for a node's allocator.
    ReserveProducerIds,
    /// Kafka creates `__consumer_offsets` at the first FindCoordinator.
    CreateOffsetsTopic,
    /// `__transaction_state`, at the first transactional FindCoordinator.
    CreateTransactionStateTopic,
    /// A broker's heartbeat: registers it, or brings it back from fenced.
    Heartbeat(crate::controller::BrokerMeta),
    /// The broker missed its session: it leads nothing until it returns.
    FenceBroker(i32),
    /// ElectLeaders: preferred (or `unclean`) elections of the listed
    /// partitions, every eligible one when None.
    ElectLeaders {
        unclean: bool,
        partitions: Option<Vec<(String, i32)>>,
    },
    /// AlterPartitionReassignments: per partition the target replicas, or
    /// None to cancel the reassignment in progress.
    Reassign {
        changes: Vec<(String, i32, Option<Vec<i32>>)>,
    },
    /// A broker about to stop asks to be fenced now (Kafka's ControlledShutdown).
    ControlledShutdown(i32),
    /// Leaders' new ISRs (Kafka's AlterPartition, which carries many
    /// partitions): one metadata change for the whole batch.
    AlterPartitions {
        items: Vec<crate::controller::IsrChange>,
    },
}

pub enum ControlReply {
    Topics(Vec<TopicOutcome>),
    /// Per partition (ElectLeaders, AlterPartitionReassignments): None, or why not.
    Partitions(Vec<(String, i32, Option<crate::controller::Refusal>)>),
    /// One outcome per AlterConfigs resource, in request order.
    Altered(Vec<Option<Refusal>>),
    ProducerId(Result<i64, Refusal>),
    /// Heartbeats, fencing and the offsets topic: done, or why not.
    Done(Result<(), Refusal>),
    /// The shard that should have answered is shutting down.
    Unavailable,
}

fn not_here(topic: &str, partition: i32) -> PartitionError {
    PartitionError::new(
        ResponseError::UnknownTopicOrPartition,
        format!("This server does not host {topic}-{partition}"),
    )
}

impl Shard {
    pub(super) async fn execute(self: &Rc<Self>, op: ShardOp) -> ShardReply {
        match op {
            ShardOp::Produce { parts } => {
                let results = futures::future::join_all(parts.into_iter().map(|p| self.produce_one(p))).await;
                self.file_cache.trim();
                ShardReply::Produce(results)
            }
            ShardOp::TxnMarkers { parts } => {
                let results = futures::future::join_all(parts.into_iter().map(|p| self.marker_one(p))).await;
                self.file_cache.trim();
                ShardReply::TxnMarkers(results)
            }
            ShardOp::Fetch { parts } => {
                // At most `log.fd.cache.size` reads at once, each holding its
                // segment file: one fetch over 100,000 partitions otherwise
                // held thousands open at once.
                let reads_max = self.config.log_fd_cache_size.max(1);
                let results: Vec<FetchOutcome> = futures::stream::iter(parts)
                    .map(|p| self.fetch_one(p))
                    .buffered(reads_max)
                    .collect()
                    .await;
                self.file_cache.trim();
                ShardReply::Fetch(results)
            }
            ShardOp::Wait { parts, timeout_ms } => {
                self.wait_for_data(&parts, timeout_ms).await;
                ShardReply::Wait
            }
            ShardOp::Metrics => {
                ShardReply::Metrics(Box::new(crate::metrics::collect::shard_sample(self).await))
            }
            ShardOp::Watermarks { parts } => {
                ShardReply::Watermarks(crate::metrics::collect::watermarks(self, &parts))
            }
            ShardOp::ListOffsets { parts } => {
                let mut results = Vec::with_capacity(parts.len());
                for p in parts {
                    results.push(self.list_offset_one(p).await);
                }
                ShardReply::ListOffsets(results)
            }
            ShardOp::DeleteRecords { parts } => {
                let mut results = Vec::with_capacity(parts.len());
                for p in parts {
                    results.push(self.delete_records_one(p).await);
                }
                ShardReply::DeleteRecords(results)
            }
            ShardOp::ReplicaSizes { wanted } => {
                let partitions = self.partitions.borrow();
                let sizes = partitions
                    .iter()
                    .filter(|(topic, index, _)| {
                        wanted
                            .as_ref()
                            .is_none_or(|w| w.contains(&(topic.to_string(), *index)))
                    })
                    .map(|(topic, partition, p)| ReplicaSize {
                        topic: topic.to_string(),
                        partition,
                        size_bytes: p.log().size_bytes(),
                        offset_lag: (p.high_watermark() - p.log_end_offset()).max(0),
                    })
                    .collect();
                ShardReply::ReplicaSizes(sizes)
            }
            ShardOp::LeaderEpochs { parts } => {
                ShardReply::LeaderEpochs(parts.into_iter().map(|p| self.leader_epoch_one(p)).collect())
            }
            ShardOp::Apply { view } => {
                let old = self.image();
                let image = view.image.clone();
                self.apply(view, self.open_mode.get()).await;
                // Offsets of deleted topics go in the background: the
                // metadata change does not wait for coordinator writes.
                let shard = self.clone();
                glommio::spawn_local(async move {
                    shard.groups.forget_deleted_topics(&*shard, &old, &image).await
                })
                .detach();
                ShardReply::Applied
            }
            ShardOp::Control(op) => ShardReply::Control(self.control(op).await),
            ShardOp::Group(op) => ShardReply::Group(self.groups.execute(&**self, *op).await),
            ShardOp::Txn(op) => {
                // Boxed as a trait object: the coordinator calls other shards
                // (the producer-id allocator), whose `execute` would otherwise
                // contain this future's type in its own.
                let run: std::pin::Pin<Box<dyn std::future::Future<Output = _> + '_>> =
                    Box::pin(self.txns.execute(self, *op));
                ShardReply::Txn(run.await)
            }
        }
    }

    async fn produce_one(&self, part: ProducePart) -> ProduceOutcome {
        let mut outcome = ProduceOutcome {
            slot: part.slot,
            error: None,
            base_offset: -1,
            log_start_offset: -1,
            log_append_time_ms: -1,
        };
        let Some(partition) = self.partition(&part.topic, part.partition) else {
            outcome.error = Some(not_here(&part.topic, part.partition));
            return outcome;
        };
        let epoch = partition.leader_epoch();
        let appended = partition.append(&part.records).await;
        if let Ok(result) = &appended {
            let offsets = (result.last_offset - result.base_offset + 1).max(0) as u64;
            partition.counters().produced(part.records.len() as u64, offsets);
        }
        let appended = match appended {
            Ok(result) if part.acks == -1 => partition
                .await_replicated(
                    result.last_offset,
                    epoch,
                    part.min_insync_replicas,
                    part.timeout_ms,
                )
                .await
                .map(|()| result),
            other => other,
        };
        match appended {
            Ok(result) => {
                partition.snapshot_after_roll();
                outcome.base_offset = result.base_offset;
                outcome.log_start_offset = result.log_start_offset;
                outcome.log_append_time_ms = result.log_append_time_ms;
            }
            Err(e) => {
                tracing::warn!(
                    partition = %format!("{}-{}", part.topic, part.partition),
                    "produce to {}-{} refused: {}",
                    part.topic,
                    part.partition,
                    e.message
                );
                outcome.error = Some(e);
            }
        }
        outcome
    }

    async fn fetch_one(self: &Rc<Self>, part: FetchPart) -> FetchOutcome {
        let mut outcome = FetchOutcome {
            slot: part.slot,
            error: None,
            high_watermark: -1,
            log_start_offset: -1,
            last_stable_offset: -1,
            aborted_transactions: None,
            records: Records::default(),
        };
        let Some(partition) = self.partition(&part.topic, part.partition) else {
            outcome.error = Some(not_here(&part.topic, part.partition));
            return outcome;
        };
        let follower = part.replica_id >= 0;
        if follower {
            if let Err(e) = self.on_follower_fetch(
                &partition,
                part.replica_id,
                part.offset,
                part.current_leader_epoch,
            ) {
                outcome.error = Some(e);
                return outcome;
            }
        }
        outcome.high_watermark = partition.high_watermark();
        outcome.log_start_offset = partition.log_start_offset();
        outcome.last_stable_offset = partition.last_stable_offset();
        let limit = if follower {
            ReadLimit::LogEnd
        } else if part.read_committed {
            ReadLimit::LastStable
        } else {
            ReadLimit::HighWatermark
        };
        match partition
            .read_upto(
                part.offset,
                part.max_bytes,
                self.config.fetch_zero_copy_enable,
                limit,
            )
            .await
        {
            Ok(read) => {
                outcome.high_watermark = read.high_watermark;
                outcome.log_start_offset = read.log_start_offset;
                outcome.last_stable_offset = read.last_stable_offset;
                outcome.records = read.records;
                if part.read_committed {
                    outcome.aborted_transactions = Some(partition.aborted_transactions(part.offset));
                }
            }
            Err(e) => outcome.error = Some(e),
        }
        outcome
    }

    /// Waits on the partitions' own change notifications (no polling loop,
    /// and an append elsewhere on the shard wakes nothing here) until one
    /// of them has data past the given offset or time runs out.
    async fn wait_for_data(&self, parts: &[WaitPart], timeout_ms: u64) {
        let deadline = std::time::Instant::now() + Duration::from_millis(timeout_ms);
        let mut waited = Vec::with_capacity(parts.len());
        for w in parts {
            match self.partition(&w.topic, w.partition) {
                Some(p) => waited.push((p, w)),
                // Gone (deleted or moved): the next read says so.
                None => return,
            }
        }
        if waited.is_empty() {
            // Nothing to listen to (never sent so): just the deadline.
            glommio::timer::sleep(deadline.saturating_duration_since(std::time::Instant::now())).await;
            return;
        }
        loop {
            // Listen first, then check: a change between the two still wakes.
            let listeners: Vec<_> = waited.iter().map(|(p, _)| p.listen_data()).collect();
            let ready = waited.iter().any(|(p, w)| {
                let replaced = self
                    .partition(&w.topic, w.partition)
                    .is_none_or(|current| !Rc::ptr_eq(&current, p));
                if replaced {
                    // Deleted or moved while waiting: the next read says so.
                    true
                } else if w.upto_log_end {
                    p.log_end_offset() > w.offset || p.high_watermark() > w.high_watermark_seen
                } else if w.read_committed {
                    p.last_stable_offset() > w.offset
                } else {
                    p.high_watermark() > w.offset
                }
            });
            if ready || self.is_stopping() {
                return;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return;
            }
            let timeout = glommio::timer::sleep(deadline - now);
            futures_lite::future::or(
                async {
                    futures::future::select_all(listeners).await;
                },
                timeout,
            )
            .await;
        }
    }

    async fn marker_one(&self, part: MarkerPart) -> MarkerOutcome {
        let error = match self.partition(&part.topic, part.partition) {
            None => Some(not_here(&part.topic, part.partition)),
            Some(partition) => {
                let epoch = partition.leader_epoch();
                let written = partition
                    .write_txn_marker(
                        part.producer_id,
                        part.producer_epoch,
                        part.coordinator_epoch,
                        part.commit,
                    )
                    .await;
                // Kafka writes markers with acks=all: a marker the
                // coordinator counts as done survives its leader's loss.
                let min_insync = self
                    .image()
                    .topic(&part.topic)
                    .map_or(1, |t| {
                        crate::protocol::produce::min_insync_replicas(&t.configs, &self.config)
                    })
                    .max(1) as usize;
                match written {
                    Ok(offset) => {
                        // The group coordinator's pending transactional
                        // offsets end with the marker that ends them in its log.
                        if part.topic == crate::group::OFFSETS_TOPIC {
                            let partitions = self
                                .image()
                                .topic(crate::group::OFFSETS_TOPIC)
                                .map_or(0, |t| t.partitions.len() as i32);
                            self.groups.end_transaction(
                                part.partition,
                                partitions,
                                part.producer_id,
                                part.commit,
                            );
                        }
                        partition
                            .await_replicated(
                                offset,
                                epoch,
                                min_insync,
                                self.config.txn.state_log_write_timeout_ms,
                            )
                            .await
                            .err()
                    }
                    Err(e) => Some(e),
                }
            }
        };
        if let Some(e) = &error {
            tracing::warn!(
                "transaction marker for producer {} on {}-{} refused: {}",
                part.producer_id,
                part.topic,
                part.partition,
                e.message
            );
        }
        MarkerOutcome {
            slot: part.slot,
            error,
        }
    }

    async fn list_offset_one(&self, part: OffsetsPart) -> OffsetsOutcome {
        let mut outcome = OffsetsOutcome {
            slot: part.slot,
            error: None,
            offset: -1,
            timestamp: -1,
            leader_epoch: -1,
        };
        let Some(partition) = self.partition(&part.topic, part.partition) else {
            outcome.error = Some(not_here(&part.topic, part.partition));
            return outcome;
        };
        outcome.leader_epoch = partition.leader_epoch();
        match partition
            .offset_for_timestamp(part.timestamp, part.read_committed)
            .await
        {
            Ok((offset, timestamp)) => {
                outcome.offset = offset;
                outcome.timestamp = timestamp;
            }
            Err(e) => outcome.error = Some(e),
        }
        outcome
    }

    async fn delete_records_one(&self, part: DeleteRecordsPart) -> DeleteRecordsOutcome {
        let mut outcome = DeleteRecordsOutcome {
            slot: part.slot,
            error: None,
            low_watermark: -1,
        };
        match self.partition(&part.topic, part.partition) {
            None => outcome.error = Some(not_here(&part.topic, part.partition)),
            Some(p) => match p.delete_records(part.offset).await {
                Ok(low_watermark) => outcome.low_watermark = low_watermark,
                Err(e) => outcome.error = Some(e),
            },
        }
        outcome
    }

    fn leader_epoch_one(&self, part: EpochPart) -> EpochOutcome {
        let mut outcome = EpochOutcome {
            slot: part.slot,
            error: None,
            leader_epoch: -1,
            end_offset: -1,
        };
        match self.partition(&part.topic, part.partition) {
            None => outcome.error = Some(not_here(&part.topic, part.partition)),
            Some(p) => match p.end_offset_for_epoch(part.leader_epoch, part.current_leader_epoch) {
                Ok((epoch, end_offset)) => {
                    outcome.leader_epoch = epoch;
                    outcome.end_offset = end_offset;
                }
                Err(e) => outcome.error = Some(e),
            },
        }
        outcome
    }

    /// Metadata changes: on the controller shard, through the node's control plane.
    async fn control(self: &Rc<Self>, op: ControlOp) -> ControlReply {
        assert_eq!(
            self.id,
            super::CONTROLLER_SHARD,
            "control ops run on the controller shard"
        );
        match self.control_plane.get() {
            Some(plane) => plane.clone().submit(self, op).await,
            None => ControlReply::Unavailable,
        }
    }

    /// Applies an image on every shard, this one included, and waits for all.
    pub(crate) async fn broadcast(self: &Rc<Self>, view: Arc<NodeView>) {
        let calls = (0..self.nr_shards).map(|target| {
            let view = view.clone();
            async move { self.call(target, ShardOp::Apply { view }).await }
        });
        futures::future::join_all(calls).await;
    }
}
