//! Istio's traffic-management tasks on unmodified Envoy sidecars with real traffic capture.
//! Every workload runs in its own network namespace, made by the test and joined by a bridge
//! inside a hub namespace; `node-agent iptables` redirects its traffic as istio-init does; each
//! Envoy runs under its own uid, so the agent's unix attestation gives it its own SVID, and
//! takes its whole configuration over ADS through the agent's socket. Clients call
//! `http://reviews:9080` as in Istio, resolved by the pod's `/etc/netns/NAME/hosts`, and
//! sidecars speak mTLS to each other. Needs root, iproute2 and iptables (CI has them all).
mod common;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use testkit::netns::{Network, Pod, Proc};

const BOOKINFO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../mesh/tests/data/istio");
const PRODUCTPAGE_ID: &str = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage";

/// What `testkit/py/client.py` saw.
#[derive(Debug, Default, serde::Deserialize)]
struct Calls {
    bodies: BTreeMap<String, usize>,
    statuses: BTreeMap<String, usize>,
    errors: BTreeMap<String, usize>,
    overloaded: usize,
    peers: BTreeMap<String, usize>,
}

impl Calls {
    fn failed(&self) -> usize {
        let bad: usize = self
            .statuses
            .iter()
            .filter(|(s, _)| !s.starts_with('2'))
            .map(|(_, n)| n)
            .sum();
        bad + self.errors.values().sum::<usize>()
    }

    fn of(&self, body: &str) -> usize {
        self.bodies.get(body).copied().unwrap_or(0)
    }

    /// Whether every answer came without a peer identity (the request arrived in plaintext).
    fn anonymous(&self) -> bool {
        self.peers.keys().all(String::is_empty)
    }

    fn status(&self, code: u16) -> usize {
        self.statuses.get(&code.to_string()).copied().unwrap_or(0)
    }
}

/// `n` requests to `url` from `pod`, `c` at a time, each on its own connection.
fn client(pod: &Pod, url: &str, n: usize, c: usize, headers: &[&str]) -> Command {
    client_with(pod, "GET", url, n, c, headers)
}

fn client_with(
    pod: &Pod,
    method: &str,
    url: &str,
    n: usize,
    c: usize,
    headers: &[&str],
) -> Command {
    let mut cmd = pod.command("python3");
    cmd.arg(testkit::script("client.py")).arg(url).args([
        "-X",
        method,
        "-n",
        &n.to_string(),
        "-c",
        &c.to_string(),
    ]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd
}

fn run_client(mut cmd: Command) -> Calls {
    let out = tokio::task::block_in_place(|| cmd.output()).expect("running the test client");
    assert!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the client's JSON")
}

fn call(pod: &Pod, url: &str, n: usize, headers: &[&str]) -> Calls {
    run_client(client(pod, url, n, n.clamp(1, 8), headers))
}

/// A pod of the test, and what runs in it.
struct PodSpec {
    name: &'static str,
    /// The namespace of its WorkloadEntry and identity.
    namespace: &'static str,
    addr: Ipv4Addr,
    /// `app.py` flags, or no application.
    app: Option<&'static [&'static str]>,
    /// The sidecar's uid and service account, or no sidecar.
    sidecar: Option<(u32, &'static str)>,
    /// The Envoy is a gateway (`sidecar bootstrap --router`): no redirect, it binds its ports.
    gateway: bool,
}

/// citadel, the agent, and the pods with their applications and sidecars. Everything stops
/// and every namespace goes on drop.
struct World {
    config_dir: PathBuf,
    dir: PathBuf,
    envoys: BTreeMap<&'static str, PathBuf>,
    // Dropped in declaration order: processes, then the namespaces they ran in.
    _procs: Vec<Proc>,
    pods: BTreeMap<&'static str, Pod>,
    _net: Network,
    _agent: Agent,
    _citadel: Citadel,
    _tmp: tempfile::TempDir,
}

impl World {
    async fn start(
        tag: &str,
        files: &[(&str, String)],
        pods: &[PodSpec],
        hosts: &[(Ipv4Addr, &str)],
    ) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_path_buf();
        // Sidecars run under their own uids and must reach the bootstrap and the agent socket.
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let config_dir = dir.join("mesh");
        std::fs::create_dir(&config_dir).unwrap();
        for (name, text) in files {
            std::fs::write(config_dir.join(name), text).unwrap();
        }
        let citadel = Citadel::start_with_config(
            &dir.join("citadel"),
            "127.0.0.1:0".parse().unwrap(),
            Some(config_dir.clone()),
        )
        .await;
        let envoy = testkit::envoy_binary();
        for p in pods {
            if let Some((uid, sa)) = p.sidecar {
                citadel
                    .entry(
                        &format!("spiffe://cluster.local/ns/{}/sa/{sa}", p.namespace),
                        "node-1",
                        &[
                            format!("unix:uid:{uid}"),
                            format!("unix:path:{}", envoy.display()),
                        ],
                        Duration::from_secs(3600),
                    )
                    .await;
            }
        }
        let agent = Agent::start(&dir, &citadel, Some(&citadel.token("node-1").await), &[]).await;
        let net = Network::new(tag);
        let mut world = World {
            config_dir,
            dir,
            envoys: BTreeMap::new(),
            _procs: Vec::new(),
            pods: BTreeMap::new(),
            _net: net,
            _agent: agent,
            _citadel: citadel,
            _tmp: tmp,
        };
        for p in pods {
            let pod = world._net.pod(p.name, p.addr, hosts);
            if let Some(flags) = p.app {
                let mut cmd = pod.command("python3");
                cmd.arg(testkit::script("app.py"))
                    .args(["--name", p.name])
                    .args(flags);
                world._procs.push(pod.spawn_ready(cmd));
            }
            if let Some((uid, _)) = p.sidecar {
                let envoy = world.sidecar(&pod, p, uid, &envoy);
                world._procs.push(envoy);
            }
            world.pods.insert(p.name, pod);
        }
        for name in world.envoys.keys() {
            let pod = &world.pods[name];
            eventually(
                Duration::from_secs(60),
                &format!("{name}'s Envoy ready"),
                async || (admin(pod, "/ready").trim() == "LIVE").then_some(()),
            )
            .await;
        }
        world
    }

    /// The redirect, then Envoy under `uid`, started from what `citadel sidecar bootstrap`
    /// prints for the pod's WorkloadEntry.
    fn sidecar(&mut self, pod: &Pod, spec: &PodSpec, uid: u32, envoy: &Path) -> Proc {
        let (namespace, workload) = (spec.namespace, spec.name);
        let loaded = mesh::load_dir(&self.config_dir).unwrap();
        let socket = self.dir.join("agent.sock");
        let opts = citadel::bootstrap::BootstrapOptions {
            trust_domain: "cluster.local",
            agent_socket: &socket,
            xds: citadel::bootstrap::XdsSource::Agent,
            admin: "127.0.0.1:15000".parse().unwrap(),
            router: spec.gateway,
            redirect: !spec.gateway,
        };
        let bootstrap =
            citadel::bootstrap::sidecar(&loaded.config, &format!("{namespace}/{workload}"), &opts)
                .unwrap();
        let file = self.dir.join(format!("{workload}.json"));
        std::fs::write(&file, bootstrap.to_string()).unwrap();
        if spec.gateway {
            // A gateway binds its servers' ports (80, 443) under its own uid, as Istio's
            // gateway pods do with this sysctl.
            pod.run(
                "sysctl",
                &["-q", "-w", "net.ipv4.ip_unprivileged_port_start=0"],
            );
        } else {
            pod.run(AGENT, &["iptables", "--proxy-uid", &uid.to_string()]);
        }
        let log = self.dir.join(format!("{workload}-envoy.log"));
        let child = pod
            .command_as(uid, envoy)
            .arg("-c")
            .arg(&file)
            .args(["--disable-hot-restart", "--log-level", "info"])
            // A listener update drains the connections of the filter chains it replaces
            // (policy changes are chain changes): within 2 s rather than Envoy's 10 minutes.
            .args(["--drain-strategy", "immediate", "--drain-time-s", "2"])
            .args([
                "--base-id",
                &(std::process::id() % 10_000 + uid).to_string(),
            ])
            .stdout(std::fs::File::create(self.dir.join(format!("{workload}-envoy.out"))).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting Envoy");
        self.envoys.insert(workload, log);
        Proc(child)
    }

    fn pod(&self, name: &str) -> &Pod {
        &self.pods[name]
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.config_dir.join(name), text).unwrap();
    }

    fn envoy_logs(&self) -> String {
        self.envoys
            .iter()
            .map(|(name, log)| {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                format!(
                    "--- {name}'s Envoy:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// What the plaintext inbound chains of the pod's Envoy logged: (chain, source address),
    /// each pair once.
    fn plaintext_sources(&self, pod: &str) -> std::collections::BTreeSet<(String, String)> {
        let out =
            std::fs::read_to_string(self.dir.join(format!("{pod}-envoy.out"))).unwrap_or_default();
        out.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(citadel::discovery::listeners::PLAINTEXT_LOG_PREFIX)?;
                let (chain, source) = rest.trim().split_once(' ')?;
                Some((
                    chain.strip_prefix("chain=")?.to_string(),
                    source.strip_prefix("source=")?.to_string(),
                ))
            })
            .collect()
    }

    /// A counter or gauge of the pod's Envoy (0 when Envoy has not created it).
    fn stat(&self, pod: &str, name: &str) -> u64 {
        admin(self.pod(pod), "/stats")
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(": ")?.parse().ok())
            .unwrap_or(0)
    }
}

/// GET on the pod's Envoy admin (127.0.0.1:15000 inside the pod).
fn admin(pod: &Pod, path: &str) -> String {
    let out = tokio::task::block_in_place(|| {
        pod.command("curl")
            .args(["-s", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:15000{path}"))
            .output()
    })
    .expect("curl (scripts/test.sh installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn bookinfo(file: &str) -> String {
    std::fs::read_to_string(Path::new(BOOKINFO).join(file)).unwrap()
}

fn workload(name: &str, addr: &str, labels: &str, sa: &str) -> String {
    workload_in("default", name, addr, labels, sa)
}

fn workload_in(ns: &str, name: &str, addr: &str, labels: &str, sa: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: {name}, namespace: {ns}}}
spec: {{address: {addr}, labels: {{{labels}}}, serviceAccount: {sa}}}
---
"
    )
}

fn service_entry(name: &str, vip: &str, port: &str, select: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}}}
spec:
  hosts: [{name}.default.svc.cluster.local]
  addresses: [{vip}]
  ports: [{port}]
  location: MESH_INTERNAL
  resolution: STATIC
  {select}
