//! A small in-memory Kubernetes API server for tests, so the agent's real kube-rs client
//! code runs against something we control.
//!
//! It serves, over plain HTTP/1.1: discovery (`/api`, `/apis`, group versions, `/version`)
//! for Pods, Namespaces, Services, NetworkPolicies, EndpointSlices, Nodes and (once its
//! CRD is installed, `install_crd`) ClusterNetworkPolicies; list with a
//! resourceVersion; watch from a resourceVersion with bookmarks, and `410 Gone` for one
//! that was compacted away; create (POST), replace (PUT), merge-patch (PATCH) and delete.
//! Resource versions are one global counter, as with etcd. Tests can inject faults: drop
//! every open watch, fail the next requests with 500, or stall for a while.
//!
//! Listeners are bound inside the sandbox's network namespaces (see `listen_in_netns`),
//! so nothing is reachable from outside it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

/// The resources served, with their list kind and URL pieces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Pod,
    Service,
    NetworkPolicy,
    EndpointSlice,
    Node,
    /// Served only once `install_crd` is called, as on a cluster without its CRD.
    ClusterNetworkPolicy,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Namespace,
        Kind::Pod,
        Kind::Service,
        Kind::NetworkPolicy,
        Kind::EndpointSlice,
        Kind::Node,
        Kind::ClusterNetworkPolicy,
    ];

    fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Pod => "pods",
            Kind::Service => "services",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::EndpointSlice => "endpointslices",
            Kind::Node => "nodes",
            Kind::ClusterNetworkPolicy => "clusternetworkpolicies",
        }
    }
    pub fn kind(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Node => "Node",
            Kind::ClusterNetworkPolicy => "ClusterNetworkPolicy",
        }
    }
    fn api_version(self) -> &'static str {
        match self {
            Kind::Namespace | Kind::Pod | Kind::Service | Kind::Node => "v1",
            Kind::NetworkPolicy => "networking.k8s.io/v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::ClusterNetworkPolicy => "policy.networking.k8s.io/v1alpha2",
        }
    }
    fn namespaced(self) -> bool {
        !matches!(
            self,
            Kind::Namespace | Kind::Node | Kind::ClusterNetworkPolicy
        )
    }
    pub fn from_kind(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.kind() == kind)
    }
}

#[derive(Clone, Debug)]
struct WatchEvent {
    rv: u64,
    kind: Kind,
    ty: &'static str,
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<(Kind, String, String), Value>,
    /// Every change, for watches that start in the past.
    history: Vec<WatchEvent>,
    /// Watches from before this version get 410 Gone.
    compacted: u64,
    /// Last change per kind (the version a caught-up watcher of that kind has seen).
    last_change: BTreeMap<Kind, u64>,
    fail_next: u32,
    stall_until: Option<Instant>,
    /// Bumped to end every open watch.
    watch_epoch: u64,
    /// Kubernetes Events the clients created (events.k8s.io/v1), by (namespace, name):
    /// kept apart, never watched (agents do not read them).
    k8s_events: BTreeMap<(String, String), Value>,
    /// Whether the ClusterNetworkPolicy CRD is installed (otherwise its URLs are 404).
    cnp_crd: bool,
}

/// A handle to the server; clones share it.
#[derive(Clone)]
pub struct ApiServer {
    store: Arc<Mutex<Store>>,
    events: broadcast::Sender<WatchEvent>,
}

impl Default for ApiServer {
    fn default() -> Self {
        Self::new()
    }
}

fn now_rfc3339() -> String {
    // Only needs to parse as a timestamp.
    "2026-01-01T00:00:00Z".to_string()
}

