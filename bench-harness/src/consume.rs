//! The consumer: `--consumers` threads, each with its own connection,
//! fetching in a loop with plain Fetch requests (no fetch session). Without
//! a group each has a fixed share of the partitions (partition k goes to
//! consumer k mod n); with `--group` each is a member of that consumer group
//! (`group.rs`) and reads what the group assigns it, committing its
//! positions as it goes.
//!
//! Records are counted from batch headers only (recordsCount, offsets,
//! batchLength); the first record of each batch is read for its µs
//! timestamp when end-to-end latency is wanted. Record sets stay inside the
//! reused response buffer (zero-copy `Bytes` slices).

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, FetchRequest};

use crate::batch::BatchHeader;
use crate::group::{self, GroupConfig, GroupReport, Member, MemberStats, NamedPartition, Standing};
use crate::stats::{self, Latency, Throughput};
use crate::wire::{self, Conn, Error, Result};

/// Fetch version asked for (the highest before topic ids, v13).
pub const FETCH_VERSION_PREFERRED: i16 = 12;

#[derive(Clone, Debug, serde::Serialize)]
pub struct ConsumeParams {
    pub topics: Vec<String>,
    /// (index into `topics`, partition id), dealt round-robin to consumers.
    pub partitions: Vec<TopicPartition>,
    #[serde(skip)]
    pub leader: String,
    /// Where to find the group coordinator.
    #[serde(skip)]
    pub bootstrap: String,
    /// Consumers are members of this group instead of splitting the
    /// partitions among themselves.
    pub group: Option<GroupConfig>,
    pub consumers: usize,
    /// Value bytes per record, for MB/s (values are not parsed).
    pub record_bytes: usize,
    pub max_wait_ms: i32,
    pub min_bytes: i32,
    pub max_bytes: i32,
    pub partition_max_bytes: i32,
    /// Upper bound on the run; it ends earlier once every partition has
    /// reached its end offset.
    pub duration_s: f64,
    pub verify_crc: bool,
    pub measure_e2e: bool,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ConsumeReport {
    pub fetch_version: i16,
    #[serde(flatten)]
    pub throughput: Throughput,
    pub fetches: u64,
    /// Records the end offsets said were there to read.
    pub records_expected: Option<u64>,
    /// Consumer clock - first record's µs timestamp, one sample per batch.
    pub e2e_latency: Option<Latency>,
    pub crc_failures: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupReport>,
}

/// A partition of one of the run's topics: (index into the topic list, id).
pub type TopicPartition = (usize, i32);

/// End offsets per partition, set once (at the start for a catch-up read,
/// after the producers finish for a tail read).
pub type EndOffsets = OnceLock<HashMap<TopicPartition, i64>>;

struct Tally {
    records: u64,
    batch_bytes: u64,
    batches: u64,
    fetches: u64,
    crc_failures: u64,
    e2e: Histogram<u64>,
    last_record: Instant,
}

impl Tally {
    fn new(start: Instant) -> Tally {
        Tally {
            records: 0,
            batch_bytes: 0,
            batches: 0,
            fetches: 0,
            crc_failures: 0,
            e2e: stats::new_histogram(),
            last_record: start,
        }
    }
}

/// Runs the consumers from `start_offsets` (aligned with
/// `params.partitions`) until every partition reaches `end`'s offset, or
/// `stop`, or the duration runs out. With a group, committed offsets
/// replace `start_offsets` where there are any, and `members_assigned`
/// counts members that got their first assignment.
pub fn run(
    params: &ConsumeParams,
    start_offsets: &[i64],
    end: &EndOffsets,
    progress: &AtomicU64,
    stop: &AtomicBool,
    members_assigned: &AtomicUsize,
) -> Result<ConsumeReport> {
    assert_eq!(start_offsets.len(), params.partitions.len());
    assert!(params.consumers >= 1);
    if let Some(group) = &params.group {
        return run_group(
            params,
            group,
            start_offsets,
            end,
            progress,
            stop,
            members_assigned,
        );
    }
    let mut conns = Vec::with_capacity(params.consumers);
    for _ in 0..params.consumers.min(params.partitions.len()) {
        conns.push(Conn::open(&params.leader)?);
    }
    let version = conns[0].versions.pick(ApiKey::Fetch, FETCH_VERSION_PREFERRED)?;
    let consumers = conns.len();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(params.duration_s);
    let results: Vec<Result<Tally>> = std::thread::scope(|scope| {
        let handles: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(index, conn)| {
                let mine: Vec<(TopicPartition, i64)> = params
                    .partitions
                    .iter()
                    .zip(start_offsets)
                    .enumerate()
                    .filter(|(k, _)| k % consumers == index)
                    .map(|(_, (&p, &o))| (p, o))
                    .collect();
                scope.spawn(move || {
                    run_consumer(params, version, conn, mine, end, start, deadline, progress, stop)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Protocol("consumer thread panicked".into())))
            })
            .collect()
    });
    let tallies = results.into_iter().collect::<Result<Vec<Tally>>>()?;
    Ok(report(params, version, start_offsets, end, start, tallies))
}

