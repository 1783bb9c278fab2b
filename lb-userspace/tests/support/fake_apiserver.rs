//! An in-process Kubernetes API server speaking enough of list and watch for kube-runtime's
//! watcher, over HTTP or TLS on 127.0.0.1.
//!
//! Requests it serves (kube-core 5 `Request::list` / `Request::watch`, kube-runtime 5 watcher):
//! - list: `GET /api/v1/services?labelSelector=..&limit=500[&continue=..]`, answered with
//!   `metadata.resourceVersion` and a `continue` token while more pages remain.
//! - watch: `GET ...?watch=true&timeoutSeconds=290&labelSelector=..&allowWatchBookmarks=true
//!   [&sendInitialEvents=true&resourceVersionMatch=NotOlderThan]&resourceVersion=N`, answered
//!   with newline-delimited events: replayed history after N, then live events, BOOKMARKs, the
//!   `k8s.io/initial-events-end` bookmark for streaming lists, and — when N was compacted — the
//!   in-stream `ERROR` event with code 410 that the real server sends (and kube relists on).
//!
//! Test controls: [`FakeApiServer::apply`] / [`FakeApiServer::delete`] (each bumps one global
//! resourceVersion), [`FakeApiServer::drop_watches`], [`FakeApiServer::hold_watches`],
//! [`FakeApiServer::compact`], and [`FakeApiServer::requests`] to see what the client asked.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the fake"
)]

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::{Request, Response, StatusCode, body::Frame, service::service_fn};
use hyper_util::rt::TokioIo;
use k8s_openapi::{Metadata, Resource, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Value, json};
use tokio::{
    net::TcpListener,
    sync::{mpsc, watch},
    task::JoinSet,
    time::Instant,
};

type Body = BoxBody<Bytes, Infallible>;

/// How often open watches that asked for bookmarks get one.
const BOOKMARK_EVERY: Duration = Duration::from_millis(500);

/// A running fake; stops (closing every connection) when dropped.
pub struct FakeApiServer {
    shared: Arc<Shared>,
    address: SocketAddr,
    tls: Option<TlsMaterial>,
    tasks: Mutex<JoinSet<()>>,
}

/// The CA a client must trust to reach the TLS mode.
pub struct TlsMaterial {
    pub ca_pem: String,
}

struct Shared {
    state: Mutex<State>,
    /// `true` while watch requests are held (not answered) by [`FakeApiServer::hold_watches`].
    held: watch::Sender<bool>,
    /// When set, every request must carry `Authorization: Bearer <token>`.
    token: Option<String>,
}

#[derive(Default)]
struct State {
    resource_version: u64,
    /// Watches resuming from before this answer 410 Gone.
    compacted: u64,
    /// Collection path ("/api/v1/services") -> (namespace, name) -> object.
    objects: BTreeMap<String, BTreeMap<(String, String), Value>>,
    history: Vec<Change>,
    watches: Vec<OpenWatch>,
    requests: Vec<String>,
}

/// One write, as the watch cache keeps it.
#[derive(Clone)]
struct Change {
    resource_version: u64,
    collection: String,
    old: Option<Value>,
    /// For a deletion: the last state, stamped with the deletion's resourceVersion.
    new: Value,
    deleted: bool,
}

struct OpenWatch {
    collection: String,
    filter: Filter,
    bookmarks: bool,
    /// The kind sent in bookmarks.
    kind: String,
    api_version: String,
    sender: mpsc::UnboundedSender<Bytes>,
}

impl FakeApiServer {
    /// Plain HTTP, no authentication.
    pub async fn start() -> Self {
        Self::start_with(None, None).await
    }

    /// TLS with a fresh CA, and `token` required as a bearer token.
    pub async fn start_tls(token: &str) -> Self {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("no names");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "fake-apiserver-ca");
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let ca_certificate = ca.self_signed(&ca_key).expect("CA certificate");
        let issuer = rcgen::Issuer::new(ca, ca_key);

