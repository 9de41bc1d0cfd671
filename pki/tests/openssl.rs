//! Independent cross-check: `openssl verify` accepts every chain the CA issues, and
//! `openssl x509 -text` shows the X509-SVID extensions. Needs the `openssl` binary (installed by
//! the test command); fails, never skips, without it.
mod common;

use std::path::Path;
use std::process::Command;
use std::time::SystemTime;

use common::*;
use pki::identity::parse_spiffe_id;
use pki::pem::{encode_certificate, encode_certificates};
use pki::{CertificateAuthority, Csr, KeyAlgorithm, PrivateKey, SvidParams, build_csr};

fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl binary is required for this test (apt-get install openssl)");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path.to_string_lossy().into_owned()
}

fn live_pki(root_alg: KeyAlgorithm, int_alg: KeyAlgorithm) -> Pki {
    // openssl checks validity against the real clock, so these certificates start now.
    let now = SystemTime::now();
    let rng = pki::SystemRandom;
    let td = td("cluster.local");
    let root = CertificateAuthority::self_signed_root(
        td.clone(),
        PrivateKey::generate(root_alg).unwrap(),
        &ca_params("root", 3650 * DAY, Some(1)),
        now,
        &rng,
    )
    .unwrap();
    let int_key = PrivateKey::generate(int_alg).unwrap();
    let int_cert = root
        .sign_signing_ca(
            &int_key.public_key_der(),
            &ca_params("intermediate", 365 * DAY, Some(0)),
            now,
            &rng,
        )
        .unwrap();
    let intermediate = CertificateAuthority::new(td.clone(), int_key, vec![int_cert]).unwrap();
    let mut bundle = pki::TrustBundle::new(td);
    bundle
        .add_x509_authority(root.certificate().clone())
        .unwrap();
    Pki {
        root,
        intermediate,
        bundle,
    }
}

#[test]
fn openssl_verifies_every_issued_chain_and_sees_the_svid_extensions() {
    let dir = tempfile::tempdir().unwrap();
    for (root_alg, int_alg) in [
        (KeyAlgorithm::EcdsaP256, KeyAlgorithm::EcdsaP256),
        (KeyAlgorithm::EcdsaP384, KeyAlgorithm::Rsa2048),
        (KeyAlgorithm::Rsa3072, KeyAlgorithm::Ed25519),
    ] {
        let p = live_pki(root_alg, int_alg);
        let root = write(
            dir.path(),
            "root.pem",
            &encode_certificate(p.root.certificate()),
        );
        for leaf_alg in KeyAlgorithm::ALL {
            let id = format!("spiffe://cluster.local/ns/default/sa/{leaf_alg}");
            let key = PrivateKey::generate(leaf_alg).unwrap();
            let csr =
                Csr::parse(&build_csr(&key, &parse_spiffe_id(&id).unwrap()).unwrap()).unwrap();
            let svid = p
                .intermediate
                .issue_svid(
                    &csr,
                    &SvidParams::ttl(HOUR),
                    SystemTime::now(),
                    &pki::SystemRandom,
                )
                .unwrap();
            let leaf = write(
                dir.path(),
                "leaf.pem",
                &encode_certificate(&svid.chain()[0]),
            );
            let untrusted = write(
                dir.path(),
                "chain.pem",
                &encode_certificates(&svid.chain()[1..]),
            );
            let label = format!("root {root_alg}, intermediate {int_alg}, leaf {leaf_alg}");

            for purpose in ["sslclient", "sslserver"] {
                let (ok, out) = openssl(&[
                    "verify",
                    "-x509_strict",
                    "-purpose",
                    purpose,
                    "-CAfile",
                    &root,
                    "-untrusted",
                    &untrusted,
                    &leaf,
                ]);
                assert!(ok && out.contains(": OK"), "{label}, {purpose}: {out}");
            }

            let (ok, text) = openssl(&["x509", "-in", &leaf, "-noout", "-text"]);
            assert!(ok, "{text}");
            assert!(
                text.contains("X509v3 Subject Alternative Name: critical"),
                "{label}: {text}"
            );
            assert!(text.contains(&format!("URI:{id}")), "{label}");
            assert!(text.contains("CA:FALSE"), "{label}");
            assert!(text.contains("X509v3 Key Usage: critical"), "{label}");
            let key_usage = if leaf_alg.is_rsa() {
                "Digital Signature, Key Encipherment"
            } else {
                "Digital Signature\n"
            };
            assert!(text.contains(key_usage), "{label}: {text}");
            assert!(
                text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
                "{label}"
            );
            assert!(text.contains("X509v3 Authority Key Identifier"), "{label}");
        }
        let (ok, text) = openssl(&[
            "x509",
            "-in",
            &write(
                dir.path(),
                "int.pem",
                &encode_certificate(p.intermediate.certificate()),
            ),
            "-noout",
            "-text",
        ]);
        assert!(ok);
        assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
        assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
    }
}

#[test]
fn openssl_made_csrs_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let csr_path = dir.path().join("req.pem");
    let (ok, out) = openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &dir.path().join("k.pem").to_string_lossy(),
        "-subj",
        "/O=ignored",
        "-addext",
        "subjectAltName=URI:spiffe://cluster.local/ns/x/sa/y",
        "-out",
        &csr_path.to_string_lossy(),
    ]);
    assert!(ok, "{out}");
    let csr = Csr::parse_for(&std::fs::read(&csr_path).unwrap(), &td("cluster.local")).unwrap();
    assert_eq!(
        csr.spiffe_id().to_string(),
        "spiffe://cluster.local/ns/x/sa/y"
    );
}
