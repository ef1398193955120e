//! The controller quorum's log on disk, under `<data>/__cluster_metadata-0/`
//! (Kafka's directory name): raft entries and hard states appended to one
//! file (`log`), and the latest snapshot (`snapshot`: the metadata image at
//! an index, with the voters).
//!
//! Written by hand rather than with a crate: raft-rs ships only an in-memory
//! store, and what it needs here is small. Every frame is
//! `[u32 length][u32 crc32c][u8 kind][payload]`, payloads being raft-rs's own
//! protobuf messages. Hard states ride in the same file as entries so one
//! `fdatasync` per raft Ready makes both durable. Replay keeps the last hard
//! state, lets a later entry at index i replace every entry from i on (a new
//! leader overwrote an uncommitted suffix), and cuts a torn tail at the first
//! frame whose length or checksum is wrong.
//!
//! Metadata changes are rare next to produce traffic, so these writes are
//! plain blocking calls on the controller shard (a few hundred microseconds
//! each on this machine's disk), not io_uring.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, Storage};

use super::MetadataImage;
use crate::storage::durable::replace_file;

pub const METADATA_LOG_DIR: &str = "__cluster_metadata-0";
const LOG_FILE: &str = "log";
const SNAPSHOT_FILE: &str = "snapshot";
const FRAME_HEADER_BYTES: usize = 9;
/// A frame longer than this is damage, not data (snapshots of 100k
/// partitions are tens of MiB).
const FRAME_MAX_BYTES: usize = 1 << 30;

const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_SNAPSHOT: u8 = 3;

/// What raft-rs reads: the in-memory log plus the snapshot with its data
/// (MemStorage keeps only a snapshot's metadata).
#[derive(Clone)]
pub struct MetadataStore {
    mem: MemStorage,
    snapshot: Arc<Mutex<Snapshot>>,
}

impl Storage for MetadataStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    /// The latest snapshot taken here: it always covers every entry that
    /// was compacted away, which is when raft asks for one.
    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        Ok(self.snapshot.lock().expect("snapshot lock").clone())
    }
}

/// The log as found at start.
pub struct Recovered {
    /// The image of the snapshot (index 0: the bootstrap image).
    pub image: MetadataImage,
    /// Committed entries after the snapshot, to replay onto `image`.
    pub committed: Vec<Entry>,
    pub frames_cut: bool,
}

pub struct MetadataLog {
    dir: PathBuf,
    file: File,
    store: MetadataStore,
    /// Bytes appended since the last snapshot (for
    /// `metadata.log.max.record.bytes.between.snapshots`).
    bytes_since_snapshot: u64,
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(1 + payload.len());
    body.push(kind);
    body.extend_from_slice(payload);
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Splits `bytes` into (kind, payload) frames; returns them and the length
/// of the good prefix (shorter than `bytes` when the tail is torn).
fn frames(bytes: &[u8]) -> (Vec<(u8, &[u8])>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    while bytes.len() - pos >= FRAME_HEADER_BYTES {
        let len = u32::from_be_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_be_bytes(bytes[pos + 4..pos + 8].try_into().expect("4 bytes"));
        if len == 0 || len > FRAME_MAX_BYTES || bytes.len() - pos - 8 < len {
            break;
        }
        let body = &bytes[pos + 8..pos + 8 + len];
        if crc32c::crc32c(body) != crc {
            break;
        }
        out.push((body[0], &body[1..]));
        pos += 8 + len;
    }
    (out, pos)
}

fn decode_err(what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("metadata {what}: {e}"))
}

