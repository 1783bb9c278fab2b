//! Socket-level balancing: cgroup v2 hooks for every process below the agent's cgroup root
//! (pods and the node itself), whatever network namespace it runs in.
//!
//! - `connect()` (TCP, connected UDP) and unconnected UDP `sendmsg()` to a frontend are sent
//!   to a backend chosen from the same maps as the packet path: the frontend's selection
//!   table (ready endpoints, the terminating fallback, traffic policies and topology already
//!   applied by the agent), and the client's affinity backend under `sessionAffinity:
//!   ClientIP`. The decision is made once per connection (per datagram for unconnected UDP),
//!   so nothing is rewritten on the wire and the server sees the client's own address.
//! - For an external frontend with `externalTrafficPolicy: Local`, the short-circuit twin
//!   (`FAMILY_SHORT_CIRCUIT`), which holds the Cluster endpoints, is used instead: traffic
//!   from inside the cluster may go to any endpoint (kube-proxy's rule).
//! - No usable backend: the call fails with ECONNREFUSED at once (kube-proxy rejects).
//! - `getpeername()` and the source of a received datagram show the service, not the pod
//!   (glibc's resolver drops answers from any other address). A connected socket's backend
//!   and frontend are kept in SOCK_CONNECTED under its cookie and deleted when the socket is
//!   released (also after a `connect()` that failed, when the socket has no peer). Unconnected
//!   UDP keeps (socket, backend) -> frontend in SOCK_REVERSE, an LRU of its own: their peers
//!   are not known at release, and their churn must not evict a connected socket's entry.
//! - A datagram socket tells replies apart only by the backend's address, so when it sends to
//!   a second frontend, a backend it already uses for another frontend is avoided if another
//!   one is drawn within [`DATAGRAM_DRAWS`]; else the later frontend wins (counted).
//! - The client is named by its network namespace (a pod) for affinity: the source address
//!   is not known at `connect()`.
//! - Frontends with `loadBalancerSourceRanges` are left untranslated (counted): the socket's
//!   source is not known yet, so the packet path decides where the connection arrives.
//! - IPv4-mapped IPv6 addresses (a dual-stack socket calling an IPv4 service) are balanced as
//!   IPv4 and written back mapped.

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_ANY,
    helpers::generated::{
        bpf_get_netns_cookie, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_set_retval,
    },
    programs::{SockAddrContext, SockContext},
};
use lb_common::{
    AffinityKey, FAMILY_BY_NETNS, FAMILY_IPV4, FAMILY_IPV6, FAMILY_SHORT_CIRCUIT, FrontendKey,
    SockConnection, SockReverseKey, SockReverseValue, SocketCounter, frontend_flags,
};

use crate::{
    counters::{count_socket, count_socket_translation},
    lookup::{
        self, Frontend, FrontendRead, Pick, affinity_backend, affinity_value, may_be_frontend,
        now_ns, table_backend,
    },
    maps::{AFFINITY, Lookup as _, SOCK_CONNECTED, SOCK_REVERSE},
};

/// What a sock_addr program returns to let the call go on.
pub const PROCEED: i32 = 1;
/// What it returns to make the call fail (with the error set by `bpf_set_retval`).
pub const REJECT: i32 = 0;

const ECONNREFUSED: i32 = 111;
/// Draws of a backend for an unconnected datagram before a backend this socket already uses
/// for another frontend is accepted.
pub const DATAGRAM_DRAWS: u32 = 3;

/// `::ffff:0:0/96`: bytes 10 and 11 of an IPv4-mapped IPv6 address.
const MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/// An address and port as a socket call carries it, in the maps' encoding.
#[derive(Clone, Copy)]
struct SockAddr {
    /// Network byte order; IPv4 in the first 4 bytes.
    addr: [u8; 16],
    /// Network byte order.
    port: u16,
    /// FAMILY_IPV4 or FAMILY_IPV6 of the address itself (IPv4 for a mapped address).
    family: u8,
    /// An IPv4 address inside an IPv6 socket's `::ffff:a.b.c.d`.
    mapped: bool,
}

