//! Attack on pod-veth resolution across an agent restart (**needs root**): the real agent
//! in a node namespace of the test thread's own (bridge `br0`, pods behind veths, as the
//! `bridge` plugin makes them, no host routes), pins on a private bpffs, state from
//! `--policy-dir`. Packets go between the test's own pod namespaces only.
//!
//! A pod holding NET_ADMIN puts another pod's address on its interface, and that address
//! only. While the agent runs, the victim keeps its veth ("the veth that held the pod
//! before"). A restarted agent starts with no such memory (nothing is rebuilt from the
//! pinned IFACES map): both veths claim the victim alone, both are quarantined, and the
//! victim, which no policy isolates, drops everything.

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
    }
}

/// The test's directory with a private bpffs for the agent's pins; both gone on drop.
struct Dir(std::path::PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("np-alr-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("bpf")).expect("dir");
        sh(
            &[
                "mount",
                "-t",
                "bpf",
                "bpf",
                &dir.join("bpf").to_string_lossy(),
            ],
            None,
        );
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.0.join("bpf"))
            .status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bridged_pod(tag: &str, k: usize, addr: &str) -> PodNetns {
    let ns = PodNetns(format!("np-alr-{tag}{k}-{}", std::process::id()));
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
apiVersion: v1
kind: Pod
metadata: {name: m, namespace: default, labels: {app: m}}
spec: {nodeName: n1, containers: [{name: c, image: x}]}
status: {podIP: 10.1.0.9}
"#;

fn start_agent(tag: &str) -> Agent {
    let dir = std::env::temp_dir().join(format!("np-alr-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("policy")).expect("dir");
    std::fs::write(dir.join("policy/state.yaml"), STATE).expect("state");
    let agent = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/debug/netpol-agent");
    let log = std::fs::File::create(dir.join("agent.log")).expect("log");
    let child = Command::new(agent)
        .args(["--node-name", "n1", "--resync-ms", "100"])
        .arg("--pin-dir")
        .arg(dir.join("bpf/netpol"))
        .arg("--policy-dir")
        .arg(dir.join("policy"))
        .arg("--status-file")
        .arg(dir.join("status.json"))
        .args(["--metrics-addr", "127.0.0.1:19965"])
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
fn root_attack_links_restart_cuts_off_a_pod_whose_address_is_squatted() {
    std::thread::spawn(|| {
        netns(&[]);
        sh(&["ip", "link", "set", "lo", "up"], None);
        sh(&["ip", "link", "add", "br0", "type", "bridge"], None);
        sh(&["ip", "addr", "add", "10.1.0.1/24", "dev", "br0"], None);
        sh(&["ip", "link", "set", "br0", "up"], None);
        let _dir = Dir::new("r");
        let a = bridged_pod("r", 1, "10.1.0.2/24");
        let b = bridged_pod("r", 2, "10.1.0.3/24");
        let m = bridged_pod("r", 3, "10.1.0.9/24");
        let agent = start_agent("r");
        wait_for("a hooked on hv1", || {
            interface_of(&agent, "10.1.0.2").as_deref() == Some("hv1")
        });
        wait_for("m hooked on hv3", || {
            interface_of(&agent, "10.1.0.9").as_deref() == Some("hv3")
        });
        // m (NET_ADMIN in its own namespace) squats on a's address, and on it only.
        sh(&["ip", "-n", &m.0, "addr", "flush", "dev", "eth0"], None);
        sh(
            &[
                "ip",
                "-n",
                &m.0,
                "addr",
                "add",
                "10.1.0.2/24",
                "dev",
                "eth0",
            ],
            None,
        );
        std::thread::sleep(Duration::from_millis(1000));
        let l = listener(&a.0, "10.1.0.2:5000");
        assert_eq!(interface_of(&agent, "10.1.0.2").as_deref(), Some("hv1"));
        // No policy: b reaches a (m's ARP answers for a's address are dropped as spoofed).
        assert!(
            reaches(&b.0, &l, 1),
            "setup: b reaches a before the restart"
        );

        // The agent restarts (an upgrade, a crash): it adopts its pins, and forgets which
        // veth held a.
        drop(agent);
        let status = _dir.0.join("status.json");
        let _ = std::fs::remove_file(&status);
        let agent = start_agent("r");
        wait_for("the restarted agent's first status", || status.exists());
        std::thread::sleep(Duration::from_millis(1000));
        let iface = interface_of(&agent, "10.1.0.2");
        let reached = reaches(&b.0, &l, 2);
        drop(agent);
        assert!(
            reached && iface.as_deref() == Some("hv1"),
            "after a restart, a (open to all) is cut off because another pod claims its \
             address: b reaches a: {reached}, a's interface: {iface:?}"
        );
    })
    .join()
    .expect("test thread");
}
