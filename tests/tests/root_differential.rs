//! Differential test of the BPF datapath. **Needs root** (loads BPF).
//!
//! Random NetworkPolicies and random packet sequences go through the real BPF programs
//! (BPF_PROG_TEST_RUN, on the veths of two local pods) and through `Model` below, a plain
//! reading of the stateful rules written from the spec alone (not from netpol-ebpf); every
//! verdict must agree. On a disagreement the failing sequence is shrunk and printed with a
//! replay recipe.
//!
//! Replay: `NETPOL_DIFF_SEED=<seed> NETPOL_DIFF_SEQUENCES=<n>` (sequence `i` of a run uses
//! seed `seed + i * GOLDEN`, so a single failing sequence replays with its own seed and
//! `NETPOL_DIFF_SEQUENCES=1`). `NETPOL_DIFF_PACKETS` sets the steps per sequence.
//!
//! Setup, as in `root_datapath.rs`: the test thread moves into a network namespace of its
//! own, where the loopback device (ifindex 1) stands in for the client's veth and a veth
//! device for the server's. No packet is sent anywhere.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use netpol_agent::compile::compile;
use netpol_agent::datapath::{AttachMode, Datapath, Hook, MapSizes};
use netpol_agent::program::Programmer;
use netpol_agent::program::kernel::KernelMaps;
use netpol_agent::state::{ClusterState, ObjectRef, PodInfo};
use netpol_common::sizes;
use netpol_tests::generate::Rng;

const PASS: i32 = -1; // TC_ACT_UNSPEC
const DROP: i32 = 2; // TC_ACT_SHOT

const DEFAULT_SEED: u64 = 0x5eed_d1ff_0000_0001;
const DEFAULT_SEQUENCES: usize = 2000;
const DEFAULT_PACKETS: usize = 40;
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

// ---- addresses -------------------------------------------------------------------------

type Ip = u32;

const fn ip(a: u8, b: u8, c: u8, d: u8) -> Ip {
    u32::from_be_bytes([a, b, c, d])
}

/// The client pod (its veth: loopback, ifindex 1).
const C: Ip = ip(10, 1, 0, 2);
/// The server pod (its veth: `srv0`).
const S: Ip = ip(10, 1, 0, 3);
/// The node's own address.
const N: Ip = ip(10, 1, 0, 1);
/// A pod on another node (`default/remote`, app=remote).
const R: Ip = ip(10, 1, 1, 5);
/// Addresses outside this node: the remote pod and external hosts.
const REMOTES: [Ip; 6] = [
    R,
    ip(10, 2, 0, 5),
    ip(10, 2, 1, 7),
    ip(10, 3, 0, 9),
    ip(192, 0, 2, 1),
    ip(198, 51, 100, 7),
];
/// Senders of ICMP errors.
const ROUTERS: [Ip; 2] = [ip(10, 2, 0, 1), ip(192, 0, 2, 254)];

/// CIDRs for ipBlocks; excepts are drawn from those strictly inside the chosen CIDR.
const CIDRS: [(Ip, u8); 19] = [
    (ip(0, 0, 0, 0), 0),
    (ip(0, 0, 0, 0), 1),
    (ip(128, 0, 0, 0), 1),
    (ip(10, 0, 0, 0), 8),
    (ip(10, 0, 0, 0), 15),
    (ip(10, 1, 0, 0), 16),
    (ip(10, 1, 0, 0), 24),
    (ip(10, 1, 0, 2), 32),
    (ip(10, 1, 0, 3), 32),
    (ip(10, 1, 1, 0), 24),
    (ip(10, 1, 1, 5), 32),
    (ip(10, 2, 0, 0), 16),
    (ip(10, 2, 0, 0), 24),
    (ip(10, 2, 0, 5), 32),
    (ip(10, 2, 1, 0), 24),
    (ip(10, 3, 0, 0), 16),
    (ip(192, 0, 2, 0), 24),
    (ip(192, 0, 2, 1), 32),
    (ip(198, 51, 100, 0), 24),
];
const POLICY_PORTS: [u16; 5] = [53, 80, 443, 8080, 9000];
const SERVER_PORTS: [u16; 7] = [53, 80, 81, 443, 8080, 8090, 9000];

fn show_ip(a: Ip) -> String {
    let name = match a {
        C => " (C)",
        S => " (S)",
        N => " (N)",
        R => " (R)",
        _ => "",
    };
    format!("{}{name}", Ipv4Addr::from(a))
}

fn contains((net, len): (Ip, u8), a: Ip) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    a & mask == net & mask
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
enum Pod {
    C,
    S,
}

impl Pod {
    fn addr(self) -> Ip {
        match self {
            Pod::C => C,
            Pod::S => S,
        }
    }
    fn at(a: Ip) -> Option<Pod> {
        match a {
            C => Some(Pod::C),
            S => Some(Pod::S),
            _ => None,
        }
    }
}

/// The `app` label of the pod at `a`, if a pod has that address (local or remote).
fn app_of(a: Ip) -> Option<&'static str> {
    match a {
        C => Some("client"),
        S => Some("server"),
        R => Some("remote"),
        _ => None,
    }
}

// ---- policies (the generated subset of NetworkPolicy) ------------------------------------

const TCP: u8 = 6;
const UDP: u8 = 17;
const SCTP: u8 = 132;
const ICMP: u8 = 1;

