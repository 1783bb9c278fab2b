//! Batched map access (`BPF_MAP_UPDATE_BATCH` / `BPF_MAP_LOOKUP_BATCH` /
//! `BPF_MAP_DELETE_BATCH`, Linux 5.6), which aya 0.16 does not wrap: a 131 071-slot Maglev
//! table, or a walk of a whole hash map, is a handful of syscalls instead of one per entry.

use std::{
    io,
    os::fd::{AsRawFd as _, BorrowedFd},
};

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// Elements per syscall.
const CHUNK: usize = 16 * 1024;

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
    // SAFETY: `attr` is a valid batch attribute whose pointers refer to live buffers
    // sized for `count` elements; the kernel reads at most `size_of::<BatchAttr>()`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
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

/// Deletes `keys` from a hash map; keys already gone (an LRU eviction, a concurrent delete)
/// are skipped. Returns how many it deleted.
pub fn delete_entries<K: aya::Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> io::Result<usize> {
    let mut deleted = 0;
    let mut rest = keys;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(CHUNK)];
        let mut attr = BatchAttr {
            keys: chunk.as_ptr() as u64,
            count: chunk.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = bpf(BPF_MAP_DELETE_BATCH, &mut attr);
        // The kernel stops at the first key it cannot delete; `count` says how many it did.
        let done = (attr.count as usize).min(chunk.len());
        deleted += done;
        match result {
            Ok(()) => rest = &rest[done..],
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => rest = &rest[done + 1..],
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// One `BPF_MAP_LOOKUP_BATCH`: up to `keys.len()` entries after position `from` (the start
/// when `None`) into `keys` and `values`. Returns the call's result, how many entries it
/// wrote, and the position to continue from (an array's last index, a hash map's bucket).
fn lookup_batch<K, V>(
    fd: BorrowedFd<'_>,
    from: Option<u32>,
    keys: &mut [K],
    values: &mut [V],
) -> (io::Result<()>, usize, u32) {
    let mut next: u32 = 0;
    let mut attr = BatchAttr {
        in_batch: from.as_ref().map_or(0, |from| from as *const u32 as u64),
        out_batch: &mut next as *mut u32 as u64,
        keys: keys.as_mut_ptr() as u64,
        values: values.as_mut_ptr() as u64,
        count: keys.len().min(values.len()) as u32,
        map_fd: fd.as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
    let got = (attr.count as usize).min(keys.len()).min(values.len());
    (result, got, next)
}

/// Every entry of a hash map (LRU or not). Entries inserted or deleted during the walk may
/// or may not be in the result.
pub fn entries<K, V>(fd: BorrowedFd<'_>) -> io::Result<Vec<(K, V)>>
where
    K: aya::Pod + Default + Clone,
    V: aya::Pod + Default + Clone,
{
    let mut out = Vec::new();
    // Hash maps resume from a bucket index; a batch holds whole buckets, so a bucket
    // larger than the batch asks for a larger one (ENOSPC).
    let mut batch = 1024usize;
    let mut from = None;
    loop {
        let mut keys = vec![K::default(); batch];
        let mut values = vec![V::default(); batch];
        let (result, got, next) = lookup_batch(fd, from, &mut keys, &mut values);
        match result {
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && got == 0 => {
                batch *= 2;
                continue;
            }
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
            _ => {}
        }
        out.extend(keys.into_iter().zip(values).take(got));
        // ENOENT: the walk reached the end (after `got` entries).
        if result.is_err() {
            return Ok(out);
        }
        from = Some(next);
    }
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
        reason = "a chunk of 16 Ki values does not belong on the stack"
    )]
    let mut values = vec![T::default(); CHUNK];
    // The kernel continues after `from`; the first call starts at `start`.
    let mut from = start.checked_sub(1);
    while (out.len() as u32) < count {
        let want = (count as usize - out.len()).min(CHUNK);
        let (result, got, next) = lookup_batch(fd, from, &mut keys[..want], &mut values[..want]);
        out.extend_from_slice(&values[..got]);
        match result {
            Ok(()) => {}
            // ENOENT: the end of the array, after `got` elements.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e),
        }
        if got == 0 {
            break;
        }
        from = Some(next);
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
