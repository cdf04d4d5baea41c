//! Nexthop objects (`ip nexthop`, Linux >= 5.3): routes that use them (`nhid N`, as FRR
//! installs routes) name no interface of their own when `nexthop_compat_mode` is off.
//! rust-netlink has no types for these messages, so the few fields needed are read here.

use std::collections::BTreeMap;
use std::io;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

const RTM_NEWNEXTHOP: u16 = 104;
const RTM_GETNEXTHOP: u16 = 106;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NHA_ID: u16 = 1;
const NHA_GROUP: u16 = 2;
const NHA_OIF: u16 = 5;
/// nlmsghdr, then struct nhmsg.
const HEADER: usize = 16;
const NHMSG: usize = 8;

/// A nexthop object: the interface it leaves by, or the objects it groups.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Nexthop {
    pub oif: Option<u32>,
    pub group: Vec<u32>,
}

/// Every nexthop object, by id. Empty on a kernel without them.
pub fn dump() -> io::Result<BTreeMap<u32, Nexthop>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut req = Vec::with_capacity(HEADER + NHMSG);
    req.extend_from_slice(&((HEADER + NHMSG) as u32).to_ne_bytes());
    req.extend_from_slice(&RTM_GETNEXTHOP.to_ne_bytes());
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req.extend_from_slice(&flags.to_ne_bytes());
    req.extend_from_slice(&[0u8; 8]); // seq, pid
    req.extend_from_slice(&[0u8; NHMSG]); // AF_UNSPEC, everything
    socket.send(&req, 0)?;
    let mut out = BTreeMap::new();
    loop {
        let (data, _) = socket.recv_from_full()?;
        let mut at = 0;
        while at + HEADER <= data.len() {
            let len = u32_at(&data, at) as usize;
            let kind = u16_at(&data, at + 4);
            if len < HEADER || at + len > data.len() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "nexthop dump: bad message length",
                ));
            }
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let code = i32::from_ne_bytes(bytes4(&data, at + HEADER));
                    return match -code {
                        0 => Ok(out),
                        // No nexthop objects in this kernel.
                        libc::EOPNOTSUPP | libc::EINVAL | libc::EAFNOSUPPORT => Ok(out),
                        e => Err(io::Error::from_raw_os_error(e)),
                    };
                }
                RTM_NEWNEXTHOP if len >= HEADER + NHMSG => {
                    if let Some((id, nh)) = parse(&data[at + HEADER + NHMSG..at + len]) {
                        out.insert(id, nh);
                    }
                }
                _ => {}
            }
            at += align(len);
        }
    }
}

fn parse(mut attrs: &[u8]) -> Option<(u32, Nexthop)> {
    let mut id = None;
    let mut nh = Nexthop::default();
    while attrs.len() >= 4 {
        let len = usize::from(u16_at(attrs, 0));
        let kind = u16_at(attrs, 2) & 0x3fff;
        if len < 4 || len > attrs.len() {
            break;
        }
        let value = &attrs[4..len];
        match kind {
            NHA_ID if value.len() >= 4 => id = Some(u32_at(value, 0)),
            NHA_OIF if value.len() >= 4 => nh.oif = Some(u32_at(value, 0)),
            // struct nexthop_grp: id (u32), weight, reserved: 8 bytes each.
            NHA_GROUP => nh.group = value.chunks_exact(8).map(|g| u32_at(g, 0)).collect(),
            _ => {}
        }
        attrs = &attrs[align(len).min(attrs.len())..];
    }
    Some((id?, nh))
}

/// The interfaces object `id` leaves by, through groups (not nested in Linux).
pub fn interfaces(objects: &BTreeMap<u32, Nexthop>, id: u32) -> Vec<u32> {
    let Some(nh) = objects.get(&id) else {
        return Vec::new();
    };
    nh.oif
        .into_iter()
        .chain(
            nh.group
                .iter()
                .filter_map(|m| objects.get(m).and_then(|n| n.oif)),
        )
        .collect()
}

fn align(len: usize) -> usize {
    (len + 3) & !3
}

fn bytes4(d: &[u8], at: usize) -> [u8; 4] {
    let mut b = [0u8; 4];
    if let Some(s) = d.get(at..at + 4) {
        b.copy_from_slice(s);
    }
    b
}

fn u32_at(d: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(bytes4(d, at))
}

fn u16_at(d: &[u8], at: usize) -> u16 {
    let mut b = [0u8; 2];
    if let Some(s) = d.get(at..at + 2) {
        b.copy_from_slice(s);
    }
    u16::from_ne_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut a = ((4 + value.len()) as u16).to_ne_bytes().to_vec();
        a.extend_from_slice(&kind.to_ne_bytes());
        a.extend_from_slice(value);
        a.resize(align(a.len()), 0);
        a
    }

    #[test]
    fn objects_and_groups_resolve_to_interfaces() {
        let one = [
            attr(NHA_ID, &1u32.to_ne_bytes()),
            attr(NHA_OIF, &7u32.to_ne_bytes()),
        ]
        .concat();
        let two = [
            attr(NHA_ID, &2u32.to_ne_bytes()),
            attr(NHA_OIF, &9u32.to_ne_bytes()),
        ]
        .concat();
        let mut members = Vec::new();
        for m in [1u32, 2] {
            members.extend_from_slice(&m.to_ne_bytes());
            members.extend_from_slice(&[1, 0, 0, 0]);
        }
        let group = [attr(NHA_ID, &3u32.to_ne_bytes()), attr(NHA_GROUP, &members)].concat();
        let objects: BTreeMap<u32, Nexthop> =
            [one, two, group].iter().filter_map(|a| parse(a)).collect();
        assert_eq!(interfaces(&objects, 1), vec![7]);
        assert_eq!(interfaces(&objects, 3), vec![7, 9]);
        assert!(interfaces(&objects, 4).is_empty());
    }
}
