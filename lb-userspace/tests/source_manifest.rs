//! The manifest directory source: formats, validation, and the watching source.

use std::{path::Path, sync::Arc, time::Duration};

use slicelb::{
    model::NodeInfo,
    source::{
        self, ManifestError, SourceConfig, SourceProblem, SourceReceiver, SourceUpdate,
        UpdateCause,
        debounce::Debounce,
        manifest::{ManifestWarningReason, ObjectLocation, ProblemReason},
    },
};

const WAIT: Duration = Duration::from_secs(10);

fn node() -> NodeInfo {
    NodeInfo {
        name: Some("node-a".into()),
        zone: Some("zone-1".into()),
        nodeport_addresses: vec![],
    }
}

fn service_yaml(name: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n  clusterIP: 198.18.0.10\n  ports:\n  - name: http\n    port: {port}\n    protocol: TCP\n    targetPort: 8080\n"
    )
}

fn slice_yaml(name: &str, service: &str, address: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: shop\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nendpoints:\n- addresses: [\"{address}\"]\n  conditions:\n    ready: true\nports:\n- name: http\n  port: 8080\n  protocol: TCP\n"
    )
}

fn write(dir: &Path, file: &str, text: &str) {
    std::fs::write(dir.join(file), text).unwrap_or_else(|e| panic!("writing {file}: {e}"));
}

fn names_of(update: &SourceUpdate) -> (Vec<String>, Vec<String>) {
    let name = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        format!(
            "{}/{}",
            meta.namespace.as_deref().unwrap_or("?"),
            meta.name.as_deref().unwrap_or("?")
        )
    };
    (
        update
            .snapshot
            .services
            .iter()
            .map(|s| name(&s.metadata))
            .collect(),
        update
            .snapshot
            .endpoint_slices
            .iter()
            .map(|s| name(&s.metadata))
            .collect(),
    )
}

fn invalid_problems(error: ManifestError) -> Vec<source::ManifestProblem> {
    match error {
        ManifestError::Invalid { problems, .. } => problems,
        other => panic!("expected an Invalid error, got: {other}"),
    }
}

#[test]
fn multi_document_yaml_json_and_lists_load_into_one_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let multi = format!(
        "{}---\n{}\n---\n",
        service_yaml("web", 80),
        slice_yaml("web-1", "web", "198.18.1.1")
    );
    write(dir.path(), "web.yaml", &multi);
    // As `kubectl get svc,endpointslices -o yaml` prints it (items carry their own kind).
    let list = format!(
        "apiVersion: v1\nkind: List\nmetadata:\n  resourceVersion: \"\"\nitems:\n- {}\n- {}\n",
        service_yaml("api", 81).trim_end().replace('\n', "\n  "),
        slice_yaml("api-x", "api", "198.18.1.2")
            .trim_end()
            .replace('\n', "\n  ")
    );
    write(dir.path(), "list.yml", &list);
    // A typed list as the API server sends it: items without apiVersion/kind.
    let json = r#"{"apiVersion":"v1","kind":"ServiceList","metadata":{},"items":[
        {"metadata":{"name":"db"},"spec":{"clusterIP":"198.18.0.11","ports":[{"port":5432}]}}]}"#;
    write(dir.path(), "db.json", json);
    // Skipped, without a word: hidden and editor files.
    write(dir.path(), ".web.yaml.swp", "garbage: [");
    write(dir.path(), "web.yaml~", "garbage: [");
    // Skipped with a warning: another kind, another file type, a slice of no Service.
    write(
        dir.path(),
        "deploy.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n",
    );
    write(dir.path(), "README.md", "# manifests");
    let orphan = slice_yaml("orphan", "x", "198.18.1.3")
        .replace("    kubernetes.io/service-name: x\n", "    team: a\n");
    write(dir.path(), "orphan.yaml", &orphan);

    let (snapshot, warnings) =
        source::load_dir(dir.path(), node()).expect("the directory is valid");
    let update = SourceUpdate {
        snapshot,
        generation: 1,
        triggered_at: tokio::time::Instant::now(),
        published_at: tokio::time::Instant::now(),
        cause: UpdateCause::Initial,
        problems: vec![],
    };
    let (services, slices) = names_of(&update);
    assert_eq!(
        services,
        ["default/db", "shop/api", "shop/web"],
        "services from YAML, List and JSON"
    );
    assert_eq!(
        slices,
        ["shop/api-x", "shop/orphan", "shop/web-1"],
        "slices from YAML and List"
    );
    assert_eq!(update.snapshot.node, node(), "the node is passed through");
    let db_port = &update.snapshot.services[0]
        .spec
        .as_ref()
        .unwrap()
        .ports
        .as_ref()
        .unwrap()[0];
    assert_eq!(db_port.port, 5432, "JSON service content is kept");

    let reasons: Vec<_> = warnings
        .iter()
        .map(|w| {
            (
                w.file.file_name().unwrap().to_str().unwrap().to_owned(),
                w.reason.clone(),
            )
        })
        .collect();
    assert!(
        reasons.contains(&(
            "deploy.yaml".into(),
            ManifestWarningReason::UnknownKind {
                api_version: "apps/v1".into(),
                kind: "Deployment".into()
            }
        )),
        "an unknown kind is a warning: {reasons:?}"
    );
    assert!(
        reasons.contains(&("README.md".into(), ManifestWarningReason::UnrecognizedFile)),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&("orphan.yaml".into(), ManifestWarningReason::NoServiceName)),
        "{reasons:?}"
    );
    assert_eq!(
        reasons.len(),
        3,
        "no warning for hidden or editor files: {reasons:?}"
    );
}

