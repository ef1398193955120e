//! The producer: `--producers` connections to each partition leader, each
//! with a writer thread and (unless acks=0) a reader thread, at most
//! `--inflight` Produce requests outstanding. A connection carries only
//! the partitions its broker leads (`LeaderPlan`); against a single broker
//! that is every partition, and the run is what it was before routing.
//!
//! Every request carries one RecordBatch for each of
//! `--partitions-per-request` partitions of that broker (1 by default;
//! Kafka's own producer puts every ready partition of a broker in one
//! request); partitions are taken round-robin. A connection keeps one pre-encoded request frame per
//! partition set and only patches the correlation id, timestamps, keys and CRC
//! before each write, so the per-batch cost is one CRC pass over the batch
//! (~27 GB/s) and one `write` syscall; nothing is allocated per record.
//!
//! Latency is measured per request, from the moment the batch was due to
//! the moment its response was read. With `--rate` the due time is the
//! fixed schedule (start + n x interval), not the actual send time, so a
//! stalled broker inflates the latency of every batch that waited behind
//! it rather than hiding it (coordinated omission).
//!
//! A NOT_LEADER_OR_FOLLOWER answer ends the run (`Error::NotLeader`): the
//! routes come from the Metadata read at the start (see `wire::Cluster`).

use std::io::{BufReader, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest};

use crate::batch::{self, BatchLayout, Compression, KeySampler, KeySubset, Keys, KeysByPartition, XorShift};
use crate::stats::{self, Latency, LeaderReport, Throughput};
use crate::wire::{self, Conn, Error, FrameReader, Result, Route};

/// Produce version asked for (the highest before topic ids, v13).
pub const PRODUCE_VERSION_PREFERRED: i16 = 9;
/// Wait after the last send for outstanding acks.
const ACK_DRAIN_TIMEOUT: Duration = wire::SOCKET_TIMEOUT;

#[derive(Clone, Debug, serde::Serialize)]
pub struct ProduceParams {
    /// Requests go to the topics in turn (one topic per request).
    pub topics: Vec<String>,
    /// Partition ids, the same for every topic.
    pub partitions: Vec<i32>,
    /// The leaders to connect to, each with the (topic, partition) pairs it
    /// leads; together they cover every topic's `partitions`.
    #[serde(skip)]
    pub routes: Vec<Route>,
    /// Record value bytes: fixed, or uniform over record_bytes..=record_bytes_max.
    pub record_bytes: usize,
    pub record_bytes_max: usize,
    pub records_per_batch: usize,
    /// Batches (one per partition) in each Produce request.
    pub partitions_per_request: usize,
    pub producers: usize,
    pub inflight: usize,
    pub acks: i16,
    /// Target messages per second over all producers; None = max rate.
    pub rate_msgs_per_s: Option<f64>,
    pub duration_s: f64,
    pub keys: Keys,
    /// Distinct key ids (uniform and Zipf keys).
    pub key_count: u64,
    pub zipf_exponent: f64,
    pub compression: Compression,
    pub request_timeout_ms: i32,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ProduceReport {
    pub produce_version: i16,
    #[serde(flatten)]
    pub throughput: Throughput,
    /// Produce requests counted (acked, or sent for acks=0).
    pub requests: u64,
    /// Records written (acked or not): with acks=0 this is all we know.
    pub records_sent: u64,
    /// Due time -> response read, per request; errors count failed requests (absent for acks=0).
    pub ack_latency: Option<Latency>,
    /// How late the writer was against the schedule (fixed rate only): the
    /// tool's own lag, included in `ack_latency` by design.
    pub send_lag: Option<Latency>,
    /// Share of the records sent that went to the busiest partition (1/n
    /// when spread evenly; higher under key skew).
    pub hottest_partition_share: f64,
    /// Different pre-encoded batches cycled through (1 for fixed-size
    /// uncompressed records, whose keys and timestamps are patched per send).
    pub batch_variants: usize,
    /// Per partition leader: its connections and what they carried.
    pub leaders: Vec<LeaderReport>,
}

/// Per-thread tallies, merged after the run.
struct Tally {
    records_acked: u64,
    requests_acked: u64,
    /// RecordBatches in the requests counted (a request's batches can be
    /// fewer than --partitions-per-request on a broker leading fewer partitions).
    record_batches_acked: u64,
    value_bytes_acked: u64,
    batch_bytes_acked: u64,
    records_sent: u64,
    requests_sent: u64,
    record_batches_sent: u64,
    value_bytes_sent: u64,
    batch_bytes_sent: u64,
    /// Records sent per (topic, partition slot): topic x partitions + slot,
    /// slot an index into `ProduceParams::partitions`.
    records_per_partition: Vec<u64>,
    errors: u64,
    latency: Histogram<u64>,
    send_lag: Histogram<u64>,
    last_event: Instant,
}

impl Tally {
    fn new(start: Instant) -> Tally {
        Tally {
            records_acked: 0,
            requests_acked: 0,
            record_batches_acked: 0,
            value_bytes_acked: 0,
            batch_bytes_acked: 0,
            records_sent: 0,
            requests_sent: 0,
            record_batches_sent: 0,
            value_bytes_sent: 0,
            batch_bytes_sent: 0,
            records_per_partition: Vec::new(),
            errors: 0,
            latency: stats::new_histogram(),
            send_lag: stats::new_histogram(),
            last_event: start,
        }
    }
}

/// A counting semaphore bounding requests in flight on one connection;
/// `close` wakes the writer when the reader has failed.
struct Slots {
    state: Mutex<(usize, bool)>,
    changed: Condvar,
}

impl Slots {
    fn new(n: usize) -> Slots {
        Slots {
            state: Mutex::new((n, false)),
            changed: Condvar::new(),
        }
    }

