//! The BPF object: loading it, handing its maps to the programmer, and attaching its
//! classifiers to pod veths and uplinks.

pub mod cleanup;
pub mod kernel_conntrack;
pub mod link_events;
pub mod nexthops;
pub mod node_addrs;
pub mod node_cgroup;
pub mod pod_links;
pub mod routes;
mod rtnl;
pub mod uplinks;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{HashMap, LpmTrie, PerCpuArray};
use aya::programs::tc::{NlOptions, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfLoader};
use netpol_common::{names, sizes};

use crate::events::datapath_log::{DatapathLog, Level};
use crate::program::kernel::KernelMaps;

/// The object built by build.rs from `netpol-ebpf`.
/// The BPF object, as built (tests load parts of it on their own).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netpol"));

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// TCX links on kernels >= 6.6, netlink clsact filters below.
    Auto,
    /// TCX links (kernel >= 6.6).
    Tcx,
    /// clsact qdisc + direct-action cls_bpf filters (any kernel).
    Netlink,
}

/// Sizes of the maps that grow with the cluster.
#[derive(Clone, Debug, clap::Args)]
pub struct MapSizes {
    /// Entries of the conntrack map of replied connections (LRU).
    #[arg(long, default_value_t = sizes::CONNTRACK)]
    pub conntrack_entries: u32,
    /// Entries of the conntrack map of connections waiting for their first reply (LRU):
    /// a flood of new flows churns only this one.
    #[arg(long, default_value_t = sizes::CONNTRACK_NEW)]
    pub conntrack_new_entries: u32,
    /// Entries of the peer-identity map ((rule set, pod identity) pairs, summed over rule
    /// sets).
    #[arg(long, default_value_t = sizes::PEERS_BY_IDENTITY)]
    pub peer_entries: u32,
    /// Entries of the address-to-identity map (every pod address of the cluster).
    #[arg(long, default_value_t = sizes::IDENTITIES)]
    pub identity_entries: u32,
    /// Entries of the CIDR peer map (LPM trie, summed over rule sets).
    #[arg(long, default_value_t = sizes::PEERS_CIDR)]
    pub cidr_entries: u32,
    /// Entries of the Service address map (ClusterIPs of the cluster).
    #[arg(long, default_value_t = sizes::SERVICES)]
    pub service_entries: u32,
    /// Entries of the port-set map (distinct port sets, shared by rule sets).
    #[arg(long, default_value_t = sizes::PORTSETS)]
    pub portset_entries: u32,
}

impl MapSizes {
    /// Capacity of each map the agent reports on, by name.
    pub fn capacities(&self) -> BTreeMap<&'static str, u32> {
        BTreeMap::from([
            (names::ENDPOINTS, sizes::ENDPOINTS),
            (names::IFACES, sizes::IFACES),
            (names::SERVICES, self.service_entries),
            (names::NODE_ADDRS, sizes::NODE_ADDRS),
            (names::ADMIN_TABLES, sizes::ADMIN_TABLES),
            (names::IDENTITIES, self.identity_entries),
            (names::PEERS_BY_IDENTITY, self.peer_entries),
            (names::PEERS_CIDR, self.cidr_entries),
            (names::PORTSETS, self.portset_entries),
            (names::CONNTRACK, self.conntrack_entries),
            (names::CONNTRACK_NEW, self.conntrack_new_entries),
        ])
    }
}

/// Where a classifier runs.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum Hook {
    /// Pod veth, TC ingress: what the pod sends.
    FromPod,
    /// Pod veth, TC egress: what the pod receives.
    ToPod,
    /// Node uplink, TC egress.
    Uplink,
    /// The empty classifier (never attached): the benchmarks' baseline.
    Empty,
    /// Only the established path's conntrack lookup (never attached, and loaded only when
    /// a test run asks for it): its floor.
    ConntrackFloor,
    /// The node's cgroup, cgroup_skb ingress (see `node_cgroup`). A test run gives it an
    /// Ethernet frame like the others; the kernel strips the header, as the stack has.
    ToNode,
}

impl Hook {
    const ALL: [Hook; 3] = [Hook::FromPod, Hook::ToPod, Hook::Uplink];

    fn program(self) -> &'static str {
        match self {
            Hook::FromPod => names::PROG_FROM_POD,
            Hook::ToPod => names::PROG_TO_POD,
            Hook::Uplink => names::PROG_UPLINK,
            Hook::Empty => names::PROG_EMPTY,
            Hook::ConntrackFloor => names::PROG_CONNTRACK_FLOOR,
            Hook::ToNode => names::PROG_TO_NODE,
        }
    }
    fn attach_type(self) -> TcAttachType {
        match self {
            Hook::FromPod => TcAttachType::Ingress,
            Hook::ToPod | Hook::Uplink | Hook::Empty | Hook::ConntrackFloor | Hook::ToNode => {
                TcAttachType::Egress
            }
        }
    }
}

