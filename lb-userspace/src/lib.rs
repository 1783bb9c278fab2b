//! slicelb: a Kubernetes Service load balancer in the Linux kernel.
//!
//! Data flows one way: [`source`] → [`model`] (pure) → [`diff`] → map writer
//! ([`dataplane`]) → kernel maps, read back by the operator commands in [`cli`].

pub mod agent;
pub mod cli;
pub mod dataplane;
pub mod diff;
pub mod metrics;
pub mod model;
pub mod source;
