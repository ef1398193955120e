//! A partition's replica role: leader (appends, tracks its followers, owns
//! the high watermark) or follower (copies its leader's batches as they
//! are, truncating first where its log diverged).
//!
//! The rules are the sans-IO ones of `replication::state`; this file is the
//! thin layer that applies them to the log, the leader-epoch checkpoint,
//! the producer state and the tail cache. On the partition's shard only;
//! driven by `shard::replica` (role changes from metadata images, the
//! fetcher, the ISR checks) and by the fetch and produce paths.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::ResponseError;

use super::{Partition, PartitionError};
use crate::controller::PartitionMeta;
use crate::replication::state::{FetchEffect, Leadership};
use crate::storage::{batch, AppendResult};

/// What a follower knows of its leader.
#[derive(Clone, Debug)]
pub struct Following {
    /// The leading node, or -1 while the partition has none.
    pub leader: i32,
    pub leader_epoch: i32,
    /// The leader's high watermark as of the last fetch.
    pub high_watermark: i64,
    /// A new leader (or a restart): compare epochs with it and truncate
    /// before fetching.
    pub needs_truncation: bool,
}

impl Following {
    /// No leader known yet (a partition just opened).
    pub fn offline(leader_epoch: i32) -> Following {
        Following {
            leader: crate::controller::NO_LEADER,
            leader_epoch,
            high_watermark: 0,
            needs_truncation: true,
        }
    }
}

pub enum Role {
    Leader(Leadership),
    Follower(Following),
}

/// Why an acks=all produce ended without its records committed.
fn not_leader(topic: &str, index: i32) -> PartitionError {
    PartitionError::new(
        ResponseError::NotLeaderOrFollower,
        format!("This server is not the leader for {topic}-{index}."),
    )
}

impl Partition {
    pub fn is_leader(&self) -> bool {
        matches!(&*self.role.borrow(), Role::Leader(_))
    }

    /// The high watermark checkpointed before a restart: a replica starts
    /// from it (capped by its log end) rather than from zero.
    pub fn set_checkpointed_high_watermark(&self, high_watermark: i64) {
        if let Role::Follower(f) = &mut *self.role.borrow_mut() {
            f.high_watermark = f
                .high_watermark
                .max(high_watermark.min(self.log.log_end_offset()));
        }
    }

    /// False while this leader's high watermark is below where its epoch
    /// began (Kafka's KIP-207 check): until the ISR catches up with it,
    /// ListOffsets answers OFFSET_NOT_AVAILABLE and clients retry.
    pub fn high_watermark_settled(&self) -> bool {
        match &*self.role.borrow() {
            Role::Leader(l) => l.high_watermark() >= l.epoch_start_offset,
            Role::Follower(_) => true,
        }
    }

    /// The follower's view, when it follows.
    pub fn following(&self) -> Option<Following> {
        match &*self.role.borrow() {
            Role::Follower(f) => Some(f.clone()),
            Role::Leader(_) => None,
        }
    }

    /// The leader's state, for the ISR checks.
    pub fn with_leadership<T>(&self, f: impl FnOnce(&mut Leadership) -> T) -> Option<T> {
        match &mut *self.role.borrow_mut() {
            Role::Leader(l) => Some(f(l)),
            Role::Follower(_) => None,
        }
    }

    /// The controller refused the ISR `isr` for good (sent at these
    /// epochs): drop it if it is still the pending one (the high watermark
    /// may then move, which wakes this partition's waiters).
    pub fn isr_refused(&self, leader_epoch: i32, partition_epoch: i32, isr: &[i32]) {
        let moved = self
            .with_leadership(|l| {
                let current = l.leader_epoch == leader_epoch
                    && l.partition_epoch == partition_epoch
                    && l.pending_isr.as_deref() == Some(isr);
                current.then(|| l.proposal_failed()).flatten()
            })
            .flatten()
            .is_some();
        if moved {
            self.replication_moved();
        }
    }

    /// Whether `isr` is still this leader's pending proposal at these epochs.
    pub fn isr_pending(&self, leader_epoch: i32, partition_epoch: i32, isr: &[i32]) -> bool {
        self.with_leadership(|l| {
            l.leader_epoch == leader_epoch
                && l.partition_epoch == partition_epoch
                && l.pending_isr.as_deref() == Some(isr)
        })
        .unwrap_or(false)
    }

