//! FRONTEND_FILTER upkeep: which bits the frontends in FRONTENDS need, so that the writer
//! sets a frontend's bits before it is inserted and clears a bit only after the last frontend
//! using it is deleted (`lb_common::frontend_filter` states the invariant the datapath relies
//! on: a frontend's bits are all set while it exists); and the filter's size in use, picked
//! from the number of frontends ([`words_log2_for`]) and changed by [`resize`].

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::BorrowedFd,
    time::Duration,
};

use lb_common::{FrontendKey, frontend_filter, hash::frontend_filter_slot, map_names};

use super::{DataplaneError, batch};

/// The filter word and bit mask of a frontend key in a filter of `1 << words_log2` words.
pub fn slot_of(key: &FrontendKey, words_log2: u32) -> (u32, u64) {
    frontend_filter_slot(&key.addr, key.port, key.proto, key.family, words_log2)
}

/// The size (log2 of the words) for `frontends` frontends: the smallest power of two with
/// [`frontend_filter::BITS_PER_FRONTEND`] bits for each (fewer than 0.2% of misses pass),
/// within the map. Small scales get a filter that stays in L1 (2 000 frontends: 8 KiB),
/// 200 000 frontends the whole map (1 MiB, 0.1% of misses passing).
pub fn words_log2_for(frontends: usize) -> u32 {
    let bits = frontends.saturating_mul(frontend_filter::BITS_PER_FRONTEND as usize);
    let words = bits.div_ceil(64).max(1);
    words.next_power_of_two().trailing_zeros().clamp(
        frontend_filter::WORDS_LOG2_MIN,
        frontend_filter::WORDS_LOG2_MAX,
    )
}

/// The size to move to from `words_log2` for `frontends` frontends, if any: up as soon as
/// the filter is too small, down only once it is four times too large, so that a count
/// going back and forth across a power of two does not rewrite the filter each time.
pub fn size_change(words_log2: u32, frontends: usize) -> Option<u32> {
    let wanted = words_log2_for(frontends);
    (wanted > words_log2 || wanted + 2 <= words_log2).then_some(wanted)
}

/// Indexes of the bits set in `mask` within `word` (bit `word * 64 + i`).
fn bits_of(word: u32, mask: u64) -> impl Iterator<Item = u32> {
    (0..64u32)
        .filter(move |i| mask & (1u64 << i) != 0)
        .map(move |i| word * 64 + i)
}

/// The frontends behind each set bit, in a filter of `1 << words_log2` words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendFilter {
    keys: BTreeSet<FrontendKey>,
    /// Bit (`word * 64 + position`) -> frontends using it (never zero: a bit without users
    /// is removed).
    users: BTreeMap<u32, u32>,
    words_log2: u32,
}

impl Default for FrontendFilter {
    /// Empty, at the size a zero in CONFIG stands for.
    fn default() -> Self {
        Self::with_size(frontend_filter::WORDS_LOG2_UNSET)
    }
}

impl FrontendFilter {
    /// Empty, `1 << words_log2` words.
    pub fn with_size(words_log2: u32) -> Self {
        Self {
            keys: BTreeSet::new(),
            users: BTreeMap::new(),
            words_log2: words_log2.min(frontend_filter::WORDS_LOG2_MAX),
        }
    }

    pub fn from_keys(keys: impl IntoIterator<Item = FrontendKey>, words_log2: u32) -> Self {
        let mut filter = Self::with_size(words_log2);
        for key in keys {
            filter.add(&key);
        }
        filter
    }

    /// The same frontends in a filter of `1 << words_log2` words.
    pub fn resized(&self, words_log2: u32) -> Self {
        Self::from_keys(self.keys.iter().copied(), words_log2)
    }

    /// The size in use: log2 of the words.
    pub fn words_log2(&self) -> u32 {
        self.words_log2
    }

    /// Frontends recorded.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The word and mask of `key` at this filter's size.
    pub fn slot(&self, key: &FrontendKey) -> (u32, u64) {
        slot_of(key, self.words_log2)
    }

