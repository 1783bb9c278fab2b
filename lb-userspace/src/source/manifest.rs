//! A directory of manifests as a source: v1 Services and discovery.k8s.io/v1 EndpointSlices in
//! YAML (several documents per file) or JSON files, also `kind: List` as `kubectl get -o yaml`
//! prints it.
//!
//! A v1 Node named `--node-name` may be there too: as from Kubernetes, its zone label and
//! whether it is being deleted or tainted `ToBeDeletedByClusterAutoscaler` are read (for the
//! health endpoint's `nodeEligible`). Without one the node counts as eligible; other nodes'
//! Node objects are ignored (every node's agent may read the same directory).
//!
//! The directory is applied as a whole: if any file is broken, nothing of the new state is
//! applied and the last good state stays in force (a half-edited file never removes services).
//! Warnings (an unknown kind, a slice that names no Service) do not block a change.
//! Labels that decide what is ours (a Service's `service-proxy-name`, a slice's `headless`)
//! are the model's business: every valid object is passed on.

use std::{
    collections::{BTreeMap, btree_map::Entry},
    fmt, fs, io,
    path::{Path, PathBuf},
    sync::Arc,
};

use k8s_openapi::{
    Metadata, Resource,
    api::{
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use notify::Watcher as _;
use serde_json::Value;
use tokio::{sync::mpsc, time::Instant};

use super::{
    Publisher, SourceProblem, SourceReceiver, UpdateCause,
    debounce::{self, Debounce},
};
use crate::model::{NodeEligibility, NodeInfo, Snapshot};

/// Label the EndpointSlice controller sets to the owning Service's name.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Which object in a file a message is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ObjectLocation {
    /// A named object: `Service default/web`.
    Named {
        kind: String,
        namespace: String,
        name: String,
    },
    /// An object without a usable name: the document (from 1) and, inside a List, the item (from 1).
    Document {
        document: usize,
        item: Option<usize>,
    },
    /// The file as a whole.
    File,
}

impl fmt::Display for ObjectLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Named {
                kind,
                namespace,
                name,
            } => write!(f, "{kind} {namespace}/{name}"),
            Self::Document {
                document,
                item: None,
            } => write!(f, "document {document}"),
            Self::Document {
                document,
                item: Some(item),
            } => write!(f, "document {document}, List item {item}"),
            Self::File => write!(f, "the file"),
        }
    }
}

/// Why a file or an object in it is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ProblemReason {
    #[error("cannot read the file: {0}")]
    Read(#[source] io::Error),
    #[error("not valid YAML: {0}")]
    Yaml(#[source] serde_norway::Error),
    #[error("not valid JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("not an object with apiVersion and kind (every document must be a Kubernetes object)")]
    NotAnObject,
    #[error("not a valid {kind}: {source}")]
    Invalid {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{kind} has no metadata.name")]
    MissingName { kind: &'static str },
    #[error("a List without an `items` array")]
    ListWithoutItems,
    #[error("duplicate: the same object is already defined in {first_file} ({first_location})")]
    Duplicate {
        first_file: PathBuf,
        first_location: Box<ObjectLocation>,
    },
}

/// One invalid file or object: which file, which object, why.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {location}: {reason}", file = file.display())]
pub struct ManifestProblem {
    pub file: PathBuf,
    pub location: ObjectLocation,
    #[source]
    pub reason: ProblemReason,
}

/// Why the directory could not be loaded. Nothing of it was applied.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "cannot read manifest directory {dir}: {source}; check that it exists and is readable",
        dir = dir.display()
    )]
    ReadDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot watch manifest directory {dir}: {source}; check inotify limits (fs.inotify.max_user_watches)",
        dir = dir.display()
    )]
    Watch {
        dir: PathBuf,
        #[source]
        source: notify::Error,
    },
    #[error(
        "manifest directory {dir} has {count} invalid file(s) or object(s), fix them and save again:\n{list}",
        dir = dir.display(),
        count = problems.len(),
        list = problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n")
    )]
    Invalid {
        dir: PathBuf,
        problems: Vec<ManifestProblem>,
    },
}

/// Why an object was skipped or looks wrong; the rest of the directory is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManifestWarningReason {
    /// Not a v1 Service, discovery.k8s.io/v1 EndpointSlice or v1 Node (a Deployment, an old
    /// API version).
    UnknownKind { api_version: String, kind: String },
    /// An EndpointSlice without the `kubernetes.io/service-name` label belongs to no Service.
    NoServiceName,
    /// A file that is neither `.yaml`, `.yml` nor `.json`.
    UnrecognizedFile,
}

