//! Masquerade (`lb-ebpf/src/snat.rs`): external traffic balanced to another node's endpoint
//! leaves with this node's address and a port of the range, and its replies (and ICMP
//! errors about it) find their way back to the client, who only ever sees the frontend.
//!
//! A masqueraded flow takes four programs in turn, each on the state the one before left
//! (forward DNAT, egress SNAT, reply un-SNAT, reply un-DNAT), and its port is random: these
//! rows run their packets one after the other with [`step`] instead of a single [`Row`],
//! and read the port from the packet that left.

use super::*;
use lb_common::{FlowKey, SnatAddresses, SnatValue, backend_flags, map_names, snat_direction};
use slicelb::dataplane::{
    MapCapacity,
    masquerade::{self, PortRange, snat_addresses},
};

use crate::kernel::masquerade_rows::{ENDPOINT_PORT, NODE_PORT, PORTS};

impl Family {
    /// This node's address on the interface masqueraded packets leave through (and of its
    /// NodePort frontends).
    fn node_address(self) -> &'static str {
        match self {
            Family::V4 => "198.18.10.10",
            Family::V6 => "2001:2:0:10::10",
        }
    }

    /// The one endpoint of [`node_port`], on another node.
    fn endpoint(self) -> &'static str {
        match self {
            Family::V4 => "198.18.20.1",
            Family::V6 => "2001:2:0:20::1",
        }
    }

    /// A second external client.
    fn other_client(self) -> &'static str {
        match self {
            Family::V4 => "198.18.0.2",
            Family::V6 => "2001:2::2",
        }
    }

    /// A router on the way to the endpoint's node.
    fn router(self) -> &'static str {
        match self {
            Family::V4 => "198.18.30.1",
            Family::V6 => "2001:2:0:30::1",
        }
    }
}

/// Service 17 (IPv4) or 18 (IPv6): a NodePort on this node's address, external traffic
/// policy Cluster, with one endpoint on another node: its external flows are masqueraded.
fn node_port(family: Family, proto: u8) -> Service {
    let (id, backend_id) = match family {
        Family::V4 => (17, 170),
        Family::V6 => (18, 180),
    };
    Service::new(
        id,
        family.node_address(),
        NODE_PORT,
        proto,
        frontend_kind::NODE_PORT,
        frontend_flags::EXTERNAL,
        &[(backend_id, family.endpoint(), ENDPOINT_PORT, ACTIVE)],
    )
}

/// Both node addresses on the interface test runs see.
fn node_addresses() -> SnatAddresses {
    let both: Vec<std::net::IpAddr> = Family::BOTH
        .iter()
        .map(|family| family.node_address().parse().expect("node address"))
        .collect();
    snat_addresses(&both)
}

/// Masquerade on with `ports` and both node addresses.
fn masquerade_on(ports: PortRange) -> Masquerade {
    Masquerade {
        ports: Some(ports),
        addresses: node_addresses(),
    }
}

/// A packet from the external client to the NodePort.
fn from_client(family: Family, sport: u16, l4: L4) -> Spec {
    Spec::new(family.client(), sport, family.node_address(), NODE_PORT, l4)
}

/// What the endpoint sends back for `forwarded` (client -> endpoint) when it saw it from
/// `seen_from`: a SYN becomes a SYN-ACK.
fn endpoint_reply(forwarded: &Spec, seen_from: (&str, u16)) -> Spec {
    let l4 = match forwarded.l4 {
        L4::Tcp(_) => L4::Tcp(SYN | ACK),
        other => other,
    };
    let mut reply = Spec::new(
        &forwarded.dst.to_string(),
        forwarded.dport,
        seen_from.0,
        seen_from.1,
        l4,
    );
    reply.src_mac = NODE_MAC;
    reply.dst_mac = CLIENT_MAC;
    reply.udp_no_checksum = forwarded.udp_no_checksum;
    reply
}

