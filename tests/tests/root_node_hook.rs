//! `to_node`, the cgroup_skb ingress program on the node's cgroup: what it decides on a
//! local pod's packet that reaches the node's own sockets, run with BPF_PROG_TEST_RUN.
//! **Needs root.**
//!
//! Such a packet comes from a connection to a Service whose backend is this node's host
//! network (translated on the way, so no TC hook saw where it went), or from a connection
//! to the node's address that the pod's veth decided already. Every test runs in a network
//! namespace of its own thread; nothing is sent.

use netpol_tests::cnp_fixtures::{add_cnp, client_node_port_only, cnp_state, pods_with_app};
use netpol_tests::lab::*;
use serde_json::json;

use netpol_common::reason;

const K8S4: [u8; 4] = [10, 96, 0, 1];

struct Ifs {
    c: u32,
}

fn lab_with(st: ClusterState) -> (Lab, Ifs) {
    let i = netns(&["vc", "vs"]);
    let lab = Lab::new(
        st,
        &[("client", i[0]), ("server", i[1])],
        &[v4a(NODE4), IpAddr::V6(ip6("fd00:1::1")), v4a(UPLINK4)],
    );
    (lab, Ifs { c: i[0] })
}

/// The client opens 10.96.0.1:443 from `sport`; it passes its veth towards the Service.
fn syn_to_service(lab: &mut Lab, c: u32, sport: u16) {
    lab.verdict(
        "SYN to the Service (decided after translation)",
        Hook::FromPod,
        c,
        &v4(CLIENT4, K8S4, TCP, &tcp(sport, 443, SYN)),
        PASS,
    );
}

#[test]
fn root_node_hook_an_accepted_backend_on_the_node_connects_and_is_counted_as_the_rule() {
    let (mut lab, ifs) = lab_with(client_node_port_only());
    syn_to_service(&mut lab, ifs.c, 41000);
    lab.expect(
        "the translated SYN at the node's socket: the Accept rule",
        Hook::ToNode,
        ifs.c,
        &v4(CLIENT4, NODE4, TCP, &tcp(41000, 6443, SYN)),
        PASS,
        "client",
        Some(reason::ALLOW_POLICY),
    );
    lab.verdict(
        "the node's SYN-ACK, from the Service address",
        Hook::ToPod,
        ifs.c,
        &v4(K8S4, CLIENT4, TCP, &tcp(443, 41000, SYN | ACK)),
        PASS,
    );
    lab.expect(
        "the client's next segment at the node's socket: its tracked connection",
        Hook::ToNode,
        ifs.c,
        &v4(CLIENT4, NODE4, TCP, &tcp(41000, 6443, ACK)),
        PASS,
        "client",
        None,
    );
}

#[test]
fn root_node_hook_another_port_of_the_node_is_denied_and_its_answer_dropped() {
    let (mut lab, ifs) = lab_with(client_node_port_only());
    syn_to_service(&mut lab, ifs.c, 41001);
    lab.expect(
        "the SYN translated to the node's port 10250: the Deny rule",
        Hook::ToNode,
        ifs.c,
        &v4(CLIENT4, NODE4, TCP, &tcp(41001, 10250, SYN)),
        DROP,
        "client",
        Some(reason::DROP_EGRESS),
    );
    lab.verdict(
        "an answer from the Service address",
        Hook::ToPod,
        ifs.c,
        &v4(K8S4, CLIENT4, TCP, &tcp(443, 41001, SYN | ACK)),
        DROP,
    );
}

