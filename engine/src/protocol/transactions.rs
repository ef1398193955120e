//! The transactional APIs a producer and an admin client send to the
//! transaction coordinator: InitProducerId with a `transactional.id`,
//! AddPartitionsToTxn (v0-3, the client's), AddOffsetsToTxn, EndTxn,
//! DescribeTransactions and ListTransactions. Each id's request is checked
//! here (shape, metadata) and forwarded to the shard coordinating the id
//! (`ShardOp::Txn`); that shard's `txn::coordinator` decides.

use std::rc::Rc;

use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::list_transactions_response::TransactionState as ListedState;
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest, AddPartitionsToTxnResponse,
    DescribeTransactionsRequest, DescribeTransactionsResponse, EndTxnRequest, EndTxnResponse,
    ListTransactionsRequest, ListTransactionsResponse, ProducerId, TopicName, TransactionalId,
};
use kafka_protocol::ResponseError;

use crate::group;
use crate::shard::{ControlOp, Shard, ShardOp, ShardReply, CONTROLLER_SHARD};
use crate::txn::coordinator::{self, DescribedTxn, TxnOp, TxnReply};
use crate::txn::records::TxnStatus;
use crate::wire::str_bytes;

/// InitProducerId from v4, AddPartitionsToTxn/AddOffsetsToTxn/EndTxn from
/// v2 know PRODUCER_FENCED; older clients get INVALID_PRODUCER_EPOCH.
const INIT_PRODUCER_FENCED_VERSION: i16 = 4;
const PRODUCER_FENCED_VERSION: i16 = 2;

fn fenced_for(code: ResponseError, version: i16, from_version: i16) -> ResponseError {
    if code == ResponseError::ProducerFenced && version < from_version {
        ResponseError::InvalidProducerEpoch
    } else {
        code
    }
}

/// Runs `op` on the shard coordinating `transactional_id`: NOT_COORDINATOR
/// when this node does not lead its `__transaction_state` partition.
async fn call_txn(shard: &Rc<Shard>, transactional_id: &str, op: TxnOp) -> Result<TxnReply, ResponseError> {
    let Some(target) = coordinator::coordinator_shard(&shard.view(), transactional_id) else {
        return Err(ResponseError::NotCoordinator);
    };
    match shard.call(target, ShardOp::Txn(Box::new(op))).await {
        ShardReply::Txn(reply) => Ok(reply),
        _ => Err(ResponseError::CoordinatorNotAvailable),
    }
}

fn done(reply: Result<TxnReply, ResponseError>) -> Option<ResponseError> {
    match reply {
        Ok(TxnReply::Done(Ok(()))) => None,
        Ok(TxnReply::Done(Err(e))) | Err(e) => Some(e),
        Ok(_) => Some(ResponseError::UnknownServerError),
    }
}

fn code(e: Option<ResponseError>) -> i16 {
    e.map_or(0, |e| e.code())
}

/// InitProducerId for a transactional producer (§3.2).
pub async fn init_transactional(
    shard: &Rc<Shard>,
    transactional_id: &str,
    timeout_ms: i32,
    expected: (i64, i16),
    version: i16,
) -> Result<(i64, i16), ResponseError> {
    if transactional_id.is_empty() {
        return Err(ResponseError::InvalidRequest);
    }
    if timeout_ms <= 0 || timeout_ms > shard.config.txn.max_timeout_ms {
        tracing::warn!(
            transactional_id,
            "transaction.timeout.ms {timeout_ms} refused: transaction.max.timeout.ms is {}",
            shard.config.txn.max_timeout_ms
        );
        return Err(ResponseError::InvalidTransactionTimeout);
    }
    let expected = match expected {
        (-1, -1) => None,
        (pid, epoch) if pid < 0 || epoch < 0 => return Err(ResponseError::InvalidRequest),
        given => Some(given),
    };
    let op = TxnOp::InitProducerId {
        transactional_id: transactional_id.to_string(),
        timeout_ms,
        expected,
    };
    match call_txn(shard, transactional_id, op).await {
        Ok(TxnReply::Init(Ok(ids))) => Ok(ids),
        Ok(TxnReply::Init(Err(e))) | Err(e) => Err(fenced_for(e, version, INIT_PRODUCER_FENCED_VERSION)),
        Ok(_) => Err(ResponseError::UnknownServerError),
    }
}

