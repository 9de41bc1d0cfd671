//! The hardened spine through the real binary: node list and eviction, workload SVIDs that
//! cannot renew themselves, the TTL cap on node SVIDs, connections bounded by their client
//! certificate, the resource limits, atomic bulk entries, and a kill -9 in a burst of writes.
mod common;

use std::time::{Duration, Instant, SystemTime};

use citadel_api::ca::{AttestNodeRequest, CsrRequest, TrustBundleRequest, WatchEntriesRequest};
use citadel_api::istio::IstioCertificateRequest;
use common::*;
use tokio_stream::StreamExt;
use tonic::Code;

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";

fn create_web_entry(citadel: &Citadel) {
    let (ok, _, err) = citadel.cli(&[
        "entry",
        "create",
        "--spiffe-id",
        WEB,
        "--node",
        "n1",
        "--selector",
        "unix:uid:1000",
    ]);
    assert!(ok, "{err}");
}

fn refusals(citadel: &Citadel, method: &str) -> Vec<serde_json::Value> {
    audit_lines(&citadel.data_dir)
        .into_iter()
        .filter(|l| l["outcome"] == "refused" && l["method"] == method)
        .collect()
}

async fn poll<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_node_is_refused_everything_until_a_new_token() {
    let dir = tempfile::tempdir().unwrap();
    let citadel = Citadel::start(dir.path(), &[]);
    create_web_entry(&citadel);
    let node = attested_node(&citadel).await;
    let mut as_node = client(&citadel.grpc, &citadel.bundle(), Some(&node));
    let (_, csr) = key_and_csr(WEB);
    as_node
        .mint_x509_svid(CsrRequest {
            csr: csr.clone(),
            ttl_seconds: 0,
        })
        .await
        .unwrap();
    let mut watch = as_node
        .watch_entries(WatchEntriesRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert!(first.full);
    assert_eq!(first.entries.len(), 1);
    let mut bundle_watch = as_node
        .watch_trust_bundle(TrustBundleRequest {})
        .await
        .unwrap()
        .into_inner();
    bundle_watch.next().await.unwrap().unwrap();

    let (ok, out, err) = citadel.cli(&["node", "list", "-o", "json"]);
    assert!(ok, "{err}");
    let nodes: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(nodes[0]["name"], "n1");
    assert_eq!(nodes[0]["serial"], node.serial());
    assert_eq!(nodes[0]["evicted"], false);
    assert!(nodes[0]["last_seen_unix"].as_i64().unwrap() > 0);

    let (ok, _, err) = citadel.cli(&["node", "evict", "n1"]);
    assert!(ok, "{err}");
    // The open stream ends at once.
    let ended = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("the watch stream stayed open after eviction");
    assert_eq!(ended.unwrap().unwrap_err().code(), Code::PermissionDenied);
    let ended = tokio::time::timeout(Duration::from_secs(5), bundle_watch.next())
        .await
        .expect("the bundle watch stayed open after eviction");
    assert!(!matches!(ended, Some(Ok(_))), "{ended:?}");
    // Every later call is refused, with an audit line.
    let (_, node_csr) = key_and_csr(NODE);
    let err = as_node
        .renew_svid(CsrRequest {
            csr: node_csr,
            ttl_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("evicted"), "{}", err.message());
    let err = as_node
        .mint_x509_svid(CsrRequest {
            csr,
            ttl_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = as_node
        .watch_entries(WatchEntriesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    for method in ["RenewSvid", "MintX509Svid", "WatchEntries"] {
        let lines = refusals(&citadel, method);
        assert_eq!(lines.len(), 1, "{method}: {lines:?}");
        assert!(lines[0]["detail"].as_str().unwrap().contains("evicted"));
    }
    let (_, out, _) = citadel.cli(&["node", "list", "-o", "json"]);
    let nodes: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(nodes[0]["evicted"], true);

    // A new join token brings the node back; its SVIDs from before stay refused.
    let again = attested_node(&citadel).await;
    let mut fresh = client(&citadel.grpc, &citadel.bundle(), Some(&again));
    let (_, csr) = key_and_csr(WEB);
    fresh
        .mint_x509_svid(CsrRequest {
            csr: csr.clone(),
            ttl_seconds: 0,
        })
        .await
        .unwrap();
    let mut old = client(&citadel.grpc, &citadel.bundle(), Some(&node));
    assert_eq!(
        old.mint_x509_svid(CsrRequest {
            csr,
            ttl_seconds: 0
        })
        .await
        .unwrap_err()
        .code(),
        Code::PermissionDenied
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_svid_cannot_renew_itself_or_obtain_anything() {
    let dir = tempfile::tempdir().unwrap();
    let citadel = Citadel::start(dir.path(), &[]);
    create_web_entry(&citadel);
    let node = attested_node(&citadel).await;
    let (key, csr) = key_and_csr(WEB);
    let resp = client(&citadel.grpc, &citadel.bundle(), Some(&node))
        .mint_x509_svid(CsrRequest {
            csr,
            ttl_seconds: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let web = svid_from(&resp, key);

    let (_, csr) = key_and_csr(WEB);
    let err = client(&citadel.grpc, &citadel.bundle(), Some(&web))
        .renew_svid(CsrRequest {
            csr,
            ttl_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().contains("workload identity"),
        "{}",
        err.message()
    );
    let err = istio_client(&citadel, &web)
        .create_certificate(IstioCertificateRequest {
            csr: pem_csr(WEB),
            validity_duration: 0,
            metadata: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut as_web = client(&citadel.grpc, &citadel.bundle(), Some(&web));
    let (_, csr) = key_and_csr(WEB);
    let err = as_web
        .mint_x509_svid(CsrRequest {
            csr,
            ttl_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = as_web
        .mint_jwt_svid(citadel_api::ca::JwtSvidRequest {
            spiffe_id: WEB.into(),
            audience: vec!["x".into()],
            ttl_seconds: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = as_web
        .watch_entries(WatchEntriesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    for method in [
        "RenewSvid",
        "CreateCertificate",
        "MintX509Svid",
        "MintJwtSvid",
        "WatchEntries",
    ] {
        assert_eq!(refusals(&citadel, method).len(), 1, "{method}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_svids_respect_the_max_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let citadel = Citadel::start(
        dir.path(),
        &["--node-svid-ttl", "2h", "--max-svid-ttl", "30m"],
    );
    let node = attested_node(&citadel).await;
    let left = node.not_after().duration_since(SystemTime::now()).unwrap();
    assert!(
        left <= Duration::from_secs(1800),
        "node SVID lives {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_ends_when_its_client_certificate_expires() {
    let dir = tempfile::tempdir().unwrap();
    let citadel = Citadel::start(dir.path(), &["--node-svid-ttl", "3s"]);
    let node = attested_node(&citadel).await;
    let mut as_node = client(&citadel.grpc, &citadel.bundle(), Some(&node));
    let mut watch = as_node
        .watch_entries(WatchEntriesRequest::default())
        .await
        .unwrap()
        .into_inner();
    watch.next().await.unwrap().unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(15), watch.next())
        .await
        .expect("the connection outlived its client certificate");
    assert!(!matches!(ended, Some(Ok(_))), "{ended:?}");
    let metrics = citadel.metrics().await;
    assert!(
        metrics.contains("citadel_connections_expired_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watch_streams_release_their_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let citadel = Citadel::start(dir.path(), &[]);
    let node = attested_node(&citadel).await;
    let mut as_node = client(&citadel.grpc, &citadel.bundle(), Some(&node));
    let mut streams = Vec::new();
    for _ in 0..20 {
        let mut s = as_node
            .watch_entries(WatchEntriesRequest::default())
            .await
            .unwrap()
            .into_inner();
        s.next().await.unwrap().unwrap();
        streams.push(s);
    }
    poll("20 open streams", async || {
        citadel
            .metrics()
            .await
            .contains("citadel_watch_streams{kind=\"entries\"} 20")
            .then_some(())
    })
    .await;
    drop(streams);
    // No entry changes: the tasks must notice the clients left on their own.
    poll("the streams' tasks to end", async || {
        citadel
            .metrics()
            .await
            .contains("citadel_watch_streams{kind=\"entries\"} 0")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_cannot_open_more_streams_than_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let citadel = Citadel::start(dir.path(), &["--max-concurrent-streams", "3"]);
    let mut anon = client(&citadel.grpc, &citadel.bundle(), None);
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut s = anon
            .watch_trust_bundle(TrustBundleRequest {})
            .await
            .unwrap()
            .into_inner();
        s.next().await.unwrap().unwrap();
        open.push(s);
    }
    let mut fourth_client = anon.clone();
    let fourth = tokio::spawn(async move {
        let mut s = fourth_client
            .watch_trust_bundle(TrustBundleRequest {})
            .await
            .unwrap()
            .into_inner();
        s.next().await.unwrap().unwrap();
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !fourth.is_finished(),
        "a fourth stream opened past the limit of 3"
    );
    drop(open.pop());
    tokio::time::timeout(Duration::from_secs(10), fourth)
        .await
        .expect("the fourth stream did not open once a slot was free")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_cannot_hold_more_handshakes_than_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let citadel = Citadel::start(dir.path(), &["--max-concurrent-handshakes", "2"]);
    let mut silent = Vec::new();
    for _ in 0..6 {
        silent.push(tokio::net::TcpStream::connect(&citadel.grpc).await.unwrap());
    }
    poll("two handshakes in progress", async || {
        citadel
            .metrics()
            .await
            .contains("citadel_tls_handshakes_in_progress 2")
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = citadel.metrics().await;
    assert!(
        metrics.contains("citadel_tls_handshakes_in_progress 2"),
        "more than two handshakes: {metrics}"
    );
    drop(silent);
    client(&citadel.grpc, &citadel.bundle(), None)
        .get_trust_bundle(TrustBundleRequest {})
        .await
        .expect("a real client is served once the silent ones left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_entries_are_atomic_and_listings_filter() {
    let dir = tempfile::tempdir().unwrap();
    let citadel = Citadel::start(dir.path(), &[]);
    let file = dir.path().join("entries.yaml");
    std::fs::write(
        &file,
        "- {spiffe_id: spiffe://cluster.local/ns/a/sa/x, node: n1, selectors: [unix:uid:1]}\n\
         - {spiffe_id: spiffe://cluster.local/ns/a/sa/y, node: n2, selectors: [unix:uid:2], ttl: 5m}\n\
         - {spiffe_id: spiffe://elsewhere.org/ns/a/sa/z, node: n2, selectors: [unix:uid:3]}\n",
    )
    .unwrap();
    let (ok, _, err) = citadel.cli(&["entry", "create", "--file", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("entries[2].spiffe_id"), "{err}");
    assert!(err.contains("entries.yaml"), "{err}");
    let (_, out, _) = citadel.cli(&["entry", "list", "-o", "json"]);
    assert_eq!(out.trim(), "[]", "a refused file creates nothing");

    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, text.lines().take(2).collect::<Vec<_>>().join("\n")).unwrap();
    let (ok, out, err) = citadel.cli(&["entry", "create", "--file", file.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 2);
    let (_, out, _) = citadel.cli(&[
        "entry",
        "list",
        "--spiffe-id",
        "spiffe://cluster.local/ns/a/sa/y",
        "-o",
        "json",
    ]);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["node"], "n2");
    assert_eq!(rows[0]["ttl_seconds"], 300);
    let (_, out, _) = citadel.cli(&["entry", "list", "--selector", "unix:uid:1", "-o", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    assert_eq!(rows[0]["spiffe_id"], "spiffe://cluster.local/ns/a/sa/x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_loses_no_acknowledged_change() {
    use citadel_api::admin::{CreateEntryRequest, CreateJoinTokenRequest};
    let dir = tempfile::tempdir().unwrap();
    let citadel = Citadel::start(dir.path(), &[]);
    let admin = || {
        citadel_api::admin::admin_client::AdminClient::new(
            citadel_api::channel::uds_channel(dir.path().join("admin.sock")).unwrap(),
        )
    };
    // Tokens spent before the crash.
    let mut spent = Vec::new();
    for i in 0..5 {
        let node = format!("spent-{i}");
        let token = admin()
            .create_join_token(CreateJoinTokenRequest {
                node: node.clone(),
                ttl_seconds: 600,
            })
            .await
            .unwrap()
            .into_inner()
            .token;
        let (_, csr) = key_and_csr(&format!("spiffe://cluster.local/citadel/node/{node}"));
        let resp = client(&citadel.grpc, &citadel.bundle(), None)
            .attest_node(AttestNodeRequest {
                csr,
                join_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let serial = pki::svid::CertInfo::parse(&resp.cert_chain[0])
            .unwrap()
            .serial;
        spent.push((token, node, serial));
    }
    // A burst of entry creates, acknowledged ones recorded, killed in the middle.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for w in 0..4 {
        let acked = acked.clone();
        let mut admin = admin();
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let req = CreateEntryRequest {
                    spiffe_id: format!("spiffe://cluster.local/ns/burst/sa/w{w}-{i}"),
                    node: format!("n{}", i % 7),
                    selectors: vec![format!("unix:uid:{i}")],
                    ttl_seconds: 600,
                };
                match admin.create_entry(req).await {
                    Ok(e) => acked.lock().unwrap().push(e.into_inner().id),
                    Err(_) => return,
                }
            }
        }));
    }
    poll("a burst under way", async || {
        (acked.lock().unwrap().len() >= 50).then_some(())
    })
    .await;
    citadel.kill_9();
    for w in writers {
        let _ = w.await;
    }
    let acked = acked.lock().unwrap().clone();

    let citadel = Citadel::start(dir.path(), &[]);
    let (ok, out, err) = citadel.cli(&["entry", "list", "-o", "json"]);
    assert!(ok, "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
    let present: std::collections::HashSet<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let lost: Vec<_> = acked
        .iter()
        .filter(|id| !present.contains(id.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged entries lost: {lost:?}",
        lost.len()
    );
    let mut serials: Vec<String> = spent.iter().map(|(_, _, s)| s.clone()).collect();
    for (token, node, _) in &spent {
        let (_, csr) = key_and_csr(&format!("spiffe://cluster.local/citadel/node/{node}"));
        let err = client(&citadel.grpc, &citadel.bundle(), None)
            .attest_node(AttestNodeRequest {
                csr,
                join_token: token.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{node}: {err:?}");
        assert!(err.message().contains("already used"), "{}", err.message());
    }
    // New issuance after the restart repeats no serial from before it.
    for _ in 0..5 {
        let node = attested_node(&citadel).await;
        serials.push(node.serial().to_string());
    }
    let unique: std::collections::HashSet<_> = serials.iter().collect();
    assert_eq!(unique.len(), serials.len(), "a serial repeated");
}
