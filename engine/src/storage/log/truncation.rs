//! Truncation: a follower cutting the end of its log so that it agrees with
//! a new leader's (Kafka's `Log.truncateTo` and `truncateFullyAndStartAt`).
//!
//! Apart from the writer because it is the one operation that takes offsets
//! off the end of a log: the active segment moves back (possibly into a
//! sealed segment, which becomes active again), bytes once acknowledged
//! disappear, and reads must never return them again. It runs in the
//! writer's place (`claim_writer`), so no write interleaves with it.
//!
//! Memory changes first, so a read that starts afterwards never asks for a
//! cut byte (and one already running retries: the segment's generation
//! moves). Then the disk, in an order where a crash at any point leaves
//! files that recovery opens as a contiguous log (at worst the old log, the
//! truncation not having returned): segments above the cut are unlinked
//! newest first and the directory synced; the kept segment is cut and
//! fdatasynced; the recovery point is written and the directory synced. A
//! failure after memory changed takes the log offline (appends fail with
//! `Closed`) until it is reopened, where recovery makes memory and disk agree.
//!
//! Back of envelope: the cut segment is read from its index entry at or
//! below the cut up to the cut (~`index.interval.bytes` plus one batch) and
//! CRC-checked; a sealed segment's index is loaded first if it was not. Then
//! one unlink per removed file, one ftruncate, one fdatasync, one small-file
//! write and two directory fsyncs: milliseconds on an SSD, whatever the
//! segment size, and only when a follower's log diverged from its leader's.

use crate::clock::now_ms;
use crate::storage::index::SegmentIndex;
use crate::storage::segment::{self, file_path, INDEX_SUFFIX, LOG_SUFFIX, TIME_INDEX_SUFFIX};

use super::{align_down, write_offset_file, Log, Segment, State, StorageError, RECOVERY_POINT_FILE};

/// How many times `truncate_to` recomputes its cut when retention,
/// DeleteRecords or compaction changed the segment it was cutting while it
/// read it, before giving up.
const CUT_ATTEMPTS_MAX: u32 = 4;
/// Read-ahead while walking batch headers from the index floor to the cut.
const LOCATE_READ_AHEAD_BYTES: usize = 64 << 10;

#[derive(Clone, Copy, Debug)]
enum Truncation {
    To(i64),
    FullyAndStartAt(i64),
}

/// Where `truncate_to` cuts, computed without changing anything.
struct Cut {
    /// The segment holding the cut; it becomes the active segment.
    base_offset: i64,
    /// Its generation and size when the cut was computed: if either has
    /// changed by the time the cut is installed, the cut is stale.
    generation: u64,
    size_bytes: u64,
    /// Bytes of the segment kept: where the first batch whose last offset is
    /// at or above the target starts (the segment's size if none).
    position_bytes: u64,
    /// The offset after the last batch kept (the segment's base if none).
    log_end_offset: i64,
    /// The segment's index, for the kept bytes only.
    index: SegmentIndex,
    /// The kept bytes of the last partial block: the writer's next tail.
    tail: Vec<u8>,
}

/// A cut installed in memory, still to be made on disk.
struct Installed {
    base_offset: i64,
    position_bytes: u64,
    log_end_offset: i64,
    log_start_lowered: bool,
    /// Base offsets of the segments taken out of the log, ascending.
    removed: Vec<i64>,
}

/// The writer's place, held by a truncation: while held, appends queue and
/// no writer task runs. Dropping it gives the place back, starting the
/// writer for whatever queued meanwhile.
struct WriterClaim<'a> {
    log: &'a Log,
}

impl Drop for WriterClaim<'_> {
    fn drop(&mut self) {
        let start_writer = {
            let mut state = self.log.state.borrow_mut();
            if state.pending.is_empty() {
                state.go_idle();
                false
            } else {
                true
            }
        };
        if start_writer {
            // Fails only when the log is being dropped: the queued callers'
            // replies drop with it, and they see `Closed`.
            let _ = self.log.spawn_writer();
        }
    }
}

impl Log {
    /// Kafka's `Log.truncateTo`: removes every batch whose last offset is at
    /// or above `offset`. Afterwards the log end offset is `offset` when a
    /// batch starts there, else the base offset of the batch holding it (the
    /// whole batch goes). A no-op at or above the log end offset; below the
    /// log start offset it is `truncate_fully_and_start_at(offset)`.
    ///
    /// The segment holding the cut becomes the active segment (later ones
    /// are deleted), and the cut is fdatasynced with the directory before
    /// this returns, so a crash afterwards never brings cut batches back.
    /// Waits for in-flight writes first. Callers must not race it with
    /// appends (a follower's fetcher is its log's only appender): appends
    /// still queued when it is called are a caller bug (debug builds
    /// assert), and appends made while it runs are written after it, at the
    /// new end.
    pub async fn truncate_to(&self, offset: i64) -> Result<(), StorageError> {
        self.run_truncation(Truncation::To(offset)).await
    }

