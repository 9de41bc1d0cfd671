//! Gateway and Secret: Istio's ingress-task files load unchanged; Istio's Gateway rules and
//! what citadel's gateway cannot serve are refused naming the object and the field; a Secret
//! reads as `kubectl` writes it and never prints its values.
use mesh::networking::ServerTlsMode;
use mesh::{Spec, load_file, load_str};

fn data(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/istio")
        .join(name)
}

/// The error messages of loading `yaml`.
fn errors(yaml: &str) -> Vec<String> {
    let (_, problems) = load_str(yaml, None);
    problems
        .iter()
        .filter(|p| p.is_error())
        .map(|p| p.to_string())
        .collect()
}

#[test]
fn the_ingress_tasks_gateways_load_unchanged() {
    let (objects, problems) = load_file(&data("gateway-ingress-httpbin.yaml"));
    assert!(problems.is_empty(), "{problems:?}");
    let Spec::Gateway(gw) = &objects[0].spec else {
        panic!("a Gateway first")
    };
    assert_eq!(gw.selector["istio"], "ingressgateway");
    let server = &gw.servers[0];
    assert_eq!(server.port.as_ref().unwrap().number, 80);
    assert_eq!(server.hosts, ["httpbin.example.com"]);
    let Spec::VirtualService(vs) = &objects[1].spec else {
        panic!("then its VirtualService")
    };
    assert_eq!(vs.gateways, ["httpbin-gateway"]);

    let (objects, problems) = load_file(&data("gateway-secure-ingress-httpbin.yaml"));
    assert!(problems.is_empty(), "{problems:?}");
    let Spec::Gateway(gw) = &objects[0].spec else {
        panic!("a Gateway first")
    };
    let tls = gw.servers[0].tls.as_ref().unwrap();
    assert_eq!(tls.mode, Some(ServerTlsMode::Simple));
    assert_eq!(tls.credential_name.as_deref(), Some("httpbin-credential"));
}

const GW: &str = "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: edge}\nspec:\n  selector: {istio: ingressgateway}\n";

#[test]
fn istios_gateway_rules_are_enforced_by_field() {
    let cases: [(&str, &str); 10] = [
        (
            "  servers: [{port: {number: 80, name: http}, hosts: [a.example.com]}]\n",
            "spec.servers[0].port.protocol: port protocol must be set",
        ),
        (
            "  servers: []\n",
            "spec.servers: gateway must have at least one server",
        ),
        (
            "  servers: [{port: {number: 80, name: http, protocol: HTTP}}]\n",
            "spec.servers[0].hosts: server config must contain at least one host",
        ),
        (
            "  servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: [a.example.com]}]\n",
            "spec.servers[0].tls: server must have TLS settings for HTTPS/TLS protocols",
        ),
        (
            "  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [a.example.com], tls: {mode: SIMPLE, credentialName: c}}]\n",
            "spec.servers[0].tls: server cannot have TLS settings for plain text HTTP ports",
        ),
        (
            "  servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: [a.example.com], tls: {mode: SIMPLE}}]\n",
            "spec.servers[0].tls.serverCertificate: SIMPLE TLS requires a server certificate",
        ),
        (
            "  servers: [{port: {number: 443, name: https, protocol: HTTPS}, hosts: [a.example.com], tls: {mode: MUTUAL, credentialName: c}}]\n",
            "spec.servers[0].tls.mode: Mutual is not supported by citadel's gateway yet (use SIMPLE)",
        ),
        (
            "  servers:\n  - {port: {number: 80, name: web, protocol: HTTP}, hosts: [a.example.com]}\n  - {port: {number: 81, name: web, protocol: HTTP}, hosts: [b.example.com]}\n",
            "spec.servers[1].port.name: port names in servers must be unique: duplicate name web",
        ),
        (
            "  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [\"bad ns/a.example.com\"]}]\n",
            "spec.servers[0].hosts[0]: invalid namespace value",
        ),
        (
            "  servers: [{port: {number: 0, name: http, protocol: HTTP}, hosts: [a.example.com]}]\n",
            "spec.servers[0].port.number: port number 0 must be in the range 1..65535",
        ),
    ];
    for (servers, expected) in cases {
        let errs = errors(&format!("{GW}{servers}"));
        assert!(
            errs.iter()
                .any(|e| e.contains("Gateway edge/gw") && e.contains(expected)),
            "{servers}: want {expected:?}, got {errs:?}"
        );
    }
    let ok = format!(
        "{GW}  servers:\n  - {{port: {{number: 80, name: http, protocol: HTTP}}, hosts: [\"./a.example.com\", \"*/b.example.com\"], tls: {{httpsRedirect: true}}}}\n  - {{port: {{number: 443, name: https, protocol: HTTPS}}, hosts: [\"*\"], tls: {{mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}}}}\n"
    );
    assert!(errors(&ok).is_empty(), "{:?}", errors(&ok));
}

