//! Connections older than a pod's isolation, tracked from the kernel's evidence.
//! **Needs root**: the test thread moves into a network namespace of its own, turns
//! nf_conntrack on there with an nftables rule, opens a real TCP connection over its
//! loopback, reads the kernel's table over ctnetlink, seeds the BPF conntrack map from it
//! and runs crafted packets of that connection through the programs. Nothing leaves the
//! namespace, which goes away with the thread.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};

use netpol_agent::compile::compile;
use netpol_agent::datapath::kernel_conntrack;
use netpol_agent::datapath::{AttachMode, Datapath, Hook, MapSizes};
use netpol_agent::program::Programmer;
use netpol_agent::program::seed::seed_entries;
use netpol_agent::state::{ClusterState, ObjectRef, PodInfo};
use netpol_common::{reason, sizes};

const PASS: i32 = -1;
const DROP: i32 = 2;

fn private_netns_with_conntrack() {
    // SAFETY: affects only the calling thread's network namespace.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut c = std::process::Command::new(args[0]);
        c.args(&args[1..]).stdin(std::process::Stdio::piped());
        let mut child = c.spawn().expect("spawn");
        if let Some(text) = stdin
            && let Some(mut i) = child.stdin.take()
        {
            i.write_all(text.as_bytes()).expect("stdin");
        }
        assert!(child.wait().expect("wait").success(), "{args:?}");
    };
    run(&["ip", "link", "set", "lo", "up"], None);
    // Any rule that looks at conntrack state turns tracking on in this namespace.
    run(
        &["nft", "-f", "-"],
        Some(
            "table inet seedtest { chain in { type filter hook input priority 0; ct state established accept; }; }",
        ),
    );
}

fn tcp_frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    let mut ip = vec![0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    p.extend_from_slice(&ip);
    p.extend_from_slice(&tcp);
    p
}

#[test]
fn root_connections_older_than_isolation_are_seeded_from_nf_conntrack() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "needs root");
    private_netns_with_conntrack();

    // A connection the pod opened while nothing isolated it.
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let server_port = listener.local_addr().expect("addr").port();
    let mut client = TcpStream::connect(("127.0.0.1", server_port)).expect("connect");
    let (mut server, _) = listener.accept().expect("accept");
    client.write_all(b"x").expect("write");
    let mut b = [0u8; 1];
    server.read_exact(&mut b).expect("read");
    server.write_all(b"y").expect("write");
    client.read_exact(&mut b).expect("read");
    let client_port = client.local_addr().expect("addr").port();

    let flows = kernel_conntrack::dump().expect("ctnetlink dump");
    let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
    assert!(
        flows.iter().any(|f| f.proto == 6
            && f.orig.src == lo
            && f.orig.sport == client_port
            && f.orig.dport == server_port
            && f.replied),
        "the kernel's table shows the connection: {flows:?}"
    );

    // The pod (127.0.0.1 on loopback) is now isolated both ways: egress to 127/8 only,
    // no ingress at all. Its connection's replies are not openings it would allow.
    let mut s = ClusterState::default();
    let pod = ObjectRef::new("default", "client");
    s.pods.insert(
        pod.clone(),
        PodInfo {
            labels: [("app".to_string(), "client".to_string())].into(),
            node: Some("n1".into()),
            host_network: false,
            terminated: false,
            ips: vec![lo],
            ports: Vec::new(),
        },
    );
    let policy: k8s_openapi::api::networking::v1::NetworkPolicy = serde_json::from_str(
        r#"{"metadata": {"name": "iso", "namespace": "default"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
              "egress": [{"to": [{"ipBlock": {"cidr": "127.0.0.0/8"}}]}]}}"#,
    )
    .expect("policy");
    s.policies.insert(ObjectRef::new("default", "iso"), policy);
    let plan = compile(&s, "n1");
    let mut dp = Datapath::load(
        AttachMode::Auto,
        &MapSizes {
            conntrack_entries: 1024,
            conntrack_new_entries: 1024,
            peer_entries: 1024,
            identity_entries: 4096,
            cidr_entries: 1024,
            service_entries: 1024,
            portset_entries: 1024,
        },
        None,
    )
    .expect("load BPF");
    let mut programmer = Programmer::new(dp.take_maps().expect("maps"), sizes::COUNTERS);

    // What the agent does before the pod flips: seed, then program.
    let fresh = programmer.newly_isolated(&plan);
    assert!(fresh.contains(&lo), "the pod is newly isolated");
    let mut seeds = seed_entries(&flows, &fresh, &fresh, 0);
    let now = {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec to fill.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    };
    for (_, e) in &mut seeds.conntrack {
        e.last_seen_ns = now;
    }
    let added = programmer.maps_mut().seed_conntrack(&seeds).expect("seed");
    assert!(added >= 1, "seeded {added}");
    programmer
        .apply(&plan, &BTreeMap::from([(pod.clone(), 1u32)]))
        .expect("program");
    let id = programmer.endpoint_ids()[&pod];
    let counters = |p: &Programmer<netpol_agent::program::kernel::KernelMaps>| {
        p.maps().counters(id).expect("counters").packets
    };

    // The server pushes data first: a reply of the pod's own connection, decided by the
    // pod's egress rule (which allows it), not taken for an opening.
    let before = counters(&programmer);
    let push = tcp_frame(
        [127, 0, 0, 1],
        [127, 0, 0, 1],
        server_port,
        client_port,
        0x18,
    );
    let (v, _) = dp.test_run(Hook::ToPod, &push, 1).expect("run");
    assert_eq!(v, PASS, "the old connection's data reaches the pod");
    let after = counters(&programmer);
    assert_eq!(
        after[reason::ALLOW_POLICY],
        before[reason::ALLOW_POLICY] + 1
    );

    // The same push from an address the kernel never saw in this connection is an
    // opening, and is refused (from the pod's own address it would be the pod itself).
    let stray = tcp_frame(
        [127, 0, 0, 2],
        [127, 0, 0, 1],
        server_port,
        client_port,
        0x18,
    );
    let (v, _) = dp.test_run(Hook::ToPod, &stray, 1).expect("run");
    assert_eq!(v, DROP, "no evidence, no pass");
}
