//! Kafka's offset checkpoint file format (`OffsetCheckpointFile`): a
//! version line, a count line, then one `topic partition offset` line per
//! partition. Used for the high-watermark checkpoint
//! (`replication-offset-checkpoint.<shard>`, `shard::hw_checkpoint`) and the
//! data dir's `recovery-point-offset-checkpoint` (`server`, at a clean
//! shutdown). Plain blocking file I/O: both are read at start, before the
//! executors serve, or written off a shard's hot path.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

const FORMAT_VERSION: u32 = 0;

pub type Offsets = HashMap<(String, i32), i64>;

/// None when the text is not a whole checkpoint (wrong version, a bad
/// line, fewer lines than its count).
pub fn parse(text: &str) -> Option<Offsets> {
    let mut lines = text.lines();
    if lines.next()?.trim().parse::<u32>().ok()? != FORMAT_VERSION {
        return None;
    }
    let count: usize = lines.next()?.trim().parse().ok()?;
    let mut out = HashMap::with_capacity(count.min(1 << 20));
    for line in lines.take(count) {
        // Topic names never hold spaces (Kafka's legal characters).
        let mut fields = line.split(' ');
        let (topic, partition, offset) = (fields.next()?, fields.next()?, fields.next()?);
        out.insert((topic.to_string(), partition.parse().ok()?), offset.parse().ok()?);
    }
    (out.len() == count).then_some(out)
}

pub fn render(entries: &[(String, i32, i64)]) -> String {
    let mut out = format!("{FORMAT_VERSION}\n{}\n", entries.len());
    for (topic, partition, offset) in entries {
        out.push_str(&format!("{topic} {partition} {offset}\n"));
    }
    out
}

/// The checkpoint at `path`: Ok(None) if there is none, Err if it is
/// there but unreadable or not whole.
pub fn read(path: &Path) -> std::io::Result<Option<Offsets>> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text).map(Some).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is not a whole offset checkpoint", path.display()),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Replaces `path` durably: a temp file, fsynced, renamed over it, and the
/// directory synced.
pub fn write_durably(path: &Path, entries: &[(String, i32, i64)]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(render(entries).as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_round_trips_and_a_torn_one_reads_as_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("recovery-point-offset-checkpoint");
        assert!(read(&path).unwrap().is_none(), "none yet");
        write_durably(&path, &[("a".into(), 0, 10), ("b".into(), 3, 7)]).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "0\n2\na 0 10\nb 3 7\n");
        let offsets = read(&path).unwrap().unwrap();
        assert_eq!(offsets.len(), 2);
        assert_eq!(offsets[&("b".to_string(), 3)], 7);
        std::fs::write(&path, "0\n3\na 0 10\nb 3 7\n").unwrap();
        assert!(read(&path).is_err(), "fewer lines than the count");
        std::fs::write(&path, "1\n0\n").unwrap();
        assert!(read(&path).is_err(), "unknown version");
    }
}
