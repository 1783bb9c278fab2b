//! The lab: network namespaces joined by veth pairs, for the root tests and `cargo xtask run`.
//!
//! Every namespace is a [`Netns`] guard with a unique name that removes itself on drop (also
//! while a panic unwinds). Names carry the creating process id, so a later run removes what a
//! killed run left behind ([`Netns::remove_stale`]). Addresses come only from the benchmarking
//! ranges 198.18.0.0/15 and 2001:2::/48: lab traffic never leaves these namespaces.

pub mod agent_lab;
pub mod cgroup;
pub mod cluster;
pub mod demo;
pub mod probe;
pub mod servers;
pub mod syn_flood;

use std::{
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
};

/// Prefix of every namespace and cgroup the lab creates; [`Netns::remove_stale`] only touches
/// these.
pub const NETNS_PREFIX: &str = "slb";

const NETNS_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error(
        "could not run `{command}`: {source} (is iproute2 installed? `cargo xtask setup` installs it)"
    )]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no {name} binary: {detail}")]
    Binary { name: String, detail: String },
    #[error("could not enter network namespace {name}: {source} (the lab needs root)")]
    Enter {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{action} cgroup {}: {source} (the lab needs root and cgroup v2)", path.display())]
    Cgroup {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no cgroup v2 hierarchy in /proc/self/mountinfo (mount one: `mount -t cgroup2 none /sys/fs/cgroup/unified`)"
    )]
    NoCgroup2,
    #[error("cgroup {} still had processes {waited:?} after cgroup.kill; left in place", path.display())]
    CgroupNotEmpty {
        path: PathBuf,
        waited: std::time::Duration,
    },
    #[error("cluster spec: {what} {why}")]
    InvalidSpec { what: String, why: &'static str },
    #[error("{what} did not start listening within {waited:?}")]
    NotListening {
        what: String,
        waited: std::time::Duration,
    },
}

/// Runs `program args…` and returns its output, or an error holding its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<Output, LabError> {
    run_command(Command::new(program).args(args))
}