    /// Records `key` (call before inserting it). Returns the word to write when one of its
    /// bits was clear: `(word index, new word value)`.
    pub fn add(&mut self, key: &FrontendKey) -> Option<(u32, u64)> {
        if !self.keys.insert(*key) {
            return None;
        }
        let (word, mask) = self.slot(key);
        let mut changed = false;
        for bit in bits_of(word, mask) {
            let users = self.users.entry(bit).or_insert(0);
            *users += 1;
            changed |= *users == 1;
        }
        changed.then(|| (word, self.word_value(word)))
    }

    /// Forgets `key` (call after deleting it). Returns the word to write when it was the
    /// last frontend on one of its bits.
    pub fn remove(&mut self, key: &FrontendKey) -> Option<(u32, u64)> {
        if !self.keys.remove(key) {
            return None;
        }
        let (word, mask) = self.slot(key);
        let mut changed = false;
        for bit in bits_of(word, mask) {
            if let Some(users) = self.users.get_mut(&bit) {
                *users -= 1;
                if *users == 0 {
                    self.users.remove(&bit);
                    changed = true;
                }
            }
        }
        changed.then(|| (word, self.word_value(word)))
    }

    pub fn contains(&self, key: &FrontendKey) -> bool {
        self.keys.contains(key)
    }

    /// Are all of `key`'s bits set (whether or not `key` itself is recorded)?
    pub fn covers(&self, key: &FrontendKey) -> bool {
        let (word, mask) = self.slot(key);
        self.word_value(word) & mask == mask
    }

    /// Word `word` as the kernel must hold it.
    pub fn word_value(&self, word: u32) -> u64 {
        let first = word * 64;
        self.users
            .range(first..first + 64)
            .fold(0u64, |value, (&bit, _)| value | 1u64 << (bit - first))
    }

    /// The words in use, `1 << words_log2` of them (the map's words past them are never
    /// read at this size).
    pub fn words(&self) -> Vec<u64> {
        let mut words = vec![0u64; 1 << self.words_log2];
        for &bit in self.users.keys() {
            words[(bit / 64) as usize] |= 1u64 << (bit % 64);
        }
        words
    }
}

/// Writes one word of the kernel's FRONTEND_FILTER.
pub fn write_word(filter: BorrowedFd<'_>, (word, value): (u32, u64)) -> Result<(), DataplaneError> {
    write_words(filter, &[value], word)
}

/// Writes `words` into the kernel's FRONTEND_FILTER from word `first` on.
fn write_words(filter: BorrowedFd<'_>, words: &[u64], first: u32) -> Result<(), DataplaneError> {
    batch::update(filter, first, words).map_err(|failed| {
        DataplaneError::refused(
            map_names::FRONTEND_FILTER,
            lb_common::frontend_filter::WORDS,
            failed,
            |index| Some(format!("word {}", u64::from(first) + index as u64)),
        )
    })
}

/// Rewrites the kernel's FRONTEND_FILTER for the frontends `keys` at the size in use,
/// `words_log2` (maps adopted from an earlier run, or pinned by a datapath without the
/// filter or with another layout of it). Every needed bit is set in the words written, so
/// no packet for a frontend is ever turned away; bits no frontend uses are cleared.
pub fn rebuild(
    filter: BorrowedFd<'_>,
    keys: impl IntoIterator<Item = FrontendKey>,
    words_log2: u32,
) -> Result<FrontendFilter, DataplaneError> {
    let built = FrontendFilter::from_keys(keys, words_log2);
    write_words(filter, &built.words(), 0)?;
    Ok(built)
}

/// How long [`resize`] waits after switching the size before it clears the bits only the
/// old size needed: a program that read the old size from CONFIG reads its filter word
/// within the same run, microseconds later (XDP and TC programs run to completion under
/// RCU); the margin covers a virtual CPU stalled by its host.
pub const RESIZE_GRACE: Duration = Duration::from_millis(20);

