//! Connections held across steps (`open`, `use`, `close`): one `netpol-probe hold`
//! process each, driven over its stdin and stdout. A connection seen revoked (a `use`
//! without an answer) is aborted with a reset when it ends, not closed cleanly.

use std::collections::BTreeMap;
use std::io::{BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow, bail};

use crate::cases::CheckDef;
use crate::sandbox::{Answer, Sandbox, probes_read_line};

struct Held {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
    /// The `open` check: what the connection is.
    opened: CheckDef,
    revoked: bool,
}

impl Held {
    fn command(&mut self, cmd: &str) -> Result<String> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("connection already ended"))?;
        writeln!(stdin, "{cmd}")
            .and_then(|_| stdin.flush())
            .context("the connection's process is gone (it never opened)")?;
        probes_read_line(&mut self.out)
    }

    fn end(&mut self) -> Result<()> {
        let how = if self.revoked { "abort" } else { "close" };
        let r = self.command(how);
        self.stdin = None;
        let _ = self.child.wait();
        match r?.as_str() {
            "closed" => Ok(()),
            other => bail!("closing said {other:?}"),
        }
    }
}

/// The held connections of one case, by name.
#[derive(Default)]
pub struct HeldConns {
    conns: Mutex<BTreeMap<String, Arc<Mutex<Held>>>>,
}

fn name_of(check: &CheckDef) -> Result<String> {
    check
        .name
        .clone()
        .ok_or_else(|| anyhow!("a {:?} check needs a name", check.kind))
}

impl HeldConns {
    fn get(&self, name: &str) -> Result<Arc<Mutex<Held>>> {
        self.conns
            .lock()
            .map_err(|_| anyhow!("held connections poisoned"))?
            .get(name)
            .cloned()
            .ok_or_else(|| anyhow!("no open connection named {name:?}"))
    }

    /// Opens the connection and makes its first request.
    pub fn open(&self, sb: &Sandbox, check: &CheckDef) -> Result<Answer> {
        let name = name_of(check)?;
        if self.get(&name).is_ok() {
            bail!("a connection named {name:?} is already open");
        }
        let (mut child, mut out) = sb.spawn_held(check)?;
        let stdin = child.stdin.take();
        let first = probes_read_line(&mut out)?;
        let held = Held {
            child,
            stdin,
            out,
            opened: check.clone(),
            revoked: false,
        };
        self.conns
            .lock()
            .map_err(|_| anyhow!("held connections poisoned"))?
            .insert(name, Arc::new(Mutex::new(held)));
        Ok(Answer::parse(&first))
    }

    /// One more request on the connection; also returns its `open` check.
    pub fn use_conn(&self, check: &CheckDef) -> Result<(Answer, CheckDef)> {
        let held = self.get(&name_of(check)?)?;
        let mut h = held.lock().map_err(|_| anyhow!("connection poisoned"))?;
        let answer = Answer::parse(&h.command("use")?);
        if !matches!(answer, Answer::Ok(_)) {
            h.revoked = true;
        }
        Ok((answer, h.opened.clone()))
    }

    /// Ends the connection (a reset if it was seen revoked); returns its `open` check.
    pub fn close(&self, check: &CheckDef) -> Result<CheckDef> {
        let name = name_of(check)?;
        let held = self
            .conns
            .lock()
            .map_err(|_| anyhow!("held connections poisoned"))?
            .remove(&name)
            .ok_or_else(|| anyhow!("no open connection named {name:?}"))?;
        let mut h = held.lock().map_err(|_| anyhow!("connection poisoned"))?;
        h.end()?;
        Ok(h.opened.clone())
    }

    /// Ends whatever is still open (end of a case).
    pub fn close_all(&self) {
        let all: Vec<_> = match self.conns.lock() {
            Ok(mut m) => std::mem::take(&mut *m).into_values().collect(),
            Err(_) => return,
        };
        for held in all {
            if let Ok(mut h) = held.lock()
                && h.end().is_err()
            {
                let _ = h.child.kill();
                let _ = h.child.wait();
            }
        }
    }
}
