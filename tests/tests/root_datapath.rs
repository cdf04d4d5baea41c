//! Datapath tests on crafted packets with BPF_PROG_TEST_RUN. **Needs root** (loads BPF).
//! Each test thread moves into a network namespace of its own, where the loopback device
//! (ifindex 1) stands in for the veth of the pod `default/client` and a veth device for
//! that of `default/server`; the namespace goes away with the thread. No packet is sent
//! anywhere.
//!
//! Each case asserts the verdict and the one counter that moved.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netpol_agent::compile::compile;
use netpol_agent::datapath::{AttachMode, Datapath, Hook, MapSizes};
use netpol_agent::program::Programmer;
use netpol_agent::program::kernel::KernelMaps;
use netpol_agent::state::{ClusterState, ObjectRef, PodInfo};
use netpol_common::{reason, sizes};
use netpol_tests::sctp;

const PASS: i32 = -1; // TC_ACT_UNSPEC
const DROP: i32 = 2; // TC_ACT_SHOT
const CLIENT4: [u8; 4] = [10, 1, 0, 2];
const SERVER4: [u8; 4] = [10, 1, 0, 3];

fn client6() -> Ipv6Addr {
    "fd00:1::2".parse().expect("constant")
}

// ---- packet building -------------------------------------------------------------

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    p.extend_from_slice(&ethertype.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t
}
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn udp(sport: u16, dport: u16) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&8u16.to_be_bytes());
    u
}

fn icmp_echo() -> Vec<u8> {
    vec![8, 0, 0, 0, 0, 1, 0, 1]
}

struct V4 {
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    options: usize,
    frag_offset: u16,
    more_fragments: bool,
    id: u16,
}

impl V4 {
    fn new(src: [u8; 4], dst: [u8; 4], proto: u8) -> Self {
        V4 {
            src,
            dst,
            proto,
            options: 0,
            frag_offset: 0,
            more_fragments: false,
            id: 7,
        }
    }
    fn packet(&self, l4: &[u8]) -> Vec<u8> {
        let hlen = 20 + self.options;
        let mut h = vec![0u8; hlen];
        h[0] = 0x40 | (hlen / 4) as u8;
        h[2..4].copy_from_slice(&((hlen + l4.len()) as u16).to_be_bytes());
        let frag = self.frag_offset | if self.more_fragments { 0x2000 } else { 0 };
        h[4..6].copy_from_slice(&self.id.to_be_bytes());
        h[6..8].copy_from_slice(&frag.to_be_bytes());
        h[8] = 64;
        h[9] = self.proto;
        h[12..16].copy_from_slice(&self.src);
        h[16..20].copy_from_slice(&self.dst);
        // Options: NOPs then end-of-list. Bytes that would read as ports if skipped wrong.
        for b in h.iter_mut().take(hlen - 1).skip(20) {
            *b = 1;
        }
        h.extend_from_slice(l4);
        eth(0x0800, &h)
    }
}

/// IPv6 with the given extension headers (next-header numbers) before `l4`.
fn v6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, ext: &[u8], frag_offset: u16, l4: &[u8]) -> Vec<u8> {
    let mut chain = Vec::new();
    let mut kinds = ext.to_vec();
    kinds.push(proto);
    for w in kinds.windows(2) {
        let (this, next) = (w[0], w[1]);
        if this == 44 {
            let mut f = vec![next, 0, 0, 0, 0, 0, 0, 1];
            // Offset 0 is a first fragment: more to come.
            let field = (frag_offset << 3) | u16::from(frag_offset == 0);
            f[2..4].copy_from_slice(&field.to_be_bytes());
            chain.extend_from_slice(&f);
        } else {
            // hop-by-hop / routing / destination options: 8 bytes, padding
            chain.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
        }
    }
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&((chain.len() + l4.len()) as u16).to_be_bytes());
    h[6] = *kinds.first().unwrap_or(&proto);
    h[7] = 64;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
    h.extend_from_slice(&chain);
    h.extend_from_slice(l4);
    eth(0x86DD, &h)
}

/// An ARP request whose sender protocol address is `spa`.
fn arp(spa: &[u8; 4]) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 2];
    a.extend_from_slice(spa);
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&[10, 1, 0, 1]);
    eth(0x0806, &a)
}

/// The same IPv6 frame with another hop limit.
fn hop_limit(mut frame: Vec<u8>, hl: u8) -> Vec<u8> {
    frame[14 + 7] = hl;
    frame
}

/// An ICMP error (IPv4 type/code) quoting the first 28 bytes of `quoted` (an IPv4 packet
/// without its Ethernet header).
fn icmp4_error(kind: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, code, 0, 0, 0, 0, 0x05, 0x00];
    m.extend_from_slice(&quoted[..28.min(quoted.len())]);
    m
}

/// An ICMPv6 error quoting the first 48 bytes of `quoted` (an IPv6 packet without its
/// Ethernet header).
fn icmp6_error(kind: u8, quoted: &[u8]) -> Vec<u8> {
    let mut m = vec![kind, 0, 0, 0, 0, 0, 0x05, 0x00];
    m.extend_from_slice(&quoted[..48.min(quoted.len())]);
    m
}

// ---- setup ---------------------------------------------------------------------------

struct Bench {
    dp: Datapath,
    programmer: Programmer<KernelMaps>,
    state: ClusterState,
    ifindexes: BTreeMap<ObjectRef, u32>,
    client: u32,
    server: u32,
}

/// An address of the node the pods run on (the host side of their veths).
const NODE4: [u8; 4] = [10, 1, 0, 1];
/// The ClusterIP of `default/dns` (UDP and TCP 53).
const DNS_VIP: [u8; 4] = [10, 96, 0, 10];

fn node6() -> Ipv6Addr {
    "fd00:1::1".parse().expect("constant")
}

/// Moves this test thread into a new network namespace with a veth device for the
/// server's veth; returns its ifindex.
fn private_netns() -> u32 {
    // SAFETY: affects only the calling thread's network namespace.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    let ok = std::process::Command::new("ip")
        .args([
            "link", "add", "srv0", "type", "veth", "peer", "name", "srv1",
        ])
        .status()
        .expect("running ip")
        .success();
    assert!(ok, "ip link add srv0 type veth");
    netpol_agent::datapath::ifindex("srv0").expect("srv0")
}

fn policy(json: &str) -> (ObjectRef, k8s_openapi::api::networking::v1::NetworkPolicy) {
    let p: k8s_openapi::api::networking::v1::NetworkPolicy =
        serde_json::from_str(json).expect("test policy");
    let key = ObjectRef::new("default", p.metadata.name.clone().unwrap_or_default());
    (key, p)
}

