//! FRONTEND_FILTER upkeep: which bits the frontends in FRONTENDS need, so that the writer
//! sets a frontend's bits before it is inserted and clears a bit only after the last frontend
//! using it is deleted (`lb_common::frontend_filter` states the invariant the datapath relies
//! on: a frontend's bits are all set while it exists).

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::BorrowedFd,
};

use lb_common::{FrontendKey, frontend_filter, hash::frontend_filter_slot, map_names};

use super::{DataplaneError, batch};

/// The filter word and bit mask of a frontend key.
pub fn slot_of(key: &FrontendKey) -> (u32, u64) {
    frontend_filter_slot(&key.addr, key.port, key.proto, key.family)
}

/// Indexes of the bits set in `mask` within `word` (bit `word * 64 + i`).
fn bits_of(word: u32, mask: u64) -> impl Iterator<Item = u32> {
    (0..64u32)
        .filter(move |i| mask & (1u64 << i) != 0)
        .map(move |i| word * 64 + i)
}

/// The frontends behind each set bit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrontendFilter {
    keys: BTreeSet<FrontendKey>,
    /// Bit (`word * 64 + position`) -> frontends using it (never zero: a bit without users
    /// is removed).
    users: BTreeMap<u32, u32>,
}

impl FrontendFilter {
    pub fn from_keys(keys: impl IntoIterator<Item = FrontendKey>) -> Self {
        let mut filter = Self::default();
        for key in keys {
            filter.add(&key);
        }
        filter
    }

    /// Records `key` (call before inserting it). Returns the word to write when one of its
    /// bits was clear: `(word index, new word value)`.
    pub fn add(&mut self, key: &FrontendKey) -> Option<(u32, u64)> {
        if !self.keys.insert(*key) {
            return None;
        }
        let (word, mask) = slot_of(key);
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
        let (word, mask) = slot_of(key);
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
        let (word, mask) = slot_of(key);
        self.word_value(word) & mask == mask
    }

    /// Word `word` as the kernel must hold it.
    pub fn word_value(&self, word: u32) -> u64 {
        let first = word * 64;
        self.users
            .range(first..first + 64)
            .fold(0u64, |value, (&bit, _)| value | 1u64 << (bit - first))
    }

    /// The whole filter, `frontend_filter::WORDS` words.
    pub fn words(&self) -> Vec<u64> {
        let mut words = vec![0u64; frontend_filter::WORDS as usize];
        for &bit in self.users.keys() {
            words[(bit / 64) as usize] |= 1u64 << (bit % 64);
        }
        words
    }
}

/// Writes one word of the kernel's FRONTEND_FILTER.
pub fn write_word(filter: BorrowedFd<'_>, (word, value): (u32, u64)) -> Result<(), DataplaneError> {
    batch::update(filter, word, &[value]).map_err(|source| DataplaneError::MapWrite {
        map: map_names::FRONTEND_FILTER,
        source,
    })
}

/// Rewrites the kernel's whole FRONTEND_FILTER for the frontends `keys` (maps adopted from
/// an earlier run, or pinned by a datapath without the filter). Every needed bit is set in
/// the words written, so no packet for a frontend is ever turned away; bits no frontend
/// uses are cleared.
pub fn rebuild(
    filter: BorrowedFd<'_>,
    keys: impl IntoIterator<Item = FrontendKey>,
) -> Result<FrontendFilter, DataplaneError> {
    let built = FrontendFilter::from_keys(keys);
    batch::update(filter, 0, &built.words()).map_err(|source| DataplaneError::MapWrite {
        map: map_names::FRONTEND_FILTER,
        source,
    })?;
    Ok(built)
}

/// Two different frontend keys made by `make` whose masks share a bit of one word (found by
/// search, for tests): `make(i)` for i = 0, 1, 2, ...
pub fn sharing_pair(make: impl Fn(u32) -> FrontendKey) -> Option<(FrontendKey, FrontendKey)> {
    let mut by_word: BTreeMap<u32, Vec<(FrontendKey, u64)>> = BTreeMap::new();
    for i in 0..1_000_000 {
        let key = make(i);
        let (word, mask) = slot_of(&key);
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
    fn bits_set_on_first_add_and_cleared_on_last_remove() {
        let mut filter = FrontendFilter::default();
        let a = key(1);
        let (word, mask) = slot_of(&a);
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
        let (a, b) = sharing_pair(key).expect("two keys sharing a filter bit");
        let (word, mask_b) = slot_of(&b);
        let mut filter = FrontendFilter::default();
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
        let (word, mask_a) = slot_of(&a);
        // A second key in the same word.
        let b = (2..1_000_000)
            .map(key)
            .find(|k| slot_of(k).0 == word)
            .expect("some key lands in the same 64-bit word");
        let mask_b = slot_of(&b).1;
        let mut filter = FrontendFilter::from_keys([a]);
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
