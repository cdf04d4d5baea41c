//! The Kubernetes API as a source: one kube-runtime watcher per kind, all feeding the
//! same `ClusterState`.
//!
//! A watcher lists, then watches; when its watch ends, breaks or its resourceVersion is
//! too old (410 Gone) it relists, and a relist replaces that kind's objects wholesale
//! (and costs no compile when it changes nothing). Objects are trimmed to what policy
//! needs as they arrive, relists included, so a relist holds at most one kind twice in
//! trimmed form and a page (`--list-mode`) of full objects. While the API server is
//! away, the watchers retry with backoff and the last known state stays enforced.
//!
//! Services' EndpointSlices are not watched: egress is decided on the translated
//! (backend) address, so the datapath needs only the Service addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::sources::cnp::ClusterNetworkPolicy;
use crate::state::{ClusterState, StateError, object_ref};

/// What the watchers have built so far.
#[derive(Default)]
pub struct Shared {
    pub state: ClusterState,
    /// Kinds whose first list has completed.
    pub synced: BTreeSet<&'static str>,
    /// Newest resourceVersion seen per kind (a deletion counts).
    pub versions: BTreeMap<&'static str, u64>,
    pub watch_errors: u64,
    /// Objects that could not be taken in, with why.
    pub rejected: BTreeMap<String, String>,
    /// Bumped when `state` changes; updates of what policy does not read leave it (and
    /// the compiled plan) alone.
    pub revision: u64,
    /// Kinds the API server does not serve (the ClusterNetworkPolicy CRD is not
    /// installed): their watchers keep looking, with backoff.
    pub absent: BTreeSet<&'static str>,
}

/// The kinds enforcement waits for.
pub const KINDS: [&str; 4] = ["Namespace", "Pod", "Service", "NetworkPolicy"];

/// Kinds read and reported that nothing enforced depends on yet: enforcement does not
/// wait for them (ClusterNetworkPolicy's CRD may not even be installed).
pub const OPTIONAL_KINDS: [&str; 2] = ["Node", "ClusterNetworkPolicy"];

pub type SharedState = Arc<Mutex<Shared>>;

fn lock(s: &SharedState) -> std::sync::MutexGuard<'_, Shared> {
    match s.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// How the watchers list (first sync and every relist).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ListMode {
    /// Consistent lists in pages of 500: memory stays bounded by a page, and since
    /// Kubernetes 1.31 (consistent reads from the watch cache) no list reaches etcd.
    #[default]
    Paged,
    /// `resourceVersion=0`: served from the watch cache on every version, possibly a
    /// little stale, and in one response (the whole kind at once).
    Cached,
    /// Streaming lists (`sendInitialEvents`, the WatchList feature): the initial state
    /// arrives as watch events from the cache. The API server must have the feature on.
    Streaming,
}

impl ListMode {
    fn config(self) -> watcher::Config {
        let c = watcher::Config::default();
        match self {
            ListMode::Paged => c.page_size(500),
            ListMode::Cached => c.any_semantic(),
            ListMode::Streaming => c.streaming_lists(),
        }
    }
}

/// How one kind enters and leaves the state.
struct KindOps<K> {
    kind: &'static str,
    /// Whether the state changed.
    upsert: fn(&mut ClusterState, &K) -> Result<bool, StateError>,
    /// Whether the state changed.
    remove: fn(&mut ClusterState, &K) -> bool,
    /// Replaces this kind's objects with those of a relist; whether anything changed.
    adopt: fn(&mut ClusterState, ClusterState) -> bool,
    /// Copies an object's entry, if any, from the live state into a relist's: a relisted
    /// object that is rejected keeps its last good version, as on a watch update.
    carry: fn(&ClusterState, &mut ClusterState, &K),
    /// A field selector for the watch, if the kind has objects policy never reads.
    fields: Option<&'static str>,
}

fn replace_all<T: PartialEq>(current: &mut T, listed: T) -> bool {
    let changed = *current != listed;
    *current = listed;
    changed
}

/// The `KindOps` of a kind kept in `ClusterState::$field`, keyed by `$key` of an
/// object's metadata (its name, or its `namespace/name`).
macro_rules! kind_ops {
    ($kind:literal, $field:ident, $upsert:ident, $key:path, $fields:expr) => {
        KindOps {
            kind: $kind,
            upsert: |s, o| s.$upsert(o),
            remove: |s, o| $key(&o.metadata).is_some_and(|k| s.$field.remove(&k).is_some()),
            adopt: |s, l| replace_all(&mut s.$field, l.$field),
            carry: |live, relisted, o| {
                if let Some(k) = $key(&o.metadata)
                    && let Some(v) = live.$field.get(&k)
                {
                    relisted.$field.insert(k, v.clone());
                }
            },
            fields: $fields,
        }
    };
}

