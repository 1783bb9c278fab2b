//! Kubernetes as a source: kube-runtime reflectors on v1 Services, discovery.k8s.io/v1
//! EndpointSlices and this node's Node object (its zone, and whether it is being deleted or
//! tainted for deletion), reconciled by level.
//!
//! Nothing is published until every store has listed once. After that each burst of watch
//! events (coalesced by [`Debounce`]) rebuilds the whole snapshot from the stores; so does every
//! relist (after a 410 Gone) and a periodic resync.

use std::{
    io,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt as _;
use k8s_openapi::api::{
    core::v1::{Node, NodeSpec, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Resource,
    config::{KubeConfigOptions, Kubeconfig, KubeconfigError},
    runtime::{
        WatchStreamExt as _,
        reflector::{self, Store},
        watcher,
    },
};
use rustls_pki_types::{CertificateDer, pem::PemObject as _};
use serde::de::DeserializeOwned;
use tokio::{
    sync::mpsc,
    task::JoinSet,
    time::{Instant, MissedTickBehavior},
};

use super::{
    Publisher, SourceProblem, SourceReceiver, UpdateCause,
    debounce::{self, Debounce},
};
use crate::model::{LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME, NodeEligibility, NodeInfo, Snapshot};

/// The Node label that names the node's zone (topology-aware routing).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// The server-side selector for Services, as kube-proxy and every alternative proxy select
/// them (cmd/kube-proxy/app/server.go): without a proxy name, the Services without the
/// `service-proxy-name` label; with one, those labelled with it. The model applies the same
/// rule again ([`ModelConfig::serves`]); this keeps other proxies' Services out of memory.
///
/// [`ModelConfig::serves`]: crate::model::ModelConfig::serves
pub fn service_selector(proxy_name: Option<&str>) -> String {
    match proxy_name {
        None => format!("!{LABEL_SERVICE_PROXY_NAME}"),
        Some(name) => format!("{LABEL_SERVICE_PROXY_NAME}={name}"),
    }
}

/// The server-side selector for EndpointSlices, kube-proxy's: no slices of headless Services.
/// Not by proxy name (kube-proxy does not either: a slice written by hand or by another
/// controller need not carry its Service's labels); the model uses the slices of the
/// Services it serves only.
pub fn slice_selector() -> String {
    format!("!{LABEL_HEADLESS}")
}

/// Where the service account files live in a pod.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How to reach the API server.
#[derive(Clone, Debug)]
pub enum Connection {
    /// A kubeconfig file (its current context).
    Kubeconfig(PathBuf),
    /// The pod's service account, like client-go's `rest.InClusterConfig`.
    InCluster(InClusterPaths),
}

/// In-cluster configuration; overridable so that tests can stand in for the pod.
#[derive(Clone, Debug)]
pub struct InClusterPaths {
    /// Holds `token`, `ca.crt` and (optionally) `namespace`.
    pub service_account_dir: PathBuf,
    /// `None`: `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`, as client-go does.
    pub api_server: Option<(String, u16)>,
}

impl Default for InClusterPaths {
    fn default() -> Self {
        Self {
            service_account_dir: PathBuf::from(SERVICE_ACCOUNT_DIR),
            api_server: None,
        }
    }
}

/// Everything the Kubernetes source can be told.
#[derive(Clone, Debug)]
pub struct KubernetesOptions {
    pub connection: Connection,
    /// Server-side label selector for Services; empty selects every Service.
    pub service_selector: String,
    /// Server-side label selector for EndpointSlices; empty selects every slice.
    pub slice_selector: String,
    /// How bursts of watch events are coalesced into one rebuild.
    pub debounce: Debounce,
    /// A full rebuild and publish from the stores on this period, to repair drift.
    pub resync_every: Duration,
    /// How long [`snapshot_once`] waits for the stores to sync.
    pub initial_sync_timeout: Duration,
}

impl KubernetesOptions {
    /// The Services of the proxy named `proxy_name` (`model::ModelConfig::proxy_name`).
    #[must_use]
    pub fn with_proxy_name(mut self, proxy_name: Option<&str>) -> Self {
        self.service_selector = service_selector(proxy_name);
        self
    }

    /// kube-proxy's defaults.
    pub fn new(connection: Connection) -> Self {
        Self {
            connection,
            service_selector: service_selector(None),
            slice_selector: slice_selector(),
            debounce: Debounce {
                // Short: events of one change arrive back to back; a long wait is latency.
                quiet: Duration::from_millis(3),
                max_delay: Duration::from_millis(250),
            },
            resync_every: Duration::from_secs(300),
            initial_sync_timeout: Duration::from_secs(30),
        }
    }
}

/// Why the Kubernetes source could not start or sync.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error(
        "cannot use kubeconfig {path}: {source}; check the file and its current context",
        path = path.display()
    )]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: KubeconfigError,
    },
    #[error(
        "in-cluster configuration needs the environment variable {variable}: {source}; run inside a pod or use --kubeconfig"
    )]
    InClusterEnvironment {
        variable: &'static str,
        #[source]
        source: std::env::VarError,
    },
    #[error("KUBERNETES_SERVICE_PORT={value:?} is not a port number: {source}")]
    InClusterPort {
        value: String,
        #[source]
        source: std::num::ParseIntError,
    },
    #[error(
        "cannot read the service account file {path}: {source}; is a service account token mounted (automountServiceAccountToken)?",
        path = path.display()
    )]
    InClusterFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the in-cluster configuration from {dir} is unusable: {reason}; check that ca.crt is a PEM certificate",
        dir = dir.display()
    )]
    InClusterConfig { dir: PathBuf, reason: String },
    #[error("cannot create a Kubernetes client for {server}: {source}")]
    Client {
        server: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "no complete list of services, endpointslices and the node from {server} within {waited:?}; last watch error: {last_failure}; check that the server is reachable and that RBAC allows list/watch on services, endpointslices and nodes"
    )]
    InitialSyncTimedOut {
        server: String,
        waited: Duration,
        last_failure: String,
    },
}

