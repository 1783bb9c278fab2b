//! The manifests in `deploy/` as a cluster would take them: rendered by `kubectl kustomize`,
//! checked against the Kubernetes 1.33 schemas in strict mode, then read back with
//! k8s-openapi types to check what the schemas cannot (RBAC scope, references between
//! objects, and that the DaemonSet calls the agent with flags and values it accepts).
//!
//! Needs `kubectl` (client only) and `kubernetes-validate` (PyPI, in `cargo xtask setup`'s
//! virtual environment) on PATH; fails naming the missing tool and how to install it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, PodSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize as _;

const NAMESPACE: &str = "slicelb-system";
const SCHEMA_VERSION: &str = "1.33.0";
const VALIDATOR: &str = "kubernetes-validate";
const VALIDATOR_INSTALL: &str = "run `cargo xtask setup`, which installs it into \
     ~/.cache/slicelb/venv/bin, and put that directory on PATH (`cargo xtask test` does)";
const AGENT_CONTAINER: &str = "agent";
const BPFFS: &str = "/sys/fs/bpf";
/// The agent's directory in the host's BPF filesystem.
const PIN_DIR: &str = "slicelb";

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// `kubectl kustomize deploy/`, or a panic that says why not.
fn render() -> String {
    let dir = deploy_dir();
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(&dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run kubectl ({e}): install the kubectl client to render {dir:?}")
        });
    assert!(
        output.status.success(),
        "kubectl kustomize {dir:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("kubectl kustomize printed UTF-8")
}

/// The rendered objects, by kind.
#[derive(Default)]
struct Rendered {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    config_maps: Vec<ConfigMap>,
    daemon_sets: Vec<DaemonSet>,
}

fn typed<T: serde::de::DeserializeOwned>(doc: serde_norway::Value, kind: &str) -> T {
    serde_norway::from_value(doc).unwrap_or_else(|e| panic!("rendered {kind} does not parse: {e}"))
}

fn parse(yaml: &str) -> Rendered {
    let mut rendered = Rendered::default();
    for document in serde_norway::Deserializer::from_str(yaml) {
        let doc = serde_norway::Value::deserialize(document).expect("rendered YAML parses");
        let kind = doc["kind"].as_str().unwrap_or("<no kind>").to_owned();
        match kind.as_str() {
            "Namespace" => rendered.namespaces.push(typed(doc, &kind)),
            "ServiceAccount" => rendered.service_accounts.push(typed(doc, &kind)),
            "ClusterRole" => rendered.cluster_roles.push(typed(doc, &kind)),
            "ClusterRoleBinding" => rendered.cluster_role_bindings.push(typed(doc, &kind)),
            "ConfigMap" => rendered.config_maps.push(typed(doc, &kind)),
            "DaemonSet" => rendered.daemon_sets.push(typed(doc, &kind)),
            other => panic!("deploy/ renders an unexpected {other}: add a check for it here"),
        }
    }
    rendered
}

fn rendered() -> Rendered {
    parse(&render())
}

fn only<'a, T>(items: &'a [T], what: &str) -> &'a T {
    assert_eq!(items.len(), 1, "deploy/ should render exactly one {what}");
    &items[0]
}

fn daemon_set(rendered: &Rendered) -> &DaemonSet {
    only(&rendered.daemon_sets, "DaemonSet")
}

fn pod_spec(daemon_set: &DaemonSet) -> &PodSpec {
    daemon_set
        .spec
        .as_ref()
        .and_then(|spec| spec.template.spec.as_ref())
        .expect("the DaemonSet has a pod template")
}

fn agent(pod: &PodSpec) -> &Container {
    pod.containers
        .iter()
        .find(|c| c.name == AGENT_CONTAINER)
        .unwrap_or_else(|| panic!("the DaemonSet has no container named {AGENT_CONTAINER}"))
}

fn init_containers(pod: &PodSpec) -> &[Container] {
    pod.init_containers.as_deref().unwrap_or_default()
}

