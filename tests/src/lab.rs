//! The lab the datapath attack tests share (`tests/tests/root_attack*.rs`): crafted
//! frames, a small cluster (client, server, other pod; policies by name), and the BPF
//! programs loaded with their maps programmed as the agent would, run with
//! BPF_PROG_TEST_RUN. **Needs root.** `netns` moves the calling test thread into a
//! network namespace of its own with veth pairs, which goes away with the thread.
#![allow(dead_code)]

pub use std::collections::{BTreeMap, BTreeSet};
pub use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;

pub use netpol_agent::compile::compile;
pub use netpol_agent::datapath::{AttachMode, Datapath, EventKind, EventOptions, Hook, MapSizes};
use netpol_agent::program::Programmer;
use netpol_agent::program::kernel::KernelMaps;
pub use netpol_agent::state::{ClusterState, ObjectRef, PodInfo, Protocol, ServiceInfo};
pub use netpol_common::{reason, sizes};

pub const PASS: i32 = -1; // TC_ACT_UNSPEC
pub const DROP: i32 = 2; // TC_ACT_SHOT

pub const CLIENT4: [u8; 4] = [10, 1, 0, 2];
pub const SERVER4: [u8; 4] = [10, 1, 0, 3];
pub const OTHER4: [u8; 4] = [10, 1, 0, 4];
/// A remote peer (another node's pod, or outside the cluster).
pub const Y4: [u8; 4] = [10, 2, 0, 5];
pub const Y4B: [u8; 4] = [10, 3, 0, 5];
pub const SVC4: [u8; 4] = [10, 96, 0, 10];
pub const NODE4: [u8; 4] = [10, 1, 0, 1];
/// This node's address on the uplink.
pub const UPLINK4: [u8; 4] = [172, 18, 0, 3];

pub fn ip6(s: &str) -> Ipv6Addr {
    s.parse().expect("constant")
}
pub fn client6() -> Ipv6Addr {
    ip6("fd00:1::2")
}

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

// ---- packet building -------------------------------------------------------------

pub fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    p.extend_from_slice(&ethertype.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

pub fn tcp(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t
}

pub fn udp(sport: u16, dport: u16) -> Vec<u8> {
    let mut u = vec![0u8; 8];
    u[0..2].copy_from_slice(&sport.to_be_bytes());
    u[2..4].copy_from_slice(&dport.to_be_bytes());
    u[4..6].copy_from_slice(&8u16.to_be_bytes());
    u
}

pub fn echo(typ: u8, id: u16) -> Vec<u8> {
    let mut e = vec![typ, 0, 0, 0, 0, 0, 0, 1];
    e[4..6].copy_from_slice(&id.to_be_bytes());
    e
}

/// An IPv4 packet in an Ethernet frame.
pub fn v4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    v4_frag(src, dst, proto, 0, false, 0x1234, l4)
}

pub fn v4_frag(
    src: [u8; 4],
    dst: [u8; 4],
    proto: u8,
    offset: u16,
    more: bool,
    id: u16,
    l4: &[u8],
) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    h[4..6].copy_from_slice(&id.to_be_bytes());
    let frag = offset | if more { 0x2000 } else { 0 };
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&dst);
    h.extend_from_slice(l4);
    eth(0x0800, &h)
}

/// An ICMPv4 error quoting `quoted` (an Ethernet frame as built above: its IP header
/// and the first 8 bytes of its transport header are quoted), then `extra` bytes.
pub fn icmp4_error(typ: u8, code: u8, quoted: &[u8], extra: usize) -> Vec<u8> {
    let mut e = vec![typ, code, 0, 0, 0, 0, 0, 0];
    e.extend_from_slice(&quoted[14..14 + 28]);
    e.extend(std::iter::repeat_n(0x41, extra));
    e
}

/// An IPv6 packet; `payload` starts with whatever `next` names (extension headers included).
pub fn v6(src: Ipv6Addr, dst: Ipv6Addr, next: u8, hop_limit: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
    h[6] = next;
    h[7] = hop_limit;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
    h.extend_from_slice(payload);
    eth(0x86DD, &h)
}

/// IPv6 fragment header.
pub fn frag6(next: u8, offset: u16, more: bool, id: u32) -> Vec<u8> {
    let mut f = vec![next, 0, 0, 0];
    let field = (offset << 3) | u16::from(more);
    f[2..4].copy_from_slice(&field.to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes());
    f
}