/// A skipped or suspicious object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestWarning {
    pub file: PathBuf,
    pub location: ObjectLocation,
    pub reason: ManifestWarningReason,
}

impl fmt::Display for ManifestWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}",
            self.file.display(),
            self.location,
            self.reason
        )
    }
}

impl ManifestWarning {
    /// Logs the warning with fields naming the file and the object: `namespace` and
    /// `service` or `slice` (`kind` and `name` for other kinds).
    pub fn log(&self) {
        let (file, reason) = (self.file.display(), &self.reason);
        match &self.location {
            ObjectLocation::Named {
                kind,
                namespace,
                name,
            } => match kind.as_str() {
                "Service" => tracing::warn!(%file, %namespace, service = %name, "{reason}"),
                "EndpointSlice" => tracing::warn!(%file, %namespace, slice = %name, "{reason}"),
                _ => tracing::warn!(%file, %namespace, %kind, %name, "{reason}"),
            },
            ObjectLocation::File => tracing::warn!(%file, "{reason}"),
            location @ ObjectLocation::Document { .. } => {
                tracing::warn!(%file, "{location}: {reason}");
            }
        }
    }
}

impl fmt::Display for ManifestWarningReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownKind { api_version, kind } => write!(
                f,
                "ignored {api_version} {kind}: only v1 Service, discovery.k8s.io/v1 EndpointSlice and v1 Node are used"
            ),
            Self::NoServiceName => write!(
                f,
                "EndpointSlice has no {SERVICE_NAME_LABEL} label, so it serves no Service; add the label"
            ),
            Self::UnrecognizedFile => {
                write!(f, "ignored: only .yaml, .yml and .json files are read")
            }
        }
    }
}

/// Reads every manifest in `dir` (not recursive) into one snapshot for `node` (whose zone
/// a Node manifest of its name sets, when `node` has none).
///
/// Any invalid file or object makes the whole load fail, listing every problem.
pub fn load_dir(
    dir: &Path,
    mut node: NodeInfo,
) -> Result<(Snapshot, Vec<ManifestWarning>), ManifestError> {
    let read_dir_error = |source| ManifestError::ReadDir {
        dir: dir.to_path_buf(),
        source,
    };
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_dir_error)? {
        let path = entry.map_err(read_dir_error)?.path();
        // `metadata` follows symlinks: a mounted ConfigMap's files are links into `..data/`.
        if path.metadata().is_ok_and(|meta| meta.is_file()) {
            files.push(path);
        }
    }
    files.sort();

    let mut loader = Loader::default();
    for file in files {
        match classify(&file) {
            FileKind::Ignored => {}
            FileKind::Unrecognized => loader.warnings.push(ManifestWarning {
                file,
                location: ObjectLocation::File,
                reason: ManifestWarningReason::UnrecognizedFile,
            }),
            FileKind::Yaml | FileKind::Json => loader.load_file(&file),
        }
    }

    if !loader.problems.is_empty() {
        return Err(ManifestError::Invalid {
            dir: dir.to_path_buf(),
            problems: loader.problems,
        });
    }
    let own_node = node
        .name
        .as_ref()
        .and_then(|name| loader.nodes.get(&(String::new(), name.clone())))
        .map(|defined| &defined.object);
    let node_eligibility = own_node.map_or(NodeEligibility::Eligible, NodeEligibility::of);
    if node.zone.is_none() {
        node.zone = own_node.and_then(|object| {
            label(&object.metadata, super::kubernetes::ZONE_LABEL).map(str::to_owned)
        });
    }
    let mut snapshot = Snapshot {
        services: loader
            .services
            .into_values()
            .map(|d| Arc::new(d.object))
            .collect(),
        endpoint_slices: loader
            .slices
            .into_values()
            .map(|d| Arc::new(d.object))
            .collect(),
        node,
        node_eligibility,
    };
    super::sort_snapshot(&mut snapshot);
    Ok((snapshot, loader.warnings))
}

enum FileKind {
    Yaml,
    Json,
    Unrecognized,
    /// Hidden files, editor swap and backup files: never reported.
    Ignored,
}

