//! Attacks on the programmer keyed by the plan's own `Arc`s (`program/mod.rs`:
//! `recognise_sets`, `identity_ids_of` skipping loaded sets' identities) and on the
//! incremental compiler that shares rule sets between plans (`compile/incremental.rs`),
//! with the cached hashes of `RuleSet` and `Identity` (`compile/cached_hash.rs`).
//!
//! Random change sequences (pods relabelled, moved, deleted, copied, taking each other's
//! addresses; namespaces relabelled; policies replaced, deleted, added; agent restarts
//! that adopt the maps; map capacities that overflow) go through `Compiler` and one
//! `Programmer<MemoryMaps>` per node, as the agent drives them. After every step:
//!
//! 1. every local pod that was not overflowed decides, through the maps, exactly what the
//!    plan decides (every address of the cluster and outside, every probe port);
//! 2. `IDENTITIES` holds exactly the plan's addresses, one id per identity, different ids
//!    for different identities;
//! 3. no set id still in use allows an address less than it allowed when that address
//!    last had an identity (else a tracked connection outlives its revocation: the set
//!    should have been renewed);
//! 4. no rule-set entry is left whose id no endpoint or veth points at.
//!
//! NETPOL_PROG_SEED / NETPOL_PROG_SEQUENCES / NETPOL_PROG_STEPS replay or scale it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};

use netpol_agent::compile::{Compiler, Identity, Plan, compile};
use netpol_agent::program::memory::MemoryMaps;
use netpol_agent::program::{ApplyStats, Programmer, addr_of};
use netpol_agent::state::{ClusterState, ObjectRef, PodInfo, Protocol};
use netpol_common::{Addr, RULESET_ALLOW_ALL};
use netpol_tests::generate::{self, NODES, OUTSIDE, Rng};
use netpol_tests::scale::{self, Generator};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

const PORTS: [u16; 9] = [53, 80, 81, 82, 84, 8080, 9000, 1, 443];
const PROTOS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

fn probes() -> impl Iterator<Item = (usize, Protocol, u16)> {
    PROTOS
        .iter()
        .flat_map(|p| PORTS.iter().map(move |n| (*p, *n)))
        .enumerate()
        .map(|(i, (p, n))| (i, p, n))
}

/// One node's agent: its compiler, its programmer, the veths it gave pods.
struct Agent {
    node: &'static str,
    compiler: Compiler,
    pr: Programmer<MemoryMaps>,
    ifindexes: BTreeMap<ObjectRef, u32>,
    next_ifindex: u32,
    /// (set id, peer address, probe) -> allowed, from the last step where the peer
    /// address had an identity and the set was in use (check 3).
    held: HashMap<(u32, IpAddr, usize), bool>,
    capacity: Option<usize>,
    /// Plans that took the incremental path, of all.
    incremental: usize,
    plans: usize,
}

impl Agent {
    fn new(node: &'static str, capacity: Option<usize>) -> Self {
        let maps = MemoryMaps {
            peer_capacity: capacity,
            ..Default::default()
        };
        Agent {
            node,
            compiler: Compiler::default(),
            pr: Programmer::new(maps, 8192),
            ifindexes: BTreeMap::new(),
            next_ifindex: 100,
            held: HashMap::new(),
            capacity,
            incremental: 0,
            plans: 0,
        }
    }

    /// A restart: the maps stay (pinned), the programmer and compiler start over and
    /// adopt them.
    fn restart(&mut self) {
        let maps = std::mem::take(self.pr.maps_mut());
        self.pr = Programmer::new(maps, 8192);
        self.pr.adopt().expect("adopt");
        self.compiler = Compiler::default();
    }

