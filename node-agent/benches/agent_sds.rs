//! Node agent benchmark: 1,000 registered workload identities whose SVIDs rotate every ~60 s
//! (120 s TTL, rotation at half-life), 100 concurrent SDS streams each watching 10 of them.
//! Reports the agent's RSS, CPU per rotation, and the latency from a rotation (the agent's
//! "SVID issued" log event, µs timestamps) to each stream receiving the new certificate.
//!
//! Run: `bench/agent.sh` (or `cargo bench -p node-agent --bench agent_sds`). Environment:
//! `IDENTITIES` (1000), `STREAMS` (100), `BENCH_SECONDS` measured (130), `TTL` seconds (120),
//! `AGENT_WRAPPER` (a profiler command to run the agent under).
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use citadel::authority::CaSource;
use citadel::server::{ServeConfig, serve};
use citadel::service::TtlPolicy;
use citadel_api::admin::admin_client::AdminClient;
use citadel_api::admin::{CreateEntryRequest, CreateJoinTokenRequest};
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use prost::Message;
use tokio_stream::StreamExt;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

fn status_kb(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn unix_f64(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// `(publish time, id, serial)` from the agent's "SVID issued" debug events.
fn issued_events(log: &str) -> Vec<(f64, String, String)> {
    let strip = |s: &str| {
        let mut out = String::new();
        let mut esc = false;
        for c in s.chars() {
            match (esc, c) {
                (false, '\u{1b}') => esc = true,
                (true, 'm') => esc = false,
                (true, _) => {}
                (false, c) => out.push(c),
            }
        }
        out
    };
    log.lines()
        .map(strip)
        .filter(|l| l.contains("SVID issued"))
        .filter_map(|l| {
            let ts = l.split_whitespace().next()?;
            let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
                .ok()?;
            let t = t.unix_timestamp_nanos() as f64 / 1e9;
            let id = l
                .split("id=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .to_string();
            let serial = l
                .split("serial=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .trim_matches('"')
                .to_string();
            Some((t, id, serial))
        })
        .collect()
}

fn serial_of(secret: &Secret) -> Option<String> {
    let Some(secret::Type::TlsCertificate(tls)) = &secret.r#type else {
        return None;
    };
    let Some(Specifier::InlineBytes(pem)) = tls.certificate_chain.as_ref()?.specifier.as_ref()
    else {
        return None;
    };
    let certs = pki::pem::parse_certificates(std::str::from_utf8(pem).ok()?).ok()?;
    Some(pki::svid::CertInfo::parse(certs.first()?).ok()?.serial)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let identities = env_or("IDENTITIES", 1000) as usize;
    let streams = env_or("STREAMS", 100) as usize;
    let seconds = env_or("BENCH_SECONDS", 130);
    let ttl = env_or("TTL", 120);
    let dir = tempfile::tempdir().unwrap();

    // citadel in this process; the agent as its own process so its RSS and CPU are its own.
    let citadel_dir = dir.path().join("citadel");
    let config = ServeConfig {
        data_dir: citadel_dir.clone(),
        trust_domain: pki::identity::parse_trust_domain("cluster.local").unwrap(),
        listen: "127.0.0.1:0".parse().unwrap(),
        monitoring: "127.0.0.1:0".parse().unwrap(),
        ca: CaSource::SelfSigned {
            key_algorithm: pki::KeyAlgorithm::EcdsaP256,
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
        config_dir: None,
    };
    tokio::spawn(serve(
        config,
        Arc::new(pki::SystemClock),
        Arc::new(pki::SystemRandom),
        std::future::pending(),
    ));
    let endpoints = citadel::server::endpoints_file(&citadel_dir);
    while !endpoints.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let grpc: String =
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&endpoints).unwrap())
            .unwrap()["grpc"]
            .as_str()
            .unwrap()
            .into();
    let mut admin = AdminClient::new(
        citadel_api::channel::uds_channel(citadel::server::admin_socket(&citadel_dir)).unwrap(),
    );
    let me = format!(
        "unix:path:{}",
        std::fs::canonicalize(std::env::current_exe().unwrap())
            .unwrap()
            .display()
    );
    let id = |i: usize| format!("spiffe://cluster.local/ns/bench/sa/w{i:05}");
    let setup = Instant::now();
    for chunk in (0..identities).collect::<Vec<_>>().chunks(1000) {
        let entries = chunk
            .iter()
            .map(|&i| CreateEntryRequest {
                spiffe_id: id(i),
                node: "bench".into(),
                selectors: vec![me.clone()],
                ttl_seconds: ttl as i64,
            })
            .collect();
        admin
            .create_entries(citadel_api::admin::CreateEntriesRequest { entries })
            .await
            .unwrap();
    }
    let token = admin
        .create_join_token(CreateJoinTokenRequest {
            node: "bench".into(),
            ttl_seconds: 600,
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    println!(
        "registered {identities} entries in {:.1}s",
        setup.elapsed().as_secs_f64()
    );

    let socket = dir.path().join("agent.sock");
    let log_path = dir.path().join("agent.log");
    // AGENT_WRAPPER runs the agent under a profiler, e.g. `heaptrack -o /tmp/agent`.
    let wrapper: Vec<String> = std::env::var("AGENT_WRAPPER")
        .map(|w| w.split_whitespace().map(String::from).collect())
        .unwrap_or_default();
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(env!("CARGO_BIN_EXE_node-agent"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_node-agent")),
    };
    let mut agent = command
        .args([
            "run",
            "--server",
            &grpc,
            "--node-name",
            "bench",
            "--join-token",
            &token,
            "--metrics",
            "127.0.0.1:0",
        ])
        .arg("--trust-bundle")
        .arg(citadel_dir.join("ca/root-cert.pem"))
        .arg("--data-dir")
        .arg(dir.path().join("agent-data"))
        .arg("--socket")
        .arg(&socket)
        .env("RUST_LOG", "warn,node_agent::manager=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let pid = agent.id();
    while !socket.exists() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Each stream watches 10 identities; receipt times are recorded per (id, serial).
    let received: Arc<Mutex<HashMap<(String, String), f64>>> = Arc::default();
    let per_stream = identities.div_ceil(streams.max(1));
    for s in 0..streams {
        let names: Vec<String> = (s * per_stream..((s + 1) * per_stream).min(identities))
            .map(id)
            .collect();
        let received = received.clone();
        let socket = socket.clone();
        tokio::spawn(async move {
            let mut client = SecretDiscoveryServiceClient::new(
                citadel_api::channel::uds_channel(&socket).unwrap(),
            );
            let (tx, rx) = tokio::sync::mpsc::channel(8);
            let first = DiscoveryRequest {
                type_url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
                    .into(),
                resource_names: names.clone(),
                ..Default::default()
            };
            tx.send(first).await.unwrap();
            let mut responses = client
                .stream_secrets(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .unwrap()
                .into_inner();
            // Only resources whose bytes changed are parsed: the benchmark must not be the
            // bottleneck it measures.
            let mut last: HashMap<String, u64> = HashMap::new();
            while let Some(Ok(resp)) = responses.next().await {
                let now = unix_f64(SystemTime::now());
                let seen: Vec<_> = resp
                    .resources
                    .iter()
                    .filter_map(|any| {
                        use std::hash::{Hash, Hasher};
                        let mut h = std::collections::hash_map::DefaultHasher::new();
                        any.value.hash(&mut h);
                        let digest = h.finish();
                        let secret = Secret::decode(any.value.as_slice()).ok()?;
                        if last.insert(secret.name.clone(), digest) == Some(digest) {
                            return None;
                        }
                        Some((secret.name.clone(), serial_of(&secret)?))
                    })
                    .collect();
                {
                    let mut map = received.lock().unwrap();
                    for key in seen {
                        map.entry(key).or_insert(now);
                    }
                }
                let ack = DiscoveryRequest {
                    type_url: resp.type_url.clone(),
                    resource_names: names.clone(),
                    version_info: resp.version_info,
                    response_nonce: resp.nonce,
                    ..Default::default()
                };
                if tx.send(ack).await.is_err() {
                    return;
                }
            }
        });
    }

    // Wait for every identity to be issued once, then measure a full rotation cycle.
    let warm = Instant::now();
    loop {
        let n = issued_events(&std::fs::read_to_string(&log_path).unwrap()).len();
        if n >= identities {
            break;
        }
        assert!(
            warm.elapsed() < Duration::from_secs(300),
            "only {n} SVIDs issued"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "initial issuance of {identities} SVIDs took {:.1}s",
        warm.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let window_start = unix_f64(SystemTime::now());
    let cpu0 = cpu_seconds(pid);
    let mut rss_max = 0;
    let measure = Instant::now();
    while measure.elapsed() < Duration::from_secs(seconds) {
        rss_max = rss_max.max(status_kb(pid, "VmRSS:"));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let cpu = cpu_seconds(pid) - cpu0;
    let window_end = unix_f64(SystemTime::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_end = status_kb(pid, "VmRSS:");
    let hwm = status_kb(pid, "VmHWM:");

    let events = issued_events(&std::fs::read_to_string(&log_path).unwrap());
    let rotations: Vec<_> = events
        .iter()
        .filter(|(t, _, _)| *t >= window_start && *t < window_end)
        .collect();
    let received = received.lock().unwrap();
    let mut latencies: Vec<f64> = Vec::new();
    let mut missing = 0;
    for (t, id, serial) in &rotations {
        match received.get(&(id.clone(), serial.clone())) {
            Some(r) => latencies.push((r - t) * 1000.0),
            None => missing += 1,
        }
    }
    latencies.sort_by(f64::total_cmp);
    // SIGTERM, so the agent (and a profiler wrapping it) shuts down cleanly.
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = agent.wait();

    println!();
    println!(
        "{identities} identities, {streams} SDS streams, TTL {ttl}s (rotation ~{}s), {seconds}s measured, {} CPUs",
        ttl / 2,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!();
    println!("| metric | value | target |");
    println!("|---|---|---|");
    println!("| rotations in window | {} | |", rotations.len());
    println!(
        "| pushes received / missed | {} / {missing} | 0 missed |",
        latencies.len()
    );
    println!(
        "| agent RSS (max during window / end / VmHWM) | {:.1} / {:.1} / {:.1} MB | ≤ 50 MB |",
        rss_max as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "| agent CPU per rotation | {:.0} µs | |",
        cpu / rotations.len().max(1) as f64 * 1e6
    );
    println!(
        "| agent CPU total | {:.2} s over {seconds} s ({:.1} % of one core) | |",
        cpu,
        cpu / seconds as f64 * 100.0
    );
    if !latencies.is_empty() {
        println!(
            "| rotation → stream latency p50 / p99 / max | {:.2} / {:.2} / {:.2} ms | p99 ≤ 50 ms |",
            pct(&latencies, 0.5),
            pct(&latencies, 0.99),
            latencies.last().unwrap()
        );
    }
}