/// A netlink filter of ours, recorded so a later run can replace or remove it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct NlFilter {
    hook: Hook,
    priority: u16,
    handle: u32,
}

/// One interface's attachments.
#[derive(Default)]
struct Attached {
    hooks: Vec<Hook>,
    /// Attached by an earlier run: our programs must still replace its.
    adopted: bool,
}

/// Where pins live: `<pin dir>/v<LAYOUT_VERSION>/{maps,links,netlink}`.
#[derive(Clone, Debug)]
struct Pins {
    root: PathBuf,
    dir: PathBuf,
}

impl Pins {
    fn maps(&self) -> PathBuf {
        self.dir.join("maps")
    }
    /// bpffs refuses names with a `.` (interface names may have one, VLANs say), and
    /// interface names never contain `:`.
    fn link(&self, iface: &str, hook: Hook) -> PathBuf {
        self.dir
            .join("links")
            .join(format!("{}@{}", iface.replace('.', ":"), hook.program()))
    }
    /// `to_node`'s cgroup link (`node` is no interface: its hook is no TC hook).
    fn node_link(&self) -> PathBuf {
        self.dir
            .join("links")
            .join(format!("node@{}", names::PROG_TO_NODE))
    }
    /// Netlink filters are recorded as empty directories (bpffs holds no regular files),
    /// `<iface>@<program>@<priority>@<handle>`, so the records live exactly as long as the
    /// pins.
    fn netlink_records(&self) -> PathBuf {
        self.dir.join("netlink")
    }

    /// The pinned TCX links: (interface, hook, pin).
    fn pinned_links(&self) -> Vec<(String, Hook, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(self.dir.join("links")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let (iface, prog) = name.rsplit_once('@')?;
                let hook = Hook::ALL.into_iter().find(|h| h.program() == prog)?;
                Some((iface.replace(':', "."), hook, e.path()))
            })
            .collect()
    }

    /// The recorded netlink filters: (interface, filter).
    fn netlink_filters(&self) -> Vec<(String, NlFilter)> {
        let Ok(entries) = std::fs::read_dir(self.netlink_records()) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let parts: Vec<&str> = name.split('@').collect();
                let [iface, prog, prio, handle] = parts.as_slice() else {
                    return None;
                };
                let filter = NlFilter {
                    hook: Hook::ALL.into_iter().find(|h| h.program() == *prog)?,
                    priority: prio.parse().ok()?,
                    handle: handle.parse().ok()?,
                };
                Some((iface.replace(':', "."), filter))
            })
            .collect()
    }
}

/// Which verdicts the programs report as events (`--events`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum EventKind {
    None,
    /// Every drop.
    #[default]
    Drop,
    /// Every drop, and the openings a rule allowed (not every packet of a tracked
    /// connection).
    Allow,
}

impl EventKind {
    fn mode(self) -> u8 {
        match self {
            EventKind::None => netpol_common::events::NONE,
            EventKind::Drop => netpol_common::events::DROPS,
            EventKind::Allow => netpol_common::events::DROPS_AND_ALLOWS,
        }
    }
}

/// Verdict events: which, and at most how many per pod and second (per CPU: the budget
/// is kept where the packet is judged, without locks).
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct EventOptions {
    /// Verdicts reported as events (`/events`, `netpol-agent monitor`).
    #[arg(long = "events", value_enum, default_value_t = EventKind::Drop)]
    pub kind: EventKind,
    /// Events per pod and second, per CPU (also the burst); the rest are counted as
    /// suppressed.
    #[arg(long = "events-rate", default_value_t = 20)]
    pub per_second: u32,
    /// What the programs write to the agent's log (aya-log, target `netpol::datapath`):
    /// rare conditions such as a full map or a frame that cannot be parsed. Off by
    /// default: an attacker's malformed frames must not flood the log.
    #[arg(long = "datapath-log", value_enum, default_value_t = Level::Off)]
    pub datapath_log: Level,
}

impl Default for EventOptions {
    fn default() -> Self {
        EventOptions {
            kind: EventKind::Drop,
            per_second: 20,
            datapath_log: Level::Off,
        }
    }
}

