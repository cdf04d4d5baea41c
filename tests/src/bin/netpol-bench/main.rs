//! `netpol-bench` (run by `cargo xtask bench`, **needs root**): the datapath's cost per
//! packet with BPF_PROG_TEST_RUN, against an empty classifier of the same object, so
//! the ratios hold on a noisy machine. Nothing is sent anywhere: the kernel runs the
//! programs on crafted frames, on the loopback device.
//!
//! Maps are written directly (not through the compiler), so the sizes of the CIDR tables
//! are exactly what the names say.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use netpol_agent::datapath::{AttachMode, Datapath, Hook, MapSizes};
use netpol_agent::program::MapOps;
use netpol_agent::program::kernel::KernelMaps;
use netpol_common::{
    Addr, EndpointInfo, IFACE_HAS_V4, IfaceInfo, NO_PORTSET, PROTO_TCP, PeerKey, PeerValue,
    PortRange, PortSet, REST_DENIED, RULESET_ADMIN_TABLE, RULESET_HAS_ADMIN, RULESET_ORDERED,
    ruleset_base, tag,
};
use netpol_tests::netbench;
use netpol_tests::sandbox::{Config, Family};
use serde_json::json;

#[derive(Parser)]
#[command(about = "Datapath cost per packet (BPF_PROG_TEST_RUN), in ns")]
struct Args {
    /// Runs per measurement (the kernel repeats the program and reports the mean).
    #[arg(long, default_value_t = 200_000)]
    repeat: u32,
    /// Measurements per entry; the median is reported.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Also write the results as JSON: [{"name", "value", "unit"}].
    #[arg(long)]
    json: Option<PathBuf>,
    /// Cluster sizes (pods) of the control-plane benchmarks.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000")]
    cp_pods: Vec<usize>,
    /// Skip the datapath part.
    #[arg(long)]
    no_datapath: bool,
    /// Skip the control-plane part.
    #[arg(long)]
    no_control_plane: bool,
    /// Skip the network part (the sandbox).
    #[arg(long)]
    no_network: bool,
    /// The agent the network part runs (a release build; default: next to this binary).
    #[arg(long)]
    agent: Option<PathBuf>,
    /// The probe tool the network part runs (default: next to this binary).
    #[arg(long)]
    probe: Option<PathBuf>,
    /// Seconds per network measurement.
    #[arg(long, default_value_t = 3)]
    net_seconds: u64,
    /// Network measurements per sandbox (with agents, without).
    #[arg(long, default_value_t = 5)]
    net_rounds: usize,
    /// Policy changes measured for propagation.
    #[arg(long, default_value_t = 100)]
    net_changes: usize,
    /// Pods in the API server during the propagation measurement.
    #[arg(long, default_value_t = 10_000)]
    net_pods: usize,
    /// Internal: run one control-plane case in this process and print its entries as
    /// JSON (each case runs in its own process, so its resident memory is its own).
    #[arg(long, hide = true, num_args = 2, value_names = ["CASE", "PODS"])]
    cp_case: Option<Vec<String>>,
}

type Entry = (String, f64, String);

const CLIENT: [u8; 4] = [10, 244, 0, 2];
const PEER: [u8; 4] = [10, 200, 0, 5];
const ENDPOINT_ID: u32 = 1;

fn frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    let mut ip = vec![0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, PROTO_TCP, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let mut tcp = vec![0u8; 20];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&dport.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    p.extend_from_slice(&ip);
    p.extend_from_slice(&tcp);
    p
}

/// The client pod on loopback, egress-isolated under rule set `set`, its rules counted
/// from slot 1 (as the agent counts them).
fn program_client(maps: &mut KernelMaps, set: u32) -> Result<()> {
    let addr = Addr::from_v4(CLIENT);
    let info = EndpointInfo {
        id: ENDPOINT_ID,
        ingress_set: 0,
        egress_set: set,
        audit_ingress_set: 0,
        audit_egress_set: 0,
        ingress_rules: 0,
        egress_rules: 1,
    };
    maps.set_endpoint(addr, info)?;
    maps.set_iface(
        1,
        IfaceInfo {
            addr4: addr,
            flags: IFACE_HAS_V4,
            endpoint_id: ENDPOINT_ID,
            ingress_set: 0,
            egress_set: set,
            egress_rules: 1,
            ..Default::default()
        },
    )?;
    Ok(())
}