---
"
    )
}

fn tcp_echo_split(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: tcp-echo}}
spec:
  hosts: [tcp-echo]
  tcp:
  - route:
    - {{destination: {{host: tcp-echo, port: {{number: 9000}}, subset: v1}}, weight: {v1}}}
    - {{destination: {{host: tcp-echo, port: {{number: 9000}}, subset: v2}}, weight: {v2}}}
"
    )
}

const fn pod(
    name: &'static str,
    addr: Ipv4Addr,
    app: Option<&'static [&'static str]>,
    sidecar: Option<(u32, &'static str)>,
) -> PodSpec {
    pod_in("default", name, addr, app, sidecar)
}

const fn pod_in(
    namespace: &'static str,
    name: &'static str,
    addr: Ipv4Addr,
    app: Option<&'static [&'static str]>,
    sidecar: Option<(u32, &'static str)>,
) -> PodSpec {
    PodSpec {
        name,
        namespace,
        addr,
        app,
        sidecar,
        gateway: false,
    }
}

/// Bookinfo's reviews (three versions) and Istio's tcp-echo (two), each behind its own
/// sidecar, called from productpage's pod through its sidecar: Istio's sample files unchanged,
/// request routing by header, 90/10 then a live edit to 50/50 with no failed request, TCP
/// shifting 80/20, all over mTLS between sidecars that the callee's sidecar attributes to
/// productpage's identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_reviews_and_tcp_echo_under_iptables_capture() {
    let ip = |last: u8| Ipv4Addr::new(198, 18, 1, last);
    let mut services = String::new();
    services += &service_entry(
        "reviews",
        "198.19.1.1",
        "{number: 9080, name: http, protocol: HTTP}",
        "workloadSelector: {labels: {app: reviews}}",
    );
    services += &service_entry(
        "tcp-echo",
        "198.19.1.2",
        "{number: 9000, name: tcp, protocol: TCP}",
        "workloadSelector: {labels: {app: tcp-echo}}",
    );
    for v in 1..=3 {
        services += &workload(
            &format!("reviews-v{v}"),
            &ip(20 + v).to_string(),
            &format!("app: reviews, version: v{v}"),
            "bookinfo-reviews",
        );
    }
    for v in 1..=2 {
        services += &workload(
            &format!("tcp-echo-v{v}"),
            &ip(30 + v).to_string(),
            &format!("app: tcp-echo, version: v{v}"),
            "tcp-echo",
        );
    }
    services += &workload(
        "productpage-v1",
        &ip(10).to_string(),
        "app: productpage, version: v1",
        "bookinfo-productpage",
    );
    services += "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: tcp-echo}
