//! Sources turn the world into [`crate::model::Snapshot`]s: Kubernetes, or a directory of manifests.
//!
//! # The one interface the agent consumes
//!
//! ```text
//! let mut updates = source::spawn(SourceConfig::from(&args.source), node).await?;
//! while updates.changed().await.is_ok() {               // Err: the source stopped
//!     let Some(update) = updates.borrow_and_update().clone() else { continue };
//!     // update.snapshot: the whole world (never a delta); apply it by level.
//!     // update.triggered_at: when the first event folded into it arrived; with
//!     //   Instant::now() after programming: the programming latency.
//!     // update.problems: what went wrong since the previous update (log / count them,
//!     //   SourceProblem::kind() is a metric label).
//! }
//! ```
//!
//! - Both sources publish into a [`tokio::sync::watch`] channel of `Option<Arc<SourceUpdate>>`.
//!   `None` means "not synced yet": the Kubernetes source publishes nothing until every
//!   reflector store has listed once, so a half-listed cluster is never programmed.
//! - Every update holds a complete [`Snapshot`]; a slow consumer that misses intermediate
//!   updates loses nothing (level, not edge). Services and EndpointSlices are sorted by
//!   namespace and name, so equal worlds give equal snapshots.
//! - Updates may repeat an unchanged snapshot (periodic resync, a relist, a rejected manifest
//!   edit): applying it again must be a no-op, and it repairs any drift.
//! - The background tasks stop when every receiver is dropped.
//! - [`snapshot_once`] gives one synced snapshot and stops (for `slicelb check`).

pub mod debounce;
pub mod kubernetes;
pub mod manifest;
pub mod node;

use std::{fmt, path::PathBuf, sync::Arc, time::Duration};

use tokio::{sync::watch, time::Instant};

use crate::model::{NodeInfo, Snapshot};

pub use kubernetes::{Connection, InClusterPaths, KubernetesError, KubernetesOptions};
pub use manifest::{ManifestError, ManifestProblem, ManifestWarning, load_dir};

/// Where the agent gets its Services and EndpointSlices from.
#[derive(Clone, Debug)]
pub enum SourceConfig {
    /// YAML / JSON files in one directory (not recursive), watched with inotify.
    ManifestDir(PathBuf),
    /// A Kubernetes API server, through a kubeconfig file or the in-cluster service account.
    Kubernetes(KubernetesOptions),
}

impl SourceConfig {
    /// `--kubeconfig PATH` with kube-proxy's defaults for everything else.
    pub fn kubeconfig(path: impl Into<PathBuf>) -> Self {
        Self::Kubernetes(KubernetesOptions::new(Connection::Kubeconfig(path.into())))
    }

    /// `--in-cluster`: the pod's service account and `KUBERNETES_SERVICE_HOST/PORT`.
    pub fn in_cluster() -> Self {
        Self::Kubernetes(KubernetesOptions::new(Connection::InCluster(
            InClusterPaths::default(),
        )))
    }

    /// The Kubernetes source lists the Services of the proxy named `proxy_name`
    /// (`model::ModelConfig::proxy_name`); a manifest directory hands every object to the
    /// model, which picks them the same way.
    #[must_use]
    pub fn with_proxy_name(self, proxy_name: Option<&str>) -> Self {
        match self {
            Self::Kubernetes(options) => Self::Kubernetes(options.with_proxy_name(proxy_name)),
            Self::ManifestDir(dir) => Self::ManifestDir(dir),
        }
    }
}

/// One published state of the world.
#[derive(Debug)]
pub struct SourceUpdate {
    /// The whole world as the source sees it now.
    pub snapshot: Snapshot,
    /// Counts updates from 1, so a consumer can tell it skipped some (harmless: level-based).
    pub generation: u64,
    /// When the earliest event folded into this update arrived (for programming latency).
    pub triggered_at: Instant,
    /// When the source published it: `published_at - triggered_at` is the source's own delay
    /// (debounce and rebuild), the rest of the programming latency is the consumer's.
    pub published_at: Instant,
    /// Why this update was published.
    pub cause: UpdateCause,
    /// What went wrong since the previous update; the snapshot is still the best known state.
    pub problems: Vec<SourceProblem>,
}

/// Why a [`SourceUpdate`] was published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateCause {
    /// The first complete state after start.
    Initial,
    /// Objects changed (a burst of watch events, or files written).
    Changed,
    /// A watch was restarted with a fresh list (after a 410 Gone or a failed resume).
    Relisted,
    /// The periodic resync: same stores, published again so drift gets repaired.
    Resync,
    /// A manifest edit was rejected; the snapshot is the last good state (see `problems`).
    Rejected,
}

impl UpdateCause {
    /// Stable label for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Initial => "initial",
            Self::Changed => "changed",
            Self::Relisted => "relisted",
            Self::Resync => "resync",
            Self::Rejected => "rejected",
        }
    }
}

/// Something to report that did not stop the source.
#[derive(Debug, Clone)]
pub enum SourceProblem {
    /// A manifest object was skipped or is suspicious; the rest was applied.
    ManifestWarning(ManifestWarning),
    /// The manifest directory is invalid; the last good state stays in force.
    ManifestRejected(Arc<ManifestError>),
    /// A Kubernetes watch failed; it is retried with backoff and the store keeps its contents.
    WatchFailed {
        /// "services", "endpointslices" or "nodes".
        resource: &'static str,
        error: Arc<kube::runtime::watcher::Error>,
    },
    /// Problems were dropped because too many piled up between two updates.
    Truncated { dropped: usize },
}