/// The key of a cluster-scoped object: its name.
fn name_key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<String> {
    meta.name.clone()
}

/// Starts the watchers; `changed` gets a message after every change (bursts collapse).
pub fn start(client: Client, mode: ListMode, changed: mpsc::Sender<()>) -> SharedState {
    let shared: SharedState = Arc::default();
    let config = mode.config();
    spawn(
        Api::<Namespace>::all(client.clone()),
        config.clone(),
        kind_ops!("Namespace", namespaces, upsert_namespace, name_key, None),
        shared.clone(),
        changed.clone(),
    );
    spawn(
        Api::<Pod>::all(client.clone()),
        config.clone(),
        pod_ops(),
        shared.clone(),
        changed.clone(),
    );
    spawn(
        Api::<Service>::all(client.clone()),
        config.clone(),
        kind_ops!("Service", services, upsert_service, object_ref, None),
        shared.clone(),
        changed.clone(),
    );
    spawn(
        Api::<Node>::all(client.clone()),
        config.clone(),
        kind_ops!("Node", nodes, upsert_node, name_key, None),
        shared.clone(),
        changed.clone(),
    );
    spawn(
        Api::<ClusterNetworkPolicy>::all(client.clone()),
        config.clone(),
        kind_ops!(
            "ClusterNetworkPolicy",
            cluster_policies,
            upsert_cluster_policy,
            name_key,
            None
        ),
        shared.clone(),
        changed.clone(),
    );
    spawn(
        Api::<NetworkPolicy>::all(client),
        config.clone(),
        kind_ops!("NetworkPolicy", policies, upsert_policy, object_ref, None),
        shared.clone(),
        changed.clone(),
    );
    shared
}

fn pod_ops() -> KindOps<Pod> {
    // A finished pod holds no address: the API server leaves it out, and sends a
    // deletion when a pod finishes.
    kind_ops!(
        "Pod",
        pods,
        upsert_pod,
        object_ref,
        Some("status.phase!=Succeeded,status.phase!=Failed")
    )
}

fn version_of<K: Resource>(o: &K) -> Option<u64> {
    o.meta().resource_version.as_deref()?.parse().ok()
}

fn name_of<K: Resource>(kind: &str, o: &K) -> String {
    format!(
        "{kind} {}",
        object_ref(o.meta())
            .map(|r| r.to_string())
            .unwrap_or_default()
    )
}

impl Shared {
    fn saw_version(&mut self, kind: &'static str, v: Option<u64>) {
        if let Some(v) = v {
            let e = self.versions.entry(kind).or_insert(0);
            *e = (*e).max(v);
        }
    }
}

/// A relist in progress: objects are trimmed into their own state as they arrive (the
/// full objects are never held), and replace the kind's objects when the list is done.
struct Relist<K> {
    state: ClusterState,
    rejected: BTreeMap<String, String>,
    /// The rejected objects themselves (few): they keep their last good version.
    rejected_objects: Vec<K>,
    newest: Option<u64>,
}

impl<K> Default for Relist<K> {
    fn default() -> Self {
        Relist {
            state: ClusterState::default(),
            rejected: BTreeMap::new(),
            rejected_objects: Vec::new(),
            newest: None,
        }
    }
}

/// One kind's watcher events, applied to the shared state. Pure: the tests drive it.
struct KindWatch<K> {
    ops: KindOps<K>,
    relist: Option<Relist<K>>,
}

impl<K: Resource> KindWatch<K> {
    fn new(ops: KindOps<K>) -> Self {
        KindWatch { ops, relist: None }
    }

