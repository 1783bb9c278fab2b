//! The real agent binary on the lab's node with `--config-dir`: manifest edits change where
//! new connections go while an established one keeps its backend, and killing and restarting
//! the agent breaks neither an established TCP connection nor a UDP exchange.

use std::{net::SocketAddr, time::Duration};

use slicelb_lab::lab::agent_lab::{AgentLab, Frontend, LabEndpoint, all_three};

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
