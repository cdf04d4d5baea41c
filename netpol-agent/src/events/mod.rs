//! Verdict events: what the datapath reports through its ring buffer (drops, and when
//! asked openings a rule allowed), named (pods, reasons, directions) and kept in a bounded
//! history that `/events` serves and `netpol-agent monitor` follows.
//!
//! * [`reader`] drains the ring buffer into the history.
//! * [`follow`] is `netpol-agent monitor`, a client of `/events`.
//! * [`History`] keeps the most recent events with sequence numbers, so a follower asks
//!   for what came after the last one it saw.

pub mod datapath_log;
pub mod follow;
pub mod reader;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use netpol_common::{Addr, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP};
use netpol_common::{VerdictEvent, events, reason};
use serde::{Deserialize, Serialize};

/// Events kept for followers and `/events`.
pub const HISTORY: usize = 4096;

/// One verdict, named.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the agent's history (increasing, never reused).
    pub seq: u64,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub node: String,
    /// `ns/name` of the pod the verdict is counted on (None: no pod, or one this agent
    /// no longer knows).
    pub pod: Option<String>,
    /// `drop`, `allow`, or `audit`: an opening that passed and that the pod's policies
    /// in audit mode would have dropped.
    pub verdict: String,
    /// `netpol_common::reason::NAMES`.
    pub reason: String,
    /// The pod's side the verdict is about: `egress` or `ingress`.
    pub direction: String,
    /// For `drop_egress` and `drop_ingress`: the policies that isolate the pod in that
    /// direction (`ns/name`), none of whose rules allows the packet. For `audit_egress`
    /// and `audit_ingress`: the pod's policies in audit mode for that direction.
    #[serde(default)]
    pub policies: Vec<String>,
    /// For `allow_policy` and `allow_tracked`: the rule that allowed the connection on
    /// the pod's side (`ns/name ingress[i]`; see `compile::allowed` for which one when
    /// several do). None when the side is not isolated or the rule is not known.
    #[serde(default)]
    pub rule: Option<String>,
    /// Where it was taken: `from_pod`, `to_pod` or `uplink`.
    pub hook: String,
    pub interface: u32,
    /// Addresses, ports and protocol as the hook saw them (None: not an IP packet).
    pub src: Option<String>,
    pub dst: Option<String>,
    pub sport: u16,
    pub dport: u16,
    pub protocol: Option<String>,
}

impl Event {
    /// One line for `monitor`.
    pub fn line(&self) -> String {
        let flow = match (&self.src, &self.dst, &self.protocol) {
            (Some(s), Some(d), Some(p)) if self.sport != 0 || self.dport != 0 => {
                format!("{s}:{} -> {d}:{} {p}", self.sport, self.dport)
            }
            (Some(s), Some(d), Some(p)) => format!("{s} -> {d} {p}"),
            _ => "(not IP)".to_string(),
        };
        let by = match &self.rule {
            Some(rule) => format!(" by {rule}"),
            None if self.policies.is_empty() => String::new(),
            None if self.verdict == "audit" => {
                format!(" would be dropped by {}", self.policies.join(", "))
            }
            None => format!(" isolated by {}", self.policies.join(", ")),
        };
        format!(
            "{} {} {} {} {} {}{by} ({})",
            self.seq,
            self.verdict.to_uppercase(),
            self.pod.as_deref().unwrap_or("-"),
            self.direction,
            flow,
            self.reason,
            self.hook,
        )
    }
}

/// What `/events` returns.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// Ask for `since=next` to get what comes after this page.
    pub next: u64,
    /// Events the datapath could not report (ring buffer full), summed over CPUs.
    pub lost: u64,
    /// Events left out by the per-pod budget (`--events-rate`).
    pub suppressed: u64,
    pub events: Vec<Event>,
}

/// The recent events, and what names them.
#[derive(Debug, Default)]
pub struct History {
    events: VecDeque<Event>,
    next_seq: u64,
    node: String,
    /// Endpoint id -> the pod (the programmer's ids, after each programming).
    pods: HashMap<u32, KnownPod>,
    /// Rule id -> `ns/name ingress[i]` (likewise).
    rules: HashMap<u32, String>,
    pub lost: u64,
    pub suppressed: u64,
    /// Events seen since start, by verdict.
    pub seen: HashMap<String, u64>,
}

pub type Shared = Arc<Mutex<History>>;

/// What names a local pod's events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KnownPod {
    /// `ns/name`.
    pub name: String,
    /// The policies that isolate it, per direction (`ns/name`).
    pub ingress_policies: Vec<String>,
    pub egress_policies: Vec<String>,
    /// Its policies in audit mode, per direction.
    pub audit_ingress_policies: Vec<String>,
    pub audit_egress_policies: Vec<String>,
}

