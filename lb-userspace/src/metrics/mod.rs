//! What the agent tells Prometheus and the kubelet: `/metrics` (Prometheus text format),
//! `/healthz` (the process is alive) and `/readyz` (the first full sync is in the maps and
//! no update has waited longer than `--healthz-timeout` since), served on `--metrics-addr`.
//!
//! Agent-side numbers (sync durations, programming latency, map changes, errors, rejected
//! services) are recorded as they happen through [`Metrics`]. Kernel counters are read only
//! when Prometheus scrapes, through the [`KernelStats`] seam, so an idle agent does no map
//! reads; so are the process's own numbers (`process_*`, from /proc). The metric names are
//! listed in docs/metrics.md.

mod build_info;
mod kernel;
mod process;
mod programming;
mod server;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::dataplane::{
    DataplaneError, MapOp,
    applied::{Change, MapChanges},
};
use crate::health::{HealthError, ProxyHealth, SyncHealth};
use crate::source::SourceProblem;
pub use build_info::BuildInfo;
pub use kernel::{KernelStats, MapFill};
pub use programming::{LAST_CHANGE_TRIGGER_TIME, TriggerTimes};
pub use server::{DEFAULT_METRICS_ADDR, MetricsError, MetricsServer, parse_listen_addr, serve};

/// Every metric name of the agent's own starts with this, e.g. `slicelb_errors_total`; the
/// process's numbers use the names every Prometheus client gives them (`process_*`).
pub const METRIC_PREFIX: &str = "slicelb";

/// The `kind`s of `slicelb_errors_total` the metrics endpoint itself counts.
pub const ERROR_KIND_METRICS_ACCEPT: &str = "metrics_accept";
pub const ERROR_KIND_METRICS_ENCODE: &str = "metrics_encode";

/// Every error kind the agent counts, each an error enum's variant.
fn error_kinds() -> impl Iterator<Item = &'static str> {
    DataplaneError::KINDS
        .into_iter()
        .chain(SourceProblem::KINDS)
        .chain(HealthError::KINDS)
        .chain([
            ERROR_KIND_METRICS_ACCEPT,
            ERROR_KIND_METRICS_ENCODE,
            process::ERROR_KIND_PROC_READ,
        ])
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: Cow<'static, str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapChangeLabels {
    map: &'static str,
    change: &'static str,
}

/// What the metrics report beyond the defaults; the agent's flags set it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsOptions {
    /// One series per service port for its packets, bytes, new flows and socket
    /// translations (`--per-service-metrics`). Off, a large cluster's scrape stays small.
    pub per_service: bool,
}

impl Default for MetricsOptions {
    fn default() -> Self {
        Self { per_service: true }
    }
}

/// The agent's metrics. Cheap to clone: every clone records into the same registry, so the
/// sync loop, the watchers and the HTTP server can each hold one.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    sync_proxy_rules_duration: Histogram,
    programming_latency: Histogram,
    network_programming: Histogram,
    last_sync_success: Gauge<f64, std::sync::atomic::AtomicU64>,
    sync_proxy_rules_last: Gauge<f64, std::sync::atomic::AtomicU64>,
    map_changes: Family<MapChangeLabels, Counter>,
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

/// kube-proxy's `network_programming_duration_seconds` buckets (pkg/proxy/metrics): 0, then
/// 0.25 s and 0.5 s, every second to 59 s, every 5 s to 115 s, every 30 s to 5 minutes.
fn network_programming_buckets() -> impl Iterator<Item = f64> {
    let linear =
        |start: f64, width: f64, count: u32| (0..count).map(move |i| start + width * f64::from(i));
    std::iter::once(0.0)
        .chain(linear(0.25, 0.25, 2))
        .chain(linear(1.0, 1.0, 59))
        .chain(linear(60.0, 5.0, 12))
        .chain(linear(120.0, 30.0, 7))
}

impl Metrics {
    /// Registers every metric with the default options; kernel counters come from `stats`
    /// at each scrape, readiness from `health`.
    pub fn new(stats: Arc<dyn KernelStats>, health: SyncHealth) -> Self {
        Self::with_options(stats, health, MetricsOptions::default())
    }

