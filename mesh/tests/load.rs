//! Loading Istio YAML: Istio's own sample files load unchanged; every problem names the file,
//! the object and the field path; a directory loads as one snapshot or not at all.
use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh::networking::{ClientTlsMode, OutboundMode, Resolution};
use mesh::{Kind, Spec, load_dir, load_file, load_str};

fn istio_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/istio")
}

fn errors(text: &str) -> Vec<String> {
    let (_, problems) = load_str(text, Some(Path::new("test.yaml")));
    problems
        .iter()
        .filter(|p| p.is_error())
        .map(|p| p.to_string())
        .collect()
}

#[test]
fn istio_samples_load_unchanged() {
    let mut loaded = 0;
    for file in mesh::load::manifest_files(&istio_data()).unwrap() {
        let (objects, problems) = load_file(&file);
        let errors: Vec<String> = problems
            .iter()
            .filter(|p| p.is_error())
            .map(|p| p.to_string())
            .collect();
        let name = file.file_name().unwrap().to_str().unwrap();
        if name.starts_with("authorization-policy-") {
            // Refusals among them are authorization_policy.rs's subject.
            continue;
        }
        assert!(errors.is_empty(), "{name}: {errors:?}");
        assert!(!objects.is_empty(), "{name}");
        loaded += objects.len();
    }
    assert!(loaded >= 30, "{loaded} objects");
}

#[test]
fn sample_contents_are_read_faithfully() {
    let (objects, _) = load_file(&istio_data().join("virtual-service-reviews-90-10.yaml"));
    let Spec::VirtualService(vs) = &objects[0].spec else {
        panic!("a VirtualService")
    };
    let split: Vec<(String, i32)> = vs.http[0]
        .route
        .iter()
        .map(|d| (d.destination.subset.clone().unwrap(), d.weight))
        .collect();
    assert_eq!(split, [("v1".to_string(), 90), ("v2".to_string(), 10)]);
    assert_eq!(objects[0].metadata.namespace(), "default");

    let (objects, _) = load_file(&istio_data().join("virtual-service-reviews-jason-v2-v3.yaml"));
    let Spec::VirtualService(vs) = &objects[0].spec else {
        panic!()
    };
    assert_eq!(
        vs.http[0].matches[0].headers["end-user"].exact.as_deref(),
        Some("jason")
    );

    let (objects, _) = load_file(&istio_data().join("circuit-breaking-httpbin-dr.yaml"));
    let Spec::DestinationRule(dr) = &objects[0].spec else {
        panic!()
    };
    let tp = dr.traffic_policy.as_ref().unwrap();
    let pool = tp.connection_pool.as_ref().unwrap();
    assert_eq!(pool.tcp.as_ref().unwrap().max_connections, Some(1));
    assert_eq!(
        pool.http.as_ref().unwrap().http1_max_pending_requests,
        Some(1)
    );
    let outlier = tp.outlier_detection.as_ref().unwrap();
    assert_eq!(
        outlier.base_ejection_time.unwrap().as_duration(),
        Duration::from_secs(180)
    );

    let (objects, _) = load_file(&istio_data().join("destination-rule-all-mtls.yaml"));
    let Spec::DestinationRule(dr) = &objects[0].spec else {
        panic!()
    };
    assert_eq!(
        dr.traffic_policy
            .as_ref()
            .unwrap()
            .tls
            .as_ref()
            .unwrap()
            .mode,
        ClientTlsMode::IstioMutual
    );

    let (objects, _) = load_file(&istio_data().join("virtual-service-ratings-test-delay.yaml"));
    let Spec::VirtualService(vs) = &objects[0].spec else {
        panic!()
    };
    let delay = vs.http[0].fault.as_ref().unwrap().delay.as_ref().unwrap();
    assert_eq!(
        delay.fixed_delay.unwrap().as_duration(),
        Duration::from_secs(7)
    );
}

const VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: default
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 50
    - destination: {host: reviews, subset: v2}
      weight: WEIGHT
";

