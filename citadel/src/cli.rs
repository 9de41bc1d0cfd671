//! The `citadel` command line: `serve`, and admin commands that talk to a running server over
//! the Unix socket in the data directory.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use citadel_api::admin::admin_client::AdminClient;
use citadel_api::admin::{
    BundleAuthorityRequest, CreateEntryRequest, CreateJoinTokenRequest, DeleteEntryRequest,
    ListEntriesRequest,
};
use citadel_api::ca::TrustBundleRequest;
use clap::{Args, Parser, Subcommand, ValueEnum};
use pki::identity::parse_trust_domain;
use pki::{KeyAlgorithm, SystemClock, SystemRandom, TrustBundle};
use tonic::transport::Channel;

use crate::authority::CaSource;
use crate::server::{ServeConfig, admin_socket, serve};
use crate::service::TtlPolicy;

#[derive(Debug, Parser)]
#[command(
    name = "citadel",
    version,
    about = "Citadel: SPIFFE certificate authority and mesh control plane"
)]
pub struct Cli {
    /// Directory holding CA keys, state, the audit log and the admin socket.
    #[arg(
        long,
        global = true,
        env = "CITADEL_DATA_DIR",
        default_value = "citadel-data"
    )]
    pub data_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the CA: gRPC API, admin socket and monitoring.
    Serve(ServeArgs),
    /// Join tokens for node attestation.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Registration entries.
    #[command(subcommand)]
    Entry(EntryCommand),
    /// The trust bundle.
    #[command(subcommand)]
    Bundle(BundleCommand),
}

fn duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d.is_zero() {
        return Err("must be positive".into());
    }
    Ok(d)
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Address of the TLS gRPC API.
    #[arg(long, default_value = "127.0.0.1:15012")]
    pub listen: SocketAddr,
    /// Address of the Prometheus metrics and health endpoint.
    #[arg(long, default_value = "127.0.0.1:15014")]
    pub monitoring: SocketAddr,
    /// Use a plug-in CA from this directory (Istio cacerts layout: ca-cert.pem, ca-key.pem,
    /// cert-chain.pem, root-cert.pem) instead of a self-signed root.
    #[arg(long)]
    pub ca_dir: Option<PathBuf>,
    /// Key type for a self-signed root and intermediate.
    #[arg(long, default_value = "ec-p256")]
    pub ca_key_type: KeyAlgorithm,
    #[arg(long, value_parser = duration, default_value = "3650d")]
    pub root_ttl: Duration,
    #[arg(long, value_parser = duration, default_value = "365d")]
    pub intermediate_ttl: Duration,
    /// Lifetime of node SVIDs.
    #[arg(long, value_parser = duration, default_value = "1h")]
    pub node_svid_ttl: Duration,
    /// Upper bound on any SVID's lifetime.
    #[arg(long, value_parser = duration, default_value = "24h")]
    pub max_svid_ttl: Duration,
    /// Extra DNS name or IP for citadel's serving certificate (repeatable).
    #[arg(long = "san")]
    pub sans: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a single-use join token; prints only the token.
    Create {
        #[arg(long)]
        node: String,
        #[arg(long, value_parser = duration, default_value = "10m")]
        ttl: Duration,
    },
}