#[test]
fn root_node_hook_a_policy_change_cuts_an_established_connection_to_the_node() {
    let (mut lab, ifs) = lab_with(client_node_port_only());
    syn_to_service(&mut lab, ifs.c, 41002);
    let to_node = |flags| v4(CLIENT4, NODE4, TCP, &tcp(41002, 6443, flags));
    lab.verdict("SYN at the node", Hook::ToNode, ifs.c, &to_node(SYN), PASS);
    lab.verdict(
        "SYN-ACK",
        Hook::ToPod,
        ifs.c,
        &v4(K8S4, CLIENT4, TCP, &tcp(443, 41002, SYN | ACK)),
        PASS,
    );
    // Now every node is denied.
    add_cnp(
        &mut lab.state,
        "node-port",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [{"name": "no-nodes", "action": "Deny", "to": [{"nodes": {}}]}]}),
    );
    lab.apply();
    lab.verdict(
        "the client's next segment at the node, under the Deny",
        Hook::ToNode,
        ifs.c,
        &to_node(ACK),
        DROP,
    );
    lab.verdict(
        "the node's data, from the Service address",
        Hook::ToPod,
        ifs.c,
        &v4(K8S4, CLIENT4, TCP, &tcp(443, 41002, PSH | ACK)),
        DROP,
    );
}

#[test]
fn root_node_hook_udp_to_a_denied_backend_on_the_node_is_dropped() {
    let (mut lab, ifs) = lab_with(client_node_port_only());
    lab.verdict(
        "a datagram to a Service",
        Hook::FromPod,
        ifs.c,
        &v4(CLIENT4, K8S4, UDP, &udp(41003, 53)),
        PASS,
    );
    lab.verdict(
        "translated to the node's port 53",
        Hook::ToNode,
        ifs.c,
        &v4(CLIENT4, NODE4, UDP, &udp(41003, 53)),
        DROP,
    );
}

#[test]
fn root_node_hook_ipv6_a_denied_backend_on_the_node_is_dropped() {
    let (mut lab, ifs) = lab_with(client_node_port_only());
    let node6 = ip6("fd00:1::1");
    lab.verdict(
        "a direct SYN to the node's IPv6 address, port 10250: the Deny rule at the veth",
        Hook::FromPod,
        ifs.c,
        &v6(client6(), node6, TCP, 64, &tcp(41004, 10250, SYN)),
        DROP,
    );
    lab.verdict(
        "the same SYN as a Service's translation, at the node's socket",
        Hook::ToNode,
        ifs.c,
        &v6(client6(), node6, TCP, 64, &tcp(41005, 10250, SYN)),
        DROP,
    );
    lab.verdict(
        "port 6443 is accepted",
        Hook::ToNode,
        ifs.c,
        &v6(client6(), node6, TCP, 64, &tcp(41006, 6443, SYN)),
        PASS,
    );
}

/// NetworkPolicy alone lets a pod reach its own node, through a Service too: `to_node`
/// leaves an unordered set's packets alone, uncounted.
#[test]
fn root_node_hook_networkpolicy_alone_keeps_the_own_node_exemption() {
    let mut st = cnp_state();
    set_policy(
        &mut st,
        "client-egress-none",
        r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"]}"#,
    );
    let (mut lab, ifs) = lab_with(st);
    syn_to_service(&mut lab, ifs.c, 41007);
    lab.expect(
        "the translated SYN at the node's socket",
        Hook::ToNode,
        ifs.c,
        &v4(CLIENT4, NODE4, TCP, &tcp(41007, 10250, SYN)),
        PASS,
        "client",
        None,
    );
    lab.verdict(
        "the node's SYN-ACK, from the Service address",
        Hook::ToPod,
        ifs.c,
        &v4(K8S4, CLIENT4, TCP, &tcp(443, 41007, SYN | ACK)),
        PASS,
    );
}

