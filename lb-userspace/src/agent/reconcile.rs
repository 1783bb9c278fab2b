//! One sync: snapshot → model → diff → map writer, by level. The same snapshot twice writes
//! nothing; a failed write re-reads the maps so the next sync starts from the truth.

use std::time::{Duration, Instant};

use crate::{
    dataplane::{AppliedState, DataplaneError, MapWriter},
    diff::{Planner, RejectReason},
    model::{self, ModelConfig, ServicePortName, Snapshot, Warning},
};

/// What one sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Map operations written.
    pub ops: usize,
    /// Services that did not fit, by name and reason; they are not in the maps (or keep
    /// what they had), and everything else is.
    pub rejected: Vec<(ServicePortName, RejectReason)>,
    /// Objects (or parts) the model skipped, with the reason.
    pub warnings: Vec<Warning>,
    /// Time spent in model, diff and map writes.
    pub duration: Duration,
}

/// Keeps the kernel's maps equal to what the latest snapshot says.
pub struct Reconciler<W: MapWriter> {
    writer: W,
    /// What the maps hold (read once at start, then kept in step with every write).
    applied: AppliedState,
    planner: Planner,
    config: ModelConfig,
}

impl<W: MapWriter> Reconciler<W> {
    /// Reads what the maps already hold: a restarted agent adopts them and writes only the
    /// difference.
    pub fn new(writer: W, config: ModelConfig) -> Result<Self, DataplaneError> {
        let applied = writer.read()?;
        Ok(Self {
            writer,
            applied,
            planner: Planner::default(),
            config,
        })
    }

    pub fn applied(&self) -> &AppliedState {
        &self.applied
    }

    pub fn writer(&self) -> &W {
        &self.writer
    }

    /// Brings the maps to what `snapshot` says.
    pub fn sync(&mut self, snapshot: &Snapshot) -> Result<SyncReport, DataplaneError> {
        let started = Instant::now();
        let built = model::build(snapshot, &self.config);
        let plan = self
            .planner
            .plan(&self.applied, &built.state, self.writer.capacity());
        if let Err(error) = self.writer.apply(&plan.ops) {
            // Some ops may have landed: start the next sync from what the kernel holds.
            self.applied = self.writer.read()?;
            return Err(error);
        }
        self.applied.apply(&plan.ops);
        Ok(SyncReport {
            ops: plan.ops.len(),
            rejected: plan.rejected,
            warnings: built.warnings,
            duration: started.elapsed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};

    use super::*;
    use crate::dataplane::{Capacity, memory::MemoryMaps};

    fn demo_snapshot(endpoints: &[crate::lab::demo::DemoEndpoint]) -> Snapshot {
        let yaml = crate::lab::demo::manifests(endpoints);
        let mut snapshot = Snapshot::default();
        for doc in yaml.split("\n---\n") {
            let value: serde_yaml::Value = serde_yaml::from_str(doc).expect("demo yaml");
            match value.get("kind").and_then(|k| k.as_str()) {
                Some("Service") => snapshot
                    .services
                    .push(serde_yaml::from_value::<Service>(value).expect("service")),
                Some("EndpointSlice") => snapshot
                    .endpoint_slices
                    .push(serde_yaml::from_value::<EndpointSlice>(value).expect("slice")),
                other => panic!("unexpected kind {other:?}"),
            }
        }
        snapshot.node.name = Some("lab-node".into());
        snapshot.node.nodeport_addresses = vec!["198.18.0.1".parse().expect("ip")];
        snapshot
    }

    fn small_capacity() -> Capacity {
        Capacity {
            frontends: 64,
            backends: 64,
            selection_slots: 8192,
            services: 64,
            source_ranges: 64,
        }
    }

    #[test]
    fn same_snapshot_twice_writes_nothing_and_the_mirror_matches_the_maps() {
        use crate::lab::demo::DemoEndpoint;
        let mut reconciler =
            Reconciler::new(MemoryMaps::new(small_capacity()), ModelConfig::default())
                .expect("read empty maps");
        let snapshot = demo_snapshot(&[DemoEndpoint::ready(1), DemoEndpoint::ready(2)]);
        let first = reconciler.sync(&snapshot).expect("first sync");
        assert!(first.ops > 0, "the first sync writes the services");
        assert!(first.rejected.is_empty(), "{:?}", first.rejected);
        assert_eq!(
            reconciler.applied(),
            &reconciler.writer().read().expect("read"),
            "the mirror holds what the maps hold"
        );
        let second = reconciler.sync(&snapshot).expect("second sync");
        assert_eq!(
            second.ops, 0,
            "re-applying the same snapshot must write nothing"
        );

        // A change, then the mirror still matches, and a restarted agent adopting the maps
        // writes nothing for the same snapshot.
        let changed = demo_snapshot(&[DemoEndpoint::ready(2), DemoEndpoint::ready(3)]);
        assert!(reconciler.sync(&changed).expect("change").ops > 0);
        assert_eq!(
            reconciler.applied(),
            &reconciler.writer().read().expect("read")
        );
        assert!(
            reconciler.writer().check().is_empty(),
            "{:?}",
            reconciler.writer().check()
        );
        let maps = reconciler.writer().clone();
        let mut restarted = Reconciler::new(maps, ModelConfig::default()).expect("adopt");
        assert_eq!(
            restarted.sync(&changed).expect("adopting sync").ops,
            0,
            "a restarted agent adopting the maps writes only the difference"
        );
    }

    #[test]
    fn services_that_do_not_fit_are_rejected_whole() {
        use crate::lab::demo::DemoEndpoint;
        // Room for one service's frontends only: the rest is rejected, nothing half-written.
        let capacity = Capacity {
            frontends: 2,
            ..small_capacity()
        };
        let mut reconciler = Reconciler::new(MemoryMaps::new(capacity), ModelConfig::default())
            .expect("read empty maps");
        let report = reconciler
            .sync(&demo_snapshot(&[DemoEndpoint::ready(1)]))
            .expect("sync within capacity");
        assert!(
            !report.rejected.is_empty(),
            "my-app-service has 4 frontends and cannot fit in 2"
        );
        assert_eq!(
            reconciler.applied(),
            &reconciler.writer().read().expect("read")
        );
        assert!(reconciler.writer().check().is_empty());
    }
}
