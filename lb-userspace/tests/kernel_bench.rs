//! Per-packet cost of the programs, measured with BPF_PROG_TEST_RUN (repeat 100 000,
//! median of 5 runs). Prints the numbers; asserts nothing about them (timings vary with
//! the machine). Run with:
//! `cargo test -p lb-userspace --test kernel_bench -- --ignored --nocapture`

#[path = "support/kernel.rs"]
mod kernel;
#[path = "support/packets.rs"]
mod packets;

use kernel::*;
use lb_common::{
    Config, FrontendKey, FrontendValue, PROTO_TCP, backend_state::ACTIVE, frontend_kind,
};
use packets::*;
use slicelb::dataplane::{MapOp, test_run};

const REPEAT: u32 = 100_000;
const RUNS: usize = 5;

fn median_ns(env: &Env, program: Program, packet: &[u8], expected_verdict: u32) -> f64 {
    let name = program.name();
    let mut samples: Vec<f64> = (0..RUNS)
        .map(|_| {
            let out = match program {
                Program::TcIngress | Program::TcEgress => {
                    test_run::run_repeated(env.datapath.tc(name).expect("tc"), name, packet, REPEAT)
                }
                _ => test_run::run_repeated(
                    env.datapath.xdp(name).expect("xdp"),
                    name,
                    packet,
                    REPEAT,
                ),
            }
            .unwrap_or_else(|e| panic!("benchmark run of {name}: {e}"));
            assert_eq!(
                out.verdict, expected_verdict,
                "{name}: unexpected verdict while benchmarking"
            );
            out.duration.as_nanos() as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[RUNS / 2]
}

/// Two frontends that send to each other: the repeated test run rewrites the packet in
/// place, so each iteration is again a packet for a frontend (VIP:80 -> B:8080 -> VIP:80).
fn ping_pong_services() -> Vec<Service> {
    vec![
        Service::new(
            1,
            "198.18.100.1",
            80,
            PROTO_TCP,
            frontend_kind::CLUSTER_IP,
            0,
            &[(10, "198.18.1.1", 8080, ACTIVE)],
        ),
        Service::new(
            2,
            "198.18.1.1",
            8080,
            PROTO_TCP,
            frontend_kind::CLUSTER_IP,
            0,
            &[(11, "198.18.100.1", 80, ACTIVE)],
        ),
    ]
}

fn add_idle_services(env: &mut Env, count: u32) {
    let ops: Vec<MapOp> = (0..count)
        .map(|i| {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&[198, 19, (i >> 8) as u8, i as u8]);
            MapOp::PutFrontend {
                key: FrontendKey {
                    addr,
                    port: 80u16.to_be(),
                    proto: PROTO_TCP,
                    family: lb_common::FAMILY_IPV4,
                },
                value: FrontendValue {
                    service_id: 100 + i % 900,
                    ..FrontendValue::default()
                },
            }
        })
        .collect();
    env.apply(&ops);
}

fn measure(env: &mut Env, label: &str) {
    let syn_to_vip = Spec::new("198.18.0.1", 40000, "198.18.100.1", 80, L4::Tcp(ACK)).build();
    let to_nothing = Spec::new("198.18.0.1", 40000, "198.18.9.9", 80, L4::Tcp(ACK)).build();
    let empty = median_ns(env, Program::XdpEmpty, &syn_to_vip, XDP_PASS);
    let parse = median_ns(env, Program::XdpParseOnly, &syn_to_vip, XDP_PASS);
    let miss = median_ns(env, Program::Xdp, &to_nothing, XDP_PASS);
    env.set_config(Config {
        tcp_established_timeout_ns: 0,
        tcp_transient_timeout_ns: 0,
        ..Config::default()
    });
    let new_flow = median_ns(env, Program::Xdp, &syn_to_vip, XDP_PASS);
    env.set_config(Config::default());
    let conntrack = median_ns(env, Program::Xdp, &syn_to_vip, XDP_PASS);
    let tc_conntrack = median_ns(env, Program::TcIngress, &syn_to_vip, TC_ACT_PIPE);
    println!(
        "{label}: empty {empty:.1} ns, parse-only {parse:.1} ns, miss {miss:.1} ns ({:.2}x parse), \
         hit new flow {new_flow:.1} ns ({:.2}x), hit conntrack {conntrack:.1} ns ({:.2}x), tc hit conntrack {tc_conntrack:.1} ns",
        miss / parse,
        new_flow / parse,
        conntrack / parse,
    );
}

#[test]
#[ignore = "benchmark: run with --ignored --nocapture"]
fn per_packet_cost() {
    let mut env = Env::new();
    for service in ping_pong_services() {
        env.install(&service);
    }
    measure(&mut env, "2 services");
    add_idle_services(&mut env, 100_000);
    measure(&mut env, "100002 services");
}
