//! JWT-SVID validation against the JWT authorities of a trust bundle (ES256 keys by `kid`).
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pki::TrustBundle;
use pki::identity::{SpiffeId, parse_spiffe_id};

/// Why a JWT-SVID was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("malformed JWT: {0}")]
    Malformed(String),
    #[error("no JWT authority with key id {0:?} in the bundle")]
    UnknownKey(String),
    #[error("JWT rejected: {0}")]
    Invalid(String),
    #[error("subject is not a SPIFFE ID of trust domain {0}")]
    WrongSubject(String),
}

/// Verifies signature, expiry and audience; returns the subject and all claims.
pub fn validate_jwt_svid(
    token: &str,
    audience: &str,
    bundle: &TrustBundle,
    now: SystemTime,
) -> Result<(SpiffeId, serde_json::Map<String, serde_json::Value>), JwtError> {
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| JwtError::Malformed(e.to_string()))?;
    let kid = header
        .kid
        .ok_or_else(|| JwtError::Malformed("missing kid".into()))?;
    let authority = bundle
        .jwt_authorities()
        .iter()
        .find(|a| a.key_id == kid)
        .ok_or_else(|| JwtError::UnknownKey(kid.clone()))?;
    let (x, y) = authority
        .jwk
        .x
        .as_deref()
        .zip(authority.jwk.y.as_deref())
        .ok_or_else(|| JwtError::UnknownKey(kid.clone()))?;
    let key =
        DecodingKey::from_ec_components(x, y).map_err(|e| JwtError::Invalid(e.to_string()))?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "aud", "sub"]);
    // jsonwebtoken reads the system clock for `exp`; check it against the injected clock too.
    validation.leeway = 0;
    let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
        token,
        &key,
        &validation,
    )
    .map_err(|e| JwtError::Invalid(e.to_string()))?;
    let exp = data.claims.get("exp").and_then(|v| v.as_u64()).unwrap_or(0);
    if now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() >= exp {
        return Err(JwtError::Invalid("token expired".into()));
    }
    let sub = data
        .claims
        .get("sub")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    let id = parse_spiffe_id(sub)
        .map_err(|_| JwtError::WrongSubject(bundle.trust_domain().to_string()))?;
    if id.trust_domain() != bundle.trust_domain() {
        return Err(JwtError::WrongSubject(bundle.trust_domain().to_string()));
    }
    Ok((id, data.claims))
}