        let mut leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("valid names");
        leaf.distinguished_name
            .push(rcgen::DnType::CommonName, "fake-apiserver");
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = rcgen::KeyPair::generate().expect("server key");
        let leaf_certificate = leaf
            .signed_by(&leaf_key, &issuer)
            .expect("server certificate");

        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf_certificate.der().clone()],
                tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(
                    leaf_key.serialize_der().into(),
                ),
            )
            .expect("valid key pair");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        Self::start_with(
            Some((acceptor, ca_certificate.pem())),
            Some(token.to_owned()),
        )
        .await
    }

    async fn start_with(
        tls: Option<(tokio_rustls::TlsAcceptor, String)>,
        token: Option<String>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1");
        let address = listener.local_addr().expect("bound address");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            held: watch::channel(false).0,
            token,
        });
        let mut tasks = JoinSet::new();
        let acceptor = tls.as_ref().map(|(acceptor, _)| acceptor.clone());
        let accept_shared = shared.clone();
        tasks.spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                // Forget finished connections.
                while connections.try_join_next().is_some() {}
                let shared = accept_shared.clone();
                let acceptor = acceptor.clone();
                connections.spawn(async move {
                    let service = service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, request).await) }
                    });
                    let http = hyper::server::conn::http1::Builder::new();
                    // A client that went away is not the test's concern.
                    let _ = match acceptor {
                        Some(acceptor) => match acceptor.accept(stream).await {
                            Ok(tls) => http.serve_connection(TokioIo::new(tls), service).await,
                            Err(_) => return,
                        },
                        None => http.serve_connection(TokioIo::new(stream), service).await,
                    };
                });
            }
        });
        let bookmark_shared = shared.clone();
        tasks.spawn(async move {
            let mut ticks = tokio::time::interval(BOOKMARK_EVERY);
            loop {
                ticks.tick().await;
                bookmark_shared.lock().send_bookmarks();
            }
        });
        Self {
            shared,
            address,
            tls: tls.map(|(_, ca_pem)| TlsMaterial { ca_pem }),
            tasks: Mutex::new(tasks),
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.address)
    }

    pub fn tls(&self) -> Option<&TlsMaterial> {
        self.tls.as_ref()
    }

    /// Writes a kubeconfig for this server (plain HTTP mode) into `dir`.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let config = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url()}}],
            "users": [{"name": "fake", "user": {}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        });
        std::fs::write(&path, config.to_string()).expect("write kubeconfig");
        path
    }

    /// Creates or replaces `object`; returns the new resourceVersion.
    pub fn apply<K>(&self, object: &K) -> u64
    where
        K: Resource + Metadata<Ty = ObjectMeta> + Serialize,
    {
        let mut value = serde_json::to_value(object).expect("serializable");
        value["apiVersion"] = Value::from(K::API_VERSION);
        value["kind"] = Value::from(K::KIND);
        let key = key_of(object.metadata());
        self.shared
            .lock()
            .write(collection_of::<K>(), key, Some(value))
    }

    /// Deletes an object; returns the new resourceVersion, or `None` if there was none.
    pub fn delete<K: Resource>(&self, namespace: Option<&str>, name: &str) -> Option<u64> {
        let key = (namespace.unwrap_or_default().to_owned(), name.to_owned());
        let mut state = self.shared.lock();
        let exists = state
            .objects
            .get(&collection_of::<K>())
            .is_some_and(|objects| objects.contains_key(&key));
        exists.then(|| state.write(collection_of::<K>(), key, None))
    }

    /// What the server holds now, sorted by namespace and name.
    pub fn objects<K: Resource + DeserializeOwned>(&self) -> Vec<K> {
        let state = self.shared.lock();
        state
            .objects
            .get(&collection_of::<K>())
            .map(|objects| {
                objects
                    .values()
                    .map(|value| serde_json::from_value(value.clone()).expect("stored valid"))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn resource_version(&self) -> u64 {
        self.shared.lock().resource_version
    }

    /// Ends every open watch (the client sees the stream end, and resumes).
    pub fn drop_watches(&self) {
        self.shared.lock().watches.clear();
    }

    /// Ends every open watch and answers new watch requests only after [`Self::release_watches`].
    pub fn hold_watches(&self) {
        // Under the lock, so that no watch request registers between the two steps.
        let mut state = self.shared.lock();
        self.shared.held.send_replace(true);
        state.watches.clear();
    }

    pub fn release_watches(&self) {
        self.shared.held.send_replace(false);
    }

    /// Forgets history: resuming a watch from an older resourceVersion now gets 410 Gone.
    pub fn compact(&self) {
        let mut state = self.shared.lock();
        state.compacted = state.resource_version;
        state.history.clear();
    }

    /// Every request so far, as `path?query`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.clone()
    }

    /// Number of open watch streams.
    pub fn open_watches(&self) -> usize {
        self.shared.lock().watches.len()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.abort_all();
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("no test panicked while holding the fake's lock")
    }
}

fn collection_of<K: Resource>() -> String {
    if K::GROUP.is_empty() {
        format!("/api/{}/{}", K::VERSION, K::URL_PATH_SEGMENT)
    } else {
        format!("/apis/{}/{}/{}", K::GROUP, K::VERSION, K::URL_PATH_SEGMENT)
    }
}

fn key_of(metadata: &ObjectMeta) -> (String, String) {
    (
        metadata.namespace.clone().unwrap_or_default(),
        metadata.name.clone().expect("test objects have names"),
    )
}

impl State {
    /// Stores (or with `None`, deletes) one object, records it and tells the matching watches.
    fn write(&mut self, collection: String, key: (String, String), new: Option<Value>) -> u64 {
        self.resource_version += 1;
        let version = self.resource_version.to_string();
        let objects = self.objects.entry(collection.clone()).or_default();
        let old = objects.get(&key).cloned();
        let (new, deleted) = match new {
            Some(mut value) => {
                let metadata = &mut value["metadata"];
                metadata["resourceVersion"] = Value::from(version);
                if metadata.get("uid").is_none() {
                    let uid = format!("uid-{}-{}-{}", key.0, key.1, self.resource_version);
                    metadata["uid"] = Value::from(uid);
                }
                objects.insert(key, value.clone());
                (value, false)
            }
            None => {
                let mut last = objects.remove(&key).expect("deleting an existing object");
                last["metadata"]["resourceVersion"] = Value::from(version);
                (last, true)
            }
        };
        let change = Change {
            resource_version: self.resource_version,
            collection,
            old,
            new,
            deleted,
        };
        self.watches.retain(|watch| match watch.event_for(&change) {
            Some(line) => watch.sender.send(line).is_ok(),
            None => !watch.sender.is_closed(),
        });
        self.history.push(change);
        self.resource_version
    }

    fn send_bookmarks(&mut self) {
        let version = self.resource_version;
        self.watches.retain(|watch| {
            !watch.bookmarks || watch.sender.send(watch.bookmark(version, false)).is_ok()
        });
    }
}

impl OpenWatch {
    /// The event this watch sees for `change`, following the object in and out of its filter.
    fn event_for(&self, change: &Change) -> Option<Bytes> {
        if change.collection != self.collection {
            return None;
        }
        let was = change
            .old
            .as_ref()
            .is_some_and(|old| self.filter.matches(old));
        let is = self.filter.matches(&change.new);
        let kind = match (was, is, change.deleted) {
            (true, _, true) => "DELETED",
            (false, _, true) | (false, false, false) => return None,
            (false, true, false) => "ADDED",
            (true, true, false) => "MODIFIED",
            // It no longer matches the selector: gone, as far as this watch is concerned.
            (true, false, false) => "DELETED",
        };
        Some(event_line(kind, &change.new))
    }

    fn bookmark(&self, version: u64, initial_events_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": version.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object =
            json!({"apiVersion": self.api_version, "kind": self.kind, "metadata": metadata});
        event_line("BOOKMARK", &object)
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).expect("json");
    line.push(b'\n');
    Bytes::from(line)
}

fn status(code: StatusCode, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    })
}

