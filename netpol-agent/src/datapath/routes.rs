//! Host routes: a routed CNI (ptp, kindnet, Calico) installs one to each pod address via
//! the host side of its veth. Only the node can write them, so they are the strongest
//! evidence of which veth is whose (see `pod_links`). Read from the kernel's route tables
//! in /proc, which are per network namespace.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Host routes (/32, /128) and the interface they leave by.
pub fn host_routes() -> std::io::Result<BTreeMap<IpAddr, String>> {
    let mut out = parse_v4(&std::fs::read_to_string("/proc/net/route")?);
    // A kernel without IPv6 has no such file.
    if let Ok(v6) = std::fs::read_to_string("/proc/net/ipv6_route") {
        out.extend(parse_v6(&v6));
    }
    Ok(out)
}

fn parse_v4(text: &str) -> BTreeMap<IpAddr, String> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 || f[7] != "FFFFFFFF" {
                return None;
            }
            // The kernel prints the address in host (little-endian) byte order.
            let raw = u32::from_str_radix(f[1], 16).ok()?;
            Some((
                IpAddr::V4(Ipv4Addr::from(raw.swap_bytes())),
                f[0].to_string(),
            ))
        })
        .collect()
}

fn parse_v6(text: &str) -> BTreeMap<IpAddr, String> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 10 || f[1] != "80" || f[9] == "lo" {
                return None;
            }
            let raw = u128::from_str_radix(f[0], 16).ok()?;
            Some((IpAddr::V6(Ipv6Addr::from(raw)), f[9].to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_host_routes_only() {
        let text = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
up\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
veth1\t0201F40A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n\
up\t0002F40A\t0200A8C0\t0003\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let r = parse_v4(text);
        assert_eq!(r.len(), 1);
        assert_eq!(r[&"10.244.1.2".parse::<IpAddr>().unwrap()], "veth1");
    }

    #[test]
    fn v6_host_routes_only() {
        let text = "fd000000000000000000000000000005 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000400 00000001 00000000 00000001 veth2\n\
fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000400 00000001 00000000 00000001 up\n";
        let r = parse_v6(text);
        assert_eq!(r.len(), 1);
        assert_eq!(r[&"fd00::5".parse::<IpAddr>().unwrap()], "veth2");
    }
}
