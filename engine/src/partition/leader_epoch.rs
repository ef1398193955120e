//! The leader-epoch checkpoint: which leader epoch started at which offset,
//! in Kafka's `leader-epoch-checkpoint` text format (version line, count
//! line, then `epoch start_offset` lines). OffsetForLeaderEpoch answers from
//! it, so a consumer or follower can detect a diverged log.

use std::path::{Path, PathBuf};

pub const CHECKPOINT_FILE: &str = "leader-epoch-checkpoint";
const FORMAT_VERSION: u32 = 0;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderEpochCache {
    /// (epoch, start offset), both strictly increasing.
    entries: Vec<(i32, i64)>,
    /// An entry added by `assign_unsaved` is not in the file yet.
    unsaved: bool,
}

impl LeaderEpochCache {
    /// Parses the file; an unreadable or malformed file yields None (rebuilt by the caller).
    fn parse(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        let version: u32 = lines.next()?.trim().parse().ok()?;
        if version != FORMAT_VERSION {
            return None;
        }
        let count: usize = lines.next()?.trim().parse().ok()?;
        let mut entries = Vec::with_capacity(count.min(1024));
        for line in lines.take(count) {
            let (epoch, offset) = line.trim().split_once(' ')?;
            let entry = (epoch.parse().ok()?, offset.trim().parse().ok()?);
            if entries
                .last()
                .is_some_and(|last: &(i32, i64)| entry.0 <= last.0 || entry.1 < last.1)
            {
                return None;
            }
            entries.push(entry);
        }
        (entries.len() == count).then_some(LeaderEpochCache {
            entries,
            unsaved: false,
        })
    }

    fn render(&self) -> String {
        let mut out = format!("{FORMAT_VERSION}\n{}\n", self.entries.len());
        for (epoch, offset) in &self.entries {
            out.push_str(&format!("{epoch} {offset}\n"));
        }
        out
    }

    fn path(dir: &Path) -> PathBuf {
        dir.join(CHECKPOINT_FILE)
    }

    /// The checkpoint from the file's bytes (read by the log's open, see
    /// `Log::open_reading`): empty when malformed, then rebuilt.
    pub fn from_bytes(dir: &Path, bytes: &[u8]) -> Self {
        Self::parse(&String::from_utf8_lossy(bytes)).unwrap_or_else(|| {
            tracing::warn!(dir = %dir.display(), "malformed {CHECKPOINT_FILE}; starting it again");
            LeaderEpochCache::default()
        })
    }

    /// Loads the checkpoint (empty when there is none, or when it is
    /// malformed: then rebuilt from the epochs appended from now on).
    pub fn load(dir: &Path) -> std::io::Result<Self> {
        match crate::storage::read_small_file(&Self::path(dir)) {
            Ok(bytes) => Ok(Self::from_bytes(dir, &bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LeaderEpochCache::default()),
            Err(e) => Err(e),
        }
    }

    /// Records that `epoch` starts at `start_offset` when it is newer than
    /// every epoch known (a leader taking over, or a follower appending the
    /// first batch of a new epoch). Rare and small: written with a temp file
    /// and rename on the shard thread.
    pub fn assign(&mut self, dir: &Path, epoch: i32, start_offset: i64) -> std::io::Result<bool> {
        if !self.assign_unsaved(epoch, start_offset) {
            return Ok(false);
        }
        self.store(dir)?;
        Ok(true)
    }

    /// `assign` without writing the file: for a leader taking over an
    /// empty log, where no record carries the epoch yet. The first append
    /// writes it first (`store_if_unsaved`); a crash before that loses an
    /// epoch that no record has, which is harmless. Creating thousands of
    /// partitions then costs no file write each.
    pub fn assign_unsaved(&mut self, epoch: i32, start_offset: i64) -> bool {
        if epoch < 0 || self.latest_epoch().is_some_and(|latest| latest >= epoch) {
            return false;
        }
        assert!(
            self.entries
                .last()
                .is_none_or(|(_, start)| *start <= start_offset),
            "epoch start offsets only increase"
        );
        self.entries.push((epoch, start_offset));
        self.unsaved = true;
        true
    }

    /// Writes the file if an entry was added without it.
    pub fn store_if_unsaved(&mut self, dir: &Path) -> std::io::Result<()> {
        if self.unsaved {
            self.store(dir)?;
        }
        Ok(())
    }

    /// Forgets the epochs that start at or past `end_offset`: the log was
    /// truncated there (Kafka's `truncateFromEnd`).
    pub fn truncate_from_end(&mut self, dir: &Path, end_offset: i64) -> std::io::Result<()> {
        let before = self.entries.len();
        self.entries.retain(|(_, start)| *start < end_offset);
        if self.entries.len() != before {
            self.store(dir)?;
        }
        Ok(())
    }

    pub fn entries(&self) -> &[(i32, i64)] {
        &self.entries
    }

    fn store(&mut self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(format!("{CHECKPOINT_FILE}.tmp"));
        std::fs::write(&tmp, self.render())?;
        std::fs::rename(&tmp, Self::path(dir))?;
        self.unsaved = false;
        Ok(())
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|(e, _)| *e)
    }

