//! `cargo xtask <task>`: the project's entry points. Each task installs what it needs first
//! (scripts/install-prereqs.sh, which skips what is present), so each works on a fresh
//! machine. This crate depends on nothing of the project, so it builds before the BPF
//! toolchain exists.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "netpol build, demo and test tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain pieces (apt packages, rust-src, bpf-linker) that are missing.
    Prereqs,
    /// Build the agent (with its BPF object) and the sandbox tools.
    Build,
    /// Start the sandbox cluster with the tutorial scenario "deny external egress except
    /// DNS and app=web", print which connections pass or are blocked, and the counters.
    Demo {
        /// Case id of ../shared/conformance/cases/seeds.json to show.
        #[arg(long, default_value = "seed-000-deny-external-egress")]
        case: String,
    },
    /// Run conformance case files on real packets in the sandbox.
    Conformance {
        #[arg(long, num_args = 1.., required = true)]
        cases: Vec<PathBuf>,
        /// Attach mode of the agents: auto, tcx or netlink.
        #[arg(long, default_value = "auto")]
        attach_mode: String,
    },
    /// Everything CI runs: formatting, clippy, unit tests, and the tutorial and Service
    /// conformance cases in the sandbox with both attach modes.
    Test,
    /// Remove sandbox namespaces left behind by killed runs.
    Clean,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn shared_cases() -> Result<PathBuf> {
    let dir = root().join("../shared/conformance/cases");
    if !dir.is_dir() {
        bail!(
            "{} not found: the conformance cases live in shared/ beside this repository",
            dir.display()
        );
    }
    Ok(dir)
}

fn step(what: &str) {
    println!("\n==> {what}");
}

fn sh(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .current_dir(root())
        .status()
        .with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

fn cargo() -> Command {
    // The rustup proxy, not $CARGO: `+nightly` must work.
    let mut c = Command::new("cargo");
    // bpf-linker is built against LLVM 22.
    let path = std::env::var("PATH").unwrap_or_default();
    c.env("PATH", format!("/usr/lib/llvm-22/bin:{path}"));
    c
}

fn prereqs() -> Result<()> {
    step("prerequisites");
    sh(Command::new("bash").arg(root().join("scripts/install-prereqs.sh")))
}

fn build() -> Result<(PathBuf, PathBuf, PathBuf)> {
    prereqs()?;
    step("build");
    sh(cargo().args(["build", "-p", "netpol-agent", "-p", "netpol-tests"]))?;
    let bin = root().join("target/debug");
    Ok((
        bin.join("netpol-agent"),
        bin.join("netpol-probe"),
        bin.join("netpol-sandbox"),
    ))
}

fn require_root() -> Result<()> {
    let out = Command::new("id")
        .arg("-u")
        .output()
        .context("running id")?;
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        bail!("the sandbox creates network namespaces and loads BPF programs: run as root");
    }
    Ok(())
}

fn sandbox(args: &[&str], attach_mode: &str) -> Result<()> {
    require_root()?;
    let (agent, probe, sandbox) = build()?;
    let mut c = Command::new(sandbox);
    c.arg("--agent")
        .arg(agent)
        .arg("--probe")
        .arg(probe)
        .args(["--attach-mode", attach_mode])
        .args(args);
    sh(&mut c)
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Prereqs => prereqs(),
        Task::Build => build().map(|_| ()),
        Task::Demo { case } => {
            let seeds = shared_cases()?.join("seeds.json");
            sandbox(
                &["demo", "--cases", &seeds.to_string_lossy(), "--case", &case],
                "auto",
            )
        }
        Task::Conformance { cases, attach_mode } => {
            let cases: Vec<String> = cases
                .iter()
                .map(|c| {
                    std::fs::canonicalize(c)
                        .with_context(|| format!("case file {}", c.display()))
                        .map(|p| p.to_string_lossy().to_string())
                })
                .collect::<Result<_>>()?;
            let mut args = vec!["conformance", "--cases"];
            args.extend(cases.iter().map(String::as_str));
            sandbox(&args, &attach_mode)
        }
        Task::Test => test(),
        Task::Clean => {
            let (agent, probe, sandbox) = build()?;
            sh(Command::new(sandbox)
                .arg("--agent")
                .arg(agent)
                .arg("--probe")
                .arg(probe)
                .arg("clean"))
        }
    }
}

fn test() -> Result<()> {
    require_root()?;
    let cases = shared_cases()?;
    let (agent, probe, sandbox) = build()?;
    step("cargo fmt --check");
    sh(cargo().args(["fmt", "--all", "--check"]))?;
    step("cargo clippy -D warnings");
    sh(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    sh(cargo().args([
        "+nightly",
        "clippy",
        "-p",
        "netpol-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]))?;
    step("unit tests");
    sh(cargo().args(["test"]))?;
    let seeds = cases.join("seeds.json");
    let services = cases.join("services.json");
    let own = root().join("tests/cases/bad-input.json");
    // The netlink path must keep working on kernels where TCX is preferred.
    for mode in ["auto", "netlink"] {
        step(&format!(
            "conformance in the sandbox (root), attach mode {mode}"
        ));
        sh(Command::new(&sandbox)
            .arg("--agent")
            .arg(&agent)
            .arg("--probe")
            .arg(&probe)
            .args(["--attach-mode", mode, "conformance", "--cases"])
            .arg(&seeds)
            .arg(&services)
            .arg(&own))?;
    }
    Ok(())
}
