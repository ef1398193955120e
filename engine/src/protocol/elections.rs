//! ElectLeaders (KIP-460): preferred or unclean leader elections, asked of
//! the active controller through the control plane like any admin change.

use std::rc::Rc;

use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::{ElectLeadersRequest, ElectLeadersResponse, TopicName};

use super::partition_lists::{by_topic, control, flatten};
use crate::shard::{ControlOp, Shard};
use crate::wire::str_bytes;

/// `election_type` 1 (v1+): unclean; 0: preferred.
const UNCLEAN: i8 = 1;

pub async fn elect_leaders(shard: &Rc<Shard>, req: ElectLeadersRequest) -> ElectLeadersResponse {
    let partitions = req
        .topic_partitions
        .map(|topics| flatten(topics.into_iter().map(|t| (t.topic.to_string(), t.partitions))));
    let asked = partitions.clone().unwrap_or_default();
    let op = ControlOp::ElectLeaders {
        unclean: req.election_type == UNCLEAN,
        partitions,
    };
    let results = control(shard, op, asked).await;
    let answers = results.into_iter().map(|(topic, partition, refusal)| {
        let mut r = PartitionResult::default().with_partition_id(partition);
        if let Some((code, message)) = refusal {
            r.error_code = code.code();
            r.error_message = Some(str_bytes(&message));
        }
        (topic, r)
    });
    ElectLeadersResponse::default().with_replica_election_results(
        by_topic(answers)
            .into_iter()
            .map(|(topic, partition_result)| {
                ReplicaElectionResult::default()
                    .with_topic(TopicName(str_bytes(&topic)))
                    .with_partition_result(partition_result)
            })
            .collect(),
    )
}
