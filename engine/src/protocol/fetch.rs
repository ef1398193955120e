//! Fetch: read per owner shard, long-poll on append notifications when
//! `min_bytes` is not met, trim to `max_bytes`, merge.
//!
//! Budget rule, as Kafka's: the first partition with data always returns its
//! whole first batch, even past `max_bytes`, so a consumer can never get
//! stuck behind a large batch; later partitions are left empty once the
//! response budget is spent.

use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use kafka_protocol::messages::fetch_response::{AbortedTransaction, FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{BrokerId, FetchRequest, FetchResponse, ProducerId};
use kafka_protocol::ResponseError;

use super::zero_copy::FileParts;
use crate::shard::{FetchOutcome, FetchPart, Shard, ShardOp, ShardReply, WaitPart};
use crate::storage::Records;

const FETCH_TOPIC_IDS_VERSION: i16 = 13;
const READ_COMMITTED: i8 = 1;
/// From v15 a follower names itself in `replica_state`, not `replica_id`.
const FETCH_REPLICA_STATE_VERSION: i16 = 15;

struct Slot {
    current_leader_epoch: i32,
    read_committed: bool,
    topic_index: usize,
    topic: String,
    partition: i32,
    offset: i64,
    max_bytes: usize,
    owner: Option<usize>,
    response: PartitionData,
    records: Records,
}

/// The answer, and the partitions whose records are file slices to send
/// with sendfile (see `zero_copy`); those have empty `records` in it.
pub async fn handle(shard: &Rc<Shard>, req: FetchRequest, version: i16) -> (FetchResponse, FileParts) {
    let started = Instant::now();
    let view = shard.view();
    let image = &view.image;
    // A follower's fetch (Kafka's replica fetch): reads to the log end.
    let replica_id = if version >= FETCH_REPLICA_STATE_VERSION {
        req.replica_state.replica_id.0
    } else {
        req.replica_id.0
    };
    let mut topics: Vec<FetchableTopicResponse> = Vec::with_capacity(req.topics.len());
    let mut slots: Vec<Slot> = Vec::new();
    for (topic_index, topic) in req.topics.into_iter().enumerate() {
        let meta = if version >= FETCH_TOPIC_IDS_VERSION {
            image.topic_by_id(&topic.topic_id)
        } else {
            image.topic(topic.topic.as_str())
        };
        let mut response = FetchableTopicResponse::default();
        if version >= FETCH_TOPIC_IDS_VERSION {
            response.topic_id = topic.topic_id;
        } else {
            response.topic = topic.topic.clone();
        }
        topics.push(response);
        let name = meta
            .map(|m| m.name.clone())
            .unwrap_or_else(|| topic.topic.to_string());
        for p in topic.partitions {
            let mut response = PartitionData::default()
                .with_partition_index(p.partition)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1)
                .with_preferred_read_replica(BrokerId(-1));
            if req.isolation_level == READ_COMMITTED {
                response.aborted_transactions = Some(Vec::new());
            }
            let owner = view.owner(&name, p.partition);
            if meta.is_none() {
                response.error_code = if version >= FETCH_TOPIC_IDS_VERSION {
                    ResponseError::UnknownTopicId.code()
                } else {
                    ResponseError::UnknownTopicOrPartition.code()
                };
            } else if let Err(code) = owner {
                response.error_code = code.code();
            }
            let owner = owner.ok();
            slots.push(Slot {
                current_leader_epoch: p.current_leader_epoch,
                read_committed: req.isolation_level == READ_COMMITTED,
                topic_index,
                topic: name.clone(),
                partition: p.partition,
                offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes.max(0) as usize,
                owner: if response.error_code == 0 { owner } else { None },
                response,
                records: Records::default(),
            });
        }
    }

    let min_bytes = req.min_bytes.max(0) as usize;
    read_all(shard, &mut slots, replica_id).await;
    let available: usize = slots.iter().map(|s| s.records.len()).sum();
    let max_wait_ms = req.max_wait_ms.max(0) as u64;
    let any_error = slots.iter().any(|s| s.response.error_code != 0);
    if available < min_bytes && !any_error && max_wait_ms > 0 && !slots.is_empty() {
        let waited_ms = started.elapsed().as_millis() as u64;
        if waited_ms < max_wait_ms {
            wait_any(shard, &slots, max_wait_ms - waited_ms, replica_id >= 0).await;
            read_all(shard, &mut slots, replica_id).await;
        }
    }

    let max_bytes = req.max_bytes.max(0) as usize;
    let mut used_bytes = 0usize;
    for slot in &mut slots {
        let len = slot.records.len();
        if len == 0 {
            continue;
        }
        if used_bytes > 0 && used_bytes + len > max_bytes {
            slot.records = Records::default();
            continue;
        }
        used_bytes += len;
    }
    let mut files = FileParts::new();
    for slot in slots {
        let mut r = slot.response;
        let partitions = &mut topics[slot.topic_index].partitions;
        r.records = Some(match slot.records {
            Records::Memory(bytes) => bytes,
            Records::File(slice) => {
                files.insert((slot.topic_index, partitions.len()), slice);
                Bytes::new()
            }
        });
        partitions.push(r);
    }
    let response = FetchResponse::default()
        .with_responses(topics)
        .with_session_id(0)
        .with_error_code(0);
    (response, files)
}

