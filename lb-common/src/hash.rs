//! The flow hash that picks a Maglev slot. One definition for the kernel and for userspace
//! tools, written with fixed-size loops so the verifier accepts it.

const SEED: u32 = 0x5eed_1b5e;

/// murmur3's 32-bit finaliser: full avalanche, a handful of instructions.
#[inline(always)]
pub const fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[inline(always)]
const fn mix(h: u32, word: u32) -> u32 {
    (h ^ word).wrapping_mul(0x9e37_79b1).rotate_left(13)
}

/// Hash of a flow's addresses, ports (network byte order, as in the packet) and protocol.
/// IPv4 flows pass their addresses in the first 4 bytes, the rest zero.
#[inline(always)]
pub fn flow_hash(src: &[u8; 16], dst: &[u8; 16], src_port: u16, dst_port: u16, proto: u8) -> u32 {
    let mut h = SEED;
    let mut i = 0;
    while i < 16 {
        h = mix(
            h,
            u32::from_ne_bytes([src[i], src[i + 1], src[i + 2], src[i + 3]]),
        );
        h = mix(
            h,
            u32::from_ne_bytes([dst[i], dst[i + 1], dst[i + 2], dst[i + 3]]),
        );
        i += 4;
    }
    h = mix(h, ((src_port as u32) << 16) | dst_port as u32);
    h = mix(h, proto as u32);
    fmix32(h)
}

/// Hash of a client address alone (for tools that need the same spread without ports).
#[inline(always)]
pub fn addr_hash(addr: &[u8; 16]) -> u32 {
    flow_hash(addr, &[0; 16], 0, 0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_port_changes_the_hash() {
        let src = [198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let dst = [198, 18, 100, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let a = flow_hash(&src, &dst, 1000u16.to_be(), 80u16.to_be(), 6);
        let b = flow_hash(&src, &dst, 1001u16.to_be(), 80u16.to_be(), 6);
        assert_ne!(a, b);
        assert_eq!(a, flow_hash(&src, &dst, 1000u16.to_be(), 80u16.to_be(), 6));
    }

    #[test]
    fn hash_spreads_evenly_over_a_prime_table() {
        let dst = [198, 18, 100, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let size = 251u32;
        let mut buckets = [0u32; 251];
        let flows = 251 * 400;
        for port in 0..flows {
            let src = [
                198,
                18,
                (port >> 8) as u8,
                port as u8,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
                0,
            ];
            let h = flow_hash(&src, &dst, (port as u16).to_be(), 80u16.to_be(), 17);
            buckets[(h % size) as usize] += 1;
        }
        let (min, max) = (buckets.iter().min().unwrap(), buckets.iter().max().unwrap());
        assert!(
            *min > 300 && *max < 500,
            "uneven spread: min {min}, max {max} of 400 expected"
        );
    }
}
