//! Address prefixes in one 128-bit space (IPv4 mapped into `::ffff:0:0/96`), and the
//! union that turns overlapping CIDR rules into longest-prefix-match entries.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;
use netpol_common::{Addr, V4_MAPPED_PREFIX};

use super::ports::PortSpec;

/// A prefix of the mapped address space; host bits are always zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    bits: u128,
    len: u8,
}

const V4_SPACE: Prefix = Prefix {
    bits: 0xffff_0000_0000,
    len: V4_MAPPED_PREFIX as u8,
};

fn mask(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    }
}

impl Prefix {
    pub fn new(bits: u128, len: u8) -> Self {
        let len = len.min(128);
        Prefix {
            bits: bits & mask(len),
            len,
        }
    }

    pub fn host(ip: IpAddr) -> Self {
        let (bits, len) = match ip {
            IpAddr::V4(v4) => (u128::from(v4.to_ipv6_mapped()), 128),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        };
        Prefix::new(bits, len)
    }

    pub fn from_net(net: IpNet) -> Self {
        match net {
            IpNet::V4(n) => Prefix::new(
                u128::from(n.network().to_ipv6_mapped()),
                V4_MAPPED_PREFIX as u8 + n.prefix_len(),
            ),
            IpNet::V6(n) => Prefix::new(u128::from(n.network()), n.prefix_len()),
        }
    }

    /// All IPv4 addresses.
    pub fn all_v4() -> Self {
        V4_SPACE
    }

    /// All IPv6 addresses (callers add the IPv4 space as an except, see `Grant::all_v6`).
    pub fn all_v6() -> Self {
        Prefix::new(0, 0)
    }

    /// Prefix length in bits of the mapped space (IPv4 `/n` is `96 + n`).
    pub fn bits(&self) -> u8 {
        self.len
    }

    pub fn is_host(&self) -> bool {
        self.len == 128
    }

    pub fn contains(&self, other: &Prefix) -> bool {
        self.len <= other.len && (other.bits & mask(self.len)) == self.bits
    }

    pub fn contains_ip(&self, ip: IpAddr) -> bool {
        self.contains(&Prefix::host(ip))
    }

    pub fn addr(&self) -> Addr {
        Addr(self.bits.to_be_bytes())
    }

    fn is_v4(&self) -> bool {
        V4_SPACE.contains(self)
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v6 = Ipv6Addr::from(self.bits);
        match (self.is_v4(), v6.to_ipv4_mapped()) {
            (true, Some(v4)) => write!(f, "{v4}/{}", self.len - V4_MAPPED_PREFIX as u8),
            _ => write!(f, "{v6}/{}", self.len),
        }
    }
}

/// What can be united: the ports of `PortSpec`, or those of `Allowed` with their rules.
pub trait Union: Clone {
    fn none() -> Self;
    fn add(&mut self, other: &Self);
}

impl Union for PortSpec {
    fn none() -> Self {
        PortSpec::none()
    }
    fn add(&mut self, other: &Self) {
        PortSpec::add(self, other)
    }
}

/// One rule's contribution for one peer: `ports` to every address of `prefix` outside the
/// `except` prefixes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant<S = PortSpec> {
    pub prefix: Prefix,
    pub except: Vec<Prefix>,
    pub ports: S,
}

impl<S> Grant<S> {
    /// The same grant with other ports (the rule's own, named by it).
    pub fn with_ports<T>(&self, ports: T) -> Grant<T> {
        Grant {
            prefix: self.prefix,
            except: self.except.clone(),
            ports,
        }
    }
}

impl Grant {
    pub fn to_host(ip: IpAddr, ports: PortSpec) -> Self {
        Grant {
            prefix: Prefix::host(ip),
            except: Vec::new(),
            ports,
        }
    }

