//! A folder of Kubernetes YAML (Namespaces, Pods with `status.podIP`, Services,
//! NetworkPolicies, ClusterNetworkPolicies, Nodes; `---`-separated documents and
//! `kind: List` both work) as a source.
//!
//! A file that does not parse fails the whole load: the agent then keeps enforcing the
//! last state that loaded, because dropping the objects of a broken file could drop a
//! policy and open traffic.

use std::fs;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Deserialize;

use crate::sources::cnp::{self, ClusterNetworkPolicy};
use crate::state::{ClusterState, StateError};

#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: document {doc}: {message}")]
    Parse {
        path: PathBuf,
        doc: usize,
        message: String,
    },
    #[error("{path}: {source}")]
    State { path: PathBuf, source: StateError },
}

/// What was loaded, with a digest of the bytes it came from (the agent reports the digest
/// it enforces, so callers can wait for a change to be applied).
pub struct Loaded {
    pub state: ClusterState,
    pub digest: String,
    /// Kinds the source does not use (Deployments, ConfigMaps, ...), by file.
    pub ignored: Vec<String>,
}

/// YAML files of a folder, sorted, so that loads are deterministic.
pub fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, FileSourceError> {
    let io = |source| FileSourceError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("yaml") | Some("yml") | Some("json")
                )
        })
        .collect();
    files.sort();
    Ok(files)
}

