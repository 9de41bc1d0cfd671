//! The CA's decisions, independent of gRPC: who may hold which identity, for how long, and the
//! audit line and metrics for every outcome.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pki::identity::{SpiffeId, node_id, node_name};
use pki::{Clock, Csr, RandomSource, SvidParams, TrustBundle, X509Svid};

use crate::audit::{AuditEvent, AuditLog};
use crate::authority::Authority;
use crate::error::CaError;
use crate::metrics::Metrics;
use crate::registry::Registry;

/// Lifetimes the CA hands out.
#[derive(Debug, Clone)]
pub struct TtlPolicy {
    /// Node SVIDs from attestation and their renewals.
    pub node: Duration,
    /// Upper bound for any SVID, whatever an entry or request asks.
    pub max: Duration,
}

impl Default for TtlPolicy {
    fn default() -> Self {
        Self {
            node: Duration::from_secs(3600),
            max: Duration::from_secs(24 * 3600),
        }
    }
}

/// Who is calling, as the transport established it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Anonymous,
    /// Verified at the TLS handshake against the bundle.
    Svid {
        id: SpiffeId,
        not_after: SystemTime,
    },
}

/// Where a request came from and through which method.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub method: &'static str,
    pub caller: Caller,
    pub peer: Option<SocketAddr>,
}

/// A freshly issued SVID and the bundle that verifies it.
#[derive(Debug)]
pub struct Issued {
    pub svid: X509Svid,
    pub bundle: Arc<TrustBundle>,
}

/// A freshly signed JWT-SVID.
#[derive(Debug)]
pub struct IssuedJwt {
    pub spiffe_id: SpiffeId,
    pub token: String,
    pub expires_at: SystemTime,
}

/// What an issuance contributes to its audit line.
pub trait Outcome {
    fn describe(&self, event: &mut AuditEvent);
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

impl Outcome for Issued {
    fn describe(&self, event: &mut AuditEvent) {
        event.identity = Some(self.svid.spiffe_id().to_string());
        event.serial = Some(self.svid.serial().to_string());
        event.expires_at = Some(unix_secs(self.svid.not_after()));
    }
}

impl Outcome for IssuedJwt {
    fn describe(&self, event: &mut AuditEvent) {
        event.identity = Some(self.spiffe_id.to_string());
        event.expires_at = Some(unix_secs(self.expires_at));
    }
}

/// Default JWT-SVID lifetime, as SPIRE's.
pub const JWT_TTL: Duration = Duration::from_secs(300);

/// Everything the CA needs to decide and sign.
#[derive(Debug, Clone)]
pub struct CaService {
    pub authority: Arc<Authority>,
    pub registry: Arc<Registry>,
    pub audit: Arc<AuditLog>,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub rng: Arc<dyn RandomSource>,
    pub ttl: TtlPolicy,
}

impl CaService {
    /// Join-token attestation: token, then CSR, then the CSR must name the token's node.
    pub fn attest_node(
        &self,
        ctx: &RequestContext,
        csr: &[u8],
        token: &str,
    ) -> Result<Issued, CaError> {
        let started = Instant::now();
        let now = self.clock.now();
        let mut caller = "anonymous".to_string();
        let result = (|| {
            let node = self.registry.check_token(token, now)?;
            caller = format!("token:{node}");
            let csr = Csr::parse_for(csr, self.authority.trust_domain())?;
            let expected = node_id(self.authority.trust_domain(), &node)
                .map_err(|e| CaError::Internal(e.to_string()))?;
            if csr.spiffe_id() != &expected {
                return Err(CaError::PermissionDenied(format!(
                    "token is for {expected}, CSR asks for {}",
                    csr.spiffe_id()
                )));
            }
            self.registry.consume_token(token, now)?;
            self.sign(&csr, self.ttl.node, now)
        })();
        self.finish(ctx, caller, started, now, result)
    }

