//! The network benchmarks of `cargo xtask bench` (root), on the sandbox: a client pod on
//! node-1 and a server pod on node-2.
//!
//! * Throughput (iperf3, one TCP stream) and new TCP connections per second (`netpol-probe
//!   crr`), with agents enforcing policies that isolate both pods and allow exactly this
//!   traffic, each divided by the same on an identical sandbox without agents. The rounds
//!   alternate between the two sandboxes, so both see the same machine load.
//! * Policy propagation (API write to the first packet with the new verdict) once the API
//!   server also holds a synthetic cluster of `pods` pods and one policy per 10 pods.
//!
//! Everything is sent inside the sandbox's namespaces.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};

use crate::apiserver::Kind;
use crate::sandbox::{Config, Sandbox};
use crate::scale::{Generator, api_objects};
use crate::scenarios::{client_server, percentile, propagation};

const IPERF_PORT: u16 = 5201;
const CLIENT: &str = "default/client";
const SERVER: &str = "default/server";

pub struct Options {
    /// Seconds per throughput and per connection-rate measurement.
    pub seconds: u64,
    /// Measurements per sandbox (medians are reported).
    pub rounds: usize,
    /// Policy changes measured for propagation.
    pub changes: usize,
    /// Pods of the synthetic cluster loaded before the propagation measurement.
    pub pods: usize,
}

pub type Entry = (String, f64, String);

