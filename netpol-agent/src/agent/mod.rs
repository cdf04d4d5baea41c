//! The node agent's loop: on every change of the source (and every resync tick, which
//! finds new pod veths) load -> compile -> attach -> program -> report.

mod announced;
mod hooks;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use netpol_common::{reason, sizes};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::cni;
use crate::compile;
use crate::datapath::{self, AttachMode, Datapath, MapSizes, pod_links, uplinks};
use crate::program::{Programmer, kernel::KernelMaps};
use crate::sources::file;
use crate::sources::kube as kube_source;
use crate::state::{ClusterState, ObjectRef};
use crate::status::{self, EndpointStatus, Shared, Status};

/// How log lines are written (`--log-format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Parser)]
#[command(
    name = "netpol-agent",
    version,
    subcommand_negates_reqs = true,
    about = "Enforces Kubernetes NetworkPolicies on this node with eBPF (TC on pod veths and uplinks).",
    long_about = "Enforces Kubernetes NetworkPolicies on this node with eBPF.\n\n\
It watches Namespaces, Pods, Services and NetworkPolicies on the API server (or reads them from \
--policy-dir, a folder of YAML), compiles the policies for the pods of --node-name, attaches TC programs to the host side of those \
pods' veths (found from the kernel's links: veths whose peer is in a pod's namespace) and to the uplinks, and programs the BPF maps. \
It follows every change as it happens. A source or policy it cannot read never opens traffic: \
the last good state stays enforced, and errors are reported in the log, /metrics and /status.\n\n\
Needs root (or CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON and CAP_SYS_RESOURCE on older kernels)."
)]
pub struct Args {
    /// Log lines as text, or as one JSON object each (for log pipelines). Text has
    /// colours only when the log goes to a terminal.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Name of this node: pods whose spec.nodeName is this are enforced here.
    #[arg(long, env = "NODE_NAME", required = true)]
    pub node_name: Option<String>,

    /// Read the cluster from this folder of Kubernetes YAML instead of the API server
    /// (demos, offline use).
    #[arg(long)]
    pub policy_dir: Option<PathBuf>,

    /// Kubeconfig to reach the API server. Default: in-cluster service account,
    /// KUBECONFIG, or ~/.kube/config.
    #[arg(long, conflicts_with = "policy_dir")]
    pub kubeconfig: Option<PathBuf>,

    /// How the API watchers list: `paged` (consistent, in pages; from the watch cache
    /// since Kubernetes 1.31), `cached` (resourceVersion=0, one response per kind) or
    /// `streaming` (WatchList; the API server must enable it).
    #[arg(long, value_enum, default_value_t = kube_source::ListMode::Paged)]
    pub list_mode: kube_source::ListMode,

    /// Interface where pod traffic leaves the node (repeatable; Ethernet devices only).
    /// Default: every interface a route of the main table leaves by (IPv4 and IPv6),
    /// except pod veths, their bridges and loopback, followed as routes change.
    #[arg(long = "uplink")]
    pub uplinks: Vec<String>,

    /// bpffs directory for the pinned maps and links (under a `v<layout>` subdirectory).
    /// A restarted or upgraded agent adopts what is pinned there: enforcement continues
    /// while it is down and it reconciles instead of starting over.
    #[arg(long, default_value = "/sys/fs/bpf/netpol")]
    pub pin_dir: PathBuf,

    /// Pin nothing: enforcement stops with the agent (tests, trying it out).
    #[arg(long)]
    pub no_pin: bool,

    /// How to attach the TC programs.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub attach_mode: AttachMode,

    /// The node's cgroup v2 hierarchy. `to_node` is attached to it, so that a local pod's
    /// packets reaching the node's own sockets through a Service (a backend on the host
    /// network, like the `kubernetes` Service on a control-plane node) meet the pod's
    /// ClusterNetworkPolicy rules about the node. `off`: not attached, and such a Service
    /// escapes those rules (/status says so).
    #[arg(long, default_value = datapath::node_cgroup::DEFAULT_CGROUP)]
    pub node_cgroup: PathBuf,

    /// Address of the HTTP endpoint serving /metrics, /healthz, /readyz and /status.
    #[arg(long, default_value = "127.0.0.1:9964")]
    pub metrics_addr: SocketAddr,

    /// Also write the status (JSON) to this file after every change and every second.
    #[arg(long)]
    pub status_file: Option<PathBuf>,

    /// Log the packet counters every this many seconds (0 = never).
    #[arg(long, default_value_t = 0)]
    pub counters_interval: u64,

    /// Full resync this often, in milliseconds. New and removed pod veths are found at
    /// once from link and route events; this only backs those up.
    #[arg(long, default_value_t = 30_000)]
    pub resync_ms: u64,