/// Runs `input` through `program` on the state the steps before left, and checks what
/// every fixture checks: the verdict, that `reason` alone went up by one, and the checksums
/// of a packet that passes. A TC rewrite runs again on a CHECKSUM_COMPLETE skb (same state:
/// a masqueraded flow's second run reuses its port) and must give the same packet. Returns
/// the packet that came out.
fn step(
    env: &Env,
    program: Program,
    input: &[u8],
    verdict: u32,
    reason: Reason,
) -> Result<Vec<u8>, String> {
    let before = env.reasons();
    let out = env.run(program, input);
    let deltas = reason_deltas(&before, &env.reasons());
    let what = format!("{} ({reason:?})", program.name());
    if out.verdict != verdict {
        return Err(format!(
            "{what}: verdict {} (expected {verdict}), reason counters changed by {deltas:?}",
            out.verdict
        ));
    }
    if deltas != vec![(reason, 1)] {
        return Err(format!("{what}: reason counters changed by {deltas:?}"));
    }
    let rewrites = matches!(
        reason.class(),
        ReasonClass::Lb | ReasonClass::Reply | ReasonClass::Icmp
    );
    if rewrites {
        verify_checksums(&out.packet).map_err(|e| format!("{what}: checksum: {e}"))?;
    }
    if rewrites && program != Program::Xdp {
        let again = env
            .run_checksum_complete(program, input)
            .map_err(|e| format!("{what}: with CHECKSUM_COMPLETE: {e}"))?;
        if again.packet != out.packet {
            return Err(format!(
                "{what}: with CHECKSUM_COMPLETE the packet differs:\n got   {:02x?}\n first {:02x?}",
                again.packet, out.packet
            ));
        }
    }
    Ok(out.packet)
}

/// [`step`], whose packet out must be `expected`, byte for byte.
fn step_to(
    env: &Env,
    program: Program,
    input: &[u8],
    (verdict, reason): (u32, Reason),
    expected: &[u8],
) -> Result<Vec<u8>, String> {
    let out = step(env, program, input, verdict, reason)?;
    if out != expected {
        return Err(format!(
            "{} ({reason:?}): packet differs:\n got      {out:02x?}\n expected {expected:02x?}",
            program.name()
        ));
    }
    Ok(out)
}

/// A new flow's `request` is balanced (XDP) and its first packet out dropped for `reason`.
fn refused_at_egress(
    env: &Env,
    family: Family,
    request: &Spec,
    reason: Reason,
) -> Result<(), String> {
    let forwarded = dnat(&node_port(family, proto_of(request.l4)), request);
    step(
        env,
        Program::Xdp,
        &request.build(),
        XDP_PASS,
        Reason::LbNewFlow,
    )?;
    step(
        env,
        Program::TcEgress,
        &forwarded.build(),
        TC_ACT_SHOT,
        reason,
    )?;
    Ok(())
}

/// Runs a masquerade scenario once per family in one datapath (reset in between, with
/// masquerade on with [`PORTS`]); panics naming the family that failed.
fn check_flows(scenario: impl Fn(&mut Env, Family) -> Result<(), String>) {
    check_flows_in(&mut Env::new(), PORTS, &Family::BOTH, scenario);
}

fn check_flows_in(
    env: &mut Env,
    ports: PortRange,
    families: &[Family],
    scenario: impl Fn(&mut Env, Family) -> Result<(), String>,
) {
    for &family in families {
        env.reset();
        env.set_masquerade(&masquerade_on(ports));
        env.install(&node_port(family, PROTO_TCP));
        env.install(&node_port(family, PROTO_UDP));
        env.install(&node_port(family, PROTO_SCTP));
        if let Err(message) = scenario(env, family) {
            panic!("{family:?}: {message}");
        }
    }
}

/// A masqueraded flow as its first packet leaves: the request, the same packet after DNAT
/// (client -> endpoint), and the port it was given (host order).
struct Opened {
    request: Spec,
    forwarded: Spec,
    port: u16,
}

impl Opened {
    /// The packet as it left: from the node's address and the flow's port.
    fn masqueraded(&self, family: Family) -> Spec {
        self.forwarded
            .clone()
            .from(family.node_address(), self.port)
    }
}

