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

/// A batched write the kernel stopped part way: it wrote the first `written` entries (in
/// the order given) and refused the next one for `source`.
#[derive(Debug, thiserror::Error)]
#[error("the entry after the first {written} was refused: {source}")]
pub struct PartialWrite {
    pub written: usize,
    #[source]
    pub source: io::Error,
}

/// Writes `values` to indexes `offset..` of an array map.
pub fn update<T: aya::Pod>(
    fd: BorrowedFd<'_>,
    offset: u32,
    values: &[T],
) -> Result<(), PartialWrite> {
    let keys: Vec<u32> = (offset..offset + values.len() as u32).collect();
    update_entries(fd, &keys, values)
}

/// Writes `keys[i] -> values[i]` into a map (an array's keys are its indexes); on failure,
/// says how many went in (the kernel writes them in order and stops at the first it cannot).
pub fn update_entries<K: aya::Pod, V: aya::Pod>(
    fd: BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<(), PartialWrite> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let mut written = 0;
    for (keys, values) in keys.chunks(CHUNK).zip(values.chunks(CHUNK)) {
        // SAFETY: `keys` and `values` hold `keys.len()` elements each.
        let (done, result) = unsafe {
            update_from(
                fd,
                keys.as_ptr().cast(),
                values.as_ptr().cast(),
                keys.len(),
                0,
            )
        };
        written += done;
        result.map_err(|source| PartialWrite { written, source })?;
    }
    Ok(())
}

/// `BPF_NOEXIST`: an update that never replaces an entry.
const BPF_NOEXIST: u64 = 1;

/// One `BPF_MAP_UPDATE_BATCH` call of `count` entries; returns how many the kernel wrote
/// (it stops at the first it cannot) and the call's result.
///
/// # Safety
/// `keys` and `values` must point at `count` keys and `count` values of the map's sizes.
unsafe fn update_from(
    fd: BorrowedFd<'_>,
    keys: *const u8,
    values: *const u8,
    count: usize,
    elem_flags: u64,
) -> (usize, io::Result<()>) {
    let mut attr = BatchAttr {
        keys: keys as u64,
        values: values as u64,
        count: count as u32,
        map_fd: fd.as_raw_fd() as u32,
        elem_flags,
        ..BatchAttr::default()
    };
    let result = bpf(BPF_MAP_UPDATE_BATCH, &mut attr);
    ((attr.count as usize).min(count), result)
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
    // SAFETY: both slices hold at least `count` elements.
    unsafe {
        lookup_into(
            fd,
            after,
            keys.as_mut_ptr().cast(),
            values.as_mut_ptr().cast(),
            count,
        )
    }
}

