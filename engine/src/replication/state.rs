//! The replica state machine, sans I/O: what a leader knows of its
//! followers (their log end offsets, when each was last caught up), the
//! high watermark it derives, the ISR changes it asks the controller for,
//! and where a follower must truncate before it copies a new leader.
//!
//! Plain structs driven by events with explicit times, so the I/O shell
//! (`shard::replica`) and the seeded simulation (`replication::simulation`)
//! run exactly the same rules. Kafka's `Partition`/`Replica` classes are the
//! reference for each rule; the comments name the Kafka behaviour followed.

use std::collections::BTreeMap;

/// What the leader tracks of one follower (Kafka's `ReplicaState`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowerProgress {
    /// The follower's log end offset as of its last fetch; -1 until it fetches
    /// from this leader (a new leader knows nothing of its followers).
    pub log_end_offset: i64,
    /// Last time the follower had everything the leader had (Kafka's
    /// `lastCaughtUpTimeMs`); it leaves the ISR when this is older than
    /// `replica.lag.time.max.ms`.
    pub last_caught_up_ms: i64,
    /// The leader's log end offset and the time at the previous fetch: a
    /// follower that fetched from at least there has caught up to that time.
    last_fetch_leader_log_end_offset: i64,
    last_fetch_ms: i64,
}

/// A leader replica's view of its partition.
#[derive(Clone, Debug)]
pub struct Leadership {
    pub local_id: i32,
    pub leader_epoch: i32,
    /// The controller's partition epoch of the ISR below; AlterPartition
    /// requests carry it and are refused when it is stale.
    pub partition_epoch: i32,
    pub replicas: Vec<i32>,
    /// The ISR the controller committed.
    pub isr: Vec<i32>,
    /// An ISR sent to the controller and not yet committed (at most one).
    pub pending_isr: Option<Vec<i32>>,
    followers: BTreeMap<i32, FollowerProgress>,
    /// The leader's log end offset when it took this epoch: a follower
    /// rejoins the ISR only once it has reached it (Kafka's
    /// `leaderEpochStartOffset` rule), so it holds everything of this epoch.
    pub epoch_start_offset: i64,
    log_end_offset: i64,
    high_watermark: i64,
    /// Brokers the controller fenced (or that are shutting down): they
    /// may still fetch, but are not proposed into the ISR (KIP-841).
    ineligible: Vec<i32>,
}

/// What a follower's fetch changed on the leader.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FetchEffect {
    /// The high watermark moved up to this.
    pub high_watermark_advanced: Option<i64>,
    /// Ask the controller for this ISR (the follower caught up).
    pub expand_isr: Option<Vec<i32>>,
}

