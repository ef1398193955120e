//! What a shard does with each `ShardOp`: the per-shard half of produce,
//! fetch, list-offsets and metadata changes. Runs on the shard that owns the
//! partitions named in the op.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;

use super::{Shard, ShardOp, ShardReply};
use crate::controller::{self, ConfigAlteration, MetadataImage, NewTopic, Refusal, TopicOutcome};
use crate::partition::PartitionError;
use crate::storage::{Records, RecoveryMode};

pub struct ProducePart {
    pub slot: usize,
    pub topic: String,
    pub partition: i32,
    pub records: Bytes,
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
}

pub struct FetchOutcome {
    pub slot: usize,
    pub error: Option<PartitionError>,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub records: Records,
}

pub struct WaitPart {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

pub struct OffsetsPart {
    pub slot: usize,
    pub topic: String,
    pub partition: i32,
    pub timestamp: i64,
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

pub struct EpochOutcome {
    pub slot: usize,
    pub error: Option<PartitionError>,
    pub leader_epoch: i32,
    pub end_offset: i64,
}

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
    /// InitProducerId for an idempotent producer: a fresh, never reused id.
    AllocateProducerId,
}

pub enum ControlReply {
    Topics(Vec<TopicOutcome>),
    /// One outcome per AlterConfigs resource, in request order.
    Altered(Vec<Option<Refusal>>),
    ProducerId(Result<i64, Refusal>),
    /// The shard that should have answered is shutting down.
    Unavailable,
}

/// Producer ids reserved per metadata write (Kafka's block size is 1000).
const PRODUCER_ID_BLOCK: i64 = 1000;

fn storage_error(e: &std::io::Error) -> Refusal {
    (ResponseError::KafkaStorageError, e.to_string())
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
                ShardReply::Produce(results)
            }
            ShardOp::Fetch { parts } => {
                let results = futures::future::join_all(parts.into_iter().map(|p| self.fetch_one(p))).await;
                ShardReply::Fetch(results)
            }
            ShardOp::Wait { parts, timeout_ms } => {
                self.wait_for_data(&parts, timeout_ms).await;
                ShardReply::Wait
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
            ShardOp::LeaderEpochs { parts } => {
                ShardReply::LeaderEpochs(parts.into_iter().map(|p| self.leader_epoch_one(p)).collect())
            }
            ShardOp::Apply { image } => {
                let old = self.image();
                self.apply(image.clone(), RecoveryMode::Clean).await;
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
        match partition.append(&part.records).await {
            Ok(result) => {
                self.notify_appended();
                partition.snapshot_after_roll();
                outcome.base_offset = result.base_offset;
                outcome.log_start_offset = result.log_start_offset;
                outcome.log_append_time_ms = result.log_append_time_ms;
            }
            Err(e) => {
                tracing::warn!(
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

    async fn fetch_one(&self, part: FetchPart) -> FetchOutcome {
        let mut outcome = FetchOutcome {
            slot: part.slot,
            error: None,
            high_watermark: -1,
            log_start_offset: -1,
            records: Records::default(),
        };
        let Some(partition) = self.partition(&part.topic, part.partition) else {
            outcome.error = Some(not_here(&part.topic, part.partition));
            return outcome;
        };
        outcome.high_watermark = partition.high_watermark();
        outcome.log_start_offset = partition.log_start_offset();
        match partition
            .read(part.offset, part.max_bytes, self.config.fetch_zero_copy_enable)
            .await
        {
            Ok(read) => {
                outcome.high_watermark = read.high_watermark;
                outcome.log_start_offset = read.log_start_offset;
                outcome.records = read.records;
            }
            Err(e) => outcome.error = Some(e),
        }
        outcome
    }

    /// Waits on the shard's append notification (no polling loop) until one
    /// of the partitions has data past the given offset or time runs out.
    async fn wait_for_data(&self, parts: &[WaitPart], timeout_ms: u64) {
        let deadline = std::time::Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let listener = self.appended.listen();
            let ready = parts.iter().any(|w| {
                self.partition(&w.topic, w.partition)
                    .is_none_or(|p| p.high_watermark() > w.offset)
            });
            if ready || self.is_stopping() {
                return;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return;
            }
            let timeout = glommio::timer::sleep(deadline - now);
            futures_lite::future::or(listener, timeout).await;
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
        match partition.offset_for_timestamp(part.timestamp).await {
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

    /// Metadata changes: only on shard 0, one at a time. The new image is
    /// persisted before any shard sees it, then applied on every shard in
    /// order before the client gets its answer.
    async fn control(self: &Rc<Self>, op: ControlOp) -> ControlReply {
        assert_eq!(
            self.id,
            super::CONTROLLER_SHARD,
            "control ops run on the controller shard"
        );
        let Ok(_permit) = self.control_lock.acquire_permit(1).await else {
            return ControlReply::Unavailable;
        };
        let image = self.image();
        match op {
            ControlOp::AllocateProducerId => {
                ControlReply::ProducerId(self.allocate_producer_id(&image).await)
            }
            ControlOp::AlterConfigs {
                changes,
                validate_only,
            } => {
                let (next, outcomes) = controller::alter_configs(&image, changes, &self.config);
                let committed = if validate_only {
                    Ok(())
                } else {
                    self.commit(&image, next).await
                };
                ControlReply::Altered(match committed {
                    Ok(()) => outcomes,
                    Err(e) => outcomes
                        .into_iter()
                        .map(|o| o.or(Some(storage_error(&e))))
                        .collect(),
                })
            }
            ControlOp::CreateTopics {
                topics,
                validate_only,
            } => {
                let (next, outcomes) =
                    controller::create_topics(&image, topics, &self.config, self.nr_shards);
                self.topics_reply(&image, next, outcomes, validate_only).await
            }
            ControlOp::DeleteTopics { names } => {
                let (next, outcomes) = controller::delete_topics(&image, names);
                self.topics_reply(&image, next, outcomes, false).await
            }
            ControlOp::CreatePartitions {
                topics,
                validate_only,
            } => {
                let (next, outcomes) =
                    controller::create_partitions(&image, topics, &self.config, self.nr_shards);
                self.topics_reply(&image, next, outcomes, validate_only).await
            }
        }
    }

    /// Commits a topic change (unless only validating) and answers per topic;
    /// a failed commit fails every topic that had no error of its own.
    async fn topics_reply(
        self: &Rc<Self>,
        image: &MetadataImage,
        next: MetadataImage,
        outcomes: Vec<TopicOutcome>,
        validate_only: bool,
    ) -> ControlReply {
        let committed = if validate_only {
            Ok(())
        } else {
            self.commit(image, next).await
        };
        ControlReply::Topics(match committed {
            Ok(()) => outcomes,
            Err(e) => outcomes
                .into_iter()
                .map(|mut o| {
                    o.error = o.error.or(Some(storage_error(&e)));
                    o
                })
                .collect(),
        })
    }

    /// Hands out ids from a block reserved in the persisted image, so an id
    /// is never reused after a restart; one metadata write per block.
    async fn allocate_producer_id(self: &Rc<Self>, image: &MetadataImage) -> Result<i64, Refusal> {
        let (next_id, block_end) = self.producer_ids.get();
        if next_id < block_end {
            self.producer_ids.set((next_id + 1, block_end));
            return Ok(next_id);
        }
        let (next, first) = image.with_producer_ids_reserved(PRODUCER_ID_BLOCK);
        self.commit(image, next)
            .await
            .map_err(|e| (ResponseError::KafkaStorageError, e.to_string()))?;
        self.producer_ids.set((first + 1, first + PRODUCER_ID_BLOCK));
        Ok(first)
    }

    /// Persists `next` and applies it everywhere, if it changed anything.
    async fn commit(self: &Rc<Self>, current: &MetadataImage, next: MetadataImage) -> std::io::Result<()> {
        if next.epoch == current.epoch {
            return Ok(());
        }
        next.persist(&self.config.data_dir).inspect_err(|e| {
            tracing::error!("cannot persist metadata: {e}");
        })?;
        self.broadcast(Arc::new(next)).await;
        Ok(())
    }

    /// Applies an image on every shard, this one included, and waits for all.
    async fn broadcast(self: &Rc<Self>, image: Arc<MetadataImage>) {
        let calls = (0..self.nr_shards).map(|target| {
            let image = image.clone();
            async move { self.call(target, ShardOp::Apply { image }).await }
        });
        futures::future::join_all(calls).await;
    }
}
