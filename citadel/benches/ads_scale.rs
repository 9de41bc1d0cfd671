//! ADS scale benchmark: the citadel binary serving a mesh of `SERVICES` ServiceEntries with
//! `ENDPOINTS` endpoints each to `CLIENTS` simulated sidecars (the `sds` client half, each on its
//! own mTLS connection, state of the world or delta, ACKing as Envoy does). Reports the time to
//! the first full push to every client, the p99 time for one endpoint change to reach every
//! client, the time for a VirtualService change to reach all clients, the server's CPU per
//! full push and its RSS. In the same run and with the same clients: go-control-plane (the
//! reference xDS server, `bench/go-control-plane`) serving exactly the resources citadel
//! served, and the encode floor (each client's resources encoded with prost and written to a
//! socket, in this process).
//!
//! Run: `bench/ads.sh` (or `cargo bench -p citadel --bench ads_scale`). Environment: `SERVICES`
//! (1000), `ENDPOINTS` (10), `CLIENTS` (100), `CHANGES` endpoint changes measured (5),
//! `FLAVOUR` (`sotw` or `delta`), `GO_CONTROL_PLANE` (the anchor's binary; `bench/ads.sh`
//! builds it; unset: no anchor).
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
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
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use pki::identity::parse_spiffe_id;
use pki::tls::{SwappableCert, certified_key};
use pki::verify::SharedBundles;
use pki::{KeyAlgorithm, PrivateKey, SystemClock, TrustBundle, X509Svid, build_csr};
use prost::Message;
use sds::client::{DeltaClient, SotwClient};
use sds::types::{CLUSTER, ENDPOINT, LISTENER, ROUTE};
use testkit::bench::{cpu_seconds, env_or, percentile, rss_mb};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

const PORT: u32 = 8080;

/// The mesh, one manifest per object as operators keep them: services
/// `svc-I.bench.svc.cluster.local` (`svc-I.yaml`) with endpoints on 198.18.0.0/15, and one
/// VirtualService (`vs.yaml`). `moved` shifts the first endpoint of service 0 (an endpoint
/// change), `timeout_ms` is the VirtualService's route timeout (a route change).
fn service_yaml(s: usize, endpoints: usize, moved: usize) -> String {
    let eps: Vec<String> = (0..endpoints)
        .map(|e| {
            let n = s * endpoints + e + if s == 0 && e == 0 { moved * 50_000 } else { 0 };
            format!("{{address: 198.18.{}.{}}}", (n / 250) % 250, n % 250 + 1)
        })
        .collect();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc-{s}, namespace: bench}}\nspec:\n  hosts: [svc-{s}.bench.svc.cluster.local]\n  ports: [{{number: {PORT}, name: http, protocol: HTTP}}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  endpoints: [{}]\n",
        eps.join(", ")
    )
}

fn vs_yaml(timeout_ms: u64) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: svc-0, namespace: bench}}\nspec:\n  hosts: [svc-0]\n  http:\n  - timeout: {timeout_ms}ms\n    route: [{{destination: {{host: svc-0}}}}]\n"
    )
}

fn write_mesh(dir: &Path, services: usize, endpoints: usize) {
    for s in 0..services {
        std::fs::write(
            dir.join(format!("svc-{s}.yaml")),
            service_yaml(s, endpoints, 0),
        )
        .unwrap();
    }
    std::fs::write(dir.join("vs.yaml"), vs_yaml(1000)).unwrap();
}

fn start_citadel(dir: &Path, config: &Path) -> (Child, String) {
    let endpoints = dir.join("endpoints.json");
    // CITADEL_WRAPPER (e.g. "heaptrack -o FILE") runs citadel under a profiler.
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
        .args(["--max-concurrent-handshakes", "1024", "--config-dir"])
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("CITADEL_LOG").unwrap_or_else(|_| "warn".into()),
        )
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
/// response of a type naming some resources.
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

#[derive(Debug, Clone, Copy, PartialEq)]
enum Flavour {
    Sotw,
    Delta,
}

/// A client's resources by type URL.
type Held = BTreeMap<String, Vec<Any>>;
/// Where a sidecar's resources go when the benchmark asks for them (the dump the anchor serves).
type DumpRequest = tokio::sync::oneshot::Sender<Held>;
/// What keeps the dump of each step.
type DumpSink<'a> = Option<&'a mut dyn FnMut(usize, Held)>;

/// What every simulated sidecar shares.
#[derive(Clone)]
struct Sidecars {
    addr: String,
    cfg: Arc<rustls::ClientConfig>,
    services: usize,
    flavour: Flavour,
    events: mpsc::UnboundedSender<Event>,
}

