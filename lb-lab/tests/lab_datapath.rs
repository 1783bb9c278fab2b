//! Real traffic through the datapath: client namespace -> node namespace (programs on the
//! node's client-facing veth) -> three backend namespaces. TCP and UDP, IPv4 and IPv6, to
//! service addresses; checksum offload on and off; XDP (generic and native, forwarding from XDP
//! to the backends' links: the fast path) and TC ingress.
//! Needs root.

#[path = "../../lb-userspace/tests/support/kernel.rs"]
mod kernel;

use std::{
    collections::BTreeSet,
    io::ErrorKind,
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    path::Path,
    time::Duration,
};

use kernel::{Service, test_capacity};
use lb_common::{
    Config, FastPathCounter, PROTO_TCP, PROTO_UDP, Reason,
    backend_state::{ACTIVE, TERMINATING},
    frontend_kind,
};
use slicelb::dataplane::{
    MapOp, MapWriter,
    aya_maps::AyaMaps,
    loader::{Datapath, DatapathOptions, IngressMode, interface_index},
};
use slicelb_lab::{
    bench::ebpf::Pass,
    lab::{ChildGuard, Lab, PinDir, require_root, servers::HttpConnection, set_tx_offload},
};

const VIP4: &str = "198.18.100.1";
const VIP6: &str = "2001:2:0:100::1";
const EMPTY4: &str = "198.18.100.2";
const EMPTY6: &str = "2001:2:0:100::2";
const HTTP_PORT: u16 = 8080;
const UDP_PORT: u16 = 9000;
const TIMEOUT: Duration = Duration::from_secs(3);

/// Services with backends `1..=3` (`ids` picks which, with their state).
fn services(backends: &[(u8, u8)], offset_shift: u32) -> Vec<Service> {
    let v4 = |k: u8| format!("198.18.{k}.2");
    let v6 = |k: u8| format!("2001:2:0:{k}::2");
    let make = |id: u32,
                vip: &str,
                port: u16,
                proto: u8,
                base: u32,
                addr: &dyn Fn(u8) -> String,
                target: u16| {
        let list: Vec<(u32, String, u16, u8)> = backends
            .iter()
            .map(|(k, state)| (base + u32::from(*k), addr(*k), target, *state))
            .collect();
        let refs: Vec<(u32, &str, u16, u8)> = list
            .iter()
            .map(|(i, a, p, s)| (*i, a.as_str(), *p, *s))
            .collect();
        Service::new(id, vip, port, proto, frontend_kind::CLUSTER_IP, 0, &refs)
            .at_offset(id * 512 + offset_shift)
    };
    vec![
        make(1, VIP4, 80, PROTO_TCP, 0, &v4, HTTP_PORT),
        make(2, VIP4, 53, PROTO_UDP, 10, &v4, UDP_PORT),
        make(3, VIP6, 80, PROTO_TCP, 20, &v6, HTTP_PORT),
        make(4, VIP6, 53, PROTO_UDP, 30, &v6, UDP_PORT),
        Service::new(5, EMPTY4, 80, PROTO_TCP, frontend_kind::CLUSTER_IP, 0, &[]),
        Service::new(6, EMPTY4, 53, PROTO_UDP, frontend_kind::CLUSTER_IP, 0, &[]),
        Service::new(7, EMPTY6, 80, PROTO_TCP, frontend_kind::CLUSTER_IP, 0, &[]),
    ]
}

struct Setup {
    maps: AyaMaps,
    _peer_link: Option<Pass>,
    /// XDP on the backends' ends of their links, so that they take frames the fast path
    /// redirects (XDP modes only).
    _backend_links: Vec<Pass>,
    datapath: Datapath,
    _pin: PinDir,
    _servers: Vec<ChildGuard>,
    lab: Lab,
}

/// The lab's own binary: the backends run its `lab-server` command.
fn lab_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_slicelb-lab"))
}