fn pod(ips: &[IpAddr], app: &str) -> PodInfo {
    PodInfo {
        labels: [("app".to_string(), app.to_string())].into(),
        node: Some("n1".into()),
        host_network: false,
        terminated: false,
        ips: ips.to_vec(),
        ports: Vec::new(),
    }
}

fn setup() -> Bench {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "root_datapath tests load BPF programs: run them as root"
    );
    let mut s = ClusterState::default();
    let client = ObjectRef::new("default", "client");
    s.pods.insert(
        client.clone(),
        pod(
            &[IpAddr::V4(Ipv4Addr::from(CLIENT4)), IpAddr::V6(client6())],
            "client",
        ),
    );
    s.pods.insert(
        ObjectRef::new("default", "server"),
        pod(&[IpAddr::V4(Ipv4Addr::from(SERVER4))], "server"),
    );
    let policies = [
        r#"{"metadata": {"name": "client-out", "namespace": "default"},
            "spec": {"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress", "Ingress"],
              "egress": [
                {"to": [{"ipBlock": {"cidr": "10.2.0.0/16"}}, {"ipBlock": {"cidr": "fd00:2::/64"}}],
                 "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}, {"port": 9000, "protocol": "SCTP"}]},
                {"to": [{"ipBlock": {"cidr": "10.3.0.0/16"}}, {"ipBlock": {"cidr": "fd00:3::/64"}}]}]}}"#,
        r#"{"metadata": {"name": "server-in", "namespace": "default"},
            "spec": {"podSelector": {"matchLabels": {"app": "server"}},
              "ingress": [{"from": [{"ipBlock": {"cidr": "10.9.0.0/16"}}], "ports": [{"port": 443}]}]}}"#,
    ];
    for p in policies {
        let (key, p) = policy(p);
        s.policies.insert(key, p);
    }
    s.services.insert(
        ObjectRef::new("default", "dns"),
        netpol_agent::state::ServiceInfo {
            ips: vec![IpAddr::V4(Ipv4Addr::from(DNS_VIP))],
            ports: vec![
                (netpol_agent::state::Protocol::Udp, 53),
                (netpol_agent::state::Protocol::Tcp, 53),
            ],
        },
    );
    let server_if = private_netns();
    let plan = compile(&s, "n1");
    assert!(plan.errors.is_empty(), "{:?}", plan.errors);
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
    let maps = dp.take_maps().expect("maps");
    let mut programmer = Programmer::new(maps, sizes::COUNTERS);
    // The loopback device stands in for the client's veth.
    let ifindexes = BTreeMap::from([
        (client.clone(), 1u32),
        (ObjectRef::new("default", "server"), server_if),
    ]);
    programmer.apply(&plan, &ifindexes).expect("program maps");
    programmer
        .set_node_addrs(&[IpAddr::V4(Ipv4Addr::from(NODE4)), IpAddr::V6(node6())].into())
        .expect("node addresses");
    let ids = programmer.endpoint_ids();
    let client_id = ids[&client];
    let server_id = ids[&ObjectRef::new("default", "server")];
    Bench {
        dp,
        programmer,
        state: s,
        ifindexes,
        client: client_id,
        server: server_id,
    }
}

impl Bench {
    fn counters(&self, id: u32) -> [u64; reason::COUNT] {
        self.programmer
            .maps()
            .counters(id)
            .expect("counters")
            .packets
    }

    /// Replaces the policies (all of them) and programs the result, as the agent does.
    fn set_policies(&mut self, policies: &[&str]) {
        self.state.policies.clear();
        for p in policies {
            let (key, p) = policy(p);
            self.state.policies.insert(key, p);
        }
        let plan = compile(&self.state, "n1");
        assert!(plan.errors.is_empty(), "{:?}", plan.errors);
        self.programmer
            .apply(&plan, &self.ifindexes)
            .expect("program maps");
    }

    /// The veth a hook of endpoint `id` runs on.
    fn ifindex_of(&self, id: u32) -> u32 {
        let pod = self
            .programmer
            .endpoint_ids()
            .iter()
            .find(|(_, v)| **v == id)
            .map(|(k, _)| k.clone())
            .expect("endpoint");
        self.ifindexes[&pod]
    }

    /// Runs `packet` at `hook` on the veth of endpoint `id`; asserts the verdict and that
    /// exactly `why` moved by one on `id` (or nothing moved, for `None`).
    #[track_caller]
    fn expect(
        &mut self,
        what: &str,
        hook: Hook,
        packet: &[u8],
        verdict: i32,
        id: u32,
        why: Option<usize>,
    ) {
        let on = self.ifindex_of(id);
        self.expect_on(what, hook, on, packet, verdict, id, why);
    }

    /// `expect` on interface `on`, counting on endpoint `id`.
    #[allow(clippy::too_many_arguments)]
    #[track_caller]
    fn expect_on(
        &mut self,
        what: &str,
        hook: Hook,
        on: u32,
        packet: &[u8],
        verdict: i32,
        id: u32,
        why: Option<usize>,
    ) {
        let before = self.counters(id);
        let (got, _) = self.dp.test_run_on(hook, packet, 1, on).expect("test run");
        let after = self.counters(id);
        assert_eq!(got, verdict, "{what}: verdict");
        let moved: Vec<usize> = (0..reason::COUNT)
            .filter(|i| after[*i] != before[*i])
            .collect();
        match why {
            Some(w) => {
                assert_eq!(
                    moved,
                    vec![w],
                    "{what}: expected counter {} to move, moved {:?}",
                    reason::NAMES[w],
                    moved.iter().map(|i| reason::NAMES[*i]).collect::<Vec<_>>()
                );
                assert_eq!(after[w] - before[w], 1, "{what}: counted once");
            }
            None => assert!(
                moved.is_empty(),
                "{what}: no counter should move, moved {moved:?}"
            ),
        }
    }
}

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

