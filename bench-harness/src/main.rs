//! `shardlog-bench`: a native Kafka-protocol load generator for shardlog.
//!
//! Threads and blocking sockets, one connection per producer/consumer
//! thread, RecordBatches built by hand and patched in place, so the broker
//! and not this tool is the bottleneck (check with `sink-test`). Against a
//! cluster, partitions are grouped by leader (Metadata) and every load
//! connection goes to one leader, carrying only its partitions.
//!
//! Back of the envelope (shared/PERFORMANCE.md): at 1 GB/s of 1 KiB
//! records in 64 KiB batches the producer stamps ~15k batches/s; each costs
//! a 64 KiB CRC32C pass (~2.5 µs at 27 GB/s), a 64-record timestamp patch and
//! one write syscall, i.e. a few percent of one core. The consumer parses
//! 61-byte headers only and decodes responses zero-copy.

mod batch;
mod broker;
mod capacity;
mod chart;
mod consume;
mod group;
mod limits;
mod plan;
mod produce;
mod sink;
mod stats;
mod wire;
mod workload;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use serde_json::json;

use crate::batch::{Compression, Keys};
use crate::consume::{ConsumeParams, ConsumeReport, EndOffsets, TopicPartition};
use crate::produce::{ProduceParams, ProduceReport};
use crate::wire::{Cluster, Error, Route};

const RECORD_BYTES_MAX: usize = 16 << 20;
const THREADS_MAX: usize = 256;
const INFLIGHT_MAX: usize = 1024;
const DURATION_S_MAX: f64 = 86_400.0;

/// Load generator for shardlog (any Kafka-wire broker): produce, consume,
/// end-to-end, and a sink test of the tool itself.
#[derive(Parser, Debug)]
#[command(name = "shardlog-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Produce for --duration-s at max rate or --rate; reports ack latency.
    Produce(ProduceCmd),
    /// Read a topic from the start (catch-up) or tail it, until the end
    /// offsets seen at start are reached or --duration-s runs out.
    Consume(ConsumeCmd),
    /// Tail consumers plus producers at once; reports produce-ack and
    /// end-to-end latency and checks every acked record was consumed.
    E2e(E2eCmd),
    /// Produce against a built-in fake broker on loopback that answers
    /// without storing: the tool's own ceiling (--bootstrap is ignored).
    SinkTest(ProduceCmd),
    /// Run a named workload (bench-harness/workloads/NAME.toml, or a path):
    /// its steps one after the other, one JSON for all.
    Run(RunCmd),
    /// Measure this host's loopback TCP and O_DIRECT write bandwidth.
    Limits(LimitsCmd),
    /// Sweep partition counts at a fixed load and at max rate: throughput,
    /// latency, broker RSS/fds, topic creation and restart times; JSON,
    /// markdown and SVG charts in --out-dir.
    Capacity(CapacityCmd),
    /// Size a deployment from a capacity.json: partitions, nodes, cores,
    /// disk and memory, with the measured evidence used.
    Plan(PlanCmd),
}

