//! `slicelb_build_info`: which build runs on which kernel, as a gauge of 1 whose labels say it
//! (the usual Prometheus idiom, so that a query can join on it).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Said where the build had no git checkout (e.g. an image built without `.git`) or the
/// kernel's release cannot be read.
pub const UNKNOWN: &str = "unknown";

/// The labels of `slicelb_build_info`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildInfo {
    /// The crate's version.
    pub version: String,
    /// The git commit built (`build.rs` sets `SLICELB_GIT_COMMIT`), or "unknown".
    pub commit: String,
    /// The running kernel's release (`uname -r`), read at start.
    pub kernel: String,
}

impl BuildInfo {
    /// This binary on this kernel.
    pub fn current() -> Self {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|release| release.trim().to_owned())
            .ok()
            .filter(|release| !release.is_empty())
            .unwrap_or_else(|| UNKNOWN.to_owned());
        Self {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            commit: option_env!("SLICELB_GIT_COMMIT")
                .filter(|commit| !commit.is_empty())
                .unwrap_or(UNKNOWN)
                .to_owned(),
            kernel,
        }
    }

    pub(super) fn register(self, registry: &mut Registry) {
        let info = Family::<Self, Gauge>::default();
        info.get_or_create(&self).set(1);
        registry.register(
            "build_info",
            "1, labelled with the agent's version, the git commit it was built from and the \
             kernel's release",
            info,
        );
    }
}