fn setup(label: &str, mode: IngressMode, client_offload: bool, backend_tx: bool) -> Setup {
    let lab = Lab::new(3).expect("building the lab");
    let servers = lab
        .start_servers(lab_binary())
        .expect("starting backend servers");
    lab.set_client_tx_offload(client_offload)
        .expect("client offload");
    for backend in &lab.backends {
        set_tx_offload(&lab.node, &backend.node_iface, backend_tx)
            .expect("node backend-facing offload");
    }
    let pin = PinDir::new(label);
    let options = DatapathOptions {
        capacity: test_capacity(),
        config: Config::default(),
        overwrite_config: true,
    };
    let mut datapath = Datapath::open(&pin.0, &options).expect("loading the datapath");
    // Interface names and indexes are per namespace: attach from inside the node's.
    lab.node
        .enter(|| datapath.attach(Lab::NODE_CLIENT_IFACE, mode))
        .expect("entering the node")
        .unwrap_or_else(|e| panic!("{label}: attaching: {e}"));
    // A veth hands frames sent with native XDP_TX (our rejects) to its peer only when the
    // peer runs XDP too: give the client's veth the do-nothing program.
    let peer_link = (mode == IngressMode::XdpNative)
        .then(|| Pass::attach(&lab.client, Lab::CLIENT_IFACE).expect("XDP on the client's veth"));
    // XDP modes forward from XDP (the fast path) to the backends' links, which then take
    // redirected frames; TC ingress forwards through the stack.
    let backend_links = if mode == IngressMode::Tc {
        Vec::new()
    } else {
        let links: Vec<Pass> = lab
            .backends
            .iter()
            .map(|b| Pass::attach(&b.netns, "eth0").expect("XDP on a backend's veth"))
            .collect();
        let ifaces: Vec<String> = lab.backends.iter().map(|b| b.node_iface.clone()).collect();
        lab.node
            .enter(|| {
                let indexes: Vec<u32> = ifaces
                    .iter()
                    .map(|iface| interface_index(iface).expect("interface index"))
                    .collect();
                datapath.set_fast_path(true, &indexes)
            })
            .expect("entering the node")
            .unwrap_or_else(|e| panic!("{label}: allowing the fast path: {e}"));
        links
    };
    let mut maps = AyaMaps::from_pin(&pin.0, test_capacity()).expect("opening pinned maps");
    let ops: Vec<MapOp> = services(&[(1, ACTIVE), (2, ACTIVE), (3, ACTIVE)], 0)
        .iter()
        .flat_map(Service::ops)
        .collect();
    maps.apply(&ops).expect("writing services");
    wait_for_servers(&lab);
    Setup {
        maps,
        _peer_link: peer_link,
        _backend_links: backend_links,
        datapath,
        _pin: pin,
        _servers: servers,
        lab,
    }
}

/// The servers start asynchronously: wait until each answers directly.
fn wait_for_servers(lab: &Lab) {
    for backend in &lab.backends {
        let addr = SocketAddr::new(backend.ipv4.into(), HTTP_PORT);
        let ok = (0..50).any(|_| {
            let up = lab
                .client
                .enter(move || TcpStream::connect_timeout(&addr, TIMEOUT).is_ok())
                .expect("enter client");
            if !up {
                std::thread::sleep(Duration::from_millis(100));
            }
            up
        });
        assert!(ok, "backend server {addr} never came up");
    }
}

fn sock(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(addr.parse::<IpAddr>().expect("address"), port)
}

fn http(lab: &Lab, to: SocketAddr) -> std::io::Result<String> {
    lab.client
        .enter(move || slicelb_lab::lab::servers::http_get_once(to, TIMEOUT))
        .expect("enter client")
}