#[derive(Args, Debug, Clone, Serialize)]
struct PlanCmd {
    /// A capacity.json written by `capacity`.
    #[arg(long, value_name = "FILE")]
    capacity: PathBuf,
    /// Produce throughput to plan for, MB/s of record values.
    #[arg(long)]
    target_mb_per_s: f64,
    #[arg(long, default_value_t = 1024)]
    record_bytes: u64,
    /// Consumers in the largest group (each needs a partition).
    #[arg(long, default_value_t = 1)]
    consumer_parallelism: u64,
    #[arg(long, default_value_t = 168.0)]
    retention_hours: f64,
    #[arg(long, default_value_t = 1)]
    replication_factor: u64,
    /// Fraction of measured capacity to use (headroom).
    #[arg(long, default_value_t = 0.6)]
    utilization: f64,
    /// Largest acceptable end-to-end p99 at the sweep's fixed load.
    #[arg(long, default_value_t = 50.0)]
    p99_ms_max: f64,
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Args, Debug, Clone, Serialize)]
struct CapacityCmd {
    /// Partition counts to sweep, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000,10000")]
    partitions_list: Vec<i32>,
    /// Start this broker binary per step (fresh data dir, free loopback port);
    /// enables restart timings and /proc readings.
    #[arg(long, value_name = "PATH")]
    broker_bin: Option<PathBuf>,
    /// Extra argument for --broker-bin, repeatable: --broker-arg=--shards --broker-arg=2.
    #[arg(long, allow_hyphen_values = true)]
    broker_arg: Vec<String>,
    /// Use a running broker instead of --broker-bin.
    #[arg(long, value_name = "HOST:PORT")]
    bootstrap: Option<String>,
    /// PID of the --bootstrap broker, for RSS and open fds from /proc.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Where managed brokers keep their data (default: a temp dir, removed).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// capacity.json, capacity.md and the SVG charts go here.
    #[arg(long, value_name = "DIR", default_value = "results/capacity")]
    out_dir: PathBuf,
    /// Total load of each step's fixed-rate run, MB/s of record values.
    #[arg(long, default_value_t = 50.0)]
    fixed_mb_per_s: f64,
    /// Skip the max-rate runs.
    #[arg(long)]
    no_max_rate: bool,
    /// Runs of each measurement per step (figures are medians).
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Skip the clean/unclean restarts (always skipped with --bootstrap).
    #[arg(long)]
    no_restarts: bool,
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Length of each run.
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
    #[arg(long, default_value_t = 30.0)]
    drain_s: f64,
    #[arg(long, default_value_t = 65536)]
    batch_bytes: usize,
    /// Batches per request (capped at each step's partition count).
    #[arg(long, default_value_t = 1)]
    partitions_per_request: usize,
    #[arg(long, default_value_t = 1)]
    producers: usize,
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    #[arg(long, default_value_t = 4)]
    inflight: usize,
    #[arg(long, default_value = "1", value_parser = parse_acks, allow_hyphen_values = true)]
    acks: i16,
    /// Also write the JSON here (it always goes to OUT_DIR/capacity.json).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Debug, Clone, Serialize)]
struct LimitsCmd {
    /// Directory for the O_DIRECT test file (the broker's data disk).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Length of each measurement.
    #[arg(long, default_value_t = 3.0)]
    duration_s: f64,
    /// Largest test file (each block size writes at most this much).
    #[arg(long, default_value_t = 4 << 30)]
    file_bytes_max: u64,
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

#[derive(Args, Debug, Clone, Serialize)]
struct RunCmd {
    /// Workload name (file stem in bench-harness/workloads/) or a TOML path.
    #[arg(long)]
    workload: String,
    #[arg(long, default_value = "127.0.0.1:9092", value_name = "HOST:PORT")]
    bootstrap: String,
    /// Override the workload's duration_s (each step's length).
    #[arg(long)]
    duration_s: Option<f64>,
    /// Override the workload's topic (default wl-NAME).
    #[arg(long)]
    topic: Option<String>,
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Debug, Clone, Serialize)]
struct Common {
    /// Broker to bootstrap from.
    #[arg(long, default_value = "127.0.0.1:9092", value_name = "HOST:PORT")]
    bootstrap: String,
    #[arg(long, default_value = "shardlog-bench")]
    topic: String,
    /// Topics: 1 = --topic itself; N > 1 = TOPIC-0 .. TOPIC-(N-1), each with
    /// --partitions partitions; requests go to the topics in turn.
    #[arg(long, default_value_t = 1)]
    topics: usize,
    /// Partitions when the topic is created (an existing topic keeps its own).
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Bytes of each record value (the first 8 carry a µs timestamp); with
    /// --record-bytes-max, the smallest of a uniform range.
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Largest record value: sizes uniform over record-bytes..=this (default: fixed size).
    #[arg(long)]
    record_bytes_max: Option<usize>,
    #[arg(long, default_value_t = 10.0)]
    duration_s: f64,
    /// Write params, machine and results as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Debug, Clone, Serialize)]
struct ProducerOpts {
    /// Batch size; records per batch = batch_bytes / record_bytes.
    #[arg(long, default_value_t = 65536)]
    batch_bytes: usize,
    /// Batches per Produce request, one per partition (at most the topic's
    /// partitions); Kafka clients send every ready partition at once.
    #[arg(long, default_value_t = 1)]
    partitions_per_request: usize,
    /// Connections, one thread each (plus an ack reader).
    #[arg(long, default_value_t = 1)]
    producers: usize,
    /// Produce requests in flight per connection.
    #[arg(long, default_value_t = 4)]
    inflight: usize,
    /// 0, 1 or -1 (all).
    #[arg(long, default_value = "1", value_parser = parse_acks, allow_hyphen_values = true)]
    acks: i16,
    /// Target messages/s over all producers (latency from each batch's
    /// scheduled time); omitted = max rate.
    #[arg(long, value_name = "MSG_PER_S")]
    rate: Option<f64>,
    /// Record keys; keyed batches go to the key's partition (murmur2).
    #[arg(long, value_enum, default_value_t = Keys::None)]
    keys: Keys,
    /// Distinct keys for --keys uniform|zipf (zipf: at most 2^20).
    #[arg(long, default_value_t = 10_000)]
    key_count: u64,
    /// Zipf exponent s (P(key k) ∝ 1/k^s) for --keys zipf.
    #[arg(long, default_value_t = 0.99)]
    zipf_exponent: f64,
    /// Codec for record batches (Kafka's framing for each).
    #[arg(long, value_enum, default_value_t = Compression::None)]
    compression: Compression,
    #[arg(long, default_value_t = 30_000)]
    request_timeout_ms: i32,
}

#[derive(Args, Debug, Clone, Serialize)]
struct ConsumerOpts {
    /// Consumer threads (one connection each); partitions dealt round-robin.
    #[arg(long, default_value_t = 1)]
    consumers: usize,
    #[arg(long, default_value_t = 100)]
    max_wait_ms: i32,
    #[arg(long, default_value_t = 1)]
    min_bytes: i32,
    #[arg(long, default_value_t = 50 << 20)]
    max_bytes: i32,
    #[arg(long, default_value_t = 10 << 20)]
    partition_max_bytes: i32,
    /// Check every batch's CRC32C (costs client CPU).
    #[arg(long)]
    verify_crc: bool,
    /// Consumers join this consumer group (classic protocol, range
    /// assignor) and read what it assigns them, from the committed offsets
    /// (else --from / the run's start), instead of splitting the partitions.
    #[arg(long, value_name = "ID")]
    group: Option<String>,
    /// With --group: commit positions this often (and before rejoining and
    /// on exit); 0 = never commit.
    #[arg(long, default_value_t = 1000)]
    commit_interval_ms: u64,
    /// With --group: Kafka's session.timeout.ms.
    #[arg(long, default_value_t = 45_000)]
    session_timeout_ms: i32,
    /// With --group: Kafka's heartbeat.interval.ms (heartbeats go between fetches).
    #[arg(long, default_value_t = 3000)]
    heartbeat_interval_ms: u64,
    /// With --group: how long the coordinator waits for members to rejoin
    /// (Kafka's max.poll.interval.ms, 300000 there; shorter here so a stuck
    /// rebalance ends a run sooner).
    #[arg(long, default_value_t = 60_000)]
    rebalance_timeout_ms: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
enum StartAt {
    Earliest,
    Latest,
}

#[derive(Args, Debug, Clone, Serialize)]
struct ProduceCmd {
    #[command(flatten)]
    #[serde(flatten)]
    common: Common,
    #[command(flatten)]
    #[serde(flatten)]
    producer: ProducerOpts,
}

#[derive(Args, Debug, Clone, Serialize)]
struct ConsumeCmd {
    #[command(flatten)]
    #[serde(flatten)]
    common: Common,
    #[command(flatten)]
    #[serde(flatten)]
    consumer: ConsumerOpts,
    /// Where to start: earliest (catch-up read of what is there) or latest
    /// (tail for --duration-s).
    #[arg(long, value_enum, default_value_t = StartAt::Earliest)]
    from: StartAt,
}

#[derive(Args, Debug, Clone, Serialize)]
struct E2eCmd {
    #[command(flatten)]
    #[serde(flatten)]
    common: Common,
    #[command(flatten)]
    #[serde(flatten)]
    producer: ProducerOpts,
    #[command(flatten)]
    #[serde(flatten)]
    consumer: ConsumerOpts,
    /// After producing stops, how long consumers may take to catch up.
    #[arg(long, default_value_t = 30.0)]
    drain_s: f64,
}

fn parse_acks(s: &str) -> Result<i16, String> {
    match s {
        "0" => Ok(0),
        "1" => Ok(1),
        "-1" | "all" => Ok(-1),
        _ => Err(format!("acks must be 0, 1, -1 or all, not {s}")),
    }
}

fn check(ok: bool, what: &str) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        Err(Error::Protocol(format!("invalid arguments: {what}")))
    }
}

impl Common {
    fn validate(&self) -> Result<(), Error> {
        check(
            (batch::VALUE_TIMESTAMP_BYTES..=RECORD_BYTES_MAX).contains(&self.record_bytes),
            "--record-bytes must be 8..=16 MiB",
        )?;
        check(
            self.partitions >= 1 && self.partitions <= 100_000,
            "--partitions must be 1..=100000",
        )?;
        check((1..=1000).contains(&self.topics), "--topics must be 1..=1000")?;
        check(
            self.record_bytes_max
                .is_none_or(|m| m >= self.record_bytes && m <= RECORD_BYTES_MAX),
            "--record-bytes-max must be >= --record-bytes and <= 16 MiB",
        )?;
        check(
            self.duration_s > 0.0 && self.duration_s <= DURATION_S_MAX,
            "--duration-s must be in (0, 86400]",
        )
    }

