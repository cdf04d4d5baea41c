//! Attacks on the CNI path's hold (**needs root**): the real agent in a node namespace of
//! the test thread's own (bridge `br0`, pods behind veths as the `bridge` plugin makes
//! them), policies from `--policy-dir`, and its `--cni-socket` spoken to as `netpol-cni`
//! speaks to it (`cni::plugin::ask_agent`). Packets go between the test's own pod
//! namespaces only; everything is removed when the thread's namespace goes.
//!
//! Namespace `default` isolates ingress for every pod (deny all). A pod the agent does
//! not know from the API yet is held by the ADD: nothing reaches it.
//!
//! 1. A DEL names a container (`CNI_CONTAINERID`), but the agent forgets the pod by its
//!    name: a DEL for an earlier sandbox of the pod (a runtime repeats DEL for old
//!    sandboxes; CNI allows it) lifts the hold of the current one, and what the policy
//!    denies reaches it.
//! 2. A pod the API view has, but not on this node yet (created, its binding not seen
//!    yet; or an older pod of that name elsewhere) is neither given the CNI's addresses
//!    nor held: its ADD leaves it unenforced from its first packet, while a pod the view
//!    lacks entirely is held.

use std::net::UdpSocket;
use std::path::Path;
use std::time::Duration;

use netpol_agent::cni::plugin::ask_agent;
use netpol_agent::cni::protocol::{Op, Reply, Request};
use netpol_tests::bridged::{Agent, bridged_pod, listener, node, reaches, test_dir, wait_for};

const BASE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: default, labels: {app: a}}
spec: {nodeName: n1, containers: [{name: c, image: x}]}
status: {podIP: 10.1.0.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-in, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Ingress]
"#;

fn start_agent(tag: &str, extra: &str, port: u16) -> Agent {
    let dir = test_dir("acni", tag);
    let args = [
        "--no-pin".to_string(),
        "--cni-socket".to_string(),
        dir.join("sock/cni.sock").to_string_lossy().into_owned(),
        "--metrics-addr".to_string(),
        format!("127.0.0.1:{port}"),
    ];
    Agent::start(dir, true, &format!("{BASE}{extra}"), &args)
}

fn cni(agent: &Agent, op: Op, name: &str, cid: &str, ip: &str, veth: &str) -> Reply {
    let socket: &Path = &agent.dir.join("sock/cni.sock");
    wait_for("the CNI socket", || socket.exists());
    let r = Request {
        op,
        namespace: "default".into(),
        name: name.into(),
        container_id: cid.into(),
        ips: vec![ip.parse().unwrap()],
        host_interfaces: vec!["br0".into(), veth.into()],
    };
    ask_agent(socket, Duration::from_secs(5), &r).expect("the agent answers")
}

#[test]
fn root_attack_cni_del_of_an_old_sandbox_lifts_the_hold_of_the_new_one() {
    std::thread::spawn(|| {
        node();
        let a = bridged_pod("acni", "d", 1, &["10.1.0.2/24"]);
        // The pod's second sandbox (the first, container "old", is gone).
        let n = bridged_pod("acni", "d", 5, &["10.1.0.5/24"]);
        let agent = start_agent("d", "", 19971);
        wait_for("a hooked", || {
            agent.interface_of("10.1.0.2").as_deref() == Some("hv1")
        });
        let r = cni(&agent, Op::Add, "n", "new", "10.1.0.5", "hv5");
        assert!(r.enforced, "setup: the ADD holds n: {}", r.message);
        let l = listener(&n.0, "10.1.0.5:5000");
        assert!(
            !reaches(&a.0, &l, 1),
            "setup: n is held (its namespace denies all ingress), nothing reaches it"
        );
        // The runtime repeats DEL for the pod's earlier sandbox.
        cni(&agent, Op::Del, "n", "old", "10.1.1.99", "hv-gone");
        std::thread::sleep(Duration::from_millis(800));
        let iface = agent.interface_of("10.1.0.5");
        let passed = reaches(&a.0, &l, 2);
        drop(agent);
        assert!(
            !passed,
            "a DEL for container \"old\" forgot the pod whose current sandbox is \
             container \"new\": its hold is gone (interface now {iface:?}) and a datagram \
             its namespace's policy denies reaches it"
        );
    })
    .join()
    .expect("test thread");
}