/// Asks the controller, in the background, for an internal topic that does
/// not exist yet (`ControlOp::CreateOffsetsTopic`,
/// `CreateTransactionStateTopic`): Kafka creates them at their first use,
/// and the client retries on COORDINATOR_NOT_AVAILABLE meanwhile.
pub fn request_internal_topic(shard: &Rc<Shard>, create: ControlOp) {
    let shard = shard.clone();
    glommio::spawn_local(async move {
        shard.call(CONTROLLER_SHARD, ShardOp::Control(create)).await;
    })
    .detach();
}

pub async fn add_partitions(
    shard: &Rc<Shard>,
    req: AddPartitionsToTxnRequest,
    version: i16,
) -> AddPartitionsToTxnResponse {
    let image = shard.image();
    // Kafka: any partition unknown to metadata fails alone, and every other
    // partition of the request gets OPERATION_NOT_ATTEMPTED.
    let mut unknown = Vec::new();
    let mut partitions = Vec::new();
    for topic in &req.v3_and_below_topics {
        for p in &topic.partitions {
            let key = (topic.name.to_string(), *p);
            if image.partition(&key.0, key.1).is_none() {
                unknown.push(key.clone());
            }
            partitions.push(key);
        }
    }
    let transactional_id = req.v3_and_below_transactional_id.to_string();
    let result_for = |error: &dyn Fn(&(String, i32)) -> Option<ResponseError>| {
        req.v3_and_below_topics
            .iter()
            .map(|t| {
                AddPartitionsToTxnTopicResult::default()
                    .with_name(t.name.clone())
                    .with_results_by_partition(
                        t.partitions
                            .iter()
                            .map(|p| {
                                AddPartitionsToTxnPartitionResult::default()
                                    .with_partition_index(*p)
                                    .with_partition_error_code(code(error(&(t.name.to_string(), *p))))
                            })
                            .collect(),
                    )
            })
            .collect::<Vec<_>>()
    };
    let results = if !unknown.is_empty() {
        result_for(&|k| {
            Some(if unknown.contains(k) {
                ResponseError::UnknownTopicOrPartition
            } else {
                ResponseError::OperationNotAttempted
            })
        })
    } else if transactional_id.is_empty() {
        result_for(&|_| Some(ResponseError::InvalidRequest))
    } else {
        let op = TxnOp::AddPartitions {
            transactional_id: transactional_id.clone(),
            producer_id: req.v3_and_below_producer_id.0,
            producer_epoch: req.v3_and_below_producer_epoch,
            partitions,
        };
        let error = done(call_txn(shard, &transactional_id, op).await)
            .map(|e| fenced_for(e, version, PRODUCER_FENCED_VERSION));
        result_for(&|_| error)
    };
    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(results)
}

pub async fn add_offsets(
    shard: &Rc<Shard>,
    req: AddOffsetsToTxnRequest,
    version: i16,
) -> AddOffsetsToTxnResponse {
    let transactional_id = req.transactional_id.to_string();
    let error = if transactional_id.is_empty() {
        Some(ResponseError::InvalidRequest)
    } else {
        match group::offsets_partition_of(&shard.image(), req.group_id.as_str()) {
            None => {
                // No `__consumer_offsets` yet: ask for it; the client retries.
                request_internal_topic(shard, ControlOp::CreateOffsetsTopic);
                Some(ResponseError::CoordinatorNotAvailable)
            }
            Some(partition) => {
                let op = TxnOp::AddPartitions {
                    transactional_id: transactional_id.clone(),
                    producer_id: req.producer_id.0,
                    producer_epoch: req.producer_epoch,
                    partitions: vec![(group::OFFSETS_TOPIC.to_string(), partition)],
                };
                done(call_txn(shard, &transactional_id, op).await)
            }
        }
    };
    let error = error.map(|e| fenced_for(e, version, PRODUCER_FENCED_VERSION));
    AddOffsetsToTxnResponse::default().with_error_code(code(error))
}

