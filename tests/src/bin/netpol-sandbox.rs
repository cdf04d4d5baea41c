//! Runs the sandbox cluster (needs root): `conformance` runs case files on real packets,
//! `demo` shows one tutorial scenario as a table. `cargo xtask conformance` and
//! `cargo xtask demo` build everything and call this.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use netpol_tests::cases::load_cases;
use netpol_tests::conformance::{self, describe};
use netpol_tests::sandbox::{self, Config, Sandbox};
use netpol_tests::scenarios;

#[derive(Parser)]
#[command(about = "netpol's sandbox cluster of network namespaces (run as root)")]
struct Cli {
    /// The agent binary to run on each node.
    #[arg(long)]
    agent: PathBuf,
    /// The probe binary (netpol-probe).
    #[arg(long)]
    probe: PathBuf,
    /// Attach mode passed to the agents.
    #[arg(long, default_value = "auto")]
    attach_mode: String,
    /// Address family of the sandbox: ipv4, or ipv6 (every address and IPv4 ipBlock of
    /// a case embedded in fd00:4::/96).
    #[arg(long, default_value = "ipv4")]
    family: String,
    /// The CNI plugin that networks the pods: none (the sandbox's own veths and /32
    /// routes), ptp (routed) or bridge (bridged), Debian's containernetworking-plugins with host-local IPAM.
    #[arg(long, default_value = "none")]
    cni: String,
    /// How long a probe waits for an answer before calling the connection blocked.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run conformance cases; exits non-zero when a step fails.
    Conformance {
        #[arg(long, num_args = 1.., required = true)]
        cases: Vec<PathBuf>,
    },
    /// Start the sandbox with one case and print its checks as a table, with the agents'
    /// packet counters.
    Demo {
        #[arg(long)]
        cases: PathBuf,
        /// Case id to show.
        #[arg(long, default_value = "seed-000-deny-external-egress")]
        case: String,
    },
    /// Kill and restart the agents under traffic: nothing allowed is lost, nothing denied
    /// gets through.
    Restart,
    /// Drop, stall and fail the API watches during policy changes: the agents converge.
    ApiFaults,
    /// A policy in audit mode on real packets: what it would block connects and is
    /// reported as an audit event; enforced, it blocks.
    Audit,
    /// Policy propagation latency (API write -> maps, -> first packet), p50 and p99.
    Latency {
        #[arg(long, default_value_t = 100)]
        changes: usize,
    },
    /// Pods created and deleted for a while under probes: no verdict contradicts the
    /// policy after propagation, and no map entries leak.
    Churn {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// One pod floods new flows through a small conntrack map while another pod's
    /// established TCP connection and UDP exchange, busy and idle in turns, must go on.
    Flood {
        /// `--conntrack-entries` of the agents.
        #[arg(long, default_value_t = 4096)]
        conntrack_entries: u32,
        /// How long the attacker floods.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// Uninstall: agents killed under a deny policy, then `netpol-agent cleanup` on every
    /// node: nothing of netpol's remains and traffic flows as without it.
    Cleanup,
    /// Pods started as a runtime starts them (netpol's chained CNI plugin last) and
    /// probed the moment their network exists: no first packet may contradict the policy.
    /// Needs --cni.
    PodStart {
        #[arg(long, default_value_t = 100)]
        pods: usize,
    },
    /// Remove namespaces left behind by sandbox runs that were killed.
    Clean,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the sandbox creates network namespaces and loads BPF: run it as root");
    }
    let cfg = Config {
        agent: cli.agent.canonicalize().context("--agent")?,
        probe: cli.probe.canonicalize().context("--probe")?,
        attach_mode: cli.attach_mode,
        probe_timeout: Duration::from_millis(cli.timeout_ms),
        family: sandbox::Family::parse(&cli.family)?,
        agent_args: Vec::new(),
        agents: true,
        cni: sandbox::cni::Plugin::parse(&cli.cni)?,
    };
    match cli.cmd {
        Cmd::Conformance { cases } => {
            let (_, failed) = conformance::run_files(&cases, &cfg)?;
            if failed > 0 {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Demo { cases, case } => demo(&cases, &case, &cfg),
        Cmd::Restart => {
            println!("restart: agents killed and restarted under traffic");
            scenarios::restart(&cfg)?;
            println!("restart: passed");
            Ok(())
        }
        Cmd::Audit => {
            println!("audit: a policy staged in audit mode, then enforced");
            scenarios::audit(&cfg)?;
            println!("audit: passed");
            Ok(())
        }
        Cmd::ApiFaults => {
            println!("api-faults: watch drops, 410 Gone, 500s and stalls during policy changes");
            scenarios::api_faults(&cfg)?;
            println!("api-faults: passed");
            Ok(())
        }
        Cmd::PodStart { pods } => {
            let plugin = cfg
                .cni
                .map(|p| format!("{p:?}").to_lowercase())
                .unwrap_or_default();
            println!(
                "pod-start: {pods} pods started by the {plugin} CNI plugin and netpol-cni, probed the moment their network exists"
            );
            let r = netpol_tests::pod_start::pod_start(&cfg, pods)?;
            println!(
                "pod-start: {} pods started, {} first packets judged, {} contradicted the policy; {} allowed first packets of pods the agents did not know yet were held",
                r.starts,
                r.judged,
                r.contradictions.len(),
                r.held
            );
            println!(
                "pod-start: CNI ADD (pod network plugin + netpol-cni) p50 {:.1} ms, max {:.1} ms",
                r.add_p50_ms, r.add_max_ms
            );
            for c in &r.contradictions {
                println!("  contradiction: {c}");
            }
            if !r.contradictions.is_empty() {
                anyhow::bail!(
                    "pod-start: {} first packets contradicted the policy",
                    r.contradictions.len()
                );
            }
            println!("pod-start: passed");
            Ok(())
        }
        Cmd::Cleanup => {
            println!("cleanup: netpol-agent cleanup removes everything netpol made on a node");
            scenarios::cleanup(&cfg)?;
            println!("cleanup: passed");
            Ok(())
        }
        Cmd::Latency { changes } => scenarios::latency(&cfg, changes),
        Cmd::Churn { seconds } => {
            println!("churn: pods created and deleted under probes");
            scenarios::churn(&cfg, seconds)?;
            println!("churn: passed");
            Ok(())
        }
        Cmd::Flood {
            conntrack_entries,
            seconds,
        } => {
            println!(
                "flood: one pod opens new flows as fast as it can; another pod's connections must go on"
            );
            scenarios::flood(&cfg, conntrack_entries, seconds)?;
            println!("flood: passed");
            Ok(())
        }
        Cmd::Clean => {
            let n = sandbox::remove_stale()?;
            println!("removed {n} stale sandbox namespaces");
            Ok(())
        }
    }
}

fn demo(file: &std::path::Path, id: &str, cfg: &Config) -> Result<()> {
    sandbox::remove_stale()?;
    let cases = load_cases(file)?;
    let case = cases
        .iter()
        .find(|c| c.id == id)
        .with_context(|| format!("no case {id} in {}", file.display()))?;
    println!("netpol demo: {} ({})", case.name, case.id);
    println!(
        "starting a sandbox cluster: {} nodes, {} pods, {} services, {} external hosts, one agent per node",
        case.model().node_count(),
        case.model().pods.len(),
        case.model().services.len(),
        case.model().external.len()
    );
    let mut sb = Sandbox::start(&case.model(), cfg)?;
    // The same cluster as `netpol-agent explain --policy-dir` reads it.
    let mut world = netpol_tests::explain_world::World::new(&case.model())?;
    let mut last_checks = Vec::new();
    let mut all_ok = true;
    for (i, step) in case.steps().iter().enumerate() {
        let took = sb.apply(&step.policies, &step.namespace_labels, &step.pod_labels)?;
        world.apply(step)?;
        let names: Vec<String> = step
            .policies
            .iter()
            .filter_map(|p| {
                p.pointer("/metadata/name")
                    .and_then(|n| n.as_str())
                    .map(String::from)
            })
            .collect();
        println!(
            "\nstep {i}: policies in force: {} (enforced on both nodes {} ms after the write)\n",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            },
            took.as_millis()
        );
        let checks = case.checks_of(step)?;
        last_checks = checks.clone();
        let held = netpol_tests::held::HeldConns::default();
        let results = conformance::run_checks(&sb, &held, &checks);
        held.close_all();
        println!(
            "  {:<30} {:<30} {:<9} {:<9} {:<9}",
            "from", "to", "port", "expected", "observed"
        );
        for r in &results {
            let c = &r.check;
            let observed_allowed = r.observed.starts_with("allowed");
            println!(
                "  {:<30} {:<30} {:<9} {:<9} {:<9} {}",
                c.from,
                c.to,
                format!("{}/{}", c.port, c.protocol),
                if c.expect { "pass" } else { "blocked" },
                if observed_allowed { "pass" } else { "blocked" },
                if r.passed { "ok" } else { "MISMATCH" }
            );
            if !r.passed {
                all_ok = false;
                println!("      {}", describe(r));
            }
        }
    }
    // Counters are refreshed by the agents every second.
    std::thread::sleep(Duration::from_millis(1200));
    println!("\npacket counters (per local pod and reason, from each node's agent):\n");
    for st in sb.statuses() {
        println!("{}:", st.node);
        for line in st.counters_table().lines() {
            println!("  {line}");
        }
        for e in &st.policy_errors {
            println!("  policy error: {e}");
        }
    }
    print_drop_events(&sb)?;
    print_explanations(&world, &last_checks, &cfg.agent)?;
    if !all_ok {
        bail!("some checks did not match the policy");
    }
    println!("\nall checks match the policy; the sandbox is removed.");
    Ok(())
}

/// The drops the agents reported during the run (`netpol-agent monitor`), with the pod,
/// the side that refused and the reason.
fn print_drop_events(sb: &Sandbox) -> Result<()> {
    println!("\ndrop events (netpol-agent monitor on each node):\n");
    let mut any = false;
    for i in 0..sb.node_count() {
        for e in sb.events(i)?.iter().filter(|e| e.verdict == "drop") {
            any = true;
            let flow = match (&e.src, &e.dst, &e.protocol) {
                (Some(s), Some(d), Some(p)) => format!("{s}:{} -> {d}:{} {p}", e.sport, e.dport),
                _ => "(not IP)".to_string(),
            };
            let by = if e.policies.is_empty() {
                String::new()
            } else {
                format!(
                    " (isolated by {}; no rule allows it)",
                    e.policies.join(", ")
                )
            };
            println!(
                "  {:<8} {:<22} {:<8} {:<44} {}{by}",
                e.node,
                e.pod.as_deref().unwrap_or("-"),
                e.direction,
                flow,
                e.reason
            );
        }
    }
    if !any {
        println!("  none");
    }
    Ok(())
}

/// `netpol-agent explain` (offline, on a folder of the cluster's objects) of the last
/// step's first blocked and first allowed check.
fn print_explanations(
    world: &netpol_tests::explain_world::World,
    checks: &[netpol_tests::cases::CheckDef],
    agent: &std::path::Path,
) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("netpol-demo-explain-{}", std::process::id()));
    world.write(&dir)?;
    let shown = (|| -> Result<()> {
        for want in [false, true] {
            let Some(check) = checks.iter().find(|c| c.expect == want) else {
                continue;
            };
            let [from, to, port] = world.cli_args(check)?;
            println!(
                "\nnetpol-agent explain --policy-dir <the cluster> --from {from} --to {to} --port {port}\n"
            );
            let out = std::process::Command::new(agent)
                .args(["explain", "--policy-dir"])
                .arg(&dir)
                .args(["--from", &from, "--to", &to, "--port", &port])
                .output()
                .context("running netpol-agent explain")?;
            if !out.status.success() {
                bail!(
                    "netpol-agent explain failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                println!("  {line}");
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    shown
}
