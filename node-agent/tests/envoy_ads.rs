//! An unmodified Envoy takes its whole configuration from citadel over ADS (mTLS with the SVID
//! and bundle the agent serves it over SDS) and routes real requests as Istio's Bookinfo
//! VirtualService says: a 90/10 split, then 50/50 after the file is edited in the watched
//! directory, with no restart and no failed request. Rootless: the Sidecar's
//! `captureMode: NONE` listener binds a loopback address, backends listen on loopback. The
//! bootstrap is what `citadel sidecar bootstrap` prints; ADS goes straight to citadel or
//! through the agent's socket (forwarded with the sidecar's SVID).
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ENVOY_ID: &str = "spiffe://cluster.local/ns/default/sa/envoy";
/// The reviews port (Envoy's outbound listener and the backends, on loopback); each scenario
/// adds its own offset so they can run at once.
const REVIEWS_PORT: u16 = 19080;

fn config(reviews_split: (u32, u32), port: u16) -> String {
    config_at(reviews_split, port, "127.0.0.22")
}

/// [`config`] with reviews-v2's WorkloadEntry at `v2_address`.
fn config_at(reviews_split: (u32, u32), port: u16, v2_address: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: reviews}}
spec:
  hosts: [reviews.default.svc.cluster.local]
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {{labels: {{app: reviews}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-v1}}
spec: {{address: 127.0.0.21, labels: {{app: reviews, version: v1}}}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-v2}}
spec: {{address: {v2_address}, labels: {{app: reviews, version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  # The test's backends speak plain HTTP (mTLS between sidecars comes with two sidecars).
  trafficPolicy: {{tls: {{mode: DISABLE}}}}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews, subset: v1}}
      weight: {}
    - destination: {{host: reviews, subset: v2}}
      weight: {}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: productpage-v1}}
spec: {{address: 127.0.0.10, labels: {{app: productpage}}, serviceAccount: envoy}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default}}
spec:
  egress:
  - port: {{number: {port}, protocol: HTTP, name: http}}
    bind: 127.0.0.1
    captureMode: NONE
    hosts: [\"./*\"]
",
        reviews_split.0, reviews_split.1
    )
}

/// The bootstrap `citadel sidecar bootstrap` prints for the productpage WorkloadEntry.
fn bootstrap(config_dir: &Path, socket: &Path, xds: citadel::bootstrap::XdsSource) -> String {
    let loaded = mesh::load_dir(config_dir).unwrap();
    let opts = citadel::bootstrap::BootstrapOptions {
        trust_domain: "cluster.local",
        agent_socket: socket,
        xds,
        admin: "127.0.0.1:0".parse().unwrap(),
        router: false,
        redirect: false,
    };
    citadel::bootstrap::sidecar(&loaded.config, "default/productpage-v1", &opts)
        .unwrap()
        .to_string()
}

/// A backend that answers every request with its version.
async fn backend(ip: &str, version: &'static str, port: u16) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    let body = format!("reviews-{version}\n");
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    })
}

/// One request through Envoy's outbound listener, as a client calling `http://reviews:PORT/`.
async fn call_reviews(port: u16) -> Result<String, String> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(
        format!("GET / HTTP/1.1\r\nHost: reviews:{port}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    let (head, body) = out.split_once("\r\n\r\n").ok_or("no response")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or("").to_string());
    }
    Ok(body.trim().to_string())
}

async fn split(n: usize, port: u16) -> (BTreeMap<String, usize>, usize) {
    let mut counts = BTreeMap::new();
    let mut failed = 0;
    for _ in 0..n {
        match call_reviews(port).await {
            Ok(v) => *counts.entry(v).or_insert(0) += 1,
            Err(_) => failed += 1,
        }
    }
    (counts, failed)
}

struct Envoy(Child);

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// citadel serving a config directory, the agent, and an Envoy started from the bootstrap
/// `sidecar bootstrap` prints, configured only over ADS (through the agent, or straight to
/// citadel). Everything stops on drop.
struct Mesh {
    config_dir: std::path::PathBuf,
    admin_file: std::path::PathBuf,
    log: std::path::PathBuf,
    // Dropped in this order: Envoy first.
    _envoy: Envoy,
    _agent: Agent,
    _citadel: Citadel,
    /// Removed last, after every process using it stopped.
    _dir: tempfile::TempDir,
}

