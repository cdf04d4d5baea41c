//! Failure and performance scenarios on the sandbox (root): agent restarts under traffic,
//! API watch faults during policy changes, policy propagation latency, pod churn, and a
//! flood of new flows against other pods' established connections.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::apiserver::Kind;
use crate::cases::{Labels, Model, PodDef, PortDef};
use crate::sandbox::{Config, Sandbox};

pub(crate) fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub(crate) fn pod(name: &str, app: &str, ports: &[(&str, u16)]) -> PodDef {
    PodDef {
        ns: "default".into(),
        name: name.into(),
        labels: labels(&[("app", app)]),
        ports: ports
            .iter()
            .map(|(n, p)| PortDef {
                name: Some(n.to_string()),
                port: *p,
                protocol: "TCP".into(),
            })
            .collect(),
        node: None,
        host_network: false,
    }
}

/// Pods alternate between the two nodes in this order.
pub(crate) fn model(pods: Vec<PodDef>) -> Model {
    Model {
        namespaces: BTreeMap::from([(
            "default".to_string(),
            labels(&[("kubernetes.io/metadata.name", "default")]),
        )]),
        pods,
        services: Vec::new(),
        external: Vec::new(),
        nodes: None,
        external_path_mtu: None,
        node_labels: BTreeMap::new(),
    }
}

pub(crate) fn policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

pub(crate) fn ingress_from(app_selected: &str, from_app: Option<&str>) -> Value {
    match from_app {
        Some(app) => json!({"podSelector": {"matchLabels": {"app": app_selected}},
                            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": app}}}]}]}),
        None => json!({"podSelector": {"matchLabels": {"app": app_selected}}, "ingress": []}),
    }
}

/// One TCP connection attempt from a pod; true if it got an answer.
fn connects(sb: &Sandbox, from: &str, to: &str, port: u16, timeout_ms: u64) -> Result<bool> {
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
            &timeout_ms.to_string(),
        ],
    )?;
    Ok(String::from_utf8_lossy(&out.stdout).starts_with("ok "))
}

