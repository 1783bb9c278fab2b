//! The desired state in map terms: keys, values and addresses as `lb-common` lays them out.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
};

use ipnet::IpNet;
use lb_common::{
    Backend, FAMILY_IPV4, FAMILY_IPV6, FAMILY_SHORT_CIRCUIT, FrontendKey, SourceRangeKey,
    backend_flags,
};

use crate::model::{DesiredBackend, DesiredFrontend, DesiredService, Protocol};

/// The FRONTENDS key of a frontend.
pub fn frontend_key(frontend: &DesiredFrontend, protocol: Protocol) -> FrontendKey {
    let (addr, family) = encode_addr(frontend.addr);
    let scope = if frontend.short_circuit {
        FAMILY_SHORT_CIRCUIT
    } else {
        0
    };
    FrontendKey {
        addr,
        port: frontend.port.to_be(),
        proto: protocol.number(),
        family: family | scope,
    }
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
fn source_range_entry(service_id: u32, range: &IpNet) -> (SourceRangeKey, u32) {
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

/// An address as the maps hold it: 16 bytes in network order (IPv4 in the first 4) and its
/// `FAMILY_*` tag.
pub fn encode_addr(addr: IpAddr) -> ([u8; 16], u8) {
    let mut bytes = [0u8; 16];
    match addr {
        IpAddr::V4(v4) => {
            bytes[..4].copy_from_slice(&v4.octets());
            (bytes, FAMILY_IPV4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_IPV6),
    }
}

/// The inverse of [`encode_addr`] (kept with the maps' writer, which names entries by it).
pub use crate::dataplane::decode_addr;
