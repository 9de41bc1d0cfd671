//! The `node-agent` binary.
use std::sync::Arc;

use clap::{Parser, Subcommand};
use node_agent::clock::TokioClock;
use node_agent::config::{AgentConfig, RunArgs};

// jemalloc: rotation churn (every SVID replaced at half-life) fragments glibc's heap; measured
// in docs/BENCHMARKS.md.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(
    name = "node-agent",
    version,
    about = "Citadel node agent: SDS v3 and SPIFFE Workload API for local workloads"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Attest to citadel and serve workloads.
    Run(RunArgs),
    /// Redirect a workload's TCP traffic to its sidecar, as istio-init does (run inside the
    /// workload's network namespace, as root or with CAP_NET_ADMIN).
    Iptables(node_agent::iptables::RedirectArgs),
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let args = match cli.command {
        Command::Run(args) => args,
        Command::Iptables(args) => return Ok(node_agent::iptables::execute(&args)?),
    };
    let config = AgentConfig::resolve(args)?;
    node_agent::server::run(
        config,
        Arc::new(TokioClock::system()),
        Arc::new(pki::SystemRandom),
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
