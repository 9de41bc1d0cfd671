//! ADS scale benchmark: the citadel binary serving a mesh of `SERVICES` ServiceEntries with
//! `ENDPOINTS` endpoints each to `CLIENTS` simulated sidecars (the `sds` client half, each on its
//! own mTLS connection, ACKing as Envoy does). Reports the time to the first full push to every
//! client, the p99 time for one endpoint change to reach every client, the time for a
//! VirtualService change to reach all clients, citadel's CPU per full push and its RSS.
//!
//! Run: `bench/ads.sh` (or `cargo bench -p citadel --bench ads_scale`). Environment: `SERVICES`
//! (1000), `ENDPOINTS` (10), `CLIENTS` (100), `CHANGES` endpoint changes measured (5).
use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use citadel_api::admin::admin_client::AdminClient;
use citadel_api::admin::{CreateEntryRequest, CreateJoinTokenRequest};
use citadel_api::ca::node_ca_client::NodeCaClient;
use citadel_api::ca::{AttestNodeRequest, CsrRequest};
use citadel_api::channel::{citadel_client_config, tls_channel, uds_channel};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use pki::identity::parse_spiffe_id;
use pki::tls::{SwappableCert, certified_key};
use pki::verify::SharedBundles;
use pki::{KeyAlgorithm, PrivateKey, SystemClock, TrustBundle, X509Svid, build_csr};
use sds::client::SotwClient;
use sds::types::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use testkit::bench::{cpu_seconds, env_or, percentile, rss_mb};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

const PORT: u32 = 8080;

/// The mesh: services `svc-I.bench.svc.cluster.local`, endpoints on 198.18.0.0/15; `moved`
/// shifts the first endpoint of service 0 (an endpoint change), `timeout` is the one
/// VirtualService's timeout (a route change).
fn mesh(services: usize, endpoints: usize, moved: usize, timeout_ms: u64) -> String {
    let mut out = String::new();
    for s in 0..services {
        let eps: Vec<String> = (0..endpoints)
            .map(|e| {
                let n = s * endpoints + e + if s == 0 && e == 0 { moved * 50_000 } else { 0 };
                format!("{{address: 198.18.{}.{}}}", (n / 250) % 250, n % 250 + 1)
            })
            .collect();
        out += &format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc-{s}, namespace: bench}}\nspec:\n  hosts: [svc-{s}.bench.svc.cluster.local]\n  ports: [{{number: {PORT}, name: http, protocol: HTTP}}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  endpoints: [{}]\n---\n",
            eps.join(", ")
        );
    }
    out += &format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: svc-0, namespace: bench}}\nspec:\n  hosts: [svc-0]\n  http:\n  - timeout: {timeout_ms}ms\n    route: [{{destination: {{host: svc-0}}}}]\n"
    );
    out
}

