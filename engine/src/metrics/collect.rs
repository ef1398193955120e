//! One shard's figures (`shard_sample`, run on every shard for a scrape)
//! and the node-wide scrape (`scrape`, on the controller shard): every
//! shard's sample merged, consumer-group lag joined from the coordinators'
//! commits and the replicas' high watermarks, the cluster's state from the
//! metadata image, and the process's own figures from /proc.
//!
//! Label cardinality is bounded: per-partition series for at most
//! `metrics.partition.series.max` partitions of the node (split between
//! shards, the first by topic and index, so the set is stable between
//! scrapes), per-topic series for at most `metrics.topic.series.max`
//! topics per shard (the rest under `topic="_other"`), and lag series for
//! at most `metrics.partition.series.max` (group, partition) pairs; every
//! group keeps its `lag_max` and `lag_sum`.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use std::fmt::Write;

use super::exposition::{self, counter, gauge, histogram, Exposition, Family};
use super::probe;
use crate::latency::Stage;
use crate::shard::{Shard, ShardOp, ShardReply};

const REQUESTS: Family = counter("shardlog_requests_total", "Requests read whole, by Kafka API.");
const REQUEST_ERRORS: Family = counter(
    "shardlog_request_errors_total",
    "Error codes in responses (per response, or per partition where the response has one per partition), by Kafka API and error.",
);
const REQUEST_LATENCY: Family = histogram(
    "shardlog_request_latency_seconds",
    "Request latency by Kafka API and stage (request_queue, handle, response_queue, response_send, total), as Kafka's RequestMetrics.",
);
const STORAGE_LATENCY: Family = histogram(
    "shardlog_storage_latency_seconds",
    "Append stages: append_queue (waiting for the log's writer), segment_write (one io_uring write).",
);
const DURABLE_LATENCY: Family = histogram(
    "shardlog_produce_durable_latency_seconds",
    "An append queued to its bytes written to the segment (and synced when the flush policy asks).",
);
const PRODUCE_BYTES: Family = counter(
    "shardlog_produce_bytes_total",
    "Record batch bytes appended by producers.",
);
const PRODUCE_RECORDS: Family = counter("shardlog_produce_records_total", "Records appended by producers.");
const FETCH_BYTES: Family = counter(
    "shardlog_fetch_bytes_total",
    "Record bytes read for consumers (reader=consumer) and followers (reader=replica).",
);
const REPLICATION_APPEND_BYTES: Family = counter(
    "shardlog_replication_append_bytes_total",
    "Record bytes this node's followers appended from their leaders.",
);
const READ_BYTES: Family = counter(
    "shardlog_read_bytes_total",
    "Record bytes read by path: zero_copy (sendfile from the page cache) or copied (tail cache, O_DIRECT reads).",
);
const TAIL_CACHE_READS: Family = counter(
    "shardlog_tail_cache_reads_total",
    "Reads by whether the tail cache held their offset (result=hit|miss).",
);
const TAIL_CACHE_BYTES: Family = gauge("shardlog_tail_cache_bytes", "Bytes held by the tail cache.");
const TAIL_CACHE_CAPACITY: Family = gauge(
    "shardlog_tail_cache_capacity_bytes",
    "The tail cache's budget (log.cache.bytes).",
);
const FD_CACHE_FILES: Family = gauge(
    "shardlog_fd_cache_open_files",
    "Segment files the shard's file cache holds open.",
);
const FD_CACHE_CAPACITY: Family = gauge(
    "shardlog_fd_cache_capacity_files",
    "The file cache's size (log.fd.cache.size).",
);
const FD_CACHE_LOOKUPS: Family = counter(
    "shardlog_fd_cache_lookups_total",
    "Segment file lookups by whether the file was open (result=hit|miss).",
);
const FD_CACHE_EVICTIONS: Family = counter(
    "shardlog_fd_cache_evictions_total",
    "Files closed to make room in the file cache.",
);
const ZERO_COPY_SLICES: Family = gauge(
    "shardlog_zero_copy_slices_open",
    "Zero-copy fetch slices open (each holds a descriptor until sent).",
);
const PARTITIONS: Family = gauge("shardlog_shard_partitions", "Partition replicas on the shard.");
const PARTITIONS_MAX: Family = gauge(
    "shardlog_shard_partitions_max",
    "The shard's partition budget (shard.partitions.max).",
);
const HEADROOM_PARTITIONS: Family = gauge(
    "shardlog_shard_headroom_partitions",
    "Partitions the shard can still take under shard.partitions.max.",
);
const CAPACITY_RATE: Family = gauge(
    "shardlog_shard_capacity_bytes_per_second",
    "The shard's measured produce capacity at its partition count (metrics.shard.capacity.curve).",
);
const INGRESS_RATE: Family = gauge(
    "shardlog_shard_ingress_bytes_per_second",
    "Produce bytes per second into the shard over the last 10 s.",
);
const HEADROOM_RATE: Family = gauge(
    "shardlog_shard_headroom_bytes_per_second",
    "Capacity left: the capacity at the shard's partition count minus its ingress rate.",
);
const REACTOR_DELAY: Family = histogram(
    "shardlog_reactor_delay_seconds",
    "How late the shard's probe timer ran: the time ready tasks wait for the shard's core.",
);
const REACTOR_STALLS: Family = counter(
    "shardlog_reactor_stalls_total",
    "Probe wake-ups later than metrics.stall.threshold.ms.",
);
const CONNECTIONS: Family = gauge("shardlog_connections", "Open client connections.");
const CONNECTIONS_MAX: Family = gauge(
    "shardlog_connections_max",
    "The shard's share of max.connections.",
);
const CLEANER_PASSES: Family = counter("shardlog_cleaner_passes_total", "Compaction passes completed.");
const CLEANER_BYTES: Family = counter(
    "shardlog_cleaner_bytes_total",
    "Bytes of the segments compacted, before and after (stage=before|after).",
);
const CLEANER_RECORDS_REMOVED: Family = counter(
    "shardlog_cleaner_records_removed_total",
    "Records compaction removed.",
);
const CLEANER_RUNNING: Family = gauge(
    "shardlog_cleaner_running",
    "1 while a compaction pass runs on the shard.",
);
const ISR_CHANGES: Family = counter(
    "shardlog_isr_changes_total",
    "ISR changes proposed by this node's leaders (change=shrink|expand), as Kafka's IsrShrinksPerSec/IsrExpandsPerSec.",
);
const GROUPS: Family = gauge(
    "shardlog_consumer_groups",
    "Groups coordinated by the shard (protocol=classic|consumer).",
);
const TOPIC_BYTES_IN: Family = counter(
    "shardlog_topic_bytes_in_total",
    "Bytes produced, by topic (summed over the shard's partitions of it).",
);
const TOPIC_RECORDS_IN: Family = counter("shardlog_topic_records_in_total", "Records produced, by topic.");
const TOPIC_BYTES_OUT: Family = counter(
    "shardlog_topic_bytes_out_total",
    "Bytes read by consumers, by topic.",
);
const PARTITION_BYTES_IN: Family = counter(
    "shardlog_partition_bytes_in_total",
    "Bytes produced, by partition.",
);
const PARTITION_RECORDS_IN: Family = counter(
    "shardlog_partition_records_in_total",
    "Records produced, by partition.",
);
const PARTITION_BYTES_OUT: Family = counter(
    "shardlog_partition_bytes_out_total",
    "Bytes read by consumers, by partition.",
);
const PARTITION_HIGH_WATERMARK: Family = gauge(
    "shardlog_partition_high_watermark",
    "The partition's high watermark (on this node's replica).",
);
const PARTITION_LOG_END: Family = gauge(
    "shardlog_partition_log_end_offset",
    "The partition's log end offset on this node.",
);
const PARTITION_LOG_START: Family = gauge(
    "shardlog_partition_log_start_offset",
    "The partition's log start offset on this node.",
);
const PARTITION_LEADER: Family = gauge(
    "shardlog_partition_leader",
    "1 where this node's replica leads the partition.",
);
const PARTITION_SERIES_DROPPED: Family = gauge(
    "shardlog_metrics_partitions_unlisted",
    "Partitions of the shard without per-partition series (metrics.partition.series.max).",
);
const LAG: Family = gauge(
    "shardlog_consumer_group_lag",
    "Committed offset to high watermark, per group and partition (metrics.partition.series.max bounds the series).",
);
const LAG_MAX: Family = gauge(
    "shardlog_consumer_group_lag_max",
    "The group's largest partition lag.",
);
const LAG_SUM: Family = gauge(
    "shardlog_consumer_group_lag_sum",
    "The group's lag summed over partitions.",
);
const COMMITTED: Family = gauge(
    "shardlog_consumer_group_committed_offset",
    "The group's committed offset, per partition (bounded with the lag series).",
);
const UNDER_REPLICATED: Family = gauge(
    "shardlog_under_replicated_partitions",
    "Partitions this node leads with fewer in-sync replicas than replicas (Kafka's UnderReplicatedPartitions).",
);
const OFFLINE: Family = gauge(
    "shardlog_offline_partitions",
    "Partitions without a leader; reported by the active controller only (Kafka's OfflinePartitionsCount).",
);
const LEADERS: Family = gauge("shardlog_partitions_led", "Partitions this node leads.");
const CONTROLLER_ACTIVE: Family = gauge(
    "shardlog_controller_active",
    "1 when this node is the active controller (Kafka's ActiveControllerCount).",
);
const CONTROLLER_ID: Family = gauge(
    "shardlog_controller_id",
    "The active controller's node id as this node knows it (-1: none).",
);
const METADATA_OFFSET: Family = gauge(
    "shardlog_metadata_offset",
    "The metadata log offset of the image this node applied.",
);
const BROKER_FENCED: Family = gauge(
    "shardlog_broker_fenced",
    "1 while the controller fences this broker (it leads nothing then).",
);
const BROKERS: Family = gauge("shardlog_brokers", "Brokers registered in the metadata image.");
const READY: Family = gauge("shardlog_ready", "1 when /ready answers 200.");
const BUILD_INFO: Family = gauge("shardlog_build_info", "The broker's version, always 1.");
const OPEN_FDS: Family = gauge("process_open_fds", "Open file descriptors.");
const MAX_FDS: Family = gauge("process_max_fds", "The open-files limit.");
const RSS: Family = gauge("process_resident_memory_bytes", "Resident memory.");
const CPU: Family = counter("process_cpu_seconds_total", "User and system CPU time.");
const METRICS_REFUSED: Family = counter(
    "shardlog_metrics_connections_refused_total",
    "Metrics connections closed at accept (metrics.connections.max).",
);