    /// Judge traffic between pods and their own node by policy like any other address.
    /// The spec (and the default) always allows it: kubelet probes and node-local agents
    /// depend on it, and a default-deny-ingress policy would fail every probe without it.
    #[arg(long)]
    pub strict_node_traffic: bool,

    /// Unix socket where netpol's chained CNI plugin (`netpol-cni`) asks the agent to
    /// enforce a new pod before its containers start. `none`: no socket.
    #[arg(long, default_value = crate::cni::protocol::DEFAULT_SOCKET)]
    pub cni_socket: PathBuf,

    /// The node's CNI bin directory: the agent installs `netpol-cni` there (with
    /// --cni-conf-dir).
    #[arg(long, requires = "cni_conf_dir")]
    pub cni_bin_dir: Option<PathBuf>,

    /// The node's CNI configuration directory: the agent keeps `netpol-cni` last in the
    /// plugins of the conf list the runtime uses (the pod network's daemon may rewrite it).
    #[arg(long, requires = "cni_bin_dir")]
    pub cni_conf_dir: Option<PathBuf>,

    #[command(flatten)]
    pub map_sizes: MapSizes,

    #[command(flatten)]
    pub events: datapath::EventOptions,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Uninstall: remove every program, link, filter and pin netpol made on this node
    /// (in this network namespace), so that traffic flows as without netpol. Only for
    /// removing netpol: a restarted or upgraded agent needs the pins to keep enforcing.
    Cleanup {
        /// The agent's --pin-dir.
        #[arg(long, default_value = "/sys/fs/bpf/netpol")]
        pin_dir: PathBuf,
        /// After a successful cleanup, wait for SIGTERM (the uninstall DaemonSet's pods
        /// stay ready to show that their node is done).
        #[arg(long)]
        wait: bool,
        /// Also take `netpol-cni` out of the conf lists of this CNI configuration
        /// directory (the agent's --cni-conf-dir).
        #[arg(long)]
        cni_conf_dir: Option<PathBuf>,
        /// Also remove `netpol-cni` from this CNI bin directory (the agent's
        /// --cni-bin-dir); after --cni-conf-dir, so no runtime looks for it.
        #[arg(long)]
        cni_bin_dir: Option<PathBuf>,
    },
    /// Follow the verdict events of the agent running on this node (its HTTP endpoint's
    /// /events): one line per drop (and per allowed opening with `--events allow`), with
    /// the pod, direction, addresses and reason.
    Monitor {
        /// The agent's --metrics-addr.
        #[arg(long, env = "NETPOL_STATUS_ADDR", default_value = "127.0.0.1:9964")]
        addr: SocketAddr,
        /// Only this pod's events (`NS/NAME`).
        #[arg(long)]
        pod: Option<String>,
        /// Only drops or only allows.
        #[arg(long, value_enum)]
        verdict: Option<crate::events::follow::Verdict>,
        /// `text` (one line each) or `json` (one object per line).
        #[arg(short = 'o', long, value_enum, default_value_t = crate::status::Format::Text)]
        output: crate::status::Format,
        /// Print what the agent already has, then stop (no following).
        #[arg(long)]
        once: bool,
    },
    /// What the agent running on this node enforces: pods, rule sets, map occupancy,
    /// errors (read from its HTTP endpoint's /status).
    Status {
        /// The agent's --metrics-addr (the DaemonSet sets NETPOL_STATUS_ADDR to it in the
        /// agent's container).
        #[arg(long, env = "NETPOL_STATUS_ADDR", default_value = "127.0.0.1:9964")]
        addr: SocketAddr,
        /// `text` (a summary) or `json` (the agent's whole status).
        #[arg(short = 'o', long, value_enum, default_value_t = crate::status::Format::Text)]
        output: crate::status::Format,
    },
    /// Would a new connection from A to B on a port be allowed, and by which policy rule
    /// (offline, from a folder of YAML; no kernel, no agent needed).
    Explain(crate::explain::cli::ExplainArgs),
}

/// Where the cluster comes from.
enum Source {
    Files(PathBuf),
    Kube(kube_source::SharedState),
}

