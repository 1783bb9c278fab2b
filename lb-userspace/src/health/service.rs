//! The Services' health check ports (kube-proxy's service health server,
//! pkg/proxy/healthcheck/service_health.go): for each LoadBalancer Service with
//! `externalTrafficPolicy: Local`, an HTTP server on `spec.healthCheckNodePort` of every
//! NodePort address of the node, answering any path with the count of this node's ready
//! endpoints: 200 when there is one or more (and syncs are fresh), 503 otherwise.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use hyper::{
    Response, StatusCode,
    header::{HeaderName, HeaderValue},
};
use tokio::task::JoinSet;

use super::{HealthError, SyncHealth, proxy::nosniff};
use crate::{
    http::{self, Body},
    model::{HealthCheck, HealthChecks, ServiceName},
};

/// kube-proxy's answer for `service` with `local_endpoints` ready endpoints here:
/// `X-Load-Balancing-Endpoint-Weight` lets a load balancer weigh nodes by their endpoints.
pub fn respond(
    service: &ServiceName,
    local_endpoints: usize,
    proxy_healthy: bool,
) -> Response<Body> {
    let code = if local_endpoints > 0 && proxy_healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let quoted = |text: &str| serde_json::to_string(text).expect("a string serializes");
    // kube-proxy's hand-indented text, byte for byte (tabs, no final newline).
    let body = format!(
        "{{\n\t\"service\": {{\n\t\t\"namespace\": {},\n\t\t\"name\": {}\n\t}},\n\t\"localEndpoints\": {local_endpoints},\n\t\"serviceProxyHealthy\": {proxy_healthy}\n}}",
        quoted(&service.namespace),
        quoted(&service.name),
    );
    let weight = (
        HeaderName::from_static("x-load-balancing-endpoint-weight"),
        HeaderValue::from(local_endpoints),
    );
    http::response(code, "application/json", &[nosniff(), weight], body)
}

/// One Service's open health check: its servers (one per address, ended when this is
/// dropped) and the counts they answer with.
struct Open {
    port: u16,
    counts: Arc<Counts>,
    _servers: JoinSet<()>,
}

/// The endpoint counts of one Service, per family, updated at every sync.
#[derive(Default)]
struct Counts {
    v4: AtomicUsize,
    v6: AtomicUsize,
}

impl Counts {
    fn set(&self, check: &HealthCheck) {
        self.v4.store(check.local_ready_v4, Ordering::Relaxed);
        self.v6.store(check.local_ready_v6, Ordering::Relaxed);
    }

    fn for_family(&self, node_addr: IpAddr) -> usize {
        let count = if node_addr.is_ipv4() {
            &self.v4
        } else {
            &self.v6
        };
        count.load(Ordering::Relaxed)
    }
}

/// Every Service's health check servers, kept in step with the model's health checks.
pub struct ServiceHealthServers {
    /// Where each health check listens: the node's NodePort addresses.
    addresses: Vec<IpAddr>,
    health: SyncHealth,
    open: BTreeMap<ServiceName, Open>,
    /// Health checks whose port could not be opened (retried at every sync), and on which
    /// port, so that each failure is reported once.
    failing: BTreeMap<ServiceName, u16>,
}

impl ServiceHealthServers {
    pub fn new(addresses: Vec<IpAddr>, health: SyncHealth) -> Self {
        Self {
            addresses,
            health,
            open: BTreeMap::new(),
            failing: BTreeMap::new(),
        }
    }

    /// Opens the health checks that are new (or moved to another port), closes those gone,
    /// and sets every count (kube-proxy's `SyncServices` and `SyncEndpoints`). A port that
    /// cannot be opened leaves the others alone; the error is returned the first time, and
    /// opening is tried again at every sync. Must run inside the Tokio runtime.
    pub fn sync(&mut self, checks: &HealthChecks) -> Vec<HealthError> {
        let wanted = |name: &ServiceName, port: u16| {
            checks
                .get(name)
                .is_some_and(|check| check.node_port == port)
        };
        self.open.retain(|name, open| wanted(name, open.port));
        self.failing.retain(|name, port| wanted(name, *port));
        let mut failures = Vec::new();
        for (name, check) in checks {
            if let Some(open) = self.open.get(name) {
                open.counts.set(check);
                continue;
            }
            match self.start(name, check) {
                Ok(open) => {
                    tracing::info!(service = %name, port = check.node_port, "serving the health check");
                    self.failing.remove(name);
                    self.open.insert(name.clone(), open);
                }
                Err(error) => {
                    if self.failing.insert(name.clone(), check.node_port) != Some(check.node_port) {
                        failures.push(error);
                    }
                }
            }
        }
        failures
    }

    /// The ports open now, by Service.
    pub fn open_ports(&self) -> BTreeMap<ServiceName, u16> {
        self.open
            .iter()
            .map(|(name, open)| (name.clone(), open.port))
            .collect()
    }

    /// Listens on every address, or on none.
    fn start(&self, name: &ServiceName, check: &HealthCheck) -> Result<Open, HealthError> {
        let counts = Arc::new(Counts::default());
        counts.set(check);
        let mut listeners = Vec::new();
        for &ip in &self.addresses {
            let addr = SocketAddr::new(ip, check.node_port);
            let listener =
                http::Listener::bind(addr).map_err(|source| HealthError::HealthCheckPort {
                    service: name.clone(),
                    port: check.node_port,
                    addr,
                    source,
                })?;
            listeners.push((ip, listener));
        }
        let mut servers = JoinSet::new();
        for (ip, listener) in listeners {
            let (name, counts, health) = (name.clone(), counts.clone(), self.health.clone());
            let handler = move |_request| {
                let answer = respond(&name, counts.for_family(ip), health.now().healthy);
                std::future::ready(answer)
            };
            servers.spawn(listener.serve("health check", handler, |_| {}));
        }
        Ok(Open {
            port: check.node_port,
            counts,
            _servers: servers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kube-proxy's `tHandler` checks, and its dedented body template byte for byte.
    #[test]
    fn the_body_and_headers_are_kube_proxys() {
        let name = ServiceName::new("a", "b");
        for (count, healthy, status) in [(18, true, 200), (0, true, 503), (7, false, 503)] {
            let case = format!("{count} endpoints, proxy healthy {healthy}");
            let response = respond(&name, count, healthy);
            assert_eq!(response.status().as_u16(), status, "{case}");
            let headers = response.headers();
            assert_eq!(headers["content-type"], "application/json", "{case}");
            assert_eq!(headers["x-content-type-options"], "nosniff", "{case}");
            assert_eq!(
                headers["x-load-balancing-endpoint-weight"],
                count.to_string().as_str(),
                "{case}"
            );
            let body = crate::http::body_of(response);
            let body: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
            assert_eq!(
                body,
                serde_json::json!({
                    "service": {"namespace": "a", "name": "b"},
                    "localEndpoints": count,
                    "serviceProxyHealthy": healthy,
                }),
                "{case}"
            );
        }
        let body = crate::http::body_of(respond(&name, 18, true));
        assert_eq!(
            &body[..],
            b"{\n\t\"service\": {\n\t\t\"namespace\": \"a\",\n\t\t\"name\": \"b\"\n\t},\n\t\"localEndpoints\": 18,\n\t\"serviceProxyHealthy\": true\n}"
        );
    }
}
