//! Removing data: retention by time and size, DeleteRecords (advancing the
//! log start offset) and compaction passes with their install. Together
//! because each drops or replaces whole sealed segments and must leave the
//! segment map, the shard's file cache and the log start offset agreeing.

use std::cell::Cell;

use crate::storage::cleaner;
use crate::storage::segment::{self, file_path, LOG_SUFFIX};

use super::{write_offset_file, Log, State, StorageError, LOG_START_OFFSET_FILE};

impl Log {
    /// Deletes whole non-active segments, oldest first: by time when the
    /// segment was last written (broker time; file mtime after a restart)
    /// more than `retention_ms` before `now_ms`, and by size while the log
    /// exceeds `retention_bytes` by at least the oldest segment's size.
    /// Advances the log start offset. Returns how many segments were deleted.
    pub async fn enforce_retention(&self, now_ms: i64) -> Result<u32, StorageError> {
        let removed = {
            let mut state = self.state.borrow_mut();
            if !state.config.cleanup_delete {
                return Ok(0);
            }
            let retention_ms = state.config.retention_ms;
            let retention_bytes = state.config.retention_bytes;
            let active_base = state.active_base();
            let mut total: u64 = state.segments.values().map(|s| s.size_bytes).sum();
            let mut removed = Vec::new();
            while let Some((&base, oldest)) = state.segments.iter().next() {
                if base == active_base {
                    break;
                }
                let by_time =
                    retention_ms >= 0 && now_ms.saturating_sub(oldest.last_modified_ms) > retention_ms;
                let by_size = retention_bytes >= 0
                    && (total as i64).saturating_sub(retention_bytes) >= oldest.size_bytes as i64;
                if !by_time && !by_size {
                    break;
                }
                total -= oldest.size_bytes;
                state.segments.remove(&base);
                removed.push(base);
            }
            self.after_segments_removed(&mut state, &removed);
            removed
        };
        for base in &removed {
            segment::remove_segment_files(&self.dir, *base).await?;
        }
        if !removed.is_empty() {
            tracing::info!(dir = %self.dir.display(), segments = removed.len(), "retention deleted segments");
        }
        Ok(removed.len() as u32)
    }

    fn after_segments_removed(&self, state: &mut State, removed: &[i64]) {
        if removed.is_empty() {
            return;
        }
        let first_base = state
            .segments
            .keys()
            .next()
            .copied()
            .unwrap_or(state.log_end_offset);
        state.log_start_offset = state.log_start_offset.max(first_base);
        for base in removed {
            self.cache.remove(&file_path(&self.dir, *base, LOG_SUFFIX));
        }
    }

    /// Advances the log start offset (DeleteRecords) and deletes the
    /// segments wholly below it. The new value is persisted to
    /// `log-start-offset` before any segment is deleted (if another call is
    /// persisting concurrently, that call writes the latest value).
    pub async fn advance_log_start_offset(&self, offset: i64) -> Result<(), StorageError> {
        {
            let mut state = self.state.borrow_mut();
            if offset > state.log_end_offset {
                return Err(state.out_of_range(offset));
            }
            if offset <= state.log_start_offset {
                return Ok(());
            }
            state.log_start_offset = offset;
        }
        self.persist_log_start_offset().await?;
        let removed = {
            let mut state = self.state.borrow_mut();
            let active_base = state.active_base();
            let mut removed = Vec::new();
            while let Some(&base) = state.segments.keys().next() {
                let next = state.next_base_after(base).unwrap_or(i64::MAX);
                if base == active_base || next > state.log_start_offset {
                    break;
                }
                state.segments.remove(&base);
                removed.push(base);
            }
            self.after_segments_removed(&mut state, &removed);
            removed
        };
        for base in &removed {
            segment::remove_segment_files(&self.dir, *base).await?;
        }
        Ok(())
    }