pub struct Datapath {
    ebpf: Ebpf,
    mode: AttachMode,
    pins: Option<Pins>,
    links: BTreeMap<String, Attached>,
    /// Our netlink filters by interface (persisted next to the pins).
    filters: BTreeMap<String, Vec<NlFilter>>,
    /// TCX links made without a pin directory: held here, so detaching drops them (a
    /// pinned link is destroyed by unpinning it).
    unpinned_links: BTreeMap<(String, Hook), aya::programs::links::FdLink>,
    /// `to_node` on the node's cgroup, once attached.
    node_hook: Option<node_cgroup::NodeHook>,
    /// This kernel's BPF_PROG_TEST_RUN refuses a context that sets `ingress_ifindex`
    /// (5.10 does); learnt at the first test run that needs it.
    test_run_no_ingress: bool,
}

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_SHOT: i32 = 2;

/// The netlink filter preference netpol's filters take: the first.
const NETLINK_PRIORITY: u16 = 1;

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: zeroed statfs is valid; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers for the call.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

impl Datapath {
    /// Loads the programs. With `pin_dir` (on a bpffs), maps are pinned there and reused
    /// when already pinned, links are pinned too, and what an earlier run attached is
    /// adopted: enforcement never stops across restarts and upgrades.
    pub fn load(mode: AttachMode, sizes: &MapSizes, pin_dir: Option<&Path>) -> Result<Self> {
        Self::load_with_events(mode, sizes, pin_dir, EventOptions::default())
    }