    pub(super) fn check_leader(&self) -> Result<(), PartitionError> {
        if self.is_leader() {
            Ok(())
        } else {
            Err(not_leader(&self.topic, self.index))
        }
    }

    /// The high watermark or the role changed, or the shard dropped this
    /// partition: wakes acks=all produces and this partition's
    /// long-polling fetches.
    pub fn replication_moved(&self) {
        self.replication_changed.notify(usize::MAX);
        self.data_changed.notify(usize::MAX);
    }

    /// Resolves at this partition's next append, high-watermark move or
    /// role change (register before checking, so none is missed).
    pub fn listen_data(&self) -> event_listener::EventListener {
        self.data_changed.listen()
    }

    /// After a leader append at `epoch`: the high watermark may move (an
    /// ISR of the leader alone). The role may have changed during the
    /// write: then the append is not known to be kept.
    pub(super) fn on_leader_appended(&self, epoch: i32) -> Result<(), PartitionError> {
        let log_end_offset = self.log.log_end_offset();
        let moved = match &mut *self.role.borrow_mut() {
            Role::Leader(l) if l.leader_epoch == epoch => l.on_local_append(log_end_offset),
            _ => return Err(not_leader(&self.topic, self.index)),
        };
        if moved.is_some() {
            self.replication_moved();
        }
        Ok(())
    }

    /// Takes (or keeps) leadership as `meta` says, this node being
    /// `local_id`. A new epoch is recorded in the leader-epoch checkpoint at
    /// the log end, so followers truncate to where this epoch began. The
    /// same epoch with a new ISR settles a pending ISR change. Returns
    /// whether leadership is new.
    pub fn become_leader(&self, local_id: i32, meta: &PartitionMeta, now_ms: i64) -> std::io::Result<bool> {
        let mut role = self.role.borrow_mut();
        if let Role::Leader(l) = &mut *role {
            if l.leader_epoch == meta.leader_epoch {
                if meta.partition_epoch > l.partition_epoch {
                    if l.replicas != meta.replicas {
                        l.set_replicas(meta.replicas.clone());
                    }
                    if l.on_isr_committed(meta.in_sync().to_vec(), meta.partition_epoch)
                        .is_some()
                    {
                        self.replication_moved();
                    }
                }
                return Ok(false);
            }
        }
        let log_end_offset = self.log.log_end_offset();
        let known_high_watermark = match &*role {
            Role::Leader(l) => l.high_watermark(),
            Role::Follower(f) => f.high_watermark,
        };
        if log_end_offset == self.log.log_start_offset() {
            // Nothing in the log to carry the epoch yet: written before the
            // first append, not once per partition taken over empty.
            self.epochs
                .borrow_mut()
                .assign_unsaved(meta.leader_epoch, log_end_offset);
        } else {
            self.epochs
                .borrow_mut()
                .assign(self.log.dir(), meta.leader_epoch, log_end_offset)?;
        }
        if meta.leader_epoch > self.leader_epoch() {
            self.set_leader_epoch(meta.leader_epoch);
        }
        *role = Role::Leader(Leadership::new(
            local_id,
            meta.leader_epoch,
            meta.partition_epoch,
            meta.replicas.clone(),
            meta.in_sync().to_vec(),
            log_end_offset,
            known_high_watermark,
            now_ms,
        ));
        drop(role);
        self.replication_moved();
        Ok(true)
    }

    /// Unit tests: this replica leads alone at its current epoch.
    #[cfg(test)]
    pub fn lead_alone(&self) {
        let meta = PartitionMeta::new(vec![1]);
        let meta = PartitionMeta {
            leader_epoch: self.leader_epoch(),
            ..meta
        };
        self.become_leader(1, &meta, 0).expect("checkpoint written");
    }

    /// Follows `leader` (-1: none yet) at `leader_epoch`. Returns whether
    /// anything changed (then the fetcher truncates before fetching).
    pub fn become_follower(&self, leader: i32, leader_epoch: i32) -> bool {
        let mut role = self.role.borrow_mut();
        let high_watermark = match &*role {
            Role::Follower(f) if f.leader == leader && f.leader_epoch == leader_epoch => return false,
            Role::Follower(f) => f.high_watermark,
            Role::Leader(l) => l.high_watermark(),
        };
        *role = Role::Follower(Following {
            leader,
            leader_epoch,
            high_watermark,
            needs_truncation: true,
        });
        drop(role);
        if leader_epoch > self.leader_epoch() {
            self.set_leader_epoch(leader_epoch);
        }
        // acks=all waiters of the old leadership answer NOT_LEADER_OR_FOLLOWER.
        self.replication_moved();
        true
    }