impl Mesh {
    /// `base_id` keeps concurrent Envoys' shared-memory regions apart.
    async fn start(files: &[(&str, String)], through_agent: bool, base_id: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_dir = dir.path().join("mesh");
        std::fs::create_dir(&config_dir).unwrap();
        for (name, text) in files {
            std::fs::write(config_dir.join(name), text).unwrap();
        }
        let envoy_path = testkit::envoy_binary();
        let citadel = Citadel::start_with_config(
            &dir.path().join("citadel"),
            "127.0.0.1:0".parse().unwrap(),
            Some(config_dir.clone()),
        )
        .await;
        citadel
            .entry(
                ENVOY_ID,
                "node-1",
                &[format!("unix:path:{}", envoy_path.display())],
                Duration::from_secs(3600),
            )
            .await;
        let agent = Agent::start(
            dir.path(),
            &citadel,
            Some(&citadel.token("node-1").await),
            &[],
        )
        .await;
        let xds = if through_agent {
            citadel::bootstrap::XdsSource::Agent
        } else {
            citadel::bootstrap::XdsSource::Direct(citadel.addr.to_string())
        };
        let bootstrap_file = dir.path().join("envoy.json");
        std::fs::write(&bootstrap_file, bootstrap(&config_dir, &agent.socket, xds)).unwrap();
        let log = dir.path().join("envoy.log");
        let admin_file = dir.path().join("admin.txt");
        let envoy = Envoy(
            Command::new(&envoy_path)
                .arg("-c")
                .arg(&bootstrap_file)
                .arg("--admin-address-path")
                .arg(&admin_file)
                .args([
                    "--base-id",
                    &(std::process::id() % 10_000 + base_id).to_string(),
                    "--disable-hot-restart",
                    "--log-level",
                    "info",
                ])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        Self {
            _dir: dir,
            config_dir,
            admin_file,
            log,
            _envoy: envoy,
            _agent: agent,
            _citadel: citadel,
        }
    }

    fn envoy_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn admin(&self, path: &str) -> String {
        let admin = std::fs::read_to_string(&self.admin_file).unwrap_or_default();
        http_get(admin.trim(), path).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_routes_from_citadel_ads_directly_and_follows_a_live_edit() {
    scenario(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_routes_from_ads_forwarded_by_the_agent() {
    scenario(true).await;
}

async fn scenario(through_agent: bool) {
    let port = REVIEWS_PORT + u16::from(through_agent);
    let mesh = Mesh::start(
        &[("reviews.yaml", config((90, 10), port))],
        through_agent,
        20_000 + u32::from(through_agent) * 10_000,
    )
    .await;
    let config_dir = mesh.config_dir.clone();
    let _v1 = backend("127.0.0.21", "v1", port).await;
    let _v2 = backend("127.0.0.22", "v2", port).await;
    let envoy_log = || mesh.envoy_log();
    eventually(
        Duration::from_secs(30),
        "Envoy routing to reviews from ADS",
        async || call_reviews(port).await.ok(),
    )
    .await;

    // Istio's traffic-shifting task: 90/10 over 1,000 requests, none failed.
    let (counts, failed) = split(1000, port).await;
    eprintln!("before the edit: {counts:?}");
    assert_eq!(failed, 0, "{counts:?}\n{}", envoy_log());
    let v1 = counts.get("reviews-v1").copied().unwrap_or(0);
    // Binomial(1000, 0.9): sd ≈ 9.5; ±5 sd.
    assert!((852..=948).contains(&v1), "90/10 split gave {counts:?}");

    // Edit the VirtualService in the watched directory during traffic: 50/50, no restart.
    let traffic = tokio::spawn(split(400, port));
    std::fs::write(config_dir.join("reviews.yaml"), config((50, 50), port)).unwrap();
    let (_, failed_during_edit) = traffic.await.unwrap();
    assert_eq!(
        failed_during_edit, 0,
        "requests failed while the configuration changed"
    );
    eventually(
        Duration::from_secs(30),
        "the 50/50 split in force",
        async || {
            let (counts, _) = split(200, port).await;
            let v1 = counts.get("reviews-v1").copied().unwrap_or(0);
            (60..=140).contains(&v1).then_some(())
        },
    )
    .await;
    let (counts, failed) = split(1000, port).await;
    eprintln!("after the edit: {counts:?}");
    assert_eq!(failed, 0);
    let v1 = counts.get("reviews-v1").copied().unwrap_or(0);
    // Binomial(1000, 0.5): sd ≈ 15.8; ±5 sd.
    assert!((421..=579).contains(&v1), "50/50 split gave {counts:?}");

    // Move reviews-v2 to another address during traffic: an EDS push only (Envoy's CDS, LDS
    // and RDS update counts stay), no failed request, and v2's traffic follows.
    let _v2_moved = backend("127.0.0.23", "v2-moved", port).await;
    let updates = async || {
        let stats = mesh.admin("/stats?filter=update_success").await;
        let count = |name: &str| -> u64 {
            stats
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(": ")?.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in\n{stats}"))
        };
        let v2 =
            format!("cluster.outbound|{port}|v2|reviews.default.svc.cluster.local.update_success");
        (
            [
                count("cluster_manager.cds.update_success"),
                count("listener_manager.lds.update_success"),
                count(&format!(
                    "http.outbound_127.0.0.1_{port}.rds.{port}.update_success"
                )),
            ],
            count(&v2),
        )
    };
    let (others_before, v2_before) = updates().await;
    let traffic = tokio::spawn(split(400, port));
    std::fs::write(
        config_dir.join("reviews.yaml"),
        config_at((50, 50), port, "127.0.0.23"),
    )
    .unwrap();
    let (_, failed_during_move) = traffic.await.unwrap();
    assert_eq!(
        failed_during_move, 0,
        "requests failed while an endpoint moved"
    );
    eventually(
        Duration::from_secs(30),
        "v2's traffic at its new address",
        async || {
            let (counts, _) = split(100, port).await;
            (counts.contains_key("reviews-v2-moved") && !counts.contains_key("reviews-v2"))
                .then_some(())
        },
    )
    .await;
    let (others_after, v2_after) = updates().await;
    assert_eq!(
        others_after, others_before,
        "an endpoint move pushed more than EDS"
    );
    assert!(v2_after > v2_before, "v2's endpoints were pushed");

    // Envoy accepted every push (no NACK).
    let stats = mesh.admin("/stats?filter=update_rejected").await;
    for line in stats.lines().filter(|l| l.contains("update_rejected")) {
        assert!(line.ends_with(": 0"), "{line}\n{}", envoy_log());
    }
    assert!(
        stats.contains("cluster_manager.cds.update_rejected: 0"),
        "{stats}"
    );
}

async fn http_get(addr: &str, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// How a test backend answers.
#[derive(Clone, Copy)]
enum Behaviour {
    Ok(&'static str),
    /// Answers after a delay.
    Slow(&'static str, Duration),
    /// Every other request gets 503.
    Flaky(&'static str),
    /// Always 500.
    Broken,
}

async fn serve_backend(ip: &str, port: u16, behaviour: Behaviour) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let served = served.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                loop {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    let count = served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let (status, body) = match behaviour {
                        Behaviour::Ok(v) => ("200 OK", v),
                        Behaviour::Slow(v, d) => {
                            tokio::time::sleep(d).await;
                            ("200 OK", v)
                        }
                        Behaviour::Flaky(v) if count.is_multiple_of(2) => {
                            ("503 Service Unavailable", v)
                        }
                        Behaviour::Flaky(v) => ("200 OK", v),
                        Behaviour::Broken => ("500 Internal Server Error", "broken"),
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    })
}

/// A response as the client saw it.
#[derive(Debug)]
struct Reply {
    status: u16,
    head: String,
    body: String,
}

/// Status 0 when nothing listens yet.
async fn call(port: u16, host: &str, headers: &[(&str, &str)]) -> Reply {
    call_method("GET", port, host, headers).await
}

async fn call_method(method: &str, port: u16, host: &str, headers: &[(&str, &str)]) -> Reply {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return Reply {
            status: 0,
            head: String::new(),
            body: String::new(),
        };
    };
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    s.write_all(
        format!("{method} / HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Reply {
        status,
        head: head.to_ascii_lowercase(),
        body: body.trim().to_string(),
    }
}

/// Istio's traffic-management tasks, on services declared by ServiceEntries whose backends
/// listen on loopback, all through one Envoy configured over ADS.
fn tasks_config(port: u16) -> String {
    let service = |name: &str, eps: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{name}.default.svc.cluster.local]
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints: [{eps}]
---
"
        )
    };
    let mut c = String::new();
    c += &service(
        "reviews",
        "{address: 127.0.0.21, labels: {version: v1}}, {address: 127.0.0.22, labels: {version: v2}}",
    );
    c += &service("ratings", "{address: 127.0.0.31}");
    c += &service("details", "{address: 127.0.0.41}");
    c += &service("flaky", "{address: 127.0.0.51}");
    c += &service("httpbin", "{address: 127.0.0.61}");
    c += &service("pool", "{address: 127.0.0.71}, {address: 127.0.0.72}");
    c += &service("sticky", "{address: 127.0.0.75}, {address: 127.0.0.76}");
    c += &service("cors", "{address: 127.0.0.77}");
    c += &format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: external}}
spec:
  hosts: [api.external.test]
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: 127.0.0.81}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: productpage-v1}}
spec: {{address: 127.0.0.10, labels: {{app: productpage}}, serviceAccount: envoy}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default}}
spec:
  egress:
  - port: {{number: {port}, protocol: HTTP, name: http}}
    bind: 127.0.0.1
    captureMode: NONE
    hosts: [\"./*\", \"*/api.external.test\"]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews}}
spec:
  host: reviews
  trafficPolicy: {{tls: {{mode: DISABLE}}}}
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews}}
spec:
  hosts: [reviews]
  http:
  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - route: [{{destination: {{host: reviews, subset: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: cors}}
spec:
  hosts: [cors]
  http:
  - route: [{{destination: {{host: cors}}}}]
    corsPolicy:
      allowOrigins: [{{exact: \"https://allowed.example\"}}, {{prefix: \"https://app.\"}}]
      allowMethods: [POST, GET]
      allowHeaders: [x-custom]
      maxAge: 24h
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: sticky}}
spec:
  host: sticky
  trafficPolicy:
    tls: {{mode: DISABLE}}
    loadBalancer: {{consistentHash: {{httpHeaderName: x-user}}}}
---
"
    );
    c += ISTIO_TASKS;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istios_traffic_management_tasks_on_envoy() {
    let port = REVIEWS_PORT + 10;
    let mesh = Mesh::start(
        &[
            ("tasks.yaml", tasks_config(port)),
            (
                "mesh.yaml",
                "outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n".to_string(),
            ),
        ],
        true,
        40_000,
    )
    .await;
    let _backends = [
        serve_backend("127.0.0.21", port, Behaviour::Ok("reviews-v1")).await,
        serve_backend("127.0.0.22", port, Behaviour::Ok("reviews-v2")).await,
        serve_backend("127.0.0.31", port, Behaviour::Ok("ratings")).await,
        serve_backend(
            "127.0.0.41",
            port,
            Behaviour::Slow("details", Duration::from_secs(3)),
        )
        .await,
        serve_backend("127.0.0.51", port, Behaviour::Flaky("flaky")).await,
        serve_backend(
            "127.0.0.61",
            port,
            Behaviour::Slow("httpbin", Duration::from_millis(300)),
        )
        .await,
        serve_backend("127.0.0.71", port, Behaviour::Broken).await,
        serve_backend("127.0.0.72", port, Behaviour::Ok("pool-healthy")).await,
        serve_backend("127.0.0.81", port, Behaviour::Ok("external")).await,
        serve_backend("127.0.0.75", port, Behaviour::Ok("sticky-a")).await,
        serve_backend("127.0.0.76", port, Behaviour::Ok("sticky-b")).await,
        serve_backend("127.0.0.77", port, Behaviour::Ok("cors")).await,
    ];
    let envoy_log = || mesh.envoy_log();
    let host = |name: &str| format!("{name}:{port}");
    eventually(Duration::from_secs(30), "Envoy configured", async || {
        (call(port, &host("reviews"), &[]).await.status == 200).then_some(())
    })
    .await;

    // Request routing by header: jason sees v2, everyone else v1.
    for _ in 0..20 {
        assert_eq!(
            call(port, &host("reviews"), &[("end-user", "jason")])
                .await
                .body,
            "reviews-v2"
        );
        assert_eq!(call(port, &host("reviews"), &[]).await.body, "reviews-v1");
    }
    // Fault injection: abort with 418 for every request, the backend never reached.
    let r = call(port, &host("ratings"), &[]).await;
    assert_eq!(r.status, 418, "{r:?}");
    // Request timeout: the 3 s backend is cut at 300 ms with 504.
    let started = std::time::Instant::now();
    let r = call(port, &host("details"), &[]).await;
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    // Retries: every other backend answer is 503; with retries on 5xx every request succeeds.
    for _ in 0..20 {
        let r = call(port, &host("flaky"), &[]).await;
        assert_eq!((r.status, r.body.as_str()), (200, "flaky"), "{r:?}");
    }
    // Circuit breaking (Istio's task): one connection, one pending request; concurrent callers
    // beyond that get 503 with x-envoy-overloaded.
    let calls: Vec<_> = (0..8)
        .map(|_| tokio::spawn(async move { call(port, &format!("httpbin:{port}"), &[]).await }))
        .collect();
    let mut ok = 0;
    let mut overloaded = 0;
    for c in calls {
        let r = c.await.unwrap();
        match r.status {
            200 => ok += 1,
            503 if r.head.contains("x-envoy-overloaded: true") => overloaded += 1,
            other => panic!("unexpected {other}: {r:?}"),
        }
    }
    assert!(
        ok >= 1 && overloaded >= 1,
        "{ok} ok, {overloaded} overloaded"
    );
    // Outlier detection: the endpoint that answers 500 is ejected after its first failure.
    let mut failures = 0;
    for _ in 0..4 {
        if call(port, &host("pool"), &[]).await.status != 200 {
            failures += 1;
        }
    }
    assert!(failures <= 1, "{failures} failures before ejection");
    for _ in 0..30 {
        let r = call(port, &host("pool"), &[]).await;
        assert_eq!((r.status, r.body.as_str()), (200, "pool-healthy"), "{r:?}");
    }
    // Consistent hashing on a header: each user always reaches the same backend, and the users
    // spread over both (20 users all on one of two backends: p = 2^-19).
    let mut seen = BTreeMap::new();
    for u in 0..20 {
        let user = format!("user-{u}");
        let bodies: BTreeSet<String> = bodies_for_user(port, &host("sticky"), &user).await;
        assert_eq!(bodies.len(), 1, "{user} reached {bodies:?}");
        *seen.entry(bodies.into_iter().next().unwrap()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 2, "users by backend: {seen:?}");

    // CORS: the sidecar answers an allowed origin's preflight itself, and marks responses to
    // allowed origins only.
    let preflight = |origin: &'static str| {
        let host = host("cors");
        async move {
            call_method(
                "OPTIONS",
                port,
                &host,
                &[
                    ("origin", origin),
                    ("access-control-request-method", "POST"),
                ],
            )
            .await
        }
    };
    let r = preflight("https://allowed.example").await;
    assert_eq!(r.status, 200, "{r:?}");
    for expected in [
        "access-control-allow-origin: https://allowed.example",
        "access-control-allow-methods: post,get",
        "access-control-allow-headers: x-custom",
        "access-control-max-age: 86400",
    ] {
        assert!(r.head.contains(expected), "{expected} in {r:?}");
    }
    assert_ne!(
        r.body, "cors",
        "a preflight is answered by the sidecar, not the app"
    );
    let r = call(port, &host("cors"), &[("origin", "https://app.example")]).await;
    assert_eq!(r.body, "cors");
    assert!(
        r.head
            .contains("access-control-allow-origin: https://app.example"),
        "{r:?}"
    );
    let r = call(port, &host("cors"), &[("origin", "https://evil.example")]).await;
    assert_eq!(r.body, "cors");
    assert!(!r.head.contains("access-control-allow-origin"), "{r:?}");

    // REGISTRY_ONLY: an unknown host is blocked (502), a MESH_EXTERNAL ServiceEntry reachable.
    let r = call(port, &format!("unknown.example.test:{port}"), &[]).await;
    assert_eq!(r.status, 502, "{r:?}");
    let r = call(port, &format!("api.external.test:{port}"), &[]).await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "external"),
        "{r:?}\n{}",
        envoy_log()
    );
}

/// What five requests as `user` got back.
async fn bodies_for_user(port: u16, host: &str, user: &str) -> BTreeSet<String> {
    let mut bodies = BTreeSet::new();
    for _ in 0..5 {
        let r = call(port, host, &[("x-user", user)]).await;
        assert_eq!(r.status, 200, "{r:?}");
        bodies.insert(r.body);
    }
    bodies
}

/// A TCP backend that answers each line with its version and the line.
async fn tcp_echo(ip: &str, port: u16, version: &'static str) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 256];
                if let Ok(n) = s.read(&mut buf).await {
                    let line = String::from_utf8_lossy(&buf[..n]).trim().to_string();
                    let _ = s.write_all(format!("{version} {line}\n").as_bytes()).await;
                }
            });
        }
    })
}