#[test]
fn deploy_renders_and_passes_strict_schema_validation_for_kubernetes_1_33() {
    let yaml = render();
    let mut validator = Command::new(VALIDATOR)
        .args([
            "--kubernetes-version",
            SCHEMA_VERSION,
            "--strict",
            "--quiet",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {VALIDATOR} ({e}): {VALIDATOR_INSTALL}"));
    validator
        .stdin
        .take()
        .expect("validator stdin")
        .write_all(yaml.as_bytes())
        .expect("send the rendered manifests to the validator");
    let output = validator
        .wait_with_output()
        .expect("wait for the validator");
    assert!(
        output.status.success(),
        "the rendered manifests do not validate against Kubernetes {SCHEMA_VERSION} \
         (strict):\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    let rendered = parse(&yaml);
    let namespace = only(&rendered.namespaces, "Namespace");
    assert_eq!(namespace.metadata.name.as_deref(), Some(NAMESPACE));
    let namespaced = rendered
        .service_accounts
        .iter()
        .map(|o| (&o.metadata, "ServiceAccount"))
        .chain(
            rendered
                .config_maps
                .iter()
                .map(|o| (&o.metadata, "ConfigMap")),
        )
        .chain(
            rendered
                .daemon_sets
                .iter()
                .map(|o| (&o.metadata, "DaemonSet")),
        );
    for (metadata, kind) in namespaced {
        assert_eq!(
            metadata.namespace.as_deref(),
            Some(NAMESPACE),
            "{kind} {:?} should live in {NAMESPACE}",
            metadata.name
        );
    }
}

#[test]
fn rbac_grants_only_reading_services_endpointslices_and_nodes() {
    let rendered = rendered();
    let role = only(&rendered.cluster_roles, "ClusterRole");
    let mut granted = BTreeSet::new();
    for rule in role.rules.as_deref().unwrap_or_default() {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "rule {rule:?} should not name resource instances or URLs"
        );
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                for verb in &rule.verbs {
                    granted.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    let mut wanted = BTreeSet::new();
    for (group, resource) in [
        ("", "services"),
        ("", "nodes"),
        ("discovery.k8s.io", "endpointslices"),
    ] {
        for verb in ["get", "list", "watch"] {
            wanted.insert((group.to_owned(), resource.to_owned(), verb.to_owned()));
        }
    }
    assert_eq!(
        granted, wanted,
        "the ClusterRole should grant exactly get/list/watch on three resources"
    );

    let account = only(&rendered.service_accounts, "ServiceAccount");
    let binding = only(&rendered.cluster_role_bindings, "ClusterRoleBinding");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        Some(&binding.role_ref.name),
        role.metadata.name.as_ref(),
        "binding's roleRef"
    );
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert!(
        subjects.iter().any(|s| s.kind == "ServiceAccount"
            && Some(&s.name) == account.metadata.name.as_ref()
            && s.namespace.as_deref() == Some(NAMESPACE)),
        "the ClusterRoleBinding should bind the agent's ServiceAccount, has {subjects:?}"
    );
    let pod = pod_spec(daemon_set(&rendered));
    assert_eq!(
        pod.service_account_name, account.metadata.name,
        "the DaemonSet should run as the bound ServiceAccount"
    );
}

#[test]
fn daemonset_runs_on_every_node_in_the_host_network_one_node_at_a_time() {
    let rendered = rendered();
    let daemon_set = daemon_set(&rendered);
    let pod = pod_spec(daemon_set);
    assert_eq!(
        pod.host_network,
        Some(true),
        "the agent must be in the node's network namespace"
    );
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "a toleration with operator Exists and no key or effect is needed to run on every \
         node, found {tolerations:?}"
    );
    assert!(
        pod.node_selector.is_none() && pod.affinity.is_none(),
        "every node, no selector"
    );

    let strategy = daemon_set
        .spec
        .as_ref()
        .and_then(|spec| spec.update_strategy.as_ref())
        .expect("an explicit update strategy");
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy
        .rolling_update
        .as_ref()
        .expect("rollingUpdate settings");
    assert_eq!(
        rolling.max_unavailable,
        Some(IntOrString::Int(1)),
        "maxUnavailable"
    );

    let agent = agent(pod);
    let node_name = agent
        .env
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|source| source.field_ref.as_ref())
        .map(|field| field.field_path.as_str());
    assert_eq!(
        node_name,
        Some("spec.nodeName"),
        "NODE_NAME from the downward API"
    );

    for container in pod.containers.iter().chain(init_containers(pod)) {
        let resources = container.resources.as_ref();
        for (what, list) in [
            ("requests", resources.and_then(|r| r.requests.as_ref())),
            ("limits", resources.and_then(|r| r.limits.as_ref())),
        ] {
            let list = list.unwrap_or_else(|| panic!("container {} has no {what}", container.name));
            for resource in ["cpu", "memory"] {
                assert!(
                    list.contains_key(resource),
                    "container {} {what} {resource}",
                    container.name
                );
            }
        }
    }
}

#[test]
fn bpf_filesystem_is_the_hosts_so_pins_survive_restarts() {
    let rendered = rendered();
    let pod = pod_spec(daemon_set(&rendered));
    let volume = pod
        .volumes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|v| v.host_path.as_ref().is_some_and(|h| h.path == BPFFS))
        .unwrap_or_else(|| panic!("no hostPath volume for {BPFFS}"));

    let mounts_of = |container: &Container| -> Vec<String> {
        container
            .volume_mounts
            .as_deref()
            .unwrap_or_default()
            .iter()
            .filter(|m| m.name == volume.name && m.mount_path == BPFFS)
            .map(|m| {
                m.mount_propagation
                    .clone()
                    .unwrap_or_else(|| "None".to_owned())
            })
            .collect()
    };

    // Kubernetes admits Bidirectional propagation for privileged containers only.
    let mut bidirectional = 0;
    for container in pod.containers.iter().chain(init_containers(pod)) {
        if mounts_of(container).iter().any(|p| p == "Bidirectional") {
            bidirectional += 1;
            let privileged = container
                .security_context
                .as_ref()
                .and_then(|s| s.privileged);
            assert_eq!(
                privileged,
                Some(true),
                "container {} mounts {BPFFS} Bidirectional, which the API server refuses \
                 unless it is privileged",
                container.name
            );
        }
    }
    assert!(
        bidirectional >= 1,
        "some container must mount {BPFFS} with Bidirectional propagation so a BPF \
         filesystem it mounts reaches the host"
    );

    // The agent sees only its own directory of the host's BPF filesystem, and pins there.
    let agent = agent(pod);
    let agent_mounts: Vec<_> = agent
        .volume_mounts
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter(|m| m.name == volume.name)
        .collect();
    let [mount] = agent_mounts.as_slice() else {
        panic!("the agent should mount {BPFFS} once, has {agent_mounts:?}");
    };
    assert_eq!(
        mount.sub_path.as_deref(),
        Some(PIN_DIR),
        "the agent should mount only {BPFFS}/{PIN_DIR} of the host, not all of {BPFFS}"
    );
    let env = agent_env(&rendered, agent, "198.18.0.10");
    let args = agent.args.clone().unwrap_or_default();
    let pin_path: Vec<String> = flag_values(&args, "--pin-path")
        .iter()
        .map(|arg| expand(arg, &env).unwrap_or_else(|e| panic!("{e}")))
        .collect();
    assert_eq!(
        pin_path,
        std::slice::from_ref(&mount.mount_path),
        "--pin-path must be where the pin directory is mounted"
    );
    assert_eq!(
        env.get("SLICELB_PIN_PATH"),
        Some(&mount.mount_path),
        "`kubectl exec … slicelb services` reads the pin path from SLICELB_PIN_PATH"
    );
}