    /// `load`, with the verdict events the programs report.
    pub fn load_with_events(
        mode: AttachMode,
        sizes: &MapSizes,
        pin_dir: Option<&Path>,
        events: EventOptions,
    ) -> Result<Self> {
        if OBJECT.is_empty() {
            bail!(
                "this agent was built without its BPF object (AYA_BUILD_SKIP was set); rebuild it normally"
            );
        }
        let mode = match mode {
            AttachMode::Auto if tcx_supported() => AttachMode::Tcx,
            AttachMode::Auto => AttachMode::Netlink,
            m => m,
        };
        let pins = match pin_dir {
            None => None,
            Some(root) => {
                std::fs::create_dir_all(root)
                    .with_context(|| format!("creating pin directory {}", root.display()))?;
                if !is_bpffs(root) {
                    bail!(
                        "{} is not on a bpffs (mount one: mount -t bpf bpf /sys/fs/bpf)",
                        root.display()
                    );
                }
                let pins = Pins {
                    root: root.to_path_buf(),
                    dir: root.join(format!("v{}", netpol_common::LAYOUT_VERSION)),
                };
                for d in [pins.maps(), pins.dir.join("links")] {
                    std::fs::create_dir_all(&d)
                        .with_context(|| format!("creating {}", d.display()))?;
                }
                Some(pins)
            }
        };
        let mut loader = EbpfLoader::new();
        let coarse_clock = u8::from(kernel_at_least(5, 11));
        let events_mode = events.kind.mode();
        let log_level = events.datapath_log.global();
        loader
            .override_global("COARSE_CLOCK", &coarse_clock, true)
            .override_global("EVENTS_MODE", &events_mode, true)
            .override_global("EVENTS_PER_SECOND", &events.per_second, true)
            .override_global("AYA_LOG_LEVEL", &log_level, true)
            .map_max_entries(names::CONNTRACK, sizes.conntrack_entries)
            .map_max_entries(names::CONNTRACK_NEW, sizes.conntrack_new_entries)
            .map_max_entries(names::PEERS_BY_IDENTITY, sizes.peer_entries)
            .map_max_entries(names::IDENTITIES, sizes.identity_entries)
            .map_max_entries(names::PEERS_CIDR, sizes.cidr_entries)
            .map_max_entries(names::SERVICES, sizes.service_entries)
            .map_max_entries(names::PORTSETS, sizes.portset_entries);
        let map_names = [
            names::IFACES,
            names::IFACE_SLOTS,
            names::ENDPOINTS,
            names::SERVICES,
            names::PEERS_BY_IDENTITY,
            names::IDENTITIES,
            names::PEERS_CIDR,
            names::PORTSETS,
            names::CONNTRACK,
            names::CONNTRACK_NEW,
            names::SERVICE_FLOWS,
            names::SERVICE_FLOWS_NEW,
            names::EVENTS,
            names::EVENT_BUDGET,
            names::EVENT_STATS,
            names::UPLINKS,
            names::FRAGMENTS,
            names::NODE_ADDRS,
            names::ADMIN_TABLES,
            names::META,
            names::COUNTERS,
            names::RULE_COUNTERS,
        ];
        if let Some(p) = &pins {
            for name in map_names {
                loader.map_pin_path(name, p.maps().join(name));
            }
        }
        let mut ebpf = loader
            .load(OBJECT)
            .context("loading the BPF object (needs root or CAP_BPF + CAP_NET_ADMIN)")?;
        for name in [
            names::PROG_FROM_POD,
            names::PROG_TO_POD,
            names::PROG_UPLINK,
            names::PROG_EMPTY,
        ] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the BPF object"))?
                .try_into()
                .with_context(|| format!("program {name} is not a classifier"))?;
            load_program(prog, name)?;
        }
        let mut dp = Datapath {
            ebpf,
            mode,
            pins,
            links: BTreeMap::new(),
            filters: BTreeMap::new(),
            unpinned_links: BTreeMap::new(),
            node_hook: None,
            test_run_no_ingress: false,
        };
        dp.adopt_attachments();
        Ok(dp)
    }

    /// How many instructions the verifier processed for each program (`None` where the
    /// kernel does not say, before 5.16, and for `to_node` until its first attach or test
    /// run loads it): the budget is 1M per program.
    pub fn verified_instructions(&self) -> Vec<(&'static str, Option<u32>)> {
        [
            names::PROG_FROM_POD,
            names::PROG_TO_POD,
            names::PROG_UPLINK,
            names::PROG_TO_NODE,
        ]
        .into_iter()
        .map(|name| {
            let count = self
                .ebpf
                .program(name)
                .and_then(|p| p.info().ok())
                .and_then(|i| i.verified_instruction_count());
            (name, count)
        })
        .collect()
    }

    /// Records what an earlier run attached (pinned links, netlink filters), so the next
    /// reconcile replaces their programs or removes the ones no longer wanted.
    fn adopt_attachments(&mut self) {
        let Some(pins) = self.pins.clone() else {
            return;
        };
        for (iface, hook, _) in pins.pinned_links() {
            let a = self.links.entry(iface).or_default();
            a.hooks.push(hook);
            a.adopted = true;
        }
        for (iface, filter) in pins.netlink_filters() {
            let a = self.links.entry(iface.clone()).or_default();
            a.hooks.push(filter.hook);
            a.adopted = true;
            self.filters.entry(iface).or_default().push(filter);
        }
    }

    /// Removes pins of other layout versions (an earlier agent version's). Call once ours
    /// are attached: the old programs then stop, with ours already running.
    pub fn remove_other_versions(&self) {
        let Some(pins) = &self.pins else { return };
        let Ok(entries) = std::fs::read_dir(&pins.root) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            if path != pins.dir && name.starts_with('v') && path.is_dir() {
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => {
                        tracing::info!(dir = %path.display(), "removed pins of another layout version")
                    }
                    Err(e) => {
                        tracing::warn!(dir = %path.display(), error = %e, "removing old pins")
                    }
                }
            }
        }
    }

    fn save_filters(&self) {
        let Some(pins) = &self.pins else { return };
        let dir = pins.netlink_records();
        let want: std::collections::BTreeSet<String> = self
            .filters
            .iter()
            .flat_map(|(iface, fs)| {
                fs.iter().map(move |f| {
                    format!(
                        "{}@{}@{}@{}",
                        iface.replace('.', ":"),
                        f.hook.program(),
                        f.priority,
                        f.handle
                    )
                })
            })
            .collect();
        let have: std::collections::BTreeSet<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().to_string())
                    .collect()
            })
            .unwrap_or_default();
        let mut result = std::fs::create_dir_all(&dir);
        for name in want.difference(&have) {
            result = result.and(std::fs::create_dir(dir.join(name)));
        }
        for name in have.difference(&want) {
            result = result.and(std::fs::remove_dir(dir.join(name)));
        }
        if let Err(e) = result {
            tracing::warn!(dir = %dir.display(), error = %e, "recording netlink filters");
        }
    }

    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Moves the verdict events' ring buffer and loss counters out for their reader; call
    /// once.
    /// The reader of the programs' log lines, when `--datapath-log` asks for them
    /// (`level`, as loaded), handing them to `to`.
    pub fn take_log<T: log::Log>(&mut self, level: Level, to: T) -> Result<Option<DatapathLog<T>>> {
        DatapathLog::take(&mut self.ebpf, level, to)
    }

    pub fn take_events(
        &mut self,
    ) -> Result<(
        aya::maps::RingBuf<aya::maps::MapData>,
        PerCpuArray<aya::maps::MapData, u64>,
    )> {
        let mut take = |name: &str| {
            self.ebpf
                .take_map(name)
                .ok_or_else(|| anyhow!("map {name} missing from the BPF object"))
        };
        let ring = aya::maps::RingBuf::try_from(take(names::EVENTS)?)?;
        let stats = PerCpuArray::try_from(take(names::EVENT_STATS)?)?;
        Ok((ring, stats))
    }

    /// Moves the maps out for the programmer; call once.
    pub fn take_maps(&mut self) -> Result<KernelMaps> {
        let mut take = |name: &str| {
            self.ebpf
                .take_map(name)
                .ok_or_else(|| anyhow!("map {name} missing from the BPF object"))
        };
        let mut maps = KernelMaps {
            ifaces: HashMap::try_from(take(names::IFACES)?)?,
            iface_slots: aya::maps::Array::try_from(take(names::IFACE_SLOTS)?)?,
            endpoints: HashMap::try_from(take(names::ENDPOINTS)?)?,
            services: HashMap::try_from(take(names::SERVICES)?)?,
            node_addrs: HashMap::try_from(take(names::NODE_ADDRS)?)?,
            admin_tables: HashMap::try_from(take(names::ADMIN_TABLES)?)?,
            conntrack: HashMap::try_from(take(names::CONNTRACK)?)?,
            conntrack_new: HashMap::try_from(take(names::CONNTRACK_NEW)?)?,
            service_flows: HashMap::try_from(take(names::SERVICE_FLOWS)?)?,
            service_flows_new: HashMap::try_from(take(names::SERVICE_FLOWS_NEW)?)?,
            uplinks: HashMap::try_from(take(names::UPLINKS)?)?,
            meta: aya::maps::Array::try_from(take(names::META)?)?,
            peers_by_identity: HashMap::try_from(take(names::PEERS_BY_IDENTITY)?)?,
            identities: HashMap::try_from(take(names::IDENTITIES)?)?,
            peers_cidr: LpmTrie::try_from(take(names::PEERS_CIDR)?)?,
            portsets: HashMap::try_from(take(names::PORTSETS)?)?,
            counters: PerCpuArray::try_from(take(names::COUNTERS)?)?,
            rule_counters: PerCpuArray::try_from(take(names::RULE_COUNTERS)?)?,
            slots_retired: Default::default(),
        };
        maps.sync_iface_slots()
            .context("giving adopted veths their IFACE_SLOTS slots")?;
        Ok(maps)
    }

    /// Attaches `to_node` to the node's cgroup v2 `cgroup` (see `node_cgroup`).
    pub fn attach_node(&mut self, cgroup: &Path) -> Result<()> {
        let pin = self.pins.as_ref().map(Pins::node_link);
        self.node_hook = Some(node_cgroup::attach(&mut self.ebpf, cgroup, pin.as_deref())?);
        Ok(())
    }

    /// Detaches `to_node`: ours, and the one an earlier run pinned.
    pub fn detach_node(&mut self) {
        self.node_hook = None;
        if let Some(pin) = self.pins.as_ref().map(Pins::node_link)
            && node_cgroup::detach_pinned(&pin)
        {
            tracing::info!("detached the node hook an earlier run attached");
        }
    }

    /// The cgroup `to_node` is attached to.
    pub fn node_cgroup(&self) -> Option<&Path> {
        self.node_hook.as_ref().map(|h| h.cgroup.as_path())
    }

    pub fn attach_pod(&mut self, iface: &str) -> Result<()> {
        self.attach(iface, &[Hook::FromPod, Hook::ToPod])
    }

    pub fn attach_uplink(&mut self, iface: &str) -> Result<()> {
        self.attach(iface, &[Hook::Uplink])
    }

    /// Attached by this run (adopted attachments still need our programs).
    pub fn is_attached(&self, iface: &str) -> bool {
        self.links.get(iface).is_some_and(|a| !a.adopted)
    }

    /// The hooks this run attached to `iface`.
    pub fn hooks(&self, iface: &str) -> Vec<Hook> {
        match self.links.get(iface) {
            Some(a) if !a.adopted => a.hooks.clone(),
            _ => Vec::new(),
        }
    }

    pub fn attached(&self) -> impl Iterator<Item = &str> {
        self.links.keys().map(String::as_str)
    }

    /// Attaches `hooks` to `iface` (`attach_pod` and `attach_uplink` say which).
    pub fn attach(&mut self, iface: &str, hooks: &[Hook]) -> Result<()> {
        if self.is_attached(iface) {
            return Ok(());
        }
        if self.mode == AttachMode::Netlink
            && let Err(e) = aya::programs::tc::qdisc_add_clsact(iface)
        {
            // An existing clsact (another tool's, or ours from before) is what we want.
            let exists = matches!(&e, aya::programs::tc::TcError::NetlinkError(n)
                if n.raw_os_error() == Some(libc::EEXIST));
            if !exists {
                return Err(anyhow!(e)).with_context(|| format!("adding clsact to {iface}"));
            }
        }
        for hook in hooks {
            let r = match self.mode {
                AttachMode::Netlink => self.attach_netlink(iface, *hook),
                _ => self.attach_tcx(iface, *hook),
            };
            r.with_context(|| {
                format!("attaching {} to {iface} ({:?})", hook.program(), self.mode)
            })?;
        }
        // Hooks an earlier run had here that we did not attach now (an uplink that is a
        // pod veth now, say) go away.
        let before = self.links.remove(iface).unwrap_or_default();
        for old in before.hooks.iter().filter(|h| !hooks.contains(h)) {
            self.detach_hook(iface, *old);
        }
        self.links.insert(
            iface.to_string(),
            Attached {
                hooks: hooks.to_vec(),
                adopted: false,
            },
        );
        self.save_filters();
        Ok(())
    }

    /// TCX: an earlier run's pinned link gets our program atomically; otherwise a new link,
    /// pinned when we have a pin directory.
    fn attach_tcx(&mut self, iface: &str, hook: Hook) -> Result<()> {
        use aya::programs::links::{FdLink, PinnedLink};
        use aya::programs::tc::SchedClassifierLink;
        let pin = self.pins.as_ref().map(|p| p.link(iface, hook));
        let prog = classifier(&mut self.ebpf, hook.program())?;
        if let Some(path) = &pin
            && path.exists()
        {
            match PinnedLink::from_pin(path) {
                Ok(pinned) if first_is_ours(iface, hook) => {
                    let link = SchedClassifierLink::try_from(FdLink::from(pinned))
                        .context("pinned link is not a TC link")?;
                    let id = prog
                        .attach_to_link(link)
                        .context("replacing the program of a pinned link")?;
                    // The pin keeps the link; our fd may close.
                    let _fd: FdLink = prog.take_link(id)?.try_into()?;
                    return Ok(());
                }
                Ok(pinned) => {
                    // Another program was put in front of the earlier run's since: attach
                    // ours in front, then let the old link go (one of them enforces
                    // throughout; the old one still runs the earlier run's program).
                    tracing::warn!(
                        iface,
                        program = hook.program(),
                        "another TCX program runs before netpol's; attaching again in front of it"
                    );
                    let options = TcAttachOptions::TcxOrder(LinkOrder::first());
                    let id = prog.attach_with_options(iface, hook.attach_type(), options)?;
                    let new: FdLink = prog.take_link(id)?.try_into()?;
                    let old = pinned
                        .unpin()
                        .with_context(|| format!("unpinning {}", path.display()))?;
                    new.pin(path)
                        .with_context(|| format!("pinning {}", path.display()))?;
                    drop(old);
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(pin = %path.display(), error = %e, "unusable pin; attaching anew");
                    let _ = std::fs::remove_file(path);
                }
            }
        }
        // First: a program before ours that ends the chain ("pass") would skip
        // enforcement. Ours passes with TCX_NEXT, so the programs after it still run.
        let options = TcAttachOptions::TcxOrder(LinkOrder::first());
        let id = prog.attach_with_options(iface, hook.attach_type(), options)?;
        let fd: FdLink = prog.take_link(id)?.try_into()?;
        match pin {
            Some(path) => {
                fd.pin(&path)
                    .with_context(|| format!("pinning {}", path.display()))?;
            }
            None => {
                self.unpinned_links.insert((iface.to_string(), hook), fd);
            }
        }
        Ok(())
    }

    /// Netlink: add our filter, then remove the one an earlier run recorded for this hook,
    /// so there is always one in place. Filters outlive the process by design.
    fn attach_netlink(&mut self, iface: &str, hook: Hook) -> Result<()> {
        let prog = classifier(&mut self.ebpf, hook.program())?;
        // Preference 1 runs first: the kernel's automatic preference would put us behind
        // any filter below 32768. Within one preference the newest bpf filter runs first.
        // A filter of another kind already holding 1 refuses ours there: then the
        // automatic preference, behind it, and a warning.
        let first = NlOptions {
            priority: NETLINK_PRIORITY,
            ..NlOptions::default()
        };
        let id = match prog.attach_with_options(
            iface,
            hook.attach_type(),
            TcAttachOptions::Netlink(first),
        ) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(
                    iface,
                    program = hook.program(),
                    error = %e,
                    "cannot attach at preference {NETLINK_PRIORITY}: a filter of another tool holds it and runs before netpol's"
                );
                prog.attach_with_options(
                    iface,
                    hook.attach_type(),
                    TcAttachOptions::Netlink(NlOptions::default()),
                )?
            }
        };
        if tcx_supported()
            && let Ok((_, before)) = SchedClassifier::query_tcx(iface, hook.attach_type())
            && !before.is_empty()
        {
            tracing::warn!(
                iface,
                program = hook.program(),
                tcx_programs = before.len(),
                "TCX programs run before netlink filters and one that ends the chain skips netpol's: use --attach-mode tcx (or auto) on this kernel"
            );
        }
        let link = prog.take_link(id)?;
        let new = NlFilter {
            hook,
            priority: link.priority()?,
            handle: u32::from(link.handle()?),
        };
        // Dropping the link would remove the filter: it must outlive us.
        std::mem::forget(link);
        let recorded = self.filters.entry(iface.to_string()).or_default();
        let old: Vec<NlFilter> = recorded
            .iter()
            .filter(|f| f.hook == hook)
            .copied()
            .collect();
        recorded.retain(|f| f.hook != hook);
        recorded.push(new);
        for f in old {
            remove_filter(iface, f);
        }
        Ok(())
    }

    fn detach_hook(&mut self, iface: &str, hook: Hook) {
        // Dropping the fd destroys the link.
        self.unpinned_links.remove(&(iface.to_string(), hook));
        if let Some(path) = self.pins.as_ref().map(|p| p.link(iface, hook)) {
            match aya::programs::links::PinnedLink::from_pin(&path) {
                // Dropping the unpinned fd destroys the link.
                Ok(p) => drop(p.unpin()),
                Err(_) => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        if let Some(fs) = self.filters.get_mut(iface) {
            for f in fs.iter().filter(|f| f.hook == hook) {
                remove_filter(iface, *f);
            }
            fs.retain(|f| f.hook != hook);
        }
    }

    /// Detaches from an interface, pins and filters included. A gone interface took its
    /// attachments with it; only the pins remain to remove.
    pub fn detach(&mut self, iface: &str) {
        if let Some(a) = self.links.remove(iface) {
            for hook in a.hooks {
                self.detach_hook(iface, hook);
            }
        }
        self.filters.remove(iface);
        self.save_filters();
    }
}

/// Whether a filter was there to remove.
fn remove_filter(iface: &str, f: NlFilter) -> bool {
    use aya::programs::tc::{SchedClassifierLink, TcHandle};
    match SchedClassifierLink::attached(
        iface,
        f.hook.attach_type(),
        f.priority,
        TcHandle::from(f.handle),
        None,
    ) {
        Ok(link) => match aya::programs::links::Link::detach(link) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(iface, error = %e, "old filter already gone");
                false
            }
        },
        Err(e) => {
            tracing::debug!(iface, error = %e, "old filter's interface is gone");
            false
        }
    }
}

