//! One partition's log: segments, the O_DIRECT group-commit writer, reads,
//! retention and recovery. See `README.md` beside this file.
//!
//! Back of envelope (PERFORMANCE.md machine, 2 cores): one write per group
//! commit, each rewriting at most one partial 4 KiB block already written, so
//! write amplification is <= 4 KiB per group commit (< 7% at 64 KiB batches,
//! ~0 at 1 MiB). Memory per partition: one < 4 KiB tail block, the active
//! segment's in-memory index (8 + 12 bytes per 4 KiB of log: <= 5 MiB for a
//! full 1 GiB segment), and sealed segments' indexes only once read. Files
//! open per partition: none of its own; every `.log` it writes or reads comes
//! from the shard's `FileCache` (an LRU of `log.fd.cache.size` files), so an
//! idle partition holds no file descriptor.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use futures::channel::oneshot;
use glommio::io::DmaFile;

use crate::clock::now_ms;

use super::batch::{self, BatchError};
use super::cleaner;
use super::file_cache::{FileCache, FileMode};
use super::index::{IndexBounds, SegmentIndex};
use super::records::{FileSlice, Records};
use super::segment::{
    self, file_name, file_path, is_not_found, open_existing, open_for_read, read_batches, LOG_SUFFIX,
};

/// O_DIRECT block size the writer aligns to. Every write starts at a multiple
/// of it and is a multiple of it long (the device's logical block size, which
/// glommio reports as `DmaFile::alignment`, must divide it).
pub const BLOCK_BYTES: u64 = 4096;
/// Upper bound of one group-commit write (callers beyond it go in the next
/// write; a single caller larger than it is still written in one piece).
pub const WRITE_BYTES_MAX: u64 = 8 << 20;
/// Text file: the decimal offset below which everything is fdatasynced.
pub const RECOVERY_POINT_FILE: &str = "recovery-point";
/// Text file: the decimal log start offset set by DeleteRecords.
pub const LOG_START_OFFSET_FILE: &str = "log-start-offset";
/// Empty marker written by a clean close, removed by open.
pub const CLEAN_SHUTDOWN_FILE: &str = "clean-shutdown";

/// Per-log configuration, Kafka's names and defaults.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// log.segment.bytes (positions are u32, so values above 4 GiB act as 4 GiB).
    pub segment_bytes: u64,
    /// log.roll.ms, measured from the segment's first append in this process.
    pub segment_ms: u64,
    /// log.retention.ms; -1 = unlimited.
    pub retention_ms: i64,
    /// log.retention.bytes; -1 = unlimited.
    pub retention_bytes: i64,
    /// log.index.interval.bytes.
    pub index_interval_bytes: u32,
    /// log.index.size.max.bytes: roll when an index would exceed it.
    pub segment_index_bytes: u32,
    /// log.flush.interval.messages (u64::MAX = never fsync on count).
    pub flush_interval_messages: u64,
    /// log.flush.interval.ms (u64::MAX = never fsync on time).
    pub flush_interval_ms: u64,
    /// message.timestamp.type=LogAppendTime: the writer stamps each batch
    /// with the append time (and recomputes its CRC).
    pub log_append_time: bool,
    /// cleanup.policy contains `delete`: retention by time and size applies.
    pub cleanup_delete: bool,
    /// cleanup.policy contains `compact`: the cleaner compacts sealed segments.
    pub cleanup_compact: bool,
    /// delete.retention.ms: how long compaction keeps tombstones.
    pub delete_retention_ms: i64,
    /// min.cleanable.dirty.ratio: compact once this share of the sealed
    /// bytes has not been compacted yet.
    pub min_cleanable_dirty_ratio: f64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 60 * 60 * 1000,
            retention_ms: 7 * 24 * 60 * 60 * 1000,
            retention_bytes: -1,
            index_interval_bytes: 4096,
            segment_index_bytes: 10 << 20,
            flush_interval_messages: u64::MAX,
            flush_interval_ms: u64::MAX,
            log_append_time: false,
            cleanup_delete: true,
            cleanup_compact: false,
            delete_retention_ms: 86_400_000,
            min_cleanable_dirty_ratio: 0.5,
        }
    }
}

