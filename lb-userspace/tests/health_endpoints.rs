//! kube-proxy's health answers as load balancers and the kubelet get them: the Services'
//! health check ports and the `/healthz` and `/livez` endpoint, over HTTP on loopback
//! (kube-proxy's `TestServer` and `TestServerWithSelectiveListeningAddress`, with real
//! listeners instead of fakes).

#[path = "support/http.rs"]
mod http;

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http::{HttpResponse, request};
use serde_json::{Value, json};
use slicelb::{
    health::{HealthError, ProxyHealthServer, ServiceHealthServers, SyncHealth},
    model::{HealthCheck, HealthChecks, NodeEligibility, ServiceName},
};

/// Short, so that a test can wait past it.
const STALE_AFTER: Duration = Duration::from_millis(200);
/// A bound on a failure (a port that never closes), not a measured time.
const PATIENCE: Duration = Duration::from_secs(10);
const LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// Ports nothing listens on now (the kernel's picks, released).
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind((LOOPBACK, 0)).expect("an ephemeral port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("bound").port())
}

fn name(namespace: &str, service: &str) -> ServiceName {
    ServiceName::new(namespace, service)
}

fn checks(entries: &[(&ServiceName, u16, usize)]) -> HealthChecks {
    entries
        .iter()
        .map(|(name, port, endpoints)| {
            let check = HealthCheck {
                node_port: *port,
                local_ready_v4: *endpoints,
                local_ready_v6: 0,
            };
            ((*name).clone(), check)
        })
        .collect()
}

/// A health that has synced once: healthy until an update waits past [`STALE_AFTER`].
fn synced_health() -> SyncHealth {
    let health = SyncHealth::new(STALE_AFTER);
    health.queued(1);
    health.updated(1);
    health
}

async fn get(port: u16) -> HttpResponse {
    request(SocketAddr::from((LOOPBACK, port)), "GET", "/healthz").await
}

/// kube-proxy's `tHandler`: status, the whole body, and its three headers.
async fn expect_answer(
    step: &str,
    service: &ServiceName,
    port: u16,
    status: u16,
    endpoints: usize,
    proxy_healthy: bool,
) {
    let answer = get(port).await;
    assert_eq!(
        answer.status, status,
        "{step}: {service} on {port}: {}",
        answer.body
    );
    let body: Value = serde_json::from_str(&answer.body)
        .unwrap_or_else(|e| panic!("{step}: {service}: not JSON ({e}): {}", answer.body));
    assert_eq!(
        body,
        json!({
            "service": {"namespace": service.namespace, "name": service.name},
            "localEndpoints": endpoints,
            "serviceProxyHealthy": proxy_healthy,
        }),
        "{step}: {service}"
    );
    assert_eq!(
        answer.header("content-type"),
        Some("application/json"),
        "{step}"
    );
    assert_eq!(
        answer.header("x-content-type-options"),
        Some("nosniff"),
        "{step}"
    );
    assert_eq!(
        answer.header("x-load-balancing-endpoint-weight"),
        Some(endpoints.to_string().as_str()),
        "{step}"
    );
}

/// Whether something accepts connections on loopback `port`.
async fn is_open(port: u16) -> bool {
    tokio::net::TcpStream::connect((LOOPBACK, port))
        .await
        .is_ok()
}