/// Sends `request` through XDP (DNAT, a new flow) and its DNATed packet through TC egress,
/// which must masquerade it with a port of `ports` (SCTP: its own source port).
fn open(env: &Env, family: Family, request: Spec, ports: PortRange) -> Result<Opened, String> {
    let service = node_port(family, proto_of(request.l4));
    let forwarded = dnat(&service, &request);
    step_to(
        env,
        Program::Xdp,
        &request.build(),
        (XDP_PASS, Reason::LbNewFlow),
        &forwarded.build(),
    )?;
    let out = step(
        env,
        Program::TcEgress,
        &forwarded.build(),
        TCX_NEXT,
        Reason::LbMasqueraded,
    )?;
    let sport_at = l4_offset(&forwarded);
    let port = u16::from_be_bytes([out[sport_at], out[sport_at + 1]]);
    if request.l4 == L4::Sctp {
        if port != request.sport {
            return Err(format!(
                "SCTP left with port {port}, not its own {}",
                request.sport
            ));
        }
    } else if !(ports.min..=ports.max).contains(&port) {
        return Err(format!(
            "masqueraded with port {port}, outside {}-{}",
            ports.min, ports.max
        ));
    }
    let opened = Opened {
        request,
        forwarded,
        port,
    };
    if out != opened.masqueraded(family).build() {
        return Err(format!(
            "masqueraded packet differs:\n got      {out:02x?}\n expected {:02x?}",
            opened.masqueraded(family).build()
        ));
    }
    Ok(opened)
}

/// The endpoint answers `flow` at the node's address and port; arriving through `ingress`,
/// it must go back to the client, then leave through TC egress from the frontend.
fn reply_reaches_client(
    env: &Env,
    family: Family,
    flow: &Opened,
    ingress: Program,
) -> Result<(), String> {
    let reply = endpoint_reply(&flow.forwarded, (family.node_address(), flow.port));
    let verdict = match ingress {
        Program::Xdp => XDP_PASS,
        _ => TCX_NEXT,
    };
    let client = flow.request.src.to_string();
    let to_client = reply.clone().to(&client, flow.request.sport);
    let out = step_to(
        env,
        ingress,
        &reply.build(),
        (verdict, Reason::ReplyUnmasqueraded),
        &to_client.build(),
    )?;
    let from_frontend = to_client.from(family.node_address(), NODE_PORT);
    step_to(
        env,
        Program::TcEgress,
        &out,
        (TCX_NEXT, Reason::ReplyTranslated),
        &from_frontend.build(),
    )?;
    Ok(())
}

/// Row 1: the client's SYN leaves for the endpoint from the node's address and a port of
/// the range; the SYN-ACK sent there reaches the client from the frontend (TC ingress).
#[test]
fn tcp_flow_to_another_nodes_endpoint_is_masqueraded_both_ways() {
    check_flows(|env, family| {
        let flow = open(env, family, from_client(family, 40000, L4::Tcp(SYN)), PORTS)?;
        reply_reaches_client(env, family, &flow, Program::TcIngress)
    });
}

/// Row 1 for UDP, its reply arriving through XDP.
#[test]
fn udp_flow_to_another_nodes_endpoint_is_masqueraded_both_ways() {
    check_flows(|env, family| {
        let flow = open(env, family, from_client(family, 40000, L4::Udp), PORTS)?;
        reply_reaches_client(env, family, &flow, Program::Xdp)
    });
}

/// Row 1 for IPv4 UDP without checksums: the zero checksum stays zero both ways.
#[test]
fn ipv4_udp_without_checksum_is_masqueraded_both_ways() {
    // IPv6 UDP always has a checksum.
    check_flows_in(&mut Env::new(), PORTS, &[Family::V4], |env, family| {
        let request = from_client(family, 40000, L4::Udp).udp_no_checksum();
        let flow = open(env, family, request, PORTS)?;
        reply_reaches_client(env, family, &flow, Program::TcIngress)
    });
}