/// ICMPv6 neighbour solicitation (135) / advertisement (136) for `target`.
pub fn nd(typ: u8, target: Ipv6Addr, flags: u8) -> Vec<u8> {
    let mut m = vec![typ, 0, 0, 0, flags, 0, 0, 0];
    m.extend_from_slice(&target.octets());
    m
}

// ---- cluster state -------------------------------------------------------------------

pub fn pod(ips: &[IpAddr], app: &str) -> PodInfo {
    PodInfo {
        labels: [("app".to_string(), app.to_string())].into(),
        node: Some("n1".into()),
        host_network: false,
        terminated: false,
        ips: ips.to_vec(),
        ports: Vec::new(),
    }
}

/// client (v4 + v6), server, other: all local, no policies. A Service 10.96.0.10 with
/// TCP 80 and UDP 53, and the `kubernetes` Service 10.96.0.1:443.
pub fn base() -> ClusterState {
    let mut s = ClusterState::default();
    s.pods.insert(
        ObjectRef::new("default", "client"),
        pod(
            &[IpAddr::V4(Ipv4Addr::from(CLIENT4)), IpAddr::V6(client6())],
            "client",
        ),
    );
    s.pods.insert(
        ObjectRef::new("default", "server"),
        pod(
            &[
                IpAddr::V4(Ipv4Addr::from(SERVER4)),
                IpAddr::V6(ip6("fd00:1::3")),
            ],
            "server",
        ),
    );
    s.pods.insert(
        ObjectRef::new("default", "other"),
        pod(&[IpAddr::V4(Ipv4Addr::from(OTHER4))], "other"),
    );
    s.services.insert(
        ObjectRef::new("default", "svc"),
        ServiceInfo {
            ips: vec![IpAddr::V4(Ipv4Addr::from(SVC4))],
            ports: vec![(Protocol::Tcp, 80), (Protocol::Udp, 53)],
        },
    );
    s.services.insert(
        ObjectRef::new("default", "kubernetes"),
        ServiceInfo {
            ips: vec![IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1))],
            ports: vec![(Protocol::Tcp, 443)],
        },
    );
    s
}