/// Closing a server is asynchronous (its task is aborted): wait until the port refuses.
async fn expect_closed(step: &str, port: u16) {
    let started = Instant::now();
    while is_open(port).await {
        assert!(
            started.elapsed() < PATIENCE,
            "{step}: port {port} still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn expect_no_failures(step: &str, failures: Vec<HealthError>) {
    assert!(failures.is_empty(), "{step}: {failures:?}");
}

#[tokio::test]
async fn health_checks_open_answer_and_close_as_services_and_endpoints_change() {
    let health = synced_health();
    let mut servers = ServiceHealthServers::new(vec![LOOPBACK.into()], health.clone());
    let [p1, p2, p3, p4, p5] = free_ports();
    let (ab, cd, ef, gh) = (
        name("a", "b"),
        name("c", "d"),
        name("e", "f"),
        name("g", "h"),
    );

    expect_no_failures("nothing", servers.sync(&HealthChecks::new()));
    assert!(servers.open_ports().is_empty());

    expect_no_failures("a real service", servers.sync(&checks(&[(&ab, p1, 0)])));
    assert_eq!(servers.open_ports(), BTreeMap::from([(ab.clone(), p1)]));
    expect_answer("no endpoint", &ab, p1, 503, 0, true).await;

    expect_no_failures("an endpoint", servers.sync(&checks(&[(&ab, p1, 18)])));
    expect_answer("18 endpoints", &ab, p1, 200, 18, true).await;
    expect_no_failures("zero endpoints", servers.sync(&checks(&[(&ab, p1, 0)])));
    expect_answer("zero endpoints", &ab, p1, 503, 0, true).await;
    expect_no_failures("back", servers.sync(&checks(&[(&ab, p1, 11)])));
    expect_answer("endpoints back", &ab, p1, 200, 11, true).await;

    expect_no_failures("service deleted", servers.sync(&HealthChecks::new()));
    assert!(servers.open_ports().is_empty());
    expect_closed("service deleted", p1).await;

    let three = checks(&[(&ab, p1, 9), (&cd, p2, 3), (&ef, p3, 7)]);
    expect_no_failures("three services", servers.sync(&three));
    expect_answer("three services", &ab, p1, 200, 9, true).await;
    expect_answer("three services", &cd, p2, 200, 3, true).await;
    expect_answer("three services", &ef, p3, 200, 7, true).await;

    // a/b removed, c/d left alone, e/f moved to another port, g/h added.
    let changed = checks(&[(&cd, p2, 3), (&ef, p4, 7), (&gh, p5, 6)]);
    expect_no_failures("changed services", servers.sync(&changed));
    assert_eq!(
        servers.open_ports(),
        BTreeMap::from([(cd.clone(), p2), (ef.clone(), p4), (gh.clone(), p5)])
    );
    expect_closed("a/b removed", p1).await;
    expect_closed("e/f moved", p3).await;
    expect_answer("left alone", &cd, p2, 200, 3, true).await;
    expect_answer("moved", &ef, p4, 200, 7, true).await;
    expect_answer("added", &gh, p5, 200, 6, true).await;

    let without_cd = checks(&[(&cd, p2, 0), (&ef, p4, 7), (&gh, p5, 6)]);
    expect_no_failures("c/d loses its endpoints", servers.sync(&without_cd));
    expect_answer("no endpoints", &cd, p2, 503, 0, true).await;

    // Syncs go stale (an update waits past the timeout): every check answers 503 and says
    // the proxy is unhealthy, counts unchanged.
    health.queued(2);
    tokio::time::sleep(STALE_AFTER * 2).await;
    expect_answer("stale", &cd, p2, 503, 0, false).await;
    expect_answer("stale", &ef, p4, 503, 7, false).await;
    expect_answer("stale", &gh, p5, 503, 6, false).await;
    health.updated(2);
    expect_answer("fresh again", &ef, p4, 200, 7, true).await;
    expect_answer("fresh again", &gh, p5, 200, 6, true).await;
}

#[tokio::test]
async fn each_address_family_answers_with_its_own_endpoints() {
    let mut servers = ServiceHealthServers::new(
        vec![LOOPBACK.into(), std::net::Ipv6Addr::LOCALHOST.into()],
        synced_health(),
    );
    let [port] = free_ports();
    let service = name("shop", "web");
    let check = HealthCheck {
        node_port: port,
        local_ready_v4: 2,
        local_ready_v6: 0,
    };
    expect_no_failures(
        "dual-stack",
        servers.sync(&HealthChecks::from([(service.clone(), check)])),
    );
    expect_answer("IPv4", &service, port, 200, 2, true).await;
    let v6 = request(
        SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
        "GET",
        "/",
    )
    .await;
    assert_eq!(v6.status, 503, "no IPv6 endpoint here: {}", v6.body);
    assert_eq!(v6.header("x-load-balancing-endpoint-weight"), Some("0"));
}

#[tokio::test]
async fn a_busy_port_is_reported_once_naming_the_service_and_leaves_the_others_alone() {
    let health = synced_health();
    let mut servers = ServiceHealthServers::new(vec![LOOPBACK.into()], health);
    let busy = TcpListener::bind((LOOPBACK, 0)).expect("a port to occupy");
    let taken = busy.local_addr().expect("bound").port();
    let [free] = free_ports();
    let (blocked, fine) = (name("shop", "blocked"), name("shop", "fine"));
    let both = checks(&[(&blocked, taken, 1), (&fine, free, 2)]);

    let failures = servers.sync(&both);
    assert_eq!(failures.len(), 1, "{failures:?}");
    let message = failures[0].to_string();
    assert!(
        message.contains("shop/blocked") && message.contains(&taken.to_string()),
        "the warning names the Service and the port: {message}"
    );
    assert_eq!(failures[0].kind(), "health_check_port");
    expect_answer("the other service", &fine, free, 200, 2, true).await;
    assert!(
        servers.sync(&both).is_empty(),
        "the same failure is reported once"
    );

    drop(busy);
    expect_no_failures("the port is free again", servers.sync(&both));
    expect_answer("retried at the next sync", &blocked, taken, 200, 1, true).await;
}

/// What a load balancer or the kubelet gets from kube-proxy's endpoint (the bodies' every
/// field is checked step by step in the unit tests; here, the server around them).
#[tokio::test]
async fn healthz_and_livez_are_served_with_kube_proxys_headers() {
    let health = SyncHealth::new(STALE_AFTER);
    let server = ProxyHealthServer::bind((LOOPBACK, 0).into()).expect("bind on loopback");
    let addr = server.local_addr();
    let task = tokio::spawn(server.run(health.clone()));
    let ask = |path: &'static str| async move {
        let answer = request(addr, "GET", path).await;
        assert_eq!(
            answer.header("content-type"),
            Some("application/json"),
            "{path}"
        );
        assert_eq!(
            answer.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        let body: Value = serde_json::from_str(&answer.body)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {}", answer.body));
        (answer.status, body)
    };

    let (status, body) = ask("/healthz").await;
    assert_eq!(status, 200, "healthy while starting: {body}");
    assert_eq!(body["nodeEligible"], json!(true));
    assert_eq!(body["lastUpdated"], body["currentTime"], "{body}");

    health.queued(1);
    health.updated(1);
    health.set_node(NodeEligibility::ToBeDeleted);
    let (status, body) = ask("/healthz").await;
    assert_eq!(status, 503, "tainted for deletion: {body}");
    assert_eq!(body["nodeEligible"], json!(false));
    assert_eq!(body["healthy"], json!(true));
    let (status, body) = ask("/livez").await;
    assert_eq!(status, 200, "/livez does not care about the node: {body}");
    assert!(body.get("nodeEligible").is_none(), "{body}");

    health.set_node(NodeEligibility::Eligible);
    health.queued(2);
    tokio::time::sleep(STALE_AFTER * 2).await;
    for path in ["/healthz", "/livez"] {
        let (status, body) = ask(path).await;
        assert_eq!(status, 503, "{path} while stale: {body}");
        assert_eq!(body["healthy"], json!(false), "{path}");
        assert_eq!(body["status"]["IPv4"]["healthy"], json!(false), "{path}");
    }
    let missing = request(addr, "GET", "/metrics").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body, "404 page not found\n");
    task.abort();
}

#[tokio::test]
async fn the_health_endpoint_on_0_0_0_0_answers_both_families_as_kube_proxy_does() {
    let server = ProxyHealthServer::bind(SocketAddr::from(([0, 0, 0, 0], 0))).expect("bind");
    let port = server.local_addr().port();
    let task = tokio::spawn(server.run(SyncHealth::new(STALE_AFTER)));
    for ip in [
        std::net::IpAddr::from(LOOPBACK),
        std::net::Ipv6Addr::LOCALHOST.into(),
    ] {
        let answer = request(SocketAddr::new(ip, port), "GET", "/livez").await;
        assert_eq!(answer.status, 200, "over {ip}: {}", answer.body);
    }
    task.abort();
}

/// As kube-proxy when another process holds its health port (kube-proxy itself, beside
/// slicelb): the failure is reported once, binding is tried again, and the endpoint is
/// served once the port is free.
#[tokio::test]
async fn a_taken_health_port_is_reported_once_and_tried_again_until_free() {
    let busy = TcpListener::bind((LOOPBACK, 0)).expect("a port to occupy");
    let addr = busy.local_addr().expect("bound");
    let reports = Arc::new(Mutex::new(Vec::new()));
    let seen = reports.clone();
    let task = tokio::spawn(ProxyHealthServer::keep_trying(
        addr,
        Duration::from_millis(50),
        SyncHealth::new(STALE_AFTER),
        move |error| seen.lock().expect("not poisoned").push(error.to_string()),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reported = reports.lock().expect("not poisoned").clone();
    assert_eq!(reported.len(), 1, "several tries, one report: {reported:?}");
    assert!(
        reported[0].contains(&addr.to_string()) && reported[0].contains("--healthz-bind-address"),
        "the report names the address and the flag that moves it: {}",
        reported[0]
    );

    drop(busy);
    let started = Instant::now();
    while !is_open(addr.port()).await {
        assert!(
            started.elapsed() < PATIENCE,
            "never served once the port was free"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(request(addr, "GET", "/livez").await.status, 200);
    task.abort();
}