    /// A follower's fetch from `fetch_offset` reached this leader: checks
    /// the follower's epoch, then updates its progress. Kafka's
    /// FENCED_LEADER_EPOCH / UNKNOWN_LEADER_EPOCH for a stale or early one.
    pub fn on_follower_fetch(
        &self,
        follower: i32,
        fetch_offset: i64,
        current_leader_epoch: i32,
        now_ms: i64,
    ) -> Result<FetchEffect, PartitionError> {
        self.check_current_epoch(current_leader_epoch)?;
        let effect = match &mut *self.role.borrow_mut() {
            // Only a replica reads past the high watermark.
            Role::Leader(l) if l.follower(follower).is_none() => {
                return Err(PartitionError::new(
                    ResponseError::NotLeaderOrFollower,
                    format!(
                        "broker {follower} is not a follower of {}-{}",
                        self.topic, self.index
                    ),
                ))
            }
            Role::Leader(l) => l.on_follower_fetch(follower, fetch_offset, now_ms),
            Role::Follower(_) => return Err(not_leader(&self.topic, self.index)),
        };
        if effect.high_watermark_advanced.is_some() {
            self.replication_moved();
        }
        Ok(effect)
    }

    /// Copies the leader's batches as they are (offsets, epochs, CRC
    /// checked, never re-encoded) to the log end; records new epochs in the
    /// checkpoint and idempotent producers' sequences, so this replica can
    /// lead with the same history. `leader_high_watermark` is the leader's.
    pub async fn append_replicated(
        &self,
        records: &Bytes,
        leader_high_watermark: i64,
    ) -> Result<(), PartitionError> {
        if !records.is_empty() {
            let batches = batch::split_validated(records).map_err(|e| {
                PartitionError::new(
                    ResponseError::CorruptMessage,
                    format!("{}-{} from the leader: {e}", self.topic, self.index),
                )
            })?;
            let cached = batches.clone();
            let result: AppendResult = self.log.append_replicated(batches).await?;
            crate::metrics::count_replication_append(records.len() as u64);
            let now_ms = crate::clock::now_ms();
            let mut epochs_changed = Vec::new();
            let mut ended = Vec::new();
            for bytes in &cached {
                let header = batch::parse_header(bytes)
                    .map_err(|e| PartitionError::new(ResponseError::CorruptMessage, e.to_string()))?;
                epochs_changed.push((header.partition_leader_epoch.get(), header.base_offset.get()));
                if header.producer_id.get() >= 0 && !header.is_control() {
                    self.producers.borrow_mut().on_appended(
                        header,
                        header.base_offset.get(),
                        header.last_offset(),
                        now_ms,
                    );
                } else if header.producer_id.get() >= 0 {
                    // The leader's transaction marker: the same end here.
                    let replayed = self.producers.borrow_mut().replay(bytes);
                    if let Ok(Some(completed)) = replayed {
                        ended.push(completed);
                    }
                }
            }
            {
                let mut epochs = self.epochs.borrow_mut();
                for (epoch, start) in epochs_changed {
                    epochs.assign(self.log.dir(), epoch, start)?;
                }
            }
            self.cache.insert(&cached, result.base_offset, None, None);
            if ended.iter().any(|c| c.aborted) {
                self.absorb_replayed(ended, Vec::new()).await?;
            }
        }
        if let Role::Follower(f) = &mut *self.role.borrow_mut() {
            f.high_watermark = f.high_watermark.max(leader_high_watermark);
        }
        Ok(())
    }

    /// The follower's epochs, for OffsetForLeaderEpoch to its leader.
    pub fn epoch_history(&self) -> Vec<(i32, i64)> {
        self.epochs.borrow().entries().to_vec()
    }