/// Istio's TCP traffic-shifting task (tcp-echo, 80/20), rootless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_traffic_shifts_by_weight() {
    let port = REVIEWS_PORT + 20;
    let config = format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: tcp-echo}}
spec:
  hosts: [tcp-echo.default.svc.cluster.local]
  ports: [{{number: {port}, name: tcp, protocol: TCP}}]
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints: [{{address: 127.0.0.91, labels: {{version: v1}}}}, {{address: 127.0.0.92, labels: {{version: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: productpage-v1}}
spec: {{address: 127.0.0.10, labels: {{app: productpage}}, serviceAccount: envoy}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: tcp-echo}}
spec:
  host: tcp-echo
  trafficPolicy: {{tls: {{mode: DISABLE}}}}
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tcp-echo}}
spec:
  hosts: [tcp-echo]
  tcp:
  - route:
    - {{destination: {{host: tcp-echo, subset: v1}}, weight: 80}}
    - {{destination: {{host: tcp-echo, subset: v2}}, weight: 20}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default}}
spec:
  egress:
  - port: {{number: {port}, protocol: TCP, name: tcp}}
    bind: 127.0.0.1
    captureMode: NONE
    hosts: [\"./*\"]
"
    );
    let mesh = Mesh::start(&[("tcp-echo.yaml", config)], true, 50_000).await;
    let _v1 = tcp_echo("127.0.0.91", port, "one").await;
    let _v2 = tcp_echo("127.0.0.92", port, "two").await;
    let echo = || async move {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(b"hello\n").await.ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        out.split_whitespace().next().map(str::to_string)
    };
    let started = std::time::Instant::now();
    while echo().await.is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            let dump = mesh.admin("/config_dump?resource=dynamic_listeners").await;
            panic!(
                "Envoy never carried tcp-echo:\n{}\n{dump}",
                mesh.envoy_log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..1000 {
        let version = echo().await.expect("every connection is answered");
        *counts.entry(version).or_insert(0) += 1;
    }
    eprintln!("tcp-echo 80/20: {counts:?}");
    let one = counts.get("one").copied().unwrap_or(0);
    // Binomial(1000, 0.8): sd ≈ 12.6; ±5 sd.
    assert!((737..=863).contains(&one), "80/20 gave {counts:?}");
}

