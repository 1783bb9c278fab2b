//! Health as load balancers and the kubelet ask kube-proxy for it, answered as kube-proxy
//! answers (pkg/proxy/healthcheck):
//!
//! - [`proxy`]: `/healthz` and `/livez` on `--healthz-bind-address` (`0.0.0.0:10256`): 503
//!   while an update has waited longer than `--healthz-timeout` to reach the maps, and
//!   `/healthz` also while the Node is being deleted or tainted for deletion;
//! - [`service`]: each `externalTrafficPolicy: Local` LoadBalancer Service's
//!   `healthCheckNodePort`, on the node's NodePort addresses: this node's ready endpoints.
//!
//! Both read [`SyncHealth`], which the agent's sync loop and the source's watcher keep.

pub mod proxy;
pub mod service;
mod sync;

use std::{io, net::SocketAddr};

pub use proxy::{BIND_RETRY, DEFAULT_HEALTHZ_BIND_ADDRESS, ProxyHealthServer};
pub use service::ServiceHealthServers;
pub use sync::{DEFAULT_HEALTH_TIMEOUT, Moment, ProxyHealth, SyncHealth, SyncTracker};

use crate::model::ServiceName;

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error(
        "cannot listen on {addr} for kube-proxy's health endpoint (/healthz, /livez): {source}; \
         trying again every 5 s (is kube-proxy running here? choose a free address and port \
         with --healthz-bind-address, or \"\" for none)"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot serve the health check of Service {service} on port {port} ({addr}): {source}; \
         load balancers get no answer from this node for that Service until the port is free \
         (every sync tries again)"
    )]
    HealthCheckPort {
        service: ServiceName,
        port: u16,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

impl HealthError {
    /// Every value of [`Self::kind`]: the metrics count each from zero.
    pub const KINDS: [&'static str; 2] = ["healthz_bind", "health_check_port"];

    /// Stable label for the errors metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Bind { .. } => "healthz_bind",
            Self::HealthCheckPort { .. } => "health_check_port",
        }
    }
}