impl ApiServer {
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(65536);
        ApiServer {
            store: Arc::new(Mutex::new(Store::default())),
            events,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        match self.store.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Installs the ClusterNetworkPolicy CRD: its URLs answer from now on.
    pub fn install_crd(&self) {
        self.lock().cnp_crd = true;
    }

    /// The route of `path`, if this server serves it now.
    fn route(&self, path: &str) -> Option<Route> {
        let route = Route::parse(path)?;
        let served = route.kind != Kind::ClusterNetworkPolicy || self.lock().cnp_crd;
        served.then_some(route)
    }

    fn key_of(kind: Kind, obj: &Value) -> Result<(Kind, String, String)> {
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("{} without metadata.name", kind.kind()))?;
        let ns = if kind.namespaced() {
            obj.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("{} {name} without metadata.namespace", kind.kind()))?
        } else {
            ""
        };
        Ok((kind, ns.to_string(), name.to_string()))
    }

    fn record(&self, s: &mut Store, kind: Kind, ty: &'static str, object: Value) -> u64 {
        let ev = WatchEvent {
            rv: s.rv,
            kind,
            ty,
            object,
        };
        s.history.push(ev.clone());
        s.last_change.insert(kind, s.rv);
        let _ = self.events.send(ev);
        s.rv
    }

    /// Creates or replaces an object; returns its new resourceVersion.
    pub fn apply(&self, kind: Kind, mut obj: Value) -> Result<u64> {
        let key = Self::key_of(kind, &obj)?;
        let mut s = self.lock();
        s.rv += 1;
        let rv = s.rv;
        let existed = s.objects.get(&key).cloned();
        obj["apiVersion"] = json!(kind.api_version());
        obj["kind"] = json!(kind.kind());
        let meta = &mut obj["metadata"];
        meta["resourceVersion"] = json!(rv.to_string());
        meta["uid"] = existed
            .as_ref()
            .and_then(|e| e.pointer("/metadata/uid").cloned())
            .unwrap_or_else(|| json!(format!("uid-{rv}")));
        meta["creationTimestamp"] = json!(now_rfc3339());
        s.objects.insert(key, obj.clone());
        let ty = if existed.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        Ok(self.record(&mut s, kind, ty, obj))
    }

    /// Deletes an object if present; returns the deletion's resourceVersion.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Option<u64> {
        let key = (kind, namespace.to_string(), name.to_string());
        let mut s = self.lock();
        let mut obj = s.objects.remove(&key)?;
        s.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
        Some(self.record(&mut s, kind, "DELETED", obj))
    }

    pub fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&(kind, namespace.to_string(), name.to_string()))
            .cloned()
    }

    pub fn list(&self, kind: Kind) -> Vec<Value> {
        self.lock()
            .objects
            .iter()
            .filter(|((k, _, _), _)| *k == kind)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The last change of each kind: a watcher that has seen these is caught up.
    pub fn last_changes(&self) -> BTreeMap<Kind, u64> {
        self.lock().last_change.clone()
    }

    // ---- faults ----

    /// Ends every open watch (clients must re-watch or relist).
    pub fn drop_watches(&self) {
        self.lock().watch_epoch += 1;
    }

    /// Forgets history: watches from an older version get 410 Gone.
    pub fn compact(&self) {
        let mut s = self.lock();
        s.compacted = s.rv;
        s.history.clear();
    }

    /// The next `n` requests get 500.
    pub fn fail_next(&self, n: u32) {
        self.lock().fail_next = n;
    }

    /// Requests and watch events wait until `for_` has passed.
    pub fn stall(&self, for_: Duration) {
        self.lock().stall_until = Some(Instant::now() + for_);
    }

    async fn wait_stall(&self) {
        let until = self.lock().stall_until;
        if let Some(t) = until {
            let now = Instant::now();
            if t > now {
                tokio::time::sleep(t - now).await;
            }
        }
    }

    /// Serves one listener until the runtime stops.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                continue;
            };
            let me = self.clone();
            tokio::spawn(async move {
                let _ = me.connection(sock).await;
            });
        }
    }

    async fn connection(&self, sock: TcpStream) -> Result<()> {
        let (read, mut write) = sock.into_split();
        let mut read = BufReader::new(read);
        loop {
            let mut line = String::new();
            if read.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or_default().to_string();
            let target = parts.next().unwrap_or_default().to_string();
            let mut length = 0usize;
            loop {
                let mut h = String::new();
                if read.read_line(&mut h).await? == 0 {
                    return Ok(());
                }
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; length];
            read.read_exact(&mut body).await?;
            self.wait_stall().await;
            let fail = {
                let mut s = self.lock();
                let f = s.fail_next > 0;
                s.fail_next = s.fail_next.saturating_sub(1);
                f
            };
            if fail {
                respond(
                    &mut write,
                    500,
                    &status(500, "InternalError", "injected failure"),
                )
                .await?;
                continue;
            }
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            let query: BTreeMap<&str, &str> = query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .collect();
            if method == "GET" && matches!(query.get("watch"), Some(&"true") | Some(&"1")) {
                // A watch owns the connection until it ends.
                return self.watch(&mut write, path, &query).await;
            }
            let (code, body) = self.handle(&method, path, &body);
            respond(&mut write, code, &body).await?;
        }
    }

    fn handle(&self, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
        let cnp_crd = self.lock().cnp_crd;
        if let Some(d) = discovery(path, cnp_crd) {
            return (200, d);
        }
        if let Some(rest) = path.strip_prefix("/apis/events.k8s.io/v1/namespaces/") {
            return self.handle_event(method, rest, body);
        }
        let Some(route) = self.route(path) else {
            return (404, status(404, "NotFound", &format!("no route {path}")));
        };
        match (method, &route.name) {
            ("GET", None) => {
                let s = self.lock();
                let items: Vec<Value> = s
                    .objects
                    .iter()
                    .filter(|((k, ns, _), _)| {
                        *k == route.kind && route.namespace.as_ref().is_none_or(|n| n == ns)
                    })
                    .map(|(_, v)| v.clone())
                    .collect();
                (
                    200,
                    json!({"kind": format!("{}List", route.kind.kind()),
                           "apiVersion": route.kind.api_version(),
                           "metadata": {"resourceVersion": s.rv.to_string()},
                           "items": items}),
                )
            }
            ("GET", Some(name)) => {
                match self.get(route.kind, route.namespace.as_deref().unwrap_or(""), name) {
                    Some(o) => (200, o),
                    None => (404, status(404, "NotFound", name)),
                }
            }
            ("POST", None) | ("PUT", Some(_)) | ("PATCH", Some(_)) => {
                let Ok(mut obj) = serde_json::from_slice::<Value>(body) else {
                    return (400, status(400, "BadRequest", "body is not JSON"));
                };
                let ns = route.namespace.clone().unwrap_or_default();
                if method == "PATCH" {
                    let name = route.name.clone().unwrap_or_default();
                    let Some(mut current) = self.get(route.kind, &ns, &name) else {
                        return (404, status(404, "NotFound", &name));
                    };
                    merge_patch(&mut current, &obj);
                    obj = current;
                } else if route.kind.namespaced() {
                    obj["metadata"]["namespace"] = json!(ns);
                }
                if method == "POST"
                    && let Ok(key) = Self::key_of(route.kind, &obj)
                    && self.lock().objects.contains_key(&key)
                {
                    return (409, status(409, "AlreadyExists", &key.2));
                }
                match self.apply(route.kind, obj) {
                    Ok(_) => {
                        let code = if method == "POST" { 201 } else { 200 };
                        (code, json!({"kind": "Status", "status": "Success"}))
                    }
                    Err(e) => (422, status(422, "Invalid", &e.to_string())),
                }
            }
            ("DELETE", Some(name)) => {
                match self.delete(route.kind, route.namespace.as_deref().unwrap_or(""), name) {
                    Some(_) => (200, json!({"kind": "Status", "status": "Success"})),
                    None => (404, status(404, "NotFound", name)),
                }
            }
            _ => (405, status(405, "MethodNotAllowed", method)),
        }
    }

    /// `POST NS/events` and `PATCH NS/events/NAME` (what kube's event recorder sends).
    fn handle_event(&self, method: &str, rest: &str, body: &[u8]) -> (u16, Value) {
        let parts: Vec<&str> = rest.split('?').next().unwrap_or("").split('/').collect();
        let Ok(obj) = serde_json::from_slice::<Value>(body) else {
            return (400, status(400, "BadRequest", "body is not JSON"));
        };
        let mut s = self.lock();
        match (method, parts.as_slice()) {
            ("POST", [ns, "events"]) => {
                let name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
                if name.is_empty() {
                    return (422, status(422, "Invalid", "an event needs a name"));
                }
                let mut obj = obj;
                obj["metadata"]["namespace"] = json!(ns);
                s.k8s_events.insert((ns.to_string(), name), obj.clone());
                (201, obj)
            }
            ("PATCH", [ns, "events", name]) => {
                match s.k8s_events.get_mut(&(ns.to_string(), name.to_string())) {
                    Some(current) => {
                        merge_patch(current, &obj);
                        (200, current.clone())
                    }
                    None => (404, status(404, "NotFound", name)),
                }
            }
            _ => (405, status(405, "MethodNotAllowed", method)),
        }
    }

    /// The Kubernetes Events clients created.
    pub fn k8s_events(&self) -> Vec<Value> {
        self.lock().k8s_events.values().cloned().collect()
    }

    async fn watch(
        &self,
        write: &mut tokio::net::tcp::OwnedWriteHalf,
        path: &str,
        query: &BTreeMap<&str, &str>,
    ) -> Result<()> {
        let Some(route) = self.route(path) else {
            return respond(write, 404, &status(404, "NotFound", path)).await;
        };
        let from: u64 = query
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let bookmarks = query.get("allowWatchBookmarks") == Some(&"true");
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(300));
        write
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await?;
        let matches = |ev: &WatchEvent| {
            ev.kind == route.kind
                && route.namespace.as_ref().is_none_or(|ns| {
                    ev.object
                        .pointer("/metadata/namespace")
                        .and_then(Value::as_str)
                        == Some(ns)
                })
        };
        let (mut rx, backlog, epoch, gone) = {
            let s = self.lock();
            let rx = self.events.subscribe();
            let gone = from != 0 && from < s.compacted;
            let backlog: Vec<WatchEvent> = s
                .history
                .iter()
                .filter(|e| e.rv > from && matches(e))
                .cloned()
                .collect();
            (rx, backlog, s.watch_epoch, gone)
        };
        if gone {
            let ev = json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")});
            chunk(write, &ev).await?;
            return finish(write).await;
        }
        let mut last = from;
        for ev in backlog {
            last = ev.rv;
            chunk(write, &json!({"type": ev.ty, "object": ev.object})).await?;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                ev = rx.recv() => {
                    let ev = match ev {
                        Ok(ev) => ev,
                        // Fell behind: let the client relist.
                        Err(_) => return finish(write).await,
                    };
                    if ev.rv <= last || !matches(&ev) {
                        continue;
                    }
                    self.wait_stall().await;
                    last = ev.rv;
                    chunk(write, &json!({"type": ev.ty, "object": ev.object})).await?;
                }
                _ = tick.tick() => {
                    if self.lock().watch_epoch != epoch {
                        return Ok(()); // dropped: close without a clean end
                    }
                    if bookmarks {
                        let rv = self.lock().rv;
                        let bm = json!({"type": "BOOKMARK", "object": {
                            "kind": route.kind.kind(), "apiVersion": route.kind.api_version(),
                            "metadata": {"resourceVersion": rv.to_string()}}});
                        chunk(write, &bm).await?;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => return finish(write).await,
            }
        }
    }
}

