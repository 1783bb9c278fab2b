//! Batched map access (`BPF_MAP_UPDATE_BATCH` / `BPF_MAP_LOOKUP_BATCH`, Linux 5.6), which
//! aya 0.16 does not wrap: a 131 071-slot Maglev table is a handful of syscalls instead of
//! one per slot, and a hash map is counted in one pass over its buckets.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use super::sys;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// Elements per syscall.
const CHUNK: usize = 16 * 1024;
/// Entries per syscall when counting a hash map (keys and values are copied out).
pub const COUNT_BATCH: u32 = 4096;

/// The `batch` member of `union bpf_attr` (uapi layout).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

fn bpf(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: every caller fills a batch attribute whose pointers refer to live buffers
    // sized for `count` elements.
    unsafe { sys::bpf(cmd, attr) }.map(|_| ())
}

/// One `BPF_MAP_LOOKUP_BATCH`: up to `keys.len()` entries (at most `values.len()`) after
/// `cursor` (from the start when `None`) into `keys` and `values`; the cursor to go on from
/// lands in `next`. How many entries were copied, and the call's result (ENOENT: the end).
fn lookup_batch<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    cursor: Option<&u32>,
    next: &mut u32,
    keys: &mut [K],
    values: &mut [V],
) -> (usize, io::Result<()>) {
    let mut attr = BatchAttr {
        in_batch: cursor.map_or(0, |c| c as *const u32 as u64),
        out_batch: next as *mut u32 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: keys.len().min(values.len()) as u32,
        map_fd: fd.as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
    (attr.count as usize, result)
}

/// Writes `values` to indexes `offset..` of an array map.
pub fn update<T: aya::Pod>(fd: BorrowedFd<'_>, offset: u32, values: &[T]) -> io::Result<()> {
    for (n, chunk) in values.chunks(CHUNK).enumerate() {
        let start = offset + (n * CHUNK) as u32;
        let keys: Vec<u32> = (start..start + chunk.len() as u32).collect();
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: chunk.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        bpf(BPF_MAP_UPDATE_BATCH, &mut attr)?;
    }
    Ok(())
}

/// Reads indexes `start..start + count` of an array map.
pub fn lookup<T: aya::Pod + Default + Clone>(
    fd: BorrowedFd<'_>,
    start: u32,
    count: u32,
) -> io::Result<Vec<T>> {
    let mut out: Vec<T> = Vec::with_capacity(count as usize);
    let mut keys = vec![0u32; CHUNK];
    #[expect(
        clippy::useless_vec,
        reason = "CHUNK elements are too many for the stack"
    )]
    let mut values = vec![T::default(); CHUNK];
    // The kernel continues after `in_batch`; the first call starts at `start`.
    let mut previous: u32 = start.wrapping_sub(1);
    while (out.len() as u32) < count {
        let want = (count as usize - out.len()).min(CHUNK);
        let mut next: u32 = 0;
        let cursor = (start != 0 || !out.is_empty()).then_some(&previous);
        let (got, result) = lookup_batch(
            fd,
            cursor,
            &mut next,
            &mut keys[..want],
            &mut values[..want],
        );
        out.extend_from_slice(&values[..got.min(want)]);
        match result {
            Ok(()) => {}
            // ENOENT: the end of the array, after `got` elements.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e),
        }
        if got == 0 {
            break;
        }
        previous = next;
    }
    if (out.len() as u32) < count {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "array ended after {} of {count} elements from {start}",
                out.len()
            ),
        ));
    }
    Ok(out)
}

/// What one counting pass over a hash map saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counted {
    /// Entries seen, at most the limit the pass was given.
    pub entries: u32,
    /// `BPF_MAP_LOOKUP_BATCH` calls made.
    pub lookups: u32,
}

/// Counts the entries of a hash map (plain or LRU) with keys `K` and values `V`, in one pass
/// over its buckets, stopping at `limit`. The kernel's cursor is a bucket index, so entries
/// added or evicted meanwhile neither restart the pass nor make it longer: it takes at most
/// about `limit / COUNT_BATCH` calls, however fast the map changes. An entry that moves
/// during the pass may be missed or seen twice; a still map is counted exactly.
pub fn count_entries<K, V>(fd: BorrowedFd<'_>, limit: u32) -> io::Result<Counted>
where
    K: aya::Pod + Default + Clone,
    V: aya::Pod + Default + Clone,
{
    let mut room = COUNT_BATCH as usize;
    let mut keys = vec![K::default(); room];
    let mut values = vec![V::default(); room];
    let mut counted = Counted {
        entries: 0,
        lookups: 0,
    };
    let mut cursor: Option<u32> = None;
    while counted.entries < limit {
        let mut next: u32 = 0;
        let (got, result) = lookup_batch(fd, cursor.as_ref(), &mut next, &mut keys, &mut values);
        counted.lookups += 1;
        counted.entries = counted.entries.saturating_add(got as u32).min(limit);
        match result {
            Ok(()) => cursor = Some(next),
            // ENOENT: the last bucket, after `got` entries.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            // ENOSPC: the next bucket alone holds more than `room` entries.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && got == 0 => {
                room *= 2;
                keys.resize(room, K::default());
                values.resize(room, V::default());
            }
            Err(e) => return Err(e),
        }
    }
    Ok(counted)
}