/// Which socket call a hook serves: IPv4 (`sockaddr_in`) or IPv6 (`sockaddr_in6`) fields.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    V4,
    V6,
}

/// An IPv6 socket address's words in the maps' encoding, an IPv4-mapped one as IPv4:
/// (address, family, mapped).
#[inline(always)]
fn from_v6_words(words: [u32; 4]) -> ([u8; 16], u8, bool) {
    let mut addr = [0u8; 16];
    for (i, word) in words.iter().enumerate() {
        addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    if addr[..12] == MAPPED_PREFIX {
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&addr[12..]);
        return (v4, FAMILY_IPV4, true);
    }
    (addr, FAMILY_IPV6, false)
}

#[inline(always)]
fn from_v4_word(word: u32) -> [u8; 16] {
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&word.to_ne_bytes());
    addr
}

#[inline(always)]
fn read_user(ctx: &SockAddrContext, side: Side) -> SockAddr {
    // SAFETY: the context the kernel passed; these fields are readable in every sock_addr
    // hook (4-byte loads, as the verifier requires).
    let sa = unsafe { &*ctx.sock_addr };
    // `user_port` holds the network-order port in its low 16 bits.
    let port = sa.user_port as u16;
    let (addr, family, mapped) = match side {
        Side::V4 => (from_v4_word(sa.user_ip4), FAMILY_IPV4, false),
        Side::V6 => from_v6_words([
            sa.user_ip6[0],
            sa.user_ip6[1],
            sa.user_ip6[2],
            sa.user_ip6[3],
        ]),
    };
    SockAddr {
        addr,
        port,
        family,
        mapped,
    }
}

/// Writes `addr:port` (in the maps' encoding) as the call's address, mapped again when the
/// call's was.
#[inline(always)]
fn write_user(ctx: &SockAddrContext, side: Side, mapped: bool, addr: &[u8; 16], port: u16) {
    // SAFETY: the kernel's context; `user_ip4`, `user_ip6` and `user_port` are writable in
    // connect, sendmsg, recvmsg and getpeername hooks (4-byte stores).
    let sa = unsafe { &mut *ctx.sock_addr };
    let word = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    match side {
        Side::V4 => sa.user_ip4 = word(0),
        Side::V6 if mapped => {
            let prefix = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
            sa.user_ip6 = [0, 0, prefix, word(0)];
        }
        Side::V6 => sa.user_ip6 = [word(0), word(4), word(8), word(12)],
    }
    sa.user_port = port as u32;
}

#[inline(always)]
fn protocol(ctx: &SockAddrContext) -> u8 {
    // SAFETY: the kernel's context; `protocol` is readable in every sock_addr hook.
    unsafe { (*ctx.sock_addr).protocol as u8 }
}