struct Route {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
}

impl Route {
    /// `/api/v1[/namespaces/NS]/PLURAL[/NAME]`, `/apis/GROUP/VERSION[/namespaces/NS]/PLURAL[/NAME]`,
    /// and `/api/v1/namespaces[/NAME]` for namespaces themselves (cluster-scoped kinds
    /// have no namespace part).
    fn parse(path: &str) -> Option<Route> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let rest: &[&str] = match parts.as_slice() {
            ["api", "v1", rest @ ..] => rest,
            ["apis", _, _, rest @ ..] => rest,
            _ => return None,
        };
        let by_plural = |p: &str| Kind::ALL.into_iter().find(|k| k.plural() == p);
        let route = match rest {
            ["namespaces"] => Route {
                kind: Kind::Namespace,
                namespace: None,
                name: None,
            },
            ["namespaces", name] => Route {
                kind: Kind::Namespace,
                namespace: None,
                name: Some(name.to_string()),
            },
            ["namespaces", ns, plural] => Route {
                kind: by_plural(plural)?,
                namespace: Some(ns.to_string()),
                name: None,
            },
            ["namespaces", ns, plural, name] => Route {
                kind: by_plural(plural)?,
                namespace: Some(ns.to_string()),
                name: Some(name.to_string()),
            },
            [plural] => Route {
                kind: by_plural(plural)?,
                namespace: None,
                name: None,
            },
            [plural, name] => Route {
                kind: by_plural(plural).filter(|k| !k.namespaced())?,
                namespace: None,
                name: Some(name.to_string()),
            },
            _ => return None,
        };
        let group_ok = match route.kind.api_version() {
            "v1" => parts[0] == "api",
            gv => parts.len() >= 3 && format!("{}/{}", parts[1], parts[2]) == gv,
        };
        group_ok.then_some(route)
    }
}

