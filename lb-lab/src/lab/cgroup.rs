//! A tree of cgroup v2 directories that the lab owns: every process in it is killed, and the
//! directories removed, when the guard drops (also while a panic unwinds).
//!
//! A [`Cgroup`] is a fresh directory below this process's own cgroup (the bench's "pod"),
//! removed on drop; [`Cgroup::join`] moves this whole process in (cgroup v2 moves processes,
//! not single threads, outside threaded cgroups).

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use super::{LabError, left_by_dead_runs, unique_name};

/// Prefix of every cgroup the lab creates under the cgroup v2 mount: `slicelb-<pid>-<test>`.
pub const CGROUP_PREFIX: &str = "slicelb";

/// How long a killed cgroup may take to empty before the guard gives up on removing it.
const KILL_PATIENCE: Duration = Duration::from_secs(10);

/// Where the cgroup v2 hierarchy is mounted: the agent's own lookup
/// (`slicelb::dataplane::cgroup::cgroup2_mount`), so lab and agent agree.
pub fn cgroup2_mount() -> Result<PathBuf, LabError> {
    slicelb::dataplane::cgroup::cgroup2_mount().map_err(|_| LabError::NoCgroup2)
}

/// `<mount>/slicelb-<pid>-<test>` and the directories made below it. Dropping it kills every
/// process in the tree (`cgroup.kill`), waits until the tree is empty and removes it.
#[derive(Debug)]
pub struct CgroupTree {
    root: PathBuf,
}