struct Agent {
    args: Args,
    /// `--node-name`.
    node: String,
    /// Remembers the last compile, so changes elsewhere in the cluster cost little.
    compiler: compile::Compiler,
    source: Source,
    datapath: Datapath,
    programmer: Programmer<KernelMaps>,
    state: Option<ClusterState>,
    /// What the enforced state was built from: the folder's digest, or the newest
    /// resourceVersion of each kind.
    digest: String,
    /// Identifies the content of `state` (the folder's digest, or the kube source's
    /// revision): the same key, the same state.
    state_key: String,
    /// The plan compiled from the state of that key: link events, resyncs and updates of
    /// what policy does not read reuse it instead of compiling again.
    plan: Option<(String, compile::Plan)>,
    versions: BTreeMap<String, u64>,
    first_programmed: bool,
    /// Isolated local pods without a hooked veth: since when, and whether that was
    /// logged.
    unhooked_since: BTreeMap<ObjectRef, (std::time::Instant, bool)>,
    status: Shared,
    /// Verdict events; named with the programmer's endpoint ids after each programming.
    events: crate::events::Shared,
    /// Kubernetes Events on policies with rules that cannot be compiled (API source only).
    policy_events: Option<mpsc::Sender<status::kube_events::PolicyReport>>,
    policy_problems: status::kube_events::PolicyProblems,
    /// Compile and apply durations for `/metrics`.
    metrics: Arc<status::Metrics>,
    uplinks: Vec<String>,
    /// Each pod's veth at the last reconcile: it keeps the pod should another veth claim
    /// the same address later.
    hooked_before: BTreeMap<ObjectRef, String>,
    /// Veths held drop-all, with the pods whose addresses they claim.
    quarantined: BTreeMap<String, std::collections::BTreeSet<ObjectRef>>,
    quarantined_index: std::collections::BTreeSet<u32>,
    /// Interfaces routes leave by that cannot be uplinks, and why (logged once).
    refused_uplinks: BTreeMap<String, String>,
    /// `UPLINKS` holds `uplinks` (not what an earlier run left).
    uplinks_known: bool,
    /// Pods the CNI plugin announced (see `crate::cni`), until their DEL.
    cni_pods: BTreeMap<ObjectRef, announced::CniPod>,
    /// `hooked_before` starts from what an earlier run pinned (read once).
    adopted_veths_read: bool,
}

/// Attaches `to_node` to `cgroup` (`off`: not), and says what became of it (for /status).
/// A failure leaves the agent running, loudly: every other decision still holds.
fn attach_node_hook(datapath: &mut Datapath, cgroup: &std::path::Path) -> String {
    if cgroup.as_os_str() == "off" {
        // An earlier run's hook would go on deciding while /status says off.
        datapath.detach_node();
        warn!(
            "--node-cgroup off: a Service whose backend is this node's host network escapes ClusterNetworkPolicy rules about the node"
        );
        return "off".to_string();
    }
    match datapath.attach_node(cgroup) {
        Ok(()) => format!("attached to {}", cgroup.display()),
        Err(e) => {
            error!(cgroup = %cgroup.display(), error = format!("{e:#}"), "the node hook is not attached: a Service whose backend is this node's host network escapes ClusterNetworkPolicy rules about the node");
            format!("not attached: {e:#}")
        }
    }
}

