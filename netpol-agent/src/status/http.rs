//! The agent's HTTP endpoint (axum): `/metrics`, `/healthz`, `/readyz`, `/status`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::routing::get;
use tokio::net::TcpListener;

use super::{Metrics, Shared, Status};

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
    crate::datapath::monotonic_ns() / 1_000_000
}

#[derive(Clone)]
struct Served {
    status: Shared,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    events: crate::events::Shared,
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

async fn metrics_text(State(s): State<Served>) -> Reply {
    match s.metrics.encode() {
        Ok(body) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
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

/// `since` and `limit` of `/events?since=SEQ&limit=N` (numbers only, so no decoding).
fn events_query(query: Option<&str>) -> Result<(u64, usize), String> {
    let (mut since, mut limit) = (0, 1000);
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let bad = |_| format!("{key}={value}: not a number");
        match key {
            "since" => since = value.parse().map_err(bad)?,
            "limit" => limit = value.parse::<usize>().map_err(bad)?.min(10_000),
            _ => return Err(format!("unknown parameter {key}")),
        }
    }
    Ok((since, limit))
}

/// `/events?since=SEQ&limit=N`: verdict events after `since` (JSON, `events::Page`).
async fn events_json(
    State(s): State<Served>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Reply {
    let (since, limit) = match events_query(query.as_deref()) {
        Ok(q) => q,
        Err(why) => return text(StatusCode::BAD_REQUEST, format!("{why}\n")),
    };
    let page = crate::events::lock(&s.events).page(since, limit);
    match serde_json::to_string(&page) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        ),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
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

/// The agent's HTTP endpoint: `GET` `/metrics` (Prometheus text), `/healthz`, `/readyz`,
/// `/status` and `/events` (JSON), with axum; other methods get 405, other paths 404.
pub fn router(
    status: Shared,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    events: crate::events::Shared,
) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status_json))
        .route("/events", get(events_json))
        .with_state(Served {
            status,
            health,
            metrics,
            events,
        })
}

/// Serves `router` on `listener` until the task is dropped.
pub async fn serve(
    listener: TcpListener,
    status: Shared,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    events: crate::events::Shared,
) {
    if let Err(e) = axum::serve(listener, router(status, health, metrics, events)).await {
        tracing::error!(error = %e, "the HTTP endpoint stopped");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::status::endpoint_for_tests as endpoint;

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
            rules: vec![crate::status::RuleStatus {
                namespace: "default".into(),
                policy: "web".into(),
                kind: "NetworkPolicy".into(),
                direction: "ingress".into(),
                index: 0,
                packets: 7,
            }],
            ..Default::default()
        }));
        let health = Arc::new(Health::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let events = Arc::new(Mutex::new(crate::events::History::new("n1")));
        let metrics = Arc::new(Metrics::new(status.clone(), events.clone()));
        metrics.compile_seconds.observe(0.003);
        let server = tokio::spawn(serve(
            listener,
            status.clone(),
            health.clone(),
            metrics,
            events.clone(),
        ));

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

        let drop = netpol_common::VerdictEvent {
            reason: netpol_common::reason::DROP_INGRESS as u8,
            hook: netpol_common::events::AT_TO_POD,
            ..Default::default()
        };
        crate::events::lock(&events).push(&drop, 1);
        crate::events::lock(&events).push(&drop, 2);
        let (code, body) = ask(addr, "GET", "/events?since=1").await;
        assert_eq!(code, 200, "{body}");
        let page: crate::events::Page = serde_json::from_str(&body).expect("events JSON");
        assert_eq!(page.events.len(), 1, "only what came after 1");
        assert_eq!(
            (page.next, page.events[0].reason.as_str()),
            (2, "drop_ingress")
        );
        assert_eq!(ask(addr, "GET", "/events?since=x").await.0, 400);

        assert_eq!(ask(addr, "POST", "/metrics").await.0, 405);
        assert_eq!(ask(addr, "GET", "/nothing").await.0, 404);

        // /metrics as Prometheus reads it.
        let (code, body) = ask(addr, "GET", "/metrics").await;
        assert_eq!(code, 200);
        let lines = body.lines().map(|l| Ok(l.to_string()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
        for metric in [
            "netpol_endpoints_unhooked",
            "netpol_generation_total",
            "netpol_compile_seconds_count",
            "netpol_apply_seconds_count",
            "netpol_events_total",
            "netpol_events_lost_total",
            "netpol_propagation_seconds_count",
            "netpol_attach_failures_total",
            "netpol_policy_rule_packets_total",
        ] {
            assert!(
                scrape.samples.iter().any(|s| s.metric == metric),
                "{metric} in {body}"
            );
        }
        server.abort();
    }
}
