//! The append path: group commit, one aligned O_DIRECT write per run of
//! appends, rolls, and the flush policy. Kept apart because it is the only
//! code that writes the active segment: its invariants (one writer task, the
//! partial tail block rewritten in place, nothing published by a short write)
//! hold only if nothing else touches the segment's bytes. (Truncation, in
//! `truncation.rs`, changes them too, but only while it holds the writer's
//! place: see `Log::claim_writer`.)
//!
//! Three kinds of append share the queue and the writes: the leader's
//! (`append`, offsets assigned here), the leader's with its epoch stamped
//! (`append_with_epoch`), and a follower's copy of the leader's batches
//! (`append_replicated`, written byte for byte at the offsets they carry).

use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use futures::channel::oneshot;
use glommio::io::DmaFile;

use crate::clock::now_ms;
use crate::latency::{self, Stage};
use crate::storage::batch::{self, BatchError};
use crate::storage::file_cache::FileMode;
use crate::storage::index::SegmentIndex;
use crate::storage::segment::{self, file_path, LOG_SUFFIX};

use super::{
    align_down, align_up, write_offset_file, AppendResult, Log, Segment, StorageError, BLOCK_BYTES,
    RECOVERY_POINT_FILE, WRITE_BYTES_MAX,
};

pub(super) struct PendingAppend {
    batches: Vec<Bytes>,
    bytes: u64,
    /// Offsets the append takes: the log end offset moves this far.
    offsets: i64,
    records: u64,
    mode: AppendMode,
    /// When the caller queued it (`latency::Stage::AppendQueue`).
    queued_at: Instant,
}

/// What the writer does to an append's batches while copying them into the
/// DMA buffer.
#[derive(Clone, Copy, Debug)]
enum AppendMode {
    /// The leader's append: baseOffset rewritten to the assigned offset,
    /// LogAppendTime stamped when the topic uses it, and partitionLeaderEpoch
    /// stamped when given.
    Leader { leader_epoch: Option<i32> },
    /// A follower's copy of the leader's batches: written byte for byte. Its
    /// first batch starts at `base_offset`, which must not be below the log
    /// end offset when it is written (checked by the writer, since appends
    /// queue). Above it is a gap compaction left in the leader's log, which
    /// Kafka's followers accept too.
    Replicated { base_offset: i64 },
}

type Reply = oneshot::Sender<Result<AppendResult, StorageError>>;

impl Log {
    /// Appends whole, validated v2 batches atomically and contiguously.
    ///
    /// Offsets are assigned by rewriting baseOffset (not CRC covered) in the
    /// copy written; every other byte is kept as sent. Returns once the write
    /// completed (and the fdatasync, when the flush policy calls for one).
    /// Group commit: while a write is in flight, callers queue; the next write
    /// takes all queued batches (up to `WRITE_BYTES_MAX` per write, whole
    /// callers) and one fdatasync at most covers them all. The writer runs as
    /// its own task, so a caller that drops its future cannot stall the queue
    /// (its batches may still be written).
    pub async fn append(&self, batches: Vec<Bytes>) -> Result<AppendResult, StorageError> {
        let pending = describe(batches, AppendMode::Leader { leader_epoch: None })?;
        self.enqueue(pending).await
    }

    /// As `append`, and the writer also stamps `leader_epoch` into each
    /// batch's partitionLeaderEpoch (not CRC covered) in the copy written, as
    /// Kafka's leader does. Same queue, same group commit.
    pub async fn append_with_epoch(
        &self,
        batches: Vec<Bytes>,
        leader_epoch: i32,
    ) -> Result<AppendResult, StorageError> {
        let mode = AppendMode::Leader {
            leader_epoch: Some(leader_epoch),
        };
        self.enqueue(describe(batches, mode)?).await
    }

    /// A follower's append: batches fetched from the leader, which already
    /// carry their offsets, epochs and timestamps, written byte for byte.
    /// The first batch's baseOffset must be at or past the log end offset at
    /// the moment of the write, and each next batch must start after the one
    /// before (gaps are offsets compaction removed on the leader); otherwise
    /// nothing of this append is written and it fails with `NonContiguous`
    /// (other queued appends are not affected). Indexes, rolls and the flush
    /// policy are those of any append.
    pub async fn append_replicated(&self, batches: Vec<Bytes>) -> Result<AppendResult, StorageError> {
        let base_offset = match batches.first().map(|b| batch::parse_header(b)) {
            Some(Ok(header)) => header.base_offset.get(),
            Some(Err(e)) => return Err(e.into()),
            None => return Err(BatchError::Empty.into()),
        };
        self.enqueue(describe(batches, AppendMode::Replicated { base_offset })?)
            .await
    }