    /// An IPv6 CIDR never covers IPv4 addresses, even `::/0`, which contains the mapped
    /// space bit-wise, or `::ffff:10.0.0.0/104`, which lies inside it (IPv6 packets with
    /// mapped addresses are dropped before any rule): such a block covers nothing.
    pub fn from_net(net: IpNet, except: Vec<Prefix>, ports: PortSpec) -> Self {
        let prefix = Prefix::from_net(net);
        let mut except = except;
        if net.addr().is_ipv6() && prefix.contains(&V4_SPACE) {
            except.push(V4_SPACE);
        } else if net.addr().is_ipv6() && V4_SPACE.contains(&prefix) {
            // Its own except: it adds nothing to any address, and is no hole either
            // (an entry's ports are those of every grant that covers it).
            except.push(prefix);
        }
        Grant {
            prefix,
            except,
            ports,
        }
    }
}

/// The longest-prefix-match table equivalent to the union of `grants`.
///
/// For an address, the grants that apply are those whose prefix contains it and none of
/// whose excepts do. Every prefix and except of every grant becomes an entry whose ports
/// are the union over the grants that contain it and do not except it; since prefixes
/// that contain a common address are nested, the longest entry containing an address
/// sees exactly the grants that apply to that address. Entries that allow nothing are
/// kept: they are the holes that stop a shorter entry from matching.
///
/// Host grants (one address, no excepts: every selected pod) are most of the input and
/// are not compared with each other: the blocks are unioned among themselves, and each
/// host adds what the longest block entry containing it allows (by the argument above,
/// exactly the blocks that apply to it). Linear in hosts, quadratic in blocks only.
pub fn union<'a, S: Union + 'a>(
    grants: impl IntoIterator<Item = &'a Grant<S>>,
) -> BTreeMap<Prefix, S> {
    let (hosts, blocks): (Vec<&Grant<S>>, Vec<&Grant<S>>) = grants
        .into_iter()
        .partition(|g| g.prefix.is_host() && g.except.is_empty());
    let mut table = union_of_blocks(&blocks);
    let lengths: BTreeSet<u8> = table.keys().map(|p| p.len).collect();
    let mut host_ports: BTreeMap<Prefix, S> = BTreeMap::new();
    for g in hosts {
        host_ports
            .entry(g.prefix)
            .or_insert_with(S::none)
            .add(&g.ports);
    }
    for (host, mut ports) in host_ports {
        // The longest block entry containing the host: one probe per prefix length.
        let covering = lengths
            .iter()
            .rev()
            .find_map(|len| table.get(&Prefix::new(host.bits, *len)));
        if let Some(block_ports) = covering {
            ports.add(block_ports);
        }
        table.insert(host, ports);
    }
    table
}

/// `union` of grants with excepts or wider prefixes: every entry against every grant.
fn union_of_blocks<S: Union>(grants: &[&Grant<S>]) -> BTreeMap<Prefix, S> {
    let mut prefixes: BTreeSet<Prefix> = BTreeSet::new();
    for g in grants {
        prefixes.insert(g.prefix);
        prefixes.extend(g.except.iter().copied());
    }
    // Without an IPv4 entry, an IPv4 address could fall through to an IPv6 entry that
    // covers the mapped space; make the IPv4 space explicit when IPv6 entries exist.
    if prefixes.iter().any(|p| !p.is_v4() && p.contains(&V4_SPACE)) {
        prefixes.insert(V4_SPACE);
    }
    prefixes
        .into_iter()
        .map(|p| {
            let mut ports = S::none();
            for g in grants {
                if g.prefix.contains(&p) && !g.except.iter().any(|e| e.contains(&p)) {
                    ports.add(&g.ports);
                }
            }
            (p, ports)
        })
        .collect()
}