/// Topics beyond `metrics.topic.series.max` are summed under this name
/// (Kafka topic names cannot start with an underscore followed by this).
const OTHER_TOPICS: &str = "_other";

/// One shard's figures for a scrape.
pub struct ShardSample {
    pub exposition: Exposition,
    /// (group, topic, partition, committed offset) of the groups this shard
    /// coordinates.
    pub commits: Vec<(String, String, i32, i64)>,
}

/// Partitions between two yields of a collecting shard: a scrape of
/// 100,000 partitions must not hold a core for its whole length.
const PARTITIONS_PER_YIELD: usize = 1_000;

/// This shard's sample: its counters, histograms and partitions.
pub async fn shard_sample(shard: &Rc<Shard>) -> ShardSample {
    let mut e = Exposition::default();
    let id = shard.id;
    let s: &dyn std::fmt::Display = &id;
    super::with(|c| {
        for (key, cell) in c.requests.iter().enumerate() {
            if cell.get() > 0 {
                e.sample(
                    REQUESTS,
                    &[("shard", s), ("api", &api_name(key as i16))],
                    cell.get(),
                );
            }
        }
        for (&(api, code), &n) in c.errors.borrow().iter() {
            let name = error_name(code);
            e.sample(
                REQUEST_ERRORS,
                &[("shard", s), ("api", &api_name(api)), ("error", &name)],
                n,
            );
        }
        e.sample(PRODUCE_BYTES, &[("shard", s)], c.produce_bytes.get());
        e.sample(PRODUCE_RECORDS, &[("shard", s)], c.produce_records.get());
        e.sample(
            FETCH_BYTES,
            &[("shard", s), ("reader", &"consumer")],
            c.fetch_bytes.get(),
        );
        e.sample(
            FETCH_BYTES,
            &[("shard", s), ("reader", &"replica")],
            c.replication_fetch_bytes.get(),
        );
        e.sample(
            REPLICATION_APPEND_BYTES,
            &[("shard", s)],
            c.replication_append_bytes.get(),
        );
        e.sample(
            READ_BYTES,
            &[("shard", s), ("path", &"zero_copy")],
            c.zero_copy_read_bytes.get(),
        );
        e.sample(
            READ_BYTES,
            &[("shard", s), ("path", &"copied")],
            c.copied_read_bytes.get(),
        );
        e.sample(
            TAIL_CACHE_READS,
            &[("shard", s), ("result", &"hit")],
            c.tail_cache_hits.get(),
        );
        e.sample(
            TAIL_CACHE_READS,
            &[("shard", s), ("result", &"miss")],
            c.tail_cache_misses.get(),
        );
        e.sample(
            ISR_CHANGES,
            &[("shard", s), ("change", &"shrink")],
            c.isr_shrinks.get(),
        );
        e.sample(
            ISR_CHANGES,
            &[("shard", s), ("change", &"expand")],
            c.isr_expands.get(),
        );
        e.sample(CLEANER_PASSES, &[("shard", s)], c.cleaner_passes.get());
        e.sample(
            CLEANER_BYTES,
            &[("shard", s), ("stage", &"before")],
            c.cleaner_bytes_before.get(),
        );
        e.sample(
            CLEANER_BYTES,
            &[("shard", s), ("stage", &"after")],
            c.cleaner_bytes_after.get(),
        );
        e.sample(
            CLEANER_RECORDS_REMOVED,
            &[("shard", s)],
            c.cleaner_records_removed.get(),
        );
        e.sample(
            CLEANER_RUNNING,
            &[("shard", s)],
            u8::from(c.cleaner_running.get()),
        );
        e.sample(REACTOR_STALLS, &[("shard", s)], c.reactor_stalls.get());
        e.sample(
            METRICS_REFUSED,
            &[("shard", s)],
            c.metrics_connections_refused.get(),
        );
    });
    crate::latency::for_each(|api, stage, h| match (api, stage) {
        (None, Stage::AppendDurable) => e.latency_histogram(DURABLE_LATENCY, &[("shard", s)], h),
        (None, stage) => e.latency_histogram(STORAGE_LATENCY, &[("shard", s), ("stage", &stage.name())], h),
        (Some(api), stage) => e.latency_histogram(
            REQUEST_LATENCY,
            &[("shard", s), ("api", &api_name(api)), ("stage", &stage.name())],
            h,
        ),
    });
    probe::with_delays(|h| e.latency_histogram(REACTOR_DELAY, &[("shard", s)], h));

    let (tail_used, tail_capacity) = shard.tail_cache_bytes();
    e.sample(TAIL_CACHE_BYTES, &[("shard", s)], tail_used);
    e.sample(TAIL_CACHE_CAPACITY, &[("shard", s)], tail_capacity);
    let files = &shard.file_cache;
    let stats = files.stats();
    e.sample(FD_CACHE_FILES, &[("shard", s)], files.open_files());
    e.sample(FD_CACHE_CAPACITY, &[("shard", s)], files.capacity());
    e.sample(FD_CACHE_LOOKUPS, &[("shard", s), ("result", &"hit")], stats.hits);
    e.sample(
        FD_CACHE_LOOKUPS,
        &[("shard", s), ("result", &"miss")],
        stats.misses,
    );
    e.sample(FD_CACHE_EVICTIONS, &[("shard", s)], stats.evictions);
    e.sample(ZERO_COPY_SLICES, &[("shard", s)], files.open_slices());
    let (connections, connections_max) = shard.connection_counts();
    e.sample(CONNECTIONS, &[("shard", s)], connections);
    e.sample(CONNECTIONS_MAX, &[("shard", s)], connections_max);
    let (classic, consumer) = shard.groups.group_counts();
    e.sample(GROUPS, &[("shard", s), ("protocol", &"classic")], classic);
    e.sample(GROUPS, &[("shard", s), ("protocol", &"consumer")], consumer);

    let partitions = shard.partitions_sorted();
    let count = partitions.len() as u64;
    let budget = shard.config.shard_partitions_max as u64;
    e.sample(PARTITIONS, &[("shard", s)], count);
    e.sample(PARTITIONS_MAX, &[("shard", s)], budget);
    e.sample(HEADROOM_PARTITIONS, &[("shard", s)], budget.saturating_sub(count));
    let ingress = probe::ingress_bytes_per_second();
    e.sample(INGRESS_RATE, &[("shard", s)], ingress.round());
    if let Some(capacity) =
        probe::capacity_bytes_per_second(&shard.config.metrics.shard_capacity_curve, count)
    {
        e.sample(CAPACITY_RATE, &[("shard", s)], capacity.round());
        e.sample(
            HEADROOM_RATE,
            &[("shard", s)],
            (capacity - ingress).max(0.0).round(),
        );
    }

    let metrics = &shard.config.metrics;
    let listed_max = metrics.partition_series_max.div_ceil(shard.nr_shards.max(1));
    let topics_max = metrics.topic_series_max.div_ceil(shard.nr_shards.max(1));
    let mut topics: BTreeMap<&str, [u64; 3]> = BTreeMap::new();
    let mut other = [0u64; 3];
    let mut labels = String::new();
    let mut per_partition = [
        PARTITION_BYTES_IN,
        PARTITION_RECORDS_IN,
        PARTITION_BYTES_OUT,
        PARTITION_HIGH_WATERMARK,
        PARTITION_LOG_END,
        PARTITION_LOG_START,
        PARTITION_LEADER,
    ]
    .map(|family| (family, String::new()));
    for (i, p) in partitions.iter().enumerate() {
        if i > 0 && i % PARTITIONS_PER_YIELD == 0 {
            glommio::yield_if_needed().await;
        }
        let c = p.counters();
        let figures = [c.bytes_in.get(), c.records_in.get(), c.bytes_out.get()];
        let topic_sums = if topics.len() < topics_max || topics.contains_key(p.topic()) {
            topics.entry(p.topic()).or_default()
        } else {
            &mut other
        };
        for (sum, figure) in topic_sums.iter_mut().zip(figures) {
            *sum = sum.wrapping_add(figure);
        }
        if i >= listed_max {
            continue;
        }
        // One label text per partition for its seven lines: at 10,000
        // partitions the scrape is mostly these.
        labels.clear();
        labels.push_str("topic=\"");
        exposition::escape_label(&mut labels, &p.topic());
        let _ = write!(labels, "\",partition=\"{}\"", p.index());
        let values: [&dyn std::fmt::Display; 7] = [
            &figures[0],
            &figures[1],
            &figures[2],
            &p.high_watermark(),
            &p.log_end_offset(),
            &p.log_start_offset(),
            &u8::from(p.is_leader()),
        ];
        for ((family, body), value) in per_partition.iter_mut().zip(values) {
            exposition::line(body, family.name, &labels, value);
        }
    }
    for (family, body) in per_partition {
        if !body.is_empty() {
            e.append_lines(family, &body);
        }
    }
    e.sample(
        PARTITION_SERIES_DROPPED,
        &[("shard", s)],
        partitions.len().saturating_sub(listed_max),
    );
    let other_listed = (other != [0; 3]).then_some((OTHER_TOPICS, other));
    for (topic, [bytes_in, records_in, bytes_out]) in topics.into_iter().chain(other_listed) {
        let labels: &[(&str, &dyn std::fmt::Display)] = &[("shard", s), ("topic", &topic)];
        e.sample(TOPIC_BYTES_IN, labels, bytes_in);
        e.sample(TOPIC_RECORDS_IN, labels, records_in);
        e.sample(TOPIC_BYTES_OUT, labels, bytes_out);
    }
    ShardSample {
        exposition: e,
        commits: shard.groups.committed_offsets(),
    }
}