    fn topic_names(&self) -> Vec<String> {
        if self.topics <= 1 {
            vec![self.topic.clone()]
        } else {
            (0..self.topics).map(|i| format!("{}-{i}", self.topic)).collect()
        }
    }

    fn record_bytes_max(&self) -> usize {
        self.record_bytes_max.unwrap_or(self.record_bytes)
    }

    /// Mean record value size, what consumers count MB/s with (they do not
    /// parse values).
    fn record_bytes_mean(&self) -> usize {
        (self.record_bytes + self.record_bytes_max()) / 2
    }
}

impl ProducerOpts {
    fn validate(&self, common: &Common) -> Result<(), Error> {
        check(
            (1..=THREADS_MAX).contains(&self.producers),
            "--producers must be 1..=256",
        )?;
        check(
            (1..=INFLIGHT_MAX).contains(&self.inflight),
            "--inflight must be 1..=1024",
        )?;
        check(self.batch_bytes <= 256 << 20, "--batch-bytes must be <= 256 MiB")?;
        check(
            self.rate.is_none_or(|r| r > 0.0 && r.is_finite()),
            "--rate must be > 0",
        )?;
        check(self.request_timeout_ms > 0, "--request-timeout-ms must be > 0")?;
        check(
            self.key_count >= 1 && (self.keys != Keys::Zipf || self.key_count <= batch::ZIPF_KEYS_MAX),
            "--key-count must be >= 1 (zipf: <= 1048576)",
        )?;
        check(
            self.zipf_exponent > 0.0 && self.zipf_exponent.is_finite(),
            "--zipf-exponent must be > 0",
        )?;
        let _ = common;
        Ok(())
    }

    fn records_per_batch(&self, common: &Common) -> usize {
        (self.batch_bytes / common.record_bytes_mean()).max(1)
    }