#[inline(always)]
fn socket_cookie<C: EbpfContext>(ctx: &C) -> u64 {
    // SAFETY: a helper the kernel offers sock_addr and sock programs; it reads the context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// The frontend a socket-level client uses for `dest`: the short-circuit twin of an external
/// Local frontend when the agent wrote one, else the frontend itself. None (the call is left
/// to the packet path) when FRONTENDS has no frontend or changed under every read.
// A separate BPF function: the key and the checked reads stay out of the caller's frame.
#[inline(never)]
fn frontend_for_sockets(dest: &SockAddr, proto: u8) -> Option<Frontend> {
    let mut key = FrontendKey {
        addr: dest.addr,
        port: dest.port,
        proto,
        family: dest.family,
    };
    let FrontendRead::Found(frontend) = lookup::frontend(&key) else {
        return None;
    };
    let external_local = frontend_flags::EXTERNAL | frontend_flags::TRAFFIC_POLICY_LOCAL;
    if frontend.flags & external_local == external_local {
        // The twin's key, in place: the stack is small.
        key.family |= FAMILY_SHORT_CIRCUIT;
        return match lookup::frontend(&key) {
            FrontendRead::Found(cluster) => Some(cluster),
            FrontendRead::Missing => Some(frontend),
            FrontendRead::Unsettled => None,
        };
    }
    Some(frontend)
}

/// A backend chosen at socket level.
struct Chosen {
    addr: [u8; 16],
    port: u16,
}

impl Chosen {
    #[inline(always)]
    fn of(pick: &Pick) -> Self {
        Self {
            addr: pick.backend.addr,
            port: pick.backend.port,
        }
    }
}

/// Picks a backend for one connection: the affinity backend while the frontend may still
/// use it, else a random slot of the frontend's selection table (each connection is
/// decided once, so consistent hashing buys nothing here). None when the table is empty.
// A separate BPF function: its own stack frame keeps each call chain under 512 bytes.
#[inline(never)]
fn choose(ctx: &SockAddrContext, frontend: &Frontend, family: u8) -> Option<Chosen> {
    if frontend.table_size == 0 {
        return None;
    }
    let affinity = frontend.flags & frontend_flags::AFFINITY != 0;
    let now = now_ns();
    let mut affinity_key = AffinityKey {
        client_addr: [0; 16],
        service_id: frontend.service_id,
        family: family | FAMILY_BY_NETNS,
        _pad: [0; 3],
    };
    let mut sticky = None;
    if affinity {
        // SAFETY: a helper the kernel offers sock_addr programs; it reads the context.
        let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
        affinity_key.client_addr[..8].copy_from_slice(&netns.to_ne_bytes());
        sticky = affinity_backend(&affinity_key, frontend, family, now);
    }
    // One pick and one affinity write whichever way it was found: the stack is small.
    let found = match sticky {
        Some(found) => {
            count_socket(SocketCounter::AffinityUsed);
            found
        }
        None => {
            // SAFETY: helper without arguments.
            let random = unsafe { bpf_get_prandom_u32() };
            table_backend(frontend, random, family)?
        }
    };
    if affinity {
        // An LRU insert only fails under memory pressure; the connection still goes through.
        let _ = AFFINITY.insert(&affinity_key, &affinity_value(&found, now), BPF_ANY as u64);
    }
    Some(Chosen::of(&found))
}

/// The socket call a translating hook serves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `connect()`: TCP, connected UDP (and SCTP).
    Connect,
    /// Unconnected UDP `sendmsg()` with a destination.
    Sendmsg,
}

/// `connect()` or unconnected UDP `sendmsg()`: a call to a frontend is sent to a backend, or
/// fails with ECONNREFUSED when the frontend has none.
#[inline(always)]
pub fn balance(ctx: &SockAddrContext, side: Side, call: Call) -> i32 {
    let dest = read_user(ctx, side);
    let proto = protocol(ctx);
    if !may_be_frontend(&dest.addr, dest.port, proto, dest.family) {
        return PROCEED;
    }
    let Some(frontend) = frontend_for_sockets(&dest, proto) else {
        return PROCEED;
    };
    if frontend.flags & frontend_flags::SOURCE_RANGES != 0 {
        count_socket(SocketCounter::SourceRangesLeft);
        return PROCEED;
    }
    let service_id = frontend.service_id;
    let Some(mut chosen) = choose(ctx, &frontend, dest.family) else {
        count_socket(SocketCounter::RefusedNoBackend);
        // SAFETY: a helper the kernel offers connect and sendmsg hooks (the call's errno).
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return REJECT;
    };
    let asked_for = SockReverseValue {
        addr: dest.addr,
        port: dest.port,
        family: dest.family,
        _pad: 0,
        service_id,
    };
    let cookie = socket_cookie(ctx);
    let remembered = match call {
        Call::Connect => {
            let connection = SockConnection {
                backend_addr: chosen.addr,
                backend_port: chosen.port,
                _pad: [0; 6],
                frontend: asked_for,
            };
            SOCK_CONNECTED.insert(&cookie, &connection, BPF_ANY as u64)
        }
        Call::Sendmsg => {
            let pinned = frontend.flags & frontend_flags::AFFINITY != 0;
            let mut draws = 1;
            while serves_other_frontend(cookie, &chosen, &asked_for) {
                if pinned || draws == DATAGRAM_DRAWS {
                    count_socket(SocketCounter::ReplyAmbiguous);
                    break;
                }
                draws += 1;
                match choose(ctx, &frontend, dest.family) {
                    Some(other) => chosen = other,
                    None => break,
                }
            }
            let key = SockReverseKey::new(cookie, chosen.addr, chosen.port, dest.family);
            SOCK_REVERSE.insert(&key, &asked_for, BPF_ANY as u64)
        }
    };
    if remembered.is_err() {
        // Without the reverse entry the application would see the pod's address: better
        // leave the call untranslated (the packet path may still balance it).
        count_socket(SocketCounter::Failed);
        return PROCEED;
    }
    write_user(ctx, side, dest.mapped, &chosen.addr, chosen.port);
    count_socket(match call {
        Call::Connect => SocketCounter::ConnectTranslated,
        Call::Sendmsg => SocketCounter::SendmsgTranslated,
    });
    count_socket_translation(service_id);
    PROCEED
}