#[derive(Debug, Subcommand)]
pub enum EntryCommand {
    /// Assign an identity to workloads on a node that match every selector.
    Create {
        #[arg(long)]
        spiffe_id: String,
        #[arg(long)]
        node: String,
        /// `unix:uid:N`, `unix:gid:N`, `unix:user:NAME`, `unix:group:NAME`, `unix:path:PATH`.
        #[arg(long = "selector", required = true)]
        selectors: Vec<String>,
        #[arg(long, value_parser = duration, default_value = "1h")]
        ttl: Duration,
    },
    /// List entries, optionally of one node.
    List {
        #[arg(long)]
        node: Option<String>,
    },
    /// Delete an entry by id.
    Delete {
        #[arg(long)]
        id: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BundleFormat {
    Pem,
    Jwks,
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Print the trust bundle.
    Show {
        #[arg(long, value_enum, default_value = "pem")]
        format: BundleFormat,
    },
    /// Add the CA certificate(s) in a PEM file to the bundle.
    Add {
        #[arg(long)]
        pem: PathBuf,
    },
    /// Remove the CA certificate(s) in a PEM file from the bundle.
    Remove {
        #[arg(long)]
        pem: PathBuf,
    },
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => run_serve(&cli.data_dir, args).await,
        Command::Token(cmd) => token(&cli.data_dir, cmd).await,
        Command::Entry(cmd) => entry(&cli.data_dir, cmd).await,
        Command::Bundle(cmd) => bundle(&cli.data_dir, cmd).await,
    }
}

async fn run_serve(data_dir: &Path, args: ServeArgs) -> anyhow::Result<()> {
    let trust_domain = parse_trust_domain(&args.trust_domain).context("--trust-domain")?;
    let ca = match args.ca_dir {
        Some(dir) => CaSource::PlugIn { dir },
        None => CaSource::SelfSigned {
            key_algorithm: args.ca_key_type,
            root_ttl: args.root_ttl,
            intermediate_ttl: args.intermediate_ttl,
        },
    };
    let config = ServeConfig {
        data_dir: data_dir.to_path_buf(),
        trust_domain,
        listen: args.listen,
        monitoring: args.monitoring,
        ca,
        ttl: TtlPolicy {
            node: args.node_svid_ttl,
            max: args.max_svid_ttl,
        },
        server_sans: args.sans,
        server_cert_ttl: Duration::from_secs(24 * 3600),
    };
    serve(
        config,
        Arc::new(SystemClock),
        Arc::new(SystemRandom),
        shutdown_signal(),
    )
    .await?;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

async fn admin(data_dir: &Path) -> anyhow::Result<AdminClient<Channel>> {
    let socket = admin_socket(data_dir);
    if !socket.exists() {
        bail!(
            "citadel is not running with --data-dir {} (no admin socket at {})",
            data_dir.display(),
            socket.display()
        );
    }
    let channel = citadel_api::channel::uds_channel(socket)?;
    Ok(AdminClient::new(channel))
}

fn status(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "citadel refused the request ({:?}): {}",
        e.code(),
        e.message()
    )
}

async fn token(data_dir: &Path, cmd: TokenCommand) -> anyhow::Result<()> {
    let TokenCommand::Create { node, ttl } = cmd;
    let resp = admin(data_dir)
        .await?
        .create_join_token(CreateJoinTokenRequest {
            node,
            ttl_seconds: ttl.as_secs() as i64,
        })
        .await
        .map_err(status)?;
    println!("{}", resp.into_inner().token);
    Ok(())
}

async fn entry(data_dir: &Path, cmd: EntryCommand) -> anyhow::Result<()> {
    let mut client = admin(data_dir).await?;
    match cmd {
        EntryCommand::Create {
            spiffe_id,
            node,
            selectors,
            ttl,
        } => {
            let req = CreateEntryRequest {
                spiffe_id,
                node,
                selectors,
                ttl_seconds: ttl.as_secs() as i64,
            };
            let e = client.create_entry(req).await.map_err(status)?.into_inner();
            println!("{}", e.id);
        }
        EntryCommand::List { node } => {
            let list = client
                .list_entries(ListEntriesRequest {
                    node: node.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            println!(
                "{:<16}  {:<12}  {:>7}  {:<48}  SELECTORS",
                "ID", "NODE", "TTL", "SPIFFE ID"
            );
            for e in list.entries {
                println!(
                    "{:<16}  {:<12}  {:>6}s  {:<48}  {}",
                    e.id,
                    e.node,
                    e.ttl_seconds,
                    e.spiffe_id,
                    e.selectors.join(",")
                );
            }
        }
        EntryCommand::Delete { id } => {
            client
                .delete_entry(DeleteEntryRequest { id: id.clone() })
                .await
                .map_err(status)?;
            println!("deleted {id}");
        }
    }
    Ok(())
}

async fn bundle(data_dir: &Path, cmd: BundleCommand) -> anyhow::Result<()> {
    let mut client = admin(data_dir).await?;
    let msg = match cmd {
        BundleCommand::Show { format } => {
            let b = client
                .get_trust_bundle(TrustBundleRequest {})
                .await
                .map_err(status)?
                .into_inner();
            match format {
                BundleFormat::Jwks => print!("{}", b.jwks),
                BundleFormat::Pem => {
                    let td = parse_trust_domain(&b.trust_domain)?;
                    let parsed = TrustBundle::from_jwks(td, &b.jwks)?;
                    print!("{}", parsed.to_pem());
                }
            }
            return Ok(());
        }
        BundleCommand::Add { pem } => {
            let pem = std::fs::read_to_string(&pem).with_context(|| pem.display().to_string())?;
            client
                .add_bundle_authority(BundleAuthorityRequest { pem })
                .await
        }
        BundleCommand::Remove { pem } => {
            let pem = std::fs::read_to_string(&pem).with_context(|| pem.display().to_string())?;
            client
                .remove_bundle_authority(BundleAuthorityRequest { pem })
                .await
        }
    };
    let b = msg.map_err(status)?.into_inner();
    println!(
        "bundle sequence {} with {} X.509 authorities",
        b.sequence,
        b.x509_authorities.len()
    );
    Ok(())
}
