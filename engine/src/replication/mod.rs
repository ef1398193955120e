//! Replication: the replica state machine (leader, follower, ISR, high
//! watermark, truncation) without I/O, and the follower's client for the
//! node-to-node fetch. The shard's replica manager (`shard::replica`)
//! drives them; see README.md here.

pub mod client;
#[cfg(test)]
mod simulation;
pub mod state;