/// High watermarks of the listed partitions on this shard (None where it
/// holds no replica of one).
pub fn watermarks(shard: &Shard, parts: &[(String, i32)]) -> Vec<Option<i64>> {
    parts
        .iter()
        .map(|(topic, index)| shard.partition(topic, *index).map(|p| p.high_watermark()))
        .collect()
}

/// The node's whole `/metrics` text, gathered on the controller shard.
pub async fn scrape(shard: &Rc<Shard>, ready: bool) -> String {
    let mut all = Exposition::default();
    let mut commits = Vec::new();
    for target in 0..shard.nr_shards {
        if let ShardReply::Metrics(sample) = shard.call(target, ShardOp::Metrics).await {
            all.merge(sample.exposition);
            commits.extend(sample.commits);
        }
    }
    lag(shard, &mut all, commits).await;
    cluster(shard, &mut all);
    process(&mut all);
    all.sample(READY, &[], u8::from(ready));
    all.sample(BUILD_INFO, &[("version", &env!("CARGO_PKG_VERSION"))], 1);
    all.render()
}

/// Lag of every committed (group, partition) whose partition has a replica
/// on this node: high watermark minus committed offset, at least 0. A
/// partition with no replica here has no lag series on this node (the
/// coordinator of a group sees only what its node holds).
async fn lag(shard: &Rc<Shard>, e: &mut Exposition, commits: Vec<(String, String, i32, i64)>) {
    let view = shard.view();
    // Per shard: the distinct partitions to ask, and each commit's slot.
    let mut asks: Vec<Vec<(String, i32)>> = vec![Vec::new(); shard.nr_shards];
    let mut slot_of: HashMap<(String, i32), (usize, usize)> = HashMap::new();
    for (_, topic, index, _) in &commits {
        let key = (topic.clone(), *index);
        if slot_of.contains_key(&key) {
            continue;
        }
        let Some(target) = view
            .image
            .topic(topic)
            .and_then(|t| view.placement.shard(&t.id, *index))
        else {
            continue;
        };
        if let Some(list) = asks.get_mut(target) {
            slot_of.insert(key.clone(), (target, list.len()));
            list.push(key);
        }
    }
    let mut answers: Vec<Vec<Option<i64>>> = vec![Vec::new(); shard.nr_shards];
    for (target, parts) in asks.into_iter().enumerate() {
        if parts.is_empty() {
            continue;
        }
        if let ShardReply::Watermarks(marks) = shard.call(target, ShardOp::Watermarks { parts }).await {
            answers[target] = marks;
        }
    }
    let listed_max = shard.config.metrics.partition_series_max;
    let mut listed = 0usize;
    let mut per_group: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
    let mut commits = commits;
    commits.sort_unstable();
    for (group, topic, index, committed) in &commits {
        let high_watermark = slot_of
            .get(&(topic.clone(), *index))
            .and_then(|&(target, slot)| answers[target].get(slot).copied().flatten());
        let Some(high_watermark) = high_watermark else {
            continue;
        };
        let lag = (high_watermark - committed).max(0);
        let (max, sum) = per_group.entry(group.as_str()).or_default();
        *max = (*max).max(lag);
        *sum = sum.saturating_add(lag);
        if listed < listed_max {
            listed += 1;
            let labels: &[(&str, &dyn std::fmt::Display)] =
                &[("group", group), ("topic", topic), ("partition", index)];
            e.sample(LAG, labels, lag);
            e.sample(COMMITTED, labels, committed);
        }
    }
    for (group, (max, sum)) in per_group {
        e.sample(LAG_MAX, &[("group", &group)], max);
        e.sample(LAG_SUM, &[("group", &group)], sum);
    }
}