fn classify(path: &Path) -> FileKind {
    let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
        return FileKind::Unrecognized;
    };
    let is_temporary = name.starts_with('.')
        || name.starts_with('#')
        || name.ends_with('~')
        || [".swp", ".swo", ".swx", ".tmp", ".bak", ".orig"]
            .iter()
            .any(|suffix| name.ends_with(suffix))
        // Vim probes a directory's writability with a file called 4913.
        || name == "4913";
    if is_temporary {
        FileKind::Ignored
    } else if name.ends_with(".yaml") || name.ends_with(".yml") {
        FileKind::Yaml
    } else if name.ends_with(".json") {
        FileKind::Json
    } else {
        FileKind::Unrecognized
    }
}

type ObjectKey = (String, String);

/// An object and where it was defined (for duplicate reports).
struct Defined<K> {
    file: PathBuf,
    location: ObjectLocation,
    object: K,
}

/// Accumulates objects, problems and warnings over all files.
#[derive(Default)]
struct Loader {
    services: BTreeMap<ObjectKey, Defined<Service>>,
    slices: BTreeMap<ObjectKey, Defined<EndpointSlice>>,
    /// Cluster-scoped: keyed by an empty namespace and the name.
    nodes: BTreeMap<ObjectKey, Defined<Node>>,
    problems: Vec<ManifestProblem>,
    warnings: Vec<ManifestWarning>,
}

impl Loader {
    fn problem(&mut self, file: &Path, location: ObjectLocation, reason: ProblemReason) {
        self.problems.push(ManifestProblem {
            file: file.to_path_buf(),
            location,
            reason,
        });
    }

    fn load_file(&mut self, file: &Path) {
        let text = match fs::read_to_string(file) {
            Ok(text) => text,
            Err(error) => {
                return self.problem(file, ObjectLocation::File, ProblemReason::Read(error));
            }
        };
        let is_json = matches!(classify(file), FileKind::Json);
        let documents = if is_json {
            parse_json_documents(&text)
        } else {
            parse_yaml_documents(&text)
        };
        for (index, document) in documents.into_iter().enumerate() {
            let document_number = index + 1;
            match document {
                Ok(Value::Null) => {}
                Ok(value) => self.load_object(file, value, document_number, None, None),
                Err(reason) => {
                    let location = ObjectLocation::Document {
                        document: document_number,
                        item: None,
                    };
                    self.problem(file, location, reason);
                    // A syntax error leaves the rest of the stream unreadable.
                    break;
                }
            }
        }
    }

    /// `implied_type` is (apiVersion, kind) for the items of a typed list such as `ServiceList`,
    /// whose items the API server sends without their own.
    fn load_object(
        &mut self,
        file: &Path,
        mut value: Value,
        document: usize,
        item: Option<usize>,
        implied_type: Option<(&str, &str)>,
    ) {
        let unnamed = ObjectLocation::Document { document, item };
        let Some(object) = value.as_object_mut() else {
            return self.problem(file, unnamed, ProblemReason::NotAnObject);
        };
        if let Some((api_version, kind)) = implied_type {
            object
                .entry("apiVersion")
                .or_insert_with(|| Value::from(api_version));
            object.entry("kind").or_insert_with(|| Value::from(kind));
        }
        let (Some(api_version), Some(kind)) = (
            object.get("apiVersion").and_then(Value::as_str),
            object.get("kind").and_then(Value::as_str),
        ) else {
            return self.problem(file, unnamed, ProblemReason::NotAnObject);
        };
        let (api_version, kind) = (api_version.to_owned(), kind.to_owned());

        if kind.ends_with("List") && item.is_none() {
            let Some(Value::Array(items)) = object.remove("items") else {
                return self.problem(file, unnamed, ProblemReason::ListWithoutItems);
            };
            // `ServiceList` items are Services of the list's apiVersion; a plain `List` implies nothing.
            let item_kind = kind.strip_suffix("List").unwrap_or_default().to_owned();
            for (index, element) in items.into_iter().enumerate() {
                let implied =
                    (!item_kind.is_empty()).then_some((api_version.as_str(), item_kind.as_str()));
                self.load_object(file, element, document, Some(index + 1), implied);
            }
            return;
        }

        match (api_version.as_str(), kind.as_str()) {
            (Service::API_VERSION, Service::KIND) => {
                if let Some(service) = self.deserialize::<Service>(file, value, unnamed) {
                    insert_unique(&mut self.services, &mut self.problems, service);
                }
            }
            (EndpointSlice::API_VERSION, EndpointSlice::KIND) => {
                let Some(slice) = self.deserialize::<EndpointSlice>(file, value, unnamed) else {
                    return;
                };
                if label(&slice.object.metadata, SERVICE_NAME_LABEL).is_none() {
                    self.warn(
                        file,
                        slice.location.clone(),
                        ManifestWarningReason::NoServiceName,
                    );
                }
                insert_unique(&mut self.slices, &mut self.problems, slice);
            }
            (Node::API_VERSION, Node::KIND) => {
                if let Some(mut node) = self.deserialize::<Node>(file, value, unnamed) {
                    // A Node has no namespace, whatever the file says.
                    node.object.metadata.namespace = None;
                    insert_unique(&mut self.nodes, &mut self.problems, node);
                }
            }
            _ => {
                let location = match name_of(&value) {
                    Some((namespace, name)) => ObjectLocation::Named {
                        kind: kind.clone(),
                        namespace,
                        name,
                    },
                    None => unnamed,
                };
                self.warn(
                    file,
                    location,
                    ManifestWarningReason::UnknownKind { api_version, kind },
                );
            }
        }
    }

