//! The high-watermark checkpoint (Kafka's `replication-offset-checkpoint`):
//! each shard writes the high watermark of every replica it holds, so a
//! restarted replica (or a whole cluster started again) does not answer
//! consumers from a watermark below what they already saw.
//!
//! One file per shard, `replication-offset-checkpoint.<shard>` in the data
//! dir, in Kafka's text format (version line, count line, then
//! `topic partition offset` lines), written with a temp file and rename every
//! `replica.high.watermark.checkpoint.interval.ms` when something moved, and
//! at clean shutdown. Read once at start: a partition may land on another
//! shard after a restart, so every shard's file is read and the highest
//! value per partition wins.

use std::path::Path;

use crate::storage::offset_checkpoint::{parse, render};

pub const FILE_PREFIX: &str = "replication-offset-checkpoint";
pub type Watermarks = crate::storage::offset_checkpoint::Offsets;

/// Every shard's checkpoint in `data_dir`, merged (highest wins). An
/// unreadable file is skipped with one warning: the watermarks then start
/// from what the followers report, as without a checkpoint.
pub fn load_all(data_dir: &Path) -> Watermarks {
    let mut merged = Watermarks::new();
    let Ok(entries) = std::fs::read_dir(data_dir) else {
        return merged;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with(FILE_PREFIX) || name.ends_with(".tmp") {
            continue;
        }
        match std::fs::read_to_string(entry.path())
            .ok()
            .as_deref()
            .and_then(parse)
        {
            Some(watermarks) => {
                for (key, offset) in watermarks {
                    let slot = merged.entry(key).or_insert(offset);
                    *slot = (*slot).max(offset);
                }
            }
            None => {
                tracing::warn!(file = %entry.path().display(), "unreadable high-watermark checkpoint; ignored")
            }
        }
    }
    merged
}

/// Writes shard `shard`'s checkpoint (small; plain file I/O, temp + rename).
pub fn store(data_dir: &Path, shard: usize, watermarks: &[(String, i32, i64)]) -> std::io::Result<()> {
    let name = format!("{FILE_PREFIX}.{shard}");
    let tmp = data_dir.join(format!("{name}.tmp"));
    std::fs::write(&tmp, render(watermarks))?;
    std::fs::rename(&tmp, data_dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip_and_the_highest_of_all_shards_wins() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path(), 0, &[("a".into(), 0, 10), ("b".into(), 3, 7)]).unwrap();
        store(dir.path(), 1, &[("a".into(), 0, 4), ("c".into(), 1, 2)]).unwrap();
        std::fs::write(dir.path().join(format!("{FILE_PREFIX}.2")), "0\n5\nbroken").unwrap();
        let text = std::fs::read_to_string(dir.path().join(format!("{FILE_PREFIX}.0"))).unwrap();
        assert_eq!(text, "0\n2\na 0 10\nb 3 7\n");
        let all = load_all(dir.path());
        assert_eq!(all.len(), 3);
        assert_eq!(all[&("a".to_string(), 0)], 10);
        assert_eq!(all[&("c".to_string(), 1)], 2);
    }
}