    fn step(&mut self, s: &ClusterState, rng: &mut Rng) -> Result<(), String> {
        let plan = self.compiler.compile(s, self.node);
        self.plans += 1;
        self.incremental += usize::from(self.compiler.last_was_incremental);
        let full = compile(s, self.node);
        if plan != full {
            return Err(format!(
                "the incremental plan differs from a full compile\nincremental: {plan:#?}\nfull: {full:#?}"
            ));
        }
        for ep in &plan.endpoints {
            if !self.ifindexes.contains_key(&ep.pod) {
                self.ifindexes.insert(ep.pod.clone(), self.next_ifindex);
                self.next_ifindex += 1;
            }
        }
        let live: BTreeSet<&ObjectRef> = plan.endpoints.iter().map(|e| &e.pod).collect();
        let ifx: BTreeMap<ObjectRef, u32> = self
            .ifindexes
            .iter()
            .filter(|(p, _)| live.contains(p))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        let stats = self
            .pr
            .apply(&plan, &ifx)
            .map_err(|e| format!("apply: {e}"))?;
        if rng.chance(90) {
            self.compiler.remember(s, &plan);
        }
        self.check(s, &plan, &stats, &ifx)
    }

    fn check(
        &mut self,
        s: &ClusterState,
        plan: &Plan,
        stats: &ApplyStats,
        ifx: &BTreeMap<ObjectRef, u32>,
    ) -> Result<(), String> {
        let maps = self.pr.maps();
        let mut peers: BTreeSet<IpAddr> = s.pods.values().flat_map(|p| p.ips.clone()).collect();
        peers.extend(
            OUTSIDE
                .iter()
                .map(|a| a.parse::<IpAddr>().expect("constant")),
        );
        let mut claims: BTreeMap<IpAddr, usize> = BTreeMap::new();
        for ep in &plan.endpoints {
            for ip in &ep.ips {
                *claims.entry(*ip).or_default() += 1;
            }
        }
        let overflowed: BTreeSet<&ObjectRef> = stats.overflowed.iter().collect();
        // 1. Decisions.
        for ep in &plan.endpoints {
            if overflowed.contains(&ep.pod) {
                continue;
            }
            for ip in ep.ips.iter().filter(|ip| claims[ip] == 1) {
                let Some(info) = maps.endpoints.get(&addr_of(*ip)) else {
                    return Err(format!("{}: {ip} has no endpoint entry", ep.pod));
                };
                for (dir, planned, set) in [
                    ("ingress", ep.ingress, info.ingress_set),
                    ("egress", ep.egress, info.egress_set),
                ] {
                    let Some(r) = planned else {
                        if set != RULESET_ALLOW_ALL {
                            return Err(format!(
                                "{} ({ip}): {dir} not isolated in the plan, set {set} in the maps",
                                ep.pod
                            ));
                        }
                        continue;
                    };
                    for peer in &peers {
                        for (_, proto, port) in probes() {
                            let want = plan.allows(r, *peer, proto, port);
                            let got = maps.allows(set, *peer, proto, port);
                            if want != got {
                                return Err(format!(
                                    "{} ({ip}) {dir} set {set}: {peer} {proto:?}/{port}: plan {want}, maps {got}",
                                    ep.pod
                                ));
                            }
                        }
                    }
                }
                if let Some(ifindex) = ifx.get(&ep.pod) {
                    let Some(iface) = maps.ifaces.get(ifindex) else {
                        return Err(format!("{}: veth {ifindex} not programmed", ep.pod));
                    };
                    if (iface.ingress_set, iface.egress_set) != (info.ingress_set, info.egress_set)
                    {
                        return Err(format!(
                            "{}: veth sets {:?} differ from its address's {:?}",
                            ep.pod,
                            (iface.ingress_set, iface.egress_set),
                            (info.ingress_set, info.egress_set)
                        ));
                    }
                }
            }
        }
        // 2. Identities.
        let want: BTreeSet<Addr> = plan.identities.keys().map(|ip| addr_of(*ip)).collect();
        let have: BTreeSet<Addr> = maps.identities.keys().copied().collect();
        if want != have {
            return Err(format!(
                "IDENTITIES holds {} addresses, the plan {}: extra {:?}, missing {:?}",
                have.len(),
                want.len(),
                have.difference(&want).collect::<Vec<_>>(),
                want.difference(&have).collect::<Vec<_>>()
            ));
        }
        let mut id_of: HashMap<&Identity, u32> = HashMap::new();
        let mut identity_of: HashMap<u32, &Identity> = HashMap::new();
        for (ip, identity) in &plan.identities {
            let id = maps.identities[&addr_of(*ip)];
            if let Some(other) = id_of.insert(identity, id)
                && other != id
            {
                return Err(format!("{identity:?} has ids {other} and {id} ({ip})"));
            }
            if let Some(other) = identity_of.insert(id, identity)
                && *other != **identity
            {
                return Err(format!("id {id} names {other:?} and {identity:?} ({ip})"));
            }
        }
        // 3. Renewals (only where every write fits: a renewal that does not fit is
        // delayed by design).
        if self.capacity.is_none() {
            let in_use: BTreeSet<u32> = maps
                .endpoints
                .values()
                .flat_map(|e| [e.ingress_set, e.egress_set])
                .filter(|s| *s != RULESET_ALLOW_ALL)
                .collect();
            for set in &in_use {
                for peer in plan.identities.keys() {
                    for (i, proto, port) in probes() {
                        let now = maps.allows(*set, *peer, proto, port);
                        if let Some(before) = self.held.insert((*set, *peer, i), now)
                            && before
                            && !now
                        {
                            return Err(format!(
                                "set {set} allowed {peer} {proto:?}/{port} and no longer does, \
                                 but kept its id (connections tracked under it go on)"
                            ));
                        }
                    }
                }
            }
        }
        // 4. Stale rule-set entries (where every write fits: a pod one of whose sets did
        // not fit keeps its last state, and the set that fitted waits unused).
        if self.capacity.is_some() {
            return Ok(());
        }
        let pointed: BTreeSet<u32> = maps
            .endpoints
            .values()
            .flat_map(|e| [e.ingress_set, e.egress_set])
            .chain(
                maps.ifaces
                    .values()
                    .flat_map(|i| [i.ingress_set, i.egress_set]),
            )
            .collect();
        let written: BTreeSet<u32> = maps
            .by_identity
            .keys()
            .map(|k| k.ruleset)
            .chain(maps.cidr.keys().map(|(id, _, _)| u32::from_be_bytes(*id)))
            .collect();
        let stale: Vec<&u32> = written.difference(&pointed).collect();
        if !stale.is_empty() {
            return Err(format!("entries of rule sets nothing points at: {stale:?}"));
        }
        Ok(())
    }
}

