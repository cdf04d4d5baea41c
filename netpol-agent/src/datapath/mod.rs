//! The BPF object: loading it, handing its maps to the programmer, and attaching its
//! classifiers to pod veths and uplinks.

pub mod routes;

use std::collections::BTreeMap;
use std::io;

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{HashMap, LpmTrie, PerCpuArray};
use aya::programs::tc::{NlOptions, SchedClassifierLinkId, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfLoader};
use netpol_common::{names, sizes};

use crate::program::kernel::KernelMaps;

/// The object built by build.rs from `netpol-ebpf`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netpol"));

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
    /// Entries of the conntrack LRU map.
    #[arg(long, default_value_t = sizes::CONNTRACK)]
    pub conntrack_entries: u32,
    /// Entries of the exact-address peer map (pod addresses, summed over rule sets).
    #[arg(long, default_value_t = sizes::PEERS_EXACT)]
    pub peer_entries: u32,
    /// Entries of the CIDR peer map (LPM trie, summed over rule sets).
    #[arg(long, default_value_t = sizes::PEERS_CIDR)]
    pub cidr_entries: u32,
}

/// Where a classifier runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hook {
    /// Pod veth, TC ingress: what the pod sends.
    FromPod,
    /// Pod veth, TC egress: what the pod receives.
    ToPod,
    /// Node uplink, TC egress.
    Uplink,
}

impl Hook {
    fn program(self) -> &'static str {
        match self {
            Hook::FromPod => names::PROG_FROM_POD,
            Hook::ToPod => names::PROG_TO_POD,
            Hook::Uplink => names::PROG_UPLINK,
        }
    }
    fn attach_type(self) -> TcAttachType {
        match self {
            Hook::FromPod => TcAttachType::Ingress,
            Hook::ToPod | Hook::Uplink => TcAttachType::Egress,
        }
    }
}

pub struct Datapath {
    ebpf: Ebpf,
    mode: AttachMode,
    /// Interface name -> (hook, link) of everything we attached.
    links: BTreeMap<String, Vec<(Hook, SchedClassifierLinkId)>>,
}

impl Datapath {
    pub fn load(mode: AttachMode, sizes: &MapSizes) -> Result<Self> {
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
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(names::CONNTRACK, sizes.conntrack_entries)
            .map_max_entries(names::PEERS_EXACT, sizes.peer_entries)
            .map_max_entries(names::PEERS_CIDR, sizes.cidr_entries)
            .load(OBJECT)
            .context("loading the BPF object (needs root or CAP_BPF + CAP_NET_ADMIN)")?;
        for name in [names::PROG_FROM_POD, names::PROG_TO_POD, names::PROG_UPLINK] {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from the BPF object"))?
                .try_into()
                .with_context(|| format!("program {name} is not a classifier"))?;
            prog.load()
                .with_context(|| format!("verifier rejected {name}"))?;
        }
        Ok(Datapath {
            ebpf,
            mode,
            links: BTreeMap::new(),
        })
    }

    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    /// Moves the maps out for the programmer; call once.
    pub fn take_maps(&mut self) -> Result<KernelMaps> {
        let mut take = |name: &str| {
            self.ebpf
                .take_map(name)
                .ok_or_else(|| anyhow!("map {name} missing from the BPF object"))
        };
        Ok(KernelMaps {
            ifaces: HashMap::try_from(take(names::IFACES)?)?,
            endpoints: HashMap::try_from(take(names::ENDPOINTS)?)?,
            services: HashMap::try_from(take(names::SERVICES)?)?,
            peers_exact: HashMap::try_from(take(names::PEERS_EXACT)?)?,
            peers_cidr: LpmTrie::try_from(take(names::PEERS_CIDR)?)?,
            portsets: HashMap::try_from(take(names::PORTSETS)?)?,
            counters: PerCpuArray::try_from(take(names::COUNTERS)?)?,
        })
    }

    pub fn attach_pod(&mut self, iface: &str) -> Result<()> {
        self.attach(iface, &[Hook::FromPod, Hook::ToPod])
    }

    pub fn attach_uplink(&mut self, iface: &str) -> Result<()> {
        self.attach(iface, &[Hook::Uplink])
    }

    pub fn is_attached(&self, iface: &str) -> bool {
        self.links.contains_key(iface)
    }

    pub fn attached(&self) -> impl Iterator<Item = &str> {
        self.links.keys().map(String::as_str)
    }

    fn attach(&mut self, iface: &str, hooks: &[Hook]) -> Result<()> {
        if self.links.contains_key(iface) {
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
        let mut done = Vec::new();
        for hook in hooks {
            let options = match self.mode {
                AttachMode::Netlink => TcAttachOptions::Netlink(NlOptions::default()),
                _ => TcAttachOptions::TcxOrder(LinkOrder::default()),
            };
            let prog = classifier(&mut self.ebpf, hook.program())?;
            match prog.attach_with_options(iface, hook.attach_type(), options) {
                Ok(id) => done.push((*hook, id)),
                Err(e) => {
                    self.undo(done);
                    return Err(anyhow!(e)).with_context(|| {
                        format!("attaching {} to {iface} ({:?})", hook.program(), self.mode)
                    });
                }
            }
        }
        self.links.insert(iface.to_string(), done);
        Ok(())
    }

    /// Detaches from an interface. Gone interfaces took their filters with them, so
    /// errors are only logged.
    pub fn detach(&mut self, iface: &str) {
        if let Some(links) = self.links.remove(iface) {
            self.undo(links);
        }
    }

    fn undo(&mut self, links: Vec<(Hook, SchedClassifierLinkId)>) {
        for (hook, id) in links {
            match classifier(&mut self.ebpf, hook.program()) {
                Ok(prog) => {
                    if let Err(e) = prog.detach(id) {
                        tracing::debug!(program = hook.program(), error = %e, "detach");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "detach"),
            }
        }
    }
}

impl Datapath {
    /// Runs one hook's program on `packet` (an Ethernet frame) with BPF_PROG_TEST_RUN,
    /// `repeat` times, and returns the verdict (`TC_ACT_*` as i32) and the mean time per
    /// run. The kernel runs it on the loopback device (ifindex 1); nothing is sent.
    pub fn test_run(
        &mut self,
        hook: Hook,
        packet: &[u8],
        repeat: u32,
    ) -> Result<(i32, std::time::Duration)> {
        let prog = classifier(&mut self.ebpf, hook.program())?;
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.repeat = repeat.max(1);
        let r = prog
            .test_run(opts)
            .with_context(|| format!("BPF_PROG_TEST_RUN of {}", hook.program()))?;
        Ok((r.return_value as i32, r.duration))
    }
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing"))?
        .try_into()
        .with_context(|| format!("program {name} is not a classifier"))
}

fn tcx_supported() -> bool {
    match aya::util::KernelVersion::current() {
        Ok(v) => v >= aya::util::KernelVersion::new(6, 6, 0),
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
