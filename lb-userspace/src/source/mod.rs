//! Sources turn the world into [`crate::model::Snapshot`]s: Kubernetes, or a directory of manifests.