/// How `Log::open` treats the files it finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryMode {
    /// After a clean close: trust indexes, probe only the last segment's tail.
    Clean,
    /// After a crash: CRC-check everything from the recovery point on.
    Unclean,
}

/// What `Log::open` (and later lazy index loads) had to do.
#[derive(Debug, Default, Clone)]
pub struct RecoveryReport {
    /// Segments scanned from their start (unclean recovery, index rebuilds).
    pub segments_scanned: u32,
    /// Batches read and checked, including the clean-open probe of the last
    /// segment's tail (the batches after its last index entry).
    pub batches_scanned: u64,
    /// Bytes cut off torn or invalid tails (O_DIRECT zero padding included).
    pub bytes_truncated: u64,
    /// Indexes rebuilt from the log because they were missing or invalid.
    pub indexes_rebuilt: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("glommio I/O error: {0}")]
    Glommio(String),
    #[error("corrupt log: {0}")]
    Corrupt(String),
    #[error("offset {requested} out of range [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        requested: i64,
        log_start_offset: i64,
        log_end_offset: i64,
    },
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] BatchError),
    #[error("log is closed")]
    Closed,
}

impl StorageError {
    /// A copy for each caller of a failed group commit.
    fn duplicate(&self) -> StorageError {
        match self {
            StorageError::Io(e) => StorageError::Io(std::io::Error::new(e.kind(), e.to_string())),
            StorageError::Glommio(s) => StorageError::Glommio(s.clone()),
            StorageError::Corrupt(s) => StorageError::Corrupt(s.clone()),
            StorageError::OffsetOutOfRange {
                requested,
                log_start_offset,
                log_end_offset,
            } => StorageError::OffsetOutOfRange {
                requested: *requested,
                log_start_offset: *log_start_offset,
                log_end_offset: *log_end_offset,
            },
            StorageError::InvalidBatch(e) => StorageError::InvalidBatch(e.clone()),
            StorageError::Closed => StorageError::Closed,
        }
    }

    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, StorageError::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    pub base_offset: i64,
    pub last_offset: i64,
    /// Broker wall-clock time of the write.
    pub log_append_time_ms: i64,
    pub log_start_offset: i64,
}

/// Boxed values: a B-tree leaf has 11 slots, so a one-segment log (the usual
/// idle partition) pays 11 x 16 bytes instead of 11 x 136.
type Segments = BTreeMap<i64, Box<Segment>>;

struct Segment {
    base_offset: i64,
    /// Logical size: bytes of whole batches (the file may be longer by
    /// O_DIRECT zero padding while the segment is active).
    size_bytes: u64,
    /// Broker time of the last write (file mtime after a restart).
    last_modified_ms: i64,
    /// Broker time of the first append in this process (segment.ms).
    first_append_ms: Option<i64>,
    /// Always loaded for the active segment; loaded lazily for sealed ones.
    index: Option<SegmentIndex>,
    /// Bumped when compaction replaces the files: positions taken from an
    /// older generation's index are not valid in the new file.
    generation: u64,
}

/// The active segment's write side. Its file comes from the shard's
/// `FileCache` at each write (reopened after an eviction); the partial tail
/// block is kept here, so a reopen reads nothing back.
struct Writer {
    /// Bytes of the last, partial block: `[align_down(size), size)`.
    tail: Vec<u8>,
}

struct PendingAppend {
    batches: Vec<Bytes>,
    bytes: u64,
    offsets: i64,
    records: u64,
}

struct State {
    config: LogConfig,
    /// By base offset; the last one is the active segment.
    segments: Segments,
    /// None once closed.
    writer: Option<Writer>,
    log_start_offset: i64,
    log_end_offset: i64,
    recovery_point: i64,
    report: RecoveryReport,
    pending: VecDeque<(PendingAppend, oneshot::Sender<Result<AppendResult, StorageError>>)>,
    writer_running: bool,
    idle_waiters: Vec<oneshot::Sender<()>>,
    closed: bool,
    messages_since_flush: u64,
    last_flush_ms: i64,
    /// Group-commit writes completed (each may carry many appends).
    writes_completed: u64,
    /// Offsets below this were compacted by an earlier pass (in memory: the
    /// first pass after a restart compacts everything once more).
    cleaned_up_to_offset: i64,
}