/// Rule set `set` with `n` distinct /24 blocks under 10.0.0.0/8 (the peer's among them),
/// each allowing TCP 443 only, by `rule` (a position, or a tag in an ordered set).
fn program_cidrs(maps: &mut KernelMaps, set: u32, n: u32, rule: u32) -> Result<()> {
    let mut ports = PortSet::default();
    ports.ranges[0] = PortRange {
        proto: PROTO_TCP,
        _pad: 0,
        first: 443,
        last: 443,
        _pad2: 0,
        rule,
    };
    ports.len = 1;
    let portset = ruleset_base(set);
    maps.set_portset(portset, &ports)?;
    let value = PeerValue {
        portset,
        rest_rule: REST_DENIED,
    };
    let peer_block = [PEER[0], PEER[1], PEER[2], 0];
    maps.set_peer(PeerKey::new(set, Addr::from_v4(peer_block)), 96 + 24, value)?;
    for i in 1..n {
        let block = [10, (i >> 8) as u8, i as u8, 0];
        if block == peer_block {
            continue;
        }
        maps.set_peer(PeerKey::new(set, Addr::from_v4(block)), 96 + 24, value)?;
    }
    Ok(())
}

/// Measures and prints at once, so a later failure keeps what was measured.
fn measure(dp: &mut Datapath, hook: Hook, frame: &[u8], args: &Args, want: i32) -> Result<f64> {
    let ns = measure_median(dp, hook, frame, args, want)?;
    println!("  measured {hook:?}: {ns:.1} ns");
    Ok(ns)
}

fn measure_median(
    dp: &mut Datapath,
    hook: Hook,
    frame: &[u8],
    args: &Args,
    want: i32,
) -> Result<f64> {
    let mut runs: Vec<Duration> = Vec::with_capacity(args.rounds);
    for _ in 0..args.rounds {
        let (verdict, d) = dp.test_run(hook, frame, args.repeat)?;
        if verdict != want {
            bail!("{hook:?}: verdict {verdict}, expected {want}");
        }
        runs.push(d);
    }
    runs.sort();
    Ok(runs[runs.len() / 2].as_nanos() as f64)
}

fn main() -> Result<()> {
    let args = Args::parse();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("netpol-bench loads BPF programs: run it as root");
    }
    if let Some(case) = &args.cp_case {
        return control_plane::run_case(case);
    }
    let mut results: Vec<Entry> = Vec::new();
    if !args.no_datapath {
        datapath(&args, &mut results)?;
    }
    if !args.no_control_plane {
        control_plane::run_all(&args.cp_pods, &mut results)?;
    }
    if !args.no_network {
        network(&args, &mut results)?;
    }
    println!("results:");
    println!("  {:<34} {:>12}  unit", "name", "value");
    for (name, value, unit) in &results {
        println!("  {name:<34} {value:>12.3}  {unit}");
    }
    if let Some(path) = &args.json {
        let entries: Vec<_> = results
            .iter()
            .map(|(n, v, u)| json!({"name": n, "value": v, "unit": u}))
            .collect();
        std::fs::write(path, serde_json::to_string_pretty(&entries)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("written to {}", path.display());
    }
    Ok(())
}

/// The sandbox's throughput, connection rate and propagation (see `netpol_tests::netbench`).
fn network(args: &Args, results: &mut Vec<Entry>) -> Result<()> {
    let here = std::env::current_exe().context("locating netpol-bench")?;
    let dir = here.parent().context("netpol-bench has no folder")?;
    let path = |given: &Option<PathBuf>, name: &str| {
        let p = given.clone().unwrap_or_else(|| dir.join(name));
        p.canonicalize()
            .with_context(|| format!("{} (build it: cargo build --release)", p.display()))
    };
    let cfg = Config {
        agent: path(&args.agent, "netpol-agent")?,
        probe: path(&args.probe, "netpol-probe")?,
        attach_mode: "auto".into(),
        probe_timeout: Duration::from_millis(1000),
        family: Family::V4,
        agent_args: Vec::new(),
        agents: true,
        cni: None,
    };
    let options = netbench::Options {
        seconds: args.net_seconds,
        rounds: args.net_rounds,
        changes: args.net_changes,
        pods: args.net_pods,
    };
    results.extend(netbench::run(&cfg, &options)?);
    Ok(())
}

