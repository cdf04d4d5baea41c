//! Attack on shared Admin tables and Baseline pruning (812096a, 579ba6d): random change
//! sequences applied to ONE `Programmer` (so renewals, superseded sets, held and
//! released Admin tables carry over from apply to apply), sometimes through a restart
//! (`Programmer::adopt` on the same maps). After every apply:
//!
//! - every local pod's maps (`MemoryMaps::rule_from`, with the rule named through the
//!   pod's rule names) decide as `Plan::decide_from` does, rule included;
//! - no Admin table or `ADMIN_TABLES` entry is left behind, and none a set in use needs
//!   is missing.
//!
//! NETPOL_ATK_ADMIN_SEED / NETPOL_ATK_ADMIN_SEQUENCES replay or scale it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netpol_agent::compile::{Direction, Plan, compile};
use netpol_agent::program::memory::MemoryMaps;
use netpol_agent::program::{Programmer, addr_of};
use netpol_agent::state::{ClusterState, ObjectRef, PodInfo};
use netpol_common::{
    RULESET_ADMIN_TABLE, RULESET_ALLOW_ALL, RULESET_HAS_ADMIN, RULESET_ORDERED, ruleset_base,
};
use netpol_tests::generate::{self, NODES, OUTSIDE, PROTOCOLS, Rng};

const LOCAL: &str = NODES[0];

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn random_pod<'a>(rng: &mut Rng, s: &'a ClusterState) -> Option<(&'a ObjectRef, &'a PodInfo)> {
    let n = s.pods.len();
    (n > 0).then(|| s.pods.iter().nth(rng.below(n))).flatten()
}

/// One random change: ClusterNetworkPolicies (added from the generator, removed), NPs
/// removed, namespaces relabelled, pods relabelled, moved, deleted, copied, addresses
/// taken from another pod.
fn mutate(rng: &mut Rng, s: &mut ClusterState, step: usize) -> String {
    match rng.below(24) {
        0 | 1 => {
            let name = format!("cnp-x{}", rng.below(3));
            let mut t = generate::cluster(rng);
            generate::add_cluster_policies(rng, &mut t);
            if let Some(p) = t.cluster_policies.values().nth(rng.below(2)) {
                s.cluster_policies.insert(name.clone(), p.clone());
            }
            return format!("cluster policy {name} set");
        }
        2 => {
            let n = s.cluster_policies.len();
            if n > 0
                && let Some(k) = s.cluster_policies.keys().nth(rng.below(n)).cloned()
            {
                s.cluster_policies.remove(&k);
            }
            return "a cluster policy removed".into();
        }
        3 => {
            let n = s.policies.len();
            if n > 0
                && let Some(k) = s.policies.keys().nth(rng.below(n)).cloned()
            {
                s.policies.remove(&k);
                return format!("policy {k} removed");
            }
            return "nothing".into();
        }
        4 => {
            let mut t = generate::cluster(rng);
            generate::add_cluster_policies(rng, &mut t);
            let n = t.policies.len();
            if n > 0
                && let Some((k, v)) = t.policies.iter().nth(rng.below(n))
            {
                s.policies.insert(k.clone(), v.clone());
                return format!("policy {k} set");
            }
            return "nothing".into();
        }
        5 => {
            let ns = ["ns-a", "ns-b", "ns-c"][rng.below(3)];
            if let Some(l) = s.namespaces.get_mut(ns) {
                l.insert("team".into(), format!("t{}", rng.below(2)));
            }
            return "namespace relabelled".into();
        }
        _ => {}
    }
    let Some((r, p)) = random_pod(rng, s) else {
        return "nothing".into();
    };
    let (r, mut p) = (r.clone(), p.clone());
    let other = random_pod(rng, s).map(|(_, p)| p.clone());
    let what = match rng.below(10) {
        0 => {
            s.pods.remove(&r);
            return format!("delete {r}");
        }
        1 => {
            let name = ObjectRef::new(r.namespace.clone(), format!("copy-{step}"));
            p.ips = vec![if rng.chance(80) {
                IpAddr::V4(Ipv4Addr::new(10, 99, rng.below(4) as u8, step as u8))
            } else {
                IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 9, step as u16))
            }];
            p.node = Some(rng.pick(&NODES).to_string());
            s.pods.insert(name.clone(), p);
            return format!("add {name} (a copy of {r})");
        }
        2 => {
            p.node = Some(rng.pick(&NODES).to_string());
            "move"
        }
        3..=5 => {
            if let Some(o) = &other {
                p.labels = o.labels.clone();
                p.ports = o.ports.clone();
            }
            "take another pod's labels and ports"
        }
        6 => {
            // Address reuse: the other pod's addresses go to this one.
            if let Some((or, op)) = random_pod(rng, s).map(|(a, b)| (a.clone(), b.clone())) {
                let ips = op.ips.clone();
                let mut op = op;
                op.ips.clear();
                s.pods.insert(or, op);
                p.ips = ips;
            }
            "take another pod's addresses (it loses them)"
        }
        7 => {
            p.labels
                .insert("extra".into(), format!("v{}", rng.below(2)));
            "relabel"
        }
        _ => {
            p.labels.remove("extra");
            "unlabel"
        }
    };
    s.pods.insert(r.clone(), p);
    format!("{what}: {r}")
}

