//! Registry scale benchmark: the citadel binary with up to 100,000 entries over 1,000 nodes.
//! Reports `CreateEntry` latency through the admin API (p50/p99 of single creates at 1k, 10k
//! and 100k entries; bulk `CreateEntries` fills the gaps), citadel's RSS, and how long 1,000
//! agents' `WatchEntries` streams (simulated here, one mTLS connection each) take to receive a
//! burst of 1,000 entry changes, one per node, each reaching only its node.
//!
//! Run: `bench/registry.sh` (or `cargo bench -p citadel --bench registry_scale`). Environment:
//! `ENTRIES` (100000), `NODES` (1000), `SAMPLE` single creates per checkpoint (1000).
use std::collections::HashMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use citadel_api::admin::admin_client::AdminClient;
use citadel_api::admin::{CreateEntriesRequest, CreateEntryRequest, CreateJoinTokenRequest};
use citadel_api::ca::node_ca_client::NodeCaClient;
use citadel_api::ca::{AttestNodeRequest, WatchEntriesRequest};
use citadel_api::channel::{citadel_client_config, tls_channel, uds_channel};
use pki::identity::{parse_spiffe_id, parse_trust_domain};
use pki::tls::{SwappableCert, certified_key};
use pki::verify::SharedBundles;
use pki::{KeyAlgorithm, PrivateKey, SystemClock, TrustBundle, X509Svid, build_csr};
use testkit::bench::{cpu_seconds, env_or, percentile, rss_mb};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

fn spec(i: usize, nodes: usize) -> CreateEntryRequest {
    CreateEntryRequest {
        spiffe_id: format!("spiffe://cluster.local/ns/ns{}/sa/sa{i}", i % 97),
        node: format!("node-{}", i % nodes),
        selectors: vec![format!("unix:uid:{}", 1000 + i % 5000)],
        ttl_seconds: 3600,
    }
}

fn start_citadel(dir: &Path) -> (Child, String) {
    let endpoints = dir.join("endpoints.json");
    let child = Command::new(env!("CARGO_BIN_EXE_citadel"))
        .arg("--data-dir")
        .arg(dir)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--monitoring",
            "127.0.0.1:0",
        ])
        .args(["--max-concurrent-handshakes", "1024"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn citadel");
    while !endpoints.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&endpoints).unwrap()).unwrap();
    (child, v["grpc"].as_str().unwrap().to_string())
}

