//! Pure PKI core of Citadel: SPIFFE IDs, keys, CSRs, X.509-SVID issuance, trust bundles and
//! SPIFFE-aware verification. No async runtime, no network; time and randomness are arguments.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod csr;
pub mod error;
pub mod identity;
pub mod issue;
pub mod key;
pub mod pem;
pub mod random;
pub mod svid;
pub mod time;
pub mod tls;
pub mod verify;

pub use bundle::{JwtAuthority, TrustBundle};
pub use csr::{Csr, MAX_CSR_BYTES, build_csr};
pub use error::{CsrError, Error, VerifyError};
pub use identity::{SpiffeId, TrustDomain};
pub use issue::{CertificateAuthority, SigningCaParams, SvidParams};
pub use key::{KeyAlgorithm, PrivateKey};
pub use pem::certificate_matches_key;
pub use random::{RandomSource, SystemRandom};
pub use svid::{CertInfo, X509Svid};
pub use time::{Clock, ManualClock, SystemClock};
pub use verify::{Usage, verify_svid};
