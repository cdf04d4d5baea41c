//! The `explain` subcommand: read the folder, ask, print.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::{Cluster, Endpoint, Query, explain, parse_port};
use crate::status::Format;

/// Would a new connection from A to B on a port be allowed, and why: from the API server
/// (the objects the agents watch, and the Nodes), or offline from a folder of YAML
/// (Namespaces, Pods with status.podIP, Services, NetworkPolicies, and optionally Nodes
/// with status.addresses).
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The folder of Kubernetes YAML or JSON, as the agent's --policy-dir reads it.
    /// Without it, the cluster is read from the API server.
    #[arg(long)]
    pub policy_dir: Option<PathBuf>,
    /// Kubeconfig for the API server (default: in-cluster, KUBECONFIG, ~/.kube/config).
    #[arg(long, conflicts_with = "policy_dir")]
    pub kubeconfig: Option<PathBuf>,
    /// Source: NS/POD, node:NAME, or an IP (a pod's or node's IP means that pod or node).
    #[arg(long)]
    pub from: String,
    /// Destination: NS/POD, svc:NS/NAME (judged on each backend), node:NAME, or an IP (a
    /// ClusterIP on one of its Service's ports means that Service).
    #[arg(long)]
    pub to: String,
    /// PORT/PROTOCOL (TCP, UDP or SCTP; TCP when left out), e.g. 80/TCP.
    #[arg(long)]
    pub port: String,
    /// `text` (a few lines) or `json` (one object).
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Text)]
    pub output: Format,
    /// Judge traffic between a pod and its own node by policy, as an agent run with
    /// --strict-node-traffic does.
    #[arg(long)]
    pub strict_node_traffic: bool,
}

/// What `explain` prints on stdout. Denied is an answer, not an error: the exit code
/// says whether the question could be answered.
pub async fn run(args: &ExplainArgs) -> Result<String> {
    let from: Endpoint = args.from.parse().context("--from")?;
    let to: Endpoint = args.to.parse().context("--to")?;
    let (port, protocol) = parse_port(&args.port).context("--port")?;
    let cluster = match &args.policy_dir {
        Some(dir) => {
            Cluster::load(dir).with_context(|| format!("reading --policy-dir {}", dir.display()))?
        }
        None => {
            let client = crate::sources::kube::client(args.kubeconfig.as_deref()).await?;
            let (cluster, refused) = super::live::read(&client)
                .await
                .context("reading the cluster from the API server")?;
            for why in refused {
                tracing::warn!("left out: {why}");
            }
            cluster
        }
    };
    let query = Query {
        from,
        to,
        protocol,
        port,
        strict_node_traffic: args.strict_node_traffic,
    };
    let answer = explain(&cluster, &query).with_context(|| {
        format!(
            "explaining {} -> {} on {port}/{protocol}",
            query.from, query.to
        )
    })?;
    Ok(match args.output {
        Format::Json => format!("{}\n", serde_json::to_string_pretty(&answer)?),
        Format::Text => super::text::render(&answer),
    })
}

/// The subcommand: the answer on stdout, or the error in the log and a failed exit.
pub async fn main(args: &ExplainArgs) -> std::process::ExitCode {
    match run(args).await {
        Ok(out) => {
            print!("{out}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!("explain: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
