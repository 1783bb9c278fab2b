//! How fresh the maps are, as kube-proxy's `ProxyHealthServer` tracks it: the sync loop says
//! when it applied an update, the source's watcher when one arrived. The agent is healthy
//! unless an update has waited longer than the timeout to reach the maps.

use std::{
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime},
};

use crate::model::NodeEligibility;

/// kube-proxy's `healthTimeout` by default: twice its default sync period of 30 s.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(60);

/// A point in time, monotonic for deciding staleness and wall-clock for showing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Moment {
    pub monotonic: Instant,
    pub wall: SystemTime,
}

impl Moment {
    pub fn now() -> Self {
        Self {
            monotonic: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// `by` later (a test's clock stepping).
    #[must_use]
    pub fn later(self, by: Duration) -> Self {
        Self {
            monotonic: self.monotonic + by,
            wall: self.wall + by,
        }
    }
}

/// kube-proxy's `ProxyHealth` at one moment, with the node's eligibility.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProxyHealth {
    /// No update has waited longer than the timeout to reach the maps.
    pub healthy: bool,
    /// When the maps last took an update; `None` before the first.
    pub last_updated: Option<SystemTime>,
    pub current_time: SystemTime,
    pub node: NodeEligibility,
}

impl ProxyHealth {
    /// What `/readyz` answers 200 to: the first sync is in the maps and syncs keep up.
    pub fn ready(&self) -> bool {
        self.healthy && self.last_updated.is_some()
    }
}

/// The sync loop's record: what kube-proxy's `Updated` and `QueuedUpdate` keep, by the
/// source's update generations (which the sync loop may skip: it always applies the latest).
#[derive(Debug)]
pub struct SyncTracker {
    timeout: Duration,
    last_updated: Option<Moment>,
    /// The newest generation in the maps.
    applied: u64,
    /// The oldest and the newest update waiting, with when each arrived.
    oldest_pending: Option<(u64, Moment)>,
    newest_pending: Option<(u64, Moment)>,
    node: NodeEligibility,
}

impl SyncTracker {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            last_updated: None,
            applied: 0,
            oldest_pending: None,
            newest_pending: None,
            node: NodeEligibility::Eligible,
        }
    }

    /// Update `generation` arrived `at` (kube-proxy's `QueuedUpdate`).
    pub fn queued(&mut self, generation: u64, at: Moment) {
        if generation <= self.applied {
            return; // the sync loop got to it first
        }
        self.oldest_pending.get_or_insert((generation, at));
        self.newest_pending = Some((generation, at));
    }

    /// The maps hold update `generation` (and every earlier one) since `at` (kube-proxy's
    /// `Updated`).
    pub fn updated(&mut self, generation: u64, at: Moment) {
        self.applied = self.applied.max(generation);
        self.last_updated = Some(at);
        match self.newest_pending {
            Some((newest, _)) if newest > self.applied => {
                // A newer update waits. When it arrived after others that were skipped,
                // its own arrival is what is known: the wait is counted from there.
                if self
                    .oldest_pending
                    .is_some_and(|(oldest, _)| oldest <= self.applied)
                {
                    self.oldest_pending = self.newest_pending;
                }
            }
            _ => {
                self.oldest_pending = None;
                self.newest_pending = None;
            }
        }
    }

    /// Remembers what the Node says; returns what it said before.
    pub fn set_node(&mut self, node: NodeEligibility) -> NodeEligibility {
        std::mem::replace(&mut self.node, node)
    }

    /// kube-proxy's `Health()` at `now`: healthy while starting up (nothing applied yet)
    /// and while no update has waited `timeout` or longer.
    pub fn health(&self, now: Moment) -> ProxyHealth {
        let late = self.last_updated.is_some()
            && self.oldest_pending.is_some_and(|(_, queued)| {
                now.monotonic.saturating_duration_since(queued.monotonic) >= self.timeout
            });
        ProxyHealth {
            healthy: !late,
            last_updated: self.last_updated.map(|moment| moment.wall),
            current_time: now.wall,
            node: self.node,
        }
    }
}

/// The [`SyncTracker`] shared by the sync loop, the source's watcher and the HTTP servers,
/// on the real clock.
#[derive(Clone, Debug)]
pub struct SyncHealth {
    tracker: Arc<Mutex<SyncTracker>>,
}

impl SyncHealth {
    pub fn new(timeout: Duration) -> Self {
        Self {
            tracker: Arc::new(Mutex::new(SyncTracker::new(timeout))),
        }
    }

