//! Kubernetes' `v1` Secret, the part a `credentialName` reads: a TLS certificate and key, as
//! `kubectl create secret tls` writes them (`tls.crt`/`tls.key`) or in Istio's generic form
//! (`cert`/`key`), and CA certificates (`ca.crt` or `cacert`). `Debug` never prints the
//! values.
use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use serde::Deserialize;

/// The core API group's version that serves Secret.
pub const CORE_VERSIONS: [&str; 1] = ["v1"];

/// A Secret's payload (the top-level `type`, `data` and `stringData` of the manifest).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Secret {
    #[serde(default, rename = "type")]
    pub type_: Option<String>,
    /// Base64 values.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    /// Plain values; they win over `data` for the same key, as the API server merges them.
    #[serde(default)]
    pub string_data: BTreeMap<String, String>,
    #[serde(default)]
    pub immutable: Option<bool>,
}

/// The type `kubectl create secret tls` gives.
pub const TLS_TYPE: &str = "kubernetes.io/tls";

/// A certificate chain and its private key, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsCredential {
    pub certificate_chain: Vec<u8>,
    pub private_key: Vec<u8>,
}

impl fmt::Debug for TlsCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCredential")
            .field("certificate_chain", &self.certificate_chain.len())
            .field("private_key", &"<redacted>")
            .finish()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&String> = self.data.keys().chain(self.string_data.keys()).collect();
        f.debug_struct("Secret")
            .field("type", &self.type_)
            .field("keys", &keys)
            .finish()
    }
}

impl Secret {
    /// The decoded value of `key`; an empty value counts as none, as istiod reads them.
    pub fn value(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        if let Some(v) = self.string_data.get(key) {
            return Ok(Some(v.as_bytes().to_vec()).filter(|v| !v.is_empty()));
        }
        self.data
            .get(key)
            .map(|v| {
                base64::engine::general_purpose::STANDARD
                    .decode(v.trim())
                    .map_err(|e| format!("not base64: {e}"))
            })
            .transpose()
            .map(|v| v.filter(|v| !v.is_empty()))
    }

    /// The CA certificates a client trusts, if the Secret carries them, in istiod's order:
    /// Istio's `cacert`, else `ca.crt` (what `kubectl create secret generic --from-file=ca.crt`
    /// and cert-manager write).
    pub fn ca_certificate(&self) -> Result<Option<Vec<u8>>, String> {
        for key in ["cacert", "ca.crt"] {
            if let Some(v) = self.value(key).map_err(|e| format!("data[{key}]: {e}"))? {
                return Ok(Some(v));
            }
        }
        Ok(None)
    }

    /// The certificate and key, in istiod's order: Istio's `cert`/`key`, else `tls.crt`/`tls.key`
    /// (`kubectl create secret tls`).
    pub fn tls_credential(&self) -> Result<TlsCredential, String> {
        for (cert, key) in [("cert", "key"), ("tls.crt", "tls.key")] {
            let read = |k: &str| self.value(k).map_err(|e| format!("data[{k}]: {e}"));
            if let (Some(certificate_chain), Some(private_key)) = (read(cert)?, read(key)?) {
                return Ok(TlsCredential {
                    certificate_chain,
                    private_key,
                });
            }
        }
        Err("has no certificate and key (cert and key, or tls.crt and tls.key)".into())
    }
}