/// Moves the kernel's FRONTEND_FILTER, and `filter`, to `1 << words_log2` words.
/// `switch_size` writes the new size into CONFIG.
///
/// The order keeps every frontend passing at every moment, whichever size a packet reads
/// from CONFIG (it reads the size, then the word):
/// 1. every word gets the bits of both sizes (old | new: a superset of each, so either
///    size finds every frontend's bits; at worst a few more misses pass);
/// 2. CONFIG switches to the new size;
/// 3. after [`RESIZE_GRACE`], no program still uses the old size: each word gets the new
///    size's bits only.
///
/// If 1 or 2 fails, the kernel holds a superset of `filter`'s bits at the old size, and
/// `filter` is left as it was. Once 2 succeeds `filter` is the new one, even if 3 fails
/// (its words then keep a superset).
pub fn resize(
    kernel_filter: BorrowedFd<'_>,
    filter: &mut FrontendFilter,
    words_log2: u32,
    switch_size: impl FnOnce(u32) -> Result<(), DataplaneError>,
    grace: Duration,
) -> Result<(), DataplaneError> {
    let resized = filter.resized(words_log2);
    let (old, new) = (filter.words(), resized.words());
    let both: Vec<u64> = (0..old.len().max(new.len()))
        .map(|i| old.get(i).copied().unwrap_or(0) | new.get(i).copied().unwrap_or(0))
        .collect();
    write_words(kernel_filter, &both, 0)?;
    switch_size(resized.words_log2())?;
    *filter = resized;
    std::thread::sleep(grace);
    write_words(kernel_filter, &new, 0)
}