/// Socket-level balancing attaches at the host's cgroup v2 root: the container's own
/// /sys/fs/cgroup is only its cgroup namespace, so the flag must name a host mount.
#[test]
fn socket_level_hooks_attach_at_the_hosts_cgroup_root() {
    let rendered = rendered();
    let pod = pod_spec(daemon_set(&rendered));
    let agent = agent(pod);
    let args = agent.args.clone().unwrap_or_default();
    let roots = flag_values(&args, "--cgroup-root");
    assert_eq!(roots.len(), 1, "one --cgroup-root in {args:?}");
    assert!(
        !args.iter().any(|arg| arg.starts_with("--no-socket-lb")),
        "socket-level balancing must be on: pods and the node need it without kube-proxy"
    );
    let root = &roots[0];
    let mount = agent
        .volume_mounts
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|m| m.mount_path == *root)
        .unwrap_or_else(|| panic!("--cgroup-root {root} is not a volume mount of the agent"));
    let volume = pod
        .volumes
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|v| v.name == mount.name)
        .expect("the mount's volume");
    let host = volume.host_path.as_ref().map(|h| h.path.as_str());
    assert!(
        matches!(host, Some("/sys/fs/cgroup" | "/sys/fs/cgroup/unified")),
        "--cgroup-root must be the host's cgroup v2 root, is a mount of {host:?}"
    );
}

