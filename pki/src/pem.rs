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
}
