//! Pod veths found from the kernel (**needs root**): a node namespace of the test
//! thread's own with a bridge and pods behind veths, as the `bridge` CNI plugin makes
//! them, and a pod that claims another's address. No packet is sent.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use netpol_agent::datapath::pod_links::{self, PodLink};
use netpol_agent::state::ObjectRef;
use netpol_tests::bridged::{bridged_pod, node};
use netpol_tests::lab::sh;

fn pod(name: &str) -> ObjectRef {
    ObjectRef {
        namespace: "default".into(),
        name: name.into(),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

#[test]
fn root_bridged_pods_found_by_their_peers_addresses() {
    std::thread::spawn(|| {
        node();
        // Not a pod's: its peer is in the same namespace.
        sh(
            &[
                "ip", "link", "add", "lv0", "type", "veth", "peer", "name", "lv1",
            ],
            None,
        );
        let _a = bridged_pod("links", "", 1, &["10.1.0.2/24", "fd00::2/64"]);
        let _b = bridged_pod("links", "", 2, &["10.1.0.3/24"]);

        let links = pod_links::links().expect("links");
        let with_peer: BTreeSet<&str> = links
            .iter()
            .filter(|l| l.peer.is_some())
            .map(|l| l.name.as_str())
            .collect();
        assert_eq!(with_peer, BTreeSet::from(["hv1", "hv2"]), "{links:?}");
        assert!(links.iter().filter(|l| l.name != "lo").all(|l| l.ethernet));
        let mut veths = pod_links::pod_links(&links).expect("peer addresses");
        veths.sort_by(|x, y| x.name.cmp(&y.name));
        assert_eq!(
            veths,
            vec![
                PodLink {
                    name: "hv1".into(),
                    claims: BTreeSet::from([ip("10.1.0.2"), ip("fd00::2")]),
                },
                PodLink {
                    name: "hv2".into(),
                    claims: BTreeSet::from([ip("10.1.0.3")]),
                },
            ]
        );
        let pods = vec![
            (pod("a"), vec![ip("10.1.0.2"), ip("fd00::2")]),
            (pod("b"), vec![ip("10.1.0.3")]),
        ];
        let first = pod_links::resolve(
            &pods,
            &BTreeMap::new(),
            &veths,
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        assert_eq!(first.hooked[&pod("a")], "hv1");
        assert_eq!(first.hooked[&pod("b")], "hv2");

        // A third pod, with NET_ADMIN, puts a's address on its own interface.
        let c_ns = bridged_pod("links", "", 3, &["10.1.0.4/24", "10.1.0.2/24"]);
        let veths = pod_links::pod_links(&pod_links::links().expect("links")).expect("peers");
        let pods_c = [pods.clone(), vec![(pod("c"), vec![ip("10.1.0.4")])]].concat();
        let later = pod_links::resolve(
            &pods_c,
            &BTreeMap::new(),
            &veths,
            &first.hooked,
            &BTreeMap::new(),
        );
        assert_eq!(later.hooked[&pod("a")], "hv1", "a keeps its veth");
        assert_eq!(later.hooked[&pod("c")], "hv3");
        // Had a been new, c's veth would still lose: it claims two pods.
        let fresh = pod_links::resolve(
            &pods_c,
            &BTreeMap::new(),
            &veths,
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        assert_eq!(fresh.hooked, later.hooked);
        assert!(fresh.quarantined.is_empty());

        // Should c drop its own address and keep a's only, nothing tells a new a from c:
        // both veths are held.
        sh(&["ip", "-n", &c_ns.0, "addr", "flush", "dev", "eth0"], None);
        sh(
            &[
                "ip",
                "-n",
                &c_ns.0,
                "addr",
                "add",
                "10.1.0.2/24",
                "dev",
                "eth0",
            ],
            None,
        );
        let veths = pod_links::pod_links(&pod_links::links().expect("links")).expect("peers");
        let held = pod_links::resolve(
            &pods_c,
            &BTreeMap::new(),
            &veths,
            &BTreeMap::new(),
            &BTreeMap::new(),
        );
        assert!(!held.hooked.contains_key(&pod("a")));
        assert_eq!(
            held.quarantined
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            vec!["hv1", "hv3"]
        );
        let kept = pod_links::resolve(
            &pods_c,
            &BTreeMap::new(),
            &veths,
            &later.hooked,
            &BTreeMap::new(),
        );
        assert_eq!(kept.hooked[&pod("a")], "hv1");
        // c keeps its own veth, where a's address is spoofing.
        assert_eq!(kept.hooked[&pod("c")], "hv3");
        assert!(kept.quarantined.is_empty());
    })
    .join()
    .expect("test thread");
}
