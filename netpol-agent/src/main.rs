use std::io::IsTerminal;

use clap::Parser;
use netpol_agent::agent::{self, Args, LogFormat};
use tracing_subscriber::EnvFilter;

/// Logs go to stderr, filtered by RUST_LOG (default `info`); colours only on a terminal
/// (`kubectl logs` would show their escape codes).
fn init_logging(format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => logs.json().with_ansi(false).init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    if let Some(agent::Command::Explain(a)) = &args.command {
        return netpol_agent::explain::cli::main(a).await;
    }
    if let Some(agent::Command::Status { addr, output }) = &args.command {
        return show_status(*addr, *output).await;
    }
    if let Some(agent::Command::Monitor {
        addr,
        pod,
        verdict,
        output,
        once,
    }) = &args.command
    {
        let filter = netpol_agent::events::follow::Filter {
            pod: pod.clone(),
            verdict: *verdict,
        };
        let json = *output == netpol_agent::status::Format::Json;
        let followed =
            netpol_agent::events::follow::follow(*addr, &filter, json, *once, |l| println!("{l}"));
        return match followed.await {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("monitor: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if let Some(agent::Command::Cleanup {
        pin_dir,
        wait,
        cni_conf_dir,
        cni_bin_dir,
    }) = &args.command
    {
        if let Err(e) = unchain_cni(cni_conf_dir.as_deref(), cni_bin_dir.as_deref()) {
            tracing::error!("cleanup: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
        return match netpol_agent::datapath::cleanup::cleanup(pin_dir) {
            Ok(r) => {
                println!(
                    "removed {} pinned TCX links, {} node cgroup links, {} netlink filters, {} pin directories",
                    r.tcx_links, r.node_hooks, r.netlink_filters, r.pin_dirs
                );
                if r.remaining.is_empty() {
                    if *wait {
                        wait_for_termination().await;
                    }
                    return std::process::ExitCode::SUCCESS;
                }
                for left in &r.remaining {
                    tracing::error!(attachment = %left, "still attached after cleanup (held by another pin or process)");
                }
                std::process::ExitCode::FAILURE
            }
            Err(e) => {
                tracing::error!("cleanup: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    match agent::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `netpol-agent status`.
async fn show_status(
    addr: std::net::SocketAddr,
    output: netpol_agent::status::Format,
) -> std::process::ExitCode {
    use netpol_agent::status::{Format, Status, fetch, render};
    let body = match fetch(addr).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("status: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if output == Format::Json {
        println!("{body}");
        return std::process::ExitCode::SUCCESS;
    }
    match serde_json::from_str::<Status>(&body) {
        Ok(s) => {
            print!("{}", render(&s));
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("status: the agent's answer is not a status: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The CNI side of an uninstall: the conf lists first, so no runtime runs the plugin
/// while it is removed.
fn unchain_cni(
    conf_dir: Option<&std::path::Path>,
    bin_dir: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use netpol_agent::cni::install;
    if let Some(dir) = conf_dir {
        for list in install::unchain(dir)
            .with_context(|| format!("unchaining netpol-cni in {}", dir.display()))?
        {
            println!("removed netpol-cni from {}", list.display());
        }
    }
    if let Some(dir) = bin_dir {
        match std::fs::remove_file(dir.join(install::PLUGIN_TYPE)) {
            Ok(()) => println!("removed {}", dir.join(install::PLUGIN_TYPE).display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("removing netpol-cni from {}", dir.display()));
            }
        }
    }
    Ok(())
}

async fn wait_for_termination() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            term.recv().await;
        }
        Err(e) => tracing::warn!(error = %e, "cannot wait for SIGTERM; exiting"),
    }
}