/// Merges the threads' tallies into the report (no group figures).
fn report(
    params: &ConsumeParams,
    version: i16,
    start_offsets: &[i64],
    end: &EndOffsets,
    start: Instant,
    tallies: Vec<Tally>,
) -> ConsumeReport {
    let mut records = 0;
    let mut batch_bytes = 0;
    let mut batches = 0;
    let mut fetches = 0;
    let mut crc_failures = 0;
    let mut e2e = stats::new_histogram();
    let mut last = start;
    for t in tallies {
        records += t.records;
        batch_bytes += t.batch_bytes;
        batches += t.batches;
        fetches += t.fetches;
        crc_failures += t.crc_failures;
        stats::merge(&mut e2e, &t.e2e);
        last = last.max(t.last_record);
    }
    let records_expected = end.get().map(|end| {
        params
            .partitions
            .iter()
            .zip(start_offsets)
            .map(|(p, &s)| (end.get(p).copied().unwrap_or(s) - s).max(0) as u64)
            .sum()
    });
    ConsumeReport {
        fetch_version: version,
        throughput: Throughput::new(
            records,
            records * params.record_bytes as u64,
            batch_bytes,
            batches,
            crc_failures,
            last.duration_since(start).as_secs_f64(),
        ),
        fetches,
        records_expected,
        e2e_latency: Latency::of(&e2e),
        crc_failures,
        group: None,
    }
}

fn named(params: &ConsumeParams, (topic, partition): TopicPartition) -> NamedPartition {
    (params.topics[topic].clone(), partition)
}

fn named_offsets(params: &ConsumeParams, offsets: &[(TopicPartition, i64)]) -> Vec<(NamedPartition, i64)> {
    offsets.iter().map(|&(tp, o)| (named(params, tp), o)).collect()
}