/// One read of every readable slot, one op per owning shard, all shards at once.
async fn read_all(shard: &Rc<Shard>, slots: &mut [Slot], replica_id: i32) {
    let work: Vec<(usize, FetchPart)> = slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            s.owner.map(|owner| {
                (
                    owner,
                    FetchPart {
                        slot: i,
                        topic: s.topic.clone(),
                        partition: s.partition,
                        offset: s.offset,
                        max_bytes: s.max_bytes,
                        replica_id,
                        current_leader_epoch: s.current_leader_epoch,
                        read_committed: s.read_committed && replica_id < 0,
                    },
                )
            })
        })
        .collect();
    let outcomes = shard
        .fan_out(
            work,
            |parts| ShardOp::Fetch { parts },
            |reply| match reply {
                ShardReply::Fetch(outcomes) => Some(outcomes),
                _ => None,
            },
        )
        .await;
    for FetchOutcome {
        slot,
        error,
        high_watermark,
        log_start_offset,
        last_stable_offset,
        aborted_transactions,
        records,
    } in outcomes
    {
        let s = &mut slots[slot];
        s.response.high_watermark = high_watermark;
        s.response.last_stable_offset = last_stable_offset;
        s.response.log_start_offset = log_start_offset;
        if let Some(aborted) = aborted_transactions {
            s.response.aborted_transactions = Some(
                aborted
                    .into_iter()
                    .map(|(producer_id, first_offset)| {
                        AbortedTransaction::default()
                            .with_producer_id(ProducerId(producer_id))
                            .with_first_offset(first_offset)
                    })
                    .collect(),
            );
        }
        s.response.error_code = error.map(|e| e.code.code()).unwrap_or(0);
        s.records = records;
    }
}

/// Waits until any owner shard reports new data, or `timeout_ms` passes.
/// Waits left running on other shards end by their own deadline.
async fn wait_any(shard: &Rc<Shard>, slots: &[Slot], timeout_ms: u64, upto_log_end: bool) {
    let work: Vec<(usize, WaitPart)> = slots
        .iter()
        .filter_map(|s| {
            s.owner.map(|owner| {
                (
                    owner,
                    WaitPart {
                        topic: s.topic.clone(),
                        partition: s.partition,
                        offset: s.offset,
                        upto_log_end,
                        read_committed: s.read_committed && !upto_log_end,
                        high_watermark_seen: s.response.high_watermark,
                    },
                )
            })
        })
        .collect();
    let waits: Vec<_> = shard
        .group_by_owner(work)
        .into_iter()
        .map(|(owner, parts)| Box::pin(shard.call(owner, ShardOp::Wait { parts, timeout_ms })))
        .collect();
    if !waits.is_empty() {
        futures::future::select_all(waits).await;
    }
}
