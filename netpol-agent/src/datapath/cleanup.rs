//! `netpol-agent cleanup`: removes everything netpol made on a node, so that traffic
//! flows as it did before netpol: the pinned TCX links and the node's cgroup link (which
//! detaches their programs),
//! the netlink filters (recorded ones, and any filter of this network namespace that
//! carries one of netpol's program names, in case a record was lost or the agent ran
//! without pins), then the pinned maps and the pin directory itself. The clsact qdiscs
//! stay: other programs may use them, and an empty one changes nothing.
//!
//! Idempotent: a second run finds nothing and succeeds. Only the uninstall path runs it
//! (deploy/uninstall/); an agent restart or upgrade never does.

use std::path::Path;

use anyhow::{Context, Result};
use aya::programs::links::PinnedLink;
use tracing::{info, warn};

use super::{Hook, Pins, remove_filter};

/// What a cleanup removed.
#[derive(Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Removed {
    pub tcx_links: usize,
    /// `to_node`'s link on the node's cgroup.
    pub node_hooks: usize,
    pub netlink_filters: usize,
    pub pin_dirs: usize,
    /// TCX attachments running a program with one of netpol's names that are still there
    /// afterwards (held by some other pin or process): `interface direction program`.
    pub remaining: Vec<String>,
}

/// Removes netpol's attachments in this network namespace and its pins under `pin_dir`.
pub fn cleanup(pin_dir: &Path) -> Result<Removed> {
    let mut removed = Removed::default();
    for pins in layout_dirs(pin_dir)? {
        for (iface, hook, pin) in pins.pinned_links() {
            match PinnedLink::from_pin(&pin) {
                // The pin held the link; dropping the unpinned fd destroys it.
                Ok(link) => match link.unpin() {
                    Ok(fd) => {
                        drop(fd);
                        removed.tcx_links += 1;
                        info!(
                            iface,
                            program = hook.program(),
                            "detached a pinned TCX link"
                        );
                    }
                    Err(e) => warn!(pin = %pin.display(), error = %e, "unpinning a TCX link"),
                },
                Err(e) => warn!(pin = %pin.display(), error = %e, "unusable link pin; removing it"),
            }
        }
        if super::node_cgroup::detach_pinned(&pins.node_link()) {
            removed.node_hooks += 1;
            info!("detached the node's cgroup link");
        }
        for (iface, filter) in pins.netlink_filters() {
            if remove_filter(&iface, filter) {
                removed.netlink_filters += 1;
                info!(
                    iface,
                    program = filter.hook.program(),
                    "removed a recorded netlink filter"
                );
            }
        }
        std::fs::remove_dir_all(&pins.dir)
            .with_context(|| format!("removing the pins in {}", pins.dir.display()))?;
        removed.pin_dirs += 1;
    }
    removed.netlink_filters += sweep_filters();
    removed.remaining = remaining_tcx();
    // The pin directory itself, if nothing else lives there.
    if pin_dir.is_dir()
        && let Err(e) = std::fs::remove_dir(pin_dir)
    {
        warn!(dir = %pin_dir.display(), error = %e, "pin directory not empty; left in place");
    }
    Ok(removed)
}

/// The `v<layout>` directories under the pin directory: every version netpol pinned.
fn layout_dirs(pin_dir: &Path) -> Result<Vec<Pins>> {
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", pin_dir.display())),
    };
    Ok(entries
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.strip_prefix('v')
                .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                && e.path().is_dir()
        })
        .map(|e| Pins {
            root: pin_dir.to_path_buf(),
            dir: e.path(),
        })
        .collect())
}

/// Removes, on every interface of this network namespace, the netlink filters that run a
/// program with one of netpol's names. Returns how many interfaces had some.
fn sweep_filters() -> usize {
    let mut found = 0;
    for iface in interfaces() {
        for hook in Hook::ALL {
            match aya::programs::tc::qdisc_detach_program(
                &iface,
                hook.attach_type(),
                hook.program(),
            ) {
                Ok(()) => {
                    found += 1;
                    info!(
                        iface,
                        program = hook.program(),
                        "removed an unrecorded netlink filter"
                    );
                }
                // No clsact qdisc, or no such filter: nothing of ours there.
                Err(e) => tracing::debug!(iface, error = %e, "no filter to sweep"),
            }
        }
    }
    found
}

/// TCX programs with netpol's names still attached in this network namespace (none on
/// kernels without TCX).
fn remaining_tcx() -> Vec<String> {
    use aya::programs::SchedClassifier;
    let mut left = Vec::new();
    for iface in interfaces() {
        for hook in Hook::ALL {
            let Ok((_, programs)) = SchedClassifier::query_tcx(&iface, hook.attach_type()) else {
                continue;
            };
            for p in programs {
                if p.name_as_str() == Some(hook.program()) {
                    left.push(format!(
                        "{iface} {:?} {}",
                        hook.attach_type(),
                        hook.program()
                    ));
                }
            }
        }
    }
    left
}

/// Names of the interfaces of this network namespace.
fn interfaces() -> Vec<String> {
    // SAFETY: if_nameindex returns a list terminated by a zero entry, or null; it is
    // freed once, below, after the names are copied.
    unsafe {
        let list = libc::if_nameindex();
        if list.is_null() {
            return Vec::new();
        }
        let mut names = Vec::new();
        let mut p = list;
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            names.push(
                std::ffi::CStr::from_ptr((*p).if_name)
                    .to_string_lossy()
                    .into_owned(),
            );
            p = p.add(1);
        }
        libc::if_freenameindex(list);
        names
    }
}
