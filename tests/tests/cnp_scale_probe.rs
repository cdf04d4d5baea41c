//! Measurement, not a check: what ClusterNetworkPolicy costs `compile::compile` (now
//! NetworkPolicy's compile plus `compile::tiers::apply`, which resolves tier tables per
//! local pod and direction with `tiers::resolve`). Prints a table; asserts nothing about
//! time. Clusters are the control-plane bench's (`netpol_tests::scale::cluster`: pods over
//! 100 nodes, so pods/100 local pods on `node-0`, namespaces of 100 pods, deployments of
//! 10 replicas with one NetworkPolicy each).
//!
//! Cases:
//! * `none`: no ClusterNetworkPolicy.
//! * `unrelated`: one Admin policy whose subject is a single pod of another node (it
//!   changes nothing on this node's plan).
//! * `one-admin`: one Admin policy, subject every namespace, two egress rules: a Deny to
//!   networks, then an Accept to pods by label (`tier: tier-1`, a third of all pods).
//! * `ten-mixed`: ten policies, Admin and Baseline alternating, subjects by namespace or
//!   by pod label, ingress and egress rules with pod and namespace peers.
//!
//! Columns: `compile` = `compile::compile` (median of the runs); `np` =
//! `compile_network_policies` alone; `resolve` = `tiers::resolve` on NetworkPolicy's plan;
//! `apply` = `tiers::apply` on a copy of that plan (resolve included); `sets` = the plan's
//! rule sets (ordered ones in brackets). Then, per size and case, what one relabelled
//! remote pod costs the programmer (`MemoryMaps`): renewed sets and peer entries written
//! (cea5b4b renews ordered sets on every identity move that changes their entries), and
//! what the maps hold before (`by_identity`: PEERS_BY_IDENTITY entries, default size
//! 262,144; `cidr`: PEERS_CIDR entries, default 65,536). A renewal writes the set in full
//! under its new id before the old one goes.
//!
//! Run: `cargo test --release -p netpol-tests --test cnp_scale_probe -- --ignored --nocapture`
//! (sizes: `NETPOL_CNP_PROBE_SIZES=1000,4000`, default 1000,4000,10000 in release and
//! 1000 in a debug build; runs per point: `NETPOL_CNP_PROBE_RUNS`, default 3; generators:
//! `NETPOL_CNP_PROBE_GENERATORS=narrow,broad`, default narrow).

use std::collections::BTreeMap;
use std::time::Instant;

use netpol_agent::compile::{compile, compile_network_policies, tiers};
use netpol_agent::program::Programmer;
use netpol_agent::program::memory::MemoryMaps;
use netpol_agent::sources::cnp::ClusterNetworkPolicy;
use netpol_agent::state::ClusterState;
use netpol_tests::scale::{self, Generator, LOCAL_NODE};
use serde_json::{Value, json};

fn cnp(name: &str, spec: Value) -> ClusterNetworkPolicy {
    scale::cluster_policy(name, spec).expect("a ClusterNetworkPolicy")
}

fn one_admin(s: &mut ClusterState) {
    let (name, policy) = scale::admin_egress().expect("a ClusterNetworkPolicy");
    s.cluster_policies.insert(name, policy);
}

/// One Admin policy whose subject is one pod (not on the compiled node): no local pod is
/// selected, so the tiers change nothing in the plan.
fn one_unrelated(s: &mut ClusterState) {
    s.cluster_policies.insert(
        "admin-one-pod".into(),
        cnp(
            "admin-one-pod",
            json!({"tier": "Admin", "priority": 10,
            "subject": {"pods": {"namespaceSelector": {},
                "podSelector": {"matchLabels": {"app": scale::app_of(15)}}}},
            "egress": [
              {"action": "Deny", "to": [{"networks": ["192.0.2.0/24"]}]}
            ]}),
        ),
    );
}

fn ns(i: usize) -> Value {
    json!({"matchLabels": {"kubernetes.io/metadata.name": format!("ns-{i}")}})
}

