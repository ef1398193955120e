//! What a read hands the fetch path: record bytes in memory (tail cache, or a
//! copying O_DIRECT read), or a range of a segment file that the connection
//! sends with `sendfile(2)` so the bytes never pass through user space.
//!
//! - **Lives on:** made on the shard that owns the partition (`Log::read_records`),
//!   carried across shards inside a fetch reply (it is `Send`), consumed by
//!   the connection that answers the fetch (`protocol::zero_copy`).
//! - **Why a second, buffered fd:** segment files are open with O_DIRECT for
//!   the writer and for scans; `sendfile` needs the page cache, so the slice
//!   reopens the very inode the read validated through `/proc/self/fd/N`
//!   (this survives a concurrent retention delete, which would fail a path
//!   open) without O_DIRECT. The fd is the slice's own and closes when the
//!   last clone drops, after the send: an idle partition still holds no fd.
//! - **Bound:** each slice's fd takes a permit from its shard's
//!   `SliceBudget` (`log.fd.cache.size` permits, see `FileCache`); with none
//!   left the read copies instead. One fetch across thousands of partitions
//!   otherwise held one fd per partition until sent: 8,619 fds at 100,000
//!   partitions.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

/// How many slice fds a shard may hold open at once (`log.fd.cache.size`).
/// Shared with the blocking pool that sends them, so atomic.
#[derive(Debug)]
pub struct SliceBudget {
    open: Arc<AtomicUsize>,
    max: usize,
}

impl SliceBudget {
    pub fn new(max: usize) -> SliceBudget {
        SliceBudget {
            open: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// A permit for one more fd, or None when `max` are open.
    pub fn try_take(&self) -> Option<SlicePermit> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        taken.then(|| SlicePermit(self.open.clone()))
    }

    /// Slice fds open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// One slice fd's share of a `SliceBudget`, returned on drop.
#[derive(Debug)]
pub struct SlicePermit(Arc<AtomicUsize>);

impl Drop for SlicePermit {
    fn drop(&mut self) {
        let before = self.0.fetch_sub(1, Ordering::AcqRel);
        assert!(before > 0, "slice budget went below zero");
    }
}

#[derive(Debug)]
struct SliceFile {
    file: File,
    /// Dropped with the file, after the fd closes.
    _permit: Option<SlicePermit>,
}

/// A byte range of one segment file, whole batches only.
#[derive(Clone, Debug)]
pub struct FileSlice {
    file: Arc<SliceFile>,
    position: u64,
    len: usize,
}

impl FileSlice {
    /// Reopens the file behind `fd` for buffered reads of `[position,
    /// position + len)`. A blocking `open(2)` of a procfs link: no disk I/O,
    /// a few microseconds. `permit`: the fd's share of its shard's budget,
    /// held until the last clone drops.
    pub fn reopen(
        fd: RawFd,
        position: u64,
        len: usize,
        permit: Option<SlicePermit>,
    ) -> io::Result<FileSlice> {
        let file = File::open(format!("/proc/self/fd/{fd}"))?;
        Ok(FileSlice {
            file: Arc::new(SliceFile {
                file,
                _permit: permit,
            }),
            position,
            len,
        })
    }

    pub fn position(&self) -> u64 {
        self.position
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.file.as_raw_fd()
    }

    /// Copies the range into memory. Blocking buffered read: for tests and
    /// tools only, never on a shard's hot path.
    pub fn read_to_bytes(&self) -> io::Result<Bytes> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; self.len];
        self.file.file.read_exact_at(&mut buf, self.position)?;
        Ok(Bytes::from(buf))
    }
}

/// Record bytes of one partition in a fetch answer.
#[derive(Clone, Debug)]
pub enum Records {
    Memory(Bytes),
    File(FileSlice),
}

impl Default for Records {
    fn default() -> Self {
        Records::Memory(Bytes::new())
    }
}

impl Records {
    pub fn len(&self) -> usize {
        match self {
            Records::Memory(b) => b.len(),
            Records::File(f) => f.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_file(&self) -> bool {
        matches!(self, Records::File(_))
    }

    /// The bytes themselves; a file slice is read (blocking): tests only.
    pub fn to_bytes(&self) -> io::Result<Bytes> {
        match self {
            Records::Memory(b) => Ok(b.clone()),
            Records::File(f) => f.read_to_bytes(),
        }
    }
}