    /// The object, its namespace defaulted as kubectl does; `None` (a problem) if invalid.
    fn deserialize<K>(
        &mut self,
        file: &Path,
        value: Value,
        unnamed: ObjectLocation,
    ) -> Option<Defined<K>>
    where
        K: Resource + Metadata<Ty = ObjectMeta> + serde::de::DeserializeOwned,
    {
        let Some((namespace, name)) = name_of(&value) else {
            self.problem(file, unnamed, ProblemReason::MissingName { kind: K::KIND });
            return None;
        };
        let location = ObjectLocation::Named {
            kind: K::KIND.to_owned(),
            namespace: namespace.clone(),
            name,
        };
        match serde_json::from_value::<K>(value) {
            Ok(mut object) => {
                object.metadata_mut().namespace = Some(namespace);
                Some(Defined {
                    file: file.to_path_buf(),
                    location,
                    object,
                })
            }
            Err(error) => {
                let reason = ProblemReason::Invalid {
                    kind: K::KIND,
                    source: error,
                };
                self.problem(file, location, reason);
                None
            }
        }
    }

    fn warn(&mut self, file: &Path, location: ObjectLocation, reason: ManifestWarningReason) {
        self.warnings.push(ManifestWarning {
            file: file.to_path_buf(),
            location,
            reason,
        });
    }
}

/// Adds `defined` under its namespace and name, or reports it as a duplicate of the first.
fn insert_unique<K: Metadata<Ty = ObjectMeta>>(
    objects: &mut BTreeMap<ObjectKey, Defined<K>>,
    problems: &mut Vec<ManifestProblem>,
    defined: Defined<K>,
) {
    let metadata = defined.object.metadata();
    let key = (
        metadata.namespace.clone().unwrap_or_default(),
        metadata.name.clone().unwrap_or_default(),
    );
    match objects.entry(key) {
        Entry::Occupied(first) => problems.push(ManifestProblem {
            file: defined.file,
            location: defined.location,
            reason: ProblemReason::Duplicate {
                first_file: first.get().file.clone(),
                first_location: Box::new(first.get().location.clone()),
            },
        }),
        Entry::Vacant(slot) => {
            slot.insert(defined);
        }
    }
}

/// `(namespace, name)`, with kubectl's default namespace; `None` without a non-empty name.
fn name_of(value: &Value) -> Option<(String, String)> {
    let metadata = value.get("metadata")?;
    let name = metadata
        .get("name")?
        .as_str()
        .filter(|name| !name.is_empty())?;
    let namespace = metadata
        .get("namespace")
        .and_then(Value::as_str)
        .filter(|namespace| !namespace.is_empty())
        .unwrap_or("default");
    Some((namespace.to_owned(), name.to_owned()))
}

fn label<'a>(metadata: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    metadata.labels.as_ref()?.get(key).map(String::as_str)
}

/// The documents up to and including the first syntax error (after which the stream is lost,
/// and the YAML deserializer would repeat the error forever).
fn parse_yaml_documents(text: &str) -> Vec<Result<Value, ProblemReason>> {
    use serde::Deserialize as _;
    let documents = serde_norway::Deserializer::from_str(text).map(|document| {
        let yaml = serde_norway::Value::deserialize(document).map_err(ProblemReason::Yaml)?;
        // Non-string keys and the like do not fit a Kubernetes object.
        serde_json::to_value(yaml).map_err(ProblemReason::Json)
    });
    up_to_first_error(documents)
}

