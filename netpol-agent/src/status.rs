//! What the agent enforces and what it has seen: one snapshot, rendered as JSON (status
//! file, `/status`), Prometheus text (`/metrics`) and a table (logs, demo).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::routing::get;
use netpol_common::reason;
use serde::{Deserialize, Serialize};
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

/// What `/healthz` judges: the main loop beats (every second when idle), and the link
/// watcher (new pod veths, routes, addresses) is alive.
#[derive(Debug, Default)]
pub struct Health {
    /// CLOCK_MONOTONIC milliseconds of the main loop's last turn; 0 before the first.
    loop_beat_ms: AtomicU64,
    link_events: AtomicBool,
}

/// A main loop silent this long is stuck (a compile of a very large cluster takes
/// seconds, not this).
pub const LOOP_STUCK_AFTER_MS: u64 = 60_000;

impl Health {
    pub fn beat(&self, now_ms: u64) {
        self.loop_beat_ms.store(now_ms, Ordering::Relaxed);
    }

    pub fn set_link_events(&self, alive: bool) {
        self.link_events.store(alive, Ordering::Relaxed);
    }

    /// `Err(why)` when the agent is not healthy at `now_ms`.
    pub fn check(&self, now_ms: u64) -> Result<(), String> {
        let beat = self.loop_beat_ms.load(Ordering::Relaxed);
        if beat == 0 {
            return Err("the main loop has not started".into());
        }
        let silent = now_ms.saturating_sub(beat);
        if silent > LOOP_STUCK_AFTER_MS {
            return Err(format!(
                "the main loop has been stuck for {} s",
                silent / 1000
            ));
        }
        if !self.link_events.load(Ordering::Relaxed) {
            return Err("the link watcher is not running: new pod veths are found late".into());
        }
        Ok(())
    }
}

/// CLOCK_MONOTONIC in milliseconds.
pub fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1000 + (ts.tv_nsec as u64) / 1_000_000
}

#[derive(Clone)]
struct Served {
    status: Shared,
    health: Arc<Health>,
}

impl Served {
    fn snapshot(&self) -> Status {
        match self.status.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

type Reply = (StatusCode, [(header::HeaderName, &'static str); 1], String);

fn text(code: StatusCode, body: impl Into<String>) -> Reply {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
}

async fn metrics(State(s): State<Served>) -> Reply {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.snapshot().prometheus(),
    )
}

async fn healthz(State(s): State<Served>) -> Reply {
    match s.health.check(monotonic_ms()) {
        Ok(()) => text(StatusCode::OK, "ok\n"),
        Err(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

async fn readyz(State(s): State<Served>) -> Reply {
    if s.snapshot().ready {
        text(StatusCode::OK, "ready\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "not synced yet\n")
    }
}

async fn status_json(State(s): State<Served>) -> Reply {
    match serde_json::to_string_pretty(&s.snapshot()) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        ),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

/// The agent's HTTP endpoint: `GET` `/metrics` (Prometheus text), `/healthz`, `/readyz`
/// and `/status` (JSON), with axum; other methods get 405, other paths 404.
pub fn router(status: Shared, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status_json))
        .with_state(Served { status, health })
}

/// Serves `router` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, status: Shared, health: Arc<Health>) {
    if let Err(e) = axum::serve(listener, router(status, health)).await {
        tracing::error!(error = %e, "the HTTP endpoint stopped");
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
    fn health_needs_a_beating_loop_and_the_link_watcher() {
        let h = Health::default();
        assert!(h.check(1000).is_err(), "before the loop starts");
        h.beat(1000);
        assert!(h.check(1000).is_err(), "the link watcher is not running");
        h.set_link_events(true);
        assert_eq!(h.check(1000 + LOOP_STUCK_AFTER_MS), Ok(()));
        let stuck = h.check(1001 + LOOP_STUCK_AFTER_MS);
        assert!(stuck.is_err_and(|why| why.contains("stuck")));
        h.beat(2000 + LOOP_STUCK_AFTER_MS);
        h.set_link_events(false);
        assert!(h.check(2000 + LOOP_STUCK_AFTER_MS).is_err());
    }

    /// `GET path` (or `method path`) against the router on a real socket; (status, body).
    async fn ask(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut sock = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        sock.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        sock.read_to_string(&mut out).await.expect("read");
        let code = out
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
        (code, body)
    }

    #[tokio::test]
    async fn http_endpoint_answers_as_its_state_says() {
        let status: Shared = Arc::new(Mutex::new(Status {
            endpoints: vec![endpoint("default/a", Some("veth1"), true)],
            ..Default::default()
        }));
        let health = Arc::new(Health::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(serve(listener, status.clone(), health.clone()));

        let (code, body) = ask(addr, "GET", "/healthz").await;
        assert_eq!(code, 503, "{body}");
        health.beat(monotonic_ms());
        health.set_link_events(true);
        assert_eq!(ask(addr, "GET", "/healthz").await, (200, "ok\n".into()));

        assert_eq!(ask(addr, "GET", "/readyz").await.0, 503);
        status.lock().expect("lock").ready = true;
        assert_eq!(ask(addr, "GET", "/readyz").await.0, 200);

        let (code, body) = ask(addr, "GET", "/status").await;
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_str(&body).expect("status is JSON");
        assert_eq!(v["endpoints"][0]["pod"], "default/a");

        assert_eq!(ask(addr, "POST", "/metrics").await.0, 405);
        assert_eq!(ask(addr, "GET", "/nothing").await.0, 404);

        // /metrics as Prometheus reads it.
        let (code, body) = ask(addr, "GET", "/metrics").await;
        assert_eq!(code, 200);
        let lines = body.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
        assert!(
            scrape
                .samples
                .iter()
                .any(|s| s.metric == "netpol_endpoints_unhooked"),
            "{body}"
        );
        server.abort();
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
