//! The model kept up to date service by service: a snapshot in which one EndpointSlice
//! changed rebuilds one Service, not all of them. Still by level: every update is given the
//! whole snapshot and answers with the whole desired state, equal to what [`build`] gives
//! for that snapshot (the tests hold it to that).
//!
//! A Service is rebuilt when its object or the list of its slices changed. Objects are
//! recognised by pointer first (the Kubernetes reflector hands out the same `Arc` while an
//! object is unchanged) and by value otherwise (a reloaded manifest parses new objects that
//! may well be equal). A change of node or config rebuilds everything. When the services
//! are the previous snapshot's and only a few slices differ at their positions (what a
//! watch update gives), only those slices' services are looked at: no pass over every object.
//!
//! [`build`]: super::build

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use rustc_hash::{FxHashMap, FxHashSet};

use super::{
    DesiredFrontend, DesiredService, DesiredState, HealthChecks, ModelConfig, NodeInfo,
    ServiceName, ServicePortName, Snapshot, Warning,
    build::{FrontendClaim, build_service, conflict_warning, slice_owner, slices_by_service},
};

/// The desired state of the latest snapshot, and what is needed to update it cheaply.
#[derive(Debug, Default)]
pub struct IncrementalModel {
    /// The node and config the cached services were built with.
    inputs: Option<(NodeInfo, ModelConfig)>,
    /// By [`service_key`].
    services: FxHashMap<String, CachedService>,
    /// The warnings of services that have some, by [`service_key`]: in the order
    /// [`build`](super::build) visits services.
    warnings: BTreeMap<String, Vec<Warning>>,
    /// Numbers updates, to find the services an update no longer has.
    generation: u64,
    /// Each port's frontends before conflicts between services are settled.
    wanted_frontends: FxHashMap<ServicePortName, Vec<DesiredFrontend>>,
    /// Who wants each frontend, sorted by name; the first gets it. Nearly always one, so a
    /// sorted `Vec` (a `BTreeSet` would allocate a whole node for it).
    claims: FxHashMap<FrontendClaim, Vec<ServicePortName>>,
    /// Warnings about frontends a port lost to another, by port.
    conflicts: BTreeMap<ServicePortName, Vec<Warning>>,
    state: DesiredState,
    health_checks: HealthChecks,
    /// The previous snapshot's objects, in its order: when the services are the same
    /// pointers and only a few slices differ at their positions (an update from a watch),
    /// only those slices' services are looked at, without touching the other objects.
    previous_services: Vec<Arc<Service>>,
    previous_slices: Vec<Arc<EndpointSlice>>,
    /// Updates that took the changed-slices path (for the tests to see it is taken).
    #[cfg(test)]
    slice_updates: usize,
}

#[derive(Debug)]
struct CachedService {
    service: Arc<Service>,
    /// The service's slices, sorted by name.
    slices: Vec<Arc<EndpointSlice>>,
    ports: Vec<ServicePortName>,
    /// The last update that had this service.
    seen: u64,
}

/// What one update found.
#[derive(Debug)]
pub struct ModelUpdate<'a> {
    /// The whole desired state, as [`build`](super::build) would give it.
    pub state: &'a DesiredState,
    /// Every health check, as [`build`](super::build) would give them.
    pub health_checks: &'a HealthChecks,
    /// Service ports added, removed or changed since the previous update.
    pub changed: BTreeSet<ServicePortName>,
    /// Everything the model skipped, as [`build`](super::build) reports it.
    pub warnings: Vec<Warning>,
}

/// `namespace NUL name`: sorts as the pair does (NUL sorts before any character a name may
/// have), and is built in a reused buffer, so looking up an unchanged service allocates
/// nothing.
fn service_key(key: &mut String, namespace: &str, name: &str) {
    key.clear();
    key.push_str(namespace);
    key.push('\0');
    key.push_str(name);
}

/// The same object: the same pointer, or an equal value.
fn same<T: PartialEq>(a: &Arc<T>, b: &Arc<T>) -> bool {
    Arc::ptr_eq(a, b) || **a == **b
}