#[test]
fn root_ipv4_ports_protocols_and_options() {
    let mut b = setup();
    let c = b.client;
    let to = |d: [u8; 4], p: u8| V4::new(CLIENT4, d, p);
    let svc2 = [10, 2, 0, 5];
    let all3 = [10, 3, 0, 5];
    b.expect(
        "tcp 80 allowed",
        Hook::FromPod,
        &to(svc2, TCP).packet(&tcp(40000, 80, SYN)),
        PASS,
        c,
        Some(reason::ALLOW_POLICY),
    );
    b.expect(
        "tcp 81 denied",
        Hook::FromPod,
        &to(svc2, TCP).packet(&tcp(40001, 81, SYN)),
        DROP,
        c,
        Some(reason::DROP_EGRESS),
    );
    b.expect(
        "udp 53 allowed",
        Hook::FromPod,
        &to(svc2, UDP).packet(&udp(40002, 53)),
        PASS,
        c,
        Some(reason::ALLOW_POLICY),
    );
    b.expect(
        "udp 80 denied",
        Hook::FromPod,
        &to(svc2, UDP).packet(&udp(40003, 80)),
        DROP,
        c,
        Some(reason::DROP_EGRESS),
    );
    b.expect(
        "sctp 9000 allowed",
        Hook::FromPod,
        &to(svc2, SCTP).packet(&sctp::init(40004, 9000, 7)),
        PASS,
        c,
        Some(reason::ALLOW_POLICY),
    );
    b.expect(
        "sctp 9001 denied",
        Hook::FromPod,
        &to(svc2, SCTP).packet(&sctp::init(40005, 9001, 7)),
        DROP,
        c,
        Some(reason::DROP_EGRESS),
    );
    b.expect(
        "icmp to a ports-only peer denied",
        Hook::FromPod,
        &to(svc2, ICMP).packet(&icmp_echo()),
        DROP,
        c,
        Some(reason::DROP_EGRESS),
    );
    b.expect(
        "icmp to an all-ports peer allowed",
        Hook::FromPod,
        &to(all3, ICMP).packet(&icmp_echo()),
        PASS,
        c,
        Some(reason::ALLOW_POLICY),
    );
    b.expect(
        "outside every block denied",
        Hook::FromPod,
        &to([192, 0, 2, 1], TCP).packet(&tcp(40006, 80, SYN)),
        DROP,
        c,
        Some(reason::DROP_EGRESS),
    );

    // IP options: ports are read after them (the option bytes would read as port 257).
    let mut opt = to(svc2, TCP);
    opt.options = 12;
    b.expect(
        "options, tcp 80 allowed",
        Hook::FromPod,
        &opt.packet(&tcp(40007, 80, SYN)),
        PASS,
        c,
        Some(reason::ALLOW_POLICY),
    );
    b.expect(
        "options, tcp 81 denied",
        Hook::FromPod,
        &opt.packet(&tcp(40008, 81, SYN)),
        DROP,
        c,
        Some(reason::DROP_EGRESS),
    );
}

#[test]
fn root_ipv4_fragments_truncation_and_spoofing() {
    let mut b = setup();
    let c = b.client;
    let svc2 = [10, 2, 0, 5];
    let mut first = V4::new(CLIENT4, svc2, UDP);
    first.more_fragments = true;
    b.expect(
        "first fragment carries ports",
        Hook::FromPod,
        &first.packet(&udp(40010, 53)),
        PASS,
        c,
        Some(reason::ALLOW_POLICY),
    );
    let mut later = V4::new(CLIENT4, svc2, UDP);
    later.frag_offset = 185;
    b.expect(
        "later fragment of an allowed datagram takes its ports",
        Hook::FromPod,
        &later.packet(&[0u8; 16]),
        PASS,
        c,
        Some(reason::ALLOW_TRACKED),
    );
    let mut orphan = V4::new(CLIENT4, svc2, UDP);
    orphan.frag_offset = 185;
    orphan.id = 99;
    b.expect(
        "later fragment whose first fragment was not seen",
        Hook::FromPod,
        &orphan.packet(&[0u8; 16]),
        DROP,
        c,
        Some(reason::DROP_FRAGMENT),
    );
    let mut later3 = V4::new(CLIENT4, [10, 3, 0, 5], UDP);
    later3.frag_offset = 185;
    b.expect(
        "an orphan fragment gets no verdict of its own, even to an all-ports peer",
        Hook::FromPod,
        &later3.packet(&[0u8; 16]),
        DROP,
        c,
        Some(reason::DROP_FRAGMENT),
    );
    let mut denied_first = V4::new(CLIENT4, svc2, UDP);
    denied_first.more_fragments = true;
    denied_first.id = 5;
    b.expect(
        "first fragment of a denied datagram",
        Hook::FromPod,
        &denied_first.packet(&udp(40010, 54)),
        DROP,
        c,
        Some(reason::DROP_EGRESS),
    );
    let mut denied_later = V4::new(CLIENT4, svc2, UDP);
    denied_later.frag_offset = 185;
    denied_later.id = 5;
    b.expect(
        "its later fragment",
        Hook::FromPod,
        &denied_later.packet(&[0u8; 16]),
        DROP,
        c,
        Some(reason::DROP_FRAGMENT),
    );

    let full = V4::new(CLIENT4, svc2, TCP).packet(&tcp(40011, 80, SYN));
    // BPF_PROG_TEST_RUN refuses frames whose IP header is incomplete (measured on this
    // kernel: under 34 bytes for IPv4, 54 for IPv6), so truncation is tested from there on.
    let mut long_ihl = full.clone();
    long_ihl[14] = 0x4f; // IHL 15: options run past the end of the frame
    b.expect(
        "options past the end",
        Hook::FromPod,
        &long_ihl[..14 + 20 + 20],
        DROP,
        c,
        Some(reason::DROP_MALFORMED),
    );
    b.expect(
        "tcp header cut short",
        Hook::FromPod,
        &full[..14 + 20 + 8],
        DROP,
        c,
        Some(reason::DROP_MALFORMED),
    );
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x43; // IHL 3 < 5
    b.expect(
        "ihl below 5",
        Hook::FromPod,
        &bad_ihl,
        DROP,
        c,
        Some(reason::DROP_MALFORMED),
    );

    b.expect(
        "spoofed source",
        Hook::FromPod,
        &V4::new([10, 1, 0, 99], svc2, TCP).packet(&tcp(40012, 80, SYN)),
        DROP,
        c,
        Some(reason::DROP_SPOOFED),
    );
    b.expect(
        "another pod's source",
        Hook::FromPod,
        &V4::new(SERVER4, svc2, TCP).packet(&tcp(40013, 80, SYN)),
        DROP,
        c,
        Some(reason::DROP_SPOOFED),
    );
    b.expect(
        "ARP probe (sender 0.0.0.0)",
        Hook::FromPod,
        &arp(&[0, 0, 0, 0]),
        PASS,
        c,
        Some(reason::ALLOW_NEIGHBOUR),
    );
    b.expect(
        "ARP from the pod's own address",
        Hook::FromPod,
        &arp(&CLIENT4),
        PASS,
        c,
        Some(reason::ALLOW_NEIGHBOUR),
    );
    b.expect(
        "ARP claiming another pod's address",
        Hook::FromPod,
        &arp(&SERVER4),
        DROP,
        c,
        Some(reason::DROP_SPOOFED),
    );
    b.expect(
        "ARP from the node to the pod",
        Hook::ToPod,
        &arp(&NODE4),
        PASS,
        c,
        Some(reason::ALLOW_NEIGHBOUR),
    );
}

