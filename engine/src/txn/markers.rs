//! Sends a transaction's commit or abort markers to the leaders of its
//! partitions (Kafka's `TransactionMarkerChannelManager`, one round): this
//! node's own partitions through the owner shards (`ShardOp::TxnMarkers`,
//! no network), other nodes' with WriteTxnMarkers v1 on their PLAINTEXT
//! listener, one request per node and round. The caller (the coordinator's
//! completion task) repeats rounds for what is left.
//!
//! Lives on: the coordinator's shard, inside its completion task.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::messages::write_txn_markers_request::{WritableTxnMarker, WritableTxnMarkerTopic};
use kafka_protocol::messages::{ProducerId, TopicName, WriteTxnMarkersRequest};
use kafka_protocol::ResponseError;

use crate::replication::client::LeaderConnection;
use crate::shard::{MarkerOutcome, MarkerPart, Shard, ShardOp, ShardReply};
use crate::wire::str_bytes;

/// WriteTxnMarkers version between nodes (Kafka 4.0 serves only v1).
const WRITE_TXN_MARKERS_VERSION: i16 = 1;
/// A marker answer is a few bytes per partition.
const MARKER_RESPONSE_MAX_BYTES: usize = 1 << 20;

/// One transaction's markers: who, at which epochs, and the outcome.
#[derive(Clone, Copy, Debug)]
pub struct MarkerSpec {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub coordinator_epoch: i32,
    pub commit: bool,
}

/// What a round did for one partition.
#[derive(Debug, PartialEq, Eq)]
pub enum MarkerResult {
    /// Written (or the partition is gone: its topic was deleted).
    Done,
    /// Its leader could not take it now (moving, unreachable, not enough
    /// replicas): send again next round.
    Retry,
    /// The partition refused for good (a newer producer epoch or
    /// coordinator wrote there): Kafka stops and never completes.
    Fenced(ResponseError),
}

/// Kafka's classification of a marker answer (`TransactionMarkerRequestCompletionHandler`).
fn classify(code: ResponseError) -> MarkerResult {
    match code {
        ResponseError::UnknownTopicOrPartition
        | ResponseError::NotLeaderOrFollower
        | ResponseError::NotEnoughReplicas
        | ResponseError::NotEnoughReplicasAfterAppend
        | ResponseError::RequestTimedOut
        | ResponseError::KafkaStorageError
        | ResponseError::NetworkException => MarkerResult::Retry,
        ResponseError::UnsupportedForMessageFormat | ResponseError::UnsupportedVersion => MarkerResult::Done,
        other => MarkerResult::Fenced(other),
    }
}

/// One round for `partitions`; returns each partition's result.
pub async fn send_round(
    shard: &Rc<Shard>,
    spec: MarkerSpec,
    partitions: &[(String, i32)],
) -> Vec<((String, i32), MarkerResult)> {
    let view = shard.view();
    let image = &view.image;
    let mut results = Vec::with_capacity(partitions.len());
    let mut local: Vec<(usize, MarkerPart)> = Vec::new();
    let mut local_keys: Vec<(String, i32)> = Vec::new();
    let mut remote: BTreeMap<i32, Vec<(String, i32)>> = BTreeMap::new();
    for (topic, index) in partitions {
        let key = (topic.clone(), *index);
        let Some(meta) = image.partition(topic, *index) else {
            // Kafka drops the partitions of a deleted topic from the transaction.
            tracing::info!("transaction marker for {topic}-{index} dropped: the partition no longer exists");
            results.push((key, MarkerResult::Done));
            continue;
        };
        if meta.leader < 0 {
            results.push((key, MarkerResult::Retry));
        } else if meta.leader == view.node_id {
            match view.owner(topic, *index) {
                Ok(owner) => {
                    local.push((
                        owner,
                        MarkerPart {
                            slot: local_keys.len(),
                            topic: topic.clone(),
                            partition: *index,
                            producer_id: spec.producer_id,
                            producer_epoch: spec.producer_epoch,
                            coordinator_epoch: spec.coordinator_epoch,
                            commit: spec.commit,
                        },
                    ));
                    local_keys.push(key);
                }
                Err(_) => results.push((key, MarkerResult::Retry)),
            }
        } else {
            remote.entry(meta.leader).or_default().push(key);
        }
    }
    if !local.is_empty() {
        let outcomes = shard
            .fan_out(
                local,
                |parts| ShardOp::TxnMarkers { parts },
                |reply| match reply {
                    ShardReply::TxnMarkers(outcomes) => Some(outcomes),
                    _ => None,
                },
            )
            .await;
        let mut answered: Vec<Option<MarkerResult>> = local_keys.iter().map(|_| None).collect();
        for MarkerOutcome { slot, error } in outcomes {
            answered[slot] = Some(match error {
                None => MarkerResult::Done,
                Some(e) => classify(e.code),
            });
        }
        for (key, result) in local_keys.into_iter().zip(answered) {
            results.push((key, result.unwrap_or(MarkerResult::Retry)));
        }
    }
    for (node, keys) in remote {
        results.extend(send_remote(shard, node, spec, keys).await);
    }
    results
}

