//! This node's own addresses, from the kernel. Traffic between a pod and its own node
//! always passes (kubelet probes, node-local agents), so the datapath must know every
//! address the node answers on, the host side of pod veths included.

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;

/// Interfaces whose addresses are not the node's own: loopback is never reached from a
/// pod, and kube-proxy's IPVS dummy holds Service addresses, which are judged by policy.
const NOT_NODE: [&str; 2] = ["lo", "kube-ipvs0"];

/// Every address configured on this network namespace's interfaces.
pub fn node_addresses() -> io::Result<BTreeSet<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = BTreeSet::new();
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
        if NOT_NODE.contains(&name.as_ref()) {
            continue;
        }
        // SAFETY: ifa_addr points at a sockaddr whose family says its real type.
        let ip = unsafe {
            match i32::from((*ifa.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    Some(IpAddr::from(
                        u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                    ))
                }
                libc::AF_INET6 => {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    Some(IpAddr::from(sin6.sin6_addr.s6_addr))
                }
                _ => None,
            }
        };
        if let Some(ip) = ip {
            out.insert(ip);
        }
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_no_loopback_address() {
        let addrs = super::node_addresses().expect("getifaddrs");
        assert!(addrs.iter().all(|a| !a.is_loopback()), "{addrs:?}");
    }
}