/// Leadership, replication and controller state from the applied image.
fn cluster(shard: &Rc<Shard>, e: &mut Exposition) {
    let view = shard.view();
    let node = shard.config.node_id;
    let (mut led, mut under_replicated, mut offline) = (0u64, 0u64, 0u64);
    for topic in view.image.topics.values() {
        for p in &topic.partitions {
            if p.leader == node {
                led += 1;
                if !p.isr.is_empty() && p.isr.len() < p.replicas.len() {
                    under_replicated += 1;
                }
            } else if p.leader < 0 {
                offline += 1;
            }
        }
    }
    let (controller, active) = shard
        .control_plane
        .get()
        .map_or((None, false), |plane| plane.controller_status());
    e.sample(LEADERS, &[], led);
    e.sample(UNDER_REPLICATED, &[], under_replicated);
    if active {
        e.sample(OFFLINE, &[], offline);
    }
    e.sample(CONTROLLER_ACTIVE, &[], u8::from(active));
    e.sample(CONTROLLER_ID, &[], controller.unwrap_or(-1));
    e.sample(METADATA_OFFSET, &[], view.image.offset);
    e.sample(BROKER_FENCED, &[], u8::from(view.fenced));
    e.sample(BROKERS, &[], view.image.brokers.len());
}

/// The process's descriptors, memory and CPU, under the names Prometheus'
/// client libraries use, so standard dashboards work.
fn process(e: &mut Exposition) {
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        e.sample(OPEN_FDS, &[], dir.count());
    }
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        e.sample(MAX_FDS, &[], limit.rlim_cur);
    }
    // SAFETY: sysconf reads a constant of the running system.
    let page_bytes = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    // SAFETY: as above.
    let ticks_per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    if let Some(resident_pages) = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<u64>().ok())
    {
        e.sample(RSS, &[], resident_pages * page_bytes);
    }
    if let Some((user, system)) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| cpu_ticks(&stat))
    {
        e.sample(CPU, &[], (user + system) as f64 / ticks_per_s);
    }
}

