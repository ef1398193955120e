//! Shared by the per-partition admin requests (ElectLeaders,
//! ListPartitionReassignments, DescribeLogDirs, AlterPartitionReassignments):
//! their topic -> partitions lists flattened, and per-partition answers
//! grouped back by topic in name order.

use std::collections::BTreeMap;

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
