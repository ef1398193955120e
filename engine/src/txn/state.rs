//! One transactional id's state and Kafka's rules for changing it
//! (`SPEC.md` §3, Kafka 4.0 with the original transaction protocol: the
//! epoch is bumped by InitProducerId, not by every commit). Pure logic: each
//! request turns into a decision; a `Write` carries the state to append to
//! `__transaction_state`, which the coordinator makes current only once
//! the append is committed. No I/O, no clock (the time is passed in).

use std::collections::BTreeSet;

use super::records::{TxnLogValue, TxnStatus};

/// An epoch at or past this is exhausted: the next InitProducerId takes a
/// new producer id (Kafka keeps 32767 free so a fence is always possible).
const EPOCH_EXHAUSTED_FROM: i16 = i16::MAX - 1;

/// Why a request is refused, in Kafka's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnError {
    /// CONCURRENT_TRANSACTIONS (51): retry later.
    ConcurrentTransactions,
    /// PRODUCER_FENCED (90); INVALID_PRODUCER_EPOCH (47) for old versions.
    ProducerFenced,
    /// INVALID_PRODUCER_ID_MAPPING (49).
    InvalidProducerIdMapping,
    /// INVALID_TXN_STATE (48).
    InvalidTxnState,
}

/// What the coordinator does with a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Append this state; answer once it is committed.
    Write(TxnMeta),
    /// Answer NONE, nothing to write.
    Done,
    /// InitProducerId found a transaction open: abort it at the next epoch
    /// (an EndTxn abort written by the coordinator itself) and answer
    /// CONCURRENT_TRANSACTIONS; the client retries.
    FenceOngoing {
        fenced_epoch: i16,
    },
    Refuse(TxnError),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnMeta {
    pub producer_id: i64,
    pub previous_producer_id: i64,
    pub producer_epoch: i16,
    /// The epoch before the last bump, so a retried InitProducerId that
    /// already bumped is recognised (memory only, -1 after a load).
    pub last_producer_epoch: i16,
    pub timeout_ms: i32,
    pub status: TxnStatus,
    pub partitions: BTreeSet<(String, i32)>,
    pub start_ms: i64,
    pub last_update_ms: i64,
}

impl TxnMeta {
    /// A transactional id seen for the first time: a fresh producer id,
    /// no epoch yet (the first InitProducerId bumps it to 0).
    pub fn new(producer_id: i64, timeout_ms: i32, now_ms: i64) -> Self {
        TxnMeta {
            producer_id,
            previous_producer_id: -1,
            producer_epoch: -1,
            last_producer_epoch: -1,
            timeout_ms,
            status: TxnStatus::Empty,
            partitions: BTreeSet::new(),
            start_ms: -1,
            last_update_ms: now_ms,
        }
    }

    /// InitProducerId (§3.2) for an id whose state is `self` (committed, no
    /// change pending). `expected`: the producer id and epoch the client
    /// sent (KIP-360), if any. `fresh_producer_id` is called only when the
    /// epoch is exhausted.
    pub fn init_producer_id(
        &self,
        expected: Option<(i64, i16)>,
        timeout_ms: i32,
        now_ms: i64,
        fresh_producer_id: impl FnOnce() -> i64,
    ) -> Decision {
        if let Some((pid, epoch)) = expected {
            let known = self.producer_epoch == -1
                || pid == self.producer_id
                || (pid == self.previous_producer_id && epoch >= EPOCH_EXHAUSTED_FROM);
            if !known {
                return Decision::Refuse(TxnError::ProducerFenced);
            }
        }
        match self.status {
            TxnStatus::PrepareCommit | TxnStatus::PrepareAbort => {
                Decision::Refuse(TxnError::ConcurrentTransactions)
            }
            TxnStatus::Ongoing => Decision::FenceOngoing {
                fenced_epoch: self.producer_epoch.saturating_add(1),
            },
            TxnStatus::Empty | TxnStatus::CompleteCommit | TxnStatus::CompleteAbort => {
                let mut next = TxnMeta {
                    timeout_ms,
                    status: TxnStatus::Empty,
                    partitions: BTreeSet::new(),
                    start_ms: -1,
                    last_update_ms: now_ms,
                    ..self.clone()
                };
                let exhausted = self.producer_epoch >= EPOCH_EXHAUSTED_FROM;
                if exhausted && expected.is_none_or(|(_, epoch)| epoch == self.producer_epoch) {
                    next.previous_producer_id = self.producer_id;
                    next.producer_id = fresh_producer_id();
                    next.producer_epoch = 0;
                    next.last_producer_epoch = if expected.is_some() {
                        self.producer_epoch
                    } else {
                        -1
                    };
                    return Decision::Write(next);
                }
                match expected {
                    None => {
                        next.producer_epoch = self.producer_epoch + 1;
                        next.last_producer_epoch = -1;
                    }
                    Some((_, epoch)) if self.producer_epoch == -1 || epoch == self.producer_epoch => {
                        next.producer_epoch = self.producer_epoch + 1;
                        next.last_producer_epoch = self.producer_epoch;
                    }
                    // A retry of a bump that already happened.
                    Some((_, epoch)) if epoch == self.last_producer_epoch => {}
                    Some(_) => return Decision::Refuse(TxnError::ProducerFenced),
                }
                Decision::Write(next)
            }
            TxnStatus::Dead | TxnStatus::PrepareEpochFence => Decision::Refuse(TxnError::InvalidTxnState),
        }
    }

