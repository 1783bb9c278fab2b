//! Where the socket-level hooks attach: a directory of the cgroup v2 hierarchy. Every
//! process below it (pods run below the kubelet's cgroups) is balanced at `connect()`.

use std::path::PathBuf;

/// Where the agent attaches the socket-level programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupRoot {
    /// The cgroup v2 mount of this mount namespace (the whole host, seen from the host).
    Mount,
    /// A directory of the cgroup v2 hierarchy.
    Path(PathBuf),
    /// No socket-level balancing: only packets arriving on the interfaces are balanced.
    Off,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading /proc/self/mountinfo failed: {0}")]
    MountInfo(#[from] procfs::ProcError),
    #[error(
        "no cgroup v2 hierarchy is mounted (no cgroup2 entry in /proc/self/mountinfo); mount one, give --cgroup-root, or run with --no-socket-lb"
    )]
    NoCgroup2,
    #[error(
        "--cgroup-root {0} is not a directory of a cgroup v2 hierarchy (no cgroup.controllers in it)"
    )]
    NotCgroup2(PathBuf),
}

impl CgroupRoot {
    /// The directory to attach at; `None` when socket-level balancing is off.
    pub fn resolve(&self) -> Result<Option<PathBuf>, CgroupError> {
        let path = match self {
            CgroupRoot::Off => return Ok(None),
            CgroupRoot::Path(path) => path.clone(),
            CgroupRoot::Mount => cgroup2_mount()?,
        };
        // cgroup v1 directories have `cgroup.procs` too, but no `cgroup.controllers`.
        if !path.join("cgroup.controllers").exists() {
            return Err(CgroupError::NotCgroup2(path));
        }
        Ok(Some(path))
    }
}

/// The first cgroup v2 mount in this mount namespace: `/sys/fs/cgroup` on a cgroup v2 host,
/// `/sys/fs/cgroup/unified` where both versions are mounted.
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let mounts = procfs::process::Process::myself()?.mountinfo()?;
    mounts
        .into_iter()
        .find(|mount| mount.fs_type == "cgroup2")
        .map(|mount| mount.mount_point)
        .ok_or(CgroupError::NoCgroup2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_resolves_to_nothing() {
        assert_eq!(CgroupRoot::Off.resolve().unwrap(), None);
    }

    #[test]
    fn a_directory_outside_cgroupfs_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let error = CgroupRoot::Path(dir.path().to_path_buf())
            .resolve()
            .unwrap_err();
        assert!(
            error
                .to_string()
                .contains(&dir.path().display().to_string()),
            "{error}"
        );
    }
}
