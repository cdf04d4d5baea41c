//! `netpol-agent monitor`: follows the running agent's `/events`, filtered, one line (or
//! one JSON object) per event.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{Event, Page};

/// Events asked for at a time.
const PAGE: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Verdict {
    Drop,
    Allow,
    /// What policies in audit mode would have dropped.
    Audit,
}

/// Which events to show.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// `ns/name`.
    pub pod: Option<String>,
    pub verdict: Option<Verdict>,
}

impl Filter {
    pub fn keeps(&self, e: &Event) -> bool {
        let verdict = match self.verdict {
            None => true,
            Some(Verdict::Drop) => e.verdict == "drop",
            Some(Verdict::Allow) => e.verdict == "allow",
            Some(Verdict::Audit) => e.verdict == "audit",
        };
        let pod = self
            .pod
            .as_deref()
            .is_none_or(|want| e.pod.as_deref() == Some(want));
        verdict && pod
    }
}

/// Prints the agent's events through `print` (one line each): what it has, then, unless
/// `once`, what comes, until an error. Losses are reported as they grow.
pub async fn follow(
    addr: SocketAddr,
    filter: &Filter,
    json: bool,
    once: bool,
    mut print: impl FnMut(&str),
) -> Result<()> {
    let (mut since, mut lost, mut suppressed) = (0, 0, 0);
    loop {
        let body = crate::status::get(addr, &format!("/events?since={since}&limit={PAGE}")).await?;
        let page: Page =
            serde_json::from_str(&body).context("the agent's answer is not an events page")?;
        for e in page.events.iter().filter(|e| filter.keeps(e)) {
            if json {
                print(&serde_json::to_string(e).context("encoding an event")?);
            } else {
                print(&e.line());
            }
        }
        if page.lost > lost || page.suppressed > suppressed {
            (lost, suppressed) = (page.lost, page.suppressed);
            tracing::warn!(
                lost,
                suppressed,
                "events the datapath did not report so far (ring buffer full / per-pod budget)"
            );
        }
        since = page.next;
        if page.events.len() < PAGE {
            if once {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use netpol_common::{Addr, VerdictEvent, events as ev, reason};

    use super::*;
    use crate::events::{History, lock};
    use crate::status::{Health, Metrics, Status, serve};

    #[tokio::test]
    async fn monitor_prints_the_filtered_events_of_a_running_agent() {
        let history = Arc::new(Mutex::new(History::new("n1")));
        lock(&history).set_pods(
            [
                (1, crate::events::KnownPod::named("default/a")),
                (2, crate::events::KnownPod::named("default/b")),
            ]
            .into(),
        );
        for (id, why) in [
            (1, reason::DROP_EGRESS),
            (2, reason::DROP_INGRESS),
            (1, reason::ALLOW_POLICY),
        ] {
            let raw = VerdictEvent {
                endpoint_id: id,
                reason: why as u8,
                hook: ev::AT_FROM_POD,
                src: Addr::from_v4([10, 1, 0, 2]),
                dst: Addr::from_v4([10, 2, 0, 5]),
                proto: 6,
                dport: 443,
                sport: 40000,
                flags: ev::HAS_TUPLE,
                ..Default::default()
            };
            lock(&history).push(&raw, 0);
        }
        let status = Arc::new(Mutex::new(Status::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let metrics = Arc::new(Metrics::new(status.clone(), history.clone()));
        let server = tokio::spawn(serve(
            listener,
            status,
            Arc::new(Health::default()),
            metrics,
            history,
        ));
        let filter = Filter {
            pod: Some("default/a".into()),
            verdict: Some(Verdict::Drop),
        };
        let mut lines = Vec::new();
        follow(addr, &filter, false, true, |l| lines.push(l.to_string()))
            .await
            .expect("follow");
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0]
                .contains("DROP default/a egress 10.1.0.2:40000 -> 10.2.0.5:443 TCP drop_egress"),
            "{lines:?}"
        );
        let mut json = Vec::new();
        follow(addr, &Filter::default(), true, true, |l| {
            json.push(l.to_string())
        })
        .await
        .expect("follow");
        assert_eq!(json.len(), 3);
        let e: Event = serde_json::from_str(&json[1]).expect("one event per line");
        assert_eq!(
            (e.pod.as_deref(), e.reason.as_str()),
            (Some("default/b"), "drop_ingress")
        );
        server.abort();
    }
}