impl Leadership {
    /// Leadership of epoch `leader_epoch` taken at `log_end_offset`, with
    /// the high watermark known so far (a follower's last one from its
    /// leader, or the checkpoint): never above the log end offset.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        local_id: i32,
        leader_epoch: i32,
        partition_epoch: i32,
        replicas: Vec<i32>,
        isr: Vec<i32>,
        log_end_offset: i64,
        known_high_watermark: i64,
        now_ms: i64,
    ) -> Leadership {
        let followers = replicas
            .iter()
            .filter(|r| **r != local_id)
            .map(|r| {
                (
                    *r,
                    FollowerProgress {
                        log_end_offset: -1,
                        // An in-sync follower gets a full lag window to
                        // fetch from its new leader before it is dropped.
                        last_caught_up_ms: if isr.contains(r) { now_ms } else { -1 },
                        last_fetch_leader_log_end_offset: -1,
                        last_fetch_ms: -1,
                    },
                )
            })
            .collect();
        let mut leadership = Leadership {
            local_id,
            leader_epoch,
            partition_epoch,
            replicas,
            isr,
            pending_isr: None,
            followers,
            epoch_start_offset: log_end_offset,
            log_end_offset,
            high_watermark: known_high_watermark.clamp(0, log_end_offset.max(0)),
            ineligible: Vec::new(),
        };
        leadership.update_high_watermark();
        leadership
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark
    }

    pub fn log_end_offset(&self) -> i64 {
        self.log_end_offset
    }

    pub fn follower(&self, id: i32) -> Option<&FollowerProgress> {
        self.followers.get(&id)
    }

    /// The ISR the high watermark waits for: the committed one plus any
    /// member a pending expansion adds (Kafka's "maximal ISR"). A pending
    /// shrink still waits for the member it drops until it is committed.
    pub fn maximal_isr(&self) -> Vec<i32> {
        let mut isr = self.isr.clone();
        if let Some(pending) = &self.pending_isr {
            for r in pending {
                if !isr.contains(r) {
                    isr.push(*r);
                }
            }
        }
        isr
    }

    /// The leader appended: its log end offset is now `log_end_offset`.
    /// Returns the new high watermark if it moved (ISR of the leader alone).
    pub fn on_local_append(&mut self, log_end_offset: i64) -> Option<i64> {
        assert!(log_end_offset >= self.log_end_offset, "log end offset went back");
        self.log_end_offset = log_end_offset;
        self.update_high_watermark()
    }

    /// Follower `id` fetched from `fetch_offset` at `now_ms` (Kafka's
    /// `updateFollowerFetchState`): its log end offset is the fetch offset.
    pub fn on_follower_fetch(&mut self, id: i32, fetch_offset: i64, now_ms: i64) -> FetchEffect {
        let leader_end = self.log_end_offset;
        let Some(f) = self.followers.get_mut(&id) else {
            return FetchEffect::default();
        };
        if fetch_offset >= leader_end {
            f.last_caught_up_ms = f.last_caught_up_ms.max(now_ms);
        } else if f.last_fetch_leader_log_end_offset >= 0
            && fetch_offset >= f.last_fetch_leader_log_end_offset
        {
            f.last_caught_up_ms = f.last_caught_up_ms.max(f.last_fetch_ms);
        }
        f.log_end_offset = fetch_offset;
        f.last_fetch_leader_log_end_offset = leader_end;
        f.last_fetch_ms = now_ms;
        // The expansion is pending before the watermark moves (Kafka's
        // maybeExpandIsr, then maybeIncrementLeaderHW): the watermark then
        // waits for the joining follower, which may hold less than the
        // committed ISR (found by the simulation, seed 1394).
        let expand_isr = self.expansion_for(id);
        if let Some(isr) = &expand_isr {
            self.pending_isr = Some(isr.clone());
        }
        let high_watermark_advanced = self.update_high_watermark();
        FetchEffect {
            high_watermark_advanced,
            expand_isr,
        }
    }

    /// The ISR with follower `id` added, when it is out of the ISR, has
    /// reached both the high watermark and this epoch's start, and no other
    /// change is pending.
    fn expansion_for(&self, id: i32) -> Option<Vec<i32>> {
        if self.pending_isr.is_some() || self.isr.contains(&id) || self.ineligible.contains(&id) {
            return None;
        }
        let f = self.followers.get(&id)?;
        let caught_up =
            f.log_end_offset >= self.high_watermark && f.log_end_offset >= self.epoch_start_offset;
        caught_up.then(|| {
            let mut isr = self.isr.clone();
            isr.push(id);
            isr
        })
    }

    /// The ISR without the followers that have not caught up for
    /// `lag_max_ms` (Kafka's `getOutOfSyncReplicas`), or None when all
    /// keep up or a change is pending.
    pub fn shrink(&self, now_ms: i64, lag_max_ms: i64) -> Option<Vec<i32>> {
        if self.pending_isr.is_some() {
            return None;
        }
        let lagging: Vec<i32> = self
            .isr
            .iter()
            .copied()
            .filter(|r| *r != self.local_id)
            .filter(|r| {
                self.followers
                    .get(r)
                    .is_some_and(|f| now_ms - f.last_caught_up_ms > lag_max_ms)
            })
            .collect();
        (!lagging.is_empty()).then(|| {
            self.isr
                .iter()
                .copied()
                .filter(|r| !lagging.contains(r))
                .collect()
        })
    }

    /// The brokers the controller has fenced, as of the latest image.
    pub fn set_ineligible(&mut self, fenced: &[i32]) {
        if self.ineligible != fenced {
            self.ineligible = fenced.to_vec();
        }
    }

    /// The partition's replicas changed (a reassignment added or removed
    /// some): track the new followers from their first fetch, forget the
    /// removed ones.
    pub fn set_replicas(&mut self, replicas: Vec<i32>) {
        self.followers.retain(|id, _| replicas.contains(id));
        for r in &replicas {
            if *r != self.local_id && !self.followers.contains_key(r) {
                self.followers.insert(
                    *r,
                    FollowerProgress {
                        log_end_offset: -1,
                        last_caught_up_ms: -1,
                        last_fetch_leader_log_end_offset: -1,
                        last_fetch_ms: -1,
                    },
                );
            }
        }
        self.replicas = replicas;
    }

    /// Records an ISR sent to the controller (an expansion from
    /// `on_follower_fetch` is already recorded).
    pub fn propose(&mut self, isr: Vec<i32>) {
        assert!(isr.contains(&self.local_id), "the leader stays in its ISR");
        self.pending_isr = Some(isr);
        self.update_high_watermark();
    }

    /// The controller refused the proposal for good (INVALID_REQUEST,
    /// INELIGIBLE_REPLICA with current epochs). Not for a timeout: the
    /// request may still be applied, so the change stays pending until an
    /// image settles it (found by the simulation, seed 1277). The
    /// watermark is recomputed without the member it was waiting for.
    pub fn proposal_failed(&mut self) -> Option<i64> {
        self.pending_isr = None;
        self.update_high_watermark()
    }

    /// The controller's image has this partition at `partition_epoch` with
    /// `isr` (same leader epoch): the pending proposal is settled.
    pub fn on_isr_committed(&mut self, isr: Vec<i32>, partition_epoch: i32) -> Option<i64> {
        assert!(
            partition_epoch >= self.partition_epoch,
            "partition epoch went back"
        );
        if partition_epoch == self.partition_epoch && isr == self.isr {
            return None;
        }
        for r in &isr {
            if let Some(f) = self.followers.get_mut(r) {
                // A member that just joined starts its lag window now.
                if !self.isr.contains(r) {
                    f.last_caught_up_ms = f.last_caught_up_ms.max(f.last_fetch_ms);
                }
            }
        }
        self.isr = isr;
        self.partition_epoch = partition_epoch;
        self.pending_isr = None;
        self.update_high_watermark()
    }

    /// HW = the lowest log end offset in the maximal ISR; it never goes
    /// back (Kafka's `maybeIncrementLeaderHW`). A member that has not
    /// fetched from this leader yet holds it where it is.
    fn update_high_watermark(&mut self) -> Option<i64> {
        let mut lowest = self.log_end_offset;
        for r in self.maximal_isr() {
            if r == self.local_id {
                continue;
            }
            match self.followers.get(&r) {
                Some(f) if f.log_end_offset >= 0 => lowest = lowest.min(f.log_end_offset),
                _ => return None,
            }
        }
        if lowest > self.high_watermark {
            self.high_watermark = lowest;
            Some(lowest)
        } else {
            None
        }
    }
}

