//! The operator commands against a live lab: `services`, `trace`, `check` and `stats` read
//! the kernel's maps as the agent left them, and the metrics endpoint counts what was sent.

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use slicelb_lab::{
    bench::{ebpf::Pass, lab_run::mac_of},
    lab::{
        Lab,
        agent_lab::{AgentLab, Frontend, LabEndpoint, all_three},
        stdout_of,
    },
};

fn ready_lab(test: &str) -> (AgentLab, slicelb_lab::lab::ChildGuard) {
    AgentLab::with_synced_agent(test)
}

/// Fixed client ports sit below the kernel's ephemeral range (32768–60999), so no warm-up
/// request from an ephemeral port can already own a conntrack entry for them.
const FIXED_PORTS: u16 = 20000;

/// A UDP exchange from a fixed client port; returns the backend that answered.
fn udp_from_port(lab: &AgentLab, port: u16) -> String {
    let service = Frontend::UdpClusterIp.addr();
    lab.in_client(move || {
        let socket = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], port))).expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        socket.send_to(b"who", service).expect("send");
        let mut buf = [0u8; 64];
        let (n, from) = socket.recv_from(&mut buf).expect("UDP answer");
        assert_eq!(from, service, "the reply comes from the service address");
        String::from_utf8_lossy(&buf[..n]).to_string()
    })
}

fn backend_addr_of(name: &str, port: u16) -> String {
    let index = name.strip_prefix("backend-").expect("backend name");
    format!("198.18.{index}.2:{port}")
}

#[test]
fn services_lists_every_frontend_with_its_backends() {
    let (lab, _agent) = ready_lab("lab_op_services");
    let pin = lab.pin_path.display().to_string();
    let json = stdout_of(
        &lab.slicelb_on_node(&["services", "--pin-path", &pin, "-o", "json"]),
        "services -o json",
    );
    let rows: serde_json::Value = serde_json::from_str(&json).expect("services JSON");
    let rows = rows.as_array().expect("an array of frontends");
    let frontends: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| {
            (
                format!(
                    "{}/{}:{}",
                    r["namespace"].as_str().expect("namespace"),
                    r["service"].as_str().expect("service"),
                    r["port_name"].as_str().expect("port_name")
                ),
                r["kind"].as_str().expect("kind").to_string(),
                format!(
                    "{}/{}",
                    r["frontend"].as_str().expect("frontend"),
                    r["protocol"].as_str().expect("protocol")
                ),
            )
        })
        .collect();
    for expected in [
        ("default/echo-udp:echo", "ClusterIP", "198.18.100.11:53/UDP"),
        (
            "default/my-app-service:http",
            "ClusterIP",
            "198.18.100.10:80/TCP",
        ),
        (
            "default/my-app-service:http",
            "ClusterIP",
            "[2001:2:0:100::10]:80/TCP",
        ),
        (
            "default/my-app-service:http",
            "NodePort",
            "198.18.0.1:30080/TCP",
        ),
        (
            "default/my-app-service:http",
            "NodePort",
            "[2001:2::1]:30080/TCP",
        ),
        (
            "default/my-app-service:http",
            "LoadBalancer",
            "198.18.200.10:80/TCP",
        ),
    ] {
        let expected = (
            expected.0.to_string(),
            expected.1.to_string(),
            expected.2.to_string(),
        );
        assert!(
            frontends.contains(&expected),
            "{expected:?} missing from {frontends:?}"
        );
    }
    assert_eq!(
        frontends.len(),
        6,
        "exactly the lab's frontends: {frontends:?}"
    );
    for row in rows {
        let backends = row["backends"].as_array().expect("backends");
        assert_eq!(backends.len(), 3, "three backends for {}", row["frontend"]);
        let total: f64 = backends
            .iter()
            .map(|b| b["share_percent"].as_f64().expect("share"))
            .sum();
        assert!(
            (total - 100.0).abs() < 0.01,
            "shares add up to 100%: {total}"
        );
        for b in backends {
            assert_eq!(b["state"], "active");
            let share = b["share_percent"].as_f64().expect("share");
            assert!(
                (28.0..=39.0).contains(&share),
                "Maglev share near a third: {share}"
            );
        }
    }
    let table = stdout_of(
        &lab.slicelb_on_node(&["services", "--pin-path", &pin]),
        "services",
    );
    assert!(table.starts_with("SERVICE "), "table header:\n{table}");
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 6, "a line per frontend:\n{table}");
    assert!(
        rows.iter()
            .any(|row| row.starts_with("default/my-app-service:http ")
                && row.contains(" LoadBalancer ")
                && row.contains(" 198.18.200.10:80/TCP ")),
        "the LoadBalancer row:\n{table}"
    );
    for row in &rows {
        let backends = row.split_whitespace().nth(3).expect("a BACKENDS cell");
        assert_eq!(backends.split(',').count(), 3, "three backends: {row}");
    }

    // One Service by name; a name the maps do not hold is an error that names it.
    let one = stdout_of(
        &lab.slicelb_on_node(&[
            "services",
            "default/echo-udp",
            "--pin-path",
            &pin,
            "--no-headers",
        ]),
        "services default/echo-udp",
    );
    assert_eq!(one.lines().count(), 1, "{one}");
    assert!(one.contains("198.18.100.11:53/UDP"), "{one}");
    let unknown = lab.slicelb_on_node(&["services", "default/no-such-service", "--pin-path", &pin]);
    assert!(!unknown.status.success(), "an unknown service must fail");
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("default/no-such-service"), "{stderr}");
}