#[test]
fn agent_container_has_exactly_the_capabilities_it_needs() {
    let rendered = rendered();
    let agent = agent(pod_spec(daemon_set(&rendered)));
    let security = agent
        .security_context
        .as_ref()
        .expect("the agent has a securityContext");
    // Privileged would grant every capability and device, whatever the list says.
    assert_ne!(
        security.privileged,
        Some(true),
        "the agent must not run privileged: it needs only the capabilities listed"
    );
    assert_eq!(
        security.allow_privilege_escalation,
        Some(false),
        "no privilege escalation (no_new_privs)"
    );
    let seccomp = security.seccomp_profile.as_ref().map(|p| p.type_.as_str());
    assert_eq!(
        seccomp,
        Some("RuntimeDefault"),
        "the agent runs under the runtime's default seccomp profile"
    );
    let capabilities = security
        .capabilities
        .as_ref()
        .expect("capabilities when not privileged");
    let added: BTreeSet<&str> = capabilities
        .add
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    // Checked to be enough by the root test lab_capabilities, which runs the agent with this
    // list and nothing else; SYS_RESOURCE is not needed since maps are charged to the
    // memory cgroup (Linux 5.11).
    let wanted = BTreeSet::from(["BPF", "NET_ADMIN", "PERFMON"]);
    assert_eq!(added, wanted, "capabilities added to the agent");
    let dropped: Vec<&str> = capabilities
        .drop
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    assert_eq!(dropped, ["ALL"], "everything else dropped");
}

/// Values of `--flag=value` / `--flag value` in an argument list.
fn flag_values(args: &[String], flag: &str) -> Vec<String> {
    let mut values = Vec::new();
    for (i, arg) in args.iter().enumerate() {
        if let Some(value) = arg
            .strip_prefix(flag)
            .and_then(|rest| rest.strip_prefix('='))
        {
            values.push(value.to_owned());
        } else if arg == flag {
            values.extend(args.get(i + 1).cloned());
        }
    }
    values
}

/// Kubernetes' `$(VAR)` expansion in args; an undefined variable is an error here (the
/// kubelet would pass the text through unchanged, which the agent would then reject).
fn expand(arg: &str, env: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(start) = rest.find("$(") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find(')')
            .ok_or_else(|| format!("unclosed $( in {arg:?}"))?;
        let name = &after[..end];
        let value = env
            .get(name)
            .ok_or_else(|| format!("$({name}) in {arg:?} is not in the container's env"))?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The agent container's environment as the kubelet would build it on a node whose pod IP
/// is `pod_ip`, with ConfigMap values from the render. Optional keys that are absent are
/// left out, as the kubelet does.
fn agent_env(rendered: &Rendered, container: &Container, pod_ip: &str) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for var in container.env.as_deref().unwrap_or_default() {
        if let Some(value) = &var.value {
            env.insert(var.name.clone(), value.clone());
            continue;
        }
        let source = var
            .value_from
            .as_ref()
            .unwrap_or_else(|| panic!("env {} has no value", var.name));
        if let Some(field) = &source.field_ref {
            let value = match field.field_path.as_str() {
                "spec.nodeName" => "node-1",
                "status.podIP" => pod_ip,
                other => panic!(
                    "env {} uses field {other}: add a sample value here",
                    var.name
                ),
            };
            env.insert(var.name.clone(), value.to_owned());
        } else if let Some(key_ref) = &source.config_map_key_ref {
            let config_map = rendered
                .config_maps
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(key_ref.name.as_str()))
                .unwrap_or_else(|| {
                    panic!(
                        "env {} names ConfigMap {} which deploy/ does not create",
                        var.name, key_ref.name
                    )
                });
            match config_map.data.as_ref().and_then(|d| d.get(&key_ref.key)) {
                Some(value) => {
                    env.insert(var.name.clone(), value.clone());
                }
                None => assert_eq!(
                    key_ref.optional,
                    Some(true),
                    "env {} reads key {} that ConfigMap {} lacks",
                    var.name,
                    key_ref.key,
                    key_ref.name
                ),
            }
        } else {
            panic!(
                "env {} has a source this test does not know: {source:?}",
                var.name
            );
        }
    }
    env
}

