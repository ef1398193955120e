//! Shared by the per-partition admin requests (ElectLeaders,
//! ListPartitionReassignments, DescribeLogDirs, AlterPartitionReassignments):
//! their topic -> partitions lists flattened, the control op that answers
//! per partition, and per-partition answers
//! grouped back by topic in name order.

use std::collections::BTreeMap;
use std::rc::Rc;

use kafka_protocol::ResponseError;

use crate::controller::Refusal;
use crate::shard::{ControlOp, ControlReply, Shard, ShardOp, ShardReply, CONTROLLER_SHARD};

/// `(topic, [partition])` entries as `(topic, partition)` pairs.
pub fn flatten(topics: impl IntoIterator<Item = (String, Vec<i32>)>) -> Vec<(String, i32)> {
    topics
        .into_iter()
        .flat_map(|(name, partitions)| partitions.into_iter().map(move |p| (name.clone(), p)))
        .collect()
}

/// Answers grouped by topic, each topic's in the order given.
pub fn by_topic<T>(answers: impl IntoIterator<Item = (String, T)>) -> BTreeMap<String, Vec<T>> {
    let mut out: BTreeMap<String, Vec<T>> = BTreeMap::new();
    for (topic, answer) in answers {
        out.entry(topic).or_default().push(answer);
    }
    out
}

/// Runs a per-partition control op on the active controller; when none
/// answers, every partition `asked` gets NOT_CONTROLLER.
pub async fn control(
    shard: &Rc<Shard>,
    op: ControlOp,
    asked: Vec<(String, i32)>,
) -> Vec<(String, i32, Option<Refusal>)> {
    match shard.call(CONTROLLER_SHARD, ShardOp::Control(op)).await {
        ShardReply::Control(ControlReply::Partitions(results)) => results,
        _ => asked
            .into_iter()
            .map(|(t, p)| {
                let refusal = (
                    ResponseError::NotController,
                    "no active controller answered".to_string(),
                );
                (t, p, Some(refusal))
            })
            .collect(),
    }
}