/// A JSON file holds one object, or several one after another.
fn parse_json_documents(text: &str) -> Vec<Result<Value, ProblemReason>> {
    let documents = serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .map(|document| document.map_err(ProblemReason::Json));
    up_to_first_error(documents)
}

fn up_to_first_error<T, E>(items: impl Iterator<Item = Result<T, E>>) -> Vec<Result<T, E>> {
    let mut collected = Vec::new();
    for item in items {
        let failed = item.is_err();
        collected.push(item);
        if failed {
            break;
        }
    }
    collected
}

/// Loads `dir` now (an invalid directory is an error), then watches it and publishes each
/// valid change as a whole; an invalid one is published as `Rejected` with the last good state.
pub fn spawn(
    dir: PathBuf,
    node: NodeInfo,
    debounce: Debounce,
) -> Result<SourceReceiver, ManifestError> {
    let (events_sender, events) = mpsc::unbounded_channel();
    // Watch before the first load, so that no write between the two goes unseen.
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // The receiver is gone only when the source stops.
        let _ = events_sender.send((Instant::now(), event));
    })
    .map_err(|source| ManifestError::Watch {
        dir: dir.clone(),
        source,
    })?;
    watcher
        .watch(&dir, notify::RecursiveMode::NonRecursive)
        .map_err(|source| ManifestError::Watch {
            dir: dir.clone(),
            source,
        })?;

    let started = Instant::now();
    let (snapshot, warnings) = load_dir(&dir, node.clone())?;
    let (mut publisher, receiver) = Publisher::new();
    let state = Published {
        snapshot: snapshot.clone(),
        warnings: warnings.clone(),
        rejection: None,
    };
    publisher.publish(
        snapshot,
        started,
        UpdateCause::Initial,
        wrap_warnings(warnings),
    );

    tokio::spawn(async move {
        // Keeps inotify alive as long as the task runs.
        let _watcher = watcher;
        watch_loop(dir, node, debounce, events, publisher, state).await;
    });
    Ok(receiver)
}

/// What was last published, so that a reload that changes nothing publishes nothing.
struct Published {
    snapshot: Snapshot,
    warnings: Vec<ManifestWarning>,
    /// The rendered rejection, when the last update was one.
    rejection: Option<String>,
}

async fn watch_loop(
    dir: PathBuf,
    node: NodeInfo,
    debounce: Debounce,
    mut events: mpsc::UnboundedReceiver<(Instant, notify::Result<notify::Event>)>,
    mut publisher: Publisher,
    mut published: Published,
) {
    loop {
        let first = tokio::select! {
            () = publisher.closed() => return,
            event = events.recv() => match event {
                Some(event) => event,
                None => return,
            },
        };
        let burst = debounce::gather(&mut events, first, debounce).await;
        let triggered_at = burst[0].0;
        for (_, event) in &burst {
            if let Err(error) = event {
                tracing::warn!(dir = %dir.display(), "inotify reported an error: {error}; reloading the directory");
            }
        }

        let (load_dir_path, load_node) = (dir.clone(), node.clone());
        let loaded = tokio::task::spawn_blocking(move || load_dir(&load_dir_path, load_node))
            .await
            .expect("the manifest loader does not panic");
        match loaded {
            Ok((snapshot, warnings)) => {
                if published.rejection.is_none()
                    && snapshot == published.snapshot
                    && warnings == published.warnings
                {
                    continue;
                }
                published = Published {
                    snapshot: snapshot.clone(),
                    warnings: warnings.clone(),
                    rejection: None,
                };
                publisher.publish(
                    snapshot,
                    triggered_at,
                    UpdateCause::Changed,
                    wrap_warnings(warnings),
                );
            }
            Err(error) => {
                let rendered = error.to_string();
                if published.rejection.as_ref() == Some(&rendered) {
                    continue;
                }
                tracing::warn!("{rendered}; the last good state stays in force");
                published.rejection = Some(rendered);
                publisher.publish(
                    published.snapshot.clone(),
                    triggered_at,
                    UpdateCause::Rejected,
                    vec![SourceProblem::ManifestRejected(Arc::new(error))],
                );
            }
        }
    }
}

/// Logs the warnings (the Kubernetes source logs its problems as they happen; these happen here).
fn wrap_warnings(warnings: Vec<ManifestWarning>) -> Vec<SourceProblem> {
    for warning in &warnings {
        warning.log();
    }
    warnings
        .into_iter()
        .map(SourceProblem::ManifestWarning)
        .collect()
}