/// A test CA, and certificates it signs, as PEM files in `dir`.
struct TestPki {
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    ca_pem: String,
    dir: std::path::PathBuf,
}

impl TestPki {
    fn new(dir: &Path) -> Self {
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "egress test CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let ca_pem = params.self_signed(&key).unwrap().pem();
        std::fs::write(dir.join("ca.pem"), &ca_pem).unwrap();
        Self {
            ca: rcgen::Issuer::new(params, key),
            ca_pem,
            dir: dir.to_path_buf(),
        }
    }

    /// A leaf for `dns_names`, written as NAME.pem and NAME.key; returns (cert, key) PEM.
    fn leaf(&self, name: &str, dns_names: &[&str]) -> (String, String) {
        let names: Vec<String> = dns_names.iter().map(|n| n.to_string()).collect();
        let params = rcgen::CertificateParams::new(names).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap().pem();
        std::fs::write(self.dir.join(format!("{name}.pem")), &cert).unwrap();
        std::fs::write(self.dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
        (cert, key.serialize_pem())
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }
}

/// An HTTPS server that answers with its name, the SNI it was asked for, and whether the
/// client presented a certificate; with `require_client_cert`, only to clients with one from
/// `pki`'s CA.
async fn tls_backend(
    ip: &str,
    port: u16,
    name: &'static str,
    pki: &TestPki,
    leaf: (String, String),
    require_client_cert: bool,
) -> tokio::task::JoinHandle<()> {
    use rustls_pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let certs = rustls_pki_types::CertificateDer::pem_slice_iter(leaf.0.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(leaf.1.as_bytes()).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let config = if require_client_cert {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    }
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(s).await else {
                    return;
                };
                let (_, conn) = tls.get_ref();
                let body = format!(
                    "{name} sni={} client-cert={}",
                    conn.server_name().unwrap_or("-"),
                    conn.peer_certificates().is_some_and(|c| !c.is_empty())
                );
                let mut buf = vec![0u8; 8192];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if tls.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    })
}

