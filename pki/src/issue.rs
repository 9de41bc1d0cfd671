//! The signing side: self-signed roots, signing (intermediate) CAs and X.509-SVIDs, each built
//! exactly to the SPIFFE X509-SVID profile.
use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use rustls_pki_types::CertificateDer;

use crate::csr::Csr;
use crate::error::{CsrError, Error};
use crate::identity::{SpiffeId, TrustDomain, trust_domain_id};
use crate::key::PrivateKey;
use crate::random::{RandomSource, serial_number};
use crate::svid::{CertInfo, X509Svid};
use crate::time::offset_date_time;

/// How far notBefore is backdated to absorb clock skew between nodes.
pub const BACKDATE: Duration = Duration::from_secs(60);

/// What to put in an X.509-SVID beyond what the CSR fixes.
#[derive(Debug, Clone)]
pub struct SvidParams {
    /// Requested lifetime; capped by the issuer's remaining lifetime.
    pub ttl: Duration,
    /// Extra DNS SANs (allowed by the X509-SVID standard next to the one URI SAN).
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
}

impl SvidParams {
    pub fn ttl(ttl: Duration) -> Self {
        Self {
            ttl,
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
        }
    }
}

/// Parameters of a CA (root or signing) certificate.
#[derive(Debug, Clone)]
pub struct SigningCaParams {
    pub common_name: String,
    pub organization: String,
    pub ttl: Duration,
    /// `pathLenConstraint`; `None` leaves the path length unconstrained.
    pub path_len: Option<u8>,
}