/// `cnp_crd`: the ClusterNetworkPolicy CRD is installed.
fn discovery(path: &str, cnp_crd: bool) -> Option<Value> {
    let resources = |kinds: &[Kind]| -> Vec<Value> {
        kinds
            .iter()
            .map(|k| json!({"name": k.plural(), "singularName": k.kind().to_lowercase(), "namespaced": k.namespaced(),
                             "kind": k.kind(), "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]}))
            .collect()
    };
    let group = |name: &str, version: &str| {
        json!({"name": name, "versions": [{"groupVersion": format!("{name}/{version}"), "version": version}],
                                    "preferredVersion": {"groupVersion": format!("{name}/{version}"), "version": version}})
    };
    let mut groups = vec![
        group("networking.k8s.io", "v1"),
        group("discovery.k8s.io", "v1"),
    ];
    if cnp_crd {
        groups.push(group("policy.networking.k8s.io", "v1alpha2"));
    }
    Some(match path.trim_end_matches('/') {
        "/version" => json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0-netpol-test"}),
        "/api" => {
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
        }
        "/api/v1" => json!({"kind": "APIResourceList", "groupVersion": "v1",
                            "resources": resources(&[Kind::Namespace, Kind::Pod, Kind::Service, Kind::Node])}),
        "/apis" => json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}),
        "/apis/networking.k8s.io/v1" => {
            json!({"kind": "APIResourceList", "groupVersion": "networking.k8s.io/v1",
                                               "resources": resources(&[Kind::NetworkPolicy])})
        }
        "/apis/discovery.k8s.io/v1" => {
            json!({"kind": "APIResourceList", "groupVersion": "discovery.k8s.io/v1",
                                              "resources": resources(&[Kind::EndpointSlice])})
        }
        "/apis/policy.networking.k8s.io/v1alpha2" if cnp_crd => {
            json!({"kind": "APIResourceList", "groupVersion": "policy.networking.k8s.io/v1alpha2",
                   "resources": resources(&[Kind::ClusterNetworkPolicy])})
        }
        _ => return None,
    })
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
           "reason": reason, "code": code})
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

