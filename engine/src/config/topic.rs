//! Topic-level configuration: the names Kafka uses for per-topic overrides of
//! broker defaults, their validation, and the effective settings a
//! partition's log runs with.

use std::collections::BTreeMap;

use super::BrokerConfig;
use crate::partition::PartitionPolicy;
use crate::storage::recompress::TopicCompression;
use crate::storage::LogConfig;

/// Topic config names this broker knows, in the order DescribeConfigs lists them.
pub const TOPIC_KEYS: &[&str] = &[
    "cleanup.policy",
    "retention.ms",
    "retention.bytes",
    "segment.bytes",
    "segment.ms",
    "segment.index.bytes",
    "index.interval.bytes",
    "max.message.bytes",
    "message.timestamp.type",
    "min.insync.replicas",
    "flush.messages",
    "flush.ms",
    "delete.retention.ms",
    "min.cleanable.dirty.ratio",
    "unclean.leader.election.enable",
    "preallocate",
    "compression.type",
];

/// Topic config names Kafka 4.0 removed but clients may still send
/// (`message.format.version`): accepted and ignored, with a warning, as
/// Kafka 4.0 does. Never stored, so DescribeConfigs does not list them.
pub const IGNORED_KEYS: &[&str] = &["message.format.version"];

/// Is `key` accepted only to be dropped (`IGNORED_KEYS`)? Logs the warning.
pub fn ignored(key: &str) -> bool {
    let ignored = IGNORED_KEYS.contains(&key);
    if ignored {
        tracing::warn!(
            "topic config {key} is ignored: it was removed in Kafka 4.0 (only message format v2 is stored)"
        );
    }
    ignored
}

/// Kafka's DescribeConfigs config type of a list value (`cleanup.policy`).
pub const CONFIG_TYPE_LIST: i8 = 7;

/// Kafka's DescribeConfigs config types.
pub fn config_type(key: &str) -> i8 {
    const BOOLEAN: i8 = 1;
    const STRING: i8 = 2;
    const INT: i8 = 3;
    const LONG: i8 = 5;
    const DOUBLE: i8 = 6;
    match key {
        "cleanup.policy" => CONFIG_TYPE_LIST,
        "message.timestamp.type" | "compression.type" => STRING,
        "unclean.leader.election.enable" | "preallocate" => BOOLEAN,
        "min.cleanable.dirty.ratio" => DOUBLE,
        "segment.index.bytes"
        | "index.interval.bytes"
        | "max.message.bytes"
        | "min.insync.replicas"
        | "segment.bytes" => INT,
        _ => LONG,
    }
}

/// Validates one topic override; the error text goes back to the client with INVALID_CONFIG.
pub fn validate(key: &str, value: &str) -> Result<(), String> {
    let int = |min: i64| -> Result<(), String> {
        let n: i64 = value
            .trim()
            .parse()
            .map_err(|_| format!("Invalid value {value} for configuration {key}: not a number"))?;
        if n < min {
            return Err(format!(
                "Invalid value {value} for configuration {key}: must be at least {min}"
            ));
        }
        Ok(())
    };
    match key {
        "cleanup.policy" => parse_cleanup_policy(value).map(|_| ()).ok_or_else(|| {
            format!("Invalid value {value} for configuration {key}: String must be one of: compact, delete")
        }),
        "delete.retention.ms" => int(0),
        "min.cleanable.dirty.ratio" => match value.trim().parse::<f64>() {
            Ok(r) if (0.0..=1.0).contains(&r) => Ok(()),
            _ => Err(format!(
                "Invalid value {value} for configuration {key}: Value must be between 0 and 1"
            )),
        },
        "retention.ms" | "retention.bytes" => int(-1),
        "segment.bytes" => int(14),
        "segment.ms" | "flush.messages" | "flush.ms" => int(1),
        "segment.index.bytes" => int(8),
        "index.interval.bytes" => int(0),
        "max.message.bytes" | "min.insync.replicas" => int(1),
        "unclean.leader.election.enable" | "preallocate" => match value.trim() {
            "true" | "false" => Ok(()),
            _ => Err(format!(
                "Invalid value {value} for configuration {key}: Expected value to be either true or false"
            )),
        },
        "message.timestamp.type" => match value.trim() {
            "CreateTime" | "LogAppendTime" => Ok(()),
            _ => Err(format!(
                "Invalid value {value} for configuration {key}: CreateTime or LogAppendTime"
            )),
        },
        "compression.type" => match TopicCompression::parse(value) {
            Some(_) => Ok(()),
            None => Err(format!(
                "Invalid value {value} for configuration {key}: String must be one of: uncompressed, zstd, lz4, snappy, gzip, producer"
            )),
        },
        _ => Err(format!("Unknown topic config name: {key}")),
    }
}

/// `(delete, compact)` from a cleanup.policy list ("delete", "compact",
/// "compact,delete"), None if it names anything else or nothing.
pub fn parse_cleanup_policy(value: &str) -> Option<(bool, bool)> {
    let (mut delete, mut compact) = (false, false);
    for item in value.split(',').map(str::trim) {
        match item {
            "delete" => delete = true,
            "compact" => compact = true,
            _ => return None,
        }
    }
    (delete || compact).then_some((delete, compact))
}

