//! What the agent enforces and what it has seen: one snapshot, rendered as JSON (status
//! file, `/status`), Prometheus text (`/metrics`) and a table (logs, demo).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use netpol_common::reason;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EndpointStatus {
    pub pod: String,
    pub id: u32,
    pub ips: Vec<String>,
    pub interface: Option<String>,
    pub ingress_isolated: bool,
    pub egress_isolated: bool,
    /// Packets per reason (`netpol_common::reason::NAMES`), summed over CPUs.
    pub packets: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    pub attach_mode: String,
    /// Digest of the source input that is enforced now (empty before the first sync).
    pub applied_digest: String,
    /// With the API server as source: the newest resourceVersion of each kind that the
    /// enforced state includes.
    pub applied_versions: BTreeMap<String, u64>,
    /// Objects the source could not take in (they are not part of the state).
    pub rejected_objects: Vec<String>,
    /// Watch failures since start (each was retried).
    pub watch_errors: u64,
    /// Incremented on every successful programming.
    pub generation: u64,
    pub ready: bool,
    /// Why the last load of the source failed (the previous state stays enforced).
    pub source_error: Option<String>,
    /// Why the last programming failed (the previous state stays enforced).
    pub program_error: Option<String>,
    pub policy_errors: Vec<String>,
    /// Pods whose new rules did not fit in the maps: they keep their last complete state
    /// (a new pod allows nothing in its isolated directions) until room returns.
    pub overflowed_pods: Vec<String>,
    pub overflow_error: Option<String>,
    /// Programmings that hit a full map since start.
    pub overflow_events: u64,
    pub rule_sets: usize,
    pub uplinks: Vec<String>,
    /// Veths that claim a local pod's address but cannot be matched to it (interface ->
    /// the pods they claim): netpol drops everything they carry.
    pub quarantined_interfaces: BTreeMap<String, Vec<String>>,
    /// Why netpol-cni could not be installed or chained (--cni-conf-dir): new pods are
    /// then enforced only once the API and the kernel show them.
    pub cni_install_error: Option<String>,
    pub endpoints: Vec<EndpointStatus>,
}

pub type Shared = Arc<Mutex<Status>>;