pub async fn end_txn(shard: &Rc<Shard>, req: EndTxnRequest, version: i16) -> EndTxnResponse {
    let transactional_id = req.transactional_id.to_string();
    let error = if transactional_id.is_empty() {
        Some(ResponseError::InvalidRequest)
    } else {
        let op = TxnOp::EndTxn {
            transactional_id: transactional_id.clone(),
            producer_id: req.producer_id.0,
            producer_epoch: req.producer_epoch,
            commit: req.committed,
        };
        done(call_txn(shard, &transactional_id, op).await)
    };
    let error = error.map(|e| fenced_for(e, version, PRODUCER_FENCED_VERSION));
    EndTxnResponse::default()
        .with_error_code(code(error))
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1)
}

fn topics_of(partitions: &[(String, i32)]) -> Vec<TopicData> {
    let mut out: Vec<TopicData> = Vec::new();
    for (topic, index) in partitions {
        match out.last_mut() {
            Some(t) if t.topic.as_str() == topic => t.partitions.push(*index),
            _ => out.push(
                TopicData::default()
                    .with_topic(TopicName(str_bytes(topic)))
                    .with_partitions(vec![*index]),
            ),
        }
    }
    out
}

fn described_state(d: DescribedTxn) -> TransactionState {
    let state =
        TransactionState::default().with_transactional_id(TransactionalId(str_bytes(&d.transactional_id)));
    match d.error {
        Some(e) => state
            .with_error_code(e.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
        None => state
            .with_transaction_state(str_bytes(d.state))
            .with_transaction_timeout_ms(d.timeout_ms)
            .with_transaction_start_time_ms(d.start_ms)
            .with_producer_id(ProducerId(d.producer_id))
            .with_producer_epoch(d.producer_epoch)
            .with_topics(topics_of(&d.partitions)),
    }
}

pub async fn describe(shard: &Rc<Shard>, req: DescribeTransactionsRequest) -> DescribeTransactionsResponse {
    let mut states = Vec::with_capacity(req.transactional_ids.len());
    for id in req.transactional_ids {
        let id = id.to_string();
        let op = TxnOp::Describe {
            transactional_ids: vec![id.clone()],
        };
        let described = match call_txn(shard, &id, op).await {
            Ok(TxnReply::Described(mut d)) if d.len() == 1 => d.remove(0),
            Ok(_) => failed(&id, ResponseError::UnknownServerError),
            Err(e) => failed(&id, e),
        };
        states.push(described_state(described));
    }
    DescribeTransactionsResponse::default().with_transaction_states(states)
}

fn failed(transactional_id: &str, error: ResponseError) -> DescribedTxn {
    DescribedTxn::unknown(transactional_id, Some(error))
}

/// ListTransactions covers this node's coordinators (the admin client asks
/// every broker): every shard, filtered by state, producer id and, from
/// v1, how long the transaction has been open.
pub async fn list(shard: &Rc<Shard>, req: ListTransactionsRequest) -> ListTransactionsResponse {
    let known: Vec<&str> = TxnStatus::ALL.iter().map(|s| s.name()).collect();
    let unknown_filters: Vec<_> = req
        .state_filters
        .iter()
        .filter(|f| !known.contains(&f.as_str()))
        .cloned()
        .collect();
    let replies = futures::future::join_all(
        (0..shard.nr_shards).map(|target| shard.call(target, ShardOp::Txn(Box::new(TxnOp::List)))),
    )
    .await;
    let now = crate::clock::now_ms();
    let mut loading = false;
    let mut states = Vec::new();
    for reply in replies {
        let ShardReply::Txn(TxnReply::Listed(listed, shard_loading)) = reply else {
            continue;
        };
        loading |= shard_loading;
        for d in listed {
            let state_ok =
                req.state_filters.is_empty() || req.state_filters.iter().any(|f| f.as_str() == d.state);
            let pid_ok = req.producer_id_filters.is_empty()
                || req.producer_id_filters.iter().any(|p| p.0 == d.producer_id);
            let duration_ok =
                req.duration_filter < 0 || (d.start_ms >= 0 && now - d.start_ms > req.duration_filter);
            if state_ok && pid_ok && duration_ok {
                states.push(
                    ListedState::default()
                        .with_transactional_id(TransactionalId(str_bytes(&d.transactional_id)))
                        .with_producer_id(ProducerId(d.producer_id))
                        .with_transaction_state(str_bytes(d.state)),
                );
            }
        }
    }
    let error = loading.then_some(ResponseError::CoordinatorLoadInProgress);
    ListTransactionsResponse::default()
        .with_error_code(code(error))
        .with_unknown_state_filters(unknown_filters)
        .with_transaction_states(states)
}
