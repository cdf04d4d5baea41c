//! Attack on pod-veth resolution with a bridge CNI (**needs root**): the real agent in a
//! node namespace of the test thread's own (bridge `br0`, pods behind veths, as the
//! `bridge` plugin makes them, no host routes), policies from `--policy-dir`. Packets go
//! between the test's own pod namespaces only.
//!
//! A pod holding NET_ADMIN swaps its address for one no pod has. Its veth then claims
//! no pod: `pod_links::resolve` gives the pod no veth and does not quarantine the veth,
//! and the agent detaches its programs. The pod's egress policy (deny all) no longer
//! applies: it reaches its neighbour on the bridge.

use std::time::Duration;

use netpol_tests::bridged::{Agent, bridged_pod, listener, node, reaches, test_dir, wait_for};
use netpol_tests::lab::sh;

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
    let args = ["--no-pin", "--metrics-addr", "127.0.0.1:19964"].map(String::from);
    Agent::start(test_dir("alu", tag), true, STATE, &args)
}

#[test]
fn root_attack_links_pod_dropping_its_address_escapes_its_egress_policy() {
    std::thread::spawn(|| {
        node();
        let a = bridged_pod("alu", "u", 1, &["10.1.0.2/24"]);
        let b = bridged_pod("alu", "u", 2, &["10.1.0.3/24"]);
        let agent = start_agent("u");
        wait_for("a hooked on hv1", || {
            agent.interface_of("10.1.0.2").as_deref() == Some("hv1")
        });
        wait_for("b hooked on hv2", || {
            agent.interface_of("10.1.0.3").as_deref() == Some("hv2")
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
        let iface = agent.interface_of("10.1.0.2");
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