fn peers(s: &ClusterState) -> Vec<IpAddr> {
    let mut out: BTreeSet<IpAddr> = s.pods.values().flat_map(|p| p.ips.clone()).collect();
    out.extend(s.nodes.values().flat_map(|n| n.ips.clone()));
    out.extend(OUTSIDE.iter().filter_map(|a| a.parse::<IpAddr>().ok()));
    out.insert("10.99.1.200".parse().expect("ip"));
    out.into_iter().collect()
}

/// Every local pod whose endpoint points at its plan's sets decides as the plan does,
/// rule included. Returns the mismatches.
fn mismatches(plan: &Plan, s: &ClusterState, pr: &Programmer<MemoryMaps>) -> Vec<String> {
    let m = pr.maps();
    let node_ips: Vec<IpAddr> = s
        .nodes
        .get(LOCAL)
        .map(|n| n.ips.clone())
        .unwrap_or_default();
    let mut out = Vec::new();
    for ep in &plan.endpoints {
        let Some(ip) = ep.ips.first() else { continue };
        let Some(info) = m.endpoints.get(&addr_of(*ip)) else {
            out.push(format!("{}: no endpoint", ep.pod));
            continue;
        };
        for dir in [Direction::Ingress, Direction::Egress] {
            let set = match dir {
                Direction::Ingress => info.ingress_set,
                Direction::Egress => info.egress_set,
            };
            for peer in peers(s) {
                if ep.ips.contains(&peer) {
                    continue;
                }
                let own_node = node_ips.contains(&peer);
                for protocol in PROTOCOLS {
                    for port in [53u16, 80, 81, 443, 8080] {
                        let want = plan
                            .decide_from(ep, dir, peer, protocol, port, own_node)
                            .map(|r| r.map(|r| r.to_string()));
                        let got =
                            m.rule_from(set, peer, protocol, port, own_node)
                                .map(|position| {
                                    (position != 0)
                                        .then(|| ep.rules.name(dir, position))
                                        .flatten()
                                        .map(|r| r.to_string())
                                });
                        if got != want {
                            out.push(format!(
                                "{} {dir} set {set:#x} with {peer} {protocol:?}/{port} own_node={own_node}: maps {got:?}, plan {want:?}",
                                ep.pod
                            ));
                        }
                    }
                }
            }
        }
    }
    out
}

/// Admin tables and their names: exactly those the sets endpoints point at need.
/// `strict`: every set the plan wants is in use (no local pod without an address, whose
/// sets are written but pointed at by nothing).
fn leaks(m: &MemoryMaps, strict: bool) -> Vec<String> {
    let mut out = Vec::new();
    let used: BTreeSet<u32> = (m.endpoints.values())
        .flat_map(|e| {
            [
                e.ingress_set,
                e.egress_set,
                e.audit_ingress_set,
                e.audit_egress_set,
            ]
        })
        .filter(|s| *s != RULESET_ALLOW_ALL)
        .collect();
    let need: BTreeSet<u32> = (used.iter())
        .filter(|s| *s & RULESET_HAS_ADMIN != 0)
        .map(|s| ruleset_base(*s))
        .collect();
    let named: BTreeSet<u32> = m.admin_tables.keys().copied().collect();
    for s in need.difference(&named) {
        out.push(format!(
            "set {s} is in use with an Admin table but not named"
        ));
    }
    for s in named.difference(&need).filter(|_| strict) {
        out.push(format!(
            "ADMIN_TABLES names set {s} (table {}), which no endpoint uses",
            m.admin_tables[s]
        ));
    }
    let tables: BTreeSet<u32> = m.admin_tables.values().copied().collect();
    let keys = (m.by_identity.keys().map(|k| k.ruleset))
        .chain(m.cidr.keys().map(|(s, _, _)| u32::from_be_bytes(*s)));
    let mut with_entries = BTreeSet::new();
    for key in keys {
        if key & RULESET_ADMIN_TABLE != 0 {
            with_entries.insert(ruleset_base(key));
        } else if strict && key & RULESET_ORDERED != 0 && !used.contains(&key) {
            out.push(format!(
                "ordered set {key:#x} has entries but no endpoint uses it"
            ));
        }
    }
    for t in with_entries.difference(&tables) {
        out.push(format!("Admin table {t} has entries but no set names it"));
    }
    for t in tables.difference(&with_entries) {
        out.push(format!("Admin table {t} is named but has no entries"));
    }
    out.sort();
    out.dedup();
    out
}

