//! New flows that share a tuple with a closed one, as a busy client and a small masquerade
//! range make them, are answered at their first SYN.
//!
//! - A masquerade port is not handed to a new flow while the endpoint may still hold the
//!   closed flow's tuple (node address:port → endpoint). The endpoint here closes first, as
//!   an HTTP server closing an idle keep-alive connection does, so it keeps the old tuple
//!   for up to 60 s (FIN_WAIT_2 while the client has not closed, TIME_WAIT after). A new
//!   flow given that tuple reaches that socket: its SYN is answered with an ACK of the old
//!   connection instead of a SYN-ACK, which (no SYN-ACK, no RST) leaves this node
//!   untranslated, so the client waits for SYN retransmissions that fare no better.
//!   netfilter keeps a closed tuple in its conntrack table for 120 s
//!   (`nf_conntrack_tcp_timeout_time_wait`) and never picks a used one; so does slicelb
//!   (`--masquerade-tcp-time-wait`).
//! - A client port reused for another frontend of the same endpoint: the SYN-ACK leaves
//!   from the frontend the client asked.
//!
//! The cluster: node-a runs my-app-1, node-b runs my-app-2, the Services' only endpoint;
//! node-a masquerades.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    time::Duration,
};

use slicelb_lab::lab::{
    cluster::{
        ClusterSpec,
        manifests::{ClusterEndpoint, ClusterService, Conditions, MY_APP_SERVICE, write_services},
        serving::ServingCluster,
    },
    probe::{Probe, ProbeProtocol},
    require_root, wait_until,
};

/// A Service whose endpoint port is this test's closing-first server.
const CLOSING_SERVICE: ClusterService = ClusterService {
    name: "closing-first",
    port_name: "http",
    protocol: ProbeProtocol::Tcp,
    cluster_ipv4: Ipv4Addr::new(198, 18, 100, 81),
    cluster_ipv6: Ipv6Addr::new(0x2001, 2, 0, 0x100, 0, 0, 0, 0x81),
    port: 80,
    target_port: CLOSING_PORT,
    node_port: Some(30081),
    internal_local: false,
    external_local: false,
    health_check_node_port: None,
};
const CLOSING_PORT: u16 = 8081;
/// my-app's twin: another Service, so other frontends, with the same endpoint (the lab's
/// pod server, which closes after the client).
const MY_APP_TWIN: ClusterService = ClusterService {
    name: "my-app-twin",
    cluster_ipv4: Ipv4Addr::new(198, 18, 100, 82),
    cluster_ipv6: Ipv6Addr::new(0x2001, 2, 0, 0x100, 0, 0, 0, 0x82),
    node_port: Some(30082),
    ..MY_APP_SERVICE
};
/// The client's source port for both flows of the twin test (in the ephemeral range, as
/// the kernel would pick it).
const REUSED_CLIENT_PORT: u16 = 45000;
const ENDPOINT_POD: &str = "my-app-2";
/// Closed flows whose tuples the endpoint still holds; the range has as many free ports.
const STALE_FLOWS: usize = 5;
const MASQUERADE_PORTS: &str = "61000-61009";
/// Past the moment a closed flow's port was free again before the fix: the TCP transient
/// timeout (10 s) and the agent's expiry interval (5 s), with a margin for a loaded machine.
/// Well within the endpoint's 60 s.
const PAST_TRANSIENT_EXPIRY: Duration = Duration::from_secs(20);
/// As lab_socket_grid: past the SYN retransmissions at 1 s and 3 s.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
/// A bound on a failure (a sync that never comes), not a measured time.
const PATIENCE: Duration = Duration::from_secs(30);

/// Serves `<pod> <client>\n` for each `probe` line and then closes first.
fn start_closing_server(lab: &ServingCluster) {
    let pod = lab.cluster.pod(ENDPOINT_POD);
    let listener = pod
        .netns
        .enter(|| TcpListener::bind(SocketAddr::from(([0u16; 8], CLOSING_PORT))))
        .expect("enter the endpoint's namespace")
        .expect("bind the closing server");
    // The listener lives as long as the test process; the namespace goes with the cluster.
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let Ok(client) = stream.peer_addr() else {
                continue;
            };
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            if matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                let answer = slicelb_lab::lab::servers::pod_answer(ENDPOINT_POD, client);
                let _ = (&stream).write_all(format!("{answer}\n").as_bytes());
            }
            // Dropped here: the server's FIN goes first.
        }
    });
}

