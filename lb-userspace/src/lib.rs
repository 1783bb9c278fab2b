//! slicelb: a Kubernetes Service load balancer in the Linux kernel.
//!
//! Data flows one way: [`source`] → [`model`] (pure) → [`diff`] → map writer
//! ([`dataplane`]) → kernel maps, read back by the operator commands in [`cli`]. Beside the
//! maps the agent serves [`metrics`] and kube-proxy's [`health`] endpoints, over [`http`].

pub mod agent;
pub mod cli;
pub mod dataplane;
pub mod diff;
pub mod health;
pub mod http;
pub mod metrics;
pub mod model;
pub mod source;
