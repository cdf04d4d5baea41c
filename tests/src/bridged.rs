//! A bridged node for the root tests that run the real agent (**needs root**): the test
//! thread's own node namespace with bridge `br0` (10.1.0.1/24), pods behind veths as the
//! `bridge` CNI plugin makes them, the debug agent reading `--policy-dir`, and UDP probes
//! between the test's own pod namespaces. Everything is removed when the values drop and
//! the thread's namespace goes.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::attach::{PodNetns, in_netns};
use crate::lab::{netns, sh};

/// Makes this thread's node namespace: loopback up, `br0` with the pods' gateway.
pub fn node() {
    netns(&[]);
    sh(&["ip", "link", "set", "lo", "up"], None);
    sh(&["ip", "link", "add", "br0", "type", "bridge"], None);
    sh(&["ip", "addr", "add", "10.1.0.1/24", "dev", "br0"], None);
    sh(&["ip", "link", "set", "br0", "up"], None);
}

/// `<tmp>/np-<prefix>-<tag>-<pid>`: a test's directory (names stay unique across the
/// tests of one run and across runs).
pub fn test_dir(prefix: &str, tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("np-{prefix}-{tag}-{}", std::process::id()))
}

/// Pod `k` behind host veth `hv{k}` on `br0`, holding `addrs` on its `eth0`.
pub fn bridged_pod(prefix: &str, tag: &str, k: usize, addrs: &[&str]) -> PodNetns {
    let ns = PodNetns(format!("np-{prefix}-{tag}{k}-{}", std::process::id()));
    let host = format!("hv{k}");
    sh(&["ip", "netns", "add", &ns.0], None);
    sh(
        &[
            "ip", "link", "add", &host, "type", "veth", "peer", "name", "eth0", "netns", &ns.0,
        ],
        None,
    );
    sh(&["ip", "link", "set", &host, "master", "br0", "up"], None);
    for a in addrs {
        sh(&["ip", "-n", &ns.0, "addr", "add", a, "dev", "eth0"], None);
    }
    sh(&["ip", "-n", &ns.0, "link", "set", "eth0", "up"], None);
    sh(&["ip", "-n", &ns.0, "link", "set", "lo", "up"], None);
    ns
}

/// The debug agent, killed on drop (and its directory removed, when it owns it).
pub struct Agent {
    child: Child,
    pub dir: PathBuf,
    owns_dir: bool,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Agent {
    /// Starts the agent as node `n1` on `state` (YAML, written to `dir/policy`), with its
    /// status in `dir/status.json`, its log in `dir/agent.log`, and `args` besides.
    /// `owns_dir`: remove `dir` on drop (false when something else owns it, a mount).
    pub fn start(dir: PathBuf, owns_dir: bool, state: &str, args: &[String]) -> Agent {
        if owns_dir {
            let _ = std::fs::remove_dir_all(&dir);
        }
        std::fs::create_dir_all(dir.join("policy")).expect("dir");
        std::fs::write(dir.join("policy/state.yaml"), state).expect("state");
        let agent = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/debug/netpol-agent");
        let log = std::fs::File::create(dir.join("agent.log")).expect("log");
        let child = Command::new(agent)
            .args(["--node-name", "n1", "--resync-ms", "100"])
            .arg("--policy-dir")
            .arg(dir.join("policy"))
            .arg("--status-file")
            .arg(dir.join("status.json"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("agent");
        Agent {
            child,
            dir,
            owns_dir,
        }
    }

    pub fn status(&self) -> Option<serde_json::Value> {
        let s = std::fs::read_to_string(self.dir.join("status.json")).ok()?;
        serde_json::from_str(&s).ok()
    }

    /// The interface the agent's status gives the pod with address `ip`.
    pub fn interface_of(&self, ip: &str) -> Option<String> {
        self.status()?["endpoints"].as_array()?.iter().find(|e| {
            e["ips"]
                .as_array()
                .is_some_and(|ips| ips.iter().any(|i| i == ip))
        })?["interface"]
            .as_str()
            .map(String::from)
    }
}

/// Waits up to 20 s for `f`.
pub fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(20), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A UDP socket bound to `at` inside pod namespace `pod`.
pub fn listener(pod: &str, at: &str) -> UdpSocket {
    let at: SocketAddr = at.parse().expect("listener address");
    in_netns(pod, || {
        let s = UdpSocket::bind(at).expect("listener");
        s.set_read_timeout(Some(Duration::from_millis(700)))
            .expect("timeout");
        s
    })
}

/// Whether datagram `n` from `pod` reaches `listener` (three tries: ARP first).
pub fn reaches(pod: &str, listener: &UdpSocket, n: u8) -> bool {
    let to = listener.local_addr().expect("listener address");
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
