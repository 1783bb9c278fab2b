//! The manifests in `deploy/` as a cluster would take them: rendered by `kubectl kustomize`,
//! checked against the Kubernetes 1.33 schemas in strict mode, then read back with
//! k8s-openapi types to check what the schemas cannot (RBAC scope, references between
//! objects, and that the DaemonSet configures the agent with variables and values that
//! `slicelb agent` itself accepts). `deploy/` itself renders the base; the two overlays
//! (beside kube-proxy, instead of it) are rendered and checked the same way, plus what each
//! changes.
//!
//! Needs `kubectl` (client only) and `kubernetes-validate` (PyPI, in `cargo xtask setup`'s
//! virtual environment) on PATH; fails naming the missing tool and how to install it.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use clap::{CommandFactory as _, Parser as _};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, PodSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize as _;
use slicelb::cli::{AgentArgs, Cli, ENV_PREFIX};

const NAMESPACE: &str = "slicelb-system";
const SCHEMA_VERSION: &str = "1.33.0";
const VALIDATOR: &str = "kubernetes-validate";
const VALIDATOR_INSTALL: &str = "run `cargo xtask setup`, which installs it into \
     ~/.cache/slicelb/venv/bin, and put that directory on PATH (`cargo xtask test` does)";
const AGENT_CONTAINER: &str = "agent";
const BPFFS: &str = "/sys/fs/bpf";
/// The agent's directory in the host's BPF filesystem.
const PIN_DIR: &str = "slicelb";

/// The kustomizations users apply, relative to `deploy/`: the base as it is, and the
/// overlays for running beside kube-proxy or instead of it.
const KUSTOMIZATIONS: [&str; 3] = [".", BESIDE_KUBE_PROXY, INSTEAD_OF_KUBE_PROXY];
const BESIDE_KUBE_PROXY: &str = "overlays/beside-kube-proxy";
const INSTEAD_OF_KUBE_PROXY: &str = "overlays/instead-of-kube-proxy";
/// The proxy name the beside overlay gives the agents (`--service-proxy-name`).
const PROXY_NAME: &str = "slicelb";
/// The port kube-proxy's health endpoint holds on every node.
const KUBE_PROXY_HEALTHZ_PORT: i32 = 10256;

fn deploy_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// `kubectl kustomize deploy/`, or a panic that says why not.
fn render() -> String {
    render_kustomization(".")
}