/// Row 2: a later packet of the flow (through conntrack) leaves with the same port; the
/// flow holds exactly its two SNAT entries (no second allocation).
#[test]
fn a_later_packet_of_a_masqueraded_flow_keeps_its_port() {
    check_flows(|env, family| {
        let flow = open(env, family, from_client(family, 40000, L4::Tcp(SYN)), PORTS)?;
        reply_reaches_client(env, family, &flow, Program::TcIngress)?;
        let ack = from_client(family, 40000, L4::Tcp(ACK)).payload(&[0x55; 32]);
        let forwarded = ack.clone().to(family.endpoint(), ENDPOINT_PORT);
        step_to(
            env,
            Program::Xdp,
            &ack.build(),
            (XDP_PASS, Reason::LbConntrack),
            &forwarded.build(),
        )?;
        let masqueraded = forwarded.clone().from(family.node_address(), flow.port);
        step_to(
            env,
            Program::TcEgress,
            &forwarded.build(),
            (TCX_NEXT, Reason::LbMasqueraded),
            &masqueraded.build(),
        )?;
        let directions: Vec<(u8, u16)> = env
            .snat_entries()
            .iter()
            .map(|(_, value)| (value.direction, u16::from_be(value.port)))
            .collect();
        let mut sorted = directions.clone();
        sorted.sort();
        let expected = vec![
            (snat_direction::OUT, flow.port),
            (snat_direction::IN, flow.request.sport),
        ];
        if sorted != expected {
            return Err(format!(
                "SNAT holds (direction, port) {directions:?}, expected {expected:?}"
            ));
        }
        Ok(())
    });
}

/// Rows 3 and 4: the client's SYN to `service` (on the NodePort's address and port) is balanced, and its DNATed packet
/// leaves TC egress untouched (nothing marked it for masquerade).
fn not_masqueraded(family: Family, service: Service, masquerade: Masquerade) -> Row {
    let request = from_client(family, 40000, L4::Tcp(SYN));
    let forwarded = dnat(&service, &request);
    Row {
        setup: Setup {
            services: vec![service],
            warmup: vec![(Program::Xdp, request.build())],
            masquerade: Some(masquerade),
            ..Setup::default()
        },
        program: Program::TcEgress,
        input: forwarded.build(),
        expect: Expect {
            verdict: TCX_NEXT,
            reason: Reason::PassNoFrontend,
            out: Out::Unchanged,
            service: None,
        },
    }
}

/// Row 3: an endpoint on this node keeps the client's address (its reply comes back
/// through this node anyway).
#[test]
fn a_node_local_endpoint_is_not_masqueraded() {
    check_both_families(|family| {
        not_masqueraded(
            family,
            node_port(family, PROTO_TCP).backend_flags(backend_flags::NODE_LOCAL),
            masquerade_on(PORTS),
        )
    });
}

/// Row 3: externalTrafficPolicy Local keeps the client's address.
#[test]
fn a_local_traffic_policy_is_not_masqueraded() {
    check_both_families(|family| {
        let mut service = node_port(family, PROTO_TCP);
        service.value.flags |= frontend_flags::TRAFFIC_POLICY_LOCAL;
        not_masqueraded(family, service, masquerade_on(PORTS))
    });
}

/// Row 3: a ClusterIP (no EXTERNAL flag) is not masqueraded.
#[test]
fn a_cluster_ip_is_not_masqueraded() {
    check_both_families(|family| {
        let mut service = node_port(family, PROTO_TCP);
        service.value.kind = frontend_kind::CLUSTER_IP;
        service.value.flags = 0;
        not_masqueraded(family, service, masquerade_on(PORTS))
    });
}

/// Row 4: with masquerade off, nothing is masqueraded (the addresses are there).
#[test]
fn nothing_is_masqueraded_when_masquerade_is_off() {
    check_both_families(|family| {
        not_masqueraded(
            family,
            node_port(family, PROTO_TCP),
            Masquerade {
                ports: None,
                addresses: node_addresses(),
            },
        )
    });
}

/// Row 5: two ports, two flows to the same endpoint take one each; a third is dropped as
/// ports exhausted, and the first two still translate both ways.
#[test]
fn a_full_port_range_refuses_a_new_flow_and_keeps_the_others() {
    let two = PortRange {
        min: 61000,
        max: 61001,
    };
    check_flows_in(&mut Env::new(), two, &Family::BOTH, |env, family| {
        let first = open(env, family, from_client(family, 40001, L4::Udp), two)?;
        let second = open(env, family, from_client(family, 40002, L4::Udp), two)?;
        if first.port == second.port {
            return Err(format!("two flows share port {}", first.port));
        }
        let third = from_client(family, 40003, L4::Udp);
        refused_at_egress(env, family, &third, Reason::DropMasqueradePortsExhausted)?;
        for flow in [&first, &second] {
            step_to(
                env,
                Program::TcEgress,
                &flow.forwarded.build(),
                (TCX_NEXT, Reason::LbMasqueraded),
                &flow.masqueraded(family).build(),
            )?;
            reply_reaches_client(env, family, flow, Program::TcIngress)?;
        }
        Ok(())
    });
}

