use clap::Parser;
use netpol_agent::agent::{self, Args};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Some(agent::Command::Cleanup { pin_dir, wait }) = &args.command {
        return match netpol_agent::datapath::cleanup::cleanup(pin_dir) {
            Ok(r) => {
                println!(
                    "removed {} pinned TCX links, {} netlink filters, {} pin directories",
                    r.tcx_links, r.netlink_filters, r.pin_dirs
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

async fn wait_for_termination() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            term.recv().await;
        }
        Err(e) => tracing::warn!(error = %e, "cannot wait for SIGTERM; exiting"),
    }
}