    /// The producer id and epoch a client request carries must be this
    /// state's.
    fn check_producer(&self, producer_id: i64, producer_epoch: i16) -> Result<(), TxnError> {
        if producer_id != self.producer_id {
            return Err(TxnError::InvalidProducerIdMapping);
        }
        if producer_epoch != self.producer_epoch {
            return Err(TxnError::ProducerFenced);
        }
        Ok(())
    }

    /// AddPartitionsToTxn v0-3 and AddOffsetsToTxn (§3.3, §3.4).
    pub fn add_partitions(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        partitions: &[(String, i32)],
        now_ms: i64,
    ) -> Decision {
        if let Err(e) = self.check_producer(producer_id, producer_epoch) {
            return Decision::Refuse(e);
        }
        match self.status {
            TxnStatus::PrepareCommit | TxnStatus::PrepareAbort => {
                Decision::Refuse(TxnError::ConcurrentTransactions)
            }
            TxnStatus::Ongoing if partitions.iter().all(|p| self.partitions.contains(p)) => Decision::Done,
            TxnStatus::Ongoing | TxnStatus::Empty | TxnStatus::CompleteCommit | TxnStatus::CompleteAbort => {
                let starts = self.status != TxnStatus::Ongoing;
                let mut next = TxnMeta {
                    status: TxnStatus::Ongoing,
                    start_ms: if starts { now_ms } else { self.start_ms },
                    last_update_ms: now_ms,
                    ..self.clone()
                };
                if starts {
                    next.partitions.clear();
                }
                next.partitions.extend(partitions.iter().cloned());
                Decision::Write(next)
            }
            TxnStatus::Dead | TxnStatus::PrepareEpochFence => Decision::Refuse(TxnError::InvalidTxnState),
        }
    }

    /// EndTxn from the client (§3.5): Ongoing moves to PrepareCommit or
    /// PrepareAbort; a retry of a finished end is answered NONE.
    pub fn end_txn(&self, producer_id: i64, producer_epoch: i16, commit: bool, now_ms: i64) -> Decision {
        if let Err(e) = self.check_producer(producer_id, producer_epoch) {
            return Decision::Refuse(e);
        }
        use TxnStatus::*;
        match (self.status, commit) {
            (Ongoing, _) => Decision::Write(TxnMeta {
                status: if commit { PrepareCommit } else { PrepareAbort },
                last_update_ms: now_ms,
                ..self.clone()
            }),
            (CompleteCommit, true) | (CompleteAbort, false) => Decision::Done,
            (PrepareCommit, true) | (PrepareAbort, false) => {
                Decision::Refuse(TxnError::ConcurrentTransactions)
            }
            _ => Decision::Refuse(TxnError::InvalidTxnState),
        }
    }

    /// The coordinator's own abort of an open transaction at `epoch` (a
    /// fence, or a timeout): PrepareAbort at that epoch.
    pub fn abort_at(&self, epoch: i16, now_ms: i64) -> Option<TxnMeta> {
        (self.status == TxnStatus::Ongoing && epoch >= self.producer_epoch).then(|| TxnMeta {
            producer_epoch: epoch,
            last_producer_epoch: -1,
            status: TxnStatus::PrepareAbort,
            last_update_ms: now_ms,
            ..self.clone()
        })
    }