/// The value a topic runs with for `key`, and whether it is the broker default.
pub fn effective(key: &str, overrides: &BTreeMap<String, String>, broker: &BrokerConfig) -> (String, bool) {
    if let Some(v) = overrides.get(key) {
        return (v.clone(), false);
    }
    let never = i64::MAX.to_string();
    let capped = |v: u64| {
        if v >= i64::MAX as u64 {
            never.clone()
        } else {
            v.to_string()
        }
    };
    let value = match key {
        "cleanup.policy" => broker.log_cleanup_policy.clone(),
        "retention.ms" => broker.log.retention_ms.to_string(),
        "retention.bytes" => broker.log.retention_bytes.to_string(),
        "segment.bytes" => broker.log.segment_bytes.to_string(),
        "segment.ms" => broker.log.segment_ms.to_string(),
        "segment.index.bytes" => broker.log.segment_index_bytes.to_string(),
        "index.interval.bytes" => broker.log.index_interval_bytes.to_string(),
        "max.message.bytes" => broker.message_max_bytes.to_string(),
        "message.timestamp.type" => broker.log_message_timestamp_type.clone(),
        "min.insync.replicas" => broker.min_insync_replicas.to_string(),
        "unclean.leader.election.enable" => broker.unclean_leader_election_enable.to_string(),
        "flush.messages" => capped(broker.log.flush_interval_messages),
        "flush.ms" => capped(broker.log.flush_interval_ms),
        "delete.retention.ms" => broker.log.delete_retention_ms.to_string(),
        "min.cleanable.dirty.ratio" => broker.log.min_cleanable_dirty_ratio.to_string(),
        "preallocate" => broker.log.preallocate.to_string(),
        "compression.type" => broker.compression_type.clone(),
        _ => String::new(),
    };
    (value, true)
}

fn num<T: std::str::FromStr>(overrides: &BTreeMap<String, String>, key: &str) -> Option<T> {
    overrides.get(key).and_then(|v| v.trim().parse().ok())
}

/// The log settings of a topic: broker defaults with the topic's overrides.
pub fn log_config(overrides: &BTreeMap<String, String>, broker: &BrokerConfig) -> LogConfig {
    let mut c = broker.log.clone();
    if let Some(v) = num(overrides, "retention.ms") {
        c.retention_ms = v;
    }
    if let Some(v) = num(overrides, "retention.bytes") {
        c.retention_bytes = v;
    }
    if let Some(v) = num(overrides, "segment.bytes") {
        c.segment_bytes = v;
    }
    if let Some(v) = num(overrides, "segment.ms") {
        c.segment_ms = v;
    }
    if let Some(v) = num(overrides, "segment.index.bytes") {
        c.segment_index_bytes = v;
    }
    if let Some(v) = num(overrides, "index.interval.bytes") {
        c.index_interval_bytes = v;
    }
    if let Some(v) = num(overrides, "flush.messages") {
        c.flush_interval_messages = v;
    }
    if let Some(v) = num(overrides, "flush.ms") {
        c.flush_interval_ms = v;
    }
    let (timestamp_type, _) = effective("message.timestamp.type", overrides, broker);
    c.log_append_time = timestamp_type == "LogAppendTime";
    let (policy, _) = effective("cleanup.policy", overrides, broker);
    (c.cleanup_delete, c.cleanup_compact) = parse_cleanup_policy(&policy).unwrap_or((true, false));
    if let Some(v) = num(overrides, "delete.retention.ms") {
        c.delete_retention_ms = v;
    }
    if let Some(v) = num(overrides, "min.cleanable.dirty.ratio") {
        c.min_cleanable_dirty_ratio = v;
    }
    if let Some(v) = num(overrides, "preallocate") {
        c.preallocate = v;
    }
    c
}

pub fn partition_policy(overrides: &BTreeMap<String, String>, broker: &BrokerConfig) -> PartitionPolicy {
    PartitionPolicy {
        max_message_bytes: num(overrides, "max.message.bytes").unwrap_or(broker.message_max_bytes),
        log_append_time: effective("message.timestamp.type", overrides, broker).0 == "LogAppendTime",
        // Both were validated where they were set.
        compression: TopicCompression::parse(&effective("compression.type", overrides, broker).0)
            .unwrap_or(TopicCompression::Producer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_topic_config_values_are_refused_with_a_message() {
        assert!(validate("retention.ms", "abc")
            .unwrap_err()
            .contains("retention.ms"));
        assert!(validate("segment.bytes", "3").is_err());
        assert!(validate("no.such.key", "1").is_err());
        assert!(validate("retention.ms", "-1").is_ok());
    }

    #[test]
    fn overrides_change_the_log_config() {
        let broker = BrokerConfig::default();
        let mut o = BTreeMap::new();
        o.insert("segment.bytes".to_string(), "1048576".to_string());
        assert_eq!(log_config(&o, &broker).segment_bytes, 1_048_576);
        assert_eq!(
            effective("segment.bytes", &o, &broker),
            ("1048576".to_string(), false)
        );
        assert!(effective("retention.ms", &o, &broker).1);
    }
}
