//! AlterPartitionReassignments and ListPartitionReassignments (KIP-455):
//! moving replicas between brokers while the partition stays available.
//! The change is planned by the active controller (`with_reassignment`);
//! the listing reads this node's image.

use std::rc::Rc;

use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};

use super::partition_lists::{by_topic, control, flatten};
use crate::shard::{ControlOp, Shard};
use crate::wire::str_bytes;

fn ids(brokers: &[i32]) -> Vec<BrokerId> {
    brokers.iter().map(|b| BrokerId(*b)).collect()
}

pub async fn alter(
    shard: &Rc<Shard>,
    req: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    let changes: Vec<(String, i32, Option<Vec<i32>>)> = req
        .topics
        .into_iter()
        .flat_map(|t| {
            let name = t.name.to_string();
            t.partitions.into_iter().map(move |p| {
                (
                    name.clone(),
                    p.partition_index,
                    p.replicas.map(|r| r.into_iter().map(|b| b.0).collect()),
                )
            })
        })
        .collect();
    let asked: Vec<(String, i32)> = changes.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
    let results = control(shard, ControlOp::Reassign { changes }, asked).await;
    let answers = results.into_iter().map(|(topic, partition, refusal)| {
        let mut r = ReassignablePartitionResponse::default().with_partition_index(partition);
        if let Some((code, message)) = refusal {
            r.error_code = code.code();
            r.error_message = Some(str_bytes(&message));
        }
        (topic, r)
    });
    AlterPartitionReassignmentsResponse::default().with_responses(
        by_topic(answers)
            .into_iter()
            .map(|(name, partitions)| {
                ReassignableTopicResponse::default()
                    .with_name(TopicName(str_bytes(&name)))
                    .with_partitions(partitions)
            })
            .collect(),
    )
}

pub fn list(shard: &Rc<Shard>, req: ListPartitionReassignmentsRequest) -> ListPartitionReassignmentsResponse {
    let image = shard.image();
    let wanted = req.topics.map(|topics| {
        flatten(
            topics
                .into_iter()
                .map(|t| (t.name.to_string(), t.partition_indexes)),
        )
    });
    let mut topics = Vec::new();
    for t in image.topics.values() {
        let partitions: Vec<OngoingPartitionReassignment> = t
            .partitions
            .iter()
            .enumerate()
            .filter(|(i, p)| {
                let key = (t.name.clone(), *i as i32);
                (!p.adding_replicas.is_empty() || !p.removing_replicas.is_empty())
                    && wanted.as_ref().is_none_or(|w| w.contains(&key))
            })
            .map(|(i, p)| {
                OngoingPartitionReassignment::default()
                    .with_partition_index(i as i32)
                    .with_replicas(ids(&p.replicas))
                    .with_adding_replicas(ids(&p.adding_replicas))
                    .with_removing_replicas(ids(&p.removing_replicas))
            })
            .collect();
        if !partitions.is_empty() {
            topics.push(
                OngoingTopicReassignment::default()
                    .with_name(TopicName(str_bytes(&t.name)))
                    .with_partitions(partitions),
            );
        }
    }
    ListPartitionReassignmentsResponse::default().with_topics(topics)
}