impl State {
    fn active_base(&self) -> i64 {
        // Invariant: a log always has at least its active segment.
        self.segments.keys().next_back().copied().unwrap_or(0)
    }

    fn active(&self) -> Option<&Segment> {
        self.segments.values().next_back().map(|s| &**s)
    }

    fn active_mut(&mut self) -> Option<&mut Segment> {
        self.segments.values_mut().next_back().map(|s| &mut **s)
    }

    fn next_base_after(&self, base: i64) -> Option<i64> {
        self.segments.range(base + 1..).next().map(|(b, _)| *b)
    }

    fn out_of_range(&self, requested: i64) -> StorageError {
        StorageError::OffsetOutOfRange {
            requested,
            log_start_offset: self.log_start_offset,
            log_end_offset: self.log_end_offset,
        }
    }
}

/// One partition's log.
///
/// Shard-local: it exists only on the shard that owns the partition and is
/// touched only by that shard's executor (`!Send`, used through `Rc<Log>`).
/// Called by the partition layer. All state is in one `RefCell`, borrowed
/// briefly and never across an `.await`.
pub struct Log {
    dir: PathBuf,
    this: Weak<Log>,
    /// The shard's open segment files; the log holds none of its own.
    cache: Rc<FileCache>,
    state: RefCell<State>,
    log_start_offset_writing: Cell<bool>,
}

fn mtime_ms(metadata: &std::fs::Metadata) -> i64 {
    metadata
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The bytes of a read made with `zero_copy = false`, which never returns a
/// file slice.
fn copied(records: Records) -> Bytes {
    match records {
        Records::Memory(bytes) => bytes,
        Records::File(_) => unreachable!("a copying read returns memory"),
    }
}

fn align_down(value: u64) -> u64 {
    value / BLOCK_BYTES * BLOCK_BYTES
}

fn align_up(value: u64) -> u64 {
    value.div_ceil(BLOCK_BYTES) * BLOCK_BYTES
}

async fn read_offset_file(dir: &Path, name: &str) -> Result<Option<i64>, StorageError> {
    let Some(bytes) = segment::read_small_file(&dir.join(name)).await? else {
        return Ok(None);
    };
    let parsed = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok());
    if parsed.is_none() {
        tracing::warn!(dir = %dir.display(), file = name, "ignoring unreadable offset file");
    }
    Ok(parsed)
}

async fn write_offset_file(dir: &Path, name: &str, offset: i64) -> Result<(), StorageError> {
    segment::write_file_atomic(dir, name, format!("{offset}\n").into_bytes()).await
}

/// Clean if the last close left its marker (or there is no log yet).
pub fn detect_recovery_mode(dir: &Path) -> RecoveryMode {
    if dir.join(CLEAN_SHUTDOWN_FILE).exists() {
        return RecoveryMode::Clean;
    }
    let has_segments = std::fs::read_dir(dir)
        .map(|entries| {
            entries.filter_map(Result::ok).any(|e| {
                e.file_name()
                    .to_str()
                    .and_then(segment::parse_log_file_name)
                    .is_some()
            })
        })
        .unwrap_or(false);
    if has_segments {
        RecoveryMode::Unclean
    } else {
        RecoveryMode::Clean
    }
}

/// Result of recovering the segments found at open.
struct Recovered {
    report: RecoveryReport,
    log_end_offset: i64,
    files_changed: bool,
}