/// A kubelet probe of the client under an Admin policy that denies the client's egress
/// to nodes: the probe's SYN is let in (nothing denies the client's ingress), and the
/// client's SYN-ACK, delivered to the kubelet's socket, is a reply, not an opening.
#[test]
fn root_node_hook_the_reply_to_a_kubelet_probe_reaches_the_kubelet() {
    let mut st = cnp_state();
    add_cnp(
        &mut st,
        "deny-nodes",
        "Admin",
        10,
        json!({"subject": pods_with_app("client"),
               "egress": [{"action": "Deny", "to": [{"nodes": {}}]}]}),
    );
    let (mut lab, ifs) = lab_with(st);
    lab.verdict(
        "the kubelet's SYN to the client",
        Hook::ToPod,
        ifs.c,
        &v4(NODE4, CLIENT4, TCP, &tcp(42000, 8080, SYN)),
        PASS,
    );
    let syn_ack = v4(CLIENT4, NODE4, TCP, &tcp(8080, 42000, SYN | ACK));
    lab.verdict(
        "the SYN-ACK at the veth",
        Hook::FromPod,
        ifs.c,
        &syn_ack,
        PASS,
    );
    lab.verdict(
        "the SYN-ACK at the kubelet's socket",
        Hook::ToNode,
        ifs.c,
        &syn_ack,
        PASS,
    );
}

/// What is not a local pod's packet to this node passes untouched: a pod's packet to
/// another pod's socket, and another node's.
#[test]
fn root_node_hook_passes_what_is_not_a_local_pods_packet_to_the_node() {
    let (mut lab, ifs) = lab_with(client_node_port_only());
    lab.expect(
        "the client's packet to the server's socket",
        Hook::ToNode,
        ifs.c,
        &v4(CLIENT4, SERVER4, TCP, &tcp(41008, 80, SYN)),
        PASS,
        "client",
        None,
    );
    lab.verdict(
        "another node's packet to this node",
        Hook::ToNode,
        ifs.c,
        &v4(REMOTE_NODE4, NODE4, TCP, &tcp(41009, 10250, SYN)),
        PASS,
    );
}

// ---------------------------------------------------------------------------------------
// The cgroup link's lifecycle: attached, pinned, replaced by a restarted agent, removed
// by cleanup. On a cgroup v2 and a bpffs this test mounts in a folder of its own (the
// cgroup is a new, empty one: no process is under it, no packet meets the program).
// ---------------------------------------------------------------------------------------

/// Program ids attached to `cgroup` itself at cgroup_skb ingress (BPF_PROG_QUERY).
fn attached_ids(cgroup: &std::path::Path) -> Vec<u32> {
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(cgroup).expect("open the cgroup");
    let mut ids = [0u32; 16];
    // union bpf_attr for BPF_PROG_QUERY: target_fd, attach_type, query_flags,
    // attach_flags, prog_ids (u64 pointer), prog_cnt.
    #[repr(C)]
    struct Query {
        target_fd: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        prog_cnt: u32,
        _pad: [u8; 100],
    }
    let mut q = Query {
        target_fd: dir.as_raw_fd() as u32,
        attach_type: 0, // BPF_CGROUP_INET_INGRESS
        query_flags: 0,
        attach_flags: 0,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        _pad: [0; 100],
    };
    const BPF_PROG_QUERY: libc::c_long = 16;
    // SAFETY: a valid attr of the size passed, whose id buffer outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_QUERY,
            &mut q as *mut Query,
            std::mem::size_of::<Query>() as u32,
        )
    };
    assert_eq!(r, 0, "BPF_PROG_QUERY: {}", std::io::Error::last_os_error());
    ids[..q.prog_cnt as usize].to_vec()
}