/// Builds the client configuration that `connection` describes.
pub async fn client_config(connection: &Connection) -> Result<kube::Config, KubernetesError> {
    match connection {
        Connection::Kubeconfig(path) => {
            let kubeconfig_error = |source| KubernetesError::Kubeconfig {
                path: path.clone(),
                source,
            };
            let kubeconfig = Kubeconfig::read_from(path).map_err(kubeconfig_error)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(kubeconfig_error)
        }
        Connection::InCluster(paths) => in_cluster_config(paths).await,
    }
}

/// The in-cluster configuration, with the settings [`kube::Config::incluster_env`] makes (that
/// function reads only the fixed pod paths, so tests could not point it at their own
/// directory): the token and the CA are given as files, which kube re-reads as they rotate.
async fn in_cluster_config(paths: &InClusterPaths) -> Result<kube::Config, KubernetesError> {
    let (host, port) = match &paths.api_server {
        Some((host, port)) => (host.clone(), *port),
        None => {
            let variable = |variable| {
                std::env::var(variable)
                    .map_err(|source| KubernetesError::InClusterEnvironment { variable, source })
            };
            let host = variable("KUBERNETES_SERVICE_HOST")?;
            let port = variable("KUBERNETES_SERVICE_PORT")?;
            let port = port
                .parse()
                .map_err(|source| KubernetesError::InClusterPort {
                    value: port.clone(),
                    source,
                })?;
            (host, port)
        }
    };
    let server = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(address)) => format!("https://[{address}]:{port}"),
        _ => format!("https://{host}:{port}"),
    };

    let dir = &paths.service_account_dir;
    let token = dir.join("token");
    let ca = dir.join("ca.crt");
    for file in [&token, &ca] {
        check_readable(file)?;
    }
    let in_cluster_error = |reason: String| KubernetesError::InClusterConfig {
        dir: dir.clone(),
        reason,
    };
    let cluster_url = server
        .parse()
        .map_err(|error| in_cluster_error(format!("{server} is not a URL: {error}")))?;
    let root_cert = CertificateDer::pem_file_iter(&ca)
        .and_then(|certificates| {
            certificates
                .map(|certificate| certificate.map(|der| der.to_vec()))
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|error| in_cluster_error(format!("ca.crt: {error}")))?;
    if root_cert.is_empty() {
        return Err(in_cluster_error("ca.crt holds no certificate".to_owned()));
    }
    let mut config = kube::Config::new(cluster_url);
    config.default_namespace = tokio::fs::read_to_string(dir.join("namespace"))
        .await
        .map(|namespace| namespace.trim().to_owned())
        .unwrap_or_else(|_| "default".to_owned());
    config.root_cert = Some(root_cert);
    config.root_cert_file = Some(ca);
    config.auth_info.token_file = Some(token.to_string_lossy().into_owned());
    Ok(config)
}