#[derive(Clone, Debug)]
enum Peer {
    Block {
        cidr: (Ip, u8),
        except: Vec<(Ip, u8)>,
    },
    /// podSelector in the policy's namespace: `app=<label>`, or every pod for `None`.
    Pods(Option<&'static str>),
}

#[derive(Clone, Debug)]
struct PortSpec {
    proto: u8,
    /// Written without `protocol` (TCP by default).
    implicit_tcp: bool,
    port: Option<u16>,
    end: Option<u16>,
}

#[derive(Clone, Debug)]
struct Rule {
    peers: Vec<Peer>,
    ports: Vec<PortSpec>,
    /// Empty lists written as `[]` rather than left out.
    explicit_empty: bool,
}

#[derive(Clone, Debug)]
struct Pol {
    name: String,
    /// `app=<label>`, or every pod of the namespace for `None`.
    selects: Option<&'static str>,
    ingress: Option<Vec<Rule>>,
    egress: Option<Vec<Rule>>,
}

fn cidr_str((net, len): (Ip, u8)) -> String {
    format!("{}/{len}", Ipv4Addr::from(net))
}

fn selector_json(sel: Option<&str>) -> serde_json::Value {
    match sel {
        Some(app) => serde_json::json!({"matchLabels": {"app": app}}),
        None => serde_json::json!({}),
    }
}

impl Pol {
    fn json(&self) -> serde_json::Value {
        use serde_json::{Value, json};
        let rules = |rules: &[Rule], key: &str| -> Value {
            Value::Array(
                rules
                    .iter()
                    .map(|r| {
                        let mut o = serde_json::Map::new();
                        let peers: Vec<Value> = r
                            .peers
                            .iter()
                            .map(|p| match p {
                                Peer::Block { cidr, except } => {
                                    let mut b = json!({"cidr": cidr_str(*cidr)});
                                    if !except.is_empty() {
                                        b["except"] = except
                                            .iter()
                                            .map(|e| Value::String(cidr_str(*e)))
                                            .collect();
                                    }
                                    json!({"ipBlock": b})
                                }
                                Peer::Pods(sel) => json!({"podSelector": selector_json(*sel)}),
                            })
                            .collect();
                        if !peers.is_empty() || r.explicit_empty {
                            o.insert(key.to_string(), Value::Array(peers));
                        }
                        let ports: Vec<Value> = r
                            .ports
                            .iter()
                            .map(|p| {
                                let mut v = serde_json::Map::new();
                                if !p.implicit_tcp {
                                    let name = match p.proto {
                                        TCP => "TCP",
                                        UDP => "UDP",
                                        _ => "SCTP",
                                    };
                                    v.insert("protocol".into(), json!(name));
                                }
                                if let Some(port) = p.port {
                                    v.insert("port".into(), json!(port));
                                }
                                if let Some(end) = p.end {
                                    v.insert("endPort".into(), json!(end));
                                }
                                Value::Object(v)
                            })
                            .collect();
                        if !ports.is_empty() || r.explicit_empty {
                            o.insert("ports".into(), Value::Array(ports));
                        }
                        Value::Object(o)
                    })
                    .collect(),
            )
        };
        let mut types = Vec::new();
        let mut spec = json!({"podSelector": selector_json(self.selects)});
        if let Some(i) = &self.ingress {
            types.push("Ingress");
            spec["ingress"] = rules(i, "from");
        }
        if let Some(e) = &self.egress {
            types.push("Egress");
            spec["egress"] = rules(e, "to");
        }
        spec["policyTypes"] = json!(types);
        json!({"metadata": {"name": self.name, "namespace": "default"}, "spec": spec})
    }
}

// ---- the model -------------------------------------------------------------------------

fn selects(sel: Option<&str>, a: Ip) -> bool {
    match app_of(a) {
        Some(app) => sel.is_none_or(|s| s == app),
        None => false,
    }
}

fn peer_matches(p: &Peer, a: Ip) -> bool {
    match p {
        Peer::Block { cidr, except } => {
            contains(*cidr, a) && !except.iter().any(|e| contains(*e, a))
        }
        Peer::Pods(sel) => selects(*sel, a),
    }
}

fn port_matches(p: &PortSpec, proto: u8, port: u16) -> bool {
    p.proto == proto
        && match (p.port, p.end) {
            (None, _) => true,
            (Some(lo), None) => port == lo,
            (Some(lo), Some(hi)) => lo <= port && port <= hi,
        }
}

/// Rules of the policies selecting `pod` for one direction; `None` if it is not isolated.
fn rules_of(pols: &[Pol], pod: Pod, egress: bool) -> Option<Vec<&Rule>> {
    let mut isolated = false;
    let mut out = Vec::new();
    for p in pols.iter().filter(|p| selects(p.selects, pod.addr())) {
        let rules = if egress { &p.egress } else { &p.ingress };
        if let Some(rules) = rules {
            isolated = true;
            out.extend(rules.iter());
        }
    }
    isolated.then_some(out)
}

fn isolated(pols: &[Pol], pod: Pod, egress: bool) -> bool {
    rules_of(pols, pod, egress).is_some()
}

/// Does `pod`'s egress (ingress) allow a connection to (from) `peer` on `proto`/`port`
/// (the acceptor's port)? ICMP has no ports: only rules without ports allow it.
fn side_allows(pols: &[Pol], pod: Pod, egress: bool, peer: Ip, proto: u8, port: u16) -> bool {
    // The pod's own node, whatever the rules (also for a connection decided again).
    if peer == N {
        return true;
    }
    let Some(rules) = rules_of(pols, pod, egress) else {
        return true;
    };
    rules.iter().any(|r| {
        (r.peers.is_empty() || r.peers.iter().any(|p| peer_matches(p, peer)))
            && (r.ports.is_empty()
                || (proto != ICMP && r.ports.iter().any(|p| port_matches(p, proto, port))))
    })
}

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

/// A transport header: what identifies a flow.
#[derive(Clone, Copy, Debug)]
enum L4 {
    Tcp { sport: u16, dport: u16, flags: u8 },
    Udp { sport: u16, dport: u16 },
    Echo { id: u16, reply: bool },
}

impl L4 {
    /// (protocol, source port, destination port); ICMP echo uses the identifier for both.
    fn tuple(self) -> (u8, u16, u16) {
        match self {
            L4::Tcp { sport, dport, .. } => (TCP, sport, dport),
            L4::Udp { sport, dport } => (UDP, sport, dport),
            L4::Echo { id, .. } => (ICMP, id, id),
        }
    }
    fn flags(self) -> u8 {
        match self {
            L4::Tcp { flags, .. } => flags,
            _ => 0,
        }
    }
}

#[derive(Clone, Debug)]
enum Body {
    Plain(L4),
    /// A first fragment (offset 0, more fragments) with IP id `.1` (sequence-local).
    FirstFrag(L4, u16),
    /// A later (last) fragment of protocol `proto` with IP id `id`.
    LaterFrag {
        proto: u8,
        id: u16,
    },
    /// An ICMP error quoting a packet `qsrc -> qdst` with transport header `quoted`.
    IcmpErr {
        kind: u8,
        code: u8,
        qsrc: Ip,
        qdst: Ip,
        quoted: L4,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    /// Every hook the packet crosses: the sender's FromPod, then (if it passed) the
    /// receiver's ToPod.
    Both,
    /// Only the sender's FromPod (the packet is lost on the way).
    FromOnly,
}

#[derive(Clone, Debug)]
struct Packet {
    src: Ip,
    dst: Ip,
    body: Body,
    path: Path,
}

#[derive(Clone, Debug)]
enum Step {
    Policies(Vec<Pol>),
    Packet(Packet),
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum At {
    FromPod,
    ToPod,
}

/// A packet's connection, whether it only opens one (a SYN; an echo request opens like
/// a SYN: from the acceptor it is an opening), and whether it ends one (FIN or RST).
fn segment(src: Ip, dst: Ip, l4: L4) -> (ConnKey, bool, bool) {
    let (proto, sport, dport) = l4.tuple();
    let flags = l4.flags();
    let syn_only = (proto == TCP && flags & SYN != 0 && flags & ACK == 0)
        || matches!(l4, L4::Echo { reply: false, .. });
    let ends = proto == TCP && flags & (FIN | RST) != 0;
    (conn_key(proto, (src, sport), (dst, dport)), syn_only, ends)
}

/// (protocol, lower end, higher end): a connection whatever the direction.
type ConnKey = (u8, (Ip, u16), (Ip, u16));

fn conn_key(proto: u8, a: (Ip, u16), b: (Ip, u16)) -> ConnKey {
    if a <= b { (proto, a, b) } else { (proto, b, a) }
}

#[derive(Clone, Debug)]
struct Conn {
    opener: (Ip, u16),
    acceptor: (Ip, u16),
    /// A FIN or RST of this connection has passed.
    closing: bool,
}

/// (pod, hook, src, dst, IP id, protocol) of a first fragment that passed.
type FragKey = (Pod, At, Ip, Ip, u16, u8);

/// The rules of the brief, as state and plain code.
#[derive(Default)]
struct Model {
    pols: Vec<Pol>,
    conns: HashMap<ConnKey, Conn>,
    /// First fragments that passed, per hook: (pod, hook, src, dst, id, proto) -> ports.
    frags: HashMap<FragKey, (u16, u16)>,
    /// Which rule decided, and how often it passed / dropped (coverage, for the summary).
    seen: BTreeMap<&'static str, [usize; 2]>,
}

impl Model {
    /// The verdict for `pkt` at `hook` on `pod`'s veth (true = pass).
    fn judge(&mut self, pod: Pod, hook: At, pkt: &Packet) -> bool {
        let (why, ok) = self.decide(pod, hook, pkt);
        self.seen.entry(why).or_default()[usize::from(ok)] += 1;
        ok
    }

