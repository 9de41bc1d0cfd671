//! rustls integration: verifiers that accept SPIFFE peers of a trust domain (optionally only an
//! allow-list of IDs), and a certificate resolver whose SVID can be swapped during rotation.
use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::error::{Error, VerifyError};
use crate::identity::{SpiffeId, TrustDomain};
use crate::svid::X509Svid;
use crate::verify::{BundleSource, Usage, verify_svid_with};

/// The crypto provider Citadel uses everywhere (aws-lc-rs).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Which SPIFFE peers a verifier accepts.
#[derive(Debug, Clone)]
pub struct PeerPolicy {
    trust_domain: TrustDomain,
    allowed: Option<BTreeSet<SpiffeId>>,
}

impl PeerPolicy {
    /// Any SVID of `trust_domain`.
    pub fn trust_domain(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            allowed: None,
        }
    }

    /// Only these exact IDs (all must be in `trust_domain`).
    pub fn exact(trust_domain: TrustDomain, ids: impl IntoIterator<Item = SpiffeId>) -> Self {
        Self {
            trust_domain,
            allowed: Some(ids.into_iter().collect()),
        }
    }

    pub fn check(&self, id: &SpiffeId) -> Result<(), VerifyError> {
        if id.trust_domain() != &self.trust_domain {
            return Err(VerifyError::UnknownTrustDomain(
                id.trust_domain().to_string(),
            ));
        }
        match &self.allowed {
            Some(set) if !set.contains(id) => Err(VerifyError::NotAllowed(id.to_string())),
            _ => Ok(()),
        }
    }
}

fn to_rustls(e: VerifyError) -> rustls::Error {
    let cert_error = match e {
        VerifyError::Expired => CertificateError::Expired,
        VerifyError::NotYetValid => CertificateError::NotValidYet,
        VerifyError::UnknownIssuer | VerifyError::UnknownTrustDomain(_) => {
            CertificateError::UnknownIssuer
        }
        VerifyError::NotAllowed(_) => CertificateError::ApplicationVerificationFailure,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(cert_error)
}

fn verify_peer(
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    bundles: &dyn BundleSource,
    policy: &PeerPolicy,
    now: UnixTime,
    usage: Usage,
) -> Result<SpiffeId, rustls::Error> {
    let mut chain = Vec::with_capacity(1 + intermediates.len());
    chain.push(end_entity.clone());
    chain.extend(intermediates.iter().cloned());
    let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(now.as_secs());
    let id = verify_svid_with(&chain, bundles, now, usage).map_err(to_rustls)?;
    policy.check(&id).map_err(to_rustls)?;
    Ok(id)
}

/// Verifies a TLS server as a SPIFFE peer. The DNS name the client dialled is not checked: the
/// SPIFFE ID is the server's identity.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    bundles: Arc<dyn BundleSource>,
    policy: PeerPolicy,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    pub fn new(bundles: Arc<dyn BundleSource>, policy: PeerPolicy) -> Self {
        Self {
            bundles,
            policy,
            algorithms: provider().signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        verify_peer(
            end_entity,
            intermediates,
            self.bundles.as_ref(),
            &self.policy,
            now,
            Usage::Server,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Verifies TLS clients as SPIFFE peers. With `optional`, clients without a certificate are let
/// through (the application then decides, e.g. a join-token call); a presented certificate must
/// still verify.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    bundles: Arc<dyn BundleSource>,
    policy: PeerPolicy,
    optional: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeClientVerifier {
    pub fn new(bundles: Arc<dyn BundleSource>, policy: PeerPolicy, optional: bool) -> Self {
        Self {
            bundles,
            policy,
            optional,
            algorithms: provider().signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        !self.optional
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_peer(
            end_entity,
            intermediates,
            self.bundles.as_ref(),
            &self.policy,
            now,
            Usage::Client,
        )?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A rustls certified key (chain + signing key) for an SVID that holds its private key.
pub fn certified_key(svid: &X509Svid) -> Result<Arc<CertifiedKey>, Error> {
    let key = svid
        .key()
        .ok_or_else(|| Error::Key("SVID has no private key".into()))?;
    Ok(Arc::new(CertifiedKey::new(
        svid.chain().to_vec(),
        key.rustls_signing_key()?,
    )))
}

/// Serves whichever SVID was stored last, on both sides of a handshake, so rotation needs no
/// new TLS configuration.
#[derive(Debug)]
pub struct SwappableCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl SwappableCert {
    pub fn new(initial: Arc<CertifiedKey>) -> Self {
        Self {
            current: RwLock::new(initial),
        }
    }

    pub fn store(&self, key: Arc<CertifiedKey>) {
        *self.current.write().expect("cert lock poisoned") = key;
    }

    pub fn load(&self) -> Arc<CertifiedKey> {
        self.current.read().expect("cert lock poisoned").clone()
    }
}

impl rustls::server::ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.load())
    }
}

impl rustls::client::ResolvesClientCert for SwappableCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.load())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
