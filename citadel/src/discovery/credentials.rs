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

    /// The SDS name of credential `name`'s CA certificates, as istiod finds them: `ca.crt` or
    /// `cacert` in Secret `name`, else in Secret `NAME-cacert`. `None` when neither has any.
    pub fn ca(&mut self, ctx: &Ctx<'_>, name: &str) -> Result<Option<String>, String> {
        let sds = format!("{PREFIX}{name}{CA_SUFFIX}");
        if self.done.contains(&sds) {
            return Ok(Some(sds));
        }
        may_hold(ctx, None)?;
        let own = find(ctx, name).ok();
        let separate = find(ctx, &format!("{name}{CA_SUFFIX}")).ok();
        if own.is_none() && separate.is_none() {
            return Err(format!(
                "no Secret {name} (or {name}{CA_SUFFIX}) in namespace {}",
                ctx.proxy.namespace
            ));
        }
        let mut ca = None;
        for secret in own.into_iter().chain(separate) {
            if let Some(bytes) = secret.ca_certificate()? {
                ca = Some(bytes);
                break;
            }
        }
        let Some(ca) = ca else { return Ok(None) };
        if !String::from_utf8_lossy(&ca).contains("-----BEGIN CERTIFICATE-----") {
            return Err(format!("the CA of {name} is not PEM certificates"));
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
        Ok(Some(sds))
    }

    fn push(&mut self, secret: Secret) {
        self.done.insert(secret.name.clone());
        self.secrets.push(secret);
    }
}

/// Whether the proxy may hold its namespace's Secrets: the WorkloadEntry it names
/// (`WORKLOAD_NAME` in its namespace) has the service account its SVID proves, and labels
/// `selector` selects when one is given.
fn may_hold(ctx: &Ctx<'_>, selector: Option<&BTreeMap<String, String>>) -> Result<(), String> {
    let p = ctx.proxy;
    let ok = ctx
        .config
        .of_kind(Kind::WorkloadEntry)
        .any(|o| match &o.spec {
            Spec::WorkloadEntry(we) => {
                let sa = if we.service_account.is_empty() {
                    "default"
                } else {
                    we.service_account.as_str()
                };
                o.metadata.namespace() == p.namespace
                    && o.metadata.name == p.workload_name
                    && sa == p.service_account
                    && selector
                        .is_none_or(|sel| sel.iter().all(|(k, v)| we.labels.get(k) == Some(v)))
            }
            _ => false,
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
