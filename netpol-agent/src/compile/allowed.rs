//! What a rule set allows one peer, port by port, and which rule allows each port.
//!
//! Several rules may allow the same port to the same peer; the datapath names one of them,
//! always the same: the first in policy order (namespace, name, direction, rule index).
//! A pod peer allowed by a pod-selector rule is named by that rule even when an ipBlock
//! rule comes first (the datapath looks at the peer's identity first).
//!
//! Naming costs port ranges (ranges of different rules do not merge), and the datapath
//! scans at most `MAX_PORT_RANGES` per peer: an entry that needs more gives up naming
//! before anything is denied (`fit`).

use std::fmt;
use std::sync::Arc;

use super::Direction;
use super::ports::{PortSpec, Ports};
use crate::state::{ObjectRef, Protocol};

/// One rule of one policy: `ns/name ingress[i]`, or of a ClusterNetworkPolicy (its
/// `policy` has no namespace).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleRef {
    pub policy: ObjectRef,
    pub direction: Direction,
    pub index: usize,
    pub kind: RuleKind,
}

/// What kind of policy a rule belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RuleKind {
    NetworkPolicy,
    /// NetworkPolicy's default deny of the pods it isolates (a place in an ordered table:
    /// it never allows, so nothing counts it). `policy` is the first policy isolating.
    Isolation,
    /// A ClusterNetworkPolicy rule of the Admin tier.
    Admin,
    /// A ClusterNetworkPolicy rule of the Baseline tier.
    Baseline,
}

impl RuleKind {
    /// As metrics and `/status` name it.
    pub fn label(self) -> &'static str {
        match self {
            RuleKind::NetworkPolicy | RuleKind::Isolation => "NetworkPolicy",
            RuleKind::Admin => "Admin",
            RuleKind::Baseline => "Baseline",
        }
    }
}

impl RuleRef {
    /// Rule `index` of NetworkPolicy `policy`'s `direction` rules.
    pub fn np(policy: ObjectRef, direction: Direction, index: usize) -> Self {
        RuleRef {
            policy,
            direction,
            index,
            kind: RuleKind::NetworkPolicy,
        }
    }
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (policy, dir, i) = (&self.policy, self.direction, self.index);
        match self.kind {
            RuleKind::NetworkPolicy => write!(f, "{policy} {dir}[{i}]"),
            RuleKind::Isolation => write!(f, "{policy} {dir} default deny"),
            RuleKind::Admin => write!(
                f,
                "ClusterNetworkPolicy {} (Admin tier) {dir}[{i}]",
                policy.name
            ),
            RuleKind::Baseline => write!(
                f,
                "ClusterNetworkPolicy {} (Baseline tier) {dir}[{i}]",
                policy.name
            ),
        }
    }
}

/// Shared: every port range a rule allows names it.
pub type RuleTag = Arc<RuleRef>;

/// Ports allowed to one peer, each with the rule it is named by: a `RuleTag`, or in the
/// compiled rule sets the rule's position (from 1) among those the set unites, which each
/// pod names by its own policies (rule sets are shared by pods of different policies).
/// Either way, a smaller tag is a rule first in policy order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Allowed<T = RuleTag> {
    /// Disjoint ranges sorted by (protocol, first port), adjacent ones merged when they
    /// name the same rule; none names a rule after `rest` (that rule names them). None:
    /// allowed, named by no rule (see `fit`).
    ranges: Vec<(Ports, Option<T>)>,
    /// The rule that allows every port no range names (a rule without ports).
    rest: Option<T>,
}

impl<T> Default for Allowed<T> {
    fn default() -> Self {
        Allowed {
            ranges: Vec::new(),
            rest: None,
        }
    }
}

impl<T: Clone + Ord> Allowed<T> {
    /// Nothing allowed.
    pub fn none() -> Self {
        Allowed::default()
    }