    async fn enqueue(&self, pending: PendingAppend) -> Result<AppendResult, StorageError> {
        let (reply, answer) = oneshot::channel();
        let start_writer = {
            let mut state = self.state.borrow_mut();
            if state.closed {
                return Err(StorageError::Closed);
            }
            state.pending.push_back((pending, reply));
            !std::mem::replace(&mut state.writer_running, true)
        };
        if start_writer {
            self.spawn_writer()?;
        }
        answer.await.map_err(|_| StorageError::Closed)?
    }

    /// Starts the writer task; the caller has set `writer_running`.
    pub(super) fn spawn_writer(&self) -> Result<(), StorageError> {
        let Some(this) = self.this.upgrade() else {
            return Err(StorageError::Closed);
        };
        glommio::spawn_local(async move { this.run_writer().await }).detach();
        Ok(())
    }

    async fn run_writer(self: Rc<Self>) {
        loop {
            let drained: Vec<_> = {
                let mut state = self.state.borrow_mut();
                if state.pending.is_empty() {
                    state.go_idle();
                    return;
                }
                // Moves the queue's buffer out, so an idle log keeps none.
                Vec::from(std::mem::take(&mut state.pending))
            };
            self.write_drained(drained).await;
        }
    }

    async fn write_drained(&self, drained: Vec<(PendingAppend, Reply)>) {
        for (append, _) in &drained {
            latency::record(None, Stage::AppendQueue, append.queued_at);
        }
        let now = now_ms();
        let (appends, replies) = self.refuse_non_contiguous(drained);
        let mut results: Vec<Option<AppendResult>> = vec![None; appends.len()];
        // (Appends all refused above change nothing.)
        if !appends.is_empty() {
            self.begin_change();
        }
        let mut failure = None;
        let mut first = 0;
        while first < appends.len() {
            if self.needs_roll(&appends[first..=first], now) {
                if let Err(e) = self.roll(now).await {
                    failure = Some(e);
                    break;
                }
            }
            let mut end = first + 1;
            let mut run_bytes = appends[first].bytes;
            while end < appends.len()
                && run_bytes + appends[end].bytes <= WRITE_BYTES_MAX
                && !self.needs_roll(&appends[first..=end], now)
            {
                run_bytes += appends[end].bytes;
                end += 1;
            }
            match self.write_run(&appends[first..end], now).await {
                Ok(run_results) => {
                    for (slot, result) in results[first..end].iter_mut().zip(run_results) {
                        *slot = Some(result);
                    }
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
            first = end;
        }
        let written_any = results.iter().any(Option::is_some);
        let flush_result = if written_any && self.flush_due(now) {
            self.flush().await
        } else {
            Ok(())
        };
        if flush_result.is_ok() {
            for (append, result) in appends.iter().zip(&results) {
                if result.is_some() {
                    latency::record(None, Stage::AppendDurable, append.queued_at);
                }
            }
        }
        for (reply, result) in replies.into_iter().zip(results) {
            let answer = match (result, &flush_result, &failure) {
                (Some(result), Ok(()), _) => Ok(result),
                (Some(_), Err(e), _) => Err(e.duplicate()),
                (None, _, Some(e)) => Err(e.duplicate()),
                (None, _, None) => Err(StorageError::Closed),
            };
            let _ = reply.send(answer);
        }
    }

    /// Answers (with `NonContiguous`) the replicated appends that would not
    /// start where the log ends once the appends drained before them are
    /// written, and returns the others. Checked here, against the real log
    /// end offset, because appends queue: the end a caller saw may have
    /// moved. Exact: if an earlier write fails, every later append fails too.
    fn refuse_non_contiguous(
        &self,
        drained: Vec<(PendingAppend, Reply)>,
    ) -> (Vec<PendingAppend>, Vec<Reply>) {
        let mut expected = self.state.borrow().log_end_offset;
        let mut appends = Vec::with_capacity(drained.len());
        let mut replies = Vec::with_capacity(drained.len());
        for (append, reply) in drained {
            if let AppendMode::Replicated { base_offset } = append.mode {
                if base_offset < expected {
                    let refused = StorageError::NonContiguous {
                        expected,
                        got: base_offset,
                    };
                    let _ = reply.send(Err(refused));
                    continue;
                }
                // A replicated append's `offsets` spans its gaps too.
                expected = base_offset;
            }
            expected += append.offsets;
            appends.push(append);
            replies.push(reply);
        }
        (appends, replies)
    }

    /// `flush.ms` of this log (u64::MAX: never on time).
    pub fn flush_interval_ms(&self) -> u64 {
        self.state.borrow().config.flush_interval_ms
    }

    /// Unsynced data older than `flush.ms`: the flush scheduler's check, so a
    /// topic's `flush.ms` holds even when no append comes to trigger it.
    pub fn flush_overdue(&self, now: i64) -> bool {
        let state = self.state.borrow();
        let since_flush_ms = u64::try_from(now.saturating_sub(state.last_flush_ms)).unwrap_or(0);
        state.writer.is_some()
            && state.recovery_point < state.log_end_offset
            && since_flush_ms >= state.config.flush_interval_ms
    }

    fn flush_due(&self, now: i64) -> bool {
        let state = self.state.borrow();
        let since_flush_ms = u64::try_from(now.saturating_sub(state.last_flush_ms)).unwrap_or(0);
        state.messages_since_flush >= state.config.flush_interval_messages
            || since_flush_ms >= state.config.flush_interval_ms
    }

    /// Must the active segment roll before `run` is appended?
    fn needs_roll(&self, run: &[PendingAppend], now: i64) -> bool {
        let state = self.state.borrow();
        let Some(active) = state.active() else {
            return false;
        };
        if active.size_bytes == 0 {
            // An oversize batch still goes into an empty segment.
            return false;
        }
        let config = &state.config;
        let bytes: u64 = run.iter().map(|p| p.bytes).sum();
        let batches: usize = run.iter().map(|p| p.batches.len()).sum();
        let offsets: i64 = run.iter().map(|p| p.offsets).sum();
        let segment_bytes_max = config.segment_bytes.min(u64::from(u32::MAX));
        let age_ms = active
            .first_append_ms
            .map(|t| u64::try_from(now.saturating_sub(t)).unwrap_or(0));
        let index_full = active.index.as_ref().is_some_and(|index| {
            index.would_overflow(
                config.segment_index_bytes,
                batches,
                bytes,
                config.index_interval_bytes,
            )
        });
        active.size_bytes + bytes > segment_bytes_max
            || age_ms.is_some_and(|age| age >= config.segment_ms)
            || index_full
            || state.log_end_offset + offsets - 1 - active.base_offset > i64::from(u32::MAX)
    }

    /// Writes one run of appends to the active segment in one aligned write.
    ///
    /// Why hand-written rather than a crate (or glommio's DmaStreamWriter):
    /// the writer must (1) rewrite baseOffset (and the leader epoch) in the
    /// copy while filling the DMA buffer, with no second copy, (2) place
    /// several callers' batches in one write and know each batch's file
    /// position for the index, (3) return only when the bytes are on the
    /// device and readable, with the logical size (not the padded file size)
    /// as the truth, and (4) rewrite the partial last block instead of
    /// leaving padding holes, so the file stays a contiguous run of batches
    /// that Kafka tools can read. A stream writer buffers across calls and
    /// pads at close only, which loses (3).
    async fn write_run(&self, run: &[PendingAppend], now: i64) -> Result<Vec<AppendResult>, StorageError> {
        let (tail, size, log_end_offset, log_start_offset, log_append_time) = {
            let state = self.state.borrow();
            let writer = state.writer.as_ref().ok_or(StorageError::Closed)?;
            let active = state.active().ok_or(StorageError::Closed)?;
            (
                writer.tail.clone(),
                active.size_bytes,
                state.log_end_offset,
                state.log_start_offset,
                state.config.log_append_time,
            )
        };
        let file = self.active_file().await?;
        let tail_start = size - tail.len() as u64;
        assert_eq!(tail_start % BLOCK_BYTES, 0, "tail block must start aligned");
        let payload_bytes: u64 = run.iter().map(|p| p.bytes).sum();
        let total = tail.len() as u64 + payload_bytes;
        let buffer_bytes = align_up(total);
        assert!(
            tail_start + buffer_bytes <= u64::from(u32::MAX) + BLOCK_BYTES,
            "segment exceeds u32 positions"
        );

        let mut buffer = file.alloc_dma_buffer(buffer_bytes as usize);
        let out = buffer.as_bytes_mut();
        out[..tail.len()].copy_from_slice(&tail);
        let mut cursor = tail.len();
        let mut next_offset = log_end_offset;
        // (base offset, position, bytes, max timestamp) per batch for the index.
        let mut placed = Vec::with_capacity(run.iter().map(|p| p.batches.len()).sum());
        let mut results = Vec::with_capacity(run.len());
        for append in run {
            let base_offset = next_offset;
            let (assign, leader_epoch) = match append.mode {
                AppendMode::Leader { leader_epoch } => (true, leader_epoch),
                AppendMode::Replicated { base_offset } => {
                    // write_drained refused every replicated append that
                    // starts below the log end.
                    assert!(base_offset >= next_offset, "replicated append continues the log");
                    next_offset = base_offset;
                    (false, None)
                }
            };
            let base_offset = if assign { base_offset } else { next_offset };
            for bytes in &append.batches {
                let copy = &mut out[cursor..cursor + bytes.len()];
                copy.copy_from_slice(bytes);
                if assign {
                    batch::set_base_offset(copy, next_offset);
                    if let Some(epoch) = leader_epoch {
                        batch::set_partition_leader_epoch(copy, epoch);
                    }
                    if log_append_time {
                        batch::set_log_append_time(copy, now)?;
                    }
                }
                let header = batch::parse_header(copy)?;
                assert_eq!(header.total_bytes(), bytes.len(), "batch length changed");
                if assign {
                    assert_eq!(header.base_offset.get(), next_offset, "offsets are dense");
                } else {
                    // A compaction gap from the leader: never backwards.
                    assert!(header.base_offset.get() >= next_offset, "offsets only increase");
                    next_offset = header.base_offset.get();
                }
                let last_offset = header.last_offset();
                assert!(last_offset >= next_offset, "offsets only increase");
                placed.push((
                    next_offset,
                    tail_start + cursor as u64,
                    bytes.len() as u64,
                    header.max_timestamp.get(),
                ));
                next_offset = last_offset + 1;
                cursor += bytes.len();
            }
            results.push(AppendResult {
                base_offset,
                last_offset: next_offset - 1,
                log_append_time_ms: now,
                log_start_offset,
            });
        }
        assert_eq!(cursor as u64, total, "run length mismatch");
        out[cursor..].fill(0);
        let new_size = tail_start + total;
        let new_tail = out[(align_down(new_size) - tail_start) as usize..cursor].to_vec();

        let reserved = self.preallocate(&file, tail_start + buffer_bytes).await;
        let write_start = Instant::now();
        let written = if reserved && !tail.is_empty() && buffer_bytes > BLOCK_BYTES {
            // The rewritten tail block is data already on disk and the rest
            // is reserved but unwritten: ext4 counts a write as an overwrite
            // (shared inode lock, completed on the ring) only when one
            // extent covers it, so one write over both goes to an io-wq
            // worker. Two writes, the block and the rest, each stay on the
            // ring. Both must land before anything is published.
            let mut head = file.alloc_dma_buffer(BLOCK_BYTES as usize);
            head.as_bytes_mut()
                .copy_from_slice(&buffer.as_bytes()[..BLOCK_BYTES as usize]);
            let mut rest = buffer;
            rest.trim_front(BLOCK_BYTES as usize);
            let (head_written, rest_written) = futures::future::join(
                file.write_at(head, tail_start),
                file.write_at(rest, tail_start + BLOCK_BYTES),
            )
            .await;
            let (head_written, rest_written) = (head_written?, rest_written?);
            if head_written as u64 == BLOCK_BYTES {
                head_written + rest_written
            } else {
                head_written
            }
        } else {
            file.write_at(buffer, tail_start).await?
        };
        latency::record(None, Stage::SegmentWrite, write_start);
        if written as u64 != buffer_bytes {
            // Nothing is published: the next write starts at the same block
            // and overwrites whatever part of this one landed.
            return Err(StorageError::Io(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short write: {written} of {buffer_bytes} bytes"),
            )));
        }

        let mut state = self.state.borrow_mut();
        assert_eq!(state.log_end_offset, log_end_offset, "a single writer appends");
        let records: u64 = run.iter().map(|p| p.records).sum();
        let interval = state.config.index_interval_bytes;
        let active = state.active_mut().ok_or(StorageError::Closed)?;
        assert_eq!(active.size_bytes, size, "a single writer appends");
        active.size_bytes = new_size;
        active.last_modified_ms = now;
        active.first_append_ms.get_or_insert(now);
        let index = active
            .index
            .get_or_insert_with(|| SegmentIndex::new(active.base_offset));
        for (base_offset, position, bytes, max_timestamp) in placed {
            index.on_batch(base_offset, position, bytes, max_timestamp, interval);
        }
        state.log_end_offset = next_offset;
        state.writes_completed += 1;
        state.messages_since_flush = state.messages_since_flush.saturating_add(records);
        if let Some(writer) = state.writer.as_mut() {
            writer.tail = new_tail;
            writer.file_bytes_max = writer.file_bytes_max.max(align_up(new_size));
        }
        Ok(results)
    }

    /// Reserves the active segment's blocks past `write_end` when the
    /// reservation does not cover it (`preallocate`): the file grows by a
    /// step as large as its data so far, at most
    /// `preallocate_step_max_bytes`, and never past the segment size. The
    /// size the file reports grows with it (fallocate without KEEP_SIZE):
    /// a write below i_size is no extending write, which is the point. The
    /// logical size stays the segment's `size_bytes`; recovery and close cut
    /// the zeros after it. A failed fallocate (ENOSPC, EOPNOTSUPP) costs
    /// only speed: the write then extends the file as without it.
    /// True when the reservation covers the write.
    async fn preallocate(&self, file: &DmaFile, write_end: u64) -> bool {
        let target = {
            let state = self.state.borrow();
            let Some(writer) = state.writer.as_ref() else {
                return false;
            };
            if !state.config.preallocate || writer.allocated_bytes == u64::MAX {
                return false;
            }
            if write_end <= writer.allocated_bytes {
                return true;
            }
            let step_max = align_up(state.config.preallocate_step_max_bytes.max(BLOCK_BYTES));
            let segment_end = align_up(state.config.segment_bytes.min(u64::from(u32::MAX)));
            (write_end + write_end.min(step_max))
                .min(segment_end)
                .max(write_end)
        };
        let reserved = match file.pre_allocate(target, false).await {
            Ok(()) => target,
            Err(e) => {
                tracing::debug!(dir = %self.dir.display(), target, "preallocation failed, writes extend the segment: {e}");
                u64::MAX
            }
        };
        if let Some(writer) = self.state.borrow_mut().writer.as_mut() {
            writer.allocated_bytes = reserved;
            if reserved != u64::MAX {
                writer.file_bytes_max = writer.file_bytes_max.max(reserved);
            }
        }
        reserved != u64::MAX
    }

    /// Seals the active segment (trim padding, fdatasync, write indexes) and
    /// starts a new one at the log end offset; moves the recovery point there.
    async fn roll(&self, now: i64) -> Result<(), StorageError> {
        let file = self.active_file().await?;
        let (size, index, new_base) = {
            let mut state = self.state.borrow_mut();
            let new_base = state.log_end_offset;
            let active = state.active_mut().ok_or(StorageError::Closed)?;
            assert!(
                new_base > active.base_offset,
                "a rolled segment holds at least one batch"
            );
            let index = active
                .index
                .get_or_insert_with(|| SegmentIndex::new(active.base_offset));
            index.seal();
            (active.size_bytes, index.clone(), new_base)
        };
        file.truncate(size).await?;
        file.fdatasync().await?;
        drop(file);
        segment::write_indexes(&self.dir, &index).await?;
        let new_file = self
            .cache
            .get(&file_path(&self.dir, new_base, LOG_SUFFIX), FileMode::ReadWrite)
            .await?;
        if new_file.file_size().await? != 0 {
            // Left by an earlier roll that failed after creating it.
            new_file.truncate(0).await?;
        }
        drop(new_file);
        write_offset_file(&self.dir, RECOVERY_POINT_FILE, new_base).await?;
        segment::sync_dir(&self.dir).await?;
        {
            let mut state = self.state.borrow_mut();
            state.dir_unsynced = false;
            if let Some(sealed) = state.active_mut() {
                // Sealed indexes are on disk; reload on demand to keep an idle
                // partition's memory small.
                sealed.index = None;
            }
            state.segments.insert(
                new_base,
                Box::new(Segment {
                    base_offset: new_base,
                    size_bytes: 0,
                    last_modified_ms: now,
                    first_append_ms: None,
                    index: Some(SegmentIndex::new(new_base)),
                    generation: 0,
                }),
            );
            state.recovery_point = new_base;
            state.messages_since_flush = 0;
            state.last_flush_ms = now;
            if let Some(writer) = state.writer.as_mut() {
                writer.tail = Vec::new();
                writer.allocated_bytes = 0;
                writer.file_bytes_max = 0;
            }
        }
        tracing::debug!(dir = %self.dir.display(), new_base, "segment rolled");
        Ok(())
    }

    /// fdatasyncs the active segment now (the flush.ms timer calls this).
    /// A log with nothing written since its last sync (recovery point at the
    /// log end) skips the sync, so the timer does not reopen idle
    /// partitions' files. An evicted file is reopened for the sync: Linux
    /// syncs the file's data whichever descriptor asks.
    pub async fn flush(&self) -> Result<(), StorageError> {
        let (log_end_offset, synced) = {
            let state = self.state.borrow();
            if state.writer.is_none() {
                return Ok(());
            }
            (state.log_end_offset, state.recovery_point >= state.log_end_offset)
        };
        if !synced {
            let file = self.active_file().await?;
            file.fdatasync().await?;
            // A brand-new log's segment file is only durable with its
            // directory entry (its open skipped that sync).
            if self.state.borrow().dir_unsynced {
                segment::sync_dir(&self.dir).await?;
                self.state.borrow_mut().dir_unsynced = false;
            }
        }
        let mut state = self.state.borrow_mut();
        // Capped at the current end: a truncation may have lowered it while
        // the sync ran (what is below the new end was synced all the same).
        state.recovery_point = state.recovery_point.max(log_end_offset).min(state.log_end_offset);
        state.messages_since_flush = 0;
        state.last_flush_ms = now_ms();
        Ok(())
    }

    /// The active segment's file, for the writer (reopened read+write if
    /// the cache evicted it). Only the writer task, roll and close call it.
    pub(super) async fn active_file(&self) -> Result<Rc<DmaFile>, StorageError> {
        let base = self.state.borrow().active_base();
        let path = file_path(&self.dir, base, LOG_SUFFIX);
        self.cache.get(&path, FileMode::ReadWrite).await
    }
}

/// Checks an append's batches (already CRC-validated by the caller) enough
/// to keep the log's invariants, and sums what the writer needs. A
/// replicated append's batches must also follow each other without an
/// overlap (where it starts is the writer's check); its `offsets` is the span
/// from its first offset to its last, gaps included.
fn describe(batches: Vec<Bytes>, mode: AppendMode) -> Result<PendingAppend, StorageError> {
    if batches.is_empty() {
        return Err(BatchError::Empty.into());
    }
    let mut pending = PendingAppend {
        batches: Vec::new(),
        bytes: 0,
        offsets: 0,
        records: 0,
        mode,
        queued_at: Instant::now(),
    };
    let mut next_offset = match mode {
        AppendMode::Replicated { base_offset } => Some(base_offset),
        AppendMode::Leader { .. } => None,
    };
    for bytes in &batches {
        let header = batch::check_shape(bytes)?;
        if let Some(expected) = next_offset {
            let got = header.base_offset.get();
            if got < expected {
                return Err(StorageError::NonContiguous { expected, got });
            }
            // Saturating: the offsets come from another broker, and one
            // beyond any log end is refused by the writer anyway.
            next_offset = Some(got.saturating_add(i64::from(header.last_offset_delta.get()) + 1));
        }
        let last_offset_delta = header.last_offset_delta.get();
        let records_count = header.records_count.get();
        pending.bytes += bytes.len() as u64;
        pending.offsets += i64::from(last_offset_delta) + 1;
        pending.records += records_count as u64;
    }
    if let (AppendMode::Replicated { base_offset }, Some(end)) = (mode, next_offset) {
        pending.offsets = end - base_offset;
    }
    pending.batches = batches;
    Ok(pending)
}
