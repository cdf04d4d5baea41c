//! The cluster as the API server has it now: the objects the agents watch (Namespaces,
//! Pods, Services, NetworkPolicies) and the Nodes, listed once, for `explain` without
//! `--policy-dir`. An object the agents would refuse is left out and reported.

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams};

use super::Cluster;
use crate::state::StateError;

/// Every object of a kind, all namespaces.
async fn list<K>(client: &kube::Client) -> Result<Vec<K>>
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    let kind = K::kind(&());
    Ok(api
        .list(&ListParams::default())
        .await
        .with_context(|| format!("listing {kind}s"))?
        .items)
}

/// Reads the cluster; the objects it could not take are returned as messages.
pub async fn read(client: &kube::Client) -> Result<(Cluster, Vec<String>)> {
    let mut cluster = Cluster::default();
    let mut refused = Vec::new();
    let mut note = |kind: &str, r: Result<(), StateError>| {
        if let Err(e) = r {
            refused.push(format!("{kind}: {e}"));
        }
    };
    for ns in list::<Namespace>(client).await? {
        note("Namespace", cluster.state.upsert_namespace(&ns).map(drop));
    }
    for pod in list::<Pod>(client).await? {
        note("Pod", cluster.state.upsert_pod(&pod).map(drop));
    }
    for svc in list::<Service>(client).await? {
        note("Service", cluster.add_service(&svc));
    }
    for policy in list::<NetworkPolicy>(client).await? {
        note(
            "NetworkPolicy",
            cluster.state.upsert_policy(&policy).map(drop),
        );
    }
    // Nodes are optional (RBAC may not grant them): own-node traffic is then told by the
    // pods' nodes only, as in a folder without Node objects.
    match list::<Node>(client).await {
        Ok(nodes) => {
            for node in nodes {
                note("Node", cluster.add_node(&node));
            }
        }
        Err(e) => refused.push(format!("Nodes not read: {e:#}")),
    }
    Ok((cluster, refused))
}
