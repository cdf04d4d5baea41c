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

use std::process::Command;
use std::time::Duration;

use netpol_tests::bridged::{Agent, bridged_pod, listener, node, reaches, test_dir, wait_for};
use netpol_tests::lab::sh;

/// The test's directory with a private bpffs for the agent's pins; both gone on drop.
struct Dir(std::path::PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let dir = test_dir("alr", tag);
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

/// The agent on `dir` (which the test owns: its bpffs holds the pins across restarts).
fn start_agent(dir: &Dir) -> Agent {
    let mut args = ["--metrics-addr", "127.0.0.1:19965", "--pin-dir"]
        .map(String::from)
        .to_vec();
    args.push(dir.0.join("bpf/netpol").to_string_lossy().into_owned());
    Agent::start(dir.0.clone(), false, STATE, &args)
}

#[test]
fn root_attack_links_restart_cuts_off_a_pod_whose_address_is_squatted() {
    std::thread::spawn(|| {
        node();
        let dir = Dir::new("r");
        let a = bridged_pod("alr", "r", 1, &["10.1.0.2/24"]);
        let b = bridged_pod("alr", "r", 2, &["10.1.0.3/24"]);
        let m = bridged_pod("alr", "r", 3, &["10.1.0.9/24"]);
        let agent = start_agent(&dir);
        wait_for("a hooked on hv1", || {
            agent.interface_of("10.1.0.2").as_deref() == Some("hv1")
        });
        wait_for("m hooked on hv3", || {
            agent.interface_of("10.1.0.9").as_deref() == Some("hv3")
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
        assert_eq!(agent.interface_of("10.1.0.2").as_deref(), Some("hv1"));
        // No policy: b reaches a (m's ARP answers for a's address are dropped as spoofed).
        assert!(
            reaches(&b.0, &l, 1),
            "setup: b reaches a before the restart"
        );

        // The agent restarts (an upgrade, a crash): it adopts its pins, and forgets which
        // veth held a.
        drop(agent);
        let status = dir.0.join("status.json");
        let _ = std::fs::remove_file(&status);
        let agent = start_agent(&dir);
        wait_for("the restarted agent's first status", || status.exists());
        std::thread::sleep(Duration::from_millis(1000));
        let iface = agent.interface_of("10.1.0.2");
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