spec:
  host: tcp-echo
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
";
    const HTTP: &[&str] = &["--http", "9080"];
    const TCP: &[&str] = &["--tcp", "9000"];
    let world = World::start(
        "bi",
        &[
            ("services.yaml", services),
            // Bookinfo's own files: subsets v1..v3 with no TLS setting (auto mTLS).
            (
                "destination-rule-all.yaml",
                bookinfo("destination-rule-all.yaml"),
            ),
            ("reviews.yaml", bookinfo("virtual-service-all-v1.yaml")),
            ("tcp-echo.yaml", tcp_echo_split(100, 0)),
        ],
        &[
            pod(
                "productpage-v1",
                ip(10),
                None,
                Some((20010, "bookinfo-productpage")),
            ),
            pod(
                "reviews-v1",
                ip(21),
                Some(HTTP),
                Some((20021, "bookinfo-reviews")),
            ),
            pod(
                "reviews-v2",
                ip(22),
                Some(HTTP),
                Some((20022, "bookinfo-reviews")),
            ),
            pod(
                "reviews-v3",
                ip(23),
                Some(HTTP),
                Some((20023, "bookinfo-reviews")),
            ),
            pod("tcp-echo-v1", ip(31), Some(TCP), Some((20031, "tcp-echo"))),
            pod("tcp-echo-v2", ip(32), Some(TCP), Some((20032, "tcp-echo"))),
        ],
        &[
            (
                "198.19.1.1".parse().unwrap(),
                "reviews reviews.default.svc.cluster.local",
            ),
            (
                "198.19.1.2".parse().unwrap(),
                "tcp-echo tcp-echo.default.svc.cluster.local",
            ),
        ],
    )
    .await;
    let page = world.pod("productpage-v1");
    let reviews = "http://reviews:9080/";
    eventually(
        Duration::from_secs(30),
        "reviews through the sidecars",
        async || (call(page, reviews, 1, &[]).of("reviews-v1") == 1).then_some(()),
    )
    .await;

    // virtual-service-all-v1: every request to v1, over mTLS from productpage's identity.
    let calls = call(page, reviews, 100, &[]);
    assert_eq!(
        calls.of("reviews-v1"),
        100,
        "{calls:?}\n{}",
        world.envoy_logs()
    );
    assert_eq!(calls.peers.get(PRODUCTPAGE_ID), Some(&100), "{calls:?}");

    // Request routing by header (virtual-service-reviews-jason-v2-v3).
    world.write(
        "reviews.yaml",
        &bookinfo("virtual-service-reviews-jason-v2-v3.yaml"),
    );
    eventually(Duration::from_secs(10), "the jason rule", async || {
        (call(page, reviews, 1, &["end-user: jason"]).of("reviews-v2") == 1).then_some(())
    })
    .await;
    assert_eq!(
        call(page, reviews, 50, &["end-user: jason"]).of("reviews-v2"),
        50
    );
    assert_eq!(call(page, reviews, 50, &[]).of("reviews-v3"), 50);

    // Weighted shifting, Istio's 90/10 file, over 1,000 requests.
    world.write(
        "reviews.yaml",
        &bookinfo("virtual-service-reviews-90-10.yaml"),
    );
    eventually(Duration::from_secs(10), "the 90/10 split", async || {
        (call(page, reviews, 20, &[]).of("reviews-v1") > 0).then_some(())
    })
    .await;
    let calls = call(page, reviews, 1000, &[]);
    eprintln!("90/10: {calls:?}");
    assert_eq!(calls.failed(), 0, "{calls:?}");
    assert_eq!(
        calls.of("reviews-v1") + calls.of("reviews-v2"),
        1000,
        "{calls:?}"
    );
    // Binomial(1000, 0.9): sd ≈ 9.5; ±5 sd.
    assert!((852..=948).contains(&calls.of("reviews-v1")), "{calls:?}");

    // A live edit to 50/50 (v1/v3) during traffic: no request fails, nothing restarts.
    let traffic = std::thread::spawn({
        let cmd = client(page, reviews, 600, 4, &[]);
        move || run_client(cmd)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    world.write(
        "reviews.yaml",
        &bookinfo("virtual-service-reviews-50-v3.yaml"),
    );
    let during = tokio::task::block_in_place(|| traffic.join().unwrap());
    assert_eq!(during.failed(), 0, "failed during the edit: {during:?}");
    eventually(Duration::from_secs(10), "the 50/50 split", async || {
        (call(page, reviews, 20, &[]).of("reviews-v3") > 0).then_some(())
    })
    .await;
    let calls = call(page, reviews, 1000, &[]);
    eprintln!("50/50: {calls:?}");
    assert_eq!(calls.failed(), 0, "{calls:?}");
    assert_eq!(
        calls.of("reviews-v1") + calls.of("reviews-v3"),
        1000,
        "{calls:?}"
    );
    // Binomial(1000, 0.5): sd ≈ 15.8; ±5 sd.
    assert!((421..=579).contains(&calls.of("reviews-v1")), "{calls:?}");

    // Inbound was captured into the callee's sidecar and arrived over mTLS, never plaintext;
    // productpage's sidecar made the TLS handshakes.
    for v in ["reviews-v1", "reviews-v3"] {
        let mtls = world.stat(v, "http.inbound_9080_permissive_mtls.downstream_rq_total");
        let plain = world.stat(
            v,
            "http.inbound_9080_permissive_plaintext.downstream_rq_total",
        );
        assert!(
            mtls > 100 && plain == 0,
            "{v}: {mtls} mTLS, {plain} plaintext requests"
        );
    }
    let handshakes = world.stat(
        "productpage-v1",
        "cluster.outbound|9080|v1|reviews.default.svc.cluster.local.ssl.handshake",
    );
    assert!(handshakes > 0, "no TLS handshakes to reviews v1");

    // TCP traffic shifting: all to v1, then 80/20.
    let echo = "tcp://tcp-echo:9000";
    eventually(
        Duration::from_secs(10),
        "tcp-echo through the sidecars",
        async || (call(page, echo, 1, &[]).of("tcp-echo-v1 hello") == 1).then_some(()),
    )
    .await;
    assert_eq!(call(page, echo, 100, &[]).of("tcp-echo-v1 hello"), 100);
    world.write("tcp-echo.yaml", &tcp_echo_split(80, 20));
    eventually(Duration::from_secs(10), "the 80/20 TCP split", async || {
        (call(page, echo, 30, &[]).of("tcp-echo-v2 hello") > 0).then_some(())
    })
    .await;
    let calls = call(page, echo, 1000, &[]);
    eprintln!("tcp-echo 80/20: {calls:?}");
    assert_eq!(calls.failed(), 0, "{calls:?}");
    // Binomial(1000, 0.8): sd ≈ 12.6; ±5 sd.
    assert!(
        (737..=863).contains(&calls.of("tcp-echo-v1 hello")),
        "{calls:?}"
    );
    let tcp_mtls = world.stat(
        "tcp-echo-v2",
        "tcp.inbound_9000_permissive_mtls.downstream_cx_total",
    );
    assert!(tcp_mtls > 50, "tcp-echo-v2: {tcp_mtls} mTLS connections");
}

fn peer_authentication(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: {name}, namespace: default}}
spec: {spec}
"
    )
}

