//! This shard's partitions, by topic name and index.
//!
//! Two levels (topic, then index) rather than one map keyed by
//! `(String, i32)`: every Produce, Fetch and ListOffsets part looks a
//! partition up, and a tuple key would need an owned `String` per lookup;
//! here a `&str` from the request finds the topic without allocating.

use std::collections::HashMap;
use std::rc::Rc;

use crate::partition::Partition;

#[derive(Default)]
pub(crate) struct PartitionMap {
    topics: HashMap<String, HashMap<i32, Rc<Partition>>>,
}

impl PartitionMap {
    pub(crate) fn get(&self, topic: &str, index: i32) -> Option<&Rc<Partition>> {
        self.topics.get(topic)?.get(&index)
    }

    /// Adds or replaces a partition; returns the one it replaced.
    pub(crate) fn insert(
        &mut self,
        topic: &str,
        index: i32,
        partition: Rc<Partition>,
    ) -> Option<Rc<Partition>> {
        match self.topics.get_mut(topic) {
            Some(t) => t.insert(index, partition),
            None => {
                self.topics
                    .insert(topic.to_string(), HashMap::from([(index, partition)]));
                None
            }
        }
    }

    pub(crate) fn remove(&mut self, topic: &str, index: i32) -> Option<Rc<Partition>> {
        let by_index = self.topics.get_mut(topic)?;
        let removed = by_index.remove(&index)?;
        if by_index.is_empty() {
            self.topics.remove(topic);
        }
        Some(removed)
    }

    /// Every partition with its topic name and index, in no set order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, i32, &Rc<Partition>)> {
        self.topics
            .iter()
            .flat_map(|(topic, by_index)| by_index.iter().map(move |(index, p)| (topic.as_str(), *index, p)))
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &Rc<Partition>> {
        self.topics.values().flat_map(|by_index| by_index.values())
    }
}
