//! Attacks on the CNI path without a kernel: the hold (`compile::held`), the veth
//! resolution with the CNI's word (`pod_links::resolve`), the conf-list installer
//! (`cni::install`) and the socket's binding (`cni::server::bind`).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use netpol_agent::cni::install;
use netpol_agent::compile::{compile, held};
use netpol_agent::datapath::pod_links::{PodLink, resolve};
use netpol_agent::state::{ClusterState, ObjectRef};
use serde_json::{Value, json};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("np-attack-cni-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Two pods the API view lacks, with one address: a pod whose DEL never reached the agent
/// (its conf list was rewritten without netpol-cni for a while; it stays in `cni_pods`
/// forever) and the new pod its address went to. `hold` checks an address only against
/// the compiled plan, not against the pods it holds itself: both are held with it, both
/// are resolved to the new pod's veth, and that veth is quarantined (everything dropped,
/// own node included) instead of held.
#[test]
fn attack_cni_two_held_pods_with_one_address() {
    let mut s = ClusterState::default();
    s.policies.insert(
        ObjectRef::new("default", "deny-in"),
        serde_json::from_value(
            json!({"metadata": {"name": "deny-in", "namespace": "default"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}),
        )
        .unwrap(),
    );
    let mut plan = compile(&s, "n1");
    let gone = ObjectRef::new("default", "a-deleted");
    let new = ObjectRef::new("default", "b-new");
    held::hold(
        &mut plan,
        &s,
        // The agent hands them newest first (`Agent::hold_unknown_pods`).
        &[
            (new.clone(), vec![ip("10.1.0.5")]),
            (gone.clone(), vec![ip("10.1.0.5")]),
        ],
    );
    let pods: Vec<(ObjectRef, Vec<IpAddr>)> = plan
        .endpoints
        .iter()
        .map(|e| (e.pod.clone(), e.ips.clone()))
        .collect();
    let declared = BTreeMap::from([
        (
            gone.clone(),
            vec!["br0".to_string(), "veth-gone".to_string()],
        ),
        (new.clone(), vec!["br0".to_string(), "veth5".to_string()]),
    ]);
    let links = [PodLink {
        name: "veth5".into(),
        claims: [ip("10.1.0.5")].into(),
    }];
    let r = resolve(&pods, &BTreeMap::new(), &links, &BTreeMap::new(), &declared);
    assert_eq!(
        r.hooked.get(&new).map(String::as_str),
        Some("veth5"),
        "the new pod's own veth (its runtime said so) must carry its hold; got {r:?} from \
         a plan holding {pods:?}"
    );
}

fn list(plugins: Value) -> String {
    json!({"cniVersion": "1.0.0", "name": "k8s", "plugins": plugins}).to_string()
}

fn plugin_types(path: &std::path::Path) -> Vec<String> {
    let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["plugins"]
        .as_array()
        .map(|p| {
            p.iter()
                .map(|x| x["type"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Runtimes (libcni's ConfFiles: `.conf`, `.conflist`, `.json`) take the first file by
/// name of all three kinds. With a `.conf` first, netpol chains a conf list the runtime
/// never reads and reports success ("netpol-cni chained"): no pod reaches the socket.
#[test]
fn attack_cni_installer_chains_a_list_the_runtime_does_not_use() {
    let d = dir("conf");
    std::fs::write(
        d.join("10-ovn-kubernetes.conf"),
        json!({"cniVersion": "0.4.0", "name": "ovn", "type": "ovn-k8s-cni-overlay"}).to_string(),
    )
    .unwrap();
    std::fs::write(
        d.join("87-podman-bridge.conflist"),
        list(json!([{"type": "bridge"}, {"type": "portmap"}])),
    )
    .unwrap();
    let r = install::ensure_chained(&d, "/run/netpol/cni.sock");
    let _ = std::fs::remove_dir_all(&d);
    assert!(
        !matches!(r, Ok(Some(_))),
        "the runtime uses 10-ovn-kubernetes.conf; chaining 87-podman-bridge.conflist and \
         saying so is wrong (refuse and say why instead): {r:?}"
    );
}

/// A conf list without plugins is skipped by the runtime (no network in it). netpol picks
/// it as the first `.conflist` and appends itself: now it is the runtime's first list,
/// and every new pod gets netpol-cni alone, no pod network (no prevResult: the plugin
/// passes an empty result on).
#[test]
fn attack_cni_installer_turns_an_empty_conf_list_into_the_default_network() {
    let d = dir("empty");
    std::fs::write(d.join("00-placeholder.conflist"), list(json!([]))).unwrap();
    std::fs::write(
        d.join("10-kindnet.conflist"),
        list(json!([{"type": "ptp"}, {"type": "portmap"}])),
    )
    .unwrap();
    let _ = install::ensure_chained(&d, "/run/netpol/cni.sock");
    let placeholder = plugin_types(&d.join("00-placeholder.conflist"));
    let kindnet = plugin_types(&d.join("10-kindnet.conflist"));
    let _ = std::fs::remove_dir_all(&d);
    assert!(
        placeholder.is_empty() && kindnet.last().map(String::as_str) == Some("netpol-cni"),
        "netpol-cni belongs at the end of the list with the pod network (10-kindnet: \
         {kindnet:?}), not alone in the empty one (00-placeholder: {placeholder:?})"
    );
}

/// An unreadable conf list sorting first (a half-edited file, a backup) makes every
/// resync fail: the valid list after it (which a runtime that skips bad files uses)
/// never gets netpol-cni.
#[test]
fn attack_cni_installer_gives_up_at_an_unreadable_first_list() {
    let d = dir("bad");
    std::fs::write(d.join("00-old.conflist"), "{ \"plugins\": [ // TODO\n").unwrap();
    std::fs::write(
        d.join("10-flannel.conflist"),
        list(json!([{"type": "flannel"}, {"type": "portmap"}])),
    )
    .unwrap();
    let r = install::ensure_chained(&d, "/run/netpol/cni.sock");
    let flannel = plugin_types(&d.join("10-flannel.conflist"));
    let _ = std::fs::remove_dir_all(&d);
    assert_eq!(
        flannel.last().map(String::as_str),
        Some("netpol-cni"),
        "10-flannel.conflist is the first list that can be read; ensure_chained: {r:?}"
    );
}

/// The uninstall stops at the first unreadable conf list (in directory order): netpol-cni
/// stays in the others and the cleanup fails on a file that is none of netpol's business.
#[test]
fn attack_cni_unchain_fails_on_an_unrelated_bad_file() {
    let d = dir("unchain");
    for n in ["10-a", "20-b", "30-c", "40-d"] {
        std::fs::write(
            d.join(format!("{n}.conflist")),
            list(json!([{"type": "ptp"}, {"type": "netpol-cni", "socket": "/x"}])),
        )
        .unwrap();
    }
    std::fs::write(d.join("05-junk.conflist"), "not json").unwrap();
    let r = install::unchain(&d);
    let left: Vec<String> = ["10-a", "20-b", "30-c", "40-d"]
        .iter()
        .filter(|n| {
            plugin_types(&d.join(format!("{n}.conflist")))
                .iter()
                .any(|t| t == "netpol-cni")
        })
        .map(|n| n.to_string())
        .collect();
    let _ = std::fs::remove_dir_all(&d);
    assert!(
        r.is_ok() && left.is_empty(),
        "unchain: {r:?}; still chained: {left:?}"
    );
}

/// `--cni-socket` in a shared directory (`/tmp/netpol.sock`, `/run/netpol-cni.sock`):
/// `bind` makes that directory 0700, taking it from everyone else on the node.
#[test]
fn attack_cni_socket_bind_chmods_a_shared_parent() {
    let d = dir("sock");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bound = rt.block_on(async { netpol_agent::cni::server::bind(&d.join("netpol.sock")) });
    let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o7777;
    drop(bound);
    let _ = std::fs::remove_dir_all(&d);
    assert_eq!(
        mode, 0o1777,
        "binding the socket changed its (shared, sticky) directory to {mode:o}"
    );
}