impl SourceProblem {
    /// Every value of [`Self::kind`]: the metrics count each from zero.
    pub const KINDS: [&'static str; 4] = [
        "manifest_warning",
        "manifest_rejected",
        "watch_failed",
        "truncated",
    ];

    /// Stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::ManifestWarning(_) => "manifest_warning",
            Self::ManifestRejected(_) => "manifest_rejected",
            Self::WatchFailed { .. } => "watch_failed",
            Self::Truncated { .. } => "truncated",
        }
    }
}

impl fmt::Display for SourceProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ManifestWarning(warning) => write!(f, "{warning}"),
            Self::ManifestRejected(error) => {
                write!(f, "{error}; the last good state stays in force")
            }
            Self::WatchFailed { resource, error } => write!(
                f,
                "watch on {resource} failed: {}; retrying with backoff, the last listed state stays in force",
                error_chain(error.as_ref())
            ),
            Self::Truncated { dropped } => {
                write!(f, "{dropped} more problems were dropped (see the log)")
            }
        }
    }
}

/// An error and its causes, `outer: inner: innermost` (kube's errors hide the useful part,
/// such as a TLS verification failure, in their sources).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        let inner_text = inner.to_string();
        // Some errors repeat their source's text in their own message.
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        cause = inner.source();
    }
    text
}

/// Receiving end of a source: `None` until the first complete snapshot.
pub type SourceReceiver = watch::Receiver<Option<Arc<SourceUpdate>>>;

/// Why a source could not start (or could not produce its first snapshot).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Kubernetes(#[from] KubernetesError),
}

/// Starts `config`'s source in background tasks and returns the channel it publishes into.
///
/// A manifest directory is loaded before this returns (an invalid directory is an error: there
/// is no last good state yet); Kubernetes publishes once its stores are synced.
pub async fn spawn(config: SourceConfig, node: NodeInfo) -> Result<SourceReceiver, SourceError> {
    match config {
        SourceConfig::ManifestDir(dir) => {
            Ok(manifest::spawn(dir, node, DEFAULT_MANIFEST_DEBOUNCE)?)
        }
        SourceConfig::Kubernetes(options) => Ok(kubernetes::spawn(options, node).await?),
    }
}

/// One complete snapshot, then stop: what `slicelb check` needs.
pub async fn snapshot_once(config: SourceConfig, node: NodeInfo) -> Result<Snapshot, SourceError> {
    match config {
        SourceConfig::ManifestDir(dir) => {
            let (snapshot, warnings) = tokio::task::spawn_blocking(move || load_dir(&dir, node))
                .await
                .expect("the manifest loader does not panic")?;
            for warning in warnings {
                warning.log();
            }
            Ok(snapshot)
        }
        SourceConfig::Kubernetes(options) => Ok(kubernetes::snapshot_once(options, node).await?),
    }
}

/// Editors write a file in several steps (truncate, write, rename); one quiet 100 ms ends a burst.
pub const DEFAULT_MANIFEST_DEBOUNCE: debounce::Debounce = debounce::Debounce {
    quiet: Duration::from_millis(100),
    max_delay: Duration::from_secs(1),
};

/// Sorts by namespace and name, so that equal worlds give equal snapshots.
pub(crate) fn sort_snapshot(snapshot: &mut Snapshot) {
    fn key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> (&str, &str) {
        (
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
        )
    }
    snapshot
        .services
        .sort_by(|a, b| key(&a.metadata).cmp(&key(&b.metadata)));
    snapshot
        .endpoint_slices
        .sort_by(|a, b| key(&a.metadata).cmp(&key(&b.metadata)));
}

/// Numbers updates and sends them; shared by both sources.
pub(crate) struct Publisher {
    sender: watch::Sender<Option<Arc<SourceUpdate>>>,
    generation: u64,
}

impl Publisher {
    pub(crate) fn new() -> (Self, SourceReceiver) {
        let (sender, receiver) = watch::channel(None);
        (
            Self {
                sender,
                generation: 0,
            },
            receiver,
        )
    }

    pub(crate) fn publish(
        &mut self,
        mut snapshot: Snapshot,
        triggered_at: Instant,
        cause: UpdateCause,
        problems: Vec<SourceProblem>,
    ) {
        sort_snapshot(&mut snapshot);
        self.generation += 1;
        tracing::debug!(
            generation = self.generation,
            cause = cause.as_str(),
            services = snapshot.services.len(),
            endpoint_slices = snapshot.endpoint_slices.len(),
            "publishing snapshot"
        );
        self.sender.send_replace(Some(Arc::new(SourceUpdate {
            snapshot,
            generation: self.generation,
            triggered_at,
            published_at: Instant::now(),
            cause,
            problems,
        })));
    }

    /// Sorts `snapshot` and tells whether it equals the last published one.
    pub(crate) fn is_current(&self, snapshot: &mut Snapshot) -> bool {
        sort_snapshot(snapshot);
        self.sender
            .borrow()
            .as_ref()
            .is_some_and(|update| update.snapshot == *snapshot)
    }

    /// Resolves when every receiver is gone: the source's tasks should stop.
    pub(crate) async fn closed(&self) {
        self.sender.closed().await;
    }
}
