//! What the agent tells Prometheus and the kubelet: `/metrics` (Prometheus text format),
//! `/healthz` (the process is alive) and `/readyz` (the first full sync is in the maps and
//! no update has waited longer than `--healthz-timeout` since), served on `--metrics-addr`.
//!
//! Agent-side numbers (sync durations, programming latency, errors, rejected services) are
//! recorded as they happen through [`Metrics`]. Kernel counters are read only when Prometheus
//! scrapes, through the [`KernelStats`] seam, so an idle agent does no map reads.

mod kernel;
mod server;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::health::{ProxyHealth, SyncHealth};
pub use kernel::{KernelStats, MapFill};
pub use server::{DEFAULT_METRICS_ADDR, MetricsError, MetricsServer, parse_listen_addr, serve};

/// Every metric name starts with this, e.g. `slicelb_errors_total`.
pub const METRIC_PREFIX: &str = "slicelb";

/// Error kind counted when the kernel counters cannot be read during a scrape.
pub const ERROR_KIND_KERNEL_STATS: &str = "kernel_stats_read";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: Cow<'static, str>,
}

/// The agent's metrics. Cheap to clone: every clone records into the same registry, so the
/// sync loop, the watchers and the HTTP server can each hold one.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    sync_duration: Histogram,
    programming_latency: Histogram,
    errors: Family<ErrorLabels, Counter>,
    services_rejected: Gauge,
    ready_gauge: Gauge,
    health: SyncHealth,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("ready", &self.sync_health().ready())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// Registers every metric; kernel counters come from `stats` at each scrape, readiness
    /// from `health`.
    pub fn new(stats: Arc<dyn KernelStats>, health: SyncHealth) -> Self {
        let mut registry = Registry::with_prefix(METRIC_PREFIX);

        // 1 ms .. ~33 s: a sync of a large cluster takes seconds, a small one milliseconds.
        let sync_duration = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        registry.register(
            "sync_duration_seconds",
            "Time to rebuild the desired state from a snapshot, diff it and write the maps",
            sync_duration.clone(),
        );
        // 0.5 ms .. ~16 s: from a Kubernetes event arriving to its map writes being done.
        let programming_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "programming_latency_seconds",
            "Time from a Service or EndpointSlice event reaching the agent to the kernel maps \
             reflecting it",
            programming_latency.clone(),
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "errors",
            "Errors the agent recovered from, by kind",
            errors.clone(),
        );
        let services_rejected = Gauge::default();
        registry.register(
            "services_rejected",
            "Services left out of the maps at the last sync because a map had no room",
            services_rejected.clone(),
        );
        let ready_gauge = Gauge::default();
        registry.register(
            "ready",
            "1 while the first full sync is in the maps and no update waits too long (the same as \
             /readyz answering 200)",
            ready_gauge.clone(),
        );
        registry.register_collector(Box::new(kernel::KernelCollector::new(
            stats,
            errors.clone(),
        )));

        Self {
            inner: Arc::new(Inner {
                registry,
                sync_duration,
                programming_latency,
                errors,
                services_rejected,
                ready_gauge,
                health,
            }),
        }
    }

    /// Records how long one full sync (snapshot -> model -> diff -> map writes) took.
    pub fn observe_sync(&self, duration: Duration) {
        self.inner.sync_duration.observe(duration.as_secs_f64());
    }

    /// Records how long an event took to reach the kernel maps.
    pub fn observe_programming_latency(&self, duration: Duration) {
        self.inner
            .programming_latency
            .observe(duration.as_secs_f64());
    }

    /// Counts one error of `kind` (an error enum's variant name, in snake_case).
    pub fn count_error(&self, kind: impl Into<Cow<'static, str>>) {
        self.inner
            .errors
            .get_or_create(&ErrorLabels { kind: kind.into() })
            .inc();
    }

    /// How fresh the maps are now: what `/readyz` answers from.
    pub fn sync_health(&self) -> ProxyHealth {
        self.inner.health.now()
    }

    /// Sets how many services the last sync could not program for lack of map room.
    pub fn set_rejected(&self, services: usize) {
        self.inner
            .services_rejected
            .set(i64::try_from(services).unwrap_or(i64::MAX));
    }

    /// Everything in the Prometheus text format (version 0.0.4). Reads the kernel counters,
    /// so it blocks for as long as the map reads take.
    pub fn encode_text(&self) -> Result<String, std::fmt::Error> {
        self.inner
            .ready_gauge
            .set(i64::from(self.sync_health().ready()));
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.inner.registry)?;
        Ok(text)
    }
}
