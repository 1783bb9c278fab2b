//! Kernel counters, read at scrape time through [`KernelStats`] and written out by a
//! prometheus-client [`Collector`].

use std::collections::BTreeMap;
use std::sync::Arc;

use lb_common::{FastPathCounter, ProtoCounter, Reason, ServiceCounters, SocketCounter};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;

use super::{ErrorLabels, MetricsOptions};
use crate::dataplane::DataplaneError;
use crate::model::ServicePortName;

/// How full one kernel map is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapFill {
    /// The map's name as in `lb_common::map_names` (e.g. `FRONTENDS`).
    pub map: &'static str,
    /// Entries (or, for SELECTION, slots) in use.
    pub used: u64,
    /// The most the map can hold.
    pub capacity: u64,
}

/// Reads the datapath's counters and map fill levels. The datapath implements it over the
/// pinned maps; tests use a fake. Called on every scrape, from a blocking thread.
pub trait KernelStats: Send + Sync {
    /// Per-service counters summed over all CPUs, each named `namespace/name:port` (a
    /// `ServicePortName`).
    fn service_counters(&self) -> Result<Vec<(String, ServiceCounters)>, DataplaneError>;
    /// REASON_STATS summed over all CPUs, indexed by `Reason as usize`.
    fn reason_counters(&self) -> Result<[u64; Reason::COUNT as usize], DataplaneError>;
    /// PROTO_STATS summed over all CPUs, indexed by `ProtoCounter as usize`.
    fn proto_counters(&self) -> Result<[u64; ProtoCounter::COUNT as usize], DataplaneError>;
    /// SOCKET_STATS summed over all CPUs, indexed by `SocketCounter as usize`.
    fn socket_counters(&self) -> Result<[u64; SocketCounter::COUNT as usize], DataplaneError>;
    /// FAST_PATH_STATS summed over all CPUs, indexed by `FastPathCounter as usize`.
    fn fast_path_counters(&self) -> Result<[u64; FastPathCounter::COUNT as usize], DataplaneError>;
    /// Entries in CONNTRACK now (both directions of a flow count), at most its capacity:
    /// one batched pass over its buckets, whose work the map's size bounds however fast
    /// flows come and go.
    fn conntrack_entries(&self) -> Result<u64, DataplaneError>;
    /// Fill levels of the maps the agent writes, and of CONNTRACK when the caller could
    /// count its entries (`conntrack_entries`, done once a scrape).
    fn map_fill(&self, conntrack_entries: Option<u64>) -> Result<Vec<MapFill>, DataplaneError>;
}

pub(super) struct KernelCollector {
    stats: Arc<dyn KernelStats>,
    errors: Family<ErrorLabels, Counter>,
    options: MetricsOptions,
}

impl std::fmt::Debug for KernelCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelCollector").finish_non_exhaustive()
    }
}

impl KernelCollector {
    pub(super) fn new(
        stats: Arc<dyn KernelStats>,
        errors: Family<ErrorLabels, Counter>,
        options: MetricsOptions,
    ) -> Self {
        Self {
            stats,
            errors,
            options,
        }
    }

    /// A family that cannot be read is left out of this scrape (a gap in the graph, not a
    /// false zero) and counted as an error of its kind.
    fn read<T>(&self, what: &str, result: Result<T, DataplaneError>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                tracing::warn!(%error, "metrics: could not read the kernel's {what}; skipped");
                self.errors
                    .get_or_create(&ErrorLabels {
                        kind: error.kind().into(),
                    })
                    .inc();
                None
            }
        }
    }
}

/// A service port's labels: `namespace`, `service`, `port_name` (its name, or its number
/// when unnamed). A name that is not `namespace/name:port` (never written by the agent) is
/// kept whole as the `service`, so its counters still show.
fn service_labels(name: &str) -> [String; 3] {
    match ServicePortName::parse(name) {
        Some(port) => [port.namespace, port.name, port.port],
        None => [String::new(), name.to_owned(), String::new()],
    }
}

/// One series per service port: Prometheus rejects a scrape that repeats a series, so
/// counters reported twice under one name (e.g. a name reused by a new service id) are
/// added up.
fn merge_by_name(
    services: Vec<(String, ServiceCounters)>,
) -> BTreeMap<[String; 3], ServiceCounters> {
    let mut merged = BTreeMap::<[String; 3], ServiceCounters>::new();
    for (name, counters) in services {
        let total = merged.entry(service_labels(&name)).or_default();
        total.packets = total.packets.saturating_add(counters.packets);
        total.bytes = total.bytes.saturating_add(counters.bytes);
        total.new_flows = total.new_flows.saturating_add(counters.new_flows);
        total.socket_translations = total
            .socket_translations
            .saturating_add(counters.socket_translations);
    }
    merged
}

/// The label names of the per-service metrics, in the order of [`service_labels`].
const SERVICE_LABEL_NAMES: [&str; 3] = ["namespace", "service", "port_name"];

/// A per-service metric: name, help, and which counter it reports.
type ServiceColumn = (&'static str, &'static str, fn(&ServiceCounters) -> u64);

