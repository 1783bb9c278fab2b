//! The metrics endpoint as Prometheus and the kubelet see it: a real HTTP server on
//! loopback, a fake kernel behind `KernelStats`, and the scraped text parsed back.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[path = "support/http.rs"]
mod http;

use http::HttpResponse;
use lb_common::{FastPathCounter, ProtoCounter, Reason, ServiceCounters, SocketCounter, map_names};
use slicelb::dataplane::DataplaneError;
use slicelb::health::SyncHealth;
use slicelb::metrics::{KernelStats, MapFill, Metrics, MetricsOptions, MetricsServer};

/// The agent's `--healthz-timeout` in these tests: short, so that one test can wait past it.
const STALE_AFTER: Duration = Duration::from_millis(200);

/// What the fake kernel reports; tests change it between scrapes.
#[derive(Clone, Default)]
struct KernelState {
    services: Vec<(String, ServiceCounters)>,
    reasons: [u64; Reason::COUNT as usize],
    protos: [u64; ProtoCounter::COUNT as usize],
    sockets: [u64; SocketCounter::COUNT as usize],
    fast_path: [u64; FastPathCounter::COUNT as usize],
    conntrack: u64,
    fill: Vec<MapFill>,
    /// When set, reading the service counters fails as an unreadable map would.
    fail_service_counters: bool,
}

#[derive(Default)]
struct FakeKernel {
    state: Mutex<KernelState>,
}

impl FakeKernel {
    fn state(&self) -> KernelState {
        self.state.lock().expect("fake kernel lock").clone()
    }
}

impl KernelStats for FakeKernel {
    fn service_counters(&self) -> Result<Vec<(String, ServiceCounters)>, DataplaneError> {
        let state = self.state();
        if state.fail_service_counters {
            return Err(DataplaneError::MapRead {
                map: map_names::SERVICE_STATS,
                source: std::io::Error::from_raw_os_error(libc::EPERM),
            });
        }
        Ok(state.services)
    }
    fn reason_counters(&self) -> Result<[u64; Reason::COUNT as usize], DataplaneError> {
        Ok(self.state().reasons)
    }
    fn proto_counters(&self) -> Result<[u64; ProtoCounter::COUNT as usize], DataplaneError> {
        Ok(self.state().protos)
    }
    fn socket_counters(&self) -> Result<[u64; SocketCounter::COUNT as usize], DataplaneError> {
        Ok(self.state().sockets)
    }
    fn fast_path_counters(&self) -> Result<[u64; FastPathCounter::COUNT as usize], DataplaneError> {
        Ok(self.state().fast_path)
    }
    fn conntrack_entries(&self) -> Result<u64, DataplaneError> {
        Ok(self.state().conntrack)
    }
    fn map_fill(&self, conntrack_entries: Option<u64>) -> Result<Vec<MapFill>, DataplaneError> {
        let mut fill = self.state().fill;
        if conntrack_entries.is_none() {
            fill.retain(|f| f.map != map_names::CONNTRACK);
        }
        Ok(fill)
    }
}

fn sample_kernel() -> KernelState {
    let mut state = KernelState {
        services: vec![
            (
                "default/web:http".to_owned(),
                ServiceCounters {
                    packets: 1000,
                    bytes: 1_500_000,
                    new_flows: 40,
                    socket_translations: 3,
                },
            ),
            (
                "kube-system/kube-dns:53".to_owned(),
                ServiceCounters {
                    packets: 7,
                    bytes: 420,
                    new_flows: 7,
                    socket_translations: 5,
                },
            ),
        ],
        conntrack: 94,
        fill: vec![
            MapFill {
                map: map_names::FRONTENDS,
                used: 12,
                capacity: 262_144,
            },
            MapFill {
                map: map_names::SELECTION,
                used: 4093,
                capacity: 16 * 1024 * 1024,
            },
        ],
        ..KernelState::default()
    };
    // Distinct values per index, so a swapped label shows up as a wrong number.
    for (i, value) in state.reasons.iter_mut().enumerate() {
        *value = 100 + i as u64;
    }
    for (i, value) in state.protos.iter_mut().enumerate() {
        *value = 1000 + i as u64;
    }
    for (i, value) in state.sockets.iter_mut().enumerate() {
        *value = 2000 + i as u64;
    }
    for (i, value) in state.fast_path.iter_mut().enumerate() {
        *value = 3000 + i as u64;
    }
    state
}