/// PeerAuthentication on real traffic: `sleep` calls `httpbin` through both sidecars, and
/// `legacy`, a pod with no sidecar, calls httpbin's address in plaintext. PERMISSIVE (the
/// default) takes both, and httpbin's counters tell them apart. A namespace STRICT, written
/// during sleep's traffic, refuses legacy and fails none of sleep's requests. A workload
/// PERMISSIVE overrides the namespace; then a port-level DISABLE turns 9080 plaintext, and
/// sleep's sidecar follows it (auto mTLS) instead of breaking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_authentication_modes_on_captured_traffic() {
    let ip = |last: u8| Ipv4Addr::new(198, 18, 3, last);
    let mut services = service_entry(
        "httpbin",
        "198.19.3.1",
        "{number: 9080, name: http, protocol: HTTP}",
        "workloadSelector: {labels: {app: httpbin}}",
    );
    services += &workload("httpbin", &ip(11).to_string(), "app: httpbin", "httpbin");
    services += &workload("sleep", &ip(10).to_string(), "app: sleep", "sleep");
    const HTTP: &[&str] = &["--http", "9080"];
    let world = World::start(
        "pa",
        &[("services.yaml", services)],
        &[
            pod("sleep", ip(10), None, Some((20310, "sleep"))),
            pod("httpbin", ip(11), Some(HTTP), Some((20311, "httpbin"))),
            pod("legacy", ip(12), None, None),
        ],
        &[(
            "198.19.3.1".parse().unwrap(),
            "httpbin httpbin.default.svc.cluster.local",
        )],
    )
    .await;
    let sleep = world.pod("sleep");
    let legacy = world.pod("legacy");
    let mesh_url = "http://httpbin:9080/";
    let direct = "http://198.18.3.11:9080/";
    eventually(
        Duration::from_secs(30),
        "httpbin through the sidecars",
        async || (call(sleep, mesh_url, 1, &[]).of("httpbin") == 1).then_some(()),
    )
    .await;

    // PERMISSIVE: both get through, each counted on its own chain.
    let calls = call(sleep, mesh_url, 20, &[]);
    assert_eq!(calls.of("httpbin"), 20, "{calls:?}\n{}", world.envoy_logs());
    assert_eq!(
        calls
            .peers
            .get("spiffe://cluster.local/ns/default/sa/sleep"),
        Some(&20)
    );
    // The log names the peer that connected, whatever X-Forwarded-For claims.
    let calls = call(legacy, direct, 5, &["X-Forwarded-For: 198.19.9.9"]);
    assert_eq!(calls.of("httpbin"), 5, "{calls:?}");
    assert!(calls.anonymous(), "plaintext has no peer: {calls:?}");
    let stat = |name: &str| {
        world.stat(
            "httpbin",
            &format!("http.inbound_9080_{name}.downstream_rq_total"),
        )
    };
    assert!(stat("permissive_mtls") >= 20, "{}", stat("permissive_mtls"));
    assert_eq!(stat("permissive_plaintext"), 5);
    // Who sent plaintext, by address: the plaintext chain's access log names legacy only.
    let plaintext = world.plaintext_sources("httpbin");
    assert_eq!(
        plaintext,
        [(
            "inbound_9080_permissive_plaintext".to_string(),
            "198.18.3.12".to_string()
        )]
        .into(),
        "{plaintext:?}"
    );

    // Namespace STRICT during sleep's traffic: legacy is refused, sleep fails nothing.
    let traffic = std::thread::spawn({
        let cmd = client(sleep, mesh_url, 400, 2, &[]);
        move || run_client(cmd)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    world.write(
        "pa-namespace.yaml",
        &peer_authentication("default", "{mtls: {mode: STRICT}}"),
    );
    eventually(Duration::from_secs(10), "legacy refused", async || {
        (call(legacy, direct, 1, &[]).failed() == 1).then_some(())
    })
    .await;
    let during = tokio::task::block_in_place(|| traffic.join().unwrap());
    assert_eq!(
        during.failed(),
        0,
        "sleep failed during the switch: {during:?}"
    );
    let calls = call(legacy, direct, 5, &[]);
    assert_eq!(calls.failed(), 5, "{calls:?}");
    assert_eq!(call(sleep, mesh_url, 20, &[]).of("httpbin"), 20);
    assert!(stat("strict_mtls") > 0);

    // A workload PERMISSIVE overrides the namespace's STRICT.
    let workload_pa = |spec: &str| peer_authentication("httpbin", spec);
    world.write(
        "pa-httpbin.yaml",
        &workload_pa("{selector: {matchLabels: {app: httpbin}}, mtls: {mode: PERMISSIVE}}"),
    );
    eventually(Duration::from_secs(10), "legacy let in again", async || {
        (call(legacy, direct, 1, &[]).of("httpbin") == 1).then_some(())
    })
    .await;
    assert_eq!(call(sleep, mesh_url, 20, &[]).of("httpbin"), 20);

    // STRICT for the workload but 9080 DISABLE: plaintext only, and sleep's sidecar follows.
    world.write(
        "pa-httpbin.yaml",
        &workload_pa(
            "{selector: {matchLabels: {app: httpbin}}, mtls: {mode: STRICT}, portLevelMtls: {9080: {mode: DISABLE}}}",
        ),
    );
    eventually(
        Duration::from_secs(10),
        "sleep following 9080 to plaintext",
        async || {
            let c = call(sleep, mesh_url, 1, &[]);
            (c.of("httpbin") == 1 && c.anonymous()).then_some(())
        },
    )
    .await;
    let calls = call(sleep, mesh_url, 20, &[]);
    assert_eq!(calls.of("httpbin"), 20, "{calls:?}");
    assert!(calls.anonymous(), "sleep now speaks plaintext: {calls:?}");
    assert_eq!(call(legacy, direct, 5, &[]).of("httpbin"), 5);
    // Envoy may start a chain's counters again when a listener update replaces the chain, so
    // only the first phase's counts are exact.
    assert!(stat("disable_plaintext") > 0);
}

/// Istio's other traffic tasks from a captured client: fault abort, request timeout, retries,
/// circuit breaking, outlier ejection, and REGISTRY_ONLY against a MESH_EXTERNAL
/// ServiceEntry (STATIC), egress TLS origination to a DNS-resolved external HTTPS server (the
/// task's ServiceEntry with `targetPort: 443`, and a SIMPLE DestinationRule whose
/// `credentialName` Secret holds the CA), then ALLOW_ANY set
/// live, which lets the unknown host through the original-destination passthrough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_traffic_tasks_under_iptables_capture() {
    let ip = |last: u8| Ipv4Addr::new(198, 18, 2, last);
    let http = "{number: 80, name: http, protocol: HTTP}";
    let mut c = String::new();
    let backends: [(&str, &[u8]); 5] = [
        ("ratings", &[41]),
        ("details", &[42]),
        ("flaky", &[43]),
        ("httpbin", &[44]),
        ("pool", &[45, 46]),
    ];
    for (i, (name, last)) in backends.iter().enumerate() {
        let eps: Vec<String> = last
            .iter()
            .map(|l| format!("{{address: {}}}", ip(*l)))
            .collect();
        c += &service_entry(
            name,
            &format!("198.19.2.{}", i + 1),
            http,
            &format!("endpoints: [{}]", eps.join(", ")),
        );
    }
    c += &workload(
        "productpage-v1",
        &ip(10).to_string(),
        "app: productpage",
        "bookinfo-productpage",
    );
    c += &format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: external}}
spec:
  hosts: [api.external.test]
  ports: [{http}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: {}}}]
---
",
        ip(50)
    );
    // Istio's egress TLS origination task: plain HTTP from the application, TLS from the
    // sidecar to the external server's 443, found by DNS (the pod's hosts file), verified
    // against the CA in the DestinationRule's `credentialName` Secret.
    let certs = tempfile::tempdir().unwrap();
    let (root, cert, key) = server_certificate(certs.path(), "api.secure.test");
    let other = tempfile::tempdir().unwrap();
    let (other_root, _, _) = server_certificate(other.path(), "api.secure.test");
    c += &format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api-secure-test}}
spec:
  hosts: [api.secure.test]
  ports:
  - {{number: 80, name: http-port, protocol: HTTP, targetPort: 443}}
  - {{number: 443, name: https-port, protocol: HTTPS}}
  location: MESH_EXTERNAL
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api-secure-test}}
spec:
  host: api.secure.test
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 80}}
      tls: {{mode: SIMPLE, credentialName: api-secure-test}}
---
apiVersion: v1
kind: Secret
metadata: {{name: api-secure-test, namespace: default}}
stringData:
  ca.crt: |
    {}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: api-wrong-test}}
spec:
  hosts: [api.wrong.test]
  ports: [{{number: 80, name: http-port, protocol: HTTP, targetPort: 443}}]
  location: MESH_EXTERNAL
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api-wrong-test}}
spec:
  host: api.wrong.test
  trafficPolicy:
    tls: {{mode: SIMPLE, credentialName: another-root, sni: api.secure.test}}
