//! Root tests of the lab's namespace guard: traffic flows between namespaces it builds, and
//! everything it made is gone after drop, also after a panic.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    path::Path,
    time::Duration,
};

use slicelb_lab::lab::{Lab, Netns, require_root};

fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

#[test]
fn lab_routes_udp_from_client_to_every_backend_and_cleans_up() {
    require_root("lab_routes_udp_from_client_to_every_backend_and_cleans_up");
    let lab = Lab::new(2).expect("build lab");
    let names: Vec<String> = [&lab.client, &lab.node]
        .into_iter()
        .chain(lab.backends.iter().map(|b| &b.netns))
        .map(|ns| ns.name().to_string())
        .collect();

    for backend in &lab.backends {
        for backend_addr in [
            SocketAddr::new(backend.ipv4.into(), 7000),
            SocketAddr::new(backend.ipv6.into(), 7000),
        ] {
            let server = backend
                .netns
                .enter(move || UdpSocket::bind(backend_addr).expect("bind in backend"))
                .expect("enter backend");
            server
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("set timeout");
            let sent = lab
                .client
                .enter(move || {
                    let bind: SocketAddr = if backend_addr.is_ipv4() {
                        "0.0.0.0:0".parse().expect("literal")
                    } else {
                        "[::]:0".parse().expect("literal")
                    };
                    let socket = UdpSocket::bind(bind).expect("bind in client");
                    socket.send_to(b"hello", backend_addr).expect("send")
                })
                .expect("enter client");
            assert_eq!(sent, 5);
            let mut buf = [0u8; 16];
            let (n, from) = server
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("datagram to {backend_addr} not received: {e}"));
            assert_eq!(&buf[..n], b"hello", "payload to {backend_addr}");
            let client_ip: IpAddr = if backend_addr.is_ipv4() {
                Lab::CLIENT_IPV4.into()
            } else {
                Lab::CLIENT_IPV6.into()
            };
            assert_eq!(from.ip(), client_ip, "the node forwards without rewriting");
        }
    }
    for name in &names {
        assert!(
            netns_exists(name),
            "{name} should exist while the lab is up"
        );
    }
    drop(lab);
    for name in &names {
        assert!(
            !netns_exists(name),
            "{name} should be removed when the lab is dropped"
        );
    }
}

#[test]
fn netns_is_removed_after_a_panic() {
    require_root("netns_is_removed_after_a_panic");
    let result = std::panic::catch_unwind(|| {
        let ns = Netns::new("panic").expect("create netns");
        let name = ns.name().to_string();
        assert!(netns_exists(&name));
        std::panic::panic_any(name);
    });
    let name = *result
        .expect_err("the closure panics")
        .downcast::<String>()
        .expect("panic payload is the netns name");
    assert!(
        !netns_exists(&name),
        "{name} should be removed while unwinding"
    );
}

#[test]
fn lab_servers_answer_http_and_udp_with_their_names() {
    require_root("lab_servers_answer_http_and_udp_with_their_names");
    use slicelb_lab::lab::servers::{http_get_once, udp_ask_once};
    let lab = Lab::new(2).expect("build lab");
    let _servers = lab
        .start_servers(std::path::Path::new(env!("CARGO_BIN_EXE_slicelb-lab")))
        .expect("start servers");
    let timeout = Duration::from_secs(2);
    for backend in &lab.backends {
        for ip in [IpAddr::from(backend.ipv4), IpAddr::from(backend.ipv6)] {
            let name = lab
                .client
                .enter(move || {
                    // The servers need a moment to bind; retry briefly.
                    let mut last = None;
                    for _ in 0..50 {
                        match http_get_once(SocketAddr::new(ip, 8080), timeout) {
                            Ok(name) => return name,
                            Err(e) => last = Some(e),
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    panic!("no HTTP answer from {ip}: {last:?}");
                })
                .expect("enter client");
            assert_eq!(name, backend.name(), "HTTP answer from {ip}");
            let udp = lab
                .client
                .enter(move || udp_ask_once(SocketAddr::new(ip, 9000), timeout))
                .expect("enter client")
                .unwrap_or_else(|e| panic!("no UDP answer from {ip}: {e}"));
            assert_eq!(udp, backend.name(), "UDP answer from {ip}");
        }
    }
}

/// The foundation's first lab test: real UDP between two namespaces through an interface
/// with the programs attached (TC ingress and egress, unpinned), and the per-protocol
/// counters match what was sent.
#[test]
fn protocol_counters_match_udp_sent_through_attached_programs() {
    require_root("protocol_counters_match_udp_sent_through_attached_programs");
    use lb_common::ProtoCounter;
    use slicelb::dataplane::{
        aya_maps::AyaMaps,
        loader::{Datapath, DatapathOptions, IngressMode},
    };
    let lab = Lab::new(1).expect("build lab");
    let backend = SocketAddr::new(lab.backends[0].ipv4.into(), 7001);
    let server = lab.backends[0]
        .netns
        .enter(move || UdpSocket::bind(backend).expect("bind in backend"))
        .expect("enter backend");
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set timeout");
    // Attach inside the node's namespace (interfaces are looked up there); the programs stay
    // attached while `datapath` lives.
    let datapath = lab
        .node
        .enter(|| {
            let mut datapath =
                Datapath::load_unpinned(&DatapathOptions::default()).expect("load programs");
            datapath
                .attach(Lab::NODE_CLIENT_IFACE, IngressMode::Tc)
                .expect("attach to the node's client-facing veth");
            datapath
        })
        .expect("enter node");
    let maps = AyaMaps::from_datapath(&datapath).expect("maps");
    let count = |which: ProtoCounter| -> u64 {
        maps.protocols()
            .expect("read PROTO_STATS")
            .into_iter()
            .find(|(p, _)| *p == which)
            .map(|(_, n)| n)
            .expect("every counter is listed")
    };
    let udp_before = count(ProtoCounter::Udp);
    let sent = 40u64;
    lab.client
        .enter(move || {
            let socket = UdpSocket::bind("0.0.0.0:0").expect("bind in client");
            for _ in 0..sent {
                socket.send_to(b"count me", backend).expect("send");
            }
        })
        .expect("enter client");
    let mut received = 0u64;
    let mut buf = [0u8; 32];
    while received < sent {
        server
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("only {received} of {sent} datagrams arrived: {e}"));
        received += 1;
    }
    assert_eq!(
        count(ProtoCounter::Udp) - udp_before,
        sent,
        "every UDP datagram crossing the attached interface is counted once"
    );
    assert!(count(ProtoCounter::Ipv4) >= sent);
}
