//! FRONTEND_FILTER upkeep: which bits the frontends in FRONTENDS need, so that the writer
//! sets a bit before the first frontend using it is inserted and clears it only after the
//! last one is deleted (`lb_common::frontend_filter` states the invariant the datapath
//! relies on: a clear bit means no frontend).

use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::BorrowedFd,
};

use lb_common::{FrontendKey, frontend_filter, hash::frontend_filter_bit, map_names};

use super::{DataplaneError, aya_maps::batch};

/// The filter bit of a frontend key.
pub fn bit_of(key: &FrontendKey) -> u32 {
    frontend_filter_bit(&key.addr, key.port, key.proto, key.family)
}

/// The frontends behind each set bit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrontendFilter {
    keys: BTreeSet<FrontendKey>,
    /// Bit -> frontends hashing to it (never zero: a bit without users is removed).
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

    /// Records `key` (call before inserting it). Returns the word to write when its bit
    /// was clear: `(word index, new word value)`.
    pub fn add(&mut self, key: &FrontendKey) -> Option<(u32, u64)> {
        if !self.keys.insert(*key) {
            return None;
        }
        let bit = bit_of(key);
        let users = self.users.entry(bit).or_insert(0);
        *users += 1;
        (*users == 1).then(|| self.word_of(bit))
    }

    /// Forgets `key` (call after deleting it). Returns the word to write when that was the
    /// last frontend on its bit.
    pub fn remove(&mut self, key: &FrontendKey) -> Option<(u32, u64)> {
        if !self.keys.remove(key) {
            return None;
        }
        let bit = bit_of(key);
        let users = self.users.get_mut(&bit)?;
        *users -= 1;
        if *users > 0 {
            return None;
        }
        self.users.remove(&bit);
        Some(self.word_of(bit))
    }

    pub fn contains(&self, key: &FrontendKey) -> bool {
        self.keys.contains(key)
    }

    pub fn is_set(&self, bit: u32) -> bool {
        self.users.contains_key(&bit)
    }

    /// The word holding `bit` as the kernel must hold it: `(word index, value)`.
    pub fn word_of(&self, bit: u32) -> (u32, u64) {
        let (word, _) = frontend_filter::word_and_mask(bit);
        let first = word * 64;
        let value = self
            .users
            .range(first..first + 64)
            .fold(0u64, |value, (&bit, _)| {
                value | frontend_filter::word_and_mask(bit).1
            });
        (word, value)
    }

    /// The whole bitmap, `frontend_filter::WORDS` words.
    pub fn words(&self) -> Vec<u64> {
        let mut words = vec![0u64; frontend_filter::WORDS as usize];
        for &bit in self.users.keys() {
            let (word, mask) = frontend_filter::word_and_mask(bit);
            words[word as usize] |= mask;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(last: u8, port: u16) -> FrontendKey {
        FrontendKey {
            addr: [198, 18, 100, last, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            port: port.to_be(),
            proto: lb_common::PROTO_TCP,
            family: lb_common::FAMILY_IPV4,
        }
    }

    /// Two different keys with the same filter bit (searched, not assumed).
    fn sharing_pair() -> (FrontendKey, FrontendKey) {
        let mut first_by_bit = BTreeMap::new();
        for last in 0..=255u8 {
            for port in 1..=2000u16 {
                let k = key(last, port);
                if let Some(other) = first_by_bit.insert(bit_of(&k), k) {
                    return (other, k);
                }
            }
        }
        panic!("no two of 512 000 keys share one of 2^21 bits: the hash is broken");
    }

    #[test]
    fn bit_set_on_first_add_and_cleared_on_last_remove() {
        let mut filter = FrontendFilter::default();
        let a = key(1, 80);
        let bit = bit_of(&a);
        let (word, mask) = frontend_filter::word_and_mask(bit);
        assert_eq!(filter.add(&a), Some((word, mask)), "first add sets the bit");
        assert_eq!(
            filter.add(&a),
            None,
            "re-adding the same frontend writes nothing"
        );
        assert!(filter.is_set(bit));
        assert_eq!(filter.words()[word as usize], mask);
        assert_eq!(filter.remove(&a), Some((word, 0)), "last remove clears it");
        assert_eq!(
            filter.remove(&a),
            None,
            "removing an absent frontend writes nothing"
        );
        assert!(!filter.is_set(bit));
        assert!(
            filter.words().iter().all(|&w| w == 0),
            "empty filter, empty bitmap"
        );
    }

    #[test]
    fn shared_bit_stays_set_until_both_frontends_are_gone() {
        let (a, b) = sharing_pair();
        let bit = bit_of(&a);
        let mut filter = FrontendFilter::default();
        assert!(filter.add(&a).is_some(), "first user sets the bit");
        assert_eq!(filter.add(&b), None, "second user: already set");
        assert_eq!(filter.remove(&a), None, "b still needs the bit");
        assert!(filter.is_set(bit), "bit of {b:?} cleared while it exists");
        let (word, _) = frontend_filter::word_and_mask(bit);
        assert_eq!(
            filter.remove(&b),
            Some((word, 0)),
            "last user gone: cleared"
        );
    }

    #[test]
    fn word_keeps_the_other_bits_of_its_word() {
        let a = key(1, 80);
        let (word, mask_a) = frontend_filter::word_and_mask(bit_of(&a));
        // A second key in the same word but on another bit.
        let b = (0..=255u8)
            .flat_map(|last| (1..=2000u16).map(move |port| key(last, port)))
            .find(|k| {
                let (w, m) = frontend_filter::word_and_mask(bit_of(k));
                w == word && m != mask_a
            })
            .expect("some key lands in the same 64-bit word");
        let mask_b = frontend_filter::word_and_mask(bit_of(&b)).1;
        let mut filter = FrontendFilter::from_keys([a]);
        assert_eq!(filter.add(&b), Some((word, mask_a | mask_b)), "both bits");
        assert_eq!(filter.remove(&a), Some((word, mask_b)), "b's bit stays");
    }
}