    fn decide(&mut self, pod: Pod, hook: At, pkt: &Packet) -> (&'static str, bool) {
        let other = if hook == At::FromPod {
            pkt.dst
        } else {
            pkt.src
        };
        if other == N {
            // It passes; a connection of an isolated pod with its node is tracked (its
            // replies and the ICMP errors about it are known).
            if let Body::Plain(l4) | Body::FirstFrag(l4, _) = &pkt.body {
                self.node_flow(pod, pkt.src, pkt.dst, *l4);
            }
            return ("own node", true);
        }
        match &pkt.body {
            Body::Plain(l4) => self.flow(pod, hook, pkt.src, pkt.dst, *l4),
            Body::FirstFrag(l4, id) => {
                let (_, ok) = self.flow(pod, hook, pkt.src, pkt.dst, *l4);
                if ok {
                    let (proto, sport, dport) = l4.tuple();
                    self.frags
                        .insert((pod, hook, pkt.src, pkt.dst, *id, proto), (sport, dport));
                }
                ("first fragment", ok)
            }
            Body::LaterFrag { proto, id } => {
                match self
                    .frags
                    .get(&(pod, hook, pkt.src, pkt.dst, *id, *proto))
                    .copied()
                {
                    Some((sport, dport)) => {
                        let l4 = if *proto == TCP {
                            L4::Tcp {
                                sport,
                                dport,
                                flags: 0,
                            }
                        } else {
                            L4::Udp { sport, dport }
                        };
                        (
                            "later fragment",
                            self.flow(pod, hook, pkt.src, pkt.dst, l4).1,
                        )
                    }
                    None => (
                        "orphan fragment",
                        !isolated(&self.pols, pod, true) && !isolated(&self.pols, pod, false),
                    ),
                }
            }
            Body::IcmpErr {
                qsrc, qdst, quoted, ..
            } => {
                let (proto, sport, dport) = quoted.tuple();
                let live =
                    self.conns
                        .contains_key(&conn_key(proto, (*qsrc, sport), (*qdst, dport)));
                // The quoted packet is one this pod sent (an error coming in) or received
                // (an error going out, back to that packet's source).
                let own = match hook {
                    At::ToPod => *qsrc == pod.addr(),
                    At::FromPod => *qdst == pod.addr() && pkt.dst == *qsrc,
                };
                // A connection the pod's rules no longer allow is revoked: an error about
                // it is not justified by it (and it is forgotten, as at its next packet).
                let still_allowed = live && own && {
                    let key = conn_key(proto, (*qsrc, sport), (*qdst, dport));
                    let c = &self.conns[&key];
                    let ok = if c.opener.0 == pod.addr() {
                        side_allows(&self.pols, pod, true, c.acceptor.0, proto, c.acceptor.1)
                    } else {
                        side_allows(&self.pols, pod, false, c.opener.0, proto, c.acceptor.1)
                    };
                    if !ok {
                        self.conns.remove(&key);
                    }
                    ok
                };
                if still_allowed {
                    ("icmp error, related", true)
                } else {
                    (
                        "icmp error, unrelated",
                        !isolated(&self.pols, pod, hook == At::FromPod),
                    )
                }
            }
        }
    }