    /// Takes a slot; false if closed or none freed within `timeout`.
    fn acquire(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().expect("slots lock");
        loop {
            if state.1 {
                return false;
            }
            if state.0 > 0 {
                state.0 -= 1;
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .expect("slots lock")
                .0;
        }
    }

    fn release(&self) {
        self.state.lock().expect("slots lock").0 += 1;
        self.changed.notify_one();
    }

    fn close(&self) {
        self.state.lock().expect("slots lock").1 = true;
        self.changed.notify_all();
    }
}

struct InFlight {
    correlation_id: i32,
    due: Instant,
    /// RecordBatches in the request.
    batches: u64,
    records: u64,
    value_bytes: u64,
    batch_bytes: u64,
}

/// Memory all pre-encoded frames of one connection may take.
const FRAMES_BYTES_MAX: usize = 1 << 30;

/// Variants of the batch encoded when record sizes vary or records are
/// compressed (a compressed batch cannot be patched per record).
const BATCH_VARIANTS_MAX: usize = 16;

/// A pre-encoded Produce request with `k` batches of one variant; the
/// partition indices and batches are patched in place before each send.
struct Frame {
    bytes: Vec<u8>,
    /// Where each RecordBatch sits inside `bytes`.
    batch_at: Vec<usize>,
    /// Where each batch's partition index (i32, big-endian) sits.
    partition_at: Vec<usize>,
    layout: BatchLayout,
}

fn produce_request(params: &ProduceParams, topic: &str, batches: Vec<(i32, Bytes)>) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(params.acks)
        .with_timeout_ms(params.request_timeout_ms)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(wire::topic_name(topic))
            .with_partition_data(
                batches
                    .into_iter()
                    .map(|(p, batch)| {
                        PartitionProduceData::default()
                            .with_index(p)
                            .with_records(Some(batch))
                    })
                    .collect(),
            )])
}

/// Encodes the request once as is and once per slot with that slot's
/// batch bytes (or partition index) inverted: the bytes that differ are
/// exactly that batch (or index), wherever the version's framing put it.
fn build_frame(
    params: &ProduceParams,
    version: i16,
    topic: &str,
    slots: usize,
    layout: BatchLayout,
    batch: &[u8],
) -> Result<Frame> {
    let template = Bytes::copy_from_slice(batch);
    let inverted = Bytes::from(batch.iter().map(|b| !b).collect::<Vec<u8>>());
    let encode = |flip_batch: Option<usize>, flip_index: Option<usize>| {
        let batches = (0..slots)
            .map(|j| {
                let index = if flip_index == Some(j) { -1 } else { 0 };
                let records = if flip_batch == Some(j) {
                    inverted.clone()
                } else {
                    template.clone()
                };
                (index, records)
            })
            .collect();
        wire::encode_frame(&produce_request(params, topic, batches), version, 0)
    };
    let bytes = encode(None, None)?;
    let locate = |other: Vec<u8>, len: usize| -> Result<usize> {
        let first = bytes.iter().zip(&other).position(|(a, b)| a != b);
        let last = bytes.iter().zip(&other).rposition(|(a, b)| a != b);
        match (first, last) {
            (Some(first), Some(last)) if last + 1 - first == len && bytes.len() == other.len() => Ok(first),
            _ => Err(Error::Protocol(
                "could not locate a batch in the Produce frame".into(),
            )),
        }
    };
    let mut batch_at = Vec::with_capacity(slots);
    let mut partition_at = Vec::with_capacity(slots);
    for j in 0..slots {
        batch_at.push(locate(encode(Some(j), None)?, batch.len())?);
        partition_at.push(locate(encode(None, Some(j))?, 4)?);
    }
    Ok(Frame {
        bytes,
        batch_at,
        partition_at,
        layout,
    })
}

/// Time between one connection's requests under --rate (a leader's
/// connections are staggered by a fraction of it): the connection sends its
/// leader's share of the rate split over `--producers`, in requests of
/// `plan.records_per_request` records on average.
fn request_interval(params: &ProduceParams, plan: &LeaderPlan) -> Option<Duration> {
    params.rate_msgs_per_s.map(|rate| {
        let per_connection = rate / params.producers as f64 * plan.share;
        let records_per_request = plan.records_per_request(params.records_per_batch);
        Duration::from_secs_f64(records_per_request / per_connection)
    })
}

/// What one leader's connections send: that broker's partitions of each
/// topic, and its share of the run's records.
struct LeaderPlan<'a> {
    route: &'a Route,
    /// The topics it leads partitions of (that receive records).
    topics: Vec<TopicPlan>,
    /// Share of the run's records this leader's connections send: 1 for a
    /// leader of everything; else its partitions' share (unkeyed: its count
    /// over all; keyed: the probability a key lands on them). Scales --rate.
    share: f64,
}

struct TopicPlan {
    /// Index into `ProduceParams::topics`.
    topic: usize,
    /// Partition slots (indexes into `ProduceParams::partitions`) led here, ascending.
    slots: Vec<usize>,
    /// Batches per request: --partitions-per-request, at most `slots.len()`
    /// (a request only holds partitions of the broker it goes to).
    k: usize,
    /// Share of the run's records meant for these partitions.
    weight: f64,
    /// Keyed runs over several leaders: first keys drawn from these
    /// partitions only. None: from the whole distribution (one leader).
    keys: Option<KeySubset>,
}

