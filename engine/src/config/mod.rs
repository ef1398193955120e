//! Broker configuration: Kafka's names and defaults, from a TOML file plus
//! command-line overrides. Built once in `main` before any shard starts and
//! shared read-only (`Arc<BrokerConfig>`) by every shard. `topic`: per-topic
//! overrides (Kafka's topic config names), their validation and effective values.

pub mod cluster;
pub mod topic;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::storage::LogConfig;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value {value:?} for {key}: {reason}")]
    InvalidValue {
        key: String,
        value: String,
        reason: String,
    },
    #[error("expected KEY=VALUE, got {0:?}")]
    BadOverride(String),
}

const MS_PER_HOUR: i64 = 3_600_000;

/// Every broker-level setting, named as Kafka names it.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// `node.id` (KRaft) / `broker.id`.
    pub node_id: i32,
    /// `listeners`: where the Kafka port is bound (every shard binds it with SO_REUSEPORT).
    pub listen_addr: SocketAddr,
    /// `advertised.listeners`: the address clients are told to connect to.
    pub advertised_host: String,
    pub advertised_port: u16,
    /// `log.dirs` (one directory).
    pub data_dir: PathBuf,
    /// Executors; one per core unless `--shards` overrides.
    pub shards: usize,
    /// `num.partitions`: partitions of an auto-created or default-sized topic.
    pub num_partitions: i32,
    /// `default.replication.factor`.
    pub default_replication_factor: i16,
    /// `auto.create.topics.enable`.
    pub auto_create_topics_enable: bool,
    /// `socket.request.max.bytes`: larger request frames close the connection.
    pub socket_request_max_bytes: usize,
    /// `max.request.partition.size.limit`: the most partitions one
    /// DescribeTopicPartitions answer holds (the client may ask for fewer).
    pub max_request_partition_size_limit: usize,
    /// `message.max.bytes`: the largest record batch a topic accepts by default.
    pub message_max_bytes: usize,
    /// `max.connections`: per broker; split evenly between shards.
    pub max_connections: usize,
    /// `socket.listen.backlog.size`: pending connections per shard's listening socket.
    pub socket_listen_backlog_size: i32,
    /// `connections.max.idle.ms`: a connection silent this long is closed.
    pub connections_max_idle_ms: u64,
    /// `log.retention.check.interval.ms`.
    pub log_retention_check_interval_ms: u64,
    /// `log.cache.bytes`: per shard, recently appended batches kept in memory
    /// for consumers at the tail (0 disables the cache).
    pub log_cache_bytes: usize,
    /// `log.cleaner.enable`: compact `cleanup.policy=compact` topics.
    pub log_cleaner_enable: bool,
    /// `log.cleaner.backoff.ms`: pause between a shard's compaction checks.
    pub log_cleaner_backoff_ms: u64,
    /// `log.cleaner.dedupe.buffer.size`: key-map memory for compaction, split
    /// evenly between shards (each compacts one log at a time).
    pub log_cleaner_dedupe_buffer_size: usize,
    /// `log.cleaner.io.max.bytes.per.second`: compaction read+write budget,
    /// split between shards (Kafka's default: unlimited).
    pub log_cleaner_io_max_bytes_per_second: f64,
    /// `log.flush.scheduler.interval.ms`: how often each shard checks for logs
    /// whose `flush.ms` has passed (sooner when a topic's flush.ms is shorter).
    /// Kafka's default (Long.MAX) never checks, so a topic's flush.ms only
    /// acts on append there; here it holds on idle partitions too.
    pub log_flush_scheduler_interval_ms: u64,
    /// `connection.max.inflight.requests`: Produce requests one connection
    /// may have running at once (pipelined, answered in order). Bounds a
    /// connection's memory at this many `socket.request.max.bytes` frames.
    pub connection_max_inflight_requests: usize,
    /// `fetch.zero.copy.enable`: serve fetches that miss the tail cache with
    /// sendfile(2) from the page cache (true) or with copying O_DIRECT reads.
    pub fetch_zero_copy_enable: bool,
    /// `num.io.threads`: per shard, zero-copy sends that may run at once on
    /// the shard's blocking-thread pool (which has one more thread, kept for
    /// glommio's own blocking file operations).
    pub num_io_threads: usize,
    /// `num.recovery.threads.per.data.dir`: per shard, logs opened (and
    /// recovered after a crash) or closed at once at start, shutdown and
    /// metadata changes. Kafka's name and purpose; here it counts I/O
    /// chains in flight on the shard's ring, not threads, hence a default
    /// well above Kafka's 1.
    pub num_recovery_threads_per_data_dir: usize,
    /// `socket.send.timeout.ms`: a zero-copy send to a client that reads
    /// nothing for this long fails and the connection is closed, so a stuck
    /// consumer cannot hold an I/O thread.
    pub socket_send_timeout_ms: u64,
    /// `log.fd.cache.size`: segment files a shard keeps open at most (an LRU);
    /// idle partitions hold none. Also the shard's bound on zero-copy fetch
    /// slices open at once (each its own fd until sent; past it, reads copy).
    pub log_fd_cache_size: usize,
    /// `log.fd.idle.ms` (shardlog): a cached segment file unused this long is
    /// closed, so idle partitions hold no descriptor even below the cache
    /// size.
    pub log_fd_idle_ms: u64,
    /// `shard.partitions.max`: the partition budget of one shard. Creating
    /// more is refused (POLICY_VIOLATION) instead of running out of memory
    /// or file descriptors; the idle cost of a partition is measured in
    /// `results/partition-footprint.md` (3.1 KiB RSS at 100,000 partitions,
    /// so the default budget is ~300 MiB of a shard's memory).
    pub shard_partitions_max: usize,
    /// `log.flush.offset.checkpoint.interval.ms`: how often producer-state
    /// snapshots are written, which bounds the log replayed after a crash.
    pub log_flush_offset_checkpoint_interval_ms: u64,
    /// `producer.id.expiration.ms`: idle idempotent producers are forgotten after this.
    pub producer_id_expiration_ms: i64,
    /// `min.insync.replicas`.
    pub min_insync_replicas: i32,
    /// `unclean.leader.election.enable`: with every in-sync replica gone,
    /// elect any live replica (losing what only the ISR had) rather than wait.
    pub unclean_leader_election_enable: bool,
    /// `log.message.timestamp.type`.
    pub log_message_timestamp_type: String,
    /// `compression.type`: the codec topics store batches in unless they
    /// override it (`producer`: as sent; see `storage::recompress`).
    pub compression_type: String,
    /// `log.cleanup.policy`.
    pub log_cleanup_policy: String,
    /// `controlled.shutdown` budget: how long a clean shutdown may take before giving up.
    pub shutdown_timeout_ms: u64,
    /// Defaults for every partition's log (`log.segment.bytes`, `log.retention.ms`, ...).
    pub log: LogConfig,
    /// Cross-shard channel depth (messages per shard pair).
    pub shard_channel_capacity: usize,
    /// Consumer-group coordinator settings (`offsets.*`, `group.*`).
    pub group: GroupConfig,
    /// Transaction coordinator settings (`transaction.*`).
    pub txn: TxnConfig,
    /// Roles, quorum voters, the CONTROLLER listener, rack, broker session.
    pub cluster: cluster::ClusterConfig,
    /// The Prometheus endpoint and health checks (`metrics.*`).
    pub metrics: MetricsConfig,
    /// `log.format` (shardlog): `text` (the default) or `json`, one event
    /// per line with its shard and fields.
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The metrics listener (`/metrics`, `/health`, `/ready`); shardlog's own
/// settings, as Kafka exports its metrics through JMX instead.
#[derive(Clone, Debug)]
pub struct MetricsConfig {
    /// `metrics.listen`: where the HTTP endpoint is bound, empty to turn it
    /// off. The default `127.0.0.1:9644` (Redpanda's metrics port, which
    /// operators' scrape configs already name) is skipped with a warning
    /// when another process holds it; an address set explicitly that cannot
    /// be bound stops the broker.
    pub listen: Option<SocketAddr>,
    /// Whether `listen` was set by the operator (binding failures are fatal then).
    pub listen_explicit: bool,
    /// `metrics.partition.series.max`: partitions of this broker that get
    /// per-partition series; the rest count only in their topic's series,
    /// so a scrape of 100,000 partitions stays a few MB.
    pub partition_series_max: usize,
    /// `metrics.topic.series.max`: topics with their own series; the rest
    /// are summed under `topic="_other"`.
    pub topic_series_max: usize,
    /// `metrics.connections.max`: HTTP connections open at once; more are
    /// closed at accept.
    pub connections_max: usize,
    /// `metrics.request.timeout.ms`: a client must send its request and
    /// take the whole answer within this, or its connection is closed.
    pub request_timeout_ms: u64,
    /// `metrics.stall.threshold.ms`: a shard's reactor running this late
    /// on its probe timer counts as a stall.
    pub stall_threshold_ms: u64,
    /// `metrics.shard.capacity.curve`: one shard's measured produce
    /// capacity by its partition count, `partitions:bytes_per_second`
    /// points (interpolated on log(partitions)), the base of the MB/s
    /// headroom; empty: not reported. The default is this development
    /// host's (`results/partition-count.md`, per shard of two); set your
    /// host's from `shardlog-bench capacity`.
    pub shard_capacity_curve: Vec<(u64, u64)>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: Some("127.0.0.1:9644".parse().expect("literal address")),
            listen_explicit: false,
            partition_series_max: 10_000,
            topic_series_max: 1_000,
            connections_max: 16,
            request_timeout_ms: 10_000,
            stall_threshold_ms: 25,
            shard_capacity_curve: vec![(50, 164_000_000), (5_000, 49_000_000), (50_000, 45_900_000)],
        }
    }
}

