//! `netpol-agent status`: the running agent's `/status`, fetched over its HTTP endpoint
//! (hyper's client) and summarised for an operator.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use super::Status;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// `GET /status` from the agent at `addr` (the body, JSON).
pub async fn fetch(addr: SocketAddr) -> Result<String> {
    get(addr, "/status").await
}

/// `GET path` from the agent at `addr`: the body of a successful answer.
pub async fn get(addr: SocketAddr, path: &str) -> Result<String> {
    let get = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to the agent at {addr} (its --metrics-addr)"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake with the agent")?;
        tokio::spawn(conn);
        let request = hyper::Request::get(path)
            .header(hyper::header::HOST, addr.to_string())
            .body(http_body_util::Empty::<hyper::body::Bytes>::new())
            .context("building the request")?;
        let response = sender
            .send_request(request)
            .await
            .context("asking the agent")?;
        let code = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .context("reading the agent's answer")?
            .to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        if !code.is_success() {
            bail!("the agent answered {code}: {body}");
        }
        Ok(body)
    };
    tokio::time::timeout(Duration::from_secs(10), get)
        .await
        .with_context(|| format!("no answer from the agent at {addr} in 10 s"))?
}

/// The status as an operator reads it: enforcement first, then what is wrong.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let isolated = s
        .endpoints
        .iter()
        .filter(|e| e.ingress_isolated || e.egress_isolated)
        .count();
    let unhooked: Vec<&str> = s
        .endpoints
        .iter()
        .filter(|e| e.interface.is_none())
        .map(|e| e.pod.as_str())
        .collect();
    let _ = writeln!(
        out,
        "node {}: {}, attach mode {}, programmed {} times",
        s.node,
        if s.ready { "ready" } else { "not synced yet" },
        s.attach_mode,
        s.generation
    );
    let _ = writeln!(
        out,
        "pods enforced: {} ({isolated} isolated by policy), rule sets: {}, uplinks: {}",
        s.endpoints.len(),
        s.rule_sets,
        if s.uplinks.is_empty() {
            "none".to_string()
        } else {
            s.uplinks.join(", ")
        }
    );
    if !s.node_hook.starts_with("attached") {
        let _ = writeln!(
            out,
            "node hook {}: Services whose backend is this node's host network escape ClusterNetworkPolicy rules about the node",
            s.node_hook
        );
    }
    if !s.unserved_kinds.is_empty() {
        let _ = writeln!(
            out,
            "not served by the API server (CRD not installed): {}",
            s.unserved_kinds.join(", ")
        );
    }
    let mut problems = Vec::new();
    if let Some(e) = &s.source_error {
        problems.push(format!("source: {e} (the last good state is enforced)"));
    }
    if let Some(e) = &s.program_error {
        problems.push(format!(
            "programming: {e} (the last good state is enforced)"
        ));
    }
    if let Some(e) = &s.cni_install_error {
        problems.push(format!("netpol-cni: {e}"));
    }
    for e in &s.policy_errors {
        problems.push(format!("policy: {e}"));
    }
    if !s.overflowed_pods.is_empty() {
        problems.push(format!(
            "maps full, on their last rules: {}",
            s.overflowed_pods.join(", ")
        ));
    }
    if !unhooked.is_empty() {
        problems.push(format!("no veth hooked: {}", unhooked.join(", ")));
    }
    for (iface, pods) in &s.quarantined_interfaces {
        problems.push(format!(
            "quarantined veth {iface} (claims {}): it carries nothing",
            pods.join(", ")
        ));
    }
    for o in &s.rejected_objects {
        problems.push(format!("not taken in: {o}"));
    }
    for p in &s.cluster_policies {
        for e in &p.errors {
            problems.push(format!("ClusterNetworkPolicy {}: {e}", p.name));
        }
    }
    // Each conflict is listed under both policies; shown once.
    let conflicts: std::collections::BTreeSet<&String> = s
        .cluster_policies
        .iter()
        .flat_map(|p| &p.conflicts)
        .collect();
    for c in conflicts {
        problems.push(format!("ClusterNetworkPolicy conflict: {c}"));
    }
    if problems.is_empty() {
        out.push_str("problems: none\n");
    } else {
        let _ = writeln!(out, "problems: {}", problems.len());
        for p in problems {
            let _ = writeln!(out, "  - {p}");
        }
    }
    if !s.map_capacity.is_empty() {
        out.push_str("maps:\n");
        for (map, cap) in &s.map_capacity {
            let n = s.map_entries.get(map).copied().unwrap_or(0);
            let pct = if *cap == 0 {
                0.0
            } else {
                100.0 * n as f64 / *cap as f64
            };
            let _ = writeln!(out, "  {map:<20} {n:>9} / {cap:<9} {pct:>5.1}%");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::status::{
        ClusterPolicyStatus, Health, Metrics, endpoint_for_tests as endpoint, serve,
    };

    #[tokio::test]
    async fn status_is_fetched_from_the_agent_and_summarised() {
        let mut s = Status {
            node: "n1".into(),
            ready: true,
            endpoints: vec![
                endpoint("default/a", Some("veth1"), true),
                endpoint("default/b", None, true),
            ],
            policy_errors: vec!["default/p ingress[0]: bad CIDR".into()],
            cluster_policies: vec![ClusterPolicyStatus {
                name: "no-metadata".into(),
                tier: "Admin".into(),
                priority: 10,
                errors: vec!["egress[0]: action \"Drop\" is not Accept, Deny or Pass".into()],
                conflicts: vec!["no-metadata and other-deny (Admin tier, both priority 10) select 1 pod(s) in common".into()],
            }],
            ..Default::default()
        };
        s.map_entries.insert("CONNTRACK".into(), 5);
        s.map_capacity.insert("CONNTRACK".into(), 20);
        let status = Arc::new(Mutex::new(s));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let events = Arc::new(Mutex::new(crate::events::History::new("n1")));
        let metrics = Arc::new(Metrics::new(status.clone(), events.clone()));
        let server = tokio::spawn(serve(
            listener,
            status,
            Arc::new(Health::default()),
            metrics,
            events,
        ));
        let body = fetch(addr).await.expect("fetch");
        let got: Status = serde_json::from_str(&body).expect("the agent's status");
        let text = render(&got);
        for want in [
            "node n1: ready",
            "pods enforced: 2 (2 isolated by policy)",
            "problems: 4",
            "policy: default/p ingress[0]: bad CIDR",
            "ClusterNetworkPolicy no-metadata: egress[0]: action",
            "ClusterNetworkPolicy conflict: no-metadata and other-deny",
            "no veth hooked: default/b",
            "CONNTRACK",
            "25.0%",
        ] {
            assert!(text.contains(want), "{want:?} in:\n{text}");
        }
        server.abort();
        // Nobody listening: a clear error, not a hang.
        let err = fetch(addr).await.expect_err("no agent");
        assert!(
            format!("{err:#}").contains("connecting to the agent"),
            "{err:#}"
        );
    }
}
