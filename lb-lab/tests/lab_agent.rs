//! The real agent binary on the lab's node with `--manifest-dir`: manifest edits change where
//! new connections go while an established one keeps its backend, a UDP client that keeps its
//! source port moves off an endpoint that stops serving (as kube-proxy's conntrack cleanup
//! makes it), and killing and restarting the agent breaks neither an established TCP
//! connection nor a UDP exchange, nor ever leaves the interface without its programs.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::{SchedClassifier, TcAttachType},
};
use inotify::{Inotify, WatchMask};
use slicelb::dataplane::loader::{Datapath, DatapathOptions, IngressMode};
use slicelb_lab::lab::{
    Lab, Netns, PinDir,
    agent_lab::{AgentLab, Frontend, LabEndpoint, all_three},
    require_root,
    servers::fresh_udp_client,
};

/// The backend number in an answer (`backend-2` -> 2).
fn backend_index(answer: &str) -> u8 {
    answer
        .strip_prefix("backend-")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{answer:?} names no backend"))
}

/// One datagram on `socket` (always the same source port) to the UDP service: who answered.
fn udp_ask(socket: &UdpSocket) -> String {
    socket
        .send_to(b"who", Frontend::UdpClusterIp.addr())
        .expect("send");
    let mut buf = [0u8; 64];
    let (n, _) = socket.recv_from(&mut buf).expect("UDP answer");
    String::from_utf8_lossy(&buf[..n]).to_string()
}

