//! What the shared logic needs from a program context: packet bounds, checksum updates
//! for a NAT rewrite, resizing for replies we build, and a way to send a packet back.
//! XDP updates checksums in software (full checksums only); TC uses the kernel helpers so
//! that partial (offloaded) checksums and `CHECKSUM_COMPLETE` stay right.

use crate::{fast_path, packet::Packet, parse::Parsed, verdict::Action};
use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        __sk_buff, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_F_RECOMPUTE_CSUM,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::generated::{
        bpf_csum_diff, bpf_csum_update, bpf_l4_csum_replace, bpf_redirect, bpf_skb_adjust_room,
        bpf_skb_change_tail, bpf_skb_pull_data, bpf_skb_store_bytes, bpf_xdp_adjust_head,
        bpf_xdp_adjust_tail, bpf_xdp_get_buff_len,
    },
    programs::{TcContext, XdpContext},
};

use crate::csum;

/// A checksum field to update after an address or port change.
#[derive(Clone, Copy)]
pub struct L4Csum {
    /// Offset of the checksum field from the start of the packet.
    pub offset: usize,
    /// UDP: a zero checksum (IPv4 "none") stays zero and a computed zero becomes 0xffff.
    pub udp: bool,
}

/// A port to replace: at `offset` (network order), `old` by `new`.
#[derive(Clone, Copy)]
pub struct PortChange {
    pub offset: usize,
    pub old: u16,
    pub new: u16,
}

pub trait PacketCtx {
    /// Whether the forward path rewrites a new flow's packet in a BPF function of its own
    /// (`forward::balance`): on TC the checksum helpers' temporaries would take `balance`'s
    /// frame past the 512-byte limit; on XDP the software checksums' own frame would.
    const REWRITE_NEW_FLOW_APART: bool;
    /// The bytes the program can access directly (stale after `grow_front` / `truncate`).
    fn packet(&self) -> Packet;
    /// Packet length in bytes (for the byte counters).
    fn packet_len(&self) -> u32;
    /// The full packet length when `packet()` may end before the packet does (TC), or 0
    /// when it holds the whole packet (XDP without multi-buffer).
    fn wire_len(&self) -> usize;
    /// Replaces an address at `addr_offset` with `new` and fixes the IPv4 header checksum
    /// (when `ip_csum_offset` is given) and the L4 checksum (pseudo-header).
    fn rewrite_addr(
        &self,
        addr_offset: usize,
        old: &[u8; 16],
        new: &[u8; 16],
        ipv6: bool,
        ip_csum_offset: Option<usize>,
        l4: Option<L4Csum>,
    ) -> Result<(), ()>;
    /// Replaces a port at `port_offset` (network order) and fixes the L4 checksum.
    fn rewrite_port(
        &self,
        port_offset: usize,
        old: u16,
        new: u16,
        l4: Option<L4Csum>,
    ) -> Result<(), ()>;
    /// One side's address (when `new_addr` differs) and port (`port`, when it changes)
    /// together: [`Self::rewrite_addr`] then [`Self::rewrite_port`], unless the context can
    /// do both with one update of the L4 checksum.
    #[inline(always)]
    #[expect(
        clippy::too_many_arguments,
        reason = "the two rewrites' arguments, inlined"
    )]
    fn rewrite_addr_and_port(
        &self,
        addr_offset: usize,
        old_addr: &[u8; 16],
        new_addr: &[u8; 16],
        ipv6: bool,
        ip_csum_offset: Option<usize>,
        l4: Option<L4Csum>,
        port: Option<PortChange>,
    ) -> Result<(), ()> {
        if *old_addr != *new_addr {
            self.rewrite_addr(addr_offset, old_addr, new_addr, ipv6, ip_csum_offset, l4)?;
        }
        if let Some(port) = port {
            self.rewrite_port(port.offset, port.old, port.new, l4)?;
        }
        Ok(())
    }
    /// Inserts `room` bytes in front of the network header (the caller rewrites everything
    /// before `l3_offset + room`).
    fn grow_front(&self, room: u32) -> Result<(), ()>;
    /// Cuts the packet to `len` bytes.
    fn truncate(&self, len: u32) -> Result<(), ()>;
    /// How a packet rewritten for backend `backend_id` leaves: sent on by the program where
    /// it can (`fast_path`), else `Pass` (the stack forwards it).
    fn send_on(&self, p: &Parsed, backend_id: u32) -> Action;
}

