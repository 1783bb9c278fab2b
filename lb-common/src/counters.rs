//! Counter indexes and names: every verdict branch of the datapath has one, so the CLI and
//! the metrics endpoint can say why each packet was passed, balanced, rejected or dropped.
//! What each reason does is its [`ReasonClass`], one match below.

/// Why the datapath did what it did with a packet; the index into REASON_STATS.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Not IPv4 or IPv6 (ARP, LLDP, ...): passed untouched.
    PassNotIp = 0,
    /// No frontend for the destination: passed untouched.
    PassNoFrontend,
    /// A protocol we do not balance (ICMP echo to a service address, ...): passed.
    PassOtherProtocol,
    /// A non-first fragment whose first fragment we have not seen: handed to the stack.
    PassFragmentUnknown,
    /// Headers we do not walk (too many IPv6 extension headers, ESP/AH): passed untouched.
    PassUnparsedHeaders,
    /// A packet of a known flow, sent to its conntrack backend.
    LbConntrack,
    /// A new flow sent to the client's affinity backend.
    LbAffinity,
    /// A new flow sent to the backend its Maglev slot names.
    LbNewFlow,
    /// A non-first fragment sent where its first fragment went.
    LbFragment,
    /// A reply from a backend leaving with the frontend's address (reverse NAT).
    ReplyTranslated,
    /// An ICMP error about a balanced flow, translated so the peer recognises it.
    IcmpErrorTranslated,
    /// No usable backend: TCP SYN answered with a RST.
    RejectTcpReset,
    /// No usable backend: answered with ICMP / ICMPv6 port unreachable.
    RejectIcmpUnreachable,
    /// Truncated at some header: dropped.
    DropTruncated,
    /// A header with impossible fields (IHL < 5, lengths beyond the packet): dropped.
    DropMalformed,
    /// The source is outside the service's loadBalancerSourceRanges.
    DropSourceRange,
    /// A Local traffic policy with no endpoint on this node (kube-proxy drops too).
    DropNoLocalEndpoint,
    /// A reject that could not be built (no room to grow the packet): dropped instead.
    DropRejectFailed,
    /// A map or helper call failed unexpectedly, or a frontend's value changed under each of
    /// the forward path's reads of it.
    DropInternal,
    // Added after the others: the indexes of REASON_STATS keep their meaning across builds.
    /// A TCP packet without SYN (mid-connection) whose flow has no live conntrack entry
    /// (evicted from the full table, expired, or its backend gone), balanced afresh like a
    /// new flow: it reaches the flow's backend only while the Maglev slot (or the client's
    /// affinity) still names it; another backend answers it with a RST. Counted apart so that
    /// a flow the table lost never goes silently to another backend.
    LbConntrackLost,
    /// A packet of a masqueraded flow (from outside, to an external frontend with
    /// `externalTrafficPolicy: Cluster`, balanced to another node's endpoint) leaving with
    /// this node's address and a port of `--masquerade-ports` as its source (TC egress).
    LbMasqueraded,
    /// A reply to a masqueraded flow arriving at this node's address and port: its
    /// destination turned back into the client's (then the stack routes it to the client
    /// and TC egress gives it the frontend's address).
    ReplyUnmasqueraded,
    /// A new masqueraded flow found no free source port: every port of
    /// `--masquerade-ports` it tried already carries a flow to the same endpoint. Dropped;
    /// no live mapping is taken over.
    DropMasqueradePortsExhausted,
    /// A new masqueraded flow found the SNAT table full (`--snat-max`). Dropped; no live
    /// mapping is evicted.
    DropMasqueradeTableFull,
    /// A new masqueraded flow leaves through an interface without an address of its family
    /// (or one the agent has not written yet). Dropped.
    DropMasqueradeNoAddress,
}

impl Reason {
    pub const COUNT: u32 = Reason::DropMasqueradeNoAddress as u32 + 1;

    pub const ALL: [Reason; Reason::COUNT as usize] = [
        Reason::PassNotIp,
        Reason::PassNoFrontend,
        Reason::PassOtherProtocol,
        Reason::PassFragmentUnknown,
        Reason::PassUnparsedHeaders,
        Reason::LbConntrack,
        Reason::LbAffinity,
        Reason::LbNewFlow,
        Reason::LbFragment,
        Reason::ReplyTranslated,
        Reason::IcmpErrorTranslated,
        Reason::RejectTcpReset,
        Reason::RejectIcmpUnreachable,
        Reason::DropTruncated,
        Reason::DropMalformed,
        Reason::DropSourceRange,
        Reason::DropNoLocalEndpoint,
        Reason::DropRejectFailed,
        Reason::DropInternal,
        Reason::LbConntrackLost,
        Reason::LbMasqueraded,
        Reason::ReplyUnmasqueraded,
        Reason::DropMasqueradePortsExhausted,
        Reason::DropMasqueradeTableFull,
        Reason::DropMasqueradeNoAddress,
    ];