#[test]
fn root_ipv6_extension_headers_fragments_and_icmpv6() {
    let mut b = setup();
    let c = b.client;
    let svc2: Ipv6Addr = "fd00:2::5".parse().expect("constant");
    let all3: Ipv6Addr = "fd00:3::5".parse().expect("constant");
    let me = client6();
    b.expect(
        "tcp 80 allowed",
        Hook::FromPod,
        &v6(me, svc2, TCP, &[], 0, &tcp(41000, 80, SYN)),
        PASS,
        c,
        Some(reason::ALLOW_POLICY),
    );
    b.expect(
        "tcp 81 denied",
        Hook::FromPod,
        &v6(me, svc2, TCP, &[], 0, &tcp(41001, 81, SYN)),
        DROP,
        c,
        Some(reason::DROP_EGRESS),
    );
    // hop-by-hop (0), routing (43), destination options (60) before the transport header
    let ext = [0u8, 43, 60];
    b.expect(
        "ext headers, tcp 80 allowed",
        Hook::FromPod,
        &v6(me, svc2, TCP, &ext, 0, &tcp(41002, 80, SYN)),
        PASS,
        c,
        Some(reason::ALLOW_POLICY),
    );
    b.expect(
        "ext headers, tcp 81 denied",
        Hook::FromPod,
        &v6(me, svc2, TCP, &ext, 0, &tcp(41003, 81, SYN)),
        DROP,
        c,
        Some(reason::DROP_EGRESS),
    );
    b.expect(
        "first fragment, udp 53",
        Hook::FromPod,
        &v6(me, svc2, UDP, &[44], 0, &udp(41004, 53)),
        PASS,
        c,
        Some(reason::ALLOW_POLICY),
    );
    b.expect(
        "later fragment of the allowed datagram",
        Hook::FromPod,
        &v6(me, svc2, UDP, &[44], 100, &[0u8; 16]),
        PASS,
        c,
        Some(reason::ALLOW_TRACKED),
    );
    b.expect(
        "later fragment whose first was not seen",
        Hook::FromPod,
        &v6(me, all3, UDP, &[44], 100, &[0u8; 16]),
        DROP,
        c,
        Some(reason::DROP_FRAGMENT),
    );
    b.expect(
        "sctp 9000",
        Hook::FromPod,
        &v6(me, svc2, SCTP, &[], 0, &sctp::init(41005, 9000, 9)),
        PASS,
        c,
        Some(reason::ALLOW_POLICY),
    );
    b.expect(
        "icmpv6 echo to ports-only peer",
        Hook::FromPod,
        &v6(me, svc2, ICMPV6, &[], 0, &[128, 0, 0, 0, 0, 1, 0, 1]),
        DROP,
        c,
        Some(reason::DROP_EGRESS),
    );
    b.expect(
        "icmpv6 echo to all-ports peer",
        Hook::FromPod,
        &v6(me, all3, ICMPV6, &[], 0, &[128, 0, 0, 0, 0, 1, 0, 1]),
        PASS,
        c,
        Some(reason::ALLOW_POLICY),
    );
    let link_local: Ipv6Addr = "fe80::1".parse().expect("constant");
    let all_routers: Ipv6Addr = "ff02::2".parse().expect("constant");
    b.expect(
        "router solicitation from link-local",
        Hook::FromPod,
        &hop_limit(
            v6(
                link_local,
                all_routers,
                ICMPV6,
                &[],
                0,
                &[133, 0, 0, 0, 0, 0, 0, 0],
            ),
            255,
        ),
        PASS,
        c,
        Some(reason::ALLOW_NEIGHBOUR),
    );
    b.expect(
        "echo from a link-local source is spoofed",
        Hook::FromPod,
        &v6(
            link_local,
            all3,
            ICMPV6,
            &[],
            0,
            &[128, 0, 0, 0, 0, 1, 0, 1],
        ),
        DROP,
        c,
        Some(reason::DROP_SPOOFED),
    );
    let full = v6(me, svc2, TCP, &[], 0, &tcp(41006, 80, SYN));
    b.expect(
        "transport header cut short",
        Hook::FromPod,
        &full[..14 + 40 + 4],
        DROP,
        c,
        Some(reason::DROP_MALFORMED),
    );
    b.expect(
        "ext header chain cut short",
        Hook::FromPod,
        &v6(me, svc2, TCP, &ext, 0, &[])[..14 + 40 + 4],
        DROP,
        c,
        Some(reason::DROP_MALFORMED),
    );
}

