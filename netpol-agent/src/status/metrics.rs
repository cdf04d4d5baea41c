//! `/metrics`: the status snapshot's numbers, read at each scrape, and the durations the
//! agent records, as OpenMetrics text (prometheus-client).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use super::Shared;

/// The agent's Prometheus metrics: the status snapshot's numbers, read at each scrape
/// (`StatusMetrics`), and the durations the agent records.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Seconds per compile of the node's plan.
    pub compile_seconds: Histogram,
    /// Seconds per programming of the maps (the diff against what is loaded).
    pub apply_seconds: Histogram,
    /// Seconds from a change of the cluster noticed to the maps enforcing it.
    pub propagation_seconds: Histogram,
    /// TC attach failures (pod veths, uplinks, quarantined veths).
    pub attach_failures: Counter,
}

impl Metrics {
    pub fn new(status: Shared, events: crate::events::Shared) -> Metrics {
        let mut registry = Registry::default();
        // 1 ms to about 16 s.
        let compile_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let apply_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let propagation_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        let attach_failures = Counter::default();
        registry.register_with_unit(
            "netpol_propagation",
            "Time from a change of the cluster noticed by the agent to the maps enforcing it",
            Unit::Seconds,
            propagation_seconds.clone(),
        );
        registry.register(
            "netpol_attach_failures",
            "Failed TC attachments (pod veths, uplinks, quarantined veths); each is retried at the next reconcile",
            attach_failures.clone(),
        );
        registry.register_with_unit(
            "netpol_compile",
            "Time to compile the node's plan from the cluster state",
            Unit::Seconds,
            compile_seconds.clone(),
        );
        registry.register_with_unit(
            "netpol_apply",
            "Time to program the maps with a plan",
            Unit::Seconds,
            apply_seconds.clone(),
        );
        registry.register_collector(Box::new(StatusMetrics(status)));
        registry.register_collector(Box::new(EventMetrics(events)));
        Metrics {
            registry,
            compile_seconds,
            apply_seconds,
            propagation_seconds,
            attach_failures,
        }
    }

