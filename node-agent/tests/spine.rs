//! The identity spine with real processes: the citadel binary and the agent binary with short
//! lifetimes for several node-SVID lifetimes; the exec attack on path attestation; a hijacked
//! socket directory; calls to a citadel that never answers.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use citadel_api::workload::X509svidRequest;
use common::*;
use node_agent::ca::{Ca, GrpcCa};
use tokio_stream::StreamExt;

/// The citadel binary, built beside the agent by `cargo test --workspace`.
fn citadel_bin() -> PathBuf {
    let bin = Path::new(AGENT).with_file_name("citadel");
    assert!(
        bin.exists(),
        "{} is missing: run the workspace tests (bash scripts/test.sh) so citadel is built",
        bin.display()
    );
    bin
}

/// A citadel process on loopback; killed on drop.
struct CitadelProc {
    data_dir: PathBuf,
    grpc: String,
    child: Child,
}

impl CitadelProc {
    fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let endpoints = data_dir.join("endpoints.json");
        let _ = std::fs::remove_file(&endpoints);
        let child = Command::new(citadel_bin())
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
            .env(
                "RUST_LOG",
                std::env::var("CITADEL_RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn citadel");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !endpoints.exists() {
            assert!(Instant::now() < deadline, "citadel did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&endpoints).unwrap()).unwrap();
        Self {
            data_dir: data_dir.to_path_buf(),
            grpc: v["grpc"].as_str().unwrap().to_string(),
            child,
        }
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(citadel_bin())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "citadel {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.data_dir.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for CitadelProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_svids_keep_rotating_across_five_node_svid_lifetimes() {
    const NODE_TTL: Duration = Duration::from_secs(20);
    let dir = tempfile::tempdir().unwrap();
    let citadel = CitadelProc::start(&dir.path().join("citadel"), &["--node-svid-ttl", "20s"]);
    let token = citadel.cli(&["token", "create", "--node", "node-1"]);
    citadel.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        "spiffe://cluster.local/ns/soak/sa/app",
        "--node",
        "node-1",
        "--selector",
        &self_path_selector(),
        "--ttl",
        "10s",
    ]);
    let agent = Agent::start_at(
        dir.path(),
        &citadel.grpc,
        &citadel.data_dir.join("ca/root-cert.pem"),
        Some(&token),
        &[],
    )
    .await;

    let started = Instant::now();
    let mut stream = workload_client(&agent.socket)
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await
        .unwrap()
        .into_inner();
    let mut serials = std::collections::BTreeSet::new();
    let mut last_rotation = Instant::now();
    let mut longest_gap = Duration::ZERO;
    while started.elapsed() < NODE_TTL * 5 + Duration::from_secs(5) {
        let Ok(next) = tokio::time::timeout(Duration::from_secs(15), stream.next()).await else {
            panic!(
                "no new SVID for 15 s at {:?}: rotation stopped\nagent log:\n{}\naudit:\n{:#?}",
                started.elapsed(),
                agent.log_text(),
                citadel.audit()
            );
        };
        let msg = next.expect("stream ended").expect("stream error");
        let svid = &msg.svids[0];
        // The leaf is the first DER SEQUENCE (two-byte length) of the chain.
        let leaf_len = u16::from_be_bytes([svid.x509_svid[2], svid.x509_svid[3]]) as usize + 4;
        let info = pki::svid::CertInfo::parse(&svid.x509_svid[..leaf_len]).unwrap();
        assert!(
            info.not_after > SystemTime::now(),
            "an expired SVID was served"
        );
        if serials.insert(info.serial) {
            longest_gap = longest_gap.max(last_rotation.elapsed());
            last_rotation = Instant::now();
        }
    }
    drop(agent);
    let audit = citadel.audit();
    let refused: Vec<_> = audit.iter().filter(|l| l["outcome"] == "refused").collect();
    assert!(refused.is_empty(), "citadel refused calls: {refused:#?}");
    let renewals = audit
        .iter()
        .filter(|l| l["method"] == "RenewSvid" && l["outcome"] == "issued")
        .count();
    // The node SVID renews at about half of 20 s; five lifetimes give about ten renewals.
    assert!(
        renewals >= 7,
        "only {renewals} node renewals in five lifetimes"
    );
    // The workload SVID renews at about half of 10 s.
    assert!(
        serials.len() >= 15,
        "only {} workload SVIDs in {:?}",
        serials.len(),
        started.elapsed()
    );
    assert!(
        longest_gap < Duration::from_secs(10),
        "a rotation gap of {longest_gap:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_handed_on_before_exec_cannot_claim_the_new_binary() {
    let sleep = std::fs::canonicalize("/usr/bin/sleep").unwrap();
    assert!(
        Command::new("socat").arg("-V").output().is_ok(),
        "socat is missing: the test command installs it"
    );
    let dir = tempfile::tempdir().unwrap();
    let citadel = Citadel::start(&dir.path().join("citadel"), "127.0.0.1:0".parse().unwrap()).await;
    citadel
        .entry(
            "spiffe://cluster.local/ns/sleep/sa/sleep",
            "node-1",
            &[format!("unix:path:{}", sleep.display())],
            Duration::from_secs(600),
        )
        .await;
    let agent = Agent::start(
        dir.path(),
        &citadel,
        Some(&citadel.token("node-1").await),
        &[],
    )
    .await;

    // The attacker: connect to the agent, give the connection to socat (which relays it to a
    // socket of ours), then exec into the binary the entry selects.
    let relay = dir.path().join("relay.sock");
    let script = format!(
        r#"
import os, socket, subprocess, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect({agent:?})
fd = s.fileno()
os.set_inheritable(fd, True)
subprocess.Popen(["socat", "UNIX-LISTEN:{relay}", "FD:%d" % fd], pass_fds=(fd,))
time.sleep(1)
os.execv({sleep:?}, ["sleep", "30"])
"#,
        agent = agent.socket.display().to_string(),
        relay = relay.display(),
        sleep = sleep.display().to_string(),
    );
    let mut attacker = Command::new("/usr/bin/python3")
        .args(["-c", &script])
        .spawn()
        .unwrap();
    let attacker_pid = attacker.id();
    eventually(
        Duration::from_secs(10),
        "the attacker to exec",
        async || {
            let exe = std::fs::read_link(format!("/proc/{attacker_pid}/exe")).ok()?;
            (exe == sleep && relay.exists()).then_some(())
        },
    )
    .await;

    let result = workload_client(&relay)
        .fetch_x509svid(with_header(X509svidRequest {}))
        .await;
    let _ = attacker.kill();
    let _ = attacker.wait();
    let _ = Command::new("pkill")
        .args(["-f", &relay.display().to_string()])
        .status();
    let status = match result {
        Err(status) => status,
        Ok(resp) => {
            let first = resp.into_inner().next().await;
            match first {
                Some(Err(status)) => status,
                other => panic!("the relayed connection obtained {other:?}"),
            }
        }
    };
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("now runs"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn a_socket_directory_another_user_controls_stops_the_agent() {
    assert_eq!(
        citadel_api::fs::effective_uid(),
        0,
        "this test gives a directory to another uid, which needs root (CI runs as root)"
    );
    let dir = tempfile::tempdir().unwrap();
    for (name, uid, mode, expect) in [
        ("foreign", 65534, 0o755, "owned by uid 65534"),
        ("open", 0, 0o777, "writable by group or others"),
    ] {
        let sockets = dir.path().join(name);
        std::fs::create_dir(&sockets).unwrap();
        std::os::unix::fs::chown(&sockets, Some(uid), Some(uid)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sockets, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = Command::new(AGENT)
            .args(["run", "--server", "127.0.0.1:1", "--node-name", "n"])
            .arg("--socket")
            .arg(sockets.join("api.sock"))
            .arg("--data-dir")
            .arg(dir.path().join(format!("data-{name}")))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: the agent started");
        assert!(stderr.contains(expect), "{name}: {stderr}");
        assert!(stderr.contains(&sockets.display().to_string()), "{stderr}");
        assert!(
            !sockets.join("api.sock").exists(),
            "{name}: a socket was bound"
        );
        let now = std::fs::metadata(&sockets).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(now.mode() & 0o777, mode, "{name}: the mode was changed");
    }
}

#[tokio::test]
async fn calls_to_a_citadel_that_never_answers_end_at_the_deadline() {
    // Accepts TCP and never speaks: the TLS handshake and every call hang without a deadline.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = silent.accept().await {
            conns.push(c);
        }
    });
    let td = pki::identity::parse_trust_domain("cluster.local").unwrap();
    let bundles = std::sync::Arc::new(pki::verify::SharedBundles::new([pki::TrustBundle::new(
        td.clone(),
    )]));
    let tls = citadel_api::channel::citadel_client_config(
        bundles,
        td,
        None,
        std::sync::Arc::new(pki::SystemClock),
    )
    .unwrap();
    let ca = GrpcCa::new(&addr, std::sync::Arc::new(tls), Duration::from_millis(300)).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(10), ca.mint_x509(vec![1, 2, 3]))
        .await
        .expect("the call had no deadline");
    assert_eq!(outcome.unwrap_err().code(), tonic::Code::DeadlineExceeded);
    held.abort();
}
