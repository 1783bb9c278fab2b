//! One sync: snapshot → model → diff → map writer, by level. The same snapshot twice writes
//! nothing; a failed write re-reads the maps so the next sync starts from the truth. Once a
//! plan's ops are written, the UDP flows it names as stale (endpoints that stopped serving)
//! are deleted.
//!
//! The model is kept between syncs ([`IncrementalModel`]) and rebuilds only the services
//! whose objects changed; a snapshot that changes no service port skips the diff.
//!
//! Ids are reused (the allocators hand out free ids), but AFFINITY remembers service and
//! backend ids for hours: after a sync that freed ids, and when adopting maps, the entries
//! naming an id the maps no longer hold are deleted, and no plan runs until that is done.
//! So an id is never handed out while an affinity entry may name it. (CONNTRACK entries
//! need no such care: a flow follows its entry only while its backend id still holds the
//! address and port it was sent to.)

use std::time::{Duration, Instant};

use crate::{
    dataplane::{
        AppliedState, DataplaneError, DeletedFlows, MapOp, MapWriter,
        applied::{MapChanges, count_changes},
    },
    diff::{Planner, RejectReason, unindexed_tables},
    model::{HealthChecks, IncrementalModel, ModelConfig, ServicePortName, Snapshot, Warning},
};

/// What one sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    /// Map operations written.
    pub ops: usize,
    /// The same operations by map and kind of change (added, updated, deleted).
    pub changes: MapChanges,
    /// Flow state deleted because a UDP service port's endpoint stopped serving.
    pub stale_flows: DeletedFlows,
    /// Services that did not fit, by name and reason; they are not in the maps (or keep
    /// what they had), and everything else is.
    pub rejected: Vec<(ServicePortName, RejectReason)>,
    /// Objects (or parts) the model skipped, with the reason.
    pub warnings: Vec<Warning>,
    /// The health checks the snapshot asks this node to serve (whether or not their
    /// services fit in the maps, as kube-proxy).
    pub health_checks: HealthChecks,
    /// AFFINITY entries deleted because they named a service or backend id the maps no
    /// longer hold.
    pub affinity_forgotten: usize,
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
    model: IncrementalModel,
    /// The maps hold all the model's state: the last plan was written whole and rejected
    /// nothing. Until a service port changes, there is nothing to plan.
    in_step: bool,
    /// AFFINITY may name ids the maps freed: forget those entries before the next plan.
    affinity_stale: bool,
}

impl<W: MapWriter> Reconciler<W> {
    /// Reads what the maps already hold: a restarted agent adopts them and writes only the
    /// difference. Before the datapath relies on them, it indexes the selection tables an
    /// older agent left without TABLE_MEMBERS entries, and forgets the affinity entries that
    /// name ids no longer in use.
    pub fn new(mut writer: W, config: ModelConfig) -> Result<Self, DataplaneError> {
        let mut applied = writer.read()?;
        let index: Vec<MapOp> = unindexed_tables(&applied, |_| true).collect();
        writer.apply(&index)?;
        applied.apply(&index);
        let mut reconciler = Self {
            writer,
            applied,
            planner: Planner::default(),
            config,
            model: IncrementalModel::default(),
            in_step: false,
            affinity_stale: true,
        };
        reconciler.forget_stale_affinity()?;
        Ok(reconciler)
    }

    /// Deletes the AFFINITY entries of services that are gone or naming backends that are:
    /// their ids may be handed out again.
    fn forget_stale_affinity(&mut self) -> Result<usize, DataplaneError> {
        let Self {
            writer, applied, ..
        } = self;
        let forgotten = writer.forget_affinity(&|key, value| {
            !applied.service_names.contains_key(&key.service_id)
                || !applied.backends.contains_key(&value.backend_id)
        })?;
        self.affinity_stale = false;
        Ok(forgotten)
    }

    pub fn applied(&self) -> &AppliedState {
        &self.applied
    }

    pub fn writer(&self) -> &W {
        &self.writer
    }

