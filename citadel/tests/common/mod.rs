//! Test harness: runs the real `citadel` binary on loopback with a temp data directory, and
//! builds clients that speak to it exactly as node agents do.
#![allow(dead_code, unreachable_pub)]
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use citadel_api::ca::node_ca_client::NodeCaClient;
use citadel_api::channel::{citadel_client_config, tls_channel};
use pki::identity::{parse_spiffe_id, parse_trust_domain};
use pki::tls::{SwappableCert, certified_key};
use pki::verify::SharedBundles;
use pki::{KeyAlgorithm, PrivateKey, SystemClock, TrustBundle, X509Svid, build_csr};
use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_citadel");

/// A running citadel process; killed on drop.
pub struct Citadel {
    pub data_dir: PathBuf,
    pub grpc: String,
    pub monitoring: String,
    child: Child,
}

impl Citadel {
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let endpoints = data_dir.join("endpoints.json");
        let _ = std::fs::remove_file(&endpoints);
        let child = Command::new(BIN)
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--monitoring",
                "127.0.0.1:0",
            ])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn citadel");
        let mut me = Self {
            data_dir: data_dir.to_path_buf(),
            grpc: String::new(),
            monitoring: String::new(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(text) = std::fs::read_to_string(&endpoints) {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                me.grpc = v["grpc"].as_str().unwrap().to_string();
                me.monitoring = v["monitoring"].as_str().unwrap().to_string();
                return me;
            }
            if let Some(status) = me.child.try_wait().unwrap() {
                panic!("citadel exited early: {status}");
            }
            assert!(Instant::now() < deadline, "citadel did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs a CLI command against this server's data directory.
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(BIN)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn token(&self, node: &str) -> String {
        let (ok, out, err) = self.cli(&["token", "create", "--node", node]);
        assert!(ok, "{err}");
        out.trim().to_string()
    }

    pub fn bundle(&self) -> TrustBundle {
        let pem = std::fs::read_to_string(self.data_dir.join("ca/root-cert.pem")).unwrap();
        TrustBundle::from_pem(parse_trust_domain("cluster.local").unwrap(), &pem).unwrap()
    }

    pub fn stop(mut self) {
        self.kill();
    }

    /// SIGKILL: no shutdown path runs.
    pub fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn kill(&mut self) {
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

    pub async fn metrics(&self) -> String {
        http_get(&self.monitoring, "/metrics").await
    }
}

impl Drop for Citadel {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal HTTP/1.1 GET over loopback (no client dependency needed).
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

pub fn client(addr: &str, bundle: &TrustBundle, svid: Option<&X509Svid>) -> NodeCaClient<Channel> {
    let bundles = Arc::new(SharedBundles::new([bundle.clone()]));
    let cert = svid.map(|s| Arc::new(SwappableCert::new(certified_key(s).unwrap())));
    let config = citadel_client_config(
        bundles,
        bundle.trust_domain().clone(),
        cert,
        Arc::new(SystemClock),
    )
    .unwrap();
    NodeCaClient::new(tls_channel(addr, Arc::new(config)).unwrap())
}

/// A fresh key and a CSR for `id`.
pub fn key_and_csr(id: &str) -> (PrivateKey, Vec<u8>) {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let csr = build_csr(&key, &parse_spiffe_id(id).unwrap()).unwrap();
    (key, csr)
}

pub fn svid_from(resp: &citadel_api::ca::SvidResponse, key: PrivateKey) -> X509Svid {
    let chain = resp.cert_chain.iter().map(|c| c.clone().into()).collect();
    X509Svid::from_chain(chain).unwrap().with_key(key).unwrap()
}

pub fn audit_lines(data_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(data_dir.join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub const NODE: &str = "spiffe://cluster.local/citadel/node/n1";

pub async fn attested_node(citadel: &Citadel) -> pki::X509Svid {
    let (key, csr) = key_and_csr(NODE);
    let mut anon = client(&citadel.grpc, &citadel.bundle(), None);
    let resp = anon
        .attest_node(citadel_api::ca::AttestNodeRequest {
            csr,
            join_token: citadel.token("n1"),
        })
        .await
        .unwrap()
        .into_inner();
    svid_from(&resp, key)
}

pub fn pem_csr(id: &str) -> String {
    let (_, der) = key_and_csr(id);
    pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der))
}

pub fn istio_client(
    citadel: &Citadel,
    svid: &pki::X509Svid,
) -> citadel_api::istio::istio_certificate_service_client::IstioCertificateServiceClient<
    tonic::transport::Channel,
> {
    let bundles = std::sync::Arc::new(pki::verify::SharedBundles::new([citadel.bundle()]));
    let cert = std::sync::Arc::new(pki::tls::SwappableCert::new(
        pki::tls::certified_key(svid).unwrap(),
    ));
    let cfg = citadel_api::channel::citadel_client_config(
        bundles,
        parse_trust_domain("cluster.local").unwrap(),
        Some(cert),
        std::sync::Arc::new(pki::SystemClock),
    )
    .unwrap();
    citadel_api::istio::istio_certificate_service_client::IstioCertificateServiceClient::new(
        citadel_api::channel::tls_channel(&citadel.grpc, std::sync::Arc::new(cfg)).unwrap(),
    )
}