    /// Takes one event; `listed` is the collection's version, asked at `InitDone`.
    /// Returns whether the agent is to be told (it is told of every update, so its status
    /// reports the versions it has seen applied; only a change of the state makes it
    /// compile).
    fn handle(&mut self, shared: &SharedState, ev: Event<K>, listed: Option<u64>) -> bool {
        let ops = &self.ops;
        match ev {
            Event::Init => {
                self.relist = Some(Relist::default());
                false
            }
            Event::InitApply(o) => {
                if let Some(r) = self.relist.as_mut() {
                    r.newest = r.newest.max(version_of(&o));
                    if let Err(e) = (ops.upsert)(&mut r.state, &o) {
                        let name = name_of(ops.kind, &o);
                        warn!(object = %name, error = %e, "object not taken in");
                        r.rejected.insert(name, e.to_string());
                        r.rejected_objects.push(o);
                    }
                }
                false
            }
            Event::InitDone => {
                let r = self.relist.take().unwrap_or_default();
                let mut s = lock(shared);
                let prefix = format!("{} ", ops.kind);
                s.rejected.retain(|name, _| !name.starts_with(&prefix));
                s.rejected.extend(r.rejected);
                let mut listed_state = r.state;
                for o in &r.rejected_objects {
                    (ops.carry)(&s.state, &mut listed_state, o);
                }
                if (ops.adopt)(&mut s.state, listed_state) {
                    s.revision += 1;
                }
                s.saw_version(ops.kind, r.newest);
                s.saw_version(ops.kind, listed);
                s.synced.insert(ops.kind);
                true
            }
            Event::Apply(o) => {
                let mut s = lock(shared);
                let name = name_of(ops.kind, &o);
                match (ops.upsert)(&mut s.state, &o) {
                    Ok(changed) => {
                        s.rejected.remove(&name);
                        if changed {
                            s.revision += 1;
                        }
                    }
                    Err(e) => {
                        warn!(object = %name, error = %e, "object not taken in");
                        s.rejected.insert(name, e.to_string());
                    }
                }
                s.saw_version(ops.kind, version_of(&o));
                true
            }
            Event::Delete(o) => {
                let mut s = lock(shared);
                if (ops.remove)(&mut s.state, &o) {
                    s.revision += 1;
                }
                s.rejected.remove(&name_of(ops.kind, &o));
                s.saw_version(ops.kind, version_of(&o));
                true
            }
        }
    }
}

fn spawn<K>(
    api: Api<K>,
    config: watcher::Config,
    ops: KindOps<K>,
    shared: SharedState,
    changed: mpsc::Sender<()>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    tokio::spawn(async move {
        let lister = api.clone();
        let config = match ops.fields {
            Some(f) => config.fields(f),
            None => config,
        };
        let kind = ops.kind;
        let mut watch = KindWatch::new(ops);
        let stream = watcher::watcher(api, config).default_backoff();
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            let ev = match ev {
                Ok(ev) => {
                    if lock(&shared).absent.remove(kind) {
                        info!(kind, "the API server serves this kind now");
                    }
                    ev
                }
                Err(e) if not_served(&e) => {
                    if lock(&shared).absent.insert(kind) {
                        info!(
                            kind,
                            "the API server does not serve this kind (CRD not installed?); looking again with backoff"
                        );
                    }
                    continue;
                }
                Err(e) => {
                    lock(&shared).watch_errors += 1;
                    warn!(kind, error = %e, "watch failed; retrying, the last known state stays enforced");
                    continue;
                }
            };
            // A (re)list shows no deletions, so the newest object version can be older
            // than what the list covers: ask the collection's version. (That version can
            // be a little newer than the list's snapshot: the status may then report a
            // version whose last changes are still on their way through the watch.
            // Enforcement is not affected.)
            let listed = if matches!(ev, Event::InitDone) {
                lister
                    .list(&kube::api::ListParams::default().limit(1))
                    .await
                    .ok()
                    .and_then(|l| l.metadata.resource_version)
                    .and_then(|v| v.parse::<u64>().ok())
            } else {
                None
            };
            if watch.handle(&shared, ev, listed) {
                let _ = changed.try_send(());
            }
        }
    });
}

/// The list or watch failed because the API server has no such resource (404).
fn not_served(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.is_not_found(),
        watcher::Error::WatchError(s) => s.is_not_found(),
        _ => false,
    }
}

