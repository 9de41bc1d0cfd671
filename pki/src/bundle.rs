//! Trust bundles: the X.509 and JWT authorities of one trust domain, as PEM or as the SPIFFE
//! bundle format (a JWK Set with `spiffe_sequence` and `spiffe_refresh_hint`).
use std::fmt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::error::Error;
use crate::identity::TrustDomain;
use crate::svid::{CertInfo, parse_x509};

/// One JSON Web Key as the SPIFFE bundle format uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub key_use: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub x5c: Vec<String>,
}

impl Jwk {
    /// Builds the public JWK for a SubjectPublicKeyInfo (EC P-256/P-384, RSA, Ed25519).
    pub fn from_spki(spki_der: &[u8]) -> Result<Self, Error> {
        let (_, spki) =
            SubjectPublicKeyInfo::from_der(spki_der).map_err(|e| Error::Bundle(e.to_string()))?;
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let mut jwk = Jwk {
            kty: String::new(),
            key_use: None,
            kid: None,
            crv: None,
            x: None,
            y: None,
            n: None,
            e: None,
            x5c: Vec::new(),
        };
        let oid = &spki.algorithm.algorithm;
        if *oid == OID_SIG_ED25519 {
            jwk.kty = "OKP".into();
            jwk.crv = Some("Ed25519".into());
            jwk.x = Some(b64(&spki.subject_public_key.data));
            return Ok(jwk);
        }
        match spki.parsed().map_err(|e| Error::Bundle(e.to_string()))? {
            PublicKey::EC(point) if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok());
                let (crv, len) = match curve {
                    Some(c) if c == OID_EC_P256 => ("P-256", 32),
                    Some(c) if c == OID_NIST_EC_P384 => ("P-384", 48),
                    _ => return Err(Error::Bundle("unsupported EC curve".into())),
                };
                let data = point.data();
                if data.len() != 1 + 2 * len || data[0] != 4 {
                    return Err(Error::Bundle("EC point is not uncompressed".into()));
                }
                jwk.kty = "EC".into();
                jwk.crv = Some(crv.into());
                jwk.x = Some(b64(&data[1..1 + len]));
                jwk.y = Some(b64(&data[1 + len..]));
            }
            PublicKey::RSA(rsa) => {
                jwk.kty = "RSA".into();
                jwk.n = Some(b64(strip_zeros(rsa.modulus)));
                jwk.e = Some(b64(strip_zeros(rsa.exponent)));
            }
            _ => return Err(Error::Bundle("unsupported public key type".into())),
        }
        Ok(jwk)
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b
        .iter()
        .position(|x| *x != 0)
        .unwrap_or(b.len().saturating_sub(1));
    &b[first..]
}

/// A public key that signs JWT-SVIDs, identified by its key ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtAuthority {
    pub key_id: String,
    pub jwk: Jwk,
}

#[derive(Serialize, Deserialize)]
struct JwksDocument {
    keys: Vec<Jwk>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spiffe_sequence: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spiffe_refresh_hint: Option<u64>,
}

/// The authorities of one trust domain. Holds several roots at once, as a rotation needs.
#[derive(Clone, PartialEq, Eq)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    x509_authorities: Vec<CertificateDer<'static>>,
    jwt_authorities: Vec<JwtAuthority>,
    sequence: u64,
    refresh_hint: Option<Duration>,
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("trust_domain", &self.trust_domain.to_string())
            .field("x509_authorities", &self.x509_authorities.len())
            .field("jwt_authorities", &self.jwt_authorities.len())
            .field("sequence", &self.sequence)
            .finish()
    }
}