fn random_pod<'a>(rng: &mut Rng, s: &'a ClusterState) -> Option<(&'a ObjectRef, &'a PodInfo)> {
    let n = s.pods.len();
    (n > 0).then(|| s.pods.iter().nth(rng.below(n))).flatten()
}

/// One random change; returns what it did.
fn mutate(rng: &mut Rng, s: &mut ClusterState, nodes: &[&str], step: usize, seed: u64) -> String {
    // Policies and namespaces change in the generated clusters only (the synthetic one
    // tests the incremental path).
    let objects = nodes.len() <= 2;
    if objects && rng.chance(12) {
        // Policies: one replaced by another cluster's, deleted, or one added.
        let donor = generate::cluster(&mut Rng::new(seed ^ (step as u64) << 20));
        let mut donated: Vec<_> = donor.policies.into_iter().collect();
        if (donated.is_empty() || s.policies.is_empty() || rng.chance(30))
            && let Some(k) = s.policies.keys().nth(rng.below(s.policies.len())).cloned()
        {
            s.policies.remove(&k);
            return format!("policy {k} deleted");
        }
        if let Some((k, p)) = donated.pop() {
            let name = if rng.chance(50) {
                s.policies
                    .keys()
                    .nth(rng.below(s.policies.len()))
                    .cloned()
                    .unwrap_or(k)
            } else {
                ObjectRef::new(k.namespace.clone(), format!("added-{step}"))
            };
            let mut p = p;
            p.metadata.namespace = Some(name.namespace.clone());
            p.metadata.name = Some(name.name.clone());
            s.policies.insert(name.clone(), p);
            return format!("policy {name} replaced/added");
        }
        return "nothing".into();
    }
    if objects && rng.chance(6) {
        let keys: Vec<String> = s.namespaces.keys().cloned().collect();
        let ns = rng.pick(&keys).clone();
        if let Some(l) = s.namespaces.get_mut(&ns) {
            let k = *rng.pick(&["app", "tier", "env", "team"]);
            if rng.chance(30) {
                l.remove(k);
            } else {
                l.insert(k.into(), rng.pick(&["one", "two", "three"]).to_string());
            }
        }
        return format!("namespace {ns} relabelled");
    }
    let Some((r, p)) = random_pod(rng, s) else {
        return "nothing".into();
    };
    let (r, mut p) = (r.clone(), p.clone());
    let other = random_pod(rng, s).map(|(r, p)| (r.clone(), p.clone()));
    let what = match rng.below(11) {
        0 => {
            s.pods.remove(&r);
            return format!("delete {r}");
        }
        1 => {
            let name = ObjectRef::new(r.namespace.clone(), format!("copy-{step}"));
            if rng.chance(50) {
                p.ips = vec![IpAddr::V4(Ipv4Addr::new(
                    10,
                    0,
                    rng.below(3) as u8,
                    100 + (step % 100) as u8,
                ))];
            }
            p.node = Some(rng.pick(nodes).to_string());
            s.pods.insert(name.clone(), p);
            return format!("add {name} (a copy of {r})");
        }
        2 => {
            p.node = Some(rng.pick(nodes).to_string());
            "move"
        }
        3 | 4 => {
            if let Some((_, o)) = &other {
                p.labels = o.labels.clone();
                if rng.chance(50) {
                    p.ports = o.ports.clone();
                }
            }
            "take another pod's labels"
        }
        5 => {
            if let Some((_, o)) = &other {
                p.ips = o.ips.clone();
            }
            "take another pod's addresses"
        }
        6 => {
            if let Some((o, _)) = &other {
                // The other pod goes away and this one takes its addresses.
                let ips = s.pods.remove(o).map(|x| x.ips).unwrap_or_default();
                if o == &r {
                    return format!("delete {r}");
                }
                p.ips = ips;
            }
            "replace another pod at its addresses"
        }
        7 => {
            p.terminated = !p.terminated;
            "toggle terminated"
        }
        8 => {
            p.host_network = !p.host_network;
            "toggle host network"
        }
        9 => {
            let k = *rng.pick(&["app", "tier", "env"]);
            if rng.chance(30) {
                p.labels.remove(k);
            } else {
                p.labels
                    .insert(k.into(), rng.pick(&["one", "two", "three"]).to_string());
            }
            "relabel"
        }
        _ => {
            p.ports.clear();
            "named ports removed"
        }
    };
    s.pods.insert(r.clone(), p);
    format!("{what}: {r}")
}

