//! Builds the Envoy `Secret`s a workload may see: `default` (its first SVID), each SVID by
//! SPIFFE ID, `ROOTCA` (own bundle), `ALL` (every bundle) and the trust-domain ID — as a
//! SPIFFE certificate validator config, or plain `trusted_ca` when the Envoy opts out.
//!
//! A `SecretView` belongs to one stream: it remembers the workload's first identity and, for
//! each name the stream asked for, whether the workload may have it (recomputed only when the
//! entry list changes), plus the secrets it already built (rebuilt only when their version
//! changes). It never copies the whole entitlement, so a stream costs memory in proportion to
//! the names it watches, and a rotation elsewhere costs it a few map lookups.
use std::collections::HashMap;
use std::sync::Arc;

use citadel_api::Selector;
use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    Secret, TlsCertificate, secret,
};
use envoy_types::util::pack_any;
use pki::TrustBundle;
use pki::identity::SpiffeId;
use sds::names::{BundlePem, validation_context};
use sds::{NamedResource, Resources, VersionSource};

use crate::state::{AgentState, Entry, SlotWatch, WorkloadSvid};

pub use sds::names::{ALL, DEFAULT, ROOTCA, SPIFFE_VALIDATOR};

fn inline(bytes: impl Into<Vec<u8>>) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineBytes(bytes.into())),
        ..Default::default()
    })
}

fn named(name: &str, version: String, secret: secret::Type) -> NamedResource {
    let body = pack_any(Secret {
        name: name.to_string(),
        r#type: Some(secret),
    });
    NamedResource::new(name, version, &body)
}

fn tls_certificate(w: &WorkloadSvid) -> secret::Type {
    secret::Type::TlsCertificate(TlsCertificate {
        certificate_chain: inline(w.chain_pem()),
        private_key: inline(w.key_pem()),
        ..Default::default()
    })
}

fn validation(bundles: &[&TrustBundle], spiffe: bool) -> secret::Type {
    let pems: Vec<String> = bundles.iter().map(|b| b.to_pem()).collect();
    let names: Vec<String> = bundles
        .iter()
        .map(|b| b.trust_domain().to_string())
        .collect();
    let bundles: Vec<BundlePem<'_>> = names
        .iter()
        .zip(pems)
        .map(|(td, roots_pem)| BundlePem {
            trust_domain: td,
            roots_pem,
        })
        .collect();
    secret::Type::ValidationContext(validation_context(&bundles, spiffe))
}

/// Which names a stream asked for.
#[derive(Debug, Clone, Copy)]
pub enum Wanted<'a> {
    /// Wildcard (or an empty SotW list): every secret of the workload.
    All,
    Names(&'a std::collections::BTreeSet<std::sync::Arc<str>>),
}

/// The secrets visible to a workload, or why it gets none.
#[derive(Debug)]
pub enum Visible {
    /// Entitled (or entries not yet known), but its SVIDs are not minted yet: answer later.
    Pending,
    /// No registration entry matches: the workload gets nothing.
    NoIdentity,
    /// What exists now, and the requested names this workload can never get.
    Ready {
        resources: Resources,
        unknown: Vec<String>,
    },
}

/// One stream's view of the secrets of one workload.
#[derive(Debug)]
pub struct SecretView {
    selectors: Vec<Selector>,
    spiffe_validation: bool,
    entries: Option<Arc<Vec<Arc<Entry>>>>,
    first: Option<SpiffeId>,
    /// Requested name → the identity it names, if the workload is entitled to it.
    names: HashMap<String, Option<SpiffeId>>,
    built: HashMap<String, NamedResource>,
}

impl SecretView {
    pub fn new(selectors: Vec<Selector>) -> Self {
        Self {
            selectors,
            spiffe_validation: true,
            entries: None,
            first: None,
            names: HashMap::new(),
            built: HashMap::new(),
        }
    }

    /// Switches between the SPIFFE validator and `trusted_ca` (Envoy node metadata opt-out).
    pub fn set_spiffe_validation(&mut self, on: bool) {
        if on != self.spiffe_validation {
            self.spiffe_validation = on;
            self.built.clear();
        }
    }

