//! How the forward path is attached on an interface: `--xdp-mode` and what `auto` picks.

use super::loader::IngressMode;

/// The operator's choice of forward path (`--xdp-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// Native XDP on physical NICs; TC on veth and other virtual devices.
    Auto,
    /// Native (driver) XDP.
    Native,
    /// Generic (skb) XDP.
    Generic,
    /// No XDP: TC ingress balances.
    Off,
}

impl XdpMode {
    /// How the forward path goes on `iface`.
    pub fn ingress_mode(self, iface: &str) -> IngressMode {
        match self {
            XdpMode::Native => IngressMode::XdpNative,
            XdpMode::Generic => IngressMode::XdpGeneric,
            XdpMode::Off => IngressMode::Tc,
            // A device without a bus (veth, bridge, tun, ...) is virtual: its packets may carry
            // partial checksums that XDP cannot see, so TC does the balancing there.
            XdpMode::Auto => match has_bus(iface) {
                true => IngressMode::XdpNative,
                false => IngressMode::Tc,
            },
        }
    }
}

/// Whether `iface` sits on a bus (PCI, ...): a physical NIC, where native XDP is right.
/// Virtual devices (veth, bridge, tun, ...) report no bus. Asked with the ethtool ioctl,
/// which answers for this network namespace (sysfs may show another one's). Raw libc: no
/// maintained crate wraps SIOCETHTOOL's driver-info request.
fn has_bus(iface: &str) -> bool {
    const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    // SAFETY: DrvInfo is plain integers and bytes; all zero is a valid value.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: ifreq is plain data; all zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request
        .ifr_name
        .iter_mut()
        .zip(iface.bytes().take(libc::IFNAMSIZ - 1))
    {
        *dst = src as libc::c_char;
    }
    request.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    // SAFETY: a datagram socket for the ioctl, closed below.
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if socket < 0 {
        return false;
    }
    // SAFETY: SIOCETHTOOL with a valid ifreq whose data points at a DrvInfo.
    let rc = unsafe { libc::ioctl(socket, libc::SIOCETHTOOL, &mut request) };
    // SAFETY: our own socket.
    unsafe { libc::close(socket) };
    rc == 0 && info.bus_info[0] != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_unknown_interfaces_have_no_bus() {
        assert!(!has_bus("lo"), "lo is virtual");
        assert!(!has_bus("no-such-if0"), "a missing interface is not a NIC");
    }
}
