//! `sessionAffinity: ClientIP` on the packet path of the single-node lab, with the real
//! agent: a client stays with its endpoint only while the Service may use it (kube-proxy
//! consults affinity among the endpoints it may use now), and the affinity of a deleted
//! Service never follows its ids to the Services that get them next.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use lb_common::backend_state;
use slicelb::dataplane::{AppliedState, MapWriter as _, aya_maps::AyaMaps};
use slicelb_lab::lab::{
    agent_lab::{AgentLab, LabEndpoint, endpoint_slice_yaml},
    servers::http_get_once,
};

/// A ClusterIP Service `name` at `vip` (TCP 80 -> 8080) with `sessionAffinity: ClientIP`
/// (the default three hours) and an IPv4 EndpointSlice of `endpoints`.
fn sticky_service(name: &str, vip: Ipv4Addr, endpoints: &[LabEndpoint]) -> String {
    let slice = endpoint_slice_yaml(name, "http", "TCP", 8080, endpoints, false);
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  type: ClusterIP
  clusterIP: {vip}
  clusterIPs: ["{vip}"]
  sessionAffinity: ClientIP
  ports:
  - name: http
    protocol: TCP
    port: 80
    targetPort: 8080
---
{slice}"#
    )
}

fn service_addr(vip: Ipv4Addr) -> SocketAddr {
    SocketAddr::new(vip.into(), 80)
}