/// utime and stime (fields 14 and 15) of /proc/self/stat; the command name
/// (field 2) may hold spaces and parentheses, so fields count from its end.
fn cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

fn api_name(key: i16) -> String {
    kafka_protocol::messages::ApiKey::try_from(key)
        .map(|k| format!("{k:?}"))
        .unwrap_or_else(|_| format!("api{key}"))
}

/// Kafka's name of an error code (`NOT_LEADER_OR_FOLLOWER`), or the code.
fn error_name(code: i16) -> String {
    use kafka_protocol::error::ParseResponseErrorCode;
    let error = match code.err() {
        None | Some(kafka_protocol::ResponseError::Unknown(_)) => return code.to_string(),
        Some(error) => error,
    };
    let camel = format!("{error:?}");
    let mut out = String::with_capacity(camel.len() + 8);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_names_are_kafkas() {
        assert_eq!(error_name(6), "NOT_LEADER_OR_FOLLOWER");
        assert_eq!(error_name(3), "UNKNOWN_TOPIC_OR_PARTITION");
        assert_eq!(error_name(i16::MAX), "32767");
        assert_eq!(api_name(0), "Produce");
    }

    #[test]
    fn cpu_ticks_read_past_a_command_with_spaces() {
        let stat = "42 (shard log) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 4 0 100 0 0";
        assert_eq!(cpu_ticks(stat), Some((7, 3)));
    }
}