    fn refresh_entitlement(&mut self, state: &AgentState) {
        let same = match (&self.entries, &state.entries) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            self.entries = state.entries.clone();
            self.first = state.first_entitled(&self.selectors).cloned();
            self.names.clear();
        }
    }

    /// The identity `name` stands for, if this workload may have it (cached per entry list).
    fn entitled_name(&mut self, state: &AgentState, name: &str) -> Option<SpiffeId> {
        if let Some(known) = self.names.get(name) {
            return known.clone();
        }
        let id = pki::identity::parse_spiffe_id(name)
            .ok()
            .filter(|id| state.is_entitled(&self.selectors, id));
        self.names.insert(name.to_string(), id.clone());
        id
    }

    fn get_or_build(
        &mut self,
        name: &str,
        version: String,
        build: impl FnOnce() -> secret::Type,
    ) -> NamedResource {
        match self.built.get(name) {
            Some(r) if *r.version == *version => r.clone(),
            _ => {
                let r = named(name, version, build());
                self.built.insert(name.to_string(), r.clone());
                r
            }
        }
    }

    fn add_svid(
        &mut self,
        out: &mut Resources,
        name: &str,
        w: &WorkloadSvid,
        versions: &VersionSource,
    ) {
        let version = versions.of_content(w.serial().as_bytes());
        let resource = if name == w.id().to_string() {
            // Named by its SPIFFE ID, the secret is the same for every stream: built once.
            w.shared
                .get_or_init(|| named(name, version, tls_certificate(w)))
                .clone()
        } else {
            self.get_or_build(name, version, || tls_certificate(w))
        };
        out.insert(name.to_string(), resource);
    }

    fn add_bundle(
        &mut self,
        out: &mut Resources,
        name: &str,
        state: &AgentState,
        versions: &VersionSource,
    ) {
        let bundle = state.bundle.clone();
        let spiffe = self.spiffe_validation;
        let version = versions.of_content(
            format!("{}/{}/{spiffe}", bundle.trust_domain(), bundle.sequence()).as_bytes(),
        );
        out.insert(
            name.to_string(),
            self.get_or_build(name, version, || validation(&[bundle.as_ref()], spiffe)),
        );
    }

    /// The secrets for `state` among `wanted`. Only requested secrets are looked at, and only
    /// changed ones are rebuilt. `slots` is left watching exactly the identities read, so the
    /// stream wakes for their rotations and no others.
    pub fn secrets(
        &mut self,
        state: &AgentState,
        versions: &VersionSource,
        wanted: Wanted<'_>,
        slots: &mut SlotWatch,
    ) -> Visible {
        if state.entries.is_none() {
            return Visible::Pending;
        }
        self.refresh_entitlement(state);
        let Some(first_id) = self.first.clone() else {
            return Visible::NoIdentity;
        };
        let td_id = state.bundle.trust_domain().id_string();
        let is_bundle = |n: &str| n == ROOTCA || n == ALL || n == td_id;
        // Which identities this answer reads (and which names can never be had).
        let mut reads: Vec<(String, SpiffeId)> = Vec::new();
        let mut unknown = Vec::new();
        match wanted {
            Wanted::All => {
                reads.push((DEFAULT.into(), first_id.clone()));
                for id in state.entitled(&self.selectors) {
                    reads.push((id.to_string(), id));
                }
            }
            Wanted::Names(names) => {
                for name in names.iter().filter(|n| !is_bundle(n)) {
                    if &**name == DEFAULT {
                        reads.push((DEFAULT.into(), first_id.clone()));
                    } else if let Some(id) = self.entitled_name(state, name) {
                        reads.push((name.to_string(), id));
                    } else {
                        unknown.push(name.to_string());
                    }
                }
            }
        }
        slots.watch(
            state,
            std::iter::once(&first_id).chain(reads.iter().map(|(_, id)| id)),
        );
        // `default` is always the first entitled identity; until it is minted, wait.
        if state.svid(&first_id).is_none() {
            return Visible::Pending;
        }
        let mut out = Resources::new();
        for (name, id) in &reads {
            // Entitled but not minted yet: it is pushed when it is.
            if let Some(w) = state.svid(id) {
                self.add_svid(&mut out, name, &w, versions);
            }
        }
        let bundles: Vec<&str> = match wanted {
            Wanted::All => vec![ROOTCA, ALL, td_id.as_str()],
            Wanted::Names(names) => names
                .iter()
                .map(|n| &**n)
                .filter(|n| is_bundle(n))
                .collect(),
        };
        for name in bundles {
            self.add_bundle(&mut out, name, state, versions);
        }
        Visible::Ready {
            resources: out,
            unknown,
        }
    }
}