---
apiVersion: v1
kind: Secret
metadata: {{name: another-root, namespace: default}}
stringData:
  cacert: |
    {}
---
",
        indented_pem(&root),
        indented_pem(&other_root)
    );
    // PodSpec holds 'static flags; the paths live as long as the test process.
    let secure_app: &'static [&'static str] = Vec::leak(vec![
        "--https",
        "443",
        "--cert",
        String::leak(cert.display().to_string()),
        "--key",
        String::leak(key.display().to_string()),
    ]);
    c += ISTIO_TASKS;
    let mut hosts: Vec<(Ipv4Addr, String)> = backends
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            (
                Ipv4Addr::new(198, 19, 2, i as u8 + 1),
                format!("{name} {name}.default.svc.cluster.local"),
            )
        })
        .collect();
    hosts.push((ip(50), "api.external.test".into()));
    hosts.push((ip(51), "unknown.example.test".into()));
    hosts.push((ip(52), "api.secure.test".into()));
    hosts.push((ip(52), "api.wrong.test".into()));
    let hosts: Vec<(Ipv4Addr, &str)> = hosts.iter().map(|(a, n)| (*a, n.as_str())).collect();
    let world = World::start(
        "tk",
        &[
            ("tasks.yaml", c),
            (
                "mesh.yaml",
                "outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n".into(),
            ),
        ],
        &[
            pod(
                "productpage-v1",
                ip(10),
                None,
                Some((20110, "bookinfo-productpage")),
            ),
            pod("ratings", ip(41), Some(&["--http", "80"]), None),
            pod(
                "details",
                ip(42),
                Some(&["--http", "80", "--delay-ms", "3000"]),
                None,
            ),
            pod("flaky", ip(43), Some(&["--http", "80", "--flaky"]), None),
            pod(
                "httpbin",
                ip(44),
                Some(&["--http", "80", "--delay-ms", "300"]),
                None,
            ),
            pod(
                "pool-broken",
                ip(45),
                Some(&["--http", "80", "--status", "500"]),
                None,
            ),
            pod("pool-healthy", ip(46), Some(&["--http", "80"]), None),
            pod("external", ip(50), Some(&["--http", "80"]), None),
            pod("unknown", ip(51), Some(&["--http", "80"]), None),
            pod("secure", ip(52), Some(secure_app), None),
        ],
        &hosts,
    )
    .await;
    let page = world.pod("productpage-v1");
    eventually(Duration::from_secs(30), "routes from ADS", async || {
        (call(page, "http://ratings/", 1, &[]).status(418) == 1).then_some(())
    })
    .await;

    // Fault injection: every request aborted with 418, the backend never reached.
    let calls = call(page, "http://ratings/", 20, &[]);
    assert_eq!(calls.status(418), 20, "{calls:?}");
    // Request timeout: the 3 s backend is cut at 300 ms with 504.
    let calls = call(page, "http://details/", 2, &[]);
    assert_eq!(calls.status(504), 2, "{calls:?}");
    // Retries: every other answer is 503; with retries on 5xx every request succeeds.
    let calls = run_client(client(page, "http://flaky/", 20, 1, &[]));
    assert_eq!(calls.of("flaky"), 20, "{calls:?}");
    // Circuit breaking: one connection, one pending request; concurrent callers beyond that
    // get 503 with x-envoy-overloaded.
    let calls = run_client(client(page, "http://httpbin/", 16, 8, &[]));
    assert!(
        calls.of("httpbin") >= 1 && calls.overloaded >= 1,
        "{calls:?}"
    );
    assert_eq!(calls.of("httpbin") + calls.overloaded, 16, "{calls:?}");
    // Outlier detection: the endpoint answering 500 is ejected after its first failure. The
    // ejection reaches Envoy's two workers through its main thread, and each worker balances
    // on its own, so each may reach the broken endpoint once before it hears.
    let calls = run_client(client(page, "http://pool/", 4, 1, &[]));
    assert!(calls.status(500) <= 2, "{calls:?}");
    let calls = run_client(client(page, "http://pool/", 30, 1, &[]));
    assert_eq!(calls.of("pool-healthy"), 30, "{calls:?}");

    // REGISTRY_ONLY: the unknown host is blocked, the MESH_EXTERNAL ServiceEntry reachable.
    let calls = call(page, "http://unknown.example.test/", 3, &[]);
    assert_eq!(calls.status(502), 3, "{calls:?}\n{}", world.envoy_logs());
    let calls = call(page, "http://api.external.test/", 3, &[]);
    assert_eq!(calls.of("external"), 3, "{calls:?}");
    // TLS origination: the application speaks HTTP, the server only TLS (resolved by DNS).
    let calls = call(page, "http://api.secure.test/", 5, &[]);
    assert_eq!(calls.of("secure"), 5, "{calls:?}\n{}", world.envoy_logs());
    // The Secret's CA is what verifies the server: the same server through a rule whose
    // Secret holds another root fails.
    let calls = call(page, "http://api.wrong.test/", 3, &[]);
    assert_eq!(calls.status(503), 3, "{calls:?}");
    let failed = world.stat(
        "productpage-v1",
        "cluster.outbound|80||api.wrong.test.ssl.fail_verify_error",
    );
    assert!(
        failed >= 1,
        "refused by verification, not for want of a cluster: {failed}"
    );
    // ALLOW_ANY, set live: the unknown host goes through to its original destination.
    world.write("mesh.yaml", "outboundTrafficPolicy: {mode: ALLOW_ANY}\n");
    eventually(Duration::from_secs(10), "ALLOW_ANY in force", async || {
        (call(page, "http://unknown.example.test/", 1, &[]).of("unknown") == 1).then_some(())
    })
    .await;
    let calls = call(page, "http://unknown.example.test/", 10, &[]);
    assert_eq!(calls.of("unknown"), 10, "{calls:?}");
}

/// `node-agent iptables` applies the redirect twice to the same rules and `--cleanup` leaves
/// the nat table as it found it.
#[test]
fn the_iptables_command_is_idempotent_and_cleans_up() {
    let net = Network::new("ipt");
    let pod = net.pod("p", Ipv4Addr::new(198, 18, 3, 2), &[]);
    let nat = || {
        let out = pod.run("iptables-save", &["-t", "nat"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with('-') || l.starts_with(':'))
            .map(|l| l.split(" [").next().unwrap_or(l).to_string())
            .collect::<Vec<_>>()
    };
    let before = nat();
    pod.run(AGENT, &["iptables", "-u", "20001", "-x", "198.19.9.0/24"]);
    let once = nat();
    pod.run(AGENT, &["iptables", "-u", "20001", "-x", "198.19.9.0/24"]);
    assert_eq!(nat(), once, "applying twice changes nothing");
    for want in [
        "-A PREROUTING -p tcp -j CITADEL_INBOUND",
        "-A OUTPUT -p tcp -j CITADEL_OUTPUT",
        "-A CITADEL_OUTPUT -m owner --uid-owner 20001 -j RETURN",
        "-A CITADEL_OUTPUT -d 198.19.9.0/24 -j RETURN",
        "-A CITADEL_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
    ] {
        assert!(
            once.iter().any(|l| l == want),
            "missing {want:?} in {once:#?}"
        );
    }
    pod.run(AGENT, &["iptables", "--cleanup"]);
    assert_eq!(nat(), before);
    // A bad flag names the flag and the value, and changes nothing.
    let out = pod
        .command(AGENT)
        .args(["iptables", "-i", "198.19.0.1/16"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--outbound-ip-ranges") && err.contains("host bits"),
        "{err}"
    );
    assert_eq!(nat(), before);
}

fn istio_policy(file: &str) -> String {
    std::fs::read_to_string(Path::new(BOOKINFO).join(file)).unwrap()
}

fn authz(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: foo}}
spec: {spec}
"
    )
}