#[test]
fn every_broken_file_and_object_is_reported_with_file_object_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "good.yaml", &service_yaml("web", 80));
    write(
        dir.path(),
        "syntax.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: [unclosed\n",
    );
    write(
        dir.path(),
        "badport.yaml",
        &service_yaml("api", 80).replace("port: 80", "port: eighty"),
    );
    write(
        dir.path(),
        "noname.yaml",
        "apiVersion: v1\nkind: Service\nmetadata:\n  namespace: shop\n",
    );
    write(dir.path(), "dup.yaml", &service_yaml("web", 81));
    write(dir.path(), "broken.json", "{\"apiVersion\": \"v1\",");

    let problems =
        invalid_problems(source::load_dir(dir.path(), node()).expect_err("broken files"));
    let find = |file: &str| {
        problems
            .iter()
            .find(|p| p.file.ends_with(file))
            .unwrap_or_else(|| panic!("no problem reported for {file}: {problems:#?}"))
    };
    assert!(
        matches!(find("syntax.yaml").reason, ProblemReason::Yaml(_)),
        "YAML syntax error"
    );
    assert!(
        matches!(find("broken.json").reason, ProblemReason::Json(_)),
        "JSON syntax error"
    );
    let bad_port = find("badport.yaml");
    assert!(
        matches!(
            bad_port.reason,
            ProblemReason::Invalid {
                kind: "Service",
                ..
            }
        ),
        "{bad_port}"
    );
    assert_eq!(
        bad_port.location,
        ObjectLocation::Named {
            kind: "Service".into(),
            namespace: "shop".into(),
            name: "api".into()
        },
        "the invalid object is named"
    );
    assert!(
        bad_port
            .to_string()
            .contains("badport.yaml: Service shop/api: not a valid Service"),
        "message: {bad_port}"
    );
    let no_name = find("noname.yaml");
    assert!(
        matches!(
            no_name.reason,
            ProblemReason::MissingName { kind: "Service" }
        ),
        "{no_name}"
    );
    assert_eq!(
        no_name.location,
        ObjectLocation::Document {
            document: 1,
            item: None
        }
    );
    // Files are read in name order: dup.yaml comes before good.yaml, so good.yaml is the duplicate.
    let duplicate = find("good.yaml");
    match &duplicate.reason {
        ProblemReason::Duplicate { first_file, .. } => {
            assert!(
                first_file.ends_with("dup.yaml"),
                "the first definition is named: {duplicate}"
            )
        }
        other => panic!("expected a duplicate, got {other}"),
    }
    assert_eq!(
        problems.len(),
        5,
        "one problem per broken file: {problems:#?}"
    );
}

#[test]
fn a_missing_directory_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let error = source::load_dir(&missing, node()).expect_err("missing directory");
    assert!(matches!(error, ManifestError::ReadDir { .. }), "{error}");
    assert!(
        error.to_string().contains("nope"),
        "the directory is named: {error}"
    );
}