#[test]
fn errors_name_the_file_the_object_and_the_field() {
    assert_eq!(
        errors(&VS.replace("WEIGHT", "150")),
        [
            "test.yaml: VirtualService default/reviews: spec.http[0].route[1].weight: must be 0..=100"
        ]
    );
    let e = errors(&VS.replace("WEIGHT", "heavy"));
    assert!(
        e[0].starts_with(
            "test.yaml: VirtualService default/reviews: spec.http[0].route[1].weight: invalid type"
        ),
        "{e:?}"
    );
    let e = errors(&VS.replace("weight: WEIGHT", "wieght: 50"));
    assert!(
        e[0].contains("spec.http[0].route[1].wieght: unknown field `wieght`, expected one of"),
        "{e:?}"
    );
    let e = errors(&VS.replace("WEIGHT", "50\n    timeout: 1d"));
    assert!(
        e[0].contains("spec.http[0].timeout: unknown unit \"d\""),
        "{e:?}"
    );
    let e = errors(&VS.replace("WEIGHT", "50\n    redirect: {uri: /x}"));
    assert!(
        e[0].contains("spec.http[0]: HTTP route cannot contain both route and redirect"),
        "{e:?}"
    );
    let e = errors(&VS.replace("    - destination: {host: reviews, subset: v1}\n      weight: 50\n", "").replace("WEIGHT", "50\n  - match:\n    - uri: {regex: \"(\"}\n    route:\n    - destination: {host: reviews}"));
    assert!(
        e[0].contains("spec.http[1].match[0].uri.regex: invalid regex"),
        "{e:?}"
    );
}

#[test]
fn each_kind_applies_istios_rules() {
    let se = "apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: ext}
spec:
  hosts: [api.example.com]
  ports: [{number: 443, name: https, protocol: HTTPS}, {number: 443, name: tls, protocol: SPDY}]
  resolution: STATIC
  endpoints: [{address: api.example.com}]
";
    let e = errors(se);
    assert!(
        e.iter()
            .any(|e| e.contains("spec.ports[1].number: port 443 already defined")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|e| e.contains("spec.ports[1].protocol: unsupported protocol \"SPDY\"")),
        "{e:?}"
    );
    assert!(e.iter().any(|e| e.contains("spec.endpoints[0].address: endpoint address \"api.example.com\" is not a valid IP address")), "{e:?}");

    let sidecar = "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: prod}
spec:
  ingress:
  - port: {number: 9080, protocol: HTTP, name: http}
    defaultEndpoint: 10.0.0.1:9080
  egress:
  - hosts: [\"./reviews\"]
";
    let e = errors(sidecar);
    assert!(
        e.iter().any(|e| e.contains(
            "Sidecar prod/default: spec.ingress[0].defaultEndpoint: defaultEndpoint must be of form"
        )),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|e| e.contains("spec.egress[0].hosts[0]: \"reviews\": short names")),
        "{e:?}"
    );

    let dr = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: r}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v1, labels: {version: v2}}]
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN, consistentHash: {useSourceIp: true}}
    outlierDetection: {maxEjectionPercent: 150}
";
    let e = errors(dr);
    assert!(
        e.iter()
            .any(|e| e.contains("spec.subsets[1].name: duplicate subset name")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|e| e.contains(
            "spec.trafficPolicy.loadBalancer: set only one of simple and consistentHash"
        )),
        "{e:?}"
    );
    assert!(
        e.iter().any(|e| e
            .contains("spec.trafficPolicy.outlierDetection.maxEjectionPercent: percentage 150")),
        "{e:?}"
    );

    let root = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: root}
spec:
  hosts: [bookinfo.com]
  http:
  - match: [{uri: {prefix: /productpage}}]
    delegate: {name: productpage, namespace: nsa}
";
    assert!(errors(root).is_empty(), "{:?}", errors(root));
    let e = errors(&format!(
        "{root}    route: [{{destination: {{host: reviews}}}}]\n"
    ));
    assert!(
        e.iter().any(|e| e.contains(
            "spec.http[0]: a root HTTP route with delegate must not specify route or redirect"
        )),
        "{e:?}"
    );

    let tls = "apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: egress}
spec:
  host: api.example.com
  trafficPolicy:
    tls: {mode: SIMPLE, credentialName: api-creds}
    portLevelSettings:
    - port: {number: 443}
      tls: {mode: MUTUAL, caCertificates: /etc/ca.pem}