#[test]
fn root_ingress_conntrack_and_late_replies() {
    let mut b = setup();
    let (c, s) = (b.client, b.server);
    // The server's ingress: TCP 443 from 10.9.0.0/16 only.
    b.expect(
        "allowed source and port",
        Hook::ToPod,
        &V4::new([10, 9, 1, 1], SERVER4, TCP).packet(&tcp(42000, 443, SYN)),
        PASS,
        s,
        Some(reason::ALLOW_POLICY),
    );
    b.expect(
        "allowed source, other port",
        Hook::ToPod,
        &V4::new([10, 9, 1, 1], SERVER4, TCP).packet(&tcp(42001, 444, SYN)),
        DROP,
        s,
        Some(reason::DROP_INGRESS),
    );
    b.expect(
        "other source",
        Hook::ToPod,
        &V4::new([10, 8, 1, 1], SERVER4, TCP).packet(&tcp(42002, 443, SYN)),
        DROP,
        s,
        Some(reason::DROP_INGRESS),
    );
    b.expect(
        "rest of an allowed connection is tracked",
        Hook::ToPod,
        &V4::new([10, 9, 1, 1], SERVER4, TCP).packet(&tcp(42000, 443, ACK)),
        PASS,
        s,
        Some(reason::ALLOW_TRACKED),
    );

    // The client is isolated for ingress with nothing allowed: only replies come in.
    let peer = [10, 2, 0, 5];
    b.expect(
        "client opens tcp 80",
        Hook::FromPod,
        &V4::new(CLIENT4, peer, TCP).packet(&tcp(43000, 80, SYN)),
        PASS,
        c,
        Some(reason::ALLOW_POLICY),
    );
    b.expect(
        "its reply comes in",
        Hook::ToPod,
        &V4::new(peer, CLIENT4, TCP).packet(&tcp(80, 43000, SYN | ACK)),
        PASS,
        c,
        Some(reason::ALLOW_TRACKED),
    );
    b.expect(
        "the peer cannot open one back",
        Hook::ToPod,
        &V4::new(peer, CLIENT4, TCP).packet(&tcp(80, 43000, SYN)),
        DROP,
        c,
        Some(reason::DROP_INGRESS),
    );
    b.expect(
        "unsolicited connection",
        Hook::ToPod,
        &V4::new(peer, CLIENT4, TCP).packet(&tcp(5555, 22, SYN)),
        DROP,
        c,
        Some(reason::DROP_INGRESS),
    );
    // No entry: an ACK is judged as the opening of a connection, never as a reply, even
    // where the reverse direction would be allowed.
    b.expect(
        "ack without a connection is not a reply",
        Hook::ToPod,
        &V4::new([10, 2, 0, 6], CLIENT4, TCP).packet(&tcp(80, 43001, ACK)),
        DROP,
        c,
        Some(reason::DROP_INGRESS),
    );
    // UDP has no handshake: without an entry nothing is taken for a reply.
    b.expect(
        "udp without an entry",
        Hook::ToPod,
        &V4::new(peer, CLIENT4, UDP).packet(&udp(53, 43003)),
        DROP,
        c,
        Some(reason::DROP_INGRESS),
    );
    b.expect(
        "client asks udp 53",
        Hook::FromPod,
        &V4::new(CLIENT4, peer, UDP).packet(&udp(43003, 53)),
        PASS,
        c,
        Some(reason::ALLOW_POLICY),
    );
    b.expect(
        "udp answer",
        Hook::ToPod,
        &V4::new(peer, CLIENT4, UDP).packet(&udp(53, 43003)),
        PASS,
        c,
        Some(reason::ALLOW_TRACKED),
    );
}

// ---- stateful datapath (issue 8) -------------------------------------------------------

const PSH: u8 = 0x08;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;
const EXTERNAL: [u8; 4] = [192, 0, 2, 1];

/// A pod isolated for egress only (the "deny external egress" tutorial) must not send
/// anything that looks like a reply to anywhere: no connection, no pass.
#[test]
fn root_no_inferred_replies_from_an_egress_isolated_pod() {
    let mut b = setup();
    let c = b.client;
    for (what, flags) in [
        ("PSH|ACK with data", PSH | ACK),
        ("no flags", 0),
        ("SYN|ACK", SYN | ACK),
        ("ACK", ACK),
        ("FIN|ACK", FIN | ACK),
        ("RST", RST),
    ] {
        let mut seg = tcp(80, 20000, flags);
        seg.extend_from_slice(&[0x55; 32]);
        b.expect(
            what,
            Hook::FromPod,
            &V4::new(CLIENT4, EXTERNAL, TCP).packet(&seg),
            DROP,
            c,
            Some(reason::DROP_EGRESS),
        );
        b.expect(
            &format!("{what} at the uplink"),
            Hook::Uplink,
            &V4::new(CLIENT4, EXTERNAL, TCP).packet(&seg),
            DROP,
            c,
            Some(reason::DROP_EGRESS),
        );
    }
    // An ACK from anywhere to an ingress-isolated pod is not a reply either.
    b.expect(
        "ACK from a host the server never talked to",
        Hook::ToPod,
        &V4::new(EXTERNAL, SERVER4, TCP).packet(&tcp(443, 33000, ACK)),
        DROP,
        b.server,
        Some(reason::DROP_INGRESS),
    );
    // A UDP "reply" without an entry is judged as an opening too.
    b.expect(
        "udp from a port egress allows",
        Hook::FromPod,
        &V4::new(CLIENT4, EXTERNAL, UDP).packet(&udp(53, 40000)),
        DROP,
        c,
        Some(reason::DROP_EGRESS),
    );
}

/// An allowed connection: its later segments and replies pass as tracked; the peer can
/// not turn the tuple around with a SYN; FIN and RST end it.
#[test]
fn root_tracked_connection_lifecycle() {
    let mut b = setup();
    let c = b.client;
    let peer = [10, 2, 0, 5];
    let out = |flags| V4::new(CLIENT4, peer, TCP).packet(&tcp(45000, 80, flags));
    let back = |flags| V4::new(peer, CLIENT4, TCP).packet(&tcp(80, 45000, flags));
    b.expect(
        "SYN",
        Hook::FromPod,
        &out(SYN),
        PASS,
        c,
        Some(reason::ALLOW_POLICY),
    );
    b.expect(
        "SYN|ACK",
        Hook::ToPod,
        &back(SYN | ACK),
        PASS,
        c,
        Some(reason::ALLOW_TRACKED),
    );
    b.expect(
        "ACK",
        Hook::FromPod,
        &out(ACK),
        PASS,
        c,
        Some(reason::ALLOW_TRACKED),
    );
    b.expect(
        "data back",
        Hook::ToPod,
        &back(PSH | ACK),
        PASS,
        c,
        Some(reason::ALLOW_TRACKED),
    );
    b.expect(
        "a SYN from the peer on the same tuple opens nothing",
        Hook::ToPod,
        &back(SYN),
        DROP,
        c,
        Some(reason::DROP_INGRESS),
    );
    let entry = |b: &Bench| {
        b.programmer
            .maps()
            .conntrack_entries()
            .into_iter()
            .find(|(k, _)| k.proto == TCP && (k.a_port == 45000 || k.b_port == 45000))
            .map(|(_, v)| v)
    };
    let e = entry(&b).expect("tracked");
    assert_ne!(e.flags & netpol_common::ct_flag::REPLIED, 0, "replied");
    b.expect(
        "FIN",
        Hook::FromPod,
        &out(FIN | ACK),
        PASS,
        c,
        Some(reason::ALLOW_TRACKED),
    );
    b.expect(
        "RST back",
        Hook::ToPod,
        &back(RST),
        PASS,
        c,
        Some(reason::ALLOW_TRACKED),
    );
    let e = entry(&b).expect("still tracked while closing");
    assert_ne!(e.flags & netpol_common::ct_flag::RST, 0, "RST recorded");
    assert_eq!(
        netpol_common::ct_lifetime_ns(TCP, e.flags),
        netpol_common::ct_timeout::TCP_CLOSED * 1_000_000_000,
        "a reset connection lives only briefly"
    );
    // Only the egress side is isolated for an unisolated pod's flows: no entry at all.
    b.set_policies(&[]);
    b.expect(
        "unisolated flows need no entry",
        Hook::FromPod,
        &V4::new(CLIENT4, peer, TCP).packet(&tcp(45001, 80, SYN)),
        PASS,
        c,
        Some(reason::ALLOW_UNISOLATED),
    );
    assert!(
        !b.programmer
            .maps()
            .conntrack_entries()
            .iter()
            .any(|(k, _)| k.a_port == 45001 || k.b_port == 45001),
        "no entry for a flow of an unisolated pod"
    );
}

