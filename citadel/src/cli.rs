//! The `citadel` command line: `serve`, and admin commands that talk to a running server over
//! the Unix socket in the data directory.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use citadel_api::admin::admin_client::AdminClient;
use citadel_api::admin::{
    BundleAuthorityRequest, CreateEntriesRequest, CreateEntryRequest, CreateJoinTokenRequest,
    DeleteEntryRequest, EvictNodeRequest, ListEntriesRequest, ListNodesRequest,
};
use citadel_api::ca::TrustBundleRequest;
use clap::{Args, Parser, Subcommand, ValueEnum};
use pki::identity::parse_trust_domain;
use pki::{KeyAlgorithm, SystemClock, SystemRandom, TrustBundle};
use tonic::transport::Channel;

use crate::authority::CaSource;
use crate::server::{Limits, ServeConfig, admin_socket, serve};
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
    /// Attested nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Proxies of the mesh.
    #[command(subcommand)]
    Sidecar(SidecarCommand),
    /// Validate Istio manifests (files or directories) without a server, as `istioctl validate`.
    Validate {
        /// A manifest file, a `mesh.yaml`, or a config directory; repeatable.
        #[arg(short = 'f', long = "filename", required = true)]
        paths: Vec<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SidecarCommand {
    /// Print the Envoy bootstrap (YAML) for a WorkloadEntry of the config directory.
    Bootstrap {
        /// The WorkloadEntry, as NAMESPACE/NAME.
        #[arg(long)]
        workload: String,
        /// The directory `serve --config-dir` serves.
        #[arg(long)]
        config_dir: PathBuf,
        /// Connect straight to citadel over mTLS at this address instead of through the agent.
        #[arg(long)]
        xds: Option<String>,
        /// The node agent's socket (SDS, and ADS unless --xds).
        #[arg(long, default_value = "/run/citadel-agent/api.sock")]
        agent_socket: PathBuf,
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// A gateway (router) instead of a sidecar.
        #[arg(long)]
        router: bool,
        /// No iptables redirect: listeners bind their own addresses (Sidecar captureMode NONE).
        #[arg(long)]
        no_redirect: bool,
    },
}

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// List attested nodes: name, SVID serial and expiry, last contact, agent version.
    List {
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Evict a node: its renewals, mints and watches are refused from the next call, and it
    /// needs a new join token to come back.
    Evict { name: String },
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
    /// A directory of Istio manifests (ServiceEntry, WorkloadEntry, VirtualService,
    /// DestinationRule, Sidecar; `mesh.yaml` for mesh settings), watched and served over ADS.
    #[arg(long)]
    pub config_dir: Option<PathBuf>,
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
    /// Concurrent HTTP/2 streams one connection may open (calls and watches).
    #[arg(long, default_value_t = Limits::default().max_concurrent_streams)]
    pub max_concurrent_streams: u32,
    /// TLS handshakes in progress at once; further connections wait to be accepted.
    #[arg(long, default_value_t = Limits::default().max_handshakes)]
    pub max_concurrent_handshakes: usize,
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
    /// Assign an identity to workloads on a node that match every selector; or, with
    /// `--file`, create every entry in a YAML file, atomically (all or none).
    Create {
        #[arg(long, required_unless_present = "file", conflicts_with = "file")]
        spiffe_id: Option<String>,
        #[arg(long, required_unless_present = "file", conflicts_with = "file")]
        node: Option<String>,
        /// `unix:uid:N`, `unix:gid:N`, `unix:user:NAME`, `unix:group:NAME`, `unix:path:PATH`.
        #[arg(long = "selector", conflicts_with = "file")]
        selectors: Vec<String>,
        #[arg(long, value_parser = duration, default_value = "1h")]
        ttl: Duration,
        /// YAML list of entries: `- {spiffe_id: ..., node: ..., selectors: [...], ttl: 1h}`.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// List entries; filters combine.
    List {
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        spiffe_id: Option<String>,
        /// The entry must carry this selector (repeatable: all of them).
        #[arg(long = "selector")]
        selectors: Vec<String>,
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Delete an entry by id.
    Delete {
        #[arg(long)]
        id: String,
    },
}

/// One entry of an `entry create --file` document.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFileItem {
    spiffe_id: String,
    node: String,
    selectors: Vec<String>,
    #[serde(default)]
    ttl: Option<String>,
}

/// Reads an entries file; errors name the file and the entry.
fn read_entry_file(path: &Path, default_ttl: Duration) -> anyhow::Result<Vec<CreateEntryRequest>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let items: Vec<EntryFileItem> = serde_yaml_ng::from_str(&text)
        .with_context(|| format!("{}: not a YAML list of entries", path.display()))?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let ttl = match &item.ttl {
                Some(t) => duration(t)
                    .map_err(|e| anyhow::anyhow!("{}: entries[{i}].ttl: {e}", path.display()))?,
                None => default_ttl,
            };
            Ok(CreateEntryRequest {
                spiffe_id: item.spiffe_id,
                node: item.node,
                selectors: item.selectors,
                ttl_seconds: ttl.as_secs() as i64,
            })
        })
        .collect()
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
        Command::Node(cmd) => node(&cli.data_dir, cmd).await,
        Command::Sidecar(SidecarCommand::Bootstrap {
            workload,
            config_dir,
            xds,
            agent_socket,
            admin,
            trust_domain,
            router,
            no_redirect,
        }) => {
            let loaded = mesh::load_dir(&config_dir).map_err(|errors| {
                let lines: Vec<String> = errors.iter().map(|e| format!("  {e}")).collect();
                anyhow::anyhow!(
                    "config directory {}:\n{}",
                    config_dir.display(),
                    lines.join("\n")
                )
            })?;
            let opts = crate::bootstrap::BootstrapOptions {
                trust_domain: &trust_domain,
                agent_socket: &agent_socket,
                xds: xds.map_or(
                    crate::bootstrap::XdsSource::Agent,
                    crate::bootstrap::XdsSource::Direct,
                ),
                admin,
                router,
                redirect: !no_redirect,
            };
            let bootstrap = crate::bootstrap::sidecar(&loaded.config, &workload, &opts)?;
            print!("{}", serde_yaml_ng::to_string(&bootstrap)?);
            Ok(())
        }
        Command::Validate { paths } => crate::validate::run(
            &paths,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        ),
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
        config_dir: args.config_dir,
        limits: Limits {
            max_concurrent_streams: args.max_concurrent_streams,
            max_handshakes: args.max_concurrent_handshakes,
        },
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
            file: Some(file),
            ttl,
            ..
        } => {
            let entries = read_entry_file(&file, ttl)?;
            let created = client
                .create_entries(CreateEntriesRequest { entries })
                .await
                .map_err(|e| status(e).context(file.display().to_string()))?
                .into_inner();
            for e in &created.entries {
                println!("{}", e.id);
            }
        }
        EntryCommand::Create {
            spiffe_id,
            node,
            selectors,
            ttl,
            file: None,
        } => {
            if selectors.is_empty() {
                bail!("--selector is required (at least one)");
            }
            let req = CreateEntryRequest {
                spiffe_id: spiffe_id.unwrap_or_default(),
                node: node.unwrap_or_default(),
                selectors,
                ttl_seconds: ttl.as_secs() as i64,
            };
            let e = client.create_entry(req).await.map_err(status)?.into_inner();
            println!("{}", e.id);
        }
        EntryCommand::List {
            node,
            spiffe_id,
            selectors,
            output,
        } => {
            let list = client
                .list_entries(ListEntriesRequest {
                    node: node.unwrap_or_default(),
                    spiffe_id: spiffe_id.unwrap_or_default(),
                    selectors,
                })
                .await
                .map_err(status)?
                .into_inner();
            match output {
                Output::Json => {
                    let rows: Vec<_> = list
                        .entries
                        .iter()
                        .map(|e| {
                            serde_json::json!({
                                "id": e.id, "spiffe_id": e.spiffe_id, "node": e.node,
                                "selectors": e.selectors, "ttl_seconds": e.ttl_seconds,
                                "created_at_unix": e.created_at_unix,
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                }
                Output::Table => {
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

fn when(unix: i64) -> String {
    if unix <= 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(unix as u64))
        .to_string()
}

async fn node(data_dir: &Path, cmd: NodeCommand) -> anyhow::Result<()> {
    let mut client = admin(data_dir).await?;
    match cmd {
        NodeCommand::List { output } => {
            let nodes = client
                .list_nodes(ListNodesRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .nodes;
            match output {
                Output::Json => {
                    let rows: Vec<_> = nodes
                        .iter()
                        .map(|n| {
                            serde_json::json!({
                                "name": n.name, "spiffe_id": n.spiffe_id, "serial": n.serial,
                                "expires_at_unix": n.expires_at_unix,
                                "attested_at_unix": n.attested_at_unix,
                                "last_seen_unix": n.last_seen_unix,
                                "agent_version": n.agent_version,
                                "evicted": n.evicted_at_unix > 0,
                                "evicted_at_unix": n.evicted_at_unix,
                            })
                        })
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&rows)?);
                }
                Output::Table => {
                    println!(
                        "{:<16}  {:<34}  {:<20}  {:<20}  {:<9}  STATUS",
                        "NAME", "SERIAL", "EXPIRES", "LAST SEEN", "VERSION"
                    );
                    for n in nodes {
                        let state = if n.evicted_at_unix > 0 {
                            format!("evicted {}", when(n.evicted_at_unix))
                        } else {
                            "attested".into()
                        };
                        let serial: String = n.serial.chars().take(32).collect();
                        println!(
                            "{:<16}  {:<34}  {:<20}  {:<20}  {:<9}  {state}",
                            n.name,
                            serial,
                            when(n.expires_at_unix),
                            when(n.last_seen_unix),
                            if n.agent_version.is_empty() {
                                "-"
                            } else {
                                &n.agent_version
                            },
                        );
                    }
                }
            }
        }
        NodeCommand::Evict { name } => {
            client
                .evict_node(EvictNodeRequest { name: name.clone() })
                .await
                .map_err(status)?;
            println!("evicted {name}");
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
