//! The HTTP side: a small hyper 1 server for `/metrics`, `/healthz` and `/readyz`.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::Metrics;

/// `--metrics-addr` when none is given: loopback only, so nothing is exposed by accident.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9400";

/// A client that sends no complete request headers within this long is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (out of file descriptors, ...) before trying again.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

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
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl MetricsServer {
    pub async fn bind(addr: SocketAddr) -> Result<Self, MetricsError> {
        let bind_error = |source| MetricsError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok(Self {
            listener,
            local_addr,
        })
    }

    /// The address really listened on (the port is chosen by the kernel for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Answers requests until the future is dropped; each connection runs in its own task.
    pub async fn run(self, metrics: Metrics) {
        tracing::info!(addr = %self.local_addr, "serving /metrics, /healthz and /readyz");
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "metrics: accepting a connection failed; retrying");
                    metrics.count_error("metrics_accept");
                    tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                    continue;
                }
            };
            let metrics = metrics.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let metrics = metrics.clone();
                    async move { Ok::<_, Infallible>(respond(&metrics, &request).await) }
                });
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "metrics: connection ended with an error");
                }
            });
        }
    }
}

/// Binds `addr` and serves until the returned future is dropped.
pub async fn serve(addr: SocketAddr, metrics: Metrics) -> Result<(), MetricsError> {
    MetricsServer::bind(addr).await?.run(metrics).await;
    Ok(())
}

async fn respond(metrics: &Metrics, request: &Request<Incoming>) -> Response<Full<Bytes>> {
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
        "/readyz" if metrics.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the first full sync has not reached the maps yet\n",
        ),
        _ => scrape(metrics).await,
    }
}

async fn scrape(metrics: &Metrics) -> Response<Full<Bytes>> {
    // Reading the maps is a series of blocking syscalls: keep them off the async workers.
    let encoder = metrics.clone();
    let encoded = tokio::task::spawn_blocking(move || encoder.encode_text()).await;
    match encoded {
        Ok(Ok(body)) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(
                    prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                ),
            );
            response
        }
        Ok(Err(_)) | Err(_) => {
            metrics.count_error("metrics_encode");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding the metrics failed; see the agent's log\n",
            )
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
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
