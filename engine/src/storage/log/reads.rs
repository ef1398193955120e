//! Read paths: fetches (copying, or zero-copy file slices), the ListOffsets
//! lookups by timestamp, and the lazy index loads and file handles they need.
//! Apart from the writer because reads never change the log's data, yet must
//! cope with the writer, retention, close and compaction changing it between
//! their awaits (hence the generation checks and the stale-file check).

use std::os::fd::AsRawFd;
use std::rc::Rc;

use bytes::Bytes;
use glommio::io::DmaFile;

use crate::storage::file_cache::FileMode;
use crate::storage::index::{IndexBounds, SegmentIndex};
use crate::storage::records::{FileSlice, Records};
use crate::storage::segment::{self, file_path, open_existing, read_batches, LOG_SUFFIX};

use super::{align_down, Log, StorageError, BLOCK_BYTES};

/// The bytes of a read made with `zero_copy = false`, which never returns a
/// file slice.
fn copied(records: Records) -> Bytes {
    match records {
        Records::Memory(bytes) => bytes,
        Records::File(_) => unreachable!("a copying read returns memory"),
    }
}

impl Log {
    /// Whole batches beginning with the batch that contains `offset`, up to
    /// `max_bytes` in total but always at least that first batch. Stops at the
    /// end of the segment holding `offset` (like Kafka): a consumer's next
    /// fetch continues in the next segment. `offset == LEO` gives empty bytes.
    /// Always a copying O_DIRECT read; fetches use `read_records`.
    pub async fn read(&self, offset: i64, max_bytes: usize) -> Result<Bytes, StorageError> {
        Ok(copied(self.read_records(offset, max_bytes, false).await?))
    }

    /// As `read`, but with `zero_copy` the answer is a `FileSlice` that the
    /// connection sends with sendfile(2) (see `records.rs`), whenever the
    /// range lies in blocks the writer never rewrites. Only batch headers are
    /// read here (async O_DIRECT, a few KiB), so the shard never waits on the
    /// page cache: the send runs off the shard.
    pub async fn read_records(
        &self,
        offset: i64,
        max_bytes: usize,
        zero_copy: bool,
    ) -> Result<Records, StorageError> {
        let mut base = {
            let state = self.state.borrow();
            if offset == state.log_end_offset && offset >= state.log_start_offset {
                return Ok(Records::default());
            }
            if offset < state.log_start_offset || offset > state.log_end_offset {
                return Err(state.out_of_range(offset));
            }
            match state.segments.range(..=offset).next_back() {
                Some((base, _)) => *base,
                None => return Err(state.out_of_range(offset)),
            }
        };
        loop {
            let found = self.read_segment(base, offset, max_bytes, zero_copy).await;
            let found = match found {
                Err(e) if e.is_not_found() => return Err(self.state.borrow().out_of_range(offset)),
                other => other?,
            };
            if let Some(records) = found {
                return Ok(records);
            }
            match self.state.borrow().next_base_after(base) {
                Some(next) => base = next,
                None => return Ok(Records::default()),
            }
        }
    }

    async fn read_segment(
        &self,
        base: i64,
        offset: i64,
        max_bytes: usize,
        zero_copy: bool,
    ) -> Result<Option<Records>, StorageError> {
        loop {
            self.ensure_index(base).await?;
            let (size, position, stable_end, generation) = {
                let state = self.state.borrow();
                let Some(segment) = state.segments.get(&base) else {
                    return Err(state.out_of_range(offset));
                };
                let position = segment
                    .index
                    .as_ref()
                    .map_or(0, |i| i.position_for_offset(offset));
                // The active segment's last, partial block is rewritten by every
                // group commit; a page-cache copy of it could go stale, so only
                // whole blocks below it are ever read through the page cache.
                let stable_end = if base == state.active_base() && state.writer.is_some() {
                    align_down(segment.size_bytes)
                } else {
                    segment.size_bytes
                };
                (segment.size_bytes, position, stable_end, segment.generation)
            };
            let file = self.segment_file(base).await?;
            if self.segment_generation(base) != Some(generation) {
                // Compaction replaced the segment while its file was opened:
                // the position belongs to the old file. Bounded: a pass
                // replaces a segment once.
                continue;
            }
            let found: Result<Option<Records>, StorageError> = async {
                if zero_copy {
                    let sliced = self
                        .locate_slice(
                            base, generation, &file, size, stable_end, position, offset, max_bytes,
                        )
                        .await?;
                    if sliced.is_some() {
                        return Ok(sliced);
                    }
                }
                Ok(read_batches(&file, size, position, offset, max_bytes)
                    .await?
                    .map(Records::Memory))
            }
            .await;
            if self.segment_generation(base) != Some(generation) {
                // Truncated (or compacted, or deleted) while being read: the
                // answer, or the error, may come from cut bytes. Bounded:
                // each retry follows a change of the segment's files.
                continue;
            }
            return found;
        }
    }

