//! Private key generation and serialization for the algorithms Citadel supports.
use std::fmt;
use std::str::FromStr;

use rcgen::{KeyPair, PublicKeyData, RsaKeySize, SignatureAlgorithm};

use crate::error::Error;

/// Key algorithms for SVIDs and CAs. ECDSA P-256 is the default, as in SPIRE and the SPIFFE docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyAlgorithm {
    #[default]
    EcdsaP256,
    EcdsaP384,
    Rsa2048,
    Rsa3072,
    Ed25519,
}

impl KeyAlgorithm {
    pub const ALL: [KeyAlgorithm; 5] = [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Rsa2048,
        KeyAlgorithm::Rsa3072,
        KeyAlgorithm::Ed25519,
    ];

    fn signature_algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 => &rcgen::PKCS_RSA_SHA256,
            KeyAlgorithm::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }

    pub fn is_rsa(self) -> bool {
        matches!(self, KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ec-p256",
            KeyAlgorithm::EcdsaP384 => "ec-p384",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
            KeyAlgorithm::Rsa3072 => "rsa-3072",
            KeyAlgorithm::Ed25519 => "ed25519",
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyAlgorithm {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        KeyAlgorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| Error::Key(format!("unknown key algorithm {s:?} (want one of ec-p256, ec-p384, rsa-2048, rsa-3072, ed25519)")))
    }
}

/// A private key. `Debug` never prints key material.
pub struct PrivateKey {
    inner: KeyPair,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("algorithm", &self.algorithm_name())
            .finish_non_exhaustive()
    }
}

impl PrivateKey {
    /// Generates a fresh key from the operating system's CSPRNG.
    pub fn generate(alg: KeyAlgorithm) -> Result<Self, Error> {
        let sig = alg.signature_algorithm();
        let inner = match alg {
            KeyAlgorithm::Rsa2048 => KeyPair::generate_rsa_for(sig, RsaKeySize::_2048),
            KeyAlgorithm::Rsa3072 => KeyPair::generate_rsa_for(sig, RsaKeySize::_3072),
            _ => KeyPair::generate_for(sig),
        }
        .map_err(|e| Error::Key(e.to_string()))?;
        Ok(Self { inner })
    }

    /// Loads a PKCS#8 (or SEC1/PKCS#1, as rcgen accepts) PEM private key.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        let inner = KeyPair::from_pem(pem).map_err(|e| Error::Key(e.to_string()))?;
        Ok(Self { inner })
    }

    /// The PKCS#8 PEM encoding. Callers must write it only to 0600 files.
    pub fn to_pem(&self) -> String {
        self.inner.serialize_pem()
    }

    /// The PKCS#8 DER encoding.
    pub fn to_der(&self) -> Vec<u8> {
        self.inner.serialize_der()
    }

    /// The SubjectPublicKeyInfo DER of the public half.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.inner.subject_public_key_info()
    }

    pub(crate) fn key_pair(&self) -> &KeyPair {
        &self.inner
    }

    pub(crate) fn into_key_pair(self) -> KeyPair {
        self.inner
    }

    /// Signs `msg` with the key's own algorithm (ECDSA/EdDSA/RSA-PKCS1-SHA256).
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, Error> {
        use rcgen::SigningKey;
        self.inner.sign(msg).map_err(|e| Error::Key(e.to_string()))
    }

    fn algorithm_name(&self) -> String {
        format!("{:?}", self.inner.algorithm())
    }

    /// A rustls signing key for presenting this key in TLS.
    pub fn rustls_signing_key(
        &self,
    ) -> Result<std::sync::Arc<dyn rustls::sign::SigningKey>, Error> {
        let der = rustls_pki_types::PrivateKeyDer::Pkcs8(self.to_der().into());
        rustls::crypto::aws_lc_rs::default_provider()
            .key_provider
            .load_private_key(der)
            .map_err(|e| Error::Key(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_generates_and_round_trips_through_pem() {
        for alg in KeyAlgorithm::ALL {
            let key = PrivateKey::generate(alg).unwrap();
            let again = PrivateKey::from_pem(&key.to_pem()).unwrap();
            assert_eq!(key.public_key_der(), again.public_key_der(), "{alg}");
            assert!(key.rustls_signing_key().is_ok(), "{alg}");
            assert_eq!(alg.as_str().parse::<KeyAlgorithm>().unwrap(), alg);
        }
        assert!("dsa-1024".parse::<KeyAlgorithm>().is_err());
    }

    #[test]
    fn debug_never_shows_key_material() {
        let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let pem = key.to_pem();
        let body: String = pem.lines().nth(1).unwrap().chars().take(20).collect();
        let debug = format!("{key:?}");
        assert!(!debug.contains(&body));
        assert!(!debug.contains("PRIVATE KEY"));
    }
}