/// Equal apart from the frontends (which conflicts with other services may cut).
fn same_apart_from_frontends(a: &DesiredService, b: &DesiredService) -> bool {
    let DesiredService {
        protocol,
        frontends: _,
        backends,
        affinity_timeout_secs,
        source_ranges,
    } = a;
    *protocol == b.protocol
        && *backends == b.backends
        && *affinity_timeout_secs == b.affinity_timeout_secs
        && *source_ranges == b.source_ranges
}

fn claim_of(frontend: &DesiredFrontend, service: &DesiredService) -> FrontendClaim {
    (frontend.addr, frontend.port, service.protocol)
}

impl IncrementalModel {
    /// The desired state for `snapshot`, rebuilding only the services whose inputs changed.
    pub fn update(&mut self, snapshot: &Snapshot, config: &ModelConfig) -> ModelUpdate<'_> {
        let mut changed = BTreeSet::new();
        let same_inputs = self
            .inputs
            .as_ref()
            .is_some_and(|(node, known)| *node == snapshot.node && known == config);
        if !same_inputs {
            changed.extend(self.state.services.keys().cloned());
            *self = Self {
                inputs: Some((snapshot.node.clone(), config.clone())),
                ..Self::default()
            };
        }

        let mut touched_claims: FxHashSet<FrontendClaim> = FxHashSet::default();
        if same_inputs
            && self.update_changed_slices(snapshot, config, &mut changed, &mut touched_claims)
        {
            return self.finish_update(&touched_claims, changed);
        }
        let slices = slices_by_service(&snapshot.endpoint_slices);
        self.generation += 1;
        let generation = self.generation;
        let mut key = String::new();
        for service in &snapshot.services {
            let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
            let name = service.metadata.name.as_deref().unwrap_or_default();
            service_key(&mut key, namespace, name);
            let service_slices = slices
                .get(&(namespace, name))
                .map(Vec::as_slice)
                .unwrap_or_default();
            if let Some(cached) = self.services.get_mut(key.as_str()) {
                // A second object of the same name: the sources never give one.
                if cached.seen == generation {
                    continue;
                }
                cached.seen = generation;
                let unchanged = same(&cached.service, service)
                    && cached.slices.len() == service_slices.len()
                    && cached
                        .slices
                        .iter()
                        .zip(service_slices)
                        .all(|(a, b)| same(a, b));
                if unchanged {
                    continue;
                }
            }
            let service_slices = service_slices.iter().map(|s| (*s).clone()).collect();
            self.rebuild_service(
                &key,
                service,
                service_slices,
                snapshot,
                config,
                &mut changed,
                &mut touched_claims,
            );
        }
        let gone: Vec<String> = self
            .services
            .iter()
            .filter(|(_, cached)| cached.seen != generation)
            .map(|(key, _)| key.clone())
            .collect();
        for key in gone {
            self.warnings.remove(&key);
            if let Some(cached) = self.services.remove(&key) {
                self.health_checks.remove(&ServiceName::of(&cached.service));
                for name in &cached.ports {
                    self.remove_port(name, &mut touched_claims);
                    changed.insert(name.clone());
                }
            }
        }