/// Row 6: a full SNAT table refuses a new masqueraded flow at the forward path, leaving
/// nothing of it behind (its next packet is refused the same way), and the flows it holds
/// go on.
#[test]
fn a_full_snat_table_refuses_a_new_flow_and_keeps_the_others() {
    // Two flows' entries (OUT and IN each).
    let mut env = Env::with_capacity(MapCapacity {
        snat: 4,
        ..test_capacity()
    });
    check_flows_in(&mut env, PORTS, &Family::BOTH, |env, family| {
        let first = open(env, family, from_client(family, 40001, L4::Tcp(SYN)), PORTS)?;
        let second = open(env, family, from_client(family, 40002, L4::Tcp(SYN)), PORTS)?;
        let third = from_client(family, 40003, L4::Tcp(SYN)).build();
        for _ in 0..2 {
            step(
                env,
                Program::Xdp,
                &third,
                XDP_DROP,
                Reason::DropMasqueradeTableFull,
            )?;
        }
        for flow in [&first, &second] {
            reply_reaches_client(env, family, flow, Program::TcIngress)?;
        }
        Ok(())
    });
}

/// Row 7: an interface without an address of the flow's family drops the flow's first
/// packet out. Also shows which interface a TC test run sees: addresses written for
/// another index than [`TEST_RUN_IFINDEX`] are not found.
#[test]
fn no_address_of_the_family_drops_the_flow() {
    let mut env = Env::new();
    for family in Family::BOTH {
        let other = match family {
            Family::V4 => Family::V6,
            Family::V6 => Family::V4,
        };
        let other_only = snat_addresses(&[other.node_address().parse().expect("address")]);
        for (ifindex, addresses) in [
            (TEST_RUN_IFINDEX, other_only),
            (TEST_RUN_IFINDEX + 1, node_addresses()),
        ] {
            env.reset();
            env.datapath
                .set_masquerade(Some(PORTS), &[(ifindex, addresses)])
                .expect("turning masquerade on");
            env.install(&node_port(family, PROTO_TCP));
            let request = from_client(family, 40000, L4::Tcp(SYN));
            let result = refused_at_egress(&env, family, &request, Reason::DropMasqueradeNoAddress);
            if let Err(message) = result {
                panic!("{family:?}, addresses on interface {ifindex}: {message}");
            }
        }
    }
}

/// Row 8: SCTP keeps its source port (only the address is masqueraded); a second client
/// with the same source port to the same endpoint cannot be told apart from the first on
/// the way back, so it is refused as ports exhausted.
#[test]
fn sctp_is_masqueraded_with_its_own_port_and_a_clash_is_refused() {
    check_flows(|env, family| {
        let flow = open(env, family, from_client(family, 40000, L4::Sctp), PORTS)?;
        let clash = Spec::new(
            family.other_client(),
            40000,
            family.node_address(),
            NODE_PORT,
            L4::Sctp,
        );
        refused_at_egress(env, family, &clash, Reason::DropMasqueradePortsExhausted)?;
        reply_reaches_client(env, family, &flow, Program::TcIngress)
    });
}