    fn params(&self, common: &Common, routes: Vec<Route>, partitions: Vec<i32>) -> ProduceParams {
        ProduceParams {
            topics: common.topic_names(),
            partitions,
            routes,
            record_bytes: common.record_bytes,
            record_bytes_max: common.record_bytes_max(),
            records_per_batch: self.records_per_batch(common),
            partitions_per_request: self.partitions_per_request,
            producers: self.producers,
            inflight: self.inflight,
            acks: self.acks,
            rate_msgs_per_s: self.rate,
            duration_s: common.duration_s,
            keys: self.keys,
            key_count: self.key_count,
            zipf_exponent: self.zipf_exponent,
            compression: self.compression,
            request_timeout_ms: self.request_timeout_ms,
        }
    }
}

impl ConsumerOpts {
    fn validate(&self) -> Result<(), Error> {
        check(
            (1..=THREADS_MAX).contains(&self.consumers),
            "--consumers must be 1..=256",
        )?;
        check(
            self.max_wait_ms >= 0 && self.min_bytes >= 0,
            "--max-wait-ms/--min-bytes must be >= 0",
        )?;
        check(
            self.max_bytes > 0 && self.max_bytes as usize <= wire::FRAME_BYTES_MAX - (1 << 20),
            "--max-bytes must be 1..=63 MiB",
        )?;
        check(self.partition_max_bytes > 0, "--partition-max-bytes must be > 0")?;
        if let Some(group) = &self.group {
            check(
                !group.is_empty() && group.len() <= 255,
                "--group must be 1..=255 bytes",
            )?;
            check(
                (1..=3_600_000).contains(&self.session_timeout_ms),
                "--session-timeout-ms must be 1..=3600000",
            )?;
            check(
                (1..=3_600_000).contains(&self.rebalance_timeout_ms),
                "--rebalance-timeout-ms must be 1..=3600000",
            )?;
            // Heartbeats are sent between fetches, so both a heartbeat
            // interval and a fetch's wait must fit in the session.
            check(
                self.heartbeat_interval_ms >= 1
                    && self.heartbeat_interval_ms < self.session_timeout_ms as u64,
                "--heartbeat-interval-ms must be >= 1 and below --session-timeout-ms",
            )?;
            check(
                (self.max_wait_ms as u64) < self.session_timeout_ms as u64 / 2,
                "--max-wait-ms must be below half of --session-timeout-ms with --group",
            )?;
            check(
                self.commit_interval_ms <= 86_400_000,
                "--commit-interval-ms must be <= 86400000",
            )?;
        }
        Ok(())
    }

    fn group_config(&self) -> Option<group::GroupConfig> {
        self.group.as_ref().map(|id| group::GroupConfig {
            group_id: id.clone(),
            session_timeout_ms: self.session_timeout_ms,
            heartbeat_interval_ms: self.heartbeat_interval_ms,
            rebalance_timeout_ms: self.rebalance_timeout_ms,
            commit_interval_ms: self.commit_interval_ms,
        })
    }

    fn params(
        &self,
        common: &Common,
        routes: Vec<Route>,
        partitions: Vec<TopicPartition>,
        duration_s: f64,
        measure_e2e: bool,
    ) -> ConsumeParams {
        ConsumeParams {
            topics: common.topic_names(),
            partitions,
            routes,
            bootstrap: common.bootstrap.clone(),
            group: self.group_config(),
            consumers: self.consumers,
            record_bytes: common.record_bytes_mean(),
            max_wait_ms: self.max_wait_ms,
            min_bytes: self.min_bytes,
            max_bytes: self.max_bytes,
            partition_max_bytes: self.partition_max_bytes,
            duration_s,
            verify_crc: self.verify_crc,
            measure_e2e,
        }
    }
}

pub(crate) fn parse_cli<I, T>(argv: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    Cli::try_parse_from(argv)
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli.command) {
        eprintln!("shardlog-bench: {e}");
        std::process::exit(1);
    }
}

fn run(command: Command) -> Result<(), Error> {
    stats::now_wall_us(); // anchor the clock before any thread starts
    let started_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let (name, params, json_path, results) = match &command {
        Command::Produce(cmd) => ("produce", to_json(cmd), &cmd.common.json, run_produce(cmd)?),
        Command::Consume(cmd) => ("consume", to_json(cmd), &cmd.common.json, run_consume(cmd)?),
        Command::E2e(cmd) => ("e2e", to_json(cmd), &cmd.common.json, run_e2e(cmd)?),
        Command::SinkTest(cmd) => ("sink-test", to_json(cmd), &cmd.common.json, run_sink(cmd)?),
        Command::Run(cmd) => ("run", to_json(cmd), &cmd.json, run_workload(cmd)?),
        Command::Limits(cmd) => ("limits", to_json(cmd), &cmd.json, run_limits(cmd)?),
        Command::Plan(cmd) => ("plan", to_json(cmd), &cmd.json, run_plan(cmd)?),
        Command::Capacity(cmd) => {
            let results = run_capacity(cmd)?;
            let path = cmd.out_dir.join("capacity.json");
            write_json(
                &path,
                "capacity",
                to_json(cmd),
                started_unix_ms as u64,
                results.clone(),
            )?;
            ("capacity", to_json(cmd), &cmd.json, results)
        }
    };
    if let Some(path) = json_path {
        write_json(path, name, params, started_unix_ms as u64, results)?;
    }
    Ok(())
}

/// Writes the report every command shares: what ran, where, and results.
fn write_json(
    path: &std::path::Path,
    name: &str,
    params: serde_json::Value,
    started_unix_ms: u64,
    results: serde_json::Value,
) -> Result<(), Error> {
    let doc = json!({
        "tool": "shardlog-bench",
        "version": env!("CARGO_PKG_VERSION"),
        "command": name,
        "argv": std::env::args().collect::<Vec<_>>(),
        "started_unix_ms": started_unix_ms,
        "params": params,
        "machine": stats::Machine::current(),
        "results": results,
    });
    let text = serde_json::to_string_pretty(&doc).map_err(|e| wire::protocol_error("json", e))?;
    std::fs::write(path, text + "\n")?;
    Ok(())
}

/// Runs one step of a workload through the CLI parser (so workloads and
/// command lines share validation); returns its results.
fn run_step(argv: &[String]) -> Result<serde_json::Value, Error> {
    eprintln!("+ {}", argv.join(" "));
    let cli = parse_cli(argv).map_err(|e| Error::Protocol(format!("workload flags: {e}")))?;
    match &cli.command {
        Command::Produce(cmd) => run_produce(cmd),
        Command::Consume(cmd) => run_consume(cmd),
        Command::E2e(cmd) => run_e2e(cmd),
        _ => Err(Error::Protocol(
            "a workload step is produce, consume or e2e".into(),
        )),
    }
}

