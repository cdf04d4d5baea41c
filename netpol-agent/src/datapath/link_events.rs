//! Link, route and address changes of this network namespace, from the kernel (rtnetlink
//! multicast groups), so a new pod veth is attached the moment its route appears,
//! without polling.

use std::io;

use tokio::sync::mpsc;

/// Sends on `tx` after every link or route change; bursts collapse into one message.
pub fn subscribe(tx: mpsc::Sender<()>) -> io::Result<()> {
    // SAFETY: plain syscalls on a socket we own; the address struct is fully initialised.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: zeroed sockaddr_nl is valid; fields set below.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // Addresses too: the node's own addresses are always allowed to talk to its pods.
    addr.nl_groups = (libc::RTMGRP_LINK
        | libc::RTMGRP_IPV4_ROUTE
        | libc::RTMGRP_IPV6_ROUTE
        | libc::RTMGRP_IPV4_IFADDR
        | libc::RTMGRP_IPV6_IFADDR) as u32;
    // SAFETY: valid address of the right size.
    let rc = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        // SAFETY: our descriptor.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    std::thread::Builder::new()
        .name("link-events".into())
        .spawn(move || {
            let mut buf = [0u8; 16384];
            loop {
                // SAFETY: the buffer is valid for its length.
                let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    // ENOBUFS: we missed some, which a reconcile covers anyway.
                    if e.raw_os_error() != Some(libc::ENOBUFS) && e.kind() != io::ErrorKind::Interrupted {
                        tracing::error!(error = %e, "link events stopped; new pods are found by the periodic resync until the agent restarts, and /healthz fails");
                        break;
                    }
                }
                if tx.is_closed() {
                    break;
                }
                let _ = tx.try_send(());
            }
            // SAFETY: our descriptor, closed once.
            unsafe { libc::close(fd) };
        })?;
    Ok(())
}