    fn tracker(&self) -> MutexGuard<'_, SyncTracker> {
        // The tracker's fields stay consistent whatever panicked while it was held.
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The source published update `generation`.
    pub fn queued(&self, generation: u64) {
        self.tracker().queued(generation, Moment::now());
    }

    /// The maps hold update `generation`.
    pub fn updated(&self, generation: u64) {
        self.tracker().updated(generation, Moment::now());
    }

    /// Remembers what the Node says; returns what it said before.
    pub fn set_node(&self, node: NodeEligibility) -> NodeEligibility {
        self.tracker().set_node(node)
    }

    pub fn now(&self) -> ProxyHealth {
        self.tracker().health(Moment::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// kube-proxy's `testProxyHealthUpdater` (healthcheck_test.go) with its 10 s timeout and
    /// 25 s and 5 s steps; its two proxiers are one sync loop here, whose updates carry
    /// generations.
    #[test]
    fn healthy_until_a_queued_update_waits_past_the_timeout() {
        let mut tracker = SyncTracker::new(TIMEOUT);
        let mut now = Moment::now();
        let health = |tracker: &SyncTracker, now| tracker.health(now).healthy;
        assert!(health(&tracker, now), "healthy before anything happened");

        tracker.queued(1, now);
        now = now.later(Duration::from_secs(25));
        assert!(
            health(&tracker, now),
            "healthy while starting up, however long the first update waits"
        );
        tracker.updated(1, now);
        assert_eq!(tracker.health(now).last_updated, Some(now.wall));

        now = now.later(Duration::from_secs(25));
        assert!(
            health(&tracker, now),
            "no update queued: healthy however long ago the last sync was"
        );

        tracker.queued(2, now);
        now = now.later(Duration::from_secs(5));
        assert!(health(&tracker, now), "queued 5 s ago: not late yet");
        now = now.later(Duration::from_secs(20));
        assert!(!health(&tracker, now), "queued 25 s ago, not applied");
        let stale = tracker.health(now);
        assert_ne!(stale.last_updated, Some(now.wall), "the last sync, not now");

        tracker.updated(2, now);
        now = now.later(Duration::from_secs(5));
        assert!(health(&tracker, now), "applied: healthy again");
    }

    #[test]
    fn only_the_applied_generation_clears_what_waits() {
        let mut tracker = SyncTracker::new(TIMEOUT);
        let start = Moment::now();
        tracker.queued(1, start);
        tracker.updated(1, start);

        // 2 waits; 3 arrives while the sync loop applies 2: 3 still waits, from its arrival.
        tracker.queued(2, start);
        let three = start.later(Duration::from_secs(8));
        tracker.queued(3, three);
        tracker.updated(2, three);
        assert!(tracker.health(start.later(Duration::from_secs(12))).healthy);
        assert!(
            !tracker.health(three.later(Duration::from_secs(11))).healthy,
            "update 3 waited 11 s"
        );

        // The watcher may see an update after the sync loop applied it: nothing waits.
        tracker.updated(4, three);
        tracker.queued(4, three);
        tracker.queued(3, three);
        assert!(tracker.health(three.later(Duration::from_secs(60))).healthy);
    }

    #[test]
    fn an_update_that_is_never_applied_stays_late_until_a_newer_one_is() {
        // The agent does not mark a rejected manifest edit (or a failed write) as applied.
        let mut tracker = SyncTracker::new(TIMEOUT);
        let start = Moment::now();
        tracker.queued(1, start);
        tracker.updated(1, start);
        tracker.queued(2, start);
        let later = start.later(Duration::from_secs(30));
        assert!(!tracker.health(later).healthy);
        tracker.queued(3, later);
        assert!(
            !tracker.health(later).healthy,
            "3 waits, but 2 waited longer"
        );
        tracker.updated(3, later);
        assert!(tracker.health(later).healthy);
    }

    #[test]
    fn ready_once_synced_and_while_fresh() {
        let mut tracker = SyncTracker::new(TIMEOUT);
        let start = Moment::now();
        assert!(!tracker.health(start).ready(), "nothing in the maps yet");
        tracker.queued(1, start);
        tracker.updated(1, start);
        assert!(tracker.health(start).ready());
        tracker.queued(2, start);
        assert!(!tracker.health(start.later(TIMEOUT)).ready(), "stale");
        assert_eq!(
            tracker.set_node(NodeEligibility::ToBeDeleted),
            NodeEligibility::Eligible
        );
        tracker.updated(2, start.later(TIMEOUT));
        assert!(
            tracker.health(start.later(TIMEOUT)).ready(),
            "the node's eligibility is no business of readiness"
        );
    }
}