impl TrustBundle {
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            x509_authorities: Vec::new(),
            jwt_authorities: Vec::new(),
            sequence: 0,
            refresh_hint: None,
        }
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn x509_authorities(&self) -> &[CertificateDer<'static>] {
        &self.x509_authorities
    }

    pub fn jwt_authorities(&self) -> &[JwtAuthority] {
        &self.jwt_authorities
    }

    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    pub fn set_sequence(&mut self, sequence: u64) {
        self.sequence = sequence;
    }

    pub fn refresh_hint(&self) -> Option<Duration> {
        self.refresh_hint
    }

    pub fn set_refresh_hint(&mut self, hint: Option<Duration>) {
        self.refresh_hint = hint;
    }

    /// Adds a CA certificate; returns false if it was already present. The certificate must be
    /// a CA usable as a trust anchor.
    pub fn add_x509_authority(&mut self, cert: CertificateDer<'static>) -> Result<bool, Error> {
        let info = CertInfo::parse(&cert)?;
        if !info.is_ca {
            return Err(Error::Bundle(format!(
                "{} is not a CA certificate",
                info.subject
            )));
        }
        webpki::anchor_from_trusted_cert(&cert)
            .map_err(|e| Error::Bundle(format!("not a usable trust anchor: {e}")))?;
        if self.x509_authorities.contains(&cert) {
            return Ok(false);
        }
        self.x509_authorities.push(cert);
        Ok(true)
    }

    /// Removes a CA certificate; returns whether it was present.
    pub fn remove_x509_authority(&mut self, cert: &CertificateDer<'_>) -> bool {
        let before = self.x509_authorities.len();
        self.x509_authorities
            .retain(|c| c.as_ref() != cert.as_ref());
        before != self.x509_authorities.len()
    }

    /// Adds or replaces the JWT authority with the same key ID.
    pub fn upsert_jwt_authority(&mut self, authority: JwtAuthority) {
        self.jwt_authorities
            .retain(|a| a.key_id != authority.key_id);
        self.jwt_authorities.push(authority);
    }

    pub fn remove_jwt_authority(&mut self, key_id: &str) -> bool {
        let before = self.jwt_authorities.len();
        self.jwt_authorities.retain(|a| a.key_id != key_id);
        before != self.jwt_authorities.len()
    }

    /// webpki trust anchors for chain verification.
    pub fn trust_anchors(&self) -> Vec<rustls_pki_types::TrustAnchor<'_>> {
        self.x509_authorities
            .iter()
            .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
            .collect()
    }

    /// Reads every certificate in a PEM file as an X.509 authority.
    pub fn from_pem(trust_domain: TrustDomain, pem: &str) -> Result<Self, Error> {
        let mut bundle = Self::new(trust_domain);
        for cert in crate::pem::parse_certificates(pem)? {
            bundle.add_x509_authority(cert)?;
        }
        if bundle.x509_authorities.is_empty() {
            return Err(Error::Bundle("no certificates in PEM bundle".into()));
        }
        Ok(bundle)
    }

    /// The X.509 authorities as concatenated PEM.
    pub fn to_pem(&self) -> String {
        crate::pem::encode_certificates(&self.x509_authorities)
    }

    /// The SPIFFE bundle format (JWKS) document.
    pub fn to_jwks(&self) -> Result<String, Error> {
        let mut keys = Vec::new();
        for cert in &self.x509_authorities {
            let x509 = parse_x509(cert)?;
            let mut jwk = Jwk::from_spki(x509.public_key().raw)?;
            jwk.key_use = Some("x509-svid".into());
            jwk.x5c = vec![STANDARD.encode(cert.as_ref())];
            keys.push(jwk);
        }
        for authority in &self.jwt_authorities {
            let mut jwk = authority.jwk.clone();
            jwk.key_use = Some("jwt-svid".into());
            jwk.kid = Some(authority.key_id.clone());
            jwk.x5c.clear();
            keys.push(jwk);
        }
        let doc = JwksDocument {
            keys,
            spiffe_sequence: Some(self.sequence),
            spiffe_refresh_hint: self.refresh_hint.map(|d| d.as_secs()),
        };
        serde_json::to_string_pretty(&doc).map_err(|e| Error::Bundle(e.to_string()))
    }

    /// Parses a SPIFFE bundle (JWKS) document. Keys with an unknown `use` are skipped, as the
    /// SPIFFE Trust Domain and Bundle standard requires.
    pub fn from_jwks(trust_domain: TrustDomain, json: &str) -> Result<Self, Error> {
        let doc: JwksDocument =
            serde_json::from_str(json).map_err(|e| Error::Bundle(e.to_string()))?;
        let mut bundle = Self::new(trust_domain);
        bundle.sequence = doc.spiffe_sequence.unwrap_or(0);
        bundle.refresh_hint = doc.spiffe_refresh_hint.map(Duration::from_secs);
        for jwk in doc.keys {
            match jwk.key_use.as_deref() {
                Some("x509-svid") => bundle.add_x509_from_jwk(&jwk)?,
                Some("jwt-svid") => {
                    let key_id = jwk
                        .kid
                        .clone()
                        .filter(|k| !k.is_empty())
                        .ok_or_else(|| Error::Bundle("jwt-svid key without kid".into()))?;
                    bundle.upsert_jwt_authority(JwtAuthority {
                        key_id,
                        jwk: jwk.without_metadata(),
                    });
                }
                _ => {}
            }
        }
        Ok(bundle)
    }

    fn add_x509_from_jwk(&mut self, jwk: &Jwk) -> Result<(), Error> {
        let [x5c] = jwk.x5c.as_slice() else {
            return Err(Error::Bundle(
                "x509-svid key must carry exactly one x5c certificate".into(),
            ));
        };
        let der = STANDARD
            .decode(x5c)
            .map_err(|e| Error::Bundle(format!("x5c: {e}")))?;
        let parsed = parse_x509(&der)?;
        if Jwk::from_spki(parsed.public_key().raw)?.without_metadata() != jwk.without_metadata() {
            return Err(Error::Bundle(
                "x5c certificate does not match the JWK's key".into(),
            ));
        }
        self.add_x509_authority(CertificateDer::from(der))?;
        Ok(())
    }
}

impl Jwk {
    fn without_metadata(&self) -> Jwk {
        Jwk {
            key_use: None,
            kid: None,
            x5c: Vec::new(),
            ..self.clone()
        }
    }
}