/// Long flags listed in clap's `--help` output: the first `--name` of each option line.
fn flags_in_help(help: &str) -> BTreeSet<String> {
    help.lines()
        .map(str::trim_start)
        .filter(|line| line.starts_with('-'))
        .filter_map(|line| {
            let start = line.find("--")?;
            let name: String = line[start + 2..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            (!name.is_empty()).then(|| format!("--{name}"))
        })
        .collect()
}

fn run_agent(args: &[String]) -> std::process::Output {
    let binary = env!("CARGO_BIN_EXE_slicelb");
    Command::new(binary)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {binary}: {e}"))
}

#[test]
fn help_parser_reads_clap_option_lines() {
    let captured = "\
Runs the agent on this node

Usage: slicelb agent [OPTIONS] --iface <IFACE>

Options:
      --iface <IFACE>
          Interface to load-balance on (repeat, or separate with commas)
      --config-dir <DIR>
          Read Services and EndpointSlices from manifests in DIR instead of the API
      --kubeconfig <PATH>
      --in-cluster
      --node-name <NAME>  [env: NODE_NAME=]
      --nodeport-addresses <CIDR>...
      --pin-path <DIR>  [default: /sys/fs/bpf/slicelb]
      --metrics-addr <ADDR:PORT>  [default: 127.0.0.1:9400]
      --xdp-mode <MODE>  [default: auto] [possible values: auto, native, generic, off]
  -h, --help
          Print help (see a summary with '-h')
";
    let expected: BTreeSet<String> = [
        "--iface",
        "--config-dir",
        "--kubeconfig",
        "--in-cluster",
        "--node-name",
        "--nodeport-addresses",
        "--pin-path",
        "--metrics-addr",
        "--xdp-mode",
        "--help",
    ]
    .map(String::from)
    .into();
    assert_eq!(flags_in_help(captured), expected);

    let args = [
        "--iface=eth0",
        "--iface",
        "eth1",
        "--pin-path=/sys/fs/bpf/x",
    ]
    .map(String::from);
    assert_eq!(flag_values(&args, "--iface"), ["eth0", "eth1"]);
    assert_eq!(flag_values(&args, "--pin-path"), ["/sys/fs/bpf/x"]);

    let env = BTreeMap::from([("POD_IP".to_owned(), "198.18.0.10".to_owned())]);
    assert_eq!(
        expand("--metrics-addr=$(POD_IP):9400", &env).as_deref(),
        Ok("--metrics-addr=198.18.0.10:9400")
    );
    assert!(
        expand("--iface=$(MISSING)", &env).is_err(),
        "an undefined variable is an error"
    );
}

#[test]
fn daemonset_calls_the_agent_with_flags_and_values_it_accepts() {
    let rendered = rendered();
    let pod = pod_spec(daemon_set(&rendered));
    let agent = agent(pod);
    assert_eq!(
        agent.command.as_deref(),
        Some(&["slicelb".to_owned()][..]),
        "the container runs the slicelb binary"
    );
    let args = agent.args.clone().unwrap_or_default();
    assert_eq!(
        args.first().map(String::as_str),
        Some("agent"),
        "the first argument is the agent subcommand"
    );

    let help = run_agent(&["agent".to_owned(), "--help".to_owned()]);
    let help_text = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.status.success(),
        "`slicelb agent --help` failed ({}), so the flags cannot be checked:\n{}{}",
        help.status,
        help_text,
        String::from_utf8_lossy(&help.stderr)
    );
    let accepted = flags_in_help(&help_text);
    assert!(
        accepted.contains("--iface"),
        "`slicelb agent --help` lists no --iface: is the agent command built in? \
         It printed:\n{help_text}"
    );
    for arg in &args[1..] {
        if let Some(flag) = arg.strip_prefix("--") {
            let name = format!("--{}", flag.split('=').next().unwrap_or(flag));
            assert!(
                accepted.contains(&name),
                "the DaemonSet passes {name}, which `slicelb agent --help` does not list: \
                 {accepted:?}"
            );
        }
    }
    assert!(
        !flag_values(&args, "--iface").is_empty(),
        "the DaemonSet must pass --iface"
    );
    let sources = ["--config-dir", "--kubeconfig", "--in-cluster"];
    let given: Vec<_> = sources
        .iter()
        .filter(|flag| {
            args.iter()
                .any(|a| a == *flag || a.starts_with(&format!("{flag}=")))
        })
        .collect();
    assert_eq!(
        given,
        [&"--in-cluster"],
        "exactly one source, the in-cluster API"
    );

    // The agent's value parsers run on each value before clap reaches the trailing --help,
    // so this checks the expanded values without starting an agent.
    for pod_ip in ["198.18.0.10", "2001:2::10"] {
        let env = agent_env(&rendered, agent, pod_ip);
        let mut expanded: Vec<String> = args
            .iter()
            .map(|arg| expand(arg, &env).unwrap_or_else(|e| panic!("{e}")))
            .collect();
        expanded.push("--help".to_owned());
        let output = run_agent(&expanded);
        assert!(
            output.status.success(),
            "the agent rejects the DaemonSet's arguments on a node with pod IP {pod_ip}: \
             {expanded:?}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// The port of listen address `flag` as the DaemonSet passes it (or its default), after
/// checking that the kubelet's probes reach its address (the pod IP, which with
/// hostNetwork is the node's, or every address).
fn probed_port(args: &[String], flag: &str, default: Option<&str>) -> i32 {
    let given = flag_values(args, flag);
    let listen = match (given.as_slice(), default) {
        ([listen], _) => listen.clone(),
        ([], Some(default)) => default.to_owned(),
        _ => panic!(
            "{flag} must be given once (its default is not reachable by the kubelet's probes): \
             found {given:?}"
        ),
    };
    let (host, port) = listen
        .rsplit_once(':')
        .expect("a listen address has a port");
    assert!(
        host == "$(POD_IP)" || host == "0.0.0.0" || host == "[::]",
        "{flag} {listen} must be an address the kubelet's probes reach (the pod IP, which \
         with hostNetwork is the node's)"
    );
    port.parse().expect("the port is a number")
}

#[test]
fn probes_reach_the_address_the_agent_listens_on() {
    let rendered = rendered();
    let agent = agent(pod_spec(daemon_set(&rendered)));
    let args = agent.args.clone().unwrap_or_default();
    let metrics = probed_port(&args, "--metrics-addr", None);
    let healthz = probed_port(&args, "--healthz-bind-address", Some("0.0.0.0:10256"));

    // Readiness from the metrics port (first sync done, syncs fresh); liveness from
    // kube-proxy's /livez (syncs fresh, whatever the Node's state).
    for (probe, path, port, listener) in [
        (
            agent.readiness_probe.as_ref(),
            "/readyz",
            metrics,
            "--metrics-addr",
        ),
        (
            agent.liveness_probe.as_ref(),
            "/livez",
            healthz,
            "--healthz-bind-address",
        ),
    ] {
        let container_port = agent
            .ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|p| p.container_port == port)
            .unwrap_or_else(|| panic!("no containerPort {port} for the {listener} listener"));
        let http = probe
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("no HTTP probe for {path}"));
        assert_eq!(http.path.as_deref(), Some(path), "probe path");
        assert!(
            http.host.is_none(),
            "{path} probe goes to the pod IP the agent listens on"
        );
        let reaches = match &http.port {
            IntOrString::Int(n) => *n == port,
            IntOrString::String(name) => container_port.name.as_deref() == Some(name.as_str()),
        };
        assert!(
            reaches,
            "the {path} probe port {:?} is not the {listener} port {port}",
            http.port
        );
    }
}

#[test]
fn configmap_holds_values_the_agent_accepts() {
    let rendered = rendered();
    let config = only(&rendered.config_maps, "ConfigMap");
    let data = config.data.clone().unwrap_or_default();
    let get = |key: &str| {
        data.get(key)
            .unwrap_or_else(|| panic!("ConfigMap lacks {key}"))
            .clone()
    };

    for iface in get("interfaces").split(',') {
        assert!(
            !iface.is_empty() && iface.len() < 16 && !iface.contains(['/', ' ', ':']),
            "interface name {iface:?} is not a Linux interface name"
        );
    }
    for cidr in get("nodeport-addresses").split(',') {
        cidr.parse::<ipnet::IpNet>()
            .unwrap_or_else(|e| panic!("nodeport-addresses {cidr:?}: {e}"));
    }
    let mode = get("xdp-mode");
    assert!(
        ["auto", "native", "generic", "off"].contains(&mode.as_str()),
        "xdp-mode {mode:?}"
    );
}