/// One datagram; returns the answer and the address it came from.
fn udp(lab: &Lab, to: SocketAddr) -> std::io::Result<(String, SocketAddr)> {
    lab.client
        .enter(move || {
            let bind: SocketAddr = if to.is_ipv4() {
                "0.0.0.0:0".parse().expect("literal")
            } else {
                "[::]:0".parse().expect("literal")
            };
            let socket = UdpSocket::bind(bind)?;
            socket.set_read_timeout(Some(TIMEOUT))?;
            socket.send_to(b"who", to)?;
            let mut buf = [0u8; 256];
            let (n, from) = socket.recv_from(&mut buf)?;
            Ok((String::from_utf8_lossy(&buf[..n]).to_string(), from))
        })
        .expect("enter client")
}

/// Every request answered, replies from the service address, all backends used.
fn check_traffic(setup: &Setup, label: &str) {
    for vip in [VIP4, VIP6] {
        let mut seen = BTreeSet::new();
        for i in 0..30 {
            let name = http(&setup.lab, sock(vip, 80)).unwrap_or_else(|e| {
                panic!(
                    "{label}: http request {i} to {vip}: {e}; counters {:?}",
                    setup.maps.reasons()
                )
            });
            seen.insert(name);
        }
        assert_eq!(
            seen.len(),
            3,
            "{label}: TCP to {vip} reached {seen:?}, expected all three backends"
        );
        let mut seen = BTreeSet::new();
        for i in 0..30 {
            let (name, from) = udp(&setup.lab, sock(vip, 53)).unwrap_or_else(|e| {
                panic!(
                    "{label}: udp request {i} to {vip}: {e}; counters {:?}",
                    setup.maps.reasons()
                )
            });
            assert_eq!(
                from,
                sock(vip, 53),
                "{label}: the UDP reply must come from the service address"
            );
            seen.insert(name);
        }
        assert_eq!(
            seen.len(),
            3,
            "{label}: UDP to {vip} reached {seen:?}, expected all three backends"
        );
    }
}

/// A service without backends is refused at once (RST / ICMP port unreachable).
fn check_refused(setup: &Setup, label: &str) {
    for addr in [sock(EMPTY4, 80), sock(EMPTY6, 80)] {
        let started = std::time::Instant::now();
        let result = setup
            .lab
            .client
            .enter(move || TcpStream::connect_timeout(&addr, TIMEOUT).map(|_| ()))
            .expect("enter client");
        let error = result.expect_err("connecting to a service without backends must fail");
        assert_eq!(
            error.kind(),
            ErrorKind::ConnectionRefused,
            "{label}: TCP to {addr}: {error}"
        );
        assert!(
            started.elapsed() < TIMEOUT,
            "{label}: the refusal must be immediate"
        );
    }
    let addr = sock(EMPTY4, 53);
    let result = setup
        .lab
        .client
        .enter(move || -> std::io::Result<()> {
            let socket = UdpSocket::bind("0.0.0.0:0")?;
            socket.connect(addr)?;
            socket.set_read_timeout(Some(TIMEOUT))?;
            socket.send(b"who")?;
            let mut buf = [0u8; 64];
            socket.recv(&mut buf).map(|_| ())
        })
        .expect("enter client");
    let error = result.expect_err("UDP to a service without backends must be refused");
    assert_eq!(
        error.kind(),
        ErrorKind::ConnectionRefused,
        "{label}: UDP to {addr}: {error}"
    );
}

