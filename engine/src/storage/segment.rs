//! One segment's files and the I/O that reads, scans and writes them.
//!
//! A segment is `<20-digit base offset>.log` plus `.index` and `.timeindex`
//! (see `index.rs`). The active segment's writer lives in `log/writer.rs`;
//! this file holds what both sealed and active segments need: naming,
//! scanning (for recovery and index rebuilds), windowed batch reads, and
//! small-file writes.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use glommio::io::{BufferedFile, DmaFile, OpenOptions};
use glommio::GlommioError;

use super::batch::{self, BatchError, BatchHeader, BATCH_HEADER_BYTES, BATCH_OVERHEAD_BYTES};
use super::error::StorageError;
use super::index::{IndexBounds, OffsetIndex, SegmentIndex, TimeIndex};

pub const LOG_SUFFIX: &str = "log";
pub const INDEX_SUFFIX: &str = "index";
pub const TIME_INDEX_SUFFIX: &str = "timeindex";
/// Kafka's aborted-transaction index of a segment (`partition::txn_index`).
pub const TXN_INDEX_SUFFIX: &str = "txnindex";
/// Bytes read per I/O while scanning a segment.
pub const SCAN_CHUNK_BYTES: usize = 1 << 20;
/// Largest batch a scan will accept; a longer length field is garbage. Kafka
/// caps batches at `message.max.bytes` (1 MiB default); this leaves room for
/// a raised limit while bounding what a corrupt length can make us read.
pub const SCAN_BATCH_BYTES_MAX: usize = 128 << 20;

pub fn file_name(base_offset: i64, suffix: &str) -> String {
    format!("{base_offset:020}.{suffix}")
}

pub fn file_path(dir: &Path, base_offset: i64, suffix: &str) -> PathBuf {
    dir.join(file_name(base_offset, suffix))
}

