//! Runs conformance cases on real packets: one sandbox per case, steps in order, every
//! check of a step in parallel. One unit of the summary is one step of one case.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::cases::{Case, CheckDef, load_cases};
use crate::sandbox::{self, Config, Sandbox};

/// The outcome of one check.
#[derive(Clone, Debug)]
pub struct CheckResult {
    pub check: CheckDef,
    pub passed: bool,
    /// What was seen, for humans: `allowed (default/web)`, `blocked (connect: timed out)`.
    pub observed: String,
}

#[derive(Debug)]
pub struct StepResult {
    pub case: String,
    pub step: usize,
    pub checks: Vec<CheckResult>,
    /// Set when the step could not be applied or probed at all.
    pub error: Option<String>,
    pub apply_time: Duration,
}

impl StepResult {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.checks.iter().all(|c| c.passed)
    }
}

/// Judges the answers of one check against what it expects.
pub fn judge(check: &CheckDef, answers: &[std::result::Result<String, String>]) -> (bool, String) {
    let ok: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().ok()).collect();
    let failed: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    let observed = if failed.is_empty() {
        format!("allowed (answered by {})", dedup(&ok))
    } else if ok.is_empty() {
        format!("blocked ({})", failed[0])
    } else {
        format!(
            "{} of {} allowed (answered by {}), others blocked ({})",
            ok.len(),
            answers.len(),
            dedup(&ok),
            failed[0]
        )
    };
    let passed = if !check.expect {
        ok.is_empty()
    } else if let Some(allowed) = &check.answered_by {
        !ok.is_empty() && ok.iter().all(|who| allowed.contains(who))
    } else {
        !answers.is_empty() && failed.is_empty()
    };
    (passed, observed)
}

fn dedup(names: &[&String]) -> String {
    let mut v: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    v.sort();
    v.dedup();
    v.join(", ")
}

pub fn run_case(
    case: &Case,
    cfg: &Config,
    mut on_step: impl FnMut(&StepResult),
) -> Vec<StepResult> {
    let steps = case.steps();
    let fail_all = |msg: String| -> Vec<StepResult> {
        (0..steps.len())
            .map(|i| StepResult {
                case: case.id.clone(),
                step: i,
                checks: Vec::new(),
                error: Some(msg.clone()),
                apply_time: Duration::ZERO,
            })
            .collect()
    };
    let mut sb = match Sandbox::start(&case.model(), cfg) {
        Ok(sb) => sb,
        Err(e) => {
            let r = fail_all(format!("sandbox: {e:#}"));
            r.iter().for_each(&mut on_step);
            return r;
        }
    };
    let mut results = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let mut result = StepResult {
            case: case.id.clone(),
            step: i,
            checks: Vec::new(),
            error: None,
            apply_time: Duration::ZERO,
        };
        match sb.apply(&step.policies, &step.namespace_labels, &step.pod_labels) {
            Ok(t) => result.apply_time = t,
            Err(e) => result.error = Some(format!("apply: {e:#}")),
        }
        if result.error.is_none() {
            match case.checks_of(step) {
                Ok(checks) => result.checks = run_checks(&sb, &checks),
                Err(e) => result.error = Some(format!("{e:#}")),
            }
        }
        on_step(&result);
        results.push(result);
    }
    results
}

pub fn run_checks(sb: &Sandbox, checks: &[CheckDef]) -> Vec<CheckResult> {
    std::thread::scope(|s| {
        let handles: Vec<_> = checks
            .iter()
            .map(|c| {
                s.spawn(move || match sb.probe(c) {
                    Ok(answers) => {
                        let (passed, observed) = judge(c, &answers);
                        CheckResult {
                            check: c.clone(),
                            passed,
                            observed,
                        }
                    }
                    Err(e) => CheckResult {
                        check: c.clone(),
                        passed: false,
                        observed: format!("not probed: {e:#}"),
                    },
                })
            })
            .collect();
        handles
            .into_iter()
            .zip(checks)
            .map(|(h, c)| {
                h.join().unwrap_or_else(|_| CheckResult {
                    check: c.clone(),
                    passed: false,
                    observed: "probe thread panicked".into(),
                })
            })
            .collect()
    })
}

pub fn describe(c: &CheckResult) -> String {
    let ch = &c.check;
    let mut s = format!(
        "{} -> {} {}/{}: expected {}, observed {}",
        ch.from,
        ch.to,
        ch.port,
        ch.protocol,
        if ch.expect { "allowed" } else { "blocked" },
        c.observed
    );
    if let Some(a) = &ch.answered_by {
        let _ = write!(s, " (must be answered by {})", a.join(", "));
    }
    s
}

/// The `conformance` command: every case of every file, a line per step, the failed
/// checks of failed steps, and `N passed, N failed` at the end.
pub fn run_files(files: &[PathBuf], cfg: &Config) -> Result<(usize, usize)> {
    let removed = sandbox::remove_stale()?;
    if removed > 0 {
        println!("removed {removed} namespaces left by an earlier sandbox run");
    }
    let mut cases = Vec::new();
    for f in files {
        cases.extend(load_cases(f)?);
    }
    println!(
        "running {} cases from {} files on real packets (attach mode {})",
        cases.len(),
        files.len(),
        cfg.attach_mode
    );
    println!(
        "TCP: handshake and one request/response; UDP: one datagram answered; SCTP: this kernel has no SCTP sockets, so a crafted INIT is sent over a raw socket and a crafted INIT-ACK naming the server must come back"
    );
    let started = Instant::now();
    let (mut passed, mut failed) = (0, 0);
    for case in &cases {
        run_case(case, cfg, |r| {
            let ok = r.passed();
            if ok {
                passed += 1;
            } else {
                failed += 1;
            }
            println!(
                "{} {} step {} ({} checks, applied in {} ms)",
                if ok { "PASS" } else { "FAIL" },
                r.case,
                r.step,
                r.checks.len(),
                r.apply_time.as_millis()
            );
            if let Some(e) = &r.error {
                println!("    error: {e}");
            }
            for c in r.checks.iter().filter(|c| !c.passed) {
                println!("    differs: {}", describe(c));
            }
        });
    }
    println!(
        "conformance run took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!("{passed} passed, {failed} failed");
    Ok((passed, failed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(expect: bool, answered_by: Option<Vec<&str>>) -> CheckDef {
        CheckDef {
            from: "a/b".into(),
            to: "svc:a/c".into(),
            port: 80,
            protocol: "TCP".into(),
            expect,
            attempts: Some(3),
            answered_by: answered_by.map(|v| v.into_iter().map(String::from).collect()),
        }
    }

    #[test]
    fn judging() {
        let ok = |s: &str| Ok(s.to_string());
        let no = || Err("connect: timed out".to_string());
        assert!(judge(&check(true, None), &[ok("x"), ok("y")]).0);
        assert!(!judge(&check(true, None), &[ok("x"), no()]).0);
        assert!(judge(&check(false, None), &[no(), no()]).0);
        assert!(!judge(&check(false, None), &[no(), ok("x")]).0);
        let only_a = check(true, Some(vec!["ns/a"]));
        assert!(judge(&only_a, &[ok("ns/a"), no(), ok("ns/a")]).0);
        assert!(!judge(&only_a, &[ok("ns/a"), ok("ns/b")]).0);
        assert!(!judge(&only_a, &[no(), no()]).0);
        assert!(!judge(&check(true, None), &[]).0);
    }
}