fn run_sequences(label: &str, capacity: impl Fn(&mut Rng) -> Option<usize>, restarts: u64) {
    let seed = env_or("NETPOL_PROG_SEED", 1);
    let sequences = env_or("NETPOL_PROG_SEQUENCES", 300);
    let steps = env_or("NETPOL_PROG_STEPS", 40) as usize;
    let (mut incremental, mut plans) = (0, 0);
    for i in 0..sequences {
        let sseed = seed.wrapping_mul(1_000_003).wrapping_add(i);
        let mut rng = Rng::new(sseed);
        let s = generate::cluster(&mut rng);
        let cap = capacity(&mut rng);
        let (a, b) = run_sequence(
            &format!("{label}: NETPOL_PROG_SEED={seed} sequence {i} (capacity {cap:?})"),
            s,
            &NODES,
            &mut rng,
            steps,
            cap,
            restarts,
            sseed,
        );
        incremental += a;
        plans += b;
    }
    println!("{label}: {incremental} of {plans} plans incremental");
}

#[allow(clippy::too_many_arguments)]
fn run_sequence(
    label: &str,
    mut s: ClusterState,
    nodes: &[&'static str],
    rng: &mut Rng,
    steps: usize,
    cap: Option<usize>,
    restarts: u64,
    seed: u64,
) -> (usize, usize) {
    let mut agents: Vec<Agent> = nodes.iter().map(|n| Agent::new(n, cap)).collect();
    let mut history = Vec::new();
    for step in 0..steps {
        for a in agents.iter_mut() {
            if step > 0 && rng.chance(restarts) {
                a.restart();
                history.push(format!("restart {}", a.node));
            }
            if let Err(e) = a.step(&s, rng) {
                panic!(
                    "{label}, step {step}, node {}:\n{e}\nchanges: {history:#?}",
                    a.node
                );
            }
        }
        history.push(mutate(rng, &mut s, nodes, step, seed));
    }
    agents
        .iter()
        .fold((0, 0), |(i, n), a| (i + a.incremental, n + a.plans))
}

#[test]
fn programmer_maps_follow_the_plan_on_change_sequences() {
    run_sequences("unbounded", |_| None, 0);
}

#[test]
fn programmer_maps_follow_the_plan_across_restarts() {
    run_sequences("restarts", |_| None, 10);
}

#[test]
fn programmer_maps_follow_the_plan_when_maps_overflow() {
    run_sequences("overflow", |rng| Some(4 + rng.below(60)), 5);
}

/// A synthetic cluster (most changes touch other nodes' pods: the incremental path, the
/// programmer finding its sets by pointer).
#[test]
fn programmer_maps_follow_the_plan_on_a_synthetic_cluster() {
    let seed = env_or("NETPOL_PROG_SEED", 1);
    for generator in [Generator::Narrow, Generator::Broad] {
        let mut rng = Rng::new(seed);
        let s = scale::cluster(generator, 150).expect("cluster");
        let label = format!("{} 150, NETPOL_PROG_SEED={seed}", generator.name());
        let (incremental, plans) = run_sequence(
            &label,
            s,
            &["node-0", "node-1", "node-7", "node-8", "node-9"],
            &mut rng,
            40,
            None,
            2,
            seed,
        );
        println!("{label}: {incremental} of {plans} plans incremental");
    }
}

/// The checks see a wrong map: an identity entry taken out of a set, or an address moved
/// to another identity id behind the programmer's back, is reported.
#[test]
fn the_checks_catch_a_corrupted_map() {
    let mut caught = (0, 0);
    for i in 0..200u64 {
        let mut rng = Rng::new(i);
        let s = generate::cluster(&mut rng);
        let mut agent = Agent::new(NODES[0], None);
        agent.step(&s, &mut rng).expect("a clean step");
        let plan = compile(&s, NODES[0]);
        let ifx = agent
            .ifindexes
            .iter()
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        let stats = ApplyStats::default();
        if let Some(k) = agent.pr.maps().by_identity.keys().next().copied() {
            let mut a = Agent::new(NODES[0], None);
            a.step(&s, &mut Rng::new(i)).expect("a clean step");
            a.pr.maps_mut().by_identity.remove(&k);
            if a.check(&s, &plan, &stats, &ifx).is_err() {
                caught.0 += 1;
            }
        }
        if let Some((addr, _)) = agent
            .pr
            .maps()
            .identities
            .iter()
            .next()
            .map(|(a, i)| (*a, *i))
        {
            agent.pr.maps_mut().identities.insert(addr, 999_999);
            if agent.check(&s, &plan, &stats, &ifx).is_err() {
                caught.1 += 1;
            }
        }
    }
    println!("caught {caught:?}");
    assert!(caught.0 >= 10 && caught.1 >= 10, "caught {caught:?}");
}