/// AuthorizationPolicy on real traffic, as Istio's authorization tasks run it: `sleep` in
/// `foo` and `sleep` in `bar` call `httpbin` (HTTP, in `foo`) and `tcp-echo` (TCP 9000 and
/// 9002, in `foo`), each behind its sidecar. By principal, method and path; a DENY on
/// `/admin*` over an ALLOW-all; the empty ALLOW and the `{}` rule; on TCP, Istio's
/// tcp-policy files unchanged (ports, then the fail-closed `methods` rule, then the DENY) and
/// a policy by principal. Envoy's per-policy counters name the policy that decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_policies_on_captured_traffic() {
    let ip = |last: u8| Ipv4Addr::new(198, 18, 4, last);
    let mut services = String::from(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin, namespace: foo}
spec:
  hosts: [httpbin.foo.svc.cluster.local]
  addresses: [198.19.4.1]
  ports: [{number: 8000, name: http, protocol: HTTP}]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {labels: {app: httpbin}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: tcp-echo, namespace: foo}
spec:
  hosts: [tcp-echo.foo.svc.cluster.local]
  addresses: [198.19.4.2]
  ports: [{number: 9000, name: tcp, protocol: TCP}, {number: 9002, name: tcp-other, protocol: TCP}]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {labels: {app: tcp-echo}}
---
",
    );
    services += &workload_in(
        "foo",
        "httpbin",
        &ip(11).to_string(),
        "app: httpbin",
        "httpbin",
    );
    services += &workload_in(
        "foo",
        "tcp-echo",
        &ip(12).to_string(),
        "app: tcp-echo",
        "tcp-echo",
    );
    services += &workload_in(
        "foo",
        "sleep-foo",
        &ip(10).to_string(),
        "app: sleep",
        "sleep",
    );
    services += &workload_in(
        "bar",
        "sleep-bar",
        &ip(20).to_string(),
        "app: sleep",
        "sleep",
    );
    const HTTP: &[&str] = &["--http", "8000"];
    const TCP: &[&str] = &["--tcp", "9000", "--tcp", "9002"];
    let world = World::start(
        "authz",
        &[("services.yaml", services)],
        &[
            pod_in("foo", "sleep-foo", ip(10), None, Some((20410, "sleep"))),
            pod_in("bar", "sleep-bar", ip(20), None, Some((20411, "sleep"))),
            pod_in(
                "foo",
                "httpbin",
                ip(11),
                Some(HTTP),
                Some((20412, "httpbin")),
            ),
            pod_in(
                "foo",
                "tcp-echo",
                ip(12),
                Some(TCP),
                Some((20413, "tcp-echo")),
            ),
        ],
        &[
            (
                "198.19.4.1".parse().unwrap(),
                "httpbin.foo httpbin.foo.svc.cluster.local",
            ),
            (
                "198.19.4.2".parse().unwrap(),
                "tcp-echo.foo tcp-echo.foo.svc.cluster.local",
            ),
        ],
    )
    .await;
    let (foo, bar) = (world.pod("sleep-foo"), world.pod("sleep-bar"));
    let get = |pod: &Pod, path: &str| {
        run_client(client(
            pod,
            &format!("http://httpbin.foo:8000{path}"),
            5,
            5,
            &[],
        ))
    };
    let post = |pod: &Pod, path: &str| {
        let url = format!("http://httpbin.foo:8000{path}");
        run_client(client_with(pod, "POST", &url, 5, 5, &[]))
    };
    let tcp = |pod: &Pod, port: u16| {
        run_client(client(
            pod,
            &format!("tcp://tcp-echo.foo:{port}"),
            3,
            3,
            &[],
        ))
    };
    // Until a change reaches httpbin's sidecar, wait for its first visible effect.
    let until = async |what: &str, check: &dyn Fn() -> bool| {
        eventually(Duration::from_secs(15), what, async || {
            check().then_some(())
        })
        .await
    };
    until("httpbin and tcp-echo through the sidecars", &|| {
        get(foo, "/headers").of("httpbin") == 5 && tcp(bar, 9000).of("tcp-echo hello") == 3
    })
    .await;
    let stat = |pod: &str, name: &str| world.stat(pod, name);
    let http_stat = |name: &str| {
        stat(
            "httpbin",
            &format!("http.inbound_8000_permissive_mtls.rbac.{name}"),
        )
    };

    // By principal, method and path (Istio's reference example, with sleep's identity).
    world.write(
        "authz-httpbin.yaml",
        &authz(
            "httpbin",
            "{selector: {matchLabels: {app: httpbin}}, action: ALLOW, rules: [{from: [{source: {principals: [cluster.local/ns/foo/sa/sleep]}}], to: [{operation: {methods: [GET], paths: [/headers]}}]}]}",
        ),
    );
    // Every phase waits until each caller sees the new policy: a caller's sidecar may pool
    // connections to httpbin's from before, and they end with the drain of the chains they
    // came in on.
    until("foo may GET /headers only; bar nothing", &|| {
        get(bar, "/headers").status(403) == 5
            && get(foo, "/headers").of("httpbin") == 5
            && post(foo, "/headers").status(403) == 5
            && get(foo, "/ip").status(403) == 5
    })
    .await;
    // Counters name the policy that decided. Envoy may start a chain's counters again when an
    // update replaces the chain, so they are read around a batch once the policy is in force.
    let counted = |name: &str, batch: &dyn Fn()| {
        let before = http_stat(name);
        batch();
        http_stat(name) - before
    };
    let allowed_by = "authz_allow.policy.ns[foo]-policy[httpbin]-rule[0].allowed";
    assert_eq!(
        counted(allowed_by, &|| assert_eq!(
            get(foo, "/headers").of("httpbin"),
            5
        )),
        5
    );
    let no_allow_matched = "authz_allow.denied";
    assert_eq!(
        counted(no_allow_matched, &|| assert_eq!(
            get(bar, "/headers").status(403),
            5
        )),
        5
    );

    // A DENY on /admin* beats an ALLOW-all.
    world.write(
        "authz-httpbin.yaml",
        &authz(
            "httpbin",
            "{selector: {matchLabels: {app: httpbin}}, rules: [{}]}",
        ),
    );
    world.write(
        "authz-deny.yaml",
        &authz(
            "deny-admin",
            "{selector: {matchLabels: {app: httpbin}}, action: DENY, rules: [{to: [{operation: {paths: [/admin*]}}]}]}",
        ),
    );
    until("/admin* denied, the rest allowed", &|| {
        get(foo, "/admin/users").status(403) == 5
            && get(bar, "/admin").status(403) == 5
            && get(bar, "/headers").of("httpbin") == 5
            && post(foo, "/status/200").of("httpbin") == 5
    })
    .await;
    let denied_by = "authz_deny.policy.ns[foo]-policy[deny-admin]-rule[0].denied";
    assert_eq!(
        counted(denied_by, &|| assert_eq!(get(bar, "/admin").status(403), 5)),
        5
    );
    // Paths are normalized before the policy sees them (Istio's default): dot segments do not
    // walk around the DENY.
    assert_eq!(get(foo, "/public/../admin/users").status(403), 5);

    // The empty ALLOW denies everything; the `{}` rule, added next to it, allows everything.
    world.write("authz-deny.yaml", "");
    world.write(
        "authz-httpbin.yaml",
        &istio_policy("authorization-policy-allow-nothing.yaml")
            .replace("namespace: default", "namespace: foo"),
    );
    until("allow-nothing", &|| {
        get(foo, "/headers").status(403) == 5 && get(bar, "/ip").status(403) == 5
    })
    .await;
    world.write(
        "authz-all.yaml",
        &istio_policy("authorization-policy-reference-allow-all.yaml"),
    );
    until("allow-all", &|| {
        get(bar, "/ip").of("httpbin") == 5 && post(foo, "/admin").of("httpbin") == 5
    })
    .await;

    // TCP, Istio's tcp-policy files unchanged: ports 9000 and 9001 allowed, so 9002 is not.
    // (allow-nothing and allow-all are namespace-wide: they go first.)
    world.write("authz-httpbin.yaml", "");
    world.write("authz-all.yaml", "");
    world.write(
        "tcp-policy.yaml",
        &istio_policy("authorization-policy-tcp-policy-allow-ports.yaml"),
    );
    until("tcp 9002 closed", &|| {
        tcp(foo, 9002).failed() == 3 && tcp(bar, 9000).of("tcp-echo hello") == 3
    })
    .await;
    let tcp_stat = |name: &str| {
        stat(
            "tcp-echo",
            &format!("inbound_9000_permissive_mtls.authz_allow.rbac.{name}"),
        )
    };
    let before = tcp_stat("policy.ns[foo]-policy[tcp-policy].shadow_allowed");
    assert_eq!(tcp(foo, 9000).of("tcp-echo hello"), 3);
    assert_eq!(
        tcp_stat("policy.ns[foo]-policy[tcp-policy].shadow_allowed") - before,
        3
    );
    // The same policy naming `methods`: an ALLOW rule that cannot match TCP allows nothing.
    world.write(
        "tcp-policy.yaml",
        &istio_policy("authorization-policy-tcp-policy-allow-get-port-9000.yaml"),
    );
    until("fail closed on 9000", &|| {
        tcp(foo, 9000).failed() == 3 && tcp(bar, 9002).failed() == 3
    })
    .await;
    // A DENY naming `methods` denies the whole port.
    world.write(
        "tcp-policy.yaml",
        &istio_policy("authorization-policy-tcp-policy-deny-get-port-9000.yaml"),
    );
    until("9000 denied to everyone, 9002 open", &|| {
        tcp(foo, 9002).of("tcp-echo hello") == 3 && tcp(bar, 9000).failed() == 3
    })
    .await;
    // By principal on a TCP port.
    world.write(
        "tcp-policy.yaml",
        &authz(
            "tcp-policy",
            "{selector: {matchLabels: {app: tcp-echo}}, rules: [{from: [{source: {principals: [cluster.local/ns/foo/sa/sleep]}}], to: [{operation: {ports: [\"9000\"]}}]}]}",
        ),
    );
    until("only sleep in foo, only on 9000", &|| {
        tcp(bar, 9000).failed() == 3
            && tcp(foo, 9000).of("tcp-echo hello") == 3
            && tcp(foo, 9002).failed() == 3
    })
    .await;
}

