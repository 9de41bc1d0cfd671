//! CA signing benchmark: N concurrent clients, each on its own mTLS connection, call citadel's
//! MintX509Svid with pre-generated keys and CSRs. Reports certs/s, p50/p99 latency and
//! citadel's CPU-seconds per certificate, next to two anchors measured in the same run:
//! the crypto floor (one ECDSA P-256 sign + one verify with aws-lc-rs) and `cfssl serve`
//! signing the same CSRs.
//!
//! Run: `bench/ca.sh` (or `cargo bench -p citadel --bench ca_signing`). Environment:
//! `CLIENTS` (default 16), `SECONDS` (default 10), `CFSSL` (default `cfssl`).
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, UnparsedPublicKey};
use citadel_api::ca::node_ca_client::NodeCaClient;
use citadel_api::ca::{AttestNodeRequest, CsrRequest};
use pki::identity::{parse_spiffe_id, parse_trust_domain};
use pki::{KeyAlgorithm, PrivateKey, TrustBundle, X509Svid, build_csr};

const CSRS_PER_CLIENT: usize = 256;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// (user, system) CPU seconds of a process (from /proc, 10 ms resolution).
fn cpu_split(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    (
        fields[11].parse::<f64>().unwrap() / 100.0,
        fields[12].parse::<f64>().unwrap() / 100.0,
    )
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let (user, system) = cpu_split(pid);
    user + system
}

struct Report {
    name: &'static str,
    certs: usize,
    wall: Duration,
    cpu: f64,
    latencies: Vec<Duration>,
}

impl Report {
    fn pct(&self, p: f64) -> f64 {
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i].as_secs_f64() * 1000.0
    }

    fn row(&self) -> String {
        format!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.1} |",
            self.name,
            self.certs,
            self.certs as f64 / self.wall.as_secs_f64(),
            self.pct(0.50),
            self.pct(0.99),
            self.cpu / self.certs as f64 * 1e6
        )
    }
}

