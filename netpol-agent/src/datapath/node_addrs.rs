//! This node's own addresses, from the kernel. Traffic between a pod and its own node
//! always passes (kubelet probes, node-local agents), so the datapath must know every
//! address the node answers on, the host side of pod veths included.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;

/// Loopback is never reached from a pod.
const LOOPBACK: &str = "lo";
/// kube-proxy's IPVS dummy: it holds Service addresses, which policy names as such; what
/// reaches one on a port no Service has reaches the node's sockets.
const IPVS: &str = "kube-ipvs0";

/// This node's addresses, from its interfaces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeAddresses {
    /// Every address configured on this network namespace's interfaces.
    pub own: BTreeSet<IpAddr>,
    /// Their IPv4 broadcast addresses: a packet to one reaches the node's sockets.
    pub broadcast: BTreeSet<IpAddr>,
    /// kube-proxy's IPVS Service addresses (not in `own`).
    pub services: BTreeSet<IpAddr>,
}

/// What `getifaddrs` says of this network namespace's interfaces.
pub fn node_addresses() -> io::Result<NodeAddresses> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = NodeAddresses::default();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned; valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a NUL-terminated name owned by the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy();
        if name == LOOPBACK {
            continue;
        }
        // SAFETY: a sockaddr of the list, valid until freeifaddrs.
        if let Some(ip) = unsafe { ip_of(ifa.ifa_addr) } {
            if name == IPVS {
                out.services.insert(ip);
                continue;
            }
            out.own.insert(ip);
        }
        // With IFF_BROADCAST, `ifa_ifu` is the broadcast address (else a peer's).
        if ifa.ifa_flags & libc::IFF_BROADCAST as u32 != 0 && !ifa.ifa_ifu.is_null() {
            // SAFETY: as above.
            if let Some(ip @ IpAddr::V4(_)) = unsafe { ip_of(ifa.ifa_ifu) } {
                out.broadcast.insert(ip);
            }
        }
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The IP address of a `sockaddr` of an IP family.
///
/// # Safety
/// `sa` points at a valid sockaddr whose family says its real type.
unsafe fn ip_of(sa: *const libc::sockaddr) -> Option<IpAddr> {
    // SAFETY: the caller's promise.
    unsafe {
        match i32::from((*sa).sa_family) {
            libc::AF_INET => {
                let sin = &*(sa as *const libc::sockaddr_in);
                Some(IpAddr::from(
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                ))
            }
            libc::AF_INET6 => {
                let sin6 = &*(sa as *const libc::sockaddr_in6);
                Some(IpAddr::from(sin6.sin6_addr.s6_addr))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_no_loopback_address() {
        let addrs = super::node_addresses().expect("getifaddrs");
        assert!(addrs.own.iter().all(|a| !a.is_loopback()), "{addrs:?}");
    }
}