fn ten_mixed(s: &mut ClusterState, pods: usize) {
    let namespaces = pods.div_ceil(scale::POD_PER_NAMESPACE);
    for i in 0..10usize {
        let tier = if i % 2 == 0 { "Admin" } else { "Baseline" };
        let subject = match i % 3 {
            0 => json!({"namespaces": {}}),
            1 => json!({"namespaces": ns(i % namespaces)}),
            _ => json!({"pods": {"namespaceSelector": {},
                                 "podSelector": {"matchLabels": {"tier": format!("tier-{}", i % 3)}}}}),
        };
        let app = scale::app_of((i * 37 * scale::REPLICAS) % pods);
        let actions = ["Accept", "Deny", "Pass"];
        let a = |k: usize| {
            let act = actions[(i + k) % 3];
            if tier == "Baseline" && act == "Pass" {
                "Accept"
            } else {
                act
            }
        };
        let spec = json!({
            "tier": tier,
            "priority": 10 + i,
            "subject": subject,
            "ingress": [
                {"action": a(0), "from": [{"pods": {"namespaceSelector": {},
                    "podSelector": {"matchLabels": {"app": app}}}}],
                 "protocols": [{"tcp": {"destinationPort": {"number": 8080}}}]},
                {"action": a(1), "from": [{"namespaces": ns((i + 1) % namespaces)}]}
            ],
            "egress": [
                {"action": a(2), "to": [{"namespaces": ns((i + 2) % namespaces)}]},
                {"action": a(0), "to": [{"pods": {"namespaceSelector": {},
                    "podSelector": {"matchLabels": {"tier": format!("tier-{}", (i + 1) % 3)}}}}],
                 "protocols": [{"tcp": {"destinationPort": {"range": {"start": 8000, "end": 8100}}}}]}
            ]
        });
        let name = format!("cnp-{i}");
        s.cluster_policies.insert(name.clone(), cnp(&name, spec));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time<T>(runs: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let t = Instant::now();
        let out = f();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
        last = Some(out);
    }
    (median(times), last.expect("one run"))
}

fn env_list(name: &str, default: &[usize]) -> Vec<usize> {
    match std::env::var(name) {
        Ok(v) => v.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) => default.to_vec(),
    }
}

