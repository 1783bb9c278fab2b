//! The model: Kubernetes semantics as pure code. A [`Snapshot`] of Services, EndpointSlices
//! and this node goes in; the desired datapath tables come out. No IO, no `kube`, no `aya`:
//! everything here is tested with ordinary `#[test]`s.

pub mod snapshot;

pub use snapshot::{NodeInfo, Snapshot};