async fn wait_until(
    updates: &mut SourceReceiver,
    what: &str,
    mut predicate: impl FnMut(&SourceUpdate) -> bool,
) -> Arc<SourceUpdate> {
    let waited = tokio::time::timeout(WAIT, async {
        updates
            .wait_for(|update| update.as_deref().is_some_and(&mut predicate))
            .await
            .map(|update| update.clone().expect("matched Some"))
    })
    .await;
    match waited {
        Ok(Ok(update)) => update,
        Ok(Err(_)) => panic!("the source stopped while waiting for: {what}"),
        Err(_) => {
            let last = updates.borrow().clone();
            panic!("no update within {WAIT:?} for: {what}; last update: {last:#?}")
        }
    }
}

#[tokio::test]
async fn the_watching_source_publishes_whole_directory_changes_and_keeps_the_last_good_state() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "web.yaml", &service_yaml("web", 80));
    let debounce = Debounce {
        quiet: Duration::from_millis(50),
        max_delay: Duration::from_millis(500),
    };
    let mut updates =
        source::manifest::spawn(dir.path().to_path_buf(), node(), debounce).expect("starts");

    let first = wait_until(&mut updates, "the initial state", |_| true).await;
    assert_eq!(first.cause, UpdateCause::Initial);
    assert_eq!(names_of(&first).0, ["shop/web"], "initial directory");

    // Added.
    write(
        dir.path(),
        "web-slice.yaml",
        &slice_yaml("web-1", "web", "198.18.1.1"),
    );
    let added = wait_until(&mut updates, "the slice file added", |u| {
        !u.snapshot.endpoint_slices.is_empty()
    })
    .await;
    assert_eq!(added.cause, UpdateCause::Changed);
    assert_eq!(
        names_of(&added),
        (vec!["shop/web".into()], vec!["shop/web-1".into()])
    );

    // Changed.
    write(dir.path(), "web.yaml", &service_yaml("web", 8080));
    let changed = wait_until(&mut updates, "the port changed to 8080", |u| {
        u.snapshot
            .services
            .first()
            .and_then(|s| s.spec.as_ref()?.ports.as_ref()?.first().map(|p| p.port))
            == Some(8080)
    })
    .await;
    assert_eq!(
        names_of(&changed).1,
        ["shop/web-1"],
        "other files are unaffected"
    );

    // Broken: a rejected update carries the last good state and names file, object, reason.
    write(
        dir.path(),
        "web.yaml",
        &service_yaml("web", 80).replace("port: 80", "port: eighty"),
    );
    write(dir.path(), "new.yaml", &service_yaml("new", 90));
    let rejected = wait_until(&mut updates, "the broken edit rejected", |u| {
        u.cause == UpdateCause::Rejected
    })
    .await;
    assert_eq!(
        rejected.snapshot, changed.snapshot,
        "the last good state stays in force, including no half of the new state (new.yaml)"
    );
    let message = match rejected.problems.as_slice() {
        [SourceProblem::ManifestRejected(error)] => error.to_string(),
        other => panic!("expected one rejection, got {other:?}"),
    };
    assert!(
        message.contains("web.yaml: Service shop/web: not a valid Service"),
        "the rejection names file, object and reason: {message}"
    );

    // Fixed: the whole new state applies at once.
    write(dir.path(), "web.yaml", &service_yaml("web", 80));
    let fixed = wait_until(&mut updates, "the fix applied", |u| {
        u.cause == UpdateCause::Changed
    })
    .await;
    assert_eq!(
        names_of(&fixed).0,
        ["shop/new", "shop/web"],
        "both the fix and new.yaml apply"
    );

    // Removed.
    std::fs::remove_file(dir.path().join("web-slice.yaml")).unwrap();
    std::fs::remove_file(dir.path().join("new.yaml")).unwrap();
    let removed = wait_until(&mut updates, "files removed", |u| {
        u.snapshot.endpoint_slices.is_empty() && u.snapshot.services.len() == 1
    })
    .await;
    assert_eq!(names_of(&removed), (vec!["shop/web".into()], vec![]));
    assert!(
        removed.generation > fixed.generation,
        "generations increase"
    );
}