/// The clusters a client holds that have endpoints to ask for.
fn eds_names<'a>(clusters: impl Iterator<Item = &'a String>) -> Vec<String> {
    clusters
        .filter(|n| n.starts_with("outbound|"))
        .cloned()
        .collect()
}

impl Sidecars {
    fn report(&self, i: usize, type_url: String, names: Vec<String>, at: Instant) {
        let _ = self.events.send(Event::Received {
            client: i,
            type_url,
            names,
            at,
        });
    }

    /// One simulated Envoy over state of the world: CDS and LDS by wildcard, then EDS for every
    /// cluster and RDS for the port.
    async fn sotw(self, i: usize, mut dumps: mpsc::Receiver<DumpRequest>) {
        let mut client = SotwClient::new(node(i));
        let (tx, rx) = mpsc::channel::<DiscoveryRequest>(64);
        tx.send(client.subscribe(CLUSTER, &[])).await.unwrap();
        tx.send(client.subscribe(LISTENER, &[])).await.unwrap();
        let mut ads = AggregatedDiscoveryServiceClient::new(
            tls_channel(&self.addr, self.cfg.clone()).unwrap(),
        )
        .max_decoding_message_size(256 << 20);
        let mut stream = ads
            .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let (mut eds_asked, mut full) = (false, false);
        loop {
            let resp = tokio::select! {
                r = stream.next() => match r { Some(Ok(r)) => r, _ => return },
                Some(d) = dumps.recv() => {
                    let all = [CLUSTER, ENDPOINT, LISTENER, ROUTE].into_iter().map(|t| {
                        let v = client.resources(t).map(|m| m.values().cloned().collect()).unwrap_or_default();
                        (t.to_string(), v)
                    });
                    let _ = d.send(all.collect());
                    continue;
                }
            };
            let at = Instant::now();
            let (ack, update) = client.handle_response(&resp, |_, _| Ok(()));
            let update = update.unwrap();
            tx.send(ack).await.unwrap();
            if resp.type_url == CLUSTER && !eds_asked {
                eds_asked = true;
                let names = eds_names(client.resources(CLUSTER).unwrap().keys());
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                tx.send(client.subscribe(ENDPOINT, &refs)).await.unwrap();
                tx.send(client.subscribe(ROUTE, &[&PORT.to_string()]))
                    .await
                    .unwrap();
            }
            if !full
                && client
                    .resources(ENDPOINT)
                    .is_some_and(|e| e.len() >= self.services)
                && client.resources(ROUTE).is_some_and(|r| !r.is_empty())
            {
                full = true;
                let _ = self.events.send(Event::Full(i, at));
            }
            let names = update.upserted.into_iter().map(|(n, _)| n).collect();
            self.report(i, resp.type_url, names, at);
        }
    }

