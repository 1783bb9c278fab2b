//! Bounds-checked access to the bytes of a packet, and the header lengths, for every
//! program that reads or writes packets (the datapath and the bench programs).
//!
//! A [`Packet`] is made from a program's context only, so its range is the packet the
//! kernel handed the program: every access checks `offset + size <= end` against it, the
//! comparison the verifier needs to see before any packet load or store.

use aya_ebpf::{
    EbpfContext as _,
    bindings::__sk_buff,
    programs::{TcContext, XdpContext},
};
use network_types::{
    eth::EthHdr,
    icmp::Icmpv4Hdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
    sctp::SctpHdr,
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

pub const ETH_LEN: usize = EthHdr::LEN;
/// One 802.1Q (or 802.1ad) tag.
pub const VLAN_LEN: usize = VlanHdr::LEN;
/// IPv4 header without options.
pub const IPV4_LEN: usize = Ipv4Hdr::LEN;
pub const IPV6_LEN: usize = Ipv6Hdr::LEN;
/// TCP header without options.
pub const TCP_LEN: usize = TcpHdr::LEN;
pub const UDP_LEN: usize = UdpHdr::LEN;
/// SCTP common header (ports, verification tag, checksum).
pub const SCTP_LEN: usize = SctpHdr::LEN;
/// ICMP and ICMPv6 header (type, code, checksum and four bytes that depend on the type).
pub const ICMP_LEN: usize = Icmpv4Hdr::LEN;
const _: () = assert!(
    ETH_LEN == 14
        && VLAN_LEN == 4
        && IPV4_LEN == 20
        && IPV6_LEN == 40
        && TCP_LEN == 20
        && UDP_LEN == 8
        && SCTP_LEN == 12
        && ICMP_LEN == 8
);

/// The bytes `[data, end)` a program can access directly. A copy of the context's
/// pointers: a helper that resizes the packet or moves its data (`bpf_xdp_adjust_head`,
/// `bpf_skb_change_tail`, `bpf_l4_csum_replace`, …) leaves it stale, so take a new one
/// after such a call (the verifier refuses accesses through the old one).
#[derive(Clone, Copy)]
pub struct Packet {
    data: usize,
    end: usize,
}

impl Packet {
    // The pointers are read with volatile loads: otherwise LLVM may hoist them into a
    // caller and pass them to a BPF subprogram as plain integers, re-extending them there,
    // which the verifier refuses ("pointer arithmetic on pkt_end prohibited").

    /// The packet of an XDP program.
    #[inline(always)]
    pub fn xdp(ctx: &XdpContext) -> Self {
        // SAFETY: fields of the context the kernel handed us.
        unsafe {
            Self {
                data: core::ptr::read_volatile(&(*ctx.ctx).data) as usize,
                end: core::ptr::read_volatile(&(*ctx.ctx).data_end) as usize,
            }
        }
    }

    /// The linear head of a TC program's packet (`skb->len` may be longer).
    #[inline(always)]
    pub fn tc(ctx: &TcContext) -> Self {
        let skb: *mut __sk_buff = ctx.as_ptr().cast();
        // SAFETY: fields of the context the kernel handed us.
        unsafe {
            Self {
                data: core::ptr::read_volatile(&(*skb).data) as usize,
                end: core::ptr::read_volatile(&(*skb).data_end) as usize,
            }
        }
    }

    /// Are the first `len` bytes there? (Compares pointers: the verifier refuses
    /// arithmetic on the end pointer, so no length is derived from it.)
    #[inline(always)]
    pub fn holds(self, len: usize) -> bool {
        self.data + len <= self.end
    }

    /// A pointer to a `T` at `offset`, when the packet holds all of it.
    #[inline(always)]
    fn ptr<T>(self, offset: usize) -> Option<*mut T> {
        let start = self.data + offset;
        if start + core::mem::size_of::<T>() > self.end {
            return None;
        }
        Some(start as *mut T)
    }

    /// The `T` at `offset` (any alignment).
    #[inline(always)]
    pub fn read<T: Copy>(self, offset: usize) -> Option<T> {
        let p: *const T = self.ptr(offset)?;
        // SAFETY: inside the packet (checked by `ptr`); unaligned read.
        Some(unsafe { p.read_unaligned() })
    }

    /// Stores `value` at `offset` (any alignment).
    #[inline(always)]
    pub fn write<T: Copy>(self, offset: usize, value: T) -> Option<()> {
        let p: *mut T = self.ptr(offset)?;
        // SAFETY: inside the packet (checked by `ptr`); unaligned write.
        unsafe { p.write_unaligned(value) };
        Some(())
    }

    /// Stores an address kept in 16 bytes (IPv4 in the first 4): 4 or 16 bytes at `offset`.
    #[inline(always)]
    pub fn write_addr(self, offset: usize, addr: &[u8; 16], ipv6: bool) -> Option<()> {
        if ipv6 {
            self.write(offset, *addr)
        } else {
            self.write(offset, [addr[0], addr[1], addr[2], addr[3]])
        }
    }

    /// Stores `value` at `offset` and returns what was there (one bounds check).
    #[inline(always)]
    pub fn replace<T: Copy>(self, offset: usize, value: T) -> Option<T> {
        let p: *mut T = self.ptr(offset)?;
        // SAFETY: inside the packet (checked by `ptr`); unaligned accesses.
        unsafe {
            let old = p.read_unaligned();
            p.write_unaligned(value);
            Some(old)
        }
    }

    /// The `N` bytes at `offset`, checked once, for reading their fields one by one.
    #[inline(always)]
    pub fn header<const N: usize>(self, offset: usize) -> Option<Header<N>> {
        let p: *const [u8; N] = self.ptr(offset)?;
        Some(Header(p.cast()))
    }
}

/// `N` bytes of a packet, bounds-checked by [`Packet::header`]. Fields are read at
/// constant offsets (`I`), checked against `N` at compile time, straight from the packet
/// (no copy of the header on the stack).
#[derive(Clone, Copy)]
pub struct Header<const N: usize>(*const u8);

impl<const N: usize> Header<N> {
    /// Byte `I`.
    #[inline(always)]
    pub fn u8<const I: usize>(self) -> u8 {
        const { assert!(I < N) };
        // SAFETY: within the `N` bytes `Packet::header` checked.
        unsafe { *self.0.add(I) }
    }

    /// The big-endian u16 at byte `I`, in host order.
    #[inline(always)]
    pub fn be16<const I: usize>(self) -> u16 {
        const { assert!(I + 2 <= N) };
        // SAFETY: within the `N` bytes `Packet::header` checked.
        unsafe { u16::from_be_bytes([*self.0.add(I), *self.0.add(I + 1)]) }
    }

    /// The u16 at byte `I` as it sits in the packet (network order kept).
    #[inline(always)]
    pub fn raw16<const I: usize>(self) -> u16 {
        const { assert!(I + 2 <= N) };
        // SAFETY: within the `N` bytes `Packet::header` checked; unaligned read.
        unsafe { self.0.add(I).cast::<u16>().read_unaligned() }
    }

    /// `M` bytes from byte `I`.
    #[inline(always)]
    pub fn bytes<const I: usize, const M: usize>(self) -> [u8; M] {
        const { assert!(I + M <= N) };
        // SAFETY: within the `N` bytes `Packet::header` checked; unaligned read.
        unsafe { self.0.add(I).cast::<[u8; M]>().read_unaligned() }
    }
}