    /// Kafka's answer to OffsetForLeaderEpoch: the largest epoch <= `requested`
    /// and the offset where the next epoch began (the log end offset for the
    /// latest epoch); (-1, -1) when `requested` predates every known epoch.
    pub fn end_offset_for(&self, requested: i32, log_end_offset: i64) -> (i32, i64) {
        match self.entries.iter().rposition(|(e, _)| *e <= requested) {
            None => (-1, -1),
            Some(i) => {
                let end = self
                    .entries
                    .get(i + 1)
                    .map_or(log_end_offset, |(_, start)| *start);
                (self.entries[i].0, end)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips_in_kafka_text_format() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = LeaderEpochCache::load(dir.path()).unwrap();
        assert!(cache.assign(dir.path(), 0, 0).unwrap());
        let text = std::fs::read_to_string(dir.path().join(CHECKPOINT_FILE)).unwrap();
        assert_eq!(text, "0\n1\n0 0\n");
        assert!(!cache.assign(dir.path(), 0, 500).unwrap(), "an epoch starts once");
        assert!(cache.assign(dir.path(), 2, 700).unwrap());
        assert!(cache.assign(dir.path(), 4, 900).unwrap());
        cache.truncate_from_end(dir.path(), 900).unwrap();
        let again = LeaderEpochCache::load(dir.path()).unwrap();
        assert_eq!(again, cache);
        assert_eq!(again.entries, vec![(0, 0), (2, 700)]);
    }

    #[test]
    fn an_unsaved_epoch_is_written_by_the_next_store() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = LeaderEpochCache::load(dir.path()).unwrap();
        assert!(cache.assign_unsaved(3, 0));
        assert!(!dir.path().join(CHECKPOINT_FILE).exists(), "not written yet");
        assert_eq!(cache.end_offset_for(3, 0), (3, 0), "answered from memory");
        cache.store_if_unsaved(dir.path()).unwrap();
        assert_eq!(LeaderEpochCache::load(dir.path()).unwrap().entries, vec![(3, 0)]);
        assert!(!cache.assign_unsaved(3, 10), "an epoch starts once");
    }

    #[test]
    fn end_offset_for_epoch_follows_kafka() {
        let cache = LeaderEpochCache {
            entries: vec![(1, 10), (3, 50)],
            unsaved: false,
        };
        assert_eq!(cache.end_offset_for(0, 90), (-1, -1));
        assert_eq!(cache.end_offset_for(1, 90), (1, 50));
        assert_eq!(cache.end_offset_for(2, 90), (1, 50));
        assert_eq!(cache.end_offset_for(3, 90), (3, 90));
        assert_eq!(cache.end_offset_for(7, 90), (3, 90));
    }

    #[test]
    fn a_checkpoint_longer_than_the_first_read_loads_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = LeaderEpochCache::default();
        for epoch in 0..1500 {
            cache.assign_unsaved(epoch, i64::from(epoch) * 1_000_000);
        }
        cache.store_if_unsaved(dir.path()).unwrap();
        let file_bytes = std::fs::metadata(dir.path().join(CHECKPOINT_FILE)).unwrap().len();
        assert!(file_bytes > 4 * 4096, "spans several reads: {file_bytes} bytes");
        assert_eq!(LeaderEpochCache::load(dir.path()).unwrap().entries, cache.entries);
    }

    #[test]
    fn a_checkpoint_that_is_not_text_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CHECKPOINT_FILE), [0xff, 0xfe, b'\n', 0x80]).unwrap();
        assert!(LeaderEpochCache::load(dir.path()).unwrap().entries.is_empty());
    }

    #[test]
    fn malformed_checkpoint_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CHECKPOINT_FILE), "0\n3\n5 1\n").unwrap();
        let mut cache = LeaderEpochCache::load(dir.path()).unwrap();
        assert!(cache.entries.is_empty());
        cache.assign(dir.path(), 0, 42).unwrap();
        assert_eq!(cache.entries, vec![(0, 42)]);
    }
}