    /// What one rule allows the peer.
    pub fn by(spec: &PortSpec, rule: &T) -> Self {
        match spec {
            PortSpec::All => Allowed {
                ranges: Vec::new(),
                rest: Some(rule.clone()),
            },
            PortSpec::Only(set) => Allowed {
                ranges: set.iter().map(|r| (*r, Some(rule.clone()))).collect(),
                rest: None,
            },
        }
    }

    pub fn is_none(&self) -> bool {
        self.ranges.is_empty() && self.rest.is_none()
    }

    /// The same ports, each named by `f` of what names it now (`None`: unnamed).
    pub fn renamed<U: Clone + Ord>(&self, f: impl Fn(Option<&T>) -> U) -> Allowed<U> {
        Allowed {
            ranges: (self.ranges.iter())
                .map(|(ports, t)| (*ports, Some(f(t.as_ref()))))
                .collect(),
            rest: self.rest.as_ref().map(|t| f(Some(t))),
        }
    }

    pub fn ranges(&self) -> &[(Ports, Option<T>)] {
        &self.ranges
    }

    pub fn rest(&self) -> Option<&T> {
        self.rest.as_ref()
    }

    /// None when `protocol`/`port` is not allowed; else the rule named for it, if any.
    pub fn decide(&self, protocol: Protocol, port: u16) -> Option<Option<&T>> {
        let range = self
            .ranges
            .iter()
            .find(|(r, _)| r.protocol == protocol && r.first <= port && port <= r.last);
        match range {
            Some((_, rule)) => Some(rule.as_ref()),
            None => self.rest.as_ref().map(Some),
        }
    }

    /// The rule named for `protocol`/`port`, when it is allowed and named.
    pub fn rule_for(&self, protocol: Protocol, port: u16) -> Option<&T> {
        self.decide(protocol, port).flatten()
    }

    pub fn allows(&self, protocol: Protocol, port: u16) -> bool {
        self.decide(protocol, port).is_some()
    }

    /// Makes the entry fit in `max` ranges, giving up naming before allowing less: with a
    /// rule that allows every port, every port is named by it (its ranges go); else
    /// ranges that touch merge, those of several rules naming none. False when even that
    /// does not fit (the caller denies the peer, and says so).
    pub fn fit(&mut self, max: usize) -> bool {
        if self.ranges.len() <= max {
            return true;
        }
        if self.rest.is_some() {
            self.ranges.clear();
            return true;
        }
        let mut merged: Vec<(Ports, Option<T>)> = Vec::with_capacity(self.ranges.len());
        for (range, rule) in std::mem::take(&mut self.ranges) {
            match merged.last_mut() {
                Some((last, last_rule))
                    if last.protocol == range.protocol
                        && u32::from(last.last) + 1 >= u32::from(range.first) =>
                {
                    last.last = last.last.max(range.last);
                    if *last_rule != rule {
                        *last_rule = None;
                    }
                }
                _ => merged.push((range, rule)),
            }
        }
        self.ranges = merged;
        self.ranges.len() <= max
    }

    /// `self ∪= other`; a port both allow is named by the first of their rules.
    pub fn add(&mut self, other: &Allowed<T>) {
        if other.is_none() {
            return;
        }
        let rest = match (self.rest.take(), &other.rest) {
            (Some(a), Some(b)) => Some(if *b < a { b.clone() } else { a }),
            (a, b) => a.or_else(|| b.clone()),
        };
        let mut by_rule: Vec<(Ports, Option<T>)> = std::mem::take(&mut self.ranges);
        by_rule.extend(other.ranges.iter().cloned());
        // Named before unnamed, first rules first: each range takes only the ports no
        // earlier one took.
        by_rule.sort_by(|a, b| (a.1.is_none(), &a.1, a.0).cmp(&(b.1.is_none(), &b.1, b.0)));
        let mut taken: Vec<(Ports, Option<T>)> = Vec::with_capacity(by_rule.len());
        for (range, rule) in by_rule {
            if rest
                .as_ref()
                .is_some_and(|r| rule.as_ref().is_none_or(|rule| r <= rule))
            {
                continue;
            }
            for free in uncovered(range, &taken) {
                taken.push((free, rule.clone()));
            }
        }
        taken.sort_by_key(|(range, _)| *range);
        let mut merged: Vec<(Ports, Option<T>)> = Vec::with_capacity(taken.len());
        for (range, rule) in taken {
            match merged.last_mut() {
                Some((last, last_rule))
                    if last.protocol == range.protocol
                        && u32::from(last.last) + 1 == u32::from(range.first)
                        && *last_rule == rule =>
                {
                    last.last = range.last;
                }
                _ => merged.push((range, rule)),
            }
        }
        self.ranges = merged;
        self.rest = rest;
    }

