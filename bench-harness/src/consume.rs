//! The consumer: fetching in a loop with plain Fetch requests (no fetch
//! session), each Fetch to the leader of the partitions it names. Without a
//! group, each leader gets up to `--consumers` threads, each with its own
//! connection and a fixed share of that leader's partitions (its k-th
//! partition goes to its consumer k mod n; a single broker: partition k to
//! consumer k mod n, as before routing). With `--group` each of the
//! `--consumers` threads is a member of that consumer group (`group.rs`)
//! with a fetch connection to every leader, reads what the group assigns
//! it, and commits its positions as it goes.
//!
//! A NOT_LEADER_OR_FOLLOWER answer ends the run (`Error::NotLeader`): the
//! routes come from the Metadata read at the start (see `wire::Cluster`).
//!
//! Records are counted from batch headers only (recordsCount, offsets,
//! batchLength); the first record of each batch is read for its µs
//! timestamp when end-to-end latency is wanted. Record sets stay inside the
//! reused response buffer (zero-copy `Bytes` slices).

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, FetchRequest};

use crate::batch::BatchHeader;
use crate::group::{self, GroupConfig, GroupReport, Member, MemberStats, NamedPartition, Standing};
use crate::stats::{self, Latency, LeaderReport, Throughput};
pub use crate::wire::TopicPartition;
use crate::wire::{self, Cluster, Conn, Error, Result, Route};

/// Fetch version asked for (the highest before topic ids, v13).
pub const FETCH_VERSION_PREFERRED: i16 = 12;

#[derive(Clone, Debug, serde::Serialize)]
pub struct ConsumeParams {
    pub topics: Vec<String>,
    /// (index into `topics`, partition id), dealt round-robin to consumers.
    pub partitions: Vec<TopicPartition>,
    /// The partitions' leaders, each with the pairs it leads (covering `partitions`).
    #[serde(skip)]
    pub routes: Vec<Route>,
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
    /// Per partition leader: fetch connections to it and records read from it.
    pub leaders: Vec<LeaderReport>,
}

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
    let by_leader = partitions_by_leader(params)?;
    // Per leader, up to --consumers connections, its partitions dealt
    // round-robin over them: (route index, partition indexes, connection).
    let mut conns = Vec::new();
    for (r, mine) in by_leader.iter().enumerate() {
        let consumers = params.consumers.min(mine.len());
        for index in 0..consumers {
            let share: Vec<usize> = mine
                .iter()
                .enumerate()
                .filter(|(j, _)| j % consumers == index)
                .map(|(_, &k)| k)
                .collect();
            conns.push((r, share, Fetcher::open(&params.routes[r])?));
        }
    }
    let version = fetch_version(conns.iter().map(|(_, _, f)| f))?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(params.duration_s);
    let results: Vec<(usize, Result<Tally>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = conns
            .into_iter()
            .map(|(r, share, fetcher)| {
                let mine: Vec<(TopicPartition, i64)> = share
                    .into_iter()
                    .map(|k| (params.partitions[k], start_offsets[k]))
                    .collect();
                let handle = scope.spawn(move || {
                    run_consumer(
                        params, version, fetcher, mine, end, start, deadline, progress, stop,
                    )
                });
                (r, handle)
            })
            .collect();
        handles
            .into_iter()
            .map(|(r, h)| {
                let out = h
                    .join()
                    .unwrap_or_else(|_| Err(Error::Protocol("consumer thread panicked".into())));
                (r, out)
            })
            .collect()
    });
    let mut leaders = leader_reports(params, &by_leader);
    let mut tallies = Vec::with_capacity(results.len());
    for (r, out) in results {
        let t = out?;
        leaders[r].connections += 1;
        leaders[r].records += t.records;
        tallies.push(t);
    }
    Ok(report(
        params,
        version,
        start_offsets,
        end,
        start,
        tallies,
        leaders,
    ))
}

