//! Running checks' traffic: where a check's `from` runs and `to` points, connections,
//! stray segments with their capture, and held-connection processes.

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::process::{Child, ChildStdout, Command, Stdio};

use anyhow::{Context, Result, anyhow, bail};

use super::{Sandbox, network::node_index};
use crate::cases::CheckDef;
pub use crate::traffic::Outcome as Answer;

/// The ephemeral port range of every sandbox namespace (see `network::EPHEMERAL`).
const EPHEMERAL: std::ops::RangeInclusive<u16> = 32768..=60999;

/// Where a check's traffic starts.
pub struct Source {
    pub netns: String,
    /// Its address (the pod's, the node's primary one, the external host's).
    pub addr: IpAddr,
    /// Bound explicitly: nodes and the external namespace have several addresses.
    pub bind: bool,
}

impl Sandbox {
    /// `NS/POD` (or `pod:NS/POD`), `node:NAME` or `ext:NAME`.
    pub fn source(&self, from: &str) -> Result<Source> {
        if let Some(node) = from.strip_prefix("node:") {
            let i = node_index(node, self.nodes)?;
            return Ok(Source {
                netns: self.node_ns(i),
                addr: self.node_addr(i),
                bind: true,
            });
        }
        if let Some(ext) = from.strip_prefix("ext:") {
            let addr = *self
                .external
                .get(ext)
                .ok_or_else(|| anyhow!("check source {from:?} is not in the model"))?;
            return Ok(Source {
                netns: self.netns("ext"),
                addr,
                bind: true,
            });
        }
        let pod = from.strip_prefix("pod:").unwrap_or(from);
        let place = self
            .pods
            .get(pod)
            .ok_or_else(|| anyhow!("check source {from:?} is not in the model"))?;
        Ok(Source {
            netns: place.netns.clone(),
            addr: place.ip,
            bind: false,
        })
    }

    /// Where a check's `to` points.
    pub fn target(&self, to: &str) -> Result<IpAddr> {
        let (kind, name) = to
            .split_once(':')
            .ok_or_else(|| anyhow!("bad check target {to:?}"))?;
        let found = match kind {
            "svc" => self.services.get(name).copied(),
            "pod" => self.pods.get(name).map(|p| p.ip),
            "ext" => self.external.get(name).copied(),
            "node" => node_index(name, self.nodes).ok().map(|i| self.node_addr(i)),
            _ => None,
        };
        found.ok_or_else(|| anyhow!("check target {to:?} is not in the model"))
    }

    /// Where a segment to `to` is captured: namespace and interface (all of a node's).
    fn capture_point(&self, to: &str) -> Result<(String, Option<&'static str>)> {
        let (kind, name) = to
            .split_once(':')
            .ok_or_else(|| anyhow!("bad check target {to:?}"))?;
        match kind {
            "pod" => Ok((self.source(name)?.netns, Some("eth0"))),
            "ext" => Ok((self.netns("ext"), Some("eth0"))),
            "node" => Ok((self.node_ns(node_index(name, self.nodes)?), None)),
            _ => bail!("stray segments go to pod:, ext: or node:, not {to:?}"),
        }
    }

    /// The pods whose counters matter for a check's endpoint (a Service's: its backends).
    pub fn pods_of(&self, endpoint: &str) -> Vec<String> {
        if let Some(svc) = endpoint.strip_prefix("svc:") {
            let Some((ns, name)) = svc.split_once('/') else {
                return Vec::new();
            };
            let Some(def) = self
                .model
                .services
                .iter()
                .find(|s| s.ns == ns && s.name == name)
            else {
                return Vec::new();
            };
            return self
                .model
                .pods
                .iter()
                .filter(|p| p.ns == ns && crate::cases::selects(&def.selector, &p.labels))
                .map(|p| format!("{}/{}", p.ns, p.name))
                .collect();
        }
        let pod = endpoint.strip_prefix("pod:").unwrap_or(endpoint);
        if self.pods.contains_key(pod) {
            vec![pod.to_string()]
        } else {
            Vec::new()
        }
    }

