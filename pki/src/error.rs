//! Typed errors for everything `pki` can refuse.
use thiserror::Error;

/// Why a certificate signing request was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CsrError {
    #[error("CSR is {size} bytes, over the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("CSR is not valid PEM or DER: {0}")]
    Malformed(String),
    #[error("CSR self-signature does not verify")]
    BadSignature,
    #[error("CSR must carry exactly one URI SAN, found {0}")]
    UriSanCount(usize),
    #[error("CSR URI SAN is not a valid SPIFFE ID: {0}")]
    InvalidSpiffeId(String),
    #[error("CSR is for trust domain {requested}, this CA serves {expected}")]
    WrongTrustDomain { requested: String, expected: String },
    #[error("RSA key of {bits} bits is below the 2048-bit minimum")]
    WeakRsaKey { bits: usize },
    #[error("unsupported public key algorithm {0}")]
    UnsupportedKey(String),
}

impl CsrError {
    /// A short stable label, used for metrics and audit lines.
    pub fn reason(&self) -> &'static str {
        match self {
            CsrError::TooLarge { .. } => "csr_too_large",
            CsrError::Malformed(_) => "csr_malformed",
            CsrError::BadSignature => "csr_bad_signature",
            CsrError::UriSanCount(_) => "csr_uri_san_count",
            CsrError::InvalidSpiffeId(_) => "csr_invalid_spiffe_id",
            CsrError::WrongTrustDomain { .. } => "csr_wrong_trust_domain",
            CsrError::WeakRsaKey { .. } => "csr_weak_rsa_key",
            CsrError::UnsupportedKey(_) => "csr_unsupported_key",
        }
    }
}

/// Why a certificate chain did not verify as an X.509-SVID.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("empty certificate chain")]
    EmptyChain,
    #[error("certificate does not parse: {0}")]
    Malformed(String),
    #[error("leaf must carry exactly one URI SAN, found {0}")]
    UriSanCount(usize),
    #[error("leaf URI SAN is not a valid SPIFFE ID: {0}")]
    InvalidSpiffeId(String),
    #[error("leaf is a CA certificate, not an X.509-SVID")]
    LeafIsCa,
    #[error("no trust bundle for trust domain {0}")]
    UnknownTrustDomain(String),
    #[error("certificate has expired")]
    Expired,
    #[error("certificate is not yet valid")]
    NotYetValid,
    #[error("chain does not lead to a root in the trust bundle")]
    UnknownIssuer,
    #[error("chain does not verify: {0}")]
    Chain(String),
    #[error("peer {0} is not in the allowed set")]
    NotAllowed(String),
}

/// Every other failure of the library.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("invalid SPIFFE ID: {0}")]
    SpiffeId(String),
    #[error("key error: {0}")]
    Key(String),
    #[error("certificate generation failed: {0}")]
    Certificate(String),
    #[error("PEM error: {0}")]
    Pem(String),
    #[error("bundle error: {0}")]
    Bundle(String),
    #[error("issuing CA is not valid at this time (valid {not_before} to {not_after})")]
    IssuerNotValid {
        not_before: String,
        not_after: String,
    },
    #[error("requested TTL must be positive")]
    ZeroTtl,
    #[error("CA key does not match its certificate")]
    KeyMismatch,
}

impl From<rcgen::Error> for Error {
    fn from(e: rcgen::Error) -> Self {
        Error::Certificate(e.to_string())
    }
}