/// The datapath's cost per packet, against the empty classifier.
fn datapath(args: &Args, results: &mut Vec<Entry>) -> Result<()> {
    let sizes = MapSizes {
        conntrack_entries: 65_536,
        conntrack_new_entries: 65_536,
        peer_entries: 1024,
        identity_entries: 4096,
        // Two sets of 10k blocks (NetworkPolicy's and the tiered one) and the smaller ones.
        cidr_entries: 32_768,
        service_entries: 1024,
        portset_entries: 1024,
    };
    let mut dp = Datapath::load(AttachMode::Auto, &sizes, None).context("loading the datapath")?;
    let mut maps = dp.take_maps()?;
    const PASS: i32 = -1;
    const DROP: i32 = 2;

    let syn = frame(CLIENT, PEER, 40000, 443, 0x02);
    results.push((
        "dp.empty_ns".into(),
        measure(&mut dp, Hook::Empty, &syn, args, PASS)?,
        "ns".into(),
    ));

    // Established: the SYN opens a tracked connection and the SYN-ACK answers it (so it
    // is a replied connection, as every established one is); its ACKs are measured.
    program_cidrs(&mut maps, 1, 1, 1)?;
    program_client(&mut maps, 1)?;
    let (v, _) = dp.test_run(Hook::FromPod, &syn, 1)?;
    if v != PASS {
        bail!("the opening SYN was dropped ({v})");
    }
    let syn_ack = frame(PEER, CLIENT, 443, 40000, 0x12);
    let (v, _) = dp.test_run(Hook::ToPod, &syn_ack, 1)?;
    if v != PASS {
        bail!("the SYN-ACK was dropped ({v})");
    }
    let ack = frame(CLIENT, PEER, 40000, 443, 0x10);
    results.push((
        "dp.established_ns".into(),
        measure(&mut dp, Hook::FromPod, &ack, args, PASS)?,
        "ns".into(),
    ));
    // The same ACK's conntrack lookup alone (it finds the entry): what any established
    // path that looks a connection up in a hash map pays at least.
    results.push((
        "dp.conntrack_floor_ns".into(),
        measure(&mut dp, Hook::ConntrackFloor, &ack, args, PASS)?,
        "ns".into(),
    ));

    // A new flow, decided against n CIDR entries. The probe matches a block but not its
    // port, so it is denied, never tracked, and every repeat is a new flow.
    let probe = frame(CLIENT, PEER, 40001, 444, 0x02);
    for (n, name) in [(1, "1"), (1000, "1k"), (10_000, "10k")] {
        let set = 10 + n;
        program_cidrs(&mut maps, set, n, 1)?;
        program_client(&mut maps, set)?;
        results.push((
            format!("dp.new_flow_{name}_ns"),
            measure(&mut dp, Hook::FromPod, &probe, args, DROP)?,
            "ns".into(),
        ));
    }
    // The same under ClusterNetworkPolicy (an ordered set with an Admin table, named in
    // `ADMIN_TABLES`): the Admin table answers Pass for 10.0.0.0/8, the rest table's
    // blocks accept TCP 443 only, so the probe is denied after both tables, and named by
    // the rule the rest table answered.
    let base = 20_000;
    let set = base | RULESET_ORDERED | RULESET_HAS_ADMIN;
    program_cidrs(&mut maps, set, 10_000, tag::new(1, tag::ACCEPT))?;
    let pass = PeerValue {
        portset: NO_PORTSET,
        rest_rule: tag::new(1, tag::PASS),
    };
    let admin_table = base + 1;
    maps.set_admin_table(base, admin_table)?;
    let admin = PeerKey::new(
        admin_table | RULESET_ADMIN_TABLE,
        Addr::from_v4([10, 0, 0, 0]),
    );
    maps.set_peer(admin, 96 + 8, pass)?;
    program_client(&mut maps, set)?;
    results.push((
        "dp.new_flow_tiered_10k_ns".into(),
        measure(&mut dp, Hook::FromPod, &probe, args, DROP)?,
        "ns".into(),
    ));
    // An established connection that set allowed (Pass, then the rest table's Accept):
    // the established path never looks at the rules, whatever decided the opening.
    let syn = frame(CLIENT, PEER, 40002, 443, 0x02);
    let (v, _) = dp.test_run(Hook::FromPod, &syn, 1)?;
    if v != PASS {
        bail!("the tiered opening SYN was dropped ({v})");
    }
    let (v, _) = dp.test_run(Hook::ToPod, &frame(PEER, CLIENT, 443, 40002, 0x12), 1)?;
    if v != PASS {
        bail!("the tiered SYN-ACK was dropped ({v})");
    }
    results.push((
        "dp.established_tiered_ns".into(),
        measure(
            &mut dp,
            Hook::FromPod,
            &frame(CLIENT, PEER, 40002, 443, 0x10),
            args,
            PASS,
        )?,
        "ns".into(),
    ));
    // `to_node` runs on every packet the node's sockets take in (pods' sockets too, under
    // the root cgroup). A local pod's packet (the client has ClusterNetworkPolicy) to an
    // address that is not the node's: the parse, NODE_ADDRS, ENDPOINTS, then IDENTITIES
    // and the pod ranges, which tell a pod's socket from the node reached at another
    // address (a pod's address stops at IDENTITIES; this outside one takes both).
    results.push((
        "dp.to_node_other_ns".into(),
        measure(
            &mut dp,
            Hook::ToNode,
            &frame(CLIENT, PEER, 40002, 443, 0x10),
            args,
            PASS,
        )?,
        "ns".into(),
    ));
    // Not a local pod's packet (a remote peer's, or the node's own traffic): the parse and
    // two lookups.
    results.push((
        "dp.to_node_not_local_ns".into(),
        measure(
            &mut dp,
            Hook::ToNode,
            &frame(PEER, CLIENT, 443, 40002, 0x10),
            args,
            PASS,
        )?,
        "ns".into(),
    ));
    // A local pod's packet to this node (the peer stands in for the node's address) on a
    // connection `to_node` decided: its conntrack entry is found and the sender re-judged
    // only if its rules changed.
    maps.set_node_addr(Addr::from_v4(PEER), netpol_common::node_addr::OWN)?;
    let (v, _) = dp.test_run(Hook::ToNode, &frame(CLIENT, PEER, 40003, 443, 0x02), 1)?;
    if v != PASS {
        bail!("the SYN to the node was dropped at to_node ({v})");
    }
    results.push((
        "dp.to_node_tracked_ns".into(),
        measure(
            &mut dp,
            Hook::ToNode,
            &frame(CLIENT, PEER, 40003, 443, 0x10),
            args,
            PASS,
        )?,
        "ns".into(),
    ));
    // Last: `to_node` is loaded at its first run.
    for (program, count) in dp.verified_instructions() {
        if let Some(count) = count {
            results.push((
                format!("verifier.{program}_insns"),
                f64::from(count),
                "insns".into(),
            ));
        }
    }
    let get = |name: &str| {
        results
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, v, _)| *v)
            .unwrap_or(f64::NAN)
    };
    let empty = get("dp.empty_ns");
    let established_ratio = get("dp.established_ns") / empty;
    let new_10k_ratio = get("dp.new_flow_10k_ns") / empty;
    let new_10k_above = get("dp.new_flow_10k_ns") - empty;
    let floor_ratio = get("dp.conntrack_floor_ns") / empty;
    results.push(("dp.established_ratio".into(), established_ratio, "x".into()));
    results.push(("dp.conntrack_floor_ratio".into(), floor_ratio, "x".into()));
    results.push(("dp.new_flow_10k_ratio".into(), new_10k_ratio, "x".into()));
    results.push((
        "dp.new_flow_10k_above_empty_ns".into(),
        new_10k_above,
        "ns".into(),
    ));

    println!(
        "datapath cost per packet (BPF_PROG_TEST_RUN, median of {} x {} runs)",
        args.rounds, args.repeat
    );
    Ok(())
}

mod control_plane;
