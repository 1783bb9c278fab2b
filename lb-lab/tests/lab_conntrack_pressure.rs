//! The conntrack table under pressure, made small with `--conntrack-max`: through a
//! spoofed-SYN flood of eight times the table and an endpoint change that remaps Maglev's
//! slots, every idle established connection keeps its backend (the flood's flows wait in
//! HANDSHAKES, never in CONNTRACK); and when more completed connections than the table
//! holds go idle, an idle connection either keeps its backend or its loss is counted as
//! `lb_conntrack_lost`: never answered silently by another backend. (A table size changed across restarts:
//! `lab_upgrade`.)

use std::{net::SocketAddr, time::Duration};

use slicelb_lab::lab::{
    ChildGuard,
    agent_lab::{AgentLab, Frontend, LabEndpoint},
    servers::HttpConnection,
    syn_flood::send_spoofed_syns,
};

/// `count` keep-alive connections to the IPv4 ClusterIP, each with one answered request, in
/// the order they were opened, with the backend that answered.
fn open_idle_connections(lab: &AgentLab, count: usize) -> Vec<(HttpConnection, String)> {
    let service = Frontend::ClusterIpV4.addr();
    lab.in_client(|| {
        (0..count)
            .map(|i| {
                let mut connection = HttpConnection::connect(service, Duration::from_secs(2))
                    .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                let backend = connection
                    .get()
                    .unwrap_or_else(|e| panic!("connection {i}'s first request: {e}"));
                (connection, backend)
            })
            .collect()
    })
}

/// Backend 4 joins: about a quarter of Maglev's slots now name it. Returns once new
/// connections reach it.
fn add_backend_four(lab: &AgentLab) {
    lab.write(&(1..=4).map(LabEndpoint::ready).collect::<Vec<_>>());
    lab.wait_until(
        "backend 4 takes new connections",
        Frontend::ClusterIpV4,
        Duration::from_secs(15),
        |answers| answers.contains("backend-4"),
    );
}

/// The lab's agent, synced, with a conntrack table of `conntrack_max` entries.
fn agent_with_conntrack_max(test: &str, conntrack_max: u32) -> (AgentLab, ChildGuard) {
    AgentLab::with_synced_agent_args(test, &["--conntrack-max", &conntrack_max.to_string()])
}

/// Asks again on each idle connection; returns the ones not answered (reset: they reached
/// another backend), described. An answer from another backend, which would be a flow moved
/// silently, fails the test.
fn not_on_their_backend(lab: &AgentLab, idle: &mut [(HttpConnection, String)]) -> Vec<String> {
    lab.in_client(|| {
        idle.iter_mut()
            .enumerate()
            .filter_map(|(i, (connection, backend))| match connection.get() {
                Ok(answer) => {
                    assert_eq!(
                        answer, *backend,
                        "connection {i} was answered by another backend, silently"
                    );
                    None
                }
                Err(e) => Some(format!("connection {i} ({backend}): {e}")),
            })
            .collect()
    })
}

/// Sends `flood` spoofed SYNs to the IPv4 ClusterIP and checks the datapath balanced each as
/// a new flow (two conntrack entries each).
fn syn_flood(lab: &AgentLab, flood: u32) {
    let SocketAddr::V4(target) = Frontend::ClusterIpV4.addr() else {
        unreachable!("an IPv4 frontend")
    };
    let new_flows_before = lab.reason("lb_new_flow");
    let sent = lab
        .in_client(|| send_spoofed_syns(target, flood))
        .expect("spoofed SYNs");
    assert_eq!(sent, flood);
    let balanced = lab.reason("lb_new_flow") - new_flows_before;
    assert!(
        balanced >= u64::from(flood),
        "the flood's SYNs were balanced as new flows ({balanced} of {flood})"
    );
}

#[test]
fn idle_flows_through_a_syn_flood_of_eight_tables_keep_their_backend() {
    const CONNTRACK_MAX: u32 = 1024;
    const IDLE: usize = 24;
    let (lab, _agent) = agent_with_conntrack_max("lab_ct_syn_flood", CONNTRACK_MAX);
    let mut idle = open_idle_connections(&lab, IDLE);

    // Eight tables of SYNs, then an endpoint change that remaps Maglev's slots. The
    // flood's flows never complete their handshake, so they stay in HANDSHAKES and evict
    // only each other: CONNTRACK keeps every established flow, which keeps its backend
    // although its Maglev slot may now name another.
    let lost_before = lab.reason("lb_conntrack_lost");
    syn_flood(&lab, 8 * CONNTRACK_MAX);
    add_backend_four(&lab);
    let moved = not_on_their_backend(&lab, &mut idle);
    let lost = lab.reason("lb_conntrack_lost") - lost_before;
    assert!(
        moved.is_empty() && lost == 0,
        "{} of {IDLE} idle connections left their backend, {lost} counted lost: {moved:?}",
        moved.len()
    );
}

#[test]
fn the_oldest_idle_flows_past_the_table_reach_their_backend_or_are_counted_lost() {
    const CONNTRACK_MAX: u32 = 256;
    // Two entries a flow: more than four tables' worth of idle connections.
    const IDLE: usize = 600;
    const OLDEST: usize = 200;
    let (lab, _agent) = agent_with_conntrack_max("lab_ct_idle_overflow", CONNTRACK_MAX);
    let mut idle = open_idle_connections(&lab, IDLE);
    add_backend_four(&lab);
    let lost_before = lab.reason("lb_conntrack_lost");

    let failed = not_on_their_backend(&lab, &mut idle[..OLDEST]).len() as u64;
    let lost = lab.reason("lb_conntrack_lost") - lost_before;
    // Every connection that did not reach its backend went through the counted outcome;
    // a lost flow whose slot still names its backend is counted too, and works.
    assert!(
        failed <= lost,
        "{failed} of the oldest {OLDEST} connections failed, {lost} counted lost"
    );
    assert!(
        lost <= OLDEST as u64,
        "one count per lost flow: {lost} for {OLDEST} connections"
    );
    assert!(
        lost > 0,
        "{IDLE} idle connections in a table of {CONNTRACK_MAX} entries left the oldest {OLDEST} all in place"
    );
    eprintln!(
        "table {CONNTRACK_MAX}, {IDLE} idle connections: of the oldest {OLDEST}, {lost} lost their entry, {failed} of those reached another backend (reset)"
    );
}