fn run_workload(cmd: &RunCmd) -> Result<serde_json::Value, Error> {
    let (name, mut w) = workload::load(&cmd.workload).map_err(Error::Protocol)?;
    if cmd.topic.is_some() {
        w.topic = cmd.topic.clone();
    }
    let duration_s = cmd.duration_s.unwrap_or(w.duration_s);
    let mut base = w.args(&name, &cmd.bootstrap, duration_s);
    if cmd.quiet {
        base.push("--quiet".into());
    }
    let argv = |sub: &str, rest: &[Vec<String>]| -> Vec<String> {
        let mut a = vec!["shardlog-bench".to_string(), sub.to_string()];
        a.extend(base.iter().cloned());
        for r in rest {
            a.extend(r.iter().cloned());
        }
        a
    };
    println!("workload {name}: {}", w.description);
    let mut steps = Vec::new();
    let mut step =
        |label: String, rate: Option<f64>, args: Vec<String>| -> Result<serde_json::Value, Error> {
            println!("== {label}");
            let results = run_step(&args)?;
            steps.push(json!({
                "step": label,
                "rate_msgs_per_s": rate,
                "command": args[1..].join(" "),
                "results": results.clone(),
            }));
            Ok(results)
        };
    let drain = vec!["--drain-s".to_string(), w.drain_s.to_string()];
    match w.mode {
        workload::Mode::E2e => {
            let mut rates: Vec<(String, f64)> = w
                .rates_msgs_per_s
                .iter()
                .map(|&r| (format!("rate {r:.0} msgs/s"), r))
                .collect();
            if w.max_rate {
                let a = argv("e2e", &[w.producer_args(), w.consumer_args(), drain.clone()]);
                let r = step("max rate".into(), None, a)?;
                let max = r["produce"]["msgs_per_s"].as_f64().unwrap_or(0.0);
                for &f in &w.rate_fractions_of_max {
                    if max > 0.0 {
                        rates.push((
                            format!("{:.0}% of max ({:.0} msgs/s)", f * 100.0, f * max),
                            f * max,
                        ));
                    }
                }
            }
            for (label, rate) in rates {
                let rate_arg = vec!["--rate".to_string(), format!("{rate:.0}")];
                let a = argv(
                    "e2e",
                    &[w.producer_args(), w.consumer_args(), drain.clone(), rate_arg],
                );
                step(label, Some(rate), a)?;
            }
        }
        workload::Mode::Backlog => {
            step(
                "build backlog".into(),
                None,
                argv("produce", &[w.producer_args()]),
            )?;
            let mut a = argv(
                "consume",
                &[w.consumer_args(), vec!["--from".into(), "earliest".into()]],
            );
            // The drain is bounded by drain_s, not the produce duration.
            let at = a
                .iter()
                .position(|x| x == "--duration-s")
                .expect("base args carry --duration-s");
            a[at + 1] = w.drain_s.to_string();
            step("drain backlog".into(), None, a)?;
        }
    }
    print_steps(&steps);
    Ok(json!({ "workload": name, "workload_params": w, "duration_s": duration_s, "steps": steps }))
}

fn run_limits(cmd: &LimitsCmd) -> Result<serde_json::Value, Error> {
    check(
        cmd.duration_s > 0.0 && cmd.duration_s <= 600.0,
        "--duration-s must be in (0, 600]",
    )?;
    let dir = cmd.dir.clone().unwrap_or_else(std::env::temp_dir);
    let report = limits::measure(&dir, cmd.duration_s, cmd.file_bytes_max)?;
    limits::print(&report);
    Ok(to_json(&report))
}

fn run_plan(cmd: &PlanCmd) -> Result<serde_json::Value, Error> {
    let text = std::fs::read_to_string(&cmd.capacity)?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| wire::protocol_error("capacity json", e))?;
    let evidence = plan::evidence_from_capacity(&doc).map_err(Error::Protocol)?;
    let request = plan::PlanRequest {
        target_mb_per_s: cmd.target_mb_per_s,
        record_bytes: cmd.record_bytes,
        consumer_parallelism: cmd.consumer_parallelism,
        retention_hours: cmd.retention_hours,
        replication_factor: cmd.replication_factor,
        utilization: cmd.utilization,
        p99_ms_max: cmd.p99_ms_max,
    };
    let result = plan::plan(&evidence, &request).map_err(Error::Protocol)?;
    plan::print(&result, &request);
    Ok(json!({ "request": request, "plan": result, "capacity_evidence": evidence }))
}