pub async fn run(args: Args) -> Result<()> {
    let node = args.node_name.clone().context("--node-name is required")?;
    let pin_dir = (!args.no_pin).then_some(args.pin_dir.as_path());
    let mut datapath =
        Datapath::load_with_events(args.attach_mode, &args.map_sizes, pin_dir, args.events)?;
    let mut programmer = Programmer::new(datapath.take_maps()?, sizes::COUNTERS);
    let events: crate::events::Shared = Arc::new(Mutex::new(crate::events::History::new(&node)));
    let (ring, event_stats) = datapath.take_events()?;
    tokio::spawn(crate::events::reader::run(
        ring,
        event_stats,
        events.clone(),
    ));
    let to_tracing = crate::events::datapath_log::ToTracing;
    if let Some(log) = datapath.take_log(args.events.datapath_log, to_tracing)? {
        tokio::spawn(log.run());
    }
    if pin_dir.is_some() {
        let adopted = programmer.adopt().context("reading the pinned maps")?;
        if adopted > 0 {
            info!(
                endpoints = adopted,
                "adopted the pinned state of an earlier run; it stays enforced until replaced"
            );
        }
    }
    // Configured uplinks are fixed and checked now; found ones follow the routes (see
    // `Agent::refresh_uplinks`).
    let uplinks = args.uplinks.clone();
    if !uplinks.is_empty() {
        let links = pod_links::links().context("reading the links")?;
        uplinks::check_configured(&links, &uplinks).map_err(anyhow::Error::msg)?;
    }
    let mut uplink_indexes = std::collections::BTreeSet::new();
    for up in &uplinks {
        datapath
            .attach_uplink(up)
            .with_context(|| format!("uplink {up}"))?;
        uplink_indexes.insert(datapath::ifindex(up).with_context(|| format!("uplink {up}"))?);
    }
    if !uplinks.is_empty() {
        programmer
            .maps_mut()
            .set_uplinks(&uplink_indexes)
            .context("programming the uplinks")?;
    }
    let node_hook = attach_node_hook(&mut datapath, &args.node_cgroup);
    info!(node = %node, mode = ?datapath.mode(), configured_uplinks = ?uplinks, node_hook, "datapath loaded");

    let status: Shared = Arc::new(Mutex::new(Status {
        map_capacity: args
            .map_sizes
            .capacities()
            .into_iter()
            .map(|(m, n)| (m.to_string(), u64::from(n)))
            .collect(),
        node: node.clone(),
        attach_mode: format!("{:?}", datapath.mode()).to_lowercase(),
        uplinks: uplinks.clone(),
        node_hook,
        ..Default::default()
    }));
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding {}", args.metrics_addr))?;
    let health = Arc::new(status::Health::default());
    let metrics = Arc::new(status::Metrics::new(status.clone(), events.clone()));
    tokio::spawn(status::serve(
        listener,
        status.clone(),
        health.clone(),
        metrics.clone(),
        events.clone(),
    ));

    // Capacity 1: a burst of changes while a recompute runs costs one more recompute.
    let (tx, mut changes) = mpsc::channel::<()>(1);
    let mut _folder_watcher = None;
    let mut policy_events = None;
    let source = match &args.policy_dir {
        Some(dir) => {
            _folder_watcher = Some(watch_folder(dir, tx)?);
            Source::Files(dir.clone())
        }
        None => {
            let client = kube_source::client(args.kubeconfig.as_deref()).await?;
            info!("watching the API server");
            policy_events = Some(status::kube_events::start(client.clone(), &node));
            Source::Kube(kube_source::start(client, args.list_mode, tx))
        }
    };

    let policy_problems = status::kube_events::PolicyProblems::new(&node);
    let mut agent = Agent {
        node,
        compiler: compile::Compiler::default(),
        programmer,
        first_programmed: false,
        unhooked_since: BTreeMap::new(),
        source,
        datapath,
        state: None,
        digest: String::new(),
        state_key: String::new(),
        plan: None,
        versions: BTreeMap::new(),
        status,
        events,
        policy_events,
        policy_problems,
        metrics,
        uplinks,
        hooked_before: BTreeMap::new(),
        quarantined: BTreeMap::new(),
        quarantined_index: Default::default(),
        refused_uplinks: BTreeMap::new(),
        uplinks_known: false,
        cni_pods: BTreeMap::new(),
        adopted_veths_read: false,
        args,
    };
    let (link_tx, mut link_changes) = mpsc::channel::<()>(1);
    if let Err(e) = datapath::link_events::subscribe(link_tx) {
        warn!(error = %e, "no link events: new pods are found by the periodic resync only, and /healthz fails (the liveness probe restarts the agent to try again)");
    }
    // Closed when the watcher's thread ends (or never started): /healthz says so.
    health.set_link_events(!link_changes.is_closed());
    health.beat(status::monotonic_ms());
    let (cni_tx, mut cni_requests) = mpsc::channel::<cni::server::Incoming>(64);
    if agent.args.cni_socket.as_os_str() != "none" {
        match cni::server::bind(&agent.args.cni_socket) {
            Ok(listener) => {
                tokio::spawn(cni::server::serve(listener, cni_tx));
            }
            Err(e) => {
                warn!(socket = %agent.args.cni_socket.display(), error = %e, "no CNI socket: new pods are enforced once the API and the kernel show them")
            }
        }
    }
    agent.install_cni();
    agent.reconcile(true);

    let mut resync = tokio::time::interval(Duration::from_millis(agent.args.resync_ms.max(50)));
    let mut report = tokio::time::interval(Duration::from_secs(1));
    let mut sweep = tokio::time::interval(Duration::from_secs(30));
    let counters_every = agent.args.counters_interval;
    let mut ticks: u64 = 0;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    loop {
        tokio::select! {
            Some(()) = changes.recv() => agent.reconcile(true),
            Some(()) = link_changes.recv() => agent.reconcile(false),
            Some(incoming) = cni_requests.recv() => agent.cni_request(incoming),
            _ = resync.tick() => {
                agent.install_cni();
                agent.reconcile(false);
            }
            _ = sweep.tick() => agent.sweep_conntrack(),
            _ = report.tick() => {
                health.beat(status::monotonic_ms());
                health.set_link_events(!link_changes.is_closed());
                ticks += 1;
                agent.refresh_counters();
                if counters_every > 0 && ticks.is_multiple_of(counters_every) {
                    info!("packet counters\n{}", agent.snapshot().counters_table());
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    agent.refresh_counters();
    info!(
        "stopping; final packet counters\n{}",
        agent.snapshot().counters_table()
    );
    Ok(())
}

/// Sends on `tx` whenever something in `dir` changes; bursts collapse into one message.
fn watch_folder(dir: &std::path::Path, tx: mpsc::Sender<()>) -> Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        // Reads (ours included) are events too; only writes matter.
        let relevant = match ev {
            Ok(e) => !matches!(e.kind, notify::EventKind::Access(_)),
            Err(_) => true,
        };
        if relevant {
            let _ = tx.try_send(());
        }
    })
    .context("creating the folder watcher")?;
    w.watch(dir, notify::RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", dir.display()))?;
    Ok(w)
}

impl Agent {
    /// Successful programmings so far.
    fn generation(&self) -> u64 {
        match self.status.lock() {
            Ok(s) => s.generation,
            Err(p) => p.into_inner().generation,
        }
    }

    fn snapshot(&self) -> Status {
        match self.status.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn update_status(&self, f: impl FnOnce(&mut Status)) {
        let mut guard = match self.status.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(&mut guard);
        if let Some(path) = &self.args.status_file {
            let tmp = path.with_extension("tmp");
            let written = serde_json::to_vec_pretty(&*guard)
                .map_err(std::io::Error::other)
                .and_then(|b| std::fs::write(&tmp, b))
                .and_then(|()| std::fs::rename(&tmp, path));
            if let Err(e) = written {
                warn!(path = %path.display(), error = %e, "writing the status file");
            }
        }
    }

    /// The node's own addresses, which always reach its pods (and are reached by them).
    fn program_node_addresses(&mut self) {
        let addrs = match datapath::node_addrs::node_addresses() {
            Ok(a) => a,
            Err(e) => {
                error!(error = %e, "reading this node's addresses; keeping the last ones");
                return;
            }
        };
        // Under --strict-node-traffic the addresses get no exemption; what reaches them is
        // still what reaches the node.
        let exempt = !self.args.strict_node_traffic;
        let written = (self.programmer)
            .set_node_addresses(&addrs.own, &addrs.broadcast, exempt)
            .and_then(|n| Ok(n + self.programmer.set_service_addresses(&addrs.services)?));
        match written {
            Ok(0) => {}
            Ok(n) => info!(
                changed = n,
                addresses = addrs.own.len(),
                broadcast = addrs.broadcast.len(),
                "node addresses programmed"
            ),
            Err(e) => error!(error = %e, "programming this node's addresses"),
        }
    }

    /// Tracks the existing connections of pods about to be isolated, from the kernel's
    /// table, before they flip: each is decided by policy at its next packet, so allowed
    /// ones go on (without this, replies of a connection the pod opened while unisolated
    /// would be judged as new openings and dropped).
    fn seed_connections(
        &mut self,
        plan: &compile::Plan,
        fresh: &std::collections::BTreeSet<std::net::IpAddr>,
    ) {
        let flows = match datapath::kernel_conntrack::dump() {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "reading the kernel's connection table; existing connections of newly isolated pods are decided as new");
                return;
            }
        };
        let local = plan
            .endpoints
            .iter()
            .flat_map(|e| e.ips.iter().copied())
            .collect();
        let seeds =
            crate::program::seed::seed_entries(&flows, fresh, &local, datapath::monotonic_ns());
        match self.programmer.maps_mut().seed_conntrack(&seeds) {
            Ok(added) => info!(
                pods = fresh.len(),
                kernel_connections = flows.len(),
                added,
                "tracked existing connections of newly isolated pods"
            ),
            Err(e) => warn!(error = %e, "seeding conntrack"),
        }
    }

    /// Deletes idle connections past their lifetime (the datapath also ignores them).
    fn sweep_conntrack(&mut self) {
        let now = datapath::monotonic_ns();
        match self.programmer.maps_mut().sweep_conntrack(now) {
            Ok(maps) => {
                let deleted: usize = maps.iter().map(|m| m.2).sum();
                let seen: usize = maps.iter().map(|m| m.1).sum();
                if deleted > 0 {
                    info!(seen, deleted, "conntrack sweep removed idle connections");
                } else {
                    tracing::debug!(seen, "conntrack sweep");
                }
                self.update_status(|s| {
                    for (map, seen, deleted) in maps {
                        s.map_entries.insert(map.into(), (seen - deleted) as u64);
                    }
                });
            }
            Err(e) => warn!(error = %e, "conntrack sweep"),
        }
        match self.programmer.maps_mut().sweep_service_flows() {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "Service records of finished connections"),
            Err(e) => warn!(error = %e, "sweeping Service records"),
        }
        // Veths whose slot another veth held get it once that one is gone.
        if let Err(e) = self.programmer.maps_mut().sync_iface_slots() {
            warn!(error = %e, "giving pod veths their IFACE_SLOTS slots");
        }
    }

    /// `reload`: read the source again (else only look for new or gone veths).
    fn reconcile(&mut self, reload: bool) {
        let noticed = std::time::Instant::now();
        let generation = self.generation();
        if reload || self.state.is_none() {
            self.load();
        }
        if self.patch_cni_addresses() {
            self.plan = None;
        }
        let Some(state) = &self.state else { return };
        let plan = match self.plan.take() {
            Some((key, plan)) if key == self.state_key => plan,
            _ => {
                let started = std::time::Instant::now();
                let plan = self.compiler.compile(state, &self.node);
                tracing::debug!(elapsed = ?started.elapsed(), "compiled");
                self.metrics
                    .compile_seconds
                    .observe(started.elapsed().as_secs_f64());
                plan
            }
        };
        let held = self.hold_unknown_pods(&plan, state);
        self.reconcile_plan(held.as_ref().unwrap_or(&plan), reload);
        if reload && self.generation() > generation {
            self.metrics
                .propagation_seconds
                .observe(noticed.elapsed().as_secs_f64());
        }
        // After the maps are written: what makes the next change cheap.
        if let Some(state) = &self.state {
            self.compiler.remember(state, &plan);
        }
        self.plan = Some((self.state_key.clone(), plan));
    }

    /// Attaches, programs and reports `plan`.
    fn reconcile_plan(&mut self, plan: &compile::Plan, reload: bool) {
        let links = match pod_links::links() {
            Ok(l) => l,
            Err(e) => {
                error!(error = %e, "reading links");
                return;
            }
        };
        let Some(ifaces) = self.find_pod_veths(plan, &links) else {
            return;
        };
        self.refresh_uplinks(&links, &ifaces);
        // Attach before programming the interface map, detach after: a veth never runs
        // our program without knowing its pod... and never keeps it after the pod is gone.
        let mut ready_ifaces = BTreeMap::new();
        for (pod, (name, idx)) in &ifaces {
            if !self.datapath.is_attached(name) {
                match self.datapath.attach_pod(name) {
                    Ok(()) => info!(%pod, iface = %name, "attached"),
                    Err(e) => {
                        self.metrics.attach_failures.inc();
                        error!(%pod, iface = %name, error = format!("{e:#}"), "attach failed");
                        continue;
                    }
                }
            }
            ready_ifaces.insert(pod.clone(), *idx);
        }
        self.hold_quarantined();
        self.program_node_addresses();
        let fresh = self.programmer.newly_isolated(plan);
        if !fresh.is_empty() {
            self.seed_connections(plan, &fresh);
        }
        let started = std::time::Instant::now();
        let result = self.programmer.apply(plan, &ready_ifaces);
        self.metrics
            .apply_seconds
            .observe(started.elapsed().as_secs_f64());
        let wanted: std::collections::BTreeSet<&str> = ifaces
            .values()
            .map(|(n, _)| n.as_str())
            .chain(self.uplinks.iter().map(String::as_str))
            .chain(self.quarantined.keys().map(String::as_str))
            .collect();
        let gone: Vec<String> = self
            .datapath
            .attached()
            .filter(|n| !wanted.contains(n))
            .map(str::to_string)
            .collect();
        for name in gone {
            info!(iface = %name, "detached");
            self.datapath.detach(&name);
        }

        match result {
            Ok(stats) => {
                // Retries of pods that still do not fit are not news.
                let wrote = crate::program::ApplyStats {
                    overflowed: Vec::new(),
                    overflow_error: None,
                    ..stats.clone()
                } != Default::default();
                if wrote || reload {
                    info!(
                        digest = %self.digest,
                        endpoints = plan.endpoints.len(),
                        rule_sets = plan.rule_sets.len(),
                        ?stats,
                        "programmed"
                    );
                }
                for e in &plan.errors {
                    if reload {
                        warn!("{e}");
                    }
                }
                let overflowed: Vec<String> =
                    stats.overflowed.iter().map(ToString::to_string).collect();
                let overflow_changed = self.snapshot().overflowed_pods != overflowed;
                if !stats.overflowed.is_empty() && overflow_changed {
                    warn!(
                        pods = ?stats.overflowed,
                        error = stats.overflow_error.as_deref().unwrap_or(""),
                        "maps are full: these pods keep their last complete rules until room returns (raise --peer-entries / --cidr-entries)"
                    );
                }
                let overflow_error = stats.overflow_error.clone();
                let changed = wrote || reload;
                let hooked: BTreeMap<ObjectRef, String> = ifaces
                    .iter()
                    .filter(|(pod, _)| ready_ifaces.contains_key(*pod))
                    .map(|(pod, (name, _))| (pod.clone(), name.clone()))
                    .collect();
                self.report_unhooked(plan, &hooked);
                self.hooked_before = hooked.clone();
                let quarantined: BTreeMap<String, Vec<String>> = self
                    .quarantined
                    .iter()
                    .map(|(n, pods)| (n.clone(), pods.iter().map(ToString::to_string).collect()))
                    .collect();
                let endpoints = self.endpoint_status(plan, &hooked);
                {
                    let mut events = crate::events::lock(&self.events);
                    events.set_pods(self.known_pods(plan));
                    events.set_rules(self.rule_names());
                }
                let cluster_policies = self.report_cluster_policies();
                self.report_policy_problems(plan, &cluster_policies);
                let digest = self.digest.clone();
                let versions = self.versions.clone();
                let occupancy = self.programmer.occupancy();
                self.update_status(|s| {
                    s.applied_digest = digest;
                    s.applied_versions = versions;
                    s.generation += u64::from(changed);
                    s.ready = true;
                    s.program_error = None;
                    s.policy_errors = plan.errors.iter().map(|e| e.to_string()).collect();
                    s.cluster_policies = cluster_policies;
                    s.quarantined_interfaces = quarantined;
                    s.rule_sets = plan.rule_sets.len();
                    s.endpoints = endpoints;
                    s.overflow_events += u64::from(!overflowed.is_empty() && overflow_changed);
                    s.overflowed_pods = overflowed;
                    s.overflow_error = overflow_error;
                    for (map, n) in occupancy {
                        s.map_entries.insert(map.into(), n as u64);
                    }
                });
                self.refresh_counters();
                if !self.first_programmed {
                    self.first_programmed = true;
                    self.datapath.remove_other_versions();
                }
            }
            Err(e) => {
                error!(error = %e, "programming the maps failed; the previous state stays enforced where it was not replaced");
                let msg = e.to_string();
                // What was written before the failure counts (a map filling up shows).
                let occupancy = self.programmer.occupancy();
                self.update_status(|s| {
                    s.program_error = Some(msg);
                    for (map, n) in occupancy {
                        s.map_entries.insert(map.into(), n as u64);
                    }
                });
            }
        }
    }

    /// Takes the source's current state, if it has a complete one.
    fn load(&mut self) {
        match &self.source {
            Source::Files(dir) => match file::load(dir) {
                Ok(loaded) => {
                    for i in &loaded.ignored {
                        tracing::debug!(object = %i, "ignored kind");
                    }
                    self.state = Some(loaded.state);
                    self.state_key = loaded.digest.clone();
                    self.digest = loaded.digest;
                    self.update_status(|s| s.source_error = None);
                }
                Err(e) => {
                    error!(error = %e, "policy source failed to load; the last good state stays enforced");
                    let msg = e.to_string();
                    self.update_status(|s| s.source_error = Some(msg));
                }
            },
            Source::Kube(shared) => {
                let shared = match shared.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                // Half a cluster (policies without their pods, say) would enforce less
                // than the whole: wait until every kind has been listed once.
                let pending: Vec<&str> = kube_source::KINDS
                    .iter()
                    .filter(|k| !shared.synced.contains(*k))
                    .copied()
                    .collect();
                let source_error = (!pending.is_empty())
                    .then(|| format!("waiting for the first list of {}", pending.join(", ")));
                let rejected: Vec<String> = shared
                    .rejected
                    .iter()
                    .map(|(o, e)| format!("{o}: {e}"))
                    .collect();
                let watch_errors = shared.watch_errors;
                let unserved: Vec<String> = shared.absent.iter().map(|k| k.to_string()).collect();
                let key = format!("revision {}", shared.revision);
                if pending.is_empty() {
                    // Cloned only when it changed; the versions move on regardless (the
                    // status reports what has been seen and applied).
                    if key != self.state_key || self.state.is_none() {
                        self.state = Some(shared.state.clone());
                        self.state_key = key;
                    }
                    self.versions = shared
                        .versions
                        .iter()
                        .map(|(k, v)| (k.to_string(), *v))
                        .collect();
                    self.digest = self
                        .versions
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",");
                }
                drop(shared);
                self.update_status(|s| {
                    s.source_error = source_error;
                    s.rejected_objects = rejected;
                    s.watch_errors = watch_errors;
                    s.unserved_kinds = unserved;
                });
            }
        }
    }

    /// Warns once about each isolated pod whose veth has stayed unfound or unhooked for
    /// a while (a new pod's veth may appear after its API object): nothing judges what
    /// reaches it. `/status` (an endpoint without
    /// an interface) and `netpol_endpoints_unhooked` show every such pod at once.
    fn report_unhooked(&mut self, plan: &compile::Plan, hooked: &BTreeMap<ObjectRef, String>) {
        const GRACE: Duration = Duration::from_secs(10);
        let now = std::time::Instant::now();
        let mut still = BTreeMap::new();
        for ep in &plan.endpoints {
            if hooked.contains_key(&ep.pod) || (ep.ingress.is_none() && ep.egress.is_none()) {
                continue;
            }
            let (since, warned) = self
                .unhooked_since
                .get(&ep.pod)
                .copied()
                .unwrap_or((now, false));
            let warn_now = !warned && now.duration_since(since) >= GRACE;
            if warn_now {
                warn!(pod = %ep.pod, ips = ?ep.ips, "pod isolated by policy has no hooked veth: what reaches it is not judged (see /status)");
            }
            still.insert(ep.pod.clone(), (since, warned || warn_now));
        }
        self.unhooked_since = still;
    }

    /// ClusterNetworkPolicies of the state, checked; logged each time the set of them (or
    /// their errors) changes.
    fn report_cluster_policies(&mut self) -> Vec<status::ClusterPolicyStatus> {
        let now = self
            .state
            .as_ref()
            .map(compile::tiers::status)
            .unwrap_or_default();
        if now != self.snapshot().cluster_policies {
            for p in &now {
                if p.errors.is_empty() {
                    info!(policy = %p.name, tier = %p.tier, priority = p.priority, "ClusterNetworkPolicy enforced");
                } else {
                    warn!(policy = %p.name, tier = %p.tier, priority = p.priority, errors = ?p.errors, "ClusterNetworkPolicy enforced with errors: the parts the API server would refuse fail closed");
                }
            }
        }
        now
    }

    /// Kubernetes Events for the policies whose problems changed (never waits: a full
    /// queue loses reports, logged).
    fn report_policy_problems(
        &mut self,
        plan: &compile::Plan,
        cluster_policies: &[status::ClusterPolicyStatus],
    ) {
        let (Some(tx), Some(state)) = (&self.policy_events, &self.state) else {
            return;
        };
        let changes = (self.policy_problems).changes(&plan.errors, cluster_policies, state);
        for report in changes {
            if let Err(e) = tx.try_send(report) {
                warn!(error = %e, "Kubernetes Event for a policy not published");
            }
        }
    }

    /// Local pods by endpoint id, with the policies that isolate them: what names their
    /// verdict events.
    fn known_pods(
        &self,
        plan: &compile::Plan,
    ) -> std::collections::HashMap<u32, crate::events::KnownPod> {
        let ids = self.programmer.endpoint_ids();
        let names = |v: &[ObjectRef]| v.iter().map(ToString::to_string).collect();
        plan.endpoints
            .iter()
            .filter_map(|ep| {
                let id = *ids.get(&ep.pod)?;
                let known = crate::events::KnownPod {
                    name: ep.pod.to_string(),
                    ingress_policies: names(&ep.isolated_by.ingress),
                    egress_policies: names(&ep.isolated_by.egress),
                    audit_ingress_policies: names(&ep.isolated_by.audit_ingress),
                    audit_egress_policies: names(&ep.isolated_by.audit_egress),
                };
                Some((id, known))
            })
            .collect()
    }

    fn endpoint_status(
        &self,
        plan: &compile::Plan,
        hooked: &BTreeMap<ObjectRef, String>,
    ) -> Vec<EndpointStatus> {
        let ids = self.programmer.endpoint_ids();
        plan.endpoints
            .iter()
            .map(|ep| EndpointStatus {
                pod: ep.pod.to_string(),
                id: ids.get(&ep.pod).copied().unwrap_or(0),
                ips: ep.ips.iter().map(|i| i.to_string()).collect(),
                interface: hooked.get(&ep.pod).cloned(),
                ingress_isolated: ep.ingress.is_some(),
                egress_isolated: ep.egress.is_some(),
                packets: BTreeMap::new(),
            })
            .collect()
    }

    fn refresh_counters(&mut self) {
        let maps = self.programmer.maps();
        let mut snapshot = self.snapshot();
        for ep in &mut snapshot.endpoints {
            if ep.id == 0 {
                continue;
            }
            match maps.counters(ep.id) {
                Ok(c) => {
                    ep.packets = reason::NAMES
                        .iter()
                        .zip(c.packets.iter())
                        .map(|(n, v)| (n.to_string(), *v))
                        .collect();
                }
                Err(e) => warn!(pod = %ep.pod, error = %e, "reading counters"),
            }
        }
        let by_rule = match self.programmer.rule_packets() {
            Ok(by_rule) => by_rule,
            Err(e) => {
                warn!(error = %e, "reading rule counters");
                BTreeMap::new()
            }
        };
        let rules = by_rule
            .into_iter()
            .map(|(rule, packets)| crate::status::RuleStatus {
                namespace: rule.policy.namespace.clone(),
                policy: rule.policy.name.clone(),
                kind: rule.kind.label().to_string(),
                direction: rule.direction.to_string(),
                index: rule.index,
                packets,
            })
            .collect();
        self.update_status(|s| {
            s.endpoints = snapshot.endpoints;
            s.rules = rules;
        });
    }

    /// Rule id -> `ns/name ingress[i]`, for verdict events.
    fn rule_names(&self) -> std::collections::HashMap<u32, String> {
        self.programmer
            .rule_names()
            .iter()
            .map(|(id, rule)| (*id, rule.to_string()))
            .collect()
    }
}
