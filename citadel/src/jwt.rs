//! JWT-SVID signing: an ES256 key of citadel's own (`DATA_DIR/ca/jwt-key.pem`, 0600) whose public
//! half is published in the trust bundle as a `jwt-svid` authority.
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pki::bundle::Jwk;
use pki::identity::SpiffeId;
use pki::{JwtAuthority, KeyAlgorithm, PrivateKey};
use serde::Serialize;

use crate::storage::{PRIVATE, atomic_write};

/// Signs JWT-SVIDs.
pub struct JwtIssuer {
    authority: JwtAuthority,
    key: EncodingKey,
}

impl std::fmt::Debug for JwtIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtIssuer")
            .field("key_id", &self.authority.key_id)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: String,
    aud: &'a [String],
    exp: u64,
    iat: u64,
}

/// Why a JWT key could not be loaded or a token signed.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    #[error("JWT key {0}: {1}")]
    Key(String, String),
    #[error("signing JWT: {0}")]
    Sign(String),
}

impl JwtIssuer {
    /// Loads the key at `path`, generating it on first start.
    pub fn load_or_create(path: &Path) -> Result<Self, JwtError> {
        let err =
            |e: &dyn std::fmt::Display| JwtError::Key(path.display().to_string(), e.to_string());
        let key = match std::fs::read_to_string(path) {
            Ok(pem) => PrivateKey::from_pem(&pem).map_err(|e| err(&e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256).map_err(|e| err(&e))?;
                atomic_write(path, key.to_pem().as_bytes(), PRIVATE).map_err(|e| err(&e))?;
                key
            }
            Err(e) => return Err(err(&e)),
        };
        let spki = key.public_key_der();
        let jwk = Jwk::from_spki(&spki).map_err(|e| err(&e))?;
        if jwk.crv.as_deref() != Some("P-256") {
            return Err(err(&"JWT-SVID keys must be ECDSA P-256 (ES256)"));
        }
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &spki);
        let key_id = URL_SAFE_NO_PAD.encode(&digest.as_ref()[..16]);
        Ok(Self {
            authority: JwtAuthority { key_id, jwk },
            key: EncodingKey::from_ec_der(&key.to_der()),
        })
    }

    /// The bundle entry that verifies this issuer's tokens.
    pub fn authority(&self) -> &JwtAuthority {
        &self.authority
    }

    /// A JWT-SVID for `sub`, valid for `ttl` from `now`.
    pub fn mint(
        &self,
        sub: &SpiffeId,
        audience: &[String],
        now: SystemTime,
        ttl: Duration,
    ) -> Result<(String, SystemTime), JwtError> {
        let iat = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let exp = iat + ttl.as_secs().max(1);
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.authority.key_id.clone());
        header.typ = Some("JWT".into());
        let claims = Claims {
            sub: sub.to_string(),
            aud: audience,
            exp,
            iat,
        };
        let token = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| JwtError::Sign(e.to_string()))?;
        Ok((token, UNIX_EPOCH + Duration::from_secs(exp)))
    }
}
