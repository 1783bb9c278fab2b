//! Space in the flat SELECTION array, handed out as power-of-two blocks (a buddy
//! allocator). Every Maglev size is a prime just under a power of two, so a table wastes at
//! most 2% of its block, and freed blocks merge back with their buddies.

use std::collections::BTreeSet;

/// Smallest block: the smallest Maglev table (251 slots) rounded up.
const MIN_ORDER: u32 = 8;
/// Largest block: the largest Maglev table (131 071 slots) rounded up.
const MAX_ORDER: u32 = 17;

/// Free blocks of SELECTION by size. Built from the applied state, or kept in step with a
/// planner's own allocations and releases (equal to a rebuild: freed buddies merge).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuddyAllocator {
    /// `free[order - MIN_ORDER]`: offsets of free blocks of `1 << order` slots.
    free: Vec<BTreeSet<u32>>,
}

impl BuddyAllocator {
    /// All of `[0, slots)` free, carved into the largest aligned blocks that fit.
    pub fn new(slots: u32) -> Self {
        let mut free = vec![BTreeSet::new(); (MAX_ORDER - MIN_ORDER + 1) as usize];
        let mut offset: u32 = 0;
        'carve: loop {
            for order in (MIN_ORDER..=MAX_ORDER).rev() {
                let block = 1u32 << order;
                if offset.is_multiple_of(block)
                    && u64::from(offset) + u64::from(block) <= u64::from(slots)
                {
                    free[(order - MIN_ORDER) as usize].insert(offset);
                    offset += block;
                    continue 'carve;
                }
            }
            break;
        }
        Self { free }
    }

    /// The block size a table of `slots` slots occupies.
    pub fn block_size(slots: u32) -> u32 {
        1 << order_for(slots)
    }

    /// A free block for `slots` slots (lowest offset among the smallest fitting blocks), or
    /// `None` when no free block is large enough.
    pub fn allocate(&mut self, slots: u32) -> Option<u32> {
        let order = order_for(slots);
        if order > MAX_ORDER {
            return None;
        }
        let mut found =
            (order..=MAX_ORDER).find(|o| !self.free[(o - MIN_ORDER) as usize].is_empty())?;
        let offset = self.free[(found - MIN_ORDER) as usize].pop_first()?;
        while found > order {
            found -= 1;
            self.free[(found - MIN_ORDER) as usize].insert(offset + (1 << found));
        }
        Some(offset)
    }

    /// Returns the block [`allocate`](Self::allocate) gave for `slots` slots at `offset`.
    pub fn release(&mut self, mut offset: u32, slots: u32) {
        let mut order = order_for(slots);
        while order < MAX_ORDER {
            let buddy = offset ^ (1 << order);
            if !self.free[(order - MIN_ORDER) as usize].remove(&buddy) {
                break;
            }
            offset = offset.min(buddy);
            order += 1;
        }
        self.free[(order - MIN_ORDER) as usize].insert(offset);
    }

    /// Marks `[offset, offset + len)` as in use (a table found in the applied state),
    /// whatever its alignment.
    pub fn reserve(&mut self, offset: u32, len: u32) {
        let (start, end) = (u64::from(offset), u64::from(offset) + u64::from(len));
        for order in (MIN_ORDER..=MAX_ORDER).rev() {
            let block = 1u64 << order;
            let lowest = start.saturating_sub(block - 1).min(u64::from(u32::MAX)) as u32;
            let overlapping: Vec<u32> = self.free[(order - MIN_ORDER) as usize]
                .range(lowest..)
                .take_while(|&&b| u64::from(b) < end)
                .copied()
                .filter(|&b| u64::from(b) + block > start)
                .collect();
            for b in overlapping {
                self.free[(order - MIN_ORDER) as usize].remove(&b);
                let inside = u64::from(b) >= start && u64::from(b) + block <= end;
                if !inside && order > MIN_ORDER {
                    // Partly used: keep the halves; the next order down sorts them out.
                    let half = 1u32 << (order - 1);
                    self.free[(order - 1 - MIN_ORDER) as usize].extend([b, b + half]);
                }
            }
        }
    }

    /// Free slots in total (for reports and tests).
    pub fn free_slots(&self) -> u64 {
        self.free
            .iter()
            .enumerate()
            .map(|(i, set)| set.len() as u64 * (1u64 << (i as u32 + MIN_ORDER)))
            .sum()
    }
}

fn order_for(slots: u32) -> u32 {
    slots
        .max(1)
        .next_power_of_two()
        .trailing_zeros()
        .max(MIN_ORDER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_do_not_overlap_and_merge_back() {
        let mut alloc = BuddyAllocator::new(4096);
        let a = alloc.allocate(251).expect("first 256 block");
        let b = alloc.allocate(1021).expect("a 1024 block");
        let c = alloc.allocate(251).expect("second 256 block");
        let ranges = [(a, 256), (b, 1024), (c, 256)];
        for (i, (x, xl)) in ranges.iter().enumerate() {
            for (y, yl) in &ranges[i + 1..] {
                assert!(
                    x + xl <= *y || y + yl <= *x,
                    "blocks {x}+{xl} and {y}+{yl} overlap"
                );
            }
        }
        assert_eq!(alloc.free_slots(), 4096 - 256 - 1024 - 256);
        alloc.release(a, 251);
        alloc.release(b, 1021);
        alloc.release(c, 251);
        assert_eq!(alloc.free_slots(), 4096);
        assert!(
            alloc.allocate(4093).is_some(),
            "freed blocks merged into one of 4096"
        );
    }

    #[test]
    fn reserved_ranges_are_never_handed_out() {
        let mut alloc = BuddyAllocator::new(2048);
        alloc.reserve(512, 509);
        alloc.reserve(1300, 10); // unaligned, as a foreign writer might leave it
        let mut got = Vec::new();
        while let Some(offset) = alloc.allocate(251) {
            got.push(offset);
        }
        for offset in &got {
            let end = offset + 256;
            assert!(
                end <= 512 || *offset >= 1024,
                "block {offset} overlaps the table at 512"
            );
            assert!(
                end <= 1300 || *offset >= 1310,
                "block {offset} overlaps the table at 1300"
            );
        }
        assert_eq!(
            got.len(),
            5,
            "2048 slots minus 512 reserved and one 256 block touched: {got:?}"
        );
    }

    #[test]
    fn odd_capacity_is_carved_into_aligned_blocks() {
        let mut alloc = BuddyAllocator::new(1000);
        assert_eq!(
            alloc.free_slots(),
            768,
            "512 + 256; the last 232 slots are too small"
        );
        assert!(alloc.allocate(509).is_some());
        assert!(alloc.allocate(509).is_none());
    }
}