";
    let e = errors(tls);
    assert!(
        !e.iter().any(|e| e.contains("spec.trafficPolicy.tls:")),
        "credentialName alone is fine: {e:?}"
    );
    let both = errors(&tls.replace(
        "credentialName: api-creds}",
        "credentialName: api-creds, caCertificates: /etc/ca.pem}",
    ));
    assert!(
        both.iter().any(|e| e.contains(
            "spec.trafficPolicy.tls: cannot specify client certificates or CA certificate or CA CRL if credentialName is set"
        )),
        "{both:?}"
    );
    assert!(
        e.iter().any(|e| e.contains(
            "spec.trafficPolicy.portLevelSettings[0].tls.clientCertificate: client certificate required for mutual tls"
        )),
        "{e:?}"
    );

    let we = "apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: default}
spec: {address: 198.18.0.10, labels: {app: reviews, version: v1}, serviceAccount: bookinfo-reviews, ports: {http: 9080}}
";
    assert!(errors(we).is_empty());
    let (objects, _) = load_str(we, None);
    let Spec::WorkloadEntry(w) = &objects[0].spec else {
        panic!()
    };
    assert_eq!(w.ports["http"], 9080);
}

#[test]
fn kinds_outside_istio_are_skipped_and_unsupported_istio_kinds_refused() {
    let text = "apiVersion: apps/v1
kind: Deployment
metadata: {name: reviews-v1}
spec: {replicas: 1}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: default, namespace: istio-system}
spec: {jwtRules: [{issuer: x}]}
---
apiVersion: networking.istio.io/v2
kind: VirtualService
metadata: {name: x}
spec: {hosts: [x], http: [{route: [{destination: {host: x}}]}]}
---
";
    let (objects, problems) = load_str(text, None);
    assert!(objects.is_empty());
    let msgs: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert!(msgs[0].contains("RequestAuthentication istio-system/default: kind: security.istio.io/RequestAuthentication is not supported by citadel yet"));
    assert!(msgs[1].contains("apiVersion: networking.istio.io/v2"));
    let e = errors("kind: [unclosed");
    assert!(e[0].contains("document 1: invalid YAML"), "{e:?}");
}

#[test]
fn a_directory_loads_whole_or_reports_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        istio_data().join("destination-rule-all.yaml"),
        dir.path().join("dr.yaml"),
    )
    .unwrap();
    std::fs::write(dir.path().join("vs.yaml"), VS.replace("WEIGHT", "50")).unwrap();
    std::fs::write(
        dir.path().join("mesh.yaml"),
        "outboundTrafficPolicy: {mode: REGISTRY_ONLY}\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();
    let loaded = load_dir(dir.path()).unwrap();
    assert_eq!(loaded.config.of_kind(Kind::DestinationRule).count(), 4);
    assert_eq!(loaded.config.of_kind(Kind::VirtualService).count(), 1);
    assert_eq!(
        loaded.config.mesh.outbound_traffic_policy,
        OutboundMode::RegistryOnly
    );

    // One bad file and a duplicate: the directory does not load, and both are named.
    std::fs::write(dir.path().join("vs2.yaml"), VS.replace("WEIGHT", "150")).unwrap();
    std::fs::write(dir.path().join("vs3.yaml"), VS.replace("WEIGHT", "50")).unwrap();
    let errs: Vec<String> = load_dir(dir.path())
        .unwrap_err()
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].contains(
        "vs2.yaml: VirtualService default/reviews: spec.http[0].route[1].weight: must be 0..=100"
    ));
    assert!(errs[1].contains(
        "vs3.yaml: VirtualService default/reviews: metadata.name: defined twice: also in"
    ));

    let se = "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: httpbin-ext}
spec: {hosts: [httpbin.org], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS, location: MESH_EXTERNAL}
";
    let (objects, problems) = load_str(se, None);
    assert!(problems.is_empty(), "{problems:?}");
    let Spec::ServiceEntry(se) = &objects[0].spec else {
        panic!()
    };
    assert_eq!(se.resolution, Resolution::Dns);
}
