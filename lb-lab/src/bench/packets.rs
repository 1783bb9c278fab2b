//! 64-byte UDP frames (Ethernet header included, no FCS) for the test runs and the
//! generator, built with etherparse so their checksums are independent of ours.

use std::net::SocketAddr;

use etherparse::{IpHeaders, PacketBuilder, PacketBuilderStep};

/// Every benchmark frame is this long.
pub const FRAME_LEN: usize = 64;

const ETH_LEN: usize = 14;
const IPV4_LEN: usize = 20;
const IPV6_LEN: usize = 40;
const UDP_LEN: usize = 8;
const TCP_LEN: usize = 20;

/// The Ethernet and IP layers of a frame from `src` to `dst` (both IPv4 or both IPv6), and
/// their length.
fn ip_layers(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddr,
    dst: SocketAddr,
) -> (PacketBuilderStep<IpHeaders>, usize) {
    let builder = PacketBuilder::ethernet2(src_mac, dst_mac);
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => (
            builder.ipv4(s.ip().octets(), d.ip().octets(), 64),
            ETH_LEN + IPV4_LEN,
        ),
        (SocketAddr::V6(s), SocketAddr::V6(d)) => (
            builder.ipv6(s.ip().octets(), d.ip().octets(), 64),
            ETH_LEN + IPV6_LEN,
        ),
        _ => panic!("{src} and {dst} are of different families"),
    }
}

/// A 64-byte Ethernet/IP/UDP frame from `src` to `dst` (both IPv4 or both IPv6).
pub fn udp_frame(src_mac: [u8; 6], dst_mac: [u8; 6], src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (builder, ip_len) = ip_layers(src_mac, dst_mac, src, dst);
    let payload = vec![0x5a; FRAME_LEN - ip_len - UDP_LEN];
    let mut frame = Vec::with_capacity(FRAME_LEN);
    builder
        .udp(src.port(), dst.port())
        .write(&mut frame, &payload)
        .expect("writing into a Vec cannot fail");
    frame
}

/// TCP header flags for [`tcp_frame`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcpSegment {
    /// A connection's opening SYN.
    Syn,
    /// The client's ACK that completes the handshake.
    Ack,
}

/// An Ethernet/IP/TCP frame from `src` to `dst` (both IPv4 or both IPv6) without options:
/// 64 bytes for IPv4 (padded with payload), 74 for IPv6 (headers only).
pub fn tcp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddr,
    dst: SocketAddr,
    segment: TcpSegment,
) -> Vec<u8> {
    let (builder, ip_len) = ip_layers(src_mac, dst_mac, src, dst);
    let headers = ip_len + TCP_LEN;
    let payload = vec![0x5a; FRAME_LEN.saturating_sub(headers)];
    let builder = builder.tcp(src.port(), dst.port(), 1_000, 64_240);
    let builder = match segment {
        TcpSegment::Syn => builder.syn(),
        TcpSegment::Ack => builder.ack(2_000),
    };
    let mut frame = Vec::with_capacity(FRAME_LEN.max(headers));
    builder
        .write(&mut frame, &payload)
        .expect("writing into a Vec cannot fail");
    frame
}

/// Destination address and port of a frame built by [`udp_frame`] or [`tcp_frame`] (after
/// any rewrite).
pub fn destination(frame: &[u8]) -> Option<SocketAddr> {
    endpoints(frame).map(|(_, dst)| dst)
}

/// Source and destination of an IPv4 or IPv6 UDP or TCP frame.
pub fn endpoints(frame: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let sliced = etherparse::SlicedPacket::from_ethernet(frame).ok()?;
    let (src_ip, dst_ip): (std::net::IpAddr, std::net::IpAddr) = match sliced.net? {
        etherparse::NetSlice::Ipv4(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        etherparse::NetSlice::Ipv6(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        _ => return None,
    };
    let (src_port, dst_port) = match sliced.transport? {
        etherparse::TransportSlice::Udp(udp) => (udp.source_port(), udp.destination_port()),
        etherparse::TransportSlice::Tcp(tcp) => (tcp.source_port(), tcp.destination_port()),
        _ => return None,
    };
    Some((
        SocketAddr::new(src_ip, src_port),
        SocketAddr::new(dst_ip, dst_port),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_64_bytes_and_parse_back() {
        for (src, dst) in [
            ("198.18.0.2:40000", "198.19.0.1:80"),
            ("[2001:2::2]:40000", "[2001:2:0:ff00::1]:80"),
        ] {
            let src: SocketAddr = src.parse().expect("literal");
            let dst: SocketAddr = dst.parse().expect("literal");
            let frame = udp_frame([2; 6], [4; 6], src, dst);
            assert_eq!(frame.len(), FRAME_LEN, "{src} -> {dst}");
            assert_eq!(endpoints(&frame), Some((src, dst)), "{src} -> {dst}");
        }
    }

    #[test]
    fn tcp_frames_carry_their_flags_and_parse_back() {
        for (src, dst, len) in [
            ("198.18.0.2:40000", "198.19.0.1:80", FRAME_LEN),
            ("[2001:2::2]:40000", "[2001:2:0:ff00::1]:80", 74),
        ] {
            let src: SocketAddr = src.parse().expect("literal");
            let dst: SocketAddr = dst.parse().expect("literal");
            for (segment, flags) in [(TcpSegment::Syn, 0x02), (TcpSegment::Ack, 0x10)] {
                let frame = tcp_frame([2; 6], [4; 6], src, dst, segment);
                assert_eq!(frame.len(), len, "{src} -> {dst}");
                assert_eq!(endpoints(&frame), Some((src, dst)), "{src} -> {dst}");
                let tcp_at = ETH_LEN + if src.is_ipv4() { IPV4_LEN } else { IPV6_LEN };
                assert_eq!(frame[tcp_at + 13], flags, "{src} -> {dst} {segment:?}");
            }
        }
    }
}