    /// A caller renews its own SVID: node identities always may, workload identities while an
    /// entry still assigns them.
    pub fn renew(
        &self,
        ctx: &RequestContext,
        csr: &[u8],
        requested: Duration,
    ) -> Result<Issued, CaError> {
        self.authenticated(ctx, |caller, now| {
            let csr = Csr::parse_for(csr, self.authority.trust_domain())?;
            self.authorize_own(caller, csr.spiffe_id())?;
            let ttl = self.node_or_entry_ttl(caller, requested);
            self.sign(&csr, ttl, now)
        })
    }

    /// A node asks for a workload SVID that an entry assigns to it.
    pub fn mint_workload(
        &self,
        ctx: &RequestContext,
        csr: &[u8],
        requested: Duration,
    ) -> Result<Issued, CaError> {
        self.authenticated(ctx, |caller, now| {
            let node = node_name(caller, self.authority.trust_domain()).ok_or_else(|| {
                CaError::PermissionDenied(format!("{caller} is not a node identity"))
            })?;
            let csr = Csr::parse_for(csr, self.authority.trust_domain())?;
            let entry = self
                .registry
                .entry_for(node, csr.spiffe_id())
                .ok_or_else(|| {
                    CaError::PermissionDenied(format!(
                        "no entry assigns {} to node {node}",
                        csr.spiffe_id()
                    ))
                })?;
            self.sign(&csr, self.cap(entry.ttl, requested), now)
        })
    }

    /// Istio's CreateCertificate: the caller's own identity (renewal rules), or, for a node, an
    /// identity an entry assigns to it (how ztunnel asks on behalf of workloads).
    pub fn istio_create(
        &self,
        ctx: &RequestContext,
        csr_pem: &str,
        requested: Duration,
        impersonated: Option<&str>,
    ) -> Result<Issued, CaError> {
        self.authenticated(ctx, |caller, now| {
            let csr = Csr::parse_for(csr_pem.as_bytes(), self.authority.trust_domain())?;
            if let Some(wanted) = impersonated.filter(|s| !s.is_empty())
                && wanted != csr.spiffe_id().to_string()
            {
                return Err(CaError::InvalidArgument(format!(
                    "ImpersonatedIdentity {wanted} does not match the CSR's {}",
                    csr.spiffe_id()
                )));
            }
            if csr.spiffe_id() == caller {
                self.authorize_own(caller, csr.spiffe_id())?;
                return self.sign(&csr, self.node_or_entry_ttl(caller, requested), now);
            }
            let entry = node_name(caller, self.authority.trust_domain())
                .and_then(|node| self.registry.entry_for(node, csr.spiffe_id()))
                .ok_or_else(|| {
                    CaError::PermissionDenied(format!(
                        "{caller} may not hold or obtain {}",
                        csr.spiffe_id()
                    ))
                })?;
            self.sign(&csr, self.cap(entry.ttl, requested), now)
        })
    }

    /// A JWT-SVID for the caller's own ID or, for a node, an ID an entry assigns to it.
    pub fn mint_jwt(
        &self,
        ctx: &RequestContext,
        spiffe_id: &str,
        audience: &[String],
        requested: Duration,
    ) -> Result<IssuedJwt, CaError> {
        self.authenticated(ctx, |caller, now| {
            let id = pki::identity::parse_spiffe_id(spiffe_id)
                .map_err(|e| CaError::InvalidArgument(e.to_string()))?;
            if audience.is_empty() || audience.iter().any(|a| a.is_empty()) {
                return Err(CaError::InvalidArgument(
                    "a JWT-SVID needs at least one non-empty audience".into(),
                ));
            }
            if &id == caller {
                self.authorize_own(caller, &id)?;
            } else {
                let node = node_name(caller, self.authority.trust_domain()).ok_or_else(|| {
                    CaError::PermissionDenied(format!("{caller} may not obtain {id}"))
                })?;
                self.registry.entry_for(node, &id).ok_or_else(|| {
                    CaError::PermissionDenied(format!("no entry assigns {id} to node {node}"))
                })?;
            }
            let ttl = self.cap(JWT_TTL, requested);
            let (token, expires_at) = self
                .authority
                .jwt()
                .mint(&id, audience, now, ttl)
                .map_err(|e| CaError::Internal(e.to_string()))?;
            Ok(IssuedJwt {
                spiffe_id: id,
                token,
                expires_at,
            })
        })
    }