async fn attest(
    admin: &mut AdminClient<Channel>,
    grpc: &str,
    bundle: &TrustBundle,
    node: &str,
) -> NodeCaClient<Channel> {
    let td = bundle.trust_domain().clone();
    let token = admin
        .create_join_token(CreateJoinTokenRequest {
            node: node.into(),
            ttl_seconds: 600,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let id = parse_spiffe_id(&format!("spiffe://cluster.local/citadel/node/{node}")).unwrap();
    let bundles = Arc::new(SharedBundles::new([bundle.clone()]));
    let anon =
        citadel_client_config(bundles.clone(), td.clone(), None, Arc::new(SystemClock)).unwrap();
    let resp = NodeCaClient::new(tls_channel(grpc, Arc::new(anon)).unwrap())
        .attest_node(AttestNodeRequest {
            csr: build_csr(&key, &id).unwrap(),
            join_token: token,
        })
        .await
        .unwrap()
        .into_inner();
    let chain = resp.cert_chain.into_iter().map(Into::into).collect();
    let svid = X509Svid::from_chain(chain).unwrap().with_key(key).unwrap();
    let cert = Arc::new(SwappableCert::new(certified_key(&svid).unwrap()));
    let cfg = citadel_client_config(bundles, td, Some(cert), Arc::new(SystemClock)).unwrap();
    NodeCaClient::new(tls_channel(grpc, Arc::new(cfg)).unwrap())
}

#[tokio::main]
async fn main() {
    let total = env_or("ENTRIES", 100_000);
    let nodes = env_or("NODES", 1000);
    let sample = env_or("SAMPLE", 1000);
    // BENCH_DIR=/dev/shm takes the disk's fsync out of the figures (the registry's own cost).
    let dir = match std::env::var_os("BENCH_DIR") {
        Some(parent) => tempfile::tempdir_in(parent).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    println!("data directory: {}", dir.path().display());
    let (mut child, grpc) = start_citadel(dir.path());
    let pid = child.id();
    let mut admin = AdminClient::new(uds_channel(dir.path().join("admin.sock")).unwrap());
    println!(
        "registry scale: {total} entries over {nodes} nodes, {sample} single creates per checkpoint"
    );
    println!("rss at start: {:.1} MB", rss_mb(pid));

    let mut created = 0;
    for checkpoint in [1_000, 10_000, 100_000].into_iter().filter(|c| *c <= total) {
        // Bulk-fill up to just below the checkpoint, then time single creates up to it.
        let fill_to = checkpoint - sample.min(checkpoint);
        while created < fill_to {
            let n = (fill_to - created).min(2000);
            let entries = (created..created + n).map(|i| spec(i, nodes)).collect();
            admin
                .create_entries(CreateEntriesRequest { entries })
                .await
                .unwrap();
            created += n;
        }
        let mut lat = Vec::with_capacity(sample);
        let cpu0 = cpu_seconds(pid);
        while created < checkpoint {
            let req = spec(created, nodes);
            let t = Instant::now();
            admin.create_entry(req).await.unwrap();
            lat.push(t.elapsed());
            created += 1;
        }
        let cpu_per_create = (cpu_seconds(pid) - cpu0) / lat.len() as f64;
        lat.sort();
        println!(
            "create at {checkpoint:>6} entries: p50 {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms   citadel CPU {:>6.1} µs/create   rss {:.1} MB",
            percentile(&lat, 0.5).as_secs_f64() * 1e3,
            percentile(&lat, 0.99).as_secs_f64() * 1e3,
            lat.last().unwrap().as_secs_f64() * 1e3,
            cpu_per_create * 1e6,
            rss_mb(pid)
        );
    }
    let db = dir.path().join("state/citadel.db");
    let db_mb = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0) as f64 / 1e6;
    println!("database: {db_mb:.1} MB");

    // 1,000 agents watching; then one change per node.
    let bundle = TrustBundle::from_pem(
        parse_trust_domain("cluster.local").unwrap(),
        &std::fs::read_to_string(dir.path().join("ca/root-cert.pem")).unwrap(),
    )
    .unwrap();
    let watchers = nodes;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant, Vec<String>)>();
    let mut tasks = Vec::new();
    let t_attest = Instant::now();
    for n in 0..watchers {
        let node = format!("node-{n}");
        let mut client = attest(&mut admin, &grpc, &bundle, &node).await;
        let mut stream = client
            .watch_entries(WatchEntriesRequest::default())
            .await
            .unwrap()
            .into_inner();
        let first = stream.next().await.unwrap().unwrap();
        assert!(first.full);
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            let _client = client;
            while let Some(Ok(msg)) = stream.next().await {
                let nodes_seen = msg.entries.iter().map(|e| e.node.clone()).collect();
                let _ = tx.send((n, Instant::now(), nodes_seen));
            }
        }));
    }
    println!(
        "{watchers} watch streams open in {:.1} s; citadel rss {:.1} MB",
        t_attest.elapsed().as_secs_f64(),
        rss_mb(pid)
    );
    let burst_start = Instant::now();
    for n in 0..watchers {
        let mut req = spec(created + n, nodes);
        req.node = format!("node-{n}");
        admin.create_entry(req).await.unwrap();
    }
    let burst_written = burst_start.elapsed();
    let mut received = HashMap::new();
    let mut misrouted = 0;
    while received.len() < watchers {
        let (n, at, seen) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("a watcher never got its change")
            .unwrap();
        misrouted += seen.iter().filter(|s| **s != format!("node-{n}")).count();
        received.entry(n).or_insert(at);
    }
    let last = received.values().max().unwrap().duration_since(burst_start);
    println!(
        "burst of {watchers} changes (one per node): written in {:.2} s, all {watchers} streams had theirs after {:.2} s; misrouted entries: {misrouted}",
        burst_written.as_secs_f64(),
        last.as_secs_f64()
    );
    println!("citadel rss at end: {:.1} MB", rss_mb(pid));
    for t in tasks {
        t.abort();
    }
    let _ = child.kill();
    let _ = child.wait();
}