/// Software checksum update of one field, keeping UDP's "no checksum" zero.
#[inline(always)]
fn update_l4_software(packet: Packet, l4: L4Csum, diff: u32) -> Result<(), ()> {
    let old: u16 = packet.read(l4.offset).ok_or(())?;
    if l4.udp && old == 0 {
        return Ok(());
    }
    let mut new = csum::apply(old, diff);
    if l4.udp && new == 0 {
        new = 0xffff;
    }
    packet.write(l4.offset, new).ok_or(())
}

/// Writes an address and balances the IPv4 header checksum (when `ip_csum_offset` is given)
/// in software; returns the difference the L4 checksum still has to take.
#[inline(always)]
fn write_addr_software(
    packet: Packet,
    addr_offset: usize,
    old: &[u8; 16],
    new: &[u8; 16],
    ipv6: bool,
    ip_csum_offset: Option<usize>,
) -> Result<u32, ()> {
    packet.write_addr(addr_offset, new, ipv6).ok_or(())?;
    let diff = csum::diff_addr(0, old, new, ipv6);
    if let Some(offset) = ip_csum_offset {
        let old_csum: u16 = packet.read(offset).ok_or(())?;
        packet
            .write(offset, csum::apply(old_csum, diff))
            .ok_or(())?;
    }
    Ok(diff)
}

pub struct Xdp<'a>(pub &'a XdpContext);

impl PacketCtx for Xdp<'_> {
    const REWRITE_NEW_FLOW_APART: bool = false;

    #[inline(always)]
    fn packet(&self) -> Packet {
        Packet::xdp(self.0)
    }
    #[inline(always)]
    fn wire_len(&self) -> usize {
        0
    }
    #[inline(always)]
    fn packet_len(&self) -> u32 {
        // SAFETY: helper call on our own context. (Not `data_end - data`: the verifier
        // forbids arithmetic on the end pointer, which the compiler may produce.)
        unsafe { bpf_xdp_get_buff_len(self.0.ctx) as u32 }
    }
    #[inline(always)]
    fn rewrite_addr(
        &self,
        addr_offset: usize,
        old: &[u8; 16],
        new: &[u8; 16],
        ipv6: bool,
        ip_csum_offset: Option<usize>,
        l4: Option<L4Csum>,
    ) -> Result<(), ()> {
        let packet = self.packet();
        let diff = write_addr_software(packet, addr_offset, old, new, ipv6, ip_csum_offset)?;
        if let Some(l4) = l4 {
            update_l4_software(packet, l4, diff)?;
        }
        Ok(())
    }
    #[inline(always)]
    fn rewrite_port(
        &self,
        port_offset: usize,
        old: u16,
        new: u16,
        l4: Option<L4Csum>,
    ) -> Result<(), ()> {
        let packet = self.packet();
        packet.write(port_offset, new).ok_or(())?;
        if let Some(l4) = l4 {
            update_l4_software(packet, l4, csum::diff16(0, old, new))?;
        }
        Ok(())
    }
    /// Both in software with one update of the L4 checksum (full checksums only on XDP).
    #[inline(always)]
    fn rewrite_addr_and_port(
        &self,
        addr_offset: usize,
        old_addr: &[u8; 16],
        new_addr: &[u8; 16],
        ipv6: bool,
        ip_csum_offset: Option<usize>,
        l4: Option<L4Csum>,
        port: Option<PortChange>,
    ) -> Result<(), ()> {
        let packet = self.packet();
        let mut l4_diff = 0;
        if *old_addr != *new_addr {
            l4_diff = write_addr_software(
                packet,
                addr_offset,
                old_addr,
                new_addr,
                ipv6,
                ip_csum_offset,
            )?;
        }
        if let Some(port) = port {
            packet.write(port.offset, port.new).ok_or(())?;
            l4_diff = csum::diff16(l4_diff, port.old, port.new);
        }
        match l4 {
            Some(l4) => update_l4_software(packet, l4, l4_diff),
            None => Ok(()),
        }
    }
    #[inline(always)]
    fn grow_front(&self, room: u32) -> Result<(), ()> {
        // SAFETY: helper call on our own context.
        let ret = unsafe { bpf_xdp_adjust_head(self.0.ctx, -(room as i32)) };
        if ret == 0 { Ok(()) } else { Err(()) }
    }
    #[inline(always)]
    fn truncate(&self, len: u32) -> Result<(), ()> {
        let current = self.packet_len() as i32;
        // SAFETY: helper call on our own context.
        let ret = unsafe { bpf_xdp_adjust_tail(self.0.ctx, len as i32 - current) };
        if ret == 0 { Ok(()) } else { Err(()) }
    }
    #[inline(always)]
    fn send_on(&self, p: &Parsed, backend_id: u32) -> Action {
        fast_path::xdp(self.0, p, backend_id)
    }
}