fn crypto_floor() -> f64 {
    let rng = SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
        .unwrap();
    let public = UnparsedPublicKey::new(
        &signature::ECDSA_P256_SHA256_ASN1,
        key.public_key().as_ref().to_vec(),
    );
    let msg = [7u8; 300];
    let n = 20_000;
    let cpu0 = cpu_seconds(std::process::id());
    let start = Instant::now();
    for _ in 0..n {
        let sig = key.sign(&rng, &msg).unwrap();
        public.verify(&msg, sig.as_ref()).unwrap();
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(std::process::id()) - cpu0;
    println!("crypto floor: {n} sign+verify pairs in {wall:.2}s wall, {cpu:.2}s CPU");
    // CPU time, not wall time: other processes on the machine must not inflate the floor.
    cpu / n as f64
}

struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGTERM first, so a server (or a profiler wrapping it) shuts down cleanly.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_citadel(dir: &Path) -> (Server, String) {
    // CITADEL_WRAPPER (e.g. "valgrind --tool=callgrind") runs citadel under a profiler.
    let wrapper: Vec<String> = std::env::var("CITADEL_WRAPPER")
        .map(|w| w.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(env!("CARGO_BIN_EXE_citadel"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_citadel")),
    };
    let child = command
        .arg("--data-dir")
        .arg(dir)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--monitoring",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let endpoints = dir.join("endpoints.json");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !endpoints.exists() {
        assert!(Instant::now() < deadline, "citadel did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&endpoints).unwrap()).unwrap();
    (Server { child }, v["grpc"].as_str().unwrap().to_string())
}

fn cli(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_citadel"))
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn csrs(id: &str) -> Vec<Vec<u8>> {
    let id = parse_spiffe_id(id).unwrap();
    (0..CSRS_PER_CLIENT)
        .map(|_| build_csr(&PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(), &id).unwrap())
        .collect()
}

fn channel(
    addr: &str,
    bundle: &TrustBundle,
    svid: Option<&X509Svid>,
) -> NodeCaClient<tonic::transport::Channel> {
    let bundles = Arc::new(pki::verify::SharedBundles::new([bundle.clone()]));
    let cert = svid.map(|s| {
        Arc::new(pki::tls::SwappableCert::new(
            pki::tls::certified_key(s).unwrap(),
        ))
    });
    let cfg = citadel_api::channel::citadel_client_config(
        bundles,
        bundle.trust_domain().clone(),
        cert,
        Arc::new(pki::SystemClock),
    )
    .unwrap();
    NodeCaClient::new(citadel_api::channel::tls_channel(addr, Arc::new(cfg)).unwrap())
}

async fn bench_citadel(clients: usize, seconds: u64, dir: &Path) -> (Report, Vec<Vec<Vec<u8>>>) {
    let (server, addr) = start_citadel(dir);
    let root = std::fs::read_to_string(dir.join("ca/root-cert.pem")).unwrap();
    let bundle =
        TrustBundle::from_pem(parse_trust_domain("cluster.local").unwrap(), &root).unwrap();
    let mut workers = Vec::new();
    let mut all_csrs = Vec::new();
    for i in 0..clients {
        let node = format!("bench-{i}");
        let workload = format!("spiffe://cluster.local/ns/bench/sa/w{i}");
        cli(
            dir,
            &[
                "entry",
                "create",
                "--spiffe-id",
                &workload,
                "--node",
                &node,
                "--selector",
                "unix:uid:1000",
            ],
        );
        let token = cli(dir, &["token", "create", "--node", &node]);
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let csr = build_csr(
            &key,
            &parse_spiffe_id(&format!("spiffe://cluster.local/citadel/node/{node}")).unwrap(),
        )
        .unwrap();
        let resp = channel(&addr, &bundle, None)
            .attest_node(AttestNodeRequest {
                csr,
                join_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        let chain = resp.cert_chain.into_iter().map(Into::into).collect();
        let svid = X509Svid::from_chain(chain).unwrap().with_key(key).unwrap();
        let mut client = channel(&addr, &bundle, Some(&svid));
        let pool = csrs(&workload);
        // Warm the connection (handshake) outside the measured window.
        client
            .mint_x509_svid(CsrRequest {
                csr: pool[0].clone(),
                ttl_seconds: 0,
            })
            .await
            .unwrap();
        all_csrs.push(pool.clone());
        workers.push((client, pool));
    }
    let pid = server.child.id();
    let cpu0 = cpu_seconds(pid);
    let split0 = cpu_split(pid);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let tasks: Vec<_> = workers
        .into_iter()
        .map(|(mut client, pool)| {
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = 0;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    client
                        .mint_x509_svid(CsrRequest {
                            csr: pool[i % pool.len()].clone(),
                            ttl_seconds: 0,
                        })
                        .await
                        .unwrap();
                    lat.push(t.elapsed());
                    i += 1;
                }
                lat
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let wall = start.elapsed();
    let cpu = cpu_seconds(pid) - cpu0;
    let split = cpu_split(pid);
    let n = latencies.len() as f64;
    println!(
        "citadel CPU per cert: {:.1} µs user + {:.1} µs system",
        (split.0 - split0.0) / n * 1e6,
        (split.1 - split0.1) / n * 1e6
    );
    latencies.sort();
    (
        Report {
            name: "citadel (gRPC, mTLS)",
            certs: latencies.len(),
            wall,
            cpu,
            latencies,
        },
        all_csrs,
    )
}

fn http_post(stream: &mut TcpStream, body: &str) -> Duration {
    let t = Instant::now();
    let req = format!(
        "POST /api/v1/cfssl/sign HTTP/1.1\r\nHost: cfssl\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "cfssl closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            assert!(head.starts_with("http/1.1 200"), "{head}");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            if buf.len() >= end + 4 + len {
                assert!(String::from_utf8_lossy(&buf[end + 4..]).contains("\"success\":true"));
                return t.elapsed();
            }
        }
    }
}

fn bench_cfssl(seconds: u64, dir: &Path, csrs: Vec<Vec<Vec<u8>>>) -> Option<Report> {
    let bin = std::env::var("CFSSL").unwrap_or_else(|_| "cfssl".into());
    let port = 18000 + (std::process::id() % 1000) as u16;
    let child = Command::new(&bin)
        .args([
            "serve",
            "-address",
            "127.0.0.1",
            "-port",
            &port.to_string(),
            "-loglevel",
            "4",
        ])
        .arg("-ca")
        .arg(dir.join("ca/ca-cert.pem"))
        .arg("-ca-key")
        .arg(dir.join("ca/ca-key.pem"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(child) = child else {
        println!("cfssl not found ({bin}); install Debian's golang-cfssl for the comparison");
        return None;
    };
    let server = Server { child };
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "cfssl did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let bodies: Vec<Vec<String>> = csrs
        .into_iter()
        .map(|pool| {
            pool.into_iter()
                .map(|der| serde_json::json!({ "certificate_request": pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der)) }).to_string())
                .collect()
        })
        .collect();
    let mut conns: Vec<TcpStream> = bodies
        .iter()
        .map(|b| {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.set_nodelay(true).unwrap();
            http_post(&mut s, &b[0]);
            s
        })
        .collect();
    let pid = server.child.id();
    let cpu0 = cpu_seconds(pid);
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let latencies: Vec<Duration> = std::thread::scope(|scope| {
        let handles: Vec<_> = conns
            .iter_mut()
            .zip(bodies.iter())
            .map(|(conn, pool)| {
                scope.spawn(move || {
                    let mut lat = Vec::new();
                    let mut i = 0;
                    while Instant::now() < end {
                        lat.push(http_post(conn, &pool[i % pool.len()]));
                        i += 1;
                    }
                    lat
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let wall = start.elapsed();
    let cpu = cpu_seconds(pid) - cpu0;
    let mut latencies = latencies;
    latencies.sort();
    Some(Report {
        name: "cfssl serve 1.2 (HTTP)",
        certs: latencies.len(),
        wall,
        cpu,
        latencies,
    })
}

fn main() {
    // `cargo bench` passes `--bench`; libtest-style filters are not used here.
    let clients: usize = env_or("CLIENTS", 16);
    let seconds: u64 = env_or("BENCH_SECONDS", 10);
    let floor = crypto_floor();
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (citadel, csrs) = rt.block_on(bench_citadel(clients, seconds, dir.path()));
    let cfssl = bench_cfssl(seconds, dir.path(), csrs);
    println!();
    println!(
        "{clients} clients, {seconds} s per server, {} CPUs",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!();
    println!("| signer | certs | certs/s | p50 ms | p99 ms | server CPU µs/cert |");
    println!("|---|---|---|---|---|---|");
    println!("{}", citadel.row());
    if let Some(c) = &cfssl {
        println!("{}", c.row());
    }
    println!(
        "| crypto floor (aws-lc-rs P-256 sign+verify) | | {:.0} | | | {:.1} |",
        1.0 / floor,
        floor * 1e6
    );
    println!();
    println!(
        "citadel CPU per cert / floor = {:.2}x",
        citadel.cpu / citadel.certs as f64 / floor
    );
    if let Some(c) = &cfssl {
        println!(
            "cfssl CPU per cert / floor = {:.2}x",
            c.cpu / c.certs as f64 / floor
        );
    }
}