        self.previous_services.clone_from(&snapshot.services);
        self.previous_slices.clone_from(&snapshot.endpoint_slices);
        self.finish_update(&touched_claims, changed)
    }

    /// Settles conflicts over the `touched` frontends and answers.
    fn finish_update(
        &mut self,
        touched: &FxHashSet<FrontendClaim>,
        mut changed: BTreeSet<ServicePortName>,
    ) -> ModelUpdate<'_> {
        self.settle_conflicts(touched, &mut changed);
        let warnings = self
            .warnings
            .values()
            .flatten()
            .chain(self.conflicts.values().flatten())
            .cloned()
            .collect();
        ModelUpdate {
            state: &self.state,
            health_checks: &self.health_checks,
            changed,
            warnings,
        }
    }

    /// The update for a snapshot whose services are the previous snapshot's (same
    /// pointers, same order) and whose slices differ from the previous ones at a few
    /// positions only: rebuilds the services those slices (old and new) belong to. Returns
    /// `false`, having changed nothing, when the snapshot is not of that shape.
    fn update_changed_slices(
        &mut self,
        snapshot: &Snapshot,
        config: &ModelConfig,
        changed: &mut BTreeSet<ServicePortName>,
        touched: &mut FxHashSet<FrontendClaim>,
    ) -> bool {
        let slices = &snapshot.endpoint_slices;
        if snapshot.services.len() != self.previous_services.len()
            || slices.len() != self.previous_slices.len()
            || !snapshot
                .services
                .iter()
                .zip(&self.previous_services)
                .all(|(a, b)| Arc::ptr_eq(a, b))
        {
            return false;
        }
        let moved: Vec<usize> = (0..slices.len())
            .filter(|&at| !Arc::ptr_eq(&slices[at], &self.previous_slices[at]))
            .collect();
        // Many moved slices (a re-read, a reordered list): the whole pass is as cheap.
        if moved.len() > (slices.len() / 8).max(16) {
            return false;
        }
        let mut owners: BTreeSet<(String, String)> = BTreeSet::new();
        for &at in &moved {
            for slice in [&self.previous_slices[at], &slices[at]] {
                if let Some((namespace, name)) = slice_owner(slice) {
                    owners.insert((namespace.to_owned(), name.to_owned()));
                }
            }
        }
        let mut key = String::new();
        for (namespace, name) in &owners {
            service_key(&mut key, namespace, name);
            // A slice of a service the snapshot does not have builds nothing.
            let Some(cached) = self.services.get(key.as_str()) else {
                continue;
            };
            let service = cached.service.clone();
            let mut service_slices = cached.slices.clone();
            for &at in &moved {
                // By value too: the cache may hold an older object equal to this one.
                let old = &self.previous_slices[at];
                service_slices.retain(|slice| !same(slice, old));
            }
            service_slices.extend(
                moved
                    .iter()
                    .map(|&at| &slices[at])
                    .filter(|slice| slice_owner(slice) == Some((namespace.as_str(), name.as_str())))
                    .cloned(),
            );
            // As `slices_by_service` orders them.
            service_slices.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
            let unchanged = cached.slices.len() == service_slices.len()
                && cached
                    .slices
                    .iter()
                    .zip(&service_slices)
                    .all(|(a, b)| same(a, b));
            if unchanged {
                continue;
            }
            self.rebuild_service(
                &key,
                &service,
                service_slices,
                snapshot,
                config,
                changed,
                touched,
            );
        }
        for at in moved {
            self.previous_slices[at] = slices[at].clone();
        }
        #[cfg(test)]
        {
            self.slice_updates += 1;
        }
        true
    }

    /// Builds the service under `key` from `service` and its `slices` (sorted by name),
    /// replacing its old ports.
    #[expect(
        clippy::too_many_arguments,
        reason = "the update's state is threaded through both passes"
    )]
    fn rebuild_service(
        &mut self,
        key: &str,
        service: &Arc<Service>,
        slices: Vec<Arc<EndpointSlice>>,
        snapshot: &Snapshot,
        config: &ModelConfig,
        changed: &mut BTreeSet<ServicePortName>,
        touched: &mut FxHashSet<FrontendClaim>,
    ) {
        let plain_slices: Vec<&EndpointSlice> = slices.iter().map(|s| &**s).collect();
        let built = build_service(service, &plain_slices, &snapshot.node, config);
        let (ports, warnings) = (built.ports, built.warnings);
        let name = ServiceName::of(service);
        match built.health_check {
            Some(check) => self.health_checks.insert(name, check),
            None => self.health_checks.remove(&name),
        };
        let old = self.services.remove(key);
        let seen = old.as_ref().map_or(self.generation, |cached| cached.seen);
        let old_ports = old.map(|cached| cached.ports).unwrap_or_default();
        for name in old_ports
            .iter()
            .filter(|old| ports.iter().all(|(name, _)| name != *old))
        {
            self.remove_port(name, touched);
            changed.insert(name.clone());
        }
        let names = ports.iter().map(|(name, _)| name.clone()).collect();
        for (name, desired) in ports {
            self.put_port(name, desired, changed, touched);
        }
        if warnings.is_empty() {
            self.warnings.remove(key);
        } else {
            self.warnings.insert(key.to_owned(), warnings);
        }
        self.services.insert(
            key.to_owned(),
            CachedService {
                service: service.clone(),
                slices,
                ports: names,
                seen,
            },
        );
    }

    fn remove_port(&mut self, name: &ServicePortName, touched: &mut FxHashSet<FrontendClaim>) {
        if let Some(service) = self.state.services.remove(name) {
            for frontend in self.wanted_frontends.remove(name).unwrap_or_default() {
                let claim = claim_of(&frontend, &service);
                if let Some(claimants) = self.claims.get_mut(&claim) {
                    claimants.retain(|claimant| claimant != name);
                    if claimants.is_empty() {
                        self.claims.remove(&claim);
                    }
                }
                touched.insert(claim);
            }
        }
        self.conflicts.remove(name);
    }

    /// Records `desired` (with every frontend it wants) for `name`, unless it is what the
    /// port already had.
    fn put_port(
        &mut self,
        name: ServicePortName,
        desired: DesiredService,
        changed: &mut BTreeSet<ServicePortName>,
        touched: &mut FxHashSet<FrontendClaim>,
    ) {
        let unchanged = self.state.services.get(&name).is_some_and(|old| {
            same_apart_from_frontends(old, &desired)
                && self.wanted_frontends.get(&name) == Some(&desired.frontends)
        });
        if unchanged {
            return;
        }
        self.remove_port(&name, touched);
        for frontend in &desired.frontends {
            let claim = claim_of(frontend, &desired);
            let claimants = self.claims.entry(claim).or_default();
            if let Err(at) = claimants.binary_search(&name) {
                claimants.insert(at, name.clone());
            }
            touched.insert(claim);
        }
        self.wanted_frontends
            .insert(name.clone(), desired.frontends.clone());
        self.state.services.insert(name.clone(), desired);
        changed.insert(name);
    }

    /// Gives each port the frontends it wins, for every port that wants a `touched`
    /// frontend or changed itself.
    fn settle_conflicts(
        &mut self,
        touched: &FxHashSet<FrontendClaim>,
        changed: &mut BTreeSet<ServicePortName>,
    ) {
        // The changed ports are settled in place; only the others that want a touched
        // frontend are copied out (in a cold sync every port changed: no copy at all). A
        // hash set finds them: in a cold sync a search of the ordered set per claim was a
        // tenth of the model's time.
        let changed_names: FxHashSet<&ServicePortName> = changed.iter().collect();
        let others: BTreeSet<ServicePortName> = touched
            .iter()
            .filter_map(|claim| self.claims.get(claim))
            .flatten()
            .filter(|name| !changed_names.contains(name))
            .cloned()
            .collect();
        drop(changed_names);
        for name in changed.iter() {
            self.settle_port(name);
        }
        for name in others {
            if self.settle_port(&name) {
                changed.insert(name);
            }
        }
    }

    /// Gives port `name` the frontends it wins; whether they changed.
    fn settle_port(&mut self, name: &ServicePortName) -> bool {
        let Some(service) = self.state.services.get_mut(name) else {
            return false;
        };
        let wanted = self.wanted_frontends.get(name).map(Vec::as_slice);
        let mut won = Vec::new();
        let mut lost = Vec::new();
        for frontend in wanted.unwrap_or_default() {
            let owner = self
                .claims
                .get(&claim_of(frontend, service))
                .and_then(|claimants| claimants.first())
                .unwrap_or(name);
            if owner == name {
                won.push(frontend.clone());
            } else if !frontend.short_circuit {
                // A short-circuit twin goes with its frontend, without a second warning.
                lost.push(conflict_warning(name, frontend, service.protocol, owner));
            }
        }
        let moved = service.frontends != won;
        if moved {
            service.frontends = won;
        }
        if lost.is_empty() {
            self.conflicts.remove(name);
        } else {
            self.conflicts.insert(name.clone(), lost);
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::{super::random_world::RandomWorld, *};
    use crate::model::build;

    #[test]
    fn every_update_equals_a_fresh_build_of_the_same_snapshot() {
        for seed in 0..20 {
            let mut world = RandomWorld::new(seed);
            let mut model = IncrementalModel::default();
            let config = ModelConfig::default();
            let mut previous = DesiredState::default();
            for step in 0..60 {
                let what = world.step();
                let snapshot = world.snapshot();
                let fresh = build(&snapshot, &config);
                let update = model.update(&snapshot, &config);
                let case = format!("seed {seed}, step {step} ({what})");
                assert_eq!(update.state, &fresh.state, "{case}: desired state");
                assert_eq!(
                    update.health_checks, &fresh.health_checks,
                    "{case}: health checks"
                );
                assert_eq!(update.warnings, fresh.warnings, "{case}: warnings");
                let names: BTreeSet<&ServicePortName> = previous
                    .services
                    .keys()
                    .chain(fresh.state.services.keys())
                    .collect();
                for name in names {
                    if previous.services.get(name) != fresh.state.services.get(name) {
                        assert!(
                            update.changed.contains(name),
                            "{case}: {name} changed but is not reported"
                        );
                    }
                }
                previous = fresh.state;
            }
        }
    }

    #[test]
    fn replaced_slices_rebuild_only_their_services_and_equal_a_fresh_build() {
        const SERVICE_LABEL: &str = "kubernetes.io/service-name";
        let config = ModelConfig::default();
        for seed in 0..8 {
            let world = RandomWorld::new(seed);
            let mut model = IncrementalModel::default();
            let mut snapshot = world.snapshot();
            model.update(&snapshot, &config);
            let slices = snapshot.endpoint_slices.len();
            if slices < 4 {
                continue;
            }
            let owner_of = |slice: &EndpointSlice| {
                slice
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|labels| labels.get(SERVICE_LABEL))
                    .cloned()
            };
            let other_owner = owner_of(&snapshot.endpoint_slices[2]);
            // One slice loses its endpoints, one moves to another service, one to a service
            // that does not exist: each a new object at the same position, as a watch gives.
            Arc::make_mut(&mut snapshot.endpoint_slices[0])
                .endpoints
                .clear();
            let labels = Arc::make_mut(&mut snapshot.endpoint_slices[1])
                .metadata
                .labels
                .get_or_insert_default();
            if let Some(owner) = other_owner {
                labels.insert(SERVICE_LABEL.into(), owner);
            }
            Arc::make_mut(&mut snapshot.endpoint_slices[3])
                .metadata
                .labels
                .get_or_insert_default()
                .insert(SERVICE_LABEL.into(), "no-such-service".into());

            let before = model.state.clone();
            let fast_before = model.slice_updates;
            let fresh = build(&snapshot, &config);
            let update = model.update(&snapshot, &config);
            let case = format!("seed {seed}");
            assert_eq!(update.state, &fresh.state, "{case}: desired state");
            assert_eq!(
                update.health_checks, &fresh.health_checks,
                "{case}: health checks"
            );
            assert_eq!(update.warnings, fresh.warnings, "{case}: warnings");
            for name in before.services.keys().chain(fresh.state.services.keys()) {
                if before.services.get(name) != fresh.state.services.get(name) {
                    assert!(
                        update.changed.contains(name),
                        "{case}: {name} changed but is not reported"
                    );
                }
            }
            assert_eq!(
                model.slice_updates,
                fast_before + 1,
                "{case}: three replaced slices should take the changed-slices path"
            );
        }
    }

    #[test]
    fn an_unchanged_snapshot_changes_nothing_even_when_re_read() {
        let world = RandomWorld::new(7);
        let mut model = IncrementalModel::default();
        let config = ModelConfig::default();
        let snapshot = world.snapshot();
        assert!(
            !model.update(&snapshot, &config).changed.is_empty(),
            "the first update adds every port"
        );
        assert!(
            model.update(&snapshot, &config).changed.is_empty(),
            "the same snapshot again changes nothing"
        );
        let mut reparsed = snapshot.clone();
        for service in &mut reparsed.services {
            *service = Arc::new((**service).clone());
        }
        assert!(
            model.update(&reparsed, &config).changed.is_empty(),
            "equal objects behind new pointers change nothing"
        );
    }
}
