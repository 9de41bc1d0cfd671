//! Certificate signing requests: build one for a SPIFFE ID, and parse untrusted ones strictly.
use rcgen::{CertificateParams, DistinguishedName, SanType};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use crate::error::{CsrError, Error};
use crate::identity::{SpiffeId, TrustDomain};
use crate::key::{KeyAlgorithm, PrivateKey};

/// Largest CSR accepted, PEM or DER; checked before any parsing.
pub const MAX_CSR_BYTES: usize = 64 * 1024;

/// Smallest RSA modulus accepted.
pub const MIN_RSA_BITS: usize = 2048;

/// Builds a DER CSR for `id`, self-signed by `key`, with an empty subject and one URI SAN.
pub fn build_csr(key: &PrivateKey, id: &SpiffeId) -> Result<Vec<u8>, Error> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let uri = id
        .to_string()
        .try_into()
        .map_err(|e: rcgen::Error| Error::Certificate(e.to_string()))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr = params.serialize_request(key.key_pair())?;
    Ok(csr.der().to_vec())
}

/// The public key family of a parsed CSR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrKey {
    EcdsaP256,
    EcdsaP384,
    Rsa { bits: usize },
    Ed25519,
}

impl CsrKey {
    pub fn is_rsa(self) -> bool {
        matches!(self, CsrKey::Rsa { .. })
    }

    /// The closest generator setting, for reporting.
    pub fn algorithm(self) -> Option<KeyAlgorithm> {
        match self {
            CsrKey::EcdsaP256 => Some(KeyAlgorithm::EcdsaP256),
            CsrKey::EcdsaP384 => Some(KeyAlgorithm::EcdsaP384),
            CsrKey::Rsa { bits: 2048 } => Some(KeyAlgorithm::Rsa2048),
            CsrKey::Rsa { bits: 3072 } => Some(KeyAlgorithm::Rsa3072),
            CsrKey::Ed25519 => Some(KeyAlgorithm::Ed25519),
            CsrKey::Rsa { .. } => None,
        }
    }
}

/// A CSR whose signature verified and whose single URI SAN is a SPIFFE ID.
#[derive(Debug, Clone)]
pub struct Csr {
    spiffe_id: SpiffeId,
    public_key_der: Vec<u8>,
    key: CsrKey,
}

impl Csr {
    /// Parses untrusted input (DER, or PEM `CERTIFICATE REQUEST`) and checks every rule that does
    /// not depend on the CA: size, syntax, self-signature, key strength, exactly one URI SAN that
    /// is a SPIFFE ID.
    pub fn parse(input: &[u8]) -> Result<Self, CsrError> {
        if input.len() > MAX_CSR_BYTES {
            return Err(CsrError::TooLarge {
                size: input.len(),
                max: MAX_CSR_BYTES,
            });
        }
        let der = to_der(input)?;
        let (rest, req) = X509CertificationRequest::from_der(&der)
            .map_err(|e| CsrError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(CsrError::Malformed("trailing bytes after CSR".into()));
        }
        let key = classify_key(&req)?;
        req.verify_signature().map_err(|_| CsrError::BadSignature)?;
        let spiffe_id = single_spiffe_id(&req)?;
        let public_key_der = req.certification_request_info.subject_pki.raw.to_vec();
        Ok(Csr {
            spiffe_id,
            public_key_der,
            key,
        })
    }

    /// [`Csr::parse`] plus the CA's rule that the ID belongs to trust domain `td`.
    pub fn parse_for(input: &[u8], td: &TrustDomain) -> Result<Self, CsrError> {
        let csr = Self::parse(input)?;
        if csr.spiffe_id.trust_domain() != td {
            return Err(CsrError::WrongTrustDomain {
                requested: csr.spiffe_id.trust_domain().to_string(),
                expected: td.to_string(),
            });
        }
        Ok(csr)
    }

    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    pub fn public_key_der(&self) -> &[u8] {
        &self.public_key_der
    }

    pub fn key(&self) -> CsrKey {
        self.key
    }
}

fn to_der(input: &[u8]) -> Result<Vec<u8>, CsrError> {
    let trimmed = input.trim_ascii_start();
    if !trimmed.starts_with(b"-----BEGIN") {
        return Ok(input.to_vec());
    }
    let block = ::pem::parse(trimmed).map_err(|e| CsrError::Malformed(e.to_string()))?;
    match block.tag() {
        "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => Ok(block.into_contents()),
        other => Err(CsrError::Malformed(format!(
            "expected CERTIFICATE REQUEST, found {other}"
        ))),
    }
}

fn classify_key(req: &X509CertificationRequest<'_>) -> Result<CsrKey, CsrError> {
    let spki = &req.certification_request_info.subject_pki;
    let oid = &spki.algorithm.algorithm;
    if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| CsrError::UnsupportedKey("EC key without a named curve".into()))?;
        return match curve {
            c if c == OID_EC_P256 => Ok(CsrKey::EcdsaP256),
            c if c == OID_NIST_EC_P384 => Ok(CsrKey::EcdsaP384),
            c => Err(CsrError::UnsupportedKey(format!("EC curve {c}"))),
        };
    }
    if *oid == OID_PKCS1_RSAENCRYPTION {
        let bits = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa.key_size(),
            _ => return Err(CsrError::Malformed("unparseable RSA public key".into())),
        };
        if bits < MIN_RSA_BITS {
            return Err(CsrError::WeakRsaKey { bits });
        }
        return Ok(CsrKey::Rsa { bits });
    }
    if *oid == OID_SIG_ED25519 {
        return Ok(CsrKey::Ed25519);
    }
    Err(CsrError::UnsupportedKey(oid.to_id_string()))
}

fn single_spiffe_id(req: &X509CertificationRequest<'_>) -> Result<SpiffeId, CsrError> {
    let mut uris = Vec::new();
    for ext in req.requested_extensions().into_iter().flatten() {
        match ext {
            ParsedExtension::SubjectAlternativeName(san) => {
                uris.extend(san.general_names.iter().filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                }));
            }
            ParsedExtension::UnsupportedExtension { .. } | ParsedExtension::ParseError { .. } => {
                // Requested extensions are advisory: the CA builds the SVID's extensions itself.
            }
            _ => {}
        }
    }
    match uris.as_slice() {
        [uri] => SpiffeId::new(uri).map_err(|e| CsrError::InvalidSpiffeId(format!("{uri}: {e}"))),
        other => Err(CsrError::UriSanCount(other.len())),
    }
}