/// FNV-1a over file names and contents: cheap, stable, and only used to tell versions of
/// a folder apart.
pub fn digest_of(files: &[(PathBuf, Vec<u8>)]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (path, bytes) in files {
        let name = path
            .file_name()
            .map(|n| n.as_encoded_bytes())
            .unwrap_or_default();
        for b in name
            .iter()
            .chain([0u8].iter())
            .chain(bytes.iter())
            .chain([0u8].iter())
        {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// Digest of a folder as `load` would compute it.
pub fn digest(dir: &Path) -> Result<String, FileSourceError> {
    Ok(digest_of(&read_all(dir)?))
}

fn read_all(dir: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>, FileSourceError> {
    yaml_files(dir)?
        .into_iter()
        .map(|path| {
            fs::read(&path)
                .map(|b| (path.clone(), b))
                .map_err(|source| FileSourceError::Io { path, source })
        })
        .collect()
}

pub fn load(dir: &Path) -> Result<Loaded, FileSourceError> {
    let files = read_all(dir)?;
    let digest = digest_of(&files);
    let mut state = ClusterState::default();
    let mut ignored = Vec::new();
    for (path, bytes) in &files {
        let text = String::from_utf8_lossy(bytes);
        for (doc, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value = serde_yaml::Value::deserialize(de).map_err(|e| FileSourceError::Parse {
                path: path.clone(),
                doc,
                message: e.to_string(),
            })?;
            add_value(&mut state, value, path, doc, &mut ignored)?;
        }
    }
    Ok(Loaded {
        state,
        digest,
        ignored,
    })
}

fn add_value(
    state: &mut ClusterState,
    value: serde_yaml::Value,
    path: &Path,
    doc: usize,
    ignored: &mut Vec<String>,
) -> Result<(), FileSourceError> {
    let parse_err = |message: String| FileSourceError::Parse {
        path: path.to_path_buf(),
        doc,
        message,
    };
    let state_err = |source| FileSourceError::State {
        path: path.to_path_buf(),
        source,
    };
    if value.is_null() {
        return Ok(()); // empty document
    }
    let kind = value
        .get("kind")
        .and_then(|k| k.as_str())
        .ok_or_else(|| parse_err("no kind".into()))?
        .to_string();
    fn typed<T: serde::de::DeserializeOwned>(
        v: serde_yaml::Value,
        kind: &str,
    ) -> Result<T, String> {
        serde_yaml::from_value(v).map_err(|e| format!("{kind}: {e}"))
    }
    match kind.as_str() {
        "List" => {
            let items = value
                .get("items")
                .and_then(|i| i.as_sequence())
                .cloned()
                .unwrap_or_default();
            for item in items {
                add_value(state, item, path, doc, ignored)?;
            }
        }
        "Namespace" => {
            state
                .upsert_namespace(&typed::<Namespace>(value, &kind).map_err(parse_err)?)
                .map_err(state_err)?;
        }
        "Pod" => {
            state
                .upsert_pod(&typed::<Pod>(value, &kind).map_err(parse_err)?)
                .map_err(state_err)?;
        }
        "Service" => {
            state
                .upsert_service(&typed::<Service>(value, &kind).map_err(parse_err)?)
                .map_err(state_err)?;
        }
        "NetworkPolicy" => {
            let policy = match typed::<NetworkPolicy>(value.clone(), &kind) {
                Ok(p) => p,
                // A policy we cannot read must not be dropped (that could open traffic):
                // it stands in as one that isolates its whole namespace and allows nothing.
                Err(message) => match crate::state::unreadable_policy(&value, &message) {
                    Some(p) => p,
                    None => return Err(parse_err(message)),
                },
            };
            state.upsert_policy(&policy).map_err(state_err)?;
        }
        "Node" => {
            state
                .upsert_node(&typed::<Node>(value, &kind).map_err(parse_err)?)
                .map_err(state_err)?;
        }
        // Another version of the kind (or AdminNetworkPolicy) is not this API: ignored and
        // said so, rather than read with the wrong meaning.
        "ClusterNetworkPolicy" if api_version(&value) == Some(cnp::API_VERSION) => {
            state
                .upsert_cluster_policy(
                    &typed::<ClusterNetworkPolicy>(value, &kind).map_err(parse_err)?,
                )
                .map_err(state_err)?;
        }
        other => ignored.push(format!("{}: {other}", path.display())),
    }
    Ok(())
}

fn api_version(value: &serde_yaml::Value) -> Option<&str> {
    value.get("apiVersion").and_then(|v| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(files: &[(&str, &str)]) -> tempdir::Dir {
        let d = tempdir::Dir::new();
        for (name, body) in files {
            fs::write(d.path().join(name), body).unwrap();
        }
        d
    }

    mod tempdir {
        use std::path::{Path, PathBuf};
        pub struct Dir(PathBuf);
        impl Dir {
            pub fn new() -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "netpol-file-source-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
spec:
  nodeName: node-a
  containers: [{name: c, image: x, ports: [{name: http, containerPort: 80}]}]
status: {podIP: 10.244.1.5}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.20, ports: [{port: 80}]}
"#;

    #[test]
    fn loads_documents_and_lists() {
        let d = folder(&[
            ("a.yaml", POD),
            (
                "b.yaml",
                "kind: List\nitems:\n- {apiVersion: v1, kind: Namespace, metadata: {name: default}}\n- {apiVersion: apps/v1, kind: Deployment, metadata: {name: x}}\n",
            ),
            ("notes.txt", "not yaml: ["),
        ]);
        let loaded = load(d.path()).unwrap();
        let s = &loaded.state;
        assert_eq!(s.pods.len(), 1);
        let pod = s.pods.values().next().unwrap();
        assert_eq!(
            pod.ips,
            vec!["10.244.1.5".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(
            pod.named_port("http", crate::state::Protocol::Tcp),
            Some(80)
        );
        assert_eq!(s.services.values().next().unwrap().ips.len(), 1);
        assert_eq!(
            s.namespaces["default"]
                .get("kubernetes.io/metadata.name")
                .map(String::as_str),
            Some("default")
        );
        assert_eq!(loaded.ignored.len(), 1);
    }

    #[test]
    fn loads_cluster_network_policies_and_nodes() {
        let d = folder(&[(
            "cluster.yaml",
            r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: deny-metadata, resourceVersion: "7", annotations: {a: b}}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {}}
  egress: [{action: Deny, to: [{networks: [169.254.169.254/32]}]}]
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: ClusterNetworkPolicy
metadata: {name: older-api}
---
apiVersion: v1
kind: Node
metadata: {name: node-a, labels: {zone: z1}}
status:
  addresses:
  - {type: InternalIP, address: 172.18.0.2}
  - {type: InternalIP, address: "fc00:f853:ccd:e793::2"}
  - {type: Hostname, address: node-a}
"#,
        )]);
        let loaded = load(d.path()).expect("loads");
        let s = &loaded.state;
        let p = &s.cluster_policies["deny-metadata"];
        assert_eq!(p.spec.priority, Some(5));
        assert_eq!(p.spec.egress.len(), 1);
        // Only the name and the spec are kept.
        assert!(p.metadata.annotations.is_none() && p.metadata.resource_version.is_none());
        assert_eq!(
            s.cluster_policies.len(),
            1,
            "another apiVersion is not read"
        );
        assert_eq!(loaded.ignored.len(), 1, "{:?}", loaded.ignored);
        let node = &s.nodes["node-a"];
        assert_eq!(node.labels.get("zone").map(String::as_str), Some("z1"));
        let ips: Vec<String> = node.ips.iter().map(ToString::to_string).collect();
        assert_eq!(ips, ["172.18.0.2", "fc00:f853:ccd:e793::2"]);
        let status = crate::compile::tiers::status(s);
        assert_eq!(status.len(), 1);
        assert_eq!((status[0].tier.as_str(), status[0].priority), ("Admin", 5));
        assert!(status[0].errors.is_empty(), "{:?}", status[0].errors);
    }

    #[test]
    fn a_broken_file_fails_the_load_with_its_name() {
        let d = folder(&[("good.yaml", POD), ("bad.yaml", "kind: Pod\nmetadata: [\n")]);
        let err = load(d.path()).err().expect("must fail");
        assert!(err.to_string().contains("bad.yaml"), "{err}");
    }

    #[test]
    fn an_unreadable_policy_stands_in_as_isolate_everything() {
        let d = folder(&[
            ("good.yaml", POD),
            (
                "badport.yaml",
                "kind: NetworkPolicy\nmetadata: {name: p, namespace: default}\nspec: {podSelector: {}, ingress: [{ports: [{port: 80, endPort: x}]}]}\n",
            ),
        ]);
        let loaded = load(d.path()).expect("the rest still loads");
        assert_eq!(loaded.state.pods.len(), 1);
        let plan = crate::compile::compile(&loaded.state, "node-a");
        assert_eq!(plan.errors.len(), 1, "{:?}", plan.errors);
        assert!(
            plan.errors[0].to_string().contains("cannot be read"),
            "{}",
            plan.errors[0]
        );
        let web = &plan.endpoints[0];
        for dir in [web.ingress, web.egress] {
            let set = plan.rule_set(dir.expect("isolated"));
            assert!(set.is_empty(), "allows nothing");
        }
        // Without a name there is nothing to stand in for: the load fails.
        let d = folder(&[("anon.yaml", "kind: NetworkPolicy\nspec: {podSelector: 7}\n")]);
        assert!(load(d.path()).is_err());
    }

    #[test]
    fn digest_changes_with_content() {
        let d = folder(&[("a.yaml", POD)]);
        let a = digest(d.path()).unwrap();
        assert_eq!(a, load(d.path()).unwrap().digest);
        fs::write(d.path().join("a.yaml"), format!("{POD}\n# edit\n")).unwrap();
        assert_ne!(a, digest(d.path()).unwrap());
    }
}
