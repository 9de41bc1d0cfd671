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
use crate::registry::{NodeSvid, Registry};

/// Lifetimes the CA hands out.
#[derive(Debug, Clone)]
pub struct TtlPolicy {
    /// Node SVIDs from attestation and their renewals.
    pub node: Duration,
    /// Upper bound for any SVID (node SVIDs included), whatever an entry or request asks.
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
    Svid(PeerSvid),
}

/// The client SVID of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSvid {
    pub id: SpiffeId,
    /// Hex serial, as `X509Svid::serial` gives it.
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

/// Where a request came from and through which method.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub method: &'static str,
    pub caller: Caller,
    pub peer: Option<SocketAddr>,
    /// What the node agent reported as its version, if anything.
    pub agent_version: String,
}

/// Why an authenticated caller may have what it asked for: the one answer to "who may hold
/// which identity". Workload SVIDs are only ever issued to the node agent of the node their
/// entry names (Istio's rule: workload certificates come through the node's agent); a workload
/// SVID cannot renew itself or obtain anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// A node renews its own SVID.
    NodeRenewal { node: String },
    /// A node obtains an identity that an entry assigns to it.
    Workload { node: String, entry_ttl: Duration },
}

/// A freshly issued SVID and the bundle that verifies it.
#[derive(Debug)]
pub struct Issued {
    pub svid: X509Svid,
    pub bundle: Arc<TrustBundle>,
}

/// A freshly signed JWT-SVID. `Debug` leaves out the token: it is a bearer credential.
pub struct IssuedJwt {
    pub spiffe_id: SpiffeId,
    pub token: String,
    pub expires_at: SystemTime,
}

impl std::fmt::Debug for IssuedJwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedJwt")
            .field("spiffe_id", &self.spiffe_id.to_string())
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What an issuance contributes to its audit line.
pub trait Outcome {
    fn describe(&self, event: &mut AuditEvent);
}