    /// Stable snake_case name for the CLI and metric labels.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassNotIp => "pass_not_ip",
            Reason::PassNoFrontend => "pass_no_frontend",
            Reason::PassOtherProtocol => "pass_other_protocol",
            Reason::PassFragmentUnknown => "pass_fragment_unknown",
            Reason::PassUnparsedHeaders => "pass_unparsed_headers",
            Reason::LbConntrack => "lb_conntrack",
            Reason::LbAffinity => "lb_affinity",
            Reason::LbNewFlow => "lb_new_flow",
            Reason::LbFragment => "lb_fragment",
            Reason::LbConntrackLost => "lb_conntrack_lost",
            Reason::LbMasqueraded => "lb_masqueraded",
            Reason::ReplyUnmasqueraded => "reply_unmasqueraded",
            Reason::DropMasqueradePortsExhausted => "drop_masquerade_ports_exhausted",
            Reason::DropMasqueradeTableFull => "drop_masquerade_table_full",
            Reason::DropMasqueradeNoAddress => "drop_masquerade_no_address",
            Reason::ReplyTranslated => "reply_translated",
            Reason::IcmpErrorTranslated => "icmp_error_translated",
            Reason::RejectTcpReset => "reject_tcp_reset",
            Reason::RejectIcmpUnreachable => "reject_icmp_unreachable",
            Reason::DropTruncated => "drop_truncated",
            Reason::DropMalformed => "drop_malformed",
            Reason::DropSourceRange => "drop_source_range",
            Reason::DropNoLocalEndpoint => "drop_no_local_endpoint",
            Reason::DropRejectFailed => "drop_reject_failed",
            Reason::DropInternal => "drop_internal",
        }
    }

    /// What the datapath does with a packet for this reason. Every consumer (the kernel's
    /// early verdict, the CLI, the metrics, the tests) derives from this match.
    pub const fn class(self) -> ReasonClass {
        match self {
            Reason::PassNotIp
            | Reason::PassNoFrontend
            | Reason::PassOtherProtocol
            | Reason::PassFragmentUnknown
            | Reason::PassUnparsedHeaders => ReasonClass::Pass,
            Reason::LbConntrack
            | Reason::LbAffinity
            | Reason::LbNewFlow
            | Reason::LbFragment
            | Reason::LbConntrackLost
            | Reason::LbMasqueraded => ReasonClass::Lb,
            Reason::ReplyTranslated | Reason::ReplyUnmasqueraded => ReasonClass::Reply,
            Reason::IcmpErrorTranslated => ReasonClass::Icmp,
            Reason::RejectTcpReset | Reason::RejectIcmpUnreachable => ReasonClass::Reject,
            Reason::DropTruncated
            | Reason::DropMalformed
            | Reason::DropSourceRange
            | Reason::DropNoLocalEndpoint
            | Reason::DropRejectFailed
            | Reason::DropInternal
            | Reason::DropMasqueradePortsExhausted
            | Reason::DropMasqueradeTableFull
            | Reason::DropMasqueradeNoAddress => ReasonClass::Drop,
        }
    }
}

/// What the datapath does with a packet, whatever the reason: each [`Reason`] variant's
/// name starts with its class's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReasonClass {
    /// Passed to the stack untouched.
    Pass,
    /// Load-balanced: rewritten towards a backend.
    Lb,
    /// A reply from a backend, rewritten to come from the frontend.
    Reply,
    /// An ICMP error about a balanced flow, rewritten to match what its peer sent or saw.
    Icmp,
    /// Answered with a reject built in place and sent back out.
    Reject,
    /// Dropped.
    Drop,
}

impl ReasonClass {
    pub const ALL: [ReasonClass; 6] = [
        ReasonClass::Pass,
        ReasonClass::Lb,
        ReasonClass::Reply,
        ReasonClass::Icmp,
        ReasonClass::Reject,
        ReasonClass::Drop,
    ];