/// Consumer-group coordinator settings, Kafka's names and defaults where
/// Kafka has them; the shardlog-only bounds say so.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    /// `offsets.topic.num.partitions`: partitions of `__consumer_offsets`;
    /// group `g` lives on partition `abs(hash(g)) % this`.
    pub offsets_topic_num_partitions: i32,
    /// `group.initial.rebalance.delay.ms`: how long the first rebalance of an
    /// empty group waits for more members before completing.
    pub initial_rebalance_delay_ms: u64,
    /// `group.min.session.timeout.ms`.
    pub min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`.
    pub max_session_timeout_ms: i32,
    /// `group.max.size`: members (and pending members) of one group. Kafka's
    /// default is Int.MaxValue; shardlog bounds it so a group's memory is bounded.
    pub max_size: usize,
    /// `offsets.retention.minutes`, in ms: offsets of an empty group expire after this.
    pub offsets_retention_ms: i64,
    /// `offsets.retention.check.interval.ms`.
    pub offsets_retention_check_interval_ms: u64,
    /// `offsets.commit.timeout.ms`: a commit waits this long for the
    /// `__consumer_offsets` ISR before failing (the client sees COORDINATOR_NOT_AVAILABLE, as from Kafka).
    pub offsets_commit_timeout_ms: u64,
    /// `offset.metadata.max.bytes`: longer commit metadata is refused
    /// (OFFSET_METADATA_TOO_LARGE).
    pub offset_metadata_max_bytes: usize,
    /// `group.member.metadata.max.bytes` (shardlog): protocol metadata a member
    /// may send in JoinGroup, summed over its protocols.
    pub member_metadata_max_bytes: usize,
    /// `shard.groups.max` (shardlog): groups one shard coordinates; a join
    /// for a new group beyond it gets COORDINATOR_NOT_AVAILABLE (retriable).
    pub shard_groups_max: usize,
    /// `group.consumer.heartbeat.interval.ms`: how often a KIP-848 member
    /// heartbeats (sent to it in every answer).
    pub consumer_heartbeat_interval_ms: i32,
    /// `group.consumer.session.timeout.ms`: a KIP-848 member silent this
    /// long is removed and its partitions go to the others.
    pub consumer_session_timeout_ms: i64,
    /// `group.consumer.max.size`: members of one KIP-848 group. Kafka's
    /// default is Int.MaxValue; bounded here like `group.max.size`.
    pub consumer_max_size: usize,
}

/// Transaction coordinator settings, Kafka's names; the defaults are
/// Kafka's except where a single node needs otherwise (said per field).
#[derive(Clone, Debug)]
pub struct TxnConfig {
    /// `transaction.state.log.num.partitions`: partitions of
    /// `__transaction_state`; id `t` lives on `abs(hash(t)) % this`.
    pub state_log_num_partitions: i32,
    /// `transaction.state.log.replication.factor`. Kafka's default is 3;
    /// shardlog's is 1, like its `offsets.topic.replication.factor`, so a
    /// single node works out of the box. Clusters set 3.
    pub state_log_replication_factor: i16,
    /// `transaction.state.log.min.isr`: replicas a coordinator write waits
    /// for (capped by the partition's ISR rules as any acks=all write).
    /// Kafka's default is 2; shardlog's 1 goes with the replication factor.
    pub state_log_min_isr: usize,
    /// `transaction.max.timeout.ms`: a longer `transaction.timeout.ms` is
    /// refused (INVALID_TRANSACTION_TIMEOUT).
    pub max_timeout_ms: i32,
    /// `transaction.abort.timed.out.transaction.cleanup.interval.ms`: how
    /// often open transactions are checked against their timeout.
    pub abort_timed_out_cleanup_interval_ms: u64,
    /// `transaction.state.log.write.timeout.ms` (shardlog; Kafka uses the
    /// transaction's timeout): how long a coordinator write waits for its
    /// replicas before the client sees COORDINATOR_NOT_AVAILABLE.
    pub state_log_write_timeout_ms: u64,
    /// `transaction.marker.retry.backoff.ms` (shardlog): pause before
    /// markers are sent again to partitions whose leader could not take them.
    pub marker_retry_backoff_ms: u64,
    /// `shard.transactional.ids.max` (shardlog): transactional ids one shard
    /// coordinates; InitProducerId for a new id beyond it gets
    /// COORDINATOR_NOT_AVAILABLE (retriable).
    pub shard_transactional_ids_max: usize,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            state_log_num_partitions: 50,
            state_log_replication_factor: 1,
            state_log_min_isr: 1,
            max_timeout_ms: 900_000,
            abort_timed_out_cleanup_interval_ms: 10_000,
            state_log_write_timeout_ms: 5_000,
            marker_retry_backoff_ms: 100,
            shard_transactional_ids_max: 100_000,
        }
    }
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            offsets_topic_num_partitions: 50,
            initial_rebalance_delay_ms: 3_000,
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            max_size: 1_000,
            offsets_retention_ms: 10_080 * 60_000,
            offsets_retention_check_interval_ms: 600_000,
            offsets_commit_timeout_ms: 5_000,
            offset_metadata_max_bytes: 4_096,
            member_metadata_max_bytes: 65_536,
            shard_groups_max: 100_000,
            consumer_heartbeat_interval_ms: 5_000,
            consumer_session_timeout_ms: 45_000,
            consumer_max_size: 1_000,
        }
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            node_id: 0,
            listen_addr: "127.0.0.1:9092".parse().expect("literal address"),
            advertised_host: "127.0.0.1".to_string(),
            advertised_port: 9092,
            data_dir: PathBuf::from("./data"),
            shards: default_shards(),
            num_partitions: 1,
            default_replication_factor: 1,
            auto_create_topics_enable: true,
            socket_request_max_bytes: 104_857_600,
            max_request_partition_size_limit: 2_000,
            message_max_bytes: 1_048_588,
            max_connections: 10_000,
            connections_max_idle_ms: 600_000,
            socket_listen_backlog_size: 50,
            log_retention_check_interval_ms: 300_000,
            log_flush_offset_checkpoint_interval_ms: 60_000,
            log_fd_cache_size: 256,
            log_fd_idle_ms: 60_000,
            log_cache_bytes: 64 << 20,
            log_cleaner_enable: true,
            log_cleaner_backoff_ms: 15_000,
            log_cleaner_dedupe_buffer_size: 128 << 20,
            log_cleaner_io_max_bytes_per_second: f64::MAX,
            log_flush_scheduler_interval_ms: 1000,
            connection_max_inflight_requests: 5,
            fetch_zero_copy_enable: true,
            num_io_threads: 8,
            num_recovery_threads_per_data_dir: 64,
            socket_send_timeout_ms: 30_000,
            shard_partitions_max: 100_000,
            producer_id_expiration_ms: 86_400_000,
            min_insync_replicas: 1,
            unclean_leader_election_enable: false,
            log_message_timestamp_type: "CreateTime".to_string(),
            compression_type: "producer".to_string(),
            log_cleanup_policy: "delete".to_string(),
            shutdown_timeout_ms: 30_000,
            log: LogConfig::default(),
            shard_channel_capacity: 1024,
            group: GroupConfig::default(),
            txn: TxnConfig::default(),
            cluster: cluster::ClusterConfig::default(),
            metrics: MetricsConfig::default(),
            log_format: LogFormat::Text,
        }
    }
}

fn default_shards() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

impl BrokerConfig {
    /// Builds the configuration: defaults, then the TOML file, then `--set` overrides.
    pub fn load(file: Option<&Path>, overrides: &[(String, String)]) -> Result<Self, ConfigError> {
        let mut config = BrokerConfig::default();
        if let Some(path) = file {
            for (key, value) in read_toml_flat(path)? {
                config.set(&key, &value)?;
            }
        }
        for (key, value) in overrides {
            config.set(key, value)?;
        }
        config.cluster.validate(config.node_id)?;
        Ok(config)
    }

    /// Applies one Kafka-named setting. Unknown keys are logged and ignored, as Kafka does.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let v = value.trim();
        match key {
            "node.id" | "broker.id" => self.node_id = parse(key, v)?,
            "listeners" => {
                for (name, host, port) in cluster::parse_listeners(key, v)? {
                    let addr: SocketAddr =
                        format!("{host}:{port}").parse().map_err(|e| invalid(key, v, e))?;
                    if name == "CONTROLLER" {
                        self.cluster.controller_listen = Some(addr);
                    } else {
                        self.set_plaintext_listener(addr);
                    }
                }
            }
            "advertised.listeners" => {
                for (name, host, port) in cluster::parse_listeners(key, v)? {
                    if name == "PLAINTEXT" {
                        self.advertised_host = host;
                        self.advertised_port = port;
                    }
                }
            }
            "log.dirs" | "log.dir" => {
                let first = v.split(',').next().unwrap_or(v).trim();
                self.data_dir = PathBuf::from(first);
            }
            "num.partitions" => self.num_partitions = parse_positive(key, v)?,
            "default.replication.factor" => self.default_replication_factor = parse_positive(key, v)?,
            "auto.create.topics.enable" => self.auto_create_topics_enable = parse(key, v)?,
            "socket.request.max.bytes" => self.socket_request_max_bytes = parse_positive(key, v)?,
            "max.request.partition.size.limit" => {
                self.max_request_partition_size_limit = parse_positive(key, v)?
            }
            "message.max.bytes" => self.message_max_bytes = parse_positive(key, v)?,
            "max.connections" => self.max_connections = parse_positive(key, v)?,
            "connections.max.idle.ms" => self.connections_max_idle_ms = parse_positive(key, v)?,
            "socket.listen.backlog.size" => self.socket_listen_backlog_size = parse_positive(key, v)?,
            "log.segment.bytes" => {
                let bytes: u64 = parse_positive(key, v)?;
                if bytes < 14 {
                    return Err(invalid(key, v, "must be at least 14"));
                }
                self.log.segment_bytes = bytes;
            }
            "log.roll.ms" => self.log.segment_ms = parse_positive(key, v)?,
            "log.roll.hours" => self.log.segment_ms = parse_positive::<u64>(key, v)? * MS_PER_HOUR as u64,
            "log.retention.ms" => self.log.retention_ms = parse_retention(key, v, 1)?,
            "log.retention.minutes" => self.log.retention_ms = parse_retention(key, v, 60_000)?,
            "log.retention.hours" => self.log.retention_ms = parse_retention(key, v, MS_PER_HOUR)?,
            "log.retention.bytes" => self.log.retention_bytes = parse_retention(key, v, 1)?,
            "log.retention.check.interval.ms" => {
                self.log_retention_check_interval_ms = parse_positive(key, v)?
            }
            "log.flush.offset.checkpoint.interval.ms" => {
                self.log_flush_offset_checkpoint_interval_ms = parse_positive(key, v)?
            }
            "producer.id.expiration.ms" => self.producer_id_expiration_ms = parse_positive(key, v)?,
            "log.fd.cache.size" => self.log_fd_cache_size = parse_positive(key, v)?,
            "log.fd.idle.ms" => self.log_fd_idle_ms = parse_positive(key, v)?,
            "log.cache.bytes" => self.log_cache_bytes = parse(key, v)?,
            "log.flush.scheduler.interval.ms" => {
                self.log_flush_scheduler_interval_ms = parse_positive(key, v)?
            }
            "connection.max.inflight.requests" => {
                self.connection_max_inflight_requests = parse_positive(key, v)?
            }
            "fetch.zero.copy.enable" => self.fetch_zero_copy_enable = parse(key, v)?,
            "num.io.threads" => self.num_io_threads = parse_positive(key, v)?,
            "num.recovery.threads.per.data.dir" => {
                self.num_recovery_threads_per_data_dir = parse_positive(key, v)?
            }
            "socket.send.timeout.ms" => self.socket_send_timeout_ms = parse_positive(key, v)?,
            "shard.partitions.max" => self.shard_partitions_max = parse_positive(key, v)?,
            "log.index.interval.bytes" => self.log.index_interval_bytes = parse(key, v)?,
            "log.index.size.max.bytes" => {
                let bytes: u32 = parse_positive(key, v)?;
                if bytes < 8 {
                    return Err(invalid(key, v, "must be at least 8"));
                }
                self.log.segment_index_bytes = bytes;
            }
            "log.flush.interval.messages" => self.log.flush_interval_messages = parse_positive(key, v)?,
            "log.flush.interval.ms" => self.log.flush_interval_ms = parse_positive(key, v)?,
            "log.preallocate" => self.log.preallocate = parse(key, v)?,
            "log.preallocate.step.max.bytes" => self.log.preallocate_step_max_bytes = parse_positive(key, v)?,
            "min.insync.replicas" => self.min_insync_replicas = parse_positive(key, v)?,
            "unclean.leader.election.enable" => self.unclean_leader_election_enable = parse(key, v)?,
            "log.message.timestamp.type" => {
                if v != "CreateTime" && v != "LogAppendTime" {
                    return Err(invalid(key, v, "must be CreateTime or LogAppendTime"));
                }
                self.log_message_timestamp_type = v.to_string();
            }
            "compression.type" => {
                if crate::storage::recompress::TopicCompression::parse(v).is_none() {
                    return Err(invalid(
                        key,
                        v,
                        "must be producer, uncompressed, gzip, snappy, lz4 or zstd",
                    ));
                }
                self.compression_type = v.trim().to_string();
            }
            "log.cleanup.policy" => {
                let Some((delete, compact)) = topic::parse_cleanup_policy(v) else {
                    return Err(invalid(key, v, "must be delete, compact or compact,delete"));
                };
                (self.log.cleanup_delete, self.log.cleanup_compact) = (delete, compact);
                self.log_cleanup_policy = v.to_string();
            }
            "log.cleaner.delete.retention.ms" => self.log.delete_retention_ms = parse(key, v)?,
            "log.cleaner.min.cleanable.ratio" => {
                let ratio: f64 = parse(key, v)?;
                if !(0.0..=1.0).contains(&ratio) {
                    return Err(invalid(key, v, "must be between 0 and 1"));
                }
                self.log.min_cleanable_dirty_ratio = ratio;
            }
            "log.cleaner.enable" => self.log_cleaner_enable = parse(key, v)?,
            "log.cleaner.backoff.ms" => self.log_cleaner_backoff_ms = parse_positive(key, v)?,
            "log.cleaner.dedupe.buffer.size" => self.log_cleaner_dedupe_buffer_size = parse_positive(key, v)?,
            "log.cleaner.io.max.bytes.per.second" => {
                self.log_cleaner_io_max_bytes_per_second = parse_positive(key, v)?
            }
            "shutdown.timeout.ms" => self.shutdown_timeout_ms = parse_positive(key, v)?,
            "shard.channel.capacity" => self.shard_channel_capacity = parse_positive(key, v)?,
            "offsets.topic.num.partitions" => {
                self.group.offsets_topic_num_partitions = parse_positive(key, v)?
            }
            "group.initial.rebalance.delay.ms" => self.group.initial_rebalance_delay_ms = parse(key, v)?,
            "group.min.session.timeout.ms" => self.group.min_session_timeout_ms = parse_positive(key, v)?,
            "group.max.session.timeout.ms" => self.group.max_session_timeout_ms = parse_positive(key, v)?,
            "group.max.size" => self.group.max_size = parse_positive(key, v)?,
            "offsets.retention.minutes" => {
                self.group.offsets_retention_ms = parse_positive::<i64>(key, v)?
                    .checked_mul(60_000)
                    .ok_or_else(|| invalid(key, v, "too large"))?
            }
            "offsets.retention.check.interval.ms" => {
                self.group.offsets_retention_check_interval_ms = parse_positive(key, v)?
            }
            "offsets.commit.timeout.ms" => self.group.offsets_commit_timeout_ms = parse_positive(key, v)?,
            "offset.metadata.max.bytes" => self.group.offset_metadata_max_bytes = parse(key, v)?,
            "group.member.metadata.max.bytes" => {
                self.group.member_metadata_max_bytes = parse_positive(key, v)?
            }
            "shard.groups.max" => self.group.shard_groups_max = parse_positive(key, v)?,
            "group.consumer.heartbeat.interval.ms" => {
                self.group.consumer_heartbeat_interval_ms = parse_positive(key, v)?
            }
            "group.consumer.session.timeout.ms" => {
                self.group.consumer_session_timeout_ms = parse_positive(key, v)?
            }
            "group.consumer.max.size" => self.group.consumer_max_size = parse_positive(key, v)?,
            "transaction.state.log.num.partitions" => {
                self.txn.state_log_num_partitions = parse_positive(key, v)?
            }
            "transaction.state.log.replication.factor" => {
                self.txn.state_log_replication_factor = parse_positive(key, v)?
            }
            "transaction.state.log.min.isr" => self.txn.state_log_min_isr = parse_positive(key, v)?,
            "transaction.max.timeout.ms" => self.txn.max_timeout_ms = parse_positive(key, v)?,
            "transaction.abort.timed.out.transaction.cleanup.interval.ms" => {
                self.txn.abort_timed_out_cleanup_interval_ms = parse_positive(key, v)?
            }
            "transaction.state.log.write.timeout.ms" => {
                self.txn.state_log_write_timeout_ms = parse_positive(key, v)?
            }
            "transaction.marker.retry.backoff.ms" => {
                self.txn.marker_retry_backoff_ms = parse_positive(key, v)?
            }
            "shard.transactional.ids.max" => self.txn.shard_transactional_ids_max = parse_positive(key, v)?,
            "metrics.listen" => {
                self.metrics.listen = if v.is_empty() {
                    None
                } else {
                    Some(v.parse().map_err(|e| invalid(key, v, e))?)
                };
                self.metrics.listen_explicit = true;
            }
            "metrics.partition.series.max" => self.metrics.partition_series_max = parse(key, v)?,
            "metrics.topic.series.max" => self.metrics.topic_series_max = parse(key, v)?,
            "metrics.connections.max" => self.metrics.connections_max = parse_positive(key, v)?,
            "metrics.request.timeout.ms" => self.metrics.request_timeout_ms = parse_positive(key, v)?,
            "metrics.stall.threshold.ms" => self.metrics.stall_threshold_ms = parse_positive(key, v)?,
            "metrics.shard.capacity.curve" => self.metrics.shard_capacity_curve = parse_curve(key, v)?,
            "log.format" => {
                self.log_format = match v {
                    "text" => LogFormat::Text,
                    "json" => LogFormat::Json,
                    _ => return Err(invalid(key, v, "must be text or json")),
                }
            }
            _ if self.cluster.set(key, v)? => {}
            _ => tracing::warn!(
                key,
                "the configuration {key:?} was supplied but isn't a known config"
            ),
        }
        Ok(())
    }

    /// The PLAINTEXT listener (`--listen`): where clients connect, and what
    /// they are told unless `advertised.listeners` says otherwise.
    pub fn set_plaintext_listener(&mut self, addr: SocketAddr) {
        self.listen_addr = addr;
        self.advertised_host = addr.ip().to_string();
        self.advertised_port = addr.port();
    }

    /// File descriptors the broker may hold at once under full load: every
    /// shard's segment-file cache full and as many zero-copy fetch slices
    /// open (the same bound), every connection open, and a fixed
    /// allowance for the rest (each shard's three io_uring rings and eventfd,
    /// index and checkpoint files being written, listeners, the data dir).
    /// Compared with the open-files limit at start, so running out shows as
    /// one warning at start, not as EMFILE failures under load.
    pub fn descriptors_needed(&self) -> u64 {
        self.shards as u64 * 2 * self.log_fd_cache_size as u64
            + self.max_connections as u64
            + self.descriptors_reserved()
    }

    /// The fixed allowance in `descriptors_needed`: 64 per shard and 256
    /// for the broker.
    pub fn descriptors_reserved(&self) -> u64 {
        const PER_SHARD_OTHER: u64 = 64;
        const BROKER_OTHER: u64 = 256;
        self.shards as u64 * PER_SHARD_OTHER + BROKER_OTHER
    }

    /// Broker-level entries DescribeConfigs reports: (name, value, is_default).
    pub fn describe(&self) -> Vec<(&'static str, String, bool)> {
        let d = BrokerConfig::default();
        let entries: Vec<(&'static str, String, String)> = vec![
            ("node.id", self.node_id.to_string(), d.node_id.to_string()),
            (
                "listeners",
                format!("PLAINTEXT://{}", self.listen_addr),
                format!("PLAINTEXT://{}", d.listen_addr),
            ),
            (
                "advertised.listeners",
                format!("PLAINTEXT://{}:{}", self.advertised_host, self.advertised_port),
                format!("PLAINTEXT://{}:{}", d.advertised_host, d.advertised_port),
            ),
            (
                "log.dirs",
                self.data_dir.display().to_string(),
                d.data_dir.display().to_string(),
            ),
            (
                "num.partitions",
                self.num_partitions.to_string(),
                d.num_partitions.to_string(),
            ),
            (
                "default.replication.factor",
                self.default_replication_factor.to_string(),
                d.default_replication_factor.to_string(),
            ),
            (
                "auto.create.topics.enable",
                self.auto_create_topics_enable.to_string(),
                d.auto_create_topics_enable.to_string(),
            ),
            (
                "socket.request.max.bytes",
                self.socket_request_max_bytes.to_string(),
                d.socket_request_max_bytes.to_string(),
            ),
            (
                "max.request.partition.size.limit",
                self.max_request_partition_size_limit.to_string(),
                d.max_request_partition_size_limit.to_string(),
            ),
            (
                "message.max.bytes",
                self.message_max_bytes.to_string(),
                d.message_max_bytes.to_string(),
            ),
            (
                "max.connections",
                self.max_connections.to_string(),
                d.max_connections.to_string(),
            ),
            (
                "socket.listen.backlog.size",
                self.socket_listen_backlog_size.to_string(),
                d.socket_listen_backlog_size.to_string(),
            ),
            (
                "connections.max.idle.ms",
                self.connections_max_idle_ms.to_string(),
                d.connections_max_idle_ms.to_string(),
            ),
            (
                "log.segment.bytes",
                self.log.segment_bytes.to_string(),
                d.log.segment_bytes.to_string(),
            ),
            (
                "log.roll.ms",
                self.log.segment_ms.to_string(),
                d.log.segment_ms.to_string(),
            ),
            (
                "log.retention.ms",
                self.log.retention_ms.to_string(),
                d.log.retention_ms.to_string(),
            ),
            (
                "log.retention.bytes",
                self.log.retention_bytes.to_string(),
                d.log.retention_bytes.to_string(),
            ),
            (
                "log.retention.check.interval.ms",
                self.log_retention_check_interval_ms.to_string(),
                d.log_retention_check_interval_ms.to_string(),
            ),
            (
                "log.flush.offset.checkpoint.interval.ms",
                self.log_flush_offset_checkpoint_interval_ms.to_string(),
                d.log_flush_offset_checkpoint_interval_ms.to_string(),
            ),
            (
                "producer.id.expiration.ms",
                self.producer_id_expiration_ms.to_string(),
                d.producer_id_expiration_ms.to_string(),
            ),
            (
                "log.fd.cache.size",
                self.log_fd_cache_size.to_string(),
                d.log_fd_cache_size.to_string(),
            ),
            (
                "log.fd.idle.ms",
                self.log_fd_idle_ms.to_string(),
                d.log_fd_idle_ms.to_string(),
            ),
            (
                "log.cache.bytes",
                self.log_cache_bytes.to_string(),
                d.log_cache_bytes.to_string(),
            ),
            (
                "log.cleaner.enable",
                self.log_cleaner_enable.to_string(),
                d.log_cleaner_enable.to_string(),
            ),
            (
                "log.cleaner.backoff.ms",
                self.log_cleaner_backoff_ms.to_string(),
                d.log_cleaner_backoff_ms.to_string(),
            ),
            (
                "log.cleaner.dedupe.buffer.size",
                self.log_cleaner_dedupe_buffer_size.to_string(),
                d.log_cleaner_dedupe_buffer_size.to_string(),
            ),
            (
                "log.cleaner.io.max.bytes.per.second",
                self.log_cleaner_io_max_bytes_per_second.to_string(),
                d.log_cleaner_io_max_bytes_per_second.to_string(),
            ),
            (
                "log.cleaner.delete.retention.ms",
                self.log.delete_retention_ms.to_string(),
                d.log.delete_retention_ms.to_string(),
            ),
            (
                "log.cleaner.min.cleanable.ratio",
                self.log.min_cleanable_dirty_ratio.to_string(),
                d.log.min_cleanable_dirty_ratio.to_string(),
            ),
            (
                "log.flush.scheduler.interval.ms",
                self.log_flush_scheduler_interval_ms.to_string(),
                d.log_flush_scheduler_interval_ms.to_string(),
            ),
            (
                "connection.max.inflight.requests",
                self.connection_max_inflight_requests.to_string(),
                d.connection_max_inflight_requests.to_string(),
            ),
            (
                "fetch.zero.copy.enable",
                self.fetch_zero_copy_enable.to_string(),
                d.fetch_zero_copy_enable.to_string(),
            ),
            (
                "num.io.threads",
                self.num_io_threads.to_string(),
                d.num_io_threads.to_string(),
            ),
            (
                "num.recovery.threads.per.data.dir",
                self.num_recovery_threads_per_data_dir.to_string(),
                d.num_recovery_threads_per_data_dir.to_string(),
            ),
            (
                "socket.send.timeout.ms",
                self.socket_send_timeout_ms.to_string(),
                d.socket_send_timeout_ms.to_string(),
            ),
            (
                "shard.partitions.max",
                self.shard_partitions_max.to_string(),
                d.shard_partitions_max.to_string(),
            ),
            (
                "log.index.interval.bytes",
                self.log.index_interval_bytes.to_string(),
                d.log.index_interval_bytes.to_string(),
            ),
            (
                "log.index.size.max.bytes",
                self.log.segment_index_bytes.to_string(),
                d.log.segment_index_bytes.to_string(),
            ),
            (
                "log.flush.interval.messages",
                flush_value(self.log.flush_interval_messages),
                flush_value(d.log.flush_interval_messages),
            ),
            (
                "log.flush.interval.ms",
                flush_value(self.log.flush_interval_ms),
                flush_value(d.log.flush_interval_ms),
            ),
            (
                "log.preallocate",
                self.log.preallocate.to_string(),
                d.log.preallocate.to_string(),
            ),
            (
                "log.preallocate.step.max.bytes",
                self.log.preallocate_step_max_bytes.to_string(),
                d.log.preallocate_step_max_bytes.to_string(),
            ),
            (
                "min.insync.replicas",
                self.min_insync_replicas.to_string(),
                d.min_insync_replicas.to_string(),
            ),
            (
                "unclean.leader.election.enable",
                self.unclean_leader_election_enable.to_string(),
                d.unclean_leader_election_enable.to_string(),
            ),
            (
                "log.message.timestamp.type",
                self.log_message_timestamp_type.clone(),
                d.log_message_timestamp_type.clone(),
            ),
            (
                "compression.type",
                self.compression_type.clone(),
                d.compression_type.clone(),
            ),
            (
                "log.cleanup.policy",
                self.log_cleanup_policy.clone(),
                d.log_cleanup_policy.clone(),
            ),
            (
                "offsets.topic.num.partitions",
                self.group.offsets_topic_num_partitions.to_string(),
                d.group.offsets_topic_num_partitions.to_string(),
            ),
            (
                "group.initial.rebalance.delay.ms",
                self.group.initial_rebalance_delay_ms.to_string(),
                d.group.initial_rebalance_delay_ms.to_string(),
            ),
            (
                "group.min.session.timeout.ms",
                self.group.min_session_timeout_ms.to_string(),
                d.group.min_session_timeout_ms.to_string(),
            ),
            (
                "group.max.session.timeout.ms",
                self.group.max_session_timeout_ms.to_string(),
                d.group.max_session_timeout_ms.to_string(),
            ),
            (
                "group.max.size",
                self.group.max_size.to_string(),
                d.group.max_size.to_string(),
            ),
            (
                "offsets.retention.minutes",
                (self.group.offsets_retention_ms / 60_000).to_string(),
                (d.group.offsets_retention_ms / 60_000).to_string(),
            ),
            (
                "offsets.retention.check.interval.ms",
                self.group.offsets_retention_check_interval_ms.to_string(),
                d.group.offsets_retention_check_interval_ms.to_string(),
            ),
            (
                "offsets.commit.timeout.ms",
                self.group.offsets_commit_timeout_ms.to_string(),
                d.group.offsets_commit_timeout_ms.to_string(),
            ),
            (
                "offset.metadata.max.bytes",
                self.group.offset_metadata_max_bytes.to_string(),
                d.group.offset_metadata_max_bytes.to_string(),
            ),
            (
                "transaction.state.log.num.partitions",
                self.txn.state_log_num_partitions.to_string(),
                d.txn.state_log_num_partitions.to_string(),
            ),
            (
                "transaction.state.log.replication.factor",
                self.txn.state_log_replication_factor.to_string(),
                d.txn.state_log_replication_factor.to_string(),
            ),
            (
                "transaction.state.log.min.isr",
                self.txn.state_log_min_isr.to_string(),
                d.txn.state_log_min_isr.to_string(),
            ),
            (
                "transaction.max.timeout.ms",
                self.txn.max_timeout_ms.to_string(),
                d.txn.max_timeout_ms.to_string(),
            ),
            (
                "transaction.abort.timed.out.transaction.cleanup.interval.ms",
                self.txn.abort_timed_out_cleanup_interval_ms.to_string(),
                d.txn.abort_timed_out_cleanup_interval_ms.to_string(),
            ),
        ];
        entries
            .into_iter()
            .map(|(name, value, default)| {
                let is_default = value == default;
                (name, value, is_default)
            })
            .collect()
    }
}

/// Kafka shows "never" as Long.MAX_VALUE.
fn flush_value(v: u64) -> String {
    if v >= i64::MAX as u64 {
        i64::MAX.to_string()
    } else {
        v.to_string()
    }
}

fn invalid(key: &str, value: &str, reason: impl std::fmt::Display) -> ConfigError {
    ConfigError::InvalidValue {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

fn parse<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    v.parse::<T>().map_err(|e| invalid(key, v, e))
}

fn parse_positive<T>(key: &str, v: &str) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + Default,
    T::Err: std::fmt::Display,
{
    let n: T = parse(key, v)?;
    if n <= T::default() {
        return Err(invalid(key, v, "must be positive"));
    }
    Ok(n)
}

/// Retention values: -1 means unlimited, otherwise a positive count of `unit_ms`.
/// `partitions:bytes_per_second,...` with partitions increasing.
fn parse_curve(key: &str, v: &str) -> Result<Vec<(u64, u64)>, ConfigError> {
    let mut points: Vec<(u64, u64)> = Vec::new();
    for point in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (partitions, rate) = point
            .split_once(':')
            .ok_or_else(|| invalid(key, v, "expected partitions:bytes_per_second points"))?;
        let partitions: u64 = parse_positive(key, partitions.trim())?;
        let rate: u64 = parse(key, rate.trim())?;
        if points.last().is_some_and(|&(last, _)| last >= partitions) {
            return Err(invalid(key, v, "partition counts must increase"));
        }
        points.push((partitions, rate));
    }
    Ok(points)
}

fn parse_retention(key: &str, v: &str, unit: i64) -> Result<i64, ConfigError> {
    let n: i64 = parse(key, v)?;
    match n {
        -1 => Ok(-1),
        n if n >= 0 => n.checked_mul(unit).ok_or_else(|| invalid(key, v, "too large")),
        _ => Err(invalid(key, v, "must be -1 or non-negative")),
    }
}

/// `PLAINTEXT://host:port` or `host:port`.
/// `--listen HOST:PORT` (or `PLAINTEXT://HOST:PORT`) as an address.
pub fn resolve_listen(v: &str) -> Result<SocketAddr, ConfigError> {
    let key = "--listen";
    match cluster::parse_listeners(key, v)?.as_slice() {
        [(name, host, port)] if name == "PLAINTEXT" => {
            format!("{host}:{port}").parse().map_err(|e| invalid(key, v, e))
        }
        _ => Err(invalid(key, v, "expected one HOST:PORT")),
    }
}