    /// After the markers of a PrepareCommit/PrepareAbort are written: the
    /// CompleteCommit/CompleteAbort state, with no partitions.
    pub fn complete(&self, now_ms: i64) -> Option<TxnMeta> {
        let status = match self.status {
            TxnStatus::PrepareCommit => TxnStatus::CompleteCommit,
            TxnStatus::PrepareAbort => TxnStatus::CompleteAbort,
            _ => return None,
        };
        Some(TxnMeta {
            status,
            partitions: BTreeSet::new(),
            last_update_ms: now_ms,
            ..self.clone()
        })
    }

    /// Has an open transaction outlived its timeout?
    pub fn timed_out(&self, now_ms: i64) -> bool {
        self.status == TxnStatus::Ongoing && now_ms.saturating_sub(self.start_ms) > i64::from(self.timeout_ms)
    }

    pub fn to_log_value(&self) -> TxnLogValue {
        let mut partitions: Vec<(String, Vec<i32>)> = Vec::new();
        for (topic, partition) in &self.partitions {
            match partitions.last_mut() {
                Some((last, ids)) if last == topic => ids.push(*partition),
                _ => partitions.push((topic.clone(), vec![*partition])),
            }
        }
        TxnLogValue {
            producer_id: self.producer_id,
            previous_producer_id: self.previous_producer_id,
            next_producer_id: -1,
            producer_epoch: self.producer_epoch,
            timeout_ms: self.timeout_ms,
            status: self.status,
            partitions: (self.status != TxnStatus::Empty).then_some(partitions),
            last_update_ms: self.last_update_ms,
            start_ms: self.start_ms,
            client_transaction_version: 0,
        }
    }

