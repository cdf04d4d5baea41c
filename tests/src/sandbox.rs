//! A cluster made of network namespaces, with the real agent on each node. Needs root.
//!
//! ```text
//!   pod netns (eth0, 10.244.N.x/32, default via 169.254.1.1)
//!        | veth (host side vpK, the agent's pod hook)
//!   node-1 netns --"nl0" veth (10.255.0.1 <-> .2)-- node-2 netns
//!        | "ext0" veth (10.255.1.1 <-> .2)
//!   ext netns (the model's external addresses)
//! ```
//!
//! The agents watch an in-memory API server (`apiserver`), served on 127.0.0.1:6443 inside
//! each node namespace; steps are applied through it.
//!
//! Nothing here has a link or route to the host's namespaces: every address exists only
//! inside the sandbox, and nodes have no default route. Services are nftables DNAT rules
//! in each node, chosen at random per connection as kube-proxy does. Everything (servers,
//! agents, namespaces, the temp folder) is removed on drop, on Ctrl-C, and, for runs that
//! died, by the next run.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use netpol_agent::status::Status;
use serde_json::{Value, json};

use crate::apiserver::{ApiServer, Kind};
use crate::cases::{Labels, Model};

pub mod cni;
mod network;
mod probes;

pub use network::node_index;
pub use probes::{Answer, Source, read_line as probes_read_line};