    /// Cuts the log at `offset` (a follower whose log diverged from its
    /// leader's), with the epochs, producer state and tail cache that
    /// described the cut part. The fetcher is the only appender, so no
    /// append races it.
    pub async fn truncate_to(&self, offset: i64) -> Result<(), PartitionError> {
        let before = self.log.log_end_offset();
        if offset >= before {
            // No records to cut, but an epoch that started at the log end
            // (this replica led it without writing) is not the leader's:
            // forgetting it is what lets the next question converge.
            self.epochs
                .borrow_mut()
                .truncate_from_end(self.log.dir(), offset)?;
            return Ok(());
        }
        let _turn = self.idempotent_lock.ticket().acquire().await;
        self.log.truncate_to(offset).await?;
        let after = self.log.log_end_offset();
        self.cache.trim_from(after);
        self.epochs
            .borrow_mut()
            .truncate_from_end(self.log.dir(), after)?;
        let (producers, snapshot_offset, replayed) =
            super::rebuild_producer_states(&self.log, None, None).await?;
        *self.producers.borrow_mut() = producers;
        self.snapshot_offset.set(snapshot_offset);
        self.aborted_after_truncation(after, replayed).await?;
        tracing::info!(
            "{}-{}: truncated from {before} to {after} to match the leader",
            self.topic,
            self.index
        );
        // Below the high watermark this replica knew, the cut records were
        // committed: only an unclean election loses those. Say how many.
        let committed = match &mut *self.role.borrow_mut() {
            Role::Follower(f) => {
                let known = f.high_watermark;
                f.high_watermark = known.min(after);
                known
            }
            Role::Leader(_) => after,
        };
        if committed > after {
            tracing::warn!(
                "{}-{}: unclean leader election lost {} committed offsets ({after}..{committed}): the new leader's log ends at {after}",
                self.topic,
                self.index,
                committed - after
            );
        }
        Ok(())
    }

    /// The follower's log and its leader's disagree (a refused append, an
    /// offset the leader does not have): compare epochs again first.
    pub fn become_follower_again(&self) {
        if let Role::Follower(f) = &mut *self.role.borrow_mut() {
            f.needs_truncation = true;
        }
    }

    /// Empties the follower's log and restarts it at `offset`: the leader's
    /// log starts past everything this replica has (Kafka's
    /// `truncateFullyAndStartAt`).
    pub async fn truncate_fully(&self, offset: i64) -> Result<(), PartitionError> {
        let _turn = self.idempotent_lock.ticket().acquire().await;
        self.log.truncate_fully_and_start_at(offset).await?;
        self.cache.trim_from(i64::MIN);
        self.epochs
            .borrow_mut()
            .truncate_from_end(self.log.dir(), i64::MIN)?;
        let (producers, snapshot_offset, replayed) =
            super::rebuild_producer_states(&self.log, None, None).await?;
        *self.producers.borrow_mut() = producers;
        self.snapshot_offset.set(snapshot_offset);
        self.aborted_after_truncation(offset, replayed).await?;
        tracing::info!(
            "{}-{}: restarted at the leader's log start {offset}",
            self.topic,
            self.index
        );
        Ok(())
    }

    /// Marks the follower's truncation done.
    pub fn truncation_done(&self) {
        if let Role::Follower(f) = &mut *self.role.borrow_mut() {
            f.needs_truncation = false;
        }
    }

    /// acks=all: waits until the high watermark passes `last_offset`
    /// (every in-sync replica has it) and answers as Kafka does:
    /// NOT_ENOUGH_REPLICAS_AFTER_APPEND when the ISR fell below
    /// `min_insync_replicas`, NOT_LEADER_OR_FOLLOWER when leadership moved,
    /// REQUEST_TIMED_OUT after `timeout_ms`.
    pub async fn await_replicated(
        &self,
        last_offset: i64,
        epoch: i32,
        min_insync_replicas: usize,
        timeout_ms: u64,
    ) -> Result<(), PartitionError> {
        let deadline = std::time::Instant::now() + Duration::from_millis(timeout_ms);
        loop {
            let listener = self.replication_changed.listen();
            match &*self.role.borrow() {
                Role::Leader(l) if l.leader_epoch == epoch => {
                    if l.high_watermark() > last_offset {
                        if l.isr.len() < min_insync_replicas {
                            return Err(PartitionError::new(
                                ResponseError::NotEnoughReplicasAfterAppend,
                                format!(
                                    "the ISR {:?} shrank below min.insync.replicas {min_insync_replicas} while the batch was replicated",
                                    l.isr
                                ),
                            ));
                        }
                        return Ok(());
                    }
                }
                _ => return Err(not_leader(&self.topic, self.index)),
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(PartitionError::new(
                    ResponseError::RequestTimedOut,
                    format!("the ISR did not replicate offset {last_offset} within {timeout_ms} ms"),
                ));
            }
            let _ = futures::future::select(listener, Box::pin(glommio::timer::sleep(left))).await;
        }
    }
}