/// A mounted ConfigMap: visible files are symlinks into a hidden, atomically swapped `..data`.
#[test]
fn a_mounted_config_map_layout_is_read_through_its_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let versioned = dir.path().join("..2026_11_27_12_00_00.000000001");
    std::fs::create_dir(&versioned).unwrap();
    write(&versioned, "web.yaml", &service_yaml("web", 80));
    std::os::unix::fs::symlink(&versioned, dir.path().join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/web.yaml", dir.path().join("web.yaml")).unwrap();

    let (snapshot, warnings) = source::load_dir(dir.path(), node()).expect("valid");
    assert_eq!(
        snapshot.services.len(),
        1,
        "the service behind the symlink is read once"
    );
    assert!(
        warnings.is_empty(),
        "the hidden ..data entries are not reported: {warnings:?}"
    );
}

#[tokio::test]
async fn an_invalid_directory_at_start_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "web.yaml", "kind: [");
    let error = source::spawn(SourceConfig::ManifestDir(dir.path().to_path_buf()), node())
        .await
        .expect_err("no last good state to fall back to");
    assert!(
        error.to_string().contains("web.yaml"),
        "the file is named: {error}"
    );
}

#[tokio::test]
async fn snapshot_once_reads_a_manifest_directory() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "web.yaml", &service_yaml("web", 80));
    let snapshot =
        source::snapshot_once(SourceConfig::ManifestDir(dir.path().to_path_buf()), node())
            .await
            .expect("valid directory");
    assert_eq!(snapshot.services.len(), 1, "one service");
}

/// The consumer loop of the module docs sees the initial state as its first change.
#[tokio::test]
async fn the_initial_state_is_the_first_change_a_consumer_sees() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "web.yaml", &service_yaml("web", 80));
    let mut updates = source::spawn(SourceConfig::ManifestDir(dir.path().to_path_buf()), node())
        .await
        .expect("starts");
    tokio::time::timeout(WAIT, updates.changed())
        .await
        .expect("the initial state counts as a change")
        .expect("the source runs");
    let update = updates.borrow_and_update().clone().expect("published");
    assert_eq!(update.cause, UpdateCause::Initial);
    assert_eq!(names_of(&update).0, ["shop/web"]);
}

fn node_yaml(name: &str, extra: &str) -> String {
    format!("apiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n{extra}")
}

/// A Node manifest of this node's name says whether it is leaving (and its zone, when the
/// node has none); other nodes' are ignored; without one the node is eligible.
#[test]
fn a_node_manifest_of_this_nodes_name_says_whether_it_is_eligible() {
    use slicelb::model::NodeEligibility;

    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "web.yaml", &service_yaml("web", 80));
    let without_zone = NodeInfo {
        zone: None,
        ..node()
    };
    let load = |node: NodeInfo| {
        let (snapshot, warnings) = source::load_dir(dir.path(), node).expect("valid directory");
        assert!(warnings.is_empty(), "a Node is a known kind: {warnings:?}");
        snapshot
    };
    assert_eq!(
        load(node()).node_eligibility,
        NodeEligibility::Eligible,
        "no Node manifest"
    );

    let taint =
        "spec:\n  taints:\n  - key: ToBeDeletedByClusterAutoscaler\n    effect: NoSchedule\n";
    write(dir.path(), "node-b.yaml", &node_yaml("node-b", taint));
    assert_eq!(
        load(node()).node_eligibility,
        NodeEligibility::Eligible,
        "another node's taint"
    );

    let labels = "  labels:\n    topology.kubernetes.io/zone: zone-7\n";
    write(
        dir.path(),
        "node-a.yaml",
        &node_yaml("node-a", &format!("{labels}{taint}")),
    );
    let snapshot = load(without_zone.clone());
    assert_eq!(snapshot.node_eligibility, NodeEligibility::ToBeDeleted);
    assert_eq!(
        snapshot.node.zone.as_deref(),
        Some("zone-7"),
        "zone from the Node"
    );
    assert_eq!(
        load(node()).node.zone.as_deref(),
        Some("zone-1"),
        "a zone the agent was given stays"
    );

    write(
        dir.path(),
        "node-a.yaml",
        &node_yaml("node-a", "  deletionTimestamp: \"2026-01-02T03:04:05Z\"\n"),
    );
    assert_eq!(load(node()).node_eligibility, NodeEligibility::BeingDeleted);
    write(dir.path(), "node-a.yaml", &node_yaml("node-a", ""));
    assert_eq!(load(node()).node_eligibility, NodeEligibility::Eligible);
}
