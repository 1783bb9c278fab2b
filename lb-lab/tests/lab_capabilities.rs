//! The agent with exactly the capabilities the DaemonSet gives it (read from
//! `deploy/base/daemonset.yaml`), no_new_privs set, as a container runtime starts it: it loads and
//! attaches everything (XDP or TC on the uplink, the cgroup socket hooks at its cgroup root)
//! and balances, a pod's connections to the ClusterIP and an outside client's to the
//! NodePort. It runs under strace, and every system call it makes must be one the runtimes'
//! default seccomp profile (`seccompProfile: RuntimeDefault`) allows a container holding
//! these capabilities.

use std::{
    collections::BTreeSet,
    ffi::OsStr,
    net::SocketAddr,
    os::unix::process::CommandExt as _,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use slicelb_lab::lab::{
    ChildGuard,
    cluster::{
        Cluster, ClusterSpec,
        manifests::{ClusterEndpoint, Conditions, MY_APP_SERVICE, write_my_app},
    },
    lab_binary,
    probe::Probe,
    require_root, slicelb_binary,
};

const NODE: &str = "node-a";
const CLIENT: &str = "client";
const REPLICAS: [&str; 2] = ["my-app-1", "my-app-2"];
const PATIENCE: Duration = Duration::from_secs(20);

/// Capability numbers (linux/capability.h) of the names a DaemonSet may list.
const CAPABILITY_NUMBERS: [(&str, u32); 6] = [
    ("NET_ADMIN", 12),
    ("NET_RAW", 13),
    ("SYS_ADMIN", 21),
    ("SYS_RESOURCE", 24),
    ("PERFMON", 38),
    ("BPF", 39),
];

/// The system calls the agent makes (strace's names), each allowed by the default seccomp
/// profiles of containerd (since its late-2022 1.6 releases) and Docker (since 23.0) to a
/// container holding CAP_BPF and CAP_PERFMON: `bpf` and `perf_event_open` by those
/// capabilities, the others unconditionally. A call not listed here fails this test: check
/// it against the runtimes' profiles before adding it.
const RUNTIME_DEFAULT_ALLOWS: &[&str] = &[
    "accept4",
    "access",
    "arch_prctl",
    "bind",
    "bpf",
    "brk",
    "clock_gettime",
    "clock_nanosleep",
    "clone",
    "close",
    "connect",
    "epoll_create1",
    "epoll_ctl",
    "epoll_pwait",
    "epoll_wait",
    "eventfd2",
    "execve",
    "exit",
    "exit_group",
    "fcntl",
    "fstat",
    "fstatfs",
    "futex",
    "getcwd",
    "getdents64",
    "getpid",
    "getrandom",
    "getsockname",
    "getsockopt",
    "gettid",
    "inotify_add_watch",
    "inotify_init1",
    "inotify_rm_watch",
    "ioctl",
    "listen",
    "lseek",
    "madvise",
    "mkdir",
    "mkdirat",
    "mmap",
    "mprotect",
    "mremap",
    "munmap",
    "newfstatat",
    "openat",
    "perf_event_open",
    "poll",
    "prctl",
    "pread64",
    "prlimit64",
    "read",
    "readlink",
    "recvfrom",
    "recvmsg",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "sched_getaffinity",
    "sched_yield",
    "sendmsg",
    "sendto",
    "set_robust_list",
    "set_tid_address",
    "setsockopt",
    "sigaltstack",
    "socket",
    "socketpair",
    "statfs",
    "statx",
    "uname",
    "write",
    "writev",
];

/// Refused by some default profiles, and glibc goes on without them: `clone3` (ENOSYS, on
/// purpose: glibc then creates threads with `clone`, allowed without namespace flags) and
/// `rseq` (allowed by current profiles; where refused, glibc runs without it).
const REFUSED_WITH_FALLBACK: &[&str] = &["clone3", "rseq"];

/// The capability names the DaemonSet adds to the agent container.
fn daemonset_capabilities() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/daemonset.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let daemonset: serde_norway::Value =
        serde_norway::from_str(&text).expect("daemonset.yaml parses");
    let containers = daemonset["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers");
    let agent = containers
        .iter()
        .find(|c| c["name"].as_str() == Some("agent"))
        .expect("the agent container");
    let security = &agent["securityContext"];
    assert_ne!(
        security["privileged"].as_bool(),
        Some(true),
        "a privileged agent has every capability"
    );
    assert_eq!(
        security["capabilities"]["drop"].as_sequence().map(Vec::len),
        Some(1),
        "the DaemonSet drops ALL, then adds"
    );
    security["capabilities"]["add"]
        .as_sequence()
        .expect("capabilities.add")
        .iter()
        .map(|name| name.as_str().expect("a capability name").to_owned())
        .collect()
}

/// The capability mask of these names.
fn mask_of(names: &[String]) -> u64 {
    names
        .iter()
        .map(|name| {
            let (_, number) = CAPABILITY_NUMBERS
                .iter()
                .find(|(known, _)| known == name)
                .unwrap_or_else(|| panic!("capability {name}: add its number to this test"));
            1u64 << number
        })
        .fold(0, |mask, bit| mask | bit)
}