    pub fn from_log_value(v: &TxnLogValue) -> Self {
        let partitions = match (&v.partitions, v.status) {
            (Some(topics), status) if status != TxnStatus::Empty => topics
                .iter()
                .flat_map(|(topic, ids)| ids.iter().map(move |id| (topic.clone(), *id)))
                .collect(),
            _ => BTreeSet::new(),
        };
        TxnMeta {
            producer_id: v.producer_id,
            previous_producer_id: v.previous_producer_id,
            producer_epoch: v.producer_epoch,
            last_producer_epoch: -1,
            timeout_ms: v.timeout_ms,
            status: v.status,
            partitions,
            start_ms: v.start_ms,
            last_update_ms: v.last_update_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(d: Decision) -> TxnMeta {
        match d {
            Decision::Write(meta) => meta,
            other => panic!("expected a write, got {other:?}"),
        }
    }

    fn parts(list: &[(&str, i32)]) -> Vec<(String, i32)> {
        list.iter().map(|(t, p)| (t.to_string(), *p)).collect()
    }

    #[test]
    fn a_transaction_goes_through_kafkas_states() {
        let fresh = TxnMeta::new(1000, 60_000, 1);
        let ready = written(fresh.init_producer_id(None, 60_000, 2, || unreachable!()));
        assert_eq!(
            (ready.producer_id, ready.producer_epoch, ready.status),
            (1000, 0, TxnStatus::Empty)
        );
        // Wrong producer id or epoch.
        assert_eq!(
            ready.add_partitions(999, 0, &parts(&[("t", 0)]), 3),
            Decision::Refuse(TxnError::InvalidProducerIdMapping)
        );
        assert_eq!(
            ready.add_partitions(1000, 1, &parts(&[("t", 0)]), 3),
            Decision::Refuse(TxnError::ProducerFenced)
        );
        assert_eq!(
            ready.end_txn(1000, 0, true, 3),
            Decision::Refuse(TxnError::InvalidTxnState)
        );
        let ongoing = written(ready.add_partitions(1000, 0, &parts(&[("t", 0), ("t", 1)]), 3));
        assert_eq!((ongoing.status, ongoing.start_ms), (TxnStatus::Ongoing, 3));
        assert_eq!(
            ongoing.add_partitions(1000, 0, &parts(&[("t", 1)]), 4),
            Decision::Done
        );
        let more = written(ongoing.add_partitions(1000, 0, &parts(&[("u", 0)]), 4));
        assert_eq!((more.partitions.len(), more.start_ms), (3, 3));
        let prepared = written(more.end_txn(1000, 0, true, 5));
        assert_eq!(prepared.status, TxnStatus::PrepareCommit);
        assert_eq!(
            prepared.end_txn(1000, 0, true, 5),
            Decision::Refuse(TxnError::ConcurrentTransactions)
        );
        assert_eq!(
            prepared.end_txn(1000, 0, false, 5),
            Decision::Refuse(TxnError::InvalidTxnState)
        );
        assert_eq!(
            prepared.add_partitions(1000, 0, &parts(&[("t", 0)]), 5),
            Decision::Refuse(TxnError::ConcurrentTransactions)
        );
        let done = prepared.complete(6).unwrap();
        assert_eq!(
            (done.status, done.partitions.len()),
            (TxnStatus::CompleteCommit, 0)
        );
        assert_eq!(done.end_txn(1000, 0, true, 7), Decision::Done, "a retried commit");
        assert_eq!(
            done.end_txn(1000, 0, false, 7),
            Decision::Refuse(TxnError::InvalidTxnState)
        );
        // The next transaction starts anew.
        let next = written(done.add_partitions(1000, 0, &parts(&[("v", 2)]), 8));
        assert_eq!((next.partitions.len(), next.start_ms), (1, 8));
    }

    #[test]
    fn init_producer_id_bumps_fences_and_rotates() {
        let ready =
            written(TxnMeta::new(1000, 60_000, 1).init_producer_id(None, 60_000, 2, || unreachable!()));
        // A second producer with the id: the epoch goes up, the first is fenced.
        let second = written(ready.init_producer_id(None, 60_000, 3, || unreachable!()));
        assert_eq!(second.producer_epoch, 1);
        assert_eq!(
            second.add_partitions(1000, 0, &parts(&[("t", 0)]), 4),
            Decision::Refuse(TxnError::ProducerFenced)
        );
        // KIP-360: a client naming an id it never had is fenced; a retry of
        // a bump that happened keeps the epoch.
        assert_eq!(
            second.init_producer_id(Some((5, 0)), 60_000, 4, || unreachable!()),
            Decision::Refuse(TxnError::ProducerFenced)
        );
        let bumped = written(second.init_producer_id(Some((1000, 1)), 60_000, 4, || unreachable!()));
        assert_eq!((bumped.producer_epoch, bumped.last_producer_epoch), (2, 1));
        let retried = written(bumped.init_producer_id(Some((1000, 1)), 60_000, 5, || unreachable!()));
        assert_eq!(retried.producer_epoch, 2);
        // An open transaction is fenced at the next epoch and aborted.
        let ongoing = written(bumped.add_partitions(1000, 2, &parts(&[("t", 0)]), 6));
        let Decision::FenceOngoing { fenced_epoch } =
            ongoing.init_producer_id(None, 60_000, 7, || unreachable!())
        else {
            panic!("an open transaction is fenced");
        };
        let aborting = ongoing.abort_at(fenced_epoch, 7).unwrap();
        assert_eq!(
            (aborting.status, aborting.producer_epoch),
            (TxnStatus::PrepareAbort, 3)
        );
        assert_eq!(
            aborting.init_producer_id(None, 60_000, 8, || unreachable!()),
            Decision::Refuse(TxnError::ConcurrentTransactions)
        );
        let aborted = aborting.complete(9).unwrap();
        let after = written(aborted.init_producer_id(None, 60_000, 10, || unreachable!()));
        assert_eq!(after.producer_epoch, 4);
        // An exhausted epoch takes a new producer id.
        let mut worn = after.clone();
        worn.producer_epoch = EPOCH_EXHAUSTED_FROM;
        let rotated = written(worn.init_producer_id(None, 60_000, 11, || 2000));
        assert_eq!(
            (
                rotated.producer_id,
                rotated.previous_producer_id,
                rotated.producer_epoch
            ),
            (2000, 1000, 0)
        );
    }

    #[test]
    fn timeouts_and_the_log_value_round_trip() {
        let ready = written(TxnMeta::new(7, 1_000, 0).init_producer_id(None, 1_000, 0, || unreachable!()));
        let ongoing = written(ready.add_partitions(7, 0, &parts(&[("b", 1), ("a", 0), ("a", 2)]), 10));
        assert!(!ongoing.timed_out(1_010));
        assert!(ongoing.timed_out(1_011));
        let value = ongoing.to_log_value();
        assert_eq!(
            value.partitions,
            Some(vec![("a".to_string(), vec![0, 2]), ("b".to_string(), vec![1])])
        );
        let bytes = super::super::records::encode_value(&value);
        let back = TxnMeta::from_log_value(&super::super::records::decode_value(&bytes).unwrap());
        assert_eq!(
            back, ongoing,
            "last_producer_epoch is memory only and was -1 already"
        );
        assert_eq!(
            ready.to_log_value().partitions,
            None,
            "Empty writes a null partition list"
        );
    }
}
