//! Packet builders for the kernel and lab tests. Packets are built with etherparse, whose
//! checksums are independent of the datapath's; `verify_checksums` re-checks a packet the
//! same way.
#![allow(dead_code, reason = "each test file uses a different subset")]

use std::net::IpAddr;

use etherparse::{
    Icmpv4Type, Icmpv6Type, IpNumber, Ipv4Header, NetSlice, PacketBuilder, SlicedPacket,
    TransportSlice, icmpv4, icmpv6,
};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP with these flags (SYN, ACK, ...) as in the header byte.
    Tcp(u8),
    Udp,
    Sctp,
}

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;

/// One packet, described by its fields.
#[derive(Clone, Debug)]
pub struct Spec {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    pub sport: u16,
    pub dport: u16,
    pub vlan: Option<u16>,
    pub payload: Vec<u8>,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub seq: u32,
    /// IPv4 UDP without a checksum (zero).
    pub udp_no_checksum: bool,
    pub ttl: u8,
}

impl Spec {
    pub fn new(src: &str, sport: u16, dst: &str, dport: u16, l4: L4) -> Self {
        Self {
            src: src.parse().expect("source address"),
            dst: dst.parse().expect("destination address"),
            l4,
            sport,
            dport,
            vlan: None,
            payload: b"hello slicelb".to_vec(),
            src_mac: CLIENT_MAC,
            dst_mac: NODE_MAC,
            seq: 1000,
            udp_no_checksum: false,
            ttl: 64,
        }
    }

    pub fn vlan(mut self, id: u16) -> Self {
        self.vlan = Some(id);
        self
    }

    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    pub fn udp_no_checksum(mut self) -> Self {
        self.udp_no_checksum = true;
        self
    }

    /// The same packet with another destination (what DNAT should produce).
    pub fn to(mut self, dst: &str, dport: u16) -> Self {
        self.dst = dst.parse().expect("destination address");
        self.dport = dport;
        self
    }

    /// The same packet with another source (what reverse NAT should produce).
    pub fn from(mut self, src: &str, sport: u16) -> Self {
        self.src = src.parse().expect("source address");
        self.sport = sport;
        self
    }

    /// Offset of the IP header.
    pub fn l3_offset(&self) -> usize {
        if self.vlan.is_some() { 18 } else { 14 }
    }

    pub fn build(&self) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(self.src_mac, self.dst_mac);
        let mut out = Vec::new();
        macro_rules! finish {
            ($ip:expr) => {
                match self.l4 {
                    L4::Tcp(flags) => {
                        let mut tcp = $ip.tcp(self.sport, self.dport, self.seq, 64240);
                        if flags & SYN != 0 {
                            tcp = tcp.syn();
                        }
                        if flags & ACK != 0 {
                            tcp = tcp.ack(1);
                        }
                        if flags & FIN != 0 {
                            tcp = tcp.fin();
                        }
                        if flags & RST != 0 {
                            tcp = tcp.rst();
                        }
                        tcp.write(&mut out, &self.payload).expect("tcp packet");
                    }
                    L4::Udp => {
                        $ip.udp(self.sport, self.dport)
                            .write(&mut out, &self.payload)
                            .expect("udp packet");
                    }
                    L4::Sctp => {
                        let sctp = sctp_packet(self.sport, self.dport, &self.payload);
                        $ip.write(&mut out, IpNumber(132), &sctp)
                            .expect("sctp packet");
                    }
                }
            };
        }
        match (self.src, self.dst, self.vlan) {
            (IpAddr::V4(s), IpAddr::V4(d), None) => {
                finish!(eth.ipv4(s.octets(), d.octets(), self.ttl))
            }
            (IpAddr::V4(s), IpAddr::V4(d), Some(v)) => {
                finish!(eth.single_vlan(v.try_into().expect("vlan id")).ipv4(
                    s.octets(),
                    d.octets(),
                    self.ttl
                ))
            }
            (IpAddr::V6(s), IpAddr::V6(d), None) => {
                finish!(eth.ipv6(s.octets(), d.octets(), self.ttl))
            }
            (IpAddr::V6(s), IpAddr::V6(d), Some(v)) => {
                finish!(eth.single_vlan(v.try_into().expect("vlan id")).ipv6(
                    s.octets(),
                    d.octets(),
                    self.ttl
                ))
            }
            _ => panic!("mixed address families in a packet spec"),
        }
        if self.udp_no_checksum && self.l4 == L4::Udp {
            let l4 = self.l3_offset() + 20;
            out[l4 + 6] = 0;
            out[l4 + 7] = 0;
        }
        out
    }
}