/// `kubectl kustomize deploy/<kustomization>`, or a panic that says why not.
fn render_kustomization(kustomization: &str) -> String {
    let dir = deploy_dir().join(kustomization);
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

/// Every kustomization of [`KUSTOMIZATIONS`], rendered and parsed, with its name.
fn every_rendered() -> Vec<(&'static str, Rendered)> {
    KUSTOMIZATIONS
        .iter()
        .map(|name| (*name, parse(&render_kustomization(name))))
        .collect()
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
    for kustomization in KUSTOMIZATIONS {
        validate_strictly(kustomization);
    }
}

/// Renders `deploy/<kustomization>`, validates it against the Kubernetes schemas in strict
/// mode, and checks that every namespaced object lands in the agent's namespace.
fn validate_strictly(kustomization: &str) {
    let yaml = render_kustomization(kustomization);
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
        "deploy/{kustomization} does not validate against Kubernetes {SCHEMA_VERSION} \
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
            "deploy/{kustomization}: {kind} {:?} should live in {NAMESPACE}",
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
        .find(|e| e.name == "SLICELB_NODE_NAME")
        .and_then(|e| e.value_from.as_ref())
        .and_then(|source| source.field_ref.as_ref())
        .map(|field| field.field_path.as_str());
    assert_eq!(
        node_name,
        Some("spec.nodeName"),
        "SLICELB_NODE_NAME from the downward API"
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
    let settings = agent_settings(&rendered, agent, "198.18.0.10");
    assert_eq!(
        settings.pin_path,
        PathBuf::from(&mount.mount_path),
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
    let settings = agent_settings(&rendered, agent, "198.18.0.10");
    assert!(
        !settings.no_socket_lb,
        "socket-level balancing must be on: pods and the node need it without kube-proxy"
    );
    let root = settings
        .cgroup_root
        .as_ref()
        .expect("--cgroup-root names the host's cgroup root (the container's own is not)");
    let mount = agent
        .volume_mounts
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|m| root == &PathBuf::from(&m.mount_path))
        .unwrap_or_else(|| {
            panic!(
                "--cgroup-root {} is not a volume mount of the agent",
                root.display()
            )
        });
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

/// Kubernetes' `$(VAR)` expansion of an env value (from the variables listed before it); an
/// undefined variable is an error here (the kubelet would pass the text through unchanged,
/// which the agent would then reject).
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
            let value = expand(value, &env).unwrap_or_else(|e| panic!("env {}: {e}", var.name));
            env.insert(var.name.clone(), value);
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

/// The agent's command line as `slicelb agent` reads the container: its args, then each
/// `SLICELB_` variable of `env` as the flag that reads it (clap reads a flag's variable only
/// when the flag is absent, so both say the same). Panics on a `SLICELB_` variable that no
/// flag of `slicelb agent` reads: a typo in the DaemonSet would otherwise be ignored.
fn agent_command_line(args: &[String], env: &BTreeMap<String, String>) -> Vec<String> {
    let mut cli = Cli::command();
    // Puts the global flags (--log-format, --log-level) into the subcommands.
    cli.build();
    let agent = cli.find_subcommand("agent").expect("an agent subcommand");
    let flags: BTreeMap<String, &clap::Arg> = agent
        .get_arguments()
        .filter_map(|arg| Some((arg.get_env()?.to_str()?.to_owned(), arg)))
        .collect();
    let mut line = vec!["slicelb".to_owned()];
    line.extend(args.iter().cloned());
    for (name, value) in env.iter().filter(|(name, _)| name.starts_with(ENV_PREFIX)) {
        let arg = flags.get(name).unwrap_or_else(|| {
            panic!(
                "the DaemonSet sets {name}, which no flag of `slicelb agent` reads; known: {:?}",
                flags.keys()
            )
        });
        let long = arg
            .get_long()
            .expect("a flag with a variable has a long name");
        if arg.get_action().takes_values() {
            line.push(format!("--{long}={value}"));
        } else {
            match value.as_str() {
                "true" => line.push(format!("--{long}")),
                "false" => {}
                other => panic!("{name}={other:?}: a switch is true or false"),
            }
        }
    }
    line
}

/// What `slicelb agent` makes of the container on a node whose pod IP is `pod_ip`, parsed by
/// the agent's own command line definition (value parsers, one source, conflicts).
fn agent_settings(rendered: &Rendered, container: &Container, pod_ip: &str) -> AgentArgs {
    let env = agent_env(rendered, container, pod_ip);
    let line = agent_command_line(container.args.as_deref().unwrap_or_default(), &env);
    match Cli::try_parse_from(&line) {
        Ok(Cli {
            command: slicelb::cli::Command::Agent(settings),
            ..
        }) => settings,
        Ok(other) => panic!("{line:?} is not the agent: {:?}", other.command),
        Err(error) => panic!(
            "the agent rejects the DaemonSet's settings on a node with pod IP {pod_ip}: \
             {line:?}\n{error}"
        ),
    }
}

fn run_agent(args: &[String]) -> std::process::Output {
    let binary = env!("CARGO_BIN_EXE_slicelb");
    Command::new(binary)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {binary}: {e}"))
}

#[test]
fn helpers_read_flags_and_expand_variables() {
    let env = BTreeMap::from([("POD_IP".to_owned(), "198.18.0.10".to_owned())]);
    assert_eq!(
        expand("$(POD_IP):9400", &env).as_deref(),
        Ok("198.18.0.10:9400")
    );
    assert!(
        expand("$(MISSING)", &env).is_err(),
        "an undefined variable is an error"
    );

    let from_env = BTreeMap::from(
        [
            ("SLICELB_IFACE", "eth0,eth1"),
            ("SLICELB_IN_CLUSTER", "true"),
            ("SLICELB_NO_SOCKET_LB", "false"),
            ("POD_IP", "198.18.0.10"),
        ]
        .map(|(name, value)| (name.to_owned(), value.to_owned())),
    );
    assert_eq!(
        agent_command_line(&["agent".to_owned()], &from_env),
        ["slicelb", "agent", "--iface=eth0,eth1", "--in-cluster"]
    );
}

#[test]
#[should_panic(expected = "SLICELB_IFACES, which no flag of `slicelb agent` reads")]
fn a_misspelt_variable_is_refused() {
    let env = BTreeMap::from([("SLICELB_IFACES".to_owned(), "eth0".to_owned())]);
    agent_command_line(&["agent".to_owned()], &env);
}

#[test]
fn daemonset_configures_the_agent_with_variables_and_values_it_accepts() {
    for (kustomization, rendered) in every_rendered() {
        check_agent_settings(kustomization, &rendered);
    }
}

/// The agent container of `deploy/<kustomization>` runs `slicelb agent` configured by
/// variables its flags read, with values its parsers accept, on an IPv4 and an IPv6 node.
fn check_agent_settings(kustomization: &str, rendered: &Rendered) {
    let pod = pod_spec(daemon_set(rendered));
    let agent = agent(pod);
    assert_eq!(
        agent.command.as_deref(),
        Some(&["slicelb".to_owned()][..]),
        "the container runs the slicelb binary"
    );
    assert_eq!(
        agent.args.as_deref(),
        Some(&["agent".to_owned()][..]),
        "the agent subcommand, every flag from the environment"
    );

    // The built binary shows each variable the DaemonSet sets in its --help.
    let help = run_agent(&["agent".to_owned(), "--help".to_owned()]);
    let help_text = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.status.success(),
        "`slicelb agent --help` failed ({}):\n{help_text}{}",
        help.status,
        String::from_utf8_lossy(&help.stderr)
    );
    let env = agent_env(rendered, agent, "198.18.0.10");
    for name in env.keys().filter(|name| name.starts_with(ENV_PREFIX)) {
        assert!(
            help_text.contains(&format!("[env: {name}")),
            "deploy/{kustomization}: `slicelb agent --help` does not show {name}:\n{help_text}"
        );
    }

    for pod_ip in ["198.18.0.10", "2001:2::10"] {
        let settings = agent_settings(rendered, agent, pod_ip);
        assert!(
            !settings.ifaces.is_empty(),
            "deploy/{kustomization}: the DaemonSet must set interfaces"
        );
        let source = &settings.source;
        assert!(
            source.in_cluster && source.manifest_dir.is_none() && source.kubeconfig.is_none(),
            "deploy/{kustomization}: exactly one source, the in-cluster API: {source:?}"
        );
        assert_eq!(
            settings.node_name.as_deref(),
            Some("node-1"),
            "deploy/{kustomization}: the node's name"
        );
    }
}

/// The port the agent listens on at `listen` (`flag`), after checking that the kubelet's
/// probes reach its address: the pod IP (with hostNetwork the node's), or every address.
fn probed_port(listen: Option<std::net::SocketAddr>, flag: &str, pod_ip: IpAddr) -> i32 {
    let listen = listen.unwrap_or_else(|| panic!("{flag} must serve: the kubelet probes it"));
    assert!(
        listen.ip() == pod_ip || listen.ip().is_unspecified(),
        "{flag} {listen} must be an address the kubelet's probes reach (the pod IP {pod_ip}, \
         which with hostNetwork is the node's)"
    );
    i32::from(listen.port())
}

#[test]
fn probes_reach_the_address_the_agent_listens_on() {
    for (kustomization, rendered) in every_rendered() {
        check_probes(kustomization, &rendered);
    }
}

/// The agent's healthz port in `deploy/<kustomization>`, after checking every probe of the
/// agent reaches a port it listens on.
fn check_probes(kustomization: &str, rendered: &Rendered) -> i32 {
    let agent = agent(pod_spec(daemon_set(rendered)));
    let pod_ip = "198.18.0.10";
    let settings = agent_settings(rendered, agent, pod_ip);
    let pod_ip: IpAddr = pod_ip.parse().expect("an address");
    let metrics = probed_port(Some(settings.metrics_addr), "--metrics-addr", pod_ip);
    let healthz = probed_port(
        settings.healthz_bind_address,
        "--healthz-bind-address",
        pod_ip,
    );

    // Start-up and readiness from the metrics port (first sync done, syncs fresh): /livez
    // answers 200 while the agent starts, so a start-up probe on it would pass at once.
    // Liveness from kube-proxy's /livez (syncs fresh, whatever the Node's state).
    for (probe, path, port, listener) in [
        (
            agent.startup_probe.as_ref(),
            "/readyz",
            metrics,
            "--metrics-addr",
        ),
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
            .unwrap_or_else(|| {
                panic!(
                    "deploy/{kustomization}: no containerPort {port} for the {listener} listener"
                )
            });
        let http = probe
            .and_then(|p| p.http_get.as_ref())
            .unwrap_or_else(|| panic!("deploy/{kustomization}: no HTTP probe for {path}"));
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
            "deploy/{kustomization}: the {path} probe port {:?} is not the {listener} port \
             {port}",
            http.port
        );
    }

    // The kubelet asks nothing else until the start-up probe passes: it must give a first
    // sync at least the time liveness gives a stuck one before restarting the agent.
    let budget = |probe: Option<&k8s_openapi::api::core::v1::Probe>| {
        let probe = probe.expect("probe");
        probe.period_seconds.unwrap_or(10) * probe.failure_threshold.unwrap_or(3)
            + probe.initial_delay_seconds.unwrap_or(0)
    };
    assert!(
        budget(agent.startup_probe.as_ref()) >= budget(agent.liveness_probe.as_ref()),
        "deploy/{kustomization}: the start-up probe gives up sooner than liveness would"
    );
    healthz
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

#[test]
fn beside_kube_proxy_overlay_serves_only_labelled_services_off_kube_proxys_health_port() {
    let rendered = parse(&render_kustomization(BESIDE_KUBE_PROXY));
    let settings = agent_settings(
        &rendered,
        agent(pod_spec(daemon_set(&rendered))),
        "198.18.0.10",
    );
    assert_eq!(
        settings.service_proxy_name.as_deref(),
        Some(PROXY_NAME),
        "beside kube-proxy the agents serve only the Services labelled \
         service.kubernetes.io/service-proxy-name={PROXY_NAME}"
    );
    let healthz = check_probes(BESIDE_KUBE_PROXY, &rendered);
    assert_ne!(
        healthz, KUBE_PROXY_HEALTHZ_PORT,
        "beside kube-proxy, which holds {KUBE_PROXY_HEALTHZ_PORT}, the agent's health \
         endpoint (and its liveness probe) must be on another port"
    );
}

#[test]
fn instead_of_kube_proxy_overlay_serves_every_service_and_reaches_the_api_server_directly() {
    let rendered = parse(&render_kustomization(INSTEAD_OF_KUBE_PROXY));
    let agent = agent(pod_spec(daemon_set(&rendered)));
    let settings = agent_settings(&rendered, agent, "198.18.0.10");
    assert_eq!(
        settings.service_proxy_name, None,
        "instead of kube-proxy the agents serve every Service without the proxy-name label, \
         as kube-proxy does, so no --service-proxy-name"
    );
    assert_eq!(
        check_probes(INSTEAD_OF_KUBE_PROXY, &rendered),
        KUBE_PROXY_HEALTHZ_PORT,
        "instead of kube-proxy the agent answers kube-proxy's health paths on its port, where \
         load balancers already ask"
    );
    // Nothing translates the `kubernetes` Service address before the agent's first sync.
    let env = agent_env(&rendered, agent, "198.18.0.10");
    let host = env.get("KUBERNETES_SERVICE_HOST").map(String::as_str);
    assert!(
        host.is_some_and(|host| !host.is_empty()),
        "without kube-proxy the agent needs the API server's own address in \
         KUBERNETES_SERVICE_HOST, has {host:?}"
    );
    let port = env.get("KUBERNETES_SERVICE_PORT");
    assert!(
        port.and_then(|p| p.parse::<u16>().ok()).is_some(),
        "KUBERNETES_SERVICE_PORT must be a port, is {port:?}"
    );
}

/// Kernel map memory at the default sizes, which the first agent on a node creates and the
/// kernel charges to its container: fdinfo `memlock` of every map, measured on a 2-CPU
/// node (358 MiB), as a fixed part and the per-CPU service counters.
const MAP_MEMORY_FIXED_MIB: u64 = 350;
const MAP_MEMORY_PER_CPU_MIB: u64 = 4;
/// The agent's peak RSS at 10 000 Services x 10 endpoints
/// (bench/results/2026-11-27-vm.md, "Control plane").
const PEAK_RSS_10K_SERVICES_MIB: u64 = 188;

/// A memory quantity in MiB; only the binary suffixes the manifests use.
fn mebibytes(quantity: &str) -> u64 {
    let (number, scale) = [("Gi", 1024), ("Mi", 1)]
        .iter()
        .find_map(|(suffix, scale)| quantity.strip_suffix(suffix).map(|n| (n, *scale)))
        .unwrap_or_else(|| panic!("memory {quantity:?}: write it in Mi or Gi"));
    number.parse::<u64>().expect("a whole number") * scale
}

#[test]
fn agent_memory_covers_the_maps_and_the_measured_peak_heap() {
    let rendered = rendered();
    let resources = agent(pod_spec(daemon_set(&rendered)))
        .resources
        .as_ref()
        .expect("agent resources");
    let memory = |list: Option<
        &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >| { mebibytes(&list.and_then(|l| l.get("memory")).expect("memory").0) };
    let request = memory(resources.requests.as_ref());
    let limit = memory(resources.limits.as_ref());
    let needed = |cpus: u64| {
        MAP_MEMORY_FIXED_MIB + MAP_MEMORY_PER_CPU_MIB * cpus + PEAK_RSS_10K_SERVICES_MIB
    };
    assert!(
        request >= needed(16),
        "the request ({request} MiB) should hold a 16-CPU node's maps and the agent at \
         10 000 Services x 10 endpoints ({} MiB)",
        needed(16)
    );
    assert!(
        limit >= needed(128),
        "the limit ({limit} MiB) should hold a 128-CPU node's maps and the agent at \
         10 000 Services x 10 endpoints ({} MiB): a first start over it fails with ENOMEM",
        needed(128)
    );
}

/// The optional Prometheus-operator objects, `deploy/monitoring/`.
const MONITORING_DIR: &str = "monitoring";
const MONITORING_API: &str = "monitoring.coreos.com/v1";

/// `kubectl kustomize deploy/monitoring/` as untyped documents (k8s-openapi has no types for
/// the operator's CRDs), by kind.
fn rendered_monitoring() -> BTreeMap<String, Vec<serde_norway::Value>> {
    let yaml = render_kustomization(MONITORING_DIR);
    let mut by_kind = BTreeMap::<String, Vec<serde_norway::Value>>::new();
    for document in serde_norway::Deserializer::from_str(&yaml) {
        let doc = serde_norway::Value::deserialize(document).expect("rendered YAML parses");
        assert_eq!(
            doc["apiVersion"].as_str(),
            Some(MONITORING_API),
            "deploy/monitoring/ should hold only Prometheus-operator objects: {doc:?}"
        );
        assert_eq!(
            doc["metadata"]["namespace"].as_str(),
            Some(NAMESPACE),
            "{doc:?}"
        );
        let kind = doc["kind"].as_str().unwrap_or("<no kind>").to_owned();
        by_kind.entry(kind).or_default().push(doc);
    }
    by_kind
}

/// A kernel that reports nothing: enough for the registry to write every family's name.
struct NoKernel;

impl slicelb::metrics::KernelStats for NoKernel {
    fn service_counters(
        &self,
    ) -> Result<Vec<(String, lb_common::ServiceCounters)>, slicelb::dataplane::DataplaneError> {
        Ok(Vec::new())
    }
    fn reason_counters(
        &self,
    ) -> Result<[u64; lb_common::Reason::COUNT as usize], slicelb::dataplane::DataplaneError> {
        Ok([0; lb_common::Reason::COUNT as usize])
    }
    fn proto_counters(
        &self,
    ) -> Result<[u64; lb_common::ProtoCounter::COUNT as usize], slicelb::dataplane::DataplaneError>
    {
        Ok([0; lb_common::ProtoCounter::COUNT as usize])
    }
    fn socket_counters(
        &self,
    ) -> Result<[u64; lb_common::SocketCounter::COUNT as usize], slicelb::dataplane::DataplaneError>
    {
        Ok([0; lb_common::SocketCounter::COUNT as usize])
    }
    fn fast_path_counters(
        &self,
    ) -> Result<[u64; lb_common::FastPathCounter::COUNT as usize], slicelb::dataplane::DataplaneError>
    {
        Ok([0; lb_common::FastPathCounter::COUNT as usize])
    }
    fn conntrack_entries(&self) -> Result<u64, slicelb::dataplane::DataplaneError> {
        Ok(0)
    }
    fn map_fill(
        &self,
        _: Option<u64>,
    ) -> Result<Vec<slicelb::metrics::MapFill>, slicelb::dataplane::DataplaneError> {
        Ok(Vec::new())
    }
}

/// Every sample name the agent's registry can write: each `# TYPE` line's family, with a
/// histogram's `_bucket`, `_sum` and `_count`.
fn served_metric_names() -> BTreeSet<String> {
    let metrics = slicelb::metrics::Metrics::new(
        std::sync::Arc::new(NoKernel),
        slicelb::health::SyncHealth::new(std::time::Duration::from_secs(60)),
    );
    let text = metrics.encode_text().expect("encode the registry");
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(declared) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = declared.split_once(' ').expect("# TYPE name kind");
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        } else {
            names.insert(name.to_owned());
        }
    }
    names
}