    /// The conntrack side of a packet between `pod` and its node (it always passes): it
    /// rides its connection's entry, or opens one when the pod is isolated.
    fn node_flow(&mut self, pod: Pod, src: Ip, dst: Ip, l4: L4) {
        let (_, sport, dport) = l4.tuple();
        let (key, syn_only, ends) = segment(src, dst, l4);
        if let Some(conn) = self.conns.get_mut(&key) {
            let from_acceptor = (src, sport) == conn.acceptor;
            if syn_only && !from_acceptor && conn.closing {
                // A new opening on a finished connection's tuple: the old one is over.
                self.conns.remove(&key);
            } else if !(syn_only && from_acceptor) {
                conn.closing |= ends;
                return;
            }
        }
        if isolated(&self.pols, pod, true) || isolated(&self.pols, pod, false) {
            self.conns.insert(
                key,
                Conn {
                    opener: (src, sport),
                    acceptor: (dst, dport),
                    closing: ends,
                },
            );
        }
    }

    fn flow(&mut self, pod: Pod, hook: At, src: Ip, dst: Ip, l4: L4) -> (&'static str, bool) {
        let (proto, sport, dport) = l4.tuple();
        let (key, syn_only, ends) = segment(src, dst, l4);
        // A pod with no isolation at all need not have its flows tracked (the brief
        // allows it, and the datapath does not): at its hooks, no entry is made or ended.
        let untracked = !isolated(&self.pols, pod, true) && !isolated(&self.pols, pod, false);
        // A SYN from the opener after a FIN or RST starts a new connection: the old
        // one is over, whatever the verdict on the new one.
        if syn_only
            && self
                .conns
                .get(&key)
                .is_some_and(|c| c.closing && (src, sport) == c.opener)
        {
            self.conns.remove(&key);
        }
        if let Some(conn) = self.conns.get_mut(&key) {
            let from_acceptor = (src, sport) == conn.acceptor;
            if !(syn_only && from_acceptor) {
                let ok = if conn.opener.0 == pod.addr() {
                    side_allows(
                        &self.pols,
                        pod,
                        true,
                        conn.acceptor.0,
                        proto,
                        conn.acceptor.1,
                    )
                } else {
                    side_allows(
                        &self.pols,
                        pod,
                        false,
                        conn.opener.0,
                        proto,
                        conn.acceptor.1,
                    )
                };
                if ok {
                    conn.closing |= ends;
                } else {
                    self.conns.remove(&key);
                }
                return (if ok { "tracked" } else { "revoked" }, ok);
            }
        }
        // The opening of a new connection; a denied one leaves any entry as it was.
        let ok = match hook {
            At::FromPod => side_allows(&self.pols, pod, true, dst, proto, dport),
            At::ToPod => side_allows(&self.pols, pod, false, src, proto, dport),
        };
        if ok && !untracked {
            self.conns.insert(
                key,
                Conn {
                    opener: (src, sport),
                    acceptor: (dst, dport),
                    closing: ends,
                },
            );
        }
        ("opening", ok)
    }
}

// ---- packets ---------------------------------------------------------------------------

fn eth_ipv4(src: Ip, dst: Ip, proto: u8, id: u16, frag: u16, l4: &[u8]) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    p.extend_from_slice(&ipv4(src, dst, proto, id, frag, l4));
    p
}

fn ipv4(src: Ip, dst: Ip, proto: u8, id: u16, frag: u16, l4: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    h[4..6].copy_from_slice(&id.to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.to_be_bytes());
    h[16..20].copy_from_slice(&dst.to_be_bytes());
    h.extend_from_slice(l4);
    h
}

fn l4_bytes(l4: L4) -> Vec<u8> {
    match l4 {
        L4::Tcp {
            sport,
            dport,
            flags,
        } => {
            let mut t = vec![0u8; 20];
            t[0..2].copy_from_slice(&sport.to_be_bytes());
            t[2..4].copy_from_slice(&dport.to_be_bytes());
            t[12] = 5 << 4;
            t[13] = flags;
            t
        }
        L4::Udp { sport, dport } => {
            let mut u = vec![0u8; 8];
            u[0..2].copy_from_slice(&sport.to_be_bytes());
            u[2..4].copy_from_slice(&dport.to_be_bytes());
            u[4..6].copy_from_slice(&16u16.to_be_bytes());
            u.extend_from_slice(&[0x55; 8]);
            u
        }
        L4::Echo { id, reply } => {
            let mut e = vec![if reply { 0 } else { 8 }, 0, 0, 0];
            e.extend_from_slice(&id.to_be_bytes());
            e.extend_from_slice(&[0, 1]);
            e
        }
    }
}

/// The Ethernet frame of `pkt`; fragment ids are offset by `id_base`.
fn frame(pkt: &Packet, id_base: u16) -> Vec<u8> {
    match &pkt.body {
        Body::Plain(l4) => {
            let (proto, _, _) = l4.tuple();
            eth_ipv4(pkt.src, pkt.dst, proto, 7, 0, &l4_bytes(*l4))
        }
        Body::FirstFrag(l4, id) => {
            let (proto, _, _) = l4.tuple();
            let mut b = l4_bytes(*l4);
            b.extend_from_slice(&[0x66; 16]);
            eth_ipv4(
                pkt.src,
                pkt.dst,
                proto,
                id_base.wrapping_add(*id),
                0x2000,
                &b,
            )
        }
        Body::LaterFrag { proto, id } => eth_ipv4(
            pkt.src,
            pkt.dst,
            *proto,
            id_base.wrapping_add(*id),
            185,
            &[0u8; 16],
        ),
        Body::IcmpErr {
            kind,
            code,
            qsrc,
            qdst,
            quoted,
        } => {
            let (proto, _, _) = quoted.tuple();
            let q = ipv4(*qsrc, *qdst, proto, 9, 0, &l4_bytes(*quoted));
            let mut m = vec![*kind, *code, 0, 0, 0, 0, 0x05, 0x00];
            m.extend_from_slice(&q[..28]);
            eth_ipv4(pkt.src, pkt.dst, ICMP, 11, 0, &m)
        }
    }
}

fn show_l4(l4: L4, src: Ip, dst: Ip) -> String {
    match l4 {
        L4::Tcp {
            sport,
            dport,
            flags,
        } => {
            let mut f = Vec::new();
            for (bit, name) in [
                (SYN, "SYN"),
                (ACK, "ACK"),
                (PSH, "PSH"),
                (FIN, "FIN"),
                (RST, "RST"),
            ] {
                if flags & bit != 0 {
                    f.push(name);
                }
            }
            format!(
                "TCP {}:{sport} -> {}:{dport} [{}]",
                show_ip(src),
                show_ip(dst),
                f.join("|")
            )
        }
        L4::Udp { sport, dport } => {
            format!("UDP {}:{sport} -> {}:{dport}", show_ip(src), show_ip(dst))
        }
        L4::Echo { id, reply } => format!(
            "ICMP echo {} id {id} {} -> {}",
            if reply { "reply" } else { "request" },
            show_ip(src),
            show_ip(dst)
        ),
    }
}

fn show_packet(p: &Packet) -> String {
    let what = match &p.body {
        Body::Plain(l4) => show_l4(*l4, p.src, p.dst),
        Body::FirstFrag(l4, id) => format!(
            "first fragment (ip id +{id}) of {}",
            show_l4(*l4, p.src, p.dst)
        ),
        Body::LaterFrag { proto, id } => format!(
            "later fragment (ip id +{id}, proto {proto}) {} -> {}",
            show_ip(p.src),
            show_ip(p.dst)
        ),
        Body::IcmpErr {
            kind,
            code,
            qsrc,
            qdst,
            quoted,
        } => format!(
            "ICMP error {kind}/{code} {} -> {} quoting [{}]",
            show_ip(p.src),
            show_ip(p.dst),
            show_l4(*quoted, *qsrc, *qdst)
        ),
    };
    match p.path {
        Path::Both => what,
        Path::FromOnly => format!("{what} (sender's hook only)"),
    }
}

fn show_step(s: &Step) -> String {
    match s {
        Step::Policies(pols) if pols.is_empty() => "policies: none".to_string(),
        Step::Policies(pols) => {
            let mut out = String::from("policies:");
            for p in pols {
                let _ = write!(out, "\n      {}", p.json());
            }
            out
        }
        Step::Packet(p) => show_packet(p),
    }
}

/// The hooks `pkt` is run at, in order.
fn hooks(pkt: &Packet) -> Vec<(Pod, At)> {
    let mut h = Vec::new();
    if let Some(p) = Pod::at(pkt.src) {
        h.push((p, At::FromPod));
    }
    if let Some(p) = Pod::at(pkt.dst).filter(|_| pkt.path != Path::FromOnly) {
        h.push((p, At::ToPod));
    }
    h
}

// ---- generation ------------------------------------------------------------------------

fn gen_port_spec(rng: &mut Rng) -> PortSpec {
    let r = rng.below(100);
    let proto = if r < 50 {
        TCP
    } else if r < 85 {
        UDP
    } else {
        SCTP
    };
    let port = (!rng.chance(15)).then(|| *rng.pick(&POLICY_PORTS));
    let end = port
        .filter(|_| rng.chance(20))
        .map(|p| p.saturating_add(*rng.pick(&[1u16, 10, 1000])));
    PortSpec {
        proto,
        implicit_tcp: proto == TCP && rng.chance(40),
        port,
        end,
    }
}

fn gen_peer(rng: &mut Rng) -> Peer {
    if rng.chance(65) {
        let cidr = *rng.pick(&CIDRS);
        let inside: Vec<(Ip, u8)> = CIDRS
            .iter()
            .copied()
            .filter(|e| e.1 > cidr.1 && contains(cidr, e.0))
            .collect();
        let mut except = Vec::new();
        if !inside.is_empty() && rng.chance(40) {
            for _ in 0..1 + rng.below(2) {
                let e = *rng.pick(&inside);
                if !except.contains(&e) {
                    except.push(e);
                }
            }
        }
        Peer::Block { cidr, except }
    } else {
        Peer::Pods(*rng.pick(&[Some("client"), Some("server"), Some("remote"), None]))
    }
}

fn gen_rules(rng: &mut Rng) -> Vec<Rule> {
    let n = if rng.chance(20) { 0 } else { 1 + rng.below(2) };
    (0..n)
        .map(|_| {
            let np = if rng.chance(25) { 0 } else { 1 + rng.below(2) };
            let nports = if rng.chance(35) { 0 } else { 1 + rng.below(2) };
            Rule {
                peers: (0..np).map(|_| gen_peer(rng)).collect(),
                ports: (0..nports).map(|_| gen_port_spec(rng)).collect(),
                explicit_empty: rng.chance(30),
            }
        })
        .collect()
}

fn gen_policy(rng: &mut Rng, name: String) -> Pol {
    let selects = *rng.pick(&[Some("client"), Some("server"), None]);
    let r = rng.below(100);
    let (ing, eg) = if r < 35 {
        (true, false)
    } else if r < 70 {
        (false, true)
    } else {
        (true, true)
    };
    Pol {
        name,
        selects,
        ingress: ing.then(|| gen_rules(rng)),
        egress: eg.then(|| gen_rules(rng)),
    }
}

fn gen_policies(rng: &mut Rng, names: &mut usize) -> Vec<Pol> {
    let n = if rng.chance(15) { 0 } else { 1 + rng.below(3) };
    (0..n)
        .map(|_| {
            *names += 1;
            gen_policy(rng, format!("p{names}"))
        })
        .collect()
}

/// A flow of a sequence: `client` opens to `server` (one of them, at least, a local pod).
struct Flow {
    client: (Ip, u16),
    server: (Ip, u16),
    proto: u8,
    /// First fragments sent so far: (forward?, sequence-local IP id).
    frag_ids: Vec<(bool, u16)>,
}

fn gen_sequence(rng: &mut Rng, len: usize) -> Vec<Step> {
    let mut names = 0;
    let mut pols = gen_policies(rng, &mut names);
    let mut steps = vec![Step::Policies(pols.clone())];
    let mut flows: Vec<Flow> = (0..3 + rng.below(4))
        .map(|_| {
            let local = *rng.pick(&[C, S]);
            let r = rng.below(100);
            let other = if r < 30 {
                if local == C { S } else { C }
            } else if r < 38 {
                N
            } else {
                *rng.pick(&REMOTES)
            };
            let (client, server) = if rng.chance(55) {
                (local, other)
            } else {
                (other, local)
            };
            let r = rng.below(100);
            let proto = if r < 45 {
                TCP
            } else if r < 75 {
                UDP
            } else {
                ICMP
            };
            let (cport, sport) = if proto == ICMP {
                let id = 1 + rng.below(60000) as u16;
                (id, id)
            } else {
                (30000 + rng.below(30000) as u16, *rng.pick(&SERVER_PORTS))
            };
            Flow {
                client: (client, cport),
                server: (server, sport),
                proto,
                frag_ids: Vec::new(),
            }
        })
        .collect();
    let mut next_frag_id: u16 = 0;
    while steps.len() < len {
        if rng.chance(7) {
            if rng.chance(50) || pols.is_empty() {
                pols = gen_policies(rng, &mut names);
            } else {
                let i = rng.below(pols.len());
                match rng.below(3) {
                    0 => {
                        pols.remove(i);
                    }
                    1 => {
                        names += 1;
                        pols[i] = gen_policy(rng, format!("p{names}"));
                    }
                    _ => {
                        names += 1;
                        pols.push(gen_policy(rng, format!("p{names}")));
                    }
                }
            }
            steps.push(Step::Policies(pols.clone()));
            continue;
        }
        let fi = rng.below(flows.len());
        let f = &mut flows[fi];
        let forward = rng.chance(60);
        let ((src, sport), (dst, dport)) = if forward {
            (f.client, f.server)
        } else {
            (f.server, f.client)
        };
        let l4 = match f.proto {
            TCP => {
                let flags = *rng.pick(&[
                    SYN,
                    SYN,
                    SYN,
                    SYN | ACK,
                    ACK,
                    ACK,
                    PSH | ACK,
                    PSH | ACK,
                    FIN | ACK,
                    RST,
                    RST | ACK,
                    0,
                ]);
                L4::Tcp {
                    sport,
                    dport,
                    flags,
                }
            }
            UDP => L4::Udp { sport, dport },
            _ => L4::Echo {
                id: sport,
                reply: if rng.chance(80) { !forward } else { forward },
            },
        };
        let both_local = Pod::at(src).is_some() && Pod::at(dst).is_some();
        let path = if !both_local || rng.chance(80) {
            Path::Both
        } else {
            Path::FromOnly
        };
        let r = rng.below(100);
        let body = if r < 8 && f.proto != ICMP && next_frag_id < 60 {
            let id = next_frag_id;
            next_frag_id += 1;
            f.frag_ids.push((forward, id));
            Body::FirstFrag(l4, id)
        } else if r < 16 && f.proto != ICMP && next_frag_id < 60 {
            let known: Vec<u16> = f
                .frag_ids
                .iter()
                .filter(|(fw, _)| *fw == forward)
                .map(|(_, id)| *id)
                .collect();
            let id = if !known.is_empty() && rng.chance(75) {
                *rng.pick(&known)
            } else {
                next_frag_id += 1;
                next_frag_id - 1
            };
            Body::LaterFrag { proto: f.proto, id }
        } else if r < 30 {
            // An ICMP error about this flow, to or from one of its local pods.
            let locals: Vec<Ip> = [f.client.0, f.server.0]
                .into_iter()
                .filter(|a| Pod::at(*a).is_some())
                .collect();
            let pod = *rng.pick(&locals);
            let (kind, code) = *rng.pick(&[(3u8, 3u8), (3, 4), (3, 1), (11, 0), (12, 0)]);
            let to_pod = rng.chance(60);
            // Mostly the packet the error is about: one the pod sent (ToPod) or
            // received (FromPod); sometimes the other direction.
            let pod_sent = if to_pod {
                rng.chance(85)
            } else {
                rng.chance(15)
            };
            let ((qsrc, qs), (qdst, qd)) = if (f.client.0 == pod) == pod_sent {
                (f.client, f.server)
            } else {
                (f.server, f.client)
            };
            let quoted = match f.proto {
                TCP => L4::Tcp {
                    sport: qs,
                    dport: qd,
                    flags: ACK,
                },
                UDP => L4::Udp {
                    sport: qs,
                    dport: qd,
                },
                _ => L4::Echo {
                    id: qs,
                    reply: qsrc == f.server.0,
                },
            };
            let far = if !to_pod && qsrc != pod && rng.chance(75) {
                qsrc
            } else if rng.chance(10) {
                N
            } else if rng.chance(70) {
                *rng.pick(&ROUTERS)
            } else {
                *rng.pick(&REMOTES)
            };
            let (src, dst) = if to_pod { (far, pod) } else { (pod, far) };
            steps.push(Step::Packet(Packet {
                src,
                dst,
                body: Body::IcmpErr {
                    kind,
                    code,
                    qsrc,
                    qdst,
                    quoted,
                },
                path: Path::Both,
            }));
            continue;
        } else {
            Body::Plain(l4)
        };
        steps.push(Step::Packet(Packet {
            src,
            dst,
            body,
            path,
        }));
    }
    steps
}

// ---- the rig: real BPF programs --------------------------------------------------------

struct Rig {
    dp: Datapath,
    programmer: Programmer<KernelMaps>,
    state: ClusterState,
    ifindexes: BTreeMap<ObjectRef, u32>,
    server_if: u32,
    /// Added to fragment ids so that no run sees another run's fragments.
    id_base: u16,
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

fn pod_info(a: Ip, app: &str, node: &str) -> PodInfo {
    PodInfo {
        labels: [("app".to_string(), app.to_string())].into(),
        node: Some(node.into()),
        host_network: false,
        terminated: false,
        ips: vec![IpAddr::V4(Ipv4Addr::from(a))],
        ports: Vec::new(),
    }
}

impl Rig {
    fn new(server_if: u32) -> Rig {
        let mut state = ClusterState::default();
        let client = ObjectRef::new("default", "client");
        let server = ObjectRef::new("default", "server");
        state
            .pods
            .insert(client.clone(), pod_info(C, "client", "n1"));
        state
            .pods
            .insert(server.clone(), pod_info(S, "server", "n1"));
        state.pods.insert(
            ObjectRef::new("default", "remote"),
            pod_info(R, "remote", "n2"),
        );
        let mut dp = Datapath::load(
            AttachMode::Auto,
            &MapSizes {
                conntrack_entries: 4096,
                conntrack_new_entries: 4096,
                peer_entries: 4096,
                identity_entries: 4096,
                cidr_entries: 4096,
                service_entries: 64,
                portset_entries: 4096,
            },
            None,
        )
        .expect("load BPF");
        let maps = dp.take_maps().expect("maps");
        let mut programmer = Programmer::new(maps, sizes::COUNTERS);
        let ifindexes = BTreeMap::from([(client, 1u32), (server, server_if)]);
        let plan = compile(&state, "n1");
        assert!(plan.errors.is_empty(), "{:?}", plan.errors);
        programmer.apply(&plan, &ifindexes).expect("program maps");
        programmer
            .set_node_addrs(&[IpAddr::V4(Ipv4Addr::from(N))].into())
            .expect("node addresses");
        Rig {
            dp,
            programmer,
            state,
            ifindexes,
            server_if,
            id_base: 0,
        }
    }