/// Istio's egress TLS origination task: the application speaks plain HTTP to an external
/// host, and its sidecar opens TLS as the DestinationRule says: SIMPLE (the server verified
/// against `caCertificates` and the host name) and MUTUAL (with a client certificate). A server
/// whose certificate names another host, and a server that requires a client certificate
/// when none is configured, are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_originate_tls_as_destination_rules_say() {
    let port = REVIEWS_PORT + 200;
    let certs = tempfile::tempdir().unwrap();
    let pki = TestPki::new(certs.path());
    let secure = pki.leaf("secure", &["secure.example"]);
    let mutual = pki.leaf("mutual", &["mutual.example"]);
    pki.leaf("client", &["client.example"]);
    let tls_port = port + 1;
    let a = pki.leaf("a", &["a.example", "b.example"]);
    let b = pki.leaf("b", &["b.example"]);
    let external = |name: &str, address: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{name}.example]
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: {address}}}]
---
"
        )
    };
    let rule = |name: &str, tls: &str| {
        format!(
            "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}}}
spec:
  host: {name}.example
  trafficPolicy:
    tls: {tls}
---
"
        )
    };
    let ca = pki.path("ca.pem");
    let mut config = String::new();
    config += &external("secure", "127.0.0.91");
    config += &rule("secure", &format!("{{mode: SIMPLE, caCertificates: {ca}}}"));
    config += &external("mutual", "127.0.0.92");
    config += &rule(
        "mutual",
        &format!(
            "{{mode: MUTUAL, caCertificates: {ca}, clientCertificate: {}, privateKey: {}}}",
            pki.path("client.pem"),
            pki.path("client.key")
        ),
    );
    // The secure server's certificate does not name this host.
    config += &external("impostor", "127.0.0.91");
    config += &rule(
        "impostor",
        &format!("{{mode: SIMPLE, caCertificates: {ca}}}"),
    );
    // The mutual server, without a client certificate.
    config += &external("anonymous", "127.0.0.92");
    config += &rule(
        "anonymous",
        &format!(
            "{{mode: SIMPLE, caCertificates: {ca}, sni: mutual.example, subjectAltNames: [mutual.example]}}"
        ),
    );
    // TLS the application opens itself passes through, routed by SNI; a VirtualService sends
    // b.example's SNI to a.example's server.
    for (name, address) in [("a", "127.0.0.93"), ("b", "127.0.0.94")] {
        config += &format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: tls-{name}}}
