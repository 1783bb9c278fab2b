//! `cargo xtask run --kind`: slicelb on a local kind cluster. Builds the image, loads it into
//! the cluster's nodes, applies `deploy/`, waits for the DaemonSet, and shows what one node's
//! agent has programmed.
//!
//! Needs a reachable Docker engine, `kind` and `kubectl`. Where one is missing it says so in
//! one line and fails, without touching anything.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context as _};

/// The image the manifests name (`deploy/base/kustomization.yaml`: `slicelb`, tag `0.1.0`).
const IMAGE: &str = "slicelb:0.1.0";
const NAMESPACE: &str = "slicelb-system";
const DAEMON_SET: &str = "daemonset/slicelb";
const POD_SELECTOR: &str = "app.kubernetes.io/name=slicelb";
const AGENT_CONTAINER: &str = "agent";
const ROLLOUT_TIMEOUT: &str = "--timeout=300s";

/// What a probe of one tool found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Probe {
    Ok,
    /// The program is not on PATH.
    NotFound,
    /// It ran and failed; the first line of what it said.
    Failed(String),
}

fn probe_command(program: &str, args: &[&str]) -> Probe {
    match Command::new(program).args(args).output() {
        Ok(output) if output.status.success() => Probe::Ok,
        Ok(output) => Probe::Failed(first_line(&output)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Probe::NotFound,
        Err(error) => Probe::Failed(error.to_string()),
    }
}

fn first_line(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let said = if stderr.trim().is_empty() {
        stdout
    } else {
        stderr
    };
    said.lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or("no output")
        .to_owned()
}

/// Everything kind mode lacks on this machine, as one line; `None` when nothing is missing.
fn missing_tools(probe: impl Fn(&str, &[&str]) -> Probe) -> Option<String> {
    let mut problems = Vec::new();
    match probe("docker", &["info", "--format", "{{.ServerVersion}}"]) {
        Probe::Ok => {}
        Probe::NotFound => problems.push("no `docker` on PATH".to_owned()),
        Probe::Failed(said) => problems.push(format!(
            "no reachable Docker engine (`docker info`: {said})"
        )),
    }
    for (tool, args) in [
        ("kind", &["version"][..]),
        ("kubectl", &["version", "--client"][..]),
    ] {
        match probe(tool, args) {
            Probe::Ok => {}
            Probe::NotFound => problems.push(format!("no `{tool}` on PATH")),
            Probe::Failed(said) => problems.push(format!("`{tool}` does not run ({said})")),
        }
    }
    if problems.is_empty() {
        None
    } else {
        Some(format!(
            "kind mode cannot run here: {}; install what is missing, or use the lab mode",
            problems.join("; ")
        ))
    }
}

fn workspace_root() -> PathBuf {
    let xtask_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask_dir.parent().unwrap_or(xtask_dir).to_path_buf()
}

/// Shows the command, runs it with the terminal attached, and fails naming it.
fn run(command: &mut Command) -> anyhow::Result<()> {
    println!("+ {}", shown(command));
    let status = command
        .status()
        .with_context(|| format!("could not start `{}`", shown(command)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", shown(command));
    }
    Ok(())
}

/// Runs the command and returns what it printed; fails naming it and its first error line.
fn capture(command: &mut Command) -> anyhow::Result<String> {
    let output = command
        .output()
        .with_context(|| format!("could not start `{}`", shown(command)))?;
    if !output.status.success() {
        bail!("`{}` failed: {}", shown(command), first_line(&output));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn shown(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    words.extend(command.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

/// `kubectl` aimed at the kind cluster's context, never at whatever context is current.
fn kubectl(cluster: &str) -> Command {
    let mut command = Command::new("kubectl");
    command.arg("--context").arg(format!("kind-{cluster}"));
    command
}

/// Builds the image, deploys it on the kind cluster `cluster` (creating the cluster if it
/// does not exist), waits for every node's agent, and prints one node's `slicelb services`.
pub fn run_kind(cluster: &str) -> anyhow::Result<()> {
    if let Some(line) = missing_tools(probe_command) {
        bail!(line);
    }
    let root = workspace_root();

    let clusters = capture(Command::new("kind").args(["get", "clusters"]))?;
    if !clusters.lines().any(|name| name.trim() == cluster) {
        run(Command::new("kind").args(["create", "cluster", "--name", cluster]))?;
    }

    run(Command::new("docker")
        .args(["build", "--tag", IMAGE])
        .arg(&root))?;
    run(Command::new("kind").args(["load", "docker-image", IMAGE, "--name", cluster]))?;

    run(kubectl(cluster)
        .arg("apply")
        .arg("-k")
        .arg(root.join("deploy")))?;
    // The tag stays the same across rebuilds, so restart to pick up the image just loaded.
    run(kubectl(cluster).args(["rollout", "restart", DAEMON_SET, "-n", NAMESPACE]))?;
    run(kubectl(cluster).args([
        "rollout",
        "status",
        DAEMON_SET,
        "-n",
        NAMESPACE,
        ROLLOUT_TIMEOUT,
    ]))?;

    let pod = capture(kubectl(cluster).args([
        "get",
        "pods",
        "-n",
        NAMESPACE,
        "-l",
        POD_SELECTOR,
        "--field-selector=status.phase=Running",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]))?;
    if pod.is_empty() {
        bail!(
            "the rollout finished but no slicelb pod is running in {NAMESPACE}; see \
             `kubectl --context kind-{cluster} -n {NAMESPACE} get pods`"
        );
    }
    let services = capture(kubectl(cluster).args([
        "exec",
        "-n",
        NAMESPACE,
        &pod,
        "-c",
        AGENT_CONTAINER,
        "--",
        "slicelb",
        "services",
    ]))?;
    println!("slicelb services on {pod}:\n{services}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe_with<'a>(results: &'a [(&'a str, Probe)]) -> impl Fn(&str, &[&str]) -> Probe + 'a {
        move |program, _args| {
            results
                .iter()
                .find(|(name, _)| *name == program)
                .map(|(_, probe)| probe.clone())
                .unwrap_or(Probe::Ok)
        }
    }

    #[test]
    fn nothing_missing_means_no_complaint() {
        assert_eq!(missing_tools(probe_with(&[])), None);
    }

    #[test]
    fn everything_missing_is_said_in_one_line() {
        let cannot_connect = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock";
        let line = missing_tools(probe_with(&[
            ("docker", Probe::Failed(cannot_connect.to_owned())),
            ("kind", Probe::NotFound),
            ("kubectl", Probe::NotFound),
        ]))
        .expect("missing tools are reported");
        assert!(!line.contains('\n'), "one line, got {line:?}");
        for part in [
            "Docker engine",
            cannot_connect,
            "no `kind` on PATH",
            "no `kubectl` on PATH",
        ] {
            assert!(line.contains(part), "{line:?} should mention {part:?}");
        }
    }

    #[test]
    fn a_missing_docker_cli_is_named() {
        let line = missing_tools(probe_with(&[("docker", Probe::NotFound)])).expect("reported");
        assert!(line.contains("no `docker` on PATH"), "{line:?}");
        assert!(!line.contains("kind`"), "kind was found: {line:?}");
    }

    #[test]
    fn the_image_is_the_one_the_manifests_name() {
        let kustomization = workspace_root().join("deploy/base/kustomization.yaml");
        let text = std::fs::read_to_string(&kustomization)
            .unwrap_or_else(|e| panic!("read {kustomization:?}: {e}"));
        let (name, tag) = IMAGE.split_once(':').expect("IMAGE has a tag");
        assert!(
            text.contains(&format!("- name: {name}\n"))
                && text.contains(&format!("newTag: {tag}\n")),
            "{kustomization:?} should set image {name} to tag {tag}, as kind mode loads {IMAGE}"
        );
    }
}