    /// The same over the incremental protocol.
    async fn delta(self, i: usize, mut dumps: mpsc::Receiver<DumpRequest>) {
        let mut client = DeltaClient::new(node(i));
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(64);
        tx.send(client.subscribe(CLUSTER, &[], &[])).await.unwrap();
        tx.send(client.subscribe(LISTENER, &[], &[])).await.unwrap();
        let mut ads = AggregatedDiscoveryServiceClient::new(
            tls_channel(&self.addr, self.cfg.clone()).unwrap(),
        )
        .max_decoding_message_size(256 << 20);
        let mut stream = ads
            .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let (mut eds_asked, mut full) = (false, false);
        loop {
            let resp = tokio::select! {
                r = stream.next() => match r { Some(Ok(r)) => r, _ => return },
                Some(d) = dumps.recv() => {
                    let all = [CLUSTER, ENDPOINT, LISTENER, ROUTE]
                        .into_iter()
                        .map(|t| (t.to_string(), client.resources(t).into_values().collect()));
                    let _ = d.send(all.collect());
                    continue;
                }
            };
            let at = Instant::now();
            let (ack, update) = client.handle_response(&resp, |_, _| Ok(()));
            let update = update.unwrap();
            tx.send(ack).await.unwrap();
            if resp.type_url == CLUSTER && !eds_asked {
                eds_asked = true;
                let names = eds_names(client.resources(CLUSTER).keys());
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                tx.send(client.subscribe(ENDPOINT, &refs, &[]))
                    .await
                    .unwrap();
                tx.send(client.subscribe(ROUTE, &[&PORT.to_string()], &[]))
                    .await
                    .unwrap();
            }
            if !full
                && client.resources(ENDPOINT).len() >= self.services
                && !client.resources(ROUTE).is_empty()
            {
                full = true;
                let _ = self.events.send(Event::Full(i, at));
            }
            let names = update.upserted.into_iter().map(|(n, _)| n).collect();
            self.report(i, resp.type_url, names, at);
        }
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
        match tokio::time::timeout(Duration::from_secs(300), events.recv())
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

/// A change the benchmark makes to the mesh, by the server's own means.
trait Server {
    fn pid(&self) -> u32;
    /// Moves one endpoint of svc-0 (change `c`), or with `c == 0` changes svc-0's route timeout.
    fn change(&mut self, c: usize);
}

struct Citadel {
    child: Child,
    config: PathBuf,
    endpoints: usize,
}

impl Server for Citadel {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn change(&mut self, c: usize) {
        let (file, text) = match c {
            0 => ("vs.yaml".to_string(), vs_yaml(2000)),
            c => ("svc-0.yaml".to_string(), service_yaml(0, self.endpoints, c)),
        };
        std::fs::write(self.config.join(file), text).unwrap();
    }
}

struct GoControlPlane {
    child: Child,
    /// The dump for each change (index 0: the route change).
    dumps: BTreeMap<usize, PathBuf>,
}

impl Server for GoControlPlane {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn change(&mut self, c: usize) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{}", self.dumps[&c].display()).unwrap();
    }
}

impl Drop for Citadel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GoControlPlane {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One server's figures.
#[derive(Debug, Default)]
struct Report {
    first_push: Duration,
    cpu_full: f64,
    rss_with: f64,
    eds: Vec<Duration>,
    route: Vec<Duration>,
    rss_end: f64,
}

/// Connects `clients` sidecars, measures the first full push, `changes` endpoint changes and
/// one route change. After each step, `dump` (if given) receives client 0's resources.
async fn run(
    server: &mut dyn Server,
    sidecars: impl Fn(mpsc::UnboundedSender<Event>) -> Sidecars,
    clients: usize,
    changes: usize,
    mut dump: DumpSink<'_>,
) -> Report {
    let pid = server.pid();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let cars = sidecars(events_tx);
    let mut dump_tx = None;
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    for i in 0..clients {
        let (tx, rx) = mpsc::channel(1);
        if i == 0 {
            dump_tx = Some(tx);
        }
        let cars = cars.clone();
        match cars.flavour {
            Flavour::Sotw => tokio::spawn(cars.sotw(i, rx)),
            Flavour::Delta => tokio::spawn(cars.delta(i, rx)),
        };
    }
    let ask_dump = async |step: usize, dump: &mut DumpSink<'_>| {
        if let Some(d) = dump.as_mut() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            dump_tx.as_ref().unwrap().send(tx).await.unwrap();
            d(step, rx.await.unwrap());
        }
    };
    let mut full = BTreeSet::new();
    let mut last = started;
    while full.len() < clients {
        match tokio::time::timeout(Duration::from_secs(600), events.recv())
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
    let mut report = Report {
        first_push: last.duration_since(started),
        ..Default::default()
    };
    // Let the last ACKs land before reading CPU.
    tokio::time::sleep(Duration::from_millis(500)).await;
    report.cpu_full = cpu_seconds(pid) - cpu_before;
    report.rss_with = rss_mb(pid);
    ask_dump(usize::MAX, &mut dump).await;

    let eds_name = format!("outbound|{PORT}||svc-0.bench.svc.cluster.local");
    for c in 1..=changes {
        tokio::time::sleep(Duration::from_millis(300)).await;
        while events.try_recv().is_ok() {}
        let t0 = Instant::now();
        server.change(c);
        report
            .eds
            .extend(until_all(&mut events, clients, ENDPOINT, &eds_name, t0).await);
        ask_dump(c, &mut dump).await;
    }
    report.eds.sort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    while events.try_recv().is_ok() {}
    let t0 = Instant::now();
    server.change(0);
    report.route = until_all(&mut events, clients, ROUTE, &PORT.to_string(), t0).await;
    ask_dump(0, &mut dump).await;
    report.rss_end = rss_mb(pid);
    report
}

fn print(name: &str, clients: usize, r: &Report) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{name}: first full push to all {clients} clients {:.3} s; CPU {:.2} s = {:.2} ms per client; RSS with clients {:.1} MB",
        r.first_push.as_secs_f64(),
        r.cpu_full,
        r.cpu_full * 1000.0 / clients as f64,
        r.rss_with
    );
    println!(
        "{name}: endpoint change -> every client ({} deliveries): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        r.eds.len(),
        ms(percentile(&r.eds, 0.5)),
        ms(percentile(&r.eds, 0.99)),
        ms(*r.eds.last().unwrap())
    );
    println!(
        "{name}: VirtualService change -> all clients {:.1} ms (p50 {:.1} ms); RSS at end {:.1} MB",
        ms(*r.route.last().unwrap()),
        ms(percentile(&r.route, 0.5)),
        r.rss_end
    );
}