fn respond(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("valid response")
}

fn failure(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    respond(code, &status(code, reason, message))
}

/// A collection request: which objects, and the query.
struct Query {
    collection: String,
    namespace: Option<String>,
    api_version: String,
    params: BTreeMap<String, String>,
}

fn parse_request(uri: &hyper::Uri) -> Option<Query> {
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    // /api/v1/[namespaces/NS/]PLURAL or /apis/GROUP/VERSION/[namespaces/NS/]PLURAL
    let (prefix, rest) = match segments.as_slice() {
        ["api", version, rest @ ..] => (format!("/api/{version}"), rest),
        ["apis", group, version, rest @ ..] => (format!("/apis/{group}/{version}"), rest),
        _ => return None,
    };
    let api_version = prefix
        .trim_start_matches("/api/")
        .trim_start_matches("/apis/")
        .to_owned();
    let (namespace, plural) = match rest {
        [plural] => (None, *plural),
        ["namespaces", namespace, plural] => (Some((*namespace).to_owned()), *plural),
        _ => return None,
    };
    let params = uri
        .query()
        .map(|query| {
            url_decode_pairs(query)
                .into_iter()
                .filter(|(key, _)| !key.is_empty())
                .collect()
        })
        .unwrap_or_default();
    Some(Query {
        collection: format!("{prefix}/{plural}"),
        namespace,
        api_version,
        params,
    })
}