/// A connection from outside to `target` from `source_port` (0: the kernel picks one),
/// asked once: the stream and the client address the endpoint saw. Panics when it is not
/// answered within [`ANSWER_TIMEOUT`].
fn ask_from_outside(
    lab: &ServingCluster,
    target: SocketAddr,
    source_port: u16,
) -> (TcpStream, SocketAddr) {
    use nix::sys::{socket, time::TimeVal};
    let SocketAddr::V4(target_v4) = target else {
        panic!("an IPv4 target: {target}")
    };
    let outside = lab.cluster.outside();
    let connected = outside.netns.enter(|| -> nix::Result<TcpStream> {
        let fd = socket::socket(
            socket::AddressFamily::Inet,
            socket::SockType::Stream,
            socket::SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        // A port whose earlier connection is in TIME_WAIT may be bound again (for another
        // destination), as the kernel's own choice of a port may do.
        socket::setsockopt(&fd, socket::sockopt::ReuseAddr, &true)?;
        // connect() gives up after the send timeout.
        let timeout = TimeVal::new(ANSWER_TIMEOUT.as_secs() as _, 0);
        socket::setsockopt(&fd, socket::sockopt::SendTimeout, &timeout)?;
        let source = std::net::SocketAddrV4::new(outside.addr_v4, source_port);
        socket::bind(fd.as_raw_fd(), &socket::SockaddrIn::from(source))?;
        socket::connect(fd.as_raw_fd(), &socket::SockaddrIn::from(target_v4))?;
        Ok(TcpStream::from(fd))
    });
    let stream = connected
        .expect("enter the outside namespace")
        .unwrap_or_else(|e| panic!("connect from outside to {target} (port {source_port}): {e}"));
    stream
        .set_read_timeout(Some(ANSWER_TIMEOUT))
        .expect("read timeout");
    (&stream).write_all(b"probe\n").expect("send the request");
    let mut line = String::new();
    BufReader::new(&stream)
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("the answer from {target}: {e}"));
    let (served_by, seen) = line
        .trim_end()
        .split_once(' ')
        .unwrap_or_else(|| panic!("an answer `<pod> <client>`: {line:?}"));
    assert_eq!(served_by, ENDPOINT_POD, "the only endpoint answers");
    let seen = seen.parse().expect("the client address the endpoint saw");
    (stream, seen)
}

/// TCP retransmissions of the connection so far, its SYN's included.
fn total_retransmissions(stream: &TcpStream) -> u32 {
    // SAFETY: tcp_info is plain old data; getsockopt writes at most `len` bytes into it.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid socket, a buffer of `len` bytes we own.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info.tcpi_total_retrans
}

/// The node addresses and ports the endpoint still holds a closing socket towards.
fn endpoint_closing_peers(lab: &ServingCluster) -> BTreeSet<SocketAddr> {
    let output = lab
        .cluster
        .pod(ENDPOINT_POD)
        .netns
        .run(
            "ss",
            &["-tanH", "state", "fin-wait-2", "state", "time-wait"],
        )
        .expect("ss in the endpoint's namespace");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        // The peer is the last column; a dual-stack socket shows IPv4 peers IPv4-mapped.
        .filter_map(|line| line.split_whitespace().last())
        .filter_map(|peer| peer.parse::<SocketAddr>().ok())
        .map(|peer| SocketAddr::new(peer.ip().to_canonical(), peer.port()))
        .collect()
}

/// The two-node cluster with `services` (my-app-2 their only endpoint), `prepare` run
/// before the agents start (with `agent_args`), and node-a synced; node-a's IPv4 address.
fn two_node_lab(
    test: &str,
    agent_args: &[&str],
    services: &[ClusterService],
    prepare: impl FnOnce(&ServingCluster),
) -> (ServingCluster, IpAddr) {
    require_root(test);
    let spec = ClusterSpec::new(&[("node-a", &["my-app-1"]), ("node-b", &[ENDPOINT_POD])]);
    let mut lab = ServingCluster::new(test, &spec, agent_args);
    prepare(&lab);
    let endpoint = ClusterEndpoint::new(lab.cluster.pod(ENDPOINT_POD), Conditions::READY);
    write_services(lab.manifests.path(), services, &[endpoint]).expect("write manifests");
    for node in ["node-a", "node-b"] {
        lab.start_agent(node);
    }
    // my-app-1 reaches a ClusterIP (socket level, nothing masqueraded): node-a synced.
    wait_until("node-a's first sync", PATIENCE, || {
        let probe = Probe::tcp(services[0].addr_v4()).timeout(Duration::from_secs(1));
        lab.run(lab.command("my-app-1"), &probe)[0]
            .answer()
            .is_some()
    });
    let node_a = lab.cluster.node("node-a").addr_v4.into();
    (lab, node_a)
}