/// WriteTxnMarkers v1 to `node` for `keys`; a node that cannot be reached
/// leaves them all for the next round.
async fn send_remote(
    shard: &Rc<Shard>,
    node: i32,
    spec: MarkerSpec,
    keys: Vec<(String, i32)>,
) -> Vec<((String, i32), MarkerResult)> {
    let retry_all = |keys: Vec<(String, i32)>| keys.into_iter().map(|k| (k, MarkerResult::Retry)).collect();
    let Some((host, port)) = shard.image().brokers.get(&node).map(|b| (b.host.clone(), b.port)) else {
        return retry_all(keys);
    };
    // Resolved per round: a host name's lookup blocks, but listeners are
    // addresses in every deployment shardlog documents.
    let Some(addr) = std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
        .ok()
        .and_then(|mut a| a.next())
    else {
        tracing::warn!("transaction markers: node {node}'s listener {host}:{port} does not resolve");
        return retry_all(keys);
    };
    let mut topics: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (topic, index) in &keys {
        topics.entry(topic.as_str()).or_default().push(*index);
    }
    let marker = WritableTxnMarker::default()
        .with_producer_id(ProducerId(spec.producer_id))
        .with_producer_epoch(spec.producer_epoch)
        .with_transaction_result(spec.commit)
        .with_coordinator_epoch(spec.coordinator_epoch)
        .with_topics(
            topics
                .into_iter()
                .map(|(name, indexes)| {
                    WritableTxnMarkerTopic::default()
                        .with_name(TopicName(str_bytes(name)))
                        .with_partition_indexes(indexes)
                })
                .collect(),
        );
    let request = WriteTxnMarkersRequest::default().with_markers(vec![marker]);
    let timeout_ms = shard.config.txn.state_log_write_timeout_ms;
    let response = match LeaderConnection::connect(addr, timeout_ms, MARKER_RESPONSE_MAX_BYTES).await {
        Ok(mut conn) => conn.call(&request, WRITE_TXN_MARKERS_VERSION, timeout_ms).await,
        Err(e) => Err(e),
    };
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("transaction markers: node {node} at {addr}: {e}");
            return retry_all(keys);
        }
    };
    let mut answered: BTreeMap<(String, i32), MarkerResult> = BTreeMap::new();
    for marker in response.markers {
        for topic in marker.topics {
            for p in topic.partitions {
                let result = match p.error_code {
                    0 => MarkerResult::Done,
                    code => classify(
                        ResponseError::try_from_code(code).unwrap_or(ResponseError::UnknownServerError),
                    ),
                };
                answered.insert((topic.name.to_string(), p.partition_index), result);
            }
        }
    }
    keys.into_iter()
        .map(|k| {
            let result = answered.remove(&k).unwrap_or(MarkerResult::Retry);
            (k, result)
        })
        .collect()
}