/// Reads a TOML file into dotted Kafka keys: `log.segment.bytes = 1` (a nested
/// table in TOML) and `"log.segment.bytes" = 1` mean the same thing.
/// `log.format` as the file and the overrides set it, read before the
/// configuration is loaded: the logger must exist first, so that loading
/// can log. An invalid value is reported by `BrokerConfig::load`.
pub fn peek_log_format(file: Option<&Path>, overrides: &[(String, String)]) -> LogFormat {
    let from_file = file
        .and_then(|path| read_toml_flat(path).ok())
        .and_then(|flat| flat.get("log.format").cloned());
    let value = overrides
        .iter()
        .rev()
        .find(|(key, _)| key == "log.format")
        .map(|(_, v)| v.clone())
        .or(from_file);
    match value.as_deref().map(str::trim) {
        Some("json") => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

fn read_toml_flat(path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let mut flat = BTreeMap::new();
    flatten("", &toml::Value::Table(table), &mut flat);
    Ok(flat)
}

fn flatten(prefix: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        toml::Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        toml::Value::Array(items) => {
            let joined: Vec<String> = items
                .iter()
                .map(|i| match i {
                    toml::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            out.insert(prefix.to_string(), joined.join(","));
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// Splits `KEY=VALUE` from `--set`.
pub fn parse_override(s: &str) -> Result<(String, String), ConfigError> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| ConfigError::BadOverride(s.to_string()))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_needed_counts_each_shards_file_cache_and_every_connection() {
        let mut c = BrokerConfig::load(None, &[]).unwrap();
        c.shards = 2;
        let base = c.descriptors_needed();
        c.set("log.fd.cache.size", &(c.log_fd_cache_size + 100).to_string())
            .unwrap();
        assert_eq!(
            c.descriptors_needed(),
            base + 400,
            "the cache and the slice budget are per shard"
        );
        c.set("max.connections", &(c.max_connections + 7).to_string())
            .unwrap();
        assert_eq!(c.descriptors_needed(), base + 407, "connections are per broker");
    }

    #[test]
    fn toml_nested_and_quoted_keys_mean_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.toml");
        std::fs::write(
            &path,
            "num.partitions = 6\n\"log.segment.bytes\" = 1048576\nlisteners = \"PLAINTEXT://127.0.0.1:19092\"\n",
        )
        .unwrap();
        let c = BrokerConfig::load(Some(&path), &[]).unwrap();
        assert_eq!(c.num_partitions, 6);
        assert_eq!(c.log.segment_bytes, 1_048_576);
        assert_eq!(c.listen_addr.port(), 19092);
    }

    #[test]
    fn group_settings_use_kafkas_names_and_defaults() {
        let d = BrokerConfig::default().group;
        assert_eq!(d.offsets_topic_num_partitions, 50);
        assert_eq!(d.initial_rebalance_delay_ms, 3_000);
        assert_eq!(
            (d.min_session_timeout_ms, d.max_session_timeout_ms),
            (6_000, 1_800_000)
        );
        assert_eq!(d.offsets_retention_ms, 10_080 * 60_000);
        assert_eq!(d.offset_metadata_max_bytes, 4_096);
        let sets = [
            ("offsets.retention.minutes", "2"),
            ("group.initial.rebalance.delay.ms", "0"),
            ("group.max.size", "7"),
        ];
        let overrides: Vec<(String, String)> =
            sets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let c = BrokerConfig::load(None, &overrides).unwrap().group;
        assert_eq!(
            (c.offsets_retention_ms, c.initial_rebalance_delay_ms, c.max_size),
            (120_000, 0, 7)
        );
        assert!(BrokerConfig::load(None, &[("group.max.size".into(), "0".into())]).is_err());
    }

    #[test]
    fn overrides_win_over_file_and_bad_values_are_refused() {
        let c = BrokerConfig::load(None, &[("num.partitions".into(), "3".into())]).unwrap();
        assert_eq!(c.num_partitions, 3);
        assert!(BrokerConfig::load(None, &[("num.partitions".into(), "-3".into())]).is_err());
        assert!(BrokerConfig::load(None, &[("log.retention.ms".into(), "-7".into())]).is_err());
        let c = BrokerConfig::load(None, &[("log.retention.hours".into(), "1".into())]).unwrap();
        assert_eq!(c.log.retention_ms, 3_600_000);
    }
}
