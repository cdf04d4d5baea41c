//! Attach order, on real packets (**needs root**): another tool's classifier that ends the
//! chain with "pass" is attached to a pod's veth before netpol is. netpol must still run
//! first and drop what policy denies, with TCX links and with netlink filters alike.
//!
//! The test thread gets a network namespace of its own (the node); the pod is a named
//! namespace made here and removed on drop. Packets go from the pod to an address of the
//! node's namespace only.

use std::process::Command;

use aya::programs::tc::{NlOptions, TcAttachOptions};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType};
use netpol_tests::attach::{attach_pass_stop, delivered, pod_behind_v0};
use netpol_tests::lab::*;

/// The other tool's classifier, at the end (TCX) or at the kernel's automatic
/// preference (netlink).
fn attach_other(iface: &str, mode: AttachMode) -> aya::Ebpf {
    attach_other_at(iface, mode, LinkOrder::default())
}

fn attach_other_at(iface: &str, mode: AttachMode, at: LinkOrder) -> aya::Ebpf {
    let options = match mode {
        AttachMode::Netlink => TcAttachOptions::Netlink(NlOptions::default()),
        _ => TcAttachOptions::TcxOrder(at),
    };
    attach_pass_stop(iface, options)
}

/// The programs on `iface`'s ingress, in the order they run.
fn order(iface: &str, mode: AttachMode) -> Vec<String> {
    match mode {
        AttachMode::Netlink => {
            let out = Command::new("tc")
                .args(["filter", "show", "dev", iface, "ingress"])
                .output()
                .expect("tc");
            // `... pref N bpf chain 0 handle 0x1 ... name NAME tag ...`, by pref.
            let mut filters: Vec<(u32, String)> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| {
                    let pref = l.split("pref ").nth(1)?.split(' ').next()?.parse().ok()?;
                    let name = l.split(" name ").nth(1)?.split(' ').next()?;
                    Some((pref, name.to_string()))
                })
                .collect();
            filters.sort();
            filters.into_iter().map(|(_, n)| n).collect()
        }
        _ => SchedClassifier::query_tcx(iface, TcAttachType::Ingress)
            .expect("query tcx")
            .1
            .iter()
            .map(|p| p.name_as_str().unwrap_or("?").to_string())
            .collect(),
    }
}

fn run(mode: AttachMode, tag: &str) {
    let (v0, pod, listener) = pod_behind_v0(&format!("order-{tag}"));
    let _other = attach_other("v0", mode);
    assert!(
        delivered(&pod.0, &listener, 1),
        "{tag}: the path does not work with the other classifier alone"
    );

    let mut s = base();
    set_policy(&mut s, "client-egress", CLIENT_EGRESS_NONE);
    let mut lab = Lab::with_mode(s, &[("client", v0)], &[v4a(NODE4)], mode);
    lab.dp.attach_pod("v0").expect("attach netpol");
    let ran = order("v0", mode);
    assert_eq!(
        ran.first().map(String::as_str),
        Some(netpol_common::names::PROG_FROM_POD),
        "{tag}: netpol's program does not run first: {ran:?}"
    );
    assert!(
        ran.iter()
            .any(|p| p == netpol_common::names::PROG_PASS_STOP),
        "{tag}: the other classifier is gone: {ran:?}"
    );
    assert!(
        !delivered(&pod.0, &listener, 2),
        "{tag}: a datagram that policy denies passed: the other classifier ran first"
    );
    let id = lab.id("client");
    assert!(
        lab.counters(id)[reason::DROP_EGRESS] > 0,
        "{tag}: netpol did not count the drop"
    );
}

#[test]
fn root_attach_order_tcx_runs_netpol_first() {
    assert!(
        aya::util::KernelVersion::current()
            .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0)),
        "this test needs TCX (Linux 6.6+)"
    );
    run(AttachMode::Tcx, "tcx");
}

#[test]
fn root_attach_order_netlink_runs_netpol_first() {
    run(AttachMode::Netlink, "nl");
}

/// A private bpffs, unmounted and removed on drop.
struct Bpffs(std::path::PathBuf);

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A restarted agent adopts its pinned TCX link; if another program was put in front of
/// it meanwhile, netpol attaches again in front and lets the old link go.
#[test]
fn root_attach_order_tcx_adopted_link_moves_back_in_front() {
    assert!(
        aya::util::KernelVersion::current()
            .is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0)),
        "this test needs TCX (Linux 6.6+)"
    );
    netns(&["v0"]);
    let fs = Bpffs(std::env::temp_dir().join(format!("np-order-pins-{}", std::process::id())));
    std::fs::create_dir_all(&fs.0).expect("pin dir");
    sh(
        &["mount", "-t", "bpf", "bpf", &fs.0.to_string_lossy()],
        None,
    );

    let mut first = Datapath::load(AttachMode::Tcx, &small_maps(), Some(&fs.0)).expect("load");
    first.attach_pod("v0").expect("attach");
    drop(first); // the agent stops; its pinned link stays
    let _other = attach_other_at("v0", AttachMode::Tcx, LinkOrder::first());
    assert_eq!(order("v0", AttachMode::Tcx), ["pass_stop", "from_pod"]);

    let mut again = Datapath::load(AttachMode::Tcx, &small_maps(), Some(&fs.0)).expect("reload");
    again.attach_pod("v0").expect("attach again");
    assert_eq!(
        order("v0", AttachMode::Tcx),
        ["from_pod", "pass_stop"],
        "the restarted agent's program is not back in front, or its old link is left"
    );
}