    #[cfg(test)]
    pub(crate) fn writer_mut(&mut self) -> &mut W {
        &mut self.writer
    }

    /// Brings the maps to what `snapshot` says.
    pub fn sync(&mut self, snapshot: &Snapshot) -> Result<SyncReport, DataplaneError> {
        let started = Instant::now();
        // A plan may hand out ids freed before: no affinity entry may name them any more.
        let mut affinity_forgotten = 0;
        if self.affinity_stale {
            affinity_forgotten += self.forget_stale_affinity()?;
        }
        let update = self.model.update(snapshot, &self.config);
        let health_checks = update.health_checks.clone();
        if self.in_step && update.changed.is_empty() {
            return Ok(SyncReport {
                warnings: update.warnings,
                health_checks,
                affinity_forgotten,
                duration: started.elapsed(),
                ..SyncReport::default()
            });
        }
        // In step, only the changed ports need a look; otherwise everything does.
        let plan = if self.in_step {
            self.planner.plan_changes(
                &self.applied,
                update.state,
                &update.changed,
                self.writer.capacity(),
            )
        } else {
            self.planner
                .plan(&self.applied, update.state, self.writer.capacity())
        };
        self.in_step = false;
        if let Err(error) = self.writer.apply(&plan.ops) {
            // Some ops may have landed: start the next sync from what the kernel holds.
            self.applied = self.writer.read()?;
            return Err(error);
        }
        let changes = count_changes(&self.applied, &plan.ops);
        self.applied.apply(&plan.ops);
        // After the ops: no selection table names an endpoint that stopped serving any more,
        // so no new flow goes back to one once its entries are gone.
        let stale_flows = match self.writer.delete_stale_flows(&plan.stale_flows) {
            Ok(deleted) => deleted,
            Err(error) => {
                // The next sync plans everything again and lists every UDP port for cleaning.
                self.planner.forget_serving();
                return Err(error);
            }
        };
        self.in_step = plan.rejected.is_empty();
        let warnings = update.warnings;
        let frees_ids = plan.ops.iter().any(|op| {
            matches!(
                op,
                MapOp::DeleteBackend { .. } | MapOp::DeleteServiceName { .. }
            )
        });
        if frees_ids {
            self.affinity_stale = true;
            affinity_forgotten += self.forget_stale_affinity()?;
        }
        Ok(SyncReport {
            ops: plan.ops.len(),
            changes,
            stale_flows,
            rejected: plan.rejected,
            warnings,
            health_checks,
            affinity_forgotten,
            duration: started.elapsed(),
        })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
    use serde_json::json;

    use super::*;
    use lb_common::map_names;

    use crate::dataplane::{
        MapCapacity,
        applied::Change,
        memory::{MemoryMaps, Violation},
    };

    /// The classic my-app example: a dual-stack LoadBalancer Service (ClusterIPs, a NodePort
    /// and a load-balancer IP: 4 frontends) with ready endpoints on the lab's `backends`.
    fn my_app_snapshot(backends: &[u8]) -> Snapshot {
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "my-app-service", "namespace": "default"},
            "spec": {
                "type": "LoadBalancer",
                "ipFamilyPolicy": "PreferDualStack",
                "ipFamilies": ["IPv4", "IPv6"],
                "clusterIP": "198.18.100.10",
                "clusterIPs": ["198.18.100.10", "2001:2:0:100::10"],
                "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080, "nodePort": 30080}],
            },
            "status": {"loadBalancer": {"ingress": [{"ip": "198.18.200.10"}]}},
        }))
        .expect("service");
        let slice = |family: &str, address: &dyn Fn(u8) -> String| -> EndpointSlice {
            let endpoints: Vec<_> = backends
                .iter()
                .map(|&k| json!({"addresses": [address(k)], "conditions": {"ready": true}, "nodeName": "lab-node"}))
                .collect();
            serde_json::from_value(json!({
                "metadata": {
                    "name": format!("my-app-service-{}", family.to_lowercase()),
                    "namespace": "default",
                    "labels": {"kubernetes.io/service-name": "my-app-service"},
                },
                "addressType": family,
                "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
                "endpoints": endpoints,
            }))
            .expect("slice")
        };
        let mut snapshot = Snapshot {
            services: vec![Arc::new(service)],
            endpoint_slices: vec![
                Arc::new(slice("IPv4", &|k| format!("198.18.{k}.2"))),
                Arc::new(slice("IPv6", &|k| format!("2001:2:0:{k}::2"))),
            ],
            ..Snapshot::default()
        };
        snapshot.node.name = Some("lab-node".into());
        snapshot.node.nodeport_addresses = vec!["198.18.0.1".parse().expect("ip")];
        snapshot
    }

    /// Room for the tests' few services.
    pub(in crate::agent) fn small_capacity() -> MapCapacity {
        MapCapacity {
            frontends: 64,
            backends: 64,
            selection_slots: 8192,
            services: 64,
            source_ranges: 64,
            ..MapCapacity::default()
        }
    }

    #[test]
    fn same_snapshot_twice_writes_nothing_and_the_mirror_matches_the_maps() {
        let mut reconciler =
            Reconciler::new(MemoryMaps::new(small_capacity()), ModelConfig::default())
                .expect("read empty maps");
        let snapshot = my_app_snapshot(&[1, 2]);
        let first = reconciler.sync(&snapshot).expect("first sync");
        assert!(first.ops > 0, "the first sync writes the services");
        assert_eq!(
            first.changes.values().sum::<u64>(),
            first.ops as u64,
            "every op is counted once by map and change: {:?}",
            first.changes
        );
        assert!(
            first
                .changes
                .keys()
                .all(|(_, change)| *change == Change::Added),
            "the first sync over empty maps only adds: {:?}",
            first.changes
        );
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
        let changed = my_app_snapshot(&[2, 3]);
        let report = reconciler.sync(&changed).expect("change");
        assert!(report.ops > 0);
        for map in [map_names::BACKENDS, map_names::FRONTENDS] {
            assert!(
                report.changes.contains_key(&(map, Change::Updated))
                    || report.changes.contains_key(&(map, Change::Deleted)),
                "replacing a backend changes {map} entries already there: {:?}",
                report.changes
            );
        }
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

    /// ClusterIP Services `(name, last octet of 198.18.100.x, backends 198.18.k.2)` on
    /// TCP 80 -> 8080, each with `sessionAffinity: ClientIP`.
    fn sticky_services(services: &[(&str, u8, &[u8])]) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for (name, vip, backends) in services {
            let service: Service = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "default"},
                "spec": {
                    "clusterIP": format!("198.18.100.{vip}"),
                    "ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}],
                    "sessionAffinity": "ClientIP",
                },
            }))
            .expect("service");
            let endpoints: Vec<_> = backends
                .iter()
                .map(|k| json!({"addresses": [format!("198.18.{k}.2")], "conditions": {"ready": true}}))
                .collect();
            let slice: EndpointSlice = serde_json::from_value(json!({
                "metadata": {
                    "name": format!("{name}-1"),
                    "namespace": "default",
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": "IPv4",
                "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
                "endpoints": endpoints,
            }))
            .expect("slice");
            snapshot.services.push(Arc::new(service));
            snapshot.endpoint_slices.push(Arc::new(slice));
        }
        snapshot
    }

    fn service_id(applied: &AppliedState, name: &str) -> u32 {
        let text = format!("default/{name}:http");
        *applied
            .service_names
            .iter()
            .find(|(_, n)| **n == text)
            .unwrap_or_else(|| panic!("{text} has an id"))
            .0
    }

    fn backend_id(applied: &AppliedState, backend: u8) -> u32 {
        *applied
            .backends
            .iter()
            .find(|(_, b)| b.addr[..4] == [198, 18, backend, 2])
            .unwrap_or_else(|| panic!("198.18.{backend}.2 has an id"))
            .0
    }

    #[test]
    fn affinity_naming_freed_ids_is_forgotten_before_the_ids_are_handed_out_again() {
        let mut reconciler =
            Reconciler::new(MemoryMaps::new(small_capacity()), ModelConfig::default())
                .expect("read empty maps");
        let first = sticky_services(&[("keep", 30, &[1]), ("old", 31, &[2, 3, 4])]);
        reconciler.sync(&first).expect("first sync");
        let applied = reconciler.applied().clone();
        let (keep, old) = (service_id(&applied, "keep"), service_id(&applied, "old"));
        let old_backends: Vec<u32> = [2, 3, 4].map(|k| backend_id(&applied, k)).to_vec();
        // Clients the datapath pinned: one to each service.
        reconciler
            .writer
            .pin_client([2; 16], 4, keep, backend_id(&applied, 1));
        reconciler
            .writer
            .pin_client([3; 16], 4, old, old_backends[1]);

        // "old" goes: its service id and backend ids are free, and so is its client's entry.
        let report = reconciler
            .sync(&sticky_services(&[("keep", 30, &[1])]))
            .expect("deleting old");
        assert_eq!(
            report.affinity_forgotten, 1,
            "old's client entry is forgotten"
        );
        let remaining: Vec<u32> = reconciler
            .writer
            .affinity
            .keys()
            .map(|key| key.service_id)
            .collect();
        assert_eq!(remaining, vec![keep], "keep's client stays pinned");

        // New services get the freed ids (the premise of this test), and no affinity entry
        // sends their clients anywhere.
        let third = sticky_services(&[
            ("keep", 30, &[1]),
            ("new", 32, &[1]),
            ("other", 33, &[2, 3, 4]),
        ]);
        reconciler.sync(&third).expect("adding new and other");
        let applied = reconciler.applied().clone();
        assert_eq!(
            service_id(&applied, "new"),
            old,
            "new reuses old's service id"
        );
        assert_eq!(
            [2, 3, 4].map(|k| backend_id(&applied, k)).to_vec(),
            old_backends,
            "other's endpoints reuse old's backend ids"
        );
        assert!(
            reconciler
                .writer
                .affinity
                .keys()
                .all(|key| key.service_id != old),
            "an entry of old would pin new's clients: {:?}",
            reconciler.writer.affinity
        );
    }

    #[test]
    fn a_restarted_agent_forgets_affinity_naming_ids_no_longer_in_use() {
        let mut reconciler =
            Reconciler::new(MemoryMaps::new(small_capacity()), ModelConfig::default())
                .expect("read empty maps");
        reconciler
            .sync(&sticky_services(&[("keep", 30, &[1])]))
            .expect("sync");
        let applied = reconciler.applied().clone();
        let keep = service_id(&applied, "keep");
        let mut maps = reconciler.writer().clone();
        // Left by an agent killed before it could forget them: a deleted service's entry
        // and one naming a deleted backend.
        maps.pin_client([1; 16], 4, keep + 1, backend_id(&applied, 1));
        maps.pin_client([2; 16], 4, keep, backend_id(&applied, 1) + 1);
        maps.pin_client([3; 16], 4, keep, backend_id(&applied, 1));
        let restarted = Reconciler::new(maps, ModelConfig::default()).expect("adopt");
        let left: Vec<[u8; 16]> = restarted
            .writer()
            .affinity
            .keys()
            .map(|key| key.client_addr)
            .collect();
        assert_eq!(
            left,
            vec![[3; 16]],
            "only the entry naming ids in use stays"
        );
    }

    #[test]
    fn a_restarted_agent_indexes_tables_left_without_an_index() {
        let mut reconciler =
            Reconciler::new(MemoryMaps::new(small_capacity()), ModelConfig::default())
                .expect("read empty maps");
        let snapshot = my_app_snapshot(&[1, 2, 3]);
        reconciler.sync(&snapshot).expect("sync");
        // As an agent from before TABLE_MEMBERS left them: tables without an index.
        let mut maps = reconciler.writer().clone();
        let unindex: Vec<MapOp> = reconciler
            .applied()
            .selection
            .iter()
            .map(|(offset, slots)| MapOp::DeleteTableMembers {
                offset: *offset,
                slots: slots.clone(),
            })
            .collect();
        maps.apply(&unindex).expect("remove the index");
        assert!(
            maps.check()
                .iter()
                .any(|v| matches!(v, Violation::MemberNotIndexed { .. })),
            "the tables are not indexed: {:?}",
            maps.check()
        );
        let mut restarted = Reconciler::new(maps, ModelConfig::default()).expect("adopt");
        assert!(
            restarted.writer().check().is_empty(),
            "indexed on adoption: {:?}",
            restarted.writer().check()
        );
        assert_eq!(restarted.sync(&snapshot).expect("sync").ops, 0);
    }

    #[test]
    fn services_that_do_not_fit_are_rejected_whole() {
        // Room for one service's frontends only: the rest is rejected, nothing half-written.
        let capacity = MapCapacity {
            frontends: 2,
            ..small_capacity()
        };
        let mut reconciler = Reconciler::new(MemoryMaps::new(capacity), ModelConfig::default())
            .expect("read empty maps");
        let report = reconciler
            .sync(&my_app_snapshot(&[1]))
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

    /// The maps as names see them, without ids or table offsets: per service, each
    /// frontend with its value's meaning and the set of backends its table holds, and the
    /// source ranges; then every backend entry. Two maps serving the same thing look equal.
    fn by_name(applied: &AppliedState) -> Vec<String> {
        let name = |id: u32| {
            applied
                .service_names
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("unnamed id {id}"))
        };
        let mut lines = Vec::new();
        for (key, value) in &applied.frontends {
            let mut in_table: Vec<String> = applied
                .selection
                .get(&value.table_offset)
                .filter(|_| value.table_size > 0)
                .into_iter()
                .flat_map(|slots| slots.members().iter())
                .map(|id| format!("{:?}", applied.backends.get(id)))
                .collect();
            in_table.sort();
            in_table.dedup();
            lines.push(format!(
                "{} {key:?} kind {} flags {} affinity {} backends {} table {in_table:?}",
                name(value.service_id),
                value.kind,
                value.flags,
                value.affinity_timeout_secs,
                value.backend_count
            ));
        }
        for (key, prefix) in &applied.source_ranges {
            let id = u32::from_be_bytes(key.service_id_be);
            lines.push(format!(
                "{} range {:?}/{prefix} family {}",
                name(id),
                key.addr,
                key.family
            ));
        }
        for id in applied.service_names.keys() {
            lines.push(format!("service {}", name(*id)));
        }
        for backend in applied.backends.values() {
            lines.push(format!("backend {backend:?}"));
        }
        lines.sort();
        lines
    }

    #[test]
    fn after_any_changes_the_maps_equal_a_fresh_sync_of_the_last_snapshot() {
        use crate::model::random_world::RandomWorld;
        for seed in 0..12 {
            let mut world = RandomWorld::new(seed);
            let mut reconciler =
                Reconciler::new(MemoryMaps::new(small_capacity()), ModelConfig::default())
                    .expect("read empty maps");
            let mut kept_space_checked = 0;
            for step in 0..50 {
                let what = world.step();
                let case = format!("seed {seed}, step {step} ({what})");
                let snapshot = world.snapshot();
                let report = reconciler.sync(&snapshot).expect("sync");
                assert!(report.rejected.is_empty(), "{case}: {:?}", report.rejected);
                assert_eq!(
                    reconciler.sync(&snapshot).expect("again").ops,
                    0,
                    "{case}: the same snapshot again writes nothing"
                );

                let maps = reconciler.writer().read().expect("read");
                assert_eq!(reconciler.applied(), &maps, "{case}: mirror and maps");
                // The mirror's count is kept op by op; the maps' is summed afresh.
                assert_eq!(
                    reconciler.applied().table_member_count(),
                    maps.table_member_count(),
                    "{case}: TABLE_MEMBERS entries counted by the mirror"
                );
                assert!(
                    reconciler.writer().check().is_empty(),
                    "{case}: {:?}",
                    reconciler.writer().check()
                );
                // The free SELECTION space kept between scoped plans is the maps' own.
                if let Some(kept) = reconciler.planner.kept_selection() {
                    kept_space_checked += 1;
                    assert_eq!(
                        kept,
                        &crate::diff::free_selection(&maps, small_capacity()),
                        "{case}: the SELECTION space the planner keeps differs from the maps' free space"
                    );
                }
                let desired = crate::model::build(&snapshot, &ModelConfig::default()).state;
                let differences = crate::diff::differences(&maps, &desired, small_capacity());
                assert!(differences.is_empty(), "{case}: {differences:?}");
                let mut fresh =
                    Reconciler::new(MemoryMaps::new(small_capacity()), ModelConfig::default())
                        .expect("read empty maps");
                fresh.sync(&snapshot).expect("fresh sync");
                assert_eq!(
                    by_name(&maps),
                    by_name(fresh.applied()),
                    "{case}: the maps differ from a fresh sync of the same snapshot"
                );

                let mut restarted =
                    Reconciler::new(reconciler.writer().clone(), ModelConfig::default())
                        .expect("adopt");
                assert_eq!(
                    restarted.sync(&snapshot).expect("adopting sync").ops,
                    0,
                    "{case}: a restarted agent adopting the maps writes nothing"
                );
            }
            assert!(
                kept_space_checked > 10,
                "seed {seed}: the planner kept its SELECTION space after only {kept_space_checked} of 50 changes"
            );
        }
    }

    #[test]
    fn with_too_little_room_services_stay_rejected_whole_across_changes() {
        use crate::model::random_world::RandomWorld;
        for seed in 0..12 {
            let mut world = RandomWorld::new(seed);
            let capacity = MapCapacity {
                frontends: 6,
                ..small_capacity()
            };
            let mut reconciler = Reconciler::new(MemoryMaps::new(capacity), ModelConfig::default())
                .expect("read empty maps");
            for step in 0..50 {
                let what = world.step();
                let case = format!("seed {seed}, step {step} ({what})");
                let snapshot = world.snapshot();
                let before = by_name(reconciler.applied());
                let report = reconciler.sync(&snapshot).expect("sync");
                let maps = reconciler.writer().read().expect("read");
                assert!(
                    reconciler.writer().check().is_empty(),
                    "{case}: {:?}",
                    reconciler.writer().check()
                );
                // The admitted services are served exactly as the model asks: every
                // difference a fresh plan finds is about a rejected one.
                let desired = crate::model::build(&snapshot, &ModelConfig::default()).state;
                let rejected: Vec<String> =
                    report.rejected.iter().map(|(n, _)| n.to_string()).collect();
                for difference in crate::diff::differences(&maps, &desired, capacity) {
                    assert!(
                        rejected.contains(&difference.service),
                        "{case}: {difference} although the service was admitted"
                    );
                }
                for name in &rejected {
                    // Nothing half-written: a rejected service has no frontend or range it
                    // did not have before (it may have lost a frontend another service won;
                    // a backend it shares with an admitted service may change state).
                    let prefix = format!("{name} ");
                    let own = |line: &String| line.split(" table ").next().unwrap_or("").to_owned();
                    let had: Vec<String> = before.iter().map(own).collect();
                    for line in by_name(&maps).iter().filter(|l| l.starts_with(&prefix)) {
                        assert!(
                            had.contains(&own(line)),
                            "{case}: rejected {name} has new map contents: {line}"
                        );
                    }
                }
                let again = reconciler.sync(&snapshot).expect("again");
                if report.rejected.is_empty() {
                    assert_eq!(
                        again.ops, 0,
                        "{case}: the same snapshot again writes nothing"
                    );
                }
            }
        }
    }
}