/// The flows `slicelb conntrack` lists are the flows the client made, each with the backend
/// that answered it; `slicelb status` shows the attachment and a conntrack table that is
/// not empty.
#[test]
fn conntrack_and_status_show_the_live_flows() {
    let (lab, _agent) = ready_lab("lab_op_conntrack");
    let pin = lab.pin_path.display().to_string();
    let ports: Vec<u16> = (1..=4).map(|n| FIXED_PORTS + 200 + n).collect();
    let answered: Vec<(u16, String)> = ports
        .iter()
        .map(|&port| (port, backend_addr_of(&udp_from_port(&lab, port), 9000)))
        .collect();
    let conntrack = |args: &[&str]| -> serde_json::Value {
        let mut full = vec!["conntrack", "--pin-path", pin.as_str(), "-o", "json"];
        full.extend_from_slice(args);
        let json = stdout_of(&lab.slicelb_on_node(&full), &full.join(" "));
        serde_json::from_str(&json).expect("conntrack JSON")
    };
    let client = Lab::CLIENT_IPV4.to_string();
    let flows = conntrack(&["--client", &client, "--service", "default/echo-udp:echo"]);
    let flows = flows.as_array().expect("a list of flows");
    for (port, backend) in &answered {
        let client_addr = format!("{client}:{port}");
        let flow = flows
            .iter()
            .find(|f| f["client"] == client_addr.as_str())
            .unwrap_or_else(|| panic!("the flow from {client_addr} is not listed: {flows:?}"));
        assert_eq!(flow["backend"], backend.as_str(), "{flow}");
        assert_eq!(flow["frontend"], "198.18.100.11:53", "{flow}");
        assert_eq!(flow["protocol"], "UDP", "{flow}");
        assert_eq!(
            (&flow["namespace"], &flow["service"], &flow["port_name"]),
            (
                &serde_json::json!("default"),
                &serde_json::json!("echo-udp"),
                &serde_json::json!("echo")
            )
        );
    }
    // By backend: only that backend's flows, and every flow sent there.
    let (_, first_backend) = &answered[0];
    let to_backend = conntrack(&["--backend", first_backend]);
    let to_backend = to_backend.as_array().expect("a list");
    assert!(
        to_backend
            .iter()
            .all(|f| f["backend"] == first_backend.as_str()),
        "{to_backend:?}"
    );
    let sent_there = answered.iter().filter(|(_, b)| b == first_backend).count();
    assert!(to_backend.len() >= sent_there, "{to_backend:?}");
    // Counting sees at least the flows sent; the limit bounds the listing.
    let counts = conntrack(&["--count", "--client", &client]);
    assert!(
        counts["flows"].as_u64().expect("a count") >= answered.len() as u64,
        "{counts}"
    );
    let limited = lab.slicelb_on_node(&[
        "conntrack",
        "--pin-path",
        &pin,
        "--limit",
        "2",
        "--no-headers",
    ]);
    assert_eq!(
        stdout_of(&limited, "conntrack --limit 2").lines().count(),
        2
    );
    assert!(
        String::from_utf8_lossy(&limited.stderr).contains("--limit 2"),
        "a truncated listing says so"
    );
    let unknown =
        lab.slicelb_on_node(&["conntrack", "--pin-path", &pin, "--service", "default/nope"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("default/nope"));

    let json = stdout_of(
        &lab.slicelb_on_node(&["status", "--pin-path", &pin, "-o", "json"]),
        "status -o json",
    );
    let status: serde_json::Value = serde_json::from_str(&json).expect("status JSON");
    let map = |name: &str| -> serde_json::Value {
        status["maps"]
            .as_array()
            .expect("maps")
            .iter()
            .find(|m| m["map"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {status}"))
            .clone()
    };
    let conntrack_fill = map("CONNTRACK");
    assert!(
        conntrack_fill["entries"].as_u64().expect("counted") >= 2 * answered.len() as u64,
        "two entries per flow: {conntrack_fill}"
    );
    assert_eq!(
        map("FRONTENDS")["entries"],
        6,
        "the lab's frontends: {status}"
    );
    let iface = status["interfaces"]
        .as_array()
        .expect("interfaces")
        .iter()
        .find(|i| i["interface"] == Lab::NODE_CLIENT_IFACE)
        .unwrap_or_else(|| panic!("{} missing: {status}", Lab::NODE_CLIENT_IFACE))
        .clone();
    let links = iface["links"].as_array().expect("links");
    assert!(
        links.iter().any(|l| l["hook"] == "tc_egress"),
        "egress is attached: {iface}"
    );
    assert!(
        links
            .iter()
            .all(|l| l["program_id"].as_u64().expect("id") > 0),
        "{iface}"
    );
    assert_ne!(iface["ingress_mode"], "none", "{iface}");
    assert_eq!(
        status["agent"]["running"], true,
        "the agent holds the maps: {status}"
    );
    let table = stdout_of(
        &lab.slicelb_on_node(&["status", "--pin-path", &pin]),
        "status",
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("agent ") && l.ends_with(" running")),
        "{table}"
    );
    assert_eq!(
        status["layout_version"],
        lb_common::LAYOUT_VERSION,
        "the agent pinned its layout version: {status}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("CONNTRACK ") && l.ends_with('%')),
        "{table}"
    );
}

#[test]
fn trace_agrees_with_where_real_flows_went() {
    let (lab, _agent) = ready_lab("lab_op_trace");
    let trace = |port: u16| trace_udp(&lab, port);

    // A new flow: trace names the Maglev slot's backend, and the real flow goes there.
    for port in (1..=5).map(|n| FIXED_PORTS + n) {
        let predicted = trace(port);
        assert_eq!(
            predicted["decision"], "maglev",
            "fresh flow from port {port}: {predicted}"
        );
        // The agent balances on the veth at TC ingress: no fast path there.
        assert_eq!(
            predicted["fast_path"]["outcome"], "tc_ingress",
            "{predicted}"
        );
        let answered = udp_from_port(&lab, port);
        assert_eq!(
            predicted["backend"].as_str().expect("backend"),
            backend_addr_of(&answered, 9000),
            "trace and the real flow from port {port} disagree"
        );
        // Now the flow exists: trace sees its conntrack entry, same backend.
        let again = trace(port);
        assert_eq!(
            again["decision"], "conntrack",
            "existing flow from {port}: {again}"
        );
        assert_eq!(again["backend"], predicted["backend"]);
    }

    // No frontend: passed untouched.
    let from = client_port(41010);
    let miss = trace_output(&lab, &from, "198.18.100.99:80", &[]);
    assert!(miss.contains("decision  no-frontend"), "{miss}");

    // No backend: rejected.
    lab.write(&[]);
    lab.wait_until(
        "empty service refused",
        Frontend::ClusterIpV4,
        Duration::from_secs(10),
        |a| a.is_empty(),
    );
    let reject = trace_output(&lab, &from, "198.18.100.10:80", &[]);
    assert!(reject.contains("decision  reject"), "{reject}");
    assert!(reject.contains("XDP_TX"), "{reject}");
}

/// The output of `slicelb trace --from FROM --to TO` with `extra` arguments.
fn trace_output(lab: &AgentLab, from: &str, to: &str, extra: &[&str]) -> String {
    let pin = lab.pin_path.display().to_string();
    let mut args = vec!["trace", "--pin-path", &pin, "--from", from, "--to", to];
    args.extend_from_slice(extra);
    stdout_of(&lab.slicelb_on_node(&args), "trace")
}

/// The client's address with source port `port`, as `--from` takes it.
fn client_port(port: u16) -> String {
    format!("{}:{port}", Lab::CLIENT_IPV4)
}

/// `slicelb trace -o json` of a UDP flow from the client's `port` to the UDP ClusterIP.
fn trace_udp(lab: &AgentLab, port: u16) -> serde_json::Value {
    let to = Frontend::UdpClusterIp.addr().to_string();
    let json = trace_output(
        lab,
        &client_port(port),
        &to,
        &["--proto", "udp", "-o", "json"],
    );
    serde_json::from_str(&json).expect("trace JSON")
}

/// The MAC of a lab backend's own interface, as trace prints MACs.
fn backend_mac(lab: &AgentLab, index: usize) -> String {
    let mac = mac_of(&lab.lab.backends[index].netns, "eth0").expect("backend MAC");
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// With the fast path on (generic XDP on the node's client link, every backend link listed
/// in `--fast-path-iface`), trace runs the packet as arriving on the attached interface: a
/// backend whose neighbour the node knows is reached by redirect out of its link with its
/// MAC, as live; a backend without a neighbour entry yet goes through the stack, and trace
/// says why, until a real packet has made the stack resolve it.
#[test]
fn trace_follows_the_fast_path() {
    let lab = AgentLab::new("lab_op_trace_fast");
    // XDP on the backends' ends of their links: a veth takes redirected frames only then.
    let _backend_links: Vec<Pass> = lab
        .lab
        .backends
        .iter()
        .map(|b| Pass::attach(&b.netns, "eth0").expect("XDP on a backend's veth"))
        .collect();
    // Generic XDP cannot see partial checksums: the client sends full ones.
    lab.lab
        .set_client_tx_offload(false)
        .expect("client offload off");
    let backend_links: Vec<String> = lab
        .lab
        .backends
        .iter()
        .map(|b| b.node_iface.clone())
        .collect();
    lab.write(&(1..=3).map(LabEndpoint::ready).collect::<Vec<_>>());
    let _agent = lab.start_agent_with(&[
        "--xdp-mode",
        "generic",
        "--fast-path-iface",
        &backend_links.join(","),
    ]);
    lab.wait_until(
        "the first sync",
        Frontend::UdpClusterIp,
        Duration::from_secs(30),
        all_three,
    );

    // Backends 1-3 answered through the node: it knows their MACs, the fast path sends.
    for port in (101..=103).map(|n| FIXED_PORTS + n) {
        let trace = trace_udp(&lab, port);
        let backend = trace["backend"].as_str().expect("a backend").to_string();
        let index = lab
            .lab
            .backends
            .iter()
            .position(|b| backend == format!("{}:9000", b.ipv4))
            .unwrap_or_else(|| panic!("{backend} is no lab backend: {trace}"));
        let fast_path = &trace["fast_path"];
        assert_eq!(
            (
                &trace["verdict"],
                &fast_path["outcome"],
                &fast_path["arrival"],
                &fast_path["egress"],
                &fast_path["destination_mac"],
            ),
            (
                &format!("XDP_REDIRECT, destination rewritten to {backend}").into(),
                &"sent_redirect".into(),
                &Lab::NODE_CLIENT_IFACE.into(),
                &lab.lab.backends[index].node_iface.as_str().into(),
                &backend_mac(&lab, index).into(),
            ),
            "{trace}"
        );
    }

    // Backend 4 joins without a packet sent to it: no neighbour entry yet.
    lab.write(&(1..=4).map(LabEndpoint::ready).collect::<Vec<_>>());
    let fourth = format!("{}:9000", lab.lab.backends[3].ipv4);
    let (port, trace) = (0..60)
        .find_map(|n| {
            let port = FIXED_PORTS + 200 + n;
            let trace = trace_udp(&lab, port);
            if trace["backend"] == fourth.as_str() {
                return Some((port, trace));
            }
            std::thread::sleep(Duration::from_millis(200));
            None
        })
        .unwrap_or_else(|| panic!("no client port traced to {fourth}"));
    assert_eq!(
        (&trace["verdict"], &trace["fast_path"]["outcome"]),
        (
            &format!("XDP_PASS, destination rewritten to {fourth}").into(),
            &"stack_no_next_hop".into()
        ),
        "{trace}"
    );
    let table = trace_output(
        &lab,
        &client_port(port),
        &Frontend::UdpClusterIp.addr().to_string(),
        &["--proto", "udp", "--iface", Lab::NODE_CLIENT_IFACE],
    );
    assert!(
        table.contains(
            "fast path stack_no_next_hop (arriving on n-client): to the stack: no usable next hop"
        ),
        "{table}"
    );
    // The stack forwards a real datagram of the flow and resolves the neighbour: now the
    // flow's packets are sent directly, out of backend 4's link.
    udp_from_port(&lab, port);
    let again = trace_udp(&lab, port);
    assert_eq!(
        (
            &again["verdict"],
            &again["fast_path"]["outcome"],
            &again["fast_path"]["egress"],
            &again["fast_path"]["destination_mac"],
        ),
        (
            &format!("XDP_REDIRECT, destination rewritten to {fourth}").into(),
            &"sent_redirect".into(),
            &lab.lab.backends[3].node_iface.as_str().into(),
            &backend_mac(&lab, 3).into(),
        ),
        "{again}"
    );

    // An interface of the node that slicelb is not attached to is refused, by name.
    let pin = lab.pin_path.display().to_string();
    let unattached = lab.lab.backends[0].node_iface.as_str();
    let to = Frontend::UdpClusterIp.addr().to_string();
    let from = client_port(port);
    let refused = lab.slicelb_on_node(&[
        "trace",
        "--pin-path",
        &pin,
        "--from",
        &from,
        "--to",
        &to,
        "--proto",
        "udp",
        "--iface",
        unattached,
    ]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && stderr.contains(&format!(
                "--iface {unattached}: slicelb is not attached there"
            )),
        "{stderr}"
    );
}

#[test]
fn check_reports_drift_written_by_hand() {
    let (lab, _agent) = ready_lab("lab_op_check");
    let pin = lab.pin_path.display().to_string();
    let dir = lab.manifests.path().display().to_string();
    let check = |args: &[&str]| {
        let mut full = vec![
            "check",
            "--manifest-dir",
            dir.as_str(),
            "--pin-path",
            pin.as_str(),
            "--node-name",
            "lab-node",
            "--nodeport-addresses",
            "198.18.0.0/24,2001:2::/64",
        ];
        full.extend_from_slice(args);
        lab.slicelb_on_node(&full)
    };
    let in_sync = check(&[]);
    assert!(
        in_sync.status.success(),
        "check after a sync: {}\n{}",
        String::from_utf8_lossy(&in_sync.stdout),
        String::from_utf8_lossy(&in_sync.stderr)
    );
    assert!(String::from_utf8_lossy(&in_sync.stdout).starts_with("in sync"));

    // Drift: remove the NodePort frontend behind the agent's back.
    lab.lab
        .node
        .enter(|| {
            use slicelb::dataplane::{MapOp, MapWriter as _, aya_maps::AyaMaps};
            let mut maps = AyaMaps::from_pin(&lab.pin_path, Default::default()).expect("maps");
            let applied = maps.read().expect("read");
            let key = *applied
                .frontends
                .keys()
                .find(|k| u16::from_be(k.port) == 30080 && k.family == lb_common::FAMILY_IPV4)
                .expect("the NodePort frontend");
            maps.apply(&[MapOp::DeleteFrontend { key }])
                .expect("delete by hand");
        })
        .expect("enter node");
    let drift = check(&[]);
    let stdout = String::from_utf8_lossy(&drift.stdout);
    assert_eq!(drift.status.code(), Some(1), "drift must exit 1: {stdout}");
    assert!(
        stdout.contains("default/my-app-service:http") && stdout.contains("198.18.0.1:30080"),
        "the missing NodePort is named: {stdout}"
    );
}

#[test]
fn stats_and_metrics_count_the_traffic_sent() {
    let (lab, _agent) = ready_lab("lab_op_metrics");
    let scrape = || -> String {
        lab.lab
            .node
            .enter(|| {
                use std::io::{Read as _, Write as _};
                let mut stream = std::net::TcpStream::connect("127.0.0.1:9400").expect("metrics");
                stream
                    .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .expect("request");
                let mut text = String::new();
                stream.read_to_string(&mut text).expect("response");
                text
            })
            .expect("enter node")
    };
    let value = |text: &str, series: &str| -> u64 {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as u64)
            .unwrap_or(0)
    };
    let labels = r#"{namespace="default",service="echo-udp",port_name="echo"}"#;
    let new_flows = format!("slicelb_service_new_flows_total{labels} ");
    let packets = format!("slicelb_service_packets_total{labels} ");
    let before = scrape();
    let sent = 25u16;
    for port in 0..sent {
        udp_from_port(&lab, FIXED_PORTS + 100 + port);
    }
    let after = scrape();
    assert_eq!(
        value(&after, &new_flows) - value(&before, &new_flows),
        u64::from(sent),
        "one new flow per source port:\n{after}"
    );
    assert_eq!(
        value(&after, &packets) - value(&before, &packets),
        u64::from(sent),
        "one request packet per flow"
    );
    assert!(
        after.contains("slicelb_ready 1"),
        "ready after the first sync"
    );

    let pin = lab.pin_path.display().to_string();
    let json = stdout_of(
        &lab.slicelb_on_node(&["stats", "--pin-path", &pin, "-o", "json"]),
        "stats",
    );
    let stats: serde_json::Value = serde_json::from_str(&json).expect("stats JSON");
    assert!(stats["reasons"]["lb_new_flow"].as_u64().expect("count") >= u64::from(sent));
    assert!(
        stats["reasons"]["reply_translated"]
            .as_u64()
            .expect("count")
            >= u64::from(sent)
    );
    assert!(stats["protocols"]["udp"].as_u64().expect("count") >= u64::from(sent));
}