fn write_dump(path: &Path, resources: &Held) {
    let mut out = Vec::new();
    for any in resources.values().flatten() {
        let bytes = any.encode_to_vec();
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend(bytes);
    }
    std::fs::write(path, out).unwrap();
}

/// The encode floor: every client's resources (decoded once, as a server holds them) encoded
/// with prost into one `DiscoveryResponse` per type and written to a Unix socket a reader
/// drains. Returns this thread's CPU seconds and the elapsed seconds, per client.
fn encode_floor(resources: &Held, clients: usize) -> (f64, f64) {
    use envoy_types::pb::envoy::config::cluster::v3::Cluster;
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
    enum Typed {
        C(Box<Cluster>),
        E(Box<ClusterLoadAssignment>),
        L(Box<Listener>),
        R(Box<RouteConfiguration>),
    }
    fn any<M: prost::Name>(m: &M) -> Any {
        Any {
            type_url: M::type_url(),
            value: m.encode_to_vec(),
        }
    }
    let held: Vec<(String, Vec<Typed>)> = resources
        .iter()
        .map(|(t, anys)| {
            let v = anys
                .iter()
                .map(|a| match t.as_str() {
                    CLUSTER => Typed::C(Box::new(Cluster::decode(a.value.as_slice()).unwrap())),
                    ENDPOINT => Typed::E(Box::new(
                        ClusterLoadAssignment::decode(a.value.as_slice()).unwrap(),
                    )),
                    LISTENER => Typed::L(Box::new(Listener::decode(a.value.as_slice()).unwrap())),
                    _ => Typed::R(Box::new(
                        RouteConfiguration::decode(a.value.as_slice()).unwrap(),
                    )),
                })
                .collect();
            (t.clone(), v)
        })
        .collect();
    let (mut w, mut r) = std::os::unix::net::UnixStream::pair().unwrap();
    let reader = std::thread::spawn(move || std::io::copy(&mut r, &mut std::io::sink()).unwrap());
    let thread_cpu = || {
        let t = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let f: Vec<&str> = t[t.rfind(')').unwrap() + 2..].split_whitespace().collect();
        (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
    };
    let before = thread_cpu();
    let started = Instant::now();
    for _ in 0..clients {
        for (type_url, items) in &held {
            let resources = items
                .iter()
                .map(|h| match h {
                    Typed::C(m) => any(m.as_ref()),
                    Typed::E(m) => any(m.as_ref()),
                    Typed::L(m) => any(m.as_ref()),
                    Typed::R(m) => any(m.as_ref()),
                })
                .collect();
            let resp = DiscoveryResponse {
                version_info: "1".into(),
                resources,
                type_url: type_url.clone(),
                nonce: "1".into(),
                ..Default::default()
            };
            w.write_all(&resp.encode_to_vec()).unwrap();
        }
    }
    let cpu = thread_cpu() - before;
    let wall = started.elapsed().as_secs_f64();
    drop(w);
    reader.join().unwrap();
    (cpu / clients as f64, wall / clients as f64)
}

/// A certificate for citadel's own SPIFFE ID from a CA of the benchmark's, for the anchor: the
/// clients check it as they check citadel's. Returns the bundle to trust and the PEM files.
fn anchor_identity(dir: &Path) -> (TrustBundle, PathBuf, PathBuf) {
    let td = pki::identity::parse_trust_domain("cluster.local").unwrap();
    let ca = pki::CertificateAuthority::self_signed_root(
        td.clone(),
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
        &pki::issue::SigningCaParams {
            common_name: "bench anchor".into(),
            organization: "bench".into(),
            ttl: Duration::from_secs(86400),
            path_len: None,
        },
        std::time::SystemTime::now(),
        &pki::SystemRandom,
    )
    .unwrap();
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let svid = ca
        .issue_svid_for_key(
            &pki::identity::server_id(&td),
            &key.public_key_der(),
            false,
            &pki::issue::SvidParams::ttl(Duration::from_secs(3600)),
            std::time::SystemTime::now(),
            &pki::SystemRandom,
        )
        .unwrap();
    let cert = dir.join("anchor-cert.pem");
    let key_file = dir.join("anchor-key.pem");
    std::fs::write(&cert, pki::pem::encode_certificates(svid.chain())).unwrap();
    std::fs::write(&key_file, key.to_pem()).unwrap();
    let bundle =
        TrustBundle::from_pem(td, &pki::pem::encode_certificate(ca.certificate())).unwrap();
    (bundle, cert, key_file)
}

fn client_config(bundle: &TrustBundle, svid: &X509Svid) -> Arc<rustls::ClientConfig> {
    let cert = Arc::new(SwappableCert::new(certified_key(svid).unwrap()));
    let bundles = Arc::new(SharedBundles::new([bundle.clone()]));
    Arc::new(
        citadel_client_config(
            bundles,
            bundle.trust_domain().clone(),
            Some(cert),
            Arc::new(SystemClock),
        )
        .unwrap(),
    )
}

#[tokio::main]
async fn main() {
    let services = env_or("SERVICES", 1000);
    let endpoints = env_or("ENDPOINTS", 10);
    let clients = env_or("CLIENTS", 100);
    let changes = env_or("CHANGES", 5);
    let flavour = match std::env::var("FLAVOUR").as_deref() {
        Ok("delta") => Flavour::Delta,
        _ => Flavour::Sotw,
    };
    let anchor = std::env::var_os("GO_CONTROL_PLANE").map(PathBuf::from);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mesh");
    std::fs::create_dir(&config).unwrap();
    write_mesh(&config, services, endpoints);
    let data = dir.path().join("data");
    let (child, grpc) = start_citadel(&data, &config);
    let mut citadel = Citadel {
        child,
        config: config.clone(),
        endpoints,
    };
    let bundle = TrustBundle::from_pem(
        pki::identity::parse_trust_domain("cluster.local").unwrap(),
        &std::fs::read_to_string(data.join("ca/root-cert.pem")).unwrap(),
    )
    .unwrap();
    let svid = client_svid(&data, &grpc, &bundle).await;
    println!(
        "ADS scale: {services} services x {endpoints} endpoints, {clients} {flavour:?} clients, 2 CPUs"
    );
    println!(
        "citadel rss before clients: {:.1} MB",
        rss_mb(citadel.pid())
    );
    let cfg = client_config(&bundle, &svid);
    let mut dumps: BTreeMap<usize, Held> = BTreeMap::new();
    let mut keep = |step: usize, r: Held| {
        dumps.insert(step, r);
    };
    let report = run(
        &mut citadel,
        |events| Sidecars {
            addr: grpc.clone(),
            cfg: cfg.clone(),
            services,
            flavour,
            events,
        },
        clients,
        changes,
        Some(&mut keep),
    )
    .await;
    drop(citadel);
    print("citadel", clients, &report);
    let full = &dumps[&usize::MAX];
    println!(
        "resources per client: {} ({:.2} MB encoded)",
        full.values().map(Vec::len).sum::<usize>(),
        full.values()
            .flatten()
            .map(|a| a.encoded_len())
            .sum::<usize>() as f64
            / 1e6
    );
    let (cpu, wall) = encode_floor(full, clients);
    println!(
        "encode floor (prost encode + write to a socket, one thread): CPU {:.2} ms, elapsed {:.2} ms per client",
        cpu * 1e3,
        wall * 1e3
    );

    let Some(binary) = anchor else {
        println!("go-control-plane: not run (GO_CONTROL_PLANE unset)");
        return;
    };
    let mut files = BTreeMap::new();
    for (step, r) in &dumps {
        let path = dir.path().join(format!("dump-{step}"));
        write_dump(&path, r);
        files.insert(*step, path);
    }
    let (anchor_bundle, cert, key) = anchor_identity(dir.path());
    let addr_file = dir.path().join("anchor-addr");
    let child = Command::new(binary)
        .arg("-dump")
        .arg(&files[&usize::MAX])
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .arg("-addr-file")
        .arg(&addr_file)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start go-control-plane");
    let mut gcp = GoControlPlane {
        child,
        dumps: files,
    };
    while !addr_file.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let addr = std::fs::read_to_string(&addr_file).unwrap();
    println!(
        "go-control-plane rss before clients: {:.1} MB",
        rss_mb(gcp.pid())
    );
    let cfg = client_config(&anchor_bundle, &svid);
    let report = run(
        &mut gcp,
        |events| Sidecars {
            addr: addr.clone(),
            cfg: cfg.clone(),
            services,
            flavour,
            events,
        },
        clients,
        changes,
        None,
    )
    .await;
    print("go-control-plane", clients, &report);
}