struct Endpoint {
    kernel: Arc<FakeKernel>,
    metrics: Metrics,
    health: SyncHealth,
    addr: std::net::SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn start(state: KernelState) -> Endpoint {
    let kernel = Arc::new(FakeKernel {
        state: Mutex::new(state),
    });
    let health = SyncHealth::new(STALE_AFTER);
    let metrics = Metrics::new(kernel.clone(), health.clone());
    let loopback = "127.0.0.1:0".parse().expect("loopback address");
    let server = MetricsServer::bind(loopback)
        .await
        .expect("bind the metrics server on loopback");
    let addr = server.local_addr();
    let server = tokio::spawn(server.run(metrics.clone()));
    Endpoint {
        kernel,
        metrics,
        health,
        addr,
        server,
    }
}

async fn request(endpoint: &Endpoint, method: &str, path: &str) -> HttpResponse {
    http::request(endpoint.addr, method, path).await
}

/// A parsed sample line: `name{label="value",...} number`.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the Prometheus text format (version 0.0.4): comments skipped, label values
/// unescaped. Panics naming the line it cannot read.
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("sample without value: {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("value is not a number: {line:?}"));
        let (name, labels) = match series.split_once('{') {
            None => (series.to_owned(), BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line:?}"));
                (name.to_owned(), parse_labels(body, line))
            }
        };
        samples.push(Sample {
            name,
            labels,
            value,
        });
    }
    samples
}

fn parse_labels(body: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        assert_eq!(
            chars.next(),
            Some('"'),
            "label {key} has no opening quote: {line:?}"
        );
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('"') => break,
                Some('\\') => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => panic!("dangling escape: {line:?}"),
                },
                Some(c) => value.push(c),
                None => panic!("unclosed label value: {line:?}"),
            }
        }
        labels.insert(key.trim().to_owned(), value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    labels
}

/// The one sample with this name and these labels (other labels may be present).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<_> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert!(
        matching.len() <= 1,
        "{name} {labels:?} matches several samples: {matching:?}"
    );
    matching.first().map(|s| s.value)
}

fn expect_value(samples: &[Sample], name: &str, labels: &[(&str, &str)], expected: f64) {
    match value(samples, name, labels) {
        Some(found) => assert_eq!(found, expected, "{name} {labels:?}"),
        None => panic!("{name} {labels:?} is missing from the scrape"),
    }
}

async fn scrape(endpoint: &Endpoint) -> Vec<Sample> {
    let response = request(endpoint, "GET", "/metrics").await;
    assert_eq!(
        response.status, 200,
        "/metrics answered {}: {}",
        response.status, response.body
    );
    parse_exposition(&response.body)
}

#[tokio::test]
async fn scrape_reports_what_the_kernel_reported() {
    let kernel = sample_kernel();
    let endpoint = start(kernel.clone()).await;
    let response = request(&endpoint, "GET", "/metrics").await;
    assert_eq!(response.status, 200, "/metrics: {}", response.body);
    assert!(
        response
            .headers
            .contains("content-type: text/plain; version=0.0.4"),
        "/metrics should use the Prometheus text content type, headers: {}",
        response.headers
    );
    assert!(
        response
            .body
            .contains("# TYPE slicelb_service_packets_total counter"),
        "service packets should be typed as a counter:\n{}",
        response.body
    );
    let samples = parse_exposition(&response.body);

    for (name, counters) in &kernel.services {
        // `namespace/service:port_name`, as SERVICE_NAMES holds it, is three labels.
        let (namespace, rest) = name.split_once('/').expect("namespace/");
        let (service, port_name) = rest.split_once(':').expect("service:port");
        let labels = [
            ("namespace", namespace),
            ("service", service),
            ("port_name", port_name),
        ];
        expect_value(
            &samples,
            "slicelb_service_packets_total",
            &labels,
            counters.packets as f64,
        );
        expect_value(
            &samples,
            "slicelb_service_bytes_total",
            &labels,
            counters.bytes as f64,
        );
        let new_flows = counters.new_flows as f64;
        expect_value(
            &samples,
            "slicelb_service_new_flows_total",
            &labels,
            new_flows,
        );
        expect_value(
            &samples,
            "slicelb_service_socket_translations_total",
            &labels,
            counters.socket_translations as f64,
        );
    }
    for counter in SocketCounter::ALL {
        let expected = kernel.sockets[counter as usize] as f64;
        expect_value(
            &samples,
            "slicelb_socket_operations_total",
            &[("outcome", counter.name())],
            expected,
        );
    }
    for counter in FastPathCounter::ALL {
        let expected = kernel.fast_path[counter as usize] as f64;
        expect_value(
            &samples,
            "slicelb_fast_path_packets_total",
            &[("outcome", counter.name())],
            expected,
        );
    }
    for reason in Reason::ALL {
        let labels = [
            ("reason", reason.name()),
            ("verdict", reason.class().name()),
        ];
        let expected = kernel.reasons[reason as usize] as f64;
        expect_value(
            &samples,
            "slicelb_datapath_verdicts_total",
            &labels,
            expected,
        );
    }
    for proto in ProtoCounter::ALL {
        let expected = kernel.protos[proto as usize] as f64;
        let labels = [("protocol", proto.name())];
        expect_value(
            &samples,
            "slicelb_datapath_protocol_packets_total",
            &labels,
            expected,
        );
    }
    expect_value(&samples, "slicelb_conntrack_entries", &[], 94.0);
    for fill in &kernel.fill {
        let labels = [("map", fill.map)];
        expect_value(
            &samples,
            "slicelb_map_entries_used",
            &labels,
            fill.used as f64,
        );
        expect_value(
            &samples,
            "slicelb_map_entries_capacity",
            &labels,
            fill.capacity as f64,
        );
    }
}

