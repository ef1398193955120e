//! The metadata log's records: Kafka's metadata records in meaning
//! (RegisterBrokerRecord, Fence/UnfenceBrokerRecord, TopicRecord,
//! PartitionRecord, PartitionChangeRecord, ConfigRecord, RemoveTopicRecord,
//! ProducerIdsRecord), and the two functions that tie them to the image:
//! `changes` (what the controller writes for a planned change) and
//! `MetadataImage::replay` (what every node does with what was written).
//!
//! One raft entry holds every record of one change, so a change is applied
//! whole or not at all (a CreateTopics of ten topics is one entry).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{BrokerMeta, MetadataImage, PartitionMeta, TopicMeta};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type")]
pub enum MetadataRecord {
    RegisterBroker(BrokerMeta),
    FenceBroker {
        id: i32,
    },
    UnfenceBroker {
        id: i32,
    },
    Topic {
        name: String,
        id: Uuid,
    },
    /// A new partition, or one whose replicas changed.
    Partition {
        topic_id: Uuid,
        partition: i32,
        replicas: Vec<i32>,
        #[serde(default)]
        isr: Vec<i32>,
        leader: i32,
        leader_epoch: i32,
        #[serde(default)]
        partition_epoch: i32,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        adding_replicas: Vec<i32>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        removing_replicas: Vec<i32>,
    },
    /// A new leader or ISR (AlterPartition, fencing, elections).
    PartitionChange {
        topic_id: Uuid,
        partition: i32,
        leader: i32,
        leader_epoch: i32,
        #[serde(default)]
        isr: Vec<i32>,
        #[serde(default)]
        partition_epoch: i32,
    },
    /// A topic's whole set of config overrides.
    Config {
        topic_id: Uuid,
        configs: BTreeMap<String, String>,
    },
    RemoveTopic {
        id: Uuid,
    },
    /// Producer ids below `next_block_start` are handed out.
    ProducerIds {
        next_block_start: i64,
    },
}

/// The records that turn `from` into `to` (both planned by the controller).
pub fn changes(from: &MetadataImage, to: &MetadataImage) -> Vec<MetadataRecord> {
    let mut out = Vec::new();
    for (id, b) in &to.brokers {
        match from.brokers.get(id) {
            Some(old) if old == b => {}
            Some(old)
                if BrokerMeta {
                    fenced: b.fenced,
                    ..old.clone()
                } == *b =>
            {
                out.push(if b.fenced {
                    MetadataRecord::FenceBroker { id: *id }
                } else {
                    MetadataRecord::UnfenceBroker { id: *id }
                })
            }
            _ => out.push(MetadataRecord::RegisterBroker(b.clone())),
        }
    }
    // Removals first: a topic deleted and re-created under its name gets a new id.
    for t in from.topics.values() {
        if to.topic(&t.name).map(|n| n.id) != Some(t.id) {
            out.push(MetadataRecord::RemoveTopic { id: t.id });
        }
    }
    for t in to.topics.values() {
        let old = from.topic(&t.name).filter(|o| o.id == t.id);
        if old.is_none() {
            out.push(MetadataRecord::Topic {
                name: t.name.clone(),
                id: t.id,
            });
        }
        if old.map(|o| &o.configs) != Some(&t.configs) && !(old.is_none() && t.configs.is_empty()) {
            out.push(MetadataRecord::Config {
                topic_id: t.id,
                configs: t.configs.clone(),
            });
        }
        for (i, p) in t.partitions.iter().enumerate() {
            let before = old.and_then(|o| o.partitions.get(i));
            match before {
                Some(b) if b == p => {}
                Some(b)
                    if b.replicas == p.replicas
                        && b.adding_replicas == p.adding_replicas
                        && b.removing_replicas == p.removing_replicas =>
                {
                    out.push(MetadataRecord::PartitionChange {
                        topic_id: t.id,
                        partition: i as i32,
                        leader: p.leader,
                        leader_epoch: p.leader_epoch,
                        isr: p.isr.clone(),
                        partition_epoch: p.partition_epoch,
                    })
                }
                _ => out.push(MetadataRecord::Partition {
                    topic_id: t.id,
                    partition: i as i32,
                    replicas: p.replicas.clone(),
                    isr: p.isr.clone(),
                    leader: p.leader,
                    leader_epoch: p.leader_epoch,
                    partition_epoch: p.partition_epoch,
                    adding_replicas: p.adding_replicas.clone(),
                    removing_replicas: p.removing_replicas.clone(),
                }),
            }
        }
    }
    if to.producer_ids_reserved != from.producer_ids_reserved {
        out.push(MetadataRecord::ProducerIds {
            next_block_start: to.producer_ids_reserved,
        });
    }
    out
}

