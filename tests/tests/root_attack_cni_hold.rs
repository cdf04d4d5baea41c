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

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netpol_agent::cni::plugin::ask_agent;
use netpol_agent::cni::protocol::{Op, Reply, Request};
use netpol_tests::attach::{PodNetns, in_netns};
use netpol_tests::lab::{netns, sh};

struct Agent(Child, PathBuf);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn bridged_pod(tag: &str, k: usize, addr: &str) -> PodNetns {
    let ns = PodNetns(format!("np-acni-{tag}{k}-{}", std::process::id()));
    let host = format!("hv{k}");
    sh(&["ip", "netns", "add", &ns.0], None);
    sh(
        &[
            "ip", "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &ns.0,
        ],
        None,
    );
    sh(&["ip", "link", "set", &host, "master", "br0", "up"], None);
    sh(
        &["ip", "-n", &ns.0, "addr", "add", addr, "dev", "eth0"],
        None,
    );
    sh(&["ip", "-n", &ns.0, "link", "set", "eth0", "up"], None);
    sh(&["ip", "-n", &ns.0, "link", "set", "lo", "up"], None);
    ns
}

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
    let dir = std::env::temp_dir().join(format!("np-acni-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("policy")).expect("dir");
    std::fs::write(dir.join("policy/state.yaml"), format!("{BASE}{extra}")).expect("state");
    let agent = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/debug/netpol-agent");
    let log = std::fs::File::create(dir.join("agent.log")).expect("log");
    let child = Command::new(agent)
        .args(["--node-name", "n1", "--no-pin", "--resync-ms", "100"])
        .arg("--policy-dir")
        .arg(dir.join("policy"))
        .arg("--status-file")
        .arg(dir.join("status.json"))
        .arg("--cni-socket")
        .arg(dir.join("sock/cni.sock"))
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("agent");
    Agent(child, dir)
}

fn status(agent: &Agent) -> Option<serde_json::Value> {
    let s = std::fs::read_to_string(agent.1.join("status.json")).ok()?;
    serde_json::from_str(&s).ok()
}

fn interface_of(agent: &Agent, ip: &str) -> Option<String> {
    status(agent)?["endpoints"].as_array()?.iter().find(|e| {
        e["ips"]
            .as_array()
            .is_some_and(|ips| ips.iter().any(|i| i == ip))
    })?["interface"]
        .as_str()
        .map(String::from)
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(20), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn cni(agent: &Agent, op: Op, name: &str, cid: &str, ip: &str, veth: &str) -> Reply {
    let socket: &Path = &agent.1.join("sock/cni.sock");
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

fn listener(pod: &str, at: &str) -> UdpSocket {
    let at: SocketAddr = at.parse().unwrap();
    in_netns(pod, || {
        let s = UdpSocket::bind(at).expect("listener");
        s.set_read_timeout(Some(Duration::from_millis(700)))
            .expect("timeout");
        s
    })
}

/// Whether datagram `n` from `pod` reaches `listener` (three tries: ARP first).
fn reaches(pod: &str, listener: &UdpSocket, n: u8) -> bool {
    let to = listener.local_addr().unwrap();
    for _ in 0..3 {
        in_netns(pod, || {
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind in pod");
            let _ = s.send_to(&[n], to);
        });
        let mut buf = [0u8; 8];
        loop {
            match listener.recv_from(&mut buf) {
                Ok((1, _)) if buf[0] != n => continue,
                Ok(_) => return true,
                Err(_) => break,
            }
        }
    }
    false
}

fn node() {
    netns(&[]);
    sh(&["ip", "link", "set", "lo", "up"], None);
    sh(&["ip", "link", "add", "br0", "type", "bridge"], None);
    sh(&["ip", "addr", "add", "10.1.0.1/24", "dev", "br0"], None);
    sh(&["ip", "link", "set", "br0", "up"], None);
}

#[test]
fn root_attack_cni_del_of_an_old_sandbox_lifts_the_hold_of_the_new_one() {
    std::thread::spawn(|| {
        node();
        let a = bridged_pod("d", 1, "10.1.0.2/24");
        // The pod's second sandbox (the first, container "old", is gone).
        let n = bridged_pod("d", 5, "10.1.0.5/24");
        let agent = start_agent("d", "", 19971);
        wait_for("a hooked", || {
            interface_of(&agent, "10.1.0.2").as_deref() == Some("hv1")
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
        let iface = interface_of(&agent, "10.1.0.5");
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
        let a = bridged_pod("b", 1, "10.1.0.2/24");
        // Created in the API, but the agent's view has not seen its binding to n1 yet.
        let u = bridged_pod("b", 6, "10.1.0.6/24");
        // Unknown to the API view: held (the control).
        let h = bridged_pod("b", 7, "10.1.0.7/24");
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
            interface_of(&agent, "10.1.0.2").as_deref() == Some("hv1")
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
        let _a = bridged_pod("s", 1, "10.1.0.2/24");
        // k's new sandbox: 10.1.0.9 (its first one had 10.1.0.8, still in the API view).
        let k = bridged_pod("s", 9, "10.1.0.9/24");
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
            interface_of(&agent, "10.1.0.2").as_deref() == Some("hv1")
        });
        // The node itself listens (pod <-> own node always passes).
        let l = UdpSocket::bind("10.1.0.1:5000").expect("node listener");
        l.set_read_timeout(Some(Duration::from_millis(700)))
            .expect("timeout");
        assert!(reaches(&k.0, &l, 1), "setup: k reaches its own node");
        let r = cni(&agent, Op::Add, "k", "new", "10.1.0.9", "hv9");
        let iface = interface_of(&agent, "10.1.0.8");
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