/// The client may reach the server's two ports; the server admits the client on them.
fn policies() -> Vec<Value> {
    let ports = json!([{"protocol": "TCP", "port": 80}, {"protocol": "TCP", "port": IPERF_PORT}]);
    let meta = |name: &str| json!({"name": name, "namespace": "default"});
    vec![
        json!({"metadata": meta("client-out"), "spec": {
            "podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "server"}}}], "ports": ports}]}}),
        json!({"metadata": meta("server-in"), "spec": {
            "podSelector": {"matchLabels": {"app": "server"}}, "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": ports}]}}),
    ]
}

/// One sandbox of the comparison, with an iperf3 server running in its server pod.
struct Side {
    sb: Sandbox,
    server: String,
    throughput_bps: Vec<f64>,
    crr_per_s: Vec<f64>,
}

impl Side {
    fn start(cfg: &Config, agents: bool) -> Result<Side> {
        let cfg = Config {
            agents,
            ..cfg.clone()
        };
        // The model's server answers on port 80 only; iperf3 takes IPERF_PORT.
        let mut sb = Sandbox::start(&client_server(&[("http", 80)]), &cfg)?;
        if agents {
            for p in policies() {
                sb.api().apply(Kind::NetworkPolicy, p)?;
            }
            sb.wait_applied(Duration::from_secs(20))?;
        }
        let server = sb.target(&format!("pod:{SERVER}"))?.to_string();
        sb.run_in_background(
            SERVER,
            &[
                "iperf3".into(),
                "--server".into(),
                "--port".into(),
                IPERF_PORT.to_string(),
            ],
        )?;
        // Every connection of the rate test leaves a TIME_WAIT socket at the client,
        // which closes first; without reuse the second round runs out of ports.
        let sysctl = sb
            .command_in(
                CLIENT,
                OsStr::new("sysctl"),
                &["-qw", "net.ipv4.tcp_tw_reuse=1"],
            )?
            .status()
            .context("running sysctl in the client pod")?;
        if !sysctl.success() {
            bail!("sysctl net.ipv4.tcp_tw_reuse=1 failed in the client pod");
        }
        Ok(Side {
            sb,
            server,
            throughput_bps: Vec::new(),
            crr_per_s: Vec::new(),
        })
    }

    fn measure(&mut self, seconds: u64) -> Result<()> {
        self.throughput_bps.push(self.iperf(seconds)?);
        self.crr_per_s.push(self.crr(seconds)?);
        Ok(())
    }

    fn iperf(&self, seconds: u64) -> Result<f64> {
        // The server may still be starting: a refused first attempt is retried.
        let mut last = String::new();
        for _ in 0..20 {
            let out = self
                .sb
                .command_in(
                    CLIENT,
                    OsStr::new("iperf3"),
                    &[
                        "--client",
                        &self.server,
                        "--port",
                        &IPERF_PORT.to_string(),
                        "--time",
                        &seconds.to_string(),
                        "--json",
                    ],
                )?
                .output()
                .context("running iperf3 (scripts/install-prereqs.sh installs it)")?;
            let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            if let Some(bps) = report
                .pointer("/end/sum_received/bits_per_second")
                .and_then(Value::as_f64)
            {
                return Ok(bps);
            }
            last = report
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned());
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("iperf3 gave no result: {last}")
    }

    fn crr(&self, seconds: u64) -> Result<f64> {
        let ms = (seconds * 1000).to_string();
        let out = self.sb.probe_in(
            CLIENT,
            &[
                "crr",
                "--addr",
                &self.server,
                "--port",
                "80",
                "--duration-ms",
                &ms,
            ],
        )?;
        let report: Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "crr printed no report: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
        if report["failed"].as_u64() != Some(0) {
            bail!("connections failed on an allowed path: {report}");
        }
        report["per_second"]
            .as_f64()
            .ok_or_else(|| anyhow!("crr report without a rate: {report}"))
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    percentile(&v, 0.5)
}

pub fn run(cfg: &Config, o: &Options) -> Result<Vec<Entry>> {
    let mut out: Vec<Entry> = Vec::new();
    let mut entry = |name: &str, value: f64, unit: &str| {
        println!("  {name:<36} {value:>12.3} {unit}");
        out.push((name.to_string(), value, unit.to_string()));
    };
    println!(
        "network (sandbox: pods on two nodes; {} rounds of {} s each, alternating)",
        o.rounds, o.seconds
    );
    let mut base = Side::start(cfg, false)?;
    let mut enforced = Side::start(cfg, true)?;
    for _ in 0..o.rounds {
        base.measure(o.seconds)?;
        enforced.measure(o.seconds)?;
    }
    // Each ratio is the median over rounds of (enforced / base) of the same round, so a
    // slow drift of the machine cancels out.
    let ratio = |e: &[f64], b: &[f64]| {
        let r: Vec<f64> = e.iter().zip(b).map(|(e, b)| e / b).collect();
        median(&r)
    };
    entry(
        "net.tcp_throughput_gbps_base",
        median(&base.throughput_bps) / 1e9,
        "Gbit/s",
    );
    entry(
        "net.tcp_throughput_gbps",
        median(&enforced.throughput_bps) / 1e9,
        "Gbit/s",
    );
    entry(
        "net.tcp_throughput_ratio",
        ratio(&enforced.throughput_bps, &base.throughput_bps),
        "x",
    );
    entry("net.tcp_crr_base", median(&base.crr_per_s), "conn/s");
    entry("net.tcp_crr", median(&enforced.crr_per_s), "conn/s");
    entry(
        "net.tcp_crr_ratio",
        ratio(&enforced.crr_per_s, &base.crr_per_s),
        "x",
    );
    drop(base);

    let t0 = Instant::now();
    let objects = api_objects(Generator::Narrow, o.pods);
    let mut counts = BTreeMap::new();
    for (kind, obj) in objects {
        enforced.sb.api().apply(kind, obj)?;
        *counts.entry(kind.kind()).or_insert(0usize) += 1;
    }
    enforced.sb.wait_applied(Duration::from_secs(120))?;
    println!(
        "  loaded {counts:?} into the API server; both agents applied them in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let p = propagation(&mut enforced.sb, o.changes)?;
    entry(
        "net.propagation_maps_p99_ms",
        percentile(&p.to_maps, 0.99),
        "ms",
    );
    entry(
        "net.propagation_p50_ms",
        percentile(&p.to_packet, 0.5),
        "ms",
    );
    entry(
        "net.propagation_p99_ms",
        percentile(&p.to_packet, 0.99),
        "ms",
    );
    Ok(out)
}
