//! One's-complement checksum arithmetic (RFC 1071 / RFC 1624), in the packet's byte order.
//!
//! Words are read from memory as native u16 and written back the same way: one's-complement
//! sums do not depend on byte order as long as every word is treated alike, so nothing here
//! swaps bytes.

/// Adds `new - old` for a 16-bit word to a running difference.
#[inline(always)]
pub fn diff16(acc: u32, old: u16, new: u16) -> u32 {
    acc + (!old as u32) + new as u32
}

/// Adds the difference between two 4-byte fields.
#[inline(always)]
pub fn diff32(acc: u32, old: [u8; 4], new: [u8; 4]) -> u32 {
    let acc = diff16(
        acc,
        u16::from_ne_bytes([old[0], old[1]]),
        u16::from_ne_bytes([new[0], new[1]]),
    );
    diff16(
        acc,
        u16::from_ne_bytes([old[2], old[3]]),
        u16::from_ne_bytes([new[2], new[3]]),
    )
}

/// Adds the difference between two addresses (4 bytes for IPv4, 16 for IPv6).
#[inline(always)]
pub fn diff_addr(acc: u32, old: &[u8; 16], new: &[u8; 16], ipv6: bool) -> u32 {
    let mut acc = diff32(
        acc,
        [old[0], old[1], old[2], old[3]],
        [new[0], new[1], new[2], new[3]],
    );
    if ipv6 {
        let mut i = 4;
        while i < 16 {
            acc = diff32(
                acc,
                [old[i], old[i + 1], old[i + 2], old[i + 3]],
                [new[i], new[i + 1], new[i + 2], new[i + 3]],
            );
            i += 4;
        }
    }
    acc
}

/// Adds the 16-bit words of an address (for building checksums from scratch).
#[inline(always)]
pub fn sum_addr(acc: u32, addr: &[u8; 16], ipv6: bool) -> u32 {
    let words = if ipv6 { 8 } else { 2 };
    let mut acc = acc;
    let mut i = 0;
    while i < words {
        acc += u16::from_ne_bytes([addr[2 * i], addr[2 * i + 1]]) as u32;
        i += 1;
    }
    acc
}

/// Folds a 32-bit sum to 16 bits (no complement).
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), with the word differences already summed.
#[inline(always)]
pub fn apply(checksum: u16, diff: u32) -> u16 {
    !fold((!checksum) as u32 + fold(diff) as u32)
}