/// Where a follower truncates, given its leader-epoch history and the
/// leader's answer to OffsetForLeaderEpoch for the follower's latest epoch
/// (Kafka's KIP-101/KIP-279 rules).
#[derive(Debug, PartialEq, Eq)]
pub enum Truncation {
    /// Cut the log here (never above its end) and start fetching.
    To(i64),
    /// Cut here, then ask again about the follower's new latest epoch: the
    /// leader's epoch was one the follower never had.
    ToAndAskAgain(i64),
}

/// `local_epochs`: (epoch, start offset), ascending; `local_end`: the
/// follower's log end offset; `leader`: (epoch, end offset) the leader
/// answered, (-1, -1) when it knows no epoch at or below the one asked.
pub fn truncation(local_epochs: &[(i32, i64)], local_end: i64, leader: (i32, i64)) -> Truncation {
    let (leader_epoch, leader_end) = leader;
    if leader_epoch < 0 || leader_end < 0 {
        // The leader has no history that old: its log starts later, or it
        // is empty. Keep nothing it cannot vouch for.
        return Truncation::To(leader_end.max(0).min(local_end));
    }
    // The follower's own end of that epoch: the start of its next epoch.
    let local = local_epochs.iter().rposition(|(e, _)| *e <= leader_epoch);
    let (local_epoch, local_epoch_end) = match local {
        None => (-1, local_epochs.first().map_or(local_end, |(_, start)| *start)),
        Some(i) => (
            local_epochs[i].0,
            local_epochs.get(i + 1).map_or(local_end, |(_, start)| *start),
        ),
    };
    let target = leader_end.min(local_epoch_end).min(local_end);
    if local_epoch == leader_epoch {
        Truncation::To(target)
    } else {
        Truncation::ToAndAskAgain(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three(now_ms: i64) -> Leadership {
        Leadership::new(1, 5, 0, vec![1, 2, 3], vec![1, 2, 3], 100, 90, now_ms)
    }

    #[test]
    fn high_watermark_is_the_lowest_isr_end_and_waits_for_silent_members() {
        let mut l = three(0);
        assert_eq!(l.high_watermark(), 90);
        assert_eq!(l.on_local_append(120), None);
        assert_eq!(l.on_follower_fetch(2, 110, 1).high_watermark_advanced, None);
        assert_eq!(l.on_follower_fetch(3, 105, 2).high_watermark_advanced, Some(105));
        assert_eq!(l.on_follower_fetch(3, 120, 3).high_watermark_advanced, Some(110));
        // A fetch from an older offset never takes the watermark back.
        assert_eq!(l.on_follower_fetch(2, 100, 4).high_watermark_advanced, None);
        assert_eq!(l.high_watermark(), 110);
    }

    #[test]
    fn a_leader_alone_in_the_isr_advances_on_its_own_appends() {
        let mut l = Leadership::new(1, 0, 0, vec![1], vec![1], 7, 0, 0);
        assert_eq!(l.high_watermark(), 7);
        assert_eq!(l.on_local_append(9), Some(9));
    }

    #[test]
    fn a_follower_behind_for_the_lag_window_is_dropped_and_rejoins_when_caught_up() {
        let mut l = three(0);
        l.on_follower_fetch(2, 100, 10);
        l.on_follower_fetch(3, 100, 10);
        l.on_local_append(150);
        l.on_follower_fetch(2, 150, 500);
        assert_eq!(l.shrink(20_000, 30_000), None);
        assert_eq!(l.shrink(30_011, 30_000), Some(vec![1, 2]));
        l.propose(vec![1, 2]);
        assert_eq!(l.shrink(40_000, 30_000), None, "one change at a time");
        // The shrink commits; the watermark stops waiting for 3.
        assert_eq!(l.on_isr_committed(vec![1, 2], 1), Some(150));
        let effect = l.on_follower_fetch(3, 140, 40_001);
        assert_eq!(effect.expand_isr, None, "below the high watermark");
        let effect = l.on_follower_fetch(3, 150, 40_002);
        assert_eq!(effect.expand_isr, Some(vec![1, 2, 3]));
        l.propose(vec![1, 2, 3]);
        l.on_local_append(160);
        l.on_follower_fetch(2, 160, 40_003);
        assert_eq!(
            l.high_watermark(),
            150,
            "a pending member counts for the watermark"
        );
        l.on_follower_fetch(3, 160, 40_004);
        assert_eq!(l.high_watermark(), 160);
        l.on_isr_committed(vec![1, 2, 3], 2);
        assert_eq!(
            l.shrink(40_005, 30_000),
            None,
            "a new member starts a fresh window"
        );
    }

    #[test]
    fn a_follower_rejoins_only_past_the_epoch_start() {
        let mut l = Leadership::new(1, 5, 0, vec![1, 2], vec![1], 100, 100, 0);
        assert_eq!(l.on_follower_fetch(2, 100, 1).expand_isr, Some(vec![1, 2]));
        // Member 3 has not fetched yet, so the watermark stays at 80: 2 is
        // past it but short of where epoch 5 began.
        let mut l = Leadership::new(1, 5, 0, vec![1, 2, 3], vec![1, 3], 100, 80, 0);
        assert_eq!(l.high_watermark(), 80);
        assert_eq!(l.on_follower_fetch(2, 90, 1).expand_isr, None);
        assert_eq!(l.on_follower_fetch(2, 100, 2).expand_isr, Some(vec![1, 3, 2]));
    }

    #[test]
    fn truncation_follows_the_leader_epoch_history() {
        // Same history, follower behind: nothing to cut.
        assert_eq!(truncation(&[(0, 0), (3, 50)], 60, (3, 80)), Truncation::To(60));
        // Follower wrote past where the leader's epoch 3 ended.
        assert_eq!(truncation(&[(0, 0), (3, 50)], 90, (3, 70)), Truncation::To(70));
        // The follower has epoch 4 the leader never had: the leader answers
        // its largest epoch below (3, ended at 70); the follower's epoch 3
        // ended at 60, when its epoch 4 started.
        assert_eq!(
            truncation(&[(0, 0), (3, 50), (4, 60)], 90, (3, 70)),
            Truncation::To(60)
        );
        // The leader's answer names an epoch the follower lacks.
        assert_eq!(
            truncation(&[(0, 0), (4, 60)], 90, (2, 40)),
            Truncation::ToAndAskAgain(40)
        );
        // The leader knows nothing that old.
        assert_eq!(truncation(&[(0, 0)], 30, (-1, -1)), Truncation::To(0));
    }
}