    fn set_policies(&mut self, pols: &[Pol]) {
        self.state.policies.clear();
        for p in pols {
            let np: k8s_openapi::api::networking::v1::NetworkPolicy =
                serde_json::from_value(p.json()).expect("generated policy");
            self.state
                .policies
                .insert(ObjectRef::new("default", p.name.clone()), np);
        }
        let plan = compile(&self.state, "n1");
        assert!(
            plan.errors.is_empty(),
            "generated policies must compile: {:?}",
            plan.errors
        );
        self.programmer
            .apply(&plan, &self.ifindexes)
            .expect("program maps");
    }

    fn clear_conntrack(&mut self) {
        self.programmer.maps_mut().clear_conntrack();
    }

    fn run(&mut self, pod: Pod, at: At, frame: &[u8]) -> bool {
        let (hook, ifindex) = match (pod, at) {
            (Pod::C, At::FromPod) => (Hook::FromPod, 1),
            (Pod::C, At::ToPod) => (Hook::ToPod, 1),
            (Pod::S, At::FromPod) => (Hook::FromPod, self.server_if),
            (Pod::S, At::ToPod) => (Hook::ToPod, self.server_if),
        };
        let (got, _) = self
            .dp
            .test_run_on(hook, frame, 1, ifindex)
            .expect("test run");
        assert!(
            got == PASS || got == DROP,
            "unexpected TC verdict {got} for {frame:02x?}"
        );
        got == PASS
    }
}

#[derive(Clone, Debug)]
struct Mismatch {
    step: usize,
    pod: Pod,
    at: At,
    model: bool,
    datapath: bool,
}

/// Runs `steps` from a clean state (no connections); returns the verdicts compared and the
/// first disagreement. With `trace`, every verdict is written there.
fn replay(rig: &mut Rig, steps: &[Step], trace: Option<&mut String>) -> (usize, Option<Mismatch>) {
    replay_counting(rig, steps, trace, &mut BTreeMap::new())
}

/// `replay`, adding to `seen` how often each rule of the model decided (pass, drop).
fn replay_counting(
    rig: &mut Rig,
    steps: &[Step],
    mut trace: Option<&mut String>,
    seen: &mut BTreeMap<&'static str, [usize; 2]>,
) -> (usize, Option<Mismatch>) {
    rig.clear_conntrack();
    // Fragment ids of this run: 64 fresh ones. After 1024 runs, a fresh datapath.
    rig.id_base = rig.id_base.wrapping_add(64);
    if rig.id_base == 0 {
        *rig = Rig::new(rig.server_if);
        rig.id_base = 64;
    }
    let mut model = Model::default();
    let mut compared = 0;
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Policies(pols) => {
                rig.set_policies(pols);
                model.pols = pols.clone();
                if let Some(t) = trace.as_deref_mut() {
                    let _ = writeln!(t, "  [{i:2}] {}", show_step(step));
                }
            }
            Step::Packet(pkt) => {
                let f = frame(pkt, rig.id_base);
                if let Some(t) = trace.as_deref_mut() {
                    let _ = writeln!(t, "  [{i:2}] {}", show_packet(pkt));
                }
                for (pod, at) in hooks(pkt) {
                    let want = model.judge(pod, at, pkt);
                    let got = rig.run(pod, at, &f);
                    compared += 1;
                    if let Some(t) = trace.as_deref_mut() {
                        let v = |b: bool| if b { "pass" } else { "drop" };
                        let _ = writeln!(
                            t,
                            "         {pod:?} {at:?}: model {}, datapath {}{}",
                            v(want),
                            v(got),
                            if want == got { "" } else { "   <== DISAGREE" }
                        );
                    }
                    if let Some(t) = trace
                        .as_deref_mut()
                        .filter(|_| std::env::var_os("NETPOL_DIFF_CT").is_some())
                    {
                        for (k, v) in rig.programmer.maps().conntrack_entries() {
                            let _ = writeln!(t, "           ct {k:?} {v:?}");
                        }
                    }
                    if want != got {
                        return (
                            compared,
                            Some(Mismatch {
                                step: i,
                                pod,
                                at,
                                model: want,
                                datapath: got,
                            }),
                        );
                    }
                    if !got {
                        break; // a dropped packet goes no further
                    }
                }
            }
        }
    }
    for (k, v) in std::mem::take(&mut model.seen) {
        let e: &mut [usize; 2] = seen.entry(k).or_default();
        e[0] += v[0];
        e[1] += v[1];
    }
    (compared, None)
}

/// Greedy shrinking: drops steps, policies and rules while a disagreement remains.
fn shrink(rig: &mut Rig, mut steps: Vec<Step>) -> Vec<Step> {
    if let (_, Some(m)) = replay(rig, &steps, None) {
        steps.truncate(m.step + 1);
    }
    let fails = |rig: &mut Rig, s: &[Step]| replay(rig, s, None).1.is_some();
    loop {
        let mut changed = false;
        // Whole steps (the first, the initial policies, stays).
        let mut i = steps.len();
        while i > 1 {
            i -= 1;
            let mut cand = steps.clone();
            cand.remove(i);
            if fails(rig, &cand) {
                steps = cand;
                changed = true;
            }
        }
        // Policies, then rules, then peers and ports.
        for si in 0..steps.len() {
            let Step::Policies(pols) = &steps[si] else {
                continue;
            };
            let mut pols = pols.clone();
            let mut pi = pols.len();
            while pi > 0 {
                pi -= 1;
                let mut cand = pols.clone();
                cand.remove(pi);
                let mut s = steps.clone();
                s[si] = Step::Policies(cand.clone());
                if fails(rig, &s) {
                    pols = cand;
                    steps = s;
                    changed = true;
                }
            }
            for pi in 0..pols.len() {
                for egress in [false, true] {
                    let n = {
                        let p = &pols[pi];
                        let r = if egress { &p.egress } else { &p.ingress };
                        r.as_ref().map_or(0, Vec::len)
                    };
                    let mut ri = n;
                    while ri > 0 {
                        ri -= 1;
                        let mut variants = Vec::new();
                        let rules = |p: &Pol| {
                            if egress {
                                p.egress.clone().unwrap_or_default()
                            } else {
                                p.ingress.clone().unwrap_or_default()
                            }
                        };
                        // without the rule
                        let mut rs = rules(&pols[pi]);
                        rs.remove(ri);
                        variants.push(rs);
                        // without one of its peers / ports
                        let base = rules(&pols[pi]);
                        for k in 0..base[ri].peers.len() {
                            let mut rs = base.clone();
                            rs[ri].peers.remove(k);
                            if !rs[ri].peers.is_empty() {
                                variants.push(rs);
                            }
                        }
                        for k in 0..base[ri].ports.len() {
                            let mut rs = base.clone();
                            rs[ri].ports.remove(k);
                            if !rs[ri].ports.is_empty() {
                                variants.push(rs);
                            }
                        }
                        for rs in variants {
                            let mut cand = pols.clone();
                            if egress {
                                cand[pi].egress = Some(rs);
                            } else {
                                cand[pi].ingress = Some(rs);
                            }
                            let mut s = steps.clone();
                            s[si] = Step::Policies(cand.clone());
                            if fails(rig, &s) {
                                pols = cand;
                                steps = s;
                                changed = true;
                                break;
                            }
                        }
                    }
                }
            }
        }
        if !changed {
            return steps;
        }
    }
}

fn env_num(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={v}: not a number"))
        }
        Err(_) => default,
    }
}

