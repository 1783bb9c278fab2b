//! Batched map access (`BPF_MAP_UPDATE_BATCH` / `BPF_MAP_LOOKUP_BATCH` /
//! `BPF_MAP_DELETE_BATCH`, Linux 5.6), which aya 0.16 does not wrap: a 131 071-slot Maglev
//! table is a handful of syscalls instead of one per slot, and a pass over a flow table
//! (counting it, deleting stale entries) visits each hash bucket once however its entries
//! churn.

use std::{
    io,
    ops::ControlFlow,
    os::fd::{AsRawFd as _, BorrowedFd},
};

use super::sys;

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// Elements per syscall.
const CHUNK: usize = 16 * 1024;
/// Hash map entries per lookup syscall: a chunk of flow entries is a few hundred KiB.
pub const HASH_CHUNK: usize = 4 * 1024;

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

/// Writes `values` to indexes `offset..` of an array map.
pub fn update<T: aya::Pod>(fd: BorrowedFd<'_>, offset: u32, values: &[T]) -> io::Result<()> {
    let keys: Vec<u32> = (offset..offset + values.len() as u32).collect();
    update_entries(fd, &keys, values)
}

/// Writes `keys[i] -> values[i]` into a map (an array's keys are its indexes).
pub fn update_entries<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> io::Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    for (keys, values) in keys.chunks(CHUNK).zip(values.chunks(CHUNK)) {
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: keys.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        bpf(BPF_MAP_UPDATE_BATCH, &mut attr)?;
    }
    Ok(())
}

/// What one `BPF_MAP_LOOKUP_BATCH` call read.
struct Chunk {
    /// Entries read into the front of the buffers.
    read: usize,
    /// Where the next call continues (an array index, a hash bucket).
    next: u32,
    /// The map has nothing after these entries.
    last: bool,
}

/// One `BPF_MAP_LOOKUP_BATCH` call: up to `keys.len()` entries after the cursor `after`
/// (from the map's start when `None`) into `keys` and `values`.
fn lookup_chunk<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    after: Option<u32>,
    keys: &mut [K],
    values: &mut [V],
) -> io::Result<Chunk> {
    let count = keys.len().min(values.len());
    let mut next: u32 = 0;
    let mut attr = BatchAttr {
        in_batch: after
            .as_ref()
            .map_or(0, |cursor| cursor as *const u32 as u64),
        out_batch: &mut next as *mut u32 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: count as u32,
        map_fd: fd.as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    let last = match bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
        Ok(()) => false,
        // ENOENT: the end of the map, after `count` entries.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
        Err(e) => return Err(e),
    };
    let read = (attr.count as usize).min(count);
    Ok(Chunk {
        read,
        next,
        last: last || read == 0,
    })
}

