//! Builds the datapath's eBPF programs (`lb-ebpf`) with the pinned nightly and embeds the
//! object in `slicelb`; tells the binary which git commit it is built from
//! (`slicelb_build_info`).
include!("../ebpf-build.rs");

fn main() -> anyhow::Result<()> {
    set_git_commit();
    build_ebpf("lb-ebpf")
}

/// `SLICELB_GIT_COMMIT` for `option_env!`: the variable itself when the builder gives it (an
/// image built without `.git`), else `git rev-parse HEAD`, else nothing ("unknown").
fn set_git_commit() {
    println!("cargo:rerun-if-env-changed=SLICELB_GIT_COMMIT");
    if let Ok(commit) = std::env::var("SLICELB_GIT_COMMIT") {
        println!("cargo:rustc-env=SLICELB_GIT_COMMIT={commit}");
        return;
    }
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .and_then(|output| String::from_utf8(output.stdout).ok())
            .map(|text| text.trim().to_owned())
    };
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return;
    };
    println!("cargo:rustc-env=SLICELB_GIT_COMMIT={commit}");
    // Run again when HEAD moves: HEAD itself (a checkout) and the branch it names (a commit).
    // Only files that exist: a missing one would run this script (and the eBPF build) on
    // every build.
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    let watched = ["HEAD", "packed-refs"]
        .into_iter()
        .map(str::to_owned)
        .chain(branch);
    for path in watched.filter_map(|name| git(&["rev-parse", "--git-path", &name])) {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}