pub struct Tc<'a>(pub &'a TcContext);

impl Tc<'_> {
    #[inline(always)]
    fn skb(&self) -> *mut __sk_buff {
        self.0.as_ptr().cast()
    }

    /// The interface the packet is on (ingress: where it arrived).
    #[inline(always)]
    pub fn ifindex(&self) -> u32 {
        // SAFETY: reading a context field the verifier allows for TC programs.
        unsafe { (*self.skb()).ifindex }
    }

    /// Makes the first `len` bytes (or the whole packet when shorter) directly accessible.
    #[inline(always)]
    pub fn pull(&self, len: u32) {
        let want = len.min(self.0.len());
        if !self.packet().holds(want as usize) {
            // SAFETY: helper call on our own context; failure leaves the packet as it was.
            unsafe { bpf_skb_pull_data(self.skb(), want) };
        }
    }

    /// `bpf_l4_csum_replace` on the checksum field `l4` (the parser checked its offset).
    #[inline(always)]
    fn l4_csum_replace(&self, l4: L4Csum, from: u64, to: u64, flags: u64) -> Result<(), ()> {
        // SAFETY: helper call on our own context.
        let ret = unsafe { bpf_l4_csum_replace(self.skb(), l4.offset as u32, from, to, flags) };
        if ret == 0 { Ok(()) } else { Err(()) }
    }

    /// Sends the packet back out of the interface it arrived on.
    #[inline(always)]
    pub fn redirect_back(&self) -> i32 {
        // SAFETY: helper call.
        unsafe { bpf_redirect(self.ifindex(), 0) as i32 }
    }
}