/// Indexes into `params.partitions` per route (same order as
/// `params.routes`), in `params.partitions`' order; every partition must
/// have a leader.
fn partitions_by_leader(params: &ConsumeParams) -> Result<Vec<Vec<usize>>> {
    let mut by_leader = vec![Vec::new(); params.routes.len()];
    for (k, tp) in params.partitions.iter().enumerate() {
        let r = params
            .routes
            .iter()
            .position(|r| r.partitions.binary_search(tp).is_ok())
            .ok_or_else(|| {
                Error::Protocol(format!(
                    "{}/{} has no leader in Metadata",
                    params.topics[tp.0], tp.1
                ))
            })?;
        by_leader[r].push(k);
    }
    Ok(by_leader)
}

/// A report line per route, connections and records still to count.
fn leader_reports(params: &ConsumeParams, by_leader: &[Vec<usize>]) -> Vec<LeaderReport> {
    params
        .routes
        .iter()
        .zip(by_leader)
        .map(|(r, mine)| LeaderReport {
            leader_id: r.leader_id,
            addr: r.addr.clone(),
            partitions: mine.len(),
            connections: 0,
            records: 0,
        })
        .collect()
}

/// The Fetch version every connection supports (brokers of one cluster
/// serve the same ones; the lowest pick is taken).
fn fetch_version<'a>(fetchers: impl Iterator<Item = &'a Fetcher<'a>>) -> Result<i16> {
    let mut version = FETCH_VERSION_PREFERRED;
    for f in fetchers {
        version = version.min(f.conn.versions.pick(ApiKey::Fetch, FETCH_VERSION_PREFERRED)?);
    }
    Ok(version)
}

/// A fetch connection to one leader, with its response reader.
struct Fetcher<'a> {
    route: &'a Route,
    conn: Conn,
    frames: wire::FrameReader,
    reader: BufReader<TcpStream>,
    /// Records read through it.
    records: u64,
}

impl<'a> Fetcher<'a> {
    fn open(route: &'a Route) -> Result<Fetcher<'a>> {
        let conn = Conn::open(&route.addr)?;
        let reader = BufReader::with_capacity(64 << 10, conn.stream.try_clone()?);
        Ok(Fetcher {
            route,
            conn,
            frames: wire::FrameReader::default(),
            reader,
            records: 0,
        })
    }

    /// Sends one Fetch for the partitions of `offsets` not `skip`ped;
    /// returns its correlation id for `read`.
    fn send(
        &mut self,
        params: &ConsumeParams,
        version: i16,
        offsets: &[(TopicPartition, i64)],
        skip: &[bool],
        tally: &mut Tally,
    ) -> Result<i32> {
        let correlation_id = self.conn.next_correlation_id();
        let frame = wire::encode_frame(&fetch_request(params, offsets, skip), version, correlation_id)?;
        self.conn.stream.write_all(&frame)?;
        tally.fetches += 1;
        Ok(correlation_id)
    }

    /// Reads the answer to `send`, advancing `offsets`.
    fn read(
        &mut self,
        params: &ConsumeParams,
        version: i16,
        correlation_id: i32,
        offsets: &mut [(TopicPartition, i64)],
        tally: &mut Tally,
        progress: &AtomicU64,
    ) -> Result<()> {
        let before = tally.records;
        let route = self.route;
        self.frames.read(&mut self.reader, |f| {
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
                    if p.error_code == wire::NOT_LEADER_OR_FOLLOWER {
                        return Err(Error::NotLeader {
                            request: "Fetch",
                            topic: params.topics[topic].clone(),
                            partition: p.partition_index,
                            leader_id: route.leader_id,
                            addr: route.addr.clone(),
                        });
                    }
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
        })?;
        self.records += tally.records - before;
        Ok(())
    }
}

/// Merges the threads' tallies into the report (no group figures).
fn report(
    params: &ConsumeParams,
    version: i16,
    start_offsets: &[i64],
    end: &EndOffsets,
    start: Instant,
    tallies: Vec<Tally>,
    leaders: Vec<LeaderReport>,
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
        leaders,
    }
}

fn named(params: &ConsumeParams, (topic, partition): TopicPartition) -> NamedPartition {
    (params.topics[topic].clone(), partition)
}