impl LeaderPlan<'_> {
    /// Mean records per request: every topic's batches per request,
    /// weighted by how many requests go to that topic (`requests_weight`).
    fn records_per_request(&self, records_per_batch: usize) -> f64 {
        let k = self.topics[0].k;
        if self.topics.iter().all(|t| t.k == k) {
            return (records_per_batch * k) as f64;
        }
        let requests: f64 = self.topics.iter().map(TopicPlan::requests_weight).sum();
        records_per_batch as f64 * self.share / requests
    }

    /// Every topic the same number of requests: topics in turn, as before
    /// routing (and on a single broker).
    fn in_turn(&self) -> bool {
        let w = self.topics[0].requests_weight();
        self.topics.iter().all(|t| t.requests_weight() == w)
    }
}

impl TopicPlan {
    /// Requests per unit of records: topics get requests in proportion.
    fn requests_weight(&self) -> f64 {
        self.weight / self.k as f64
    }
}

/// Plans every leader's share. A leader of every partition of every topic
/// gets exactly the pre-routing plan (share 1, topics in turn, keys from the
/// whole distribution); leaders whose partitions get no records (keyed, no
/// key lands there) get no connections.
/// `split`: the key distribution by partition, for keyed runs over several
/// leaders only (`key_split`).
fn leader_plans<'a>(params: &'a ProduceParams, split: Option<&KeysByPartition>) -> Vec<LeaderPlan<'a>> {
    let n = params.partitions.len();
    let topics = params.topics.len();
    let k = params.partitions_per_request;
    let all = (n * topics) as f64;
    let mut plans = Vec::with_capacity(params.routes.len());
    for route in &params.routes {
        let mut by_topic = vec![Vec::new(); topics];
        for &(t, p) in &route.partitions {
            if let Some(slot) = params.partitions.iter().position(|&x| x == p) {
                by_topic[t].push(slot);
            }
        }
        let everything = by_topic.iter().all(|slots| slots.len() == n);
        let mut plan = LeaderPlan {
            route,
            topics: Vec::new(),
            share: 0.0,
        };
        let mut led = 0usize;
        for (topic, mut slots) in by_topic.into_iter().enumerate() {
            slots.sort_unstable();
            slots.dedup();
            if slots.is_empty() {
                continue;
            }
            led += slots.len();
            let (weight, keys) = match split {
                Some(split) if !everything => {
                    let mass = split.mass(&slots);
                    if mass <= 0.0 {
                        continue;
                    }
                    (mass / topics as f64, Some(split.subset(&slots)))
                }
                _ => (slots.len() as f64 / all, None),
            };
            plan.topics.push(TopicPlan {
                topic,
                k: k.min(slots.len()),
                slots,
                weight,
                keys,
            });
        }
        plan.share = if everything {
            1.0
        } else if split.is_some() {
            plan.topics.iter().map(|t| t.weight).sum()
        } else {
            led as f64 / all
        };
        if !plan.topics.is_empty() {
            plans.push(plan);
        }
    }
    plans
}

/// The key distribution split by partition when keys must be drawn per
/// leader: keyed runs over more than one leader (one leader draws from the
/// whole distribution, as before routing).
fn key_split(params: &ProduceParams, sampler: &KeySampler) -> Option<KeysByPartition> {
    (sampler.keyed() && params.routes.len() > 1)
        .then(|| KeysByPartition::new(sampler, params.partitions.len()))
}

/// Which topic each request of a connection goes to: in turn when every
/// topic takes as many requests (the pre-routing order), else smooth
/// weighted round-robin (nginx's) by `requests_weight`, so each partition
/// gets about the same records whichever topic it belongs to.
struct TopicPicker {
    weights: Vec<f64>,
    current: Vec<f64>,
    total: f64,
    in_turn: bool,
    next: usize,
}

impl TopicPicker {
    fn new(plan: &LeaderPlan) -> TopicPicker {
        let weights: Vec<f64> = plan.topics.iter().map(TopicPlan::requests_weight).collect();
        TopicPicker {
            total: weights.iter().sum(),
            current: vec![0.0; weights.len()],
            in_turn: plan.in_turn(),
            weights,
            next: 0,
        }
    }

    fn pick(&mut self) -> usize {
        if self.in_turn {
            let t = self.next;
            self.next = (self.next + 1) % self.weights.len();
            return t;
        }
        let mut best = 0;
        for (i, w) in self.weights.iter().enumerate() {
            self.current[i] += w;
            if self.current[i] > self.current[best] {
                best = i;
            }
        }
        self.current[best] -= self.total;
        best
    }
}

/// Record value sizes for one batch variant: fixed, or uniform over
/// record_bytes..=record_bytes_max.
fn value_sizes(params: &ProduceParams, rng: &mut XorShift) -> Vec<usize> {
    let spread = (params.record_bytes_max - params.record_bytes) as u64;
    (0..params.records_per_batch)
        .map(|_| {
            if spread == 0 {
                params.record_bytes
            } else {
                params.record_bytes + (rng.next() % (spread + 1)) as usize
            }
        })
        .collect()
}