#[test]
#[ignore = "a measurement, run by hand (see the module's doc): it asserts nothing"]
fn cnp_scale_probe_compile_cost() {
    // A debug build (a plain `cargo test`) measures the smallest size only.
    let default_sizes: &[usize] = if cfg!(debug_assertions) {
        &[1000]
    } else {
        &[1000, 4000, 10000]
    };
    let sizes = env_list("NETPOL_CNP_PROBE_SIZES", default_sizes);
    let runs = env_list("NETPOL_CNP_PROBE_RUNS", &[3])[0].max(1);
    let generators: Vec<Generator> = match std::env::var("NETPOL_CNP_PROBE_GENERATORS") {
        Ok(v) if v.contains("broad") && v.contains("narrow") => {
            vec![Generator::Narrow, Generator::Broad]
        }
        Ok(v) if v.contains("broad") => vec![Generator::Broad],
        _ => vec![Generator::Narrow],
    };
    println!(
        "\n{:<7} {:<7} {:>6} {:>6} {:<10} {:>10} {:>9} {:>10} {:>9} {:>12}",
        "gen",
        "pods",
        "local",
        "idents",
        "case",
        "compile_ms",
        "np_ms",
        "resolve_ms",
        "apply_ms",
        "sets(ord)"
    );
    let mut renewals = Vec::new();
    let mut changes = Vec::new();
    for generator in &generators {
        for &pods in &sizes {
            let base = scale::cluster(*generator, pods).expect("cluster");
            for case in ["none", "unrelated", "one-admin", "ten-mixed"] {
                let mut s = base.clone();
                match case {
                    "one-admin" => one_admin(&mut s),
                    "unrelated" => one_unrelated(&mut s),
                    "ten-mixed" => ten_mixed(&mut s, pods),
                    _ => {}
                }
                let (compile_ms, plan) = time(runs, || compile(&s, LOCAL_NODE));
                assert!(plan.errors.is_empty(), "{:?}", plan.errors);
                let (np_ms, np_plan) = time(runs, || compile_network_policies(&s, LOCAL_NODE));
                let (resolve_ms, tables) = time(runs, || tiers::resolve(&s, &np_plan));
                let (apply_ms, _) = time(runs, || {
                    let mut p = np_plan.clone();
                    tiers::apply(&s, &mut p);
                    p
                });
                let ordered = plan
                    .rule_sets
                    .iter()
                    .filter(|r| r.ordered.is_some())
                    .count();
                let idents = {
                    let mut seen = std::collections::HashSet::new();
                    plan.identities
                        .values()
                        .filter(|i| seen.insert(std::sync::Arc::as_ptr(i)))
                        .count()
                };
                println!(
                    "{:<7} {:<7} {:>6} {:>6} {:<10} {:>10.1} {:>9.1} {:>10.1} {:>9.1} {:>6} ({:>3})",
                    generator.name(),
                    pods,
                    plan.endpoints.len(),
                    idents,
                    case,
                    compile_ms,
                    np_ms,
                    resolve_ms,
                    apply_ms,
                    plan.rule_sets.len(),
                    ordered,
                );
                drop(tables);

                // A change as the agent compiles it (`Compiler`, incremental where it can
                // be): a new replica of deployment 0 on another node.
                let mut compiler = netpol_agent::compile::Compiler::default();
                let p0 = compiler.compile(&s, LOCAL_NODE);
                compiler.remember(&s, &p0);
                let mut added = s.clone();
                let new = pods + 1000;
                let mut replica = scale::pod(new, &scale::app_of(0));
                replica.node = Some("node-1".into());
                added.pods.insert(
                    netpol_agent::state::ObjectRef::new(
                        scale::namespace_of(0),
                        format!("pod-{new}"),
                    ),
                    replica,
                );
                let t = Instant::now();
                let _ = compiler.compile(&added, LOCAL_NODE);
                changes.push(format!(
                    "{:<7} {:<7} {:<10} pod_add_compile_ms {:>8.1}",
                    generator.name(),
                    pods,
                    case,
                    t.elapsed().as_secs_f64() * 1000.0
                ));

                // One remote pod relabelled to another deployment's labels: what the
                // programmer renews (all measured on MemoryMaps, no kernel).
                let mut pr = Programmer::new(MemoryMaps::default(), 100_000);
                let t = Instant::now();
                pr.apply(&plan, &BTreeMap::new()).expect("programmed");
                let first_ms = t.elapsed().as_secs_f64() * 1000.0;
                let held = {
                    use netpol_agent::program::MapOps;
                    let e = pr.maps().existing().expect("existing");
                    (e.identity_peers.len(), e.peers.len())
                };
                let mut moved = s.clone();
                let remote = scale::pod_ref(1); // node-1: never local
                let other_app = scale::app_of(scale::REPLICAS * 3);
                moved
                    .pods
                    .get_mut(&remote)
                    .expect("pod 1")
                    .labels
                    .insert("app".into(), other_app);
                moved
                    .pods
                    .get_mut(&remote)
                    .expect("pod 1")
                    .labels
                    .insert("tier".into(), "tier-0".into());
                let t = Instant::now();
                let plan2 = compile(&moved, LOCAL_NODE);
                let compile2_ms = t.elapsed().as_secs_f64() * 1000.0;
                let t = Instant::now();
                let stats = pr.apply(&plan2, &BTreeMap::new()).expect("programmed");
                let apply2_ms = t.elapsed().as_secs_f64() * 1000.0;
                renewals.push(format!(
                    "{:<7} {:<7} {:<10} first_apply_ms {:>8.1} held: by_identity {:>7} cidr {:>6} | relabel: compile_ms {:>8.1} apply_ms {:>8.1} sets_added {:>4} renewed {:>4} peer_entries_written {:>7}",
                    generator.name(),
                    pods,
                    case,
                    first_ms,
                    held.0,
                    held.1,
                    compile2_ms,
                    apply2_ms,
                    stats.rule_sets_added,
                    stats.rule_sets_renewed,
                    stats.peer_entries_written
                ));
            }
        }
    }
    println!("\nOne remote pod added, compiled as the agent does (`Compiler`):");
    for c in changes {
        println!("{c}");
    }
    println!("\nOne remote pod relabelled (programmer on MemoryMaps):");
    for r in renewals {
        println!("{r}");
    }
}