/// [`lookup_chunk`] into buffers of any layout.
///
/// # Safety
/// `keys` and `values` must point at room for `count` keys and `count` values of the map's
/// sizes.
unsafe fn lookup_into(
    fd: BorrowedFd<'_>,
    after: Option<u32>,
    keys: *mut u8,
    values: *mut u8,
    count: usize,
) -> io::Result<Chunk> {
    let mut next: u32 = 0;
    let mut attr = BatchAttr {
        in_batch: after
            .as_ref()
            .map_or(0, |cursor| cursor as *const u32 as u64),
        out_batch: &mut next as *mut u32 as u64,
        keys: keys as u64,
        values: values as u64,
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

/// Key and value buffers that one `BPF_MAP_LOOKUP_BATCH` call fills.
trait LookupBuffers {
    /// Entries the buffers have room for.
    fn room(&self) -> usize;
    /// Doubles the room.
    fn grow(&mut self);
    /// Where the keys and the values go.
    fn pointers(&mut self) -> (*mut u8, *mut u8);
}

/// Buffers of a map whose types this build knows.
struct Typed<K, V> {
    keys: Vec<K>,
    values: Vec<V>,
}

impl<K: aya::Pod + Default + Clone, V: aya::Pod + Default + Clone> LookupBuffers for Typed<K, V> {
    fn room(&self) -> usize {
        self.keys.len().min(self.values.len())
    }

    fn grow(&mut self) {
        let room = self.room() * 2;
        self.keys.resize(room, K::default());
        self.values.resize(room, V::default());
    }

    fn pointers(&mut self) -> (*mut u8, *mut u8) {
        (
            self.keys.as_mut_ptr().cast(),
            self.values.as_mut_ptr().cast(),
        )
    }
}

/// Buffers of keys and values of sizes known at run time, back to back.
impl LookupBuffers for RawEntries {
    fn room(&self) -> usize {
        self.len()
    }

    fn grow(&mut self) {
        self.keys.resize(self.keys.len() * 2, 0);
        self.values.resize(self.values.len() * 2, 0);
    }

    fn pointers(&mut self) -> (*mut u8, *mut u8) {
        (self.keys.as_mut_ptr(), self.values.as_mut_ptr())
    }
}

/// Entries of a map whose key and value sizes are known only at run time (a map pinned in
/// another layout): keys and values back to back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RawEntries {
    pub key_size: usize,
    pub value_size: usize,
    keys: Vec<u8>,
    values: Vec<u8>,
}

impl RawEntries {
    pub fn new(key_size: usize, value_size: usize) -> Self {
        Self {
            key_size,
            value_size,
            keys: Vec::new(),
            values: Vec::new(),
        }
    }

    fn with_room(key_size: usize, value_size: usize, room: usize) -> Self {
        Self {
            key_size,
            value_size,
            keys: vec![0; key_size * room],
            values: vec![0; value_size * room],
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len().checked_div(self.key_size).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn key(&self, index: usize) -> &[u8] {
        &self.keys[index * self.key_size..][..self.key_size]
    }

    pub fn value(&self, index: usize) -> &[u8] {
        &self.values[index * self.value_size..][..self.value_size]
    }

    /// Appends an entry; panics when a size is not this map's.
    pub fn push(&mut self, key: &[u8], value: &[u8]) {
        assert_eq!(
            (key.len(), value.len()),
            (self.key_size, self.value_size),
            "an entry of another layout"
        );
        self.keys.extend_from_slice(key);
        self.values.extend_from_slice(value);
    }
}

/// One pass over a map (a hash map, LRU or not, or an array), chunk by chunk: `visit`
/// gets the buffers and how many entries the call read into them, and says whether to go
/// on. The kernel's cursor is a bucket index, so however entries come and go meanwhile the
/// pass ends after one look at each bucket (a `get_next_key` walk starts over whenever the
/// entry it stands on is evicted). Returns the `BPF_MAP_LOOKUP_BATCH` calls made.
fn walk<B: LookupBuffers>(
    fd: BorrowedFd<'_>,
    buffers: &mut B,
    mut visit: impl FnMut(&B, usize) -> io::Result<ControlFlow<()>>,
) -> io::Result<u32> {
    let mut lookups = 0;
    let mut after = None;
    loop {
        lookups += 1;
        let room = buffers.room();
        let (keys, values) = buffers.pointers();
        // SAFETY: the buffers have room for `room` keys and values of the map's sizes.
        match unsafe { lookup_into(fd, after, keys, values, room) } {
            Ok(chunk) => {
                let go_on = visit(buffers, chunk.read)?;
                if chunk.last || go_on.is_break() {
                    return Ok(lookups);
                }
                after = Some(chunk.next);
            }
            // ENOSPC (nothing copied): the next bucket alone holds more than `room` entries.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => buffers.grow(),
            Err(e) => return Err(e),
        }
    }
}

/// [`walk`] over a hash map of types this build knows: `visit` gets each chunk's keys and
/// values.
fn walk_hash<K, V>(
    fd: BorrowedFd<'_>,
    mut visit: impl FnMut(&[K], &[V]) -> io::Result<ControlFlow<()>>,
) -> io::Result<u32>
where
    K: aya::Pod + Default + Clone,
    V: aya::Pod + Default + Clone,
{
    let mut buffers = Typed {
        keys: vec![K::default(); HASH_CHUNK],
        values: vec![V::default(); HASH_CHUNK],
    };
    walk(fd, &mut buffers, |buffers, read| {
        visit(&buffers.keys[..read], &buffers.values[..read])
    })
}

/// Every entry of a hash map or an array whose key and value sizes are given (not a per-CPU
/// map), in one pass ([`walk`]).
pub fn raw_entries(
    fd: BorrowedFd<'_>,
    key_size: usize,
    value_size: usize,
) -> io::Result<RawEntries> {
    let mut out = RawEntries::new(key_size, value_size);
    let mut buffers = RawEntries::with_room(key_size, value_size, HASH_CHUNK);
    walk(fd, &mut buffers, |buffers, read| {
        out.keys.extend_from_slice(&buffers.keys[..read * key_size]);
        out.values
            .extend_from_slice(&buffers.values[..read * value_size]);
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(out)
}

/// Writes `entries` into a map of their sizes; with `only_new`, an entry whose key the map
/// holds already is skipped (that entry is newer). Returns how many were written.
pub fn raw_update(fd: BorrowedFd<'_>, entries: &RawEntries, only_new: bool) -> io::Result<usize> {
    if only_new {
        // The batch call takes no BPF_NOEXIST: one call per entry.
        let mut written = 0;
        for index in 0..entries.len() {
            match update_element(fd, entries.key(index), entries.value(index), BPF_NOEXIST) {
                Ok(()) => written += 1,
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        return Ok(written);
    }
    let mut next = 0;
    while next < entries.len() {
        let count = (entries.len() - next).min(CHUNK);
        // SAFETY: `entries` holds `count` keys and values from `next` on.
        let (done, result) = unsafe {
            update_from(
                fd,
                entries.keys[next * entries.key_size..].as_ptr(),
                entries.values[next * entries.value_size..].as_ptr(),
                count,
                0,
            )
        };
        result?;
        next += done;
    }
    Ok(next)
}

/// The `BPF_MAP_UPDATE_ELEM` member of `union bpf_attr` (uapi layout).
#[repr(C)]
#[derive(Default)]
struct ElementAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;

/// Writes one entry; `key` and `value` must be of the map's sizes.
fn update_element(fd: BorrowedFd<'_>, key: &[u8], value: &[u8], flags: u64) -> io::Result<()> {
    let mut attr = ElementAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: key.as_ptr() as u64,
        value: value.as_ptr() as u64,
        flags,
        ..ElementAttr::default()
    };
    // SAFETY: an element attribute whose pointers refer to live buffers of the map's sizes
    // (the kernel reads key_size and value_size bytes).
    unsafe { sys::bpf(BPF_MAP_UPDATE_ELEM, &mut attr) }.map(|_| ())
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