    fn authenticated<T: Outcome>(
        &self,
        ctx: &RequestContext,
        decide: impl FnOnce(&SpiffeId, SystemTime) -> Result<T, CaError>,
    ) -> Result<T, CaError> {
        let started = Instant::now();
        let now = self.clock.now();
        let (caller, result) = match &ctx.caller {
            Caller::Anonymous => (
                "anonymous".to_string(),
                Err(CaError::Unauthenticated(
                    "this call needs a client SVID (mTLS)".into(),
                )),
            ),
            Caller::Svid { id, not_after } if *not_after <= now => (
                id.to_string(),
                Err(CaError::Unauthenticated("client SVID has expired".into())),
            ),
            Caller::Svid { id, .. } => (id.to_string(), decide(id, now)),
        };
        self.finish(ctx, caller, started, now, result)
    }

    fn authorize_own(&self, caller: &SpiffeId, requested: &SpiffeId) -> Result<(), CaError> {
        if caller != requested {
            return Err(CaError::PermissionDenied(format!(
                "{caller} may only renew its own identity, not {requested}"
            )));
        }
        let is_node = node_name(caller, self.authority.trust_domain()).is_some();
        if !is_node && !self.registry.id_registered(caller) {
            return Err(CaError::PermissionDenied(format!(
                "no entry assigns {caller} any more"
            )));
        }
        Ok(())
    }

    fn node_or_entry_ttl(&self, caller: &SpiffeId, requested: Duration) -> Duration {
        let base = match node_name(caller, self.authority.trust_domain()) {
            Some(_) => self.ttl.node,
            None => self
                .registry
                .entries(None)
                .0
                .iter()
                .filter(|e| &e.spiffe_id == caller)
                .map(|e| e.ttl)
                .max()
                .unwrap_or(self.ttl.node),
        };
        self.cap(base, requested)
    }

    fn cap(&self, base: Duration, requested: Duration) -> Duration {
        let ttl = if requested.is_zero() {
            base
        } else {
            requested.min(base)
        };
        ttl.min(self.ttl.max)
    }

    fn sign(&self, csr: &Csr, ttl: Duration, now: SystemTime) -> Result<Issued, CaError> {
        let svid = self
            .authority
            .signing()
            .issue_svid(csr, &SvidParams::ttl(ttl), now, self.rng.as_ref())
            .map_err(|e| CaError::Internal(format!("signing failed: {e}")))?;
        Ok(Issued {
            svid,
            bundle: self.authority.bundle(),
        })
    }

    fn finish<T: Outcome>(
        &self,
        ctx: &RequestContext,
        caller: String,
        started: Instant,
        now: SystemTime,
        result: Result<T, CaError>,
    ) -> Result<T, CaError> {
        let mut event = AuditEvent {
            method: ctx.method,
            caller,
            peer: ctx.peer.map(|p| p.to_string()),
            ..Default::default()
        };
        match &result {
            Ok(issued) => {
                self.metrics
                    .sign_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.issued(ctx.method);
                event.outcome = "issued";
                issued.describe(&mut event);
            }
            Err(e) => {
                self.metrics.refused(ctx.method, &e.reason());
                event.outcome = "refused";
                event.reason = Some(e.reason());
                event.detail = Some(e.to_string());
                if let CaError::Internal(detail) = e {
                    tracing::error!(method = ctx.method, %detail, "internal error while signing");
                }
            }
        }
        self.audit.record(now, &event);
        result
    }
}