#[test]
fn root_attack_cni_pod_known_but_not_bound_here_is_neither_held_nor_enforced() {
    std::thread::spawn(|| {
        node();
        let a = bridged_pod("acni", "b", 1, &["10.1.0.2/24"]);
        // Created in the API, but the agent's view has not seen its binding to n1 yet.
        let u = bridged_pod("acni", "b", 6, &["10.1.0.6/24"]);
        // Unknown to the API view: held (the control).
        let h = bridged_pod("acni", "b", 7, &["10.1.0.7/24"]);
        let agent = start_agent(
            "b",
            r#"
---
apiVersion: v1
kind: Pod
metadata: {name: u, namespace: default, labels: {app: u}}
spec: {containers: [{name: c, image: x}]}
"#,
            19972,
        );
        wait_for("a hooked", || {
            agent.interface_of("10.1.0.2").as_deref() == Some("hv1")
        });
        let held = cni(&agent, Op::Add, "h", "c7", "10.1.0.7", "hv7");
        assert!(held.enforced, "setup: h is held: {}", held.message);
        let lh = listener(&h.0, "10.1.0.7:5000");
        assert!(!reaches(&a.0, &lh, 1), "setup: nothing reaches held h");

        let r = cni(&agent, Op::Add, "u", "c6", "10.1.0.6", "hv6");
        let lu = listener(&u.0, "10.1.0.6:5000");
        let passed = reaches(&a.0, &lu, 2);
        drop(agent);
        assert!(
            !passed,
            "u's ADD came from this node's runtime, but the agent's view has u without \
             a node: not held, not given its addresses, so the first datagram its \
             namespace's deny-all-ingress policy denies reaches it (the agent answered \
             enforced={} {:?})",
            r.enforced, r.message
        );
    })
    .join()
    .expect("test thread");
}

/// 3. A pod's sandbox is recreated (a node reboot, a runtime restart) with a new address;
///    the API view still has the old one until the kubelet reports. The ADD's veth is
///    taken as the pod's, but with the API's stale address: the pod's every packet (from
///    its real address) is dropped as spoofed, even to its own node, which the spec
///    always allows; without the ADD it would not have been touched at all.
#[test]
fn root_attack_cni_new_sandbox_address_loses_to_the_stale_api_address() {
    std::thread::spawn(|| {
        node();
        let _a = bridged_pod("acni", "s", 1, &["10.1.0.2/24"]);
        // k's new sandbox: 10.1.0.9 (its first one had 10.1.0.8, still in the API view).
        let k = bridged_pod("acni", "s", 9, &["10.1.0.9/24"]);
        let agent = start_agent(
            "s",
            r#"
---
apiVersion: v1
kind: Pod
metadata: {name: k, namespace: default, labels: {app: k}}
spec: {nodeName: n1, containers: [{name: c, image: x}]}
status: {podIP: 10.1.0.8}
"#,
            19973,
        );
        wait_for("a hooked", || {
            agent.interface_of("10.1.0.2").as_deref() == Some("hv1")
        });
        // The node itself listens (pod <-> own node always passes).
        let l = UdpSocket::bind("10.1.0.1:5000").expect("node listener");
        l.set_read_timeout(Some(Duration::from_millis(700)))
            .expect("timeout");
        assert!(reaches(&k.0, &l, 1), "setup: k reaches its own node");
        let r = cni(&agent, Op::Add, "k", "new", "10.1.0.9", "hv9");
        let iface = agent.interface_of("10.1.0.8");
        let passed = reaches(&k.0, &l, 2);
        drop(agent);
        assert!(
            passed,
            "after its new sandbox's ADD (address 10.1.0.9), k's datagram to its own node \
             is dropped: the agent hooked hv9 for k (status: {iface:?}) but kept the API's \
             stale address 10.1.0.8 (reply: {:?})",
            r.message
        );
    })
    .join()
    .expect("test thread");
}
