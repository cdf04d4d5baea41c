//! Attack on pod-veth resolution with a bridge CNI (**needs root**): the real agent in a
//! node namespace of the test thread's own (bridge `br0`, pods behind veths, as the
//! `bridge` plugin makes them, no host routes), policies from `--policy-dir`. Packets go
//! between the test's own pod namespaces only.
//!
//! A pod holding NET_ADMIN swaps its address for one no pod has. Its veth then claims
//! no pod: `pod_links::resolve` gives the pod no veth and does not quarantine the veth,
//! and the agent detaches its programs. The pod's egress policy (deny all) no longer
//! applies: it reaches its neighbour on the bridge.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use netpol_tests::attach::{PodNetns, in_netns};
use netpol_tests::lab::{netns, sh};

struct Agent(Child, std::path::PathBuf);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn bridged_pod(tag: &str, k: usize, addr: &str) -> PodNetns {
    let ns = PodNetns(format!("np-alu-{tag}{k}-{}", std::process::id()));
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

const STATE: &str = r#"
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
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: default, labels: {app: b}}
spec: {nodeName: n1, containers: [{name: c, image: x}]}
status: {podIP: 10.1.0.3}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-no-egress, namespace: default}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Egress]
"#;

fn start_agent(tag: &str) -> Agent {
    let dir = std::env::temp_dir().join(format!("np-alu-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("policy")).expect("dir");
    std::fs::write(dir.join("policy/state.yaml"), STATE).expect("state");
    let agent = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/debug/netpol-agent");
    let log = std::fs::File::create(dir.join("agent.log")).expect("log");
    let child = Command::new(agent)
        .args(["--node-name", "n1", "--no-pin", "--resync-ms", "100"])
        .arg("--policy-dir")
        .arg(dir.join("policy"))
        .arg("--status-file")
        .arg(dir.join("status.json"))
        .args(["--metrics-addr", "127.0.0.1:19964"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("agent");
    Agent(child, dir)
}

/// The interface the agent's status gives the pod with address `ip`.
fn interface_of(agent: &Agent, ip: &str) -> Option<String> {
    let s = std::fs::read_to_string(agent.1.join("status.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&s).ok()?;
    v["endpoints"].as_array()?.iter().find(|e| {
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

#[test]
fn root_attack_links_pod_dropping_its_address_escapes_its_egress_policy() {
    std::thread::spawn(|| {
        netns(&[]);
        sh(&["ip", "link", "set", "lo", "up"], None);
        sh(&["ip", "link", "add", "br0", "type", "bridge"], None);
        sh(&["ip", "addr", "add", "10.1.0.1/24", "dev", "br0"], None);
        sh(&["ip", "link", "set", "br0", "up"], None);
        let a = bridged_pod("u", 1, "10.1.0.2/24");
        let b = bridged_pod("u", 2, "10.1.0.3/24");
        let agent = start_agent("u");
        wait_for("a hooked on hv1", || {
            interface_of(&agent, "10.1.0.2").as_deref() == Some("hv1")
        });
        wait_for("b hooked on hv2", || {
            interface_of(&agent, "10.1.0.3").as_deref() == Some("hv2")
        });
        let l = listener(&b.0, "10.1.0.3:5000");
        // Enforced: a may send nothing.
        assert!(
            !reaches(&a.0, &l, 1),
            "setup: a's egress is denied, its datagram must not reach b"
        );

        // a (NET_ADMIN in its own namespace) trades its address for one no pod has.
        sh(&["ip", "-n", &a.0, "addr", "flush", "dev", "eth0"], None);
        sh(
            &[
                "ip",
                "-n",
                &a.0,
                "addr",
                "add",
                "10.1.0.50/24",
                "dev",
                "eth0",
            ],
            None,
        );
        // A few resyncs.
        std::thread::sleep(Duration::from_millis(1500));
        let iface = interface_of(&agent, "10.1.0.2");
        let escaped = reaches(&a.0, &l, 2);
        drop(agent);
        assert!(
            !escaped,
            "a is still egress-isolated (deny all) in the API, yet after changing its \
             address its datagram reaches b (the agent now gives a the interface {iface:?}: \
             its veth was unhooked and detached, not quarantined)"
        );
    })
    .join()
    .expect("test thread");
}