impl KnownPod {
    pub fn named(name: &str) -> Self {
        KnownPod {
            name: name.to_string(),
            ..Default::default()
        }
    }
}

/// The history, even if a holder of the lock panicked (it holds no invariant a panic
/// could break halfway).
pub fn lock(h: &Shared) -> std::sync::MutexGuard<'_, History> {
    h.lock().unwrap_or_else(|p| p.into_inner())
}

impl History {
    pub fn new(node: &str) -> Self {
        History {
            node: node.to_string(),
            next_seq: 1,
            ..Default::default()
        }
    }

    pub fn set_pods(&mut self, pods: HashMap<u32, KnownPod>) {
        self.pods = pods;
    }

    pub fn set_rules(&mut self, rules: HashMap<u32, String>) {
        self.rules = rules;
    }

    /// Names a datapath event and keeps it (the oldest goes when the history is full).
    pub fn push(&mut self, raw: &VerdictEvent, time_ms: u64) {
        let e = self.name(raw, time_ms);
        *self.seen.entry(e.verdict.clone()).or_default() += 1;
        if self.events.len() == HISTORY {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }

    /// Events after `since` (at most `limit`), oldest first.
    pub fn page(&self, since: u64, limit: usize) -> Page {
        let events: Vec<Event> = self
            .events
            .iter()
            .filter(|e| e.seq > since)
            .take(limit)
            .cloned()
            .collect();
        let next = events
            .last()
            .map_or(since.max(self.next_seq - 1), |e| e.seq);
        Page {
            next,
            lost: self.lost,
            suppressed: self.suppressed,
            events,
        }
    }

    fn name(&mut self, raw: &VerdictEvent, time_ms: u64) -> Event {
        let why = usize::from(raw.reason);
        let reason = reason::NAMES.get(why).copied().unwrap_or("unknown");
        let hook = match raw.hook {
            events::AT_FROM_POD => "from_pod",
            events::AT_TO_POD => "to_pod",
            events::AT_UPLINK => "uplink",
            events::AT_TO_NODE => "to_node",
            _ => "unknown",
        };
        // A drop names the side that refused; anything else the hook's side of the pod.
        let direction = match why {
            reason::DROP_EGRESS | reason::DROP_UNTRACKABLE | reason::AUDIT_EGRESS => "egress",
            reason::DROP_INGRESS | reason::AUDIT_INGRESS => "ingress",
            _ if raw.hook == events::AT_TO_POD => "ingress",
            _ => "egress",
        };
        let has_tuple = raw.flags & events::HAS_TUPLE != 0;
        let known = self.pods.get(&raw.endpoint_id);
        let policies = match (why, known) {
            (reason::DROP_EGRESS, Some(k)) => k.egress_policies.clone(),
            (reason::DROP_INGRESS, Some(k)) => k.ingress_policies.clone(),
            (reason::AUDIT_EGRESS, Some(k)) => k.audit_egress_policies.clone(),
            (reason::AUDIT_INGRESS, Some(k)) => k.audit_ingress_policies.clone(),
            _ => Vec::new(),
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        Event {
            seq,
            time_ms,
            node: self.node.clone(),
            pod: known.map(|k| k.name.clone()),
            verdict: if why >= reason::FIRST_AUDIT {
                "audit"
            } else if reason::drops(why) {
                "drop"
            } else {
                "allow"
            }
            .to_string(),
            reason: reason.to_string(),
            direction: direction.to_string(),
            policies,
            rule: self.rules.get(&raw.rule).cloned(),
            hook: hook.to_string(),
            interface: raw.ifindex,
            src: has_tuple.then(|| ip_of(&raw.src).to_string()),
            dst: has_tuple.then(|| ip_of(&raw.dst).to_string()),
            sport: raw.sport,
            dport: raw.dport,
            protocol: has_tuple.then(|| protocol_name(raw.proto)),
        }
    }
}

/// An `Addr` as the address it holds (IPv4-mapped ones as IPv4).
pub fn ip_of(a: &Addr) -> IpAddr {
    let v6 = Ipv6Addr::from(a.0);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None if a.0 == [0; 16] => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        None => IpAddr::V6(v6),
    }
}

fn protocol_name(proto: u8) -> String {
    match proto {
        PROTO_TCP => "TCP".into(),
        PROTO_UDP => "UDP".into(),
        PROTO_SCTP => "SCTP".into(),
        PROTO_ICMP => "ICMP".into(),
        PROTO_ICMPV6 => "ICMPv6".into(),
        n => format!("proto-{n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(id: u32, why: usize, hook: u8) -> VerdictEvent {
        VerdictEvent {
            time_ns: 1,
            src: Addr::from_v4([10, 1, 0, 2]),
            dst: Addr::from_v4([10, 2, 0, 5]),
            endpoint_id: id,
            ifindex: 7,
            sport: 40000,
            dport: 80,
            proto: PROTO_TCP,
            reason: why as u8,
            hook,
            flags: events::HAS_TUPLE,
            rule: 0,
            _pad: 0,
        }
    }

    #[test]
    fn events_are_named_and_paged_in_order() {
        let mut h = History::new("node-a");
        h.set_pods(HashMap::from([(
            3,
            KnownPod {
                name: "default/client".into(),
                ingress_policies: vec![],
                egress_policies: vec!["default/deny-egress".into()],
                audit_ingress_policies: vec![],
                audit_egress_policies: vec!["default/staged".into()],
            },
        )]));
        h.push(&raw(3, reason::DROP_EGRESS, events::AT_UPLINK), 10);
        h.set_rules(HashMap::from([(5, "default/web egress[1]".to_string())]));
        h.push(&raw(9, reason::DROP_INGRESS, events::AT_TO_POD), 11);
        let mut allowed = raw(3, reason::ALLOW_POLICY, events::AT_FROM_POD);
        allowed.rule = 5;
        h.push(&allowed, 12);
        let page = h.page(0, 2);
        assert_eq!(page.events.len(), 2);
        let first = &page.events[0];
        assert_eq!(first.pod.as_deref(), Some("default/client"));
        assert_eq!(
            (first.verdict.as_str(), first.direction.as_str()),
            ("drop", "egress")
        );
        assert_eq!(first.src.as_deref(), Some("10.1.0.2"));
        assert_eq!(first.policies, vec!["default/deny-egress".to_string()]);
        assert_eq!(first.protocol.as_deref(), Some("TCP"));
        assert_eq!(first.node, "node-a");
        assert_eq!(
            page.events[1].pod, None,
            "an endpoint the agent does not know"
        );
        assert_eq!(page.events[1].direction, "ingress");
        let rest = h.page(page.next, 10);
        assert_eq!(rest.events.len(), 1);
        assert_eq!(rest.events[0].verdict, "allow");
        assert_eq!(
            rest.events[0].rule.as_deref(),
            Some("default/web egress[1]")
        );
        assert!(
            rest.events[0]
                .line()
                .ends_with("allow_policy by default/web egress[1] (from_pod)")
        );
        assert_eq!(h.page(rest.next, 10).events, vec![]);
        assert_eq!(
            h.page(rest.next, 10).next,
            rest.next,
            "nothing new: same cursor"
        );
        assert!(
            first.line().contains(
                "DROP default/client egress 10.1.0.2:40000 -> 10.2.0.5:80 TCP drop_egress isolated by default/deny-egress"
            )
        );
    }

    #[test]
    fn audit_findings_name_the_audit_policies() {
        let mut h = History::new("n");
        h.set_pods(HashMap::from([(
            3,
            KnownPod {
                name: "default/client".into(),
                audit_egress_policies: vec!["default/staged".into()],
                ..Default::default()
            },
        )]));
        h.push(&raw(3, reason::AUDIT_EGRESS, events::AT_FROM_POD), 1);
        let e = &h.page(0, 1).events[0];
        assert_eq!(
            (e.verdict.as_str(), e.direction.as_str()),
            ("audit", "egress")
        );
        assert_eq!(e.policies, vec!["default/staged".to_string()]);
        assert!(
            e.line()
                .contains("audit_egress would be dropped by default/staged"),
            "{}",
            e.line()
        );
    }

    #[test]
    fn the_history_is_bounded_and_sequence_numbers_go_on() {
        let mut h = History::new("n");
        for _ in 0..HISTORY + 10 {
            h.push(&raw(1, reason::DROP_EGRESS, events::AT_FROM_POD), 0);
        }
        let page = h.page(0, usize::MAX);
        assert_eq!(page.events.len(), HISTORY);
        assert_eq!(page.events[0].seq, 11, "the oldest ten are gone");
        assert_eq!(page.next, (HISTORY + 10) as u64);
        assert_eq!(h.seen.get("drop"), Some(&((HISTORY + 10) as u64)));
    }

    #[test]
    fn frames_without_an_ip_header_have_no_addresses() {
        let mut h = History::new("n");
        let mut r = raw(1, reason::DROP_FRAME, events::AT_FROM_POD);
        r.flags = 0;
        h.push(&r, 0);
        let e = &h.page(0, 1).events[0];
        assert_eq!((e.src.clone(), e.protocol.clone()), (None, None));
        assert!(e.line().contains("(not IP)"));
    }
}