impl Datapath {
    /// Runs one hook's program on `packet` (an Ethernet frame) with BPF_PROG_TEST_RUN,
    /// `repeat` times, and returns the verdict (`TC_ACT_*` as i32; `to_node`'s pass is
    /// `TC_ACT_UNSPEC`, its drop `TC_ACT_SHOT`) and the mean time per run. The kernel
    /// runs it on the loopback device (ifindex 1); nothing is sent.
    pub fn test_run(
        &mut self,
        hook: Hook,
        packet: &[u8],
        repeat: u32,
    ) -> Result<(i32, std::time::Duration)> {
        self.test_run_on(hook, packet, repeat, 1)
    }

    /// `test_run` as if on interface `ifindex` (which must exist in the caller's network
    /// namespace; 1 is loopback). At an uplink the packet came in through `ifindex` too.
    pub fn test_run_on(
        &mut self,
        hook: Hook,
        packet: &[u8],
        repeat: u32,
        ifindex: u32,
    ) -> Result<(i32, std::time::Duration)> {
        // At an uplink the tests stand the pod's veth in for where the packet came from;
        // at a receiver's veth the sender's veth is not known (0: the node, or a bridge).
        // `from_pod` never reads it: left 0, as older kernels (5.10) require (their test
        // run refuses a context with `ingress_ifindex` set). On those kernels an uplink's
        // packet comes from the node (0), which the uplink takes as it takes the sender's
        // own veth; a test that needs another origin calls `test_run_from`, which fails.
        if hook != Hook::Uplink {
            return self.test_run_from(hook, packet, repeat, ifindex, 0);
        }
        if !self.test_run_no_ingress {
            match self.test_run_from(hook, packet, repeat, ifindex, ifindex) {
                Err(e) if is_einval(&e) => {
                    let r = self.test_run_from(hook, packet, repeat, ifindex, 0)?;
                    // Only `ingress_ifindex` differed: the kernel refuses it.
                    self.test_run_no_ingress = true;
                    return Ok(r);
                }
                other => return other,
            }
        }
        self.test_run_from(hook, packet, repeat, ifindex, 0)
    }

