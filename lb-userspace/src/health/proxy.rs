//! kube-proxy's health endpoint (`--healthz-bind-address`, `0.0.0.0:10256` by default):
//! `/healthz` for load balancers (503 while syncs are stale or the node is on its way out)
//! and `/livez` for the kubelet (503 while syncs are stale), with kube-proxy's JSON body,
//! status codes and headers (pkg/proxy/healthcheck/proxy_health.go).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use hyper::{
    Response, StatusCode,
    header::{HeaderName, HeaderValue},
};
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use super::{HealthError, ProxyHealth, SyncHealth};
use crate::http::{self, Body};

/// kube-proxy's default `--healthz-bind-address`.
pub const DEFAULT_HEALTHZ_BIND_ADDRESS: &str = "0.0.0.0:10256";

/// How often kube-proxy tries again to bind its health endpoint.
pub const BIND_RETRY: Duration = Duration::from_secs(5);

/// Go's zero `time.Time` in JSON: what kube-proxy reports before its first sync.
const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// The header kube-proxy sets on every health answer, so that browsers never guess a type.
pub(super) fn nosniff() -> (HeaderName, HeaderValue) {
    (
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    )
}

/// kube-proxy's `ProxyHealth` as `encoding/json` writes it: fields in this order, no spaces.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HealthBody {
    last_updated: String,
    current_time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_eligible: Option<bool>,
    healthy: bool,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    status: BTreeMap<&'static str, FamilyHealth>,
}

/// One IP family's proxier. One sync writes both families here, so both show the same.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FamilyHealth {
    last_updated: String,
    healthy: bool,
}

/// RFC 3339 with as many fractional digits as needed, in UTC: Go's `time.RFC3339Nano`.
fn go_time(time: Option<SystemTime>) -> String {
    let Some(time) = time else {
        return GO_ZERO_TIME.to_owned();
    };
    let since_epoch = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX);
    let nanos = since_epoch.subsec_nanos() as i32;
    Timestamp::new(seconds, nanos)
        .map(|timestamp| timestamp.to_string())
        .unwrap_or_else(|_| GO_ZERO_TIME.to_owned())
}

/// kube-proxy's answer to `path`: `/healthz`, `/livez`, or Go's 404 for anything else.
pub fn respond(path: &str, health: &ProxyHealth) -> Response<Body> {
    let with_node = match path {
        "/healthz" => true,
        "/livez" => false,
        _ => {
            return http::response(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                &[nosniff()],
                "404 page not found\n",
            );
        }
    };
    let node_eligible = health.node.is_eligible();
    let ok = health.healthy && (node_eligible || !with_node);
    // As kube-proxy: a 200 reports the current time as lastUpdated (what older releases
    // did, whose sync loop ran periodically); a 503 the real last update.
    let last_updated = if ok {
        go_time(Some(health.current_time))
    } else {
        go_time(health.last_updated)
    };
    let status = health
        .last_updated
        .map(|last| {
            ["IPv4", "IPv6"]
                .into_iter()
                .map(|family| {
                    let proxier = FamilyHealth {
                        last_updated: go_time(Some(last)),
                        healthy: health.healthy,
                    };
                    (family, proxier)
                })
                .collect()
        })
        .unwrap_or_default();
    let body = HealthBody {
        last_updated,
        current_time: go_time(Some(health.current_time)),
        node_eligible: with_node.then_some(node_eligible),
        healthy: health.healthy,
        status,
    };
    let json = serde_json::to_vec(&body).expect("plain strings and booleans serialize");
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    http::response(code, "application/json", &[nosniff()], json)
}

/// The bound health endpoint; [`ProxyHealthServer::run`] answers on it.
#[derive(Debug)]
pub struct ProxyHealthServer {
    listener: http::Listener,
}

