//! Warnings: parts of the snapshot the model skipped, naming the object and the reason.

use std::fmt;

/// Which kind of Kubernetes object a warning is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    Service,
    EndpointSlice,
}

/// `Kind namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
        };
        write!(f, "{kind} {}/{}", self.namespace, self.name)
    }
}

/// Why part of an object was skipped.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WarningReason {
    #[error("{field} {value} is not a port number (1-65535); that port is skipped")]
    InvalidPort { field: &'static str, value: i64 },
    #[error("{field} {value:?} is not an IP address; it is skipped")]
    InvalidIp { field: &'static str, value: String },
    #[error(
        "loadBalancerSourceRanges entry {value:?} is not a CIDR; it admits no client (the \
         load-balancer frontends admit the other ranges only, or nobody)"
    )]
    InvalidSourceRange { value: String },
    #[error("protocol {value:?} is not TCP, UDP or SCTP; that port is skipped")]
    UnknownProtocol { value: String },
    #[error("port name {port:?} appears twice; the second is skipped")]
    DuplicatePort { port: String },
    #[error("addressType {value:?} is not IPv4 or IPv6; the slice is skipped")]
    UnknownAddressType { value: String },
    #[error("an endpoint has no address; it is skipped")]
    EndpointWithoutAddress,
    #[error("no valid cluster IP; the service is skipped")]
    NoValidClusterIp,
    #[error("a second {family} cluster IP {value} is ignored")]
    ExtraClusterIp { family: &'static str, value: String },
    #[error(
        "sessionAffinityConfig.clientIP.timeoutSeconds {value} is outside 1-86400; using {default}"
    )]
    InvalidAffinityTimeout { value: i64, default: u32 },
    #[error("sessionAffinity {value:?} is not None or ClientIP; no affinity")]
    UnknownAffinity { value: String },
    #[error("frontend {frontend} is already used by {owner}; it is skipped here")]
    FrontendConflict { frontend: String, owner: String },
    #[error(
        "a LoadBalancer with externalTrafficPolicy: Local but no spec.healthCheckNodePort; \
         load balancers cannot check which nodes have its endpoints"
    )]
    NoHealthCheckNodePort,
}

/// A part of the snapshot the model skipped, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    pub object: ObjectRef,
    pub reason: WarningReason,
}

impl Warning {
    /// Logs the warning with fields naming the object: `namespace` and `service` or `slice`.
    pub fn log(&self) {
        let ObjectRef {
            kind,
            namespace,
            name,
        } = &self.object;
        match kind {
            ObjectKind::Service => {
                tracing::warn!(%namespace, service = %name, "skipped: {}", self.reason);
            }
            ObjectKind::EndpointSlice => {
                tracing::warn!(%namespace, slice = %name, "skipped: {}", self.reason);
            }
        }
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.object, self.reason)
    }
}