impl Status {
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP netpol_packets_total Packets seen by netpol per local pod and verdict reason.\n# TYPE netpol_packets_total counter"
        );
        for ep in &self.endpoints {
            let (ns, pod) = ep.pod.split_once('/').unwrap_or(("", &ep.pod));
            for (why, n) in &ep.packets {
                let _ = writeln!(
                    out,
                    "netpol_packets_total{{namespace=\"{ns}\",pod=\"{pod}\",reason=\"{why}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP netpol_policy_errors Policy rules that could not be compiled (they allow nothing).\n# TYPE netpol_policy_errors gauge\nnetpol_policy_errors {}",
            self.policy_errors.len()
        );
        let _ = writeln!(
            out,
            "# HELP netpol_source_error 1 while the policy source fails to load (the last good state is enforced).\n# TYPE netpol_source_error gauge\nnetpol_source_error {}",
            u8::from(self.source_error.is_some())
        );
        let _ = writeln!(
            out,
            "# HELP netpol_program_error 1 while programming the maps fails (the last good state is enforced).\n# TYPE netpol_program_error gauge\nnetpol_program_error {}",
            u8::from(self.program_error.is_some())
        );
        let _ = writeln!(
            out,
            "# HELP netpol_map_overflow_pods Pods kept on their last state because their new rules do not fit in the maps.\n# TYPE netpol_map_overflow_pods gauge\nnetpol_map_overflow_pods {}\n# HELP netpol_map_overflow_total Programmings that hit a full map.\n# TYPE netpol_map_overflow_total counter\nnetpol_map_overflow_total {}",
            self.overflowed_pods.len(),
            self.overflow_events
        );
        let _ = writeln!(
            out,
            "# HELP netpol_watch_errors_total Failed API watches (each is retried).\n# TYPE netpol_watch_errors_total counter\nnetpol_watch_errors_total {}",
            self.watch_errors
        );
        let _ = writeln!(
            out,
            "# HELP netpol_generation Successful programmings since start.\n# TYPE netpol_generation counter\nnetpol_generation {}",
            self.generation
        );
        let _ = writeln!(
            out,
            "# HELP netpol_endpoints Local pods enforced.\n# TYPE netpol_endpoints gauge\nnetpol_endpoints {}\n# HELP netpol_rule_sets Distinct rule sets loaded.\n# TYPE netpol_rule_sets gauge\nnetpol_rule_sets {}",
            self.endpoints.len(),
            self.rule_sets
        );
        let unhooked = |isolated: bool| {
            self.endpoints
                .iter()
                .filter(|e| e.interface.is_none())
                .filter(|e| (e.ingress_isolated || e.egress_isolated) == isolated)
                .count()
        };
        let _ = writeln!(
            out,
            "# HELP netpol_endpoints_unhooked Local pods whose veth is not found or not hooked (isolated: policy isolates them, and what reaches them is not judged).\n# TYPE netpol_endpoints_unhooked gauge\nnetpol_endpoints_unhooked{{isolated=\"true\"}} {}\nnetpol_endpoints_unhooked{{isolated=\"false\"}} {}",
            unhooked(true),
            unhooked(false)
        );
        let _ = writeln!(
            out,
            "# HELP netpol_interfaces_quarantined Veths that claim a local pod's address but cannot be matched to it; everything they carry is dropped.\n# TYPE netpol_interfaces_quarantined gauge\nnetpol_interfaces_quarantined {}",
            self.quarantined_interfaces.len()
        );
        out
    }

    /// Drop counters as a table; pods with no packets are left out.
    pub fn counters_table(&self) -> String {
        let shown: Vec<&str> = reason::NAMES.to_vec();
        let mut out = format!("{:<40}", "pod");
        for n in &shown {
            let _ = write!(out, " {:>16}", n);
        }
        out.push('\n');
        for ep in &self.endpoints {
            if ep.packets.values().all(|n| *n == 0) {
                continue;
            }
            let _ = write!(out, "{:<40}", ep.pod);
            for n in &shown {
                let _ = write!(out, " {:>16}", ep.packets.get(*n).copied().unwrap_or(0));
            }
            out.push('\n');
        }
        out
    }
}

/// Serves `/metrics`, `/healthz`, `/readyz` and `/status` (JSON) until the task is dropped.
pub async fn serve(listener: TcpListener, status: Shared) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        let status = status.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n =
                match tokio::time::timeout(std::time::Duration::from_secs(5), sock.read(&mut buf))
                    .await
                {
                    Ok(Ok(n)) => n,
                    _ => return,
                };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let snapshot = match status.lock() {
                Ok(s) => s.clone(),
                Err(p) => p.into_inner().clone(),
            };
            let (code, ctype, body) = match path {
                "/metrics" => ("200 OK", "text/plain; version=0.0.4", snapshot.prometheus()),
                "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
                "/readyz" if snapshot.ready => ("200 OK", "text/plain", "ready\n".to_string()),
                "/readyz" => (
                    "503 Service Unavailable",
                    "text/plain",
                    "not synced yet\n".to_string(),
                ),
                "/status" => (
                    "200 OK",
                    "application/json",
                    serde_json::to_string_pretty(&snapshot).unwrap_or_default(),
                ),
                _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(pod: &str, interface: Option<&str>, isolated: bool) -> EndpointStatus {
        EndpointStatus {
            pod: pod.into(),
            interface: interface.map(str::to_string),
            ingress_isolated: isolated,
            ..Default::default()
        }
    }

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
        let text = s.prometheus();
        assert!(
            text.contains("netpol_endpoints_unhooked{isolated=\"true\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("netpol_endpoints_unhooked{isolated=\"false\"} 1\n"),
            "{text}"
        );
    }
}