/// A client from `--kubeconfig`, or else the usual inference (KUBECONFIG, ~/.kube/config,
/// in-cluster service account).
pub async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<Client> {
    use anyhow::Context;
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no Kubernetes configuration (in-cluster, KUBECONFIG or ~/.kube/config); pass --kubeconfig or --policy-dir")?,
    };
    Client::try_from(config).context("creating the Kubernetes client")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ObjectRef;

    fn pod(name: &str, ip: &str, app: &str, rv: u64) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "resourceVersion": rv.to_string(),
                         "labels": {"app": app}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
        }))
        .expect("a pod")
    }

    /// A kind whose CRD is not installed is told apart from a failing watch.
    #[test]
    fn a_missing_resource_is_not_served_other_failures_are_errors() {
        use kube::core::Status;
        let api =
            |code, reason| kube::Error::Api(Status::failure("x", reason).with_code(code).boxed());
        assert!(not_served(&watcher::Error::InitialListFailed(api(
            404, "NotFound"
        ))));
        assert!(not_served(&watcher::Error::WatchStartFailed(api(
            404, "NotFound"
        ))));
        assert!(!not_served(&watcher::Error::InitialListFailed(api(
            403,
            "Forbidden"
        ))));
        assert!(!not_served(&watcher::Error::InitialListFailed(api(
            500,
            "InternalError"
        ))));
        assert!(!not_served(&watcher::Error::NoResourceVersion));
    }

    fn relist(w: &mut KindWatch<Pod>, shared: &SharedState, pods: Vec<Pod>, listed: u64) {
        w.handle(shared, Event::Init, None);
        for p in pods {
            w.handle(shared, Event::InitApply(p), None);
        }
        assert!(w.handle(shared, Event::InitDone, Some(listed)));
    }

    fn revision(shared: &SharedState) -> u64 {
        lock(shared).revision
    }

    fn app_of(shared: &SharedState, name: &str) -> Option<String> {
        lock(shared)
            .state
            .pods
            .get(&ObjectRef::new("default", name))
            .and_then(|p| p.labels.get("app").cloned())
    }

    #[test]
    fn a_relist_that_changes_nothing_costs_no_compile() {
        let shared = SharedState::default();
        let mut w = KindWatch::new(pod_ops());
        relist(&mut w, &shared, vec![pod("a", "10.0.0.1", "web", 5)], 7);
        assert_eq!(revision(&shared), 1);
        assert!(lock(&shared).synced.contains("Pod"));
        assert_eq!(lock(&shared).versions.get("Pod"), Some(&7));
        relist(&mut w, &shared, vec![pod("a", "10.0.0.1", "web", 5)], 9);
        assert_eq!(revision(&shared), 1, "the same objects again: no compile");
        // A relist without `a`: it is gone, and that is a change.
        relist(&mut w, &shared, vec![pod("b", "10.0.0.2", "db", 8)], 10);
        assert_eq!(revision(&shared), 2);
        assert_eq!(app_of(&shared, "a"), None);
        assert_eq!(app_of(&shared, "b").as_deref(), Some("db"));
    }

    #[test]
    fn updates_that_change_nothing_tell_the_agent_without_a_compile() {
        let shared = SharedState::default();
        let mut w = KindWatch::new(pod_ops());
        relist(&mut w, &shared, vec![pod("a", "10.0.0.1", "web", 5)], 5);
        assert!(w.handle(&shared, Event::Apply(pod("a", "10.0.0.1", "web", 6)), None));
        assert_eq!(revision(&shared), 1);
        assert_eq!(lock(&shared).versions.get("Pod"), Some(&6));
        assert!(w.handle(&shared, Event::Apply(pod("a", "10.0.0.1", "api", 7)), None));
        assert_eq!(revision(&shared), 2);
        assert!(w.handle(&shared, Event::Delete(pod("a", "10.0.0.1", "api", 8)), None));
        assert_eq!(revision(&shared), 3);
        assert_eq!(app_of(&shared, "a"), None);
    }

    /// A rejected object keeps its last good version whether the bad one comes by watch
    /// or by relist, and its rejection is reported until a good version or its deletion.
    #[test]
    fn a_rejected_object_keeps_its_last_good_version_on_watch_and_relist() {
        let shared = SharedState::default();
        let mut w = KindWatch::new(pod_ops());
        relist(&mut w, &shared, vec![pod("a", "10.0.0.1", "web", 5)], 5);
        w.handle(&shared, Event::Apply(pod("a", "not-an-ip", "api", 6)), None);
        assert_eq!(app_of(&shared, "a").as_deref(), Some("web"));
        assert!(lock(&shared).rejected.contains_key("Pod default/a"));

        relist(&mut w, &shared, vec![pod("a", "not-an-ip", "api", 6)], 6);
        assert_eq!(
            app_of(&shared, "a").as_deref(),
            Some("web"),
            "a relist dropped the last good version of a rejected object"
        );
        assert!(lock(&shared).rejected.contains_key("Pod default/a"));

        relist(&mut w, &shared, vec![pod("a", "10.0.0.1", "api", 7)], 7);
        assert_eq!(app_of(&shared, "a").as_deref(), Some("api"));
        assert!(lock(&shared).rejected.is_empty());
        w.handle(&shared, Event::Apply(pod("a", "bad", "x", 8)), None);
        w.handle(&shared, Event::Delete(pod("a", "bad", "x", 9)), None);
        assert!(
            lock(&shared).rejected.is_empty(),
            "a deleted object is not reported"
        );
    }
}
