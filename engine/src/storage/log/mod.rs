//! One partition's log: segments, the O_DIRECT group-commit writer, reads,
//! retention and recovery. See `README.md` in the storage directory.
//!
//! This file is the core every other part leans on: the `Log` and its state,
//! open, close and the accessors. The rest of `impl Log` is split by concern
//! so that each part's invariants can be read in one place: `writer.rs`
//! (appends, rolls, flushes), `reads.rs`, `recovery.rs` (what open does to
//! the files it finds), `retention.rs` (retention, DeleteRecords,
//! compaction) and `truncation.rs` (a follower cutting its log's end).
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

mod reads;
mod recovery;
mod retention;
mod truncation;
mod writer;

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::time::UNIX_EPOCH;

use futures::channel::oneshot;

use crate::clock::now_ms;

use super::cleaner;
pub use super::error::StorageError;
use super::file_cache::{FileCache, FileMode};
use super::index::SegmentIndex;
pub use super::log_config::LogConfig;
use super::segment::{self, file_path, LOG_SUFFIX};

use self::recovery::{recover_clean, recover_unclean};
pub use self::recovery::{RecoveryMode, RecoveryReport};
use self::writer::PendingAppend;

/// O_DIRECT block size the writer aligns to. Every write starts at a multiple
/// of it and is a multiple of it long (the device's logical block size, which
/// glommio reports as `DmaFile::alignment`, must divide it).
pub const BLOCK_BYTES: u64 = 4096;
/// Upper bound of one group-commit write (callers beyond it go in the next
/// write; a single caller larger than it is still written in one piece).
pub const WRITE_BYTES_MAX: u64 = 8 << 20;
/// Text file: an offset below which everything is fdatasynced, written at
/// rolls, truncations and unclean opens (a segment-granular lower bound of
/// the recovery point; the shutdown's exact one is the data dir's
/// `recovery-point-offset-checkpoint`). Unclean recovery scans from the
/// segment that holds it.
pub const RECOVERY_POINT_FILE: &str = "recovery-point";
/// Text file: the decimal log start offset set by DeleteRecords.
pub const LOG_START_OFFSET_FILE: &str = "log-start-offset";
/// Per-log marker of earlier releases (the data dir's marker decides clean
/// or unclean recovery now): removed when an open finds it.
pub const LEGACY_CLEAN_SHUTDOWN_FILE: &str = "clean-shutdown";

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
    /// File size the writer reserved with fallocate (`preallocate`): writes
    /// ending at or below it do not extend the file. 0 after an open, roll
    /// or truncation (nothing known reserved); u64::MAX once fallocate
    /// failed on this segment (no further tries until the next roll).
    allocated_bytes: u64,
    /// At least the active segment file's size on disk: what the open
    /// found, raised by every write and reservation, 0 at a roll, u64::MAX
    /// (unknown) after a truncation. While it is one block, the next clean
    /// open will not read the segment's index files (`recovery::
    /// SMALL_SEGMENT_BYTES`), so a deferred close need not write them.
    file_bytes_max: u64,
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
    /// The directory's entries (a brand-new log's first segment file) are
    /// not yet synced: the first `flush` syncs it before data counts as
    /// durable (roll, truncation and close sync it anyway).
    dir_unsynced: bool,
    /// Nothing was appended or truncated since open (`begin_change`).
    unchanged: bool,
    /// Opened clean with nothing to repair: the files are as the last
    /// clean close left them (durable, indexes written), so a close before
    /// any change has nothing to write. The data dir's clean-shutdown
    /// marker, removed once every log is open, makes a crash after that
    /// an unclean start, which is why no per-log marker is needed.
    opened_as_closed: bool,
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

    /// The writer's place is free: wakes whoever waits for that (close,
    /// truncation). Only with nothing queued: appends queue only while
    /// `writer_running` is set.
    fn go_idle(&mut self) {
        assert!(self.pending.is_empty(), "an idle writer leaves nothing queued");
        self.writer_running = false;
        for waiter in self.idle_waiters.drain(..) {
            let _ = waiter.send(());
        }
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
    /// This open made the directory: nothing else (leader epochs, producer
    /// snapshots) can be in it yet, so callers skip looking.
    created: bool,
    /// The files the open's listing saw besides the log's own
    /// (leader-epoch checkpoint, producer snapshots, ...), for the
    /// partition's own files: at a start of 100,000 logs, a second listing
    /// or a stat per log for them costs about a second. Taken once.
    other_files: RefCell<Option<Vec<OtherFile>>>,
}

