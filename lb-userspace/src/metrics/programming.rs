//! Network programming latency as kube-proxy defines it (pkg/proxy/metrics and its
//! EndpointSlice change tracker): from the time the EndpointSlice controller says a change
//! was triggered (a pod or Service changed: the slice's
//! `endpoints.kubernetes.io/last-change-trigger-time`) to the time the kernel maps reflect
//! it. The sources deliver whole snapshots, so a slice counts as changed when its trigger
//! time differs from the one in the last snapshot the maps were synced to.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;

/// The annotation the EndpointSlice controller sets to the time of the change that made it
/// update the slice (RFC 3339).
pub const LAST_CHANGE_TRIGGER_TIME: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// The trigger times of the slices in the last synced snapshot, to tell which slices a
/// sync's snapshot changed.
#[derive(Debug)]
pub struct TriggerTimes {
    /// Trigger times from before this are left out, as kube-proxy does: a slice listed at
    /// start may have changed hours before the agent ran.
    started: SystemTime,
    /// (namespace, slice name) -> its annotation in the last synced snapshot.
    synced: HashMap<(String, String), String>,
}

impl TriggerTimes {
    pub fn new(started: SystemTime) -> Self {
        Self {
            started,
            synced: HashMap::new(),
        }
    }

    /// Call once the maps hold `slices` (a successful sync), at `now`: the latency of each
    /// slice whose trigger time is new since the last call and after the start. A failed
    /// sync does not call it, so its changes are measured when a later sync lands them.
    pub fn synced(&mut self, slices: &[Arc<EndpointSlice>], now: SystemTime) -> Vec<Duration> {
        let mut latencies = Vec::new();
        let mut synced = HashMap::with_capacity(slices.len());
        for slice in slices {
            let meta = &slice.metadata;
            let Some(annotation) = meta
                .annotations
                .as_ref()
                .and_then(|annotations| annotations.get(LAST_CHANGE_TRIGGER_TIME))
            else {
                continue;
            };
            let key = (
                meta.namespace.clone().unwrap_or_default(),
                meta.name.clone().unwrap_or_default(),
            );
            let new = self.synced.get(&key) != Some(annotation);
            if new
                && let Ok(triggered) = annotation.parse::<Timestamp>()
                && SystemTime::from(triggered) > self.started
            {
                // A node clock behind the control plane's would make it negative: zero.
                latencies.push(
                    now.duration_since(SystemTime::from(triggered))
                        .unwrap_or_default(),
                );
            }
            synced.insert(key, annotation.clone());
        }
        self.synced = synced;
        latencies
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn slice(name: &str, trigger_time: Option<&str>) -> Arc<EndpointSlice> {
        let annotations = trigger_time.map(|time| json!({ LAST_CHANGE_TRIGGER_TIME: time }));
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default", "annotations": annotations},
                "addressType": "IPv4",
                "endpoints": [],
            }))
            .expect("slice"),
        )
    }

    fn at(time: &str) -> SystemTime {
        SystemTime::from(time.parse::<Timestamp>().expect("RFC 3339"))
    }

    #[test]
    fn latency_runs_from_a_new_trigger_time_to_the_sync_and_counts_each_change_once() {
        let mut tracker = TriggerTimes::new(at("2026-12-06T10:00:00Z"));
        // Listed at start: one slice changed before the agent ran, one after.
        let first = [
            slice("old", Some("2026-12-06T09:00:00Z")),
            slice("web", Some("2026-12-06T10:00:01Z")),
            slice("plain", None),
        ];
        assert_eq!(
            tracker.synced(&first, at("2026-12-06T10:00:03.5Z")),
            [Duration::from_millis(2500)],
            "only the change after the start is measured, from its trigger time"
        );
        assert!(
            tracker
                .synced(&first, at("2026-12-06T10:05:00Z"))
                .is_empty(),
            "the same slices again (a resync) measure nothing"
        );

        let second = [
            slice("old", Some("2026-12-06T09:00:00Z")),
            slice("web", Some("2026-12-06T10:06:00Z")),
        ];
        assert_eq!(
            tracker.synced(&second, at("2026-12-06T10:06:00.25Z")),
            [Duration::from_millis(250)],
            "web's new trigger time is measured, old's unchanged one is not"
        );
    }

    #[test]
    fn a_trigger_time_ahead_of_the_node_clock_is_zero_and_a_bad_one_is_skipped() {
        let mut tracker = TriggerTimes::new(at("2026-12-06T10:00:00Z"));
        let slices = [
            slice("ahead", Some("2026-12-06T10:00:09Z")),
            slice("garbled", Some("yesterday")),
        ];
        assert_eq!(
            tracker.synced(&slices, at("2026-12-06T10:00:05Z")),
            [Duration::ZERO]
        );
    }
}
