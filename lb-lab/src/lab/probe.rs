//! `slicelb-lab probe`: a client that runs inside a pod or a node (through the cluster lab's
//! commands, so in that pod's cgroup and namespace) and reports what its sockets saw, one
//! JSON line per request:
//!
//! ```text
//! {"ok":true,"peer":"198.18.100.10:80","served_by":"my-app-1","client_seen":"198.18.20.10:40312","local":"198.18.20.10:40312"}
//! {"ok":false,"error":"ECONNREFUSED","stage":"connect","elapsed_ms":0}
//! ```
//!
//! `peer` is what `getpeername()` returns (TCP, connected UDP) or the source of the answer
//! (`recvfrom`, unconnected UDP): with socket-level balancing it is the Service address.
//! `client_seen` is the client address as the server saw it (the [`PodServers`] answer), and
//! `local` the socket's own address. `error` is the errno's name (`ECONNREFUSED`, `EPERM`,
//! …) or `timeout`. Tests read the lines back with [`ProbeResult::parse_output`].
//!
//! [`PodServers`]: super::servers::PodServers

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// Requests of a held connection are this far apart.
pub const HOLD_INTERVAL: Duration = Duration::from_millis(100);

const REQUEST: &[u8] = b"probe\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeProtocol {
    Tcp,
    Udp,
}

/// What one `slicelb-lab probe` run does: build it here, run it in a pod or node with
/// [`Probe::run`], or pass [`Probe::args`] to a command of your own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub protocol: ProbeProtocol,
    pub target: SocketAddr,
    /// Attempts, each on a fresh socket (ignored when holding).
    pub count: u32,
    /// UDP only: `sendto`/`recvfrom` on an unconnected socket instead of `connect`.
    pub unconnected: bool,
    /// For each connect and each answer.
    pub timeout: Duration,
    /// Keep one socket and send a request every [`HOLD_INTERVAL`] for this long.
    pub hold: Option<Duration>,
    /// Unconnected UDP only: each attempt's socket also sends to this address right after
    /// `target`, then receives both answers (a line each, in the order they arrive).
    pub also_to: Option<SocketAddr>,
}

impl Probe {
    pub fn tcp(target: SocketAddr) -> Self {
        Self {
            protocol: ProbeProtocol::Tcp,
            target,
            count: 1,
            unconnected: false,
            timeout: Duration::from_secs(1),
            hold: None,
            also_to: None,
        }
    }

    pub fn udp(target: SocketAddr) -> Self {
        Self {
            protocol: ProbeProtocol::Udp,
            ..Self::tcp(target)
        }
    }

    pub fn count(self, count: u32) -> Self {
        Self { count, ..self }
    }

    pub fn unconnected(self) -> Self {
        Self {
            unconnected: true,
            ..self
        }
    }

    pub fn timeout(self, timeout: Duration) -> Self {
        Self { timeout, ..self }
    }

    /// One unconnected UDP socket per attempt asks `target` and then `second`.
    pub fn also_to(self, second: SocketAddr) -> Self {
        Self {
            also_to: Some(second),
            unconnected: true,
            ..self
        }
    }

    pub fn hold(self, hold: Duration) -> Self {
        Self {
            hold: Some(hold),
            ..self
        }
    }

    /// `probe --tcp|--udp ADDR:PORT …`: the arguments after the `slicelb-lab` program.
    pub fn args(&self) -> Vec<String> {
        let protocol = match self.protocol {
            ProbeProtocol::Tcp => "--tcp",
            ProbeProtocol::Udp => "--udp",
        };
        let mut args = vec![
            "probe".to_string(),
            protocol.to_string(),
            self.target.to_string(),
            "--timeout-ms".to_string(),
            self.timeout.as_millis().to_string(),
        ];
        match self.hold {
            Some(hold) => args.extend(["--hold-ms".to_string(), hold.as_millis().to_string()]),
            None => args.extend(["--count".to_string(), self.count.to_string()]),
        }
        if self.unconnected {
            args.push("--unconnected".to_string());
        }
        if let Some(second) = self.also_to {
            args.extend(["--also-to".to_string(), second.to_string()]);
        }
        args
    }