const CLIENT_OUT_DNS_ONLY: &str = r#"{"metadata": {"name": "client-out", "namespace": "default"},
    "spec": {"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress", "Ingress"],
      "egress": [{"to": [{"ipBlock": {"cidr": "10.2.0.0/16"}}], "ports": [{"port": 53, "protocol": "UDP"}]}]}}"#;

const CLIENT_OUT_WIDER: &str = r#"{"metadata": {"name": "client-out", "namespace": "default"},
    "spec": {"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress", "Ingress"],
      "egress": [{"to": [{"ipBlock": {"cidr": "10.2.0.0/16"}}], "ports": [{"port": 53, "protocol": "UDP"}]},
                 {"to": [{"ipBlock": {"cidr": "10.7.0.0/16"}}]}]}}"#;

const CLIENT_OUT_NOTHING: &str = r#"{"metadata": {"name": "client-out", "namespace": "default"},
    "spec": {"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress", "Ingress"]}}"#;

/// A policy change re-decides existing connections at their next packet: still allowed
/// ones go on, revoked ones stop in both directions, and never come back as replies.
#[test]
fn root_policy_changes_redecide_existing_connections() {
    let mut b = setup();
    let c = b.client;
    let peer = [10, 2, 0, 5];
    let q = V4::new(CLIENT4, peer, UDP).packet(&udp(46000, 53));
    let a = V4::new(peer, CLIENT4, UDP).packet(&udp(53, 46000));
    b.set_policies(&[CLIENT_OUT_DNS_ONLY]);
    b.expect(
        "query",
        Hook::FromPod,
        &q,
        PASS,
        c,
        Some(reason::ALLOW_POLICY),
    );
    b.expect(
        "answer",
        Hook::ToPod,
        &a,
        PASS,
        c,
        Some(reason::ALLOW_TRACKED),
    );
    // An unrelated change: a new rule set id, the same verdict for this flow.
    b.set_policies(&[CLIENT_OUT_WIDER]);
    b.expect(
        "answer after an unrelated change",
        Hook::ToPod,
        &a,
        PASS,
        c,
        Some(reason::ALLOW_POLICY),
    );
    b.expect(
        "query after an unrelated change",
        Hook::FromPod,
        &q,
        PASS,
        c,
        Some(reason::ALLOW_TRACKED),
    );
    // Revoked: the next packet in either direction stops, and stays stopped.
    b.set_policies(&[CLIENT_OUT_NOTHING]);
    b.expect(
        "answer after revocation",
        Hook::ToPod,
        &a,
        DROP,
        c,
        Some(reason::DROP_EGRESS),
    );
    b.expect(
        "query after revocation",
        Hook::FromPod,
        &q,
        DROP,
        c,
        Some(reason::DROP_EGRESS),
    );
    b.expect(
        "answer again",
        Hook::ToPod,
        &a,
        DROP,
        c,
        Some(reason::DROP_INGRESS),
    );
    // Restored under yet another (never reused) rule-set id: a new query is allowed again.
    b.set_policies(&[CLIENT_OUT_DNS_ONLY]);
    b.expect(
        "query once restored",
        Hook::FromPod,
        &q,
        PASS,
        c,
        Some(reason::ALLOW_POLICY),
    );
}

/// Replies from a ClusterIP pass for as long as the connection lives, whatever happens to
/// unrelated rules; ports the Service does not define are judged like any address.
#[test]
fn root_service_replies_and_undefined_service_ports() {
    let mut b = setup();
    let c = b.client;
    let q = V4::new(CLIENT4, DNS_VIP, UDP).packet(&udp(47000, 53));
    let a = V4::new(DNS_VIP, CLIENT4, UDP).packet(&udp(53, 47000));
    b.expect(
        "query to the Service",
        Hook::FromPod,
        &q,
        PASS,
        c,
        Some(reason::PASS_SERVICE),
    );
    b.expect(
        "answer from the Service",
        Hook::ToPod,
        &a,
        PASS,
        c,
        Some(reason::ALLOW_TRACKED),
    );
    let syn = V4::new(CLIENT4, DNS_VIP, TCP).packet(&tcp(47001, 53, SYN));
    let data = V4::new(DNS_VIP, CLIENT4, TCP).packet(&tcp(53, 47001, PSH | ACK));
    b.expect(
        "tcp to the Service",
        Hook::FromPod,
        &syn,
        PASS,
        c,
        Some(reason::PASS_SERVICE),
    );
    b.set_policies(&[CLIENT_OUT_WIDER]);
    b.expect(
        "udp answer after an unrelated egress change",
        Hook::ToPod,
        &a,
        PASS,
        c,
        Some(reason::ALLOW_TRACKED),
    );
    b.expect(
        "tcp data after an unrelated egress change",
        Hook::ToPod,
        &data,
        PASS,
        c,
        Some(reason::ALLOW_TRACKED),
    );
    b.expect(
        "a port the Service does not define is never translated: judged",
        Hook::FromPod,
        &V4::new(CLIENT4, DNS_VIP, TCP).packet(&tcp(47002, 8080, SYN)),
        DROP,
        c,
        Some(reason::DROP_EGRESS),
    );
    b.expect(
        "nothing from the Service address that was not asked for",
        Hook::ToPod,
        &V4::new(DNS_VIP, CLIENT4, UDP).packet(&udp(53, 47003)),
        DROP,
        c,
        Some(reason::DROP_INGRESS),
    );
}