    /// Stable snake_case name for the metric labels.
    pub const fn name(self) -> &'static str {
        match self {
            ReasonClass::Pass => "pass",
            ReasonClass::Lb => "lb",
            ReasonClass::Reply => "reply",
            ReasonClass::Icmp => "icmp",
            ReasonClass::Reject => "reject",
            ReasonClass::Drop => "drop",
        }
    }
}

/// Index into PROTO_STATS: packets seen per protocol, before any decision.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProtoCounter {
    NonIp = 0,
    Ipv4,
    Ipv6,
    Tcp,
    Udp,
    Sctp,
    Icmp,
    OtherL4,
}

impl ProtoCounter {
    pub const COUNT: u32 = ProtoCounter::OtherL4 as u32 + 1;

    pub const ALL: [ProtoCounter; ProtoCounter::COUNT as usize] = [
        ProtoCounter::NonIp,
        ProtoCounter::Ipv4,
        ProtoCounter::Ipv6,
        ProtoCounter::Tcp,
        ProtoCounter::Udp,
        ProtoCounter::Sctp,
        ProtoCounter::Icmp,
        ProtoCounter::OtherL4,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            ProtoCounter::NonIp => "non_ip",
            ProtoCounter::Ipv4 => "ipv4",
            ProtoCounter::Ipv6 => "ipv6",
            ProtoCounter::Tcp => "tcp",
            ProtoCounter::Udp => "udp",
            ProtoCounter::Sctp => "sctp",
            ProtoCounter::Icmp => "icmp",
            ProtoCounter::OtherL4 => "other_l4",
        }
    }
}

/// Index into FAST_PATH_STATS: how the XDP fast path sent each balanced packet, or why it
/// left it to the stack (`lb-ebpf/src/fast_path.rs`). TC programs never count here.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FastPathCounter {
    /// Sent back out of the arrival device (`XDP_TX`).
    Transmitted = 0,
    /// Redirected to another device (`bpf_redirect_map`).
    Redirected,
    /// To the stack: `--fast-path false`, or no `--fast-path-iface`.
    StackTurnedOff,
    /// To the stack: a flow that may be masqueraded (its source NAT is at TC egress).
    StackMasquerade,
    /// To the stack: a VLAN tag, IPv4 options, IPv6 extension headers or a fragment.
    StackNotPlain,
    /// To the stack: a broadcast or multicast frame, or one for another host's MAC.
    StackNotForThisNode,
    /// To the stack: no route, a local destination, no neighbour entry yet, forwarding off
    /// on the arrival device, or an egress device not listed (or left since).
    StackNoNextHop,
    /// To the stack: longer than the egress MTU.
    StackTooBig,
    /// To the stack: TTL or hop limit 1 or less.
    StackTtlExpiring,
    /// To the stack: the packet that looked an expired next hop up again (the stack then
    /// probes a stale neighbour).
    StackRefresh,
    /// Dropped: the frame could not be rewritten (should never happen).
    Failed,
}

impl FastPathCounter {
    pub const COUNT: u32 = FastPathCounter::Failed as u32 + 1;

    pub const ALL: [FastPathCounter; FastPathCounter::COUNT as usize] = [
        FastPathCounter::Transmitted,
        FastPathCounter::Redirected,
        FastPathCounter::StackTurnedOff,
        FastPathCounter::StackMasquerade,
        FastPathCounter::StackNotPlain,
        FastPathCounter::StackNotForThisNode,
        FastPathCounter::StackNoNextHop,
        FastPathCounter::StackTooBig,
        FastPathCounter::StackTtlExpiring,
        FastPathCounter::StackRefresh,
        FastPathCounter::Failed,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            FastPathCounter::Transmitted => "sent_tx",
            FastPathCounter::Redirected => "sent_redirect",
            FastPathCounter::StackTurnedOff => "stack_turned_off",
            FastPathCounter::StackMasquerade => "stack_masquerade",
            FastPathCounter::StackNotPlain => "stack_not_plain",
            FastPathCounter::StackNotForThisNode => "stack_not_for_this_node",
            FastPathCounter::StackNoNextHop => "stack_no_next_hop",
            FastPathCounter::StackTooBig => "stack_too_big",
            FastPathCounter::StackTtlExpiring => "stack_ttl_expiring",
            FastPathCounter::StackRefresh => "stack_refresh",
            FastPathCounter::Failed => "failed",
        }
    }
}

