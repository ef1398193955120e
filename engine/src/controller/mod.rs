//! Cluster metadata: topics, their ids, partition→shard placement and topic
//! configs, as one immutable `MetadataImage`.
//!
//! Shard 0 is the single writer: every change (create/delete topics, add
//! partitions) runs there under one lock, is persisted to
//! `<data>/shardlog-metadata.json` (write, fsync, rename), and then reaches
//! every shard as an ordered `ShardOp::Apply` carrying the new image. Every
//! shard keeps a full copy of the latest image (`Arc`, read-only) so routing
//! never crosses a shard. A later issue replaces the file with a raft log.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use kafka_protocol::ResponseError;

use crate::config::{topic, BrokerConfig};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A Kafka error code with the message sent to the client.
pub type Refusal = (ResponseError, String);

pub const METADATA_FILE: &str = "shardlog-metadata.json";
/// The internal topic holding consumer-group metadata and committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Kafka's `offsets.topic.segment.bytes` default.
pub const OFFSETS_TOPIC_SEGMENT_BYTES: u64 = 104_857_600;
pub const TOPIC_NAME_MAX_CHARS: usize = 249;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PartitionMeta {
    /// The shard (core) that owns the partition on this node.
    pub shard: u32,
    pub leader_epoch: i32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TopicMeta {
    pub name: String,
    pub id: Uuid,
    pub partitions: Vec<PartitionMeta>,
    /// Topic-level overrides (`retention.ms`, ...), validated on the way in.
    pub configs: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct MetadataImage {
    /// Increases with every change; shards assert they never apply an older image.
    pub epoch: u64,
    pub cluster_id: String,
    pub topics: BTreeMap<String, TopicMeta>,
    /// Producer ids below this were handed to shard 0's allocator and are
    /// never given out again, across restarts.
    #[serde(default)]
    pub producer_ids_reserved: i64,
    #[serde(skip)]
    ids: HashMap<Uuid, String>,
}

impl MetadataImage {
    pub fn new(cluster_id: String) -> Self {
        MetadataImage {
            cluster_id,
            ..Default::default()
        }
    }

    fn reindex(&mut self) {
        self.ids = self.topics.values().map(|t| (t.id, t.name.clone())).collect();
    }

    pub fn topic(&self, name: &str) -> Option<&TopicMeta> {
        self.topics.get(name)
    }

    pub fn topic_by_id(&self, id: &Uuid) -> Option<&TopicMeta> {
        self.ids.get(id).and_then(|n| self.topics.get(n))
    }

    /// The shard owning `topic`/`partition`, if it exists.
    pub fn owner(&self, topic: &str, partition: i32) -> Option<usize> {
        let t = self.topics.get(topic)?;
        let p = t.partitions.get(usize::try_from(partition).ok()?)?;
        Some(p.shard as usize)
    }

    /// Partitions per shard, for balanced placement of new partitions.
    fn load_per_shard(&self, nr_shards: usize) -> Vec<usize> {
        let mut load = vec![0usize; nr_shards];
        for t in self.topics.values() {
            for p in &t.partitions {
                load[p.shard as usize % nr_shards] += 1;
            }
        }
        load
    }

    /// Refuses `count` more partitions when they would push a shard past its
    /// budget (`shard.partitions.max`). Placement fills the least-loaded
    /// shard first, so the total room is what matters.
    pub fn check_partition_budget(
        &self,
        count: usize,
        nr_shards: usize,
        per_shard_max: usize,
    ) -> Result<(), Refusal> {
        // Internal topics are the broker's own and sized by its config, so
        // they do not count against the budget clients' topics share.
        let mut load = vec![0usize; nr_shards];
        for t in self.topics.values().filter(|t| !is_internal(&t.name)) {
            for p in &t.partitions {
                load[p.shard as usize % nr_shards] += 1;
            }
        }
        let room: usize = load.iter().map(|l| per_shard_max.saturating_sub(*l)).sum();
        if count > room {
            return Err((
                ResponseError::PolicyViolation,
                format!(
                    "{count} more partitions exceed this broker's budget: {nr_shards} shards x shard.partitions.max {per_shard_max}, {} already placed",
                    load.iter().sum::<usize>()
                ),
            ));
        }
        Ok(())
    }

    /// Places `count` new partitions on the least-loaded shards (by partition count).
    pub fn place(&self, count: usize, nr_shards: usize) -> Vec<PartitionMeta> {
        let mut load = self.load_per_shard(nr_shards);
        (0..count)
            .map(|_| {
                let (shard, _) = load
                    .iter()
                    .enumerate()
                    .min_by_key(|(i, l)| (**l, *i))
                    .expect("at least one shard");
                load[shard] += 1;
                PartitionMeta {
                    shard: shard as u32,
                    leader_epoch: 0,
                }
            })
            .collect()
    }

    /// The image with `__consumer_offsets` added (`partitions` partitions,
    /// compacted, never deleted by time or size), or None when it exists.
    pub fn with_offsets_topic(&self, partitions: i32, nr_shards: usize) -> Option<MetadataImage> {
        if self.topics.contains_key(OFFSETS_TOPIC) {
            return None;
        }
        let mut configs = BTreeMap::new();
        // Kafka's internal topic is compacted, never deleted by time or size,
        // and rolls at `offsets.topic.segment.bytes` (100 MiB), so the
        // cleaner gets sealed segments to compact long before 1 GiB.
        configs.insert("cleanup.policy".to_string(), "compact".to_string());
        configs.insert("retention.ms".to_string(), "-1".to_string());
        configs.insert("retention.bytes".to_string(), "-1".to_string());
        configs.insert(
            "segment.bytes".to_string(),
            OFFSETS_TOPIC_SEGMENT_BYTES.to_string(),
        );
        Some(self.with_topic(TopicMeta {
            name: OFFSETS_TOPIC.to_string(),
            id: Uuid::new_v4(),
            partitions: self.place(partitions.max(1) as usize, nr_shards),
            configs,
        }))
    }

    pub fn with_topic(&self, topic: TopicMeta) -> MetadataImage {
        let mut next = self.clone();
        next.epoch += 1;
        next.topics.insert(topic.name.clone(), topic);
        next.reindex();
        next
    }

    /// Reserves the next block of `count` producer ids; returns its first id.
    pub fn with_producer_ids_reserved(&self, count: i64) -> (MetadataImage, i64) {
        let mut next = self.clone();
        next.epoch += 1;
        let first = next.producer_ids_reserved;
        next.producer_ids_reserved += count;
        (next, first)
    }

    pub fn without_topic(&self, name: &str) -> MetadataImage {
        let mut next = self.clone();
        next.epoch += 1;
        next.topics.remove(name);
        next.reindex();
        next
    }

    /// Loads the image, or a fresh one with a new cluster id. Placement on a
    /// shard that no longer exists (fewer `--shards` than before) moves to
    /// `shard % nr_shards`, since each partition's files are shard-agnostic.
    pub fn load(data_dir: &Path, nr_shards: usize) -> std::io::Result<MetadataImage> {
        let path = data_dir.join(METADATA_FILE);
        let mut image = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<MetadataImage>(&bytes).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{path:?}: {e}"))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => MetadataImage::new(random_cluster_id()),
            Err(e) => return Err(e),
        };
        for t in image.topics.values_mut() {
            for p in &mut t.partitions {
                if p.shard as usize >= nr_shards {
                    tracing::info!(topic = %t.name, "partition moves from shard {} (no longer running)", p.shard);
                    p.shard %= nr_shards as u32;
                }
            }
        }
        image.reindex();
        Ok(image)
    }

    /// Durable replace: write a temp file, fsync it, rename over, fsync the directory.
    pub fn persist(&self, data_dir: &Path) -> std::io::Result<()> {
        let path = data_dir.join(METADATA_FILE);
        let tmp: PathBuf = data_dir.join(format!("{METADATA_FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(data_dir)?.sync_all()
    }
}

/// A CreateTopics entry, already decoded from the wire.
#[derive(Clone, Debug)]
pub struct NewTopic {
    pub name: String,
    /// -1: `num.partitions`.
    pub num_partitions: i32,
    /// -1: `default.replication.factor`.
    pub replication_factor: i16,
    /// Manual replica assignment: partition -> broker ids.
    pub assignments: Vec<Vec<i32>>,
    pub configs: Vec<(String, Option<String>)>,
}

/// The answer for one topic of a create/delete/create-partitions request.
#[derive(Clone, Debug)]
pub struct TopicOutcome {
    pub name: String,
    pub error: Option<Refusal>,
    pub topic_id: Uuid,
    pub num_partitions: i32,
    pub replication_factor: i16,
    pub configs: BTreeMap<String, String>,
}

impl TopicOutcome {
    fn err(name: String, code: ResponseError, message: impl Into<String>) -> Self {
        TopicOutcome {
            name,
            error: Some((code, message.into())),
            topic_id: Uuid::nil(),
            num_partitions: -1,
            replication_factor: -1,
            configs: BTreeMap::new(),
        }
    }
}

fn check_new_topic(
    image: &MetadataImage,
    t: &NewTopic,
    config: &BrokerConfig,
    nr_shards: usize,
) -> Result<(i32, i16, BTreeMap<String, String>), Refusal> {
    validate_topic_name(&t.name)?;
    if image.topics.contains_key(&t.name) {
        return Err((
            ResponseError::TopicAlreadyExists,
            format!("Topic '{}' already exists.", t.name),
        ));
    }
    let (partitions, rf) = if t.assignments.is_empty() {
        let partitions = if t.num_partitions == -1 {
            config.num_partitions
        } else {
            t.num_partitions
        };
        let rf = if t.replication_factor == -1 {
            config.default_replication_factor
        } else {
            t.replication_factor
        };
        (partitions, rf)
    } else {
        if t.num_partitions != -1 || t.replication_factor != -1 {
            return Err((
                ResponseError::InvalidRequest,
                "Both numPartitions or replicationFactor and replicasAssignments were set.".into(),
            ));
        }
        if t.assignments.iter().any(|r| r.as_slice() != [config.node_id]) {
            return Err((
                ResponseError::InvalidReplicaAssignment,
                format!("Only broker {} exists in this cluster.", config.node_id),
            ));
        }
        (t.assignments.len() as i32, 1)
    };
    if partitions <= 0 {
        return Err((
            ResponseError::InvalidPartitions,
            "Number of partitions must be larger than 0.".into(),
        ));
    }
    if rf <= 0 {
        return Err((
            ResponseError::InvalidReplicationFactor,
            "Replication factor must be larger than 0.".into(),
        ));
    }
    if rf > 1 {
        return Err((
            ResponseError::InvalidReplicationFactor,
            format!("Replication factor: {rf} larger than available brokers: 1."),
        ));
    }
    image.check_partition_budget(partitions as usize, nr_shards, config.shard_partitions_max)?;
    let mut configs = BTreeMap::new();
    for (key, value) in &t.configs {
        let Some(value) = value else { continue };
        topic::validate(key, value).map_err(|m| (ResponseError::InvalidConfig, m))?;
        configs.insert(key.clone(), value.trim().to_string());
    }
    Ok((partitions, rf, configs))
}

/// Plans CreateTopics: the next image and one outcome per requested topic.
pub fn create_topics(
    image: &MetadataImage,
    topics: Vec<NewTopic>,
    config: &BrokerConfig,
    nr_shards: usize,
) -> (MetadataImage, Vec<TopicOutcome>) {
    let mut next = image.clone();
    let mut outcomes = Vec::with_capacity(topics.len());
    let mut seen = std::collections::HashSet::new();
    for t in topics {
        if !seen.insert(t.name.clone()) {
            outcomes.push(TopicOutcome::err(
                t.name,
                ResponseError::InvalidRequest,
                "Duplicate topic name in request.",
            ));
            continue;
        }
        match check_new_topic(&next, &t, config, nr_shards) {
            Err((code, message)) => outcomes.push(TopicOutcome::err(t.name, code, message)),
            Ok((partitions, rf, configs)) => {
                let meta = TopicMeta {
                    name: t.name.clone(),
                    id: Uuid::new_v4(),
                    partitions: next.place(partitions as usize, nr_shards),
                    configs: configs.clone(),
                };
                outcomes.push(TopicOutcome {
                    name: t.name,
                    error: None,
                    topic_id: meta.id,
                    num_partitions: partitions,
                    replication_factor: rf,
                    configs,
                });
                next = next.with_topic(meta);
            }
        }
    }
    (next, outcomes)
}

pub fn delete_topics(image: &MetadataImage, names: Vec<String>) -> (MetadataImage, Vec<TopicOutcome>) {
    let mut next = image.clone();
    let mut outcomes = Vec::with_capacity(names.len());
    for name in names {
        match next.topics.get(&name) {
            Some(meta) => {
                let mut o = TopicOutcome::err(name.clone(), ResponseError::UnknownServerError, "");
                o.error = None;
                o.topic_id = meta.id;
                outcomes.push(o);
                next = next.without_topic(&name);
            }
            None => outcomes.push(TopicOutcome::err(
                name,
                ResponseError::UnknownTopicOrPartition,
                "This server does not host this topic-partition.",
            )),
        }
    }
    (next, outcomes)
}

/// CreatePartitions: `count` is the new total, which must exceed the current one.
pub fn create_partitions(
    image: &MetadataImage,
    topics: Vec<(String, i32)>,
    config: &BrokerConfig,
    nr_shards: usize,
) -> (MetadataImage, Vec<TopicOutcome>) {
    let mut next = image.clone();
    let mut outcomes = Vec::with_capacity(topics.len());
    for (name, count) in topics {
        let Some(meta) = next.topics.get(&name).cloned() else {
            outcomes.push(TopicOutcome::err(
                name,
                ResponseError::UnknownTopicOrPartition,
                "This server does not host this topic-partition.",
            ));
            continue;
        };
        let current = meta.partitions.len() as i32;
        if count <= current {
            let message = if count == current {
                format!("Topic already has {current} partitions.")
            } else {
                format!(
                    "Topic currently has {current} partitions, which is higher than the requested {count}."
                )
            };
            outcomes.push(TopicOutcome::err(name, ResponseError::InvalidPartitions, message));
            continue;
        }
        let added = (count - current) as usize;
        if let Err((code, message)) =
            next.check_partition_budget(added, nr_shards, config.shard_partitions_max)
        {
            outcomes.push(TopicOutcome::err(name, code, message));
            continue;
        }
        let mut grown = meta.clone();
        grown
            .partitions
            .extend(next.place((count - current) as usize, nr_shards));
        outcomes.push(TopicOutcome {
            name,
            error: None,
            topic_id: grown.id,
            num_partitions: count,
            replication_factor: 1,
            configs: grown.configs.clone(),
        });
        next = next.with_topic(grown);
    }
    (next, outcomes)
}

/// IncrementalAlterConfigs operations.
pub const CONFIG_OP_SET: i8 = 0;
pub const CONFIG_OP_DELETE: i8 = 1;
pub const CONFIG_OP_APPEND: i8 = 2;
pub const CONFIG_OP_SUBTRACT: i8 = 3;

/// One topic's config change from AlterConfigs (`incremental: false`: the
/// listed values replace every override) or IncrementalAlterConfigs.
#[derive(Clone, Debug)]
pub struct ConfigAlteration {
    pub topic: String,
    pub incremental: bool,
    /// (name, operation, value)
    pub entries: Vec<(String, i8, Option<String>)>,
}

fn altered_overrides(
    current: &BTreeMap<String, String>,
    change: &ConfigAlteration,
    broker: &BrokerConfig,
) -> Result<BTreeMap<String, String>, Refusal> {
    let mut seen = std::collections::HashSet::new();
    let mut next = if change.incremental {
        current.clone()
    } else {
        BTreeMap::new()
    };
    for (name, op, value) in &change.entries {
        if !seen.insert(name.as_str()) {
            return Err((
                ResponseError::InvalidRequest,
                format!("Duplicate config key {name}"),
            ));
        }
        let list = |v: &str| -> Vec<String> {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        };
        let new_value = match (*op, value) {
            (CONFIG_OP_DELETE, _) | (CONFIG_OP_SET, None) => None,
            (CONFIG_OP_SET, Some(v)) => Some(v.trim().to_string()),
            (CONFIG_OP_APPEND | CONFIG_OP_SUBTRACT, Some(v)) => {
                if topic::config_type(name) != topic::CONFIG_TYPE_LIST {
                    return Err((
                        ResponseError::InvalidConfig,
                        format!("Config value append/subtract is not allowed for config key {name}"),
                    ));
                }
                let (base, _) = topic::effective(name, current, broker);
                let mut items = list(current.get(name).unwrap_or(&base));
                for item in list(v) {
                    if *op == CONFIG_OP_APPEND {
                        if !items.contains(&item) {
                            items.push(item);
                        }
                    } else {
                        items.retain(|i| *i != item);
                    }
                }
                Some(items.join(","))
            }
            (CONFIG_OP_APPEND | CONFIG_OP_SUBTRACT, None) => {
                return Err((ResponseError::InvalidConfig, format!("No value given for {name}")))
            }
            (other, _) => {
                return Err((
                    ResponseError::InvalidRequest,
                    format!("Unknown config operation {other}"),
                ))
            }
        };
        match new_value {
            Some(v) => {
                topic::validate(name, &v).map_err(|m| (ResponseError::InvalidConfig, m))?;
                next.insert(name.clone(), v);
            }
            None => {
                if !topic::TOPIC_KEYS.contains(&name.as_str()) {
                    return Err((
                        ResponseError::InvalidConfig,
                        format!("Unknown topic config name: {name}"),
                    ));
                }
                next.remove(name);
            }
        }
    }
    Ok(next)
}

/// Plans config changes: each topic's change is all-or-nothing.
pub fn alter_configs(
    image: &MetadataImage,
    changes: Vec<ConfigAlteration>,
    broker: &BrokerConfig,
) -> (MetadataImage, Vec<Option<Refusal>>) {
    let mut next = image.clone();
    let mut outcomes = Vec::with_capacity(changes.len());
    for change in changes {
        let Some(meta) = next.topics.get(&change.topic).cloned() else {
            outcomes.push(Some((
                ResponseError::UnknownTopicOrPartition,
                format!("Topic {} does not exist", change.topic),
            )));
            continue;
        };
        match altered_overrides(&meta.configs, &change, broker) {
            Err(refusal) => outcomes.push(Some(refusal)),
            Ok(configs) => {
                outcomes.push(None);
                if configs != meta.configs {
                    next = next.with_topic(TopicMeta { configs, ..meta });
                }
            }
        }
    }
    (next, outcomes)
}

/// Kafka's cluster ids are 22-character url-safe base64 of a UUID; any unique string works for clients.
fn random_cluster_id() -> String {
    Uuid::new_v4().simple().to_string()[..22].to_string()
}

/// Kafka's topic name rule: 1–249 chars of `[a-zA-Z0-9._-]`, not `.` or `..`.
/// Topics the broker creates and owns (`__consumer_offsets`).
pub fn is_internal(name: &str) -> bool {
    name == OFFSETS_TOPIC
}

pub fn validate_topic_name(name: &str) -> Result<(), Refusal> {
    let invalid = |why: String| Err((ResponseError::InvalidTopicException, why));
    if name.is_empty() {
        return invalid("Topic name is illegal, it can't be empty".into());
    }
    if name == "." || name == ".." {
        return invalid("Topic name cannot be \".\" or \"..\"".into());
    }
    if name.len() > TOPIC_NAME_MAX_CHARS {
        return invalid(format!(
            "Topic name is illegal, it can't be longer than {TOPIC_NAME_MAX_CHARS} characters"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return invalid(format!(
            "Topic name \"{name}\" is illegal, it contains a character other than ASCII alphanumerics, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// The directory of one partition's log, as Kafka names it.
pub fn partition_dir(data_dir: &Path, topic: &str, partition: i32) -> PathBuf {
    data_dir.join(format!("{topic}-{partition}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_a-b").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name(".").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("bad name!").is_err());
        assert!(validate_topic_name(&"a".repeat(249)).is_ok());
        assert!(validate_topic_name(&"a".repeat(250)).is_err());
    }

    fn image_with_topic() -> MetadataImage {
        let image = MetadataImage::new("c".into());
        let topic = TopicMeta {
            name: "t".into(),
            id: Uuid::new_v4(),
            partitions: image.place(1, 1),
            configs: BTreeMap::new(),
        };
        image.with_topic(topic)
    }

    fn change(incremental: bool, entries: &[(&str, i8, Option<&str>)]) -> ConfigAlteration {
        ConfigAlteration {
            topic: "t".into(),
            incremental,
            entries: entries
                .iter()
                .map(|(n, o, v)| (n.to_string(), *o, v.map(String::from)))
                .collect(),
        }
    }

    #[test]
    fn incremental_alter_sets_and_deletes_overrides() {
        let image = image_with_topic();
        let (next, out) = alter_configs(
            &image,
            vec![change(true, &[("retention.ms", CONFIG_OP_SET, Some("1000"))])],
            &BrokerConfig::default(),
        );
        assert_eq!(out, vec![None]);
        assert_eq!(next.topic("t").unwrap().configs["retention.ms"], "1000");
        assert!(next.epoch > image.epoch);
        let (after, out) = alter_configs(
            &next,
            vec![change(true, &[("retention.ms", CONFIG_OP_DELETE, None)])],
            &BrokerConfig::default(),
        );
        assert_eq!(out, vec![None]);
        assert!(after.topic("t").unwrap().configs.is_empty());
    }

    #[test]
    fn bad_config_values_change_nothing() {
        let image = image_with_topic();
        let (next, out) = alter_configs(
            &image,
            vec![change(
                true,
                &[
                    ("retention.ms", CONFIG_OP_SET, Some("5")),
                    ("segment.bytes", CONFIG_OP_SET, Some("x")),
                ],
            )],
            &BrokerConfig::default(),
        );
        assert_eq!(out[0].as_ref().unwrap().0, ResponseError::InvalidConfig);
        assert_eq!(next.epoch, image.epoch);
        assert!(next.topic("t").unwrap().configs.is_empty());
        let (_, out) = alter_configs(
            &image,
            vec![change(true, &[("segment.ms", CONFIG_OP_APPEND, Some("1"))])],
            &BrokerConfig::default(),
        );
        assert_eq!(out[0].as_ref().unwrap().0, ResponseError::InvalidConfig);
    }

    #[test]
    fn non_incremental_alter_replaces_all_overrides() {
        let image = image_with_topic();
        let (next, _) = alter_configs(
            &image,
            vec![change(true, &[("retention.ms", CONFIG_OP_SET, Some("1000"))])],
            &BrokerConfig::default(),
        );
        let (after, out) = alter_configs(
            &next,
            vec![change(false, &[("segment.ms", CONFIG_OP_SET, Some("60000"))])],
            &BrokerConfig::default(),
        );
        assert_eq!(out, vec![None]);
        let configs = &after.topic("t").unwrap().configs;
        assert_eq!(configs.len(), 1);
        assert_eq!(configs["segment.ms"], "60000");
    }

    #[test]
    fn partitions_beyond_the_shard_budget_are_refused() {
        let config = BrokerConfig {
            shard_partitions_max: 4,
            ..BrokerConfig::default()
        };
        let topic = |name: &str, n| NewTopic {
            name: name.into(),
            num_partitions: n,
            replication_factor: -1,
            assignments: Vec::new(),
            configs: Vec::new(),
        };
        let image = MetadataImage::new("c".into());
        let (image, out) = create_topics(&image, vec![topic("a", 6)], &config, 2);
        assert!(out[0].error.is_none());
        let (image, out) = create_topics(&image, vec![topic("b", 3)], &config, 2);
        assert_eq!(out[0].error.as_ref().unwrap().0, ResponseError::PolicyViolation);
        assert!(image.topic("b").is_none());
        let (image, out) = create_partitions(&image, vec![("a".into(), 9)], &config, 2);
        assert_eq!(out[0].error.as_ref().unwrap().0, ResponseError::PolicyViolation);
        let (image, out) = create_partitions(&image, vec![("a".into(), 8)], &config, 2);
        assert!(out[0].error.is_none());
        assert_eq!(image.topic("a").unwrap().partitions.len(), 8);
    }

    #[test]
    fn placement_balances_by_partition_count() {
        let image = MetadataImage::new("c".into());
        let placed = image.place(6, 4);
        let shards: Vec<u32> = placed.iter().map(|p| p.shard).collect();
        assert_eq!(shards, vec![0, 1, 2, 3, 0, 1]);
    }

    #[test]
    fn image_survives_persist_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let image = MetadataImage::new("cluster".into());
        let topic = TopicMeta {
            name: "t".into(),
            id: Uuid::new_v4(),
            partitions: image.place(3, 2),
            configs: BTreeMap::new(),
        };
        let id = topic.id;
        let image = image.with_topic(topic);
        image.persist(dir.path()).unwrap();
        let loaded = MetadataImage::load(dir.path(), 2).unwrap();
        assert_eq!(loaded.topic("t").unwrap().partitions.len(), 3);
        assert_eq!(loaded.topic_by_id(&id).unwrap().name, "t");
        assert_eq!(loaded.epoch, image.epoch);
        let fewer = MetadataImage::load(dir.path(), 1).unwrap();
        assert!(fewer.topic("t").unwrap().partitions.iter().all(|p| p.shard == 0));
    }
}
