//! X.509-SVID chain verification: rustls-webpki does path validation, this adds the SPIFFE rules.
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use webpki::{EndEntityCert, KeyUsage};

use crate::bundle::TrustBundle;
use crate::error::VerifyError;
use crate::identity::{SpiffeId, TrustDomain};
use crate::svid::CertInfo;
use crate::time::unix_time;

/// Which extended key usage the leaf must allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Client,
    Server,
}

/// Verifies `chain` (leaf first) as an X.509-SVID against `bundle` at time `now` and returns the
/// leaf's SPIFFE ID.
pub fn verify_svid(
    chain: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    now: SystemTime,
    usage: Usage,
) -> Result<SpiffeId, VerifyError> {
    let (leaf, intermediates) = chain.split_first().ok_or(VerifyError::EmptyChain)?;
    let id = leaf_spiffe_id(leaf)?;
    if id.trust_domain() != bundle.trust_domain() {
        return Err(VerifyError::UnknownTrustDomain(
            id.trust_domain().to_string(),
        ));
    }
    verify_path(leaf, intermediates, bundle, now, usage)?;
    Ok(id)
}

/// The SPIFFE ID of a leaf, checking the X.509-SVID shape (one URI SAN, not a CA).
pub fn leaf_spiffe_id(leaf: &CertificateDer<'_>) -> Result<SpiffeId, VerifyError> {
    let info = CertInfo::parse(leaf)?;
    if info.is_ca {
        return Err(VerifyError::LeafIsCa);
    }
    info.spiffe_id()
}

fn verify_path(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundle: &TrustBundle,
    now: SystemTime,
    usage: Usage,
) -> Result<(), VerifyError> {
    let ee = EndEntityCert::try_from(leaf).map_err(|e| VerifyError::Malformed(e.to_string()))?;
    let anchors = bundle.trust_anchors();
    let usage = match usage {
        Usage::Client => KeyUsage::client_auth(),
        Usage::Server => KeyUsage::server_auth(),
    };
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &anchors,
        intermediates,
        unix_time(now),
        usage,
        None,
        None,
    )
    .map(|_| ())
    .map_err(chain_error)
}

fn chain_error(e: webpki::Error) -> VerifyError {
    match e {
        webpki::Error::CertExpired { .. } => VerifyError::Expired,
        webpki::Error::CertNotValidYet { .. } => VerifyError::NotYetValid,
        // webpki picks candidate issuers by name; a same-named but untrusted root surfaces as a
        // signature mismatch. Either way no trusted authority signed the chain.
        webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
            VerifyError::UnknownIssuer
        }
        other => VerifyError::Chain(format!("{other:?}")),
    }
}

/// Where verifiers look up the current bundle of a trust domain. Implementations swap bundles
/// atomically, so a rotation is seen by the next handshake.
pub trait BundleSource: Send + Sync + Debug {
    fn bundle(&self, td: &TrustDomain) -> Option<Arc<TrustBundle>>;
}

impl BundleSource for Arc<TrustBundle> {
    fn bundle(&self, td: &TrustDomain) -> Option<Arc<TrustBundle>> {
        (self.trust_domain() == td).then(|| self.clone())
    }
}

/// A set of bundles keyed by trust domain that can be replaced while in use.
#[derive(Debug, Default)]
pub struct SharedBundles {
    inner: RwLock<HashMap<TrustDomain, Arc<TrustBundle>>>,
}

impl SharedBundles {
    pub fn new(bundles: impl IntoIterator<Item = TrustBundle>) -> Self {
        let shared = Self::default();
        for b in bundles {
            shared.replace(b);
        }
        shared
    }

    /// Publishes a new bundle for its trust domain.
    pub fn replace(&self, bundle: TrustBundle) {
        let mut map = self.inner.write().expect("bundle lock poisoned");
        map.insert(bundle.trust_domain().clone(), Arc::new(bundle));
    }

    pub fn all(&self) -> Vec<Arc<TrustBundle>> {
        self.inner
            .read()
            .expect("bundle lock poisoned")
            .values()
            .cloned()
            .collect()
    }
}

impl BundleSource for SharedBundles {
    fn bundle(&self, td: &TrustDomain) -> Option<Arc<TrustBundle>> {
        self.inner
            .read()
            .expect("bundle lock poisoned")
            .get(td)
            .cloned()
    }
}

/// Verifies against whichever bundle `source` holds for the leaf's trust domain.
pub fn verify_svid_with(
    chain: &[CertificateDer<'_>],
    source: &dyn BundleSource,
    now: SystemTime,
    usage: Usage,
) -> Result<SpiffeId, VerifyError> {
    let leaf = chain.first().ok_or(VerifyError::EmptyChain)?;
    let id = leaf_spiffe_id(leaf)?;
    let bundle = source
        .bundle(id.trust_domain())
        .ok_or_else(|| VerifyError::UnknownTrustDomain(id.trust_domain().to_string()))?;
    verify_svid(chain, &bundle, now, usage)
}
