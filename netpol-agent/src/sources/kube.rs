//! The Kubernetes API as a source: one kube-runtime watcher per kind, all feeding the
//! same `ClusterState`.
//!
//! A watcher lists, then watches; when its watch ends, breaks or its resourceVersion is
//! too old (410 Gone) it relists, and a relist replaces that kind's objects wholesale.
//! While the API server is away, the watchers retry with backoff and the last known
//! state stays enforced. Pods are trimmed to what policy needs as they arrive.
//!
//! Services' EndpointSlices are not watched: egress is decided on the translated
//! (backend) address, so the datapath needs only the Service addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::warn;

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
}

pub const KINDS: [&str; 4] = ["Namespace", "Pod", "Service", "NetworkPolicy"];

pub type SharedState = Arc<Mutex<Shared>>;

fn lock(s: &SharedState) -> std::sync::MutexGuard<'_, Shared> {
    match s.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// How one kind enters and leaves the state.
struct KindOps<K> {
    kind: &'static str,
    /// Whether the state changed.
    upsert: fn(&mut ClusterState, &K) -> Result<bool, StateError>,
    /// Whether the state changed.
    remove: fn(&mut ClusterState, &K) -> bool,
    clear: fn(&mut ClusterState),
}

/// Starts the watchers; `changed` gets a message after every change (bursts collapse).
pub fn start(client: Client, changed: mpsc::Sender<()>) -> SharedState {
    let shared: SharedState = Arc::default();
    spawn(
        Api::<Namespace>::all(client.clone()),
        KindOps {
            kind: "Namespace",
            upsert: |s, o| s.upsert_namespace(o),
            remove: |s, o| {
                o.metadata
                    .name
                    .as_ref()
                    .is_some_and(|n| s.namespaces.remove(n).is_some())
            },
            clear: |s| s.namespaces.clear(),
        },
        shared.clone(),
        changed.clone(),
    );
    spawn(
        Api::<Pod>::all(client.clone()),
        KindOps {
            kind: "Pod",
            upsert: |s, o| s.upsert_pod(o),
            remove: |s, o| object_ref(&o.metadata).is_some_and(|r| s.pods.remove(&r).is_some()),
            clear: |s| s.pods.clear(),
        },
        shared.clone(),
        changed.clone(),
    );
    spawn(
        Api::<Service>::all(client.clone()),
        KindOps {
            kind: "Service",
            upsert: |s, o| s.upsert_service(o),
            remove: |s, o| object_ref(&o.metadata).is_some_and(|r| s.services.remove(&r).is_some()),
            clear: |s| s.services.clear(),
        },
        shared.clone(),
        changed.clone(),
    );
    spawn(
        Api::<NetworkPolicy>::all(client),
        KindOps {
            kind: "NetworkPolicy",
            upsert: |s, o| s.upsert_policy(o),
            remove: |s, o| object_ref(&o.metadata).is_some_and(|r| s.policies.remove(&r).is_some()),
            clear: |s| s.policies.clear(),
        },
        shared.clone(),
        changed,
    );
    shared
}

fn version_of<K: Resource>(o: &K) -> Option<u64> {
    o.meta().resource_version.as_deref()?.parse().ok()
}

fn spawn<K>(api: Api<K>, ops: KindOps<K>, shared: SharedState, changed: mpsc::Sender<()>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    tokio::spawn(async move {
        let lister = api.clone();
        let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
        futures::pin_mut!(stream);
        let mut relist: Option<Vec<K>> = None;
        while let Some(ev) = stream.next().await {
            let mut s = lock(&shared);
            let take = |s: &mut Shared, o: &K| {
                let name = format!(
                    "{} {}",
                    ops.kind,
                    object_ref(o.meta())
                        .map(|r| r.to_string())
                        .unwrap_or_default()
                );
                let changed = match (ops.upsert)(&mut s.state, o) {
                    Ok(changed) => {
                        s.rejected.remove(&name);
                        changed
                    }
                    Err(e) => {
                        warn!(object = %name, error = %e, "object not taken in");
                        s.rejected.insert(name, e.to_string());
                        false
                    }
                };
                if let Some(v) = version_of(o) {
                    let e = s.versions.entry(ops.kind).or_insert(0);
                    *e = (*e).max(v);
                }
                changed
            };
            match ev {
                Ok(Event::Init) => {
                    relist = Some(Vec::new());
                    continue;
                }
                Ok(Event::InitApply(o)) => {
                    if let Some(buf) = relist.as_mut() {
                        buf.push(o);
                    }
                    continue;
                }
                Ok(Event::InitDone) => {
                    drop(s);
                    // A (re)list shows no deletions, so the newest object version can be
                    // older than what the list covers: ask the collection's version.
                    let listed = lister
                        .list(&kube::api::ListParams::default().limit(1))
                        .await
                        .ok()
                        .and_then(|l| l.metadata.resource_version)
                        .and_then(|v| v.parse::<u64>().ok());
                    let mut s = lock(&shared);
                    (ops.clear)(&mut s.state);
                    for o in relist.take().unwrap_or_default() {
                        take(&mut s, &o);
                    }
                    s.revision += 1;
                    if let Some(v) = listed {
                        let e = s.versions.entry(ops.kind).or_insert(0);
                        *e = (*e).max(v);
                    }
                    s.synced.insert(ops.kind);
                    drop(s);
                    let _ = changed.try_send(());
                    continue;
                }
                // The agent is told either way (its status reports the versions it has
                // seen applied); only a change of the state makes it compile.
                Ok(Event::Apply(o)) => {
                    if take(&mut s, &o) {
                        s.revision += 1;
                    }
                }
                Ok(Event::Delete(o)) => {
                    if (ops.remove)(&mut s.state, &o) {
                        s.revision += 1;
                    }
                    if let Some(v) = version_of(&o) {
                        let e = s.versions.entry(ops.kind).or_insert(0);
                        *e = (*e).max(v);
                    }
                }
                Err(e) => {
                    s.watch_errors += 1;
                    warn!(kind = ops.kind, error = %e, "watch failed; retrying, the last known state stays enforced");
                    continue;
                }
            }
            drop(s);
            let _ = changed.try_send(());
        }
    });
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