/// Kills both agents (SIGKILL) and starts them again while a long TCP connection and new
/// connections run through an allowed path and attempts run through denied paths. Passes
/// when the long connection loses nothing (no TCP retransmission in its namespace), every
/// allowed attempt connects, and no denied attempt does, before, during and after.
pub fn restart(cfg: &Config) -> Result<()> {
    let m = model(vec![
        pod("client", "client", &[]),
        pod("server", "server", &[("http", 80)]),
        pod("intruder", "intruder", &[("http", 80)]),
        // Deleted while the agents are down: its pins are orphans the restart must remove.
        pod("ephemeral", "ephemeral", &[]),
    ]);
    let mut sb = Sandbox::start(&m, cfg)?;
    sb.serve_in(
        "default/server",
        &["serve", "--name", "default/server", "--echo", "7000"],
    )?;
    let policies = vec![
        policy("server-in", ingress_from("server", Some("client"))),
        policy("intruder-in", ingress_from("intruder", None)),
        policy(
            "client-out",
            json!({"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "server"}}}]}]}),
        ),
    ];
    sb.apply(&policies, &BTreeMap::new(), &BTreeMap::new())?;
    std::thread::sleep(Duration::from_millis(300)); // the echo server starts

    let before: Vec<_> = (0..sb.node_count())
        .map(|i| sb.pinned_counts(i))
        .collect::<Result<_>>()?;
    let server = sb.target("pod:default/server")?.to_string();
    let duration = Duration::from_millis(9000);
    let stream = sb.spawn_probe_in(
        "default/client",
        &[
            "stream",
            "--addr",
            &server,
            "--port",
            "7000",
            "--interval-ms",
            "20",
            "--duration-ms",
            &duration.as_millis().to_string(),
        ],
    )?;
    let started = Instant::now();
    let mut allowed_fail = 0;
    let mut denied_pass = 0;
    let mut attempts = 0;
    let mut phase = 0;
    let mut timeline = Vec::new();
    while started.elapsed() < duration {
        attempts += 1;
        if !connects(&sb, "default/client", "default/server", 80, 1000)? {
            allowed_fail += 1;
        }
        if connects(&sb, "default/client", "default/intruder", 80, 200)? {
            denied_pass += 1;
        }
        if connects(&sb, "default/intruder", "default/server", 80, 200)? {
            denied_pass += 1;
        }
        let t = started.elapsed();
        if phase == 0 && t > Duration::from_millis(1500) {
            for i in 0..sb.node_count() {
                sb.kill_agent(i)?;
            }
            timeline.push(format!(
                "{:>6} ms  both agents killed (SIGKILL)",
                t.as_millis()
            ));
            sb.remove_pod("default/ephemeral")?;
            timeline.push(format!(
                "{:>6} ms  pod default/ephemeral deleted while no agent runs",
                started.elapsed().as_millis()
            ));
            phase = 1;
        } else if phase == 1 && t > Duration::from_millis(4000) {
            for i in 0..sb.node_count() {
                sb.restart_agent(i)?;
            }
            timeline.push(format!(
                "{:>6} ms  both agents started again",
                t.as_millis()
            ));
            phase = 2;
        } else if phase == 2 {
            sb.wait_applied(Duration::from_secs(10))?;
            timeline.push(format!(
                "{:>6} ms  both agents reconciled",
                started.elapsed().as_millis()
            ));
            phase = 3;
        }
    }
    let out = stream
        .wait_with_output()
        .context("waiting for the stream")?;
    let summary: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "stream output: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    // The ephemeral pod (index 3: node-2) leaves one endpoint, one interface and two
    // attachments fewer there; node-1 is unchanged.
    let after: Vec<_> = (0..sb.node_count())
        .map(|i| sb.pinned_counts(i))
        .collect::<Result<_>>()?;
    let mut expected = before.clone();
    for key in ["ENDPOINTS", "IFACES"] {
        if let Some(v) = expected[1].get_mut(key) {
            *v -= 1;
        }
    }
    // Every node knew its address's identity (a sandbox pod has one address).
    for node in expected.iter_mut() {
        if let Some(v) = node.get_mut("IDENTITIES") {
            *v -= 1;
        }
    }
    if let Some(v) = expected[1].get_mut("attachments") {
        *v -= 2;
    }
    println!("  pinned entries before {before:?}");
    println!("  pinned entries after  {after:?}");
    let orphans_removed = after == expected;
    let adopted = (0..sb.node_count()).all(|i| {
        sb.agent_log(i)
            .and_then(|p| std::fs::read_to_string(p).ok())
            .is_some_and(|l| l.contains("adopted the pinned state"))
    });
    for l in &timeline {
        println!("  {l}");
    }
    println!("  long connection: {summary}");
    println!(
        "  {attempts} rounds: {allowed_fail} allowed attempts failed, {denied_pass} denied attempts connected; restarted agents adopted the pins: {adopted}"
    );
    let lost = summary["error"] != Value::Null
        || summary["sent"] != summary["echoed"]
        || summary["retransmits"].as_u64() != Some(0);
    println!("  orphans of the deleted pod removed: {orphans_removed}");
    let failed_checks = lost || allowed_fail > 0 || denied_pass > 0;
    if failed_checks || !adopted || !orphans_removed || phase != 3 {
        bail!("restart under traffic failed");
    }
    Ok(())
}

/// Drops and stalls the API watches, compacts history (410 Gone) and fails requests while
/// policies change; the agents must converge to the new policy once the API answers.
pub fn api_faults(cfg: &Config) -> Result<()> {
    let m = model(vec![
        pod("client", "client", &[]),
        pod("server", "server", &[("http", 80)]),
        pod("other", "other", &[]),
    ]);
    let mut sb = Sandbox::start(&m, cfg)?;
    let check = |sb: &Sandbox, client_ok: bool, other_ok: bool, what: &str| -> Result<()> {
        let c = connects(sb, "default/client", "default/server", 80, 500)?;
        let o = connects(sb, "default/other", "default/server", 80, 500)?;
        println!(
            "  {what}: client->server {}, other->server {}",
            verdict(c),
            verdict(o)
        );
        if c != client_ok || o != other_ok {
            bail!(
                "{what}: expected client {}, other {}",
                verdict(client_ok),
                verdict(other_ok)
            );
        }
        Ok(())
    };
    sb.apply(
        &[policy("server-in", ingress_from("server", Some("client")))],
        &BTreeMap::new(),
        &BTreeMap::new(),
    )?;
    check(&sb, true, false, "before faults")?;

    // Watches dropped, history compacted (a resumed watch gets 410 Gone), the API failing
    // and then slow, while the policy flips to the other client.
    sb.api().drop_watches();
    sb.api().compact();
    sb.api().fail_next(10);
    sb.api().stall(Duration::from_millis(1500));
    let t = Instant::now();
    sb.api().apply(
        Kind::NetworkPolicy,
        policy("server-in", ingress_from("server", Some("other"))),
    )?;
    sb.wait_applied(Duration::from_secs(60))?;
    println!(
        "  converged {} ms after the change (watches dropped, 410, 10 x 500, 1.5 s stall)",
        t.elapsed().as_millis()
    );
    check(&sb, false, true, "after the first faults")?;

    // Again, with the policy deleted while the watch is stalled and then dropped.
    sb.api().stall(Duration::from_millis(2000));
    let t = Instant::now();
    sb.api().delete(Kind::NetworkPolicy, "default", "server-in");
    std::thread::sleep(Duration::from_millis(500));
    sb.api().drop_watches();
    sb.wait_applied(Duration::from_secs(60))?;
    println!(
        "  converged {} ms after the delete (stalled, then dropped)",
        t.elapsed().as_millis()
    );
    check(&sb, true, true, "after the second faults")?;

    let errors: u64 = (0..sb.node_count())
        .filter_map(|i| sb.status_of(i))
        .map(|s| s.watch_errors)
        .sum();
    println!("  watch errors the agents saw and retried: {errors}");
    if errors == 0 {
        bail!("the injected faults never reached the agents");
    }
    policy_problem_event(&mut sb)?;
    cluster_policies_reported(&mut sb)
}

/// ClusterNetworkPolicies are read and reported, never silently ignored: without the
/// CRD the agents say the API server does not serve the kind (and enforce the rest);
/// once it is installed, every agent reports a new policy as not enforced.
fn cluster_policies_reported(sb: &mut Sandbox) -> Result<()> {
    const KIND: &str = "ClusterNetworkPolicy";
    let statuses = sb.statuses();
    if statuses.len() != sb.node_count()
        || !statuses
            .iter()
            .all(|s| s.ready && s.unserved_kinds.iter().any(|k| k == KIND))
    {
        bail!(
            "agents do not report the missing {KIND} CRD: {:?}",
            statuses
                .iter()
                .map(|s| (&s.node, s.ready, &s.unserved_kinds))
                .collect::<Vec<_>>()
        );
    }
    println!("  without the CRD: every agent ready, reporting {KIND} as not served");
    sb.api().install_crd();
    let t = Instant::now();
    sb.api().apply(
        Kind::ClusterNetworkPolicy,
        json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": KIND,
            "metadata": {"name": "deny-metadata"},
            "spec": {"tier": "Admin", "priority": 10, "subject": {"namespaces": {}},
                     "egress": [{"action": "Deny", "to": [{"networks": ["169.254.169.254/32"]}]}]}
        }),
    )?;
    // The watchers look for the kind again with backoff (at most 30 s apart).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let statuses = sb.statuses();
        let reported = statuses.len() == sb.node_count()
            && statuses.iter().all(|s| {
                s.unserved_kinds.is_empty()
                    && s.cluster_policies.iter().any(|p| {
                        p.name == "deny-metadata"
                            && p.tier == "Admin"
                            && p.priority == 10
                            && p.errors.is_empty()
                    })
            });
        if reported {
            println!(
                "  {KIND} reported by every agent {} ms after the CRD came",
                t.elapsed().as_millis()
            );
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "{KIND} not reported within 60 s: {:?}",
                statuses
                    .iter()
                    .map(|s| (&s.node, &s.unserved_kinds, &s.cluster_policies))
                    .collect::<Vec<_>>()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A policy with a rule that cannot be compiled gets a Warning Event naming the rule,
/// published by the agent of a node that has a pod it selects.
fn policy_problem_event(sb: &mut Sandbox) -> Result<()> {
    let bad = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "bad-cidr", "namespace": "default"},
        "spec": {"podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]}
    });
    sb.api().apply(Kind::NetworkPolicy, bad)?;
    sb.wait_applied(Duration::from_secs(30))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = sb.api().k8s_events().into_iter().find(|e| {
            e["regarding"]["name"] == "bad-cidr"
                && e["regarding"]["kind"] == "NetworkPolicy"
                && e["type"] == "Warning"
                && e["reason"] == "RuleNotCompiled"
        });
        if let Some(e) = found {
            let note = e["note"].as_str().unwrap_or_default().to_string();
            println!("  Kubernetes Event on default/bad-cidr: {note}");
            if !note.contains("ingress[0]") {
                bail!("the event does not name the rule: {note}");
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "no RuleNotCompiled event for default/bad-cidr in 10 s; events: {:?}",
                sb.api().k8s_events()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A policy staged in audit mode on real pods and packets: what it would block still
/// connects, and an audit event on the server's node names the policy; switched to
/// enforce, it blocks.
pub fn audit(cfg: &Config) -> Result<()> {
    let m = model(vec![
        pod("client", "client", &[]),
        pod("server", "server", &[("http", 80)]),
        pod("other", "other", &[]),
    ]);
    let mut sb = Sandbox::start(&m, cfg)?;
    let in_mode = |mode: &str| {
        let mut p = policy("server-in", ingress_from("server", Some("client")));
        p["metadata"]["annotations"] = json!({"netpol.io/mode": mode});
        p
    };
    let check = |sb: &Sandbox, other_ok: bool, what: &str| -> Result<()> {
        let c = connects(sb, "default/client", "default/server", 80, 1000)?;
        let o = connects(sb, "default/other", "default/server", 80, 1000)?;
        println!(
            "  {what}: client->server {}, other->server {}",
            verdict(c),
            verdict(o)
        );
        if !c || o != other_ok {
            bail!(
                "{what}: expected client allowed, other {}",
                verdict(other_ok)
            );
        }
        Ok(())
    };
    sb.apply(&[in_mode("audit")], &BTreeMap::new(), &BTreeMap::new())?;
    check(&sb, true, "server-in in audit mode")?;
    let other_ip = sb.target("pod:default/other")?.to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let finding = loop {
        let found = (0..sb.node_count())
            .filter_map(|i| sb.events(i).ok())
            .flatten()
            .find(|e| {
                e.verdict == "audit"
                    && e.reason == "audit_ingress"
                    && e.pod.as_deref() == Some("default/server")
                    && e.src.as_deref() == Some(other_ip.as_str())
            });
        if let Some(e) = found {
            break e;
        }
        if Instant::now() > deadline {
            bail!("no audit event for other -> server in 10 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("  audit event: {}", finding.line());
    if finding.policies != ["default/server-in"] {
        bail!(
            "the audit event does not name the policy: {:?}",
            finding.policies
        );
    }
    let drops: u64 = (0..sb.node_count())
        .filter_map(|i| sb.events(i).ok())
        .flatten()
        .filter(|e| e.verdict == "drop")
        .count() as u64;
    if drops != 0 {
        bail!("{drops} drop events while the only policy is in audit mode");
    }
    sb.apply(&[in_mode("enforce")], &BTreeMap::new(), &BTreeMap::new())?;
    check(&sb, false, "server-in enforced")
}

fn verdict(ok: bool) -> &'static str {
    if ok { "allowed" } else { "blocked" }
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Policy propagation latency over `changes` changes: from the API write to the maps
/// being updated (the agent reports the write's resourceVersion as applied) and to the
/// first packet that gets the new verdict. Prints p50 and p99.
pub fn latency(cfg: &Config, changes: usize) -> Result<()> {
    let mut sb = Sandbox::start(&client_server(&[("http", 80)]), cfg)?;
    let p = propagation(&mut sb, changes)?;
    println!("policy propagation over {changes} changes (allow/deny flips of one ingress rule):");
    println!(
        "  API write -> maps updated:        p50 {:6.2} ms   p99 {:6.2} ms   max {:6.2} ms",
        percentile(&p.to_maps, 0.5),
        percentile(&p.to_maps, 0.99),
        percentile(&p.to_maps, 1.0)
    );
    println!(
        "  API write -> first packet enforced: p50 {:6.2} ms   p99 {:6.2} ms   max {:6.2} ms",
        percentile(&p.to_packet, 0.5),
        percentile(&p.to_packet, 0.99),
        percentile(&p.to_packet, 1.0)
    );
    println!(
        "  (maps updated: the agent's status file shows the write's resourceVersion applied; polled every 0.2 ms. First packet: new TCP connections, 5 ms to count as blocked.)"
    );
    Ok(())
}

/// `client` (`app=client`, node-1) and `server` (`app=server`, node-2, serving TCP `ports`).
pub fn client_server(ports: &[(&str, u16)]) -> Model {
    model(vec![
        pod("client", "client", &[]),
        pod("server", "server", ports),
    ])
}

/// Propagation times of one change each, in ms, sorted.
pub struct Propagation {
    /// API write -> the server's agent reports it applied.
    pub to_maps: Vec<f64>,
    /// API write -> the first new connection that gets the new verdict.
    pub to_packet: Vec<f64>,
}

/// Flips policy `server-in` of a [`client_server`] sandbox `changes` times between
/// admitting `app=client` and admitting nothing, and measures each change's propagation.
pub fn propagation(sb: &mut Sandbox, changes: usize) -> Result<Propagation> {
    sb.apply(
        &[policy("server-in", ingress_from("server", None))],
        &BTreeMap::new(),
        &BTreeMap::new(),
    )?;
    let server = sb.target("pod:default/server")?.to_string();
    let (mut to_maps, mut to_packet) = (Vec::new(), Vec::new());
    for i in 0..changes {
        let allow = i.is_multiple_of(2);
        let expect = if allow { "allowed" } else { "blocked" };
        let flip = sb.spawn_probe_in(
            "default/client",
            &[
                "flip",
                "--addr",
                &server,
                "--port",
                "80",
                "--expect",
                expect,
                "--timeout-ms",
                "5",
            ],
        )?;
        std::thread::sleep(Duration::from_millis(40)); // the probe is looping by now
        let from = if allow { Some("client") } else { None };
        let written = SystemTime::now();
        let t0 = Instant::now();
        let rv = sb.api().apply(
            Kind::NetworkPolicy,
            policy("server-in", ingress_from("server", from)),
        )?;
        // The server's node (index 1) holds the ingress rules.
        loop {
            let applied = sb
                .status_of(1)
                .and_then(|s| s.applied_versions.get("NetworkPolicy").copied())
                .unwrap_or(0);
            if applied >= rv {
                break;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                bail!("change {i} not applied within 10 s");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        to_maps.push(t0.elapsed().as_secs_f64() * 1000.0);
        let out = flip.wait_with_output()?;
        let ns: u128 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .with_context(|| format!("change {i}: {}", String::from_utf8_lossy(&out.stderr)))?;
        let written_ns = written.duration_since(UNIX_EPOCH)?.as_nanos();
        to_packet.push(ns.saturating_sub(written_ns) as f64 / 1e6);
    }
    for v in [&mut to_maps, &mut to_packet] {
        v.sort_by(f64::total_cmp);
    }
    Ok(Propagation { to_maps, to_packet })
}

/// Pods created and deleted at a steady rate for `seconds` while every live pod probes a
/// server whose policy admits `app=client` only. A probe may contradict the policy only
/// until the server's agent has applied that pod's creation (the propagation time,
/// measured per pod); the steady pod must never be affected; and once the churn stops
/// every pinned map and attachment count is back at its baseline.
pub fn churn(cfg: &Config, seconds: u64) -> Result<()> {
    let m = model(vec![
        pod("steady", "client", &[]),
        pod("server", "server", &[("http", 80)]),
    ]);
    let mut sb = Sandbox::start(&m, cfg)?;
    sb.apply(
        &[policy("server-in", ingress_from("server", Some("client")))],
        &BTreeMap::new(),
        &BTreeMap::new(),
    )?;
    let baseline: Vec<_> = (0..sb.node_count())
        .map(|i| sb.pinned_counts(i))
        .collect::<Result<_>>()?;

    struct Churned {
        key: String,
        allowed: bool,
        created: Instant,
        rv: u64,
        applied: Option<Instant>,
    }
    let mut live: Vec<Churned> = Vec::new();
    let mut done: Vec<Churned> = Vec::new();
    let mut probes = 0u64;
    let mut within_propagation = 0u64;
    let mut violations = Vec::new();
    let started = Instant::now();
    let mut n = 0usize;
    let mut next_create = Instant::now();
    while started.elapsed() < Duration::from_secs(seconds) {
        if Instant::now() >= next_create {
            next_create += Duration::from_secs(1);
            let allowed = n.is_multiple_of(2);
            let node = n % 2;
            let host = 100 + ((n / 2) % 4) as u8;
            let mut def = pod(
                &format!("churn-{n}"),
                if allowed { "client" } else { "other" },
                &[],
            );
            def.labels.insert("churn".into(), "yes".into());
            let key = format!("default/churn-{n}");
            if live.len() >= 4 {
                let old = live.remove(0);
                sb.remove_pod(&old.key)?;
                done.push(old);
            }
            let (rv, created) = sb.add_pod(&def, node, host)?;
            // Propagation, measured closely: the server's node (index 1) enforces the
            // ingress rules that must learn this pod.
            let mut applied = None;
            while created.elapsed() < Duration::from_secs(5) {
                let v = sb
                    .status_of(1)
                    .and_then(|s| s.applied_versions.get("Pod").copied())
                    .unwrap_or(0);
                if v >= rv {
                    applied = Some(Instant::now());
                    break;
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            live.push(Churned {
                key,
                allowed,
                created,
                rv,
                applied,
            });
            n += 1;
        }
        // Propagation: the server's node (index 1) enforces the ingress rules.
        let applied_rv = sb
            .status_of(1)
            .and_then(|s| s.applied_versions.get("Pod").copied())
            .unwrap_or(0);
        for c in live
            .iter_mut()
            .filter(|c| c.applied.is_none() && applied_rv >= c.rv)
        {
            c.applied = Some(Instant::now());
        }
        for c in &live {
            let t = Instant::now();
            let ok = connects(&sb, &c.key, "default/server", 80, 100)?;
            probes += 1;
            if ok != c.allowed {
                // Before the change is applied (with one probe timeout of slack) it is
                // propagation; after, a violation.
                match c.applied {
                    Some(a) if t > a + Duration::from_millis(100) => violations.push(format!(
                        "{} ({}) got {} {} ms after its creation was applied",
                        c.key,
                        if c.allowed { "app=client" } else { "app=other" },
                        verdict(ok),
                        (t - a).as_millis()
                    )),
                    _ => within_propagation += 1,
                }
            }
        }
        probes += 1;
        if !connects(&sb, "default/steady", "default/server", 80, 300)? {
            violations.push(format!(
                "the steady client was blocked at {} ms",
                started.elapsed().as_millis()
            ));
        }
    }
    let created = n;
    for c in live.drain(..) {
        sb.remove_pod(&c.key)?;
        done.push(c);
    }
    sb.wait_applied(Duration::from_secs(20))?;
    let after: Vec<_> = (0..sb.node_count())
        .map(|i| sb.pinned_counts(i))
        .collect::<Result<_>>()?;

    let mut prop: Vec<f64> = done
        .iter()
        .filter_map(|c| c.applied.map(|a| (a - c.created).as_secs_f64() * 1000.0))
        .collect();
    prop.sort_by(f64::total_cmp);
    let never = done.iter().filter(|c| c.applied.is_none()).count();
    println!(
        "  {created} pods created and deleted over {seconds} s (one per second, IPs reused), {probes} probes"
    );
    println!(
        "  propagation of a new pod (API create -> applied on the server's node, polled every 0.5 ms): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} pods never seen applied)",
        percentile(&prop, 0.5),
        percentile(&prop, 0.99),
        percentile(&prop, 1.0),
        never
    );
    println!(
        "  probes contradicting the policy while their pod was propagating: {within_propagation}; after: {}",
        violations.len()
    );
    for (i, (b, a)) in baseline.iter().zip(&after).enumerate() {
        println!("  node-{} pinned entries before {b:?}", i + 1);
        println!("  node-{} pinned entries after  {a:?}", i + 1);
    }
    for v in violations.iter().take(10) {
        println!("  VIOLATION {v}");
    }
    if !violations.is_empty() {
        bail!(
            "{} probes contradicted the policy after it was applied",
            violations.len()
        );
    }
    if baseline != after {
        bail!("map entries or pins leaked");
    }
    Ok(())
}

/// TCP segments retransmitted in a pod's network namespace so far.
fn retransmits_in(sb: &Sandbox, pod: &str) -> Result<u64> {
    let ns = &sb
        .pods
        .get(pod)
        .with_context(|| format!("no pod {pod}"))?
        .netns;
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "cat", "/proc/net/snmp"])
        .output()
        .context("reading /proc/net/snmp")?;
    Ok(crate::flood::snmp_retransmits(&String::from_utf8_lossy(
        &out.stdout,
    )))
}

/// A pod's packet counters on a node, by reason.
fn counters(sb: &Sandbox, node: usize, pod: &str) -> BTreeMap<String, u64> {
    sb.status_of(node)
        .and_then(|s| s.endpoints.into_iter().find(|e| e.pod == pod))
        .map(|e| e.packets)
        .unwrap_or_default()
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>, k: &str) -> u64 {
    after
        .get(k)
        .copied()
        .unwrap_or(0)
        .saturating_sub(before.get(k).copied().unwrap_or(0))
}

/// One pod floods new flows while another pod's established connections must go on.
///
/// The agents run with conntrack maps (replied and unreplied connections) of
/// `conntrack_entries` each. On node-1, `victim` is
/// isolated both ways: it may reach `server` (node-2) on 7000/TCP and 7000/UDP, and
/// nothing may reach it. It keeps one TCP connection and one UDP socket to the server,
/// each busy (a request every 100 ms for 2 s), then idle for 3 s, then one request that
/// the victim sends first after the silence and one the server answers 3 s late (so the
/// first packet after that silence comes from the server, towards a pod that admits
/// nothing in: only a tracked connection lets it through). `attacker`, also on node-1, is
/// isolated for egress with a rule allowing all of 10.244.0.0/16, so every flow it opens
/// is tracked; for `seconds` it sends UDP datagrams to every port of `sink` (node-2, not
/// isolated) from 16 source ports per thread, one thread per CPU, as fast as it can. The victim runs one cycle before the
/// flood (the control), through it, and one cycle after.
///
/// Fails when any of the victim's requests went unanswered for 2 s past its due time, or
/// its TCP connection broke; and, when they all went on, if the flood opened fewer than
/// 10 x `conntrack_entries` flows (it tested nothing).
pub fn flood(cfg: &Config, conntrack_entries: u32, seconds: u64) -> Result<()> {
    use std::io::{BufRead, Read};
    let mut cfg = cfg.clone();
    cfg.agent_args.extend([
        "--conntrack-entries".to_string(),
        conntrack_entries.to_string(),
        "--conntrack-new-entries".to_string(),
        conntrack_entries.to_string(),
    ]);
    let on = |name: &str, node: &str| {
        let mut p = pod(name, name, &[]);
        p.node = Some(node.into());
        p
    };
    let m = model(vec![
        on("victim", "node-1"),
        on("attacker", "node-1"),
        on("server", "node-2"),
        on("sink", "node-2"),
    ]);
    let started = Instant::now();
    let mut sb = Sandbox::start(&m, &cfg)?;
    sb.serve_in(
        "default/server",
        &["serve", "--name", "default/server", "--echo-after", "7000"],
    )?;
    let ports = json!([{"protocol": "TCP", "port": 7000}, {"protocol": "UDP", "port": 7000}]);
    let policies = vec![
        policy(
            "victim",
            json!({"podSelector": {"matchLabels": {"app": "victim"}},
                   "policyTypes": ["Ingress", "Egress"], "ingress": [],
                   "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "server"}}}],
                               "ports": ports}]}),
        ),
        policy(
            "server-in",
            json!({"podSelector": {"matchLabels": {"app": "server"}},
                   "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "victim"}}}],
                                "ports": ports}]}),
        ),
        policy(
            "attacker-out",
            json!({"podSelector": {"matchLabels": {"app": "attacker"}}, "policyTypes": ["Egress"],
                   "egress": [{"to": [{"ipBlock": {"cidr": "10.244.0.0/16"}}]}]}),
        ),
    ];
    sb.apply(&policies, &BTreeMap::new(), &BTreeMap::new())?;
    std::thread::sleep(Duration::from_millis(300)); // the server starts
    let setup = started.elapsed();

    let server = sb.target("pod:default/server")?.to_string();
    let sink = sb.target("pod:default/sink")?.to_string();
    // A cycle: 2 s busy, 3 s idle, one request, one answered 3 s late: about 8 s.
    let cycle = Duration::from_millis(8500);
    let flood_for = Duration::from_secs(seconds);
    let victim_for = cycle + flood_for + cycle;
    use netpol_common::names::{CONNTRACK, CONNTRACK_NEW};
    let (ct_before, size) = sb.conntrack_count(0, CONNTRACK)?;
    let (new_before, new_size) = sb.conntrack_count(0, CONNTRACK_NEW)?;
    let victim_before = counters(&sb, 0, "default/victim");
    let attacker_before = counters(&sb, 0, "default/attacker");
    let server_retx_before = retransmits_in(&sb, "default/server")?;
    let mut victim = sb.spawn_probe_in(
        "default/victim",
        &[
            "victim",
            "--addr",
            &server,
            "--port",
            "7000",
            "--duration-ms",
            &victim_for.as_millis().to_string(),
        ],
    )?;
    let mut victim_out = std::io::BufReader::new(
        victim
            .stdout
            .take()
            .context("the victim's output is not captured")?,
    );
    let mut first = String::new();
    victim_out.read_line(&mut first)?;
    if first.trim() != "ready" {
        let mut err = String::new();
        if let Some(mut e) = victim.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        bail!("the victim could not open its connections: {first} {err}");
    }
    let victim_start = Instant::now();
    std::thread::sleep(cycle);
    let flood_start = victim_start.elapsed();
    let attacker = sb.spawn_probe_in(
        "default/attacker",
        &[
            "flood",
            "--addr",
            &sink,
            "--duration-ms",
            &flood_for.as_millis().to_string(),
        ],
    )?;
    let out = attacker
        .wait_with_output()
        .context("waiting for the attacker")?;
    let flood_end = victim_start.elapsed();
    let flooded: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "attacker output: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let (ct_after, _) = sb.conntrack_count(0, CONNTRACK)?;
    let (new_after, _) = sb.conntrack_count(0, CONNTRACK_NEW)?;
    let mut rest = String::new();
    victim_out.read_to_string(&mut rest)?;
    let status = victim.wait()?;
    let summary: Value = serde_json::from_str(rest.trim()).with_context(|| {
        let mut err = String::new();
        if let Some(mut e) = victim.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        format!("victim output ({status}): {rest} {err}")
    })?;
    std::thread::sleep(Duration::from_millis(1200)); // the agents refresh their counters
    let victim_after = counters(&sb, 0, "default/victim");
    let attacker_after = counters(&sb, 0, "default/attacker");
    let server_retx = retransmits_in(&sb, "default/server")?.saturating_sub(server_retx_before);

    let flows = flooded["distinct_flows"].as_u64().unwrap_or(0);
    println!(
        "  agents: --conntrack-entries {conntrack_entries} --conntrack-new-entries {conntrack_entries} (map sizes {size} and {new_size}); node-1 replied entries before the flood {ct_before}, right after it {ct_after}; unreplied {new_before} and {new_after}"
    );
    println!(
        "  attacker (node-1, egress to 10.244.0.0/16 allowed, so tracked): {} UDP datagrams to ports 1024-65535 of the sink from {} source ports ({} threads) in {} s ({} per second, {} send errors): {} distinct flows = {:.0} x the map size",
        flooded["sent"],
        flooded["source_ports"],
        flooded["threads"],
        flooded["seconds"],
        flooded["per_second"],
        flooded["send_errors"],
        flows,
        flows as f64 / f64::from(size.max(1))
    );
    println!(
        "  attacker's node-1 counters during the run: allow_policy {}, allow_tracked {}, drop_egress {}",
        delta(&attacker_after, &attacker_before, "allow_policy"),
        delta(&attacker_after, &attacker_before, "allow_tracked"),
        delta(&attacker_after, &attacker_before, "drop_egress"),
    );
    println!(
        "  victim (node-1, isolated both ways; egress to the server on 7000/TCP+UDP only): flood from {:.1} s to {:.1} s of its {:.1} s",
        flood_start.as_secs_f64(),
        flood_end.as_secs_f64(),
        victim_for.as_secs_f64()
    );
    println!(
        "  victim's node-1 counters during the run: allow_tracked {}, allow_policy {}, drop_ingress {}, drop_egress {}",
        delta(&victim_after, &victim_before, "allow_tracked"),
        delta(&victim_after, &victim_before, "allow_policy"),
        delta(&victim_after, &victim_before, "drop_ingress"),
        delta(&victim_after, &victim_before, "drop_egress"),
    );
    const PHASES: [&str; 3] = [
        "before the flood (control)",
        "during the flood",
        "after the flood",
    ];
    let phase = |t_ms: u64| {
        let t = Duration::from_millis(t_ms);
        if t < flood_start {
            PHASES[0]
        } else if t < flood_end {
            PHASES[1]
        } else {
            PHASES[2]
        }
    };
    let mut broken = Vec::new();
    for proto in ["tcp", "udp"] {
        let s = &summary[proto];
        let kinds: Vec<String> = ["busy", "after_idle", "delayed"]
            .iter()
            .map(|k| {
                let b = &s["by_kind"][k];
                format!("{k} {}/{} answered", b["answered"], b["sent"])
            })
            .collect();
        let survived = s["error"].is_null() && s["lost"].as_u64() == Some(0);
        println!(
            "  victim {}: {} requests, {} answered, {} lost, {} answered too late; {}; max RTT {} ms{}; error: {}; survived: {}",
            proto.to_uppercase(),
            s["sent"],
            s["answered"],
            s["lost"],
            s["late"],
            kinds.join(", "),
            s["max_rtt_ms"],
            if proto == "tcp" {
                format!(
                    "; retransmitted segments: victim {}, server {server_retx}",
                    s["retransmits"]
                )
            } else {
                String::new()
            },
            if s["error"].is_null() {
                "none".to_string()
            } else {
                s["error"].to_string()
            },
            if survived { "yes" } else { "NO" }
        );
        let requests: Vec<&Value> = s["requests"].as_array().into_iter().flatten().collect();
        let by_phase: Vec<String> = PHASES
            .iter()
            .map(|ph| {
                let of: Vec<_> = requests
                    .iter()
                    .filter(|r| phase(r["t_ms"].as_u64().unwrap_or(0)) == *ph)
                    .collect();
                let ok = of.iter().filter(|r| r["answered"] == true).count();
                format!("{ph}: {ok}/{} answered", of.len())
            })
            .collect();
        println!("    {}", by_phase.join("; "));
        for l in requests.iter().filter(|r| r["answered"] != true) {
            let t = l["t_ms"].as_u64().unwrap_or(0);
            println!(
                "    lost: {} request sent at {:.1} s ({}), no answer within 2 s of its due time",
                l["kind"].as_str().unwrap_or("?"),
                t as f64 / 1000.0,
                phase(t)
            );
        }
        if !survived {
            broken.push(proto.to_uppercase());
        }
    }
    println!(
        "  took {:.1} s ({:.1} s to start the sandbox and apply the policies)",
        started.elapsed().as_secs_f64(),
        setup.as_secs_f64()
    );
    if !broken.is_empty() {
        bail!(
            "the victim's established connections broke under the flood: {}",
            broken.join(", ")
        );
    }
    if flows < 10 * u64::from(size) {
        bail!(
            "the attacker opened only {flows} flows, fewer than 10 x the map size {size}: the flood tested nothing"
        );
    }
    Ok(())
}

/// Uninstall: with a policy that blocks client->server, the agents are killed (the pins
/// keep enforcing: still blocked), then `netpol-agent cleanup` runs on every node. After
/// it no pin, netlink filter or TCX program of netpol's is left, the connection is
/// allowed as without netpol, and a second cleanup finds nothing.
pub fn cleanup(cfg: &Config) -> Result<()> {
    let mut sb = Sandbox::start(&client_server(&[("http", 80)]), cfg)?;
    sb.apply(
        &[policy("server-in", ingress_from("server", None))],
        &BTreeMap::new(),
        &BTreeMap::new(),
    )?;
    if connects(&sb, "default/client", "default/server", 80, 300)? {
        bail!("client->server was allowed under a deny-all ingress policy");
    }
    let before: usize = (0..sb.node_count())
        .map(|i| sb.netpol_filters(i).map(|f| f.len()))
        .sum::<Result<usize>>()?;
    for i in 0..sb.node_count() {
        sb.kill_agent(i)?;
    }
    if connects(&sb, "default/client", "default/server", 80, 300)? {
        bail!(
            "client->server was allowed once the agents were killed: the pins should keep enforcing"
        );
    }
    println!(
        "  agents killed; the pins still enforce (client->server blocked); {before} netlink filters before cleanup"
    );
    for i in 0..sb.node_count() {
        let said = sb.cleanup_node(i)?;
        println!("  node-{}: {said}", i + 1);
        if sb.pin_dir(i).exists() {
            bail!("node-{}: {} still exists", i + 1, sb.pin_dir(i).display());
        }
        let left = sb.netpol_filters(i)?;
        if !left.is_empty() {
            bail!("node-{}: filters left after cleanup: {left:?}", i + 1);
        }
    }
    if !connects(&sb, "default/client", "default/server", 80, 1000)? {
        bail!("client->server is still blocked after cleanup");
    }
    println!("  after cleanup: client->server allowed, no pins, no filters of netpol's");
    for i in 0..sb.node_count() {
        let again = sb.cleanup_node(i)?;
        if !again.starts_with(
            "removed 0 pinned TCX links, 0 node cgroup links, 0 netlink filters, 0 pin directories",
        ) {
            bail!(
                "node-{}: a second cleanup still found something: {again}",
                i + 1
            );
        }
    }
    println!("  a second cleanup finds nothing");
    Ok(())
}