fn run_capacity(cmd: &CapacityCmd) -> Result<serde_json::Value, Error> {
    check(
        !cmd.partitions_list.is_empty() && cmd.partitions_list.iter().all(|&p| (1..=100_000).contains(&p)),
        "--partitions-list needs counts in 1..=100000",
    )?;
    check(
        cmd.broker_bin.is_some() != cmd.bootstrap.is_some(),
        "give exactly one of --broker-bin and --bootstrap",
    )?;
    check((1..=100).contains(&cmd.runs), "--runs must be 1..=100")?;
    check(
        cmd.fixed_mb_per_s > 0.0 && cmd.fixed_mb_per_s.is_finite(),
        "--fixed-mb-per-s must be > 0",
    )?;
    let work_dir = cmd.work_dir.clone().unwrap_or_else(capacity::default_work_dir);
    let params = capacity::CapacityParams {
        partitions_list: cmd.partitions_list.clone(),
        broker_bin: cmd.broker_bin.clone(),
        broker_args: cmd.broker_arg.clone(),
        bootstrap: cmd.bootstrap.clone(),
        broker_pid: cmd.broker_pid,
        work_dir: work_dir.clone(),
        out_dir: cmd.out_dir.clone(),
        fixed_mb_per_s: cmd.fixed_mb_per_s,
        max_rate: !cmd.no_max_rate,
        restarts: !cmd.no_restarts && cmd.broker_bin.is_some(),
        runs: cmd.runs,
        record_bytes: cmd.record_bytes,
        duration_s: cmd.duration_s,
        drain_s: cmd.drain_s,
        load_args: vec![
            "--batch-bytes".into(),
            cmd.batch_bytes.to_string(),
            "--producers".into(),
            cmd.producers.to_string(),
            "--consumers".into(),
            cmd.consumers.to_string(),
            "--inflight".into(),
            cmd.inflight.to_string(),
            format!("--acks={}", cmd.acks),
        ],
        partitions_per_request: cmd.partitions_per_request,
        quiet: cmd.quiet,
    };
    let result = capacity::run(&params, &|argv: &[String]| run_step(argv));
    if cmd.work_dir.is_none() {
        capacity::remove_work_dir(&work_dir);
    }
    result
}

/// The summary table after a workload.
fn print_steps(steps: &[serde_json::Value]) {
    println!();
    println!(
        "| {:<34} | {:>10} | {:>8} | {:>13} | {:>13} |",
        "step", "msgs/s", "MB/s", "ack p99 µs", "e2e p99 µs"
    );
    for s in steps {
        let r = &s["results"];
        let side = if r["produce"].is_null() {
            &r["consume"]
        } else {
            &r["produce"]
        };
        let num = |v: &serde_json::Value, decimals: usize| {
            v.as_f64()
                .map_or_else(|| "-".to_string(), |x| format!("{x:.decimals$}"))
        };
        println!(
            "| {:<34} | {:>10} | {:>8} | {:>13} | {:>13} |",
            s["step"].as_str().unwrap_or(""),
            num(&side["msgs_per_s"], 0),
            num(&side["mb_per_s"], 1),
            num(&r["produce"]["ack_latency"]["p99_us"], 0),
            num(&r["consume"]["e2e_latency"]["p99_us"], 0),
        );
    }
}

fn to_json<T: Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).unwrap_or(serde_json::Value::Null)
}

/// Connects, makes sure every topic exists and every partition has a
/// leader that serves it (bounded waits, see `wire::Cluster`), returns the
/// cluster view and the partition ids. Producers need the same partition
/// ids in every topic; the topics' leaders may differ.
fn prepare_topic(common: &Common) -> Result<(Cluster, Vec<i32>), Error> {
    let mut cluster = Cluster::open(&common.bootstrap, common.topic_names(), Some(common.partitions))?;
    let ids = cluster.metas[0].partition_ids();
    check(
        cluster.metas.iter().all(|m| m.partition_ids() == ids),
        "every topic needs the same partitions",
    )?;
    cluster.confirm_leaders()?;
    Ok((cluster, ids))
}

/// Per-leader lines, printed only when there is more than one leader (a
/// single broker's output stays as it was).
fn print_leaders(side: &str, leaders: &[stats::LeaderReport]) {
    if leaders.len() > 1 {
        for line in stats::LeaderReport::lines(leaders) {
            println!("{side} {line}");
        }
    }
}

/// Every (topic index, partition) pair of `topics` topics sharing `ids`.
fn topic_partitions(topics: usize, ids: &[i32]) -> Vec<TopicPartition> {
    (0..topics)
        .flat_map(|t| ids.iter().map(move |&p| (t, p)))
        .collect()
}

fn print_produce(report: &ProduceReport) {
    println!("produce: {}", report.throughput.line());
    print_leaders("produce:", &report.leaders);
    if let Some(l) = &report.ack_latency {
        println!("produce ack latency: {}", l.line());
    }
    if let Some(l) = &report.send_lag {
        println!("send lag behind schedule: {}", l.line());
    }
}

fn print_consume(report: &ConsumeReport) {
    println!(
        "consume: {} ({} fetches)",
        report.throughput.line(),
        report.fetches
    );
    print_leaders("consume:", &report.leaders);
    if let Some(l) = &report.e2e_latency {
        println!("end-to-end latency: {}", l.line());
    }
    if let Some(g) = &report.group {
        println!("{}", g.line());
        if let Some(l) = &g.commit_latency {
            println!("commit latency: {}", l.line());
        }
        if let Some(behind) = g.committed_behind_end_records {
            println!("committed offsets are {behind} records behind the end offsets");
        }
    }
    if report.crc_failures > 0 {
        println!("CRC FAILURES: {}", report.crc_failures);
    }
}

fn produce_with_progress(params: &ProduceParams, common: &Common) -> Result<ProduceReport, Error> {
    let progress = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let report = with_progress("produced", common, common.duration_s, &progress, || {
        produce::run(params, &progress, &stop)
    })?;
    print_produce(&report);
    Ok(report)
}

fn run_produce(cmd: &ProduceCmd) -> Result<serde_json::Value, Error> {
    cmd.common.validate()?;
    cmd.producer.validate(&cmd.common)?;
    let (mut cluster, partitions) = prepare_topic(&cmd.common)?;
    let params = cmd
        .producer
        .params(&cmd.common, cluster.routes.clone(), partitions);
    let report = produce_with_progress(&params, &cmd.common).map_err(|e| cluster.explain(e))?;
    Ok(json!({ "produce": report }))
}

