//! The incremental compiler (`Compiler`) against the plain one (`compile`): after every
//! step of random change sequences, the two plans are equal. The sequences move pods
//! between nodes, relabel them (often to another pod's labels, so that identities are
//! shared), reuse each other's addresses, end, and come and go, with an occasional
//! policy or namespace change. The test also checks that the incremental path was taken
//! often, so it cannot pass by always compiling in full.
//! NETPOL_INCR_SEED / NETPOL_INCR_SEQUENCES / NETPOL_INCR_STEPS replay or scale it.

use std::net::{IpAddr, Ipv4Addr};

use netpol_agent::compile::{Compiler, compile};
use netpol_agent::state::{ClusterState, ObjectRef, PodInfo};
use netpol_tests::generate::{self, NODES, Rng};
use netpol_tests::scale::{self, Generator};

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

/// One random change; returns what it did, for the failure message.
fn mutate(rng: &mut Rng, s: &mut ClusterState, nodes: &[&str], step: usize) -> String {
    let Some((r, p)) = random_pod(rng, s) else {
        return "nothing".into();
    };
    let (r, mut p) = (r.clone(), p.clone());
    let other = random_pod(rng, s).map(|(r, p)| (r.clone(), p.clone()));
    let what = match rng.below(10) {
        0 => {
            s.pods.remove(&r);
            return format!("delete {r}");
        }
        1 => {
            let name = ObjectRef::new(r.namespace.clone(), format!("copy-{step}"));
            if rng.chance(50) {
                p.ips = vec![IpAddr::V4(Ipv4Addr::new(
                    10,
                    99,
                    (step >> 8) as u8,
                    step as u8,
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
                p.ports = o.ports.clone();
            }
            "take another pod's labels and ports"
        }
        5 => {
            if let Some((_, o)) = &other {
                p.ips = o.ips.clone();
            }
            "take another pod's addresses"
        }
        6 => {
            p.terminated = !p.terminated;
            "toggle terminated"
        }
        7 => {
            p.host_network = !p.host_network;
            "toggle host network"
        }
        8 => {
            p.labels
                .insert("extra".into(), format!("v{}", rng.below(2)));
            "relabel"
        }
        _ => {
            if rng.chance(50) {
                if let Some(l) = s.namespaces.values_mut().next() {
                    l.insert("team".into(), format!("t{}", rng.below(2)));
                }
                return "namespace relabelled".into();
            }
            if let Some(pol) = s.policies.values_mut().next()
                && let Some(spec) = pol.spec.as_mut()
            {
                spec.ingress = None;
            }
            return "a policy's ingress rules removed".into();
        }
    };
    s.pods.insert(r.clone(), p);
    format!("{what}: {r}")
}

/// `mutate`, and now and then a change only ClusterNetworkPolicy sees: a node relabelled
/// (what `nodes` peers select) or a ClusterNetworkPolicy removed.
fn mutate_with_cnp(rng: &mut Rng, s: &mut ClusterState, nodes: &[&str], step: usize) -> String {
    if !rng.chance(10) {
        return mutate(rng, s, nodes, step);
    }
    if rng.chance(50)
        && let Some((name, n)) = s.nodes.iter_mut().next()
    {
        n.labels.insert("zone".into(), format!("z{}", rng.below(3)));
        return format!("node {name} relabelled");
    }
    match s.cluster_policies.keys().next().cloned() {
        Some(name) => {
            s.cluster_policies.remove(&name);
            format!("cluster policy {name} removed")
        }
        None => "nothing".into(),
    }
}

type Mutation = fn(&mut Rng, &mut ClusterState, &[&str], usize) -> String;

fn check_sequence(
    s: ClusterState,
    node: &str,
    nodes: &[&str],
    rng: &mut Rng,
    steps: usize,
    label: &str,
) -> (usize, usize) {
    let c = check_sequence_with(s, node, nodes, rng, steps, label, mutate);
    (c.incremental, c.total)
}

/// Plans of a sequence: how many, how many incremental, and how many of those while a
/// ClusterNetworkPolicy existed.
struct Counts {
    total: usize,
    incremental: usize,
    incremental_under_cnp: usize,
}

fn check_sequence_with(
    mut s: ClusterState,
    node: &str,
    nodes: &[&str],
    rng: &mut Rng,
    steps: usize,
    label: &str,
    mutate: Mutation,
) -> Counts {
    let mut compiler = Compiler::default();
    let mut history = Vec::new();
    let mut c = Counts {
        total: 0,
        incremental: 0,
        incremental_under_cnp: 0,
    };
    for step in 0..steps {
        let got = compiler.compile(&s, node);
        let want = compile(&s, node);
        // As the agent does after programming; sometimes not, which must only cost a
        // full compile next time.
        if rng.chance(90) {
            compiler.remember(&s, &got);
        }
        assert!(
            got == want,
            "{label}, step {step}: the incremental plan differs from a full compile\nchanges so far: {history:#?}\nincremental: {got:#?}\nfull: {want:#?}"
        );
        if compiler.last_was_incremental {
            c.incremental += 1;
            if !s.cluster_policies.is_empty() {
                c.incremental_under_cnp += 1;
            }
        }
        c.total += 1;
        history.push(mutate(rng, &mut s, nodes, step));
    }
    c
}

#[test]
fn incremental_equals_full_on_generated_clusters() {
    let seed = env_or("NETPOL_INCR_SEED", 1);
    let sequences = env_or("NETPOL_INCR_SEQUENCES", 300);
    let steps = env_or("NETPOL_INCR_STEPS", 40) as usize;
    let (mut incremental, mut total) = (0, 0);
    for i in 0..sequences {
        let mut rng = Rng::new(seed.wrapping_mul(1_000_003).wrapping_add(i));
        let s = generate::cluster(&mut rng);
        let label = format!("NETPOL_INCR_SEED={seed}, sequence {i}");
        let (a, b) = check_sequence(s, NODES[0], &NODES, &mut rng, steps, &label);
        incremental += a;
        total += b;
    }
    println!("{incremental} of {total} plans were incremental");
    // The first plan of each sequence is always full; most changes are not local.
    assert!(
        incremental * 8 >= total,
        "only {incremental} of {total} plans took the incremental path"
    );
}

/// The same with ClusterNetworkPolicies of both tiers (and the nodes their `nodes` peers
/// select) in every cluster: their tables depend on the set of identities too, so remote
/// changes stay incremental while any exists.
#[test]
fn incremental_equals_full_with_cluster_network_policies() {
    let seed = env_or("NETPOL_INCR_SEED", 1);
    let sequences = env_or("NETPOL_INCR_SEQUENCES", 300);
    let steps = env_or("NETPOL_INCR_STEPS", 40) as usize;
    let (mut incremental, mut total, mut with_cnp, mut under_cnp) = (0, 0, 0, 0);
    for i in 0..sequences {
        let mut rng = Rng::new(seed.wrapping_mul(1_000_033).wrapping_add(i));
        let mut s = generate::cluster(&mut rng);
        generate::add_cluster_policies(&mut rng, &mut s);
        if !s.cluster_policies.is_empty() {
            with_cnp += 1;
        }
        let label = format!("with CNPs, NETPOL_INCR_SEED={seed}, sequence {i}");
        let c = check_sequence_with(
            s,
            NODES[0],
            &NODES,
            &mut rng,
            steps,
            &label,
            mutate_with_cnp,
        );
        incremental += c.incremental;
        total += c.total;
        under_cnp += c.incremental_under_cnp;
    }
    println!(
        "{incremental} of {total} plans were incremental, {under_cnp} of them while a ClusterNetworkPolicy existed ({with_cnp} sequences had one)"
    );
    assert!(
        with_cnp * 2 >= sequences,
        "only {with_cnp} of {sequences} sequences had a ClusterNetworkPolicy"
    );
    assert!(
        under_cnp * 16 >= total,
        "only {under_cnp} of {total} plans took the incremental path under a ClusterNetworkPolicy"
    );
}

#[test]
fn incremental_equals_full_on_a_synthetic_cluster() {
    let seed = env_or("NETPOL_INCR_SEED", 1);
    for generator in [Generator::Narrow, Generator::Broad] {
        let mut rng = Rng::new(seed);
        let s = scale::cluster(generator, 600).expect("cluster");
        let nodes: Vec<String> = (0..5).map(|n| format!("node-{n}")).collect();
        let nodes: Vec<&str> = nodes.iter().map(String::as_str).collect();
        let label = format!("{} 600, NETPOL_INCR_SEED={seed}", generator.name());
        let (incremental, total) =
            check_sequence(s, scale::LOCAL_NODE, &nodes, &mut rng, 60, &label);
        assert!(
            incremental * 3 >= total,
            "{label}: only {incremental} of {total} plans took the incremental path"
        );
    }
}