    pub(super) fn segment_generation(&self, base: i64) -> Option<u64> {
        self.state.borrow().segments.get(&base).map(|s| s.generation)
    }

    /// The zero-copy range for a read, or None when it must be copied instead
    /// (no batch at `offset` in this segment, or the range reaches the active
    /// segment's partial block). Walks batch headers only to find the start;
    /// the end is cut at an indexed batch start, so the range is whole
    /// batches, within ~index.interval.bytes plus one batch of `max_bytes`.
    #[allow(clippy::too_many_arguments)]
    async fn locate_slice(
        &self,
        base: i64,
        generation: u64,
        file: &DmaFile,
        size: u64,
        stable_end: u64,
        floor: u64,
        offset: i64,
        max_bytes: usize,
    ) -> Result<Option<Records>, StorageError> {
        let mut window = segment::Window::new(file, size);
        let Some((start, first_bytes)) =
            segment::locate_batch(&mut window, floor, offset, BLOCK_BYTES as usize).await?
        else {
            return Ok(None);
        };
        let want_end = start + first_bytes.max(max_bytes) as u64;
        let end = if want_end >= size {
            size
        } else {
            let state = self.state.borrow();
            let indexed = state
                .segments
                .get(&base)
                .filter(|s| s.generation == generation)
                .and_then(|s| s.index.as_ref())
                .and_then(|i| {
                    let at_most = u32::try_from(want_end).unwrap_or(u32::MAX);
                    i.offsets.batch_start_within(start as u32, at_most)
                })
                .map(u64::from);
            indexed
                .unwrap_or(start + first_bytes as u64)
                .max(start + first_bytes as u64)
        };
        if end > stable_end {
            return Ok(None);
        }
        assert!(
            start < end && end <= size,
            "zero-copy range {start}..{end} outside 0..{size}"
        );
        // Out of slice fds (see `records`): the caller copies instead.
        let Some(permit) = self.cache.slice_permit() else {
            return Ok(None);
        };
        let slice = FileSlice::reopen(file.as_raw_fd(), start, (end - start) as usize, Some(permit))?;
        Ok(Some(Records::File(slice)))
    }