/// A certificate authority able to sign: its key, its certificate and the chain above it.
pub struct CertificateAuthority {
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    info: CertInfo,
    /// Certificates between `cert` and the trust anchor, anchor excluded.
    upstream: Vec<CertificateDer<'static>>,
    /// Checked once: deciding it costs a signature verification.
    self_signed: bool,
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain.to_string())
            .field("subject", &self.info.subject)
            .field("serial", &self.info.serial)
            .field("not_after", &self.info.not_after)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Loads an existing CA: `chain[0]` is the signing certificate for `key`; the rest lead to a
    /// root. Self-signed certificates in the rest are dropped (they belong in the trust bundle).
    pub fn new(
        td: TrustDomain,
        key: PrivateKey,
        chain: Vec<CertificateDer<'static>>,
    ) -> Result<Self, Error> {
        let (cert, rest) = chain
            .split_first()
            .ok_or_else(|| Error::Certificate("empty CA certificate chain".into()))?;
        let info = CertInfo::parse(cert)?;
        if !info.is_ca {
            return Err(Error::Certificate(format!(
                "{} is not a CA certificate",
                info.subject
            )));
        }
        if info.public_key_der != key.public_key_der() {
            return Err(Error::KeyMismatch);
        }
        let upstream = rest
            .iter()
            .filter(|c| !is_self_signed(c))
            .cloned()
            .collect();
        let issuer = Issuer::from_ca_cert_der(cert, key.into_key_pair())?;
        Ok(Self {
            trust_domain: td,
            issuer,
            cert: cert.clone(),
            info,
            upstream,
            self_signed: is_self_signed(cert),
        })
    }

    /// Creates a self-signed root CA for `td`.
    pub fn self_signed_root(
        td: TrustDomain,
        key: PrivateKey,
        params: &SigningCaParams,
        now: SystemTime,
        rng: &dyn RandomSource,
    ) -> Result<Self, Error> {
        let cert_params = ca_params(&td, params, now, now + params.ttl, rng)?;
        let cert = cert_params.self_signed(key.key_pair())?.der().clone();
        Self::new(td, key, vec![cert])
    }

    /// Signs a subordinate signing CA for the public key `public_key_der`. Its lifetime is capped
    /// by this CA's own.
    pub fn sign_signing_ca(
        &self,
        public_key_der: &[u8],
        params: &SigningCaParams,
        now: SystemTime,
        rng: &dyn RandomSource,
    ) -> Result<CertificateDer<'static>, Error> {
        let (not_before, not_after) = self.validity_window(now, params.ttl)?;
        let cert_params = ca_params(&self.trust_domain, params, not_before, not_after, rng)?;
        let spki = SubjectPublicKeyInfo::from_der(public_key_der)?;
        Ok(cert_params.signed_by(&spki, &self.issuer)?.der().clone())
    }

    /// Issues an X.509-SVID for a parsed CSR.
    pub fn issue_svid(
        &self,
        csr: &Csr,
        params: &SvidParams,
        now: SystemTime,
        rng: &dyn RandomSource,
    ) -> Result<X509Svid, Error> {
        if csr.spiffe_id().trust_domain() != &self.trust_domain {
            return Err(CsrError::WrongTrustDomain {
                requested: csr.spiffe_id().trust_domain().to_string(),
                expected: self.trust_domain.to_string(),
            }
            .into());
        }
        self.issue_svid_for_key(
            csr.spiffe_id(),
            csr.public_key_der(),
            csr.key().is_rsa(),
            params,
            now,
            rng,
        )
    }

    /// Issues an X.509-SVID for `id` over an already-trusted public key (used for citadel's own
    /// serving certificate, whose key never leaves the process).
    pub fn issue_svid_for_key(
        &self,
        id: &SpiffeId,
        public_key_der: &[u8],
        rsa: bool,
        params: &SvidParams,
        now: SystemTime,
        rng: &dyn RandomSource,
    ) -> Result<X509Svid, Error> {
        let (not_before, not_after) = self.validity_window(now, params.ttl)?;
        let cert_params = svid_params(id, params, rsa, not_before, not_after, rng)?;
        let spki = SubjectPublicKeyInfo::from_der(public_key_der)?;
        let leaf = cert_params.signed_by(&spki, &self.issuer)?.der().clone();
        X509Svid::from_chain(self.chain_with(leaf))
    }

    /// `leaf`, then the certificates a verifier needs to reach the root.
    fn chain_with(&self, leaf: CertificateDer<'static>) -> Vec<CertificateDer<'static>> {
        let mut chain = vec![leaf];
        if !self.self_signed {
            chain.push(self.cert.clone());
        }
        chain.extend(self.upstream.iter().cloned());
        chain
    }

    /// notBefore backdated by at most [`BACKDATE`]; notAfter capped by the issuer's notAfter.
    fn validity_window(
        &self,
        now: SystemTime,
        ttl: Duration,
    ) -> Result<(SystemTime, SystemTime), Error> {
        if ttl.is_zero() {
            return Err(Error::ZeroTtl);
        }
        if now < self.info.not_before || now >= self.info.not_after {
            return Err(Error::IssuerNotValid {
                not_before: format!("{:?}", self.info.not_before),
                not_after: format!("{:?}", self.info.not_after),
            });
        }
        let not_before = (now - BACKDATE).max(self.info.not_before);
        let not_after = (now + ttl).min(self.info.not_after);
        Ok((not_before, not_after))
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The signing certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub fn info(&self) -> &CertInfo {
        &self.info
    }

    /// Certificates between the signing certificate and the root, root excluded.
    pub fn upstream(&self) -> &[CertificateDer<'static>] {
        &self.upstream
    }

    pub fn is_root(&self) -> bool {
        self.self_signed
    }
}

fn serial(rng: &dyn RandomSource) -> SerialNumber {
    SerialNumber::from_slice(&serial_number(rng))
}

fn uri_san(id: &SpiffeId) -> Result<SanType, Error> {
    Ok(SanType::URI(id.to_string().try_into()?))
}

fn svid_params(
    id: &SpiffeId,
    params: &SvidParams,
    rsa: bool,
    not_before: SystemTime,
    not_after: SystemTime,
    rng: &dyn RandomSource,
) -> Result<CertificateParams, Error> {
    let mut p = CertificateParams::default();
    // An empty subject makes rcgen mark the URI SAN critical, as RFC 5280 and the standard require.
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![uri_san(id)?];
    for dns in &params.dns_names {
        p.subject_alt_names
            .push(SanType::DnsName(dns.clone().try_into()?));
    }
    p.subject_alt_names
        .extend(params.ip_addresses.iter().copied().map(SanType::IpAddress));
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if rsa {
        p.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.serial_number = Some(serial(rng));
    p.not_before = offset_date_time(not_before);
    p.not_after = offset_date_time(not_after);
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

fn ca_params(
    td: &TrustDomain,
    params: &SigningCaParams,
    not_before: SystemTime,
    not_after: SystemTime,
    rng: &dyn RandomSource,
) -> Result<CertificateParams, Error> {
    if params.ttl.is_zero() {
        return Err(Error::ZeroTtl);
    }
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name
        .push(DnType::OrganizationName, params.organization.clone());
    p.distinguished_name
        .push(DnType::CommonName, params.common_name.clone());
    // A signing certificate may carry the trust domain's SPIFFE ID, with no path.
    p.subject_alt_names = vec![uri_san(&trust_domain_id(td))?];
    p.is_ca = IsCa::Ca(match params.path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.serial_number = Some(serial(rng));
    p.not_before = offset_date_time(not_before);
    p.not_after = offset_date_time(not_after);
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

/// True when the certificate's subject and issuer match and its signature verifies with its
/// own key.
pub fn is_self_signed(cert: &CertificateDer<'_>) -> bool {
    crate::svid::parse_x509(cert)
        .map(|c| c.subject() == c.issuer() && c.verify_signature(None).is_ok())
        .unwrap_or(false)
}
