//! What the attach-order tests share (`tests/tests/root_attach_order.rs`,
//! `root_attack_session.rs`; **need root**): a pod in a named network namespace behind
//! veth `v0` of the test thread's own namespace (the node), a listener on the node, and
//! another tool's classifier that ends the chain with "pass". Packets go from the pod to
//! an address of the node's namespace only.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::Duration;

use aya::programs::tc::TcAttachOptions;
use aya::programs::{SchedClassifier, TcAttachType};

use crate::lab::{Y4, netns, sh};

/// A named network namespace, deleted on drop.
pub struct PodNetns(pub String);

impl Drop for PodNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs `f` on a thread inside the named network namespace.
pub fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = std::fs::File::open(format!("/run/netns/{name}")).expect("open netns");
            // SAFETY: setns on a valid fd affects only this (new) thread.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("netns thread")
    })
}

/// Moves the test thread into a namespace of its own (the node) with veth `v0`, whose
/// peer is the pod's eth0-like `v0p` (10.1.0.2, the lab's client) in a named namespace;
/// the node listens on 10.2.0.5:40000. Returns v0's ifindex, the pod and the listener.
pub fn pod_behind_v0(tag: &str) -> (u32, PodNetns, UdpSocket) {
    let ifs = netns(&["v0"]);
    let pod = PodNetns(format!("np-{tag}-{}", std::process::id()));
    sh(&["ip", "netns", "add", &pod.0], None);
    sh(&["ip", "link", "set", "v0p", "netns", &pod.0], None);
    sh(&["ip", "addr", "add", "10.1.0.1/24", "dev", "v0"], None);
    sh(&["ip", "link", "set", "v0", "up"], None);
    sh(&["ip", "link", "set", "lo", "up"], None);
    sh(&["ip", "addr", "add", "10.2.0.5/32", "dev", "lo"], None);
    for args in [
        &["addr", "add", "10.1.0.2/24", "dev", "v0p"][..],
        &["link", "set", "v0p", "up"],
        &["link", "set", "lo", "up"],
        &["route", "add", "default", "via", "10.1.0.1"],
    ] {
        let mut all = vec!["ip", "-n", &pod.0];
        all.extend_from_slice(args);
        sh(&all, None);
    }
    let listener = UdpSocket::bind(SocketAddr::from((Y4, 40000))).expect("listener");
    listener
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    (ifs[0], pod, listener)
}

/// Whether a datagram from the pod reaches the node's listener.
pub fn delivered(pod: &str, listener: &UdpSocket, n: u8) -> bool {
    let to = listener.local_addr().expect("listener address");
    in_netns(pod, || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind in pod");
        s.send_to(&[n], to).expect("send from pod");
    });
    let mut buf = [0u8; 8];
    loop {
        match listener.recv_from(&mut buf) {
            // An earlier probe's datagram, late: not this one.
            Ok((1, _)) if buf[0] != n => continue,
            Ok(_) => return true,
            Err(_) => return false,
        }
    }
}

/// Another tool's classifier: `pass_stop` from a separate load of the object, attached
/// to `iface`'s ingress with `options`.
pub fn attach_pass_stop(iface: &str, options: TcAttachOptions) -> aya::Ebpf {
    let mut ebpf = aya::EbpfLoader::new()
        .load(netpol_agent::datapath::OBJECT)
        .expect("load the object");
    let prog: &mut SchedClassifier = ebpf
        .program_mut(netpol_common::names::PROG_PASS_STOP)
        .expect("pass_stop")
        .try_into()
        .expect("classifier");
    prog.load().expect("load pass_stop");
    if matches!(options, TcAttachOptions::Netlink(_)) {
        let _ = aya::programs::tc::qdisc_add_clsact(iface);
    }
    prog.attach_with_options(iface, TcAttachType::Ingress, options)
        .expect("attach pass_stop");
    ebpf
}
