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
pub fn encode_certificates<'a>(certs: impl IntoIterator<Item = &'a CertificateDer<'a>>) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_non_certificate_blocks() {
        let key = crate::PrivateKey::generate(crate::KeyAlgorithm::EcdsaP256).unwrap();
        assert!(parse_certificates(&key.to_pem()).is_err());
        assert!(parse_certificates("").unwrap().is_empty());
    }
}