/// `run` for group members: one thread per member, each with a fetch
/// connection to the leader and a coordinator connection.
#[allow(clippy::too_many_arguments)]
fn run_group(
    params: &ConsumeParams,
    config: &GroupConfig,
    start_offsets: &[i64],
    end: &EndOffsets,
    progress: &AtomicU64,
    stop: &AtomicBool,
    members_assigned: &AtomicUsize,
) -> Result<ConsumeReport> {
    let coordinator = group::find_coordinator(&params.bootstrap, &config.group_id)?;
    // Where each partition starts: its committed offset, else --from's. The
    // members apply the same rule, so records_expected stays exact.
    let all_named: Vec<NamedPartition> = params.partitions.iter().map(|&tp| named(params, tp)).collect();
    let committed = group::committed_offsets(&params.bootstrap, &config.group_id, &all_named)?;
    let start_offsets: Vec<i64> = all_named
        .iter()
        .zip(start_offsets)
        .map(|(np, &s)| committed.get(np).copied().unwrap_or(s))
        .collect();
    let fallback: HashMap<TopicPartition, i64> = params
        .partitions
        .iter()
        .copied()
        .zip(start_offsets.iter().copied())
        .collect();
    let mut members = Vec::with_capacity(params.consumers);
    for _ in 0..params.consumers {
        let conn = Conn::open(&params.leader)?;
        let member = Member::connect(&coordinator, config, &params.topics)?;
        members.push((conn, member));
    }
    let version = members[0]
        .0
        .versions
        .pick(ApiKey::Fetch, FETCH_VERSION_PREFERRED)?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(params.duration_s);
    // A failed member stops the others: they would otherwise wait for it
    // in every rebalance until the session timeout.
    let failed = AtomicBool::new(false);
    let results: Vec<Result<(Tally, MemberStats)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = members
            .into_iter()
            .map(|(conn, member)| {
                let ctx = MemberCtx {
                    params,
                    version,
                    fallback: &fallback,
                    end,
                    start,
                    deadline,
                    progress,
                    stop,
                    failed: &failed,
                    members_assigned,
                };
                let failed = &failed;
                scope.spawn(move || {
                    let out = run_member(&ctx, conn, member);
                    if out.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Protocol("group member thread panicked".into())))
            })
            .collect()
    });
    let mut tallies = Vec::with_capacity(results.len());
    let mut member_stats = Vec::with_capacity(results.len());
    for r in results {
        let (t, s) = r?;
        tallies.push(t);
        member_stats.push(s);
    }
    let mut out = report(params, version, &start_offsets, end, start, tallies);
    // What a restarted group would resume from: records between the last
    // commit and the end offsets (0 = every position committed).
    let committed_behind_end_records = match end.get() {
        Some(end) if config.commit_interval_ms > 0 => {
            let committed = group::committed_offsets(&params.bootstrap, &config.group_id, &all_named)?;
            Some(
                params
                    .partitions
                    .iter()
                    .zip(&all_named)
                    .zip(&start_offsets)
                    .map(|((tp, np), &s)| {
                        let at = committed.get(np).copied().unwrap_or(s);
                        (end.get(tp).copied().unwrap_or(at) - at).max(0) as u64
                    })
                    .sum(),
            )
        }
        _ => None,
    };
    out.group = Some(GroupReport::merge(
        config,
        &member_stats,
        committed_behind_end_records,
    ));
    Ok(out)
}

/// What every member thread shares.
struct MemberCtx<'a> {
    params: &'a ConsumeParams,
    version: i16,
    /// Start offset of a partition nobody committed (nor this member read).
    fallback: &'a HashMap<TopicPartition, i64>,
    end: &'a EndOffsets,
    start: Instant,
    deadline: Instant,
    progress: &'a AtomicU64,
    stop: &'a AtomicBool,
    failed: &'a AtomicBool,
    members_assigned: &'a AtomicUsize,
}

