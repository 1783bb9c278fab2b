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
//! - SOCK_REVERSE remembers (socket, backend) -> frontend, so `getpeername()` and the source
//!   of a received datagram show the service, not the pod (glibc's resolver drops answers
//!   from any other address). Socket release deletes a connected socket's entry; entries of
//!   unconnected UDP sockets age out of the LRU.
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
    AffinityKey, AffinityValue, Backend, FAMILY_BY_NETNS, FAMILY_IPV4, FAMILY_IPV6,
    FAMILY_SHORT_CIRCUIT, FrontendKey, FrontendValue, SockReverseKey, SockReverseValue,
    SocketCounter, frontend_flags,
};

use crate::{
    counters::{count_socket, count_socket_translation},
    lookup::{affinity_backend, may_be_frontend, now_ns, table_backend},
    maps::{AFFINITY, FRONTENDS, Lookup as _, SOCK_REVERSE},
};

/// What a sock_addr program returns to let the call go on.
pub const PROCEED: i32 = 1;
/// What it returns to make the call fail (with the error set by `bpf_set_retval`).
pub const REJECT: i32 = 0;

const ECONNREFUSED: i32 = 111;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

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

/// The frontend a socket-level client uses for `key`: the short-circuit twin of an external
/// Local frontend when the agent wrote one, else the frontend itself.
#[inline(always)]
fn frontend_for_sockets(key: &FrontendKey) -> Option<&'static FrontendValue> {
    let frontend = FRONTENDS.value(key)?;
    let external_local = frontend_flags::EXTERNAL | frontend_flags::TRAFFIC_POLICY_LOCAL;
    if frontend.flags & external_local == external_local {
        let mut twin = *key;
        twin.family |= FAMILY_SHORT_CIRCUIT;
        if let Some(cluster) = FRONTENDS.value(&twin) {
            return Some(cluster);
        }
    }
    Some(frontend)
}

/// A backend chosen at socket level.
struct Chosen {
    backend_id: u32,
    addr: [u8; 16],
    port: u16,
}

impl Chosen {
    #[inline(always)]
    fn of((backend_id, backend): (u32, Backend)) -> Self {
        Self {
            backend_id,
            addr: backend.addr,
            port: backend.port,
        }
    }
}

/// Picks a backend for one connection: the affinity backend, else a random slot of the
/// frontend's selection table (each connection is decided once, so consistent hashing
/// buys nothing here). None when the table is empty.
// A separate BPF function: its own stack frame keeps each call chain under 512 bytes.
#[inline(never)]
fn choose(ctx: &SockAddrContext, frontend: &FrontendValue, family: u8) -> Option<Chosen> {
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
    if affinity {
        // SAFETY: a helper the kernel offers sock_addr programs; it reads the context.
        let netns = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
        affinity_key.client_addr[..8].copy_from_slice(&netns.to_ne_bytes());
        if let Some(found) =
            affinity_backend(&affinity_key, frontend.affinity_timeout_secs, family, now)
        {
            let chosen = Chosen::of(found);
            count_socket(SocketCounter::AffinityUsed);
            refresh_affinity(&affinity_key, chosen.backend_id, now);
            return Some(chosen);
        }
    }
    // SAFETY: helper without arguments.
    let random = unsafe { bpf_get_prandom_u32() };
    let chosen = Chosen::of(table_backend(frontend, random, family)?);
    if affinity {
        refresh_affinity(&affinity_key, chosen.backend_id, now);
    }
    Some(chosen)
}

#[inline(always)]
fn refresh_affinity(key: &AffinityKey, backend_id: u32, now: u64) {
    let value = AffinityValue {
        backend_id,
        _pad: 0,
        last_seen_ns: now,
    };
    // An LRU insert only fails under memory pressure; the connection still goes through.
    let _ = AFFINITY.insert(key, &value, BPF_ANY as u64);
}

/// `connect()` (TCP, connected UDP) or unconnected UDP `sendmsg()`: a call to a frontend is
/// sent to a backend, or fails with ECONNREFUSED when the frontend has none.
#[inline(always)]
pub fn balance(ctx: &SockAddrContext, side: Side, counter: SocketCounter) -> i32 {
    let dest = read_user(ctx, side);
    let proto = protocol(ctx);
    if !may_be_frontend(&dest.addr, dest.port, proto, dest.family) {
        return PROCEED;
    }
    let key = FrontendKey {
        addr: dest.addr,
        port: dest.port,
        proto,
        family: dest.family,
    };
    let Some(frontend) = frontend_for_sockets(&key) else {
        return PROCEED;
    };
    if frontend.flags & frontend_flags::SOURCE_RANGES != 0 {
        count_socket(SocketCounter::SourceRangesLeft);
        return PROCEED;
    }
    let service_id = frontend.service_id;
    let Some(chosen) = choose(ctx, frontend, dest.family) else {
        count_socket(SocketCounter::RefusedNoBackend);
        // SAFETY: a helper the kernel offers connect and sendmsg hooks (the call's errno).
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return REJECT;
    };
    let reverse_key =
        SockReverseKey::new(socket_cookie(ctx), chosen.addr, chosen.port, dest.family);
    let frontend_addr = SockReverseValue {
        addr: dest.addr,
        port: dest.port,
        family: dest.family,
        _pad: 0,
        service_id,
    };
    if SOCK_REVERSE
        .insert(&reverse_key, &frontend_addr, BPF_ANY as u64)
        .is_err()
    {
        // Without the reverse entry the application would see the pod's address: better
        // leave the call untranslated (the packet path may still balance it).
        count_socket(SocketCounter::Failed);
        return PROCEED;
    }
    write_user(ctx, side, dest.mapped, &chosen.addr, chosen.port);
    count_socket(counter);
    count_socket_translation(service_id);
    PROCEED
}

/// `getpeername()` and `recvmsg()`: a backend this socket was sent to is shown as the
/// frontend the application asked for. These hooks may only return [`PROCEED`].
#[inline(always)]
pub fn show_frontend(ctx: &SockAddrContext, side: Side, counter: SocketCounter) -> i32 {
    let peer = read_user(ctx, side);
    let key = SockReverseKey::new(socket_cookie(ctx), peer.addr, peer.port, peer.family);
    if let Some(frontend) = SOCK_REVERSE.value(&key) {
        let (addr, port) = (frontend.addr, frontend.port);
        write_user(ctx, side, peer.mapped, &addr, port);
        count_socket(counter);
    }
    PROCEED
}

/// Socket release: a connected socket's reverse entry goes with it (unconnected UDP
/// sockets' entries age out of the LRU: their peers are not known here).
#[inline(always)]
pub fn forget(ctx: &SockContext) -> i32 {
    // SAFETY: the kernel's context; family, dst_ip4/6 and dst_port are readable in
    // sock_release hooks.
    let sk = unsafe { &*ctx.sock };
    let (addr, family) = match sk.family {
        AF_INET => (from_v4_word(sk.dst_ip4), FAMILY_IPV4),
        AF_INET6 => {
            let (addr, family, _) =
                from_v6_words([sk.dst_ip6[0], sk.dst_ip6[1], sk.dst_ip6[2], sk.dst_ip6[3]]);
            (addr, family)
        }
        _ => return PROCEED,
    };
    // `dst_port` is in network order, as sockets carry it.
    let key = SockReverseKey::new(socket_cookie(ctx), addr, sk.dst_port, family);
    let _ = SOCK_REVERSE.remove(&key);
    PROCEED
}