#[test]
fn root_differential_datapath_vs_model() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "root_differential loads BPF programs: run it as root"
    );
    let seed = env_num("NETPOL_DIFF_SEED", DEFAULT_SEED);
    let sequences = env_num("NETPOL_DIFF_SEQUENCES", DEFAULT_SEQUENCES as u64) as usize;
    let packets = env_num("NETPOL_DIFF_PACKETS", DEFAULT_PACKETS as u64) as usize;
    let started = Instant::now();
    let server_if = private_netns();
    let mut rig = Rig::new(server_if);

    let mut compared = 0;
    let mut steps_run = 0;
    let mut seen = BTreeMap::new();
    let mut failures: Vec<(usize, u64, Vec<Step>, Mismatch)> = Vec::new();
    for i in 0..sequences {
        let seq_seed = seed.wrapping_add((i as u64).wrapping_mul(GOLDEN));
        let mut rng = Rng::new(seq_seed);
        let steps = gen_sequence(&mut rng, packets);
        let (n, mismatch) = replay_counting(&mut rig, &steps, None, &mut seen);
        compared += n;
        steps_run += steps.len();
        if let Some(m) = mismatch {
            failures.push((i, seq_seed, steps, m));
        }
    }
    let elapsed = started.elapsed();
    let coverage: Vec<String> = seen
        .iter()
        .map(|(k, [drop, pass])| format!("{k} {pass}/{drop}"))
        .collect();

    let mut report = String::new();
    for (k, (i, seq_seed, steps, m)) in failures.iter().enumerate() {
        let _ = writeln!(
            report,
            "\nDISAGREEMENT in sequence {i} (seed {seq_seed:#x}) at step {}: {:?} {:?} model {} datapath {}",
            m.step,
            m.pod,
            m.at,
            if m.model { "pass" } else { "drop" },
            if m.datapath { "pass" } else { "drop" },
        );
        let _ = writeln!(
            report,
            "  replay: NETPOL_DIFF_SEED={seq_seed:#x} NETPOL_DIFF_SEQUENCES=1 NETPOL_DIFF_PACKETS={packets}"
        );
        // Shrink and show the first few in full.
        if k < 12 {
            let small = shrink(&mut rig, steps.clone());
            let mut trace = String::new();
            replay(&mut rig, &small, Some(&mut trace));
            let _ = writeln!(report, "  minimal sequence ({} steps):", small.len());
            report.push_str(&trace);
        }
    }
    println!(
        "root_differential: seed {seed:#x}: {sequences} sequences, {steps_run} steps, {compared} verdicts compared in {:.1} s; {} sequence(s) disagreed",
        elapsed.as_secs_f64(),
        failures.len()
    );
    println!(
        "root_differential: model rules that decided (pass/drop): {}",
        coverage.join(", ")
    );
    assert!(
        failures.is_empty(),
        "the datapath and the model disagree in {} of {sequences} sequences (seed {seed:#x}; \
         replay all with NETPOL_DIFF_SEED={seed:#x} NETPOL_DIFF_SEQUENCES={sequences}):{report}",
        failures.len()
    );
}