impl PacketCtx for Tc<'_> {
    const REWRITE_NEW_FLOW_APART: bool = true;

    #[inline(always)]
    fn packet(&self) -> Packet {
        Packet::tc(self.0)
    }
    #[inline(always)]
    fn packet_len(&self) -> u32 {
        self.0.len()
    }
    #[inline(always)]
    fn wire_len(&self) -> usize {
        self.0.len() as usize
    }
    #[inline(always)]
    fn rewrite_addr(
        &self,
        addr_offset: usize,
        old: &[u8; 16],
        new: &[u8; 16],
        ipv6: bool,
        ip_csum_offset: Option<usize>,
        l4: Option<L4Csum>,
    ) -> Result<(), ()> {
        if ipv6 {
            // IPv6 has no header checksum to balance the new address: store it through the
            // helper so that a CHECKSUM_COMPLETE `skb->csum` follows the change.
            // SAFETY: helper call with a 16-byte buffer on our stack.
            let ret = unsafe {
                bpf_skb_store_bytes(
                    self.skb(),
                    addr_offset as u32,
                    new.as_ptr().cast(),
                    16,
                    BPF_F_RECOMPUTE_CSUM as u64,
                )
            };
            if ret != 0 {
                return Err(());
            }
        } else {
            // The IPv4 header checksum update balances the address change.
            self.packet()
                .write_addr(addr_offset, new, false)
                .ok_or(())?;
        }
        if ipv6 {
            if let Some(l4) = l4 {
                // SAFETY: both buffers are 16 bytes the helper only reads (its `*mut` is
                // C's missing const); passed in place, not copied: `balance`'s frame is at
                // the edge of the 512-byte limit.
                let diff = unsafe {
                    bpf_csum_diff(
                        old.as_ptr().cast_mut().cast(),
                        16,
                        new.as_ptr().cast_mut().cast(),
                        16,
                        0,
                    )
                };
                if diff < 0 {
                    return Err(());
                }
                let flags = BPF_F_PSEUDO_HDR as u64
                    | if l4.udp {
                        BPF_F_MARK_MANGLED_0 as u64
                    } else {
                        0
                    };
                self.l4_csum_replace(l4, 0, diff as u64, flags)?;
            }
        } else {
            let from = u32::from_ne_bytes([old[0], old[1], old[2], old[3]]) as u64;
            let to = u32::from_ne_bytes([new[0], new[1], new[2], new[3]]) as u64;
            if let Some(offset) = ip_csum_offset {
                // In software, as `bpf_l3_csum_replace` would (a helper call less): the IPv4
                // header checksum is never offloaded, and with the address change it leaves
                // a CHECKSUM_COMPLETE `skb->csum` as it was.
                let packet = self.packet();
                let old_csum: u16 = packet.read(offset).ok_or(())?;
                let diff = csum::diff_addr(0, old, new, false);
                packet
                    .write(offset, csum::apply(old_csum, diff))
                    .ok_or(())?;
            }
            if let Some(l4) = l4 {
                let flags = BPF_F_PSEUDO_HDR as u64
                    | 4
                    | if l4.udp {
                        BPF_F_MARK_MANGLED_0 as u64
                    } else {
                        0
                    };
                self.l4_csum_replace(l4, from, to, flags)?;
            }
        }
        Ok(())
    }
    #[inline(always)]
    fn rewrite_port(
        &self,
        port_offset: usize,
        old: u16,
        new: u16,
        l4: Option<L4Csum>,
    ) -> Result<(), ()> {
        self.packet().write(port_offset, new).ok_or(())?;
        if let Some(l4) = l4 {
            let flags = 2 | if l4.udp {
                BPF_F_MARK_MANGLED_0 as u64
            } else {
                0
            };
            self.l4_csum_replace(l4, old as u64, new as u64, flags)?;
            // A UDP datagram without checksum has no field to balance the port change: tell
            // a CHECKSUM_COMPLETE `skb->csum` about it directly.
            // (A fresh `packet()`: the helper above invalidated the packet pointers.)
            if l4.udp && self.packet().read::<u16>(l4.offset).ok_or(())? == 0 {
                let mut from = [old, 0];
                let mut to = [new, 0];
                // SAFETY: helper calls with 4-byte buffers on our stack.
                unsafe {
                    let diff =
                        bpf_csum_diff(from.as_mut_ptr().cast(), 4, to.as_mut_ptr().cast(), 4, 0);
                    if diff < 0 {
                        return Err(());
                    }
                    bpf_csum_update(self.skb(), diff as u32);
                }
            }
        }
        Ok(())
    }
    #[inline(always)]
    fn grow_front(&self, room: u32) -> Result<(), ()> {
        // SAFETY: helper call.
        let ret = unsafe { bpf_skb_adjust_room(self.skb(), room as i32, BPF_ADJ_ROOM_MAC, 0) };
        if ret == 0 { Ok(()) } else { Err(()) }
    }
    #[inline(always)]
    fn truncate(&self, len: u32) -> Result<(), ()> {
        // SAFETY: helper call.
        let ret = unsafe { bpf_skb_change_tail(self.skb(), len, 0) };
        if ret == 0 { Ok(()) } else { Err(()) }
    }
    #[inline(always)]
    fn send_on(&self, _p: &Parsed, _backend_id: u32) -> Action {
        Action::Pass
    }
}