fn check_readable(path: &Path) -> Result<(), KubernetesError> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|source| KubernetesError::InClusterFile {
            path: path.to_path_buf(),
            source,
        })
}

/// Starts the reflectors; the receiver gets the first snapshot once all of them listed.
pub async fn spawn(
    options: KubernetesOptions,
    node: NodeInfo,
) -> Result<SourceReceiver, KubernetesError> {
    let (receiver, _) = start(options, node).await?;
    Ok(receiver)
}

/// Waits for the first complete snapshot (at most `initial_sync_timeout`), then stops.
pub async fn snapshot_once(
    options: KubernetesOptions,
    node: NodeInfo,
) -> Result<Snapshot, KubernetesError> {
    let waited = options.initial_sync_timeout;
    let (mut receiver, started) = start(options, node).await?;
    let synced = tokio::time::timeout(waited, receiver.wait_for(Option::is_some)).await;
    match synced {
        Ok(Ok(update)) => {
            let update = update.clone().expect("waited for Some");
            Ok(update.snapshot.clone())
        }
        // Timed out, or the task ended (it only ends when receivers are gone).
        Ok(Err(_)) | Err(_) => Err(KubernetesError::InitialSyncTimedOut {
            server: started.server,
            waited,
            last_failure: started
                .last_failure
                .lock()
                .expect("not poisoned")
                .clone()
                .unwrap_or_else(|| "none".to_owned()),
        }),
    }
}

/// What the caller of [`start`] may want to report.
struct Started {
    server: String,
    last_failure: Arc<Mutex<Option<String>>>,
}

async fn start(
    options: KubernetesOptions,
    node: NodeInfo,
) -> Result<(SourceReceiver, Started), KubernetesError> {
    let config = client_config(&options.connection).await?;
    let server = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|source| KubernetesError::Client {
        server: server.clone(),
        source,
    })?;
    let (publisher, receiver) = Publisher::new();
    let last_failure = Arc::new(Mutex::new(None));
    tokio::spawn(run(client, options, node, publisher, last_failure.clone()));
    Ok((
        receiver,
        Started {
            server,
            last_failure,
        },
    ))
}

/// What a watcher task tells the snapshot rebuilder.
struct Trigger {
    at: Instant,
    kind: TriggerKind,
}

enum TriggerKind {
    Changed,
    Relisted,
    Failed(SourceProblem),
}

/// The stores the snapshot is built from.
struct Stores {
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    /// `None` without a node name: the zone then comes from `NodeInfo` as given.
    node: Option<Store<Node>>,
}

impl Stores {
    async fn wait_until_ready(&self) -> Result<(), reflector::store::WriterDropped> {
        self.services.wait_until_ready().await?;
        self.slices.wait_until_ready().await?;
        if let Some(node) = &self.node {
            node.wait_until_ready().await?;
        }
        Ok(())
    }

    fn snapshot(&self, node: &NodeInfo) -> Snapshot {
        let mut node = node.clone();
        // Without a node name there is no Node to read: nothing says the node is leaving.
        let mut node_eligibility = NodeEligibility::Eligible;
        if let Some(store) = &self.node {
            let object = store.state().first().cloned();
            if let Some(zone) = object
                .as_ref()
                .and_then(|object| object.metadata.labels.as_ref()?.get(ZONE_LABEL).cloned())
            {
                node.zone = Some(zone);
            }
            node_eligibility = object
                .as_deref()
                .map_or(NodeEligibility::NotFound, NodeEligibility::of);
        }
        Snapshot {
            services: self.services.state(),
            endpoint_slices: self.slices.state(),
            node,
            node_eligibility,
        }
    }
}

/// Most problems kept between two updates; a failing watch retries every few seconds.
const MAX_PENDING_PROBLEMS: usize = 100;