/// The table that gives every address what `a` gives it united with what `b` gives it
/// (`a` and `b` built by `union`). Every entry of either becomes one: the longest entry
/// of the merged table containing an address is no shorter than the longest of `a` (or
/// `b`) containing it, and `a`'s longest entry containing the former is the latter.
pub fn merge<S: Union>(a: &BTreeMap<Prefix, S>, b: &BTreeMap<Prefix, S>) -> BTreeMap<Prefix, S> {
    let lengths = |t: &BTreeMap<Prefix, S>| t.keys().map(|p| p.len).collect::<BTreeSet<u8>>();
    let (a_lengths, b_lengths) = (lengths(a), lengths(b));
    let longest = |t: &'_ BTreeMap<Prefix, S>, lengths: &BTreeSet<u8>, p: &Prefix| {
        (lengths.iter().rev())
            .filter(|len| **len <= p.len)
            .find_map(|len| t.get(&Prefix::new(p.bits, *len)))
            .cloned()
    };
    (a.keys().chain(b.keys()))
        .map(|p| {
            let mut s = S::none();
            for found in [longest(a, &a_lengths, p), longest(b, &b_lengths, p)]
                .into_iter()
                .flatten()
            {
                s.add(&found);
            }
            (*p, s)
        })
        .collect()
}

/// What a table built by `union` gives for one address: the longest entry containing it.
pub fn lookup<S>(table: &BTreeMap<Prefix, S>, ip: IpAddr) -> Option<&S> {
    table
        .iter()
        .filter(|(p, _)| p.contains_ip(ip))
        .max_by_key(|(p, _)| p.bits())
        .map(|(_, s)| s)
}

#[cfg(test)]
mod tests {
    use super::super::ports::Ports;
    use super::*;
    use crate::state::Protocol;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn tcp(p: u16) -> PortSpec {
        PortSpec::from_ranges([Ports::one(Protocol::Tcp, p)])
    }
    fn allows(t: &BTreeMap<Prefix, PortSpec>, a: &str, port: u16) -> bool {
        lookup(t, ip(a)).is_some_and(|s| s.allows(Protocol::Tcp, port))
    }

    #[test]
    fn except_inside_cidr_is_a_hole() {
        let t = union(&[Grant::from_net(
            net("0.0.0.0/0"),
            vec![Prefix::from_net(net("169.254.169.254/32"))],
            tcp(443),
        )]);
        assert!(allows(&t, "203.0.113.10", 443));
        assert!(!allows(&t, "203.0.113.10", 80));
        assert!(!allows(&t, "169.254.169.254", 443));
    }

    #[test]
    fn overlapping_rules_add_up_inside_each_others_excepts() {
        // Rule A: 10.0.0.0/8 except 10.1.0.0/16, port 80.
        // Rule B: 10.1.0.0/16, port 81 (so 10.1/16 gets only 81; the rest of 10/8 only 80).
        // Rule C: 10.1.2.3/32 all ports.
        let t = union(&[
            Grant::from_net(
                net("10.0.0.0/8"),
                vec![Prefix::from_net(net("10.1.0.0/16"))],
                tcp(80),
            ),
            Grant::from_net(net("10.1.0.0/16"), vec![], tcp(81)),
            Grant::to_host(ip("10.1.2.3"), PortSpec::All),
        ]);
        assert!(allows(&t, "10.2.0.1", 80));
        assert!(!allows(&t, "10.2.0.1", 81));
        assert!(!allows(&t, "10.1.0.1", 80));
        assert!(allows(&t, "10.1.0.1", 81));
        assert!(allows(&t, "10.1.2.3", 9999));
        assert!(!allows(&t, "11.0.0.1", 80));
    }

    #[test]
    fn ipv6_everything_does_not_cover_ipv4() {
        let t = union(&[Grant::from_net(net("::/0"), vec![], tcp(80))]);
        assert!(allows(&t, "2001:db8::1", 80));
        assert!(!allows(&t, "10.0.0.1", 80));
        let t = union(&[
            Grant::from_net(net("::/0"), vec![], tcp(80)),
            Grant::from_net(net("0.0.0.0/0"), vec![], tcp(81)),
        ]);
        assert!(allows(&t, "10.0.0.1", 81));
        assert!(!allows(&t, "10.0.0.1", 80));
        assert!(allows(&t, "2001:db8::1", 80));
        assert!(!allows(&t, "2001:db8::1", 81));
    }