spec:
  hosts: [{name}.example]
  ports: [{{number: {tls_port}, name: tls, protocol: TLS}}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: {address}}}]
---
"
        );
    }
    config += "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: b-to-a}
spec:
  hosts: [b.example]
  tls:
  - match: [{sniHosts: [b.example]}]
    route: [{destination: {host: a.example}}]
---
";
    config += &format!(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: productpage-v1}}
spec: {{address: 127.0.0.10, labels: {{app: productpage}}, serviceAccount: envoy}}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {{name: default}}
spec:
  egress:
  - port: {{number: {port}, protocol: HTTP, name: http}}
    bind: 127.0.0.1
    captureMode: NONE
    hosts: [\"./*\"]
  - port: {{number: {tls_port}, protocol: TLS, name: tls}}
    bind: 127.0.0.1
    captureMode: NONE
    hosts: [\"./*\"]
"
    );
    let _secure = tls_backend("127.0.0.91", port, "secure", &pki, secure, false).await;
    let _mutual = tls_backend("127.0.0.92", port, "mutual", &pki, mutual, true).await;
    let _a = tls_backend("127.0.0.93", tls_port, "a", &pki, a, false).await;
    let _b = tls_backend("127.0.0.94", tls_port, "b", &pki, b, false).await;
    let mesh = Mesh::start(&[("egress.yaml", config)], false, 50_000).await;

    let reply = eventually(
        Duration::from_secs(30),
        "TLS origination to secure.example",
        async || {
            let r = call(port, "secure.example", &[]).await;
            (r.status == 200).then_some(r)
        },
    )
    .await;
    assert_eq!(reply.body, "secure sni=secure.example client-cert=false");
    let reply = call(port, "mutual.example", &[]).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "mutual sni=mutual.example client-cert=true"),
        "{}",
        mesh.envoy_log()
    );
    for refused in ["impostor.example", "anonymous.example"] {
        let reply = call(port, refused, &[]).await;
        assert_eq!(reply.status, 503, "{refused}: {reply:?}");
    }
    for (sni, answer) in [
        ("a.example", "a sni=a.example client-cert=false"),
        ("b.example", "a sni=b.example client-cert=false"),
    ] {
        let body = tls_get(tls_port, sni, &pki).await;
        assert_eq!(body.as_deref(), Ok(answer), "SNI {sni}");
    }
    assert!(
        tls_get(tls_port, "nowhere.example", &pki).await.is_err(),
        "an SNI no service or route names goes nowhere"
    );
    let stats = mesh.admin("/stats?filter=ssl.fail_verify_san").await;
    assert!(
        stats
            .lines()
            .any(|l| l.contains("impostor.example") && !l.ends_with(": 0")),
        "the impostor was refused for its SAN:\n{stats}"
    );
}

/// An HTTPS request the application makes itself, through the sidecar's TLS listener on
/// `port`, with `sni`, verifying the server against `pki`'s CA; the answer's body.
async fn tls_get(port: u16, sni: &str, pki: &TestPki) -> Result<String, String> {
    tokio::time::timeout(Duration::from_secs(10), tls_get_once(port, sni, pki))
        .await
        .map_err(|_| format!("no answer for SNI {sni} within 10 s"))?
}

async fn tls_get_once(port: u16, sni: &str, pki: &TestPki) -> Result<String, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    // The backend keeps the connection open: read one response, by its content-length.
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&out).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| format!("no content-length: {head:?}"))?;
            if body.len() >= len {
                return Ok(body[..len].to_string());
            }
        }
        let n = tls.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!("closed after {:?}", String::from_utf8_lossy(&out)));
        }
        out.extend_from_slice(&buf[..n]);
    }
}