async fn run(
    client: Client,
    options: KubernetesOptions,
    node: NodeInfo,
    publisher: Publisher,
    last_failure: Arc<Mutex<Option<String>>>,
) {
    let started = Instant::now();
    let (trigger_sender, triggers) = mpsc::unbounded_channel();
    // Dropping the set (when this function returns) aborts the watchers.
    let mut watchers = JoinSet::new();
    let selected = |selector: &str| match selector {
        "" => watcher::Config::default(),
        selector => watcher::Config::default().labels(selector),
    };
    let stores = Stores {
        services: reflect(
            &mut watchers,
            Api::all(client.clone()),
            selected(&options.service_selector),
            "services",
            trigger_sender.clone(),
        ),
        slices: reflect(
            &mut watchers,
            Api::all(client.clone()),
            selected(&options.slice_selector),
            "endpointslices",
            trigger_sender.clone(),
        ),
        node: node.name.as_ref().map(|name| {
            let by_name = watcher::Config::default().fields(&format!("metadata.name={name}"));
            reflect(
                &mut watchers,
                Api::all(client.clone()),
                by_name,
                "nodes",
                trigger_sender.clone(),
            )
        }),
    };
    drop(trigger_sender);

    let mut rebuilder = SnapshotRebuilder {
        stores,
        node,
        publisher,
        triggers,
        pending: PendingProblems::default(),
    };
    if rebuilder.wait_until_synced(&last_failure).await {
        rebuilder.publish(started, UpdateCause::Initial);
        rebuilder.reconcile(&options).await;
    }
}

/// Rebuilds and publishes snapshots from the stores.
struct SnapshotRebuilder {
    stores: Stores,
    node: NodeInfo,
    publisher: Publisher,
    triggers: mpsc::UnboundedReceiver<Trigger>,
    pending: PendingProblems,
}

impl SnapshotRebuilder {
    /// Waits until every store has listed once; `false` if the source should stop instead.
    async fn wait_until_synced(&mut self, last_failure: &Mutex<Option<String>>) -> bool {
        let ready = async {
            loop {
                tokio::select! {
                    ready = self.stores.wait_until_ready() => return ready.is_ok(),
                    trigger = self.triggers.recv() => match trigger {
                        Some(Trigger { kind: TriggerKind::Failed(problem), .. }) => {
                            *last_failure.lock().expect("not poisoned") = Some(problem.to_string());
                            self.pending.push(problem);
                        }
                        Some(_) => {}
                        None => return false,
                    },
                }
            }
        };
        let ready = tokio::select! {
            () = self.publisher.closed() => false,
            ready = ready => ready,
        };
        // Whatever arrived before readiness is in the first snapshot already.
        while let Ok(trigger) = self.triggers.try_recv() {
            if let TriggerKind::Failed(problem) = trigger.kind {
                self.pending.push(problem);
            }
        }
        ready
    }

    fn publish(&mut self, triggered_at: Instant, cause: UpdateCause) {
        let mut snapshot = self.stores.snapshot(&self.node);
        // A Node status update changes nothing we use; everything else is always published.
        if cause == UpdateCause::Changed
            && self.pending.is_empty()
            && self.publisher.is_current(&mut snapshot)
        {
            return;
        }
        let problems = self.pending.take();
        self.publisher
            .publish(snapshot, triggered_at, cause, problems);
    }

    /// Publishes after each burst of events and on every resync tick, until all receivers are gone.
    async fn reconcile(&mut self, options: &KubernetesOptions) {
        let mut resync =
            tokio::time::interval_at(Instant::now() + options.resync_every, options.resync_every);
        resync.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                () = self.publisher.closed() => return,
                _ = resync.tick() => {
                    self.publish(Instant::now(), UpdateCause::Resync);
                    continue;
                }
                trigger = self.triggers.recv() => match trigger {
                    Some(trigger) => trigger,
                    None => return,
                },
            };
            let burst = debounce::gather(&mut self.triggers, first, options.debounce).await;
            let mut cause = None;
            let mut triggered_at = None;
            for trigger in burst {
                match trigger.kind {
                    TriggerKind::Failed(problem) => self.pending.push(problem),
                    TriggerKind::Changed => {
                        cause.get_or_insert(UpdateCause::Changed);
                        triggered_at.get_or_insert(trigger.at);
                    }
                    TriggerKind::Relisted => {
                        cause = Some(UpdateCause::Relisted);
                        triggered_at.get_or_insert(trigger.at);
                    }
                }
            }
            // A burst of failures alone changes nothing; they go out with the next update.
            if let (Some(cause), Some(triggered_at)) = (cause, triggered_at) {
                self.publish(triggered_at, cause);
            }
        }
    }
}