    /// The first batch (in offset order, at or after the log start offset)
    /// whose max_timestamp >= `timestamp`, whole; None if none.
    pub async fn find_batch_by_timestamp(&self, timestamp: i64) -> Result<Option<Bytes>, StorageError> {
        let bases: Vec<i64> = self.state.borrow().segments.keys().copied().collect();
        for base in bases {
            match self.ensure_index(base).await {
                Err(e) if e.is_not_found() => continue,
                other => other?,
            }
            let (size, position, min_offset) = {
                let state = self.state.borrow();
                let Some(segment) = state.segments.get(&base) else {
                    continue;
                };
                let max = segment.index.as_ref().and_then(SegmentIndex::max_timestamp);
                if max.is_some_and(|(t, _)| t < timestamp) || segment.size_bytes == 0 {
                    continue;
                }
                let position = segment
                    .index
                    .as_ref()
                    .map_or(0, |i| i.position_for_timestamp(timestamp));
                (segment.size_bytes, position, state.log_start_offset)
            };
            let file = match self.segment_file(base).await {
                Err(e) if e.is_not_found() => continue,
                other => other?,
            };
            if let Some(found) =
                segment::find_by_timestamp(&file, size, position, timestamp, min_offset).await?
            {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// The first batch holding the largest max_timestamp in the log, whole;
    /// None if the log is empty.
    pub async fn max_timestamp_batch(&self) -> Result<Option<Bytes>, StorageError> {
        let bases: Vec<i64> = self.state.borrow().segments.keys().copied().collect();
        let mut best: Option<(i64, i64, i64)> = None;
        for base in bases {
            match self.ensure_index(base).await {
                Err(e) if e.is_not_found() => continue,
                other => other?,
            }
            let state = self.state.borrow();
            let max = state
                .segments
                .get(&base)
                .and_then(|s| s.index.as_ref())
                .and_then(SegmentIndex::max_timestamp);
            if let Some((timestamp, offset)) = max {
                if best.is_none_or(|(t, _, _)| timestamp > t) {
                    best = Some((timestamp, offset, base));
                }
            }
        }
        let Some((_, offset, base)) = best else {
            return Ok(None);
        };
        Ok(self.read_segment(base, offset, 0, false).await?.map(copied))
    }

    /// Loads (validating, or rebuilding and warning) a sealed segment's
    /// indexes on first use. A segment deleted meanwhile is left alone.
    pub(super) async fn ensure_index(&self, base: i64) -> Result<(), StorageError> {
        let (size, next_offset, interval, generation) = {
            let state = self.state.borrow();
            let Some(segment) = state.segments.get(&base) else {
                return Ok(());
            };
            if segment.index.is_some() {
                return Ok(());
            }
            (
                segment.size_bytes,
                state.next_base_after(base).unwrap_or(i64::MAX),
                state.config.index_interval_bytes,
                segment.generation,
            )
        };
        let file = self.segment_file(base).await?;
        let bounds = IndexBounds {
            base_offset: base,
            next_offset,
            log_bytes: size,
        };
        let index = match segment::load_indexes(&self.dir, &file, bounds).await? {
            Ok(index) => index,
            Err(reason) => {
                tracing::warn!(dir = %self.dir.display(), base, %reason, "rebuilding segment index");
                let mut index = SegmentIndex::new(base);
                let outcome = segment::scan(&file, size, 0, base, next_offset, &mut index, interval).await?;
                if let Some(stop) = &outcome.stop {
                    tracing::error!(
                        dir = %self.dir.display(),
                        base,
                        position = stop.position,
                        reason = %stop.reason,
                        "invalid batch inside a sealed segment; indexed up to it"
                    );
                }
                index.seal();
                if let Err(e) = segment::write_indexes(&self.dir, &index).await {
                    tracing::warn!(dir = %self.dir.display(), base, error = %e, "could not write rebuilt index");
                }
                let mut state = self.state.borrow_mut();
                state.report.indexes_rebuilt += 1;
                state.report.segments_scanned += 1;
                state.report.batches_scanned += outcome.batches;
                drop(state);
                index
            }
        };
        let mut state = self.state.borrow_mut();
        if let Some(segment) = state.segments.get_mut(&base) {
            // Loaded from an older generation's files: drop it, the next
            // read loads the new ones.
            if segment.index.is_none() && segment.generation == generation {
                segment.index = Some(index);
            }
        }
        Ok(())
    }

    /// A read handle on a segment's `.log`, from the shard's cache (the
    /// active segment in the writer's read+write mode, so reads and writes
    /// share one file). A file deleted by retention surfaces as
    /// `Io(NotFound)`. Once the log is closed, reads open a file of their
    /// own, closed when dropped, so a closed log leaves nothing cached.
    pub(super) async fn segment_file(&self, base: i64) -> Result<Rc<DmaFile>, StorageError> {
        let path = file_path(&self.dir, base, LOG_SUFFIX);
        let (closed, active) = {
            let state = self.state.borrow();
            (state.writer.is_none(), base == state.active_base())
        };
        if closed {
            return Ok(Rc::new(open_existing(&path).await?));
        }
        let mode = if active {
            FileMode::ReadWrite
        } else {
            FileMode::Read
        };
        let file = self.cache.get(&path, mode).await?;
        // No await since `get` returned: a close or retention that ran while
        // it was opening cannot slip in between this check and the read.
        let stale = {
            let state = self.state.borrow();
            state.writer.is_none() || !state.segments.contains_key(&base)
        };
        if stale {
            self.cache.remove(&path);
        }
        Ok(file)
    }
}
