//! Node-local placement: which shard (core) of this node holds each replica
//! the cluster image gives the node. The image says which node; this says
//! which core, and no other node needs to know.
//!
//! Computed on the controller shard for every new image and shipped with it
//! to all shards, so they agree. A replica keeps its shard while it stays on
//! the node; new ones go to the shard holding the fewest. Nothing is
//! persisted: a partition's files do not depend on its shard, so a restart
//! may place it anew (the same way, for the same image).

use std::collections::HashMap;

use uuid::Uuid;

use super::MetadataImage;

#[derive(Clone, Debug, Default)]
pub struct Placement {
    shard_of: HashMap<(Uuid, i32), u32>,
}

impl Placement {
    /// Placement for `image` on node `node_id` with `nr_shards` shards,
    /// keeping what `previous` placed.
    pub fn next(previous: &Placement, image: &MetadataImage, node_id: i32, nr_shards: usize) -> Placement {
        let mut shard_of = HashMap::new();
        let mut load = vec![0usize; nr_shards.max(1)];
        let mut new = Vec::new();
        for t in image.topics.values() {
            for (i, p) in t.partitions.iter().enumerate() {
                if !p.replicas.contains(&node_id) {
                    continue;
                }
                let key = (t.id, i as i32);
                match previous.shard_of.get(&key) {
                    Some(&s) if (s as usize) < load.len() => {
                        load[s as usize] += 1;
                        shard_of.insert(key, s);
                    }
                    _ => new.push(key),
                }
            }
        }
        for key in new {
            let (shard, _) = load
                .iter()
                .enumerate()
                .min_by_key(|(i, l)| (**l, *i))
                .expect("at least one shard");
            load[shard] += 1;
            shard_of.insert(key, shard as u32);
        }
        Placement { shard_of }
    }

    /// The shard holding this node's replica of `topic_id`/`partition`.
    pub fn shard(&self, topic_id: &Uuid, partition: i32) -> Option<usize> {
        self.shard_of.get(&(*topic_id, partition)).map(|s| *s as usize)
    }

    pub fn is_empty(&self) -> bool {
        self.shard_of.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{BrokerMeta, TopicMeta};

    #[test]
    fn replicas_balance_over_shards_and_keep_their_shard() {
        let mut image = MetadataImage::new("c".into()).with_broker(BrokerMeta {
            id: 1,
            incarnation: Uuid::new_v4(),
            host: "h".into(),
            port: 1,
            rack: None,
            partitions_max: 100,
            fenced: false,
        });
        let topic = |name: &str, n, image: &MetadataImage| TopicMeta {
            name: name.into(),
            id: Uuid::new_v4(),
            partitions: image.place(n, 1).unwrap(),
            configs: Default::default(),
        };
        image = image.with_topic(topic("a", 3, &image));
        let first = Placement::next(&Placement::default(), &image, 1, 2);
        let a = image.topic("a").unwrap().id;
        let shards: Vec<_> = (0..3).map(|i| first.shard(&a, i).unwrap()).collect();
        assert_eq!(shards, vec![0, 1, 0]);
        image = image.with_topic(topic("b", 1, &image));
        let second = Placement::next(&first, &image, 1, 2);
        assert_eq!(second.shard(&image.topic("b").unwrap().id, 0), Some(1));
        assert_eq!(
            (0..3).map(|i| second.shard(&a, i).unwrap()).collect::<Vec<_>>(),
            shards
        );
        assert!(
            Placement::next(&first, &image, 2, 2).is_empty(),
            "node 2 holds nothing"
        );
    }
}