/// Under an overflow: every set in use with an Admin table names one that has entries.
fn dangling(m: &MemoryMaps) -> Vec<String> {
    let keys: BTreeSet<u32> = (m.by_identity.keys().map(|k| k.ruleset))
        .chain(m.cidr.keys().map(|(s, _, _)| u32::from_be_bytes(*s)))
        .filter(|k| k & RULESET_ADMIN_TABLE != 0)
        .map(ruleset_base)
        .collect();
    let mut out = Vec::new();
    for e in m.endpoints.values() {
        for set in [e.ingress_set, e.egress_set] {
            if set & RULESET_HAS_ADMIN == 0 {
                continue;
            }
            match m.admin_tables.get(&ruleset_base(set)) {
                None => out.push(format!("set {set:#x} in use names no Admin table")),
                Some(t) if !keys.contains(t) => out.push(format!(
                    "set {set:#x} in use names table {t}, which has no entries"
                )),
                Some(_) => {}
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn run(seed: u64, sequences: u64, restarts: bool) {
    run_with(seed, sequences, restarts, false)
}

fn run_with(seed: u64, sequences: u64, restarts: bool, overflows: bool) {
    let mut checked = 0u64;
    let mut with_admin = 0u64;
    for i in 0..sequences {
        let mut rng = Rng::new(seed.wrapping_mul(1_000_003).wrapping_add(i));
        let mut s = generate::cluster(&mut rng);
        generate::add_cluster_policies(&mut rng, &mut s);
        let mut pr = Programmer::new(MemoryMaps::default(), 8192);
        let mut history: Vec<String> = Vec::new();
        for step in 0..25 {
            if restarts && step > 0 && rng.chance(20) {
                let maps = std::mem::take(pr.maps_mut());
                pr = Programmer::new(maps, 8192);
                pr.adopt().expect("adopted");
                history.push("restart (adopt)".into());
            }
            let plan = compile(&s, LOCAL);
            if overflows && rng.chance(40) {
                // Room for a few entries more than what is there.
                let m = pr.maps_mut();
                m.peer_capacity = Some(m.by_identity.len() + m.cidr.len() + rng.below(12));
                let stats = pr.apply(&plan, &BTreeMap::new()).expect("applied");
                let d = dangling(pr.maps());
                assert!(
                    d.is_empty(),
                    "seed {seed}, sequence {i}, step {step} (full maps, {stats:?})\nchanges: {history:#?}\n{d:#?}"
                );
                history.push(format!(
                    "apply with full maps: {} overflowed",
                    stats.overflowed.len()
                ));
                pr.maps_mut().peer_capacity = None;
            }
            let stats = pr.apply(&plan, &BTreeMap::new()).expect("applied");
            assert!(stats.overflowed.is_empty(), "unbounded maps overflowed");
            let bad = mismatches(&plan, &s, &pr);
            let all_ips: Vec<IpAddr> = plan.endpoints.iter().flat_map(|e| e.ips.clone()).collect();
            let distinct: BTreeSet<&IpAddr> = all_ips.iter().collect();
            let strict =
                plan.endpoints.iter().all(|e| !e.ips.is_empty()) && distinct.len() == all_ips.len();
            let leaked = leaks(pr.maps(), strict);
            assert!(
                bad.is_empty() && leaked.is_empty(),
                "seed {seed}, sequence {i}, step {step}\nchanges: {history:#?}\nmismatches ({}): {:#?}\nleaks: {leaked:#?}",
                bad.len(),
                bad.iter().take(10).collect::<Vec<_>>()
            );
            checked += 1;
            with_admin += u64::from(!pr.maps().admin_tables.is_empty());
            for _ in 0..1 + rng.below(2) {
                history.push(mutate(&mut rng, &mut s, step));
            }
        }
    }
    println!("{checked} applies checked, {with_admin} with Admin tables");
    assert!(with_admin * 5 >= checked, "too few with Admin tables");
}

/// Guard: along random sequences, one programmer's maps decide as each plan does and
/// keep exactly the Admin tables in use.
#[test]
fn attack_admin_tables_random_sequences_decide_as_the_plan_and_leak_nothing() {
    run(
        env_or("NETPOL_ATK_ADMIN_SEED", 11),
        env_or("NETPOL_ATK_ADMIN_SEQUENCES", 120),
        false,
    );
}

/// Guard: the same with applies on full maps (then again with room) and restarts.
#[test]
fn attack_admin_tables_random_sequences_with_overflows() {
    run_with(
        env_or("NETPOL_ATK_ADMIN_SEED", 37),
        env_or("NETPOL_ATK_ADMIN_SEQUENCES", 120),
        true,
        true,
    );
}

/// Guard: the same with restarts (adopt) in between.
#[test]
fn attack_admin_tables_random_sequences_with_restarts() {
    run(
        env_or("NETPOL_ATK_ADMIN_SEED", 23),
        env_or("NETPOL_ATK_ADMIN_SEQUENCES", 120),
        true,
    );
}