impl ProxyHealthServer {
    /// Binds `addr` (`0.0.0.0` as Go does: both families).
    pub fn bind(addr: SocketAddr) -> Result<Self, HealthError> {
        let listener =
            http::Listener::bind(addr).map_err(|source| HealthError::Bind { addr, source })?;
        Ok(Self { listener })
    }

    /// The address really listened on (the port is chosen by the kernel for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// Binds `addr` and serves; while it cannot be bound (another proxy's health endpoint
    /// on the node, say), reports why (once per reason) and tries again every `retry`, as
    /// kube-proxy does (without `--bind-address-hard-fail`), the agent running meanwhile.
    pub async fn keep_trying(
        addr: SocketAddr,
        retry: Duration,
        health: SyncHealth,
        report: impl Fn(&HealthError),
    ) {
        let mut reported = None;
        loop {
            match Self::bind(addr) {
                Ok(server) => {
                    tracing::info!(addr = %server.local_addr(), "kube-proxy's /healthz and /livez");
                    return server.run(health).await;
                }
                Err(error) => {
                    let reason = error.to_string();
                    if reported.as_ref() != Some(&reason) {
                        report(&error);
                        reported = Some(reason);
                    }
                }
            }
            tokio::time::sleep(retry).await;
        }
    }

    /// Answers requests until the future is dropped.
    pub async fn run(self, health: SyncHealth) {
        let handler = move |request: hyper::Request<hyper::body::Incoming>| {
            let answer = respond(request.uri().path(), &health.now());
            std::future::ready(answer)
        };
        self.listener.serve("healthz", handler, |_| {}).await;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::{
        health::{Moment, SyncTracker},
        model::NodeEligibility,
    };

    struct Answer {
        status: u16,
        content_type: String,
        nosniff: bool,
        body: Value,
    }

    fn ask(path: &str, health: &ProxyHealth) -> Answer {
        let response = respond(path, health);
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|value| value.to_str().expect("ASCII header").to_owned())
        };
        let content_type = header("content-type").unwrap_or_default();
        let nosniff = header("x-content-type-options").as_deref() == Some("nosniff");
        let status = response.status().as_u16();
        let bytes = crate::http::body_of(response);
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {bytes:?}"));
        Answer {
            status,
            content_type,
            nosniff,
            body,
        }
    }

    fn time(moment: Moment) -> String {
        go_time(Some(moment.wall))
    }

    /// kube-proxy's `TestHealthzServer` and `TestLivezServer`, whose steps (and the shared
    /// `testProxyHealthUpdater`) each give a status and the whole payload.
    #[test]
    fn healthz_and_livez_answer_as_kube_proxy_through_syncs_and_node_changes() {
        let mut tracker = SyncTracker::new(Duration::from_secs(10));
        let mut now = Moment::now();
        let check =
            |tracker: &SyncTracker, now: Moment, step: &str, expect: [(&str, u16, Value); 2]| {
                for (path, status, body) in expect {
                    let answer = ask(path, &tracker.health(now));
                    assert_eq!(
                        answer.status, status,
                        "{step}: {path} status, body {}",
                        answer.body
                    );
                    assert_eq!(answer.body, body, "{step}: {path} body");
                    assert_eq!(answer.content_type, "application/json", "{step}: {path}");
                    assert!(answer.nosniff, "{step}: {path} X-Content-Type-Options");
                }
            };
        let fresh = |now: Moment, node_eligible: Option<bool>, last: Option<Moment>| {
            let mut body = json!({
                "lastUpdated": time(now),
                "currentTime": time(now),
                "healthy": true,
            });
            if let Some(eligible) = node_eligible {
                body["nodeEligible"] = json!(eligible);
            }
            if let Some(last) = last {
                body["status"] = json!({
                    "IPv4": {"lastUpdated": time(last), "healthy": true},
                    "IPv6": {"lastUpdated": time(last), "healthy": true},
                });
            }
            body
        };

        check(
            &tracker,
            now,
            "by default",
            [
                ("/healthz", 200, fresh(now, Some(true), None)),
                ("/livez", 200, fresh(now, None, None)),
            ],
        );

        tracker.queued(1, now);
        tracker.updated(1, now);
        let synced = now;
        check(
            &tracker,
            now,
            "after the first update",
            [
                ("/healthz", 200, fresh(now, Some(true), Some(synced))),
                ("/livez", 200, fresh(now, None, Some(synced))),
            ],
        );

        now = now.later(Duration::from_secs(25));
        check(
            &tracker,
            now,
            "nothing queued for 25 s",
            [
                ("/healthz", 200, fresh(now, Some(true), Some(synced))),
                ("/livez", 200, fresh(now, None, Some(synced))),
            ],
        );

        tracker.queued(2, now);
        now = now.later(Duration::from_secs(25));
        let stale = |node_eligible: Option<bool>| {
            let mut body = json!({
                "lastUpdated": time(synced),
                "currentTime": time(now),
                "healthy": false,
                "status": {
                    "IPv4": {"lastUpdated": time(synced), "healthy": false},
                    "IPv6": {"lastUpdated": time(synced), "healthy": false},
                },
            });
            if let Some(eligible) = node_eligible {
                body["nodeEligible"] = json!(eligible);
            }
            body
        };
        check(
            &tracker,
            now,
            "an update queued 25 s ago",
            [
                ("/healthz", 503, stale(Some(true))),
                ("/livez", 503, stale(None)),
            ],
        );

        tracker.updated(2, now);
        let synced = now;
        now = now.later(Duration::from_secs(5));
        check(
            &tracker,
            now,
            "applied",
            [
                ("/healthz", 200, fresh(now, Some(true), Some(synced))),
                ("/livez", 200, fresh(now, None, Some(synced))),
            ],
        );

        // The Node's turn (TestHealthzServer's second half): a taint other than the
        // autoscaler's changes nothing, its taint or a deletion make /healthz alone 503.
        let not_eligible = |now: Moment| {
            let mut body = fresh(now, Some(false), Some(synced));
            body["lastUpdated"] = json!(time(synced));
            body
        };
        for (node, healthz) in [
            (
                NodeEligibility::Eligible,
                (200, fresh(now, Some(true), Some(synced))),
            ),
            (NodeEligibility::ToBeDeleted, (503, not_eligible(now))),
            (
                NodeEligibility::Eligible,
                (200, fresh(now, Some(true), Some(synced))),
            ),
            (NodeEligibility::BeingDeleted, (503, not_eligible(now))),
            (NodeEligibility::NotFound, (503, not_eligible(now))),
        ] {
            tracker.set_node(node);
            check(
                &tracker,
                now,
                &format!("node {node}"),
                [
                    ("/healthz", healthz.0, healthz.1),
                    ("/livez", 200, fresh(now, None, Some(synced))),
                ],
            );
        }
    }

    #[test]
    fn other_paths_get_gos_not_found() {
        let health = SyncTracker::new(Duration::from_secs(10)).health(Moment::now());
        for path in ["/", "/healthz/", "/metrics", "/readyz"] {
            let response = respond(path, &health);
            assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
            let body = crate::http::body_of(response);
            assert_eq!(&body[..], b"404 page not found\n", "{path}");
        }
    }

    #[test]
    fn times_are_written_as_gos_rfc3339_nano() {
        let at =
            |seconds: u64, nanos: u32| Some(SystemTime::UNIX_EPOCH + Duration::new(seconds, nanos));
        assert_eq!(go_time(None), "0001-01-01T00:00:00Z");
        assert_eq!(go_time(at(1_700_000_000, 0)), "2023-11-14T22:13:20Z");
        assert_eq!(
            go_time(at(1_700_000_000, 500_000_000)),
            "2023-11-14T22:13:20.5Z",
            "trailing zeros trimmed"
        );
        assert_eq!(
            go_time(at(1_700_000_000, 123_456_789)),
            "2023-11-14T22:13:20.123456789Z"
        );
    }
}