/// Row 9: a router on the way to the endpoint's node says the masqueraded packet is too
/// big: on TC ingress the error goes to the client, quoting client -> endpoint; on TC
/// egress its quote becomes client -> frontend, the packet the client sent.
#[test]
fn too_big_about_a_masqueraded_packet_reaches_the_client_quoting_the_frontend() {
    check_flows(|env, family| {
        let flow = open(env, family, from_client(family, 40000, L4::Tcp(SYN)), PORTS)?;
        let payload = [0x66; 64];
        let data = |spec: &Spec| {
            let mut spec = spec.clone().payload(&payload);
            spec.l4 = L4::Tcp(ACK);
            spec
        };
        let quote_len = family.ip_header_len() + 20 + payload.len();
        let too_big = |to: &str, quoted: &Spec| {
            icmp_error(
                family.router(),
                to,
                IcmpError::TooBig(1400),
                &data(quoted).build(),
                14,
                quote_len,
            )
        };
        let input = too_big(family.node_address(), &flow.masqueraded(family));
        let translated = (TCX_NEXT, Reason::IcmpErrorTranslated);
        let out = step_to(
            env,
            Program::TcIngress,
            &input,
            translated,
            &too_big(family.client(), &flow.forwarded),
        )?;
        step_to(
            env,
            Program::TcEgress,
            &out,
            translated,
            &too_big(family.client(), &flow.request),
        )?;
        Ok(())
    });
}

/// The agent's default hold of a closed TCP flow's port, in ns.
const TIME_WAIT_NS: u64 = masquerade::DEFAULT_TCP_TIME_WAIT.as_nanos() as u64;

/// Row 10: the agent's expiry keeps a live flow, deletes both entries of an idle one, and
/// its port is free again: with a single port, a new flow to the same endpoint gets it.
#[test]
fn the_agents_expiry_frees_an_idle_flows_port() {
    let one = PortRange {
        min: 61000,
        max: 61000,
    };
    check_flows_in(&mut Env::new(), one, &Family::BOTH, |env, family| {
        let flow = open(env, family, from_client(family, 40000, L4::Udp), one)?;
        reply_reaches_client(env, family, &flow, Program::TcIngress)?;
        let snat = env.datapath.map_data(map_names::SNAT).expect("SNAT");
        let fd = std::os::fd::AsFd::as_fd(snat.fd());
        let now = masquerade::monotonic_coarse_ns();
        let config = env.datapath.config().expect("CONFIG");
        let kept = masquerade::expire(fd, &config, TIME_WAIT_NS, now).map_err(|e| e.to_string())?;
        if kept.flows() != 0 || env.snat_entries().len() != 2 {
            return Err(format!("a live flow expired: {kept:?}"));
        }
        // Tiny timeouts, the masquerade range kept.
        env.set_config(Config {
            udp_timeout_ns: 1,
            tcp_transient_timeout_ns: 1,
            tcp_established_timeout_ns: 1,
            other_timeout_ns: 1,
            ..env.datapath.config().expect("CONFIG")
        });
        let config = env.datapath.config().expect("CONFIG");
        let snat = env.datapath.map_data(map_names::SNAT).expect("SNAT");
        let fd = std::os::fd::AsFd::as_fd(snat.fd());
        let expired = masquerade::expire(fd, &config, TIME_WAIT_NS, now + 600 * 1_000_000_000)
            .map_err(|e| e.to_string())?;
        let (out_key, in_key) = snat_keys(family, &flow);
        if expired.outbound != vec![out_key] || expired.inbound != vec![in_key] {
            return Err(format!(
                "expired {expired:?}, expected the flow's OUT {out_key:?} and IN {in_key:?}"
            ));
        }
        let left: Vec<(FlowKey, SnatValue)> = env.snat_entries();
        if !left.is_empty() {
            return Err(format!("SNAT still holds {left:?}"));
        }
        // Another client port: a new flow, whose IN entry is the one just freed.
        let next = open(env, family, from_client(family, 40001, L4::Udp), one)?;
        reply_reaches_client(env, family, &next, Program::TcIngress)
    });
}

/// The SNAT keys of `flow`: OUT (client -> endpoint) and IN (endpoint -> node address and
/// port).
fn snat_keys(family: Family, flow: &Opened) -> (FlowKey, FlowKey) {
    let key = |spec: &Spec| {
        let (src_addr, family) = addr16(&spec.src.to_string());
        let (dst_addr, _) = addr16(&spec.dst.to_string());
        FlowKey {
            src_addr,
            dst_addr,
            src_port: spec.sport.to_be(),
            dst_port: spec.dport.to_be(),
            proto: proto_of(spec.l4),
            family,
            _pad: [0, 0],
        }
    };
    let reply = endpoint_reply(&flow.forwarded, (family.node_address(), flow.port));
    (key(&flow.forwarded), key(&reply))
}
