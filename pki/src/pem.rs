//! PEM encoding and decoding of certificate lists.
use rustls_pki_types::CertificateDer;

use crate::error::Error;

/// Parses every `CERTIFICATE` block in `text`, in order. Other block types are an error.
pub fn parse_certificates(text: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let blocks = ::pem::parse_many(text).map_err(|e| Error::Pem(e.to_string()))?;
    blocks
        .into_iter()
        .map(|b| {
            if b.tag() == "CERTIFICATE" {
                Ok(CertificateDer::from(b.into_contents()))
            } else {
                Err(Error::Pem(format!(
                    "expected CERTIFICATE, found {}",
                    b.tag()
                )))
            }
        })
        .collect()
}

/// Checks that PEM `key` is the private key of the first certificate of PEM `chain` (a TLS
/// server's certificate and key as a Secret holds them): both parse, and the key's public half
/// is the certificate's. Errors never include key material.
pub fn certificate_matches_key(chain: &[u8], key: &[u8]) -> Result<(), Error> {
    use x509_parser::prelude::{FromDer, SubjectPublicKeyInfo, X509Certificate};
    let text = |bytes: &[u8], what: &str| {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| Error::Pem(format!("{what} is not PEM text")))
    };
    let certs = parse_certificates(&text(chain, "the certificate")?)?;
    let leaf = certs
        .first()
        .ok_or_else(|| Error::Pem("no certificate in the chain".into()))?;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| Error::Pem(format!("the certificate does not parse: {e}")))?;
    let key = crate::PrivateKey::from_pem(&text(key, "the private key")?).map_err(|_| {
        Error::Key("the private key does not parse (PKCS#8, SEC1 or PKCS#1 PEM)".into())
    })?;
    let spki = key.public_key_der();
    let (_, ours) = SubjectPublicKeyInfo::from_der(&spki)
        .map_err(|e| Error::Key(format!("the private key's public half: {e}")))?;
    if ours.subject_public_key.data != cert.public_key().subject_public_key.data {
        return Err(Error::Key(
            "the private key is not the certificate's (public keys differ)".into(),
        ));
    }
    // TLS stacks (BoringSSL in Envoy) refuse a server certificate whose key usage does not
    // allow signing the handshake: a CA certificate, say.
    let rsa = matches!(
        cert.public_key().parsed(),
        Ok(x509_parser::public_key::PublicKey::RSA(_))
    );
    if let Ok(Some(ku)) = cert.key_usage()
        && !ku.value.digital_signature()
        && !(rsa && ku.value.key_encipherment())
    {
        return Err(Error::Pem(
            "the certificate's key usage does not allow TLS server authentication (digitalSignature)"
                .into(),
        ));
    }
    Ok(())
}

/// Encodes certificates as concatenated PEM blocks.
pub fn encode_certificates<'a, 'b: 'a>(
    certs: impl IntoIterator<Item = &'a CertificateDer<'b>>,
) -> String {
    certs.into_iter().map(|c| encode_certificate(c)).collect()
}

/// Encodes one certificate as a PEM block.
pub fn encode_certificate(cert: &CertificateDer<'_>) -> String {
    let block = ::pem::Pem::new("CERTIFICATE", cert.as_ref().to_vec());
    ::pem::encode_config(
        &block,
        ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF),
    )
}

/// Encodes a PKCS#8 DER private key as a `PRIVATE KEY` PEM block. Callers must write it only to
/// 0600 files or to a peer entitled to the key.
pub fn encode_private_key(pkcs8_der: &[u8]) -> String {
    let block = ::pem::Pem::new("PRIVATE KEY", pkcs8_der.to_vec());
    ::pem::encode_config(
        &block,
        ::pem::EncodeConfig::new().set_line_ending(::pem::LineEnding::LF),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_certificate_blocks() {
        let key = crate::PrivateKey::generate(crate::KeyAlgorithm::EcdsaP256).unwrap();
        assert!(parse_certificates(&key.to_pem()).is_err());
        assert!(parse_certificates("").unwrap().is_empty());
    }

    #[test]
    fn private_key_pem_from_der_loads_as_the_same_key() {
        for alg in [crate::KeyAlgorithm::EcdsaP256, crate::KeyAlgorithm::Ed25519] {
            let key = crate::PrivateKey::generate(alg).unwrap();
            let pem = encode_private_key(&key.to_der());
            assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
            let again = crate::PrivateKey::from_pem(&pem).unwrap();
            assert_eq!(again.public_key_der(), key.public_key_der());
        }
    }

    #[test]
    fn a_certificate_matches_its_own_key_only() {
        let td = crate::identity::parse_trust_domain("example.com").unwrap();
        let root_key = crate::PrivateKey::generate(crate::KeyAlgorithm::EcdsaP256).unwrap();
        let root_key_pem = root_key.to_pem();
        let ca = crate::CertificateAuthority::self_signed_root(
            td.clone(),
            root_key,
            &crate::SigningCaParams {
                common_name: "root".into(),
                organization: "test".into(),
                ttl: std::time::Duration::from_secs(60),
                path_len: None,
            },
            std::time::SystemTime::now(),
            &crate::SystemRandom,
        )
        .unwrap();
        let id = crate::identity::parse_spiffe_id("spiffe://example.com/server").unwrap();
        for alg in [crate::KeyAlgorithm::EcdsaP256, crate::KeyAlgorithm::Rsa2048] {
            let key = crate::PrivateKey::generate(alg).unwrap();
            let leaf = ca
                .issue_svid_for_key(
                    &id,
                    &key.public_key_der(),
                    alg == crate::KeyAlgorithm::Rsa2048,
                    &crate::SvidParams::ttl(std::time::Duration::from_secs(60)),
                    std::time::SystemTime::now(),
                    &crate::SystemRandom,
                )
                .unwrap();
            let cert = encode_certificates(leaf.chain());
            certificate_matches_key(cert.as_bytes(), key.to_pem().as_bytes()).unwrap();
            let other = crate::PrivateKey::generate(alg).unwrap().to_pem();
            let err = certificate_matches_key(cert.as_bytes(), other.as_bytes()).unwrap_err();
            assert!(err.to_string().contains("not the certificate's"), "{err}");
            let garbage = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n";
            let err = certificate_matches_key(cert.as_bytes(), garbage.as_bytes()).unwrap_err();
            assert!(!err.to_string().contains("c2VjcmV0"), "{err}");
        }
        // A CA certificate (keyCertSign only) cannot serve TLS.
        let root = encode_certificate(ca.certificate());
        let err = certificate_matches_key(root.as_bytes(), root_key_pem.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("key usage"), "{err}");
    }
}
