//! Which UDP service ports' flows a plan cleans (kube-proxy's `CleanStaleEntries`,
//! pkg/proxy/conntrack/cleanup.go): a client that keeps its source port, as a DNS resolver
//! does, would otherwise keep sending to an endpoint that stopped serving until its flow
//! times out. As kube-proxy: UDP only (TCP flows are kept); a port whose serving set is empty
//! keeps its flows (nothing better exists), and once it has serving endpoints again the flows
//! kept meanwhile go; serving terminating endpoints keep theirs.
//!
//! Driven by the diff, not by a look at every flow on every sync: the planner remembers each
//! UDP port's serving endpoints and lists a port only when one left that set, when the port
//! had none, or when it knows nothing of the port yet (a started agent checks each once). A
//! sync that takes no endpoint away from a UDP port lists nothing, and the writer then reads
//! no flow map. What goes for a listed port is decided by the entries alone
//! (`StaleFlows::is_stale_flow`).
//!
//! Socket level: unconnected UDP sockets choose per datagram from the selection tables, which
//! never hold an endpoint that stopped serving, and their affinity entries are cleaned with
//! the flows'. A connected UDP socket keeps the backend `connect()` gave it (no hook sees its
//! sends; moving it would mean closing it with `bpf_sock_destroy()` from a socket iterator,
//! which the datapath does not do): its SOCK_REVERSE entry is left as it is, so replies still
//! show the service until the application reconnects.

use std::{collections::BTreeSet, net::SocketAddr};

use rustc_hash::FxHashMap;

use super::encode::encode_addr;
use crate::{
    dataplane::{FlowEndpoint, Serving, StaleFlows},
    model::ServicePortName,
};

/// An admitted UDP service port, as the plan wrote it.
pub(super) struct AdmittedUdpPort {
    pub(super) name: ServicePortName,
    pub(super) service_id: u32,
    /// (address, backend id) of its serving endpoints.
    pub(super) serving: Vec<(SocketAddr, u32)>,
}

/// The serving endpoints of each UDP service port as the last plan that admitted it wrote
/// them.
#[derive(Debug, Default)]
pub(super) struct ServingMemory {
    ports: FxHashMap<ServicePortName, BTreeSet<SocketAddr>>,
}

impl ServingMemory {
    /// Remembers the ports a plan admitted and lists those whose flows may name an endpoint
    /// that is not serving (see the module's rules).
    pub(super) fn admitted(&mut self, ports: Vec<AdmittedUdpPort>) -> StaleFlows {
        let mut stale = StaleFlows::default();
        for port in ports {
            let now: BTreeSet<SocketAddr> = port.serving.iter().map(|(addr, _)| *addr).collect();
            let before = self.ports.insert(port.name, now.clone());
            let may_be_stale =
                before.is_none_or(|before| before.is_empty() || !before.is_subset(&now));
            if now.is_empty() || !may_be_stale {
                continue;
            }
            let serving = Serving {
                endpoints: port
                    .serving
                    .iter()
                    .map(|(addr, _)| flow_endpoint(*addr))
                    .collect(),
                backend_ids: port.serving.iter().map(|(_, id)| *id).collect(),
            };
            stale.services.insert(port.service_id, serving);
        }
        stale
    }

    /// Keeps only the ports `keep` says are still UDP service ports.
    pub(super) fn retain(&mut self, keep: impl Fn(&ServicePortName) -> bool) {
        self.ports.retain(|name, _| keep(name));
    }

    pub(super) fn forget(&mut self) {
        self.ports.clear();
    }
}

/// An endpoint as flow entries name it.
fn flow_endpoint(addr: SocketAddr) -> FlowEndpoint {
    let (bytes, family) = encode_addr(addr.ip());
    FlowEndpoint {
        addr: bytes,
        port: addr.port().to_be(),
        family,
    }
}