#[tokio::test]
async fn kernel_counters_are_read_at_each_scrape() {
    let endpoint = start(sample_kernel()).await;
    let before = scrape(&endpoint).await;
    let labels = [
        ("namespace", "default"),
        ("service", "web"),
        ("port_name", "http"),
    ];
    expect_value(&before, "slicelb_service_packets_total", &labels, 1000.0);

    {
        let mut state = endpoint.kernel.state.lock().expect("fake kernel lock");
        state.services[0].1.packets = 2500;
        state.conntrack = 3;
    }
    let after = scrape(&endpoint).await;
    expect_value(&after, "slicelb_service_packets_total", &labels, 2500.0);
    expect_value(&after, "slicelb_conntrack_entries", &[], 3.0);
}

#[tokio::test]
async fn agent_side_observations_are_scraped() {
    let endpoint = start(KernelState::default()).await;
    let metrics = &endpoint.metrics;
    metrics.observe_sync(Duration::from_millis(250));
    metrics.observe_sync(Duration::from_millis(750));
    metrics.observe_programming_latency(Duration::from_millis(20));
    metrics.count_error("map_full");
    metrics.count_error("map_full");
    metrics.count_error(String::from("watch_expired"));
    metrics.set_rejected(3);

    let samples = scrape(&endpoint).await;
    expect_value(
        &samples,
        "slicelb_sync_proxy_rules_duration_seconds_count",
        &[],
        2.0,
    );
    expect_value(
        &samples,
        "slicelb_sync_proxy_rules_duration_seconds_sum",
        &[],
        1.0,
    );
    // 250 ms falls in the bucket ending at 0.256 s; 750 ms does not.
    expect_value(
        &samples,
        "slicelb_sync_proxy_rules_duration_seconds_bucket",
        &[("le", "0.256")],
        1.0,
    );
    expect_value(
        &samples,
        "slicelb_sync_proxy_rules_duration_seconds_bucket",
        &[("le", "+Inf")],
        2.0,
    );
    expect_value(
        &samples,
        "slicelb_programming_latency_seconds_count",
        &[],
        1.0,
    );
    expect_value(
        &samples,
        "slicelb_errors_total",
        &[("kind", "map_full")],
        2.0,
    );
    expect_value(
        &samples,
        "slicelb_errors_total",
        &[("kind", "watch_expired")],
        1.0,
    );
    expect_value(&samples, "slicelb_services_rejected", &[], 3.0);

    metrics.set_rejected(0);
    let samples = scrape(&endpoint).await;
    expect_value(&samples, "slicelb_services_rejected", &[], 0.0);
}

#[tokio::test]
async fn readyz_turns_200_after_the_first_sync_and_503_when_syncs_go_stale() {
    let endpoint = start(KernelState::default()).await;
    let check = |step: &'static str, readyz_status: u16, ready_gauge: f64| {
        let endpoint = &endpoint;
        async move {
            let healthz = request(endpoint, "GET", "/healthz").await;
            assert_eq!(healthz.status, 200, "{step}: /healthz: {}", healthz.body);
            let readyz = request(endpoint, "GET", "/readyz").await;
            assert_eq!(
                readyz.status, readyz_status,
                "{step}: /readyz: {}",
                readyz.body
            );
            expect_value(&scrape(endpoint).await, "slicelb_ready", &[], ready_gauge);
            readyz.body
        }
    };
    let body = check("before the first sync", 503, 0.0).await;
    assert!(body.contains("first full sync"), "{body}");

    endpoint.health.queued(1);
    endpoint.health.updated(1);
    check("after the first sync", 200, 1.0).await;

    // An update the sync loop does not apply: after the timeout, not ready; the process is
    // still alive (/healthz here is liveness of the process, not kube-proxy's).
    endpoint.health.queued(2);
    tokio::time::sleep(STALE_AFTER * 2).await;
    let body = check("an update waiting past the timeout", 503, 0.0).await;
    assert!(body.contains("--healthz-timeout"), "{body}");

    endpoint.health.updated(2);
    check("the update applied", 200, 1.0).await;
}