/// Path MTU discovery: ICMP errors that quote a tracked connection of the pod pass;
/// others do not.
#[test]
fn root_icmp_errors_belong_to_their_connection() {
    let mut b = setup();
    let c = b.client;
    let peer = [10, 2, 0, 5];
    let router = [10, 1, 9, 9];
    let syn = V4::new(CLIENT4, peer, TCP).packet(&tcp(48000, 80, SYN));
    b.expect(
        "open",
        Hook::FromPod,
        &syn,
        PASS,
        c,
        Some(reason::ALLOW_POLICY),
    );
    let big = V4::new(CLIENT4, peer, TCP).packet(&tcp(48000, 80, PSH | ACK));
    let frag_needed = V4::new(router, CLIENT4, ICMP).packet(&icmp4_error(3, 4, &big[14..]));
    b.expect(
        "fragmentation needed from a router",
        Hook::ToPod,
        &frag_needed,
        PASS,
        c,
        Some(reason::ALLOW_RELATED),
    );
    let other = V4::new(CLIENT4, peer, TCP).packet(&tcp(48001, 80, PSH | ACK));
    let unrelated = V4::new(router, CLIENT4, ICMP).packet(&icmp4_error(3, 4, &other[14..]));
    b.expect(
        "an error about no connection",
        Hook::ToPod,
        &unrelated,
        DROP,
        c,
        Some(reason::DROP_INGRESS),
    );
    // An error the pod sends about a packet it did not receive (another connection's
    // tuple) carries nothing out.
    let foreign = V4::new(EXTERNAL, peer, TCP).packet(&tcp(80, 48000, ACK));
    b.expect(
        "a pod's error quoting someone else's packet",
        Hook::FromPod,
        &V4::new(CLIENT4, EXTERNAL, ICMP).packet(&icmp4_error(3, 3, &foreign[14..])),
        DROP,
        c,
        Some(reason::DROP_EGRESS),
    );

    // IPv6: packet too big.
    let me = client6();
    let peer6: Ipv6Addr = "fd00:2::5".parse().expect("constant");
    let router6: Ipv6Addr = "fd00:9::1".parse().expect("constant");
    let syn6 = v6(me, peer6, TCP, &[], 0, &tcp(48002, 80, SYN));
    b.expect(
        "open v6",
        Hook::FromPod,
        &syn6,
        PASS,
        c,
        Some(reason::ALLOW_POLICY),
    );
    let big6 = v6(me, peer6, TCP, &[], 0, &tcp(48002, 80, PSH | ACK));
    let ptb = v6(router6, me, ICMPV6, &[], 0, &icmp6_error(2, &big6[14..]));
    b.expect(
        "packet too big",
        Hook::ToPod,
        &ptb,
        PASS,
        c,
        Some(reason::ALLOW_RELATED),
    );
}

/// The pod's own node reaches it and is reached by it whatever the policy (kubelet
/// probes); other addresses are judged.
#[test]
fn root_own_node_traffic_passes() {
    let mut b = setup();
    let s = b.server;
    b.expect(
        "kubelet probe to an ingress-isolated pod",
        Hook::ToPod,
        &V4::new(NODE4, SERVER4, TCP).packet(&tcp(50000, 8080, SYN)),
        PASS,
        s,
        Some(reason::ALLOW_NODE),
    );
    // An isolated pod's node connections are tracked: the answer rides the probe's.
    b.expect(
        "its answer",
        Hook::FromPod,
        &V4::new(SERVER4, NODE4, TCP).packet(&tcp(8080, 50000, SYN | ACK)),
        PASS,
        s,
        Some(reason::ALLOW_TRACKED),
    );
    let c = b.client;
    b.expect(
        "an egress-isolated pod reaches its node",
        Hook::FromPod,
        &V4::new(CLIENT4, NODE4, TCP).packet(&tcp(50001, 10250, SYN)),
        PASS,
        c,
        Some(reason::ALLOW_NODE),
    );
    b.expect(
        "and its node's IPv6 address",
        Hook::FromPod,
        &v6(client6(), node6(), TCP, &[], 0, &tcp(50002, 10250, SYN)),
        PASS,
        c,
        Some(reason::ALLOW_NODE),
    );
    b.expect(
        "another node is an address like any other",
        Hook::FromPod,
        &V4::new(CLIENT4, [10, 1, 0, 2], TCP).packet(&tcp(50003, 10250, SYN)),
        DROP,
        c,
        Some(reason::DROP_EGRESS),
    );
}

/// Neighbour discovery from and to the pod's own addresses passes whatever the policy;
/// routers' messages from pods never do.
#[test]
fn root_neighbour_discovery() {
    let mut b = setup();
    let c = b.client;
    let me = client6();
    let all_nodes: Ipv6Addr = "ff02::1".parse().expect("constant");
    let solicited: Ipv6Addr = "ff02::1:ff00:1".parse().expect("constant");
    let mut na = vec![136, 0, 0, 0, 0x60, 0, 0, 0];
    na.extend_from_slice(&me.octets());
    b.expect(
        "neighbour advertisement from the pod's global address",
        Hook::FromPod,
        &hop_limit(v6(me, all_nodes, ICMPV6, &[], 0, &na), 255),
        PASS,
        c,
        Some(reason::ALLOW_NEIGHBOUR),
    );
    let mut ns = vec![135, 0, 0, 0, 0, 0, 0, 0];
    ns.extend_from_slice(&node6().octets());
    b.expect(
        "neighbour solicitation from the pod's global address",
        Hook::FromPod,
        &hop_limit(v6(me, solicited, ICMPV6, &[], 0, &ns), 255),
        PASS,
        c,
        Some(reason::ALLOW_NEIGHBOUR),
    );
    let mut probe = vec![135, 0, 0, 0, 0, 0, 0, 0];
    probe.extend_from_slice(&me.octets());
    b.expect(
        "the node's solicitation to the pod",
        Hook::ToPod,
        &hop_limit(v6(node6(), me, ICMPV6, &[], 0, &probe), 255),
        PASS,
        c,
        Some(reason::ALLOW_NEIGHBOUR),
    );
    let mut foreign_na = vec![136, 0, 0, 0, 0x60, 0, 0, 0];
    foreign_na.extend_from_slice(&node6().octets());
    b.expect(
        "an advertisement for someone else's address",
        Hook::FromPod,
        &hop_limit(v6(me, all_nodes, ICMPV6, &[], 0, &foreign_na), 255),
        DROP,
        c,
        Some(reason::DROP_SPOOFED),
    );
    b.expect(
        "a routed (hop limit 64) solicitation is not neighbour discovery",
        Hook::FromPod,
        &v6(me, solicited, ICMPV6, &[], 0, &ns),
        DROP,
        c,
        Some(reason::DROP_EGRESS),
    );
    let ll: Ipv6Addr = "fe80::2".parse().expect("constant");
    b.expect(
        "router advertisement from a pod",
        Hook::FromPod,
        &hop_limit(
            v6(ll, all_nodes, ICMPV6, &[], 0, &[134, 0, 0, 0, 64, 0, 0, 0]),
            255,
        ),
        DROP,
        c,
        Some(reason::DROP_ROUTER),
    );
    b.expect(
        "redirect from a pod",
        Hook::FromPod,
        &hop_limit(v6(ll, me, ICMPV6, &[], 0, &[137, 0, 0, 0, 0, 0, 0, 0]), 255),
        DROP,
        c,
        Some(reason::DROP_ROUTER),
    );
    b.expect(
        "IPv4 redirect from a pod",
        Hook::FromPod,
        &V4::new(CLIENT4, [10, 2, 0, 5], ICMP).packet(&[5, 1, 0, 0, 10, 1, 0, 1]),
        DROP,
        c,
        Some(reason::DROP_ROUTER),
    );
}