fn start_citadel(dir: &Path, config: &Path) -> (Child, String) {
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
        .args(["--max-concurrent-handshakes", "1024", "--config-dir"])
        .arg(config)
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

/// A workload SVID for the simulated sidecars (`spiffe://cluster.local/ns/bench/sa/client`).
async fn client_svid(dir: &Path, grpc: &str, bundle: &TrustBundle) -> X509Svid {
    let mut admin = AdminClient::new(uds_channel(dir.join("admin.sock")).unwrap());
    let id = "spiffe://cluster.local/ns/bench/sa/client";
    admin
        .create_entry(CreateEntryRequest {
            spiffe_id: id.into(),
            node: "n1".into(),
            selectors: vec!["unix:uid:1000".into()],
            ttl_seconds: 3600,
        })
        .await
        .unwrap();
    let token = admin
        .create_join_token(CreateJoinTokenRequest {
            node: "n1".into(),
            ttl_seconds: 600,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    let td = bundle.trust_domain().clone();
    let bundles = Arc::new(SharedBundles::new([bundle.clone()]));
    let anon =
        citadel_client_config(bundles.clone(), td.clone(), None, Arc::new(SystemClock)).unwrap();
    let node_key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let node_id = parse_spiffe_id("spiffe://cluster.local/citadel/node/n1").unwrap();
    let resp = NodeCaClient::new(tls_channel(grpc, Arc::new(anon)).unwrap())
        .attest_node(AttestNodeRequest {
            csr: build_csr(&node_key, &node_id).unwrap(),
            join_token: token,
        })
        .await
        .unwrap()
        .into_inner();
    let chain = resp.cert_chain.into_iter().map(Into::into).collect();
    let node = X509Svid::from_chain(chain)
        .unwrap()
        .with_key(node_key)
        .unwrap();
    let cert = Arc::new(SwappableCert::new(certified_key(&node).unwrap()));
    let cfg = citadel_client_config(bundles, td, Some(cert), Arc::new(SystemClock)).unwrap();
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let resp = NodeCaClient::new(tls_channel(grpc, Arc::new(cfg)).unwrap())
        .mint_x509_svid(CsrRequest {
            csr: build_csr(&key, &parse_spiffe_id(id).unwrap()).unwrap(),
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let chain = resp.cert_chain.into_iter().map(Into::into).collect();
    X509Svid::from_chain(chain).unwrap().with_key(key).unwrap()
}

/// What a simulated sidecar reports: it has everything (first full push), or it received a
/// response of a type carrying a given marker.
#[derive(Debug)]
enum Event {
    Full(usize, Instant),
    Received {
        client: usize,
        type_url: String,
        names: Vec<String>,
        at: Instant,
    },
}

fn node(i: usize) -> Node {
    let s = |v: &str| Value {
        kind: Some(Kind::StringValue(v.into())),
    };
    Node {
        id: format!(
            "sidecar~198.19.{}.{}~pod-{i}.bench~bench.svc.cluster.local",
            i / 250,
            i % 250 + 1
        ),
        cluster: "bench".into(),
        metadata: Some(Struct {
            fields: [
                ("NAMESPACE".to_string(), s("bench")),
                ("SERVICE_ACCOUNT".to_string(), s("client")),
            ]
            .into(),
        }),
        ..Default::default()
    }
}

/// One simulated Envoy: CDS and LDS by wildcard, then EDS for every cluster and RDS for the port.
async fn sidecar(
    i: usize,
    grpc: String,
    cfg: Arc<rustls::ClientConfig>,
    services: usize,
    events: mpsc::UnboundedSender<Event>,
) {
    let mut client = SotwClient::new(node(i));
    let (tx, rx) = mpsc::channel(64);
    tx.send(client.subscribe(CLUSTER, &[])).await.unwrap();
    tx.send(client.subscribe(LISTENER, &[])).await.unwrap();
    let mut ads = AggregatedDiscoveryServiceClient::new(tls_channel(&grpc, cfg).unwrap())
        .max_decoding_message_size(256 << 20);
    let mut stream = ads
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut eds_asked = false;
    let mut full = false;
    while let Some(Ok(resp)) = stream.next().await {
        let at = Instant::now();
        let (ack, update) = client.handle_response(&resp, |_, _| Ok(()));
        let update = update.unwrap();
        tx.send(ack).await.unwrap();
        if resp.type_url == CLUSTER && !eds_asked {
            eds_asked = true;
            let names: Vec<String> = client
                .resources(CLUSTER)
                .unwrap()
                .keys()
                .filter(|n| n.starts_with("outbound|"))
                .cloned()
                .collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            tx.send(client.subscribe(ENDPOINT, &refs)).await.unwrap();
            tx.send(client.subscribe(ROUTE, &[&PORT.to_string()]))
                .await
                .unwrap();
        }
        if !full
            && client
                .resources(ENDPOINT)
                .is_some_and(|e| e.len() >= services)
            && client.resources(ROUTE).is_some_and(|r| !r.is_empty())
        {
            full = true;
            let _ = events.send(Event::Full(i, at));
        }
        let names = update.upserted.into_iter().map(|(n, _)| n).collect();
        let _ = events.send(Event::Received {
            client: i,
            type_url: resp.type_url,
            names,
            at,
        });
    }
}

/// Waits until every client has received a response of `type_url` naming `name`; returns each
/// client's delay from `since`.
async fn until_all(
    events: &mut mpsc::UnboundedReceiver<Event>,
    clients: usize,
    type_url: &str,
    name: &str,
    since: Instant,
) -> Vec<Duration> {
    let mut done = BTreeSet::new();
    let mut delays = Vec::new();
    while done.len() < clients {
        match tokio::time::timeout(Duration::from_secs(120), events.recv())
            .await
            .expect("clients stalled")
            .unwrap()
        {
            Event::Received {
                client,
                type_url: t,
                names,
                at,
            } if t == type_url && names.iter().any(|n| n == name) && done.insert(client) => {
                delays.push(at.duration_since(since));
            }
            _ => {}
        }
    }
    delays.sort();
    delays
}

#[tokio::main]
async fn main() {
    let services = env_or("SERVICES", 1000);
    let endpoints = env_or("ENDPOINTS", 10);
    let clients = env_or("CLIENTS", 100);
    let changes = env_or("CHANGES", 5);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mesh");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(
        config.join("services.yaml"),
        mesh(services, endpoints, 0, 1000),
    )
    .unwrap();
    let data = dir.path().join("data");
    let (mut child, grpc) = start_citadel(&data, &config);
    let pid = child.id();
    let bundle = TrustBundle::from_pem(
        pki::identity::parse_trust_domain("cluster.local").unwrap(),
        &std::fs::read_to_string(data.join("ca/root-cert.pem")).unwrap(),
    )
    .unwrap();
    let svid = client_svid(&data, &grpc, &bundle).await;
    let cert = Arc::new(SwappableCert::new(certified_key(&svid).unwrap()));
    let bundles = Arc::new(SharedBundles::new([bundle.clone()]));
    let cfg = Arc::new(
        citadel_client_config(
            bundles,
            bundle.trust_domain().clone(),
            Some(cert),
            Arc::new(SystemClock),
        )
        .unwrap(),
    );
    println!(
        "ADS scale: {services} services x {endpoints} endpoints, {clients} state-of-the-world clients, 2 CPUs"
    );
    println!("citadel rss before clients: {:.1} MB", rss_mb(pid));

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    for i in 0..clients {
        tokio::spawn(sidecar(
            i,
            grpc.clone(),
            cfg.clone(),
            services,
            events_tx.clone(),
        ));
    }
    let mut full = BTreeSet::new();
    let mut last = started;
    while full.len() < clients {
        match tokio::time::timeout(Duration::from_secs(300), events.recv())
            .await
            .expect("clients stalled")
            .unwrap()
        {
            Event::Full(i, at) => {
                full.insert(i);
                last = last.max(at);
            }
            Event::Received { .. } => {}
        }
    }
    let first_push = last.duration_since(started);
    // Let the last ACKs land before reading CPU.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu_full = cpu_seconds(pid) - cpu_before;
    println!(
        "first full push to all {clients} clients: {:.3} s; citadel CPU {:.2} s = {:.1} ms per client",
        first_push.as_secs_f64(),
        cpu_full,
        cpu_full * 1000.0 / clients as f64
    );
    println!("citadel rss with clients: {:.1} MB", rss_mb(pid));

    // Endpoint changes: one endpoint of svc-0 moves; every client must get its EDS.
    let eds_name = format!("outbound|{PORT}||svc-0.bench.svc.cluster.local");
    let mut all = Vec::new();
    for c in 1..=changes {
        let t0 = Instant::now();
        std::fs::write(
            config.join("services.yaml"),
            mesh(services, endpoints, c, 1000),
        )
        .unwrap();
        let delays = until_all(&mut events, clients, ENDPOINT, &eds_name, t0).await;
        all.extend(delays);
        tokio::time::sleep(Duration::from_millis(300)).await;
        while events.try_recv().is_ok() {}
    }
    all.sort();
    println!(
        "endpoint change -> every client ({changes} changes x {clients}): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (from the file write: includes the 25 ms debounce and the reload)",
        percentile(&all, 0.5).as_secs_f64() * 1e3,
        percentile(&all, 0.99).as_secs_f64() * 1e3,
        all.last().unwrap().as_secs_f64() * 1e3
    );

    // A VirtualService change: a new route timeout reaches every client over RDS.
    let t0 = Instant::now();
    std::fs::write(
        config.join("services.yaml"),
        mesh(services, endpoints, changes, 2000),
    )
    .unwrap();
    let delays = until_all(&mut events, clients, ROUTE, &PORT.to_string(), t0).await;
    println!(
        "VirtualService change -> all clients: {:.1} ms (p50 {:.1} ms)",
        delays.last().unwrap().as_secs_f64() * 1e3,
        percentile(&delays, 0.5).as_secs_f64() * 1e3
    );
    println!("citadel rss at end: {:.1} MB", rss_mb(pid));
    let _ = child.kill();
    let _ = child.wait();
}