/// Problems waiting for the next update, bounded.
#[derive(Default)]
struct PendingProblems {
    problems: Vec<SourceProblem>,
    dropped: usize,
}

impl PendingProblems {
    fn push(&mut self, problem: SourceProblem) {
        if self.problems.len() < MAX_PENDING_PROBLEMS {
            self.problems.push(problem);
        } else {
            self.dropped += 1;
        }
    }

    fn is_empty(&self) -> bool {
        self.problems.is_empty() && self.dropped == 0
    }

    fn take(&mut self) -> Vec<SourceProblem> {
        let mut problems = std::mem::take(&mut self.problems);
        if self.dropped > 0 {
            problems.push(SourceProblem::Truncated {
                dropped: std::mem::take(&mut self.dropped),
            });
        }
        problems
    }
}

/// Drops what no snapshot needs before it is stored: managedFields (often the largest part of
/// an object); for the Node, everything but its metadata and taints (its status changes all
/// the time).
fn slim<K: Resource + 'static>(object: &mut K) {
    object.meta_mut().managed_fields = None;
    if let Some(node) = (object as &mut dyn std::any::Any).downcast_mut::<Node>() {
        node.spec = node.spec.take().map(|spec| NodeSpec {
            taints: spec.taints,
            ..NodeSpec::default()
        });
        node.status = None;
    }
}

/// Starts a reflector for `api` in `watchers`; its events become triggers.
fn reflect<K>(
    watchers: &mut JoinSet<()>,
    api: Api<K>,
    config: watcher::Config,
    resource: &'static str,
    triggers: mpsc::UnboundedSender<Trigger>,
) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(slim)
        .reflect(writer);
    watchers.spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            let kind = match event {
                Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => TriggerKind::Changed,
                Ok(watcher::Event::InitDone) => TriggerKind::Relisted,
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => continue,
                Err(error) => {
                    tracing::warn!(resource, "watch failed: {error}; retrying with backoff");
                    TriggerKind::Failed(SourceProblem::WatchFailed {
                        resource,
                        error: Arc::new(error),
                    })
                }
            };
            let trigger = Trigger {
                at: Instant::now(),
                kind,
            };
            if triggers.send(trigger).is_err() {
                return;
            }
        }
    });
    reader
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The settings kube's `incluster_env` makes: the token and the CA as files (which kube
    /// re-reads as they rotate), the namespace file's namespace, an IPv6 host in brackets.
    #[tokio::test]
    async fn in_cluster_config_gives_kube_the_files_it_reloads() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["kubernetes".into()]).unwrap();
        std::fs::write(dir.path().join("token"), "token").unwrap();
        std::fs::write(dir.path().join("ca.crt"), ca.cert.pem()).unwrap();
        std::fs::write(dir.path().join("namespace"), "kube-system\n").unwrap();
        let paths = InClusterPaths {
            service_account_dir: dir.path().to_path_buf(),
            api_server: Some(("2001:2::1".into(), 6443)),
        };
        let config = in_cluster_config(&paths).await.unwrap();
        assert_eq!(config.cluster_url.scheme_str(), Some("https"));
        assert_eq!(config.cluster_url.host(), Some("[2001:2::1]"));
        assert_eq!(config.cluster_url.port_u16(), Some(6443));
        assert_eq!(config.default_namespace, "kube-system");
        let token = dir.path().join("token");
        assert_eq!(config.auth_info.token_file.as_deref(), token.to_str());
        assert_eq!(
            config.root_cert_file.as_deref(),
            Some(dir.path().join("ca.crt").as_path())
        );
        assert_eq!(config.root_cert, Some(vec![ca.cert.der().to_vec()]));

        std::fs::write(dir.path().join("ca.crt"), "not a certificate").unwrap();
        let error = in_cluster_config(&paths).await.unwrap_err();
        assert!(
            matches!(error, KubernetesError::InClusterConfig { .. }),
            "a ca.crt without a certificate is refused: {error}"
        );
    }
}