    /// `test_run_on`, for a packet that entered the node through `ingress_ifindex` (0:
    /// generated on the node, or from an interface netpol does not know).
    pub fn test_run_from(
        &mut self,
        hook: Hook,
        packet: &[u8],
        repeat: u32,
        ifindex: u32,
        ingress_ifindex: u32,
    ) -> Result<(i32, std::time::Duration)> {
        // struct __sk_buff up to `ifindex` (offset 40), with `ingress_ifindex` (offset 36).
        // Every other field zero.
        let mut ctx = [0u8; 44];
        ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.ctx_in = Some(&ctx);
        opts.repeat = repeat.max(1);
        let r = if hook == Hook::ToNode {
            node_cgroup::program(&mut self.ebpf)?.test_run(opts)
        } else {
            let prog = classifier(&mut self.ebpf, hook.program())?;
            // The benchmark's floor is loaded the first time it runs: never in the agent.
            if hook == Hook::ConntrackFloor && prog.fd().is_err() {
                load_program(prog, hook.program())?;
            }
            prog.test_run(opts)
        }
        .with_context(|| format!("BPF_PROG_TEST_RUN of {}", hook.program()))?;
        let verdict = match (hook, r.return_value) {
            // cgroup_skb says 1 (pass) or 0 (drop): told in TC's words like the others.
            (Hook::ToNode, 1) => TC_ACT_UNSPEC,
            (Hook::ToNode, 0) => TC_ACT_SHOT,
            (_, v) => v as i32,
        };
        Ok((verdict, r.duration))
    }
}