    /// Runs the probe as `command` (a `slicelb-lab` command from `Pod::command`,
    /// `ClusterNode::command`, …), waits for it and parses what it printed.
    pub fn run(&self, mut command: Command) -> Result<Vec<ProbeResult>, ProbeError> {
        let output = super::run_command(command.args(self.args()))?;
        ProbeResult::parse_output(&String::from_utf8_lossy(&output.stdout))
    }

    /// Starts the probe as `command` without waiting, for reading its lines as they come
    /// (a held connection across an agent restart, say). It is killed if dropped unfinished.
    pub fn spawn(&self, mut command: Command) -> Result<RunningProbe, ProbeError> {
        command
            .args(self.args())
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let shown = format!("{command:?}").replace('"', "");
        let mut child = command.spawn().map_err(|source| super::LabError::Spawn {
            command: shown,
            source,
        })?;
        let stdout = child.stdout.take().expect("stdout is piped");
        Ok(RunningProbe {
            child,
            stdout: BufReader::new(stdout),
        })
    }

    /// Makes the attempts from this process, writing one JSON line each to `out` (what the
    /// `probe` command does). Failed attempts are lines too; only a failed write is an error.
    pub fn run_here(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let mut emit = |result: ProbeResult| -> std::io::Result<()> {
            writeln!(out, "{}", result.to_json_line())?;
            out.flush()
        };
        match self.hold {
            None => {
                for _ in 0..self.count {
                    let started = Instant::now();
                    let mut socket = match self.open() {
                        Ok(socket) => socket,
                        Err(failure) => {
                            emit(ProbeResult::from_attempt(Err(failure), started))?;
                            continue;
                        }
                    };
                    if let Some(second) = self.also_to {
                        let [first, second] = socket.ask_two(second, self.timeout);
                        emit(ProbeResult::from_attempt(first, started))?;
                        emit(ProbeResult::from_attempt(second, started))?;
                    } else {
                        emit(ProbeResult::from_attempt(socket.ask(self.timeout), started))?;
                    }
                }
            }
            Some(hold) => {
                let held_since = Instant::now();
                let started = Instant::now();
                let mut socket = match self.open() {
                    Ok(socket) => socket,
                    Err(failure) => return emit(ProbeResult::from_attempt(Err(failure), started)),
                };
                loop {
                    let started = Instant::now();
                    let result = socket.ask(self.timeout);
                    let failed = result.is_err();
                    emit(ProbeResult::from_attempt(result, started))?;
                    // A broken connection stays broken: one error line says so.
                    if failed || held_since.elapsed() >= hold {
                        return Ok(());
                    }
                    std::thread::sleep(HOLD_INTERVAL);
                }
            }
        }
        Ok(())
    }

    fn open(&self) -> Result<ProbeSocket, (ProbeStage, std::io::Error)> {
        match (self.protocol, self.unconnected) {
            (ProbeProtocol::Tcp, _) => {
                let stream = TcpStream::connect_timeout(&self.target, self.timeout)
                    .map_err(|e| (ProbeStage::Connect, e))?;
                let reader = stream.try_clone().map_err(|e| (ProbeStage::Connect, e))?;
                Ok(ProbeSocket::Tcp {
                    writer: stream,
                    reader: BufReader::new(reader),
                })
            }
            (ProbeProtocol::Udp, unconnected) => {
                // An ephemeral port the kernel picks: each attempt is a new flow.
                let any: SocketAddr = if self.target.is_ipv4() {
                    SocketAddr::from(([0u8; 4], 0))
                } else {
                    SocketAddr::from(([0u16; 8], 0))
                };
                let socket = UdpSocket::bind(any).map_err(|e| (ProbeStage::Connect, e))?;
                if unconnected {
                    return Ok(ProbeSocket::UnconnectedUdp {
                        socket,
                        target: self.target,
                    });
                }
                socket
                    .connect(self.target)
                    .map_err(|e| (ProbeStage::Connect, e))?;
                Ok(ProbeSocket::ConnectedUdp(socket))
            }
        }
    }
}

