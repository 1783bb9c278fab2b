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

/// The FRONTEND_FILTER word (`0..1 << words_log2`, the filter's size in use, see
/// [`crate::frontend_filter`]) and the [`crate::frontend_filter::BITS`] bits in it (a mask;
/// bits may coincide) of a frontend key's fields (network byte order, as in the packet and
/// in [`crate::FrontendKey`]). murmur3's 64-bit finaliser (two multiplies): the datapath
/// pays it on every packet, and a collision only sends a packet on to the exact FRONTENDS
/// lookup. `words_log2` must be at most [`crate::frontend_filter::WORDS_LOG2_MAX`].
#[inline(always)]
pub fn frontend_filter_slot(
    addr: &[u8; 16],
    port: u16,
    proto: u8,
    family: u8,
    words_log2: u32,
) -> (u32, u64) {
    let low = u64::from_le_bytes([
        addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
    ]);
    let high = u64::from_le_bytes([
        addr[8], addr[9], addr[10], addr[11], addr[12], addr[13], addr[14], addr[15],
    ]);
    // Port, protocol and family land in the upper half, which is zero for IPv4 addresses.
    let tail = ((port as u64) << 32) | ((proto as u64) << 48) | ((family as u64) << 56);
    let mut h = low ^ high.rotate_left(17) ^ tail;
    // The full finaliser: with one round only, the bit positions correlate with the word,
    // and the filter lets about twice as much through.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    // The word from the top bits (at most 17: bits 47..63), three 6-bit positions from the
    // low 18 bits: independent of each other at every size.
    let word = (h >> (64 - words_log2)) as u32;
    let mask = (1u64 << (h & 63)) | (1u64 << ((h >> 6) & 63)) | (1u64 << ((h >> 12) & 63));
    (word, mask)
}

/// The flow cache slot (`0..capacity::FLOW_CACHE_SLOTS`) of a flow's addresses, ports and
/// protocol (network byte order, as in the packet). One multiply, as for the frontend
/// filter: a collision only sends a packet on to CONNTRACK.
#[inline(always)]
pub fn flow_cache_slot(
    src: &[u8; 16],
    dst: &[u8; 16],
    src_port: u16,
    dst_port: u16,
    proto: u8,
) -> u32 {
    let word = |addr: &[u8; 16], at: usize| {
        u64::from_le_bytes([
            addr[at],
            addr[at + 1],
            addr[at + 2],
            addr[at + 3],
            addr[at + 4],
            addr[at + 5],
            addr[at + 6],
            addr[at + 7],
        ])
    };
    // IPv4 addresses fill the low 4 bytes of their first word: the rotations move the two
    // addresses and the ports into different bits before they are mixed.
    let ports = ((src_port as u64) << 32) | ((dst_port as u64) << 48) | proto as u64;
    let mut h = word(src, 0)
        ^ word(src, 8).rotate_left(7)
        ^ word(dst, 0).rotate_left(29)
        ^ word(dst, 8).rotate_left(41)
        ^ ports;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    (h >> (64 - crate::capacity::FLOW_CACHE_SLOTS_LOG2)) as u32
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

    #[test]
    fn frontend_filter_slots_spread_over_sequential_service_addresses() {
        extern crate std;
        use crate::frontend_filter::{BITS, WORDS, WORDS_LOG2_MAX};
        let mut seen = std::collections::BTreeSet::new();
        let count = 20_000u32;
        for i in 0..count {
            let addr = (u32::from_be_bytes([10, 96, 0, 0]) + i).to_be_bytes();
            let mut addr16 = [0u8; 16];
            addr16[..4].copy_from_slice(&addr);
            let (word, mask) = frontend_filter_slot(&addr16, 80u16.to_be(), 6, 4, WORDS_LOG2_MAX);
            assert!(word < WORDS, "word {word} out of range");
            assert!((1..=BITS).contains(&mask.count_ones()), "mask {mask:#x}");
            seen.insert((word, mask));
        }
        // Random placement: a handful of equal slots at most.
        assert!(
            seen.len() as u32 > count - count / 100,
            "only {} distinct slots for {count} sequential addresses",
            seen.len()
        );
        let a = frontend_filter_slot(&[1; 16], 80u16.to_be(), 6, 6, WORDS_LOG2_MAX);
        assert_ne!(
            a,
            frontend_filter_slot(&[1; 16], 81u16.to_be(), 6, 6, WORDS_LOG2_MAX),
            "port"
        );
        assert_ne!(
            a,
            frontend_filter_slot(&[1; 16], 80u16.to_be(), 17, 6, WORDS_LOG2_MAX),
            "protocol"
        );
    }

    #[test]
    fn flow_cache_slots_spread_over_source_ports_and_clients() {
        extern crate std;
        use crate::capacity::FLOW_CACHE_SLOTS;
        let dst = [198, 18, 100, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        const V6_DST: [u8; 16] = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1];
        let flows = FLOW_CACHE_SLOTS * 8;
        /// The `i`th flow's source address and port.
        type Flow = fn(u32) -> ([u8; 16], u16);
        // (case, its flows, their destination)
        let cases: [(&str, Flow, [u8; 16]); 3] = [
            (
                "one client's source ports",
                |i| {
                    let mut src = [0u8; 16];
                    src[..4].copy_from_slice(&[198, 18, 0, 1]);
                    (src, (1024 + i) as u16)
                },
                dst,
            ),
            (
                "many IPv4 clients",
                |i| {
                    let mut src = [0u8; 16];
                    src[..4].copy_from_slice(&[198, 18, (i >> 8) as u8, i as u8]);
                    (src, 40000)
                },
                dst,
            ),
            (
                "many IPv6 clients",
                |i| {
                    let mut src = V6_DST;
                    src[12..].copy_from_slice(&i.to_be_bytes());
                    (src, 40000)
                },
                V6_DST,
            ),
        ];
        for (case, flow, dst) in cases {
            let mut buckets = std::vec![0u32; FLOW_CACHE_SLOTS as usize];
            for i in 0..flows {
                let (src, sport) = flow(i);
                let slot = flow_cache_slot(&src, &dst, sport.to_be(), 80u16.to_be(), 6);
                buckets[slot as usize] += 1;
            }
            let empty = buckets.iter().filter(|&&n| n == 0).count();
            let max = *buckets.iter().max().unwrap();
            // 8 flows a slot on average: random placement leaves about one slot empty and
            // none above 24.
            assert!(
                empty < 40 && max < 24,
                "{case}: {empty} empty slots, {max} flows in the fullest"
            );
        }
    }
}