    fn probe_cmd(&self, netns: &str, args: &[String]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", netns])
            .arg(&self.cfg.probe)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// Address, port, protocol, timeout and source arguments of a check.
    fn conn_args(&self, check: &CheckDef, src: &Source) -> Result<Vec<String>> {
        let addr = self.target(&check.to)?;
        let mut args = vec![
            "--addr".to_string(),
            addr.to_string(),
            "--port".into(),
            check.port.to_string(),
            "--protocol".into(),
            check.protocol.clone(),
            "--timeout-ms".into(),
            self.cfg.probe_timeout.as_millis().to_string(),
        ];
        if src.bind {
            args.extend(["--source".into(), src.addr.to_string()]);
        }
        Ok(args)
    }

    /// Runs one `connect` check's connections; one answer per attempt.
    pub fn probe(&self, check: &CheckDef) -> Result<Vec<Answer>> {
        if !matches!(check.protocol.as_str(), "TCP" | "UDP" | "SCTP") {
            bail!("{} probes are not supported", check.protocol);
        }
        let src = self.source(&check.from)?;
        let attempts = check.attempts.unwrap_or(1).max(1);
        let mut args = vec!["connect".to_string()];
        args.extend(self.conn_args(check, &src)?);
        args.extend(["--attempts".into(), attempts.to_string()]);
        if let Some(b) = check.bytes {
            args.extend(["--bytes".into(), b.to_string()]);
        }
        let out = self
            .probe_cmd(&src.netns, &args)
            .output()
            .context("running the probe")?;
        if !out.status.success() {
            bail!(
                "probe failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(Answer::parse)
            .collect())
    }

    /// Sends a `stray` check's segment and says whether the destination's namespace
    /// received it (captured before any socket sees it).
    pub fn stray(&self, check: &CheckDef) -> Result<bool> {
        let src = self.source(&check.from)?;
        let dst = self.target(&check.to)?;
        let sport = check.sport.unwrap_or_else(free_port);
        for (what, p) in [("sport", sport), ("port", check.port)] {
            if EPHEMERAL.contains(&p) {
                bail!(
                    "stray {what} {p} is inside the sandbox's ephemeral port range (32768-60999)"
                );
            }
        }
        let flags = check.flags.clone().unwrap_or_default();
        let common = [
            "--source".to_string(),
            src.addr.to_string(),
            "--addr".into(),
            dst.to_string(),
            "--port".into(),
            check.port.to_string(),
            "--sport".into(),
            sport.to_string(),
            format!("--flags={flags}"),
        ];
        let (cap_ns, iface) = self.capture_point(&check.to)?;
        let mut cap_args = vec!["capture".to_string()];
        cap_args.extend(common.iter().cloned());
        cap_args.extend([
            "--timeout-ms".into(),
            self.cfg.probe_timeout.as_millis().to_string(),
        ]);
        if let Some(i) = iface {
            cap_args.extend(["--iface".into(), i.into()]);
        }
        let (mut cap, mut lines) = self.spawn_piped(&cap_ns, &cap_args)?;
        let ready = read_line(&mut lines).context("starting the capture")?;
        if ready != "ready" {
            let _ = cap.kill();
            bail!("capture did not start: {ready:?}");
        }
        let mut send_args = vec!["stray".to_string()];
        send_args.extend(common);
        let sent = self.probe_cmd(&src.netns, &send_args).output();
        let seen = read_line(&mut lines);
        let _ = cap.wait();
        let sent = sent.context("running the stray sender")?;
        if !sent.status.success() {
            bail!(
                "stray sender failed: {}",
                String::from_utf8_lossy(&sent.stderr).trim()
            );
        }
        match seen?.as_str() {
            "seen" => Ok(true),
            "unseen" => Ok(false),
            other => bail!("capture said {other:?}"),
        }
    }

    /// Starts a held connection's process (`probe hold`) for an `open` check.
    pub fn spawn_held(&self, check: &CheckDef) -> Result<(Child, BufReader<ChildStdout>)> {
        let src = self.source(&check.from)?;
        let mut args = vec!["hold".to_string()];
        args.extend(self.conn_args(check, &src)?);
        let mut cmd = self.probe_cmd(&src.netns, &args);
        cmd.stdin(Stdio::piped());
        self.spawn_cmd(cmd)
    }

    fn spawn_piped(&self, netns: &str, args: &[String]) -> Result<(Child, BufReader<ChildStdout>)> {
        self.spawn_cmd(self.probe_cmd(netns, args))
    }

    fn spawn_cmd(&self, mut cmd: Command) -> Result<(Child, BufReader<ChildStdout>)> {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the probe")?;
        self.cleanup
            .lock()
            .map_err(|_| anyhow!("cleanup poisoned"))?
            .pids
            .push(child.id());
        let out = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("probe without stdout"))?;
        Ok((child, BufReader::new(out)))
    }
}

/// One line of a probe's output; an error when it ended without one.
pub fn read_line(r: &mut BufReader<ChildStdout>) -> Result<String> {
    let mut line = String::new();
    if r.read_line(&mut line)
        .context("reading the probe's output")?
        == 0
    {
        bail!("the probe ended without an answer");
    }
    Ok(line.trim().to_string())
}

/// A source port above the ephemeral range, different per call.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let seed = std::process::id().wrapping_mul(2_654_435_761) ^ n.wrapping_mul(40_503);
    61000 + (seed % 4500) as u16
}