/// The same relabel on the kernel's maps, at the default map sizes (`--peer-entries`
/// 262,144, `--identity-entries` 131,072): what a renewal costs in map writes, and whether
/// the ordered sets fit at all. Root only, and only with `NETPOL_CNP_PROBE_KERNEL=1`
/// (loads the BPF object; attaches nothing).
#[test]
#[ignore = "a measurement, run by hand as root with NETPOL_CNP_PROBE_KERNEL=1: it asserts nothing"]
fn cnp_scale_probe_kernel_renewal() {
    // SAFETY: geteuid has no preconditions.
    if std::env::var_os("NETPOL_CNP_PROBE_KERNEL").is_none() || unsafe { libc::geteuid() } != 0 {
        println!("cnp_scale_probe_kernel_renewal: skipped (root and NETPOL_CNP_PROBE_KERNEL=1)");
        return;
    }
    use netpol_agent::datapath::{AttachMode, Datapath, MapSizes};
    let pods = env_list("NETPOL_CNP_PROBE_SIZES", &[10000])
        .into_iter()
        .max()
        .unwrap_or(10000);
    println!();
    for case in ["one-admin", "ten-mixed"] {
        let mut s = scale::cluster(Generator::Narrow, pods).expect("cluster");
        match case {
            "one-admin" => one_admin(&mut s),
            _ => ten_mixed(&mut s, pods),
        }
        let sizes = MapSizes {
            conntrack_entries: 1024,
            conntrack_new_entries: 1024,
            peer_entries: netpol_common::sizes::PEERS_BY_IDENTITY,
            identity_entries: netpol_common::sizes::IDENTITIES,
            cidr_entries: netpol_common::sizes::PEERS_CIDR,
            service_entries: 1024,
            portset_entries: 4096,
        };
        let mut dp = Datapath::load(AttachMode::Auto, &sizes, None).expect("load BPF");
        let maps = dp.take_maps().expect("maps");
        let mut pr = Programmer::new(maps, netpol_common::sizes::COUNTERS);
        let plan = compile(&s, LOCAL_NODE);
        let t = Instant::now();
        let first = pr.apply(&plan, &BTreeMap::new()).expect("programmed");
        let first_ms = t.elapsed().as_secs_f64() * 1000.0;
        let remote = scale::pod_ref(1);
        let p = s.pods.get_mut(&remote).expect("pod 1");
        p.labels
            .insert("app".into(), scale::app_of(scale::REPLICAS * 3));
        p.labels.insert("tier".into(), "tier-0".into());
        let plan2 = compile(&s, LOCAL_NODE);
        let t = Instant::now();
        let second = pr.apply(&plan2, &BTreeMap::new()).expect("programmed");
        let second_ms = t.elapsed().as_secs_f64() * 1000.0;
        println!(
            "kernel maps, narrow {pods} {case}: first apply {first_ms:.0} ms, {} peer entries, overflowed pods {} ({:?}) | relabel apply {second_ms:.0} ms, renewed {}, entries written {}, overflowed pods {} ({:?})",
            first.peer_entries_written,
            first.overflowed.len(),
            first.overflow_error,
            second.rule_sets_renewed,
            second.peer_entries_written,
            second.overflowed.len(),
            second.overflow_error,
        );
        drop(pr);
        drop(dp);
    }
}
