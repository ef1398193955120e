//! `<data>/meta.properties`: which cluster and which node a data directory
//! belongs to, in Kafka's format (KRaft, `version=1`). Written at the first
//! start (and at the first start of a data dir made before it existed);
//! checked at every later start, so a data dir is never served by another
//! node or opened against another cluster's metadata: either would hand out
//! partitions, offsets and producer ids that belong to someone else.
//!
//! Lives on: the main thread, in `server::run`, before any shard starts.

use std::collections::BTreeMap;
use std::path::Path;

pub const META_PROPERTIES_FILE: &str = "meta.properties";
const VERSION: &str = "1";

#[derive(Debug, PartialEq)]
pub struct MetaProperties {
    pub cluster_id: String,
    pub node_id: i32,
}

impl MetaProperties {
    /// Kafka's Java-properties text: `key=value` lines, `#` comments.
    pub fn parse(text: &str) -> Result<MetaProperties, String> {
        let fields: BTreeMap<&str, &str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
            .filter_map(|l| l.split_once('=').map(|(k, v)| (k.trim(), v.trim())))
            .collect();
        match fields.get("version") {
            Some(&VERSION) => {}
            other => return Err(format!("unsupported version {other:?} (expected {VERSION})")),
        }
        let cluster_id = fields
            .get("cluster.id")
            .filter(|id| !id.is_empty())
            .ok_or("no cluster.id")?
            .to_string();
        let node_id = fields
            .get("node.id")
            .ok_or("no node.id")?
            .parse()
            .map_err(|_| "node.id is not a number".to_string())?;
        Ok(MetaProperties { cluster_id, node_id })
    }

    pub fn to_text(&self) -> String {
        format!(
            "#\n#Written by shardlog\nnode.id={}\nversion={VERSION}\ncluster.id={}\n",
            self.node_id, self.cluster_id
        )
    }
}

/// Checks that `data_dir` belongs to `node_id` of `cluster_id` (the cluster
/// id of the metadata found there), or records that it does when the file
/// is missing. The error is the one line the broker stops with.
pub fn check_or_write(data_dir: &Path, cluster_id: &str, node_id: i32) -> Result<(), String> {
    let path = data_dir.join(META_PROPERTIES_FILE);
    let expected = MetaProperties {
        cluster_id: cluster_id.to_string(),
        node_id,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let found = MetaProperties::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            if found.node_id != node_id {
                return Err(format!(
                    "data dir {} belongs to node.id {} ({}), but this broker is node.id {node_id}",
                    data_dir.display(),
                    found.node_id,
                    path.display()
                ));
            }
            if found.cluster_id != cluster_id {
                return Err(format!(
                    "data dir {} belongs to cluster {} ({}), but its metadata is cluster {cluster_id}",
                    data_dir.display(),
                    found.cluster_id,
                    path.display()
                ));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => crate::storage::durable::replace_file(
            data_dir,
            META_PROPERTIES_FILE,
            expected.to_text().as_bytes(),
        )
        .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Write a temp file, fsync it, rename it over, fsync the directory.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kafkas_own_file() {
        let kafka = "#\n#Mon Dec 01 10:00:00 UTC 2026\nnode.id=3\ndirectory.id=J8aAPcfLQt2bqs1JT_rMgQ\nversion=1\ncluster.id=MkU3OEVBNTcwNTJENDM2Qk\n";
        assert_eq!(
            MetaProperties::parse(kafka),
            Ok(MetaProperties {
                cluster_id: "MkU3OEVBNTcwNTJENDM2Qk".into(),
                node_id: 3
            })
        );
    }

    #[test]
    fn round_trips_and_refuses_what_it_cannot_read() {
        let props = MetaProperties {
            cluster_id: "abc".into(),
            node_id: 7,
        };
        assert_eq!(MetaProperties::parse(&props.to_text()), Ok(props));
        assert!(
            MetaProperties::parse("node.id=1\ncluster.id=x\n").is_err(),
            "no version"
        );
        assert!(MetaProperties::parse("version=0\nnode.id=1\ncluster.id=x\n").is_err());
        assert!(MetaProperties::parse("version=1\nnode.id=one\ncluster.id=x\n").is_err());
        assert!(
            MetaProperties::parse("version=1\nnode.id=1\n").is_err(),
            "no cluster.id"
        );
    }

    #[test]
    fn writes_once_then_refuses_another_node_or_cluster() {
        let dir = tempfile::tempdir().unwrap();
        check_or_write(dir.path(), "c1", 1).unwrap();
        check_or_write(dir.path(), "c1", 1).unwrap();
        let node = check_or_write(dir.path(), "c1", 2).unwrap_err();
        assert!(
            node.contains("belongs to node.id 1") && node.contains("this broker is node.id 2"),
            "{node}"
        );
        let cluster = check_or_write(dir.path(), "c2", 1).unwrap_err();
        assert!(cluster.contains("belongs to cluster c1"), "{cluster}");
    }
}
