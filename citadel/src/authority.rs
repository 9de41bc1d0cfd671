//! The CA's keys and certificates on disk (Istio `cacerts` layout), the active signing CA, and
//! the trust bundle published over a `watch` channel.
//!
//! Layout of `DATA_DIR/ca/` (self-signed mode writes it; plug-in mode reads the same names from
//! the `--ca-dir` the operator provides): `root-cert.pem`, `ca-cert.pem`, `ca-key.pem` (0600),
//! `cert-chain.pem`, plus `root-key.pem` (0600, self-signed mode only, to re-issue intermediates)
//! and `bundle.json` (the SPIFFE bundle, with any extra authorities an operator added).
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use pki::issue::SigningCaParams;
use pki::pem::{encode_certificate, encode_certificates, parse_certificates};
use pki::svid::CertInfo;
use pki::{CertificateAuthority, KeyAlgorithm, PrivateKey, RandomSource, TrustBundle, TrustDomain};
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;

use crate::jwt::JwtIssuer;
use crate::storage::{PRIVATE, PUBLIC, atomic_write, private_dir};

/// Why the CA could not be loaded or changed.
#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Pki { path: PathBuf, source: pki::Error },
    #[error("{0}")]
    Invalid(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AuthorityError + '_ {
    move |source| AuthorityError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn pki_err(path: &Path) -> impl FnOnce(pki::Error) -> AuthorityError + '_ {
    move |source| AuthorityError::Pki {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the signing CA comes from.
#[derive(Debug, Clone)]
pub enum CaSource {
    /// Generate a root and an intermediate on first start, in `DATA_DIR/ca`.
    SelfSigned {
        key_algorithm: KeyAlgorithm,
        root_ttl: Duration,
        intermediate_ttl: Duration,
    },
    /// Load an operator-provided intermediate from this directory (Istio `cacerts` layout).
    PlugIn { dir: PathBuf },
}

const ROOT_CERT: &str = "root-cert.pem";
const ROOT_KEY: &str = "root-key.pem";
const CA_CERT: &str = "ca-cert.pem";
const CA_KEY: &str = "ca-key.pem";
const CERT_CHAIN: &str = "cert-chain.pem";
const BUNDLE: &str = "bundle.json";
const JWT_KEY: &str = "jwt-key.pem";

/// The loaded CA.
#[derive(Debug)]
pub struct Authority {
    trust_domain: TrustDomain,
    dir: PathBuf,
    root: CertificateDer<'static>,
    root_ca: Option<Arc<CertificateAuthority>>,
    intermediate_ttl: Duration,
    key_algorithm: KeyAlgorithm,
    signing: RwLock<Arc<CertificateAuthority>>,
    jwt: JwtIssuer,
    bundle: watch::Sender<Arc<TrustBundle>>,
}

impl Authority {
    /// Loads the CA from `data_dir` (or the plug-in dir), creating a self-signed one on first start.
    pub fn load_or_create(
        data_dir: &Path,
        trust_domain: TrustDomain,
        source: &CaSource,
        now: SystemTime,
        rng: &dyn RandomSource,
    ) -> Result<Self, AuthorityError> {
        let dir = data_dir.join("ca");
        private_dir(&dir).map_err(io_err(&dir))?;
        let (key_algorithm, intermediate_ttl, cert_dir) = match source {
            CaSource::SelfSigned {
                key_algorithm,
                root_ttl,
                intermediate_ttl,
            } => {
                bootstrap_self_signed(
                    &dir,
                    &trust_domain,
                    *key_algorithm,
                    *root_ttl,
                    *intermediate_ttl,
                    now,
                    rng,
                )?;
                (*key_algorithm, *intermediate_ttl, dir.clone())
            }
            CaSource::PlugIn { dir: plug } => {
                (KeyAlgorithm::EcdsaP256, Duration::ZERO, plug.clone())
            }
        };
        let root = read_single_cert(&cert_dir.join(ROOT_CERT))?;
        let signing = load_signing_ca(&cert_dir, &trust_domain, &root)?;
        let root_ca = match source {
            CaSource::SelfSigned { .. } => {
                Some(Arc::new(load_root_ca(&dir, &trust_domain, &root)?))
            }
            CaSource::PlugIn { .. } => None,
        };
        let jwt = JwtIssuer::load_or_create(&dir.join(JWT_KEY))
            .map_err(|e| AuthorityError::Invalid(e.to_string()))?;
        let bundle = load_bundle(&dir, &trust_domain, &root, jwt.authority())?;
        let authority = Self {
            trust_domain,
            dir,
            root,
            root_ca,
            intermediate_ttl,
            key_algorithm,
            signing: RwLock::new(Arc::new(signing)),
            jwt,
            bundle: watch::Sender::new(Arc::new(bundle)),
        };
        authority.renew_intermediate_if_due(now, rng)?;
        Ok(authority)
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The CA that signs SVIDs right now.
    pub fn signing(&self) -> Arc<CertificateAuthority> {
        self.signing.read().expect("signing lock poisoned").clone()
    }

    /// The root that anchors the signing CA.
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.root
    }

    /// The JWT-SVID signer.
    pub fn jwt(&self) -> &JwtIssuer {
        &self.jwt
    }

    pub fn bundle(&self) -> Arc<TrustBundle> {
        self.bundle.borrow().clone()
    }

    /// A receiver that sees every bundle change.
    pub fn subscribe_bundle(&self) -> watch::Receiver<Arc<TrustBundle>> {
        self.bundle.subscribe()
    }

    /// Seconds of validity left on the root and the signing CA.
    pub fn expiries(&self) -> (SystemTime, SystemTime) {
        let root = CertInfo::parse(&self.root)
            .map(|i| i.not_after)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        (root, self.signing().info().not_after)
    }

    /// In self-signed mode, replaces the intermediate (new key) once less than a sixth of its
    /// lifetime is left, as SPIRE activates its next CA. Returns whether it rotated.
    pub fn renew_intermediate_if_due(
        &self,
        now: SystemTime,
        rng: &dyn RandomSource,
    ) -> Result<bool, AuthorityError> {
        let Some(root_ca) = &self.root_ca else {
            return Ok(false);
        };
        let info = self.signing().info().clone();
        let lifetime = info
            .not_after
            .duration_since(info.not_before)
            .unwrap_or_default();
        let left = info.not_after.duration_since(now).unwrap_or_default();
        if left > lifetime / 6 {
            return Ok(false);
        }
        let next = issue_intermediate(
            &self.dir,
            root_ca,
            &self.trust_domain,
            self.key_algorithm,
            self.intermediate_ttl,
            now,
            rng,
        )?;
        *self.signing.write().expect("signing lock poisoned") = Arc::new(next);
        tracing::info!(not_after = ?self.signing().info().not_after, "rotated the intermediate signing CA");
        Ok(true)
    }

    /// Adds an extra X.509 authority to the bundle and persists it.
    pub fn add_bundle_authority(&self, pem: &str) -> Result<Arc<TrustBundle>, AuthorityError> {
        let certs = parse_certificates(pem).map_err(|e| AuthorityError::Invalid(e.to_string()))?;
        if certs.is_empty() {
            return Err(AuthorityError::Invalid("no certificate in PEM".into()));
        }
        self.change_bundle(|bundle| {
            let mut changed = false;
            for cert in certs {
                changed |= bundle
                    .add_x509_authority(cert)
                    .map_err(|e| AuthorityError::Invalid(e.to_string()))?;
            }
            Ok(changed)
        })
    }

    /// Removes an X.509 authority from the bundle (never the active root) and persists it.
    pub fn remove_bundle_authority(&self, pem: &str) -> Result<Arc<TrustBundle>, AuthorityError> {
        let certs = parse_certificates(pem).map_err(|e| AuthorityError::Invalid(e.to_string()))?;
        if certs.contains(&self.root) {
            return Err(AuthorityError::Invalid(
                "the active signing root cannot be removed from the bundle".into(),
            ));
        }
        self.change_bundle(|bundle| {
            // Remove every listed certificate, not just the first one found.
            let removed: Vec<bool> = certs
                .iter()
                .map(|c| bundle.remove_x509_authority(c))
                .collect();
            Ok(removed.contains(&true))
        })
    }

    /// Applies `edit` to a copy; if it changed anything, bumps the sequence, persists, then
    /// publishes. A failed write publishes nothing.
    fn change_bundle(
        &self,
        edit: impl FnOnce(&mut TrustBundle) -> Result<bool, AuthorityError>,
    ) -> Result<Arc<TrustBundle>, AuthorityError> {
        let mut next = (*self.bundle()).clone();
        if !edit(&mut next)? {
            return Ok(self.bundle());
        }
        next.set_sequence(next.sequence() + 1);
        save_bundle(&self.dir, &next)?;
        let next = Arc::new(next);
        self.bundle.send_replace(next.clone());
        Ok(next)
    }
}

fn read_file(path: &Path) -> Result<String, AuthorityError> {
    std::fs::read_to_string(path).map_err(io_err(path))
}

fn read_single_cert(path: &Path) -> Result<CertificateDer<'static>, AuthorityError> {
    let mut certs = parse_certificates(&read_file(path)?).map_err(pki_err(path))?;
    if certs.len() != 1 {
        return Err(AuthorityError::Invalid(format!(
            "{}: expected one certificate, found {}",
            path.display(),
            certs.len()
        )));
    }
    Ok(certs.remove(0))
}

fn read_key(path: &Path) -> Result<PrivateKey, AuthorityError> {
    PrivateKey::from_pem(&read_file(path)?).map_err(pki_err(path))
}

fn load_signing_ca(
    dir: &Path,
    td: &TrustDomain,
    root: &CertificateDer<'static>,
) -> Result<CertificateAuthority, AuthorityError> {
    let cert = read_single_cert(&dir.join(CA_CERT))?;
    let key = read_key(&dir.join(CA_KEY))?;
    let chain_path = dir.join(CERT_CHAIN);
    let mut chain = match std::fs::read_to_string(&chain_path) {
        Ok(text) => parse_certificates(&text).map_err(pki_err(&chain_path))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![cert.clone()],
        Err(e) => return Err(io_err(&chain_path)(e)),
    };
    if chain.first() != Some(&cert) {
        chain.insert(0, cert);
    }
    let ca =
        CertificateAuthority::new(td.clone(), key, chain).map_err(pki_err(&dir.join(CA_KEY)))?;
    check_anchored(&ca, root)?;
    Ok(ca)
}

/// Proves the signing CA chains to `root`: issue a throwaway SVID and verify it with webpki, at
/// a moment inside the signing CA's validity so an operator's clock does not matter here.
fn check_anchored(
    ca: &CertificateAuthority,
    root: &CertificateDer<'static>,
) -> Result<(), AuthorityError> {
    let at = ca.info().not_before + Duration::from_secs(1);
    let invalid =
        |what: &str, e: &dyn std::fmt::Display| AuthorityError::Invalid(format!("{what}: {e}"));
    let probe_key =
        PrivateKey::generate(KeyAlgorithm::EcdsaP256).map_err(|e| invalid("probe key", &e))?;
    let probe_id = pki::identity::server_id(ca.trust_domain());
    let params = pki::SvidParams::ttl(Duration::from_secs(1));
    let probe = ca
        .issue_svid_for_key(
            &probe_id,
            &probe_key.public_key_der(),
            false,
            &params,
            at,
            &pki::SystemRandom,
        )
        .map_err(|e| invalid("signing CA cannot issue", &e))?;
    let mut bundle = TrustBundle::new(ca.trust_domain().clone());
    bundle
        .add_x509_authority(root.clone())
        .map_err(|e| invalid("root-cert.pem", &e))?;
    pki::verify_svid(probe.chain(), &bundle, at, pki::Usage::Client)
        .map(|_| ())
        .map_err(|e| invalid("signing CA does not chain to root-cert.pem", &e))
}

fn load_root_ca(
    dir: &Path,
    td: &TrustDomain,
    root: &CertificateDer<'static>,
) -> Result<CertificateAuthority, AuthorityError> {
    let key = read_key(&dir.join(ROOT_KEY))?;
    CertificateAuthority::new(td.clone(), key, vec![root.clone()])
        .map_err(pki_err(&dir.join(ROOT_KEY)))
}

fn root_params(ttl: Duration) -> SigningCaParams {
    SigningCaParams {
        common_name: "Citadel Root CA".into(),
        organization: "Citadel".into(),
        ttl,
        path_len: Some(1),
    }
}

fn intermediate_params(ttl: Duration) -> SigningCaParams {
    SigningCaParams {
        common_name: "Citadel Intermediate CA".into(),
        organization: "Citadel".into(),
        ttl,
        path_len: Some(0),
    }
}

/// Creates root and intermediate unless present. `ca-cert.pem` is written last: a crash before
/// it leaves a root from which the next start issues the intermediate.
fn bootstrap_self_signed(
    dir: &Path,
    td: &TrustDomain,
    alg: KeyAlgorithm,
    root_ttl: Duration,
    intermediate_ttl: Duration,
    now: SystemTime,
    rng: &dyn RandomSource,
) -> Result<(), AuthorityError> {
    let root_path = dir.join(ROOT_CERT);
    let root_ca = if root_path.exists() && dir.join(ROOT_KEY).exists() {
        if dir.join(CA_CERT).exists() {
            return Ok(());
        }
        load_root_ca(dir, td, &read_single_cert(&root_path)?)?
    } else {
        let key = PrivateKey::generate(alg).map_err(pki_err(dir))?;
        atomic_write(&dir.join(ROOT_KEY), key.to_pem().as_bytes(), PRIVATE).map_err(io_err(dir))?;
        let root = CertificateAuthority::self_signed_root(
            td.clone(),
            key,
            &root_params(root_ttl),
            now,
            rng,
        )
        .map_err(pki_err(dir))?;
        atomic_write(
            &root_path,
            encode_certificate(root.certificate()).as_bytes(),
            PUBLIC,
        )
        .map_err(io_err(&root_path))?;
        tracing::info!(trust_domain = %td, "generated a self-signed root CA");
        root
    };
    issue_intermediate(dir, &root_ca, td, alg, intermediate_ttl, now, rng)?;
    Ok(())
}

fn issue_intermediate(
    dir: &Path,
    root_ca: &CertificateAuthority,
    td: &TrustDomain,
    alg: KeyAlgorithm,
    ttl: Duration,
    now: SystemTime,
    rng: &dyn RandomSource,
) -> Result<CertificateAuthority, AuthorityError> {
    let key = PrivateKey::generate(alg).map_err(pki_err(dir))?;
    let cert = root_ca
        .sign_signing_ca(&key.public_key_der(), &intermediate_params(ttl), now, rng)
        .map_err(pki_err(dir))?;
    let chain = vec![cert.clone(), root_ca.certificate().clone()];
    // Key before certificate: a certificate on disk always has its key next to it.
    atomic_write(&dir.join(CA_KEY), key.to_pem().as_bytes(), PRIVATE).map_err(io_err(dir))?;
    atomic_write(
        &dir.join(CERT_CHAIN),
        encode_certificates(&chain).as_bytes(),
        PUBLIC,
    )
    .map_err(io_err(dir))?;
    atomic_write(
        &dir.join(CA_CERT),
        encode_certificate(&cert).as_bytes(),
        PUBLIC,
    )
    .map_err(io_err(dir))?;
    CertificateAuthority::new(td.clone(), key, chain).map_err(pki_err(dir))
}

fn load_bundle(
    dir: &Path,
    td: &TrustDomain,
    root: &CertificateDer<'static>,
    jwt: &pki::JwtAuthority,
) -> Result<TrustBundle, AuthorityError> {
    let path = dir.join(BUNDLE);
    let mut bundle = match std::fs::read_to_string(&path) {
        Ok(json) => TrustBundle::from_jwks(td.clone(), &json).map_err(pki_err(&path))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => TrustBundle::new(td.clone()),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let mut changed = bundle
        .add_x509_authority(root.clone())
        .map_err(pki_err(&path))?;
    if !bundle.jwt_authorities().contains(jwt) {
        bundle.upsert_jwt_authority(jwt.clone());
        changed = true;
    }
    if changed {
        bundle.set_sequence(bundle.sequence() + 1);
        save_bundle(dir, &bundle)?;
    }
    Ok(bundle)
}

fn save_bundle(dir: &Path, bundle: &TrustBundle) -> Result<(), AuthorityError> {
    let path = dir.join(BUNDLE);
    let json = bundle.to_jwks().map_err(pki_err(&path))?;
    atomic_write(&path, json.as_bytes(), PUBLIC).map_err(io_err(&path))
}
