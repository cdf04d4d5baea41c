//! `to_node` on the node's cgroup v2 (cgroup_skb ingress): the one hook that sees a local
//! pod's packet delivered to this node's own sockets after kube-proxy translated it (a
//! Service whose backend is on the node's host network). TC hooks never see that packet:
//! it leaves no interface.
//!
//! The link is pinned next to the TC links, so it outlives the agent like they do. A
//! restarted agent attaches its program first and lets the pinned link go after: the
//! cgroup runs both for a moment (they decide alike), never neither. (An unpinned link
//! goes with its pin's inode, which Linux 5.10 frees after an RCU grace period: "a
//! moment" is that long there.)

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use aya::Ebpf;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType};
use netpol_common::names;

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Where the node's cgroup v2 hierarchy is (`--node-cgroup`): its root covers every
/// process of the node (and of its pods).
pub const DEFAULT_CGROUP: &str = "/sys/fs/cgroup";

/// Whether `path` is the root of (or a directory in) a cgroup v2 hierarchy.
pub fn is_cgroup2(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: zeroed statfs is valid; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers for the call.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == CGROUP2_SUPER_MAGIC }
}

/// The program, loaded (the first call loads it: the verifier's word on it is an
/// attach error, not a failure to start).
pub fn program(ebpf: &mut Ebpf) -> Result<&mut CgroupSkb> {
    let prog: &mut CgroupSkb = ebpf
        .program_mut(names::PROG_TO_NODE)
        .ok_or_else(|| {
            anyhow!(
                "program {} missing from the BPF object",
                names::PROG_TO_NODE
            )
        })?
        .try_into()
        .with_context(|| {
            format!(
                "program {} is not a cgroup_skb program",
                names::PROG_TO_NODE
            )
        })?;
    if prog.fd().is_err() {
        prog.load()
            .with_context(|| format!("verifier rejected {}", names::PROG_TO_NODE))?;
        let verified = prog
            .info()
            .ok()
            .and_then(|i| i.verified_instruction_count());
        tracing::info!(
            program = names::PROG_TO_NODE,
            verified_instructions = verified,
            "program loaded"
        );
    }
    Ok(prog)
}

/// An attached `to_node`: held by its pin, or by this value when there is no pin
/// directory (dropping it detaches).
#[derive(Debug)]
pub struct NodeHook {
    pub cgroup: PathBuf,
    /// Held, never read: dropping it detaches an unpinned link.
    _unpinned: Option<FdLink>,
}

/// Attaches `to_node` to `cgroup`. With `pin`, the link is pinned there, and a link an
/// earlier run pinned there is released once ours runs.
pub fn attach(ebpf: &mut Ebpf, cgroup: &Path, pin: Option<&Path>) -> Result<NodeHook> {
    if !is_cgroup2(cgroup) {
        bail!(
            "{} is not a cgroup v2 hierarchy (mount one: mount -t cgroup2 none {0})",
            cgroup.display()
        );
    }
    let dir = std::fs::File::open(cgroup)
        .with_context(|| format!("opening the cgroup {}", cgroup.display()))?;
    let prog = program(ebpf)?;
    // A BPF link (5.7+) on a cgroup always runs beside the others (other tools', and a
    // restarted agent's beside its predecessor's until that one goes); the kernel takes
    // no mode flags with it, which aya's `Single` (no flag) says.
    let id = prog
        .attach(&dir, CgroupSkbAttachType::Ingress, CgroupAttachMode::Single)
        .with_context(|| format!("attaching {} to {}", names::PROG_TO_NODE, cgroup.display()))?;
    let link: FdLink = prog
        .take_link(id)?
        .try_into()
        .context("the cgroup link is not a BPF link (kernel before 5.7)")?;
    let Some(pin) = pin else {
        return Ok(NodeHook {
            cgroup: cgroup.to_path_buf(),
            _unpinned: Some(link),
        });
    };
    let earlier = release_pin(pin);
    link.pin(pin)
        .with_context(|| format!("pinning {}", pin.display()))?;
    if let Some(old) = earlier {
        drop(old);
        tracing::info!(pin = %pin.display(), "replaced the node hook an earlier run attached");
    }
    Ok(NodeHook {
        cgroup: cgroup.to_path_buf(),
        _unpinned: None,
    })
}

/// Takes the link pinned at `pin` off its pin: dropping what is returned detaches it.
fn release_pin(pin: &Path) -> Option<FdLink> {
    if !pin.exists() {
        return None;
    }
    match PinnedLink::from_pin(pin).map(PinnedLink::unpin) {
        Ok(Ok(fd)) => Some(fd),
        Ok(Err(e)) => {
            tracing::warn!(pin = %pin.display(), error = %e, "unpinning the node hook");
            None
        }
        Err(e) => {
            tracing::warn!(pin = %pin.display(), error = %e, "unusable node hook pin; removing it");
            let _ = std::fs::remove_file(pin);
            None
        }
    }
}

/// Detaches the link pinned at `pin` (cleanup). Whether there was one.
pub fn detach_pinned(pin: &Path) -> bool {
    release_pin(pin).is_some()
}