    pub fn with_options(
        stats: Arc<dyn KernelStats>,
        health: SyncHealth,
        options: MetricsOptions,
    ) -> Self {
        let mut root = Registry::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        root.register_collector(Box::new(process::ProcessCollector::new(errors.clone())));
        let registry = root.sub_registry_with_prefix(METRIC_PREFIX);

        BuildInfo::current().register(registry);
        // kube-proxy's buckets, 1 ms .. ~16 s, so that its dashboards read ours.
        let sync_proxy_rules_duration = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "sync_proxy_rules_duration_seconds",
            "Time to rebuild the desired state from a snapshot, diff it and write the maps \
             (kube-proxy's sync_proxy_rules_duration_seconds)",
            sync_proxy_rules_duration.clone(),
        );
        // 0.5 ms .. ~16 s: from a Kubernetes event arriving to its map writes being done.
        let programming_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "programming_latency_seconds",
            "Time from a Service or EndpointSlice event reaching the agent to the kernel maps \
             reflecting it",
            programming_latency.clone(),
        );
        let network_programming = Histogram::new(network_programming_buckets());
        registry.register(
            "network_programming_duration_seconds",
            "Time from the change an EndpointSlice's endpoints.kubernetes.io/last-change-trigger-time \
             names (a pod or Service changed) to the kernel maps reflecting it, one observation \
             per changed slice (kube-proxy's network_programming_duration_seconds)",
            network_programming.clone(),
        );
        let last_sync_success = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "last_sync_success_timestamp_seconds",
            "Unix time at which a sync last brought the kernel maps to what the source says",
            last_sync_success.clone(),
        );
        let sync_proxy_rules_last = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "sync_proxy_rules_last_timestamp_seconds",
            "The last time the maps were successfully synced (kube-proxy's \
             sync_proxy_rules_last_timestamp_seconds; the same instant as \
             last_sync_success_timestamp_seconds)",
            sync_proxy_rules_last.clone(),
        );
        let map_changes = Family::<MapChangeLabels, Counter>::default();
        registry.register(
            "map_changes",
            "Entries the syncs wrote, by map and change (added, updated, deleted)",
            map_changes.clone(),
        );
        registry.register(
            "errors",
            "Errors the agent recovered from, by kind (the error's variant)",
            errors.clone(),
        );
        // Every known series from zero: `increase()` and `rate()` then see the first error
        // and the first change, and the families are there before anything happened.
        for kind in error_kinds() {
            errors
                .get_or_create(&ErrorLabels { kind: kind.into() })
                .inc_by(0);
        }
        for map in MapOp::MAPS {
            for change in Change::ALL {
                map_changes
                    .get_or_create(&MapChangeLabels {
                        map,
                        change: change.name(),
                    })
                    .inc_by(0);
            }
        }
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
            options,
        )));

        Self {
            inner: Arc::new(Inner {
                registry: root,
                sync_proxy_rules_duration,
                programming_latency,
                network_programming,
                last_sync_success,
                sync_proxy_rules_last,
                map_changes,
                errors,
                services_rejected,
                ready_gauge,
                health,
            }),
        }
    }

    /// Records how long one full sync (snapshot -> model -> diff -> map writes) took.
    pub fn observe_sync(&self, duration: Duration) {
        self.inner
            .sync_proxy_rules_duration
            .observe(duration.as_secs_f64());
    }

    /// Records a sync that brought the maps to what the source says, finished at `at`.
    pub fn sync_succeeded(&self, at: SystemTime) {
        let seconds = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        self.inner.last_sync_success.set(seconds);
        self.inner.sync_proxy_rules_last.set(seconds);
    }

    /// Counts the map entries one sync wrote.
    pub fn count_changes(&self, changes: &MapChanges) {
        for (&(map, change), &count) in changes {
            self.inner
                .map_changes
                .get_or_create(&MapChangeLabels {
                    map,
                    change: change.name(),
                })
                .inc_by(count);
        }
    }

    /// Records how long an event took to reach the kernel maps.
    pub fn observe_programming_latency(&self, duration: Duration) {
        self.inner
            .programming_latency
            .observe(duration.as_secs_f64());
    }

    /// Records one changed EndpointSlice's network programming latency (see
    /// [`TriggerTimes`]).
    pub fn observe_network_programming(&self, latency: Duration) {
        self.inner
            .network_programming
            .observe(latency.as_secs_f64());
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use lb_common::{
        FastPathCounter, ProtoCounter, Reason, ServiceCounters, SocketCounter, map_names,
    };
    use serde_json::json;

    use super::*;
    use crate::dataplane::DataplaneError;

    /// A kernel with two service ports that remembers whether their counters were read.
    #[derive(Default)]
    struct TwoServices {
        service_reads: Mutex<usize>,
    }

    impl KernelStats for TwoServices {
        fn service_counters(&self) -> Result<Vec<(String, ServiceCounters)>, DataplaneError> {
            *self.service_reads.lock().expect("lock") += 1;
            let counters = |packets| ServiceCounters {
                packets,
                ..ServiceCounters::default()
            };
            Ok(vec![
                ("default/web:http".to_owned(), counters(10)),
                ("kube-system/kube-dns:53".to_owned(), counters(7)),
            ])
        }
        fn reason_counters(&self) -> Result<[u64; Reason::COUNT as usize], DataplaneError> {
            Ok([0; Reason::COUNT as usize])
        }
        fn proto_counters(&self) -> Result<[u64; ProtoCounter::COUNT as usize], DataplaneError> {
            Ok([0; ProtoCounter::COUNT as usize])
        }
        fn socket_counters(&self) -> Result<[u64; SocketCounter::COUNT as usize], DataplaneError> {
            Ok([0; SocketCounter::COUNT as usize])
        }
        fn fast_path_counters(
            &self,
        ) -> Result<[u64; FastPathCounter::COUNT as usize], DataplaneError> {
            Ok([0; FastPathCounter::COUNT as usize])
        }
        fn conntrack_entries(&self) -> Result<u64, DataplaneError> {
            Ok(0)
        }
        fn map_fill(&self, _: Option<u64>) -> Result<Vec<MapFill>, DataplaneError> {
            Ok(Vec::new())
        }
    }

    fn metrics(per_service: bool) -> (Arc<TwoServices>, Metrics) {
        let kernel = Arc::new(TwoServices::default());
        let metrics = Metrics::with_options(
            kernel.clone(),
            SyncHealth::new(Duration::from_secs(60)),
            MetricsOptions { per_service },
        );
        (kernel, metrics)
    }

    fn text(metrics: &Metrics) -> String {
        metrics.encode_text().expect("encode")
    }

    /// Asserts that `text` has the sample line `line` (name, labels and value).
    fn assert_line(text: &str, line: &str) {
        assert!(
            text.lines().any(|l| l == line),
            "the scrape should have the line {line:?}:\n{text}"
        );
    }

    #[test]
    fn per_service_series_are_labelled_namespace_service_and_port_name() {
        let (_, metrics) = metrics(true);
        let text = text(&metrics);
        assert_line(
            &text,
            r#"slicelb_service_packets_total{namespace="default",service="web",port_name="http"} 10"#,
        );
        assert_line(
            &text,
            r#"slicelb_service_packets_total{namespace="kube-system",service="kube-dns",port_name="53"} 7"#,
        );
    }

    #[test]
    fn without_per_service_metrics_no_service_series_is_read_or_written() {
        let (kernel, metrics) = metrics(false);
        let text = text(&metrics);
        assert!(
            !text.contains("slicelb_service_"),
            "per-service series must be left out:\n{text}"
        );
        assert_eq!(
            *kernel.service_reads.lock().expect("lock"),
            0,
            "their counters must not even be read"
        );
        assert!(
            text.contains("slicelb_datapath_verdicts_total"),
            "the rest is still there:\n{text}"
        );
    }

    #[test]
    fn build_info_and_the_process_numbers_are_scraped() {
        let (_, metrics) = metrics(true);
        let text = text(&metrics);
        let info = BuildInfo::current();
        assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
        assert!(
            !info.kernel.is_empty() && !info.commit.is_empty(),
            "{info:?}"
        );
        assert_line(
            &text,
            &format!(
                r#"slicelb_build_info{{version="{}",commit="{}",kernel="{}"}} 1"#,
                info.version, info.commit, info.kernel
            ),
        );
        let value = |name: &str| -> f64 {
            let line = text
                .lines()
                .find(|l| l.split(' ').next() == Some(name))
                .unwrap_or_else(|| panic!("{name} is missing:\n{text}"));
            line.rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{line:?} has no number"))
        };
        // This test process has at least stdin..stderr open and some memory resident.
        assert!(value("process_open_fds") >= 3.0);
        assert!(value("process_resident_memory_bytes") > 0.0);
        assert!(value("process_cpu_seconds_total") >= 0.0);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs_f64();
        let started = value("process_start_time_seconds");
        assert!(
            started <= now + 1.0 && started > now - 86_400.0 * 365.0,
            "start time {started} should be a recent Unix time (now {now})"
        );
    }

    #[test]
    fn syncs_record_kube_proxy_names_changes_and_timestamps() {
        let (_, metrics) = metrics(true);
        metrics.observe_sync(Duration::from_millis(3));
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_765_000_000);
        metrics.sync_succeeded(at);
        metrics.count_changes(&MapChanges::from([
            ((map_names::FRONTENDS, Change::Added), 4),
            ((map_names::BACKENDS, Change::Deleted), 1),
        ]));
        metrics.count_changes(&MapChanges::from([(
            (map_names::FRONTENDS, Change::Added),
            2,
        )]));
        let text = text(&metrics);
        assert_line(
            &text,
            r#"slicelb_map_changes_total{map="FRONTENDS",change="added"} 6"#,
        );
        assert_line(
            &text,
            r#"slicelb_map_changes_total{map="BACKENDS",change="deleted"} 1"#,
        );
        assert_line(
            &text,
            "slicelb_last_sync_success_timestamp_seconds 1765000000.0",
        );
        assert_line(
            &text,
            "slicelb_sync_proxy_rules_last_timestamp_seconds 1765000000.0",
        );
        // kube-proxy's buckets: 1 ms doubling 15 times, up to 16.384 s.
        assert_line(
            &text,
            r#"slicelb_sync_proxy_rules_duration_seconds_bucket{le="0.004"} 1"#,
        );
        assert_line(
            &text,
            r#"slicelb_sync_proxy_rules_duration_seconds_bucket{le="0.002"} 0"#,
        );
        assert_line(
            &text,
            r#"slicelb_sync_proxy_rules_duration_seconds_bucket{le="16.384"} 1"#,
        );
    }

    #[test]
    fn network_programming_latency_runs_from_the_slices_trigger_time() {
        let (_, metrics) = metrics(true);
        let started = SystemTime::UNIX_EPOCH + Duration::from_secs(1_765_000_000);
        let mut tracker = TriggerTimes::new(started);
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {
                "name": "web-1",
                "namespace": "default",
                // started + 10 s
                "annotations": {LAST_CHANGE_TRIGGER_TIME: "2025-12-06T05:46:50Z"},
            },
            "addressType": "IPv4",
            "endpoints": [],
        }))
        .expect("slice");
        let synced_at = started + Duration::from_millis(12_500);
        for latency in tracker.synced(&[Arc::new(slice)], synced_at) {
            metrics.observe_network_programming(latency);
        }
        let text = text(&metrics);
        assert_line(
            &text,
            "slicelb_network_programming_duration_seconds_sum 2.5",
        );
        // kube-proxy's buckets: 0.25, 0.5, then whole seconds.
        assert_line(
            &text,
            r#"slicelb_network_programming_duration_seconds_bucket{le="2"} 0"#,
        );
        assert_line(
            &text,
            r#"slicelb_network_programming_duration_seconds_bucket{le="3"} 1"#,
        );
        assert_line(
            &text,
            r#"slicelb_network_programming_duration_seconds_bucket{le="300"} 1"#,
        );
    }
}
