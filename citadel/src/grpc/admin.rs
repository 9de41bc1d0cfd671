//! `citadel.admin.v1.Admin` on the 0600 Unix socket: tokens, entries and the bundle.
use std::sync::Arc;

use citadel_api::admin::admin_server::Admin;
use citadel_api::admin::{
    BundleAuthorityRequest, CreateEntryRequest, CreateJoinTokenRequest, CreateJoinTokenResponse,
    DeleteEntryRequest, DeleteEntryResponse, ListEntriesRequest,
};
use citadel_api::ca::{self, EntryList, TrustBundleRequest};
use tonic::{Request, Response, Status};

use super::{bundle_message, entry_message, ttl_from};
use crate::audit::AuditEvent;
use crate::authority::AuthorityError;
use crate::error::CaError;
use crate::service::CaService;

/// The admin gRPC service.
#[derive(Debug, Clone)]
pub struct AdminApi {
    pub service: CaService,
}

impl AdminApi {
    fn audit(&self, method: &'static str, identity: Option<String>, detail: String) {
        let event = AuditEvent {
            outcome: "admin",
            method,
            caller: "admin".into(),
            identity,
            detail: Some(detail),
            ..Default::default()
        };
        self.service.audit.record(self.service.clock.now(), &event);
    }
}

fn bundle_error(e: AuthorityError) -> Status {
    match e {
        AuthorityError::Invalid(msg) => Status::invalid_argument(msg),
        other => Status::from(CaError::Internal(other.to_string())),
    }
}

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn create_join_token(
        &self,
        req: Request<CreateJoinTokenRequest>,
    ) -> Result<Response<CreateJoinTokenResponse>, Status> {
        let body = req.into_inner();
        let ttl = ttl_from(body.ttl_seconds)?;
        let now = self.service.clock.now();
        let (token, expires) = self
            .service
            .registry
            .create_token(&body.node, ttl, now, self.service.rng.as_ref())
            .map_err(CaError::from)?;
        self.audit(
            "CreateJoinToken",
            Some(body.node.clone()),
            format!("ttl={}s", ttl.as_secs()),
        );
        let expires_at_unix = expires
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        Ok(Response::new(CreateJoinTokenResponse {
            token,
            expires_at_unix,
        }))
    }

    async fn create_entry(
        &self,
        req: Request<CreateEntryRequest>,
    ) -> Result<Response<ca::Entry>, Status> {
        let body = req.into_inner();
        let ttl = ttl_from(body.ttl_seconds)?;
        let s = &self.service;
        let entry = s
            .registry
            .create_entry(
                &body.spiffe_id,
                &body.node,
                &body.selectors,
                ttl,
                s.clock.now(),
                s.rng.as_ref(),
            )
            .map_err(CaError::from)?;
        self.audit(
            "CreateEntry",
            Some(entry.spiffe_id.to_string()),
            format!("id={} node={}", entry.id, entry.node),
        );
        Ok(Response::new(entry_message(&entry)))
    }

    async fn list_entries(
        &self,
        req: Request<ListEntriesRequest>,
    ) -> Result<Response<EntryList>, Status> {
        let node = req.into_inner().node;
        let (entries, revision) = self
            .service
            .registry
            .entries(Some(node.as_str()).filter(|n| !n.is_empty()));
        Ok(Response::new(EntryList {
            entries: entries.iter().map(entry_message).collect(),
            revision,
        }))
    }

    async fn delete_entry(
        &self,
        req: Request<DeleteEntryRequest>,
    ) -> Result<Response<DeleteEntryResponse>, Status> {
        let id = req.into_inner().id;
        let removed = self
            .service
            .registry
            .delete_entry(&id)
            .map_err(CaError::from)?;
        self.audit(
            "DeleteEntry",
            Some(removed.spiffe_id.to_string()),
            format!("id={id}"),
        );
        Ok(Response::new(DeleteEntryResponse {}))
    }

    async fn get_trust_bundle(
        &self,
        _req: Request<TrustBundleRequest>,
    ) -> Result<Response<ca::TrustBundle>, Status> {
        Ok(Response::new(bundle_message(
            &self.service.authority.bundle(),
        )))
    }

    async fn add_bundle_authority(
        &self,
        req: Request<BundleAuthorityRequest>,
    ) -> Result<Response<ca::TrustBundle>, Status> {
        let bundle: Arc<pki::TrustBundle> = self
            .service
            .authority
            .add_bundle_authority(&req.into_inner().pem)
            .map_err(bundle_error)?;
        self.audit(
            "AddBundleAuthority",
            None,
            format!("sequence={}", bundle.sequence()),
        );
        Ok(Response::new(bundle_message(&bundle)))
    }

    async fn remove_bundle_authority(
        &self,
        req: Request<BundleAuthorityRequest>,
    ) -> Result<Response<ca::TrustBundle>, Status> {
        let bundle = self
            .service
            .authority
            .remove_bundle_authority(&req.into_inner().pem)
            .map_err(bundle_error)?;
        self.audit(
            "RemoveBundleAuthority",
            None,
            format!("sequence={}", bundle.sequence()),
        );
        Ok(Response::new(bundle_message(&bundle)))
    }
}
