//! Per-shard LRU of open segment files, so an idle partition holds no file
//! descriptor.
//!
//! - **Lives on:** every shard, one per shard (`Rc<FileCache>`, `!Send`),
//!   built by `Shard::new` from `log.fd.cache.size`; touched only by that
//!   shard's executor. Shared by all of the shard's `Log`s.
//! - **Called by:** `Log` on every write, read, roll and close; `Log::close`
//!   and `Log::delete` call `forget(dir)`, retention calls `remove(path)`.
//!
//! Files unused for `log.fd.idle.ms` are closed by the shard's timer
//! (`expire_idle`), so partitions that went idle release their descriptors
//! even when the cache is not full.
//!
//! Bound: at most `capacity` files stay open, plus at most `capacity`
//! buffered fds of zero-copy fetch slices (`slice_permit`; see
//! `storage::records`). A file is "in use" while some
//! caller holds its `Rc` (a write, read or scan in flight); in-use files are
//! never evicted, so when every cached file is in use a miss goes over
//! capacity instead of failing (counted in `FileCacheStats::over_capacity`,
//! warned once). The excess is bounded by the operations in flight on the
//! shard (each holds one file at a time; a fetch runs at most `capacity`
//! reads at once) and is trimmed after every produce and fetch (`trim`).
//!
//! Back of envelope: 256 files per shard (the default) is 256 fds per core;
//! an entry costs the path (~60 bytes), the glommio file (~150 bytes) and two
//! map slots, so ~100 KiB per shard at the default. An evicted file costs one
//! `open` (~10 us) when next touched; closes run as detached tasks so no
//! caller waits for one.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::DmaFile;

use super::error::StorageError;
use super::records::{SliceBudget, SlicePermit};
use super::segment::{open_existing, open_for_write};

/// How a cached file was opened. A `ReadWrite` file also serves reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileMode {
    /// O_DIRECT, read only; the file must exist.
    Read,
    /// O_DIRECT, read and write, created if missing (the active segment).
    ReadWrite,
}

impl FileMode {
    fn serves(self, wanted: FileMode) -> bool {
        self == wanted || self == FileMode::ReadWrite
    }
}

/// Counters since the cache was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileCacheStats {
    pub hits: u64,
    pub misses: u64,
    /// Files closed to make room (not counting `forget`/`remove`).
    pub evictions: u64,
    /// Misses that left more than `capacity` files open because every cached
    /// file was in use.
    pub over_capacity: u64,
}

struct Entry {
    file: Rc<DmaFile>,
    mode: FileMode,
    /// Key of this entry in `Inner::lru`.
    last_used: u64,
    /// Wall clock of the last use, for `expire_idle`.
    used_at_ms: i64,
}

struct Inner {
    /// By segment file path. Holds `capacity` entries, more only while every
    /// entry is in use (see the module doc).
    entries: HashMap<PathBuf, Entry>,
    /// Directory -> the paths in `entries` under it, so `forget` (called by
    /// every log open) costs nothing for a directory with no cached file
    /// instead of a scan of every entry: 100,000 opens times a full cache
    /// of path comparisons were a tenth of a 100,000-partition start.
    by_dir: HashMap<PathBuf, Vec<PathBuf>>,
    /// `last_used` -> path: the same entries, least recently used first.
    lru: BTreeMap<u64, PathBuf>,
    next_tick: u64,
    stats: FileCacheStats,
    warned_over_capacity: bool,
}

/// Per-shard LRU of open segment `.log` files. See the module doc.
pub struct FileCache {
    capacity: usize,
    inner: RefCell<Inner>,
    /// The buffered fds of zero-copy fetch slices, bounded by `capacity`
    /// too (see `storage::records`): the shard's fds stay at most twice
    /// `log.fd.cache.size`, whatever the partition count.
    slices: SliceBudget,
}

