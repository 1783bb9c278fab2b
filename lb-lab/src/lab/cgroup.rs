//! cgroup v2 directories for the lab: slicelb's socket-level hooks act on the sockets of the
//! processes below the cgroup they are attached at, so a lab client is "a pod" by being in one.
//!
//! A [`Cgroup`] is a fresh directory below this process's own cgroup, named with our pid
//! like the namespaces, and removed on drop (also while a panic unwinds). Below our own
//! cgroup rather than at the top of the hierarchy: whatever holds that cgroup (a job's kill,
//! its limits) still holds us while we are inside. [`Cgroup::join`] moves this whole process
//! in: cgroup v2 moves processes, not single threads (outside threaded cgroups).

use std::path::{Path, PathBuf};

use super::{LabError, left_by_dead_runs, unique_name};

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

/// The cgroup v2 directory this process is in: the `0::` line of /proc/self/cgroup under the
/// cgroup v2 mount.
pub fn own_cgroup() -> Result<PathBuf, LabError> {
    let mount = slicelb::dataplane::cgroup::cgroup2_mount()
        .map_err(|e| LabError::NoCgroup2(e.to_string()))?;
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| LabError::NoCgroup2(format!("reading /proc/self/cgroup: {e}")))?;
    let relative = cgroup2_path(&text).ok_or_else(|| {
        LabError::NoCgroup2(format!("no `0::` line in /proc/self/cgroup: {text:?}"))
    })?;
    Ok(mount.join(relative.trim_start_matches('/')))
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