    /// Kafka's `Log.truncateFullyAndStartAt`: deletes every segment and
    /// starts an empty active segment at `offset`, which becomes both the
    /// log start and end offset (it may be above the old end: a follower
    /// that fell behind its leader's log start starts over there).
    pub async fn truncate_fully_and_start_at(&self, offset: i64) -> Result<(), StorageError> {
        self.run_truncation(Truncation::FullyAndStartAt(offset)).await
    }

    async fn run_truncation(&self, truncation: Truncation) -> Result<(), StorageError> {
        {
            let state = self.state.borrow();
            if state.closed {
                return Err(StorageError::Closed);
            }
            // The caller broke its promise not to append concurrently. The
            // outcome is still well defined (the queued appends are written,
            // then cut or kept by this truncation), so release builds go on.
            debug_assert!(
                state.pending.is_empty(),
                "truncation while {} appends are queued",
                state.pending.len()
            );
        }
        let Some(this) = self.this.upgrade() else {
            return Err(StorageError::Closed);
        };
        // A task of its own, like the writer: a caller dropping this future
        // must not stop a truncation between its memory and disk changes.
        let task = glommio::spawn_local(async move {
            let claim = this.claim_writer().await?;
            this.begin_change();
            let truncated = match truncation {
                Truncation::To(offset) => this.cut_to(offset).await,
                Truncation::FullyAndStartAt(offset) => this.cut_fully(offset).await,
            };
            drop(claim);
            truncated
        })
        .detach();
        task.await.unwrap_or(Err(StorageError::Closed))
    }