impl FileCache {
    /// A cache keeping at most `capacity` (at least 1) files open.
    pub fn new(capacity: usize) -> Rc<FileCache> {
        Rc::new(FileCache {
            capacity: capacity.max(1),
            slices: SliceBudget::new(capacity.max(1)),
            inner: RefCell::new(Inner {
                entries: HashMap::new(),
                by_dir: HashMap::new(),
                lru: BTreeMap::new(),
                next_tick: 0,
                stats: FileCacheStats::default(),
                warned_over_capacity: false,
            }),
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Files the cache holds open now.
    pub fn open_files(&self) -> usize {
        self.inner.borrow().entries.len()
    }

    /// A permit for one zero-copy slice fd, or None when `capacity` are
    /// open (the read then copies).
    pub fn slice_permit(&self) -> Option<SlicePermit> {
        self.slices.try_take()
    }

    /// Zero-copy slice fds open now.
    pub fn open_slices(&self) -> usize {
        self.slices.open()
    }

    pub fn stats(&self) -> FileCacheStats {
        self.inner.borrow().stats
    }

    /// The open file at `path`, opening it (and closing the least recently
    /// used file not in use, if the cache is full) on a miss. A missing file
    /// in `Read` mode is `StorageError::Io(NotFound)`.
    ///
    /// The caller should drop the returned `Rc` when its I/O is done: while
    /// held, the file counts as in use and cannot be evicted.
    pub async fn get(&self, path: &Path, mode: FileMode) -> Result<Rc<DmaFile>, StorageError> {
        if let Some(file) = self.lookup(path, mode) {
            return Ok(file);
        }
        let opened = Rc::new(open(path, mode).await?);
        let mut inner = self.inner.borrow_mut();
        inner.stats.misses += 1;
        if let Some(existing) = inner.entries.get(path) {
            if existing.mode.serves(mode) {
                // Another caller opened it while we did: keep theirs.
                let file = existing.file.clone();
                touch(&mut inner, path);
                drop(inner);
                close_detached(opened);
                return Ok(file);
            }
        }
        if let Some(replaced) = take(&mut inner, path) {
            // A read-only file where a writer is now wanted.
            close_detached(replaced);
        }
        let evicted = self.make_room(&mut inner);
        let tick = next_tick(&mut inner);
        inner.lru.insert(tick, path.to_path_buf());
        if let Some(dir) = path.parent() {
            inner
                .by_dir
                .entry(dir.to_path_buf())
                .or_default()
                .push(path.to_path_buf());
        }
        inner.entries.insert(
            path.to_path_buf(),
            Entry {
                file: opened.clone(),
                mode,
                last_used: tick,
                used_at_ms: crate::clock::now_ms(),
            },
        );
        drop(inner);
        for file in evicted {
            close_detached(file);
        }
        Ok(opened)
    }

    /// Closes and drops the cached file at `path` (a deleted segment).
    /// A caller still holding it keeps it until it drops its `Rc`.
    pub fn remove(&self, path: &Path) {
        let removed = take(&mut self.inner.borrow_mut(), path);
        if let Some(file) = removed {
            close_detached(file);
        }
    }

    /// Closes and drops every cached file in `dir` (a closed or deleted log).
    /// O(files cached for `dir`).
    pub fn forget(&self, dir: &Path) {
        let removed: Vec<Rc<DmaFile>> = {
            let mut inner = self.inner.borrow_mut();
            let paths = inner.by_dir.remove(dir).unwrap_or_default();
            paths.iter().filter_map(|p| take(&mut inner, p)).collect()
        };
        for file in removed {
            close_detached(file);
        }
    }

    /// Closes the files not used for `idle_ms` (`log.fd.idle.ms`) and not in
    /// use now, so a partition that went idle holds no descriptor even while
    /// the cache has room. Walks from the least recently used and stops at
    /// the first recent one: O(files closed + files in use).
    pub fn expire_idle(&self, idle_ms: u64) -> usize {
        let cutoff_ms = crate::clock::now_ms().saturating_sub(i64::try_from(idle_ms).unwrap_or(i64::MAX));
        let expired: Vec<Rc<DmaFile>> = {
            let mut inner = self.inner.borrow_mut();
            let entries = &inner.entries;
            let mut idle = Vec::new();
            for path in inner.lru.values() {
                let Some(entry) = entries.get(path) else {
                    continue;
                };
                if entry.used_at_ms > cutoff_ms {
                    break;
                }
                if Rc::strong_count(&entry.file) == 1 {
                    idle.push(path.clone());
                }
            }
            idle.iter().filter_map(|p| take(&mut inner, p)).collect()
        };
        let mut closed = expired.len();
        for file in expired {
            close_detached(file);
        }
        closed += self.trim();
        closed
    }

    /// Closes least recently used files not in use while the cache holds
    /// more than `capacity` (left over from a burst of in-use files, which
    /// only later misses trimmed: after one fetch over thousands of
    /// partitions the shard kept thousands of fds). O(files closed) when over,
    /// O(1) otherwise; called after every produce and fetch and by the idle
    /// timer.
    pub fn trim(&self) -> usize {
        let trimmed = {
            let mut inner = self.inner.borrow_mut();
            let excess = inner.entries.len().saturating_sub(self.capacity);
            take_lru_unused(&mut inner, excess)
        };
        let count = trimmed.len();
        for file in trimmed {
            close_detached(file);
        }
        count
    }

    fn lookup(&self, path: &Path, mode: FileMode) -> Option<Rc<DmaFile>> {
        let mut inner = self.inner.borrow_mut();
        let entry = inner.entries.get(path)?;
        if !entry.mode.serves(mode) {
            return None;
        }
        let file = entry.file.clone();
        inner.stats.hits += 1;
        touch(&mut inner, path);
        Some(file)
    }

    /// Takes least recently used files not in use out of the cache until one
    /// more fits; the caller closes them. Goes over capacity (and says so
    /// once) when every file is in use.
    fn make_room(&self, inner: &mut Inner) -> Vec<Rc<DmaFile>> {
        let needed = (inner.entries.len() + 1).saturating_sub(self.capacity);
        let evicted = take_lru_unused(inner, needed);
        if evicted.len() < needed {
            inner.stats.over_capacity += 1;
            if !std::mem::replace(&mut inner.warned_over_capacity, true) {
                tracing::warn!(
                    capacity = self.capacity,
                    open = inner.entries.len() + 1,
                    "every cached segment file is in use: going over log.fd.cache.size \
                     (warned once; raise log.fd.cache.size if this persists)"
                );
            }
        }
        evicted
    }
}

/// Takes up to `count` files not in use out of the cache, least recently
/// used first, counting them as evictions; the caller closes them. One walk
/// of the LRU order.
fn take_lru_unused(inner: &mut Inner, count: usize) -> Vec<Rc<DmaFile>> {
    if count == 0 {
        return Vec::new();
    }
    let entries = &inner.entries;
    let victims: Vec<PathBuf> = inner
        .lru
        .values()
        .filter(|p| entries.get(*p).is_some_and(|e| Rc::strong_count(&e.file) == 1))
        .take(count)
        .cloned()
        .collect();
    let taken: Vec<Rc<DmaFile>> = victims.iter().filter_map(|p| take(inner, p)).collect();
    inner.stats.evictions += taken.len() as u64;
    taken
}

fn next_tick(inner: &mut Inner) -> u64 {
    let tick = inner.next_tick;
    inner.next_tick += 1;
    tick
}

fn touch(inner: &mut Inner, path: &Path) {
    let tick = next_tick(inner);
    let Some(entry) = inner.entries.get_mut(path) else {
        return;
    };
    entry.used_at_ms = crate::clock::now_ms();
    let old = std::mem::replace(&mut entry.last_used, tick);
    if let Some(key) = inner.lru.remove(&old) {
        inner.lru.insert(tick, key);
    }
}

fn take(inner: &mut Inner, path: &Path) -> Option<Rc<DmaFile>> {
    let entry = inner.entries.remove(path)?;
    inner.lru.remove(&entry.last_used);
    if let Some(dir) = path.parent() {
        if let Some(paths) = inner.by_dir.get_mut(dir) {
            paths.retain(|p| p != path);
            if paths.is_empty() {
                inner.by_dir.remove(dir);
            }
        }
    }
    Some(entry.file)
}

async fn open(path: &Path, mode: FileMode) -> Result<DmaFile, StorageError> {
    match mode {
        FileMode::ReadWrite => open_for_write(path).await,
        FileMode::Read => open_existing(path).await,
    }
}

/// Closes a file without making anyone wait: a detached task closes it now
/// if the cache held the last handle; otherwise the last holder's drop closes
/// it (glommio closes dropped files on its next I/O cycle).
fn close_detached(file: Rc<DmaFile>) {
    glommio::spawn_local(async move {
        if let Err(e) = file.close_rc().await {
            tracing::debug!(error = %e, "closing segment file");
        }
    })
    .detach();
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    use crate::test_executor::run;

    /// A temp dir on a device whose iopoll probe is primed (see
    /// `segment::prime_iopoll_probe`), so DmaFile opens there work.
    async fn primed_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        super::super::segment::prime_iopoll_probe(dir.path())
            .await
            .expect("prime");
        dir
    }

    fn make_files(dir: &Path, count: usize) -> Vec<PathBuf> {
        (0..count)
            .map(|i| {
                let path = dir.join(format!("{i:020}.log"));
                std::fs::write(&path, [1u8; 4096]).expect("write file");
                path
            })
            .collect()
    }

    #[test]
    fn evicts_the_least_recently_used_file_not_in_use() {
        run(|| async {
            let dir = primed_dir().await;
            let paths = make_files(dir.path(), 4);
            let cache = FileCache::new(2);
            let held = cache.get(&paths[0], FileMode::Read).await.expect("get 0");
            drop(cache.get(&paths[1], FileMode::Read).await.expect("get 1"));
            // Full: 1 is the LRU file not in use (0 is older but held).
            drop(cache.get(&paths[2], FileMode::Read).await.expect("get 2"));
            assert_eq!(cache.open_files(), 2);
            assert_eq!(cache.stats().evictions, 1);
            let again = cache.get(&paths[0], FileMode::Read).await.expect("get 0 again");
            assert!(Rc::ptr_eq(&held, &again), "a held file stays cached");
            assert_eq!(cache.stats().hits, 1);
            // A read+write request replaces a read-only entry; a read is
            // served by a read+write entry.
            drop((held, again));
            let writable = cache.get(&paths[2], FileMode::ReadWrite).await.expect("rw");
            let read = cache.get(&paths[2], FileMode::Read).await.expect("read");
            assert!(Rc::ptr_eq(&writable, &read));
            assert!(cache.open_files() <= 2);
        });
    }

    #[test]
    fn goes_over_capacity_only_while_every_file_is_in_use() {
        run(|| async {
            let dir = primed_dir().await;
            let paths = make_files(dir.path(), 3);
            let cache = FileCache::new(1);
            let first = cache.get(&paths[0], FileMode::Read).await.expect("get 0");
            let second = cache.get(&paths[1], FileMode::Read).await.expect("get 1");
            assert_eq!(cache.open_files(), 2);
            assert_eq!(cache.stats().over_capacity, 1);
            drop((first, second));
            drop(cache.get(&paths[2], FileMode::Read).await.expect("get 2"));
            assert_eq!(cache.open_files(), 1, "the next miss trims back to capacity");
            let missing = cache.get(&dir.path().join("missing.log"), FileMode::Read).await;
            assert!(missing.is_err_and(|e| e.is_not_found()));
            cache.forget(dir.path());
            assert_eq!(cache.open_files(), 0);
            glommio::timer::sleep(Duration::from_millis(5)).await;
        });
    }

    #[test]
    fn trim_closes_what_a_burst_left_over_capacity_once_released() {
        run(|| async {
            let dir = primed_dir().await;
            let paths = make_files(dir.path(), 4);
            let cache = FileCache::new(2);
            let mut held = Vec::new();
            for path in &paths {
                held.push(cache.get(path, FileMode::Read).await.expect("get"));
            }
            assert_eq!(cache.open_files(), 4, "all in use: over capacity");
            assert_eq!(cache.trim(), 0, "nothing to close while in use");
            let newest = held.pop();
            drop(held);
            assert_eq!(cache.trim(), 2);
            assert_eq!(cache.open_files(), 2);
            assert_eq!(cache.trim(), 0);
            let hits = cache.stats().hits;
            drop(cache.get(&paths[3], FileMode::Read).await.expect("get 3"));
            assert_eq!(cache.stats().hits, hits + 1, "the most recent file stayed");
            drop(newest);
            glommio::timer::sleep(Duration::from_millis(5)).await;
        });
    }

    #[test]
    fn forget_closes_only_the_files_of_its_directory() {
        run(|| async {
            let (a, b) = (primed_dir().await, tempfile::tempdir().expect("tempdir"));
            let (in_a, in_b) = (make_files(a.path(), 3), make_files(b.path(), 2));
            // Capacity 3: the fifth file evicts the two oldest (both in `a`),
            // which must leave `a`'s index too.
            let cache = FileCache::new(3);
            for path in in_a.iter().chain(&in_b) {
                drop(cache.get(path, FileMode::Read).await.expect("get"));
            }
            assert_eq!(cache.open_files(), 3);
            assert_eq!(cache.inner.borrow().by_dir.get(a.path()).map(Vec::len), Some(1));
            cache.forget(a.path());
            assert_eq!(cache.open_files(), 2, "b's files stay");
            assert!(!cache.inner.borrow().by_dir.contains_key(a.path()));
            cache.forget(a.path());
            assert_eq!(cache.open_files(), 2);
            let hits = cache.stats().hits;
            drop(cache.get(&in_b[1], FileMode::Read).await.expect("get b"));
            assert_eq!(cache.stats().hits, hits + 1, "b's files are still cached");
            cache.forget(b.path());
            assert_eq!(cache.open_files(), 0);
            assert!(cache.inner.borrow().by_dir.is_empty());
            glommio::timer::sleep(Duration::from_millis(5)).await;
        });
    }

    #[test]
    fn closes_files_idle_for_the_limit_but_not_those_in_use_or_recent() {
        run(|| async {
            let dir = primed_dir().await;
            let paths = make_files(dir.path(), 3);
            let cache = FileCache::new(16);
            let held = cache.get(&paths[0], FileMode::Read).await.expect("get 0");
            drop(cache.get(&paths[1], FileMode::Read).await.expect("get 1"));
            glommio::timer::sleep(std::time::Duration::from_millis(30)).await;
            drop(cache.get(&paths[2], FileMode::Read).await.expect("get 2"));
            // 0 and 1 are idle past 20 ms, but 0 is in use; 2 is recent.
            assert_eq!(cache.expire_idle(20), 1);
            assert_eq!(cache.open_files(), 2);
            drop(held);
            assert_eq!(cache.expire_idle(20), 1, "0 once released");
            assert_eq!(cache.expire_idle(60_000), 0);
            assert_eq!(cache.open_files(), 1);
            // A closed file reopens on its next use.
            drop(cache.get(&paths[0], FileMode::Read).await.expect("get 0 again"));
            assert_eq!(cache.open_files(), 2);
        });
    }
}