/// `sockets` fresh unconnected UDP sockets each send one datagram to `target` and close
/// without waiting for an answer: socket-level state churn, as a busy node's resolvers make.
/// Returns how many were sent.
pub fn spray_datagrams(target: SocketAddr, sockets: u32) -> std::io::Result<u32> {
    let any: SocketAddr = if target.is_ipv4() {
        SocketAddr::from(([0u8; 4], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    for _ in 0..sockets {
        UdpSocket::bind(any)?.send_to(REQUEST, target)?;
    }
    Ok(sockets)
}

/// `slicelb-lab spray --udp ADDR:PORT --sockets N`: [`spray_datagrams`] in a pod or node.
pub fn spray_args(target: SocketAddr, sockets: u32) -> Vec<String> {
    [
        "spray",
        "--udp",
        &target.to_string(),
        "--sockets",
        &sockets.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// A probe started with [`Probe::spawn`].
pub struct RunningProbe {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl RunningProbe {
    /// The next line the probe prints, waiting for it; `None` once the probe has ended.
    pub fn next_result(&mut self) -> Option<Result<ProbeResult, ProbeError>> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(ProbeResult::parse_line(line.trim_end())),
            Err(source) => Some(Err(ProbeError::Read(source))),
        }
    }

    /// Stops the probe's process (SIGSTOP) until [`Self::resume`]: its socket stays open and
    /// untouched, as an idle application's would.
    pub fn pause(&self) -> Result<(), ProbeError> {
        self.signal(libc::SIGSTOP)
    }

    pub fn resume(&self) -> Result<(), ProbeError> {
        self.signal(libc::SIGCONT)
    }

    fn signal(&self, signal: libc::c_int) -> Result<(), ProbeError> {
        let pid = libc::pid_t::try_from(self.child.id()).expect("a pid fits pid_t");
        // SAFETY: kill(2) on our own child, which is not reaped yet (its pid is still ours).
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(ProbeError::Read(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// Waits for the probe to end and returns the lines not read yet.
    pub fn finish(mut self) -> Result<Vec<ProbeResult>, ProbeError> {
        let rest = self.unread()?;
        let status = self.child.wait().map_err(ProbeError::Read)?;
        if !status.success() {
            return Err(ProbeError::Exit(status.to_string()));
        }
        Ok(rest)
    }

    /// Ends the probe now (a held connection whose hold has not run out) and returns the
    /// lines it printed that were not read yet. A probe that already ended by itself is
    /// [`Self::finish`]ed: its exit status counts.
    pub fn stop(mut self) -> Result<Vec<ProbeResult>, ProbeError> {
        if self.child.try_wait().map_err(ProbeError::Read)?.is_some() {
            return self.finish();
        }
        // Not reaped yet, so the pid is still this probe's.
        self.child.kill().map_err(ProbeError::Read)?;
        // Each line is one write of less than PIPE_BUF: the kill leaves no half line.
        let rest = self.unread()?;
        self.child.wait().map_err(ProbeError::Read)?;
        Ok(rest)
    }

    /// Every line up to the end of the probe's output.
    fn unread(&mut self) -> Result<Vec<ProbeResult>, ProbeError> {
        std::iter::from_fn(|| self.next_result()).collect()
    }
}

impl Drop for RunningProbe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum ProbeSocket {
    Tcp {
        writer: TcpStream,
        reader: BufReader<TcpStream>,
    },
    ConnectedUdp(UdpSocket),
    UnconnectedUdp {
        socket: UdpSocket,
        target: SocketAddr,
    },
}

impl ProbeSocket {
    /// An unconnected UDP socket's request to its target and then to `second`, and the two
    /// answers in the order they arrive (each with the source the socket saw).
    fn ask_two(
        &mut self,
        second: SocketAddr,
        timeout: Duration,
    ) -> [Result<ProbeAnswer, (ProbeStage, std::io::Error)>; 2] {
        let ProbeSocket::UnconnectedUdp { socket, target } = self else {
            let wrong = || {
                let error = std::io::Error::other("--also-to needs an unconnected UDP probe");
                Err((ProbeStage::Send, error))
            };
            return [wrong(), wrong()];
        };
        let sent = socket
            .set_read_timeout(Some(timeout))
            .and_then(|()| socket.send_to(REQUEST, *target))
            .and_then(|_| socket.send_to(REQUEST, second));
        if let Err(error) = sent {
            let again = std::io::Error::new(error.kind(), error.to_string());
            return [
                Err((ProbeStage::Send, error)),
                Err((ProbeStage::Send, again)),
            ];
        }
        [receive_answer(socket), receive_answer(socket)]
    }

    /// One request and its answer.
    fn ask(&mut self, timeout: Duration) -> Result<ProbeAnswer, (ProbeStage, std::io::Error)> {
        let at = |stage| move |error| (stage, error);
        let mut buf = [0u8; 512];
        let (peer, local, answer) = match self {
            ProbeSocket::Tcp { writer, reader } => {
                writer
                    .set_write_timeout(Some(timeout))
                    .and_then(|()| writer.set_read_timeout(Some(timeout)))
                    .map_err(at(ProbeStage::Send))?;
                let peer = writer.peer_addr().map_err(at(ProbeStage::Getpeername))?;
                writer.write_all(REQUEST).map_err(at(ProbeStage::Send))?;
                let mut line = String::new();
                if reader.read_line(&mut line).map_err(at(ProbeStage::Recv))? == 0 {
                    return Err((ProbeStage::Recv, std::io::ErrorKind::UnexpectedEof.into()));
                }
                let local = writer.local_addr().map_err(at(ProbeStage::Recv))?;
                (peer, local, line)
            }
            ProbeSocket::ConnectedUdp(socket) => {
                socket
                    .set_read_timeout(Some(timeout))
                    .map_err(at(ProbeStage::Send))?;
                let peer = socket.peer_addr().map_err(at(ProbeStage::Getpeername))?;
                socket.send(REQUEST).map_err(at(ProbeStage::Send))?;
                let n = socket.recv(&mut buf).map_err(at(ProbeStage::Recv))?;
                let local = socket.local_addr().map_err(at(ProbeStage::Recv))?;
                (peer, local, String::from_utf8_lossy(&buf[..n]).into_owned())
            }
            ProbeSocket::UnconnectedUdp { socket, target } => {
                socket
                    .set_read_timeout(Some(timeout))
                    .map_err(at(ProbeStage::Send))?;
                socket
                    .send_to(REQUEST, *target)
                    .map_err(at(ProbeStage::Send))?;
                return receive_answer(socket);
            }
        };
        parse_answer(peer, local, &answer)
    }
}

/// The next answer on an unconnected UDP socket, with the source the socket saw as its peer.
fn receive_answer(socket: &UdpSocket) -> Result<ProbeAnswer, (ProbeStage, std::io::Error)> {
    let mut buf = [0u8; 512];
    let (n, from) = socket
        .recv_from(&mut buf)
        .map_err(|e| (ProbeStage::Recv, e))?;
    let local = socket.local_addr().map_err(|e| (ProbeStage::Recv, e))?;
    parse_answer(from, local, &String::from_utf8_lossy(&buf[..n]))
}

/// A pod server's answer `<pod> <addr:port>`, received from `peer` on `local`.
fn parse_answer(
    peer: SocketAddr,
    local: SocketAddr,
    answer: &str,
) -> Result<ProbeAnswer, (ProbeStage, std::io::Error)> {
    let (served_by, client_seen) = answer
        .trim()
        .split_once(' ')
        .and_then(|(name, client)| Some((name.to_string(), client.parse().ok()?)))
        .ok_or_else(|| {
            (
                ProbeStage::Answer,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("not `<pod> <addr:port>`: {answer:?}"),
                ),
            )
        })?;
    Ok(ProbeAnswer {
        peer,
        served_by,
        client_seen,
        local,
    })
}

/// Where an attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeStage {
    /// Opening the socket, `connect()` (TCP handshake, or UDP connect).
    Connect,
    Getpeername,
    Send,
    /// Waiting for the answer.
    Recv,
    /// The answer was not `<pod> <addr:port>`.
    Answer,
}

/// An answered request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeAnswer {
    /// `getpeername()` (TCP, connected UDP) or the answer's source (unconnected UDP).
    pub peer: SocketAddr,
    /// The pod (or server) name that answered.
    pub served_by: String,
    /// The client's address and port as the server saw them.
    pub client_seen: SocketAddr,
    /// The client socket's own address and port.
    pub local: SocketAddr,
}

/// A request that got no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeFailure {
    /// The errno's name (`ECONNREFUSED`, `EPERM`, `ENETUNREACH`, …) or `timeout`.
    pub error: String,
    pub stage: ProbeStage,
    pub elapsed_ms: u64,
}

/// One line of the probe's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeResult {
    Answered(ProbeAnswer),
    Failed(ProbeFailure),
}

/// The JSON line, as printed.
#[derive(Debug, Serialize, Deserialize)]
struct ProbeLine {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    peer: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    served_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_seen: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    local: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stage: Option<ProbeStage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    elapsed_ms: Option<u64>,
}

impl ProbeResult {
    fn from_attempt(
        attempt: Result<ProbeAnswer, (ProbeStage, std::io::Error)>,
        started: Instant,
    ) -> Self {
        match attempt {
            Ok(answer) => Self::Answered(answer),
            Err((stage, error)) => Self::Failed(ProbeFailure {
                error: error_name(&error),
                stage,
                elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            }),
        }
    }

    pub fn answer(&self) -> Option<&ProbeAnswer> {
        match self {
            Self::Answered(answer) => Some(answer),
            Self::Failed(_) => None,
        }
    }

    pub fn failure(&self) -> Option<&ProbeFailure> {
        match self {
            Self::Answered(_) => None,
            Self::Failed(failure) => Some(failure),
        }
    }

    pub fn to_json_line(&self) -> String {
        let line = match self {
            Self::Answered(answer) => ProbeLine {
                ok: true,
                peer: Some(answer.peer),
                served_by: Some(answer.served_by.clone()),
                client_seen: Some(answer.client_seen),
                local: Some(answer.local),
                error: None,
                stage: None,
                elapsed_ms: None,
            },
            Self::Failed(failure) => ProbeLine {
                ok: false,
                peer: None,
                served_by: None,
                client_seen: None,
                local: None,
                error: Some(failure.error.clone()),
                stage: Some(failure.stage),
                elapsed_ms: Some(failure.elapsed_ms),
            },
        };
        serde_json::to_string(&line).expect("a probe line serializes")
    }

    pub fn parse_line(line: &str) -> Result<Self, ProbeError> {
        let bad = |why: String| ProbeError::BadLine {
            line: line.to_string(),
            why,
        };
        let parsed: ProbeLine = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let missing = |field: &str| bad(format!("no `{field}`"));
        if parsed.ok {
            Ok(Self::Answered(ProbeAnswer {
                peer: parsed.peer.ok_or_else(|| missing("peer"))?,
                served_by: parsed.served_by.ok_or_else(|| missing("served_by"))?,
                client_seen: parsed.client_seen.ok_or_else(|| missing("client_seen"))?,
                local: parsed.local.ok_or_else(|| missing("local"))?,
            }))
        } else {
            Ok(Self::Failed(ProbeFailure {
                error: parsed.error.ok_or_else(|| missing("error"))?,
                stage: parsed.stage.ok_or_else(|| missing("stage"))?,
                elapsed_ms: parsed.elapsed_ms.ok_or_else(|| missing("elapsed_ms"))?,
            }))
        }
    }

    /// Every non-empty line of a probe's stdout.
    pub fn parse_output(stdout: &str) -> Result<Vec<Self>, ProbeError> {
        stdout
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(Self::parse_line)
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("running the probe: {0}")]
    Run(#[from] super::LabError),
    #[error("probe line {line:?}: {why}")]
    BadLine { line: String, why: String },
    #[error("reading the probe's output: {0}")]
    Read(#[source] std::io::Error),
    #[error("the probe exited with {0}")]
    Exit(String),
}

/// `timeout` for a connect or read that ran out of time, else the errno's name.
fn error_name(error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
        return "timeout".to_string();
    }
    match error.raw_os_error() {
        Some(code) => errno_name(code),
        None => error.to_string(),
    }
}

#[cfg(target_env = "gnu")]
fn errno_name(code: i32) -> String {
    unsafe extern "C" {
        /// glibc 2.32+: `ECONNREFUSED` for 111; NULL for an unknown number.
        fn strerrorname_np(errnum: libc::c_int) -> *const libc::c_char;
    }
    // SAFETY: strerrorname_np takes any int and returns NULL or a static C string.
    let name = unsafe { strerrorname_np(code) };
    if name.is_null() {
        return format!("errno {code}");
    }
    // SAFETY: non-NULL: a NUL-terminated string with static lifetime.
    unsafe { std::ffi::CStr::from_ptr(name) }
        .to_string_lossy()
        .into_owned()
}

#[cfg(not(target_env = "gnu"))]
fn errno_name(code: i32) -> String {
    format!("errno {code}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answered_line_round_trips_with_ipv6_addresses() {
        let result = ProbeResult::Answered(ProbeAnswer {
            peer: "[2001:2:0:100::10]:80".parse().expect("literal"),
            served_by: "my-app-3".to_string(),
            client_seen: "[2001:2:0:20::10]:40312".parse().expect("literal"),
            local: "[2001:2:0:20::10]:40312".parse().expect("literal"),
        });
        let line = result.to_json_line();
        assert_eq!(
            line,
            r#"{"ok":true,"peer":"[2001:2:0:100::10]:80","served_by":"my-app-3","client_seen":"[2001:2:0:20::10]:40312","local":"[2001:2:0:20::10]:40312"}"#
        );
        assert_eq!(ProbeResult::parse_line(&line).expect("parses"), result);
    }

    #[test]
    fn failed_line_names_the_errno() {
        let started = Instant::now();
        let refused = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        let result = ProbeResult::from_attempt(Err((ProbeStage::Connect, refused)), started);
        let line = result.to_json_line();
        assert!(
            line.starts_with(
                r#"{"ok":false,"error":"ECONNREFUSED","stage":"connect","elapsed_ms":"#
            ),
            "{line}"
        );
        assert_eq!(ProbeResult::parse_line(&line).expect("parses"), result);
    }

    #[test]
    fn read_timeouts_are_named_timeout() {
        let would_block = std::io::Error::from_raw_os_error(libc::EAGAIN);
        assert_eq!(error_name(&would_block), "timeout");
        let connect_timeout = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert_eq!(error_name(&connect_timeout), "timeout");
        assert_eq!(
            error_name(&std::io::Error::from_raw_os_error(libc::ENETUNREACH)),
            "ENETUNREACH"
        );
    }

    #[test]
    fn a_line_without_its_fields_is_an_error() {
        let error = ProbeResult::parse_line(r#"{"ok":true,"peer":"198.18.100.10:80"}"#)
            .expect_err("served_by is missing");
        assert!(error.to_string().contains("served_by"), "{error}");
    }

    #[test]
    fn args_are_what_the_cli_reads() {
        let target: SocketAddr = "198.18.100.53:53".parse().expect("literal");
        assert_eq!(
            Probe::udp(target).count(3).unconnected().args(),
            [
                "probe",
                "--udp",
                "198.18.100.53:53",
                "--timeout-ms",
                "1000",
                "--count",
                "3",
                "--unconnected"
            ]
        );
        assert_eq!(
            Probe::tcp(target).hold(Duration::from_millis(2500)).args()[5..],
            ["--hold-ms", "2500"]
        );
    }
}