#[tokio::test]
async fn unknown_paths_and_methods_are_refused() {
    let endpoint = start(KernelState::default()).await;
    let missing = request(&endpoint, "GET", "/debug").await;
    assert_eq!(missing.status, 404, "GET /debug: {}", missing.body);
    let post = request(&endpoint, "POST", "/metrics").await;
    assert_eq!(post.status, 405, "POST /metrics: {}", post.body);
    assert!(
        post.header("allow") == Some("GET, HEAD"),
        "405 should say what is allowed: {}",
        post.headers
    );
}

#[tokio::test]
async fn an_unreadable_kernel_map_leaves_a_gap_and_counts_an_error() {
    let mut kernel = sample_kernel();
    kernel.fail_service_counters = true;
    let endpoint = start(kernel).await;

    let first = scrape(&endpoint).await;
    assert!(
        !first.iter().any(|s| s.name.starts_with("slicelb_service_")),
        "service counters must be left out, not reported as zero, when their map is unreadable"
    );
    expect_value(&first, "slicelb_conntrack_entries", &[], 94.0);
    let labels = [("reason", "lb_new_flow")];
    let lb_new_flow = 100.0 + Reason::LbNewFlow as u32 as f64;
    expect_value(
        &first,
        "slicelb_datapath_verdicts_total",
        &labels,
        lb_new_flow,
    );

    // The failure is counted while the scrape is written, so the next scrape shows it, by
    // the error's own kind (`DataplaneError::MapRead`).
    let second = scrape(&endpoint).await;
    let errors = value(&second, "slicelb_errors_total", &[("kind", "map_read")]);
    assert!(
        errors.is_some_and(|n| n >= 1.0),
        "an unreadable map should be counted as map_read, found {errors:?}"
    );
}

#[tokio::test]
async fn a_busy_address_is_refused_with_the_address_and_what_to_do() {
    let first = start(KernelState::default()).await;
    let error = MetricsServer::bind(first.addr)
        .await
        .expect_err("a second server on the same address must not bind");
    let message = error.to_string();
    assert!(
        message.contains(&first.addr.to_string()) && message.contains("--metrics-addr"),
        "the error should name {} and the flag to change: {message}",
        first.addr
    );
}

#[tokio::test]
async fn a_service_name_reported_twice_is_one_series() {
    let mut kernel = sample_kernel();
    let again = ServiceCounters {
        packets: 5,
        bytes: 500,
        new_flows: 1,
        socket_translations: 2,
    };
    kernel.services.push(("default/web:http".to_owned(), again));
    let endpoint = start(kernel).await;
    let samples = scrape(&endpoint).await;
    let labels = [
        ("namespace", "default"),
        ("service", "web"),
        ("port_name", "http"),
    ];
    expect_value(&samples, "slicelb_service_packets_total", &labels, 1005.0);
    expect_value(
        &samples,
        "slicelb_service_bytes_total",
        &labels,
        1_500_500.0,
    );
    expect_value(&samples, "slicelb_service_new_flows_total", &labels, 41.0);
    expect_value(
        &samples,
        "slicelb_service_socket_translations_total",
        &labels,
        5.0,
    );
}

#[tokio::test]
async fn every_metric_served_is_in_the_docs_table() {
    let endpoint = start(sample_kernel()).await;
    let response = request(&endpoint, "GET", "/metrics").await;
    let docs_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
    let docs = std::fs::read_to_string(docs_path).expect("read docs/metrics.md");
    let families: Vec<&str> = response
        .body
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|declared| declared.split(' ').next())
        .collect();
    assert!(
        families.len() > 20,
        "the scrape should declare every family: {families:?}"
    );
    for family in families {
        assert!(
            docs.contains(&format!("`{family}`")),
            "{family} is served but docs/metrics.md does not list it"
        );
    }
}

#[tokio::test]
async fn per_service_series_can_be_turned_off() {
    let kernel = Arc::new(FakeKernel {
        state: Mutex::new(sample_kernel()),
    });
    let metrics = Metrics::with_options(
        kernel,
        SyncHealth::new(STALE_AFTER),
        MetricsOptions { per_service: false },
    );
    let samples = parse_exposition(&metrics.encode_text().expect("encode"));
    assert!(
        !samples
            .iter()
            .any(|s| s.name.starts_with("slicelb_service_")),
        "--per-service-metrics=false leaves every per-service series out"
    );
    expect_value(&samples, "slicelb_conntrack_entries", &[], 94.0);
}