fn run_sink(cmd: &ProduceCmd) -> Result<serde_json::Value, Error> {
    cmd.common.validate()?;
    cmd.producer.validate(&cmd.common)?;
    let sink = sink::FakeBroker::start(cmd.common.partitions)?;
    let common = Common {
        bootstrap: sink.addr.clone(),
        ..cmd.common.clone()
    };
    let (cluster, partitions) = prepare_topic(&common)?;
    let params = cmd.producer.params(&common, cluster.routes.clone(), partitions);
    let report = produce_with_progress(&params, &common)?;
    println!(
        "sink (fake broker, {} partitions) received {} Produce requests, {:.1} MB of frames",
        sink.default_partitions(),
        sink.produce_requests(),
        sink.produce_bytes() as f64 / 1e6
    );
    Ok(json!({
        "produce": report,
        "sink": { "produce_requests": sink.produce_requests(), "produce_frame_bytes": sink.produce_bytes() },
    }))
}

fn run_consume(cmd: &ConsumeCmd) -> Result<serde_json::Value, Error> {
    cmd.common.validate()?;
    cmd.consumer.validate()?;
    // The topics must exist; their leaders are waited for (bounded).
    let mut cluster = Cluster::open(&cmd.common.bootstrap, cmd.common.topic_names(), None)?;
    let partitions = cluster.partitions();
    let timestamp = match cmd.from {
        StartAt::Earliest => -2,
        StartAt::Latest => -1,
    };
    let start = cluster.offsets_at(&partitions, timestamp)?;
    let end = EndOffsets::new();
    if cmd.from == StartAt::Earliest {
        // A catch-up read ends at what was there when it started.
        let _ = end.set(consume::end_offsets(&mut cluster, &partitions)?);
    }
    let params = cmd.consumer.params(
        &cmd.common,
        cluster.routes.clone(),
        partitions,
        cmd.common.duration_s,
        false,
    );
    let progress = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let report = with_progress("consumed", &cmd.common, cmd.common.duration_s, &progress, || {
        consume::run(&params, &start, &end, &progress, &stop, &AtomicUsize::new(0))
    })
    .map_err(|e| cluster.explain(e))?;
    print_consume(&report);
    if let Some(expected) = report.records_expected {
        println!(
            "expected {expected} records, consumed {}",
            report.throughput.records
        );
    }
    Ok(json!({ "consume": report }))
}