/// The maps under the agent's pin path as the agent last wrote them, once `accept` holds
/// for them; panics naming `what` after 30 s.
fn wait_for_maps(
    lab: &AgentLab,
    what: &str,
    accept: impl Fn(&AppliedState) -> bool,
) -> AppliedState {
    let started = Instant::now();
    loop {
        let state = AyaMaps::from_pin(&lab.pin_path, Default::default())
            .and_then(|maps| maps.read())
            .ok();
        if let Some(state) = state.filter(|state| accept(state)) {
            return state;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the agent did not write {what} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The id of the service `name` (port `http`).
fn service_id(state: &AppliedState, name: &str) -> Option<u32> {
    let text = format!("default/{name}:http");
    state
        .service_names
        .iter()
        .find(|(_, n)| **n == text)
        .map(|(id, _)| *id)
}

/// The id of backend `index`'s endpoint 198.18.`index`.2:8080.
fn backend_id(state: &AppliedState, index: u8) -> Option<u32> {
    state
        .backends
        .iter()
        .find(|(_, b)| b.addr[..4] == [198, 18, index, 2] && u16::from_be(b.port) == 8080)
        .map(|(id, _)| *id)
}

/// The backend ids in the selection table of the frontend at `vip:80`.
fn table_of(state: &AppliedState, vip: Ipv4Addr) -> Vec<u32> {
    state
        .frontends
        .iter()
        .find(|(key, _)| key.addr[..4] == vip.octets() && u16::from_be(key.port) == 80)
        .and_then(|(_, value)| state.selection.get(&value.table_offset))
        .map(|slots| slots.ids())
        .unwrap_or_default()
}

/// `count` requests from the client, each on a new connection: who answered each.
fn ask(lab: &AgentLab, service: SocketAddr, count: usize) -> Vec<String> {
    lab.in_client(|| {
        (0..count)
            .map(|i| {
                http_get_once(service, Duration::from_secs(2))
                    .unwrap_or_else(|e| panic!("request {i} to {service}: {e}"))
            })
            .collect()
    })
}

/// The backend number in an answer `backend-K`.
fn index_of(answer: &str) -> u8 {
    answer
        .strip_prefix("backend-")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a backend's answer: {answer:?}"))
}

#[test]
fn affinity_leaves_an_endpoint_that_turns_terminating_while_others_are_ready() {
    const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 20);
    let lab = AgentLab::new("lab_affinity_terminating");
    let mut endpoints: Vec<LabEndpoint> = (1..=3).map(LabEndpoint::ready).collect();
    lab.write_manifest("sticky", &sticky_service("sticky", VIP, &endpoints));
    let _agent = lab.start_agent();
    wait_for_maps(&lab, "the service's table", |state| {
        table_of(state, VIP).len() > 1
    });

    let before = ask(&lab, service_addr(VIP), 10);
    let pinned = before[0].clone();
    assert!(
        before.iter().all(|answer| *answer == pinned),
        "ClientIP affinity keeps the client on one endpoint: {before:?}"
    );

    // The client's endpoint turns terminating (still serving) while the others are ready:
    // the Service may no longer send it new connections.
    let index = index_of(&pinned);
    endpoints[usize::from(index - 1)] = LabEndpoint {
        backend: index,
        ready: false,
        serving: true,
        terminating: true,
    };
    lab.write_manifest("sticky", &sticky_service("sticky", VIP, &endpoints));
    wait_for_maps(
        &lab,
        "the pinned endpoint terminating, out of the table",
        |state| {
            backend_id(state, index).is_some_and(|id| {
                state.backends[&id].state == backend_state::TERMINATING
                    && !table_of(state, VIP).contains(&id)
            })
        },
    );

    let after = ask(&lab, service_addr(VIP), 20);
    let to_terminating = after.iter().filter(|answer| **answer == pinned).count();
    assert_eq!(
        to_terminating, 0,
        "{to_terminating} of 20 new connections went to the terminating {pinned}: {after:?}"
    );
    assert!(
        after.iter().all(|answer| *answer == after[0]),
        "the client is pinned again, to one ready endpoint: {after:?}"
    );
}

#[test]
fn the_affinity_of_a_deleted_service_sends_no_client_of_the_services_reusing_its_ids() {
    const KEEP: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 30);
    const OLD: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 31);
    const NEW: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 32);
    const OTHER: Ipv4Addr = Ipv4Addr::new(198, 18, 100, 33);
    let ready = |backends: &[u8]| -> Vec<LabEndpoint> {
        backends.iter().copied().map(LabEndpoint::ready).collect()
    };
    let lab = AgentLab::new("lab_affinity_reused_ids");
    let keep = sticky_service("keep", KEEP, &ready(&[1]));
    lab.write_manifest(
        "services",
        &format!(
            "{keep}---\n{}",
            sticky_service("old", OLD, &ready(&[2, 3, 4]))
        ),
    );
    let _agent = lab.start_agent();
    let first = wait_for_maps(&lab, "keep and old", |state| {
        table_of(state, KEEP).len() == 251 && table_of(state, OLD).len() == 509
    });
    let old_id = service_id(&first, "old").expect("old's id");
    let old_backends: Vec<Option<u32>> = [2, 3, 4].map(|k| backend_id(&first, k)).to_vec();

    // The client is pinned to one of old's endpoints.
    let before = ask(&lab, service_addr(OLD), 10);
    assert!(
        before.iter().all(|answer| *answer == before[0]),
        "ClientIP affinity keeps the client on one endpoint: {before:?}"
    );

    // old is deleted: its service id and backend ids are free.
    lab.write_manifest("services", &keep);
    wait_for_maps(&lab, "old deleted", |state| {
        service_id(state, "old").is_none() && state.backends.len() == 1
    });

    // new (backend-1 only) and other (old's endpoints) arrive and get old's ids: new its
    // service id, other its backend ids (the premise of this test).
    let added = format!(
        "{keep}---\n{}---\n{}",
        sticky_service("new", NEW, &ready(&[1])),
        sticky_service("other", OTHER, &ready(&[2, 3, 4])),
    );
    lab.write_manifest("services", &added);
    let reused = wait_for_maps(&lab, "new and other", |state| {
        !table_of(state, NEW).is_empty() && !table_of(state, OTHER).is_empty()
    });
    assert_eq!(
        service_id(&reused, "new"),
        Some(old_id),
        "new has old's service id"
    );
    assert_eq!(
        [2, 3, 4].map(|k| backend_id(&reused, k)).to_vec(),
        old_backends,
        "other's endpoints have old's backend ids"
    );

    // The client's entry under old's service id must not send it to other's endpoints.
    let answers = ask(&lab, service_addr(NEW), 20);
    let elsewhere = answers.iter().filter(|a| *a != "backend-1").count();
    assert_eq!(
        elsewhere, 0,
        "{elsewhere} of 20 connections to new went to an endpoint new does not have: {answers:?}"
    );
}
