//! `-o text`: an explanation in a few lines.

use std::fmt::Write as _;

use super::{EndView, Explanation, Side};

fn end(e: &EndView) -> String {
    let mut s = match &e.name {
        Some(n) if e.kind == "pod" || e.kind == "service" => format!("{} {n}", e.kind),
        Some(n) => format!("{} {n}", e.kind.replace('-', " ")),
        None => e.kind.to_string(),
    };
    let mut detail = Vec::new();
    if let Some(ip) = e.ip {
        detail.push(ip.to_string());
    }
    if let Some(node) = e.node.as_ref().filter(|_| e.kind != "node") {
        detail.push(format!("on {node}"));
    }
    if !detail.is_empty() {
        let _ = write!(s, " ({})", detail.join(", "));
    }
    s
}

fn side(out: &mut String, label: &str, s: &Side, indent: &str) {
    let who = s
        .pod
        .as_deref()
        .map(|p| format!(" of {p}"))
        .unwrap_or_default();
    let verdict = if s.allowed { "allows" } else { "denies" };
    let _ = writeln!(out, "{indent}{label}{who}: {verdict}: {}", s.reason);
    if s.isolated {
        let _ = writeln!(out, "{indent}  isolated by {}", s.policies.join(", "));
    }
    for e in &s.errors {
        let _ = writeln!(out, "{indent}  problem: {e}");
    }
}

pub fn render(x: &Explanation) -> String {
    let mut out = String::new();
    let verdict = if x.allowed { "ALLOWED" } else { "DENIED" };
    let _ = writeln!(
        out,
        "{verdict}: {} -> {} on {}/{}",
        end(&x.from),
        end(&x.to),
        x.port,
        x.protocol
    );
    let _ = writeln!(out, "  {}", x.reason);
    match &x.backends {
        None => {
            side(&mut out, "egress", &x.egress, "  ");
            side(&mut out, "ingress", &x.ingress, "  ");
        }
        Some(backends) if backends.is_empty() => side(&mut out, "egress", &x.egress, "  "),
        Some(backends) => {
            for b in backends {
                let verdict = if b.allowed { "allowed" } else { "denied" };
                let node = b
                    .node
                    .as_deref()
                    .map(|n| format!(", on {n}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  backend {} ({}:{}{node}): {verdict}: {}",
                    b.pod, b.ip, b.port, b.reason
                );
                side(&mut out, "egress", &b.egress, "    ");
                side(&mut out, "ingress", &b.ingress, "    ");
            }
        }
    }
    out
}