/// Isolated pods send and receive IP and ARP only.
#[test]
fn root_frames_and_addresses() {
    let mut b = setup();
    let c = b.client;
    let inner = V4::new(CLIENT4, EXTERNAL, TCP).packet(&tcp(51000, 443, SYN));
    let mut tagged = inner[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
    tagged.extend_from_slice(&inner[12..]);
    b.expect(
        "802.1Q-tagged frame",
        Hook::FromPod,
        &tagged,
        DROP,
        c,
        Some(reason::DROP_FRAME),
    );
    let mut qinq = inner[..12].to_vec();
    qinq.extend_from_slice(&[0x88, 0xa8, 0x00, 0x05, 0x81, 0x00, 0x00, 0x06]);
    qinq.extend_from_slice(&inner[12..]);
    b.expect(
        "QinQ frame",
        Hook::FromPod,
        &qinq,
        DROP,
        c,
        Some(reason::DROP_FRAME),
    );
    b.expect(
        "LLDP to the pod",
        Hook::ToPod,
        &eth(0x88cc, &[0u8; 40]),
        DROP,
        c,
        Some(reason::DROP_FRAME),
    );
    let mapped: Ipv6Addr = "::ffff:10.2.0.5".parse().expect("constant");
    b.expect(
        "IPv6 to an IPv4-mapped address",
        Hook::FromPod,
        &v6(client6(), mapped, TCP, &[], 0, &tcp(51001, 80, SYN)),
        DROP,
        c,
        Some(reason::DROP_ADDRESS),
    );
    let compat: Ipv6Addr = "::10.2.0.5".parse().expect("constant");
    b.expect(
        "IPv6 from an IPv4-compatible address",
        Hook::ToPod,
        &v6(compat, client6(), TCP, &[], 0, &tcp(80, 51002, SYN)),
        DROP,
        c,
        Some(reason::DROP_ADDRESS),
    );
}

/// Rule-set ids are never handed out twice, also not after the agent restarts on the
/// same pinned maps.
#[test]
fn root_rule_set_ids_are_never_reused() {
    let mut b = setup();
    let ids = |b: &Bench| {
        b.programmer
            .maps()
            .existing()
            .expect("existing")
            .endpoints
            .iter()
            .map(|(_, e)| e.egress_set)
            .filter(|s| *s != 0)
            .collect::<std::collections::BTreeSet<u32>>()
    };
    use netpol_agent::program::MapOps;
    let mut seen = ids(&b);
    for p in [
        CLIENT_OUT_DNS_ONLY,
        CLIENT_OUT_WIDER,
        CLIENT_OUT_DNS_ONLY,
        CLIENT_OUT_NOTHING,
    ] {
        b.set_policies(&[p]);
        let now = ids(&b);
        assert!(now.is_disjoint(&seen), "{now:?} reuses one of {seen:?}");
        seen.extend(now);
    }
}

/// Fragmented datagrams through a Service: later fragments follow the first at every
/// hook (the pod's veth, and the receiver's veth after translation).
#[test]
fn root_fragments_through_a_service() {
    let mut b = setup();
    let c = b.client;
    let mut first = V4::new(CLIENT4, DNS_VIP, UDP);
    first.more_fragments = true;
    first.id = 300;
    b.expect(
        "first fragment to the Service",
        Hook::FromPod,
        &first.packet(&udp(49000, 53)),
        PASS,
        c,
        Some(reason::PASS_SERVICE),
    );
    let mut later = V4::new(CLIENT4, DNS_VIP, UDP);
    later.frag_offset = 185;
    later.id = 300;
    b.expect(
        "later fragment to the Service",
        Hook::FromPod,
        &later.packet(&[0u8; 64]),
        PASS,
        c,
        Some(reason::PASS_SERVICE),
    );
    let mut first_back = V4::new(DNS_VIP, CLIENT4, UDP);
    first_back.more_fragments = true;
    first_back.id = 301;
    b.expect(
        "first fragment of the answer",
        Hook::ToPod,
        &first_back.packet(&udp(53, 49000)),
        PASS,
        c,
        Some(reason::ALLOW_TRACKED),
    );
    let mut later_back = V4::new(DNS_VIP, CLIENT4, UDP);
    later_back.frag_offset = 185;
    later_back.id = 301;
    b.expect(
        "later fragment of the answer",
        Hook::ToPod,
        &later_back.packet(&[0u8; 64]),
        PASS,
        c,
        Some(reason::ALLOW_TRACKED),
    );
}

/// The uplink sees a pod's fragments after its veth: a reply's later fragments follow
/// their first fragment there too (they have no ports of their own).
#[test]
fn root_fragments_of_a_reply_at_the_uplink() {
    let mut b = setup();
    let s = b.server;
    let client = [10, 9, 1, 1];
    b.expect(
        "a client opens to the server",
        Hook::ToPod,
        &V4::new(client, SERVER4, TCP).packet(&tcp(42000, 443, SYN)),
        PASS,
        s,
        Some(reason::ALLOW_POLICY),
    );
    let mut first = V4::new(SERVER4, client, TCP);
    first.more_fragments = true;
    first.id = 400;
    let mut later = V4::new(SERVER4, client, TCP);
    later.frag_offset = 185;
    later.id = 400;
    for hook in [Hook::FromPod, Hook::Uplink] {
        let (v, _) =
            b.dp.test_run_on(
                hook,
                &first.packet(&tcp(443, 42000, ACK)),
                1,
                b.ifindex_of(s),
            )
            .expect("test run");
        assert_eq!(v, PASS, "{hook:?}: first fragment of the reply");
        let (v, _) =
            b.dp.test_run_on(hook, &later.packet(&[0u8; 64]), 1, b.ifindex_of(s))
                .expect("test run");
        assert_eq!(v, PASS, "{hook:?}: later fragment of the reply");
    }
}