/// `attached_ids` once it holds `n` programs, waiting up to 5 s: an unpinned link goes
/// with its pin's inode, which Linux 5.10 frees after an RCU grace period.
fn attached_settled(cgroup: &std::path::Path, n: usize) -> Vec<u32> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let ids = attached_ids(cgroup);
        if ids.len() == n || std::time::Instant::now() > deadline {
            return ids;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A cgroup v2 and a bpffs mounted under a fresh folder; unmounted and removed on drop.
struct Mounts {
    dir: std::path::PathBuf,
    name: String,
}

impl Mounts {
    fn new() -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("netpol-node-hook-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(&name);
        let m = Mounts { dir, name };
        for (what, fstype) in [("cg", "cgroup2"), ("bpf", "bpf")] {
            let at = m.dir.join(what);
            std::fs::create_dir_all(&at).expect("mount point");
            let ok = std::process::Command::new("mount")
                .args(["-t", fstype, "none"])
                .arg(&at)
                .status()
                .expect("mount");
            assert!(ok.success(), "mount -t {fstype} {}", at.display());
        }
        std::fs::create_dir(m.cgroup()).expect("a cgroup of the test's own");
        m
    }
    fn cgroup(&self) -> std::path::PathBuf {
        self.dir.join("cg").join(&self.name)
    }
    fn pins(&self) -> std::path::PathBuf {
        self.dir.join("bpf").join("netpol")
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(self.cgroup());
        for what in ["cg", "bpf"] {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.dir.join(what))
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn root_node_hook_is_pinned_replaced_on_restart_and_removed_by_cleanup() {
    let m = Mounts::new();
    let cg = m.cgroup();
    assert!(
        attached_ids(&cg).is_empty(),
        "a new cgroup holds no program"
    );
    let first = {
        let mut dp =
            Datapath::load(AttachMode::Auto, &small_maps(), Some(&m.pins())).expect("load BPF");
        dp.attach_node(&cg).expect("attach to_node");
        assert_eq!(dp.node_cgroup(), Some(cg.as_path()));
        let ids = attached_ids(&cg);
        assert_eq!(ids.len(), 1, "one program on the cgroup: {ids:?}");
        ids[0]
    };
    assert_eq!(
        attached_ids(&cg),
        vec![first],
        "the pin keeps the link after the agent is gone"
    );
    {
        let mut dp = Datapath::load(AttachMode::Auto, &small_maps(), Some(&m.pins()))
            .expect("load BPF again");
        dp.attach_node(&cg).expect("attach to_node again");
        let ids = attached_settled(&cg, 1);
        assert_eq!(ids.len(), 1, "the earlier run's link went: {ids:?}");
        assert_ne!(ids[0], first, "the restarted agent's program runs");
    }
    let removed = netpol_agent::datapath::cleanup::cleanup(&m.pins()).expect("cleanup");
    assert_eq!(removed.node_hooks, 1, "{removed:?}");
    assert!(attached_settled(&cg, 0).is_empty(), "cleanup detached it");
}

#[test]
fn root_node_hook_without_pins_goes_with_the_datapath() {
    let m = Mounts::new();
    let cg = m.cgroup();
    {
        let mut dp = Datapath::load(AttachMode::Auto, &small_maps(), None).expect("load BPF");
        dp.attach_node(&cg).expect("attach to_node");
        assert_eq!(attached_ids(&cg).len(), 1);
    }
    assert!(
        attached_settled(&cg, 0).is_empty(),
        "dropped with its datapath"
    );
}

#[test]
fn root_node_hook_refuses_a_directory_that_is_no_cgroup_v2() {
    let dir = std::env::temp_dir();
    let mut dp = Datapath::load(AttachMode::Auto, &small_maps(), None).expect("load BPF");
    let e = dp.attach_node(&dir).expect_err("a tmp folder is no cgroup");
    assert!(format!("{e:#}").contains("not a cgroup v2"), "{e:#}");
    assert_eq!(dp.node_cgroup(), None);
}

/// `--node-cgroup off` after a run that attached it: the earlier run's pinned link goes,
/// so /status saying "off" is true.
#[test]
fn root_node_hook_turned_off_detaches_the_earlier_runs_link() {
    let m = Mounts::new();
    let cg = m.cgroup();
    {
        let mut dp =
            Datapath::load(AttachMode::Auto, &small_maps(), Some(&m.pins())).expect("load BPF");
        dp.attach_node(&cg).expect("attach to_node");
    }
    assert_eq!(attached_ids(&cg).len(), 1, "pinned");
    let mut dp =
        Datapath::load(AttachMode::Auto, &small_maps(), Some(&m.pins())).expect("load BPF again");
    dp.detach_node();
    assert!(
        attached_settled(&cg, 0).is_empty(),
        "the earlier run's link went"
    );
    drop(dp);
    let _ = netpol_agent::datapath::cleanup::cleanup(&m.pins());
}
