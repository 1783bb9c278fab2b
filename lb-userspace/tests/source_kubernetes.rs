//! The Kubernetes source against the in-process fake API server: after every scenario the
//! published snapshot holds exactly what the server holds (minus what kube-proxy's selector
//! leaves out).

#[path = "support/fake_apiserver.rs"]
mod fake_apiserver;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use fake_apiserver::FakeApiServer;
use futures::StreamExt as _;
use k8s_openapi::{
    api::{
        core::v1::{Node, Service, ServicePort, ServiceSpec},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use slicelb::{
    dataplane::{MapCapacity, MapWriter as _, memory::MemoryMaps},
    diff::Planner,
    model::{self, ModelConfig, NodeInfo, Snapshot},
    source::{
        Connection, KubernetesError, KubernetesOptions, SourceReceiver, SourceUpdate, UpdateCause,
        debounce::Debounce, kubernetes,
    },
};

/// Generous: a missing request must fail the test, not hang it, even on a loaded machine.
const WAIT: Duration = Duration::from_secs(30);
const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
const NODE_NAME: &str = "node-a";

fn meta(namespace: Option<&str>, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        labels: (!labels.is_empty()).then(|| {
            labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>()
        }),
        ..Default::default()
    }
}

fn service(name: &str, port: i32, labels: &[(&str, &str)]) -> Service {
    Service {
        metadata: meta(Some("shop"), name, labels),
        spec: Some(ServiceSpec {
            cluster_ip: Some(format!("198.18.0.{}", 1 + port % 200)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port,
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn slice(
    name: &str,
    service: &str,
    addresses: &[&str],
    extra_labels: &[(&str, &str)],
) -> EndpointSlice {
    let mut labels = vec![("kubernetes.io/service-name", service)];
    labels.extend_from_slice(extra_labels);
    EndpointSlice {
        metadata: meta(Some("shop"), name, &labels),
        address_type: "IPv4".into(),
        endpoints: addresses
            .iter()
            .map(|address| Endpoint {
                addresses: vec![(*address).to_owned()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    ..Default::default()
                }),
                node_name: Some(NODE_NAME.into()),
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(8080),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

fn node(zone: &str) -> Node {
    Node {
        metadata: meta(None, NODE_NAME, &[("topology.kubernetes.io/zone", zone)]),
        ..Default::default()
    }
}

fn node_info() -> NodeInfo {
    NodeInfo {
        name: Some(NODE_NAME.into()),
        zone: None,
        nodeport_addresses: vec![],
    }
}

fn options(server: &FakeApiServer, dir: &tempfile::TempDir) -> KubernetesOptions {
    let mut options =
        KubernetesOptions::new(Connection::Kubeconfig(server.write_kubeconfig(dir.path())));
    options.debounce = Debounce {
        quiet: Duration::from_millis(20),
        max_delay: Duration::from_millis(250),
    };
    options
}

fn has_label(meta: &ObjectMeta, key: &str) -> bool {
    meta.labels
        .as_ref()
        .is_some_and(|labels| labels.contains_key(key))
}

/// What the source should publish: the server's objects minus kube-proxy's selector.
fn expected(server: &FakeApiServer) -> (Vec<Arc<Service>>, Vec<Arc<EndpointSlice>>) {
    (
        server
            .objects::<Service>()
            .into_iter()
            .filter(|s| !has_label(&s.metadata, PROXY_NAME_LABEL))
            .map(Arc::new)
            .collect(),
        server
            .objects::<EndpointSlice>()
            .into_iter()
            .filter(|s| !has_label(&s.metadata, HEADLESS_LABEL))
            .map(Arc::new)
            .collect(),
    )
}

fn summary(services: &[Arc<Service>], slices: &[Arc<EndpointSlice>]) -> String {
    let name = |m: &ObjectMeta| {
        format!(
            "{}@{}",
            m.name.as_deref().unwrap_or("?"),
            m.resource_version.as_deref().unwrap_or("?")
        )
    };
    format!(
        "services {:?}, slices {:?}",
        services
            .iter()
            .map(|s| name(&s.metadata))
            .collect::<Vec<_>>(),
        slices.iter().map(|s| name(&s.metadata)).collect::<Vec<_>>()
    )
}

/// Waits until the published snapshot equals the server's state (and `extra` holds).
async fn wait_for_server_state(
    updates: &mut SourceReceiver,
    server: &FakeApiServer,
    case: &str,
    extra: impl Fn(&SourceUpdate) -> bool,
) -> Arc<SourceUpdate> {
    let (services, slices) = expected(server);
    let waited = tokio::time::timeout(WAIT, async {
        updates
            .wait_for(|update| {
                update.as_deref().is_some_and(|update| {
                    update.snapshot.services == services
                        && update.snapshot.endpoint_slices == slices
                        && extra(update)
                })
            })
            .await
            .map(|update| update.clone().expect("matched Some"))
    })
    .await;
    match waited {
        Ok(Ok(update)) => update,
        Ok(Err(_)) => panic!("{case}: the source stopped"),
        Err(_) => {
            let last = updates.borrow().clone();
            let published = last
                .as_deref()
                .map(|u| summary(&u.snapshot.services, &u.snapshot.endpoint_slices))
                .unwrap_or_else(|| "nothing".into());
            panic!(
                "{case}: within {WAIT:?} the source did not publish the server's state\n  server:    {}\n  published: {published}\n  requests: {:#?}",
                summary(&services, &slices),
                server.requests()
            )
        }
    }
}

/// Published snapshots run through the model and the diff into in-memory maps, as the agent
/// runs them into the kernel's.
struct Programmed {
    maps: MemoryMaps,
    planner: Planner,
}

impl Programmed {
    fn new() -> Self {
        Self {
            maps: MemoryMaps::new(MapCapacity::default()),
            planner: Planner::default(),
        }
    }

    /// Applies `snapshot`, checks the maps' invariants and that applying it again is a no-op.
    fn apply(&mut self, snapshot: &Snapshot, case: &str) {
        for round in ["first", "second"] {
            let built = model::build(snapshot, &ModelConfig::default());
            let applied = self.maps.read().expect("memory maps read");
            let plan = self
                .planner
                .plan(&applied, &built.state, self.maps.capacity());
            assert!(
                plan.rejected.is_empty(),
                "{case}: rejected {:?}",
                plan.rejected
            );
            if round == "second" {
                assert_eq!(
                    plan.ops,
                    [],
                    "{case}: the same snapshot again gives no map operation"
                );
            }
            self.maps.apply(&plan.ops).expect("memory maps apply");
            let violations = self.maps.check();
            assert!(
                violations.is_empty(),
                "{case}: the maps mislead packets: {violations:?}"
            );
        }
    }

    /// The service ports the maps hold, as `namespace/name:port`.
    fn service_ports(&self) -> Vec<String> {
        let applied = self.maps.read().expect("memory maps read");
        let mut names: Vec<_> = applied.service_names.into_values().collect();
        names.sort();
        names
    }
}

/// The service ports the server's selected services have, as `namespace/name:port`.
fn server_service_ports(server: &FakeApiServer) -> Vec<String> {
    let (services, _) = expected(server);
    let mut names: Vec<_> = services
        .iter()
        .flat_map(|service| {
            let meta = &service.metadata;
            service
                .spec
                .iter()
                .flat_map(|spec| spec.ports.iter().flatten())
                .map(move |port| {
                    let port_name = port.name.clone().unwrap_or_else(|| port.port.to_string());
                    format!(
                        "{}/{}:{port_name}",
                        meta.namespace.as_deref().unwrap_or("default"),
                        meta.name.as_deref().unwrap_or_default()
                    )
                })
        })
        .collect();
    names.sort();
    names
}

/// Programs `update` and checks that the maps serve exactly the server's service ports.
fn program_and_check(
    programmed: &mut Programmed,
    update: &SourceUpdate,
    server: &FakeApiServer,
    case: &str,
) {
    programmed.apply(&update.snapshot, case);
    assert_eq!(
        programmed.service_ports(),
        server_service_ports(server),
        "{case}: the maps hold the server's service ports"
    );
}

fn count_requests(server: &FakeApiServer, prefix: &str, watch: bool) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.starts_with(prefix) && r.contains("watch=true") == watch)
        .count()
}

async fn synced_source(
    server: &FakeApiServer,
    dir: &tempfile::TempDir,
) -> (SourceReceiver, Arc<SourceUpdate>) {
    let mut updates = kubernetes::spawn(options(server, dir), node_info())
        .await
        .expect("source starts");
    let first = wait_for_server_state(&mut updates, server, "initial list", |_| true).await;
    (updates, first)
}

#[tokio::test]
async fn initial_list_publishes_the_selected_objects_and_the_node_zone() {
    let server = FakeApiServer::start().await;
    server.apply(&service("web", 80, &[]));
    server.apply(&service("api", 81, &[]));
    server.apply(&service("other-proxy", 82, &[(PROXY_NAME_LABEL, "foo")]));
    server.apply(&slice("web-1", "web", &["198.18.1.1"], &[]));
    server.apply(&slice(
        "headless-1",
        "headless",
        &["198.18.1.2"],
        &[(HEADLESS_LABEL, "")],
    ));
    server.apply(&node("zone-1"));
    let dir = tempfile::tempdir().unwrap();

    let (_updates, first) = synced_source(&server, &dir).await;
    assert_eq!(
        first.cause,
        UpdateCause::Initial,
        "the first update is the initial list"
    );
    assert_eq!(
        first.generation, 1,
        "nothing is published before the stores are synced"
    );
    let names: Vec<_> = first
        .snapshot
        .services
        .iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        names,
        ["api", "web"],
        "sorted, and the other proxy's service is filtered out"
    );
    assert_eq!(
        first.snapshot.endpoint_slices.len(),
        1,
        "the headless slice is filtered out"
    );
    assert_eq!(
        first.snapshot.node.zone.as_deref(),
        Some("zone-1"),
        "zone from the Node's label"
    );
    assert_eq!(first.snapshot.node.name.as_deref(), Some(NODE_NAME));

    let requests = server.requests();
    for (collection, selector) in [
        (
            "/api/v1/services?",
            "!service.kubernetes.io/service-proxy-name",
        ),
        (
            "/apis/discovery.k8s.io/v1/endpointslices?",
            "!service.kubernetes.io/headless",
        ),
    ] {
        assert!(
            requests.iter().any(
                |r| r.starts_with(collection) && label_selector(r).as_deref() == Some(selector)
            ),
            "{collection} is selected server-side like kube-proxy ({selector}): {requests:#?}"
        );
    }
    assert!(
        requests.iter().any(|r| r.starts_with("/api/v1/nodes?")
            && r.contains("fieldSelector=metadata.name%3Dnode-a")),
        "only this node is watched: {requests:#?}"
    );
}

#[tokio::test]
async fn adds_updates_and_deletes_are_published() {
    let server = FakeApiServer::start().await;
    server.apply(&service("web", 80, &[]));
    server.apply(&slice("web-1", "web", &["198.18.1.1"], &[]));
    server.apply(&node("zone-1"));
    let dir = tempfile::tempdir().unwrap();
    let (mut updates, first) = synced_source(&server, &dir).await;
    let mut programmed = Programmed::new();
    program_and_check(&mut programmed, &first, &server, "initial");

    server.apply(&service("api", 81, &[]));
    server.apply(&slice("api-1", "api", &["198.18.1.5"], &[]));
    let added = wait_for_server_state(&mut updates, &server, "add", |_| true).await;
    assert_eq!(added.cause, UpdateCause::Changed, "an add is a change");
    program_and_check(&mut programmed, &added, &server, "add");

    server.apply(&slice("web-1", "web", &["198.18.1.1", "198.18.1.2"], &[]));
    server.apply(&service("web", 8080, &[]));
    let updated = wait_for_server_state(&mut updates, &server, "update", |_| true).await;
    program_and_check(&mut programmed, &updated, &server, "update");

    server
        .delete::<Service>(Some("shop"), "api")
        .expect("exists");
    server
        .delete::<EndpointSlice>(Some("shop"), "api-1")
        .expect("exists");
    let deleted = wait_for_server_state(&mut updates, &server, "delete", |_| true).await;
    program_and_check(&mut programmed, &deleted, &server, "delete");

    // A service taken over by another proxy leaves our selection: the watch reports it deleted.
    server.apply(&service("web", 8080, &[(PROXY_NAME_LABEL, "foo")]));
    let moved =
        wait_for_server_state(&mut updates, &server, "label leaves the selector", |_| true).await;
    assert!(
        moved.snapshot.services.is_empty(),
        "the relabelled service is gone"
    );

    server.apply(&node("zone-2"));
    wait_for_server_state(&mut updates, &server, "node zone change", |u| {
        u.snapshot.node.zone.as_deref() == Some("zone-2")
    })
    .await;
}

#[tokio::test]
async fn a_dropped_watch_resumes_from_its_resource_version() {
    let server = FakeApiServer::start().await;
    server.apply(&service("web", 80, &[]));
    let dir = tempfile::tempdir().unwrap();
    let (mut updates, _) = synced_source(&server, &dir).await;
    let lists_before = count_requests(&server, "/api/v1/services?", false);
    let watches_before = count_requests(&server, "/api/v1/services?", true);

    server.drop_watches();
    server.apply(&service("api", 81, &[]));
    server
        .delete::<Service>(Some("shop"), "web")
        .expect("exists");
    server.apply(&slice("api-1", "api", &["198.18.1.5"], &[]));
    wait_for_server_state(
        &mut updates,
        &server,
        "changes while the watch was down",
        |_| true,
    )
    .await;

    assert!(
        count_requests(&server, "/api/v1/services?", true) > watches_before,
        "the services watch was reopened: {:#?}",
        server.requests()
    );
    assert_eq!(
        count_requests(&server, "/api/v1/services?", false),
        lists_before,
        "resuming from the last resourceVersion needs no relist: {:#?}",
        server.requests()
    );
}

#[tokio::test]
async fn an_expired_resource_version_relists() {
    let server = FakeApiServer::start().await;
    server.apply(&service("web", 80, &[]));
    server.apply(&service("old", 81, &[]));
    server.apply(&slice("web-1", "web", &["198.18.1.1"], &[]));
    let dir = tempfile::tempdir().unwrap();
    let (mut updates, first) = synced_source(&server, &dir).await;
    let mut programmed = Programmed::new();
    program_and_check(&mut programmed, &first, &server, "initial");
    let lists_before = count_requests(&server, "/api/v1/services?", false);

    // The watches are down while history moves on and is compacted: resuming gets 410 Gone.
    server.hold_watches();
    server.apply(&service("web", 8080, &[]));
    server
        .delete::<Service>(Some("shop"), "old")
        .expect("exists");
    server.apply(&service("new", 82, &[]));
    server.apply(&slice("web-1", "web", &["198.18.1.3"], &[]));
    server.compact();
    server.release_watches();

    let relisted = wait_for_server_state(&mut updates, &server, "relist after 410", |_| true).await;
    assert!(
        count_requests(&server, "/api/v1/services?", false) > lists_before,
        "410 Gone made the services watcher list again: {:#?}",
        server.requests()
    );
    assert_ne!(relisted.cause, UpdateCause::Initial);
    program_and_check(&mut programmed, &relisted, &server, "after the relist");
}

#[tokio::test]
async fn a_burst_of_one_thousand_changes_converges() {
    let server = FakeApiServer::start().await;
    server.apply(&node("zone-1"));
    let dir = tempfile::tempdir().unwrap();
    let (mut updates, first) = synced_source(&server, &dir).await;

    let writes_started = tokio::time::Instant::now();
    for index in 0..400 {
        server.apply(&service(&format!("svc-{index:03}"), 1000 + index, &[]));
        server.apply(&slice(
            &format!("svc-{index:03}-a"),
            &format!("svc-{index:03}"),
            &["198.18.2.1"],
            &[],
        ));
    }
    for index in 0..100 {
        server.apply(&service(&format!("svc-{index:03}"), 2000 + index, &[]));
    }
    for index in 100..200 {
        server
            .delete::<Service>(Some("shop"), &format!("svc-{index:03}"))
            .expect("exists");
    }
    let writes_done = tokio::time::Instant::now();
    let last = wait_for_server_state(&mut updates, &server, "1000 changes", |_| true).await;
    let mut programmed = Programmed::new();
    programmed.apply(&first.snapshot, "before the burst");
    program_and_check(&mut programmed, &last, &server, "after the burst");
    assert_eq!(
        last.snapshot.services.len(),
        300,
        "400 created, 100 deleted"
    );
    assert_eq!(last.snapshot.endpoint_slices.len(), 400);
    // Measurements for the report, not assertions: timings depend on the machine.
    println!(
        "1000 changes were published as {} update(s); writes took {:?}; last publish {:?} after the last write; source delay (published - triggered) {:?}",
        last.generation - first.generation,
        writes_done - writes_started,
        last.published_at.saturating_duration_since(writes_done),
        last.published_at - last.triggered_at,
    );
}

#[tokio::test]
async fn the_list_is_paginated() {
    let server = FakeApiServer::start().await;
    for index in 0..1200 {
        server.apply(&service(&format!("svc-{index:04}"), 1000 + index, &[]));
    }
    let dir = tempfile::tempdir().unwrap();
    let (_updates, first) = synced_source(&server, &dir).await;
    assert_eq!(first.snapshot.services.len(), 1200, "all pages were read");
    let pages = server
        .requests()
        .iter()
        .filter(|r| r.starts_with("/api/v1/services?") && r.contains("continue="))
        .count();
    assert_eq!(
        pages, 2,
        "1200 services in pages of 500: two continued pages"
    );
}

#[tokio::test]
async fn snapshot_once_returns_the_synced_state() {
    let server = FakeApiServer::start().await;
    server.apply(&service("web", 80, &[]));
    server.apply(&node("zone-9"));
    let dir = tempfile::tempdir().unwrap();
    let snapshot = kubernetes::snapshot_once(options(&server, &dir), node_info())
        .await
        .expect("synced");
    assert_eq!(
        snapshot.services,
        server
            .objects::<Service>()
            .into_iter()
            .map(Arc::new)
            .collect::<Vec<_>>(),
        "the server's services"
    );
    assert_eq!(snapshot.node.zone.as_deref(), Some("zone-9"));
}

#[tokio::test]
async fn snapshot_once_reports_an_unreachable_server() {
    // A port that was just free: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\nusers: [{{name: u, user: {{}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n"
        ),
    )
    .unwrap();
    let mut options = KubernetesOptions::new(Connection::Kubeconfig(kubeconfig));
    options.initial_sync_timeout = Duration::from_secs(3);
    let error = kubernetes::snapshot_once(options, node_info())
        .await
        .expect_err("nothing listens");
    assert!(
        matches!(error, KubernetesError::InitialSyncTimedOut { .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.contains(&port.to_string()),
        "the server is named: {message}"
    );
    assert!(
        !message.contains("last watch error: none"),
        "the watch error is reported: {message}"
    );
}

#[tokio::test]
async fn a_missing_kubeconfig_is_reported_with_its_path() {
    let error = kubernetes::spawn(
        KubernetesOptions::new(Connection::Kubeconfig(
            "/nonexistent/slicelb-kubeconfig".into(),
        )),
        node_info(),
    )
    .await
    .expect_err("no such file");
    assert!(
        error
            .to_string()
            .contains("/nonexistent/slicelb-kubeconfig"),
        "{error}"
    );
}

/// A plain kube client for the fake, to check the fake's own contract.
async fn raw_client(server: &FakeApiServer, dir: &tempfile::TempDir) -> kube::Client {
    let kubeconfig =
        kube::config::Kubeconfig::read_from(server.write_kubeconfig(dir.path())).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// The fake also speaks streaming lists (sendInitialEvents), which kube offers as an option.
#[tokio::test]
async fn the_fake_serves_streaming_lists() {
    let server = FakeApiServer::start().await;
    server.apply(&service("web", 80, &[]));
    server.apply(&service("api", 81, &[]));
    let dir = tempfile::tempdir().unwrap();
    let api: kube::Api<Service> = kube::Api::all(raw_client(&server, &dir).await);
    let events = kube::runtime::watcher(
        api,
        kube::runtime::watcher::Config::default().streaming_lists(),
    );
    let mut events = std::pin::pin!(events);
    let mut initial = Vec::new();
    let done = tokio::time::timeout(WAIT, async {
        while let Some(event) = events.next().await {
            match event.expect("no watch error") {
                kube::runtime::watcher::Event::InitApply(service) => {
                    initial.push(service.metadata.name.unwrap())
                }
                kube::runtime::watcher::Event::InitDone => return,
                _ => {}
            }
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "no initial-events-end bookmark within {WAIT:?}: {:#?}",
        server.requests()
    );
    initial.sort();
    assert_eq!(
        initial,
        ["api", "web"],
        "initial events list the current objects"
    );
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.contains("sendInitialEvents=true"))
    );
}

#[tokio::test]
async fn the_periodic_resync_republishes_the_same_state() {
    let server = FakeApiServer::start().await;
    server.apply(&service("web", 80, &[]));
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(&server, &dir);
    options.resync_every = Duration::from_millis(200);
    let mut updates = kubernetes::spawn(options, node_info())
        .await
        .expect("source starts");
    let first = wait_for_server_state(&mut updates, &server, "initial list", |_| true).await;
    let resynced = wait_for_server_state(&mut updates, &server, "resync", |u| {
        u.cause == UpdateCause::Resync
    })
    .await;
    assert_eq!(
        resynced.snapshot, first.snapshot,
        "a resync republishes the unchanged state"
    );
    assert!(resynced.generation > first.generation);
}

/// The fake's own contract, through kube's raw watch: timeoutSeconds ends the stream,
/// bookmarks arrive, and an expired resourceVersion gets the in-stream 410 ERROR event.
#[tokio::test]
async fn the_fake_speaks_raw_watch_semantics() {
    use kube::api::{WatchEvent, WatchParams};
    let server = FakeApiServer::start().await;
    let first_version = server.apply(&service("web", 80, &[]));
    let dir = tempfile::tempdir().unwrap();
    let api: kube::Api<Service> = kube::Api::all(raw_client(&server, &dir).await);

    // Resume before the update: it is replayed, bookmarks follow, and the stream ends by timeout.
    server.apply(&service("web", 81, &[]));
    let events: Vec<_> = tokio::time::timeout(WAIT, async {
        let stream = api
            .watch(
                &WatchParams::default().timeout(2),
                &first_version.to_string(),
            )
            .await
            .expect("watch starts");
        stream.collect::<Vec<_>>().await
    })
    .await
    .expect("timeoutSeconds=2 ends the stream");
    let kinds: Vec<_> = events
        .iter()
        .map(|event| match event {
            Ok(WatchEvent::Modified(s)) => format!(
                "MODIFIED {}",
                s.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port
            ),
            Ok(WatchEvent::Bookmark(_)) => "BOOKMARK".to_owned(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("MODIFIED 81"),
        "history replayed: {kinds:?}"
    );
    assert!(
        kinds.iter().skip(1).all(|kind| kind == "BOOKMARK") && kinds.len() > 1,
        "then bookmarks: {kinds:?}"
    );

    // Compacted: the real server's answer to an old resourceVersion.
    server.compact();
    let events: Vec<_> = tokio::time::timeout(WAIT, async {
        let stream = api
            .watch(&WatchParams::default(), &first_version.to_string())
            .await
            .expect("a watch on an expired version still starts (200 OK)");
        stream.collect::<Vec<_>>().await
    })
    .await
    .expect("the stream ends after the error");
    match events.as_slice() {
        [Ok(WatchEvent::Error(status))] => {
            assert_eq!(status.code, 410, "Gone: {status:?}");
            assert_eq!(status.reason, "Expired");
        }
        other => panic!("expected one in-stream 410 ERROR, got {other:?}"),
    }
}

/// With a proxy name, only the Services labelled with it are listed (issue #14: unlabelled
/// ones were listed and served too). Slices are selected as kube-proxy selects them, whatever
/// their proxy label: the model uses those of the Services it serves.
#[tokio::test]
async fn a_named_proxy_lists_only_the_services_labelled_with_its_name() {
    let server = FakeApiServer::start().await;
    server.apply(&service("plain", 80, &[]));
    server.apply(&service("ours", 81, &[(PROXY_NAME_LABEL, "slicelb")]));
    server.apply(&service("theirs", 82, &[(PROXY_NAME_LABEL, "other")]));
    server.apply(&slice("ours-1", "ours", &["198.18.1.1"], &[]));
    server.apply(&slice(
        "headless-1",
        "headless",
        &["198.18.1.2"],
        &[(HEADLESS_LABEL, "")],
    ));
    let dir = tempfile::tempdir().unwrap();
    let options = options(&server, &dir).with_proxy_name(Some("slicelb"));
    let snapshot = kubernetes::snapshot_once(options, node_info())
        .await
        .expect("synced");
    let names: Vec<_> = snapshot
        .services
        .iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["ours"], "only our Services are listed");
    let slices: Vec<_> = snapshot
        .endpoint_slices
        .iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(
        slices,
        ["ours-1"],
        "a slice without our label is kept, the headless slice left out"
    );
    let requests = server.requests();
    assert!(
        requests.iter().any(|r| r.starts_with("/api/v1/services?")
            && label_selector(r).as_deref()
                == Some("service.kubernetes.io/service-proxy-name=slicelb")),
        "Services selected by our name: {requests:#?}"
    );
}

fn label_selector(request: &str) -> Option<String> {
    fake_apiserver::query_param(request, "labelSelector")
}

/// This node's Node says whether load balancers should keep sending it traffic: a deletion
/// or the cluster autoscaler's taint make it ineligible, another taint does not, and no Node
/// of its name at all counts as ineligible (as kube-proxy).
#[tokio::test]
async fn the_nodes_deletion_and_autoscaler_taint_make_it_ineligible() {
    use k8s_openapi::{
        api::core::v1::{NodeSpec, Taint},
        apimachinery::pkg::apis::meta::v1::Time,
    };
    use model::NodeEligibility;

    let server = FakeApiServer::start().await;
    server.apply(&service("web", 80, &[]));
    let dir = tempfile::tempdir().unwrap();
    let (mut updates, first) = synced_source(&server, &dir).await;
    assert_eq!(
        first.snapshot.node_eligibility,
        NodeEligibility::NotFound,
        "no Node of this name"
    );

    let tainted = |key: &str| Node {
        spec: Some(NodeSpec {
            taints: Some(vec![Taint {
                key: key.into(),
                effect: "NoSchedule".into(),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..node("zone-1")
    };
    let deleting = Node {
        metadata: ObjectMeta {
            deletion_timestamp: Some(Time("2026-01-02T03:04:05Z".parse().unwrap())),
            ..node("zone-1").metadata
        },
        ..node("zone-1")
    };
    for (case, object, expected) in [
        ("a plain Node", node("zone-1"), NodeEligibility::Eligible),
        ("another taint", tainted("other"), NodeEligibility::Eligible),
        (
            "the autoscaler's taint",
            tainted("ToBeDeletedByClusterAutoscaler"),
            NodeEligibility::ToBeDeleted,
        ),
        (
            "the taint removed",
            node("zone-1"),
            NodeEligibility::Eligible,
        ),
        ("being deleted", deleting, NodeEligibility::BeingDeleted),
    ] {
        server.apply(&object);
        wait_for_server_state(&mut updates, &server, case, |update| {
            update.snapshot.node_eligibility == expected
        })
        .await;
    }
    server.delete::<Node>(None, NODE_NAME).expect("exists");
    wait_for_server_state(&mut updates, &server, "the Node deleted", |update| {
        update.snapshot.node_eligibility == NodeEligibility::NotFound
    })
    .await;
}