    /// The OpenMetrics text exposition (Prometheus reads it).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// The status snapshot's numbers as metrics, taken at each scrape.
#[derive(Debug)]
struct StatusMetrics(Shared);

/// Verdict events seen, lost and suppressed, taken at each scrape.
#[derive(Debug)]
struct EventMetrics(crate::events::Shared);

impl Collector for EventMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (seen, lost, suppressed) = {
            let h = crate::events::lock(&self.0);
            (h.seen.clone(), h.lost, h.suppressed)
        };
        let mut family = encoder.encode_descriptor(
            "netpol_events",
            "Verdict events the agent received from the datapath, by verdict",
            None,
            MetricType::Counter,
        )?;
        for verdict in ["drop", "allow", "audit"] {
            let n = seen.get(verdict).copied().unwrap_or(0);
            ConstCounter::new(n).encode(family.encode_family(&[("verdict", verdict)])?)?;
        }
        counter(
            &mut encoder,
            "netpol_events_lost",
            "Verdict events the datapath could not report (ring buffer full)",
            lost,
        )?;
        counter(
            &mut encoder,
            "netpol_events_suppressed",
            "Verdict events left out by the per-pod budget (--events-rate)",
            suppressed,
        )
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Collector for StatusMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = match self.0.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        };
        let mut packets = encoder.encode_descriptor(
            "netpol_packets",
            "Packets seen by netpol per local pod and verdict reason",
            None,
            MetricType::Counter,
        )?;
        for ep in &s.endpoints {
            let (ns, pod) = ep.pod.split_once('/').unwrap_or(("", &ep.pod));
            for (why, n) in &ep.packets {
                let labels = [("namespace", ns), ("pod", pod), ("reason", why.as_str())];
                ConstCounter::new(*n).encode(packets.encode_family(&labels)?)?;
            }
        }
        let mut by_rule = encoder.encode_descriptor(
            "netpol_policy_rule_packets",
            "Packets allowed per NetworkPolicy or ClusterNetworkPolicy rule on this node: connection openings it allowed and the packets of those connections",
            None,
            MetricType::Counter,
        )?;
        for r in &s.rules {
            let rule = format!("{}[{}]", r.direction, r.index);
            let labels = [
                ("namespace", r.namespace.as_str()),
                ("policy", r.policy.as_str()),
                ("kind", r.kind.as_str()),
                ("rule", rule.as_str()),
                ("direction", r.direction.as_str()),
            ];
            ConstCounter::new(r.packets).encode(by_rule.encode_family(&labels)?)?;
        }
        let e = &mut encoder;
        gauge(
            e,
            "netpol_node_hook_attached",
            "1 when to_node is attached to the node's cgroup; 0: a Service whose backend is this node's host network escapes ClusterNetworkPolicy rules about the node",
            i64::from(s.node_hook.starts_with("attached")),
        )?;
        gauge(
            e,
            "netpol_policy_errors",
            "Policy rules that could not be compiled (they allow nothing)",
            count(s.policy_errors.len()),
        )?;
        gauge(
            e,
            "netpol_cluster_network_policies",
            "ClusterNetworkPolicies the agent enforces (with their errors failing closed)",
            count(s.cluster_policies.len()),
        )?;
        gauge(
            e,
            "netpol_cluster_network_policy_errors",
            "Errors found in ClusterNetworkPolicies (what the API server would have refused)",
            count(s.cluster_policies.iter().map(|p| p.errors.len()).sum()),
        )?;
        gauge(
            e,
            "netpol_cluster_network_policy_conflicts",
            "Pairs of ClusterNetworkPolicies of one tier and priority whose rules of different actions apply to common pods (the first by name decides)",
            count(
                s.cluster_policies
                    .iter()
                    .flat_map(|p| &p.conflicts)
                    .collect::<std::collections::BTreeSet<_>>()
                    .len(),
            ),
        )?;
        gauge(
            e,
            "netpol_source_error",
            "1 while the policy source fails to load (the last good state is enforced)",
            i64::from(s.source_error.is_some()),
        )?;
        gauge(
            e,
            "netpol_program_error",
            "1 while programming the maps fails (the last good state is enforced)",
            i64::from(s.program_error.is_some()),
        )?;
        gauge(
            e,
            "netpol_map_overflow_pods",
            "Pods kept on their last state because their new rules do not fit in the maps",
            count(s.overflowed_pods.len()),
        )?;
        counter(
            e,
            "netpol_map_overflow",
            "Programmings that hit a full map",
            s.overflow_events,
        )?;
        counter(
            e,
            "netpol_watch_errors",
            "Failed API watches (each is retried)",
            s.watch_errors,
        )?;
        counter(
            e,
            "netpol_generation",
            "Successful programmings since start",
            s.generation,
        )?;
        gauge(
            e,
            "netpol_endpoints",
            "Local pods enforced",
            count(s.endpoints.len()),
        )?;
        gauge(
            e,
            "netpol_rule_sets",
            "Distinct rule sets loaded",
            count(s.rule_sets),
        )?;
        let mut unhooked = e.encode_descriptor(
            "netpol_endpoints_unhooked",
            "Local pods whose veth is not found or not hooked (isolated: policy isolates them, and what reaches them is not judged)",
            None,
            MetricType::Gauge,
        )?;
        for isolated in [true, false] {
            let n = s
                .endpoints
                .iter()
                .filter(|ep| ep.interface.is_none())
                .filter(|ep| (ep.ingress_isolated || ep.egress_isolated) == isolated)
                .count();
            let labels = [("isolated", if isolated { "true" } else { "false" })];
            ConstGauge::new(count(n)).encode(unhooked.encode_family(&labels)?)?;
        }
        for (name, help, values) in [
            (
                "netpol_map_entries",
                "Entries in each BPF map (conntrack maps: as of the last sweep)",
                &s.map_entries,
            ),
            (
                "netpol_map_capacity",
                "Capacity of each BPF map",
                &s.map_capacity,
            ),
        ] {
            let mut family = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (map, n) in values {
                let labels = [("map", map.as_str())];
                let v = i64::try_from(*n).unwrap_or(i64::MAX);
                ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
            }
        }
        gauge(
            e,
            "netpol_interfaces_quarantined",
            "Veths that claim a local pod's address but cannot be matched to it; everything they carry is dropped",
            count(s.quarantined_interfaces.len()),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::status::{Status, endpoint_for_tests as endpoint};

    #[test]
    fn unhooked_pods_are_counted_by_isolation() {
        let s = Status {
            endpoints: vec![
                endpoint("default/a", Some("veth1"), true),
                endpoint("default/b", None, true),
                endpoint("default/c", None, false),
                endpoint("default/d", None, true),
            ],
            ..Default::default()
        };
        let mut s = s;
        s.endpoints[0].packets.insert("drop_egress".into(), 3);
        s.rules.push(crate::status::RuleStatus {
            namespace: "default".into(),
            policy: "web".into(),
            kind: "NetworkPolicy".into(),
            direction: "ingress".into(),
            index: 1,
            packets: 42,
        });
        s.cluster_policies.push(crate::status::ClusterPolicyStatus {
            name: "deny-metadata".into(),
            tier: "Admin".into(),
            priority: 5,
            errors: vec!["a".into(), "b".into()],
            conflicts: Vec::new(),
        });
        let text = Metrics::new(Arc::new(Mutex::new(s)), Default::default())
            .encode()
            .expect("encode");
        assert!(
            text.contains(
                "netpol_packets_total{namespace=\"default\",pod=\"a\",reason=\"drop_egress\"} 3\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("netpol_endpoints_unhooked{isolated=\"true\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "netpol_policy_rule_packets_total{namespace=\"default\",policy=\"web\",kind=\"NetworkPolicy\",rule=\"ingress[1]\",direction=\"ingress\"} 42\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("netpol_endpoints_unhooked{isolated=\"false\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("netpol_cluster_network_policies 1\n"),
            "{text}"
        );
        assert!(
            text.contains("netpol_cluster_network_policy_errors 2\n"),
            "{text}"
        );
    }

    /// The Grafana dashboard in `deploy/` is a dashboard (title, uid, panels with
    /// positions and queries) and asks only for series the agent exposes.
    #[test]
    fn dashboard_queries_only_what_the_agent_exposes() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/grafana/netpol-dashboard.json"
        );
        let text = std::fs::read_to_string(path).expect("the dashboard");
        let d: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
        assert!(
            d["title"].is_string() && d["uid"].is_string(),
            "title and uid"
        );
        assert!(d["schemaVersion"].is_u64(), "schemaVersion");
        let mut status = Status {
            endpoints: vec![endpoint("default/a", None, true)],
            ..Default::default()
        };
        status.endpoints[0].packets.insert("drop_egress".into(), 1);
        status.rules.push(crate::status::RuleStatus::default());
        status.map_entries.insert("CONNTRACK".into(), 1);
        status.map_capacity.insert("CONNTRACK".into(), 2);
        let exposed = Metrics::new(Arc::new(Mutex::new(status)), Default::default())
            .encode()
            .expect("encode");
        let names: std::collections::BTreeSet<&str> = exposed
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split(['{', ' ']).next())
            .collect();
        let panels = d["panels"].as_array().expect("panels");
        assert!(!panels.is_empty());
        for p in panels {
            let title = p["title"].as_str().expect("a panel title");
            assert!(
                p["gridPos"]["w"].is_u64() && p["gridPos"]["h"].is_u64(),
                "{title}"
            );
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{title}: no query");
            for t in targets {
                let expr = t["expr"].as_str().expect("expr");
                let mut rest = expr;
                let mut found = 0;
                while let Some(i) = rest.find("netpol_") {
                    let tail = &rest[i..];
                    let end = tail
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(tail.len());
                    let name = &tail[..end];
                    assert!(
                        names.contains(name),
                        "{title}: {name} is not exposed ({expr})"
                    );
                    found += 1;
                    rest = &tail[end..];
                }
                assert!(found > 0, "{title}: {expr} asks for no netpol series");
            }
        }
    }
}