    /// Allows nothing from now on (a peer the datapath cannot hold).
    pub fn clear(&mut self) {
        self.ranges.clear();
        self.rest = None;
    }
}

/// The parts of `range` that no range of `taken` covers.
fn uncovered<T>(range: Ports, taken: &[(Ports, Option<T>)]) -> Vec<Ports> {
    let mut covers: Vec<(u16, u16)> = taken
        .iter()
        .filter(|(t, _)| {
            t.protocol == range.protocol && t.first <= range.last && range.first <= t.last
        })
        .map(|(t, _)| (t.first, t.last))
        .collect();
    covers.sort_unstable();
    let mut out = Vec::new();
    let mut next = u32::from(range.first);
    for (first, last) in covers {
        if u32::from(first) > next {
            out.push(Ports {
                protocol: range.protocol,
                first: next as u16,
                last: first - 1,
            });
        }
        next = next.max(u32::from(last) + 1);
    }
    if next <= u32::from(range.last) {
        out.push(Ports {
            protocol: range.protocol,
            first: next as u16,
            last: range.last,
        });
    }
    out
}

impl<T: Clone + Ord> super::prefix::Union for Allowed<T> {
    fn none() -> Self {
        Allowed::none()
    }
    fn add(&mut self, other: &Self) {
        Allowed::add(self, other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, index: usize) -> RuleTag {
        Arc::new(RuleRef::np(
            ObjectRef::new("ns", name),
            Direction::Ingress,
            index,
        ))
    }

    fn tcp(first: u16, last: u16) -> Ports {
        Ports {
            protocol: Protocol::Tcp,
            first,
            last,
        }
    }

    fn only(ranges: &[Ports]) -> PortSpec {
        PortSpec::from_ranges(ranges.iter().copied())
    }

    fn named(a: &Allowed, port: u16) -> Option<String> {
        a.rule_for(Protocol::Tcp, port).map(|r| r.to_string())
    }

    #[test]
    fn overlapping_ports_are_named_by_the_first_rule_in_either_order() {
        let (a, b) = (rule("a", 0), rule("b", 0));
        let mut one = Allowed::by(&only(&[tcp(80, 90)]), &b);
        one.add(&Allowed::by(&only(&[tcp(85, 100)]), &a));
        let mut two = Allowed::by(&only(&[tcp(85, 100)]), &a);
        two.add(&Allowed::by(&only(&[tcp(80, 90)]), &b));
        assert_eq!(one, two);
        assert_eq!(named(&one, 80).as_deref(), Some("ns/b ingress[0]"));
        assert_eq!(named(&one, 84).as_deref(), Some("ns/b ingress[0]"));
        assert_eq!(named(&one, 85).as_deref(), Some("ns/a ingress[0]"));
        assert_eq!(named(&one, 100).as_deref(), Some("ns/a ingress[0]"));
        assert_eq!(named(&one, 101), None);
        assert_eq!(one.ranges().len(), 2);
    }

    #[test]
    fn a_rule_without_ports_names_what_no_earlier_rule_names() {
        let (a, b, c) = (rule("a", 0), rule("b", 0), rule("c", 0));
        let mut set = Allowed::by(&PortSpec::All, &b);
        set.add(&Allowed::by(&only(&[tcp(80, 80)]), &a));
        set.add(&Allowed::by(&only(&[tcp(443, 443)]), &c));
        assert_eq!(named(&set, 80).as_deref(), Some("ns/a ingress[0]"));
        assert_eq!(named(&set, 443).as_deref(), Some("ns/b ingress[0]"));
        assert_eq!(named(&set, 7).as_deref(), Some("ns/b ingress[0]"));
        assert!(set.allows(Protocol::Sctp, 9));
        // c's range is named by b: it is not kept.
        assert_eq!(set.ranges().len(), 1);
    }

    #[test]
    fn adjacent_ranges_merge_only_under_one_rule() {
        let (a, b) = (rule("a", 0), rule("a", 1));
        let mut set = Allowed::by(&only(&[tcp(80, 80)]), &a);
        set.add(&Allowed::by(&only(&[tcp(81, 81)]), &a));
        assert_eq!(set.ranges().len(), 1);
        set.add(&Allowed::by(&only(&[tcp(82, 82)]), &b));
        assert_eq!(set.ranges().len(), 2);
    }

    #[test]
    fn an_entry_that_does_not_fit_gives_up_naming_before_allowing_less() {
        // 17 single ports of 17 rules, adjacent: one range, naming no rule.
        let mut set = Allowed::none();
        for i in 0..17u16 {
            set.add(&Allowed::by(
                &only(&[tcp(1000 + i, 1000 + i)]),
                &rule("a", usize::from(i)),
            ));
        }
        assert_eq!(set.ranges().len(), 17);
        assert!(set.fit(16));
        assert_eq!(set.ranges().len(), 1);
        assert!(set.allows(Protocol::Tcp, 1016));
        assert_eq!(set.rule_for(Protocol::Tcp, 1016), None);
        assert!(!set.allows(Protocol::Tcp, 1017));
        // 17 ports apart, and a rule for every port: that rule names them all.
        let mut set = Allowed::by(&PortSpec::All, &rule("z", 0));
        for i in 0..17u16 {
            set.add(&Allowed::by(
                &only(&[tcp(2 * i, 2 * i)]),
                &rule("a", usize::from(i)),
            ));
        }
        assert!(set.fit(16));
        assert_eq!(named(&set, 4).as_deref(), Some("ns/z ingress[0]"));
        assert!(set.allows(Protocol::Udp, 1));
        // 17 ports apart, no such rule: it does not fit (the peer is denied).
        let mut set = Allowed::none();
        for i in 0..17u16 {
            set.add(&Allowed::by(
                &only(&[tcp(2 * i, 2 * i)]),
                &rule("a", usize::from(i)),
            ));
        }
        assert!(!set.fit(16));
    }

    #[test]
    fn union_allows_what_either_allows() {
        // Random ranges of random rules: the union allows a port exactly when one of
        // them does, and names the first of those that do.
        let mut seed = 0x5eed_u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for _ in 0..300 {
            let grants: Vec<(PortSpec, RuleTag)> = (0..1 + next(5))
                .map(|_| {
                    let r = rule(&format!("p{}", next(4)), next(2) as usize);
                    let spec = if next(6) == 0 {
                        PortSpec::All
                    } else {
                        let first = next(20) as u16;
                        only(&[tcp(first, first + next(6) as u16)])
                    };
                    (spec, r)
                })
                .collect();
            let mut set = Allowed::none();
            for (spec, r) in &grants {
                set.add(&Allowed::by(spec, r));
            }
            for port in 0..30 {
                let expected = grants
                    .iter()
                    .filter(|(s, _)| s.allows(Protocol::Tcp, port))
                    .map(|(_, r)| r)
                    .min();
                assert_eq!(set.rule_for(Protocol::Tcp, port), expected, "{grants:?}");
            }
        }
    }
}
