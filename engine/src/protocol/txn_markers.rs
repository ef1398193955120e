//! WriteTxnMarkers: the transaction coordinator's request to a partition
//! leader to end a producer's transaction with a commit or abort marker on
//! each listed partition (`Partition::write_txn_marker`), fanned out once
//! per owner shard. Answered per partition, as Kafka does.

use std::rc::Rc;

use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{WriteTxnMarkersRequest, WriteTxnMarkersResponse};
use kafka_protocol::ResponseError;

use crate::shard::{MarkerOutcome, MarkerPart, Shard, ShardOp, ShardReply};

pub async fn handle(shard: &Rc<Shard>, req: WriteTxnMarkersRequest) -> WriteTxnMarkersResponse {
    let view = shard.view();
    let mut markers = Vec::with_capacity(req.markers.len());
    // (marker, topic, partition result) per slot, in request order.
    let mut slots: Vec<(usize, usize, WritableTxnMarkerPartitionResult)> = Vec::new();
    let mut work = Vec::new();
    for (marker_index, marker) in req.markers.into_iter().enumerate() {
        let mut topics = Vec::with_capacity(marker.topics.len());
        for (topic_index, topic) in marker.topics.into_iter().enumerate() {
            let name = topic.name.to_string();
            for partition in topic.partition_indexes {
                let mut result = WritableTxnMarkerPartitionResult::default().with_partition_index(partition);
                match view.owner(&name, partition) {
                    Err(code) => result.error_code = code.code(),
                    Ok(owner) => work.push((
                        owner,
                        MarkerPart {
                            slot: slots.len(),
                            topic: name.clone(),
                            partition,
                            producer_id: marker.producer_id.0,
                            producer_epoch: marker.producer_epoch,
                            coordinator_epoch: marker.coordinator_epoch,
                            commit: marker.transaction_result,
                        },
                    )),
                }
                slots.push((marker_index, topic_index, result));
            }
            topics.push(WritableTxnMarkerTopicResult::default().with_name(topic.name));
        }
        markers.push(
            WritableTxnMarkerResult::default()
                .with_producer_id(marker.producer_id)
                .with_topics(topics),
        );
    }
    let outcomes = shard
        .fan_out(
            work,
            |parts| ShardOp::TxnMarkers { parts },
            |reply| match reply {
                ShardReply::TxnMarkers(outcomes) => Some(outcomes),
                _ => None,
            },
        )
        .await;
    let mut answered = vec![false; slots.len()];
    for MarkerOutcome { slot, error } in outcomes {
        answered[slot] = true;
        if let Some(e) = error {
            slots[slot].2.error_code = e.code.code();
        }
    }
    for (slot, (marker_index, topic_index, mut result)) in slots.into_iter().enumerate() {
        if !answered[slot] && result.error_code == 0 {
            // The owner shard went away mid-request.
            result.error_code = ResponseError::NotLeaderOrFollower.code();
        }
        markers[marker_index].topics[topic_index].partitions.push(result);
    }
    WriteTxnMarkersResponse::default().with_markers(markers)
}
