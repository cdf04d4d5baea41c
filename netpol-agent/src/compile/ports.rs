//! Port sets: what a rule allows on one peer, and their union across rules.

use std::collections::BTreeSet;

use crate::state::Protocol;

/// Inclusive range of ports on one protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ports {
    pub protocol: Protocol,
    pub first: u16,
    pub last: u16,
}

impl Ports {
    pub fn one(protocol: Protocol, port: u16) -> Self {
        Ports {
            protocol,
            first: port,
            last: port,
        }
    }
    pub fn all_of(protocol: Protocol) -> Self {
        Ports {
            protocol,
            first: 0,
            last: u16::MAX,
        }
    }
}

/// What is allowed to or from one address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortSpec {
    /// Every port of every protocol (a rule without `ports`).
    All,
    /// Exactly these (normalised: sorted, overlapping and adjacent ranges merged). Empty
    /// means nothing: an `except` hole, or a named port no pod has.
    Only(BTreeSet<Ports>),
}

impl PortSpec {
    pub fn none() -> Self {
        PortSpec::Only(BTreeSet::new())
    }

    pub fn is_none(&self) -> bool {
        matches!(self, PortSpec::Only(s) if s.is_empty())
    }

    pub fn from_ranges(ranges: impl IntoIterator<Item = Ports>) -> Self {
        let mut spec = PortSpec::none();
        for r in ranges {
            spec.add(&PortSpec::Only(BTreeSet::from([r])));
        }
        spec
    }

    pub fn allows(&self, protocol: Protocol, port: u16) -> bool {
        match self {
            PortSpec::All => true,
            PortSpec::Only(s) => s
                .iter()
                .any(|r| r.protocol == protocol && r.first <= port && port <= r.last),
        }
    }

    /// `self ∪= other`.
    pub fn add(&mut self, other: &PortSpec) {
        let (mine, theirs) = match (&mut *self, other) {
            (PortSpec::All, _) => return,
            (_, PortSpec::All) => {
                *self = PortSpec::All;
                return;
            }
            (PortSpec::Only(a), PortSpec::Only(b)) => (a, b),
        };
        let mut all: Vec<Ports> = mine.iter().chain(theirs.iter()).copied().collect();
        all.sort();
        let mut merged: Vec<Ports> = Vec::with_capacity(all.len());
        for r in all {
            match merged.last_mut() {
                Some(last)
                    if last.protocol == r.protocol
                        && u32::from(r.first) <= u32::from(last.last) + 1 =>
                {
                    last.last = last.last.max(r.last);
                }
                _ => merged.push(r),
            }
        }
        *mine = merged.into_iter().collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn union_merges_adjacent_and_overlapping_ranges_per_protocol() {
        let mut a = PortSpec::from_ranges([Ports::one(Protocol::Tcp, 80)]);
        a.add(&PortSpec::from_ranges([
            Ports::one(Protocol::Tcp, 81),
            Ports::one(Protocol::Udp, 81),
            Ports {
                protocol: Protocol::Tcp,
                first: 82,
                last: 90,
            },
        ]));
        assert_eq!(
            a,
            PortSpec::from_ranges([
                Ports {
                    protocol: Protocol::Tcp,
                    first: 80,
                    last: 90
                },
                Ports::one(Protocol::Udp, 81),
            ])
        );
        assert!(a.allows(Protocol::Tcp, 85));
        assert!(!a.allows(Protocol::Udp, 80));
        assert!(!a.allows(Protocol::Sctp, 81));
    }

    #[test]
    fn ranges_with_a_gap_stay_apart() {
        let mut a = PortSpec::from_ranges([Ports::one(Protocol::Tcp, 80)]);
        a.add(&PortSpec::from_ranges([Ports::one(Protocol::Tcp, 82)]));
        assert!(!a.allows(Protocol::Tcp, 81));
        assert!(a.allows(Protocol::Tcp, 82));
    }

    #[test]
    fn all_absorbs() {
        let mut a = PortSpec::none();
        a.add(&PortSpec::All);
        a.add(&PortSpec::from_ranges([Ports::one(Protocol::Tcp, 1)]));
        assert_eq!(a, PortSpec::All);
        assert!(a.allows(Protocol::Sctp, 9));
    }
}