/// CRC32c (Castagnoli), as SCTP uses it.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// An SCTP packet: common header and one DATA chunk carrying `payload`.
pub fn sctp_packet(sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&sport.to_be_bytes());
    out.extend_from_slice(&dport.to_be_bytes());
    out.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    out.extend_from_slice(&[0; 4]);
    let chunk_len = 16 + payload.len();
    out.extend_from_slice(&[0, 0x03]);
    out.extend_from_slice(&(chunk_len as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(payload);
    while out.len() % 4 != 0 {
        out.push(0);
    }
    let crc = crc32c(&out);
    out[8..12].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Recomputes the IPv4 header checksum of a packet whose header was edited.
pub fn fix_ipv4_checksum(packet: &mut [u8], l3: usize) {
    let (header, _) = Ipv4Header::from_slice(&packet[l3..]).expect("ipv4 header");
    let check = header.calc_header_checksum();
    packet[l3 + 10..l3 + 12].copy_from_slice(&check.to_be_bytes());
}

/// Inserts 4 bytes of IPv4 options (NOP NOP NOP EOL); the L4 checksum is unaffected.
pub fn with_ipv4_options(mut packet: Vec<u8>, l3: usize) -> Vec<u8> {
    packet.splice(l3 + 20..l3 + 20, [1, 1, 1, 0]);
    packet[l3] = 0x46;
    let total = u16::from_be_bytes([packet[l3 + 2], packet[l3 + 3]]) + 4;
    packet[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
    fix_ipv4_checksum(&mut packet, l3);
    packet
}

/// Inserts IPv6 extension headers (hop-by-hop, then destination options) with PadN.
pub fn with_ipv6_extensions(mut packet: Vec<u8>, l3: usize) -> Vec<u8> {
    let next = packet[l3 + 6];
    let hop_by_hop = [60u8, 0, 1, 4, 0, 0, 0, 0];
    let dest_opts = [next, 0, 1, 4, 0, 0, 0, 0];
    packet.splice(
        l3 + 40..l3 + 40,
        hop_by_hop.iter().chain(dest_opts.iter()).copied(),
    );
    packet[l3 + 6] = 0;
    let len = u16::from_be_bytes([packet[l3 + 4], packet[l3 + 5]]) + 16;
    packet[l3 + 4..l3 + 6].copy_from_slice(&len.to_be_bytes());
    packet
}

/// Splits a whole IPv4 packet: `first` gives the fragment with offset 0 and MF (the first
/// `cut` bytes of IP payload, a multiple of 8), else the rest at offset `cut`.
pub fn ipv4_fragment(whole: &[u8], l3: usize, id: u16, cut: usize, first: bool) -> Vec<u8> {
    let header_len = usize::from(whole[l3] & 0x0f) * 4;
    let payload = &whole[l3 + header_len..];
    let (part, frag) = if first {
        (&payload[..cut], 0x2000u16)
    } else {
        (&payload[cut..], (cut / 8) as u16)
    };
    let mut out = whole[..l3 + header_len].to_vec();
    out.extend_from_slice(part);
    out[l3 + 4..l3 + 6].copy_from_slice(&id.to_be_bytes());
    out[l3 + 6..l3 + 8].copy_from_slice(&frag.to_be_bytes());
    let total = (header_len + part.len()) as u16;
    out[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
    fix_ipv4_checksum(&mut out, l3);
    out
}

/// Splits a whole IPv6 packet (no extension headers) with a fragment header.
pub fn ipv6_fragment(whole: &[u8], l3: usize, id: u32, cut: usize, first: bool) -> Vec<u8> {
    let next = whole[l3 + 6];
    let payload = &whole[l3 + 40..];
    let (part, offset_flags) = if first {
        (&payload[..cut], 1u16)
    } else {
        (&payload[cut..], ((cut / 8) as u16) << 3)
    };
    let mut out = whole[..l3 + 40].to_vec();
    out.push(next);
    out.push(0);
    out.extend_from_slice(&offset_flags.to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(part);
    out[l3 + 6] = 44;
    let len = (8 + part.len()) as u16;
    out[l3 + 4..l3 + 6].copy_from_slice(&len.to_be_bytes());
    out
}

/// Which ICMP error to build around a quoted packet.
#[derive(Clone, Copy, Debug)]
pub enum IcmpError {
    /// IPv4 fragmentation needed / IPv6 packet too big.
    TooBig(u16),
    PortUnreachable,
}

/// An ICMP / ICMPv6 error from `src` to `dst` quoting the IP packet inside `inner` (an
/// Ethernet frame), cut to `quote_len` bytes of IP.
pub fn icmp_error(
    src: &str,
    dst: &str,
    kind: IcmpError,
    inner: &[u8],
    inner_l3: usize,
    quote_len: usize,
) -> Vec<u8> {
    let quote = &inner[inner_l3..(inner_l3 + quote_len).min(inner.len())];
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC);
    let mut out = Vec::new();
    match (
        src.parse::<IpAddr>().expect("src"),
        dst.parse::<IpAddr>().expect("dst"),
    ) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let t = match kind {
                IcmpError::TooBig(mtu) => Icmpv4Type::DestinationUnreachable(
                    icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu },
                ),
                IcmpError::PortUnreachable => {
                    Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Port)
                }
            };
            eth.ipv4(s.octets(), d.octets(), 64)
                .icmpv4(t)
                .write(&mut out, quote)
                .expect("icmp");
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let t = match kind {
                IcmpError::TooBig(mtu) => Icmpv6Type::PacketTooBig {
                    mtu: u32::from(mtu),
                },
                IcmpError::PortUnreachable => {
                    Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Port)
                }
            };
            eth.ipv6(s.octets(), d.octets(), 64)
                .icmpv6(t)
                .write(&mut out, quote)
                .expect("icmpv6");
        }
        _ => panic!("mixed address families in an ICMP error"),
    }
    out
}

