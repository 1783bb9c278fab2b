//! The desired state in map terms: keys, values and flags as `lb-common` lays them out.
//! One place, shared by the diff (which writes them) and the comparison (which checks them).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
};

use ipnet::IpNet;
use lb_common::{Backend, FrontendKey, SourceRangeKey, backend_flags, frontend_flags};

use super::{
    BackendState, DesiredBackend, DesiredFrontend, DesiredService, DesiredState, Protocol,
    WhenEmpty, decode_addr, encode_addr,
};

/// The FRONTENDS key of a frontend.
pub fn frontend_key(frontend: &DesiredFrontend, protocol: Protocol) -> FrontendKey {
    let (addr, family) = encode_addr(frontend.addr);
    FrontendKey {
        addr,
        port: frontend.port.to_be(),
        proto: protocol.number(),
        family,
    }
}

/// The `frontend_flags` bits of a frontend of `service`.
pub fn frontend_flag_bits(frontend: &DesiredFrontend, service: &DesiredService) -> u16 {
    let mut flags = 0;
    if frontend.kind.is_external() {
        flags |= frontend_flags::EXTERNAL;
    }
    if service.affinity_timeout_secs.is_some() {
        flags |= frontend_flags::AFFINITY;
    }
    if frontend.policy_local {
        flags |= frontend_flags::TRAFFIC_POLICY_LOCAL;
    }
    if frontend.source_ranges {
        flags |= frontend_flags::SOURCE_RANGES;
    }
    if frontend.selection.is_empty() && frontend.when_empty == WhenEmpty::Drop {
        flags |= frontend_flags::DROP_WHEN_EMPTY;
    }
    flags
}

/// The BACKENDS value of an endpoint.
pub fn backend_entry(addr: SocketAddr, desired: DesiredBackend) -> Backend {
    let (bytes, family) = encode_addr(addr.ip());
    Backend {
        addr: bytes,
        port: addr.port().to_be(),
        family,
        state: desired.state.code(),
        flags: if desired.node_local {
            backend_flags::NODE_LOCAL
        } else {
            0
        },
        _pad: [0; 3],
    }
}

/// The endpoint a BACKENDS value stands for; `None` for an unknown family.
pub fn backend_identity(backend: &Backend) -> Option<SocketAddr> {
    decode_addr(&backend.addr, backend.family)
        .map(|ip| SocketAddr::new(ip, u16::from_be(backend.port)))
}

/// The SOURCE_RANGES entry (key, prefix length) of one range of a service.
pub fn source_range_entry(service_id: u32, range: &IpNet) -> (SourceRangeKey, u32) {
    let (addr, family) = encode_addr(range.network());
    let key = SourceRangeKey {
        service_id_be: service_id.to_be_bytes(),
        family,
        addr,
        _pad: [0; 3],
    };
    (key, SourceRangeKey::prefix_len(range.prefix_len()))
}

/// The SOURCE_RANGES entries a service needs: its ranges, when some frontend checks them.
pub fn source_range_entries(
    service_id: u32,
    service: &DesiredService,
) -> BTreeSet<(SourceRangeKey, u32)> {
    if !service.frontends.iter().any(|f| f.source_ranges) {
        return BTreeSet::new();
    }
    service
        .source_ranges
        .iter()
        .map(|range| source_range_entry(service_id, range))
        .collect()
}

impl DesiredState {
    /// Every backend over all services. One endpoint may serve several services; it is
    /// Active when any of them counts it ready.
    pub fn merged_backends(&self) -> BTreeMap<SocketAddr, DesiredBackend> {
        let mut merged: BTreeMap<SocketAddr, DesiredBackend> = BTreeMap::new();
        for service in self.services.values() {
            for (&addr, &backend) in &service.backends {
                merge_backend(&mut merged, addr, backend);
            }
        }
        merged
    }
}

/// Adds `backend` to `merged`, Active winning over Terminating.
pub fn merge_backend(
    merged: &mut BTreeMap<SocketAddr, DesiredBackend>,
    addr: SocketAddr,
    backend: DesiredBackend,
) {
    merged
        .entry(addr)
        .and_modify(|known| *known = combine_backend(*known, backend))
        .or_insert(backend);
}

/// One endpoint as two services see it: Active if either counts it ready.
pub fn combine_backend(a: DesiredBackend, b: DesiredBackend) -> DesiredBackend {
    let state = if a.state == BackendState::Active || b.state == BackendState::Active {
        BackendState::Active
    } else {
        BackendState::Terminating
    };
    DesiredBackend {
        state,
        node_local: a.node_local || b.node_local,
    }
}
