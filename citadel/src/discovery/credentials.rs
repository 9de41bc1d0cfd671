//! Credentials from Secrets in the store (`credentialName`, on Gateway servers and in
//! DestinationRules): the Secret is looked up in the proxy's own namespace, checked, and pushed
//! on the proxy's ADS stream as the SDS secrets istiod names (`kubernetes://NAME` for a
//! certificate and key, `kubernetes://NAME-cacert` for CA certificates). Only a proxy whose
//! WorkloadEntry has the service account its SVID proves gets a namespace's Secrets: node
//! metadata alone (labels, `router~`) proves nothing, so another workload cannot pose as the one
//! the keys are for (istiod asks Kubernetes whether the service account may read them).
use std::collections::{BTreeMap, HashSet};

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::secret::Type as SecretType;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, TlsCertificate,
};
use mesh::{Kind, Spec};

use super::Ctx;

/// The SDS name prefix of store Secrets, as istiod names them.
pub const PREFIX: &str = "kubernetes://";
/// The suffix of the SDS name (and of the separate Secret) holding a credential's CA.
pub const CA_SUFFIX: &str = "-cacert";

/// The Secrets one proxy is pushed, each once. No `Debug` of contents: names only.
#[derive(Default)]
pub struct Credentials {
    secrets: Vec<Secret>,
    done: HashSet<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.secrets.iter().map(|s| &s.name))
            .finish()
    }
}

fn inline(bytes: Vec<u8>) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(bytes)),
        ..Default::default()
    })
}

impl Credentials {
    pub fn into_secrets(self) -> Vec<Secret> {
        self.secrets
    }

    /// The SDS name of Secret `name`'s certificate and key, for a proxy that may hold it and,
    /// for a gateway, whose WorkloadEntry `selector` selects. The key must be the
    /// certificate's, and the certificate one a TLS stack accepts as its own.
    pub fn certificate(
        &mut self,
        ctx: &Ctx<'_>,
        name: &str,
        selector: Option<&BTreeMap<String, String>>,
    ) -> Result<String, String> {
        let name = secret_name(name)?;
        let sds = format!("{PREFIX}{name}");
        if self.done.contains(&sds) {
            return Ok(sds);
        }
        may_hold(ctx, selector)?;
        let secret = find(ctx, name)?;
        let c = secret
            .tls_credential()
            .map_err(|e| format!("the Secret {e}"))?;
        pki::certificate_matches_key(&c.certificate_chain, &c.private_key)
            .map_err(|e| e.to_string())?;
        self.push(Secret {
            name: sds.clone(),
            r#type: Some(SecretType::TlsCertificate(TlsCertificate {
                certificate_chain: inline(c.certificate_chain),
                private_key: inline(c.private_key),
                ..Default::default()
            })),
        });
        Ok(sds)
    }

    /// The SDS name of credential `name`'s CA certificates, as istiod finds them: Secret
    /// `NAME-cacert`, else Secret `NAME` (`cacert`, else `ca.crt`). A credential without CA
    /// certificates is an error, never the system bundle: it names what to trust.
    pub fn ca(&mut self, ctx: &Ctx<'_>, name: &str) -> Result<String, String> {
        let name = secret_name(name)?;
        let sds = format!("{PREFIX}{name}{CA_SUFFIX}");
        if self.done.contains(&sds) {
            return Ok(sds);
        }
        may_hold(ctx, None)?;
        let separate = format!("{name}{CA_SUFFIX}");
        let secret = find(ctx, &separate).or_else(|_| find(ctx, name))?;
        let ca = secret.ca_certificate()?.ok_or_else(|| {
            format!("no CA certificates (cacert or ca.crt) in Secret {separate} or {name}")
        })?;
        let parsed = std::str::from_utf8(&ca)
            .ok()
            .and_then(|t| pki::pem::parse_certificates(t).ok());
        if parsed.is_none_or(|certs| certs.is_empty()) {
            return Err(format!(
                "the CA certificates of {name} are not PEM certificates"
            ));
        }
        self.push(Secret {
            name: sds.clone(),
            r#type: Some(SecretType::ValidationContext(
                CertificateValidationContext {
                    trusted_ca: inline(ca),
                    ..Default::default()
                },
            )),
        });
        Ok(sds)
    }

    fn push(&mut self, secret: Secret) {
        self.done.insert(secret.name.clone());
        self.secrets.push(secret);
    }
}

/// What entitles a proxy to its namespace's Secrets: the service account and labels of the
/// WorkloadEntry it names (`WORKLOAD_NAME` in its namespace) when that entry has the service
/// account the proxy's SVID proves. Proxies with the same holder are entitled alike, so it is
/// part of their class: resources with keys are never shared with a proxy that lacks them.
pub type Holder = (String, BTreeMap<String, String>);

/// The proxy's [`Holder`], if its WorkloadEntry exists with its service account.
pub fn holder(config: &mesh::Config, p: &super::proxy::Proxy) -> Option<Holder> {
    config
        .of_kind(Kind::WorkloadEntry)
        .find_map(|o| match &o.spec {
            Spec::WorkloadEntry(we) => {
                let sa = if we.service_account.is_empty() {
                    "default"
                } else {
                    we.service_account.as_str()
                };
                (o.metadata.namespace() == p.namespace
                    && o.metadata.name == p.workload_name
                    && sa == p.service_account)
                    .then(|| (sa.to_string(), we.labels.clone()))
            }
            _ => None,
        })
}

/// Whether the proxy may hold its namespace's Secrets: it has a [`Holder`], whose labels
/// `selector` selects when one is given.
fn may_hold(ctx: &Ctx<'_>, selector: Option<&BTreeMap<String, String>>) -> Result<(), String> {
    let p = ctx.proxy;
    let ok = holder(ctx.config, p).is_some_and(|(_, labels)| {
        selector.is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)))
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "no WorkloadEntry {}/{} with service account {} (and the labels that select it): the namespace's Secrets are not served to this proxy",
            p.namespace, p.workload_name, p.service_account
        ))
    }
}

/// The Secret a `credentialName` names: a name, or Istio's explicit `kubernetes://NAME`. A
/// Secret of another namespace (`kubernetes://NS/NAME`) is not the proxy's to read.
fn secret_name(credential: &str) -> Result<&str, String> {
    let name = credential.strip_prefix(PREFIX).unwrap_or(credential);
    if name.is_empty() || name.contains('/') || name.contains("://") {
        return Err(format!(
            "{credential:?}: name a Secret in the proxy's own namespace"
        ));
    }
    Ok(name)
}

fn find<'a>(ctx: &Ctx<'a>, name: &str) -> Result<&'a mesh::secret::Secret, String> {
    let ns = &ctx.proxy.namespace;
    ctx.config
        .of_kind(Kind::Secret)
        .find_map(|o| match &o.spec {
            Spec::Secret(s) if o.metadata.namespace() == ns && o.metadata.name == name => {
                Some(s.as_ref())
            }
            _ => None,
        })
        .ok_or_else(|| format!("no Secret {ns}/{name}"))
}