/// Expected TCP RST|ACK answering a SYN described by `syn`.
pub fn tcp_reset_for(syn: &Spec) -> Vec<u8> {
    let ack = syn
        .seq
        .wrapping_add(1)
        .wrapping_add(syn.payload.len() as u32);
    let eth = PacketBuilder::ethernet2(syn.dst_mac, syn.src_mac);
    let mut out = Vec::new();
    match (syn.dst, syn.src, syn.vlan) {
        (IpAddr::V4(s), IpAddr::V4(d), vlan) => {
            let ip = match vlan {
                Some(v) => {
                    eth.single_vlan(v.try_into().expect("vlan"))
                        .ipv4(s.octets(), d.octets(), 64)
                }
                None => eth.ipv4(s.octets(), d.octets(), 64),
            };
            ip.tcp(syn.dport, syn.sport, 0, 0)
                .rst()
                .ack(ack)
                .write(&mut out, &[])
                .expect("rst");
        }
        (IpAddr::V6(s), IpAddr::V6(d), vlan) => {
            let ip = match vlan {
                Some(v) => {
                    eth.single_vlan(v.try_into().expect("vlan"))
                        .ipv6(s.octets(), d.octets(), 64)
                }
                None => eth.ipv6(s.octets(), d.octets(), 64),
            };
            ip.tcp(syn.dport, syn.sport, 0, 0)
                .rst()
                .ack(ack)
                .write(&mut out, &[])
                .expect("rst");
        }
        _ => panic!("mixed families"),
    }
    out
}

