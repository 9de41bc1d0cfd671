//! X.509-SVIDs and read-only facts about certificates (serial, validity, SPIFFE ID).
use std::fmt;
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::{Error, VerifyError};
use crate::identity::SpiffeId;
use crate::key::PrivateKey;
use crate::time::system_time;

/// Facts read from one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Lower-case hex of the serial number, no separators.
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub uri_sans: Vec<String>,
    pub is_ca: bool,
    pub subject: String,
    pub public_key_der: Vec<u8>,
}

impl CertInfo {
    pub fn parse(der: &[u8]) -> Result<Self, VerifyError> {
        let cert = parse_x509(der)?;
        let uri_sans = uri_sans(&cert);
        Ok(CertInfo {
            serial: hex_lower(cert.raw_serial()),
            not_before: system_time(cert.validity().not_before.to_datetime()),
            not_after: system_time(cert.validity().not_after.to_datetime()),
            uri_sans,
            is_ca: cert.is_ca(),
            subject: cert.subject().to_string(),
            public_key_der: cert.public_key().raw.to_vec(),
        })
    }

    /// The single SPIFFE ID an X.509-SVID carries.
    pub fn spiffe_id(&self) -> Result<SpiffeId, VerifyError> {
        match self.uri_sans.as_slice() {
            [one] => {
                SpiffeId::new(one).map_err(|e| VerifyError::InvalidSpiffeId(format!("{one}: {e}")))
            }
            other => Err(VerifyError::UriSanCount(other.len())),
        }
    }
}

pub(crate) fn parse_x509(der: &[u8]) -> Result<X509Certificate<'_>, VerifyError> {
    let (rest, cert) =
        X509Certificate::from_der(der).map_err(|e| VerifyError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(VerifyError::Malformed(
            "trailing bytes after certificate".into(),
        ));
    }
    Ok(cert)
}

fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    cert.extensions()
        .iter()
        .filter_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => Some(san),
            _ => None,
        })
        .flat_map(|san| san.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(uri.to_string()),
            _ => None,
        })
        .collect()
}

pub(crate) fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An X.509-SVID: the leaf plus the intermediates needed to reach a root in the bundle, and
/// (when held locally) its private key.
pub struct X509Svid {
    id: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    leaf: CertInfo,
    key: Option<PrivateKey>,
}

impl fmt::Debug for X509Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("X509Svid")
            .field("id", &self.id.to_string())
            .field("serial", &self.leaf.serial)
            .field("not_after", &self.leaf.not_after)
            .field("chain_len", &self.chain.len())
            .field("has_key", &self.key.is_some())
            .finish()
    }
}

impl X509Svid {
    /// Wraps an issued chain (leaf first), reading the SPIFFE ID from the leaf.
    pub fn from_chain(chain: Vec<CertificateDer<'static>>) -> Result<Self, Error> {
        let leaf_der = chain.first().ok_or(VerifyError::EmptyChain)?;
        let leaf = CertInfo::parse(leaf_der)?;
        let id = leaf.spiffe_id()?;
        if leaf.is_ca {
            return Err(VerifyError::LeafIsCa.into());
        }
        Ok(Self {
            id,
            chain,
            leaf,
            key: None,
        })
    }

    /// Attaches the private key, checking it matches the leaf.
    pub fn with_key(mut self, key: PrivateKey) -> Result<Self, Error> {
        if key.public_key_der() != self.leaf.public_key_der {
            return Err(Error::KeyMismatch);
        }
        self.key = Some(key);
        Ok(self)
    }

    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.id
    }

    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    pub fn leaf(&self) -> &CertInfo {
        &self.leaf
    }

    pub fn key(&self) -> Option<&PrivateKey> {
        self.key.as_ref()
    }

    /// Takes the private key out, leaving the certificate chain (e.g. once the key has been
    /// encoded for serving and the key object itself is no longer needed).
    pub fn take_key(&mut self) -> Option<PrivateKey> {
        self.key.take()
    }

    pub fn serial(&self) -> &str {
        &self.leaf.serial
    }

    pub fn not_after(&self) -> SystemTime {
        self.leaf.not_after
    }

    pub fn chain_pem(&self) -> String {
        crate::pem::encode_certificates(&self.chain)
    }
}