/// Path MTU discovery through the balancer: the backends' links get MTU 1280, so the node
/// answers the client's full-size (DNATed) segments with frag-needed / packet-too-big
/// quoting the backend; only when TC egress translates those errors does the client learn
/// the path MTU for the service address and the upload complete.
fn check_path_mtu(setup: &Setup, label: &str) {
    use std::io::{Read as _, Write as _};
    for vip in [VIP4, VIP6] {
        let to = sock(vip, 80);
        // Connect first: the handshake agrees on an MSS for 1500-byte links.
        let mut stream = setup
            .lab
            .client
            .enter(move || TcpStream::connect_timeout(&to, TIMEOUT))
            .expect("enter client")
            .unwrap_or_else(|e| panic!("{label}: connecting to {vip}: {e}"));
        set_backend_mtu(setup, "1280");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let body = vec![b'x'; 60_000];
        let head = format!(
            "POST / HTTP/1.1\r\nHost: lab\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut response = vec![0u8; 512];
        let result = stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(&body))
            .and_then(|()| stream.read(&mut response));
        set_backend_mtu(setup, "1500");
        let n = result.unwrap_or_else(|e| {
            panic!(
                "{label}: uploading 60 kB to {vip} over a 1280-byte path: {e}; counters {:?}",
                setup.maps.reasons()
            )
        });
        let answer = String::from_utf8_lossy(&response[..n]).to_string();
        assert!(
            answer.contains("backend-"),
            "{label}: unexpected answer {answer:?}"
        );
    }
    let reasons = setup.maps.reasons().expect("reasons");
    let translated = reasons
        .iter()
        .find(|(r, _)| r.name() == "icmp_error_translated")
        .map(|(_, n)| *n)
        .unwrap_or(0);
    assert!(
        translated > 0,
        "{label}: no ICMP error was translated: {reasons:?}"
    );
}

fn set_backend_mtu(setup: &Setup, mtu: &str) {
    for backend in &setup.lab.backends {
        setup
            .lab
            .node
            .ip(&["link", "set", &backend.node_iface, "mtu", mtu])
            .expect("node mtu");
        backend
            .netns
            .ip(&["link", "set", "eth0", "mtu", mtu])
            .expect("backend mtu");
    }
}

fn run_mode(label: &str, mode: IngressMode, client_offload: bool, backend_tx: bool) {
    let setup = setup(label, mode, client_offload, backend_tx);
    check_traffic(&setup, label);
    check_refused(&setup, label);
    let reasons = setup.maps.reasons().expect("reasons");
    let count = |name: &str| count_named(&reasons, Reason::name, name);
    // 60 TCP connections are 60 new flows; UDP requests may reuse a source port (a flow).
    assert!(
        count("lb_new_flow") >= 60,
        "{label}: new flows counted: {reasons:?}"
    );
    assert!(
        count("reply_translated") >= 120,
        "{label}: replies translated: {reasons:?}"
    );
    check_fast_path_counted(&setup, label, mode);
    check_path_mtu(&setup, label);
    drop(setup.datapath);
}

/// The count of the counter called `name` in a map's `(counter, count)` list.
fn count_named<T: Copy>(counts: &[(T, u64)], name_of: fn(T) -> &'static str, name: &str) -> u64 {
    counts
        .iter()
        .find(|(counter, _)| name_of(*counter) == name)
        .map_or(0, |(_, n)| *n)
}

/// XDP modes sent the balanced packets themselves (redirected to the backends' links, which
/// are listed), and counted it; TC ingress never counts there.
fn check_fast_path_counted(setup: &Setup, label: &str, mode: IngressMode) {
    let counts = setup.maps.fast_path_counters().expect("fast path counters");
    let count = |name: &str| count_named(&counts, FastPathCounter::name, name);
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    if mode == IngressMode::Tc {
        assert_eq!(
            total, 0,
            "{label}: TC counted fast path outcomes: {counts:?}"
        );
    } else {
        // 60 TCP connections, each with at least its handshake's ACK and a request.
        assert!(
            count("sent_redirect") >= 120,
            "{label}: redirected from XDP: {counts:?}"
        );
        assert_eq!(count("failed"), 0, "{label}: {counts:?}");
    }
}

#[test]
fn tc_ingress_with_client_checksum_offload() {
    require_root("tc_ingress_with_client_checksum_offload");
    run_mode("tc-offload-on", IngressMode::Tc, true, true);
}

#[test]
fn tc_ingress_without_offload_and_backend_tx_off() {
    require_root("tc_ingress_without_offload_and_backend_tx_off");
    run_mode("tc-offload-off", IngressMode::Tc, false, false);
}