async fn respond(w: &mut tokio::net::tcp::OwnedWriteHalf, code: u16, body: &Value) -> Result<()> {
    let text = body.to_string();
    let reason = match code {
        200 => "OK",
        201 => "Created",
        404 => "Not Found",
        409 => "Conflict",
        500 => "Internal Server Error",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        text.len()
    );
    w.write_all(head.as_bytes()).await?;
    w.write_all(text.as_bytes()).await?;
    Ok(())
}

async fn chunk(w: &mut tokio::net::tcp::OwnedWriteHalf, v: &Value) -> Result<()> {
    let mut line = v.to_string();
    line.push('\n');
    w.write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes())
        .await?;
    w.flush().await?;
    Ok(())
}

async fn finish(w: &mut tokio::net::tcp::OwnedWriteHalf) -> Result<()> {
    w.write_all(b"0\r\n\r\n").await?;
    Ok(())
}

/// Binds `127.0.0.1:port` inside network namespace `netns` (from a short-lived thread that
/// enters it), so the listener serves that namespace's loopback and nothing else.
pub fn listen_in_netns(netns: &str, port: u16) -> Result<std::net::TcpListener> {
    let path = format!("/run/netns/{netns}");
    std::thread::scope(|s| {
        s.spawn(|| -> Result<std::net::TcpListener> {
            let f = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            use std::os::fd::AsRawFd;
            // SAFETY: setns on this thread only; the fd is a valid netns file.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns {netns}: {}", std::io::Error::last_os_error());
            }
            let l = std::net::TcpListener::bind(("127.0.0.1", port))
                .with_context(|| format!("binding 127.0.0.1:{port} in {netns}"))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .join()
        .map_err(|_| anyhow!("listener thread panicked"))?
    })
}