/// Why a record could not be replayed: the log is not one this image came from.
#[derive(Debug, thiserror::Error)]
#[error("metadata record does not apply: {0}")]
pub struct ReplayError(String);

impl MetadataImage {
    /// The image after one entry's records; `offset` is the entry's index.
    pub fn replay(&self, records: &[MetadataRecord], offset: u64) -> Result<MetadataImage, ReplayError> {
        assert!(offset > self.offset, "metadata offsets increase");
        let mut next = self.clone();
        next.epoch += 1;
        next.offset = offset;
        for r in records {
            next.replay_one(r)?;
        }
        Ok(next)
    }

    fn topic_mut(&mut self, id: &Uuid) -> Result<&mut TopicMeta, ReplayError> {
        let name = self
            .topic_by_id(id)
            .map(|t| t.name.clone())
            .ok_or_else(|| ReplayError(format!("no topic with id {id}")))?;
        Ok(self.topics.get_mut(&name).expect("indexed topic exists"))
    }

    fn replay_one(&mut self, record: &MetadataRecord) -> Result<(), ReplayError> {
        match record {
            MetadataRecord::RegisterBroker(b) => {
                self.brokers.insert(b.id, b.clone());
            }
            MetadataRecord::FenceBroker { id } | MetadataRecord::UnfenceBroker { id } => {
                let b = self
                    .brokers
                    .get_mut(id)
                    .ok_or_else(|| ReplayError(format!("no broker {id}")))?;
                b.fenced = matches!(record, MetadataRecord::FenceBroker { .. });
            }
            MetadataRecord::Topic { name, id } => {
                self.topics.insert(
                    name.clone(),
                    TopicMeta {
                        name: name.clone(),
                        id: *id,
                        partitions: Vec::new(),
                        configs: BTreeMap::new(),
                    },
                );
                self.reindex();
            }
            MetadataRecord::Partition {
                topic_id,
                partition,
                replicas,
                isr,
                leader,
                leader_epoch,
                partition_epoch,
                adding_replicas,
                removing_replicas,
            } => {
                let t = self.topic_mut(topic_id)?;
                let meta = PartitionMeta {
                    replicas: replicas.clone(),
                    isr: isr.clone(),
                    leader: *leader,
                    leader_epoch: *leader_epoch,
                    partition_epoch: *partition_epoch,
                    adding_replicas: adding_replicas.clone(),
                    removing_replicas: removing_replicas.clone(),
                };
                let i = *partition as usize;
                if i == t.partitions.len() {
                    t.partitions.push(meta);
                } else if i < t.partitions.len() {
                    t.partitions[i] = meta;
                } else {
                    return Err(ReplayError(format!("partition {i} of {} skips ahead", t.name)));
                }
            }
            MetadataRecord::PartitionChange {
                topic_id,
                partition,
                leader,
                leader_epoch,
                isr,
                partition_epoch,
            } => {
                let t = self.topic_mut(topic_id)?;
                let name = t.name.clone();
                let p = t
                    .partitions
                    .get_mut(*partition as usize)
                    .ok_or_else(|| ReplayError(format!("no partition {partition} of {name}")))?;
                assert!(*leader_epoch >= p.leader_epoch, "leader epochs never go back");
                assert!(
                    *partition_epoch >= p.partition_epoch,
                    "partition epochs never go back"
                );
                p.leader = *leader;
                p.leader_epoch = *leader_epoch;
                p.isr = isr.clone();
                p.partition_epoch = *partition_epoch;
            }
            MetadataRecord::Config { topic_id, configs } => {
                self.topic_mut(topic_id)?.configs = configs.clone();
            }
            MetadataRecord::RemoveTopic { id } => {
                let name = self
                    .topic_by_id(id)
                    .map(|t| t.name.clone())
                    .ok_or_else(|| ReplayError(format!("no topic with id {id}")))?;
                self.topics.remove(&name);
                self.reindex();
            }
            MetadataRecord::ProducerIds { next_block_start } => {
                assert!(
                    *next_block_start >= self.producer_ids_reserved,
                    "producer id blocks never go back"
                );
                self.producer_ids_reserved = *next_block_start;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{create_partitions, create_topics, delete_topics, NewTopic};

    fn broker(id: i32) -> BrokerMeta {
        BrokerMeta {
            id,
            incarnation: Uuid::new_v4(),
            host: "127.0.0.1".into(),
            port: 9090 + id as u16,
            rack: None,
            partitions_max: 1000,
            fenced: false,
        }
    }

    fn same(a: &MetadataImage, b: &MetadataImage) {
        assert_eq!(a.brokers, b.brokers);
        assert_eq!(a.topics, b.topics);
        assert_eq!(a.producer_ids_reserved, b.producer_ids_reserved);
        for t in a.topics.values() {
            assert_eq!(b.topic_by_id(&t.id).unwrap().name, t.name);
        }
    }

    /// Replaying what `changes` wrote gives exactly the planned image, for
    /// every kind of change the controller plans.
    #[test]
    fn replayed_changes_rebuild_the_planned_image() {
        let config = crate::config::BrokerConfig::default();
        let topic = |name: &str, n| NewTopic {
            name: name.into(),
            num_partitions: n,
            replication_factor: -1,
            assignments: Vec::new(),
            configs: vec![("retention.ms".into(), Some("60000".into()))],
        };
        let mut image = MetadataImage::new("c".into());
        let mut offset = 0;
        let mut step = |from: &MetadataImage, to: MetadataImage| {
            offset += 1;
            let replayed = from.replay(&changes(from, &to), offset).unwrap();
            same(&replayed, &to);
            replayed
        };
        for id in 1..=3 {
            image = step(&image, image.with_broker(broker(id)));
        }
        image = step(&image, image.with_offsets_topic(5, 1).unwrap());
        let (next, _) = create_topics(&image, vec![topic("a", 12), topic("b", 2)], &config);
        image = step(&image, next);
        let leaders: Vec<i32> = image
            .topic("a")
            .unwrap()
            .partitions
            .iter()
            .map(|p| p.leader)
            .collect();
        for id in 1..=3 {
            assert_eq!(leaders.iter().filter(|l| **l == id).count(), 4, "{leaders:?}");
        }
        let (next, _) = create_partitions(&image, vec![("b".into(), 5)]);
        image = step(&image, next);
        image = step(&image, image.with_broker_fenced(2, true, false));
        assert!(image
            .topic("a")
            .unwrap()
            .partitions
            .iter()
            .any(|p| p.leader == -1));
        image = step(&image, image.with_broker_fenced(2, false, false));
        assert!(image
            .topic("a")
            .unwrap()
            .partitions
            .iter()
            .all(|p| p.leader != -1));
        assert!(image
            .topic("a")
            .unwrap()
            .partitions
            .iter()
            .any(|p| p.leader_epoch == 2));
        let (next, _) = delete_topics(&image, vec!["b".into()]);
        image = step(&image, next);
        let (next, _) = create_topics(&image, vec![topic("b", 1)], &config);
        image = step(&image, next);
        let (next, _) = image.with_producer_ids_reserved(1000);
        image = step(&image, next);
        let rebuilt = MetadataImage::new("c".into())
            .replay(&changes(&MetadataImage::new("c".into()), &image), 1)
            .unwrap();
        same(&rebuilt, &image);
    }
}
