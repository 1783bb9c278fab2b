//! The real agent binary on the lab's node with `--config-dir`: manifest edits change where
//! new connections go while an established one keeps its backend, a UDP client that keeps its
//! source port moves off an endpoint that stops serving (as kube-proxy's conntrack cleanup
//! makes it), and killing and restarting the agent breaks neither an established TCP
//! connection nor a UDP exchange.

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use slicelb_lab::lab::{
    agent_lab::{AgentLab, Frontend, LabEndpoint, all_three},
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
    let kept_index: u8 = first
        .strip_prefix("backend-")
        .and_then(|n| n.parse().ok())
        .expect("backend name");

    // That endpoint stops being ready: new connections avoid it; the established one stays.
    let mut endpoints: Vec<LabEndpoint> = (1..=3).map(LabEndpoint::ready).collect();
    endpoints[usize::from(kept_index - 1)].ready = false;
    lab.write(&endpoints);
    let others = lab.wait_until(
        "a not-ready endpoint takes no new connections",
        Frontend::ClusterIpV4,
        Duration::from_secs(10),
        |a| a.len() == 2 && !a.contains(&first),
    );
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