/// The metric names a PromQL expression reads: identifiers of ours (`slicelb_…`) or the
/// process's (`process_…`), i.e. not functions, keywords or label names.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut word = String::new();
    let mut in_string = false;
    for c in expr.chars().chain([' ']) {
        if c == '"' {
            in_string = !in_string;
            word.clear();
        } else if !in_string && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
        } else {
            if word.starts_with("slicelb_") || word.starts_with("process_") {
                names.push(word.clone());
            }
            word.clear();
        }
    }
    names
}

#[test]
fn metrics_in_reads_the_metric_names_of_an_expression() {
    assert_eq!(
        metrics_in(
            r#"sum by (node) (rate(slicelb_datapath_verdicts_total{reason="slicelb_x"}[5m])) / process_open_fds"#
        ),
        ["slicelb_datapath_verdicts_total", "process_open_fds"]
    );
}

/// The PodMonitor selects the pods of `name`'s DaemonSet and scrapes the agent's metrics port.
fn check_pod_monitor_reaches_the_agent(
    name: &str,
    rendered: &Rendered,
    pod_monitor: &serde_norway::Value,
) {
    let template = &daemon_set(rendered).spec.as_ref().expect("spec").template;
    let pod_labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let selector = pod_monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("the PodMonitor selects by matchLabels");
    assert!(!selector.is_empty(), "an empty selector selects every pod");
    for (key, value) in selector {
        let (key, value) = (key.as_str().expect("key"), value.as_str().expect("value"));
        assert_eq!(
            pod_labels.get(key).map(String::as_str),
            Some(value),
            "the PodMonitor selects {key}={value}, which the pods of deploy/{name} do not carry"
        );
    }
    let ports: Vec<&str> = agent(pod_spec(daemon_set(rendered)))
        .ports
        .iter()
        .flatten()
        .filter_map(|port| port.name.as_deref())
        .collect();
    let endpoints = pod_monitor["spec"]["podMetricsEndpoints"]
        .as_sequence()
        .expect("podMetricsEndpoints");
    assert!(!endpoints.is_empty(), "the PodMonitor scrapes something");
    for endpoint in endpoints {
        let port = endpoint["port"].as_str().expect("a named port");
        assert_eq!(
            port, "metrics",
            "the PodMonitor should scrape the agent's metrics port"
        );
        assert!(
            ports.contains(&port),
            "deploy/{name}: the agent has no port {port}: {ports:?}"
        );
        assert_eq!(endpoint["path"].as_str(), Some("/metrics"));
    }
}