fn run_e2e(cmd: &E2eCmd) -> Result<serde_json::Value, Error> {
    cmd.common.validate()?;
    cmd.producer.validate(&cmd.common)?;
    cmd.consumer.validate()?;
    check(
        cmd.drain_s >= 0.0 && cmd.drain_s <= DURATION_S_MAX,
        "--drain-s must be in [0, 86400]",
    )?;
    let (mut cluster, ids) = prepare_topic(&cmd.common)?;
    let partitions = topic_partitions(cluster.topics.len(), &ids);
    let start = cluster.offsets_at(&partitions, -1)?;
    let pparams = cmd.producer.params(&cmd.common, cluster.routes.clone(), ids);
    let cparams = cmd.consumer.params(
        &cmd.common,
        cluster.routes.clone(),
        partitions.clone(),
        cmd.common.duration_s + cmd.drain_s,
        true,
    );
    let end = EndOffsets::new();
    let produced = AtomicU64::new(0);
    let consumed = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let members_assigned = AtomicUsize::new(0);
    let (produce_report, consume_report) = std::thread::scope(|scope| {
        let consumer =
            scope.spawn(|| consume::run(&cparams, &start, &end, &consumed, &stop, &members_assigned));
        if cmd.consumer.group.is_some() {
            // Produce once every member holds partitions, so end-to-end
            // latency measures the steady group and not its first join.
            // Records produced earlier are still read (members start at the
            // run's start offsets), so this only waits, bounded.
            let wait = Duration::from_millis(
                cmd.consumer.rebalance_timeout_ms as u64 + cmd.consumer.session_timeout_ms as u64,
            );
            let deadline = Instant::now() + wait;
            while members_assigned.load(Ordering::Relaxed) < cmd.consumer.consumers
                && !consumer.is_finished()
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let produce_report = with_progress("produced", &cmd.common, cmd.common.duration_s, &produced, || {
            produce::run(&pparams, &produced, &AtomicBool::new(false))
        });
        match consume::end_offsets(&mut cluster, &partitions) {
            Ok(offsets) => {
                let _ = end.set(offsets);
            }
            Err(_) => stop.store(true, Ordering::Relaxed),
        }
        if produce_report.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        let consume_report = consumer
            .join()
            .unwrap_or_else(|_| Err(Error::Protocol("consumer panicked".into())));
        (produce_report, consume_report)
    });
    let produce_report = produce_report.map_err(|e| cluster.explain(e))?;
    let consume_report = consume_report.map_err(|e| cluster.explain(e))?;
    print_produce(&produce_report);
    print_consume(&consume_report);
    let expected = consume_report.records_expected.unwrap_or(0);
    let counts_match = consume_report.throughput.records == expected
        && produce_report.throughput.records <= expected
        && (produce_report.throughput.errors > 0 || produce_report.throughput.records == expected);
    println!(
        "acked {} records, log grew by {expected}, consumed {}: {}",
        produce_report.throughput.records,
        consume_report.throughput.records,
        if counts_match {
            "counts match"
        } else {
            "COUNTS DIFFER"
        }
    );
    Ok(json!({
        "produce": produce_report,
        "consume": consume_report,
        "counts_match": counts_match,
    }))
}

/// Runs `f` with a progress line on stderr, ticking every 200 ms while `f`
/// runs (the ticker's loop is bounded by `f` finishing).
fn with_progress<T>(
    label: &str,
    common: &Common,
    duration_s: f64,
    count: &AtomicU64,
    f: impl FnOnce() -> T,
) -> T {
    let target = if common.quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(Some((duration_s * 1000.0) as u64), target);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let done = AtomicBool::new(false);
    let out = std::thread::scope(|scope| {
        scope.spawn(|| {
            let start = Instant::now();
            let mut last = (start, 0u64);
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let now = Instant::now();
                let n = count.load(Ordering::Relaxed);
                let rate = (n - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-9);
                last = (now, n);
                bar.set_position(now.duration_since(start).as_millis() as u64);
                bar.set_message(format!("{label} {n} msgs, {rate:.0} msgs/s"));
            }
        });
        let out = f();
        done.store(true, Ordering::Relaxed);
        out
    });
    bar.finish_and_clear();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("shardlog-bench").chain(args.iter().copied()))
    }

    #[test]
    fn produce_defaults_are_1kib_records_in_64kib_batches() {
        let Command::Produce(cmd) = parse(&["produce"]).unwrap().command else {
            panic!("not produce");
        };
        assert_eq!(cmd.common.record_bytes, 1024);
        assert_eq!(cmd.producer.records_per_batch(&cmd.common), 64);
        assert_eq!(cmd.producer.acks, 1);
        assert_eq!(cmd.producer.inflight, 4);
        assert!(cmd.producer.rate.is_none());
        cmd.common.validate().unwrap();
        cmd.producer.validate(&cmd.common).unwrap();
    }

    #[test]
    fn acks_accepts_minus_one_and_all_and_rejects_two() {
        for (arg, want) in [("-1", -1), ("all", -1), ("0", 0), ("1", 1)] {
            let Command::Produce(cmd) = parse(&["produce", "--acks", arg]).unwrap().command else {
                panic!("not produce");
            };
            assert_eq!(cmd.producer.acks, want);
        }
        assert!(parse(&["produce", "--acks", "2"]).is_err());
    }

    #[test]
    fn e2e_takes_producer_and_consumer_flags() {
        let cli = parse(&[
            "e2e",
            "--bootstrap",
            "127.0.0.1:1",
            "--rate",
            "1000",
            "--consumers",
            "2",
            "--record-bytes",
            "100",
            "--batch-bytes",
            "1000",
            "--keys",
            "uniform",
        ])
        .unwrap();
        let Command::E2e(cmd) = cli.command else {
            panic!("not e2e");
        };
        assert_eq!(cmd.producer.rate, Some(1000.0));
        assert_eq!(cmd.consumer.consumers, 2);
        assert_eq!(cmd.producer.records_per_batch(&cmd.common), 10);
        assert_eq!(cmd.producer.keys, Keys::Uniform);
        assert_eq!(cmd.consumer.max_bytes, 50 << 20);
    }

    #[test]
    fn invalid_values_are_refused() {
        let Command::Produce(cmd) = parse(&["produce", "--record-bytes", "4"]).unwrap().command else {
            panic!("not produce");
        };
        assert!(cmd.common.validate().is_err());
        let Command::Produce(cmd) = parse(&["produce", "--inflight", "0"]).unwrap().command else {
            panic!("not produce");
        };
        assert!(cmd.producer.validate(&cmd.common).is_err());
        assert!(parse(&["produce", "--partitions", "x"]).is_err());
        assert!(parse(&["consume", "--from", "middle"]).is_err());
    }

    #[test]
    fn group_flags_default_to_kafka_client_settings() {
        let Command::Consume(cmd) = parse(&["consume", "--group", "g1"]).unwrap().command else {
            panic!("not consume");
        };
        cmd.consumer.validate().unwrap();
        let g = cmd.consumer.group_config().unwrap();
        assert_eq!(g.group_id, "g1");
        assert_eq!(g.session_timeout_ms, 45_000);
        assert_eq!(g.heartbeat_interval_ms, 3000);
        assert_eq!(g.commit_interval_ms, 1000);
        let Command::E2e(cmd) = parse(&["e2e", "--group", "g2", "--commit-interval-ms", "0"])
            .unwrap()
            .command
        else {
            panic!("not e2e");
        };
        assert_eq!(cmd.consumer.group_config().unwrap().commit_interval_ms, 0);
        let Command::Consume(cmd) = parse(&["consume"]).unwrap().command else {
            panic!("not consume");
        };
        assert!(cmd.consumer.group_config().is_none());
        for bad in [
            &["consume", "--group", "g", "--heartbeat-interval-ms", "45000"][..],
            &[
                "consume",
                "--group",
                "g",
                "--session-timeout-ms",
                "150",
                "--heartbeat-interval-ms",
                "50",
            ],
            &["consume", "--group", ""],
        ] {
            let Command::Consume(cmd) = parse(bad).unwrap().command else {
                panic!("not consume");
            };
            assert!(cmd.consumer.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn params_serialize_flat() {
        let Command::Consume(cmd) = parse(&["consume", "--from", "latest"]).unwrap().command else {
            panic!("not consume");
        };
        let v = to_json(&cmd);
        assert_eq!(v["from"], "latest");
        assert_eq!(v["bootstrap"], "127.0.0.1:9092");
        assert_eq!(v["max_bytes"], 50 << 20);
    }
}
