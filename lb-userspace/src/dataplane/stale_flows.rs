//! [`StaleFlows`]: the flow state a writer deletes after a plan, because a UDP service port's
//! endpoint stopped serving (kube-proxy's conntrack cleanup, `CleanStaleEntries` in
//! pkg/proxy/conntrack/cleanup.go). Which ports are listed is the diff's decision; which
//! entries go is decided here, by the entries alone, the same way for every writer.

use std::collections::{BTreeMap, BTreeSet};

use lb_common::{AffinityKey, AffinityValue, FlowKey, FlowValue, PROTO_UDP, flow_direction};

/// An endpoint as flow entries name it: address (network order, IPv4 in the first 4 bytes),
/// port (network order) and `FAMILY_*` tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowEndpoint {
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u8,
}

/// The endpoints a listed UDP service port still serves from: its flows and affinity may
/// name these and no other.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Serving {
    pub endpoints: BTreeSet<FlowEndpoint>,
    /// Their BACKENDS ids (AFFINITY entries name a backend by id only).
    pub backend_ids: BTreeSet<u32>,
}

/// UDP service ports (by service id) whose flows to any endpoint but their serving ones are
/// deleted: CONNTRACK entries in both directions, and AFFINITY entries, so the client's next
/// datagram is balanced afresh. TCP entries are never touched (kube-proxy keeps them too).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StaleFlows {
    pub services: BTreeMap<u32, Serving>,
}

/// What [`crate::dataplane::MapWriter::delete_stale_flows`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeletedFlows {
    /// CONNTRACK entries (a flow has two: forward and reply).
    pub conntrack: usize,
    pub affinity: usize,
}

impl StaleFlows {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }

    /// Whether this CONNTRACK entry goes: a UDP flow of a listed service to an endpoint
    /// outside its serving set. The forward entry names the endpoint in its value (where the
    /// packets are sent), the reply entry in its key (where the replies come from).
    pub fn is_stale_flow(&self, key: &FlowKey, value: &FlowValue) -> bool {
        if key.proto != PROTO_UDP {
            return false;
        }
        let Some(serving) = self.services.get(&value.service_id) else {
            return false;
        };
        let (addr, port) = match value.direction {
            flow_direction::FORWARD => (value.nat_addr, value.nat_port),
            flow_direction::REPLY => (key.src_addr, key.src_port),
            _ => return false,
        };
        let endpoint = FlowEndpoint {
            addr,
            port,
            family: key.family,
        };
        !serving.endpoints.contains(&endpoint)
    }

    /// Whether this AFFINITY entry goes: a listed service's client pinned to a backend
    /// outside its serving set (by address or, for sockets, by network namespace).
    pub fn is_stale_affinity(&self, key: &AffinityKey, value: &AffinityValue) -> bool {
        self.services
            .get(&key.service_id)
            .is_some_and(|serving| !serving.backend_ids.contains(&value.backend_id))
    }
}

#[cfg(test)]
mod tests {
    use lb_common::{FAMILY_BY_NETNS, FAMILY_IPV4, FAMILY_IPV6, PROTO_SCTP, PROTO_TCP};

    use super::*;

    const SERVICE: u32 = 7;
    const OTHER_SERVICE: u32 = 8;
    const SERVICE_PORT: u16 = 53;