const SECRET: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: httpbin-credential, namespace: istio-system}\ntype: kubernetes.io/tls\n";

#[test]
fn a_tls_secret_reads_as_kubectl_writes_it_and_never_prints_its_values() {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    let key = "-----BEGIN PRIVATE KEY-----\nsecret-key-material\n-----END PRIVATE KEY-----\n";
    let yaml = format!(
        "{SECRET}data:\n  tls.crt: {}\n  tls.key: {}\n",
        b64(cert),
        b64(key)
    );
    let (objects, problems) = load_str(&yaml, None);
    assert!(problems.is_empty(), "{problems:?}");
    let Spec::Secret(secret) = &objects[0].spec else {
        panic!("a Secret")
    };
    let credential = secret.tls_credential().unwrap();
    assert_eq!(credential.certificate_chain, cert.as_bytes());
    assert_eq!(credential.private_key, key.as_bytes());
    let printed = format!("{objects:?} {credential:?}");
    assert!(!printed.contains("secret-key-material"), "{printed}");
    assert!(!printed.contains(&b64(key)), "{printed}");

    // Istio's generic form, in plain text.
    let generic = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: g}}\nstringData:\n  cert: |\n    {}\n  key: k\n",
        cert.trim().replace('\n', "\n    ")
    );
    let (objects, problems) = load_str(&generic, None);
    assert!(problems.is_empty(), "{problems:?}");
    let Spec::Secret(secret) = &objects[0].spec else {
        panic!()
    };
    assert_eq!(secret.tls_credential().unwrap().private_key, b"k");

    // A bad Secret is a warning: nothing may use it, and a gateway that does leaves its
    // server out.
    let (objects, problems) = load_str(&format!("{SECRET}data:\n  tls.crt: '%%%'\n"), None);
    assert_eq!(objects.len(), 1, "{problems:?}");
    let warnings: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert!(
        warnings.iter().any(|w| w.contains(
            "Secret istio-system/httpbin-credential: warning: data[tls.crt]: not base64"
        )),
        "{warnings:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("data[tls.key]: required for type kubernetes.io/tls")),
        "{warnings:?}"
    );
    // Neither a malformed Secret's error nor `kubectl apply`'s copy of the manifest repeats
    // what the Secret holds.
    let malformed = errors(&format!("{SECRET}data: {}\n", b64(key)));
    assert!(!malformed.is_empty());
    assert!(
        malformed.iter().all(|e| !e.contains(&b64(key))),
        "{malformed:?}"
    );
    let applied = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: a\n  annotations:\n    kubectl.kubernetes.io/last-applied-configuration: '{{\"data\":{{\"tls.key\":\"{}\"}}}}'\ndata:\n  tls.key: {}\n",
        b64(key),
        b64(key)
    );
    let (objects, problems) = load_str(&applied, None);
    assert!(problems.iter().all(|p| !p.is_error()), "{problems:?}");
    let printed = format!("{objects:?}");
    assert!(!printed.contains(&b64(key)), "{printed}");
    // Other Kubernetes kinds in the directory are still not citadel's to load.
    let (objects, problems) = load_str(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\n",
        None,
    );
    assert!(objects.is_empty() && problems.is_empty());
}
