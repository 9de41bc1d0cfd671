//! Harness for the agent's integration tests: citadel in-process on loopback (so it can be
//! stopped and restarted on the same port), the real `node-agent` binary as a child process,
//! and helpers to act as a workload on the agent socket.
#![allow(dead_code, unreachable_pub)]
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use citadel::authority::CaSource;
use citadel::server::{ServeConfig, serve};
use citadel::service::TtlPolicy;
use citadel_api::admin::admin_client::AdminClient;
use citadel_api::admin::{CreateEntryRequest, CreateJoinTokenRequest, DeleteEntryRequest};
use citadel_api::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use pki::identity::parse_trust_domain;
use pki::{KeyAlgorithm, SystemClock, SystemRandom};
use tonic::transport::Channel;

pub const AGENT: &str = env!("CARGO_BIN_EXE_node-agent");

/// Polls `f` until it returns `Some`, or panics after `timeout` with `what`.
pub async fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// citadel running inside the test process.
pub struct Citadel {
    pub data_dir: PathBuf,
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Citadel {
    pub async fn start(data_dir: &Path, listen: SocketAddr) -> Self {
        Self::start_with_config(data_dir, listen, None).await
    }

    /// citadel serving the Istio manifests of `config_dir` over ADS.
    pub async fn start_with_config(
        data_dir: &Path,
        listen: SocketAddr,
        config_dir: Option<PathBuf>,
    ) -> Self {
        let endpoints = citadel::server::endpoints_file(data_dir);
        let _ = std::fs::remove_file(&endpoints);
        let config = ServeConfig {
            data_dir: data_dir.to_path_buf(),
            trust_domain: parse_trust_domain("cluster.local").unwrap(),
            listen,
            monitoring: "127.0.0.1:0".parse().unwrap(),
            ca: CaSource::SelfSigned {
                key_algorithm: KeyAlgorithm::EcdsaP256,
                root_ttl: Duration::from_secs(3650 * 86400),
                intermediate_ttl: Duration::from_secs(365 * 86400),
            },
            ttl: TtlPolicy {
                node: Duration::from_secs(3600),
                max: Duration::from_secs(86400),
            },
            server_sans: vec![],
            server_cert_ttl: Duration::from_secs(86400),
            limits: Default::default(),
            config_dir,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            serve(
                config,
                Arc::new(SystemClock),
                Arc::new(SystemRandom),
                async {
                    let _ = rx.await;
                },
            )
            .await
            .expect("citadel serve");
        });
        let text = eventually(Duration::from_secs(20), "citadel endpoints", async || {
            std::fs::read_to_string(&endpoints).ok()
        })
        .await;
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let addr = v["grpc"].as_str().unwrap().parse().unwrap();
        Self {
            data_dir: data_dir.to_path_buf(),
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    pub fn root_pem_path(&self) -> PathBuf {
        self.data_dir.join("ca/root-cert.pem")
    }

    async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(
            citadel_api::channel::uds_channel(citadel::server::admin_socket(&self.data_dir))
                .unwrap(),
        )
    }

    pub async fn token(&self, node: &str) -> String {
        let req = CreateJoinTokenRequest {
            node: node.into(),
            ttl_seconds: 600,
        };
        self.admin()
            .await
            .create_join_token(req)
            .await
            .unwrap()
            .into_inner()
            .token
    }

    pub async fn entry(
        &self,
        spiffe_id: &str,
        node: &str,
        selectors: &[String],
        ttl: Duration,
    ) -> String {
        let req = CreateEntryRequest {
            spiffe_id: spiffe_id.into(),
            node: node.into(),
            selectors: selectors.to_vec(),
            ttl_seconds: ttl.as_secs() as i64,
        };
        self.admin()
            .await
            .create_entry(req)
            .await
            .unwrap()
            .into_inner()
            .id
    }

    pub async fn add_bundle_authority(&self, pem: String) {
        let req = citadel_api::admin::BundleAuthorityRequest { pem };
        self.admin().await.add_bundle_authority(req).await.unwrap();
    }

    pub async fn delete_entry(&self, id: &str) {
        self.admin()
            .await
            .delete_entry(DeleteEntryRequest { id: id.into() })
            .await
            .unwrap();
    }
}

impl Drop for Citadel {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The node agent binary as a child process; killed on drop.
pub struct Agent {
    pub socket: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Child,
}

impl Agent {
    pub async fn start(dir: &Path, citadel: &Citadel, token: Option<&str>, extra: &[&str]) -> Self {
        Self::start_at(
            dir,
            &citadel.addr.to_string(),
            &citadel.root_pem_path(),
            token,
            extra,
        )
        .await
    }

