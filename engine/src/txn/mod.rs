//! The transaction coordinator (Kafka's `TransactionCoordinator`; see
//! `README.md` and `SPEC.md`): the records it keeps in `__transaction_state`
//! (`records`), Kafka's rules for a transactional id's state (`state`, pure),
//! one shard's ids and their writes (`coordinator`) and the markers that end
//! a transaction on its partitions (`markers`). The partition side of
//! transactions (open transactions, markers, the last stable offset,
//! `.txnindex`) is in `partition`.

pub mod coordinator;
pub mod markers;
pub mod records;
pub mod state;

pub use crate::controller::TRANSACTION_STATE_TOPIC;

/// The `__transaction_state` partition of `transactional_id`: Kafka's
/// `Utils.abs(transactionalId.hashCode) % partitions`, the group rule.
pub fn partition_for(transactional_id: &str, partitions: i32) -> i32 {
    crate::group::partition_for(transactional_id, partitions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactional_ids_map_to_kafkas_partitions() {
        // Java's String.hashCode: "my-txn" -1061187895, "txn-1" 110810510,
        // "polygenelubricants" i32::MIN (abs maps it to 0).
        assert_eq!(partition_for("my-txn", 50), 45);
        assert_eq!(partition_for("txn-1", 50), 10);
        assert_eq!(partition_for("polygenelubricants", 50), 0);
        assert_eq!(partition_for("é😀", 50), 12);
    }
}