/// Base offset of a `<20 digits>.log` name.
pub fn parse_log_file_name(name: &str) -> Option<i64> {
    let digits = name.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

impl From<GlommioError<()>> for StorageError {
    fn from(error: GlommioError<()>) -> Self {
        StorageError::Glommio(error.to_string())
    }
}

pub fn is_not_found(error: &GlommioError<()>) -> bool {
    match error {
        GlommioError::IoError(e) | GlommioError::EnhancedIoError { source: e, .. } => {
            e.kind() == std::io::ErrorKind::NotFound
        }
        _ => false,
    }
}

thread_local! {
    /// Devices whose iopoll probe this thread has primed.
    static PRIMED_DEVICES: std::cell::RefCell<std::collections::HashSet<u64>> =
        std::cell::RefCell::new(std::collections::HashSet::new());
    /// Parents (the data dir) of log dirs already checked: every log dir of
    /// a data dir is on its device, so a start stats it once, not once per
    /// log.
    static PRIMED_PARENTS: std::cell::RefCell<std::collections::HashSet<std::path::PathBuf>> =
        std::cell::RefCell::new(std::collections::HashSet::new());
}

/// Makes glommio's iopoll detection right for the device holding `dir`.
///
/// glommio decides once per thread and device whether O_DIRECT I/O can use
/// the polled ring, by reading the first block of the first DmaFile opened
/// there. If that file is empty (a brand-new segment) the read hits EOF and
/// "succeeds" even where polling is unsupported, and every later read on the
/// device then fails with EOPNOTSUPP (seen on virtio disks). Opening a file
/// with a real first block first makes the probe exercise the device.
pub async fn prime_iopoll_probe(dir: &Path) -> Result<(), StorageError> {
    use std::os::unix::fs::MetadataExt;
    let parent = dir.parent().map(Path::to_path_buf);
    if parent
        .as_ref()
        .is_some_and(|p| PRIMED_PARENTS.with(|d| d.borrow().contains(p)))
    {
        return Ok(());
    }
    let device = std::fs::metadata(dir)?.dev();
    if PRIMED_DEVICES.with(|d| d.borrow().contains(&device)) {
        if let Some(parent) = parent {
            PRIMED_PARENTS.with(|d| d.borrow_mut().insert(parent));
        }
        return Ok(());
    }
    let path = dir.join("iopoll-probe.tmp");
    // Once per thread and device: a blocking 4 KiB write is fine.
    std::fs::write(&path, [0u8; 4096])?;
    let opened = open_for_read(&path).await;
    if let Ok(file) = opened {
        file.close().await?;
    }
    remove_if_exists(&path).await?;
    PRIMED_DEVICES.with(|d| d.borrow_mut().insert(device));
    if let Some(parent) = parent {
        PRIMED_PARENTS.with(|d| d.borrow_mut().insert(parent));
    }
    Ok(())
}

/// Opens a segment's `.log` for reading (O_DIRECT; `read_at` aligns).
pub async fn open_for_read(path: &Path) -> Result<DmaFile, GlommioError<()>> {
    OpenOptions::new().read(true).dma_open(path).await
}

/// Opens an existing segment `.log` for O_DIRECT reads; a missing file is
/// `StorageError::Io(NotFound)` (which `StorageError::is_not_found` sees).
pub async fn open_existing(path: &Path) -> Result<DmaFile, StorageError> {
    match open_for_read(path).await {
        Ok(file) => Ok(file),
        Err(e) if is_not_found(&e) => Err(StorageError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            e.to_string(),
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Opens (creating if missing) a segment's `.log` for O_DIRECT writes.
pub async fn open_for_write(path: &Path) -> Result<DmaFile, StorageError> {
    Ok(OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .dma_open(path)
        .await?)
}

/// Reads a whole small file; None if it does not exist.
pub async fn read_small_file(path: &Path) -> Result<Option<Vec<u8>>, StorageError> {
    let file = match BufferedFile::open(path).await {
        Ok(file) => file,
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let size = file.file_size().await?;
    let size =
        usize::try_from(size).map_err(|_| StorageError::Corrupt(format!("{} too large", path.display())))?;
    let mut out = Vec::with_capacity(size);
    while out.len() < size {
        let chunk = file.read_at(out.len() as u64, size - out.len()).await?;
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    file.close().await?;
    Ok(Some(out))
}

/// Replaces `dir/name` atomically: write `name.tmp`, fdatasync, rename. The
/// caller syncs the directory when the rename itself must be durable.
pub async fn write_file_atomic(dir: &Path, name: &str, bytes: Vec<u8>) -> Result<(), StorageError> {
    write_file_replacing(dir, name, bytes, Sync::File).await
}

/// How a small file is replaced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sync {
    /// Atomically: `name.tmp`, fdatasync, rename. The new content is
    /// durable once the directory is.
    File,
    /// In place (written over, then cut if it was longer), unsynced: for
    /// files whose reader trusts them only under a marker written after the
    /// caller syncs the whole filesystem (`sync_filesystem`), so a crash
    /// before that leaves at worst a torn file nobody trusts. No new inode
    /// per write: on ext4 without a journal every new inode searches for one
    /// not recently deleted, which made the tmp-and-rename writes of a
    /// 20,000-partition shutdown take most of its 13-29 s. No truncation to
    /// zero first: freeing the blocks waited for a discard (ext4 mounted
    /// with `discard`), and an index only grows between two writes.
    Deferred,
}

/// Replaces `dir/name` as `sync` says (see `Sync`).
pub async fn write_file_replacing(
    dir: &Path,
    name: &str,
    bytes: Vec<u8>,
    sync: Sync,
) -> Result<(), StorageError> {
    let target = dir.join(name);
    let tmp = match sync {
        Sync::File => dir.join(format!("{name}.tmp")),
        Sync::Deferred => target.clone(),
    };
    let file = match sync {
        Sync::File => BufferedFile::create(&tmp).await?,
        Sync::Deferred => {
            glommio::io::OpenOptions::new()
                .write(true)
                .create(true)
                .buffered_open(&tmp)
                .await?
        }
    };
    let mut written = 0usize;
    let total = bytes.len();
    while written < total {
        let n = file.write_at(bytes[written..].to_vec(), written as u64).await?;
        if n == 0 {
            return Err(StorageError::Io(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                format!("short write to {}", tmp.display()),
            )));
        }
        written += n;
    }
    if sync == Sync::Deferred && file.file_size().await? > total as u64 {
        file.truncate(total as u64).await?;
    }
    if sync == Sync::File {
        file.fdatasync().await?;
    }
    file.close().await?;
    if sync == Sync::File {
        glommio::io::rename(&tmp, target).await?;
    }
    Ok(())
}

/// syncfs(2) of the filesystem holding `path`: every file's data and
/// metadata written before the call is durable when it returns. On the
/// blocking pool, as it waits for the device.
pub async fn sync_filesystem(path: &Path) -> Result<(), StorageError> {
    let path = path.to_path_buf();
    glommio::executor()
        .spawn_blocking(move || -> std::io::Result<()> {
            use std::os::fd::AsRawFd;
            let dir = std::fs::File::open(&path)?;
            // SAFETY: syncfs takes a descriptor and no memory; `dir` keeps
            // the descriptor open for the duration of the call.
            if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
        .await?;
    Ok(())
}

pub async fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    let directory = glommio::io::Directory::open(dir).await?;
    directory.sync().await?;
    directory.close().await?;
    Ok(())
}

/// Removes a file if present.
pub async fn remove_if_exists(path: &Path) -> Result<(), StorageError> {
    match glommio::io::remove(path).await {
        Ok(()) => Ok(()),
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes a segment's files (its `.txnindex` too, when it has one).
pub async fn remove_segment_files(dir: &Path, base_offset: i64) -> Result<(), StorageError> {
    for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX, TXN_INDEX_SUFFIX] {
        remove_if_exists(&file_path(dir, base_offset, suffix)).await?;
    }
    Ok(())
}

/// Writes a segment's `.index` and `.timeindex`.
pub async fn write_indexes(dir: &Path, index: &SegmentIndex) -> Result<(), StorageError> {
    write_indexes_with(dir, index, Sync::File).await
}

/// `write_indexes`, syncing as `sync` says.
pub async fn write_indexes_with(dir: &Path, index: &SegmentIndex, sync: Sync) -> Result<(), StorageError> {
    let base_offset = index.base_offset();
    write_file_replacing(
        dir,
        &file_name(base_offset, INDEX_SUFFIX),
        index.offsets.encode(),
        sync,
    )
    .await?;
    write_file_replacing(
        dir,
        &file_name(base_offset, TIME_INDEX_SUFFIX),
        index.times.encode(),
        sync,
    )
    .await?;
    Ok(())
}

/// A sliding window over a segment file, refilled with large reads, so a scan
/// costs one I/O per `SCAN_CHUNK_BYTES` rather than one per batch.
pub struct Window<'a> {
    file: &'a DmaFile,
    /// Logical end: bytes past it are never returned.
    end: u64,
    start: u64,
    bytes: Bytes,
}

impl<'a> Window<'a> {
    pub fn new(file: &'a DmaFile, end: u64) -> Self {
        Window {
            file,
            end,
            start: 0,
            bytes: Bytes::new(),
        }
    }

    /// `len` bytes at `position`, reading ahead `read_ahead` bytes when the
    /// window must be refilled. Short when the logical end comes first.
    pub async fn get(&mut self, position: u64, len: usize, read_ahead: usize) -> Result<&[u8], StorageError> {
        let available = self.end.saturating_sub(position);
        let len = len.min(usize::try_from(available).unwrap_or(usize::MAX));
        let window_end = self.start + self.bytes.len() as u64;
        if position < self.start || position + len as u64 > window_end {
            let want = len
                .max(read_ahead)
                .min(usize::try_from(available).unwrap_or(usize::MAX));
            let read = self.file.read_at(position, want).await?;
            // One copy out of the DMA buffer; a later issue serves fetches with
            // sendfile and keeps this path for scans only.
            self.bytes = Bytes::copy_from_slice(&read);
            self.start = position;
        }
        let from = (position - self.start) as usize;
        let to = (from + len).min(self.bytes.len());
        Ok(&self.bytes[from..to])
    }

    /// The `len` bytes at `position` if the window holds them (no read).
    pub fn held(&self, position: u64, len: usize) -> Option<&[u8]> {
        let from = usize::try_from(position.checked_sub(self.start)?).ok()?;
        self.bytes.get(from..from.checked_add(len)?)
    }

    /// Zero-copy slice of the window (after `get` covered it).
    pub fn slice(&self, position: u64, len: usize) -> Bytes {
        let from = (position - self.start) as usize;
        self.bytes.slice(from..from + len)
    }
}

/// Why a scan stopped before the end of the file.
#[derive(Debug, Clone)]
pub struct ScanStop {
    pub position: u64,
    pub reason: String,
    /// The header there is all zero bytes: space after the last batch that
    /// no batch reached (O_DIRECT padding, preallocation), not a torn one.
    pub zeroed: bool,
}

#[derive(Debug, Clone)]
pub struct ScanOutcome {
    /// End of the last valid batch.
    pub valid_bytes: u64,
    /// Offset after the last valid batch (`expected_offset` if none).
    pub next_offset: i64,
    pub batches: u64,
    pub stop: Option<ScanStop>,
}

impl ScanOutcome {
    /// Bytes after the last valid batch that held something: a torn or
    /// invalid batch and what follows it. Zero-filled space is not counted.
    pub fn torn_bytes(&self, file_bytes: u64) -> u64 {
        match &self.stop {
            Some(stop) if !stop.zeroed => file_bytes - self.valid_bytes,
            _ => 0,
        }
    }
}

/// Walks whole batches from `position` to `file_bytes`, feeding each to
/// `index`, stopping at the first batch that is torn, fails its check, or
/// whose offsets are not in `[expected_offset, offset_limit)`. Every batch is
/// fully checked (CRC32C included): scans run at recovery and index rebuilds
/// only, where reading data back is the moment to check it.
pub async fn scan(
    file: &DmaFile,
    file_bytes: u64,
    position: u64,
    expected_offset: i64,
    offset_limit: i64,
    index: &mut SegmentIndex,
    index_interval_bytes: u32,
) -> Result<ScanOutcome, StorageError> {
    let mut window = Window::new(file, file_bytes);
    scan_in(
        &mut window,
        position,
        expected_offset,
        offset_limit,
        index,
        index_interval_bytes,
    )
    .await
}

/// `scan` through a window the caller keeps, to take bytes it already
/// read (a clean open's tail block) without reading them again. The
/// window's end is the file's size.
pub async fn scan_in(
    window: &mut Window<'_>,
    mut position: u64,
    mut expected_offset: i64,
    offset_limit: i64,
    index: &mut SegmentIndex,
    index_interval_bytes: u32,
) -> Result<ScanOutcome, StorageError> {
    let segment_base = index.base_offset();
    let file_bytes = window.end;
    let mut batches = 0u64;
    let mut zeroed = false;
    let stop = loop {
        if position >= file_bytes {
            break None;
        }
        let head = window.get(position, BATCH_HEADER_BYTES, SCAN_CHUNK_BYTES).await?;
        if head.iter().all(|&b| b == 0) {
            zeroed = true;
            break Some("zero-filled space after the last batch".to_string());
        }
        if head.len() < BATCH_HEADER_BYTES {
            break Some(format!("torn header ({} bytes)", head.len()));
        }
        let total = match header_total_bytes(head) {
            Ok(total) => total,
            Err(reason) => break Some(reason),
        };
        let whole = window.get(position, total, SCAN_CHUNK_BYTES).await?;
        if whole.len() < total {
            break Some(format!("torn batch ({} of {total} bytes)", whole.len()));
        }
        let header: BatchHeader = match batch::validate(whole) {
            Ok(header) => *header,
            Err(e) => break Some(e.to_string()),
        };
        let base_offset = header.base_offset.get();
        let last_offset = header.last_offset();
        if base_offset < expected_offset
            || last_offset >= offset_limit
            || last_offset - segment_base > i64::from(u32::MAX)
        {
            break Some(format!(
                "batch offsets {base_offset}..={last_offset} outside [{expected_offset}, {offset_limit})"
            ));
        }
        index.on_batch(
            base_offset,
            position,
            total as u64,
            header.max_timestamp.get(),
            index_interval_bytes,
        );
        batches += 1;
        position += total as u64;
        expected_offset = last_offset + 1;
    };
    Ok(ScanOutcome {
        valid_bytes: position,
        next_offset: expected_offset,
        batches,
        stop: stop.map(|reason| ScanStop {
            position,
            reason,
            zeroed,
        }),
    })
}

/// Total size from a header's length field, with the cheap sanity checks a
/// scan makes before reading a possibly huge garbage length.
fn header_total_bytes(head: &[u8]) -> Result<usize, String> {
    let header = header_prefix(head)?;
    if header.magic != batch::MAGIC_V2 {
        return Err(BatchError::UnsupportedMagic(header.magic).to_string());
    }
    let length = header.batch_length.get();
    let total = i64::from(length) + BATCH_OVERHEAD_BYTES as i64;
    if length < batch::BATCH_LENGTH_MIN || total > SCAN_BATCH_BYTES_MAX as i64 {
        return Err(format!("bad batch length {length}"));
    }
    Ok(total as usize)
}

/// The header at the start of `bytes` (fields only; nothing checked).
fn header_prefix(bytes: &[u8]) -> Result<&BatchHeader, String> {
    use zerocopy::FromBytes;
    BatchHeader::ref_from_prefix(bytes)
        .map(|(header, _)| header)
        .map_err(|_| format!("torn header ({} bytes)", bytes.len()))
}

/// Loads and validates a segment's indexes from disk. Err(reason) when a file
/// is missing or invalid (the caller rebuilds and warns).
pub async fn load_indexes(
    dir: &Path,
    file: &DmaFile,
    bounds: IndexBounds,
) -> Result<Result<SegmentIndex, String>, StorageError> {
    let base_offset = bounds.base_offset;
    let offsets_path = file_path(dir, base_offset, INDEX_SUFFIX);
    let times_path = file_path(dir, base_offset, TIME_INDEX_SUFFIX);
    let Some(offsets_bytes) = read_small_file(&offsets_path).await? else {
        return Ok(Err(format!("{} missing", offsets_path.display())));
    };
    let Some(times_bytes) = read_small_file(&times_path).await? else {
        return Ok(Err(format!("{} missing", times_path.display())));
    };
    let offsets = match OffsetIndex::decode(&offsets_bytes, &bounds) {
        Ok(offsets) => offsets,
        Err(e) => return Ok(Err(format!("{}: {e}", offsets_path.display()))),
    };
    let times = match TimeIndex::decode(&times_bytes, &bounds) {
        Ok(times) => times,
        Err(e) => return Ok(Err(format!("{}: {e}", times_path.display()))),
    };
    // The entries are plausible; the last one must also point at a real batch
    // boundary holding the offset it names (catches an index of another log).
    if let Some((relative, position)) = offsets.last() {
        let mut window = Window::new(file, bounds.log_bytes);
        let head = window
            .get(u64::from(position), BATCH_HEADER_BYTES, BATCH_HEADER_BYTES)
            .await?;
        let expected = base_offset + i64::from(relative);
        let matches = head.len() == BATCH_HEADER_BYTES
            && header_total_bytes(head).is_ok()
            && header_prefix(head).is_ok_and(|h| h.base_offset.get() == expected);
        if !matches {
            return Ok(Err(format!(
                "{}: last entry ({expected} at {position}) is not a batch boundary",
                offsets_path.display()
            )));
        }
    }
    Ok(Ok(SegmentIndex::from_loaded(base_offset, offsets, times)))
}

/// Reads whole batches of one segment beginning with the batch holding
/// `offset`, scanning from `position` (an index floor). Returns None when the
/// segment has no batch at or after `offset`. Always returns at least the
/// first batch; adds following batches while the total stays <= `max_bytes`.
/// Never reads past `segment_bytes` (the logical end).
pub async fn read_batches(
    file: &DmaFile,
    segment_bytes: u64,
    position: u64,
    offset: i64,
    max_bytes: usize,
) -> Result<Option<Bytes>, StorageError> {
    let mut window = Window::new(file, segment_bytes);
    let Some((start, first_total)) = locate_batch(&mut window, position, offset, 64 << 10).await? else {
        return Ok(None);
    };
    // One read covers the answer; then cut it at the last whole batch.
    let want = first_total.max(max_bytes);
    let bytes = window.get(start, want, want).await?;
    let mut end = 0usize;
    while end < bytes.len() {
        let rest = &bytes[end..];
        if rest.len() < BATCH_HEADER_BYTES {
            break;
        }
        let (total, _) = committed_header(rest, start + end as u64)?;
        if end + total > bytes.len() || (end > 0 && end + total > max_bytes) {
            break;
        }
        end += total;
    }
    if end < first_total {
        return Err(StorageError::Corrupt(format!(
            "batch at {start} extends past the segment's {segment_bytes} bytes"
        )));
    }
    Ok(Some(window.slice(start, end)))
}

/// `(position, total bytes)` of the batch holding `offset`, scanning headers
/// from `position` (an index floor: at most ~index.interval.bytes plus one
/// batch before it), refilling the window `read_ahead` bytes at a time.
/// None when the segment has no batch at or after `offset`.
pub async fn locate_batch(
    window: &mut Window<'_>,
    mut position: u64,
    offset: i64,
    read_ahead: usize,
) -> Result<Option<(u64, usize)>, StorageError> {
    loop {
        if position >= window.end {
            return Ok(None);
        }
        let head = window.get(position, BATCH_HEADER_BYTES, read_ahead).await?;
        let (total, last_offset) = committed_header(head, position)?;
        if last_offset >= offset {
            return Ok(Some((position, total)));
        }
        position += total as u64;
    }
}

/// Header of a batch below the logical end, which an append or recovery has
/// already checked; anything else means the file changed under us.
fn committed_header(head: &[u8], position: u64) -> Result<(usize, i64), StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt(format!("batch at position {position}: {reason}"));
    let total = header_total_bytes(head).map_err(corrupt)?;
    let header = header_prefix(head).map_err(corrupt)?;
    Ok((total, header.last_offset()))
}

/// First batch with `max_timestamp >= timestamp` and `last_offset >=
/// min_offset` in one segment, scanning from `position`.
pub async fn find_by_timestamp(
    file: &DmaFile,
    segment_bytes: u64,
    mut position: u64,
    timestamp: i64,
    min_offset: i64,
) -> Result<Option<Bytes>, StorageError> {
    let mut window = Window::new(file, segment_bytes);
    while position < segment_bytes {
        let head = window.get(position, BATCH_HEADER_BYTES, SCAN_CHUNK_BYTES).await?;
        let (total, last_offset) = committed_header(head, position)?;
        let max_timestamp = header_prefix(head)
            .map_err(StorageError::Corrupt)?
            .max_timestamp
            .get();
        if max_timestamp >= timestamp && last_offset >= min_offset {
            let whole = window.get(position, total, total).await?;
            if whole.len() < total {
                return Err(StorageError::Corrupt(format!("batch at {position} is torn")));
            }
            return Ok(Some(window.slice(position, total)));
        }
        position += total as u64;
    }
    Ok(None)
}