/// How many batch variants to pre-encode: one when every send can be
/// patched in place, else up to BATCH_VARIANTS_MAX within the frame memory bound.
fn batch_variants(params: &ProduceParams) -> usize {
    if params.record_bytes_max == params.record_bytes && params.compression == Compression::None {
        return 1;
    }
    let frame_bytes =
        params.partitions_per_request * (params.records_per_batch * (params.record_bytes_max + 24) + 61);
    (FRAMES_BYTES_MAX / frame_bytes.max(1)).clamp(1, BATCH_VARIANTS_MAX)
}

/// Runs all producers until `params.duration_s` has passed (or `stop`, or
/// a connection failed), then waits for outstanding acks.
pub fn run(params: &ProduceParams, progress: &AtomicU64, stop: &AtomicBool) -> Result<ProduceReport> {
    assert!(params.producers >= 1 && params.inflight >= 1 && !params.partitions.is_empty());
    assert!(!params.routes.is_empty(), "at least one leader");
    assert!(params.record_bytes_max >= params.record_bytes && params.key_count >= 1);
    let n = params.partitions.len();
    let k = params.partitions_per_request;
    if k == 0 || k > n {
        return Err(Error::Protocol(format!(
            "--partitions-per-request must be 1..={n} (the topic's partitions)"
        )));
    }
    if params.keys != Keys::None && k != 1 {
        return Err(Error::Protocol(
            "keyed producing picks each batch's partition from its key: --partitions-per-request must be 1"
                .into(),
        ));
    }
    let variants = batch_variants(params);
    let frames_bytes =
        params.topics.len() * variants * k * (params.records_per_batch * (params.record_bytes_max + 24) + 61);
    if frames_bytes > FRAMES_BYTES_MAX {
        return Err(Error::Protocol(format!(
            "pre-encoded frames would take {frames_bytes} bytes per producer"
        )));
    }
    let sampler = KeySampler::new(params.keys, params.key_count, params.zipf_exponent);
    let split = key_split(params, &sampler);
    let plans = leader_plans(params, split.as_ref());
    // Connect everyone before the clock starts: --producers per leader.
    // (plan index, producer index within the leader, connection)
    let mut conns = Vec::with_capacity(params.producers * plans.len());
    for (leader, plan) in plans.iter().enumerate() {
        for index in 0..params.producers {
            conns.push((leader, index, Conn::open(&plan.route.addr)?));
        }
    }
    // Brokers of one cluster serve the same versions; take the lowest pick.
    let mut version = PRODUCE_VERSION_PREFERRED;
    for (_, _, conn) in &conns {
        version = version.min(conn.versions.pick(ApiKey::Produce, PRODUCE_VERSION_PREFERRED)?);
    }
    // Encoding (and compressing) happens before the clock starts too.
    let mut rng = XorShift::new(0x5eed);
    let mut batches = Vec::with_capacity(variants);
    for _ in 0..variants {
        let sizes = value_sizes(params, &mut rng);
        batches.push(BatchLayout::encode_with(
            &sizes,
            &sampler,
            params.compression,
            &mut rng,
        )?);
    }
    let start = Instant::now();
    // A failed connection stops the others: the run is over either way.
    let failed = AtomicBool::new(false);
    let results: Vec<(usize, Result<Tally>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(seed, (leader, index, conn))| {
                let ctx = ProducerCtx {
                    params,
                    plan: &plans[leader],
                    version,
                    index,
                    seed,
                    batches: &batches,
                    sampler: &sampler,
                    split: split.as_ref(),
                    start,
                    progress,
                    stop,
                    failed: &failed,
                };
                let failed = &failed;
                (
                    leader,
                    scope.spawn(move || {
                        let out = run_producer(&ctx, conn);
                        if out.is_err() {
                            failed.store(true, Ordering::Relaxed);
                        }
                        out
                    }),
                )
            })
            .collect();
        handles
            .into_iter()
            .map(|(leader, h)| {
                let out = h
                    .join()
                    .unwrap_or_else(|_| Err(Error::Protocol("producer thread panicked".into())));
                (leader, out)
            })
            .collect()
    });
    let mut total = Tally::new(start);
    total.records_per_partition = vec![0; n * params.topics.len()];
    let mut leaders: Vec<LeaderReport> = plans
        .iter()
        .map(|p| LeaderReport {
            leader_id: p.route.leader_id,
            addr: p.route.addr.clone(),
            partitions: p.route.partitions.len(),
            connections: params.producers,
            records: 0,
        })
        .collect();
    // Connections that stopped because another failed end cleanly, so an
    // error here is a connection's own failure.
    let mut first_error = None;
    let mut tallies = Vec::with_capacity(results.len());
    for (leader, r) in results {
        match r {
            Ok(t) => tallies.push((leader, t)),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    for (leader, t) in tallies {
        leaders[leader].records += if params.acks == 0 {
            t.records_sent
        } else {
            t.records_acked
        };
        total.records_acked += t.records_acked;
        total.requests_acked += t.requests_acked;
        total.record_batches_acked += t.record_batches_acked;
        total.value_bytes_acked += t.value_bytes_acked;
        total.batch_bytes_acked += t.batch_bytes_acked;
        total.records_sent += t.records_sent;
        total.requests_sent += t.requests_sent;
        total.record_batches_sent += t.record_batches_sent;
        total.value_bytes_sent += t.value_bytes_sent;
        total.batch_bytes_sent += t.batch_bytes_sent;
        total.errors += t.errors;
        for (sum, x) in total
            .records_per_partition
            .iter_mut()
            .zip(&t.records_per_partition)
        {
            *sum += x;
        }
        stats::merge(&mut total.latency, &t.latency);
        stats::merge(&mut total.send_lag, &t.send_lag);
        total.last_event = total.last_event.max(t.last_event);
    }
    let elapsed_s = total.last_event.duration_since(start).as_secs_f64();
    let (records, requests, record_batches, value_bytes, batch_bytes) = if params.acks == 0 {
        (
            total.records_sent,
            total.requests_sent,
            total.record_batches_sent,
            total.value_bytes_sent,
            total.batch_bytes_sent,
        )
    } else {
        (
            total.records_acked,
            total.requests_acked,
            total.record_batches_acked,
            total.value_bytes_acked,
            total.batch_bytes_acked,
        )
    };
    let hottest = total.records_per_partition.iter().copied().max().unwrap_or(0);
    Ok(ProduceReport {
        produce_version: version,
        throughput: Throughput::new(
            records,
            value_bytes,
            batch_bytes,
            record_batches,
            total.errors,
            elapsed_s,
        ),
        requests,
        records_sent: total.records_sent,
        ack_latency: Latency::of(&total.latency),
        send_lag: params.rate_msgs_per_s.and_then(|_| Latency::of(&total.send_lag)),
        hottest_partition_share: if total.records_sent == 0 {
            0.0
        } else {
            (hottest as f64 / total.records_sent as f64 * 1e4).round() / 1e4
        },
        batch_variants: variants,
        leaders,
    })
}

/// What one producer connection's threads share.
struct ProducerCtx<'a> {
    params: &'a ProduceParams,
    plan: &'a LeaderPlan<'a>,
    version: i16,
    /// Producer index within its leader (spreads partitions and schedules).
    index: usize,
    /// Connection index over the run (seeds its random numbers).
    seed: usize,
    batches: &'a [(BatchLayout, Vec<u8>)],
    sampler: &'a KeySampler,
    split: Option<&'a KeysByPartition>,
    start: Instant,
    progress: &'a AtomicU64,
    stop: &'a AtomicBool,
    failed: &'a AtomicBool,
}

