//! The producer: one connection per `--producers`, each with a writer
//! thread and (unless acks=0) a reader thread, at most `--inflight`
//! Produce requests outstanding.
//!
//! Every request carries one RecordBatch for each of
//! `--partitions-per-request` partitions (1 by default; Kafka's own producer
//! puts every ready partition of a broker in one request); partitions are
//! taken round-robin. A connection keeps one pre-encoded request frame per
//! partition set and only patches the correlation id, timestamps, keys and CRC
//! before each write, so the per-batch cost is one CRC pass over the batch
//! (~27 GB/s) and one `write` syscall; nothing is allocated per record.
//!
//! Latency is measured per request, from the moment the batch was due to
//! the moment its response was read. With `--rate` the due time is the
//! fixed schedule (start + n x interval), not the actual send time, so a
//! stalled broker inflates the latency of every batch that waited behind
//! it rather than hiding it (coordinated omission).

use std::io::{BufReader, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest};

use crate::batch::{self, BatchLayout, Compression, KeySampler, Keys, XorShift};
use crate::stats::{self, Latency, Throughput};
use crate::wire::{self, Conn, Error, FrameReader, Result};

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
    /// Broker address to connect to (the partitions' leader).
    #[serde(skip)]
    pub leader: String,
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
}

/// Per-thread tallies, merged after the run.
struct Tally {
    records_acked: u64,
    batches_acked: u64,
    value_bytes_acked: u64,
    batch_bytes_acked: u64,
    records_sent: u64,
    batches_sent: u64,
    value_bytes_sent: u64,
    batch_bytes_sent: u64,
    /// Records sent per partition slot (index into `ProduceParams::partitions`).
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
            batches_acked: 0,
            value_bytes_acked: 0,
            batch_bytes_acked: 0,
            records_sent: 0,
            batches_sent: 0,
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

/// Time between one producer's requests under --rate (producers are
/// staggered by a fraction of it): each request carries
/// `partitions_per_request` batches.
fn request_interval(params: &ProduceParams) -> Option<Duration> {
    params.rate_msgs_per_s.map(|rate| {
        let per_producer = rate / params.producers as f64;
        let records_per_request = (params.records_per_batch * params.partitions_per_request) as f64;
        Duration::from_secs_f64(records_per_request / per_producer)
    })
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

/// Runs all producers until `params.duration_s` has passed (or `stop`),
/// then waits for outstanding acks.
pub fn run(params: &ProduceParams, progress: &AtomicU64, stop: &AtomicBool) -> Result<ProduceReport> {
    assert!(params.producers >= 1 && params.inflight >= 1 && !params.partitions.is_empty());
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
    // Connect everyone before the clock starts.
    let mut conns = Vec::with_capacity(params.producers);
    for _ in 0..params.producers {
        conns.push(Conn::open(&params.leader)?);
    }
    let version = conns[0]
        .versions
        .pick(ApiKey::Produce, PRODUCE_VERSION_PREFERRED)?;
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
    let results: Vec<Result<Tally>> = std::thread::scope(|scope| {
        let handles: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(index, conn)| {
                let batches = &batches;
                let sampler = &sampler;
                scope.spawn(move || {
                    run_producer(
                        params, version, index, conn, batches, sampler, start, progress, stop,
                    )
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Protocol("producer thread panicked".into())))
            })
            .collect()
    });
    let mut total = Tally::new(start);
    total.records_per_partition = vec![0; n * params.topics.len()];
    for r in results {
        let t = r?;
        total.records_acked += t.records_acked;
        total.batches_acked += t.batches_acked;
        total.value_bytes_acked += t.value_bytes_acked;
        total.batch_bytes_acked += t.batch_bytes_acked;
        total.records_sent += t.records_sent;
        total.batches_sent += t.batches_sent;
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
    let (records, requests, value_bytes, batch_bytes) = if params.acks == 0 {
        (
            total.records_sent,
            total.batches_sent,
            total.value_bytes_sent,
            total.batch_bytes_sent,
        )
    } else {
        (
            total.records_acked,
            total.batches_acked,
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
            requests * k as u64,
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
    })
}

#[allow(clippy::too_many_arguments)]
fn run_producer(
    params: &ProduceParams,
    version: i16,
    index: usize,
    mut conn: Conn,
    batches: &[(BatchLayout, Vec<u8>)],
    sampler: &KeySampler,
    start: Instant,
    progress: &AtomicU64,
    stop: &AtomicBool,
) -> Result<Tally> {
    // Request `seq` covers k consecutive partitions from (seq x k + index)
    // mod n (producers shifted so they spread), or, keyed, the partition of
    // a freshly drawn key.
    let n = params.partitions.len();
    let k = params.partitions_per_request;
    // frames[topic][variant]
    let topics = params.topics.len();
    let mut frames = Vec::with_capacity(topics);
    for topic in &params.topics {
        let mut variants = Vec::with_capacity(batches.len());
        for (layout, template) in batches {
            variants.push(build_frame(params, version, topic, k, layout.clone(), template)?);
        }
        frames.push(variants);
    }
    let interval = request_interval(params);
    let first_due = interval.map_or(start, |i| {
        start + i.mul_f64(index as f64 / params.producers as f64)
    });
    let deadline = start + Duration::from_secs_f64(params.duration_s);
    let mut rng = XorShift::new(0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1));
    let slots = Slots::new(params.inflight);
    let (tx, rx) = sync_channel::<InFlight>(params.inflight);
    let reader_stream = conn.stream.try_clone()?;

    std::thread::scope(|scope| {
        let reader = (params.acks != 0)
            .then(|| scope.spawn(|| read_acks(params, version, reader_stream, rx, &slots, start, progress)));
        let mut tally = Tally::new(start);
        tally.records_per_partition = vec![0; n * topics];
        let mut failure = None;
        for seq in 0u64.. {
            if stop.load(Ordering::Relaxed) {
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
            // Topics in turn; within a topic, partitions round-robin.
            let topic = (seq % topics as u64) as usize;
            let round = seq / topics as u64;
            let frame = &mut frames[topic][(round % batches.len() as u64) as usize];
            let first_key = sampler.keyed().then(|| sampler.draw(&mut rng));
            let first_slot = match first_key {
                Some(key) => batch::partition_for_key(&key.to_be_bytes(), n),
                None => ((round * k as u64 + index as u64) % n as u64) as usize,
            };
            let correlation_id = conn.next_correlation_id();
            let at = wire::FRAME_CORRELATION_ID_OFFSET;
            frame.bytes[at..at + 4].copy_from_slice(&correlation_id.to_be_bytes());
            let due_us = stats::wall_us(due);
            let layout = &frame.layout;
            for j in 0..k {
                let slot = (first_slot + j) % n;
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
                records: (layout.records_count * k) as u64,
                value_bytes: layout.value_bytes * k as u64,
                batch_bytes: (layout.batch_bytes * k) as u64,
            };
            tally.records_sent += entry.records;
            tally.batches_sent += 1;
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
                    tally.batches_acked = acked.batches_acked;
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
fn read_acks(
    params: &ProduceParams,
    version: i16,
    stream: std::net::TcpStream,
    rx: Receiver<InFlight>,
    slots: &Slots,
    start: Instant,
    progress: &AtomicU64,
) -> Result<Tally> {
    let result = read_acks_inner(params, version, stream, rx, slots, start, progress);
    slots.close();
    result
}

fn read_acks_inner(
    params: &ProduceParams,
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
            tally.batches_acked += 1;
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

    fn params(acks: i16) -> ProduceParams {
        ProduceParams {
            topics: vec!["t".into()],
            partitions: vec![0, 1, 2],
            leader: String::new(),
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
        assert_eq!(request_interval(&p), None);
        // 3 batches of 5 records per request, 2 producers at 1500 msgs/s total:
        // each sends 750 msgs/s = 50 requests/s.
        p.rate_msgs_per_s = Some(1500.0);
        p.producers = 2;
        assert_eq!(request_interval(&p), Some(Duration::from_millis(20)));
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
