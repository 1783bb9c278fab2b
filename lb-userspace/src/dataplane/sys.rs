//! The `bpf()` system call for what aya 0.16 does not wrap: batched map access, read-only
//! descriptors of pinned maps, test runs with flags aya cannot set.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
/// `file_flags` of `BPF_OBJ_GET` (uapi `linux/bpf.h`): a descriptor that may only read.
const BPF_F_RDONLY: u32 = 1 << 3;

/// `bpf(command, attr, size_of::<A>())`: the call's non-negative result, or its error.
///
/// # Safety
/// `attr` must be the `union bpf_attr` member that `command` reads, laid out as the uapi
/// header says, and every pointer in it must refer to a live buffer of the size it states.
pub(crate) unsafe fn bpf<A>(command: libc::c_long, attr: &mut A) -> io::Result<libc::c_long> {
    // SAFETY: the caller vouches for `attr`; the kernel reads at most `size_of::<A>()`.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, command, attr as *mut A, size_of::<A>()) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The `obj` member of `union bpf_attr` (uapi layout).
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// A read-only descriptor of the object pinned at `path`: the kernel refuses every write
/// made through it (map updates and deletes, writable mappings).
pub fn open_pinned_read_only(path: &Path) -> io::Result<OwnedFd> {
    let pathname = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut attr = ObjAttr {
        pathname: pathname.as_ptr() as u64,
        file_flags: BPF_F_RDONLY,
        ..ObjAttr::default()
    };
    // SAFETY: an `obj` attribute whose path points at a live NUL-terminated string.
    let fd = unsafe { bpf(BPF_OBJ_GET, &mut attr) }?;
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