    /// Waits until no writer task runs, then takes its place.
    async fn claim_writer(&self) -> Result<WriterClaim<'_>, StorageError> {
        loop {
            let idle = {
                let mut state = self.state.borrow_mut();
                if state.closed || state.writer.is_none() {
                    return Err(StorageError::Closed);
                }
                if !state.writer_running {
                    state.writer_running = true;
                    return Ok(WriterClaim { log: self });
                }
                let (tx, rx) = futures::channel::oneshot::channel();
                state.idle_waiters.push(tx);
                rx
            };
            let _ = idle.await;
        }
    }

    async fn cut_to(&self, offset: i64) -> Result<(), StorageError> {
        for _ in 0..CUT_ATTEMPTS_MAX {
            let (log_start_offset, log_end_offset) = {
                let state = self.state.borrow();
                (state.log_start_offset, state.log_end_offset)
            };
            if offset >= log_end_offset {
                return Ok(());
            }
            if offset < log_start_offset {
                return self.cut_fully(offset).await;
            }
            let Some(cut) = self.find_cut(offset).await? else {
                continue;
            };
            let Some(installed) = self.install_cut(offset, cut) else {
                continue;
            };
            let persisted = self.persist_cut(&installed).await;
            if persisted.is_ok() {
                tracing::info!(
                    dir = %self.dir.display(),
                    offset,
                    log_end_offset = installed.log_end_offset,
                    segments_removed = installed.removed.len(),
                    "log truncated"
                );
            }
            return self.offline_on_error(persisted);
        }
        Err(StorageError::Io(std::io::Error::new(
            std::io::ErrorKind::ResourceBusy,
            format!(
                "truncation to {offset}: the segment holding it changed {CUT_ATTEMPTS_MAX} times \
                 while the cut was computed (retention, DeleteRecords or compaction); try again"
            ),
        )))
    }

    /// Reads where to cut for `offset` (which lies in `[log start, log end)`).
    /// None when the segment changed meanwhile.
    async fn find_cut(&self, offset: i64) -> Result<Option<Cut>, StorageError> {
        let base = {
            let state = self.state.borrow();
            match state.segments.range(..=offset).next_back() {
                Some((base, _)) => *base,
                None => {
                    return Err(StorageError::Corrupt(format!(
                        "no segment holds offset {offset} inside the log"
                    )))
                }
            }
        };
        self.ensure_index(base).await?;
        let (generation, size_bytes, index, interval) = {
            let state = self.state.borrow();
            let Some(segment) = state.segments.get(&base) else {
                return Ok(None);
            };
            let Some(index) = segment.index.clone() else {
                return Ok(None);
            };
            (
                segment.generation,
                segment.size_bytes,
                index,
                state.config.index_interval_bytes,
            )
        };
        let file = match self.segment_file(base).await {
            Err(e) if e.is_not_found() => return Ok(None),
            other => other?,
        };
        let mut index = index;
        let (floor_bytes, floor_offset) = index.rewind_to(offset);
        let read: Result<_, StorageError> = async {
            let mut window = segment::Window::new(&file, size_bytes);
            let located =
                segment::locate_batch(&mut window, floor_bytes, offset, LOCATE_READ_AHEAD_BYTES).await?;
            let position_bytes = located.map_or(size_bytes, |(position, _)| position);
            // What stays below the cut becomes the end of the active segment,
            // which appends and an unclean recovery build on: CRC-check it.
            let outcome = segment::scan(
                &file,
                position_bytes,
                floor_bytes,
                floor_offset,
                i64::MAX,
                &mut index,
                interval,
            )
            .await?;
            let tail_start = align_down(position_bytes);
            let tail = if position_bytes > tail_start {
                file.read_at(tail_start, (position_bytes - tail_start) as usize)
                    .await?
                    .to_vec()
            } else {
                Vec::new()
            };
            Ok((position_bytes, outcome, tail))
        }
        .await;
        if self.segment_generation(base) != Some(generation) {
            // Compacted or deleted while read: what was read, or the error,
            // may come from the old files.
            return Ok(None);
        }
        let (position_bytes, outcome, tail) = read?;
        if let Some(stop) = outcome.stop {
            return Err(StorageError::Corrupt(format!(
                "segment {base}: invalid batch at position {} below the truncation point \
                 {position_bytes}: {}",
                stop.position, stop.reason
            )));
        }
        assert_eq!(outcome.valid_bytes, position_bytes, "scan reached the cut");
        if tail.len() as u64 != position_bytes - align_down(position_bytes) {
            return Err(StorageError::Corrupt(format!(
                "segment {base}: short read of the block holding the truncation point"
            )));
        }
        Ok(Some(Cut {
            base_offset: base,
            generation,
            size_bytes,
            position_bytes,
            log_end_offset: outcome.next_offset,
            index,
            tail,
        }))
    }

    /// Makes the cut in memory; None when it is stale (the segment changed,
    /// or the log start offset moved above `offset`, since it was computed).
    fn install_cut(&self, offset: i64, cut: Cut) -> Option<Installed> {
        let mut state = self.state.borrow_mut();
        if offset < state.log_start_offset {
            return None;
        }
        let segment = state.segments.get_mut(&cut.base_offset)?;
        if segment.generation != cut.generation || segment.size_bytes != cut.size_bytes {
            return None;
        }
        assert!(
            cut.log_end_offset <= offset && cut.log_end_offset >= cut.base_offset,
            "cut end {} outside [{}, {offset}]",
            cut.log_end_offset,
            cut.base_offset
        );
        segment.size_bytes = cut.position_bytes;
        segment.index = Some(cut.index);
        // Reads of this segment still running retry (see `read_segment`):
        // what they read may be cut.
        segment.generation += 1;
        segment.last_modified_ms = now_ms();
        if cut.position_bytes == 0 {
            // segment.ms counts from the first append into it, as for a new segment.
            segment.first_append_ms = None;
        }
        let removed: Vec<i64> = state
            .segments
            .range(cut.base_offset + 1..)
            .map(|(base, _)| *base)
            .collect();
        for base in &removed {
            state.segments.remove(base);
        }
        let log_start_lowered = state.log_start_offset > cut.log_end_offset;
        state.log_end_offset = cut.log_end_offset;
        state.log_start_offset = state.log_start_offset.min(cut.log_end_offset);
        state.recovery_point = state.recovery_point.min(cut.log_end_offset);
        state.cleaned_up_to_offset = state.cleaned_up_to_offset.min(cut.log_end_offset);
        if let Some(writer) = state.writer.as_mut() {
            writer.tail = cut.tail;
            writer.allocated_bytes = 0;
            writer.file_bytes_max = u64::MAX;
        }
        assert_invariants(&state);
        drop(state);
        for base in &removed {
            // Before the unlink: a cached descriptor would keep serving the
            // old inode, and a later writer must create a new file there.
            self.cache.remove(&file_path(&self.dir, *base, LOG_SUFFIX));
        }
        Some(Installed {
            base_offset: cut.base_offset,
            position_bytes: cut.position_bytes,
            log_end_offset: cut.log_end_offset,
            log_start_lowered,
            removed,
        })
    }

    async fn persist_cut(&self, installed: &Installed) -> Result<(), StorageError> {
        self.remove_segment_files_newest_first(&installed.removed).await?;
        // The kept segment is active again, and an active segment's index
        // lives in memory until a roll or close writes it: files left from
        // its sealed days name cut batches, and a clean open would trust them.
        for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
            segment::remove_if_exists(&file_path(&self.dir, installed.base_offset, suffix)).await?;
        }
        // Unlinks durable before the cut: a crash in between leaves a prefix
        // of the old log, never a cut segment followed by one meant to go.
        segment::sync_dir(&self.dir).await?;
        let file = self.active_file().await?;
        file.truncate(installed.position_bytes).await?;
        file.fdatasync().await?;
        drop(file);
        self.mark_synced(installed.log_end_offset, installed.log_start_lowered)
            .await
    }

    /// `truncate_fully_and_start_at`, in the writer's place.
    async fn cut_fully(&self, offset: i64) -> Result<(), StorageError> {
        if offset < 0 {
            return Err(self.state.borrow().out_of_range(offset));
        }
        let removed: Vec<i64> = {
            let mut state = self.state.borrow_mut();
            let removed = state.segments.keys().copied().collect();
            // A segment at the same base: reads of it still running retry.
            let generation = state.segments.get(&offset).map_or(0, |s| s.generation + 1);
            state.segments.clear();
            state.segments.insert(
                offset,
                Box::new(Segment {
                    base_offset: offset,
                    size_bytes: 0,
                    last_modified_ms: now_ms(),
                    first_append_ms: None,
                    index: Some(SegmentIndex::new(offset)),
                    generation,
                }),
            );
            state.log_start_offset = offset;
            state.log_end_offset = offset;
            state.recovery_point = offset;
            state.cleaned_up_to_offset = offset;
            if let Some(writer) = state.writer.as_mut() {
                writer.tail = Vec::new();
                writer.allocated_bytes = 0;
                writer.file_bytes_max = u64::MAX;
            }
            assert_invariants(&state);
            removed
        };
        for base in &removed {
            self.cache.remove(&file_path(&self.dir, *base, LOG_SUFFIX));
        }
        let persisted = async {
            self.remove_segment_files_newest_first(&removed).await?;
            // Old segments gone for good before the new one appears, so a
            // crash never leaves the new empty segment below old data.
            segment::sync_dir(&self.dir).await?;
            // Creates the new segment's empty file.
            drop(self.active_file().await?);
            self.mark_synced(offset, true).await
        }
        .await;
        if persisted.is_ok() {
            tracing::info!(
                dir = %self.dir.display(),
                offset,
                segments_removed = removed.len(),
                "log truncated fully"
            );
        }
        self.offline_on_error(persisted)
    }

    /// Unlinks the files of segments already out of the log and the cache,
    /// newest first: a crash part way leaves a contiguous prefix.
    async fn remove_segment_files_newest_first(&self, bases: &[i64]) -> Result<(), StorageError> {
        for base in bases.iter().rev() {
            segment::remove_segment_files(&self.dir, *base).await?;
        }
        Ok(())
    }

    /// With the cut on disk, everything below the new end is synced (sealed
    /// segments were at their roll, the kept one just now), so the recovery
    /// point moves to the end, durably, with the lowered log start offset.
    async fn mark_synced(&self, log_end_offset: i64, log_start_changed: bool) -> Result<(), StorageError> {
        write_offset_file(&self.dir, RECOVERY_POINT_FILE, log_end_offset).await?;
        if log_start_changed {
            self.persist_log_start_offset().await?;
        }
        segment::sync_dir(&self.dir).await?;
        let mut state = self.state.borrow_mut();
        assert_eq!(
            state.log_end_offset, log_end_offset,
            "nothing appends while truncation holds the writer's place"
        );
        state.recovery_point = log_end_offset;
        state.messages_since_flush = 0;
        state.last_flush_ms = now_ms();
        Ok(())
    }

    /// Memory already says truncated; if the disk does not, the log must not
    /// take appends or claim a clean close until recovery reconciles them.
    fn offline_on_error(&self, persisted: Result<(), StorageError>) -> Result<(), StorageError> {
        if let Err(e) = &persisted {
            tracing::error!(
                dir = %self.dir.display(),
                error = %e,
                "truncation failed after changing the log in memory: the log is offline until reopened"
            );
            {
                let mut state = self.state.borrow_mut();
                state.closed = true;
                state.writer = None;
            }
            self.cache.forget(&self.dir);
        }
        persisted
    }
}

fn assert_invariants(state: &State) {
    let Some(active) = state.active() else {
        panic!("a log always has its active segment");
    };
    assert!(
        state.log_start_offset <= state.log_end_offset,
        "log start {} above log end {}",
        state.log_start_offset,
        state.log_end_offset
    );
    assert!(
        active.base_offset <= state.log_end_offset,
        "active segment {} above log end {}",
        active.base_offset,
        state.log_end_offset
    );
    assert!(
        state.recovery_point <= state.log_end_offset,
        "recovery point {} above log end {}",
        state.recovery_point,
        state.log_end_offset
    );
    if let Some(writer) = &state.writer {
        assert_eq!(
            writer.tail.len() as u64,
            active.size_bytes - align_down(active.size_bytes),
            "the writer's tail is the active segment's partial block"
        );
    }
}