const NS_PREFIX: &str = "npsb-";
/// Where the in-memory API server listens, inside each node namespace.
const API_PORT: u16 = 6443;
/// In IPv6 mode every sandbox address is its IPv4 plan embedded here, so cases (and their
/// IPv4 ipBlocks, translated the same way) mean exactly the same in both families.
const V6_EMBED: u128 = 0xfd00_0004_0000_0000_0000_0000_0000_0000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "ipv4" => Ok(Family::V4),
            "ipv6" => Ok(Family::V6),
            other => bail!("unknown family {other:?} (expected ipv4 or ipv6)"),
        }
    }

    /// The address standing for `v4` in this family.
    pub fn addr(self, v4: Ipv4Addr) -> IpAddr {
        match self {
            Family::V4 => IpAddr::V4(v4),
            Family::V6 => IpAddr::V6(Ipv6Addr::from(V6_EMBED | u128::from(u32::from(v4)))),
        }
    }

    /// `addr/len` for an IPv4 prefix length, in this family.
    pub fn net(self, v4: Ipv4Addr, len: u8) -> String {
        match self {
            Family::V4 => format!("{v4}/{len}"),
            Family::V6 if len == 0 => "::/0".to_string(),
            Family::V6 => format!("{}/{}", self.addr(v4), 96 + u32::from(len)),
        }
    }

    /// A CIDR string of a policy, in this family (IPv4 CIDRs are embedded in IPv6 mode).
    pub fn translate_cidr(self, cidr: &str) -> String {
        match (self, cidr.parse::<ipnet::Ipv4Net>()) {
            (Family::V6, Ok(net)) => self.net(net.addr(), net.prefix_len()),
            _ => cidr.to_string(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Config {
    pub agent: PathBuf,
    pub probe: PathBuf,
    /// `--attach-mode` for the agents.
    pub attach_mode: String,
    pub probe_timeout: Duration,
    pub family: Family,
    /// Extra flags for every agent (a scenario's own, e.g. map sizes), before those of
    /// `NETPOL_SANDBOX_AGENT_ARGS`.
    pub agent_args: Vec<String>,
    /// Whether to run agents at all (false: the same network with nothing enforced, as a
    /// baseline for the network benchmarks).
    pub agents: bool,
    /// The CNI plugin that networks the pods; None: the sandbox's own plumbing (veths
    /// and /32 host routes, as kindnet makes them).
    pub cni: Option<cni::Plugin>,
}

/// What to remove; shared with the Ctrl-C handler.
#[derive(Default)]
struct Cleanup {
    pids: Vec<u32>,
    netns: Vec<String>,
    /// bpffs mounted for the agents' pins.
    mounts: Vec<PathBuf>,
    /// cgroup v2 directories made for the nodes, deepest last.
    cgroups: Vec<PathBuf>,
    dir: Option<PathBuf>,
}

impl Cleanup {
    fn run(&mut self) {
        for pid in self.pids.drain(..) {
            // SAFETY: plain syscall on a pid we started.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
        std::thread::sleep(Duration::from_millis(100));
        for ns in self.netns.drain(..).rev() {
            let _ = Command::new("ip")
                .args(["netns", "pids", &ns])
                .output()
                .map(|o| {
                    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                        if let Ok(pid) = pid.parse::<i32>() {
                            // SAFETY: plain syscall; these are processes inside our netns.
                            unsafe { libc::kill(pid, libc::SIGKILL) };
                        }
                    }
                });
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        for m in self.mounts.drain(..) {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        // A cgroup goes once its killed processes have exited.
        for cg in self.cgroups.drain(..).rev() {
            for _ in 0..50 {
                if std::fs::remove_dir(&cg).is_ok() || !cg.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

type Registry = Mutex<Vec<Arc<Mutex<Cleanup>>>>;

fn registry() -> &'static Registry {
    static REG: OnceLock<Registry> = OnceLock::new();
    REG.get_or_init(|| {
        let _ = ctrlc::set_handler(|| {
            eprintln!("interrupted: removing the sandbox");
            if let Ok(all) = registry().lock() {
                for c in all.iter() {
                    if let Ok(mut c) = c.lock() {
                        c.run();
                    }
                }
            }
            std::process::exit(130);
        });
        Mutex::new(Vec::new())
    })
}

/// Removes namespaces left by sandbox runs whose process is gone.
pub fn remove_stale() -> Result<usize> {
    let out = Command::new("ip").args(["netns", "list"]).output()?;
    let mut removed = 0;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let pid: i32 = rest
            .split('-')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        // SAFETY: signal 0 only checks that the process exists.
        let alive = pid > 0 && unsafe { libc::kill(pid, 0) } == 0;
        if !alive {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
            removed += 1;
        }
    }
    Ok(removed)
}

pub struct PodPlace {
    pub netns: String,
    /// The address plan is IPv4; `ip` is the address in the sandbox's family.
    pub v4: Ipv4Addr,
    pub ip: IpAddr,
    pub node: usize,
}

struct AgentProc {
    node: String,
    child: Child,
    status_file: PathBuf,
    log: PathBuf,
}

pub struct Sandbox {
    cfg: Config,
    tag: String,
    dir: PathBuf,
    kubeconfig: PathBuf,
    api: ApiServer,
    rt: tokio::runtime::Runtime,
    cleanup: Arc<Mutex<Cleanup>>,
    model: Model,
    pub pods: BTreeMap<String, PodPlace>,
    pub services: BTreeMap<String, IpAddr>,
    pub external: BTreeMap<String, IpAddr>,
    ns_labels: BTreeMap<String, Labels>,
    pod_labels: BTreeMap<String, Labels>,
    servers: Vec<Child>,
    agents: Vec<AgentProc>,
    restarts: u32,
    /// How many nodes (`node-1` ...).
    nodes: usize,
    /// Next free pod index (names its namespace and veth).
    next_index: usize,
    /// Each node's cgroup v2, holding the processes of its host network (its agent's
    /// `--node-cgroup`); `None` on a machine without cgroup v2.
    node_cgroups: Vec<Option<PathBuf>>,
}

/// Where the machine's cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on a hybrid machine).
fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (_, at, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(at))
    })
}

fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// `ip -n NS ARGS...`
fn ip(ns: &str, args: &[&str]) -> Result<()> {
    let mut all = vec!["ip", "-n", ns];
    all.extend_from_slice(args);
    run(&all)
}

/// A veth pair between two namespaces: (name, netns, MAC) of each end.
fn veth(a: (&str, &str, Option<&str>), b: (&str, &str, Option<&str>)) -> Result<()> {
    let mut args = vec!["ip", "link", "add", a.0, "netns", a.1];
    if let Some(mac) = a.2 {
        args.extend(["address", mac]);
    }
    args.extend(["type", "veth", "peer", "name", b.0, "netns", b.1]);
    if let Some(mac) = b.2 {
        args.extend(["address", mac]);
    }
    run(&args)
}

fn node_name(i: usize) -> String {
    format!("node-{}", i + 1)
}

impl Sandbox {
    pub fn start(model: &Model, cfg: &Config) -> Result<Self> {
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("{NS_PREFIX}{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(&tag);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let kubeconfig = dir.join("kubeconfig");
        let cleanup = Arc::new(Mutex::new(Cleanup {
            dir: Some(dir.clone()),
            ..Default::default()
        }));
        registry()
            .lock()
            .map_err(|_| anyhow!("sandbox registry poisoned"))?
            .push(cleanup.clone());
        let mut sb = Sandbox {
            cfg: cfg.clone(),
            tag,
            dir,
            kubeconfig,
            api: ApiServer::new(),
            rt: tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the API server's runtime")?,
            cleanup,
            model: model.clone(),
            pods: BTreeMap::new(),
            services: BTreeMap::new(),
            external: BTreeMap::new(),
            ns_labels: model.namespaces.clone(),
            pod_labels: model
                .pods
                .iter()
                .map(|p| (format!("{}/{}", p.ns, p.name), p.labels.clone()))
                .collect(),
            servers: Vec::new(),
            agents: Vec::new(),
            restarts: 0,
            nodes: model.node_count(),
            next_index: 0,
            node_cgroups: Vec::new(),
        };
        sb.make_node_cgroups()?;
        sb.build_network()?;
        sb.start_servers()?;
        sb.start_api()?;
        if cfg.agents {
            sb.start_agents()?;
        }
        sb.wait_applied(Duration::from_secs(20))?;
        Ok(sb)
    }

    fn netns(&self, what: &str) -> String {
        format!("{}-{what}", self.tag)
    }

    fn add_netns(&self, name: &str) -> Result<()> {
        run(&["ip", "netns", "add", name])?;
        self.cleanup
            .lock()
            .map_err(|_| anyhow!("cleanup poisoned"))?
            .netns
            .push(name.to_string());
        self.base_sysctls(name)?;
        ip(name, &["link", "set", "lo", "up"])
    }

    fn fam(&self) -> Family {
        self.cfg.family
    }

    fn add_addr(&self, ns: &str, v4: Ipv4Addr, len: u8, dev: &str) -> Result<()> {
        let net = self.fam().net(v4, len);
        ip(ns, &["addr", "add", &net, "dev", dev, "nodad"])
    }

    fn add_route(&self, ns: &str, v4: Ipv4Addr, len: u8, via: Ipv4Addr) -> Result<()> {
        let net = self.fam().net(v4, len);
        let via = self.fam().addr(via).to_string();
        ip(ns, &["route", "add", &net, "via", &via])
    }

    /// Creates a pod at run time (namespace, veth, then the API object) on node `node`,
    /// with address `10.244.<node+1>.<host>`. Returns the resourceVersion of its creation
    /// and when that API write happened.
    pub fn add_pod(
        &mut self,
        def: &crate::cases::PodDef,
        node: usize,
        host: u8,
    ) -> Result<(u64, Instant)> {
        let key = format!("{}/{}", def.ns, def.name);
        let k = self.next_index;
        self.plumb_pod(&key, k, node, Ipv4Addr::new(10, 244, node as u8 + 1, host))?;
        self.pod_labels.insert(key.clone(), def.labels.clone());
        self.model.pods.push(def.clone());
        let written = Instant::now();
        let rv = self.api.apply(Kind::Pod, self.pod_object(def))?;
        Ok((rv, written))
    }

    /// A pod as the API server has it once scheduled to node `node` and before the
    /// kubelet reports its address: labels, node, no IP. Returns the resourceVersion.
    pub fn announce_pod(&mut self, def: &crate::cases::PodDef, node: usize) -> Result<u64> {
        let key = format!("{}/{}", def.ns, def.name);
        self.pod_labels.insert(key, def.labels.clone());
        self.api.apply(
            Kind::Pod,
            json!({"metadata": {"name": def.name, "namespace": def.ns, "labels": def.labels},
                   "spec": {"nodeName": node_name(node),
                            "containers": [{"name": "main", "image": "sandbox"}]},
                   "status": {"phase": "Pending"}}),
        )
    }

    /// Networks a pod as the runtime does (the CNI conf list, netpol's plugin included),
    /// without telling the API server: when this returns, the pod's network exists and
    /// its containers would start. `report_pod` then does what the kubelet does.
    pub fn start_pod(&mut self, def: &crate::cases::PodDef, node: usize, host: u8) -> Result<()> {
        let key = format!("{}/{}", def.ns, def.name);
        let k = self.next_index;
        self.plumb_pod(&key, k, node, Ipv4Addr::new(10, 244, node as u8 + 1, host))?;
        self.pod_labels.insert(key, def.labels.clone());
        self.model.pods.push(def.clone());
        Ok(())
    }

    /// The kubelet's report of a started pod: running, with its address.
    pub fn report_pod(&mut self, def: &crate::cases::PodDef) -> Result<u64> {
        self.api.apply(Kind::Pod, self.pod_object(def))
    }

    /// Deletes a pod: its API object first (as the kubelet would report it), then its
    /// namespace, which takes the veth and its route with it. Returns the deletion's
    /// resourceVersion.
    pub fn remove_pod(&mut self, key: &str) -> Result<u64> {
        let (ns, name) = key
            .split_once('/')
            .ok_or_else(|| anyhow!("bad pod {key}"))?;
        let rv = self
            .api
            .delete(Kind::Pod, ns, name)
            .ok_or_else(|| anyhow!("pod {key} is not on the API server"))?;
        if let Some(place) = self.pods.remove(key) {
            if let Some(plugin) = self.cfg.cni
                && let Err(e) = self.run_cni(plugin, "DEL", place.node, key, &place.netns, place.v4)
            {
                eprintln!("  {e:#}");
            }
            let _ = Command::new("ip")
                .args(["netns", "del", &place.netns])
                .status();
            if let Ok(mut c) = self.cleanup.lock() {
                c.netns.retain(|n| *n != place.netns);
            }
        }
        self.model
            .pods
            .retain(|p| format!("{}/{}", p.ns, p.name) != key);
        self.pod_labels.remove(key);
        Ok(rv)
    }

    /// Entries in each of an agent's pinned maps, and its attachments: for leak checks.
    pub fn pinned_counts(&self, i: usize) -> Result<BTreeMap<String, usize>> {
        use aya::maps::{HashMap, LpmTrie, Map, MapData};
        use netpol_common::{
            Addr, EndpointInfo, IdentityKey, IfaceInfo, PeerKey, PeerValue, PortSet,
        };
        let dir = self
            .dir
            .join("bpf")
            .join(node_name(i))
            .join(format!("v{}", netpol_common::LAYOUT_VERSION));
        let open = |name: &str| {
            MapData::from_pin(dir.join("maps").join(name))
                .with_context(|| format!("opening pinned map {name}"))
        };
        let mut out = BTreeMap::new();
        let n = HashMap::<_, u32, IfaceInfo>::try_from(Map::HashMap(open("IFACES")?))?
            .keys()
            .count();
        out.insert("IFACES".to_string(), n);
        let n = HashMap::<_, Addr, EndpointInfo>::try_from(Map::HashMap(open("ENDPOINTS")?))?
            .keys()
            .count();
        out.insert("ENDPOINTS".to_string(), n);
        let n = HashMap::<_, IdentityKey, PeerValue>::try_from(Map::HashMap(open(
            "PEERS_BY_IDENTITY",
        )?))?
        .keys()
        .count();
        out.insert("PEERS_BY_IDENTITY".to_string(), n);
        let n = HashMap::<_, Addr, u32>::try_from(Map::HashMap(open("IDENTITIES")?))?
            .keys()
            .count();
        out.insert("IDENTITIES".to_string(), n);
        let n = LpmTrie::<_, PeerKey, PeerValue>::try_from(Map::LpmTrie(open("PEERS_CIDR")?))?
            .keys()
            .count();
        out.insert("PEERS_CIDR".to_string(), n);
        let n = HashMap::<_, u32, PortSet>::try_from(Map::HashMap(open("PORTSETS")?))?
            .keys()
            .count();
        out.insert("PORTSETS".to_string(), n);
        // TCX links are pinned; netlink filters are recorded next to the pins.
        let count = |sub: &str| {
            std::fs::read_dir(dir.join(sub))
                .map(|d| d.count())
                .unwrap_or(0)
        };
        out.insert("attachments".to_string(), count("links") + count("netlink"));
        Ok(out)
    }

    /// A cgroup v2 per node (under the machine's cgroup v2 mount, in a directory of this
    /// sandbox's): each node's agent attaches `to_node` to its node's, so only the
    /// processes of that node's host network are under it. The agents see the hierarchy
    /// through a mount in the sandbox's folder: `ip netns exec` mounts a /sys of its own.
    fn make_node_cgroups(&mut self) -> Result<()> {
        self.node_cgroups = vec![None; self.nodes];
        let Some(mnt) = cgroup2_mount() else {
            return Ok(());
        };
        let top = mnt.join(&self.tag);
        std::fs::create_dir(&top).with_context(|| format!("creating {}", top.display()))?;
        let mut made = vec![top.clone()];
        for i in 0..self.nodes {
            let cg = top.join(format!("n{}", i + 1));
            std::fs::create_dir(&cg).with_context(|| format!("creating {}", cg.display()))?;
            made.push(cg);
        }
        let seen = self.dir.join("cgroup2");
        std::fs::create_dir_all(&seen)?;
        let mut c = self
            .cleanup
            .lock()
            .map_err(|_| anyhow!("cleanup poisoned"))?;
        c.cgroups.extend(made);
        run(&["mount", "-t", "cgroup2", "none", &seen.to_string_lossy()])?;
        c.mounts.push(seen.clone());
        drop(c);
        self.node_cgroups = (0..self.nodes)
            .map(|i| Some(seen.join(&self.tag).join(format!("n{}", i + 1))))
            .collect();
        Ok(())
    }

    /// The cgroup of the node whose network namespace is `netns`, if it is a node's.
    fn cgroup_of_netns(&self, netns: &str) -> Option<&Path> {
        (0..self.nodes)
            .find(|i| self.node_ns(*i) == netns)
            .and_then(|i| self.node_cgroups.get(i)?.as_deref())
    }

    fn spawn_in(&self, netns: &str, args: &[String], log: &Path) -> Result<Child> {
        let logf = std::fs::File::create(log)?;
        let mut cmd = match self.cgroup_of_netns(netns) {
            // The process joins its node's cgroup before it makes a socket: a socket
            // belongs to the cgroup its maker was in then.
            Some(cg) => {
                let mut c = Command::new("sh");
                c.args(["-c", "echo $$ > \"$0\" && exec \"$@\""])
                    .arg(cg.join("cgroup.procs"))
                    .arg("ip");
                c
            }
            None => Command::new("ip"),
        };
        let child = cmd
            .args(["netns", "exec", netns])
            .args(args)
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .spawn()
            .with_context(|| format!("starting {:?} in {netns}", args.first()))?;
        self.cleanup
            .lock()
            .map_err(|_| anyhow!("cleanup poisoned"))?
            .pids
            .push(child.id());
        Ok(child)
    }

    fn start_servers(&mut self) -> Result<()> {
        let probe = self.cfg.probe.to_string_lossy().to_string();
        let mut to_start = Vec::new();
        for p in &self.model.pods {
            let mut args = vec![
                probe.clone(),
                "serve".into(),
                "--name".into(),
                format!("{}/{}", p.ns, p.name),
            ];
            let mut any = false;
            for port in &p.ports {
                let flag = match port.protocol.as_str() {
                    "TCP" => "--tcp",
                    "UDP" => "--udp",
                    "SCTP" => "--sctp",
                    _ => continue,
                };
                args.push(flag.into());
                args.push(port.port.to_string());
                any = true;
            }
            if any {
                to_start.push((
                    self.pods[&format!("{}/{}", p.ns, p.name)].netns.clone(),
                    args,
                    format!("server-{}-{}", p.ns, p.name),
                ));
            }
        }
        // Every node serves 10250 (TCP and UDP) as a kubelet would.
        for i in 0..self.nodes {
            let name = node_name(i);
            let args = vec![
                probe.clone(),
                "serve".into(),
                "--name".into(),
                format!("node:{name}"),
                "--tcp".into(),
                "10250".into(),
                "--udp".into(),
                "10250".into(),
            ];
            to_start.push((self.node_ns(i), args, format!("server-{name}")));
        }
        for e in &self.model.external {
            let mut args = vec![
                probe.clone(),
                "serve".into(),
                "--name".into(),
                format!("ext/{}", e.name),
                "--bind".into(),
                self.external[&e.name].to_string(),
            ];
            for port in &e.ports {
                let flag = if port.protocol == "UDP" {
                    "--udp"
                } else {
                    "--tcp"
                };
                args.push(flag.into());
                args.push(port.port.to_string());
            }
            to_start.push((self.netns("ext"), args, format!("server-ext-{}", e.name)));
        }
        for (ns, args, log) in to_start {
            let child = self.spawn_in(&ns, &args, &self.dir.join(format!("{log}.log")))?;
            self.servers.push(child);
        }
        Ok(())
    }

    /// A private bpffs for the agents' pins: gone with the sandbox.
    fn mount_bpffs(&self) -> Result<PathBuf> {
        let bpf = self.dir.join("bpf");
        std::fs::create_dir_all(&bpf)?;
        run(&["mount", "-t", "bpf", "bpf", &bpf.to_string_lossy()])?;
        self.cleanup
            .lock()
            .map_err(|_| anyhow!("cleanup poisoned"))?
            .mounts
            .push(bpf.clone());
        Ok(bpf)
    }

    fn agent_args(&self, i: usize) -> Vec<String> {
        let node = node_name(i);
        let mut args = vec![
            self.cfg.agent.to_string_lossy().to_string(),
            "--node-name".into(),
            node.clone(),
            "--kubeconfig".into(),
            self.kubeconfig.to_string_lossy().to_string(),
            "--status-file".into(),
            self.dir
                .join(format!("status-{node}.json"))
                .to_string_lossy()
                .to_string(),
            "--attach-mode".into(),
            self.cfg.attach_mode.clone(),
            "--pin-dir".into(),
            self.dir
                .join("bpf")
                .join(&node)
                .to_string_lossy()
                .to_string(),
            "--node-cgroup".into(),
            match self.node_cgroups.get(i).cloned().flatten() {
                Some(cg) => cg.to_string_lossy().to_string(),
                None => "off".into(),
            },
            "--cni-socket".into(),
            // For showing what the plugin is for: agents that never hear from it.
            if std::env::var_os("NETPOL_SANDBOX_NO_CNI_SOCKET").is_some() {
                "none".into()
            } else {
                self.cni_socket(i).to_string_lossy().to_string()
            },
        ];
        args.extend(self.cfg.agent_args.iter().cloned());
        // For experiments: extra agent flags, space-separated.
        if let Ok(extra) = std::env::var("NETPOL_SANDBOX_AGENT_ARGS") {
            args.extend(extra.split_whitespace().map(String::from));
        }
        args
    }

    /// Kills the agent of node `i` (SIGKILL: no chance to clean up) and waits for it.
    pub fn kill_agent(&mut self, i: usize) -> Result<()> {
        let a = self
            .agents
            .get_mut(i)
            .ok_or_else(|| anyhow!("no agent {i}"))?;
        a.child.kill()?;
        a.child.wait()?;
        Ok(())
    }

    /// Node `i`'s agent's pin directory.
    pub fn pin_dir(&self, i: usize) -> PathBuf {
        self.dir.join("bpf").join(node_name(i))
    }

    /// The verdict events node `i`'s agent has (`netpol-agent monitor --once -o json`,
    /// run in the node's network namespace, where the agent's HTTP endpoint listens).
    pub fn events(&self, i: usize) -> Result<Vec<netpol_agent::events::Event>> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.node_ns(i)])
            .arg(&self.cfg.agent)
            .args(["monitor", "--once", "-o", "json"])
            .stdin(Stdio::null())
            .output()
            .context("running netpol-agent monitor")?;
        if !out.status.success() {
            bail!(
                "netpol-agent monitor failed on node {i}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).with_context(|| format!("an event: {l}")))
            .collect()
    }

    /// Runs `netpol-agent cleanup` in node `i`'s network namespace, as the uninstall
    /// manifests do on a node; returns what it printed.
    pub fn cleanup_node(&self, i: usize) -> Result<String> {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.node_ns(i)])
            .arg(&self.cfg.agent)
            .arg("cleanup")
            .arg("--pin-dir")
            .arg(self.pin_dir(i))
            .stdin(Stdio::null())
            .output()
            .context("running netpol-agent cleanup")?;
        if !out.status.success() {
            bail!(
                "netpol-agent cleanup failed on node {i}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `tc filter` lines of node `i`'s interfaces that run a program of netpol's.
    pub fn netpol_filters(&self, i: usize) -> Result<Vec<String>> {
        let ns = self.node_ns(i);
        let links = Command::new("ip")
            .args(["-n", &ns, "-o", "link", "show"])
            .output()
            .context("listing node links")?;
        let mut found = Vec::new();
        for line in String::from_utf8_lossy(&links.stdout).lines() {
            let Some(name) = line.split(": ").nth(1) else {
                continue;
            };
            let name = name.split('@').next().unwrap_or(name);
            for dir in ["ingress", "egress"] {
                let out = Command::new("ip")
                    .args([
                        "netns", "exec", &ns, "tc", "filter", "show", "dev", name, dir,
                    ])
                    .output()
                    .context("listing tc filters")?;
                for f in String::from_utf8_lossy(&out.stdout).lines() {
                    if ["from_pod", "to_pod", "uplink_egress"]
                        .iter()
                        .any(|p| f.contains(&format!("{p}:")) || f.contains(&format!(" {p} ")))
                    {
                        found.push(format!("{name} {dir}: {f}"));
                    }
                }
            }
        }
        Ok(found)
    }

    /// Starts node `i`'s agent again (after `kill_agent`), logging to a new file.
    pub fn restart_agent(&mut self, i: usize) -> Result<()> {
        let n = self.restarts;
        self.restarts += 1;
        let log = self
            .dir
            .join(format!("agent-{}-restart{n}.log", node_name(i)));
        let args = self.agent_args(i);
        let child = self.spawn_in(&self.netns(&format!("n{}", i + 1)), &args, &log)?;
        let a = self
            .agents
            .get_mut(i)
            .ok_or_else(|| anyhow!("no agent {i}"))?;
        a.child = child;
        a.log = log;
        Ok(())
    }

    fn start_agents(&mut self) -> Result<()> {
        self.mount_bpffs()?;
        for i in 0..self.nodes {
            let node = node_name(i);
            let status_file = self.dir.join(format!("status-{node}.json"));
            let log = self.dir.join(format!("agent-{node}.log"));
            let args = self.agent_args(i);
            let child = self.spawn_in(&self.netns(&format!("n{}", i + 1)), &args, &log)?;
            self.agents.push(AgentProc {
                node,
                child,
                status_file,
                log,
            });
        }
        Ok(())
    }

    fn namespace_object(&self, ns: &str) -> Value {
        json!({"metadata": {"name": ns, "labels": self.ns_labels.get(ns).cloned().unwrap_or_default()}})
    }

    fn pod_object(&self, p: &crate::cases::PodDef) -> Value {
        let key = format!("{}/{}", p.ns, p.name);
        let place = &self.pods[&key];
        let ports: Vec<Value> = p
            .ports
            .iter()
            .map(|c| json!({"name": c.name, "containerPort": c.port, "protocol": c.protocol}))
            .collect();
        json!({"metadata": {"name": p.name, "namespace": p.ns, "labels": self.pod_labels[&key]},
            "spec": {"nodeName": node_name(place.node), "hostNetwork": p.host_network,
                     "containers": [{"name": "main", "image": "sandbox", "ports": ports}]},
            "status": {"phase": "Running", "podIP": place.ip.to_string(),
                       "podIPs": [{"ip": place.ip.to_string()}]}})
    }

    /// The model's nodes, namespaces, pods and Services, created on the API server.
    fn seed_api(&self) -> Result<()> {
        for i in 0..self.nodes {
            let name = node_name(i);
            let labels = self
                .model
                .node_labels
                .get(&name)
                .cloned()
                .unwrap_or_default();
            self.api.apply(
                Kind::Node,
                json!({"metadata": {"name": name, "labels": labels},
                       "status": {"addresses": [{"type": "InternalIP",
                                                 "address": self.node_addr(i).to_string()}]}}),
            )?;
        }
        for ns in self.ns_labels.keys() {
            self.api.apply(Kind::Namespace, self.namespace_object(ns))?;
        }
        for p in &self.model.pods {
            self.api.apply(Kind::Pod, self.pod_object(p))?;
        }
        for s in &self.model.services {
            let ip = self.services[&format!("{}/{}", s.ns, s.name)];
            let ports: Vec<Value> = s
                .ports
                .iter()
                .map(|p| json!({"port": p.port, "protocol": p.protocol, "targetPort": p.target_port}))
                .collect();
            self.api.apply(
                Kind::Service,
                json!({"metadata": {"name": s.name, "namespace": s.ns},
                       "spec": {"clusterIP": ip.to_string(), "clusterIPs": [ip.to_string()],
                                "selector": s.selector, "ports": ports}}),
            )?;
        }
        Ok(())
    }

    /// The API server, served on 127.0.0.1:6443 inside every node namespace.
    fn start_api(&mut self) -> Result<()> {
        for i in 0..self.nodes {
            let ns = self.node_ns(i);
            let listener = crate::apiserver::listen_in_netns(&ns, API_PORT)?;
            let _enter = self.rt.enter();
            let listener = tokio::net::TcpListener::from_std(listener)?;
            self.rt.spawn(self.api.clone().serve(listener));
        }
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sandbox\n  cluster: {{server: \"http://127.0.0.1:{API_PORT}\"}}\nusers:\n- name: agent\n  user: {{}}\ncontexts:\n- name: sandbox\n  context: {{cluster: sandbox, user: agent}}\ncurrent-context: sandbox\n"
        );
        std::fs::write(&self.kubeconfig, kubeconfig)?;
        self.seed_api()
    }

    /// The API server the agents watch (tests use it to inject faults).
    pub fn api(&self) -> &ApiServer {
        &self.api
    }

    /// Replaces `{{ip NS/POD}}` and `{{cidr4 NS/POD}}` with run-time addresses.
    pub fn substitute(&self, text: &str) -> Result<String> {
        let mut out = String::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            out.push_str(&rest[..start]);
            let end = rest[start..]
                .find("}}")
                .ok_or_else(|| anyhow!("unclosed placeholder in {text:?}"))?;
            let inner = rest[start + 2..start + end].trim();
            let (kind, pod) = inner
                .split_once(' ')
                .ok_or_else(|| anyhow!("bad placeholder {inner:?}"))?;
            let place = self
                .pods
                .get(pod.trim())
                .ok_or_else(|| anyhow!("placeholder names unknown pod {pod:?}"))?;
            match kind {
                // IPv4 here; `translate_ip_blocks` carries them into IPv6 mode.
                "ip" => out.push_str(&place.v4.to_string()),
                "cidr4" => {
                    let net = ipnet::Ipv4Net::new(place.v4, 4)?.trunc();
                    out.push_str(&net.to_string());
                }
                other => bail!("unknown placeholder {other:?}"),
            }
            rest = &rest[start + end + 2..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Makes `policies` the ClusterNetworkPolicies in force (installing their CRD first
    /// when there are any), without waiting: `apply` waits for everything.
    pub fn set_cluster_policies(&mut self, policies: &[Value]) -> Result<()> {
        if policies.is_empty() && self.api.list(Kind::ClusterNetworkPolicy).is_empty() {
            return Ok(());
        }
        self.api.install_crd();
        let mut wanted: BTreeMap<String, Value> = BTreeMap::new();
        for p in policies {
            let text = self.substitute(&p.to_string())?;
            let mut v: Value =
                serde_json::from_str(&text).context("ClusterNetworkPolicy after substitution")?;
            translate_ip_blocks(&mut v, self.fam());
            let name = (v.pointer("/metadata/name").and_then(Value::as_str))
                .ok_or_else(|| anyhow!("a ClusterNetworkPolicy without metadata.name"))?
                .to_string();
            wanted.insert(name, v);
        }
        for existing in self.api.list(Kind::ClusterNetworkPolicy) {
            let name = existing
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !wanted.contains_key(name) {
                self.api.delete(Kind::ClusterNetworkPolicy, "", name);
            }
        }
        for (name, p) in wanted {
            let current = self.api.get(Kind::ClusterNetworkPolicy, "", &name);
            if current.as_ref().and_then(|c| c.get("spec")) != p.get("spec") {
                self.api.apply(Kind::ClusterNetworkPolicy, p)?;
            }
        }
        Ok(())
    }

    /// Applies a step's state and waits until every agent enforces it. Returns how long
    /// that took.
    pub fn apply(
        &mut self,
        policies: &[Value],
        ns_labels: &BTreeMap<String, Labels>,
        pod_labels: &BTreeMap<String, Labels>,
    ) -> Result<Duration> {
        for (ns, l) in ns_labels {
            self.ns_labels.insert(ns.clone(), l.clone());
        }
        for (pod, l) in pod_labels {
            if !self.pod_labels.contains_key(pod) {
                bail!("pod_labels names unknown pod {pod}");
            }
            self.pod_labels.insert(pod.clone(), l.clone());
        }
        let policies: Vec<Value> = policies
            .iter()
            .map(|p| {
                let text = self.substitute(&p.to_string())?;
                let mut v: Value =
                    serde_json::from_str(&text).context("policy after substitution")?;
                translate_ip_blocks(&mut v, self.fam());
                Ok(v)
            })
            .collect::<Result<_>>()?;
        let started = Instant::now();
        for ns in ns_labels.keys() {
            self.api.apply(Kind::Namespace, self.namespace_object(ns))?;
        }
        for pod in pod_labels.keys() {
            if let Some(def) = self
                .model
                .pods
                .iter()
                .find(|p| format!("{}/{}", p.ns, p.name) == *pod)
            {
                self.api.apply(Kind::Pod, self.pod_object(def))?;
            }
        }
        // The step's policies are the full set: delete the others, write what changed.
        let key = |p: &Value| {
            (
                p.pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .unwrap_or("default")
                    .to_string(),
                p.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            )
        };
        let wanted: BTreeMap<(String, String), &Value> =
            policies.iter().map(|p| (key(p), p)).collect();
        for existing in self.api.list(Kind::NetworkPolicy) {
            let k = key(&existing);
            if !wanted.contains_key(&k) {
                self.api.delete(Kind::NetworkPolicy, &k.0, &k.1);
            }
        }
        for ((ns, name), p) in &wanted {
            let current = self.api.get(Kind::NetworkPolicy, ns, name);
            let same = current.as_ref().is_some_and(|c| {
                c.get("spec") == p.get("spec")
                    && c.pointer("/metadata/labels") == p.pointer("/metadata/labels")
                    && c.pointer("/metadata/annotations") == p.pointer("/metadata/annotations")
            });
            if !same {
                let mut obj = (*p).clone();
                obj["metadata"]["namespace"] = json!(ns);
                self.api.apply(Kind::NetworkPolicy, obj)?;
            }
        }
        self.wait_applied(Duration::from_secs(15))?;
        Ok(started.elapsed())
    }

    /// Waits until every agent enforces a state that includes the API server's latest
    /// change of every kind, on every local pod's veth.
    pub fn wait_applied(&mut self, limit: Duration) -> Result<()> {
        let target = self.api.last_changes();
        let deadline = Instant::now() + limit;
        loop {
            let mut pending = Vec::new();
            for a in &mut self.agents {
                if let Ok(Some(code)) = a.child.try_wait() {
                    bail!("agent on {} exited ({code}):\n{}", a.node, tail(&a.log, 30));
                }
                let done = read_status(&a.status_file).is_some_and(|s| {
                    target.iter().all(|(kind, rv)| {
                        s.applied_versions.get(kind.kind()).is_some_and(|v| v >= rv)
                    }) && s.endpoints.iter().all(|e| e.interface.is_some())
                });
                if !done {
                    pending.push(a.node.clone());
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let logs: String = self
                    .agents
                    .iter()
                    .map(|a| format!("--- {}\n{}", a.node, tail(&a.log, 15)))
                    .collect();
                bail!("agents {pending:?} did not apply the change within {limit:?}\n{logs}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Status of each node's agent, as last written.
    pub fn statuses(&self) -> Vec<Status> {
        self.agents
            .iter()
            .filter_map(|a| read_status(&a.status_file))
            .collect()
    }

    /// Entries in node `i`'s conntrack map `name` (`CONNTRACK`, replied connections, or
    /// `CONNTRACK_NEW`, unreplied ones) now, and the map's size.
    pub fn conntrack_count(&self, i: usize, name: &str) -> Result<(usize, u32)> {
        use aya::maps::{HashMap, Map, MapData};
        use netpol_common::{CtEntry, CtKey};
        let pin = self
            .dir
            .join("bpf")
            .join(node_name(i))
            .join(format!("v{}", netpol_common::LAYOUT_VERSION))
            .join("maps")
            .join(name);
        let data = MapData::from_pin(&pin)
            .with_context(|| format!("opening the pinned conntrack map {name}"))?;
        let size = data.info()?.max_entries();
        let map = HashMap::<_, CtKey, CtEntry>::try_from(Map::LruHashMap(data))?;
        Ok((map.keys().count(), size))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `program args...` to run inside a pod's network namespace.
    pub fn command_in(&self, pod: &str, program: &OsStr, args: &[&str]) -> Result<Command> {
        let place = self.pods.get(pod).ok_or_else(|| anyhow!("no pod {pod}"))?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &place.netns])
            .arg(program)
            .args(args)
            .stdin(Stdio::null());
        Ok(c)
    }

    fn probe_command(&self, pod: &str, args: &[&str]) -> Result<Command> {
        self.command_in(pod, self.cfg.probe.as_os_str(), args)
    }

    /// Runs the probe tool inside a pod (`args` after the binary), waiting for it.
    pub fn probe_in(&self, pod: &str, args: &[&str]) -> Result<std::process::Output> {
        self.probe_command(pod, args)?
            .output()
            .with_context(|| format!("running the probe in {pod}"))
    }

    /// Starts the probe tool inside a pod without waiting (output captured).
    pub fn spawn_probe_in(&self, pod: &str, args: &[&str]) -> Result<Child> {
        let child = self
            .probe_command(pod, args)?
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting the probe in {pod}"))?;
        self.cleanup
            .lock()
            .map_err(|_| anyhow!("cleanup poisoned"))?
            .pids
            .push(child.id());
        Ok(child)
    }

    /// A process serving `args` (probe `serve ...`) inside a pod, for the sandbox's life.
    pub fn serve_in(&mut self, pod: &str, args: &[&str]) -> Result<()> {
        let mut all = vec![self.cfg.probe.to_string_lossy().to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        self.run_in_background(pod, &all)
    }

    /// Any program (`argv`) inside a pod, for the sandbox's life; its output goes to a log
    /// in the sandbox's folder.
    pub fn run_in_background(&mut self, pod: &str, argv: &[String]) -> Result<()> {
        let place = self.pods.get(pod).ok_or_else(|| anyhow!("no pod {pod}"))?;
        let log = self.dir.join(format!(
            "extra-{}-{}.log",
            pod.replace('/', "-"),
            self.servers.len()
        ));
        let child = self.spawn_in(&place.netns.clone(), argv, &log)?;
        self.servers.push(child);
        Ok(())
    }

    pub fn node_count(&self) -> usize {
        self.nodes
    }

    pub fn agent_log(&self, i: usize) -> Option<PathBuf> {
        self.agents.get(i).map(|a| a.log.clone())
    }

    /// Status files of the agents, by node index.
    pub fn status_of(&self, i: usize) -> Option<Status> {
        self.agents.get(i).and_then(|a| read_status(&a.status_file))
    }
}

/// Rewrites every ipBlock CIDR of a policy into the sandbox's family.
/// CIDRs of ipBlocks and ClusterNetworkPolicy `networks`, into the sandbox's family.
fn translate_ip_blocks(v: &mut Value, fam: Family) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Array(nets)) = map.get_mut("networks") {
                for n in nets.iter_mut() {
                    if let Value::String(c) = n {
                        *c = fam.translate_cidr(c);
                    }
                }
            }
            if let Some(Value::Object(block)) = map.get_mut("ipBlock") {
                if let Some(Value::String(c)) = block.get_mut("cidr") {
                    *c = fam.translate_cidr(c);
                }
                if let Some(Value::Array(ex)) = block.get_mut("except") {
                    for e in ex.iter_mut() {
                        if let Value::String(c) = e {
                            *c = fam.translate_cidr(c);
                        }
                    }
                }
            }
            for (_, child) in map.iter_mut() {
                translate_ip_blocks(child, fam);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| translate_ip_blocks(i, fam)),
        _ => {}
    }
}

fn read_status(path: &Path) -> Option<Status> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for a in &mut self.agents {
            // SAFETY: plain syscall on our child.
            unsafe { libc::kill(a.child.id() as i32, libc::SIGTERM) };
        }
        for a in &mut self.agents {
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = a.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = a.child.kill();
            let _ = a.child.wait();
        }
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        if std::env::var_os("NETPOL_SANDBOX_KEEP_LOGS").is_some()
            && let Ok(mut c) = self.cleanup.lock()
        {
            eprintln!("sandbox logs kept in {}", self.dir.display());
            c.dir = None;
        }
        if let Ok(mut c) = self.cleanup.lock() {
            c.run();
        }
        if let Ok(mut all) = registry().lock() {
            all.retain(|c| !Arc::ptr_eq(c, &self.cleanup));
        }
    }
}