    fn v4(last: u8) -> [u8; 16] {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&[198, 18, 1, last]);
        addr
    }

    fn endpoint(last: u8, port: u16) -> FlowEndpoint {
        FlowEndpoint {
            addr: v4(last),
            port: port.to_be(),
            family: FAMILY_IPV4,
        }
    }

    /// The two entries of one flow from 198.18.0.2:40000 to the service at 198.18.100.11,
    /// sent to `backend`, as the datapath records them.
    fn flow(
        proto: u8,
        service_id: u32,
        service_port: u16,
        backend: FlowEndpoint,
    ) -> [(FlowKey, FlowValue); 2] {
        let client = v4(2);
        let mut frontend = [0; 16];
        frontend[..4].copy_from_slice(&[198, 18, 100, 11]);
        let value = |direction, nat_addr, nat_port| FlowValue {
            backend_id: 1,
            service_id,
            nat_addr,
            nat_port,
            direction,
            ..FlowValue::default()
        };
        let forward = FlowKey {
            src_addr: client,
            dst_addr: frontend,
            src_port: 40000u16.to_be(),
            dst_port: service_port.to_be(),
            proto,
            family: FAMILY_IPV4,
            _pad: [0; 2],
        };
        let reply = FlowKey {
            src_addr: backend.addr,
            dst_addr: client,
            src_port: backend.port,
            dst_port: forward.src_port,
            ..forward
        };
        [
            (
                forward,
                value(flow_direction::FORWARD, backend.addr, backend.port),
            ),
            (
                reply,
                value(flow_direction::REPLY, frontend, service_port.to_be()),
            ),
        ]
    }

    fn stale_of_service() -> StaleFlows {
        let serving = Serving {
            endpoints: BTreeSet::from([endpoint(4, 9090)]),
            backend_ids: BTreeSet::from([4]),
        };
        StaleFlows {
            services: BTreeMap::from([(SERVICE, serving)]),
        }
    }

    /// kube-proxy's `TestCleanStaleEntries` grid, in slicelb's terms: a serving endpoint
    /// (.4:9090), one that stopped serving (.5:9090), one that was deleted (.6:9090), the
    /// serving endpoint's old port (.4:8080), each reached over TCP, UDP and SCTP, for the
    /// listed service and for another. Only the listed service's UDP flows to anything but
    /// its serving endpoint go, both of their entries.
    #[test]
    fn only_udp_flows_of_a_listed_service_to_an_endpoint_outside_its_serving_set_go() {
        let stale = stale_of_service();
        let endpoints = [
            ("serving", endpoint(4, 9090), false),
            ("not serving", endpoint(5, 9090), true),
            ("deleted", endpoint(6, 9090), true),
            ("serving address, old port", endpoint(4, 8080), true),
        ];
        for (what, backend, goes) in endpoints {
            for proto in [PROTO_TCP, PROTO_UDP, PROTO_SCTP] {
                for service_id in [SERVICE, OTHER_SERVICE] {
                    let expected = goes && proto == PROTO_UDP && service_id == SERVICE;
                    for (key, value) in flow(proto, service_id, SERVICE_PORT, backend) {
                        assert_eq!(
                            stale.is_stale_flow(&key, &value),
                            expected,
                            "{what} endpoint, protocol {proto}, service {service_id}, direction {}",
                            value.direction
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn an_ipv6_endpoint_with_an_ipv4_serving_endpoints_bytes_is_another_endpoint() {
        let stale = stale_of_service();
        for (mut key, mut value) in flow(PROTO_UDP, SERVICE, SERVICE_PORT, endpoint(4, 9090)) {
            key.family = FAMILY_IPV6;
            assert!(stale.is_stale_flow(&key, &value));
            value.direction = 0;
            assert!(
                !stale.is_stale_flow(&key, &value),
                "an entry of no known direction is left alone"
            );
        }
    }

    #[test]
    fn affinity_to_a_backend_outside_the_serving_set_goes_for_addresses_and_sockets() {
        let stale = stale_of_service();
        for family in [FAMILY_IPV4, FAMILY_IPV4 | FAMILY_BY_NETNS] {
            for (service_id, backend_id, goes) in [
                (SERVICE, 4, false),
                (SERVICE, 5, true),
                (OTHER_SERVICE, 5, false),
            ] {
                let key = AffinityKey {
                    client_addr: v4(2),
                    service_id,
                    family,
                    _pad: [0; 3],
                };
                let value = AffinityValue {
                    backend_id,
                    ..AffinityValue::default()
                };
                assert_eq!(
                    stale.is_stale_affinity(&key, &value),
                    goes,
                    "family {family:#x}, service {service_id}, backend {backend_id}"
                );
            }
        }
    }
}