/// Index into SOCKET_STATS: what socket-level balancing (the cgroup hooks) did.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SocketCounter {
    /// A `connect()` to a frontend, sent to a backend.
    ConnectTranslated = 0,
    /// An unconnected UDP `sendmsg()` to a frontend, sent to a backend.
    SendmsgTranslated,
    /// Of those, sent to the client's affinity backend (`sessionAffinity: ClientIP`).
    AffinityUsed,
    /// The frontend had no usable backend: the call failed with ECONNREFUSED.
    RefusedNoBackend,
    /// A frontend with `loadBalancerSourceRanges`: left to the packet path (the socket's
    /// source address is not known yet at `connect()`).
    SourceRangesLeft,
    /// `getpeername()` shown the frontend instead of the backend.
    PeerShownAsService,
    /// A received datagram shown as coming from the frontend instead of the backend.
    ReplyShownAsService,
    /// An unconnected UDP socket sent to two frontends through one backend (no other
    /// backend was free): replies from it are shown as from the later frontend.
    ReplyAmbiguous,
    /// A map or helper failed: the call went through untranslated.
    Failed,
}

impl SocketCounter {
    pub const COUNT: u32 = SocketCounter::Failed as u32 + 1;

    pub const ALL: [SocketCounter; SocketCounter::COUNT as usize] = [
        SocketCounter::ConnectTranslated,
        SocketCounter::SendmsgTranslated,
        SocketCounter::AffinityUsed,
        SocketCounter::RefusedNoBackend,
        SocketCounter::SourceRangesLeft,
        SocketCounter::PeerShownAsService,
        SocketCounter::ReplyShownAsService,
        SocketCounter::ReplyAmbiguous,
        SocketCounter::Failed,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            SocketCounter::ConnectTranslated => "connect_translated",
            SocketCounter::SendmsgTranslated => "sendmsg_translated",
            SocketCounter::AffinityUsed => "affinity_used",
            SocketCounter::RefusedNoBackend => "refused_no_backend",
            SocketCounter::SourceRangesLeft => "source_ranges_left",
            SocketCounter::PeerShownAsService => "peer_shown_as_service",
            SocketCounter::ReplyShownAsService => "reply_shown_as_service",
            SocketCounter::ReplyAmbiguous => "reply_ambiguous",
            SocketCounter::Failed => "failed",
        }
    }
}

/// Value of SERVICE_STATS (per CPU), indexed by service id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServiceCounters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Connections (and unconnected UDP datagrams) sent to a backend at socket level.
    pub socket_translations: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_table_is_in_index_order() {
        for (i, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i, "{} is out of order", reason.name());
        }
        for (i, proto) in ProtoCounter::ALL.iter().enumerate() {
            assert_eq!(*proto as usize, i, "{} is out of order", proto.name());
        }
        for (i, counter) in SocketCounter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, i, "{} is out of order", counter.name());
        }
    }

    #[test]
    fn every_class_has_a_reason_and_is_listed() {
        for class in ReasonClass::ALL {
            assert!(
                Reason::ALL.iter().any(|r| r.class() == class),
                "no reason of class {}",
                class.name()
            );
        }
        for reason in Reason::ALL {
            assert!(
                ReasonClass::ALL.contains(&reason.class()),
                "the class of {} is missing from ReasonClass::ALL",
                reason.name()
            );
        }
    }

    /// The names are the variants' names in snake_case, and each reason's name starts with
    /// its class's name: metric labels and CLI rows say exactly which variant counted.
    #[test]
    fn names_are_the_variant_names() {
        extern crate std;
        use std::{format, string::String};
        fn snake_case(variant: &str) -> String {
            let mut out = String::new();
            for (i, c) in variant.chars().enumerate() {
                if c.is_ascii_uppercase() && i > 0 {
                    out.push('_');
                }
                out.push(c.to_ascii_lowercase());
            }
            out
        }
        for reason in Reason::ALL {
            assert_eq!(reason.name(), snake_case(&format!("{reason:?}")));
            let class = reason.class().name();
            assert!(
                reason.name().starts_with(class) && reason.name()[class.len()..].starts_with('_'),
                "{} is filed under {class}",
                reason.name()
            );
        }
        for class in ReasonClass::ALL {
            assert_eq!(class.name(), snake_case(&format!("{class:?}")));
        }
        for proto in ProtoCounter::ALL {
            assert_eq!(proto.name(), snake_case(&format!("{proto:?}")));
        }
        for counter in SocketCounter::ALL {
            assert_eq!(counter.name(), snake_case(&format!("{counter:?}")));
        }
    }
}
