//! shardlog: a Kafka-wire-compatible broker on a thread-per-core io_uring engine.
//! Layers, each calling only the one below: protocol → shard → controller /
//! partition → storage. See the README in each module's directory.

#![deny(clippy::await_holding_refcell_ref, clippy::await_holding_lock)]

pub mod clock;
pub mod config;
pub mod controller;
pub mod fifo;
pub mod group;
pub mod latency;
pub mod logging;
pub mod metrics;
pub mod partition;
pub mod protocol;
pub mod replication;
pub mod server;
pub mod shard;
pub mod storage;
#[cfg(test)]
pub(crate) mod test_executor;
pub mod tune;
pub mod txn;
pub mod wire;