/// Asks on `socket` until an answer comes from a backend other than `from`; panics after
/// `patience` with what answered.
fn udp_until_moved_off(socket: &UdpSocket, from: &str, what: &str, patience: Duration) -> String {
    let started = Instant::now();
    loop {
        let answer = udp_ask(socket);
        if answer != from {
            return answer;
        }
        assert!(
            started.elapsed() < patience,
            "{what}: the client's flow (same source port) still goes to {from} after {patience:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_udp_client_on_one_port_moves_off_an_endpoint_that_stops_serving_while_tcp_stays() {
    let (lab, _agent) = AgentLab::with_synced_agent("lab_agent_udp_stale");
    let (mut kept, tcp_backend) = lab.open_kept_connection();
    let socket = lab.in_client(|| {
        let socket = fresh_udp_client(Frontend::UdpClusterIp.addr()).expect("client socket");
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        socket
    });
    let first = udp_ask(&socket);
    assert_eq!(
        udp_ask(&socket),
        first,
        "one source port, one flow, one backend"
    );

    // The UDP flow's endpoint and the kept TCP connection's stop serving (a failing readiness
    // probe: ready and serving false); backend 4 becomes ready.
    let gone = [backend_index(&first), backend_index(&tcp_backend)];
    let mut endpoints: Vec<LabEndpoint> = (1..=3)
        .map(|k| {
            if gone.contains(&k) {
                LabEndpoint::not_serving(k)
            } else {
                LabEndpoint::ready(k)
            }
        })
        .collect();
    endpoints.push(LabEndpoint::ready(4));
    lab.write(&endpoints);
    lab.wait_until(
        "new UDP flows avoid the endpoints that stopped serving",
        Frontend::UdpClusterIp,
        Duration::from_secs(10),
        |answers| {
            answers.contains("backend-4")
                && answers.iter().all(|a| !gone.contains(&backend_index(a)))
        },
    );
    let moved = udp_until_moved_off(
        &socket,
        &first,
        "its endpoint stopped serving",
        Duration::from_secs(10),
    );
    assert!(
        !gone.contains(&backend_index(&moved)),
        "the flow moved to {moved}, which does not serve either"
    );
    for _ in 0..5 {
        assert_eq!(
            udp_ask(&socket),
            moved,
            "the moved flow keeps its new backend"
        );
    }
    kept = lab.in_client(move || {
        let name = kept
            .get()
            .expect("the TCP connection to a not-serving endpoint still works");
        assert_eq!(
            name, tcp_backend,
            "TCP flows keep their endpoint (as kube-proxy's do)"
        );
        kept
    });

    // The endpoint the flow moved to is removed from the slices altogether.
    let without: Vec<LabEndpoint> = endpoints
        .into_iter()
        .filter(|e| e.backend != backend_index(&moved))
        .collect();
    lab.write(&without);
    let last = udp_until_moved_off(
        &socket,
        &moved,
        "its endpoint was removed",
        Duration::from_secs(10),
    );
    let serving: Vec<u8> = without
        .iter()
        .filter(|e| e.serving)
        .map(|e| e.backend)
        .collect();
    assert!(
        serving.contains(&backend_index(&last)),
        "after the removal the flow went to {last}, not one of the serving {serving:?}"
    );
    drop(kept);
}

#[test]
fn manifest_edits_steer_new_connections_while_established_ones_stay() {
    let (lab, _agent) = AgentLab::with_synced_agent("lab_agent_edits");
    let (mut kept, first) = lab.open_kept_connection();

    // That endpoint stops being ready: new connections avoid it; the established one stays.
    let others = lab.make_unready(&first);
    assert!(!others.contains(&first));
    kept = lab.in_client(move || {
        let name = kept.get().expect("established connection still works");
        assert_eq!(name, first, "the established connection keeps its backend");
        kept
    });

    // All become terminating: with no ready endpoint, serving-terminating ones take traffic.
    let terminating: Vec<LabEndpoint> = (1..=3)
        .map(|backend| LabEndpoint {
            backend,
            ready: false,
            serving: true,
            terminating: true,
        })
        .collect();
    lab.write(&terminating);
    lab.wait_until(
        "all terminating: fall back to serving endpoints",
        Frontend::ClusterIpV4,
        Duration::from_secs(10),
        all_three,
    );

    // A new one is added (ready): it takes every new connection.
    let mut with_new = terminating.clone();
    with_new.push(LabEndpoint::ready(4));
    lab.write(&with_new);
    lab.wait_until(
        "the one ready endpoint takes every new connection",
        Frontend::ClusterIpV4,
        Duration::from_secs(10),
        |a| a.len() == 1 && a.contains("backend-4"),
    );
    drop(kept);
}

#[test]
fn killing_and_restarting_the_agent_keeps_tcp_and_udp_flowing() {
    let (lab, mut agent) = AgentLab::with_synced_agent("lab_agent_restart");
    let (mut kept, first) = lab.open_kept_connection();
    // A UDP "session" from one source port: it must keep its backend across the restart.
    let udp_service: SocketAddr = Frontend::UdpClusterIp.addr();
    let udp = lab.in_client(|| {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        socket.connect(udp_service).expect("connect");
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        socket
    });
    let udp_ask = |socket: &std::net::UdpSocket| -> String {
        socket.send(b"who").expect("send");
        let mut buf = [0u8; 64];
        let n = socket.recv(&mut buf).expect("UDP answer");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let udp_backend = udp_ask(&udp);

    agent
        .signal_and_wait(libc::SIGKILL)
        .expect("kill the agent");
    // With no agent at all, the pinned programs and maps keep balancing.
    let expected = first.clone();
    kept = lab.in_client(move || {
        assert_eq!(kept.get().expect("TCP while the agent is dead"), expected);
        kept
    });
    assert_eq!(udp_ask(&udp), udp_backend, "UDP while the agent is dead");
    lab.wait_until(
        "new connections while the agent is dead",
        Frontend::ClusterIpV4,
        Duration::from_secs(5),
        all_three,
    );

    let _agent = lab.start_agent();
    // The new agent adopts the maps; give it time to sync, then everything still holds.
    std::thread::sleep(Duration::from_secs(3));
    kept = lab.in_client(move || {
        assert_eq!(kept.get().expect("TCP after the restart"), first);
        kept
    });
    assert_eq!(udp_ask(&udp), udp_backend, "UDP after the restart");
    lab.wait_until(
        "new connections after the restart",
        Frontend::ClusterIpV4,
        Duration::from_secs(10),
        all_three,
    );
    drop(kept);
}

/// The links pinned for `iface` under `pin`: kind -> (link id, id of the program the link
/// runs).
fn interface_links(pin: &Path, iface: &str) -> BTreeMap<&'static str, (u32, u32)> {
    ["tc_ingress", "tc_egress"]
        .into_iter()
        .map(|kind| {
            let path = pin.join("links").join(iface).join(kind);
            let link = FdLink::from(
                PinnedLink::from_pin(&path)
                    .unwrap_or_else(|e| panic!("no link pinned at {}: {e}", path.display())),
            );
            let info = link.info().expect("link info");
            (kind, (info.id(), info.program_id()))
        })
        .collect()
}

/// A restart replaces the programs inside the pinned links (`bpf_link_update`): the pins
/// never go away, not even for a moment, so an agent killed at any point of its start leaves
/// the interface with a datapath. Watched with inotify: a pin removed and made again
/// between two looks would escape a poll, not the event queue.
#[test]
fn restarting_the_agent_swaps_programs_inside_links_that_stay_pinned() {
    let (lab, mut agent) = AgentLab::with_synced_agent("lab_agent_swap");
    let links_dir = lab.pin_path.join("links").join(Lab::NODE_CLIENT_IFACE);
    let mut inotify = Inotify::init().expect("inotify");
    inotify
        .watches()
        .add(
            &links_dir,
            WatchMask::DELETE
                | WatchMask::CREATE
                | WatchMask::MOVED_FROM
                | WatchMask::MOVED_TO
                | WatchMask::DELETE_SELF,
        )
        .expect("watching the link pins");
    let first = interface_links(&lab.pin_path, Lab::NODE_CLIENT_IFACE);
    let (mut kept, backend) = lab.open_kept_connection();
    let mut running = first.clone();
    for restart in 1..=3 {
        agent
            .signal_and_wait(libc::SIGKILL)
            .expect("kill the agent");
        agent = lab.start_agent();
        let patience = Instant::now();
        let swapped = loop {
            let now = interface_links(&lab.pin_path, Lab::NODE_CLIENT_IFACE);
            if now
                .iter()
                .all(|(kind, (_, program))| *program != running[kind].1)
            {
                break now;
            }
            assert!(
                patience.elapsed() < Duration::from_secs(30),
                "restart {restart}: the new agent never swapped its programs in: {now:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        for (kind, (link, _)) in &swapped {
            assert_eq!(
                *link, first[kind].0,
                "restart {restart}: {kind} is a new link, so the old one was detached"
            );
        }
        let expected = backend.clone();
        kept = lab.in_client(move || {
            let answer = kept.get().expect("the kept connection after a restart");
            assert_eq!(answer, expected, "restart {restart}: the connection moved");
            kept
        });
        running = swapped;
    }
    let mut buffer = [0u8; 4096];
    let events: Vec<String> = match inotify.read_events(&mut buffer) {
        Ok(events) => events
            .map(|event| format!("{:?} {:?}", event.mask, event.name))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Vec::new(),
        Err(e) => panic!("reading inotify events: {e}"),
    };
    assert!(
        events.is_empty(),
        "link pins were removed or made again across restarts (a crash in between leaves the interface without programs): {events:?}"
    );
    drop(kept);
}

/// An interface deleted and made again under its name between two runs: the kernel detached
/// the links pinned for it, so they run nowhere and cannot take a new program. The next run
/// attaches new links in their place, and the interface runs its program again.
#[test]
fn links_of_an_interface_made_again_are_replaced() {
    require_root("links_of_an_interface_made_again_are_replaced");
    const IFACE: &str = "slb-rl0";
    let node = Netns::new("relink").expect("a namespace");
    let make_interface = || {
        node.ip(&[
            "link", "add", IFACE, "type", "veth", "peer", "name", "slb-rl1",
        ])
        .expect("a veth pair")
    };
    let pin = PinDir::new("relink");
    let attach = || {
        let mut datapath =
            Datapath::open(&pin.0, &DatapathOptions::default()).expect("loading, pinned");
        node.enter(|| datapath.attach(IFACE, IngressMode::Tc))
            .expect("entering the namespace")
    };
    make_interface();
    attach().expect("the first attach");
    let defunct = interface_links(&pin.0, IFACE);
    node.ip(&["link", "del", IFACE])
        .expect("deleting the interface");
    make_interface();
    attach().expect("attaching where the pinned links lost their interface");
    let replaced = interface_links(&pin.0, IFACE);
    for (kind, (link, program)) in &replaced {
        assert_ne!(*link, defunct[kind].0, "{kind}: still the detached link");
        let attach_type = match *kind {
            "tc_ingress" => TcAttachType::Ingress,
            _ => TcAttachType::Egress,
        };
        let running: Vec<u32> = node
            .enter(|| SchedClassifier::query_tcx(c"slb-rl0", attach_type))
            .expect("entering the namespace")
            .expect("querying the interface's programs")
            .1
            .iter()
            .map(|info| info.id())
            .collect();
        assert_eq!(
            running,
            [*program],
            "{kind}: the interface runs the new link's program, alone"
        );
    }
}