fn run_producer(ctx: &ProducerCtx<'_>, mut conn: Conn) -> Result<Tally> {
    let &ProducerCtx {
        params,
        plan,
        version,
        index,
        seed,
        batches,
        sampler,
        split,
        start,
        progress,
        stop,
        failed,
    } = ctx;
    // The i-th request to a topic covers k consecutive partitions of this
    // leader's, from (i x k + index) mod its count (producers shifted so
    // they spread), or, keyed, the partition of a freshly drawn key.
    let n = params.partitions.len();
    // frames[topic plan][variant]
    let mut frames = Vec::with_capacity(plan.topics.len());
    for tp in &plan.topics {
        let topic = &params.topics[tp.topic];
        let mut variants = Vec::with_capacity(batches.len());
        for (layout, template) in batches {
            variants.push(build_frame(
                params,
                version,
                topic,
                tp.k,
                layout.clone(),
                template,
            )?);
        }
        frames.push(variants);
    }
    let mut picker = TopicPicker::new(plan);
    let mut requests_to_topic = vec![0u64; plan.topics.len()];
    let interval = request_interval(params, plan);
    let first_due = interval.map_or(start, |i| {
        start + i.mul_f64(index as f64 / params.producers as f64)
    });
    let deadline = start + Duration::from_secs_f64(params.duration_s);
    let mut rng = XorShift::new(0x9e37_79b9_7f4a_7c15 ^ (seed as u64 + 1));
    let slots = Slots::new(params.inflight);
    let (tx, rx) = sync_channel::<InFlight>(params.inflight);
    let reader_stream = conn.stream.try_clone()?;

    std::thread::scope(|scope| {
        let reader = (params.acks != 0).then(|| {
            scope.spawn(|| {
                read_acks(
                    params,
                    plan.route,
                    version,
                    reader_stream,
                    rx,
                    &slots,
                    start,
                    progress,
                )
            })
        });
        let mut tally = Tally::new(start);
        tally.records_per_partition = vec![0; n * params.topics.len()];
        let mut failure = None;
        for seq in 0u64.. {
            if stop.load(Ordering::Relaxed) || failed.load(Ordering::Relaxed) {
                break;
            }
            let due = match interval {
                Some(i) => {
                    let due = first_due + i.mul_f64(seq as f64);
                    if due >= deadline {
                        break;
                    }
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    due
                }
                None => {
                    if Instant::now() >= deadline {
                        break;
                    }
                    start
                }
            };
            if params.acks != 0 && !slots.acquire(ACK_DRAIN_TIMEOUT) {
                break; // the reader failed or the broker stopped answering
            }
            let now = Instant::now();
            let due = if interval.is_some() { due } else { now };
            stats::record(
                &mut tally.send_lag,
                now.saturating_duration_since(due).as_micros() as u64,
            );
            // Topics in turn (or weighted); within a topic, partitions round-robin.
            let at_topic = picker.pick();
            let tp = &plan.topics[at_topic];
            let (topic, k, led) = (tp.topic, tp.k, tp.slots.len());
            let round = requests_to_topic[at_topic];
            requests_to_topic[at_topic] += 1;
            let frame = &mut frames[at_topic][(round % batches.len() as u64) as usize];
            let first_key = match (&tp.keys, split) {
                (Some(subset), Some(split)) => match split.draw(subset, sampler, &mut rng) {
                    Some(key) => Some(key),
                    None => {
                        failure = Some(Error::Protocol("no key of this leader's partitions drawn".into()));
                        break;
                    }
                },
                _ => sampler.keyed().then(|| sampler.draw(&mut rng)),
            };
            // Position in this leader's `slots` of the request's first partition.
            let first_at = match first_key {
                // The key's partition is one of this leader's: `slots` is
                // every partition, or `keys` drew from these only.
                Some(key) => {
                    let slot = batch::partition_for_key(&key.to_be_bytes(), n);
                    match tp.slots.binary_search(&slot) {
                        Ok(at) => at,
                        Err(_) => {
                            failure = Some(Error::Protocol(format!(
                                "key {key} maps to partition slot {slot}, not led by broker {}",
                                plan.route.leader_id
                            )));
                            break;
                        }
                    }
                }
                None => ((round * k as u64 + index as u64) % led as u64) as usize,
            };
            let correlation_id = conn.next_correlation_id();
            let at = wire::FRAME_CORRELATION_ID_OFFSET;
            frame.bytes[at..at + 4].copy_from_slice(&correlation_id.to_be_bytes());
            let due_us = stats::wall_us(due);
            let layout = &frame.layout;
            for j in 0..k {
                let slot = tp.slots[(first_at + j) % led];
                let at = frame.partition_at[j];
                frame.bytes[at..at + 4].copy_from_slice(&params.partitions[slot].to_be_bytes());
                tally.records_per_partition[topic * n + slot] += layout.records_count as u64;
                let at = frame.batch_at[j];
                layout.stamp_with(
                    &mut frame.bytes[at..at + layout.batch_bytes],
                    due_us,
                    sampler,
                    first_key,
                    &mut rng,
                );
            }
            let entry = InFlight {
                correlation_id,
                due,
                batches: k as u64,
                records: (layout.records_count * k) as u64,
                value_bytes: layout.value_bytes * k as u64,
                batch_bytes: (layout.batch_bytes * k) as u64,
            };
            tally.records_sent += entry.records;
            tally.requests_sent += 1;
            tally.record_batches_sent += entry.batches;
            tally.value_bytes_sent += entry.value_bytes;
            tally.batch_bytes_sent += entry.batch_bytes;
            let records = entry.records;
            // Never blocks: a slot was taken, so fewer than `inflight` are queued.
            if params.acks != 0 && tx.send(entry).is_err() {
                break;
            }
            if let Err(e) = conn.stream.write_all(&frame.bytes) {
                failure = Some(Error::Io(e));
                break;
            }
            if params.acks == 0 {
                progress.fetch_add(records, Ordering::Relaxed);
                tally.last_event = Instant::now();
            }
        }
        drop(tx);
        if let Some(reader) = reader {
            match reader.join() {
                Ok(Ok(acked)) => {
                    tally.records_acked = acked.records_acked;
                    tally.requests_acked = acked.requests_acked;
                    tally.record_batches_acked = acked.record_batches_acked;
                    tally.value_bytes_acked = acked.value_bytes_acked;
                    tally.batch_bytes_acked = acked.batch_bytes_acked;
                    tally.errors = acked.errors;
                    tally.latency = acked.latency;
                    tally.last_event = acked.last_event;
                }
                Ok(Err(e)) => failure = failure.or(Some(e)),
                Err(_) => failure = Some(Error::Protocol("ack reader panicked".into())),
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(tally),
        }
    })
}

/// Reads one response per queued request, in order, until the writer has
/// finished and every request is answered.
#[allow(clippy::too_many_arguments)]
fn read_acks(
    params: &ProduceParams,
    route: &Route,
    version: i16,
    stream: std::net::TcpStream,
    rx: Receiver<InFlight>,
    slots: &Slots,
    start: Instant,
    progress: &AtomicU64,
) -> Result<Tally> {
    let result = read_acks_inner(params, route, version, stream, rx, slots, start, progress);
    slots.close();
    result
}

#[allow(clippy::too_many_arguments)]
fn read_acks_inner(
    params: &ProduceParams,
    route: &Route,
    version: i16,
    stream: std::net::TcpStream,
    rx: Receiver<InFlight>,
    slots: &Slots,
    start: Instant,
    progress: &AtomicU64,
) -> Result<Tally> {
    let mut reader = BufReader::with_capacity(64 << 10, stream);
    let mut frames = FrameReader::default();
    let mut tally = Tally::new(start);
    let mut first_error: Option<String> = None;
    // Ends when the writer drops its sender and the queue is drained.
    while let Ok(entry) = rx.recv() {
        let response = frames.read(&mut reader, |f| {
            wire::decode_response::<ProduceRequest>(f, version, entry.correlation_id)
        })?;
        let now = Instant::now();
        stats::record(
            &mut tally.latency,
            now.saturating_duration_since(entry.due).as_micros() as u64,
        );
        let mut ok = true;
        for t in &response.responses {
            for p in &t.partition_responses {
                if p.error_code == wire::NOT_LEADER_OR_FOLLOWER {
                    return Err(Error::NotLeader {
                        request: "Produce",
                        topic: t.name.0.to_string(),
                        partition: p.index,
                        leader_id: route.leader_id,
                        addr: route.addr.clone(),
                    });
                }
                if p.error_code != 0 {
                    ok = false;
                    first_error.get_or_insert_with(|| {
                        format!(
                            "partition {} error {} {:?}",
                            p.index, p.error_code, p.error_message
                        )
                    });
                }
            }
        }
        if ok {
            tally.records_acked += entry.records;
            tally.requests_acked += 1;
            tally.record_batches_acked += entry.batches;
            tally.value_bytes_acked += entry.value_bytes;
            tally.batch_bytes_acked += entry.batch_bytes;
            progress.fetch_add(entry.records, Ordering::Relaxed);
        } else {
            tally.errors += 1;
        }
        tally.last_event = now;
        slots.release();
    }
    if let Some(e) = first_error {
        eprintln!(
            "produce errors on {} ({} batches): first: {e}",
            params.topics.join(","),
            tally.errors
        );
    }
    Ok(tally)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::protocol::{decode_request_header_from_buffer, Decodable};
    use kafka_protocol::records::RecordBatchDecoder;

    /// One route per (leader id, partition ids it leads in every topic).
    fn routes(topics: usize, leaders: &[(i32, &[i32])]) -> Vec<Route> {
        leaders
            .iter()
            .map(|&(id, ps)| Route {
                leader_id: id,
                addr: format!("127.0.0.1:{}", 9000 + id),
                partitions: (0..topics)
                    .flat_map(|t| ps.iter().map(move |&p| (t, p)))
                    .collect(),
            })
            .collect()
    }

    fn params(acks: i16) -> ProduceParams {
        ProduceParams {
            topics: vec!["t".into()],
            partitions: vec![0, 1, 2],
            routes: routes(1, &[(1, &[0, 1, 2])]),
            record_bytes: 64,
            record_bytes_max: 64,
            records_per_batch: 5,
            partitions_per_request: 3,
            producers: 1,
            inflight: 1,
            acks,
            rate_msgs_per_s: None,
            duration_s: 1.0,
            keys: Keys::Uniform,
            key_count: 1000,
            zipf_exponent: 1.0,
            compression: Compression::None,
            request_timeout_ms: 1000,
        }
    }

    #[test]
    fn patched_frames_decode_as_produce_requests_at_every_version() {
        let p = params(-1);
        let (layout, template) = BatchLayout::encode(p.records_per_batch, p.record_bytes, p.keys);
        for version in 3..=12 {
            let mut frame = build_frame(&p, version, "t", 3, layout.clone(), &template).unwrap();
            assert_eq!(frame.batch_at.len(), 3);
            let at = wire::FRAME_CORRELATION_ID_OFFSET;
            frame.bytes[at..at + 4].copy_from_slice(&77i32.to_be_bytes());
            for (&at, partition) in frame.partition_at.iter().zip([2i32, 0, 1]) {
                frame.bytes[at..at + 4].copy_from_slice(&partition.to_be_bytes());
            }
            let mut rng = XorShift::new(1);
            for &b in &frame.batch_at {
                layout.stamp(
                    &mut frame.bytes[b..b + layout.batch_bytes],
                    1_234_567_890,
                    &mut rng,
                );
            }
            let size = i32::from_be_bytes(frame.bytes[..4].try_into().unwrap()) as usize;
            assert_eq!(size, frame.bytes.len() - 4);
            let mut buf = Bytes::from(frame.bytes[4..].to_vec());
            let header = decode_request_header_from_buffer(&mut buf).unwrap();
            assert_eq!((header.correlation_id, header.request_api_version), (77, version));
            let req = ProduceRequest::decode(&mut buf, version).unwrap();
            assert_eq!(req.acks, -1);
            let parts = &req.topic_data[0].partition_data;
            assert_eq!(parts.iter().map(|d| d.index).collect::<Vec<_>>(), vec![2, 0, 1]);
            for d in parts {
                let mut records = d.records.clone().unwrap();
                let set = RecordBatchDecoder::decode(&mut records).unwrap();
                assert_eq!(set.records.len(), 5);
                assert_eq!(set.records[0].timestamp, 1_234_567);
            }
        }
    }

    #[test]
    fn slots_bound_inflight_and_close_wakes_the_writer() {
        let slots = Slots::new(2);
        assert!(slots.acquire(Duration::from_millis(1)));
        assert!(slots.acquire(Duration::from_millis(1)));
        assert!(
            !slots.acquire(Duration::from_millis(5)),
            "third request must wait"
        );
        slots.release();
        assert!(slots.acquire(Duration::from_millis(1)));
        slots.close();
        assert!(!slots.acquire(Duration::from_secs(10)));
    }

    #[test]
    fn keyed_producing_needs_one_partition_per_request() {
        let p = params(1);
        let err = run(&p, &AtomicU64::new(0), &AtomicBool::new(false)).unwrap_err();
        assert!(err.to_string().contains("must be 1"), "{err}");
    }

    #[test]
    fn rate_counts_every_batch_of_a_request() {
        let mut p = params(1);
        p.keys = Keys::None;
        let plans = leader_plans(&p, None);
        assert_eq!(request_interval(&p, &plans[0]), None);
        // 3 batches of 5 records per request, 2 producers at 1500 msgs/s total:
        // each sends 750 msgs/s = 50 requests/s.
        p.rate_msgs_per_s = Some(1500.0);
        p.producers = 2;
        let plans = leader_plans(&p, None);
        assert_eq!(request_interval(&p, &plans[0]), Some(Duration::from_millis(20)));
    }

    #[test]
    fn a_leader_of_everything_gets_the_unrouted_plan() {
        let mut p = params(1);
        p.keys = Keys::None;
        p.topics = vec!["a".into(), "b".into(), "c".into()];
        p.routes = routes(3, &[(7, &[0, 1, 2])]);
        let plans = leader_plans(&p, None);
        assert_eq!(plans.len(), 1);
        let plan = &plans[0];
        assert_eq!(plan.share, 1.0);
        assert!(plan.in_turn());
        for (t, tp) in plan.topics.iter().enumerate() {
            assert_eq!((tp.topic, tp.slots.clone(), tp.k), (t, vec![0, 1, 2], 3));
            assert!(tp.keys.is_none());
        }
        // Topics in turn, as request seq % topics did before routing.
        let mut picker = TopicPicker::new(plan);
        let picks: Vec<usize> = (0..7).map(|_| picker.pick()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn three_leaders_split_the_partitions_the_batches_and_the_rate() {
        let mut p = params(1);
        p.keys = Keys::None;
        p.partitions = (0..12).collect();
        // Round-robin placement: partition p on node p % 3 + 1.
        p.routes = routes(1, &[(1, &[0, 3, 6, 9]), (2, &[1, 4, 7, 10]), (3, &[2, 5, 8, 11])]);
        p.partitions_per_request = 6;
        p.rate_msgs_per_s = Some(3000.0);
        let plans = leader_plans(&p, None);
        assert_eq!(plans.len(), 3);
        for (i, plan) in plans.iter().enumerate() {
            assert_eq!(plan.route.leader_id, i as i32 + 1);
            let tp = &plan.topics[0];
            // Slots are indexes into `partitions`, which here equal the ids.
            assert_eq!(tp.slots, (0..4).map(|j| j * 3 + i).collect::<Vec<usize>>());
            assert_eq!(tp.k, 4, "capped at the partitions this broker leads");
            assert_eq!(plan.share, 4.0 / 12.0);
            // 1000 msgs/s per leader in requests of 4 batches of 5 records.
            let interval = request_interval(&p, plan).unwrap();
            assert!((interval.as_secs_f64() - 0.020).abs() < 1e-9, "{interval:?}");
        }
    }

    #[test]
    fn uneven_topics_get_requests_in_proportion_to_their_partitions_here() {
        let mut p = params(1);
        p.keys = Keys::None;
        p.partitions = (0..5).collect();
        p.partitions_per_request = 1;
        p.topics = vec!["a".into(), "b".into()];
        // This leader leads 4 partitions of a and 1 of b.
        let route = Route {
            leader_id: 1,
            addr: "x:1".into(),
            partitions: vec![(0, 0), (0, 1), (0, 2), (0, 3), (1, 4)],
        };
        let other = Route {
            leader_id: 2,
            addr: "x:2".into(),
            partitions: vec![(0, 4), (1, 0), (1, 1), (1, 2), (1, 3)],
        };
        p.routes = vec![route, other];
        let plans = leader_plans(&p, None);
        let plan = &plans[0];
        assert!(!plan.in_turn());
        assert_eq!(plan.share, 0.5);
        let mut picker = TopicPicker::new(plan);
        let mut counts = [0usize; 2];
        for _ in 0..500 {
            counts[picker.pick()] += 1;
        }
        assert_eq!(counts, [400, 100]);
        assert_eq!(plan.records_per_request(p.records_per_batch), 5.0);
    }

    #[test]
    fn keyed_runs_over_leaders_draw_only_their_partitions_keys() {
        let mut p = params(1);
        p.partitions_per_request = 1;
        p.partitions = (0..6).collect();
        p.routes = routes(1, &[(1, &[0, 2, 4]), (2, &[1, 3, 5])]);
        let sampler = KeySampler::new(p.keys, p.key_count, p.zipf_exponent);
        let split = key_split(&p, &sampler).expect("keyed over two leaders");
        let plans = leader_plans(&p, Some(&split));
        assert_eq!(plans.len(), 2);
        let total: f64 = plans.iter().map(|pl| pl.share).sum();
        assert!((total - 1.0).abs() < 1e-9, "shares add up to 1: {total}");
        let mut rng = XorShift::new(5);
        for plan in &plans {
            let tp = &plan.topics[0];
            let subset = tp.keys.as_ref().expect("restricted keys");
            for _ in 0..2000 {
                let key = split.draw(subset, &sampler, &mut rng).unwrap();
                let slot = batch::partition_for_key(&key.to_be_bytes(), 6);
                assert!(tp.slots.binary_search(&slot).is_ok(), "key {key} -> {slot}");
            }
        }
        // One leader: the whole distribution, as before routing.
        p.routes = routes(1, &[(1, &[0, 1, 2, 3, 4, 5])]);
        assert!(key_split(&p, &sampler).is_none());
    }

    #[test]
    fn variants_only_when_batches_cannot_be_patched() {
        let mut p = params(1);
        assert_eq!(batch_variants(&p), 1);
        p.record_bytes_max = 128;
        assert_eq!(batch_variants(&p), BATCH_VARIANTS_MAX);
        let sizes = value_sizes(&p, &mut XorShift::new(3));
        assert_eq!(sizes.len(), 5);
        assert!(sizes.iter().all(|s| (64..=128).contains(s)));
        p.record_bytes_max = 64;
        p.compression = Compression::Zstd;
        assert_eq!(batch_variants(&p), BATCH_VARIANTS_MAX);
    }

    #[test]
    fn too_many_partitions_per_request_is_refused() {
        let mut p = params(1);
        p.partitions_per_request = 4;
        let err = run(&p, &AtomicU64::new(0), &AtomicBool::new(false)).unwrap_err();
        assert!(err.to_string().contains("partitions-per-request"), "{err}");
    }
}