    /// The definition of `union`, every prefix against every grant, hosts included.
    fn union_by_definition(grants: &[Grant]) -> BTreeMap<Prefix, PortSpec> {
        let all: Vec<&Grant> = grants.iter().collect();
        union_of_blocks(&all)
    }

    /// Random grants: hosts, blocks that contain some of them, excepts that cut holes
    /// around others, the same host granted twice with different ports.
    fn random_grants(next: &mut impl FnMut(u64) -> u64) -> Vec<Grant> {
        let mut grants = Vec::new();
        for _ in 0..next(12) {
            let a = ip(&format!("10.{}.{}.{}", next(2), next(3), next(4)));
            grants.push(Grant::to_host(a, tcp(80 + next(3) as u16)));
        }
        for _ in 0..next(4) {
            let len = [8, 16, 24, 30, 32][next(5) as usize];
            let cidr = net(&format!("10.{}.{}.0/{len}", next(2), next(3)));
            let except = (0..next(3))
                .map(|_| {
                    let host = Prefix::host(ip(&format!("10.{}.{}.{}", next(2), next(3), next(4))));
                    Prefix::new(host.bits, 128 - next(3) as u8)
                })
                .filter(|e| {
                    Prefix::from_net(cidr.trunc()).contains(e)
                        && *e != Prefix::from_net(cidr.trunc())
                })
                .collect();
            let ports = if next(3) == 0 {
                PortSpec::All
            } else {
                tcp(80 + next(3) as u16)
            };
            grants.push(Grant::from_net(cidr.trunc(), except, ports));
        }
        if next(5) == 0 {
            grants.push(Grant::from_net(net("::/0"), vec![], tcp(443)));
        }
        grants
    }

    fn rng() -> impl FnMut(u64) -> u64 {
        let mut seed = 0x5eed_u64;
        move |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        }
    }

    #[test]
    fn union_with_hosts_apart_equals_the_definition() {
        let mut next = rng();
        for _ in 0..300 {
            let grants = random_grants(&mut next);
            let fast = union(&grants);
            let reference = union_by_definition(&grants);
            assert_eq!(fast, reference, "grants: {grants:?}");
        }
    }

    /// Two tables merged give every address what the table of all their grants gives it.
    #[test]
    fn merged_tables_answer_as_the_union_of_their_grants() {
        let mut next = rng();
        for _ in 0..300 {
            let (a, b) = (random_grants(&mut next), random_grants(&mut next));
            let merged = merge(&union(&a), &union(&b));
            let all: Vec<Grant> = a.iter().chain(b.iter()).cloned().collect();
            let whole = union(&all);
            for _ in 0..40 {
                let addr = ip(&format!("10.{}.{}.{}", next(2), next(3), next(5)));
                assert_eq!(
                    lookup(&merged, addr).filter(|s| !s.is_none()),
                    lookup(&whole, addr).filter(|s| !s.is_none()),
                    "{addr}; a: {a:?}; b: {b:?}"
                );
            }
        }
    }

    #[test]
    fn ipv6_blocks_inside_the_mapped_space_cover_nothing() {
        for cidr in ["::ffff:10.1.0.0/112", "::ffff:10.1.0.7/128"] {
            let t = union(&[
                Grant::from_net(net(cidr), vec![], PortSpec::All),
                Grant::from_net(net("10.0.0.0/8"), vec![], tcp(80)),
            ]);
            assert!(!allows(&t, "10.1.0.7", 81), "{cidr}");
            assert!(allows(&t, "10.1.0.7", 80), "{cidr}: no hole in 10.0.0.0/8");
        }
    }

    #[test]
    fn display_is_the_familiar_form() {
        assert_eq!(
            Prefix::from_net(net("10.1.0.0/16")).to_string(),
            "10.1.0.0/16"
        );
        assert_eq!(
            Prefix::from_net(net("2001:db8::/32")).to_string(),
            "2001:db8::/32"
        );
        assert_eq!(
            Prefix::new(u128::from(Ipv6Addr::from([0u8; 16])), 0).to_string(),
            "::/0"
        );
    }
}
