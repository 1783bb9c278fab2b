//! Writable shared mappings of a `BPF_F_MMAPABLE` array of `u32` (SELECTION): whole Maglev
//! tables are copied into the map's memory, where a batch update costs the kernel work per
//! element (2 s for 10 000 tables of 1021 slots).
//!
//! The kernel maps every page of the array at `mmap` time, and those pages count in the
//! process's RSS. A mapping of the whole array would add its full size (128 MiB at the
//! default capacity, though no extra memory is used) to the agent's RSS, so only a window of
//! [`WINDOW_BYTES`] around the tables being written is mapped, and only during a write.

use std::{
    io,
    os::fd::{AsFd as _, BorrowedFd, OwnedFd},
    sync::atomic::{AtomicU32, Ordering},
};

use aya::maps::MapInfo;
use memmap2::{MmapOptions, MmapRaw};

/// `BPF_F_MMAPABLE` (uapi `linux/bpf.h`): the array's values can be mmapped.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

/// The kernel stores array values 8-byte aligned (`round_up(value_size, 8)`).
const ELEMENT_STRIDE_BYTES: usize = 8;
/// A `u32` value, then padding up to the stride.
const WORDS_PER_ELEMENT: usize = ELEMENT_STRIDE_BYTES / size_of::<u32>();
/// Windows start at multiples of this (a multiple of every page size Linux uses), so a cold
/// sync's consecutive tables need one `mmap` per 2 MiB.
const WINDOW_BYTES: usize = 2 * 1024 * 1024;

/// Why an array could not be mapped.
#[derive(Debug, thiserror::Error)]
pub enum MapArrayError {
    #[error("values are {value_size} bytes, not the 4 of a u32")]
    ValueSize { value_size: u32 },
    #[error("duplicating the map's descriptor failed: {source}")]
    Descriptor {
        #[source]
        source: io::Error,
    },
}

/// A `u32` array map whose values are written and read through short-lived mappings.
pub struct MappedArray {
    fd: OwnedFd,
    entries: u32,
    /// The window of the last write, kept until [`MappedArray::release`].
    window: Option<Window>,
}

impl MappedArray {
    /// `None` when the array behind `fd` was created without `BPF_F_MMAPABLE` (pinned by an
    /// older slicelb); callers then use the syscalls.
    pub fn new(fd: BorrowedFd<'_>, info: &MapInfo) -> Result<Option<Self>, MapArrayError> {
        if info.map_flags() & BPF_F_MMAPABLE == 0 {
            return Ok(None);
        }
        if info.value_size() as usize != size_of::<u32>() {
            return Err(MapArrayError::ValueSize {
                value_size: info.value_size(),
            });
        }
        let fd = fd
            .try_clone_to_owned()
            .map_err(|source| MapArrayError::Descriptor { source })?;
        Ok(Some(Self {
            fd,
            entries: info.max_entries(),
            window: None,
        }))
    }

    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// Whether `count` values from `offset` lie inside the array.
    pub fn fits(&self, offset: u32, count: usize) -> bool {
        u64::from(offset) + count as u64 <= u64::from(self.entries)
    }

    /// A window holding elements `offset..offset + count` (which must fit).
    fn window_for(&self, offset: u32, count: usize) -> io::Result<Window> {
        let first_byte = offset as usize * ELEMENT_STRIDE_BYTES;
        let end_byte = first_byte + count * ELEMENT_STRIDE_BYTES;
        let total = self.entries as usize * ELEMENT_STRIDE_BYTES;
        let start = first_byte / WINDOW_BYTES * WINDOW_BYTES;
        let end = end_byte.div_ceil(WINDOW_BYTES) * WINDOW_BYTES;
        Window::map(self.fd.as_fd(), start, end.min(total) - start)
    }

    /// Writes `values` at `offset..` (which must fit: see [`MappedArray::fits`]), mapping a
    /// window when the current one does not hold them. Plain stores: callers publish the
    /// table with a syscall or a fence afterwards.
    pub fn write(&mut self, offset: u32, values: &[u32]) -> io::Result<()> {
        debug_assert!(self.fits(offset, values.len()), "callers check fits()");
        if values.is_empty() {
            return Ok(());
        }
        let window = match self.window.take() {
            Some(window) if window.holds(offset, values.len()) => window,
            // The old window (if any) is unmapped here, before the next is mapped.
            _ => self.window_for(offset, values.len())?,
        };
        for (slot, value) in window.elements(offset, values.len()).zip(values) {
            slot.store(*value, Ordering::Relaxed);
        }
        self.window = Some(window);
        Ok(())
    }

    /// Unmaps the window of the last write (the end of a batch of writes).
    pub fn release(&mut self) {
        self.window = None;
    }

    /// The `count` values at `offset..` (which must fit), through a window of their own.
    pub fn read(&self, offset: u32, count: u32) -> io::Result<Vec<u32>> {
        debug_assert!(self.fits(offset, count as usize), "callers check fits()");
        if count == 0 {
            return Ok(Vec::new());
        }
        let window = self.window_for(offset, count as usize)?;
        Ok(window
            .elements(offset, count as usize)
            .map(|slot| slot.load(Ordering::Relaxed))
            .collect())
    }
}

/// Bytes `first_byte..first_byte + mapping.len()` of an array's values, mapped shared and writable.
/// `MmapRaw` hands out only raw pointers, never `&[u8]`: the kernel and other processes
/// change these bytes at any time.
struct Window {
    mapping: MmapRaw,
    first_byte: usize,
}

impl Window {
    /// `first_byte` is a multiple of the page size; `bytes > 0`.
    fn map(fd: BorrowedFd<'_>, first_byte: usize, bytes: usize) -> io::Result<Self> {
        // The length is given: a BPF map's descriptor has no file size to take it from. The
        // kernel checks the range against the array's size.
        let mapping = MmapOptions::new()
            .offset(first_byte as u64)
            .len(bytes)
            .map_raw(&fd)?;
        Ok(Self {
            mapping,
            first_byte,
        })
    }

    fn holds(&self, offset: u32, count: usize) -> bool {
        let first = offset as usize * ELEMENT_STRIDE_BYTES;
        first >= self.first_byte
            && first + count * ELEMENT_STRIDE_BYTES <= self.first_byte + self.mapping.len()
    }

    /// The value words of elements `offset..offset + count`, which the window holds.
    fn elements(&self, offset: u32, count: usize) -> impl Iterator<Item = &AtomicU32> {
        assert!(self.holds(offset, count), "elements outside the window");
        // SAFETY: the mapping holds `len()` bytes, page-aligned (so aligned for AtomicU32),
        // alive while `self` is; AtomicU32 allows the kernel and other processes to read and
        // write them at the same time.
        let words = unsafe {
            std::slice::from_raw_parts(
                self.mapping.as_mut_ptr().cast::<AtomicU32>(),
                self.mapping.len() / size_of::<u32>(),
            )
        };
        let start = (offset as usize * ELEMENT_STRIDE_BYTES - self.first_byte) / size_of::<u32>();
        words[start..start + count * WORDS_PER_ELEMENT]
            .iter()
            .step_by(WORDS_PER_ELEMENT)
    }
}