#[test]
fn a_closed_flows_masquerade_port_is_not_reused_while_the_endpoint_holds_its_tuple() {
    let (lab, node_a) = two_node_lab(
        "masq_reuse",
        &["--masquerade-ports", MASQUERADE_PORTS],
        &[CLOSING_SERVICE],
        start_closing_server,
    );
    let target = SocketAddr::new(node_a, CLOSING_SERVICE.node_port.expect("a NodePort"));

    // Closed by the endpoint; the client keeps its end open (CLOSE_WAIT), so the endpoint
    // holds each tuple in FIN_WAIT_2.
    let mut stale = Vec::new();
    let mut stale_ports = BTreeSet::new();
    for _ in 0..STALE_FLOWS {
        let (stream, seen) = ask_from_outside(&lab, target, 0);
        assert_eq!(seen.ip(), node_a, "masqueraded as node-a");
        let mut rest = Vec::new();
        (&stream)
            .read_to_end(&mut rest)
            .expect("the endpoint closes the connection");
        assert!(stale_ports.insert(seen.port()), "two live flows, one port");
        stale.push(stream);
    }
    std::thread::sleep(PAST_TRANSIENT_EXPIRY);
    let held = endpoint_closing_peers(&lab);
    for port in &stale_ports {
        assert!(
            held.contains(&SocketAddr::new(node_a, *port)),
            "the endpoint still holds {node_a}:{port} (it does for 60 s): {held:?}"
        );
    }

    // New flows: each must get a port whose tuple the endpoint does not hold, and so be
    // answered by its first SYN.
    let mut fresh = Vec::new();
    for attempt in 0..STALE_FLOWS {
        let (stream, seen) = ask_from_outside(&lab, target, 0);
        assert!(
            !stale_ports.contains(&seen.port()),
            "new flow {attempt} got {seen}, a tuple the endpoint still holds (stale ports \
             {stale_ports:?})"
        );
        assert_eq!(
            total_retransmissions(&stream),
            0,
            "new flow {attempt} ({seen}) needed a retransmission"
        );
        fresh.push(stream);
    }
    assert_eq!(lab.reason("node-a", "drop_masquerade_ports_exhausted"), 0);
}

/// An outside client's port, used for one frontend and then (its TIME_WAIT being for that
/// frontend only) for another frontend with the same endpoint: the second connection's
/// reply tuple (endpoint → client) is the first one's, whose conntrack entry is still there
/// (reply entries are only evicted); its SYN-ACK must leave from the frontend the client
/// now asked, not the first one. Linux picks a connect()'s port per destination, so
/// a client calling several frontends of a Service reuses ports across them now and then
/// (lab_socket_grid: the client outside calls load-balancer, external and node addresses).
#[test]
fn a_client_port_reused_for_another_frontend_of_the_same_endpoint_is_answered() {
    let (lab, node_a) = two_node_lab("masq_twin", &[], &[MY_APP_SERVICE, MY_APP_TWIN], |_| {});
    let mut ports = BTreeSet::new();
    for service in [MY_APP_SERVICE, MY_APP_TWIN] {
        let target = SocketAddr::new(node_a, service.node_port.expect("a NodePort"));
        let (stream, seen) = ask_from_outside(&lab, target, REUSED_CLIENT_PORT);
        assert_eq!(seen.ip(), node_a, "{target}: masqueraded as node-a");
        // A new connection on a closed flow's client tuple gets a port of its own: the
        // endpoint may still hold the old tuple.
        assert!(ports.insert(seen.port()), "{target}: {seen} again");
        assert_eq!(
            total_retransmissions(&stream),
            0,
            "{target} ({seen}) needed a retransmission"
        );
        // Closed by the client first, as the lab's probe does.
        drop(stream);
    }
}