/// In the child, before exec: only the capabilities of `keep` stay in the bounding set (so a
/// root process executes with exactly those permitted and effective), and no_new_privs
/// (`allowPrivilegeEscalation: false`).
fn restrict_to(command: &mut Command, keep: u64) {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .expect("cap_last_cap")
        .trim()
        .parse()
        .expect("a number");
    // SAFETY: prctl only, between fork and exec (async-signal-safe); runs after the
    // cluster's own pre-exec step has entered the node's namespace and cgroup.
    unsafe {
        command.pre_exec(move || {
            for capability in (0..=last).filter(|c| keep & (1 << c) == 0) {
                if libc::prctl(libc::PR_CAPBSET_DROP, capability, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A field of /proc/PID/status, e.g. `CapEff`.
fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

/// The agent: strace's child (the wrapper's only one).
fn agent_pid(strace: u32) -> u32 {
    let started = Instant::now();
    loop {
        let children = std::fs::read_to_string(format!("/proc/{strace}/task/{strace}/children"))
            .unwrap_or_default();
        if let Some(pid) = children.split_whitespace().next() {
            return pid.parse().expect("a pid");
        }
        assert!(started.elapsed() < PATIENCE, "strace started no agent");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The system calls in an `strace -f -o` log.
fn syscalls(log: &str) -> BTreeSet<String> {
    log.lines()
        .filter_map(|line| {
            let call = line.split_once(' ')?.1.trim_start();
            let name: String = call
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty() && call[name.len()..].starts_with('(')).then_some(name)
        })
        .collect()
}

#[test]
fn strace_log_lines_name_their_calls() {
    let log = "12 bpf(BPF_MAP_CREATE, {...}, 72) = 3\n\
               12 <... futex resumed>) = 0\n\
               13 +++ exited with 0 +++\n\
               12 --- SIGTERM {si_signo=SIGTERM} ---\n\
               13 clone3({flags=CLONE_VM}, 88 <unfinished ...>\n";
    assert_eq!(
        syscalls(log),
        BTreeSet::from(["bpf".to_owned(), "clone3".to_owned()])
    );
}

#[test]
fn the_agent_attaches_and_balances_with_the_daemonsets_capabilities_under_runtime_default() {
    const TEST: &str = "lab_capabilities";
    require_root(TEST);
    let capabilities = daemonset_capabilities();
    let keep = mask_of(&capabilities);
    let spec = ClusterSpec::new(&[
        (NODE, &["my-app-1", "my-app-2", CLIENT]),
        ("node-b", &["my-app-3"]),
    ]);
    let cluster = Cluster::new(TEST, &spec).expect("build the cluster");
    let lab = lab_binary().expect("the slicelb-lab binary");
    let slicelb = slicelb_binary().expect("the slicelb binary");
    let _servers = cluster.start_pod_servers(&lab).expect("pod servers");
    let manifests = tempfile::tempdir().expect("manifest dir");
    // Only node-a's pods: NodePort replies from node-b's would need source NAT.
    let endpoints: Vec<ClusterEndpoint> = REPLICAS
        .iter()
        .map(|pod| ClusterEndpoint::new(cluster.pod(pod), Conditions::READY))
        .collect();
    write_my_app(manifests.path(), &endpoints).expect("manifests");

    let trace = tempfile::NamedTempFile::new().expect("strace log");
    let wrapper: [&OsStr; 6] = [
        "strace".as_ref(),
        "-f".as_ref(),
        "-qq".as_ref(),
        "-o".as_ref(),
        trace.path().as_os_str(),
        "--".as_ref(),
    ];
    let mut command = cluster.agent_command_under(&wrapper, NODE, &slicelb, manifests.path());
    restrict_to(&mut command, keep);
    let mut agent = ChildGuard::spawn(command, "agent under strace").expect("agent");
    let pid = agent_pid(agent.id());

    let expected = format!("{keep:016x}");
    for field in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(
            status_field(pid, field),
            expected,
            "the agent's {field}: exactly {capabilities:?}"
        );
    }
    for field in ["CapInh", "CapAmb"] {
        assert_eq!(status_field(pid, field), format!("{:016x}", 0), "{field}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");

    // Balanced at socket level (the cgroup hooks) and on the uplink (XDP or TC).
    let replicas: BTreeSet<String> = REPLICAS.iter().map(ToString::to_string).collect();
    let from_client = || cluster.pod(CLIENT).command(&lab);
    let from_outside = || cluster.outside_command(&lab);
    let node_port = SocketAddr::new(cluster.node(NODE).addr_v4.into(), 30080);
    let checks: [(&str, &dyn Fn() -> Command, SocketAddr); 2] = [
        (
            "client pod -> ClusterIP",
            &from_client,
            MY_APP_SERVICE.addr_v4(),
        ),
        ("outside -> NodePort", &from_outside, node_port),
    ];
    for (what, command, target) in checks {
        let started = Instant::now();
        loop {
            assert!(
                agent.is_running(),
                "{what}: the agent exited (its log is above)"
            );
            let results = Probe::tcp(target)
                .count(30)
                .run(command())
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let answered: BTreeSet<String> = results
                .iter()
                .filter_map(|r| r.answer().map(|a| a.served_by.clone()))
                .collect();
            if answered == replicas {
                break;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "{what}: answered by {answered:?}, not by every replica ({results:?})"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // SIGTERM to the agent itself; strace ends when it does.
    // SAFETY: kill on the agent, a live child of our child strace.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    agent.signal_and_wait(0).expect("wait for strace");
    let log = std::fs::read_to_string(trace.path()).expect("strace log");
    let calls = syscalls(&log);
    assert!(calls.contains("bpf"), "strace saw no bpf() call: {calls:?}");
    let refused: Vec<&String> = calls
        .iter()
        .filter(|call| {
            !RUNTIME_DEFAULT_ALLOWS.contains(&call.as_str())
                && !REFUSED_WITH_FALLBACK.contains(&call.as_str())
        })
        .collect();
    assert!(
        refused.is_empty(),
        "the agent calls {refused:?}, which RUNTIME_DEFAULT_ALLOWS does not list (all calls: {calls:?})"
    );
}