/// Expected ICMP port unreachable answering `original` (a frame whose L4 header starts at
/// `l4_offset`): IP header(s) plus 8 bytes quoted.
pub fn port_unreachable_for(spec: &Spec, original: &[u8], l4_offset: usize) -> Vec<u8> {
    let l3 = spec.l3_offset();
    let quote = &original[l3..l4_offset + 8];
    let eth = PacketBuilder::ethernet2(spec.dst_mac, spec.src_mac);
    let mut out = Vec::new();
    match (spec.dst, spec.src, spec.vlan) {
        (IpAddr::V4(s), IpAddr::V4(d), vlan) => {
            let ip = match vlan {
                Some(v) => {
                    eth.single_vlan(v.try_into().expect("vlan"))
                        .ipv4(s.octets(), d.octets(), 64)
                }
                None => eth.ipv4(s.octets(), d.octets(), 64),
            };
            ip.icmpv4(Icmpv4Type::DestinationUnreachable(
                icmpv4::DestUnreachableHeader::Port,
            ))
            .write(&mut out, quote)
            .expect("icmp");
        }
        (IpAddr::V6(s), IpAddr::V6(d), vlan) => {
            let ip = match vlan {
                Some(v) => {
                    eth.single_vlan(v.try_into().expect("vlan"))
                        .ipv6(s.octets(), d.octets(), 64)
                }
                None => eth.ipv6(s.octets(), d.octets(), 64),
            };
            ip.icmpv6(Icmpv6Type::DestinationUnreachable(
                icmpv6::DestUnreachableCode::Port,
            ))
            .write(&mut out, quote)
            .expect("icmpv6");
        }
        _ => panic!("mixed families"),
    }
    out
}

/// Checks every checksum etherparse can see: IPv4 header, TCP, UDP (zero allowed on IPv4),
/// ICMP and ICMPv6 (the whole message). Fragmented datagrams and SCTP are checked by the
/// caller (byte comparison against a packet built by etherparse).
pub fn verify_checksums(packet: &[u8]) -> Result<(), String> {
    let sliced =
        SlicedPacket::from_ethernet(packet).map_err(|e| format!("etherparse cannot parse: {e}"))?;
    let net = sliced.net.as_ref().ok_or("no IP header")?;
    let (v4, v6) = match net {
        NetSlice::Ipv4(ip) => {
            let header = ip.header().to_header();
            if header.calc_header_checksum() != header.header_checksum {
                return Err(format!(
                    "IPv4 header checksum {:#06x}, expected {:#06x}",
                    header.header_checksum,
                    header.calc_header_checksum()
                ));
            }
            if ip.is_payload_fragmented() {
                return Ok(());
            }
            (Some(header), None)
        }
        NetSlice::Ipv6(ip) => {
            if ip.is_payload_fragmented() {
                return Ok(());
            }
            (None, Some(ip.header().to_header()))
        }
        _ => return Err("not IP".into()),
    };
    let ok = |found: u16, expected: u16, what: &str| {
        if found == expected {
            Ok(())
        } else {
            Err(format!(
                "{what} checksum {found:#06x}, expected {expected:#06x}"
            ))
        }
    };
    match &sliced.transport {
        Some(TransportSlice::Tcp(tcp)) => {
            let expected = match (&v4, &v6) {
                (Some(h), _) => tcp.calc_checksum_ipv4(h.source, h.destination),
                (_, Some(h)) => tcp.calc_checksum_ipv6(h.source, h.destination),
                _ => unreachable!(),
            }
            .map_err(|e| e.to_string())?;
            ok(tcp.checksum(), expected, "TCP")
        }
        Some(TransportSlice::Udp(udp)) => {
            let header = udp.to_header();
            if header.checksum == 0 && v4.is_some() {
                return Ok(());
            }
            let expected = match (&v4, &v6) {
                (Some(h), _) => header.calc_checksum_ipv4(h, udp.payload()),
                (_, Some(h)) => header.calc_checksum_ipv6(h, udp.payload()),
                _ => unreachable!(),
            }
            .map_err(|e| e.to_string())?;
            ok(header.checksum, expected, "UDP")
        }
        Some(TransportSlice::Icmpv4(icmp)) => {
            let expected = icmp.header().icmp_type.calc_checksum(icmp.payload());
            ok(icmp.checksum(), expected, "ICMP")
        }
        Some(TransportSlice::Icmpv6(icmp)) => {
            let h = v6.as_ref().ok_or("ICMPv6 over IPv4")?;
            let expected = icmp
                .header()
                .icmp_type
                .calc_checksum(h.source, h.destination, icmp.payload())
                .map_err(|e| e.to_string())?;
            ok(icmp.checksum(), expected, "ICMPv6")
        }
        _ => Ok(()),
    }
}
