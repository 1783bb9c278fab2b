//! The in-cluster configuration path: a service-account directory (token, ca.crt, namespace)
//! and KUBERNETES_SERVICE_HOST/PORT lead the source to the fake API server over TLS, with the
//! bearer token checked by the server.

#[path = "support/fake_apiserver.rs"]
mod fake_apiserver;

use std::{path::Path, time::Duration};

use fake_apiserver::FakeApiServer;
use k8s_openapi::{
    api::core::v1::{Service, ServicePort, ServiceSpec},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use slicelb::{
    model::NodeInfo,
    source::{Connection, InClusterPaths, KubernetesError, KubernetesOptions, kubernetes},
};

const TOKEN: &str = "test-service-account-token";

fn service(name: &str) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("shop".into()),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            cluster_ip: Some("198.18.0.10".into()),
            ports: Some(vec![ServicePort {
                port: 80,
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn service_account_dir(dir: &Path, token: &str, ca_pem: &str) {
    std::fs::write(dir.join("token"), token).unwrap();
    std::fs::write(dir.join("ca.crt"), ca_pem).unwrap();
    std::fs::write(dir.join("namespace"), "kube-system\n").unwrap();
}

fn options(paths: InClusterPaths) -> KubernetesOptions {
    let mut options = KubernetesOptions::new(Connection::InCluster(paths));
    options.initial_sync_timeout = Duration::from_secs(20);
    options
}

/// Syncs through a service-account directory holding `token` and `ca_pem` with the server
/// given explicitly; it must time out. Returns the error's message.
fn failed_sync(
    runtime: &tokio::runtime::Runtime,
    server: &FakeApiServer,
    token: &str,
    ca_pem: &str,
    case: &str,
) -> String {
    let accounts = tempfile::tempdir().unwrap();
    service_account_dir(accounts.path(), token, ca_pem);
    let mut options = options(InClusterPaths {
        service_account_dir: accounts.path().to_path_buf(),
        api_server: Some(("127.0.0.1".into(), server.address().port())),
    });
    options.initial_sync_timeout = Duration::from_secs(3);
    let error = runtime
        .block_on(kubernetes::snapshot_once(options, NodeInfo::default()))
        .expect_err(case);
    assert!(
        matches!(error, KubernetesError::InitialSyncTimedOut { .. }),
        "{case}: {error}"
    );
    error.to_string()
}

/// One test function: it sets process environment variables, which no other thread may read
/// at the same time.
#[test]
fn in_cluster_configuration_connects_over_tls_with_the_service_account_token() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let server = runtime.block_on(FakeApiServer::start_tls(TOKEN));
    server.apply(&service("web"));
    let ca_pem = server.tls().expect("TLS mode").ca_pem.clone();
    let accounts = tempfile::tempdir().unwrap();
    service_account_dir(accounts.path(), TOKEN, &ca_pem);

    // SAFETY: no other thread exists yet that could read the environment concurrently:
    // this is the only test in this binary, and the runtime's workers do not read it.
    unsafe {
        std::env::set_var("KUBERNETES_SERVICE_HOST", "127.0.0.1");
        std::env::set_var(
            "KUBERNETES_SERVICE_PORT",
            server.address().port().to_string(),
        );
    }
    let from_environment = InClusterPaths {
        service_account_dir: accounts.path().to_path_buf(),
        api_server: None,
    };
    let snapshot = runtime
        .block_on(kubernetes::snapshot_once(
            options(from_environment),
            NodeInfo::default(),
        ))
        .unwrap_or_else(|error| panic!("in-cluster sync over TLS failed: {error}"));
    assert_eq!(
        snapshot
            .services
            .iter()
            .map(|service| (**service).clone())
            .collect::<Vec<_>>(),
        server.objects::<Service>(),
        "synced the server's services"
    );
    assert!(
        !server.requests().is_empty(),
        "the source talked to the fake API server"
    );

    // A wrong token: the server refuses, and the error says what the watch saw.
    let error = failed_sync(
        &runtime,
        &server,
        "not-the-token",
        &ca_pem,
        "a wrong bearer token",
    );
    assert!(
        error.contains("Unauthorized"),
        "the 401 is reported: {error}"
    );

    // A CA that did not sign the server's certificate: TLS verification fails.
    let other_ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let error = failed_sync(
        &runtime,
        &server,
        TOKEN,
        &other_ca.cert.pem(),
        "an untrusted CA",
    );
    assert!(
        error.contains("certificate"),
        "the TLS failure is reported: {error}"
    );

    // No service account mounted.
    let empty = tempfile::tempdir().unwrap();
    let error = runtime
        .block_on(kubernetes::snapshot_once(
            options(InClusterPaths {
                service_account_dir: empty.path().to_path_buf(),
                api_server: Some(("127.0.0.1".into(), 443)),
            }),
            NodeInfo::default(),
        ))
        .expect_err("no token file");
    assert!(
        matches!(error, KubernetesError::InClusterFile { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("token"),
        "the missing file is named: {error}"
    );
}