fn mtime_ms(metadata: &std::fs::Metadata) -> i64 {
    metadata
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
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

/// The whole file, read with one `read` when it fits in a block (a
/// leader-epoch checkpoint of a few epochs does): `std::fs::read` also
/// stats the file and reads once more to see the end, two of five calls
/// per partition at a start of 100,000. Blocking. A regular file returns
/// less than asked only at its end, so a short read ends it; a full one
/// keeps reading.
pub fn read_small_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    const FIRST_READ_BYTES: usize = 4096;
    let mut file = std::fs::File::open(path)?;
    let mut bytes = vec![0u8; FIRST_READ_BYTES];
    let mut filled = 0;
    loop {
        match file.read(&mut bytes[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if filled < bytes.len() {
            break;
        }
        bytes.resize(bytes.len() * 2, 0);
    }
    bytes.truncate(filled);
    Ok(bytes)
}

/// What `Log::open` needs from the log's directory: one listing, a stat
/// per segment and the other files asked for (`DirListing::read`).
struct DirListing {
    /// The directory did not exist: the listing created it (empty).
    created: bool,
    /// (base offset, size, mtime ms) of each segment file, by base offset.
    segment_files: Vec<(i64, u64, i64)>,
    /// Temp and `.cleaned` files a cut-short write or compaction left.
    leftovers: Vec<PathBuf>,
    recovery_point_listed: bool,
    log_start_listed: bool,
    legacy_marker_listed: bool,
    /// The files that are not the log's own (`Log::take_other_files`).
    other_files: Vec<OtherFile>,
}

/// A file in a log's directory that is not the log's own (a partition's
/// leader-epoch checkpoint, its producer snapshots), as the log's open saw
/// it: with its bytes when the caller asked for them (`Log::open_reading`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherFile {
    pub name: String,
    /// Read by the open's listing; None when not asked for, or gone by then.
    pub bytes: Option<Vec<u8>>,
}

thread_local! {
    /// Moving mean of how long this shard's recent `DirListing::read`s took
    /// (µs, the calls themselves wherever they ran).
    static LISTING_US_MEAN: Cell<f64> = const { Cell::new(0.0) };
}

/// Listings slower than this on average go to the blocking pool.
const LISTING_ON_POOL_FROM_US: f64 = 200.0;

impl DirListing {
    /// One listing, and a stat per segment, serve every file check of an
    /// open. With the metadata cached (a process restart) they take tens
    /// of µs and run best on the shard thread: the blocking pool's hand-off
    /// made a start of 100,000 logs a second slower. After a reboot each
    /// call may wait for the device (directory block, inodes) and the shard
    /// thread waited for them one after the other, 17-30 s for 100,000
    /// logs; on the pool the opens in flight overlap them (about 9 s). So
    /// the recent listings' speed picks where the next one runs.
    async fn read_adaptively(dir: &Path, read_names: &'static [&'static str]) -> std::io::Result<DirListing> {
        let timed = |dir: &Path| {
            let started = std::time::Instant::now();
            let listing = DirListing::read(dir, read_names);
            (listing, started.elapsed().as_secs_f64() * 1e6)
        };
        let (listing, took_us) = if LISTING_US_MEAN.get() > LISTING_ON_POOL_FROM_US {
            let dir = dir.to_path_buf();
            glommio::executor().spawn_blocking(move || timed(&dir)).await
        } else {
            timed(dir)
        };
        LISTING_US_MEAN.set(LISTING_US_MEAN.get() * 0.9 + took_us * 0.1);
        listing
    }

    /// Lists `dir` (creating it if missing), stats its segments and reads
    /// the other files named in `read_names`. Blocking.
    fn read(dir: &Path, read_names: &[&str]) -> std::io::Result<DirListing> {
        let mut listing = DirListing {
            created: false,
            segment_files: Vec::new(),
            leftovers: Vec::new(),
            recovery_point_listed: false,
            log_start_listed: false,
            legacy_marker_listed: false,
            other_files: Vec::new(),
        };
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A directory this open makes is empty: no listing.
                std::fs::create_dir_all(dir)?;
                listing.created = true;
                return Ok(listing);
            }
            Err(e) => return Err(e),
        };
        let mut bases = Vec::new();
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.ends_with(".tmp") || name.ends_with(&format!(".{}", cleaner::CLEANED_SUFFIX)) {
                listing.leftovers.push(entry.path());
            } else if let Some(base) = segment::parse_log_file_name(name) {
                bases.push(base);
            } else {
                let recovery_point = name == RECOVERY_POINT_FILE;
                let log_start = name == LOG_START_OFFSET_FILE;
                let legacy_marker = name == LEGACY_CLEAN_SHUTDOWN_FILE;
                listing.recovery_point_listed |= recovery_point;
                listing.log_start_listed |= log_start;
                listing.legacy_marker_listed |= legacy_marker;
                let index_file = [segment::INDEX_SUFFIX, segment::TIME_INDEX_SUFFIX]
                    .iter()
                    .any(|suffix| name.strip_suffix(suffix).is_some_and(|stem| stem.ends_with('.')));
                if !(recovery_point || log_start || legacy_marker || index_file) {
                    let bytes = if read_names.contains(&name) {
                        match read_small_file(&entry.path()) {
                            Ok(bytes) => Some(bytes),
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                            Err(e) => return Err(e),
                        }
                    } else {
                        None
                    };
                    listing.other_files.push(OtherFile {
                        name: name.to_string(),
                        bytes,
                    });
                }
            }
        }
        bases.sort_unstable();
        for base in bases {
            let metadata = std::fs::metadata(file_path(dir, base, LOG_SUFFIX))?;
            listing
                .segment_files
                .push((base, metadata.len(), mtime_ms(&metadata)));
        }
        Ok(listing)
    }
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
        Self::open_reading(dir, config, mode, cache, &[]).await
    }

    /// `open`, also reading the files of the directory named in
    /// `read_names` (small ones: a partition's leader-epoch checkpoint)
    /// with the listing, wherever that runs (`DirListing::read_adaptively`);
    /// `take_other_files` hands them over.
    pub async fn open_reading(
        dir: &Path,
        config: LogConfig,
        mode: RecoveryMode,
        cache: Rc<FileCache>,
        read_names: &'static [&'static str],
    ) -> Result<Rc<Log>, StorageError> {
        // Files cached for this directory belong to an earlier Log dropped
        // without close (or to a failed open): they may be stale.
        cache.forget(dir);
        let opened = Self::open_in(dir, config, mode, &cache, read_names).await;
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
        read_names: &'static [&'static str],
    ) -> Result<Rc<Log>, StorageError> {
        let listing = DirListing::read_adaptively(dir, read_names).await?;
        let DirListing {
            created,
            segment_files,
            leftovers,
            recovery_point_listed,
            log_start_listed,
            legacy_marker_listed,
            other_files,
        } = listing;
        for leftover in leftovers {
            // A compaction pass cut short leaves `.cleaned` files: the
            // originals are still whole, so the leftovers go.
            segment::remove_if_exists(&leftover).await?;
        }
        segment::prime_iopoll_probe(dir).await?;
        let mut files_changed = false;
        let stored_log_start_offset = if log_start_listed {
            read_offset_file(dir, LOG_START_OFFSET_FILE).await?
        } else {
            None
        };

        let mut segments = Segments::new();
        for (base, size_bytes, last_modified_ms) in segment_files {
            segments.insert(
                base,
                Box::new(Segment {
                    base_offset: base,
                    size_bytes,
                    last_modified_ms,
                    first_append_ms: None,
                    index: None,
                    generation: 0,
                }),
            );
        }
        // A clean open needs the recovery point only to tell a log that
        // never held data (`fresh` below).
        let maybe_fresh = segments.len() <= 1 && segments.values().all(|s| s.size_bytes == 0);
        let recovery_point = if recovery_point_listed && (mode == RecoveryMode::Unclean || maybe_fresh) {
            read_offset_file(dir, RECOVERY_POINT_FILE).await?
        } else {
            None
        };
        // A brand-new log holds nothing to make durable: its open skips the
        // fsyncs (file, recovery point, directory) that creating thousands
        // of partitions would otherwise wait on, one after the other, for
        // an empty file. With no recovery point, a crash recovers it from
        // its first segment, which is all of it.
        let brand_new = segments.is_empty();
        if brand_new {
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

        let mut recovered = match mode {
            // Nothing to recover (the file is created below).
            RecoveryMode::Clean if brand_new => recovery::Recovered {
                report: RecoveryReport::default(),
                log_end_offset: 0,
                files_changed: true,
                active_file_bytes: 0,
                tail: None,
            },
            RecoveryMode::Clean => {
                let active_base = segments.keys().next_back().copied().unwrap_or(0);
                let file = cache
                    .get(&file_path(dir, active_base, LOG_SUFFIX), FileMode::ReadWrite)
                    .await?;
                recover_clean(dir, &mut segments, &config, &file).await?
            }
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
        // Also empty and never synced: a new log that was closed (or
        // crashed) before its first write, which a close leaves as it was.
        let fresh = brand_new
            || (recovery_point.is_none()
                && segments.len() == 1
                && active_size == 0
                && log_end_offset == active_base);
        let file = cache
            .get(&file_path(dir, active_base, LOG_SUFFIX), FileMode::ReadWrite)
            .await?;
        if !BLOCK_BYTES.is_multiple_of(file.alignment()) {
            return Err(StorageError::Corrupt(format!(
                "device alignment {} does not divide the {BLOCK_BYTES}-byte block",
                file.alignment()
            )));
        }
        // Zeros after the last batch (O_DIRECT padding a deferred close
        // left, or a reservation) stay after a clean open: the writer
        // overwrites them and a roll trims them. Anything else is cut.
        if (mode == RecoveryMode::Unclean || files_changed) && file.file_size().await? != active_size {
            file.truncate(active_size).await?;
            files_changed = true;
        }
        if !fresh && (mode == RecoveryMode::Unclean || files_changed) {
            // Recovered bytes may sit in the device cache only; sync before
            // the recovery point moves past them.
            file.fdatasync().await?;
        }
        let tail_start = align_down(active_size);
        let scanned_tail = recovered
            .tail
            .take()
            .filter(|tail| tail_start + tail.len() as u64 == active_size);
        let tail = if let Some(tail) = scanned_tail {
            tail
        } else if active_size > tail_start {
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
        // A clean open leaves the per-log recovery point as it is: a lower
        // bound (see RECOVERY_POINT_FILE), so writing 100,000 of them at
        // each start buys nothing. An unclean one moves it to what it
        // recovered and synced when it lies before the active segment:
        // within it, the next recovery scans the same segment either way.
        let behind_active = recovery_point.is_none_or(|point| point < active_base);
        if mode == RecoveryMode::Unclean && !fresh && segments.len() > 1 && behind_active {
            write_offset_file(dir, RECOVERY_POINT_FILE, log_end_offset).await?;
            files_changed = true;
        }
        let opened_as_closed = mode == RecoveryMode::Clean && !files_changed;
        if legacy_marker_listed {
            // Unsynced: nothing reads it any more.
            segment::remove_if_exists(&dir.join(LEGACY_CLEAN_SHUTDOWN_FILE)).await?;
        }
        let dir_unsynced = fresh;
        if !dir_unsynced && files_changed {
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
            writer: Some(Writer {
                tail,
                allocated_bytes: 0,
                // An unclean open (or a repair) cut the file to the data.
                file_bytes_max: if mode == RecoveryMode::Unclean || files_changed {
                    active_size
                } else {
                    recovered.active_file_bytes
                },
            }),
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
            dir_unsynced,
            unchanged: true,
            opened_as_closed,
            cleaned_up_to_offset: log_start_offset,
        };
        drop(file);
        Ok(Rc::new_cyclic(|this| Log {
            dir: dir.to_path_buf(),
            this: this.clone(),
            cache: cache.clone(),
            state: RefCell::new(state),
            log_start_offset_writing: Cell::new(false),
            created,
            other_files: RefCell::new(Some(other_files)),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether this log's open created its directory (a new partition).
    pub fn created_by_open(&self) -> bool {
        self.created
    }

    /// The files the open's directory listing saw besides the log's own
    /// (segments, indexes, offset files, temp and compaction files), so
    /// the partition finds its own files without listing again: empty for
    /// a directory the open created, None once taken (then the caller
    /// looks for itself).
    pub fn take_other_files(&self) -> Option<Vec<OtherFile>> {
        self.other_files.borrow_mut().take()
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

    /// The base offset of the segment holding `offset` (the last segment
    /// starting at or below it), None below the first segment.
    pub fn segment_base_of(&self, offset: i64) -> Option<i64> {
        self.state
            .borrow()
            .segments
            .range(..=offset)
            .next_back()
            .map(|(base, _)| *base)
    }

    pub fn segment_count(&self) -> usize {
        self.state.borrow().segments.len()
    }

    /// Whether a close has files to write: appended to or truncated since
    /// it was opened, or opened by a recovery (whose rebuilt indexes only a
    /// close writes). `close_in` skips exactly the others.
    pub fn close_writes_files(&self) -> bool {
        let state = self.state.borrow();
        state.writer.is_some() && !(state.unchanged && (state.opened_as_closed || state.dir_unsynced))
    }

    pub fn recovery_report(&self) -> RecoveryReport {
        self.state.borrow().report.clone()
    }

    pub fn set_config(&self, config: LogConfig) {
        self.state.borrow_mut().config = config;
    }

    /// Called before the first append or truncation since open: the log
    /// is about to differ from what its last clean close left, so its
    /// close will have files to write.
    pub(super) fn begin_change(&self) {
        let mut state = self.state.borrow_mut();
        state.unchanged = false;
        state.opened_as_closed = false;
    }

    /// Clean close: waits for in-flight appends, trims the O_DIRECT padding,
    /// fdatasyncs, writes the indexes and the recovery point (= LEO).
    /// Appends afterwards fail with `Closed`; reads keep working (with files
    /// of their own). Releases the log's cached files, whether or not the
    /// close succeeded.
    pub async fn close(&self) -> Result<(), StorageError> {
        let closed = self.close_in(segment::Sync::File).await.map(|_| ());
        self.cache.forget(&self.dir);
        closed
    }

    /// A close for a shutdown of many logs: `close` without a sync or a
    /// recovery point (indexes written in place). The caller syncs the
    /// filesystem once for all of them (`sync_filesystem`) and only then
    /// writes the data dir's recovery-point checkpoint and clean-shutdown
    /// marker. Per log that is two index writes in place (none for a
    /// one-block segment) instead of fsyncs, new files and a directory sync. Until the marker, the next
    /// start is an unclean one (scans from each log's recovery point),
    /// which is correct whatever was left unsynced.
    pub async fn close_deferred(&self) -> Result<bool, StorageError> {
        let closed = self.close_in(segment::Sync::Deferred).await;
        self.cache.forget(&self.dir);
        closed
    }

    /// Ok(true): files were written and, under `Sync::Deferred`, the marker
    /// is still to come.
    async fn close_in(&self, sync: segment::Sync) -> Result<bool, StorageError> {
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
            return Ok(false);
        }
        {
            // Unchanged since a clean open (files as the last close left
            // them) or since it was created empty: nothing to write or sync,
            // which is most of a shutdown with many idle partitions. An empty
            // new log left without indexes or recovery point opens as new.
            let mut state = self.state.borrow_mut();
            if state.unchanged && (state.opened_as_closed || state.dir_unsynced) {
                // (`close_writes_files` says false for exactly these.)
                state.writer = None;
                return Ok(false);
            }
        }
        // A deferred close leaves the O_DIRECT padding (zeros) after the
        // last batch: trimming it made ext4 read each log's last block back
        // to zero its tail, a synchronous read per log. The next clean open
        // takes zeros after the last batch as the end, and keeps them.
        let file = match sync {
            segment::Sync::File => Some(self.active_file().await?),
            segment::Sync::Deferred => None,
        };
        let (size, index, log_end_offset, file_bytes_max) = {
            let mut state = self.state.borrow_mut();
            let Some(writer) = state.writer.take() else {
                // A concurrent close got here first.
                return Ok(false);
            };
            let log_end_offset = state.log_end_offset;
            let active = state.active_mut().ok_or(StorageError::Closed)?;
            let index = active
                .index
                .get_or_insert_with(|| SegmentIndex::new(active.base_offset));
            index.seal();
            (
                active.size_bytes,
                index.clone(),
                log_end_offset,
                writer.file_bytes_max,
            )
        };
        if let Some(file) = file {
            file.truncate(size).await?;
            file.fdatasync().await?;
        }
        // Files a clean open will not read (one block, no offset entry):
        // at a first stop after 100,000 partitions got their first record,
        // creating them was most of the stop.
        let unread = file_bytes_max <= recovery::SMALL_SEGMENT_BYTES && index.offsets.is_empty();
        if !(sync == segment::Sync::Deferred && unread) {
            segment::write_indexes_with(&self.dir, &index, sync).await?;
        }
        if sync == segment::Sync::File {
            write_offset_file(&self.dir, RECOVERY_POINT_FILE, log_end_offset).await?;
            segment::sync_dir(&self.dir).await?;
            self.state.borrow_mut().recovery_point = log_end_offset;
        }
        tracing::debug!(dir = %self.dir.display(), log_end_offset, "log closed");
        Ok(true)
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

#[cfg(test)]
mod tests;
