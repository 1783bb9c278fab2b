//! The lab's backend servers: HTTP and UDP echo that answer with their host's name, so the
//! client sees which backend served it. Run inside a backend namespace by the hidden
//! `slicelb-lab lab-server` command; the cluster lab's pods run [`PodServers`]
//! (`slicelb-lab pod-server`), which also tell the client its address as they saw it.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::Arc,
    time::Duration,
};

/// What a backend answers: HTTP `200` with body `<name>\n`; UDP datagrams get `<name>`.
pub struct BackendServers {
    pub name: String,
    pub http_port: u16,
    pub udp_port: u16,
}

impl BackendServers {
    /// Serves forever on every address (IPv4 and IPv6) of the namespace.
    pub fn serve(self) -> std::io::Result<()> {
        let name: Arc<str> = self.name.into();
        let http = TcpListener::bind(SocketAddr::from(([0u16; 8], self.http_port)))?;
        let udp = UdpSocket::bind(SocketAddr::from(([0u16; 8], self.udp_port)))?;
        let udp_name = name.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((_, peer)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(udp_name.as_bytes(), peer);
            }
        });
        for stream in http.incoming() {
            let Ok(stream) = stream else { continue };
            let name = name.clone();
            std::thread::spawn(move || serve_http_connection(stream, &name));
        }
        Ok(())
    }
}

/// A pod's servers: every request gets `<name> <client address:port as seen here>`, one
/// line per request line on TCP, one datagram per datagram on UDP, so a client learns who
/// served it and whether anything rewrote its address on the way.
pub struct PodServers {
    pub name: String,
    pub tcp_port: u16,
    pub udp_port: u16,
}

impl PodServers {
    /// Serves forever on every address (IPv4 and IPv6) of the namespace.
    pub fn serve(self) -> std::io::Result<()> {
        let name: Arc<str> = self.name.into();
        // Both bound before either serves: a pod that accepts TCP also answers UDP.
        let tcp = TcpListener::bind(SocketAddr::from(([0u16; 8], self.tcp_port)))?;
        let udp = UdpSocket::bind(SocketAddr::from(([0u16; 8], self.udp_port)))?;
        let udp_name = name.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((_, client)) = udp.recv_from(&mut buf) {
                let answer = pod_answer(&udp_name, client);
                let _ = udp.send_to(answer.as_bytes(), client);
            }
        });
        for stream in tcp.incoming() {
            let Ok(stream) = stream else { continue };
            let name = name.clone();
            std::thread::spawn(move || serve_pod_connection(stream, &name));
        }
        Ok(())
    }
}

/// `<name> <client>`, the client address in its own family (not IPv4-mapped IPv6, which is
/// how a dual-stack socket reports an IPv4 client).
pub fn pod_answer(name: &str, client: SocketAddr) -> String {
    format!(
        "{name} {}",
        SocketAddr::new(client.ip().to_canonical(), client.port())
    )
}

fn serve_pod_connection(stream: TcpStream, name: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(300)));
    let (Ok(client), Ok(mut writer)) = (stream.peer_addr(), stream.try_clone()) else {
        return;
    };
    let answer = format!("{}\n", pod_answer(name, client));
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
        line.clear();
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// HTTP/1.1 with keep-alive: every request on the connection gets the name.
fn serve_http_connection(stream: TcpStream, name: &str) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(300)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut content_length = 0usize;
        let mut line = String::new();
        let mut saw_request = false;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let header = line.trim_end();
            if header.is_empty() {
                if saw_request {
                    break;
                }
                continue;
            }
            saw_request = true;
            if let Some((key, value)) = header.split_once(':')
                && key.eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
        if content_length > 0 {
            let mut body = vec![0u8; content_length.min(1 << 20)];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
        }
        let body = format!("{name}\n");
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// A keep-alive HTTP client connection, for checking that an established connection keeps
/// its backend.
pub struct HttpConnection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl HttpConnection {
    pub fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let writer = stream.try_clone()?;
        Ok(Self {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends `GET /` and returns the body's first line: the backend's name.
    pub fn get(&mut self) -> std::io::Result<String> {
        self.writer
            .write_all(b"GET / HTTP/1.1\r\nHost: slicelb-lab\r\n\r\n")?;
        let mut content_length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((key, value)) = header.split_once(':')
                && key.eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; content_length];
        self.reader.read_exact(&mut body)?;
        Ok(String::from_utf8_lossy(&body).trim().to_string())
    }
}

/// One request on a fresh connection: which backend answered.
pub fn http_get_once(addr: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    HttpConnection::connect(addr, timeout)?.get()
}

/// Client ports for one-off UDP requests: 10000–19999, below the kernel's ephemeral range
/// (32768–60999) and below the fixed ports tests use (20000 up).
const CLIENT_PORTS: std::ops::Range<u16> = 10_000..20_000;

/// A UDP socket for one request to `to`, on a client port no recent request of this process
/// used. A request from a reused (ephemeral) port would be the same 5-tuple as an earlier
/// flow, and the balancer rightly keeps it on that flow's backend: a "new request" must be a
/// new flow to show where new flows go.
pub fn fresh_udp_client(to: SocketAddr) -> std::io::Result<UdpSocket> {
    use std::sync::atomic::{AtomicU16, Ordering};
    static TURN: AtomicU16 = AtomicU16::new(0);
    let span = CLIENT_PORTS.end - CLIENT_PORTS.start;
    let mut last_error = None;
    // A port still held by a socket of another process in the namespace: take the next.
    for _ in 0..16 {
        let port = CLIENT_PORTS.start + TURN.fetch_add(1, Ordering::Relaxed) % span;
        let bind: SocketAddr = if to.is_ipv4() {
            SocketAddr::from(([0u8; 4], port))
        } else {
            SocketAddr::from(([0u16; 8], port))
        };
        match UdpSocket::bind(bind) {
            Ok(socket) => return Ok(socket),
            Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => last_error = Some(error),
            Err(error) => return Err(error),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no free client port")))
}

/// One datagram to a UDP echo, as a new flow: which backend answered.
pub fn udp_ask_once(addr: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let socket = fresh_udp_client(addr)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send_to(b"who", addr)?;
    let mut buf = [0u8; 256];
    let (n, _) = socket.recv_from(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).to_string())
}