/// Runs `command` and returns its output, or an error holding its stderr.
pub(crate) fn run_command(command: &mut Command) -> Result<Output, LabError> {
    let shown = format!("{command:?}").replace('"', "");
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            command: shown.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(LabError::CommandFailed {
            command: shown,
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(output)
}

/// `slb-<pid>-<n>-<role>`: unique per process and call, short enough for `ip`; the pid lets a
/// later run find what a killed run left behind ([`left_by_dead_runs`]).
pub(crate) fn unique_name(role: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{NETNS_PREFIX}-{}-{}-{role}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The entries of `dir` (name, path) named by [`unique_name`] in a process that is gone.
pub(crate) fn left_by_dead_runs(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().to_string();
            stale_owner(&name, NETNS_PREFIX)?;
            Some((name, entry.path()))
        })
        .collect()
}

/// A network namespace that exists as long as this guard does.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace [`unique_name`]`(role)`.
    pub fn new(role: &str) -> Result<Self, LabError> {
        let name = unique_name(role);
        run("ip", &["netns", "add", &name])?;
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    /// Removes lab namespaces whose creating process is gone (a run that was killed).
    pub fn remove_stale() {
        for (name, _) in left_by_dead_runs(Path::new(NETNS_DIR)) {
            let _ = run("ip", &["netns", "del", &name]);
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, for `nsenter --net=…`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// A command that runs inside this namespace. It uses `nsenter --net` rather than
    /// `ip netns exec`, which remounts /sys and so hides /sys/fs/bpf from the program.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.path().display()))
            .arg("--")
            .arg(program);
        command
    }

    /// Runs `program args…` inside the namespace and waits for it.
    pub fn run(&self, program: &str, args: &[&str]) -> Result<Output, LabError> {
        run_command(self.command(program).args(args))
    }

    /// `ip args…` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<Output, LabError> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Sets a sysctl inside the namespace (`net.ipv4.ip_forward=1`, …).
    pub fn sysctl(&self, setting: &str) -> Result<(), LabError> {
        self.run("sysctl", &["-qw", setting]).map(|_| ())
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result.
    /// Sockets `f` opens live in the namespace. A panic in `f` is passed on.
    pub fn enter<F, R>(&self, f: F) -> Result<R, LabError>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        let file = File::open(self.path()).map_err(|source| LabError::Enter {
            name: self.name.clone(),
            source,
        })?;
        std::thread::scope(|scope| {
            let handle = scope.spawn(move || {
                // Entering a network namespace affects only this new thread.
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
                Ok(f())
            });
            match handle.join() {
                Ok(result) => result.map_err(|source| LabError::Enter {
                    name: self.name.clone(),
                    source,
                }),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also deletes the veth ends inside it (and so their peers).
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// For a lab object named `<prefix>-<pid>-…`: the pid, if that process is gone (the object
/// was left behind by a run that was killed).
pub(crate) fn stale_owner(name: &str, prefix: &str) -> Option<u32> {
    let pid = name
        .strip_prefix(prefix)?
        .strip_prefix('-')?
        .split('-')
        .next()?
        .parse::<u32>()
        .ok()?;
    (!PathBuf::from(format!("/proc/{pid}")).exists()).then_some(pid)
}

/// A process that is killed (and reaped) when this guard drops.
#[derive(Debug)]
pub struct ChildGuard {
    child: std::process::Child,
    what: String,
}

impl ChildGuard {
    pub fn spawn(mut command: Command, what: &str) -> Result<Self, LabError> {
        let shown = format!("{command:?}").replace('"', "");
        let child = command
            .stdin(Stdio::null())
            .spawn()
            .map_err(|source| LabError::Spawn {
                command: shown,
                source,
            })?;
        Ok(Self {
            child,
            what: what.to_string(),
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Still running? (`false` once it exited.)
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` (SIGTERM for a clean stop, SIGKILL for a crash) and waits for exit.
    pub fn signal_and_wait(&mut self, signal: i32) -> std::io::Result<std::process::ExitStatus> {
        // Raw libc: callers pass libc's signal numbers.
        // SAFETY: kill on our own child's pid, which we have not reaped yet.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        self.child.wait()
    }

    pub fn what(&self) -> &str {
        &self.what
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bpffs directory for one test's pins, `/sys/fs/bpf/slicelb-test-<pid>-<label>`,
/// removed with everything pinned in it (links, then maps) on drop, also after a panic.
#[derive(Debug)]
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn new(label: &str) -> Self {
        Self(PathBuf::from(format!(
            "/sys/fs/bpf/slicelb-test-{}-{label}",
            std::process::id()
        )))
    }

    /// The path as a command-line argument (`--pin-path`).
    pub fn arg(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(error) = slicelb::dataplane::loader::Datapath::detach(&self.0) {
            eprintln!("cleaning up {}: {error}", self.0.display());
        }
    }
}

/// The standard output of a command that must have succeeded (tests: a panic naming `what`
/// with both outputs otherwise).
pub fn stdout_of(output: &Output, what: &str) -> String {
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).to_string()
}

/// Creates a veth pair `a_name` in `a` and `b_name` in `b`, both up.
pub fn veth_pair(a: &Netns, a_name: &str, b: &Netns, b_name: &str) -> Result<(), LabError> {
    run(
        "ip",
        &[
            "link",
            "add",
            a_name,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            b_name,
            "netns",
            b.name(),
        ],
    )?;
    a.ip(&["link", "set", a_name, "up"])?;
    b.ip(&["link", "set", b_name, "up"])?;
    Ok(())
}

/// Adds `addr/prefix` to `dev`; IPv6 without duplicate address detection, so it is usable
/// at once.
pub fn add_address(ns: &Netns, dev: &str, addr: IpAddr, prefix: u8) -> Result<(), LabError> {
    let cidr = format!("{addr}/{prefix}");
    match addr {
        IpAddr::V4(_) => ns.ip(&["addr", "add", &cidr, "dev", dev])?,
        IpAddr::V6(_) => ns.ip(&["-6", "addr", "add", &cidr, "dev", dev, "nodad"])?,
    };
    Ok(())
}

/// One backend host of the lab.
#[derive(Debug)]
pub struct LabBackend {
    pub netns: Netns,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// The node's veth towards this backend.
    pub node_iface: String,
}

impl LabBackend {
    /// `backend-K`, what its servers answer.
    pub fn name(&self) -> String {
        format!("backend-{}", self.ipv4.octets()[2])
    }

    /// Starts `slicelb-lab lab-server` ([`lab_binary`]) in this backend's namespace.
    pub fn start_server(&self, lab_binary: &std::path::Path) -> Result<ChildGuard, LabError> {
        let mut command = self.netns.command(&lab_binary.display().to_string());
        command.args(["lab-server", "--name", &self.name()]);
        command.stdout(Stdio::null());
        ChildGuard::spawn(command, &self.name())
    }
}

/// client ── node ── backend 1..=n, every link a veth pair, IPv4 and IPv6.
///
/// ```text
///  client (198.18.0.2, 2001:2::2) ─ c-eth0 ══ n-client ─ node (198.18.0.1, 2001:2::1)
///  node n-bK (198.18.K.1, 2001:2:0:K::1) ══ eth0 ─ backend K (198.18.K.2, 2001:2:0:K::2)
/// ```
/// The client and the backends route everything through the node, which forwards; the
/// programs go on the node's `n-client` (ingress balances, egress translates replies).
#[derive(Debug)]
pub struct Lab {
    pub client: Netns,
    pub node: Netns,
    pub backends: Vec<LabBackend>,
}

impl Lab {
    pub const CLIENT_IFACE: &str = "c-eth0";
    pub const NODE_CLIENT_IFACE: &str = "n-client";
    pub const CLIENT_IPV4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    pub const CLIENT_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 2);
    pub const NODE_IPV4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    pub const NODE_IPV6: Ipv6Addr = Ipv6Addr::new(0x2001, 2, 0, 0, 0, 0, 0, 1);

    /// Builds the lab with `backends` backend hosts (at most 200).
    pub fn new(backends: u8) -> Result<Self, LabError> {
        Netns::remove_stale();
        let client = Netns::new("client")?;
        let node = Netns::new("node")?;
        veth_pair(&client, Self::CLIENT_IFACE, &node, Self::NODE_CLIENT_IFACE)?;
        add_address(&client, Self::CLIENT_IFACE, Self::CLIENT_IPV4.into(), 24)?;
        add_address(&client, Self::CLIENT_IFACE, Self::CLIENT_IPV6.into(), 64)?;
        add_address(&node, Self::NODE_CLIENT_IFACE, Self::NODE_IPV4.into(), 24)?;
        add_address(&node, Self::NODE_CLIENT_IFACE, Self::NODE_IPV6.into(), 64)?;
        client.ip(&[
            "route",
            "add",
            "default",
            "via",
            &Self::NODE_IPV4.to_string(),
        ])?;
        client.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &Self::NODE_IPV6.to_string(),
        ])?;
        node.sysctl("net.ipv4.ip_forward=1")?;
        node.sysctl("net.ipv6.conf.all.forwarding=1")?;

        let mut lab = Self {
            client,
            node,
            backends: Vec::new(),
        };
        for index in 1..=backends {
            lab.add_backend(index)?;
        }
        Ok(lab)
    }

    /// Adds backend host number `index` (1..=200) and returns it.
    pub fn add_backend(&mut self, index: u8) -> Result<&LabBackend, LabError> {
        let netns = Netns::new(&format!("b{index}"))?;
        let node_iface = format!("n-b{index}");
        veth_pair(&self.node, &node_iface, &netns, "eth0")?;
        let ipv4 = Ipv4Addr::new(198, 18, index, 2);
        let ipv6 = Ipv6Addr::new(0x2001, 2, 0, index.into(), 0, 0, 0, 2);
        add_address(&netns, "eth0", ipv4.into(), 24)?;
        add_address(&netns, "eth0", ipv6.into(), 64)?;
        let node_v4 = Ipv4Addr::new(198, 18, index, 1);
        let node_v6 = Ipv6Addr::new(0x2001, 2, 0, index.into(), 0, 0, 0, 1);
        add_address(&self.node, &node_iface, node_v4.into(), 24)?;
        add_address(&self.node, &node_iface, node_v6.into(), 64)?;
        netns.ip(&["route", "add", "default", "via", &node_v4.to_string()])?;
        netns.ip(&["-6", "route", "add", "default", "via", &node_v6.to_string()])?;
        self.backends.push(LabBackend {
            netns,
            ipv4,
            ipv6,
            node_iface,
        });
        Ok(self.backends.last().expect("just pushed"))
    }

    /// Starts `slicelb-lab lab-server` in every backend namespace (HTTP 8080, UDP 9000),
    /// each answering with its name `backend-K`.
    pub fn start_servers(&self, lab_binary: &std::path::Path) -> Result<Vec<ChildGuard>, LabError> {
        self.backends
            .iter()
            .map(|backend| backend.start_server(lab_binary))
            .collect()
    }

    /// Turns checksum offload on or off on the client's interface (`ethtool -K … tx`).
    pub fn set_client_tx_offload(&self, on: bool) -> Result<(), LabError> {
        set_tx_offload(&self.client, Self::CLIENT_IFACE, on)
    }
}

/// `ethtool -K dev tx on|off` inside `ns`. With tx off on the receiving side's veth, a bad
/// checksum is caught by the receiver instead of trusted.
pub fn set_tx_offload(ns: &Netns, dev: &str, on: bool) -> Result<(), LabError> {
    ns.run("ethtool", &["-K", dev, "tx", if on { "on" } else { "off" }])
        .map(|_| ())
}

/// The `slicelb` binary the lab runs as the node's agent: `$SLICELB_BIN` if set, else the
/// one cargo built into the same target directory as this executable.
pub fn slicelb_binary() -> Result<PathBuf, LabError> {
    match std::env::var_os("SLICELB_BIN") {
        Some(path) => Ok(PathBuf::from(path)),
        None => built_binary("slicelb", "cargo build -p lb-userspace --bin slicelb"),
    }
}

/// The `slicelb-lab` binary, whose `lab-server` command the backends run.
pub fn lab_binary() -> Result<PathBuf, LabError> {
    built_binary("slicelb-lab", "cargo build -p lb-lab --bin slicelb-lab")
}

/// `name` beside the current executable, or one directory up (test executables run from
/// `target/<profile>/deps/`, the binaries sit in `target/<profile>/`).
fn built_binary(name: &str, build_hint: &str) -> Result<PathBuf, LabError> {
    let exe = std::env::current_exe().map_err(|source| LabError::Binary {
        name: name.to_string(),
        detail: format!("locating the current executable: {source}"),
    })?;
    if exe.file_name().is_some_and(|file| file == name) {
        return Ok(exe);
    }
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| LabError::Binary {
            name: name.to_string(),
            detail: format!(
                "not found beside {} (build it: `{build_hint}`)",
                exe.display()
            ),
        })
}

/// Panics with a clear message unless running as root (the root tests use this first).
pub fn require_root(what: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{what} needs root (BPF, network namespaces); run `cargo xtask test` as root"
    );
}

/// Asks `done` every 100 ms until it holds; panics naming `what` after `patience` (a bound
/// on a failure, not a measured time).
pub fn wait_until(what: &str, patience: std::time::Duration, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(
            started.elapsed() < patience,
            "{what} did not happen within {patience:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
