//! The SPIFFE Workload API on the agent socket: X.509-SVIDs and bundles as full-state streams,
//! JWT-SVIDs minted by citadel (cached to half-life), JWT bundles and JWT validation.
use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use citadel_api::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use citadel_api::workload::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svid, X509svidRequest, X509svidResponse,
};
use futures::Stream;
use pki::TrustBundle;
use pki::identity::{SpiffeId, parse_spiffe_id};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::attest::{Attestor, Workload};
use crate::jwt::validate_jwt_svid;
use crate::jwt_cache::JwtCache;
use crate::manager::Manager;
use crate::metrics::{Metrics, StreamGuard};
use crate::peer::{attest_caller, describe, still_same};
use crate::state::{AgentState, SlotWatch, WorkloadView};

/// The header every Workload API call must carry (SPIFFE Workload Endpoint standard).
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The Workload API service.
#[derive(Debug, Clone)]
pub struct WorkloadApiServer {
    pub manager: Arc<Manager>,
    pub attestor: Attestor,
    pub metrics: Arc<Metrics>,
    pub jwt_cache: Arc<Mutex<JwtCache>>,
    /// Flips to true when the agent stops, ending every stream so shutdown does not hang.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

fn check_header<T>(req: &Request<T>) -> Result<(), Status> {
    match req
        .metadata()
        .get(SECURITY_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        Some("true") => Ok(()),
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

fn der_concat(certs: &[rustls_pki_types::CertificateDer<'static>]) -> Vec<u8> {
    certs.iter().flat_map(|c| c.iter().copied()).collect()
}

fn no_identity(w: &Workload) -> Status {
    Status::permission_denied(format!("no identity issued ({})", describe(w)))
}

fn jwt_bundle_document(bundle: &TrustBundle) -> Vec<u8> {
    let mut only_jwt = TrustBundle::new(bundle.trust_domain().clone());
    for a in bundle.jwt_authorities() {
        only_jwt.upsert_jwt_authority(a.clone());
    }
    only_jwt.set_sequence(bundle.sequence());
    only_jwt.to_jwks().unwrap_or_default().into_bytes()
}

fn x509_response(
    state: &AgentState,
    workload: &Workload,
) -> Result<Option<X509svidResponse>, Status> {
    let svids = match state.view(&workload.selectors) {
        WorkloadView::Pending => return Ok(None),
        WorkloadView::NoIdentity => return Err(no_identity(workload)),
        WorkloadView::Ready(s) => s,
    };
    let bundle = der_concat(state.bundle.x509_authorities());
    let svids = svids
        .iter()
        .map(|w| X509svid {
            spiffe_id: w.id().to_string(),
            x509_svid: w.chain_der(),
            x509_svid_key: w.key_der(),
            bundle: bundle.clone(),
            hint: String::new(),
        })
        .collect();
    Ok(Some(X509svidResponse {
        svids,
        crl: vec![],
        federated_bundles: HashMap::new(),
    }))
}

impl WorkloadApiServer {
    pub fn new(
        manager: Arc<Manager>,
        attestor: Attestor,
        metrics: Arc<Metrics>,
        stopping: tokio::sync::watch::Receiver<bool>,
        jwt_cache_size: usize,
    ) -> Self {
        Self {
            manager,
            attestor,
            metrics,
            jwt_cache: Arc::new(Mutex::new(JwtCache::new(jwt_cache_size))),
            stopping,
        }
    }

    /// Runs a full-state stream: `render` turns each snapshot into a message (or `None` while
    /// pending); a message equal to the last one sent is not re-sent, so a bundle update
    /// that changes only its sequence or JWT keys wakes no X.509 stream. With `svids`, the stream also wakes when
    /// one of the workload's SVIDs rotates.
    fn full_state_stream<M: Clone + PartialEq + Send + 'static>(
        &self,
        workload: Workload,
        svids: bool,
        render: impl Fn(&AgentState, &Workload) -> Result<Option<M>, Status> + Send + 'static,
    ) -> BoxStream<M> {
        let (tx, rx) = mpsc::channel(4);
        let mut state_rx = self.manager.subscribe();
        let guard = StreamGuard::new(&self.metrics.workload_api_streams);
        let mut stopping = self.stopping.clone();
        let attestor = self.attestor.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let mut last: Option<M> = None;
            let mut slots = SlotWatch::default();
            loop {
                if let Err(status) = still_same(&attestor, &workload) {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                let state = state_rx.borrow_and_update().clone();
                if svids {
                    slots.watch(&state, state.entitled(&workload.selectors).iter());
                }
                match render(&state, &workload) {
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    Ok(Some(msg)) if last.as_ref() != Some(&msg) => {
                        if tx.send(Ok(msg.clone())).await.is_err() {
                            return;
                        }
                        last = Some(msg);
                    }
                    Ok(_) => {}
                }
                tokio::select! {
                    changed = state_rx.changed() => if changed.is_err() { return },
                    () = slots.changed() => {},
                    _ = tx.closed() => return,
                    _ = stopping.wait_for(|s| *s) => return,
                }
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }

    /// A full-state stream of the trust bundle, keyed by trust-domain ID and encoded by
    /// `encode`; a workload with no identity is refused, as for its SVIDs.
    fn bundle_stream<M: Clone + PartialEq + Send + 'static>(
        &self,
        workload: Workload,
        encode: fn(&TrustBundle) -> Vec<u8>,
        wrap: fn(HashMap<String, Vec<u8>>) -> M,
    ) -> BoxStream<M> {
        self.full_state_stream(workload, false, move |state, w| {
            if state.entries.is_some() && state.first_entitled(&w.selectors).is_none() {
                return Err(no_identity(w));
            }
            let b = &state.bundle;
            let bundles = HashMap::from([(b.trust_domain().id_string(), encode(b))]);
            Ok(Some(wrap(bundles)))
        })
    }

    async fn jwt_for(&self, id: &SpiffeId, audience: &[String]) -> Result<String, Status> {
        let now = self.manager.clock().now();
        let cached = self
            .jwt_cache
            .lock()
            .expect("jwt cache poisoned")
            .get(id, audience, now);
        if let Some(token) = cached {
            return Ok(token);
        }
        let (token, exp) = self
            .manager
            .ca()
            .mint_jwt(id, audience)
            .await
            .map_err(|s| Status::unavailable(format!("citadel: {}", s.message())))?;
        self.jwt_cache.lock().expect("jwt cache poisoned").insert(
            id,
            audience,
            token.clone(),
            now,
            exp,
        );
        Ok(token)
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApiServer {
    type FetchX509SVIDStream = BoxStream<X509svidResponse>;
    type FetchX509BundlesStream = BoxStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = BoxStream<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        check_header(&req)?;
        let workload = attest_caller(&self.attestor, &req)?;
        Ok(Response::new(self.full_state_stream(
            workload,
            true,
            x509_response,
        )))
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        check_header(&req)?;
        let workload = attest_caller(&self.attestor, &req)?;
        let encode = |b: &TrustBundle| der_concat(b.x509_authorities());
        Ok(Response::new(self.bundle_stream(
            workload,
            encode,
            |bundles| X509BundlesResponse {
                crl: vec![],
                bundles,
            },
        )))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        check_header(&req)?;
        let workload = attest_caller(&self.attestor, &req)?;
        let body = req.into_inner();
        if body.audience.is_empty() || body.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let state = self.manager.snapshot();
        let mut ids = state.entitled(&workload.selectors);
        if ids.is_empty() {
            return Err(no_identity(&workload));
        }
        if !body.spiffe_id.is_empty() {
            let wanted = parse_spiffe_id(&body.spiffe_id)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            if !ids.contains(&wanted) {
                return Err(Status::permission_denied(format!(
                    "{wanted} is not an identity of this workload"
                )));
            }
            ids = vec![wanted];
        }
        let mut svids = Vec::new();
        for id in ids {
            let token = self.jwt_for(&id, &body.audience).await?;
            svids.push(Jwtsvid {
                spiffe_id: id.to_string(),
                svid: token,
                hint: String::new(),
            });
        }
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        req: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_header(&req)?;
        let workload = attest_caller(&self.attestor, &req)?;
        Ok(Response::new(self.bundle_stream(
            workload,
            jwt_bundle_document,
            |bundles| JwtBundlesResponse { bundles },
        )))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        check_header(&req)?;
        let body = req.into_inner();
        if body.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if body.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let state = self.manager.snapshot();
        let (id, claims) = validate_jwt_svid(
            &body.svid,
            &body.audience,
            &state.bundle,
            self.manager.clock().now(),
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: id.to_string(),
            claims: Some(to_struct(claims)),
        }))
    }
}

fn to_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(to_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

fn to_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map
            .into_iter()
            .map(|(k, v)| (k, to_value(v)))
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect(),
    }
}