/// Reads indexes `start..start + count` of an array map.
pub fn lookup<T: aya::Pod + Default + Clone>(
    fd: BorrowedFd<'_>,
    start: u32,
    count: u32,
) -> io::Result<Vec<T>> {
    let mut out: Vec<T> = Vec::with_capacity(count as usize);
    let buffer = (count as usize).min(CHUNK);
    let mut keys = vec![0u32; buffer];
    let mut values = vec![T::default(); buffer];
    // The kernel continues after the cursor; the first call starts at `start`.
    let mut after = start.checked_sub(1);
    while (out.len() as u32) < count {
        let want = (count as usize - out.len()).min(buffer);
        let chunk = lookup_chunk(fd, after, &mut keys[..want], &mut values[..want])?;
        out.extend_from_slice(&values[..chunk.read]);
        if chunk.last {
            break;
        }
        after = Some(chunk.next);
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

/// One pass over a hash map (LRU or not), chunk by chunk: `visit` gets each chunk's keys
/// and values and says whether to go on. The kernel's cursor is a bucket index, so however
/// entries come and go meanwhile the pass ends after one look at each bucket (a
/// `get_next_key` walk starts over whenever the entry it stands on is evicted). Returns the
/// `BPF_MAP_LOOKUP_BATCH` calls made.
fn walk_hash<K, V>(
    fd: BorrowedFd<'_>,
    mut visit: impl FnMut(&[K], &[V]) -> io::Result<ControlFlow<()>>,
) -> io::Result<u32>
where
    K: aya::Pod + Default + Clone,
    V: aya::Pod + Default + Clone,
{
    let mut room = HASH_CHUNK;
    let mut keys = vec![K::default(); room];
    let mut values = vec![V::default(); room];
    let mut lookups = 0;
    let mut after = None;
    loop {
        lookups += 1;
        match lookup_chunk(fd, after, &mut keys, &mut values) {
            Ok(chunk) => {
                let go_on = visit(&keys[..chunk.read], &values[..chunk.read])?;
                if chunk.last || go_on.is_break() {
                    return Ok(lookups);
                }
                after = Some(chunk.next);
            }
            // ENOSPC (nothing copied): the next bucket alone holds more than `room` entries.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                room *= 2;
                keys.resize(room, K::default());
                values.resize(room, V::default());
            }
            Err(e) => return Err(e),
        }
    }
}

/// One pass over a hash map ([`walk_hash`]) that deletes the entries `doomed` picks, each
/// chunk's right after reading it; returns how many it deleted.
pub fn delete_from_hash<K, V>(
    fd: BorrowedFd<'_>,
    mut doomed: impl FnMut(&K, &V) -> bool,
) -> io::Result<usize>
where
    K: aya::Pod + Default + Clone,
    V: aya::Pod + Default + Clone,
{
    let mut deleted = 0;
    walk_hash(fd, |keys: &[K], values: &[V]| {
        let chosen: Vec<K> = keys
            .iter()
            .zip(values)
            .filter(|(key, value)| doomed(key, value))
            .map(|(key, _)| *key)
            .collect();
        deleted += delete_entries(fd, &chosen)?;
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(deleted)
}

/// Deletes `keys` from a hash map; a key already gone (the datapath or the LRU took it)
/// is skipped. Returns how many it deleted.
pub fn delete_entries<K: aya::Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> io::Result<usize> {
    let mut deleted = 0;
    let mut rest = keys;
    while !rest.is_empty() {
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: rest.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
        // The kernel stops at the first key it cannot delete; `count` says how far it got.
        let done = (attr.count as usize).min(rest.len());
        deleted += done;
        match result {
            Ok(()) => break,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                rest = rest.get(done + 1..).unwrap_or_default();
            }
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
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
/// over its buckets ([`walk_hash`]), stopping at `limit`: entries added or evicted meanwhile
/// neither restart the pass nor make it longer, so it takes at most about
/// `limit / HASH_CHUNK` calls, however fast the map changes. An entry that moves during the
/// pass may be missed or seen twice; a still map is counted exactly.
pub fn count_entries<K, V>(fd: BorrowedFd<'_>, limit: u32) -> io::Result<Counted>
where
    K: aya::Pod + Default + Clone,
    V: aya::Pod + Default + Clone,
{
    let mut entries: u32 = 0;
    if limit == 0 {
        return Ok(Counted {
            entries,
            lookups: 0,
        });
    }
    let lookups = walk_hash(fd, |keys: &[K], _: &[V]| {
        entries = entries.saturating_add(keys.len() as u32).min(limit);
        Ok(if entries < limit {
            ControlFlow::Continue(())
        } else {
            ControlFlow::Break(())
        })
    })?;
    Ok(Counted { entries, lookups })
}

/// What one selecting pass over a hash map found ([`select_from_hash`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selected<K, V> {
    /// The entries picked, at most the limit.
    pub entries: Vec<(K, V)>,
    /// More entries would have been picked: the pass stopped at the limit.
    pub truncated: bool,
}

/// One pass over a hash map ([`walk_hash`]) that keeps the entries `keep` picks, stopping
/// once one more than `limit` is found: listing from a full table costs what reaching
/// `limit` matches costs, never more than one look at each bucket.
pub fn select_from_hash<K, V>(
    fd: BorrowedFd<'_>,
    limit: usize,
    mut keep: impl FnMut(&K, &V) -> bool,
) -> io::Result<Selected<K, V>>
where
    K: aya::Pod + Default + Clone,
    V: aya::Pod + Default + Clone,
{
    let mut selected = Selected {
        entries: Vec::new(),
        truncated: false,
    };
    walk_hash(fd, |keys: &[K], values: &[V]| {
        for (key, value) in keys.iter().zip(values) {
            if keep(key, value) {
                if selected.entries.len() == limit {
                    selected.truncated = true;
                    return Ok(ControlFlow::Break(()));
                }
                selected.entries.push((*key, *value));
            }
        }
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(selected)
}

/// Every entry of a hash map (LRU or not), in one pass over its buckets ([`walk_hash`]).
/// Entries inserted or deleted during the walk may or may not be in the result.
pub fn entries<K, V>(fd: BorrowedFd<'_>) -> io::Result<Vec<(K, V)>>
where
    K: aya::Pod + Default + Clone,
    V: aya::Pod + Default + Clone,
{
    Ok(select_from_hash(fd, usize::MAX, |_: &K, _: &V| true)?.entries)
}