impl MetadataLog {
    /// Opens (or creates, with `bootstrap`'s image at index 0) the log under
    /// `data_dir`. `voters` are the quorum's node ids from the configuration.
    pub fn open(
        data_dir: &Path,
        voters: &[u64],
        bootstrap: impl FnOnce() -> std::io::Result<MetadataImage>,
    ) -> std::io::Result<(MetadataLog, Recovered)> {
        let dir = data_dir.join(METADATA_LOG_DIR);
        std::fs::create_dir_all(&dir)?;
        let conf_state = ConfState::from((voters.to_vec(), vec![]));
        let snapshot = match std::fs::read(dir.join(SNAPSHOT_FILE)) {
            Ok(bytes) => {
                let (found, _) = frames(&bytes);
                match found.as_slice() {
                    [(KIND_SNAPSHOT, payload)] => {
                        Snapshot::parse_from_bytes(payload).map_err(|e| decode_err("snapshot", e))?
                    }
                    _ => return Err(decode_err("snapshot", "damaged file")),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let image = bootstrap()?;
                let mut snap = Snapshot::default();
                snap.set_data(serde_json::to_vec(&image).map_err(std::io::Error::other)?.into());
                snap.mut_metadata().set_conf_state(conf_state.clone());
                replace_file(
                    &dir,
                    SNAPSHOT_FILE,
                    &frame(KIND_SNAPSHOT, &snap.write_to_bytes()?),
                )?;
                snap
            }
            Err(e) => return Err(e),
        };
        let image = snapshot_image(&snapshot)?;
        let snap_index = snapshot.get_metadata().index;

        let log_path = dir.join(LOG_FILE);
        let mut bytes = Vec::new();
        if let Ok(mut f) = File::open(&log_path) {
            f.read_to_end(&mut bytes)?;
        }
        let (found, good) = frames(&bytes);
        let frames_cut = good < bytes.len();
        let mut entries: Vec<Entry> = Vec::new();
        let mut hard_state = HardState::default();
        for (kind, payload) in found {
            match kind {
                KIND_ENTRY => {
                    let e = Entry::parse_from_bytes(payload).map_err(|e| decode_err("entry", e))?;
                    if e.index <= snap_index {
                        continue;
                    }
                    entries.retain(|kept| kept.index < e.index);
                    let expected = entries.last().map_or(snap_index + 1, |l| l.index + 1);
                    if e.index != expected {
                        return Err(decode_err(
                            "log",
                            format!("entry {} follows {}", e.index, expected - 1),
                        ));
                    }
                    entries.push(e);
                }
                KIND_HARD_STATE => {
                    hard_state =
                        HardState::parse_from_bytes(payload).map_err(|e| decode_err("hard state", e))?;
                }
                other => return Err(decode_err("log", format!("frame kind {other}"))),
            }
        }
        if frames_cut {
            tracing::warn!(
                "metadata log: cut a torn tail of {} bytes at {good}",
                bytes.len() - good
            );
            let f = OpenOptions::new().write(true).open(&log_path)?;
            f.set_len(good as u64)?;
            f.sync_all()?;
        }
        let last_index = entries.last().map_or(snap_index, |e| e.index);
        hard_state.commit = hard_state.commit.clamp(snap_index, last_index);

        let mem = MemStorage::new();
        {
            let mut core = mem.wl();
            if snap_index > 0 {
                core.apply_snapshot(snapshot.clone())
                    .map_err(std::io::Error::other)?;
            }
            // The voters come from the configuration (a static quorum, as
            // `controller.quorum.voters` is in Kafka).
            core.set_conf_state(conf_state);
            core.append(&entries).map_err(std::io::Error::other)?;
            core.set_hardstate(hard_state.clone());
        }
        let committed: Vec<Entry> = entries
            .into_iter()
            .filter(|e| e.index <= hard_state.commit)
            .collect();
        let file = OpenOptions::new().create(true).append(true).open(&log_path)?;
        let log = MetadataLog {
            dir,
            file,
            store: MetadataStore {
                mem,
                snapshot: Arc::new(Mutex::new(snapshot)),
            },
            bytes_since_snapshot: good as u64,
        };
        Ok((
            log,
            Recovered {
                image,
                committed,
                frames_cut,
            },
        ))
    }

    pub fn store(&self) -> MetadataStore {
        self.store.clone()
    }

    pub fn bytes_since_snapshot(&self) -> u64 {
        self.bytes_since_snapshot
    }

    pub fn snapshot_index(&self) -> u64 {
        self.store
            .snapshot
            .lock()
            .expect("snapshot lock")
            .get_metadata()
            .index
    }

    /// Makes `entries` and `hard_state` durable (one fdatasync), then visible to raft.
    pub fn persist(&mut self, entries: &[Entry], hard_state: Option<&HardState>) -> std::io::Result<()> {
        if entries.is_empty() && hard_state.is_none() {
            return Ok(());
        }
        let mut buf = Vec::new();
        for e in entries {
            buf.extend(frame(KIND_ENTRY, &e.write_to_bytes()?));
        }
        if let Some(hs) = hard_state {
            buf.extend(frame(KIND_HARD_STATE, &hs.write_to_bytes()?));
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.bytes_since_snapshot += buf.len() as u64;
        let mut core = self.store.mem.wl();
        if !entries.is_empty() {
            core.append(entries).map_err(std::io::Error::other)?;
        }
        if let Some(hs) = hard_state {
            core.set_hardstate(hs.clone());
        }
        Ok(())
    }

    /// Raft learned a higher commit index; it is made durable with the next hard state.
    pub fn set_commit(&mut self, commit: u64) {
        self.store.mem.wl().mut_hard_state().set_commit(commit);
    }

    /// Installs a snapshot sent by the leader: it replaces the whole log.
    pub fn install_snapshot(&mut self, snapshot: Snapshot) -> std::io::Result<()> {
        self.write_snapshot(&snapshot, &[])?;
        self.store
            .mem
            .wl()
            .apply_snapshot(snapshot.clone())
            .map_err(std::io::Error::other)?;
        *self.store.snapshot.lock().expect("snapshot lock") = snapshot;
        Ok(())
    }

    /// Snapshots `image` (applied up to `image.offset`) and drops the
    /// entries it covers, from disk and memory.
    pub fn compact(&mut self, image: &MetadataImage) -> std::io::Result<()> {
        let index = image.offset;
        assert!(index > self.snapshot_index(), "snapshots move forward");
        let mut snapshot = Snapshot::default();
        {
            let conf_state = self
                .store
                .mem
                .initial_state()
                .map_err(std::io::Error::other)?
                .conf_state;
            let meta = snapshot.mut_metadata();
            meta.index = index;
            meta.term = self.store.mem.term(index).map_err(std::io::Error::other)?;
            meta.set_conf_state(conf_state);
        }
        snapshot.set_data(serde_json::to_vec(image).map_err(std::io::Error::other)?.into());
        let last = self.store.mem.last_index().map_err(std::io::Error::other)?;
        let kept = if last > index {
            self.store
                .mem
                .entries(index + 1, last + 1, None, GetEntriesContext::empty(false))
                .map_err(std::io::Error::other)?
        } else {
            Vec::new()
        };
        self.write_snapshot(&snapshot, &kept)?;
        {
            // MemStorage's own `compact` drops entries but keeps the old
            // snapshot's index and term, so raft could no longer tell the
            // term of the compacted index (nor the first index of an empty
            // log). Installing the snapshot and putting the kept entries
            // back moves both; the hard state (commit) is kept as it was.
            let mut core = self.store.mem.wl();
            let hard_state = core.hard_state().clone();
            core.apply_snapshot(snapshot.clone())
                .map_err(std::io::Error::other)?;
            core.append(&kept).map_err(std::io::Error::other)?;
            core.set_hardstate(hard_state);
        }
        *self.store.snapshot.lock().expect("snapshot lock") = snapshot;
        Ok(())
    }

    /// Writes the snapshot file, then a new log of `kept` entries and the
    /// current hard state (each a durable replace, in that order: a crash
    /// between them leaves a log whose covered entries replay skips).
    fn write_snapshot(&mut self, snapshot: &Snapshot, kept: &[Entry]) -> std::io::Result<()> {
        replace_file(
            &self.dir,
            SNAPSHOT_FILE,
            &frame(KIND_SNAPSHOT, &snapshot.write_to_bytes()?),
        )?;
        let mut buf = Vec::new();
        for e in kept {
            buf.extend(frame(KIND_ENTRY, &e.write_to_bytes()?));
        }
        let mut hs = self.store.mem.rl().hard_state().clone();
        hs.commit = hs.commit.max(snapshot.get_metadata().index);
        buf.extend(frame(KIND_HARD_STATE, &hs.write_to_bytes()?));
        replace_file(&self.dir, LOG_FILE, &buf)?;
        self.file = OpenOptions::new().append(true).open(self.dir.join(LOG_FILE))?;
        self.bytes_since_snapshot = buf.len() as u64;
        Ok(())
    }
}

/// The image a snapshot carries.
pub fn snapshot_image(snapshot: &Snapshot) -> std::io::Result<MetadataImage> {
    let mut image: MetadataImage =
        serde_json::from_slice(snapshot.get_data()).map_err(|e| decode_err("snapshot image", e))?;
    image.reindex();
    image.offset = snapshot.get_metadata().index;
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    fn hs(term: u64, commit: u64) -> HardState {
        HardState {
            term,
            commit,
            ..Default::default()
        }
    }

    #[test]
    fn entries_survive_reopen_and_a_new_leaders_suffix_replaces_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let boot = || Ok(MetadataImage::new("c".into()));
        let (mut log, rec) = MetadataLog::open(dir.path(), &[1], boot).unwrap();
        assert!(rec.committed.is_empty());
        log.persist(
            &[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")],
            Some(&hs(1, 2)),
        )
        .unwrap();
        // A new leader (term 2) overwrote index 3.
        log.persist(&[entry(3, 2, b"C")], Some(&hs(2, 3))).unwrap();
        drop(log);
        let (log, rec) = MetadataLog::open(dir.path(), &[1], || unreachable!()).unwrap();
        let data: Vec<&[u8]> = rec.committed.iter().map(|e| e.get_data()).collect();
        assert_eq!(data, vec![&b"a"[..], b"b", b"C"]);
        assert_eq!(log.store().initial_state().unwrap().hard_state.term, 2);
    }

    #[test]
    fn a_torn_tail_is_cut_and_uncommitted_entries_are_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) =
            MetadataLog::open(dir.path(), &[1], || Ok(MetadataImage::new("c".into()))).unwrap();
        log.persist(&[entry(1, 1, b"a")], Some(&hs(1, 1))).unwrap();
        log.persist(&[entry(2, 1, b"b")], None).unwrap();
        drop(log);
        let path = dir.path().join(METADATA_LOG_DIR).join(LOG_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&[0, 0, 0, 40, 1, 2]);
        std::fs::write(&path, &bytes).unwrap();
        let (log, rec) = MetadataLog::open(dir.path(), &[1], || unreachable!()).unwrap();
        assert!(rec.frames_cut);
        assert_eq!(rec.committed.len(), 1, "entry 2 was never committed");
        assert_eq!(log.store().last_index().unwrap(), 2);
    }

    #[test]
    fn compaction_keeps_the_image_and_later_entries() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) =
            MetadataLog::open(dir.path(), &[1], || Ok(MetadataImage::new("c".into()))).unwrap();
        log.persist(
            &[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")],
            Some(&hs(1, 3)),
        )
        .unwrap();
        let mut image = MetadataImage::new("c".into());
        image.offset = 2;
        image.epoch = 7;
        log.compact(&image).unwrap();
        assert_eq!(log.store().first_index().unwrap(), 3);
        assert_eq!(
            log.store().term(2).unwrap(),
            1,
            "the compacted index keeps its term"
        );
        assert_eq!(log.store().last_index().unwrap(), 3);
        assert_eq!(log.store().initial_state().unwrap().hard_state.commit, 3);
        let snap = log.store().snapshot(0, 2).unwrap();
        assert_eq!(snapshot_image(&snap).unwrap().epoch, 7);
        drop(log);
        let (log, rec) = MetadataLog::open(dir.path(), &[1], || unreachable!()).unwrap();
        assert_eq!(rec.image.epoch, 7);
        assert_eq!(rec.committed.len(), 1);
        assert_eq!(rec.committed[0].get_data(), b"c");
        assert_eq!(log.snapshot_index(), 2);
    }
}
