//! Per-log configuration. Apart from the `Log` because the config layer
//! builds it (broker defaults, topic overrides) without needing anything else
//! of the log.

/// Per-log configuration, Kafka's names and defaults.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// log.segment.bytes (positions are u32, so values above 4 GiB act as 4 GiB).
    pub segment_bytes: u64,
    /// log.roll.ms, measured from the segment's first append in this process.
    pub segment_ms: u64,
    /// log.retention.ms; -1 = unlimited.
    pub retention_ms: i64,
    /// log.retention.bytes; -1 = unlimited.
    pub retention_bytes: i64,
    /// log.index.interval.bytes.
    pub index_interval_bytes: u32,
    /// log.index.size.max.bytes: roll when an index would exceed it.
    pub segment_index_bytes: u32,
    /// log.flush.interval.messages (u64::MAX = never fsync on count).
    pub flush_interval_messages: u64,
    /// log.flush.interval.ms (u64::MAX = never fsync on time).
    pub flush_interval_ms: u64,
    /// message.timestamp.type=LogAppendTime: the writer stamps each batch
    /// with the append time (and recomputes its CRC).
    pub log_append_time: bool,
    /// cleanup.policy contains `delete`: retention by time and size applies.
    pub cleanup_delete: bool,
    /// cleanup.policy contains `compact`: the cleaner compacts sealed segments.
    pub cleanup_compact: bool,
    /// delete.retention.ms: how long compaction keeps tombstones.
    pub delete_retention_ms: i64,
    /// min.cleanable.dirty.ratio: compact once this share of the sealed
    /// bytes has not been compacted yet.
    pub min_cleanable_dirty_ratio: f64,
    /// preallocate / log.preallocate: reserve the active segment's blocks
    /// ahead of its writes, so an O_DIRECT append lands inside the file and
    /// the kernel completes it on the ring instead of handing it to an
    /// io-wq worker (an extending write takes ext4's inode lock exclusively,
    /// which io_uring does not wait for inline). Kafka's name and default
    /// (false); Kafka sizes the whole segment at once, shardlog grows the
    /// reservation in steps (below). Off by default because on this
    /// machine's ext4 the writes into reserved (unwritten) blocks cost more
    /// than the io-wq hand-off saves: results/preallocation.md.
    pub preallocate: bool,
    /// log.preallocate.step.max.bytes (shardlog): the most a segment
    /// reserves ahead of its end. Each step is as large as the segment's
    /// data so far, up to this, so a partition written once holds little
    /// and a busy one calls fallocate once per this many bytes.
    pub preallocate_step_max_bytes: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 60 * 60 * 1000,
            retention_ms: 7 * 24 * 60 * 60 * 1000,
            retention_bytes: -1,
            index_interval_bytes: 4096,
            segment_index_bytes: 10 << 20,
            flush_interval_messages: u64::MAX,
            flush_interval_ms: u64::MAX,
            log_append_time: false,
            cleanup_delete: true,
            cleanup_compact: false,
            delete_retention_ms: 86_400_000,
            min_cleanable_dirty_ratio: 0.5,
            preallocate: false,
            preallocate_step_max_bytes: 16 << 20,
        }
    }
}