/// One group member: join, read the assigned partitions, heartbeat and
/// commit between fetches (a fetch waits at most --max-wait-ms, which is
/// checked to be below the session timeout), rejoin when the coordinator
/// says so (committing first, so the next owner continues where this one
/// stopped), and on the way out commit and leave.
fn run_member(ctx: &MemberCtx<'_>, mut conn: Conn, mut member: Member) -> Result<(Tally, MemberStats)> {
    let params = ctx.params;
    let mut tally = Tally::new(ctx.start);
    let mut frames = wire::FrameReader::default();
    let mut reader = std::io::BufReader::with_capacity(64 << 10, conn.stream.try_clone()?);
    let give_up = || {
        Instant::now() >= ctx.deadline
            || ctx.stop.load(Ordering::Relaxed)
            || ctx.failed.load(Ordering::Relaxed)
    };
    // Positions of partitions this member read in earlier generations, for
    // when nothing was committed (--commit-interval-ms 0).
    let mut positions: HashMap<TopicPartition, i64> = HashMap::new();
    let mut owned: Vec<(TopicPartition, i64)> = Vec::new();
    let mut done: Vec<bool> = Vec::new();
    let mut need_join = true;
    let mut first_assignment = true;
    // Each pass fetches, sleeps or joins; the loop ends at the deadline,
    // on stop, or once every owned partition reached its end offset.
    while !give_up() {
        if need_join {
            if member.commits_enabled() && member.generation() >= 0 && !owned.is_empty() {
                // Kafka's eager protocol: commit what is revoked before rejoining.
                member.commit(&named_offsets(params, &owned))?;
            }
            positions.extend(owned.iter().copied());
            let Some(assigned) = member.join(&give_up)? else {
                break;
            };
            let committed = member.committed(&assigned)?;
            owned = assigned
                .into_iter()
                .filter_map(|np| {
                    let topic = params.topics.iter().position(|t| *t == np.0)?;
                    let tp = (topic, np.1);
                    // A partition created after the run started has no known
                    // start offset; it is not read.
                    let from = committed
                        .get(&np)
                        .or_else(|| positions.get(&tp))
                        .or_else(|| ctx.fallback.get(&tp))
                        .copied()?;
                    Some((tp, from))
                })
                .collect();
            done = vec![false; owned.len()];
            need_join = false;
            if first_assignment {
                first_assignment = false;
                ctx.members_assigned.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        if let Some(end) = ctx.end.get() {
            for (k, &(tp, o)) in owned.iter().enumerate() {
                done[k] = o >= end.get(&tp).copied().unwrap_or(i64::MAX);
            }
            if done.iter().all(|&d| d) {
                break;
            }
        }
        if member.heartbeat_due() && member.heartbeat()? == Standing::Rejoin {
            need_join = true;
            continue;
        }
        if member.commit_due() && member.commit(&named_offsets(params, &owned))? == Standing::Rejoin {
            need_join = true;
            continue;
        }
        if owned.is_empty() {
            // Nothing assigned (more members than partitions): stay in the
            // group, heartbeating, until the run ends or a rebalance.
            std::thread::sleep(Duration::from_millis(params.max_wait_ms.clamp(1, 100) as u64));
            continue;
        }
        fetch_once(
            params,
            ctx.version,
            &mut conn,
            &mut frames,
            &mut reader,
            &mut owned,
            &done,
            &mut tally,
            ctx.progress,
        )?;
    }
    if member.commits_enabled() && member.generation() >= 0 && !owned.is_empty() {
        member.commit(&named_offsets(params, &owned))?;
    }
    member.leave()?;
    Ok((tally, member.stats))
}

fn fetch_request(params: &ConsumeParams, offsets: &[(TopicPartition, i64)], done: &[bool]) -> FetchRequest {
    let topics = params
        .topics
        .iter()
        .enumerate()
        .filter_map(|(t, name)| {
            let partitions: Vec<FetchPartition> = offsets
                .iter()
                .zip(done)
                .filter(|(&((topic, _), _), &d)| topic == t && !d)
                .map(|(&((_, p), o), _)| {
                    FetchPartition::default()
                        .with_partition(p)
                        .with_fetch_offset(o)
                        .with_current_leader_epoch(-1)
                        .with_last_fetched_epoch(-1)
                        .with_log_start_offset(-1)
                        .with_partition_max_bytes(params.partition_max_bytes)
                })
                .collect();
            (!partitions.is_empty()).then(|| {
                FetchTopic::default()
                    .with_topic(wire::topic_name(name))
                    .with_partitions(partitions)
            })
        })
        .collect();
    FetchRequest::default()
        .with_replica_id((-1).into())
        .with_max_wait_ms(params.max_wait_ms)
        .with_min_bytes(params.min_bytes)
        .with_max_bytes(params.max_bytes)
        .with_isolation_level(0)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(topics)
}

#[allow(clippy::too_many_arguments)]
fn run_consumer(
    params: &ConsumeParams,
    version: i16,
    mut conn: Conn,
    mut offsets: Vec<(TopicPartition, i64)>,
    end: &EndOffsets,
    start: Instant,
    deadline: Instant,
    progress: &AtomicU64,
    stop: &AtomicBool,
) -> Result<Tally> {
    let mut tally = Tally::new(start);
    let mut done = vec![false; offsets.len()];
    let mut frames = wire::FrameReader::default();
    let mut reader = std::io::BufReader::with_capacity(64 << 10, conn.stream.try_clone()?);
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        if let Some(end) = end.get() {
            for (k, &(tp, o)) in offsets.iter().enumerate() {
                done[k] = o >= end.get(&tp).copied().unwrap_or(i64::MAX);
            }
            if done.iter().all(|&d| d) {
                break;
            }
        }
        fetch_once(
            params,
            version,
            &mut conn,
            &mut frames,
            &mut reader,
            &mut offsets,
            &done,
            &mut tally,
            progress,
        )?;
    }
    Ok(tally)
}

/// One Fetch round trip for the partitions not `done`, advancing `offsets`.
#[allow(clippy::too_many_arguments)]
fn fetch_once(
    params: &ConsumeParams,
    version: i16,
    conn: &mut Conn,
    frames: &mut wire::FrameReader,
    reader: &mut std::io::BufReader<std::net::TcpStream>,
    offsets: &mut [(TopicPartition, i64)],
    done: &[bool],
    tally: &mut Tally,
    progress: &AtomicU64,
) -> Result<()> {
    let correlation_id = conn.next_correlation_id();
    let frame = wire::encode_frame(&fetch_request(params, offsets, done), version, correlation_id)?;
    conn.stream.write_all(&frame)?;
    tally.fetches += 1;
    frames.read(reader, |f| {
        let response = wire::decode_response::<FetchRequest>(f, version, correlation_id)?;
        if response.error_code != 0 {
            return Err(Error::Broker(format!("Fetch error {}", response.error_code)));
        }
        for t in &response.responses {
            let Some(topic) = params
                .topics
                .iter()
                .position(|name| name.as_str() == t.topic.0.as_str())
            else {
                continue;
            };
            for p in &t.partitions {
                if p.error_code != 0 {
                    return Err(Error::Broker(format!(
                        "Fetch {}/{}: error {}",
                        params.topics[topic], p.partition_index, p.error_code
                    )));
                }
                let Some(slot) = offsets
                    .iter_mut()
                    .find(|(tp, _)| *tp == (topic, p.partition_index))
                else {
                    continue;
                };
                if let Some(records) = &p.records {
                    count_batches(params, records, &mut slot.1, tally, progress);
                }
            }
        }
        Ok(())
    })
}

/// Walks the batches of one partition's record set, advancing `next_offset`.
fn count_batches(
    params: &ConsumeParams,
    mut records: &[u8],
    next_offset: &mut i64,
    tally: &mut Tally,
    progress: &AtomicU64,
) {
    let now_us = params.measure_e2e.then(stats::now_wall_us);
    let mut received = 0u64;
    // Bounded by the record set's length: each step consumes a whole batch.
    while let Some(header) = BatchHeader::parse(records) {
        let batch = &records[..header.total_bytes];
        records = &records[header.total_bytes..];
        let last = header.last_offset();
        if last < *next_offset {
            continue; // already counted (a fetch may start mid-batch)
        }
        let count = if header.base_offset >= *next_offset {
            header.records_count.max(0) as u64
        } else {
            (last - *next_offset + 1) as u64
        };
        if params.verify_crc && !header.crc_matches(batch) {
            tally.crc_failures += 1;
        }
        if let Some(now_us) = now_us {
            if let Some(ts_us) = header.send_timestamp_us(batch) {
                stats::record(&mut tally.e2e, now_us.saturating_sub(ts_us));
            }
        }
        *next_offset = last + 1;
        received += count;
        tally.batch_bytes += header.total_bytes as u64;
        tally.batches += 1;
    }
    if received > 0 {
        tally.records += received;
        tally.last_record = Instant::now();
        progress.fetch_add(received, Ordering::Relaxed);
    }
}

/// Offsets to start from (aligned with `partitions`): `timestamp` -1 =
/// latest (tail), -2 = earliest. One ListOffsets per topic.
pub fn offsets_at(
    conn: &mut Conn,
    topics: &[String],
    partitions: &[TopicPartition],
    timestamp: i64,
) -> Result<Vec<i64>> {
    let mut by_partition = HashMap::with_capacity(partitions.len());
    for (t, name) in topics.iter().enumerate() {
        let ids: Vec<i32> = partitions
            .iter()
            .filter(|(topic, _)| *topic == t)
            .map(|&(_, p)| p)
            .collect();
        if ids.is_empty() {
            continue;
        }
        let offsets = conn.list_offsets(name, &ids, timestamp)?;
        by_partition.extend(ids.into_iter().map(|p| (t, p)).zip(offsets));
    }
    partitions
        .iter()
        .map(|tp| {
            by_partition
                .get(tp)
                .copied()
                .ok_or_else(|| Error::Protocol(format!("no offset for {tp:?}")))
        })
        .collect()
}

/// Latest offsets as a map, for `EndOffsets`.
pub fn end_offsets(
    conn: &mut Conn,
    topics: &[String],
    partitions: &[TopicPartition],
) -> Result<HashMap<TopicPartition, i64>> {
    let latest = offsets_at(conn, topics, partitions, -1)?;
    Ok(partitions.iter().copied().zip(latest).collect())
}
