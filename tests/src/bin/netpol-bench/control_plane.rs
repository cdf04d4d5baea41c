//! Control-plane benchmarks: compile a synthetic cluster (`netpol_tests::scale`) for one
//! node and program the kernel maps, then measure single changes, each from the state
//! change to the maps written (each change 5 times, the median reported). Each
//! (generator, size) runs in a child process so that its resident memory is its own.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use netpol_agent::compile::Compiler;
use netpol_agent::datapath::{AttachMode, Datapath, MapSizes};
use netpol_agent::program::{MapOps, Programmer};
use netpol_agent::state::{ClusterState, ObjectRef};
use netpol_tests::scale::{self, Generator, LOCAL_NODE};

use super::Entry;

/// The cases: each generator's cluster, and the narrow one under an Admin policy that
/// gives every local pod ordered egress sets (`scale::admin_egress`).
const CASES: [(Generator, bool); 3] = [
    (Generator::Narrow, false),
    (Generator::Broad, false),
    (Generator::Narrow, true),
];

fn case_name(generator: Generator, admin: bool) -> String {
    if admin {
        format!("{}-admin", generator.name())
    } else {
        generator.name().to_string()
    }
}

pub fn run_all(sizes: &[usize], results: &mut Vec<Entry>) -> Result<()> {
    let exe = std::env::current_exe().context("locating netpol-bench")?;
    for (generator, admin) in CASES {
        let name = case_name(generator, admin);
        let name = name.as_str();
        for &pods in sizes {
            println!("control plane: {name}, {pods} pods ...");
            let out = Command::new(&exe)
                .args(["--cp-case", name, &pods.to_string()])
                .output()
                .with_context(|| format!("running the {name} {pods} case"))?;
            if !out.status.success() {
                bail!(
                    "the {name} {pods} case failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let entries: Vec<(String, f64, String)> = serde_json::from_slice(&out.stdout)
                .with_context(|| format!("reading the {name} {pods} case's results"))?;
            for (n, v, u) in &entries {
                println!("  {n:<34} {v:>10.1}  {u}");
            }
            results.extend(entries);
        }
        let full = |pods: usize| {
            results
                .iter()
                .find(|(n, _, _)| *n == format!("cp.{name}.{pods}.full_ms"))
                .map(|(_, v, _)| *v)
        };
        if let (Some(first), Some(last)) = (sizes.first(), sizes.last())
            && first != last
            && let (Some(a), Some(b)) = (full(*first), full(*last))
        {
            results.push((format!("cp.{name}.growth"), b / a, "x".into()));
        }
    }
    Ok(())
}

/// One (generator, size): prints its entries as JSON on stdout.
pub fn run_case(case: &[String]) -> Result<()> {
    let [name, pods] = case else {
        bail!("--cp-case CASE PODS (narrow, broad or narrow-admin)");
    };
    let Some((generator, admin)) = CASES
        .into_iter()
        .find(|(g, a)| case_name(*g, *a) == name.as_str())
    else {
        bail!("unknown case {name:?}");
    };
    let pods: usize = pods.parse().context("PODS")?;
    let entries = measure(generator, admin, pods)?;
    println!("{}", serde_json::to_string(&entries)?);
    Ok(())
}

/// Repetitions of each single change.
const ROUNDS: usize = 5;

fn measure(generator: Generator, admin: bool, pods: usize) -> Result<Vec<Entry>> {
    let prefix = format!("cp.{}.{pods}", case_name(generator, admin));
    let mut state = scale::cluster(generator, pods).context("generating the cluster")?;
    if admin {
        let (name, policy) = scale::admin_egress().context("the Admin policy")?;
        state.cluster_policies.insert(name, policy);
    }
    let sizes = MapSizes {
        conntrack_entries: 1024,
        conntrack_new_entries: 1024,
        peer_entries: 262_144,
        identity_entries: 131_072,
        cidr_entries: 1024,
        service_entries: 1024,
        portset_entries: 4096,
    };
    let mut dp = Datapath::load(AttachMode::Auto, &sizes, None).context("loading the datapath")?;
    let maps = dp.take_maps()?;
    let mut programmer = Programmer::new(maps, netpol_common::sizes::COUNTERS);
    let no_ifaces = BTreeMap::new();
    // As the agent does: it remembers its last compile.
    let mut compiler = Compiler::default();
    let mut step = |state: &ClusterState| -> Result<f64> {
        let t = Instant::now();
        let plan = compiler.compile(state, LOCAL_NODE);
        programmer.apply(&plan, &no_ifaces)?;
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        // The agent's bookkeeping once the maps are written (see `Compiler::remember`).
        compiler.remember(state, &plan);
        Ok(ms)
    };
    let mut out: Vec<Entry> = Vec::new();
    out.push((format!("{prefix}.full_ms"), step(&state)?, "ms".into()));

    // Each change is made ROUNDS times (each a real change) and the median reported.
    let mut pod_add = Vec::new();
    let mut label_change = Vec::new();
    let mut policy_change = Vec::new();
    for round in 0..ROUNDS {
        // A new replica of deployment 0, on another node.
        // (Its namespace is deployment 0's, and its node never this one, whatever
        // `new` is.)
        let new = pods + 1000 + round;
        let mut replica = scale::pod(new, &scale::app_of(0));
        replica.node = Some(format!("node-{}", 1 + round % (scale::NODES - 1)));
        state.pods.insert(
            ObjectRef::new(scale::namespace_of(0), format!("pod-{new}")),
            replica,
        );
        pod_add.push(step(&state)?);

        // A pod of another node moves to another deployment's labels (and back).
        let app = scale::app_of(if round % 2 == 0 { scale::REPLICAS } else { 0 });
        if let Some(p) = state.pods.get_mut(&scale::pod_ref(1)) {
            p.labels.insert("app".into(), app);
        }
        label_change.push(step(&state)?);

        // Deployment 0's policy admits another port.
        let port = 8081 + round as u16;
        let changed = serde_json::from_value(scale::policy(generator, 0, port))?;
        state.policies.insert(scale::policy_ref(0), changed);
        policy_change.push(step(&state)?);
    }
    for (name, mut runs) in [
        ("pod_add_ms", pod_add),
        ("label_change_ms", label_change),
        ("policy_change_ms", policy_change),
    ] {
        runs.sort_by(f64::total_cmp);
        out.push((
            format!("{prefix}.{name}"),
            runs[runs.len() / 2],
            "ms".into(),
        ));
    }

    let e = programmer.maps().existing()?;
    let entries = e.endpoints.len()
        + e.ifaces.len()
        + e.peers.len()
        + e.identity_peers.len()
        + e.identities.len()
        + e.portsets.len();
    out.push((
        format!("{prefix}.map_entries"),
        entries as f64,
        "entries".into(),
    ));
    out.push((format!("{prefix}.rss_mb"), rss_mb()?, "MiB".into()));
    drop(dp);
    Ok(out)
}

/// This process's resident memory (VmRSS), holding the state, the programmer's view and
/// the BPF object.
fn rss_mb() -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading VmRSS")?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/self/status")?;
    Ok(kb / 1024.0)
}