fn is_einval(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::EINVAL))
    })
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing"))?
        .try_into()
        .with_context(|| format!("program {name} is not a classifier"))
}

/// Whether the first TCX program of the hook is netpol's (by name: an earlier run's
/// program is another instance of ours). True when that cannot be told.
fn first_is_ours(iface: &str, hook: Hook) -> bool {
    match SchedClassifier::query_tcx(iface, hook.attach_type()) {
        Ok((_, programs)) => programs
            .first()
            .is_none_or(|p| p.name_as_str() == Some(hook.program())),
        Err(_) => true,
    }
}

fn tcx_supported() -> bool {
    kernel_at_least(6, 6)
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of `bpf_ktime_get_ns` (conntrack times, and
/// the agent's own liveness).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// False when the version cannot be read: the older kernel's path works everywhere.
fn kernel_at_least(major: u8, minor: u8) -> bool {
    match aya::util::KernelVersion::current() {
        Ok(v) => v >= aya::util::KernelVersion::new(major, minor, 0),
        Err(_) => false,
    }
}

/// ifindex of an interface in this network namespace.
pub fn ifindex(iface: &str) -> io::Result<u32> {
    let name = std::ffi::CString::new(iface)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a valid NUL-terminated string; the call only reads it.
    let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if idx == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(idx)
    }
}

/// Loads one program. The verifier gives up with EAGAIN when a signal arrives while it
/// works (a child process exiting, under tokio's SIGCHLD handler): that is retried, a
/// few times, rather than reported as a rejection.
fn load_program(prog: &mut SchedClassifier, name: &str) -> anyhow::Result<()> {
    const ATTEMPTS: u32 = 5;
    let mut attempt = 1;
    loop {
        match prog.load() {
            Ok(()) => {
                // The verifier's budget is 1M instructions per program: how close each
                // program comes shows how much room a datapath change has left.
                let verified = prog
                    .info()
                    .ok()
                    .and_then(|i| i.verified_instruction_count());
                tracing::info!(
                    program = name,
                    verified_instructions = verified,
                    "program loaded"
                );
                return Ok(());
            }
            Err(aya::programs::ProgramError::LoadError { io_error, .. })
                if io_error.kind() == std::io::ErrorKind::WouldBlock && attempt < ATTEMPTS =>
            {
                tracing::warn!(
                    program = name,
                    attempt,
                    "verifier interrupted (EAGAIN); loading again"
                );
                attempt += 1;
            }
            Err(e) => return Err(e).with_context(|| format!("verifier rejected {name}")),
        }
    }
}