/// A root VirtualService on a gateway delegating `/status` to a VirtualService of another
/// namespace (Istio's delegate shape).
const DELEGATION: &str = "apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: apps, namespace: istio-system}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 8080, name: http-apps, protocol: HTTP}, hosts: [app.example.com]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: app, namespace: istio-system}
spec:
  hosts: [app.example.com]
  gateways: [apps]
  http:
  - match: [{uri: {prefix: /status}}]
    delegate: {name: httpbin-status, namespace: default}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: httpbin-status, namespace: default}
spec:
  http:
  - route: [{destination: {host: httpbin, port: {number: 8000}}}]
";

const fn gateway_pod(
    namespace: &'static str,
    name: &'static str,
    addr: Ipv4Addr,
    gateway: (u32, &'static str),
) -> PodSpec {
    PodSpec {
        gateway: true,
        ..pod_in(namespace, name, addr, None, Some(gateway))
    }
}

/// A server certificate for `host` made with the `openssl` commands of Istio's secure-ingress
/// task (plus a DNS SAN, which clients check): returns (root, certificate, key) in `dir`,
/// readable by every sidecar uid.
fn server_certificate(dir: &Path, host: &str) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl (scripts/test.sh installs it)");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let subj = "/O=example Inc./CN=example.com";
    openssl(&[
        "req", "-x509", "-sha256", "-nodes", "-days", "365", "-newkey", "rsa:2048", "-subj", subj,
        "-keyout", "root.key", "-out", "root.crt",
    ]);
    let subj = format!("/CN={host}/O=test organization");
    openssl(&[
        "req",
        "-out",
        "server.csr",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-subj",
        &subj,
    ]);
    std::fs::write(dir.join("san.ext"), format!("subjectAltName=DNS:{host}\n")).unwrap();
    openssl(&[
        "x509",
        "-req",
        "-sha256",
        "-days",
        "365",
        "-CA",
        "root.crt",
        "-CAkey",
        "root.key",
        "-set_serial",
        "0",
        "-in",
        "server.csr",
        "-out",
        "server.crt",
        "-extfile",
        "san.ext",
    ]);
    (
        dir.join("root.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    )
}

/// A PEM file's text as a YAML block scalar's lines.
fn indented_pem(file: &Path) -> String {
    testkit::certs::yaml_block(&std::fs::read_to_string(file).unwrap())
}

/// The secure-ingress task's certificate for `httpbin.example.com`, and the Secret
/// `kubectl create -n istio-system secret tls httpbin-credential` makes of it, as
/// `kubectl get -o yaml` prints it. Returns the root's path and the Secret.
fn httpbin_credential(dir: &Path) -> (PathBuf, String) {
    use base64::Engine as _;
    let (root, cert, key) = server_certificate(dir, "httpbin.example.com");
    let b64 = |file: &Path| {
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(file).unwrap())
    };
    let secret = format!(
        "apiVersion: v1
kind: Secret
metadata: {{name: httpbin-credential, namespace: istio-system}}
type: kubernetes.io/tls
data:
  tls.crt: {}
  tls.key: {}
",
        b64(&cert),
        b64(&key)
    );
    (root, secret)
}

/// Istio's ingress tasks on a gateway Envoy started from `citadel sidecar bootstrap --router`:
/// a client outside the mesh (no sidecar, no identity) calls `httpbin.example.com` on the
/// gateway, first over HTTP (ingress-control's Gateway and VirtualService, unchanged), then
/// over HTTPS with the `credentialName` Secret from the store (secure-ingress's, set live).
/// The gateway goes into the mesh over mTLS with its own SVID, and httpbin's policy allows
/// that principal only: a sidecar'd client in the mesh and the outside client calling httpbin
/// directly are refused. A DENY on the gateway by client address refuses a second outside
/// client there. The tcp-echo sample's TCP Gateway server routes connections by its
/// VirtualService's `tcp` route, and a root VirtualService delegates a path to one in another
/// namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_gateway_into_the_mesh() {
    const GATEWAY_SA: &str = "istio-ingressgateway-service-account";
    let gateway_id = format!("spiffe://cluster.local/ns/istio-system/sa/{GATEWAY_SA}");
    let ip = |last: u8| Ipv4Addr::new(198, 18, 5, last);
    let certs = tempfile::tempdir().unwrap();
    let (root, secret) = httpbin_credential(certs.path());
    let mut services = String::from(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin}
spec:
  hosts: [httpbin.default.svc.cluster.local]
  addresses: [198.19.5.1]
  ports: [{number: 8000, name: http, protocol: HTTP}]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {labels: {app: httpbin}}
---
",
    );
    services += &workload("httpbin", &ip(11).to_string(), "app: httpbin", "httpbin");
    services += &workload("sleep", &ip(10).to_string(), "app: sleep", "sleep");
    services += &service_entry(
        "tcp-echo",
        "198.19.5.2",
        "{number: 9000, name: tcp, protocol: TCP}",
        "workloadSelector: {labels: {app: tcp-echo}}",
    );
    services += &workload(
        "tcp-echo-v1",
        &ip(12).to_string(),
        "app: tcp-echo, version: v1",
        "tcp-echo",
    );
    services += &workload_in(
        "istio-system",
        "istio-ingressgateway",
        &ip(30).to_string(),
        "istio: ingressgateway",
        GATEWAY_SA,
    );
    let policies = format!(
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: httpbin-from-ingress, namespace: default}}
spec:
  selector: {{matchLabels: {{app: httpbin}}}}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: [cluster.local/ns/istio-system/sa/{GATEWAY_SA}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: ingress-policy, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: DENY
  rules:
  - from:
    - source:
        ipBlocks: [\"{}\"]
",
        ip(41)
    );
    let world = World::start(
        "gw",
        &[
            ("services.yaml", services),
            ("policies.yaml", policies),
            ("credential.yaml", secret),
            ("gateway.yaml", istio_policy("gateway-ingress-httpbin.yaml")),
            ("tcp-echo.yaml", istio_policy("tcp-echo-all-v1.yaml")),
            ("delegation.yaml", DELEGATION.into()),
        ],
        &[
            gateway_pod(
                "istio-system",
                "istio-ingressgateway",
                ip(30),
                (20510, GATEWAY_SA),
            ),
            pod(
                "httpbin",
                ip(11),
                Some(&["--http", "8000"]),
                Some((20511, "httpbin")),
            ),
            pod("sleep", ip(10), None, Some((20512, "sleep"))),
            pod(
                "tcp-echo-v1",
                ip(12),
                Some(&["--tcp", "9000"]),
                Some((20513, "tcp-echo")),
            ),
            pod("outside", ip(40), None, None),
            pod("blocked", ip(41), None, None),
        ],
        &[
            (ip(30), "httpbin.example.com"),
            (
                "198.19.5.1".parse().unwrap(),
                "httpbin httpbin.default.svc.cluster.local",
            ),
        ],
    )
    .await;
    let outside = world.pod("outside");
    let via_gateway = "http://httpbin.example.com/status/200";
    eventually(
        Duration::from_secs(30),
        "the gateway's routes",
        async || (call(outside, via_gateway, 1, &[]).of("httpbin") == 1).then_some(()),
    )
    .await;

    // Outside → gateway → httpbin, the last hop over mTLS with the gateway's SVID.
    let calls = call(outside, via_gateway, 20, &[]);
    assert_eq!(calls.of("httpbin"), 20, "{calls:?}\n{}", world.envoy_logs());
    assert_eq!(calls.peers.get(&gateway_id), Some(&20), "{calls:?}");
    // Only the VirtualService's paths are exposed; other hosts have no route either.
    let calls = call(outside, "http://httpbin.example.com/headers", 3, &[]);
    assert_eq!(calls.status(404), 3, "{calls:?}");
    let calls = call(outside, "http://198.18.5.30/status/200", 3, &[]);
    assert_eq!(calls.status(404), 3, "{calls:?}");
    // httpbin admits the gateway's principal only: not a client in the mesh, nor the outside
    // client going around the gateway (plaintext, so no principal at all).
    let calls = call(world.pod("sleep"), "http://httpbin:8000/status/200", 5, &[]);
    assert_eq!(calls.status(403), 5, "{calls:?}");
    let calls = call(outside, "http://198.18.5.11:8000/status/200", 5, &[]);
    assert_eq!(calls.status(403), 5, "{calls:?}");
    // The gateway's own policy sees the client's address.
    let calls = call(world.pod("blocked"), via_gateway, 5, &[]);
    assert_eq!(calls.status(403), 5, "{calls:?}");
    assert_eq!(
        world.stat(
            "istio-ingressgateway",
            "http.outbound_0.0.0.0_80.rbac.authz_deny.policy.ns[istio-system]-policy[ingress-policy]-rule[0].denied"
        ),
        5
    );

    // Delegation: the root VirtualService binds app.example.com on 8080 and hands /status to
    // a delegate in another namespace, which routes to httpbin; the rest has no route.
    let app = ["Host: app.example.com"];
    let calls = call(outside, "http://198.18.5.30:8080/status/200", 5, &app);
    assert_eq!(calls.of("httpbin"), 5, "{calls:?}");
    let calls = call(outside, "http://198.18.5.30:8080/headers", 3, &app);
    assert_eq!(calls.status(404), 3, "{calls:?}");

    // Istio's TCP traffic-shifting task through the gateway: its Gateway (TCP 31400),
    // DestinationRule and VirtualService unchanged, all to tcp-echo v1.
    let calls = call(outside, "tcp://198.18.5.30:31400", 10, &[]);
    assert_eq!(calls.of("tcp-echo-v1 hello"), 10, "{calls:?}");

    // secure-ingress, set live: HTTPS on 443 with the Secret from the store.
    world.write(
        "gateway.yaml",
        &istio_policy("gateway-secure-ingress-httpbin.yaml"),
    );
    let https = |n: usize, root: &Path| {
        let mut cmd = client(outside, "https://httpbin.example.com/status/200", n, 4, &[]);
        cmd.arg("--cacert").arg(root);
        run_client(cmd)
    };
    eventually(Duration::from_secs(30), "the HTTPS server", async || {
        (https(1, &root).of("httpbin") == 1).then_some(())
    })
    .await;
    let calls = https(20, &root);
    assert_eq!(calls.of("httpbin"), 20, "{calls:?}\n{}", world.envoy_logs());
    assert_eq!(calls.peers.get(&gateway_id), Some(&20), "{calls:?}");
    // A new certificate in the Secret (from another root) is served with no restart.
    let renewed = tempfile::tempdir().unwrap();
    let (new_root, new_secret) = httpbin_credential(renewed.path());
    world.write("credential.yaml", &new_secret);
    eventually(
        Duration::from_secs(30),
        "the renewed certificate",
        async || (https(1, &new_root).of("httpbin") == 1).then_some(()),
    )
    .await;
    let calls = https(3, &root);
    assert_eq!(
        calls.errors.values().sum::<usize>(),
        3,
        "the old root no longer verifies: {calls:?}"
    );
    // The HTTP server is gone with the Gateway that had it.
    let calls = call(outside, via_gateway, 2, &[]);
    assert_eq!(calls.errors.values().sum::<usize>(), 2, "{calls:?}");
}
