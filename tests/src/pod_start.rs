//! Scenario `pod-start` (root): pods started one after another as a runtime starts them
//! (the CNI conf list, netpol's chained plugin last), each probed the moment its network
//! exists, before anything else could have told the agent about it. Half the pods are in
//! the agent's API view before they start (the usual case: the scheduler's write comes
//! first, the kubelet's address report later); the other half are not, and the agent
//! holds them. Every first packet is judged against the policy: one that passes what the
//! policy denies, or (for a pod the agent knew) is dropped where the policy allows, is a
//! contradiction. An allowed first packet of a pod the agent did not know yet is held, by
//! design, and counted apart.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::json;

use crate::sandbox::{Config, Sandbox};
use crate::scenarios::{ingress_from, model, pod, policy};
use crate::traffic::Outcome;

pub struct Report {
    pub starts: usize,
    pub judged: usize,
    pub contradictions: Vec<String>,
    pub held: usize,
    /// How long the conf list (the pod network's plugin and netpol's) took, per pod.
    pub add_p50_ms: f64,
    pub add_max_ms: f64,
}

pub fn pod_start(cfg: &Config, starts: usize) -> Result<Report> {
    if cfg.cni.is_none() {
        bail!("pod-start needs a CNI plugin (--cni ptp or --cni bridge)");
    }
    let m = model(vec![
        pod("client", "client", &[]),
        pod("outsider", "outsider", &[]),
        pod("server", "server", &[("http", 80)]),
        pod("other", "other", &[("http", 80)]),
    ]);
    let mut sb = Sandbox::start(&m, cfg)?;
    let locked_out = json!({"podSelector": {"matchLabels": {"app": "locked"}},
        "policyTypes": ["Egress"],
        "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "server"}}}],
                    "ports": [{"port": 80, "protocol": "TCP"}]}]});
    sb.apply(
        &[
            policy("web-in", ingress_from("web", Some("client"))),
            policy("locked-out", locked_out),
        ],
        &Default::default(),
        &Default::default(),
    )?;
    let mut report = Report {
        starts,
        judged: 0,
        contradictions: Vec::new(),
        held: 0,
        add_p50_ms: 0.0,
        add_max_ms: 0.0,
    };
    let mut add_ms = Vec::with_capacity(starts);
    for i in 0..starts {
        let web = i % 2 == 0;
        let known = i % 4 < 2;
        let node = (i / 4) % 2;
        let host = u8::try_from(100 + (i / 8) % 100)?;
        let def = pod(
            &format!("start-{i}"),
            if web { "web" } else { "locked" },
            &[],
        );
        let key = format!("default/{}", def.name);
        if known {
            let rv = sb.announce_pod(&def, node)?;
            wait_applied(&sb, node, rv)?;
        }
        let started = Instant::now();
        sb.start_pod(&def, node, host)?;
        add_ms.push(started.elapsed().as_secs_f64() * 1e3);
        // The first packets, at once.
        let checks: [(&str, &str, u16, bool); 2] = if web {
            [
                ("default/outsider", key.as_str(), 8080, false),
                ("default/client", key.as_str(), 8080, true),
            ]
        } else {
            [
                (key.as_str(), "default/server", 80, true),
                (key.as_str(), "default/other", 80, false),
            ]
        };
        for (from, to, port, allowed) in checks {
            let delivered = first_packet_delivered(&sb, from, to, port)?;
            report.judged += 1;
            let what = format!(
                "{from} -> {to}:{port} ({}, {})",
                if allowed { "allowed" } else { "denied" },
                if known {
                    "known to the API view"
                } else {
                    "not known yet"
                }
            );
            match (delivered, allowed) {
                (true, false) => report.contradictions.push(format!("{what}: passed")),
                (false, true) if known => report.contradictions.push(format!("{what}: dropped")),
                (false, true) => report.held += 1,
                _ => {}
            }
        }
        sb.report_pod(&def)?;
        sb.remove_pod(&key)?;
    }
    add_ms.sort_by(f64::total_cmp);
    report.add_p50_ms = crate::scenarios::percentile(&add_ms, 0.5);
    report.add_max_ms = add_ms.last().copied().unwrap_or(0.0);
    Ok(report)
}

/// Waits until node `node`'s agent has taken in the API's state at `rv`.
fn wait_applied(sb: &Sandbox, node: usize, rv: u64) -> Result<()> {
    let since = Instant::now();
    while since.elapsed() < Duration::from_secs(10) {
        let seen = sb
            .status_of(node)
            .and_then(|s| s.applied_versions.get("Pod").copied())
            .unwrap_or(0);
        if seen >= rv {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    bail!("node {node}'s agent did not take in resourceVersion {rv} within 10 s")
}

/// One TCP SYN: delivered if anything answered (a connection, or a reset from a pod
/// that listens on nothing); a silent drop is not.
fn first_packet_delivered(sb: &Sandbox, from: &str, to: &str, port: u16) -> Result<bool> {
    let addr = sb.target(&format!("pod:{to}"))?.to_string();
    let out = sb.probe_in(
        from,
        &[
            "connect",
            "--addr",
            &addr,
            "--port",
            &port.to_string(),
            "--timeout-ms",
            "700",
        ],
    )?;
    let line = String::from_utf8_lossy(&out.stdout);
    Ok(matches!(
        Outcome::parse(line.lines().next().unwrap_or("")),
        Outcome::Ok(_) | Outcome::Refused(_)
    ))
}
