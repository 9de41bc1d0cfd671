//! Policy translation at scale: `POLICIES` AuthorizationPolicies (1,000) across `NAMESPACES`
//! namespaces (100), each namespace with an HTTP+TCP service and its workload, and a share of
//! mesh-wide policies in the root namespace. Measures what citadel does when a policy changes:
//! load and validate the directory, then translate and encode every proxy class (one sidecar per
//! namespace: each sees its namespace's and the root's policies), which is the recompute before
//! a push; and the sizes of what is pushed: the largest RBAC filter, the largest listener, the
//! bytes per proxy. The push on the wire is the LDS push `ads_scale` measures for a route
//! change (same path: a non-endpoint change retranslates every class and pushes LDS/RDS).
//!
//! Run: `bash bench/policy.sh` (= `cargo bench -p citadel --bench policy_scale`). Environment:
//! `POLICIES` (1000), `NAMESPACES` (100), `ROUNDS` recomputes measured (5).
use std::time::{Duration, Instant};

use citadel::discovery::proxy::{Interception, Proxy, ProxyType};
use citadel::discovery::rbac::{HTTP_RBAC, NETWORK_RBAC};
use citadel::discovery::services::Registry;
use citadel::discovery::{ProxyResources, generate_with};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpConfigType;
use prost::Message;
use testkit::bench::{cpu_seconds, env_or, percentile, rss_mb};

/// One namespace's service and workload.
fn namespace_yaml(n: usize) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: svc, namespace: ns-{n}}}\nspec:\n  hosts: [svc.ns-{n}.svc.cluster.local]\n  ports: [{{number: 8080, name: http, protocol: HTTP}}, {{number: 9000, name: tcp, protocol: TCP}}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  workloadSelector: {{labels: {{app: svc}}}}\n---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: svc-0, namespace: ns-{n}}}\nspec: {{address: 198.18.{}.{}, labels: {{app: svc}}, serviceAccount: svc}}\n",
        n / 250,
        n % 250 + 1
    )
}

/// Policy `p` in namespace `ns`, of the shapes operators write: ALLOW by principals and
/// namespaces with paths and methods, DENY by address and path, AUDIT by path, a `when` on a
/// header, TCP ports; half select the workload, half apply namespace-wide.
fn policy_yaml(p: usize, ns: &str, namespaces: usize) -> String {
    let peer = |k: usize| format!("cluster.local/ns/ns-{}/sa/svc", (p + k) % namespaces);
    let selector = if p.is_multiple_of(2) {
        "  selector: {matchLabels: {app: svc}}\n"
    } else {
        ""
    };
    let rules = match p % 5 {
        0 => format!(
            "  action: ALLOW\n  rules:\n  - from: [{{source: {{principals: [\"{}\", \"{}\", \"{}\"]}}}}]\n    to: [{{operation: {{methods: [GET, HEAD], paths: [\"/api/v{p}/*\", \"/static*\", \"*.json\"]}}}}]\n",
            peer(1),
            peer(2),
            peer(3)
        ),
        1 => format!(
            "  action: DENY\n  rules:\n  - from: [{{source: {{ipBlocks: [\"198.19.{}.0/24\"], notNamespaces: [ns-{}]}}}}]\n    to: [{{operation: {{paths: [\"/admin/{p}*\"]}}}}]\n",
            p % 250,
            (p + 1) % namespaces
        ),
        2 => format!(
            "  action: ALLOW\n  rules:\n  - from: [{{source: {{namespaces: [ns-{}, ns-{}]}}}}]\n    to: [{{operation: {{ports: [\"9000\"]}}}}]\n",
            (p + 4) % namespaces,
            (p + 5) % namespaces
        ),
        3 => format!(
            "  action: AUDIT\n  rules:\n  - to: [{{operation: {{paths: [\"/audit/{p}\"], methods: [POST, PUT, DELETE]}}}}]\n"
        ),
        _ => format!(
            "  action: ALLOW\n  rules:\n  - from: [{{source: {{principals: [\"{}\"]}}}}]\n    when: [{{key: \"request.headers[x-tenant]\", values: [\"tenant-{p}\", \"tenant-{}*\"]}}]\n",
            peer(6),
            p + 1
        ),
    };
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: policy-{p}, namespace: {ns}}}\nspec:\n{selector}{rules}---\n"
    )
}

/// The mesh directory: one file per namespace (its service, workload and policies) and one
/// for the root namespace's mesh-wide policies (1 in 50).
fn write_mesh(dir: &std::path::Path, policies: usize, namespaces: usize) {
    let mut files: Vec<String> = (0..namespaces).map(namespace_yaml).collect();
    let mut root = String::new();
    for p in 0..policies {
        if p % 50 == 49 {
            root += &policy_yaml(p, "istio-system", namespaces);
        } else {
            files[p % namespaces] += &format!(
                "---\n{}",
                policy_yaml(p, &format!("ns-{}", p % namespaces), namespaces)
            );
        }
    }
    for (n, text) in files.iter().enumerate() {
        std::fs::write(dir.join(format!("ns-{n}.yaml")), text).unwrap();
    }
    std::fs::write(dir.join("root.yaml"), root).unwrap();
}

fn sidecar(n: usize) -> Proxy {
    Proxy {
        kind: ProxyType::Sidecar,
        id: format!(
            "sidecar~198.18.{}.{}~svc-0.ns-{n}~ns-{n}.svc.cluster.local",
            n / 250,
            n % 250 + 1
        ),
        namespace: format!("ns-{n}"),
        service_account: "svc".into(),
        labels: [("app".to_string(), "svc".to_string())].into(),
        ips: vec![
            format!("198.18.{}.{}", n / 250, n % 250 + 1)
                .parse()
                .unwrap(),
        ],
        workload_name: "svc-0".into(),
        interception: Interception::Redirect,
    }
}

