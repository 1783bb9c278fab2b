//! The one HTTP stack of the agent's servers (metrics, kube-proxy's health endpoint, the
//! Services' health check ports): hyper 1, HTTP/1.1, a task per connection.

use std::{
    future::Future,
    io,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Request, Response, StatusCode,
    body::Incoming,
    header::{CONTENT_TYPE, HeaderName, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, task::JoinSet};

/// What every handler answers with: the whole body at once.
pub type Body = Full<Bytes>;

/// A client that sends no complete request headers within this long is dropped.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (out of file descriptors, ...) before trying again.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// A bound TCP listener and the address it really listens on (the kernel picks the port
/// for port 0).
#[derive(Debug)]
pub struct Listener {
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl Listener {
    /// Binds `addr` as Go's `net.Listen("tcp", …)` does, which kube-proxy's addresses
    /// assume: `0.0.0.0` means every address of both families (a dual-stack `[::]` socket),
    /// falling back to IPv4 alone where the host has no IPv6. Must run inside the Tokio
    /// runtime.
    pub fn bind(addr: SocketAddr) -> io::Result<Self> {
        let listener = bind(addr)?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            local_addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Answers every connection with `handler` until the future is dropped, which also
    /// ends the connections it accepted. `server` names it in logs; `accept_failed` is told
    /// about each failed accept (they are retried).
    pub async fn serve<H, F>(
        self,
        server: &'static str,
        handler: H,
        accept_failed: impl Fn(&io::Error),
    ) where
        H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = Response<Body>> + Send + 'static,
    {
        let mut connections = JoinSet::new();
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                // Reap finished connections so that the set does not grow.
                Some(_) = connections.join_next() => continue,
            };
            let stream = match accepted {
                Ok((stream, _peer)) => stream,
                Err(error) => {
                    tracing::warn!(server, %error, "accepting a connection failed; retrying");
                    accept_failed(&error);
                    tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
                    continue;
                }
            };
            let handler = handler.clone();
            connections.spawn(async move {
                let service = service_fn(move |request| {
                    let answer = handler(request);
                    async move { Ok::<_, std::convert::Infallible>(answer.await) }
                });
                let connection = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(error) = connection.await {
                    tracing::debug!(server, %error, "connection ended with an error");
                }
            });
        }
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    if addr.ip() == IpAddr::from([0, 0, 0, 0]) {
        let any = SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), addr.port());
        match bind_dual_stack(any) {
            Ok(listener) => return Ok(listener),
            Err(error) if is_family_missing(&error) => {}
            Err(error) => return Err(error),
        }
    }
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    listen(socket, addr)
}

fn bind_dual_stack(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v6()?;
    nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Ipv6V6Only, &false)?;
    listen(socket, addr)
}

fn listen(socket: tokio::net::TcpSocket, addr: SocketAddr) -> io::Result<TcpListener> {
    // As std and Go do: a restarted agent binds again while old connections wait in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// The host has no IPv6 (disabled, or no address to bind `[::]` to).
fn is_family_missing(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
    )
}

/// A response of `status` with `body` as `content_type`, and `headers`.
pub fn response(
    status: StatusCode,
    content_type: &'static str,
    headers: &[(HeaderName, HeaderValue)],
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    let map = response.headers_mut();
    map.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    for (name, value) in headers {
        map.insert(name.clone(), value.clone());
    }
    response
}

/// Plain text.
pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    response(status, "text/plain; charset=utf-8", &[], body)
}

/// A response's whole body (tests read what a handler answered).
#[cfg(test)]
pub fn body_of(response: Response<Body>) -> Bytes {
    use http_body_util::BodyExt as _;
    let collected = futures::executor::block_on(response.into_body().collect());
    match collected {
        Ok(body) => body.to_bytes(),
        Err(never) => match never {},
    }
}