#[test]
fn monitoring_scrapes_the_agents_metrics_port_and_alerts_on_metrics_it_serves() {
    let monitoring = rendered_monitoring();
    let pod_monitors = monitoring
        .get("PodMonitor")
        .map(Vec::as_slice)
        .unwrap_or_default();
    let pod_monitor = only(pod_monitors, "PodMonitor in deploy/monitoring/");
    for (name, rendered) in every_rendered() {
        // The agent needs no Prometheus operator: no object of its API, base or overlay.
        assert!(
            !render_kustomization(name).contains("monitoring.coreos.com"),
            "deploy/{name} must render without the Prometheus operator's CRDs"
        );
        check_pod_monitor_reaches_the_agent(name, &rendered, pod_monitor);
    }

    let served = served_metric_names();
    let rules = monitoring
        .get("PrometheusRule")
        .map(Vec::as_slice)
        .unwrap_or_default();
    let rule = only(rules, "PrometheusRule in deploy/monitoring/");
    let mut alerts = BTreeSet::new();
    for group in rule["spec"]["groups"].as_sequence().expect("groups") {
        for alert in group["rules"].as_sequence().expect("rules") {
            let name = alert["alert"].as_str().expect("every rule is an alert");
            let expr = alert["expr"].as_str().expect("every alert has an expr");
            let read = metrics_in(expr);
            assert!(!read.is_empty(), "{name}: {expr:?} reads no metric of ours");
            for metric in read {
                assert!(
                    served.contains(&metric),
                    "{name}: {metric} is not a metric the agent serves; it serves {served:?}"
                );
            }
            alerts.insert(name.to_owned());
        }
    }
    for wanted in ["SlicelbSyncStale", "SlicelbMapNearlyFull", "SlicelbDrops"] {
        assert!(alerts.contains(wanted), "{wanted} is missing: {alerts:?}");
    }
}