    pub(super) async fn persist_log_start_offset(&self) -> Result<(), StorageError> {
        if self.log_start_offset_writing.replace(true) {
            return Ok(());
        }
        struct Reset<'a>(&'a Cell<bool>);
        impl Drop for Reset<'_> {
            fn drop(&mut self) {
                self.0.set(false);
            }
        }
        let _reset = Reset(&self.log_start_offset_writing);
        loop {
            let wanted = self.state.borrow().log_start_offset;
            write_offset_file(&self.dir, LOG_START_OFFSET_FILE, wanted).await?;
            if self.state.borrow().log_start_offset == wanted {
                return Ok(());
            }
        }
    }

    /// One compaction pass if the topic is compacted and enough of its
    /// sealed bytes are dirty (`min.cleanable.dirty.ratio`); None if no pass
    /// was due. The pass itself runs on the blocking-thread pool (see
    /// `cleaner.rs`); installing its files is a few renames on the shard.
    pub async fn compact(
        &self,
        now_ms: i64,
        dedupe_buffer_bytes: usize,
        io_max_bytes_per_s: f64,
    ) -> Result<Option<cleaner::CompactionOutput>, StorageError> {
        let Some(input) = self.compaction_input(now_ms, dedupe_buffer_bytes, io_max_bytes_per_s) else {
            return Ok(None);
        };
        let dir = self.dir.clone();
        let pass_input = input.clone();
        let output = glommio::executor()
            .spawn_blocking(move || {
                // A thread of its own, so its lowered priority dies with it
                // (raising a thread's priority back needs privileges an
                // unprivileged broker lacks); the pool thread just waits.
                let pass = std::thread::Builder::new()
                    .name("log-cleaner".into())
                    .spawn(move || {
                        let _low = cleaner::LowPriority::enter();
                        cleaner::compact(&pass_input)
                    })?;
                pass.join()
                    .unwrap_or_else(|_| Err(StorageError::Corrupt("the compaction pass panicked".into())))
            })
            .await;
        let output = match output {
            Ok(output) => output,
            Err(e) => {
                let _ = cleaner::remove_cleaned_files(&dir);
                return Err(e);
            }
        };
        let install_started = std::time::Instant::now();
        for cleaned in &output.cleaned {
            let current = {
                let state = self.state.borrow();
                let base = cleaned.base_offset;
                base != state.active_base()
                    && state
                        .segments
                        .get(&base)
                        .is_some_and(|s| s.size_bytes == cleaned.original_bytes)
            };
            if !current {
                // Deleted (retention, DeleteRecords) while the pass ran.
                continue;
            }
            cleaner::install_files(&self.dir, cleaned.base_offset)?;
            let mut state = self.state.borrow_mut();
            if let Some(segment) = state.segments.get_mut(&cleaned.base_offset) {
                segment.size_bytes = cleaned.size_bytes;
                segment.index = None;
                segment.generation += 1;
            }
            drop(state);
            self.cache
                .remove(&file_path(&self.dir, cleaned.base_offset, LOG_SUFFIX));
        }
        let mut output = output;
        // Time the shard spent blocked in renames and unlinks: it delays the
        // shard's other work (results/compaction-impact.md).
        output.install_blocking_us = install_started.elapsed().as_micros() as u64;
        cleaner::remove_cleaned_files(&self.dir)?;
        segment::sync_dir(&self.dir).await?;
        let mut state = self.state.borrow_mut();
        state.cleaned_up_to_offset = state.cleaned_up_to_offset.max(output.clean_up_to_offset);
        Ok(Some(output))
    }

    fn compaction_input(
        &self,
        now_ms: i64,
        dedupe_buffer_bytes: usize,
        io_max_bytes_per_s: f64,
    ) -> Option<cleaner::CompactionInput> {
        let state = self.state.borrow();
        if !state.config.cleanup_compact || state.writer.is_none() {
            return None;
        }
        let active_base = state.active_base();
        let sealed: Vec<cleaner::SealedSegment> = state
            .segments
            .values()
            .filter(|s| s.base_offset != active_base)
            .map(|s| cleaner::SealedSegment {
                base_offset: s.base_offset,
                size_bytes: s.size_bytes,
                last_modified_ms: s.last_modified_ms,
            })
            .collect();
        let total_bytes: u64 = sealed.iter().map(|s| s.size_bytes).sum();
        let dirty_bytes: u64 = sealed
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                let next_base = sealed.get(i + 1).map_or(active_base, |n| n.base_offset);
                next_base > state.cleaned_up_to_offset
            })
            .map(|(_, s)| s.size_bytes)
            .sum();
        if total_bytes == 0
            || (dirty_bytes as f64) < state.config.min_cleanable_dirty_ratio * total_bytes as f64
        {
            return None;
        }
        Some(cleaner::CompactionInput {
            dir: self.dir.clone(),
            segments: sealed,
            dirty_from_offset: state.cleaned_up_to_offset,
            now_ms,
            delete_retention_ms: state.config.delete_retention_ms,
            dedupe_buffer_bytes,
            io_max_bytes_per_s,
            index_interval_bytes: state.config.index_interval_bytes,
        })
    }
}