/// Whether this datagram socket already sends to `chosen` for a frontend other than
/// `asked_for`: a reply from it could not be told apart.
#[inline(always)]
fn serves_other_frontend(cookie: u64, chosen: &Chosen, asked_for: &SockReverseValue) -> bool {
    let key = SockReverseKey::new(cookie, chosen.addr, chosen.port, asked_for.family);
    SOCK_REVERSE
        .value(&key)
        .is_some_and(|other| other.addr != asked_for.addr || other.port != asked_for.port)
}

/// The frontend a connected socket asked for, when `peer` is the backend it was sent to.
#[inline(always)]
fn connected_frontend(cookie: u64, peer: &SockAddr) -> Option<&'static SockReverseValue> {
    let connection = SOCK_CONNECTED.value(&cookie)?;
    let sent_to_peer = connection.backend_addr == peer.addr
        && connection.backend_port == peer.port
        && connection.frontend.family == peer.family;
    sent_to_peer.then_some(&connection.frontend)
}

#[inline(always)]
fn show(ctx: &SockAddrContext, side: Side, peer: &SockAddr, frontend: &SockReverseValue) {
    let (addr, port) = (frontend.addr, frontend.port);
    write_user(ctx, side, peer.mapped, &addr, port);
}

/// `getpeername()`: a connected socket's backend is shown as the frontend the application
/// asked for. May only return [`PROCEED`].
#[inline(always)]
pub fn show_peer(ctx: &SockAddrContext, side: Side) -> i32 {
    let peer = read_user(ctx, side);
    if let Some(frontend) = connected_frontend(socket_cookie(ctx), &peer) {
        show(ctx, side, &peer, frontend);
        count_socket(SocketCounter::PeerShownAsService);
    }
    PROCEED
}

/// `recvmsg()`: a datagram from a backend this socket was sent to is received as from the
/// frontend (connected first, else the unconnected socket's entry). May only return
/// [`PROCEED`].
#[inline(always)]
pub fn show_reply_source(ctx: &SockAddrContext, side: Side) -> i32 {
    let peer = read_user(ctx, side);
    let cookie = socket_cookie(ctx);
    let frontend = connected_frontend(cookie, &peer).or_else(|| {
        SOCK_REVERSE.value(&SockReverseKey::new(
            cookie,
            peer.addr,
            peer.port,
            peer.family,
        ))
    });
    if let Some(frontend) = frontend {
        show(ctx, side, &peer, frontend);
        count_socket(SocketCounter::ReplyShownAsService);
    }
    PROCEED
}

/// Socket release: a connected socket's entry goes with it, whatever its state (a socket
/// whose `connect()` failed has no peer any more). Unconnected UDP sockets' entries age out
/// of SOCK_REVERSE: their peers are not known here.
#[inline(always)]
pub fn forget(ctx: &SockContext) -> i32 {
    let _ = SOCK_CONNECTED.remove(&socket_cookie(ctx));
    PROCEED
}