fn named_offsets(params: &ConsumeParams, offsets: &[(TopicPartition, i64)]) -> Vec<(NamedPartition, i64)> {
    offsets.iter().map(|&(tp, o)| (named(params, tp), o)).collect()
}

/// `run` for group members: one thread per member, each with a fetch
/// connection to every leader (a member may be assigned partitions of any)
/// and one to the coordinator FindCoordinator names.
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
    let by_leader = partitions_by_leader(params)?;
    let leader_of: HashMap<TopicPartition, usize> = by_leader
        .iter()
        .enumerate()
        .flat_map(|(r, mine)| mine.iter().map(move |&k| (params.partitions[k], r)))
        .collect();
    let mut members = Vec::with_capacity(params.consumers);
    for _ in 0..params.consumers {
        let fetchers = params
            .routes
            .iter()
            .map(Fetcher::open)
            .collect::<Result<Vec<Fetcher>>>()?;
        let member = Member::connect(&coordinator, config, &params.topics)?;
        members.push((fetchers, member));
    }
    let version = fetch_version(members.iter().flat_map(|(fetchers, _)| fetchers.iter()))?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(params.duration_s);
    // A failed member stops the others: they would otherwise wait for it
    // in every rebalance until the session timeout.
    let failed = AtomicBool::new(false);
    let results: Vec<Result<(Tally, MemberStats, Vec<u64>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = members
            .into_iter()
            .map(|(fetchers, member)| {
                let ctx = MemberCtx {
                    params,
                    version,
                    leader_of: &leader_of,
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
                    let out = run_member(&ctx, fetchers, member);
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
    let mut leaders = leader_reports(params, &by_leader);
    for r in results {
        let (t, s, per_leader) = r?;
        tallies.push(t);
        member_stats.push(s);
        for (leader, records) in leaders.iter_mut().zip(per_leader) {
            leader.connections += 1;
            leader.records += records;
        }
    }
    let mut out = report(params, version, &start_offsets, end, start, tallies, leaders);
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
    /// Index into `params.routes` (and a member's fetchers) of each partition's leader.
    leader_of: &'a HashMap<TopicPartition, usize>,
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
/// stopped), and on the way out commit and leave. Returns the records read
/// from each leader too (aligned with `params.routes`).
fn run_member(
    ctx: &MemberCtx<'_>,
    mut fetchers: Vec<Fetcher<'_>>,
    mut member: Member,
) -> Result<(Tally, MemberStats, Vec<u64>)> {
    let params = ctx.params;
    let mut tally = Tally::new(ctx.start);
    // Per owned partition, whether this pass's Fetch to a leader leaves it out.
    let mut skip: Vec<bool> = Vec::new();
    let mut sent: Vec<(usize, i32)> = Vec::with_capacity(fetchers.len());
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
        // One Fetch to each leader of an unfinished owned partition, all
        // sent before any answer is read, so the leaders' long polls
        // overlap: a pass waits about one --max-wait-ms, not one per leader
        // (heartbeats go between passes, and the session allows for that).
        sent.clear();
        for (r, fetcher) in fetchers.iter_mut().enumerate() {
            skip.clear();
            skip.extend(
                owned
                    .iter()
                    .zip(&done)
                    .map(|(&(tp, _), &d)| d || ctx.leader_of.get(&tp) != Some(&r)),
            );
            if skip.iter().all(|&s| s) {
                continue;
            }
            sent.push((r, fetcher.send(params, ctx.version, &owned, &skip, &mut tally)?));
        }
        if sent.is_empty() {
            // Owned partitions without a known leader (not possible: owned
            // ones come from `fallback`, every one of which is routed); wait
            // as for an empty assignment rather than spin.
            std::thread::sleep(Duration::from_millis(params.max_wait_ms.clamp(1, 100) as u64));
            continue;
        }
        for &(r, correlation_id) in &sent {
            fetchers[r].read(
                params,
                ctx.version,
                correlation_id,
                &mut owned,
                &mut tally,
                ctx.progress,
            )?;
        }
    }
    if member.commits_enabled() && member.generation() >= 0 && !owned.is_empty() {
        member.commit(&named_offsets(params, &owned))?;
    }
    member.leave()?;
    let per_leader = fetchers.iter().map(|f| f.records).collect();
    Ok((tally, member.stats, per_leader))
}

/// A Fetch for the partitions of `offsets` not `skip`ped (done, or led elsewhere).
fn fetch_request(params: &ConsumeParams, offsets: &[(TopicPartition, i64)], skip: &[bool]) -> FetchRequest {
    let topics = params
        .topics
        .iter()
        .enumerate()
        .filter_map(|(t, name)| {
            let partitions: Vec<FetchPartition> = offsets
                .iter()
                .zip(skip)
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
    mut fetcher: Fetcher<'_>,
    mut offsets: Vec<(TopicPartition, i64)>,
    end: &EndOffsets,
    start: Instant,
    deadline: Instant,
    progress: &AtomicU64,
    stop: &AtomicBool,
) -> Result<Tally> {
    let mut tally = Tally::new(start);
    let mut done = vec![false; offsets.len()];
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        if let Some(end) = end.get() {
            for (k, &(tp, o)) in offsets.iter().enumerate() {
                done[k] = o >= end.get(&tp).copied().unwrap_or(i64::MAX);
            }
            if done.iter().all(|&d| d) {
                break;
            }
        }
        let correlation_id = fetcher.send(params, version, &offsets, &done, &mut tally)?;
        fetcher.read(
            params,
            version,
            correlation_id,
            &mut offsets,
            &mut tally,
            progress,
        )?;
    }
    Ok(tally)
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

/// Latest offsets as a map, for `EndOffsets` (ListOffsets to each leader).
pub fn end_offsets(
    cluster: &mut Cluster,
    partitions: &[TopicPartition],
) -> Result<HashMap<TopicPartition, i64>> {
    let latest = cluster.offsets_at(partitions, -1)?;
    Ok(partitions.iter().copied().zip(latest).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(routes: Vec<Route>, partitions: Vec<TopicPartition>) -> ConsumeParams {
        ConsumeParams {
            topics: vec!["a".into(), "b".into()],
            partitions,
            routes,
            bootstrap: String::new(),
            group: None,
            consumers: 2,
            record_bytes: 100,
            max_wait_ms: 100,
            min_bytes: 1,
            max_bytes: 1 << 20,
            partition_max_bytes: 1 << 20,
            duration_s: 1.0,
            verify_crc: false,
            measure_e2e: false,
        }
    }

    fn route(leader_id: i32, partitions: &[TopicPartition]) -> Route {
        Route {
            leader_id,
            addr: format!("h{leader_id}:1"),
            partitions: partitions.to_vec(),
        }
    }

    #[test]
    fn partitions_go_to_their_leaders_in_order() {
        let p = params(
            vec![route(1, &[(0, 0), (0, 2), (1, 1)]), route(2, &[(0, 1), (1, 0)])],
            vec![(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)],
        );
        assert_eq!(partitions_by_leader(&p).unwrap(), vec![vec![0, 2, 4], vec![1, 3]]);
        let reports = leader_reports(&p, &partitions_by_leader(&p).unwrap());
        assert_eq!(
            reports
                .iter()
                .map(|r| (r.leader_id, r.partitions))
                .collect::<Vec<_>>(),
            vec![(1, 3), (2, 2)]
        );
        // A partition no route covers is an error, not silently unread.
        let p = params(vec![route(1, &[(0, 0)])], vec![(0, 0), (0, 1)]);
        assert!(partitions_by_leader(&p).is_err());
    }

    #[test]
    fn a_fetch_names_only_the_partitions_not_skipped() {
        let p = params(Vec::new(), Vec::new());
        let offsets = vec![((0, 0), 5), ((0, 1), 6), ((1, 0), 7)];
        let req = fetch_request(&p, &offsets, &[false, true, false]);
        let named: Vec<(String, i32, i64)> = req
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(move |q| (t.topic.0.to_string(), q.partition, q.fetch_offset))
            })
            .collect();
        assert_eq!(named, vec![("a".into(), 0, 5), ("b".into(), 0, 7)]);
    }
}