    /// An agent for the citadel at `server`, first trusting the root in `root_pem`.
    pub async fn start_at(
        dir: &Path,
        server: &str,
        root_pem: &Path,
        token: Option<&str>,
        extra: &[&str],
    ) -> Self {
        let socket = dir.join("agent.sock");
        let data_dir = dir.join("agent-data");
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let log = dir.join(format!("agent-{stamp}.log"));
        let _ = std::fs::remove_file(data_dir.join("endpoints.json"));
        let mut cmd = Command::new(AGENT);
        cmd.args(["run", "--server", server, "--trust-domain", "cluster.local"])
            .arg("--trust-bundle")
            .arg(root_pem)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--socket")
            .arg(&socket)
            .args(["--metrics", "127.0.0.1:0", "--backoff-cap", "2s"])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("AGENT_RUST_LOG").unwrap_or_else(|_| "info,node_agent=debug".into()),
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        match token {
            // The node name comes from the token; the token stays out of argv.
            Some(t) => {
                let file = dir.join(format!("token-{stamp}"));
                std::fs::write(&file, t).unwrap();
                cmd.arg("--join-token-file").arg(file);
            }
            None => {
                cmd.args(["--node-name", "node-1"]);
            }
        }
        let child = cmd.spawn().expect("spawn node-agent");
        let mut agent = Self {
            socket,
            data_dir,
            log,
            child,
        };
        let endpoints = agent.data_dir.join("endpoints.json");
        eventually(Duration::from_secs(20), "agent endpoints", async || {
            if let Ok(Some(status)) = agent.child.try_wait() {
                panic!(
                    "node-agent exited: {status}\n{}",
                    std::fs::read_to_string(&agent.log).unwrap_or_default()
                );
            }
            endpoints.exists().then_some(())
        })
        .await;
        agent
    }

    pub fn metrics_addr(&self) -> String {
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(self.data_dir.join("endpoints.json")).unwrap(),
        )
        .unwrap();
        v["metrics"].as_str().unwrap().to_string()
    }

    pub async fn metrics(&self) -> String {
        http_get(&self.metrics_addr(), "/metrics").await
    }

    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Workload API client on the agent socket.
pub fn workload_client(socket: &Path) -> SpiffeWorkloadApiClient<Channel> {
    SpiffeWorkloadApiClient::new(citadel_api::channel::uds_channel(socket).unwrap())
}

/// Adds the Workload API security header.
pub fn with_header<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    req
}

/// A minimal HTTP/1.1 GET over loopback.
pub async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// This test binary's path, as the agent's path selector will see it.
pub fn self_path_selector() -> String {
    format!(
        "unix:path:{}",
        std::fs::canonicalize(std::env::current_exe().unwrap())
            .unwrap()
            .display()
    )
}

/// The project's virtualenv, which the test command fills (Envoy, Python's spiffe).
pub fn venv() -> PathBuf {
    let v = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv");
    assert!(
        v.join("bin/python").exists(),
        "the project virtualenv is missing: run `bash scripts/test.sh` (it installs Envoy and Python's spiffe into .venv)"
    );
    v
}

pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Istio's traffic-management tasks as configuration, shared by the rootless and the captured
/// tests: plaintext to backends without a sidecar, circuit breaking on `httpbin` (one
/// connection, one pending request), outlier ejection on `pool`, a 418 abort on `ratings`, a
/// 300 ms timeout on `details`, retries on 5xx for `flaky`.
pub const ISTIO_TASKS: &str = "# These backends have no sidecar: plaintext to them.
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: all-plaintext}
spec:
  host: \"*.default.svc.cluster.local\"
  trafficPolicy: {tls: {mode: DISABLE}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: httpbin}
spec:
  host: httpbin
  trafficPolicy:
    tls: {mode: DISABLE}
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: pool}
spec:
  host: pool
  trafficPolicy:
    tls: {mode: DISABLE}
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 3m, maxEjectionPercent: 100}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: ratings}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: details}
spec:
  hosts: [details]
  http:
  - timeout: 300ms
    route: [{destination: {host: details}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: flaky}
spec:
  hosts: [flaky]
  http:
  - retries: {attempts: 3, retryOn: 5xx}
    route: [{destination: {host: flaky}}]
";
