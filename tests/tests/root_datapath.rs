//! Datapath tests on crafted packets with BPF_PROG_TEST_RUN. **Needs root** (loads BPF).
//! The kernel runs the programs on the loopback device (ifindex 1), which the tests
//! register as the veth of the pod `default/client`; no packet is sent anywhere.
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
        }
    }
    fn packet(&self, l4: &[u8]) -> Vec<u8> {
        let hlen = 20 + self.options;
        let mut h = vec![0u8; hlen];
        h[0] = 0x40 | (hlen / 4) as u8;
        h[2..4].copy_from_slice(&((hlen + l4.len()) as u16).to_be_bytes());
        let frag = self.frag_offset | if self.more_fragments { 0x2000 } else { 0 };
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
            f[2..4].copy_from_slice(&(frag_offset << 3).to_be_bytes());
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

// ---- setup ---------------------------------------------------------------------------

struct Bench {
    dp: Datapath,
    programmer: Programmer<KernelMaps>,
    client: u32,
    server: u32,
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
        let p: k8s_openapi::api::networking::v1::NetworkPolicy =
            serde_json::from_str(p).expect("test policy");
        let key = ObjectRef::new("default", p.metadata.name.clone().unwrap_or_default());
        s.policies.insert(key, p);
    }
    let plan = compile(&s, "n1");
    assert!(plan.errors.is_empty(), "{:?}", plan.errors);
    let mut dp = Datapath::load(
        AttachMode::Auto,
        &MapSizes {
            conntrack_entries: 1024,
            peer_entries: 1024,
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
    let ifindexes = BTreeMap::from([(client.clone(), 1u32)]);
    programmer.apply(&plan, &ifindexes).expect("program maps");
    let ids = programmer.endpoint_ids();
    let client_id = ids[&client];
    let server_id = ids[&ObjectRef::new("default", "server")];
    Bench {
        dp,
        programmer,
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

    /// Runs `packet` at `hook`; asserts the verdict and that exactly `why` moved by one on
    /// endpoint `id` (or nothing moved, for `None`).
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
        let before = self.counters(id);
        let (got, _) = self.dp.test_run(hook, packet, 1).expect("test run");
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
        "later fragment to a ports-only peer",
        Hook::FromPod,
        &later.packet(&[0u8; 16]),
        DROP,
        c,
        Some(reason::DROP_EGRESS),
    );
    let mut later3 = V4::new(CLIENT4, [10, 3, 0, 5], UDP);
    later3.frag_offset = 185;
    b.expect(
        "later fragment to an all-ports peer",
        Hook::FromPod,
        &later3.packet(&[0u8; 16]),
        PASS,
        c,
        Some(reason::ALLOW_POLICY),
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
        "ARP is not ours",
        Hook::FromPod,
        &eth(0x0806, &[0u8; 28]),
        PASS,
        c,
        None,
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
        "later fragment, ports-only peer",
        Hook::FromPod,
        &v6(me, svc2, UDP, &[44], 100, &[0u8; 16]),
        DROP,
        c,
        Some(reason::DROP_EGRESS),
    );
    b.expect(
        "later fragment, all-ports peer",
        Hook::FromPod,
        &v6(me, all3, UDP, &[44], 100, &[0u8; 16]),
        PASS,
        c,
        Some(reason::ALLOW_POLICY),
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
        &v6(
            link_local,
            all_routers,
            ICMPV6,
            &[],
            0,
            &[133, 0, 0, 0, 0, 0, 0, 0],
        ),
        PASS,
        c,
        None,
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
