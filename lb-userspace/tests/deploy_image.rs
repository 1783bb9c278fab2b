//! The Dockerfile cannot be built here (no Docker engine), so this checks what can be checked
//! without one: its toolchain pins are the ones the build really uses, the nightly's LLVM
//! library it links bpf-linker against exists under that name, and it ships the binary the
//! DaemonSet runs on a base that has what the DaemonSet's init step calls.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

fn workspace_file(path: &str) -> String {
    let full = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {full:?}: {e}"))
}

/// `ARG NAME=value` defaults of the Dockerfile.
fn dockerfile_args(dockerfile: &str) -> BTreeMap<String, String> {
    dockerfile
        .lines()
        .filter_map(|line| line.trim().strip_prefix("ARG "))
        .filter_map(|arg| arg.split_once('='))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect()
}

fn arg<'a>(args: &'a BTreeMap<String, String>, name: &str) -> &'a str {
    args.get(name)
        .unwrap_or_else(|| panic!("the Dockerfile has no default for ARG {name}"))
}

/// The quoted value of `const NAME: &str = "value";` in a Rust source file.
fn rust_const(source: &str, name: &str) -> String {
    let line = source
        .lines()
        .find(|line| line.contains(&format!("const {name}: &str")))
        .unwrap_or_else(|| panic!("no const {name}"));
    line.split('"')
        .nth(1)
        .unwrap_or_else(|| panic!("const {name} is not a string literal"))
        .to_owned()
}

fn version_parts(version: &str) -> Vec<u32> {
    version
        .split('.')
        .map(|part| {
            part.parse()
                .unwrap_or_else(|_| panic!("{version} is not a version"))
        })
        .collect()
}

#[test]
fn dockerfile_builds_with_the_toolchains_the_workspace_pins() {
    let args = dockerfile_args(&workspace_file("Dockerfile"));
    // Both build scripts include it; it names the nightly that builds the eBPF crates.
    let build_script = workspace_file("ebpf-build.rs");
    assert_eq!(
        arg(&args, "EBPF_TOOLCHAIN"),
        rust_const(&build_script, "DEFAULT_EBPF_TOOLCHAIN"),
        "the image must build the eBPF programs with the nightly ebpf-build.rs uses"
    );

    let manifest = workspace_file("Cargo.toml");
    let minimum = manifest
        .lines()
        .find_map(|line| line.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_owned())
        .expect("the workspace declares rust-version");
    let image_rust = arg(&args, "RUST_VERSION");
    assert!(
        version_parts(image_rust) >= version_parts(&minimum),
        "the image's Rust {image_rust} is older than the workspace's rust-version {minimum}"
    );
}

#[test]
fn the_nightly_ships_the_llvm_library_the_dockerfile_links_bpf_linker_against() {
    let args = dockerfile_args(&workspace_file("Dockerfile"));
    let nightly = arg(&args, "EBPF_TOOLCHAIN");
    let library = arg(&args, "NIGHTLY_LIBLLVM");
    let output = Command::new("rustc")
        .arg(format!("+{nightly}"))
        .args(["--print", "sysroot"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run rustc +{nightly}: {e}"));
    assert!(
        output.status.success(),
        "rustc +{nightly} --print sysroot failed (is the pinned nightly installed? \
         `cargo xtask setup` installs it): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let path = sysroot.join("lib").join(library);
    assert!(
        path.is_file(),
        "{path:?} does not exist: NIGHTLY_LIBLLVM in the Dockerfile must name the LLVM library \
         of {nightly}"
    );
}

#[test]
fn image_ships_slicelb_on_a_base_with_a_shell_for_the_init_step() {
    let dockerfile = workspace_file("Dockerfile");
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|line| line.starts_with("FROM "))
        .collect();
    let runtime = stages.last().expect("the Dockerfile has a FROM");
    assert!(
        runtime.contains("debian") && runtime.contains("-slim"),
        "the DaemonSet's init step runs sh, stat and mount, so the runtime stage must be a \
         Debian base (found {runtime:?})"
    );
    assert!(
        dockerfile.contains("--bin slicelb") && dockerfile.contains("/usr/local/bin/slicelb"),
        "the image must build the slicelb binary and put it on PATH, where the DaemonSet's \
         `command: [slicelb]` finds it"
    );
    let daemonset = workspace_file("deploy/base/daemonset.yaml");
    assert!(
        daemonset.contains("command: [slicelb]") && daemonset.contains("- sh"),
        "this test assumes the DaemonSet runs `slicelb` and an sh init step; update it with them"
    );
}