impl Log {
    /// Opens (creating `dir` if missing) the log in `dir`.
    ///
    /// Clean: indexes are trusted and loaded lazily; only the last segment is
    /// read, from its last index entry to its end, to find the log end offset.
    /// Unclean: every segment from the one holding the recovery point on is
    /// scanned and CRC-checked, its indexes rebuilt, and the log truncated at
    /// the first torn or invalid batch (zero padding included).
    ///
    /// Segment files come from `cache` (the shard's), and the log keeps none
    /// open of its own: once this returns, its only open file is the active
    /// segment's, in the cache, evictable like any other.
    pub async fn open(
        dir: &Path,
        config: LogConfig,
        mode: RecoveryMode,
        cache: Rc<FileCache>,
    ) -> Result<Rc<Log>, StorageError> {
        // Files cached for this directory belong to an earlier Log dropped
        // without close (or to a failed open): they may be stale.
        cache.forget(dir);
        let opened = Self::open_in(dir, config, mode, &cache).await;
        if opened.is_err() {
            cache.forget(dir);
        }
        opened
    }

    async fn open_in(
        dir: &Path,
        config: LogConfig,
        mode: RecoveryMode,
        cache: &Rc<FileCache>,
    ) -> Result<Rc<Log>, StorageError> {
        // Startup only: std::fs metadata calls are brief and bounded by the
        // partition's segment count.
        std::fs::create_dir_all(dir)?;
        segment::prime_iopoll_probe(dir).await?;
        // A compaction pass cut short leaves `.cleaned` files: the originals
        // are still whole, so the leftovers go.
        cleaner::remove_cleaned_files(dir)?;
        let mut files_changed = false;
        let mut bases = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") {
                segment::remove_if_exists(&entry.path()).await?;
            } else if let Some(base) = segment::parse_log_file_name(name) {
                bases.push(base);
            }
        }
        bases.sort_unstable();
        let recovery_point = read_offset_file(dir, RECOVERY_POINT_FILE).await?;
        let stored_log_start_offset = read_offset_file(dir, LOG_START_OFFSET_FILE).await?;
        let marker = dir.join(CLEAN_SHUTDOWN_FILE);
        // Only the directory changes: it is synced below, and the segments'
        // data was synced by the close that wrote the marker.
        let marker_removed = marker.exists();
        if marker_removed {
            segment::remove_if_exists(&marker).await?;
        }

        let mut segments = Segments::new();
        for base in bases {
            let metadata = std::fs::metadata(file_path(dir, base, LOG_SUFFIX))?;
            segments.insert(
                base,
                Box::new(Segment {
                    base_offset: base,
                    size_bytes: metadata.len(),
                    last_modified_ms: mtime_ms(&metadata),
                    first_append_ms: None,
                    index: None,
                    generation: 0,
                }),
            );
        }
        if segments.is_empty() {
            segments.insert(
                0,
                Box::new(Segment {
                    base_offset: 0,
                    size_bytes: 0,
                    last_modified_ms: now_ms(),
                    first_append_ms: None,
                    index: Some(SegmentIndex::new(0)),
                    generation: 0,
                }),
            );
            files_changed = true;
        }

        let recovered = match mode {
            RecoveryMode::Clean => recover_clean(dir, &mut segments, &config).await?,
            RecoveryMode::Unclean => {
                recover_unclean(dir, &mut segments, recovery_point.unwrap_or(i64::MIN), &config).await?
            }
        };
        files_changed |= recovered.files_changed;
        let log_end_offset = recovered.log_end_offset;

        // The last segment becomes the active one.
        let (active_base, active_size) = match segments.values().next_back() {
            Some(s) => (s.base_offset, s.size_bytes),
            None => return Err(StorageError::Corrupt("no active segment".into())),
        };
        let file = cache
            .get(&file_path(dir, active_base, LOG_SUFFIX), FileMode::ReadWrite)
            .await?;
        if !BLOCK_BYTES.is_multiple_of(file.alignment()) {
            return Err(StorageError::Corrupt(format!(
                "device alignment {} does not divide the {BLOCK_BYTES}-byte block",
                file.alignment()
            )));
        }
        if file.file_size().await? != active_size {
            // Cuts O_DIRECT padding or a torn tail.
            file.truncate(active_size).await?;
            files_changed = true;
        }
        if mode == RecoveryMode::Unclean || files_changed {
            // Recovered bytes may sit in the device cache only; sync before
            // the recovery point moves past them.
            file.fdatasync().await?;
        }
        let tail_start = align_down(active_size);
        let tail = if active_size > tail_start {
            let read = file
                .read_at(tail_start, (active_size - tail_start) as usize)
                .await?;
            if read.len() as u64 != active_size - tail_start {
                return Err(StorageError::Corrupt(
                    "short read of the active segment's tail".into(),
                ));
            }
            read.to_vec()
        } else {
            Vec::new()
        };

        let first_base = segments.keys().next().copied().unwrap_or(0);
        let log_start_offset = stored_log_start_offset
            .unwrap_or(first_base)
            .clamp(first_base, log_end_offset.max(first_base));
        if recovery_point != Some(log_end_offset) {
            write_offset_file(dir, RECOVERY_POINT_FILE, log_end_offset).await?;
            files_changed = true;
        }
        if files_changed || marker_removed {
            segment::sync_dir(dir).await?;
        }
        tracing::debug!(
            dir = %dir.display(),
            segments = segments.len(),
            log_start_offset,
            log_end_offset,
            "log opened"
        );
        let state = State {
            config,
            segments,
            writer: Some(Writer { tail }),
            log_start_offset,
            log_end_offset,
            recovery_point: log_end_offset,
            report: recovered.report,
            pending: VecDeque::new(),
            writer_running: false,
            idle_waiters: Vec::new(),
            closed: false,
            messages_since_flush: 0,
            last_flush_ms: now_ms(),
            writes_completed: 0,
            cleaned_up_to_offset: log_start_offset,
        };
        drop(file);
        Ok(Rc::new_cyclic(|this| Log {
            dir: dir.to_path_buf(),
            this: this.clone(),
            cache: cache.clone(),
            state: RefCell::new(state),
            log_start_offset_writing: Cell::new(false),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log_start_offset(&self) -> i64 {
        self.state.borrow().log_start_offset
    }

    /// Next offset to assign; every offset below it has a completed write and
    /// is readable.
    pub fn log_end_offset(&self) -> i64 {
        self.state.borrow().log_end_offset
    }

    /// Sum of the segments' logical sizes.
    pub fn size_bytes(&self) -> u64 {
        self.state.borrow().segments.values().map(|s| s.size_bytes).sum()
    }

    /// Base offset of the active segment (moves at every roll).
    pub fn active_base_offset(&self) -> i64 {
        self.state.borrow().active_base()
    }

    pub fn segment_count(&self) -> usize {
        self.state.borrow().segments.len()
    }

    pub fn recovery_report(&self) -> RecoveryReport {
        self.state.borrow().report.clone()
    }

    pub fn set_config(&self, config: LogConfig) {
        self.state.borrow_mut().config = config;
    }

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
        let pending = describe(batches)?;
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
            let Some(this) = self.this.upgrade() else {
                return Err(StorageError::Closed);
            };
            glommio::spawn_local(async move { this.run_writer().await }).detach();
        }
        answer.await.map_err(|_| StorageError::Closed)?
    }

    async fn run_writer(self: Rc<Self>) {
        loop {
            let drained: Vec<_> = {
                let mut state = self.state.borrow_mut();
                if state.pending.is_empty() {
                    state.writer_running = false;
                    for waiter in state.idle_waiters.drain(..) {
                        let _ = waiter.send(());
                    }
                    return;
                }
                // Moves the queue's buffer out, so an idle log keeps none.
                Vec::from(std::mem::take(&mut state.pending))
            };
            self.write_drained(drained).await;
        }
    }

    async fn write_drained(
        &self,
        drained: Vec<(PendingAppend, oneshot::Sender<Result<AppendResult, StorageError>>)>,
    ) {
        let now = now_ms();
        let (appends, replies): (Vec<_>, Vec<_>) = drained.into_iter().unzip();
        let mut results: Vec<Option<AppendResult>> = vec![None; appends.len()];
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
    /// the writer must (1) rewrite baseOffset in the copy while filling the
    /// DMA buffer, with no second copy, (2) place several callers' batches in
    /// one write and know each batch's file position for the index, (3)
    /// return only when the bytes are on the device and readable, with the
    /// logical size (not the padded file size) as the truth, and (4) rewrite
    /// the partial last block instead of leaving padding holes, so the file
    /// stays a contiguous run of batches that Kafka tools can read. A stream
    /// writer buffers across calls and pads at close only, which loses (3).
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
            for bytes in &append.batches {
                let copy = &mut out[cursor..cursor + bytes.len()];
                copy.copy_from_slice(bytes);
                batch::set_base_offset(copy, next_offset);
                if log_append_time {
                    batch::set_log_append_time(copy, now)?;
                }
                let header = batch::parse_header(copy)?;
                assert_eq!(header.total_bytes(), bytes.len(), "batch length changed");
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

        let written = file.write_at(buffer, tail_start).await?;
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
        }
        Ok(results)
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
            }
        }
        tracing::debug!(dir = %self.dir.display(), new_base, "segment rolled");
        Ok(())
    }

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
            if zero_copy {
                if let Some(found) = self
                    .locate_slice(
                        base, generation, &file, size, stable_end, position, offset, max_bytes,
                    )
                    .await?
                {
                    return Ok(Some(found));
                }
            }
            return Ok(read_batches(&file, size, position, offset, max_bytes)
                .await?
                .map(Records::Memory));
        }
    }

    fn segment_generation(&self, base: i64) -> Option<u64> {
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
        let slice = FileSlice::reopen(file.as_raw_fd(), start, (end - start) as usize)?;
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
    async fn ensure_index(&self, base: i64) -> Result<(), StorageError> {
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

    /// The active segment's file, for the writer (reopened read+write if
    /// the cache evicted it). Only the writer task, roll and close call it.
    async fn active_file(&self) -> Result<Rc<DmaFile>, StorageError> {
        let base = self.state.borrow().active_base();
        let path = file_path(&self.dir, base, LOG_SUFFIX);
        self.cache.get(&path, FileMode::ReadWrite).await
    }

    /// A read handle on a segment's `.log`, from the shard's cache (the
    /// active segment in the writer's read+write mode, so reads and writes
    /// share one file). A file deleted by retention surfaces as
    /// `Io(NotFound)`. Once the log is closed, reads open a file of their
    /// own, closed when dropped, so a closed log leaves nothing cached.
    async fn segment_file(&self, base: i64) -> Result<Rc<DmaFile>, StorageError> {
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

    /// Deletes whole non-active segments, oldest first: by time when the
    /// segment was last written (broker time; file mtime after a restart)
    /// more than `retention_ms` before `now_ms`, and by size while the log
    /// exceeds `retention_bytes` by at least the oldest segment's size.
    /// Advances the log start offset. Returns how many segments were deleted.
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

    async fn persist_log_start_offset(&self) -> Result<(), StorageError> {
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
        }
        let mut state = self.state.borrow_mut();
        state.recovery_point = state.recovery_point.max(log_end_offset);
        state.messages_since_flush = 0;
        state.last_flush_ms = now_ms();
        Ok(())
    }

    /// Clean close: waits for in-flight appends, trims the O_DIRECT padding,
    /// fdatasyncs, writes the indexes, the recovery point (= LEO) and the
    /// clean-shutdown marker. Appends afterwards fail with `Closed`; reads
    /// keep working (with files of their own). Releases the log's cached
    /// files, whether or not the close succeeded.
    pub async fn close(&self) -> Result<(), StorageError> {
        let closed = self.close_in().await;
        self.cache.forget(&self.dir);
        closed
    }

    async fn close_in(&self) -> Result<(), StorageError> {
        self.state.borrow_mut().closed = true;
        loop {
            let idle = {
                let mut state = self.state.borrow_mut();
                if !state.writer_running {
                    break;
                }
                let (tx, rx) = oneshot::channel();
                state.idle_waiters.push(tx);
                rx
            };
            let _ = idle.await;
        }
        if self.state.borrow().writer.is_none() {
            return Ok(());
        }
        let file = self.active_file().await?;
        let (size, index, log_end_offset) = {
            let mut state = self.state.borrow_mut();
            if state.writer.take().is_none() {
                // A concurrent close got here first.
                return Ok(());
            }
            let log_end_offset = state.log_end_offset;
            let active = state.active_mut().ok_or(StorageError::Closed)?;
            let index = active
                .index
                .get_or_insert_with(|| SegmentIndex::new(active.base_offset));
            index.seal();
            (active.size_bytes, index.clone(), log_end_offset)
        };
        file.truncate(size).await?;
        file.fdatasync().await?;
        drop(file);
        segment::write_indexes(&self.dir, &index).await?;
        write_offset_file(&self.dir, RECOVERY_POINT_FILE, log_end_offset).await?;
        segment::write_file_atomic(&self.dir, CLEAN_SHUTDOWN_FILE, Vec::new()).await?;
        segment::sync_dir(&self.dir).await?;
        self.state.borrow_mut().recovery_point = log_end_offset;
        tracing::debug!(dir = %self.dir.display(), log_end_offset, "log closed");
        Ok(())
    }

    /// Closes the log and removes its directory (topic deletion).
    pub async fn delete(&self) -> Result<(), StorageError> {
        self.close().await?;
        self.state.borrow_mut().segments.clear();
        for entry in std::fs::read_dir(&self.dir)? {
            segment::remove_if_exists(&entry?.path()).await?;
        }
        std::fs::remove_dir(&self.dir)?;
        Ok(())
    }
}

/// Checks an append's batches (already CRC-validated by the caller) enough
/// to keep the log's invariants, and sums what the writer needs.
fn describe(batches: Vec<Bytes>) -> Result<PendingAppend, StorageError> {
    if batches.is_empty() {
        return Err(BatchError::Empty.into());
    }
    let mut pending = PendingAppend {
        batches: Vec::new(),
        bytes: 0,
        offsets: 0,
        records: 0,
    };
    for bytes in &batches {
        let header = batch::check_shape(bytes)?;
        let last_offset_delta = header.last_offset_delta.get();
        let records_count = header.records_count.get();
        pending.bytes += bytes.len() as u64;
        pending.offsets += i64::from(last_offset_delta) + 1;
        pending.records += records_count as u64;
    }
    pending.batches = batches;
    Ok(pending)
}

/// Clean open: trust the sealed segments; find the end of the last one by
/// scanning from its last index entry (or rebuild its index if unusable).
async fn recover_clean(
    dir: &Path,
    segments: &mut Segments,
    config: &LogConfig,
) -> Result<Recovered, StorageError> {
    let mut report = RecoveryReport::default();
    let Some(last) = segments.values_mut().next_back() else {
        return Err(StorageError::Corrupt("no segment".into()));
    };
    let base = last.base_offset;
    let path = file_path(dir, base, LOG_SUFFIX);
    let file = match open_for_read(&path).await {
        Ok(file) => file,
        // A brand-new log: nothing to recover (the writer creates the file).
        Err(e) if is_not_found(&e) => {
            return Ok(Recovered {
                report,
                log_end_offset: base,
                files_changed: true,
            })
        }
        Err(e) => return Err(e.into()),
    };
    let file_bytes = file.file_size().await?;
    let bounds = IndexBounds {
        base_offset: base,
        next_offset: i64::MAX,
        log_bytes: file_bytes,
    };
    let (mut index, position, expected_offset) = match segment::load_indexes(dir, &file, bounds).await? {
        Ok(mut index) => {
            let (position, offset) = index.resume_point();
            (index, position, offset)
        }
        Err(reason) => {
            tracing::warn!(dir = %dir.display(), base, %reason, "rebuilding active segment index");
            report.segments_scanned += 1;
            report.indexes_rebuilt += 1;
            (SegmentIndex::new(base), 0, base)
        }
    };
    let outcome = segment::scan(
        &file,
        file_bytes,
        position,
        expected_offset,
        i64::MAX,
        &mut index,
        config.index_interval_bytes,
    )
    .await?;
    report.batches_scanned += outcome.batches;
    let truncated = file_bytes - outcome.valid_bytes;
    if truncated > 0 {
        warn_truncation(dir, base, &outcome, truncated);
        report.bytes_truncated += truncated;
    }
    last.size_bytes = outcome.valid_bytes;
    last.index = Some(index);
    let _ = file.close().await;
    Ok(Recovered {
        report,
        log_end_offset: outcome.next_offset,
        files_changed: truncated > 0,
    })
}

fn warn_truncation(dir: &Path, base: i64, outcome: &segment::ScanOutcome, truncated: u64) {
    let reason = outcome.stop.as_ref().map_or("", |s| s.reason.as_str());
    tracing::warn!(
        dir = %dir.display(),
        segment = %file_name(base, LOG_SUFFIX),
        position = outcome.valid_bytes,
        bytes = truncated,
        %reason,
        "truncating log at the first torn or invalid batch"
    );
}

/// Unclean open: scan every segment from the one holding the recovery point,
/// rebuild their indexes, truncate at the first torn or invalid batch and
/// delete the segments after it.
async fn recover_unclean(
    dir: &Path,
    segments: &mut Segments,
    recovery_point: i64,
    config: &LogConfig,
) -> Result<Recovered, StorageError> {
    let mut report = RecoveryReport::default();
    let mut files_changed = false;
    let first_base = segments.keys().next().copied().unwrap_or(0);
    let start_base = segments
        .range(..=recovery_point)
        .next_back()
        .map_or(first_base, |(b, _)| *b);
    let bases: Vec<i64> = segments.range(start_base..).map(|(b, _)| *b).collect();
    let mut log_end_offset = bases.first().copied().unwrap_or(0);
    tracing::warn!(
        dir = %dir.display(),
        recovery_point,
        segments = bases.len(),
        "unclean open: scanning segments from the recovery point"
    );
    for (i, &base) in bases.iter().enumerate() {
        let is_last = i + 1 == bases.len();
        let offset_limit = bases.get(i + 1).copied().unwrap_or(i64::MAX);
        let path = file_path(dir, base, LOG_SUFFIX);
        let file = match open_for_read(&path).await {
            Ok(file) => file,
            Err(e) if is_not_found(&e) && is_last => {
                log_end_offset = base;
                files_changed = true;
                break;
            }
            Err(e) => return Err(e.into()),
        };
        let file_bytes = file.file_size().await?;
        let mut index = SegmentIndex::new(base);
        let outcome = segment::scan(
            &file,
            file_bytes,
            0,
            base,
            offset_limit,
            &mut index,
            config.index_interval_bytes,
        )
        .await?;
        let _ = file.close().await;
        report.segments_scanned += 1;
        report.indexes_rebuilt += 1;
        report.batches_scanned += outcome.batches;
        log_end_offset = outcome.next_offset;
        let truncated = file_bytes - outcome.valid_bytes;
        let Some(segment) = segments.get_mut(&base) else {
            return Err(StorageError::Corrupt(format!("segment {base} vanished")));
        };
        segment.size_bytes = outcome.valid_bytes;
        if truncated > 0 || is_last {
            if truncated > 0 {
                warn_truncation(dir, base, &outcome, truncated);
                report.bytes_truncated += truncated;
                files_changed = true;
            }
            segment.index = Some(index);
            // Everything after a bad batch is lost: it was never acknowledged
            // as durable past the recovery point, and offsets must stay dense.
            for &later in &bases[i + 1..] {
                if let Some(removed) = segments.remove(&later) {
                    report.bytes_truncated += removed.size_bytes;
                    tracing::warn!(dir = %dir.display(), base = later, "deleting segment after truncation point");
                }
                segment::remove_segment_files(dir, later).await?;
            }
            break;
        }
        index.seal();
        segment::write_indexes(dir, &index).await?;
        files_changed = true;
    }
    Ok(Recovered {
        report,
        log_end_offset,
        files_changed,
    })
}

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;