/// One metric family with one label; `kind` is a counter or gauge.
fn encode_labelled(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    label: &'static str,
    values: impl IntoIterator<Item = (impl AsRef<str>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (label_value, value) in values {
        let labels = [(label, label_value.as_ref())];
        let family = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(family)?,
            _ => ConstGauge::new(value).encode(family)?,
        }
    }
    Ok(())
}

impl Collector for KernelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let services = if self.options.per_service {
            self.read("service counters", self.stats.service_counters())
        } else {
            None
        };
        if let Some(services) = services {
            let services = merge_by_name(services);
            let columns: [ServiceColumn; 4] = [
                (
                    "service_packets",
                    "Packets load-balanced for each service port.",
                    |c| c.packets,
                ),
                (
                    "service_bytes",
                    "Bytes load-balanced for each service port.",
                    |c| c.bytes,
                ),
                (
                    "service_new_flows",
                    "New flows assigned a backend, per service port.",
                    |c| c.new_flows,
                ),
                (
                    "service_socket_translations",
                    "Connections and unconnected UDP datagrams sent to a backend at socket level (pods and the node), per service port.",
                    |c| c.socket_translations,
                ),
            ];
            for (name, help, column) in columns {
                let mut metric =
                    encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                for (labels, counters) in &services {
                    let labels: [(&str, &str); 3] =
                        std::array::from_fn(|i| (SERVICE_LABEL_NAMES[i], labels[i].as_str()));
                    ConstCounter::new(column(counters)).encode(metric.encode_family(&labels)?)?;
                }
            }
        }

        if let Some(reasons) = self.read("verdict counters", self.stats.reason_counters()) {
            let mut metric = encoder.encode_descriptor(
                "datapath_verdicts",
                "Packets the datapath handled, by what it did and why.",
                None,
                MetricType::Counter,
            )?;
            for reason in Reason::ALL {
                let labels = [
                    ("reason", reason.name()),
                    ("verdict", reason.class().name()),
                ];
                ConstCounter::new(reasons[reason as usize])
                    .encode(metric.encode_family(&labels)?)?;
            }
        }

        if let Some(protos) = self.read("protocol counters", self.stats.proto_counters()) {
            let values = ProtoCounter::ALL.map(|p| (p.name(), protos[p as usize]));
            encode_labelled(
                &mut encoder,
                "datapath_protocol_packets",
                "Packets seen by the datapath, by protocol, before any decision.",
                MetricType::Counter,
                "protocol",
                values,
            )?;
        }

        if let Some(sockets) = self.read("socket counters", self.stats.socket_counters()) {
            let values = SocketCounter::ALL.map(|c| (c.name(), sockets[c as usize]));
            encode_labelled(
                &mut encoder,
                "socket_operations",
                "What socket-level balancing did with connect(), sendmsg(), recvmsg() and getpeername() calls.",
                MetricType::Counter,
                "outcome",
                values,
            )?;
        }

        if let Some(counts) = self.read("fast path counters", self.stats.fast_path_counters()) {
            let values = FastPathCounter::ALL.map(|c| (c.name(), counts[c as usize]));
            encode_labelled(
                &mut encoder,
                "fast_path_packets",
                "Balanced packets the XDP fast path sent itself (sent_*), or left to the stack and why (stack_*).",
                MetricType::Counter,
                "outcome",
                values,
            )?;
        }

        let conntrack_entries = self.read("conntrack size", self.stats.conntrack_entries());
        if let Some(entries) = conntrack_entries {
            let metric = encoder.encode_descriptor(
                "conntrack_entries",
                "Entries in the connection-tracking map (two per load-balanced flow), counted in one pass at scrape time; flows that come and go during it may be missed or counted twice.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(entries).encode(metric)?;
        }

        if let Some(fills) = self.read("map fill levels", self.stats.map_fill(conntrack_entries)) {
            encode_labelled(
                &mut encoder,
                "map_entries_used",
                "Entries in use in each kernel map.",
                MetricType::Gauge,
                "map",
                fills.iter().map(|f| (f.map, f.used)),
            )?;
            encode_labelled(
                &mut encoder,
                "map_entries_capacity",
                "Entries each kernel map can hold.",
                MetricType::Gauge,
                "map",
                fills.iter().map(|f| (f.map, f.capacity)),
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_port_names_split_into_three_labels() {
        let cases = [
            ("default/web:http", ["default", "web", "http"]),
            // An unnamed port is named by its number.
            ("kube-system/kube-dns:53", ["kube-system", "kube-dns", "53"]),
            // Not written by the agent: kept whole, so its counters still show.
            ("no-namespace", ["", "no-namespace", ""]),
        ];
        for (name, expected) in cases {
            assert_eq!(service_labels(name), expected.map(String::from), "{name}");
            if let Some(parsed) = ServicePortName::parse(name) {
                assert_eq!(
                    parsed.to_string(),
                    name,
                    "parse reads back what Display wrote"
                );
            }
        }
    }
}