#[test]
fn xdp_generic_with_full_checksums() {
    require_root("xdp_generic_with_full_checksums");
    run_mode("xdp-generic", IngressMode::XdpGeneric, false, true);
}

#[test]
fn xdp_native_on_veth_with_full_checksums() {
    require_root("xdp_native_on_veth_with_full_checksums");
    run_mode("xdp-native", IngressMode::XdpNative, false, false);
}

/// A long-lived connection keeps its backend while backends are added and removed, also
/// across an agent restart that adopts the pinned maps and replaces the programs.
#[test]
fn long_lived_connection_keeps_its_backend() {
    require_root("long_lived_connection_keeps_its_backend");
    let label = "long-lived";
    let mut setup = setup(label, IngressMode::Tc, true, true);
    let vip = sock(VIP4, 80);
    let mut connection = setup
        .lab
        .client
        .enter(move || HttpConnection::connect(vip, TIMEOUT))
        .expect("enter client")
        .expect("connecting to the service");
    let first = setup
        .lab
        .client
        .enter(|| connection.get())
        .expect("enter client")
        .expect("first request");
    let kept: u8 = first
        .trim_start_matches("backend-")
        .parse()
        .expect("backend name");

    // Backend 4 joins; another backend leaves; the connection's backend is terminating.
    let backend4 = setup.lab.add_backend(4).expect("adding backend 4");
    let server4 = backend4.start_server(lab_binary()).expect("server 4");
    let removed = (1..=3).find(|k| *k != kept).expect("another backend");
    let remaining: Vec<(u8, u8)> = (1..=4)
        .filter(|k| *k != removed)
        .map(|k| (k, if k == kept { TERMINATING } else { ACTIVE }))
        .collect();
    let mut ops: Vec<MapOp> = services(&remaining, 256)
        .iter()
        .flat_map(Service::ops)
        .collect();
    ops.extend([
        MapOp::DeleteBackend {
            id: u32::from(removed),
        },
        MapOp::DeleteBackend {
            id: 10 + u32::from(removed),
        },
    ]);
    setup.maps.apply(&ops).expect("changing the backends");
    std::thread::sleep(Duration::from_millis(300));

    for i in 0..5 {
        let again = setup
            .lab
            .client
            .enter(|| connection.get())
            .expect("enter client")
            .unwrap_or_else(|e| panic!("request {i} on the kept connection: {e}"));
        assert_eq!(
            again, first,
            "the established connection moved to another backend"
        );
    }
    let mut seen = BTreeSet::new();
    for i in 0..30 {
        seen.insert(http(&setup.lab, vip).unwrap_or_else(|e| panic!("new connection {i}: {e}")));
    }
    assert!(
        !seen.contains(&format!("backend-{removed}")),
        "a removed backend got new connections: {seen:?}"
    );
    assert!(
        !seen.contains(&first),
        "a terminating backend got new connections: {seen:?}"
    );
    assert!(
        seen.contains("backend-4"),
        "the added backend got no connection: {seen:?}"
    );

    // Restart: open the pinned maps again and replace the programs in place.
    let options = DatapathOptions {
        capacity: test_capacity(),
        config: Config::default(),
        overwrite_config: false,
    };
    let pin = setup._pin.0.clone();
    let mut restarted = Datapath::open(&pin, &options).expect("reopening the pinned datapath");
    setup
        .lab
        .node
        .enter(|| restarted.attach(Lab::NODE_CLIENT_IFACE, IngressMode::Tc))
        .expect("entering the node")
        .expect("replacing the attached programs");
    drop(std::mem::replace(&mut setup.datapath, restarted));
    let after = setup
        .lab
        .client
        .enter(|| connection.get())
        .expect("enter client")
        .expect("request after the restart");
    assert_eq!(
        after, first,
        "the connection lost its backend across the restart"
    );
    assert!(
        setup.maps.conntrack_entries().expect("conntrack").entries > 0,
        "conntrack kept across the restart"
    );
    drop(server4);
}