/// The decoded value of the query parameter `name` of a recorded request (`path?query`, as
/// [`FakeApiServer::requests`] lists them).
pub fn query_param(request: &str, name: &str) -> Option<String> {
    let (_, query) = request.split_once('?')?;
    url_decode_pairs(query)
        .into_iter()
        .find_map(|(key, value)| (key == name).then_some(value))
}

fn url_decode_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'+' => decoded.push(b' '),
            b'%' if index + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[index + 1..index + 3])
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok());
                match hex {
                    Some(byte) => {
                        decoded.push(byte);
                        index += 2;
                    }
                    None => decoded.push(b'%'),
                }
            }
            byte => decoded.push(byte),
        }
        index += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

async fn handle(shared: &Shared, request: Request<hyper::body::Incoming>) -> Response<Body> {
    let uri = request.uri().clone();
    shared.lock().requests.push(
        uri.path_and_query()
            .map(ToString::to_string)
            .unwrap_or_default(),
    );
    if let Some(token) = &shared.token {
        let expected = format!("Bearer {token}");
        let given = request
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        if given != Some(expected.as_str()) {
            return failure(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized");
        }
    }
    if request.method() != hyper::Method::GET {
        return failure(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the fake only lists and watches",
        );
    }
    let Some(query) = parse_request(&uri) else {
        return failure(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    let filter = match Filter::parse(&query) {
        Ok(filter) => filter,
        Err(message) => return failure(StatusCode::BAD_REQUEST, "BadRequest", &message),
    };
    if query
        .params
        .get("watch")
        .is_some_and(|watch| watch == "true" || watch == "1")
    {
        watch(shared, &query, filter).await
    } else {
        list(shared, &query, &filter)
    }
}

/// The kind of the collection's objects (for list kinds and bookmarks).
fn kind_for(collection: &str) -> &'static str {
    match collection.rsplit('/').next() {
        Some("services") => "Service",
        Some("endpointslices") => "EndpointSlice",
        Some("nodes") => "Node",
        _ => "",
    }
}

fn list(shared: &Shared, query: &Query, filter: &Filter) -> Response<Body> {
    let state = shared.lock();
    let limit: Option<usize> = query
        .params
        .get("limit")
        .and_then(|limit| limit.parse().ok())
        .filter(|&limit| limit > 0);
    // The token is "LISTVERSION/NAMESPACE/NAME": the list's version and the last key served.
    let (list_version, after) = match query
        .params
        .get("continue")
        .filter(|token| !token.is_empty())
    {
        Some(token) => {
            let mut parts = token.splitn(3, '/');
            let (Some(version), Some(namespace), Some(name)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return failure(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "malformed continue token",
                );
            };
            let Ok(version) = version.parse::<u64>() else {
                return failure(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "malformed continue token",
                );
            };
            if version < state.compacted {
                return failure(
                    StatusCode::GONE,
                    "Expired",
                    "The provided continue parameter is too old to display a consistent list result.",
                );
            }
            (version, Some((namespace.to_owned(), name.to_owned())))
        }
        None => (state.resource_version, None),
    };
    let empty = BTreeMap::new();
    let objects = state.objects.get(&query.collection).unwrap_or(&empty);
    let mut items = Vec::new();
    let mut more = false;
    let matching = objects
        .iter()
        .filter(|(key, _)| after.as_ref().is_none_or(|after| *key > after))
        .filter(|(_, object)| filter.matches(object));
    for (key, object) in matching {
        if limit.is_some_and(|limit| items.len() == limit) {
            more = true;
            break;
        }
        items.push((key.clone(), object.clone()));
    }
    // The token names the last served key: the next page starts after it.
    let continue_token = more.then(|| {
        let (namespace, name) = &items.last().expect("a full page").0;
        format!("{list_version}/{namespace}/{name}")
    });
    let kind = kind_for(&query.collection);
    let body = json!({
        "apiVersion": query.api_version,
        "kind": format!("{kind}List"),
        "metadata": {
            "resourceVersion": list_version.to_string(),
            "continue": continue_token.unwrap_or_default(),
        },
        "items": items.into_iter().map(|(_, object)| object).collect::<Vec<_>>(),
    });
    respond(StatusCode::OK, &body)
}

async fn watch(shared: &Shared, query: &Query, filter: Filter) -> Response<Body> {
    let (sender, receiver) = mpsc::unbounded_channel();
    let timeout = query
        .params
        .get("timeoutSeconds")
        .and_then(|seconds| seconds.parse::<u64>().ok())
        .map_or(Duration::from_secs(1800), Duration::from_secs);
    let bookmarks = query
        .params
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    let initial_events = query
        .params
        .get("sendInitialEvents")
        .is_some_and(|v| v == "true");
    let requested = query
        .params
        .get("resourceVersion")
        .cloned()
        .unwrap_or_default();

    let mut held = shared.held.subscribe();
    let mut state = loop {
        // Held watches wait here, as if the server were unreachable.
        let _ = held.wait_for(|held| !held).await;
        let state = shared.lock();
        // Checked again under the lock: `hold_watches` holds it while it holds and drops.
        if !*held.borrow() {
            break state;
        }
    };
    let open = OpenWatch {
        collection: query.collection.clone(),
        filter,
        bookmarks,
        kind: kind_for(&query.collection).to_owned(),
        api_version: query.api_version.clone(),
        sender,
    };
    let current = state.resource_version;
    let mut keep_open = true;
    if initial_events || requested.is_empty() || requested == "0" {
        // Synthetic ADDED events for the current state, as the watch cache sends them.
        let empty = BTreeMap::new();
        for object in state
            .objects
            .get(&query.collection)
            .unwrap_or(&empty)
            .values()
        {
            if open.filter.matches(object) {
                let _ = open.sender.send(event_line("ADDED", object));
            }
        }
        if initial_events {
            let _ = open.sender.send(open.bookmark(current, true));
        }
    } else {
        let Ok(from) = requested.parse::<u64>() else {
            return failure(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "resourceVersion is not a number",
            );
        };
        if from < state.compacted {
            // What the real server sends: 200 OK, then an in-stream ERROR with 410 Expired.
            let gone = status(
                StatusCode::GONE,
                "Expired",
                &format!("too old resource version: {from} ({})", state.compacted),
            );
            let _ = open.sender.send(event_line("ERROR", &gone));
            keep_open = false;
        } else {
            for change in state
                .history
                .iter()
                .filter(|change| change.resource_version > from)
            {
                if let Some(line) = open.event_for(change) {
                    let _ = open.sender.send(line);
                }
            }
        }
    }
    let deadline = Instant::now() + timeout;
    // Without a registered sender the stream ends after what was queued (the 410).
    if keep_open {
        state.watches.push(open);
    }
    drop(state);

    let stream = futures::stream::unfold(receiver, move |mut receiver| async move {
        match tokio::time::timeout_at(deadline, receiver.recv()).await {
            Ok(Some(line)) => Some((Ok::<_, Infallible>(Frame::data(line)), receiver)),
            // Dropped by a test control, compacted, or timed out: the stream ends.
            Ok(None) | Err(_) => None,
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(StreamBody::new(stream).boxed())
        .expect("valid response")
}

/// Label and field selectors, as far as kube-proxy-like clients use them.
struct Filter {
    namespace: Option<String>,
    labels: Vec<LabelRequirement>,
    fields: Vec<(String, bool, String)>,
}

enum LabelRequirement {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

impl Filter {
    fn parse(query: &Query) -> Result<Self, String> {
        let labels = match query.params.get("labelSelector") {
            Some(selector) => split_top_level(selector)
                .into_iter()
                .filter(|part| !part.trim().is_empty())
                .map(|part| LabelRequirement::parse(part.trim()))
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let mut fields = Vec::new();
        if let Some(selector) = query.params.get("fieldSelector") {
            for part in selector.split(',').filter(|part| !part.is_empty()) {
                let (field, equal, value) = if let Some((field, value)) = part.split_once("!=") {
                    (field, false, value)
                } else if let Some((field, value)) = part.split_once("==") {
                    (field, true, value)
                } else if let Some((field, value)) = part.split_once('=') {
                    (field, true, value)
                } else {
                    return Err(format!("invalid field selector {part:?}"));
                };
                if field != "metadata.name" && field != "metadata.namespace" {
                    return Err(format!("field label not supported: {field}"));
                }
                fields.push((field.to_owned(), equal, value.to_owned()));
            }
        }
        Ok(Self {
            namespace: query.namespace.clone(),
            labels,
            fields,
        })
    }

    fn matches(&self, object: &Value) -> bool {
        let metadata = &object["metadata"];
        let namespace = metadata["namespace"].as_str().unwrap_or_default();
        if self
            .namespace
            .as_deref()
            .is_some_and(|wanted| wanted != namespace)
        {
            return false;
        }
        let fields_match = self.fields.iter().all(|(field, equal, value)| {
            let actual = match field.as_str() {
                "metadata.name" => metadata["name"].as_str().unwrap_or_default(),
                _ => namespace,
            };
            (actual == value) == *equal
        });
        let no_labels = serde_json::Map::new();
        let labels = metadata["labels"].as_object().unwrap_or(&no_labels);
        let label = |key: &str| labels.get(key).and_then(Value::as_str);
        fields_match
            && self.labels.iter().all(|requirement| match requirement {
                LabelRequirement::Exists(key) => label(key).is_some(),
                LabelRequirement::NotExists(key) => label(key).is_none(),
                LabelRequirement::Equals(key, value) => label(key) == Some(value),
                LabelRequirement::NotEquals(key, value) => label(key) != Some(value),
                LabelRequirement::In(key, values) => {
                    label(key).is_some_and(|actual| values.iter().any(|value| value == actual))
                }
                LabelRequirement::NotIn(key, values) => {
                    label(key).is_none_or(|actual| values.iter().all(|value| value != actual))
                }
            })
    }
}

impl LabelRequirement {
    fn parse(text: &str) -> Result<Self, String> {
        let set = |values: &str| {
            values
                .trim()
                .strip_prefix('(')
                .and_then(|values| values.strip_suffix(')'))
                .map(|values| {
                    values
                        .split(',')
                        .map(|value| value.trim().to_owned())
                        .collect()
                })
                .ok_or_else(|| format!("invalid set in label selector {text:?}"))
        };
        if let Some(key) = text.strip_prefix('!') {
            Ok(Self::NotExists(key.trim().to_owned()))
        } else if let Some((key, value)) = text.split_once("!=") {
            Ok(Self::NotEquals(
                key.trim().to_owned(),
                value.trim().to_owned(),
            ))
        } else if let Some((key, value)) = text.split_once("==") {
            Ok(Self::Equals(key.trim().to_owned(), value.trim().to_owned()))
        } else if let Some((key, value)) = text.split_once('=') {
            Ok(Self::Equals(key.trim().to_owned(), value.trim().to_owned()))
        } else if let Some((key, values)) = text.split_once(" notin ") {
            Ok(Self::NotIn(key.trim().to_owned(), set(values)?))
        } else if let Some((key, values)) = text.split_once(" in ") {
            Ok(Self::In(key.trim().to_owned(), set(values)?))
        } else {
            Ok(Self::Exists(text.trim().to_owned()))
        }
    }
}

/// Splits a selector at commas outside parentheses.
fn split_top_level(selector: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0);
    for (index, character) in selector.char_indices() {
        match character {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&selector[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    parts.push(&selector[start..]);
    parts
}
