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
        (entries.len() == count).then_some(LeaderEpochCache { entries })
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

    /// Loads the checkpoint and makes sure it records `epoch` starting no
    /// later than `log_end_offset`. Startup and partition creation only: a
    /// small file, written with a temp file and rename.
    pub fn load_or_init(dir: &Path, epoch: i32, log_end_offset: i64) -> std::io::Result<Self> {
        let mut cache = match std::fs::read_to_string(Self::path(dir)) {
            Ok(text) => Self::parse(&text).unwrap_or_else(|| {
                tracing::warn!(dir = %dir.display(), "malformed {CHECKPOINT_FILE}; starting it again");
                LeaderEpochCache::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => LeaderEpochCache::default(),
            Err(e) => return Err(e),
        };
        if cache.latest_epoch().is_none_or(|latest| latest < epoch) {
            cache.entries.push((epoch, log_end_offset));
            let tmp = dir.join(format!("{CHECKPOINT_FILE}.tmp"));
            std::fs::write(&tmp, cache.render())?;
            std::fs::rename(&tmp, Self::path(dir))?;
        }
        Ok(cache)
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
        let cache = LeaderEpochCache::load_or_init(dir.path(), 0, 0).unwrap();
        let text = std::fs::read_to_string(dir.path().join(CHECKPOINT_FILE)).unwrap();
        assert_eq!(text, "0\n1\n0 0\n");
        let again = LeaderEpochCache::load_or_init(dir.path(), 0, 500).unwrap();
        assert_eq!(again, cache);
        let bumped = LeaderEpochCache::load_or_init(dir.path(), 2, 700).unwrap();
        assert_eq!(bumped.entries, vec![(0, 0), (2, 700)]);
    }

    #[test]
    fn end_offset_for_epoch_follows_kafka() {
        let cache = LeaderEpochCache {
            entries: vec![(1, 10), (3, 50)],
        };
        assert_eq!(cache.end_offset_for(0, 90), (-1, -1));
        assert_eq!(cache.end_offset_for(1, 90), (1, 50));
        assert_eq!(cache.end_offset_for(2, 90), (1, 50));
        assert_eq!(cache.end_offset_for(3, 90), (3, 90));
        assert_eq!(cache.end_offset_for(7, 90), (3, 90));
    }

    #[test]
    fn malformed_checkpoint_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CHECKPOINT_FILE), "0\n3\n5 1\n").unwrap();
        let cache = LeaderEpochCache::load_or_init(dir.path(), 0, 42).unwrap();
        assert_eq!(cache.entries, vec![(0, 42)]);
    }
}