/// Two different frontend keys made by `make` whose masks share a bit of one word in a
/// filter of `1 << words_log2` words (found by search, for tests): `make(i)` for i = 0, 1,
/// 2, ...
pub fn sharing_pair(
    make: impl Fn(u32) -> FrontendKey,
    words_log2: u32,
) -> Option<(FrontendKey, FrontendKey)> {
    let mut by_word: BTreeMap<u32, Vec<(FrontendKey, u64)>> = BTreeMap::new();
    for i in 0..1_000_000 {
        let key = make(i);
        let (word, mask) = slot_of(&key, words_log2);
        let seen = by_word.entry(word).or_default();
        if let Some((other, _)) = seen.iter().find(|(k, m)| *k != key && m & mask != 0) {
            return Some((*other, key));
        }
        seen.push((key, mask));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the bookkeeping tests (a small one: more keys share words).
    const LOG2: u32 = 10;

    fn key(i: u32) -> FrontendKey {
        let (c, d) = ((i >> 16) as u8, (i >> 8) as u8);
        FrontendKey {
            addr: [198, 18, c, d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port: (1000 + (i & 0xff) as u16).to_be(),
            proto: lb_common::PROTO_TCP,
            family: lb_common::FAMILY_IPV4,
        }
    }

    #[test]
    fn the_size_gives_each_frontend_32_to_64_bits_within_the_map() {
        for (frontends, words_log2) in [
            (0, 6),
            (2, 6),
            (128, 6),
            (129, 7),
            (2_000, 10),
            (20_000, 14),
            (200_000, 17),
            (262_144, 17),
            (1_000_000, 17),
        ] {
            assert_eq!(
                words_log2_for(frontends),
                words_log2,
                "{frontends} frontends"
            );
        }
        for frontends in 129..=262_144usize {
            let bits = (64usize << words_log2_for(frontends)) as f64 / frontends as f64;
            assert!(
                (32.0..64.0).contains(&bits),
                "{frontends} frontends: {bits} bits each"
            );
        }
    }

    #[test]
    fn the_size_grows_at_once_and_shrinks_only_when_four_times_too_large() {
        assert_eq!(size_change(10, 2_000), None, "fits");
        assert_eq!(size_change(10, 2_049), Some(11), "too small");
        assert_eq!(size_change(10, 1_000), None, "twice too large: kept");
        assert_eq!(size_change(10, 500), Some(8), "four times too large");
        assert_eq!(
            size_change(frontend_filter::WORDS_LOG2_UNSET, 2),
            Some(frontend_filter::WORDS_LOG2_MIN),
            "an unset size shrinks to the smallest for a service"
        );
        assert_eq!(size_change(17, 1_000_000), None, "the map is the limit");
    }

    /// The point of the sizing: at each scale the bench measures (dual-stack services of
    /// one port, 2 to 200 000 frontends), fewer than 0.3% of destinations that are no
    /// frontend pass the filter the rule sizes (each of those pays the exact lookups).
    #[test]
    fn few_misses_pass_at_every_scale() {
        for services in [1u32, 1_000, 10_000, 100_000] {
            let keys = (0..services).flat_map(|i| {
                let port = (8080 + i / 32_000) as u16;
                let v4 = (u32::from_be_bytes([198, 19, 0, 0]) + i % 32_000 + 1).to_be_bytes();
                let v6 = (0x2001_0002_0000_ff00_0000_0000_0000_0000u128 + u128::from(i) + 1)
                    .to_be_bytes();
                let mut addr = [0u8; 16];
                addr[..4].copy_from_slice(&v4);
                [
                    FrontendKey {
                        addr,
                        port: port.to_be(),
                        proto: lb_common::PROTO_UDP,
                        family: lb_common::FAMILY_IPV4,
                    },
                    FrontendKey {
                        addr: v6,
                        port: port.to_be(),
                        proto: lb_common::PROTO_UDP,
                        family: lb_common::FAMILY_IPV6,
                    },
                ]
            });
            let keys: Vec<FrontendKey> = keys.collect();
            let filter =
                FrontendFilter::from_keys(keys.iter().copied(), words_log2_for(keys.len()));
            let misses = (0..=u16::MAX).map(|port| FrontendKey {
                addr: [198, 18, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                port: port.to_be(),
                proto: lb_common::PROTO_UDP,
                family: lb_common::FAMILY_IPV4,
            });
            let passed = misses.filter(|miss| filter.covers(miss)).count();
            assert!(
                passed * 1000 < 65_536 * 3,
                "{services} services, 2^{} words: {passed} of 65 536 misses pass",
                filter.words_log2()
            );
            assert!(keys.iter().all(|key| filter.covers(key)));
        }
    }

    #[test]
    fn bits_set_on_first_add_and_cleared_on_last_remove() {
        let mut filter = FrontendFilter::with_size(LOG2);
        let a = key(1);
        let (word, mask) = slot_of(&a, LOG2);
        assert_eq!(
            filter.add(&a),
            Some((word, mask)),
            "first add sets the bits"
        );
        assert_eq!(
            filter.add(&a),
            None,
            "re-adding the same frontend writes nothing"
        );
        assert!(filter.covers(&a));
        assert_eq!(filter.words()[word as usize], mask);
        assert_eq!(
            filter.remove(&a),
            Some((word, 0)),
            "last remove clears them"
        );
        assert_eq!(
            filter.remove(&a),
            None,
            "removing an absent frontend writes nothing"
        );
        assert!(!filter.covers(&a));
        assert!(
            filter.words().iter().all(|&w| w == 0),
            "empty filter, empty bitmap"
        );
    }

    #[test]
    fn shared_bit_stays_set_until_both_frontends_are_gone() {
        let (a, b) = sharing_pair(key, LOG2).expect("two keys sharing a filter bit");
        let (word, mask_b) = slot_of(&b, LOG2);
        let mut filter = FrontendFilter::with_size(LOG2);
        assert!(filter.add(&a).is_some(), "first user sets its bits");
        filter.add(&b);
        let after_a_gone = filter.remove(&a);
        assert!(filter.covers(&b), "bits of {b:?} cleared while it exists");
        if let Some((w, value)) = after_a_gone {
            assert_eq!((w, value), (word, mask_b), "only a's own bits go");
        }
        assert_eq!(
            filter.remove(&b),
            Some((word, 0)),
            "last user gone: cleared"
        );
    }

    #[test]
    fn word_keeps_the_bits_of_other_frontends() {
        let a = key(1);
        let (word, mask_a) = slot_of(&a, LOG2);
        // A second key in the same word.
        let b = (2..1_000_000)
            .map(key)
            .find(|k| slot_of(k, LOG2).0 == word)
            .expect("some key lands in the same 64-bit word");
        let mask_b = slot_of(&b, LOG2).1;
        let mut filter = FrontendFilter::from_keys([a], LOG2);
        let after_b = filter.add(&b);
        assert!(
            after_b.is_none() || after_b == Some((word, mask_a | mask_b)),
            "both frontends' bits: {after_b:?}"
        );
        assert_eq!(filter.word_value(word), mask_a | mask_b);
        filter.remove(&a);
        assert!(filter.covers(&b), "b's bits stay");
        assert_eq!(filter.word_value(word), mask_b);
    }
}