impl CgroupTree {
    /// Creates `<mount>/slicelb-<pid>-<test>`, after removing the trees of runs whose process
    /// is gone.
    pub fn new(test: &str) -> Result<Self, LabError> {
        let mount = cgroup2_mount()?;
        remove_stale(&mount);
        let root = mount.join(format!("{CGROUP_PREFIX}-{}-{test}", std::process::id()));
        std::fs::create_dir(&root).map_err(|source| LabError::Cgroup {
            action: "creating",
            path: root.clone(),
            source,
        })?;
        Ok(Self { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates `relative` (e.g. `node-a/my-app-1`) below the root; its parent must exist.
    pub fn create(&self, relative: &str) -> Result<PathBuf, LabError> {
        let path = self.root.join(relative);
        std::fs::create_dir(&path).map_err(|source| LabError::Cgroup {
            action: "creating",
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }
}

impl Drop for CgroupTree {
    fn drop(&mut self) {
        if let Err(error) = kill_and_remove(&self.root) {
            eprintln!("slicelb lab: {error}");
        }
    }
}

/// Kills every process in the tree at `root`, waits until it is empty, then removes its
/// directories, leaves first (a cgroup directory can only go once it has no children).
pub fn kill_and_remove(root: &Path) -> Result<(), LabError> {
    let error = |action| {
        move |source| LabError::Cgroup {
            action,
            path: root.to_path_buf(),
            source,
        }
    };
    std::fs::write(root.join("cgroup.kill"), "1").map_err(error("killing the processes of"))?;
    let started = Instant::now();
    while is_populated(root).map_err(error("reading cgroup.events of"))? {
        if started.elapsed() > KILL_PATIENCE {
            return Err(LabError::CgroupNotEmpty {
                path: root.to_path_buf(),
                waited: KILL_PATIENCE,
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    remove_tree(root)
}

/// `populated 1` in `cgroup.events`: a live process is in this cgroup or below it.
fn is_populated(cgroup: &Path) -> std::io::Result<bool> {
    let events = std::fs::read_to_string(cgroup.join("cgroup.events"))?;
    Ok(events.lines().any(|line| line.trim() == "populated 1"))
}

/// `rmdir` of every directory below `dir`, deepest first, then of `dir`. (`remove_dir_all`
/// would try to unlink the interface files, which cgroupfs refuses.)
fn remove_tree(dir: &Path) -> Result<(), LabError> {
    let error = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| LabError::Cgroup {
            action,
            path,
            source,
        }
    };
    for entry in std::fs::read_dir(dir).map_err(error("listing", dir))? {
        let entry = entry.map_err(error("listing", dir))?;
        if entry.file_type().map_err(error("listing", dir))?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    std::fs::remove_dir(dir).map_err(error("removing", dir))
}

/// Removes the lab cgroup trees whose creating process is gone (a run that was killed).
fn remove_stale(mount: &Path) {
    let Ok(entries) = std::fs::read_dir(mount) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if super::stale_owner(&name, CGROUP_PREFIX).is_some()
            && let Err(error) = kill_and_remove(&entry.path())
        {
            eprintln!("slicelb lab: stale cgroup: {error}");
        }
    }
}

/// Makes `command` join the cgroup at `cgroup` and the network namespace at `netns` between
/// fork and exec. Only the child moves: writing `0` to `cgroup.procs` moves the writer. It
/// uses setns rather than `ip netns exec`, which remounts /sys and so hides /sys/fs/bpf.
pub fn enter_before_exec(command: &mut Command, cgroup: &Path, netns: &Path) {
    use std::os::unix::process::CommandExt as _;
    // Allocated here: between fork and exec only async-signal-safe calls are allowed.
    let procs = CString::new(cgroup.join("cgroup.procs").as_os_str().as_bytes())
        .expect("a cgroup path has no NUL byte");
    let netns = CString::new(netns.as_os_str().as_bytes()).expect("a netns path has no NUL byte");
    // SAFETY: the closure only makes system calls (open, write, setns, close) on memory
    // allocated before the fork.
    unsafe {
        command.pre_exec(move || {
            // Raw libc for open/write/close: std's File would allocate its path between fork and exec.
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let written = libc::write(fd, b"0".as_ptr().cast(), 1);
            let write_error = std::io::Error::last_os_error();
            libc::close(fd);
            if written != 1 {
                return Err(write_error);
            }
            let fd = libc::open(netns.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let entered = nix::sched::setns(
                std::os::fd::BorrowedFd::borrow_raw(fd),
                nix::sched::CloneFlags::CLONE_NEWNET,
            );
            libc::close(fd);
            entered.map_err(std::io::Error::from)
        });
    }
}

/// The cgroup `pid` is in, as the path below the cgroup v2 mount (`/slicelb-…/node-a`), from
/// the `0::` line of `/proc/<pid>/cgroup`.
pub fn cgroup_of(pid: u32) -> std::io::Result<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    cgroup2_path(&text)
        .map(PathBuf::from)
        .ok_or_else(|| std::io::Error::other(format!("pid {pid} has no cgroup v2 line")))
}

/// A cgroup v2 directory that exists as long as this guard does.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates `<own cgroup>/slb-<pid>-<n>-<role>` ([`unique_name`]).
    pub fn new(role: &str) -> Result<Self, LabError> {
        let parent = own_cgroup()?;
        // What a killed run left; a cgroup still holding a process stays (the kernel
        // refuses to remove it).
        for (_, stale) in left_by_dead_runs(&parent) {
            let _ = std::fs::remove_dir(stale);
        }
        let path = parent.join(unique_name(role));
        std::fs::create_dir(&path).map_err(|source| LabError::Cgroup {
            action: "creating",
            path: path.clone(),
            source,
        })?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves this process (every thread of it) into the cgroup until the guard drops, which
    /// moves it back to the cgroup it was in. Sockets created meanwhile belong to this
    /// cgroup for their whole life. One at a time: the process is in one cgroup.
    pub fn join(&self) -> Result<Joined<'_>, LabError> {
        let back_to = own_cgroup()?;
        move_self_to(&self.path)?;
        Ok(Joined {
            _cgroup: self,
            back_to,
        })
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Empty by now: a `Joined` borrows the cgroup, so it has moved us back already.
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// This process inside a [`Cgroup`]; dropping it moves the process back.
#[derive(Debug)]
pub struct Joined<'a> {
    _cgroup: &'a Cgroup,
    back_to: PathBuf,
}

impl Drop for Joined<'_> {
    fn drop(&mut self) {
        if let Err(error) = move_self_to(&self.back_to) {
            // Not silent: the process would stay in the lab's cgroup and the cgroup would stay.
            eprintln!("warning: {error}");
        }
    }
}

/// Writes our pid into `cgroup`'s `cgroup.procs`.
fn move_self_to(cgroup: &Path) -> Result<(), LabError> {
    let procs = cgroup.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string()).map_err(|source| LabError::Cgroup {
        action: "moving this process into",
        path: cgroup.to_path_buf(),
        source,
    })
}

/// The cgroup v2 directory this process is in, under the cgroup v2 mount.
pub fn own_cgroup() -> Result<PathBuf, LabError> {
    let mount = cgroup2_mount()?;
    let relative = cgroup_of(std::process::id()).map_err(|source| LabError::Cgroup {
        action: "reading the cgroup of this process from",
        path: PathBuf::from("/proc/self/cgroup"),
        source,
    })?;
    Ok(mount.join(relative.strip_prefix("/").unwrap_or(&relative)))
}

/// The path of the `0::` (cgroup v2) line of a /proc/<pid>/cgroup text.
fn cgroup2_path(proc_cgroup: &str) -> Option<&str> {
    proc_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v2_line_is_picked_among_v1_lines() {
        let text = "9:name=systemd:/\n4:memory:/job/1\n0::/user.slice/a.scope\n";
        assert_eq!(cgroup2_path(text), Some("/user.slice/a.scope"));
        assert_eq!(cgroup2_path("4:memory:/job/1\n"), None);
    }
}
