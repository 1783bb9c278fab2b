//! The HTTP side: a small hyper 1 server for `/metrics`, `/healthz` and `/readyz`.

use std::net::{IpAddr, SocketAddr};

use hyper::body::Incoming;
use hyper::header::{ALLOW, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::Metrics;
use crate::http::{self, Body, text};

/// `--metrics-addr` when none is given: loopback only, so nothing is exposed by accident.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9400";

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error(
        "cannot listen for metrics on {addr}: {source}; choose a free port or an address of \
         this host with --metrics-addr"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "metrics address {input:?} is not ADDRESS:PORT ({reason}); e.g. 127.0.0.1:9400, \
         [::1]:9400 or fd00::1:9400"
    )]
    InvalidAddress { input: String, reason: &'static str },
}

/// Parses `--metrics-addr`: `IPv4:PORT`, `[IPv6]:PORT`, or `IPv6:PORT` without brackets
/// (the last `:` starts the port), so that `$(POD_IP):9400` in a manifest works for IPv6
/// pod addresses too.
pub fn parse_listen_addr(input: &str) -> Result<SocketAddr, MetricsError> {
    let invalid = |reason| MetricsError::InvalidAddress {
        input: input.to_owned(),
        reason,
    };
    if let Ok(addr) = input.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (ip, port) = input.rsplit_once(':').ok_or_else(|| invalid("no port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| invalid("the port is not a number from 0 to 65535"))?;
    let ip: IpAddr = ip
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| invalid("the address is not an IPv4 or IPv6 address"))?;
    Ok(SocketAddr::new(ip, port))
}

/// A bound metrics listener; [`MetricsServer::run`] answers requests on it.
#[derive(Debug)]
pub struct MetricsServer {
    listener: http::Listener,
}

impl MetricsServer {
    pub async fn bind(addr: SocketAddr) -> Result<Self, MetricsError> {
        let listener =
            http::Listener::bind(addr).map_err(|source| MetricsError::Bind { addr, source })?;
        Ok(Self { listener })
    }

    /// The address really listened on (the port is chosen by the kernel for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Answers requests until the future is dropped; each connection runs in its own task.
    pub async fn run(self, metrics: Metrics) {
        tracing::info!(addr = %self.local_addr(), "serving /metrics, /healthz and /readyz");
        let counted = metrics.clone();
        let handler = move |request: Request<Incoming>| {
            let metrics = metrics.clone();
            async move { respond(&metrics, &request).await }
        };
        self.listener
            .serve("metrics", handler, move |_| {
                counted.count_error(super::ERROR_KIND_METRICS_ACCEPT);
            })
            .await;
    }
}

/// Binds `addr` and serves until the returned future is dropped.
pub async fn serve(addr: SocketAddr, metrics: Metrics) -> Result<(), MetricsError> {
    MetricsServer::bind(addr).await?.run(metrics).await;
    Ok(())
}

async fn respond(metrics: &Metrics, request: &Request<Incoming>) -> Response<Body> {
    let path = request.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n",
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let health = metrics.sync_health();
            if health.ready() {
                text(StatusCode::OK, "ready\n")
            } else if health.last_updated.is_none() {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: the first full sync has not reached the maps yet\n",
                )
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not ready: an update has waited longer than --healthz-timeout to reach \
                     the maps; see the agent's log\n",
                )
            }
        }
        _ => scrape(metrics).await,
    }
}

async fn scrape(metrics: &Metrics) -> Response<Body> {
    // Reading the maps is a series of blocking syscalls: keep them off the async workers.
    let encoder = metrics.clone();
    let encoded = tokio::task::spawn_blocking(move || encoder.encode_text()).await;
    match encoded {
        Ok(Ok(body)) => http::response(
            StatusCode::OK,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            &[],
            body,
        ),
        Ok(Err(_)) | Err(_) => {
            metrics.count_error(super::ERROR_KIND_METRICS_ENCODE);
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding the metrics failed; see the agent's log\n",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses_parse_with_and_without_brackets() {
        let cases = [
            ("127.0.0.1:9400", "127.0.0.1:9400"),
            ("0.0.0.0:9400", "0.0.0.0:9400"),
            ("[::1]:9400", "[::1]:9400"),
            ("fd00::1:9400", "[fd00::1]:9400"),
            ("::1:0", "[::1]:0"),
        ];
        for (input, expected) in cases {
            let parsed = parse_listen_addr(input)
                .unwrap_or_else(|error| panic!("{input} should parse: {error}"));
            assert_eq!(parsed.to_string(), expected, "parsing {input}");
        }
    }

    #[test]
    fn bad_listen_addresses_say_why() {
        let cases = [
            ("127.0.0.1", "no port"),
            ("127.0.0.1:http", "port"),
            ("127.0.0.1:70000", "port"),
            ("localhost:9400", "address"),
            (":9400", "address"),
        ];
        for (input, why) in cases {
            let error = parse_listen_addr(input).expect_err(input).to_string();
            assert!(
                error.contains(why),
                "{input}: {error:?} should mention {why:?}"
            );
            assert!(
                error.contains(input),
                "{input}: {error:?} should name the input"
            );
        }
    }
}