/// Encoded sizes of one proxy's resources: all of them, the largest listener, the largest
/// RBAC filter (HTTP or network) and how many Envoy policies it holds.
#[derive(Debug, Default, Clone, Copy)]
struct Sizes {
    total: usize,
    listener: usize,
    rbac: usize,
}

fn sizes(r: &ProxyResources) -> Sizes {
    let total = r.clusters.iter().map(Message::encoded_len).sum::<usize>()
        + r.endpoints.iter().map(Message::encoded_len).sum::<usize>()
        + r.listeners.iter().map(Message::encoded_len).sum::<usize>()
        + r.routes.iter().map(Message::encoded_len).sum::<usize>();
    let listener = r
        .listeners
        .iter()
        .map(Message::encoded_len)
        .max()
        .unwrap_or(0);
    let mut rbac = 0;
    for f in r
        .listeners
        .iter()
        .flat_map(|l| &l.filter_chains)
        .flat_map(|c| &c.filters)
    {
        let Some(ConfigType::TypedConfig(any)) = &f.config_type else {
            continue;
        };
        if f.name == NETWORK_RBAC {
            rbac = rbac.max(any.value.len());
        } else if let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice()) {
            for h in hcm.http_filters.iter().filter(|h| h.name == HTTP_RBAC) {
                if let Some(HttpConfigType::TypedConfig(a)) = &h.config_type {
                    rbac = rbac.max(a.value.len());
                }
            }
        }
    }
    Sizes {
        total,
        listener,
        rbac,
    }
}

/// One configuration's figures over `rounds` loads and recomputes.
fn measure(dir: &std::path::Path, namespaces: usize, rounds: usize, label: &str) {
    let pid = std::process::id();
    let mut loads = Vec::new();
    let mut recomputes = Vec::new();
    let mut per_proxy = Vec::new();
    let mut cpu = Vec::new();
    let mut last = Vec::new();
    for _ in 0..rounds {
        let t0 = Instant::now();
        let loaded = mesh::load_dir(dir).expect("the mesh loads");
        loads.push(t0.elapsed());
        let config = loaded.config;
        let c0 = cpu_seconds(pid);
        let t1 = Instant::now();
        let registry = Registry::build(&config);
        last.clear();
        for n in 0..namespaces {
            let tp = Instant::now();
            let r = generate_with(&config, &registry, &sidecar(n));
            // Encoding is part of the push: each resource is encoded once per class.
            let bytes: usize = r
                .listeners
                .iter()
                .map(|l| l.encode_to_vec().len())
                .sum::<usize>()
                + r.routes
                    .iter()
                    .map(|x| x.encode_to_vec().len())
                    .sum::<usize>()
                + r.clusters
                    .iter()
                    .map(|x| x.encode_to_vec().len())
                    .sum::<usize>();
            std::hint::black_box(bytes);
            per_proxy.push(tp.elapsed());
            last.push(sizes(&r));
        }
        recomputes.push(t1.elapsed());
        cpu.push(cpu_seconds(pid) - c0);
    }
    loads.sort();
    recomputes.sort();
    per_proxy.sort();
    cpu.sort_by(f64::total_cmp);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("{label}:");
    println!(
        "  load + validate the directory: median {:.1} ms (min {:.1}, max {:.1})",
        ms(percentile(&loads, 0.5)),
        ms(loads[0]),
        ms(*loads.last().unwrap())
    );
    println!(
        "  recompute (registry + translate + encode every class): median {:.1} ms (min {:.1}, max {:.1}); CPU median {:.1} ms",
        ms(percentile(&recomputes, 0.5)),
        ms(recomputes[0]),
        ms(*recomputes.last().unwrap()),
        cpu[cpu.len() / 2] * 1e3
    );
    println!(
        "  per proxy class: p50 {:.2} ms, p99 {:.2} ms",
        ms(percentile(&per_proxy, 0.5)),
        ms(percentile(&per_proxy, 0.99))
    );
    let largest_rbac = last.iter().map(|s| s.rbac).max().unwrap_or(0);
    let largest_listener = last.iter().map(|s| s.listener).max().unwrap_or(0);
    let total: usize = last.iter().map(|s| s.total).sum();
    println!(
        "  largest RBAC filter {:.1} KB; largest listener {:.1} KB; all classes' resources {:.2} MB ({:.1} KB per proxy)",
        largest_rbac as f64 / 1e3,
        largest_listener as f64 / 1e3,
        total as f64 / 1e6,
        total as f64 / 1e3 / namespaces as f64
    );
}

fn main() {
    let policies = env_or("POLICIES", 1000);
    let namespaces = env_or("NAMESPACES", 100);
    let rounds = env_or("ROUNDS", 5);
    println!(
        "policy scale: {policies} AuthorizationPolicies across {namespaces} namespaces, {namespaces} proxy classes"
    );
    let with = tempfile::tempdir().unwrap();
    write_mesh(with.path(), policies, namespaces);
    measure(
        with.path(),
        namespaces,
        rounds,
        &format!("{policies} policies"),
    );
    // The same mesh without policies, in the same run: what the policies add.
    let without = tempfile::tempdir().unwrap();
    write_mesh(without.path(), 0, namespaces);
    measure(
        without.path(),
        namespaces,
        rounds,
        "no policies (same services and proxies)",
    );
    println!("RSS {:.1} MB", rss_mb(std::process::id()));
}