/// `set_policy` with netpol's mode annotation (`netpol.io/mode`) set to `mode`, or none,
/// through the same trimming the sources apply.
pub fn set_policy_mode(st: &mut ClusterState, name: &str, spec: &str, mode: Option<&str>) {
    let meta = match mode {
        Some(m) => format!(
            r#"{{"name": "{name}", "namespace": "default", "annotations": {{"netpol.io/mode": {}}}}}"#,
            serde_json::to_string(m).unwrap_or_default()
        ),
        None => format!(r#"{{"name": "{name}", "namespace": "default"}}"#),
    };
    let json = format!(r#"{{"metadata": {meta}, "spec": {spec}}}"#);
    let p: k8s_openapi::api::networking::v1::NetworkPolicy =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("policy {name}: {e}"));
    st.upsert_policy(&p).expect("policy");
}

/// Adds (or replaces) policy `name` in `default` with the given spec (JSON).
pub fn set_policy(s: &mut ClusterState, name: &str, spec: &str) {
    let json =
        format!(r#"{{"metadata": {{"name": "{name}", "namespace": "default"}}, "spec": {spec}}}"#);
    let p: k8s_openapi::api::networking::v1::NetworkPolicy =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("policy {name}: {e}: {json}"));
    s.policies.insert(ObjectRef::new("default", name), p);
}

/// The client may send only to 10.2.0.0/16 and fd00:2::/64 on TCP 80 / UDP 53.
pub const CLIENT_EGRESS_Y: &str = r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
  "egress": [{"to": [{"ipBlock": {"cidr": "10.2.0.0/16"}}, {"ipBlock": {"cidr": "fd00:2::/64"}}],
              "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}, {"port": 8080}]}]}"#;
/// The same, moved to 10.3.0.0/16: everything towards 10.2.0.0/16 is revoked.
pub const CLIENT_EGRESS_Y_REVOKED: &str = r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
  "egress": [{"to": [{"ipBlock": {"cidr": "10.3.0.0/16"}}, {"ipBlock": {"cidr": "fd00:3::/64"}}],
              "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}, {"port": 8080}]}]}"#;
pub const CLIENT_INGRESS_NONE: &str =
    r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Ingress"]}"#;
pub const CLIENT_EGRESS_NONE: &str =
    r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"]}"#;

// ---- the lab -------------------------------------------------------------------------

/// A private network namespace for this test thread with veth interfaces named `names`
/// (this kernel has no dummy driver);
/// returns their ifindexes.
pub fn netns(names: &[&str]) -> Vec<u32> {
    // SAFETY: unshare affects only the calling thread; CLONE_NEWNET needs no other care.
    let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        r,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    names
        .iter()
        .map(|n| {
            let st = Command::new("ip")
                .args([
                    "link",
                    "add",
                    n,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &format!("{n}p"),
                ])
                .status()
                .expect("ip");
            assert!(st.success(), "ip link add {n}");
            netpol_agent::datapath::ifindex(n).expect("ifindex")
        })
        .collect()
}

/// Small maps (sizes given by flag name, so new map kinds take their defaults).
pub fn small_maps() -> MapSizes {
    #[derive(clap::Parser)]
    struct Args {
        #[command(flatten)]
        sizes: MapSizes,
    }
    <Args as clap::Parser>::parse_from([
        "lab",
        "--conntrack-entries",
        "1024",
        "--conntrack-new-entries",
        "1024",
        "--peer-entries",
        "1024",
        "--cidr-entries",
        "1024",
        "--service-entries",
        "1024",
        "--portset-entries",
        "1024",
    ])
    .sizes
}

pub struct Lab {
    pub dp: Datapath,
    pub pr: Programmer<KernelMaps>,
    pub state: ClusterState,
    pub veths: BTreeMap<ObjectRef, u32>,
    /// What `real_run` set up, kept for the next real run.
    pub real: crate::real_run::Rig,
}

impl Lab {
    /// `veths`: (pod name in `default`, ifindex of its host-side veth).
    pub fn new(state: ClusterState, veths: &[(&str, u32)], node: &[IpAddr]) -> Lab {
        Self::with_mode(state, veths, node, AttachMode::Auto)
    }

    /// `new`, attaching (when a test attaches) in `mode`.
    pub fn with_mode(
        state: ClusterState,
        veths: &[(&str, u32)],
        node: &[IpAddr],
        mode: AttachMode,
    ) -> Lab {
        Self::with_events(state, veths, node, mode, EventOptions::default())
    }

    /// `with_mode`, the programs reporting the verdict events `events` asks for.
    pub fn with_events(
        state: ClusterState,
        veths: &[(&str, u32)],
        node: &[IpAddr],
        mode: AttachMode,
        events: EventOptions,
    ) -> Lab {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "root_attack tests load BPF: run as root"
        );
        let mut dp =
            Datapath::load_with_events(mode, &small_maps(), None, events).expect("load BPF");
        let maps = dp.take_maps().expect("maps");
        let pr = Programmer::new(maps, sizes::COUNTERS);
        let node: BTreeSet<IpAddr> = node.iter().copied().collect();
        let mut pr = pr;
        pr.set_node_addrs(&node).expect("node addrs");
        Lab::assemble(dp, pr, state, veths)
    }

    /// A lab of programs loaded and maps set up by the caller; the cluster programmed.
    pub fn assemble(
        dp: Datapath,
        pr: Programmer<KernelMaps>,
        state: ClusterState,
        veths: &[(&str, u32)],
    ) -> Lab {
        let mut lab = Lab {
            dp,
            pr,
            state,
            veths: veths
                .iter()
                .map(|(n, i)| (ObjectRef::new("default", *n), *i))
                .collect(),
            real: Default::default(),
        };
        lab.apply();
        lab
    }

    /// Compiles the current state and programs the maps (a policy change).
    pub fn apply(&mut self) {
        let plan = compile(&self.state, "n1");
        assert!(plan.errors.is_empty(), "{:?}", plan.errors);
        self.pr.apply(&plan, &self.veths).expect("program maps");
    }

    pub fn id(&self, pod: &str) -> u32 {
        self.pr.endpoint_ids()[&ObjectRef::new("default", pod)]
    }

    /// The verdict events the programs reported so far (the ring buffer, drained; it can
    /// be taken once per lab).
    pub fn drain_events(&mut self) -> Vec<netpol_common::VerdictEvent> {
        let (mut ring, _) = self.dp.take_events().expect("events maps");
        let mut out = Vec::new();
        while let Some(record) = ring.next() {
            out.push(netpol_agent::events::reader::decode(&record).expect("a whole event"));
        }
        out
    }

    /// Packets counted per rule, by name (rules with no packets left out).
    pub fn rule_packets(&self) -> BTreeMap<String, u64> {
        self.pr
            .rule_packets()
            .expect("rule counters")
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(rule, n)| (rule.to_string(), n))
            .collect()
    }

    /// (reason, rule) of each verdict event, named as the agent's history names them.
    pub fn named_events(
        &self,
        events: &[netpol_common::VerdictEvent],
    ) -> Vec<(String, Option<String>)> {
        let mut h = netpol_agent::events::History::new("n1");
        h.set_rules(
            (self.pr.rule_names().iter())
                .map(|(id, r)| (*id, r.to_string()))
                .collect(),
        );
        for e in events {
            h.push(e, 0);
        }
        (h.page(0, usize::MAX).events.into_iter())
            .map(|e| (e.reason, e.rule))
            .collect()
    }

    pub fn counters(&self, id: u32) -> [u64; reason::COUNT] {
        self.pr.maps().counters(id).expect("counters").packets
    }

    /// Runs `packet` at `hook` as if on interface `ifindex`; asserts the verdict, and that
    /// exactly counter `why` of `pod` moved by one (`None`: none of `pod`'s moved).
    #[track_caller]
    #[allow(clippy::too_many_arguments)]
    pub fn expect(
        &mut self,
        what: &str,
        hook: Hook,
        ifindex: u32,
        packet: &[u8],
        verdict: i32,
        pod: &str,
        why: Option<usize>,
    ) {
        let id = self.id(pod);
        let before = self.counters(id);
        let (got, _) = self
            .dp
            .test_run_on(hook, packet, 1, ifindex)
            .expect("test run");
        let after = self.counters(id);
        let moved: Vec<&str> = (0..reason::COUNT)
            .filter(|i| after[*i] != before[*i])
            .map(|i| reason::NAMES[i])
            .collect();
        assert_eq!(
            got,
            verdict,
            "{what}: verdict {} (counters moved on {pod}: {moved:?})",
            if got == PASS { "PASS" } else { "DROP" }
        );
        match why {
            Some(w) => assert_eq!(
                moved,
                vec![reason::NAMES[w]],
                "{what}: expected {} to move on {pod}",
                reason::NAMES[w]
            ),
            None => assert!(
                moved.is_empty(),
                "{what}: nothing should move, moved {moved:?}"
            ),
        }
    }

    /// Only the verdict.
    #[track_caller]
    pub fn verdict(&mut self, what: &str, hook: Hook, ifindex: u32, packet: &[u8], verdict: i32) {
        let (got, _) = self
            .dp
            .test_run_on(hook, packet, 1, ifindex)
            .expect("test run");
        assert_eq!(
            got,
            verdict,
            "{what}: got {}",
            if got == PASS { "PASS" } else { "DROP" }
        );
    }
}

impl Lab {
    /// Opens client:`sport` -> `to`:80 (TCP, v4) on the client's veth `c`: the SYN passes
    /// by policy, the SYN-ACK as tracked.
    #[track_caller]
    pub fn open_tcp_80(&mut self, c: u32, to: [u8; 4], sport: u16) {
        self.expect(
            "SYN",
            Hook::FromPod,
            c,
            &v4(CLIENT4, to, TCP, &tcp(sport, 80, SYN)),
            PASS,
            "client",
            Some(reason::ALLOW_POLICY),
        );
        self.expect(
            "SYN-ACK",
            Hook::ToPod,
            c,
            &v4(to, CLIENT4, TCP, &tcp(80, sport, SYN | ACK)),
            PASS,
            "client",
            Some(reason::ALLOW_TRACKED),
        );
    }
}

pub fn v4a(o: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(o))
}

/// The client on loopback (ifindex 1), the node's addresses programmed.
pub fn lab_client_on_lo(state: ClusterState) -> Lab {
    Lab::new(
        state,
        &[("client", 1)],
        &[v4a(NODE4), v4a(UPLINK4), IpAddr::V6(ip6("fd00:1::1"))],
    )
}

// ---- more of the lab -------------------------------------------------------------------

pub use netpol_agent::datapath::kernel_conntrack::{self, KernelFlow, Tuple4};
pub use netpol_agent::program::seed::seed_entries;

/// Runs a command in the test thread's namespace; `stdin` is piped to it.
pub fn sh(args: &[&str], stdin: Option<&str>) {
    use std::io::Write;
    let mut c = Command::new(args[0]);
    c.args(&args[1..]).stdin(std::process::Stdio::piped());
    let mut child = c.spawn().expect("spawn");
    if let Some(text) = stdin
        && let Some(mut i) = child.stdin.take()
    {
        i.write_all(text.as_bytes()).expect("stdin");
    }
    assert!(child.wait().expect("wait").success(), "{args:?}");
}

/// nf_conntrack on in the test thread's namespace (any rule that looks at conntrack state
/// turns it on), loopback up, the veths `names` (made by `netns`) up on both ends.
pub fn conntrack_on(names: &[&str]) {
    sh(&["ip", "link", "set", "lo", "up"], None);
    for n in names {
        sh(&["ip", "link", "set", n, "up"], None);
        sh(&["ip", "link", "set", &format!("{n}p"), "up"], None);
    }
    sh(
        &["nft", "-f", "-"],
        Some(
            "table inet attack2 { chain in { type filter hook input priority 0; ct state established accept; }; }",
        ),
    );
}

pub use netpol_agent::datapath::monotonic_ns;

pub fn flow(
    proto: u8,
    orig: (IpAddr, u16, IpAddr, u16),
    reply: (IpAddr, u16, IpAddr, u16),
) -> KernelFlow {
    let t = |(src, sport, dst, dport): (IpAddr, u16, IpAddr, u16)| Tuple4 {
        src,
        dst,
        sport,
        dport,
    };
    KernelFlow {
        proto,
        orig: t(orig),
        reply: t(reply),
        replied: true,
        closed: false,
    }
}

impl Lab {
    /// What the agent's reconcile does: seed conntrack from the kernel's table `flows` for
    /// the pods this change isolates for the first time, then program the maps. Returns
    /// how many entries were seeded.
    pub fn apply_as_agent(&mut self, flows: &[KernelFlow]) -> usize {
        let plan = compile(&self.state, "n1");
        assert!(plan.errors.is_empty(), "{:?}", plan.errors);
        let fresh = self.pr.newly_isolated(&plan);
        let mut added = 0;
        if !fresh.is_empty() {
            let local: BTreeSet<IpAddr> = plan
                .endpoints
                .iter()
                .flat_map(|e| e.ips.iter().copied())
                .collect();
            let entries = seed_entries(flows, &fresh, &local, monotonic_ns());
            added = self.pr.maps_mut().seed_conntrack(&entries).expect("seed");
        }
        self.pr.apply(&plan, &self.veths).expect("program maps");
        added
    }

    /// The verdict only, returned.
    pub fn run(&mut self, hook: Hook, ifindex: u32, packet: &[u8]) -> i32 {
        self.dp
            .test_run_on(hook, packet, 1, ifindex)
            .expect("test run")
            .0
    }
}

pub fn show(v: i32) -> &'static str {
    if v == PASS { "PASS" } else { "DROP" }
}

pub const SERVER_EGRESS_NONE: &str =
    r#"{"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Egress"]}"#;
pub const SERVER_INGRESS_NONE: &str =
    r#"{"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"]}"#;
pub const CLIENT_EGRESS_SERVER: &str = r#"{"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
  "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "server"}}}]}]}"#;

/// Another node (say, the control plane) that a Service's backend lives on.
pub const REMOTE_NODE4: [u8; 4] = [172, 18, 0, 2];

/// An ICMPv6 error quoting an IPv6 frame (header and 8 bytes of transport header).
pub fn icmp6_error(typ: u8, code: u8, quoted: &[u8], extra: usize) -> Vec<u8> {
    let mut e = vec![typ, code, 0, 0, 0, 0, 0, 0];
    e.extend_from_slice(&quoted[14..14 + 48]);
    e.extend(std::iter::repeat_n(0x41, extra));
    e
}

pub fn del_policy(s: &mut ClusterState, name: &str) {
    s.policies.remove(&ObjectRef::new("default", name));
}

impl Lab {
    /// The verdict of `packet` at `hook` on `ifindex`, as if it entered the node through
    /// `came_in`.
    /// On a kernel whose test run refuses `ingress_ifindex` (5.10), or with
    /// `NETPOL_TEST_REAL_PACKETS=1`, the packet really comes in and goes out
    /// (`real_run`).
    pub fn run_from(&mut self, hook: Hook, ifindex: u32, came_in: u32, packet: &[u8]) -> i32 {
        if came_in != 0 && std::env::var_os("NETPOL_TEST_REAL_PACKETS").is_some_and(|v| v == "1") {
            return self.run_real(hook, ifindex, came_in, packet);
        }
        match self.dp.test_run_from(hook, packet, 1, ifindex, came_in) {
            Ok((verdict, _)) => verdict,
            Err(e) if came_in != 0 && refuses_ingress_ifindex(&e) => {
                self.run_real(hook, ifindex, came_in, packet)
            }
            Err(e) => panic!("test run: {e:#}"),
        }
    }
}

/// BPF_PROG_TEST_RUN said EINVAL to a context that sets `ingress_ifindex`.
fn refuses_ingress_ifindex(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EINVAL))
    })
}