fn node_svid(issued: &Issued, ctx: &RequestContext) -> NodeSvid {
    NodeSvid {
        serial: issued.svid.serial().to_string(),
        expires_at: issued.svid.not_after(),
        agent_version: ctx.agent_version.clone(),
    }
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
    /// Join-token attestation: token, then CSR, then the CSR must name the token's node. The
    /// token is spent in one transaction with the node's record, only after signing succeeded.
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
            let issued = self.sign(&csr, self.cap(self.ttl.node, Duration::ZERO), now)?;
            self.registry
                .spend_token(token, &node, &node_svid(&issued, ctx), now)?;
            Ok(issued)
        })();
        self.finish(ctx, caller, started, now, result)
    }

    /// A node renews its own SVID (`RenewSvid`).
    pub fn renew(
        &self,
        ctx: &RequestContext,
        csr: &[u8],
        requested: Duration,
    ) -> Result<Issued, CaError> {
        self.authenticated(ctx, |peer, now| {
            let csr = Csr::parse_for(csr, self.authority.trust_domain())?;
            match self.authorize(ctx, peer, csr.spiffe_id(), now)? {
                Grant::NodeRenewal { node } => {
                    self.renew_node(ctx, peer, &node, &csr, requested, now)
                }
                Grant::Workload { .. } => Err(CaError::PermissionDenied(format!(
                    "RenewSvid renews the caller's own node SVID, not {}; use MintX509Svid",
                    csr.spiffe_id()
                ))),
            }
        })
    }

    /// A node asks for a workload SVID that an entry assigns to it (`MintX509Svid`).
    pub fn mint_workload(
        &self,
        ctx: &RequestContext,
        csr: &[u8],
        requested: Duration,
    ) -> Result<Issued, CaError> {
        self.authenticated(ctx, |peer, now| {
            let csr = Csr::parse_for(csr, self.authority.trust_domain())?;
            match self.authorize(ctx, peer, csr.spiffe_id(), now)? {
                Grant::Workload { entry_ttl, .. } => {
                    self.sign(&csr, self.cap(entry_ttl, requested), now)
                }
                Grant::NodeRenewal { .. } => Err(CaError::PermissionDenied(
                    "MintX509Svid issues workload identities; a node renews with RenewSvid".into(),
                )),
            }
        })
    }

    /// Istio's CreateCertificate: a node renews itself or obtains an identity an entry assigns
    /// to it (how ztunnel asks on behalf of workloads).
    pub fn istio_create(
        &self,
        ctx: &RequestContext,
        csr_pem: &str,
        requested: Duration,
        impersonated: Option<&str>,
    ) -> Result<Issued, CaError> {
        self.authenticated(ctx, |peer, now| {
            let csr = Csr::parse_for(csr_pem.as_bytes(), self.authority.trust_domain())?;
            if let Some(wanted) = impersonated.filter(|s| !s.is_empty())
                && wanted != csr.spiffe_id().to_string()
            {
                return Err(CaError::InvalidArgument(format!(
                    "ImpersonatedIdentity {wanted} does not match the CSR's {}",
                    csr.spiffe_id()
                )));
            }
            match self.authorize(ctx, peer, csr.spiffe_id(), now)? {
                Grant::NodeRenewal { node } => {
                    self.renew_node(ctx, peer, &node, &csr, requested, now)
                }
                Grant::Workload { entry_ttl, .. } => {
                    self.sign(&csr, self.cap(entry_ttl, requested), now)
                }
            }
        })
    }

    /// A JWT-SVID for the calling node's own ID or an ID an entry assigns to it.
    pub fn mint_jwt(
        &self,
        ctx: &RequestContext,
        spiffe_id: &str,
        audience: &[String],
        requested: Duration,
    ) -> Result<IssuedJwt, CaError> {
        self.authenticated(ctx, |peer, now| {
            let id = pki::identity::parse_spiffe_id(spiffe_id)
                .map_err(|e| CaError::InvalidArgument(e.to_string()))?;
            if audience.is_empty() || audience.iter().any(|a| a.is_empty()) {
                return Err(CaError::InvalidArgument(
                    "a JWT-SVID needs at least one non-empty audience".into(),
                ));
            }
            self.authorize(ctx, peer, &id, now)?;
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

    /// The node a caller's SVID names, if it is an attested, non-evicted node presenting an
    /// SVID citadel still accepts; notes the contact.
    pub fn authorize_node_caller(
        &self,
        ctx: &RequestContext,
        peer: &PeerSvid,
        now: SystemTime,
    ) -> Result<String, CaError> {
        let node = node_name(&peer.id, self.authority.trust_domain()).ok_or_else(|| {
            CaError::PermissionDenied(format!(
                "{} is a workload identity; only node agents may call {} (workload SVIDs are \
                 issued through the agent of the node their entry names)",
                peer.id, ctx.method
            ))
        })?;
        self.registry
            .authorize_node(node, &peer.serial, peer.not_before, now)?;
        self.registry.seen(node, &ctx.agent_version, now);
        Ok(node.to_string())
    }

    /// Whether the caller may receive xDS as the proxy of `namespace`/`service_account`: only
    /// with an unexpired SVID of exactly that identity, as istiod checks a proxy's metadata
    /// against its certificate.
    pub fn authorize_proxy(
        &self,
        ctx: &RequestContext,
        namespace: &str,
        service_account: &str,
    ) -> Result<(), CaError> {
        let expected = format!(
            "spiffe://{}/ns/{namespace}/sa/{service_account}",
            self.authority.trust_domain()
        );
        let result = match &ctx.caller {
            Caller::Anonymous => Err(CaError::Unauthenticated(
                "xDS needs the proxy's SVID (mTLS)".into(),
            )),
            Caller::Svid(peer) if peer.not_after <= self.clock.now() => {
                Err(CaError::Unauthenticated("client SVID has expired".into()))
            }
            Caller::Svid(peer) if peer.id.to_string() != expected => {
                Err(CaError::PermissionDenied(format!(
                    "{} may not receive the configuration of {expected} (node metadata                      NAMESPACE/SERVICE_ACCOUNT must match the proxy's SVID)",
                    peer.id
                )))
            }
            Caller::Svid(_) => Ok(()),
        };
        if let Err(e) = &result {
            self.metrics.refused(ctx.method, &e.reason());
        }
        result
    }

    /// The single authorization decision for every issuance to an authenticated caller.
    pub fn authorize(
        &self,
        ctx: &RequestContext,
        peer: &PeerSvid,
        requested: &SpiffeId,
        now: SystemTime,
    ) -> Result<Grant, CaError> {
        let node = self.authorize_node_caller(ctx, peer, now)?;
        if requested == &peer.id {
            return Ok(Grant::NodeRenewal { node });
        }
        if requested.path().starts_with("/citadel/") {
            return Err(CaError::PermissionDenied(format!(
                "{requested} is reserved for citadel and its nodes"
            )));
        }
        let entry = self.registry.entry_for(&node, requested)?.ok_or_else(|| {
            CaError::PermissionDenied(format!("no entry assigns {requested} to node {node}"))
        })?;
        Ok(Grant::Workload {
            node,
            entry_ttl: entry.ttl,
        })
    }

    fn renew_node(
        &self,
        ctx: &RequestContext,
        peer: &PeerSvid,
        node: &str,
        csr: &Csr,
        requested: Duration,
        now: SystemTime,
    ) -> Result<Issued, CaError> {
        let issued = self.sign(csr, self.cap(self.ttl.node, requested), now)?;
        self.registry.record_renewal(
            node,
            &peer.serial,
            peer.not_before,
            &node_svid(&issued, ctx),
            now,
        )?;
        Ok(issued)
    }

    fn authenticated<T: Outcome>(
        &self,
        ctx: &RequestContext,
        decide: impl FnOnce(&PeerSvid, SystemTime) -> Result<T, CaError>,
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
            Caller::Svid(peer) if peer.not_after <= now => (
                peer.id.to_string(),
                Err(CaError::Unauthenticated("client SVID has expired".into())),
            ),
            Caller::Svid(peer) => (peer.id.to_string(), decide(peer, now)),
        };
        self.finish(ctx, caller, started, now, result)
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

    /// Authorizes a node's watch stream; refusals are audited like any other.
    pub fn watch_node(&self, ctx: &RequestContext) -> Result<String, CaError> {
        let now = self.clock.now();
        let (caller, result) = match &ctx.caller {
            Caller::Anonymous => (
                "anonymous".to_string(),
                Err(CaError::Unauthenticated(
                    "this call needs a node SVID (mTLS)".into(),
                )),
            ),
            Caller::Svid(peer) if peer.not_after <= now => (
                peer.id.to_string(),
                Err(CaError::Unauthenticated("client SVID has expired".into())),
            ),
            Caller::Svid(peer) => (
                peer.id.to_string(),
                self.authorize_node_caller(ctx, peer, now),
            ),
        };
        if let Err(e) = &result {
            self.refused(ctx, caller, now, e);
        }
        result
    }

    fn finish<T: Outcome>(
        &self,
        ctx: &RequestContext,
        caller: String,
        started: Instant,
        now: SystemTime,
        result: Result<T, CaError>,
    ) -> Result<T, CaError> {
        match &result {
            Ok(issued) => {
                self.metrics
                    .sign_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.issued(ctx.method);
                let mut event = AuditEvent {
                    method: ctx.method,
                    caller,
                    peer: ctx.peer.map(|p| p.to_string()),
                    outcome: "issued",
                    ..Default::default()
                };
                issued.describe(&mut event);
                self.audit.record(now, &event);
            }
            Err(e) => self.refused(ctx, caller, now, e),
        }
        result
    }

    fn refused(&self, ctx: &RequestContext, caller: String, now: SystemTime, e: &CaError) {
        self.metrics.refused(ctx.method, &e.reason());
        if let CaError::Internal(detail) = e {
            tracing::error!(method = ctx.method, %detail, "internal error while signing");
        }
        let event = AuditEvent {
            method: ctx.method,
            caller,
            peer: ctx.peer.map(|p| p.to_string()),
            outcome: "refused",
            reason: Some(e.reason()),
            detail: Some(e.to_string()),
            ..Default::default()
        };
        self.audit.record(now, &event);
    }
}
