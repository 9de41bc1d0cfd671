//! `citadel.admin.v1.Admin` on the 0600 Unix socket: tokens, entries and the bundle.
use std::sync::Arc;

use citadel_api::admin::admin_server::Admin;
use std::time::{SystemTime, UNIX_EPOCH};

use citadel_api::admin::{
    BundleAuthorityRequest, CreateEntriesRequest, CreateEntryRequest, CreateJoinTokenRequest,
    CreateJoinTokenResponse, DeleteEntryRequest, DeleteEntryResponse, EvictNodeRequest,
    ListEntriesRequest, ListNodesRequest, Node, NodeList,
};
use citadel_api::ca::{self, EntryList, TrustBundleRequest};
use pki::identity::{node_id, parse_spiffe_id};
use tonic::{Request, Response, Status};

use super::{bundle_message, entry_message, ttl_from};
use crate::audit::AuditEvent;
use crate::authority::AuthorityError;
use crate::error::CaError;
use crate::registry::{EntryFilter, EntrySpec, NodeRecord};
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

fn entry_spec(req: CreateEntryRequest) -> Result<EntrySpec, Status> {
    Ok(EntrySpec {
        spiffe_id: req.spiffe_id,
        node: req.node,
        selectors: req.selectors,
        ttl: ttl_from(req.ttl_seconds)?,
    })
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64
}

fn node_message(
    td: &pki::TrustDomain,
    record: &NodeRecord,
    last_seen: Option<SystemTime>,
    agent_version: &str,
) -> Node {
    Node {
        name: record.name.clone(),
        spiffe_id: node_id(td, &record.name)
            .map(|id| id.to_string())
            .unwrap_or_default(),
        serial: record.serial.clone(),
        expires_at_unix: unix(record.expires_at),
        attested_at_unix: unix(record.attested_at),
        last_seen_unix: last_seen.map(unix).unwrap_or(0),
        agent_version: agent_version.to_string(),
        evicted_at_unix: record.evicted_at.map(unix).unwrap_or(0),
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
        let spec = entry_spec(req.into_inner())?;
        let s = &self.service;
        let entry = s
            .registry
            .create_entry(spec, s.clock.now(), s.rng.as_ref())
            .map_err(CaError::from)?;
        self.audit(
            "CreateEntry",
            Some(entry.spiffe_id.to_string()),
            format!("id={} node={}", entry.id, entry.node),
        );
        Ok(Response::new(entry_message(&entry)))
    }

    async fn create_entries(
        &self,
        req: Request<CreateEntriesRequest>,
    ) -> Result<Response<EntryList>, Status> {
        let specs = req
            .into_inner()
            .entries
            .into_iter()
            .map(entry_spec)
            .collect::<Result<Vec<_>, _>>()?;
        let s = &self.service;
        let entries = s
            .registry
            .create_entries(&specs, s.clock.now(), s.rng.as_ref())
            .map_err(CaError::from)?;
        for entry in &entries {
            self.audit(
                "CreateEntry",
                Some(entry.spiffe_id.to_string()),
                format!("id={} node={}", entry.id, entry.node),
            );
        }
        Ok(Response::new(EntryList {
            entries: entries.iter().map(entry_message).collect(),
            revision: s.registry.revision().map_err(CaError::from)?,
            full: true,
            removed_ids: vec![],
            history_id: s.registry.history_id().to_string(),
        }))
    }

    async fn list_entries(
        &self,
        req: Request<ListEntriesRequest>,
    ) -> Result<Response<EntryList>, Status> {
        let body = req.into_inner();
        let invalid = |field: &str, e: String| Status::invalid_argument(format!("{field}: {e}"));
        let filter = EntryFilter {
            node: Some(body.node).filter(|n| !n.is_empty()),
            spiffe_id: match body.spiffe_id.as_str() {
                "" => None,
                id => Some(parse_spiffe_id(id).map_err(|e| invalid("spiffe_id", e.to_string()))?),
            },
            selectors: body
                .selectors
                .iter()
                .map(|s| s.parse())
                .collect::<Result<_, citadel_api::SelectorError>>()
                .map_err(|e| invalid("selectors", e.to_string()))?,
        };
        let registry = &self.service.registry;
        let revision = registry.revision().map_err(CaError::from)?;
        let entries = registry.entries(&filter).map_err(CaError::from)?;
        Ok(Response::new(EntryList {
            entries: entries.iter().map(entry_message).collect(),
            revision,
            full: true,
            removed_ids: vec![],
            history_id: registry.history_id().to_string(),
        }))
    }

    async fn list_nodes(
        &self,
        _req: Request<ListNodesRequest>,
    ) -> Result<Response<NodeList>, Status> {
        let td = self.service.authority.trust_domain();
        let nodes = self
            .service
            .registry
            .nodes()
            .map_err(CaError::from)?
            .iter()
            .map(|n| node_message(td, &n.record, n.last_seen, &n.agent_version))
            .collect();
        Ok(Response::new(NodeList { nodes }))
    }

    async fn evict_node(&self, req: Request<EvictNodeRequest>) -> Result<Response<Node>, Status> {
        let name = req.into_inner().name;
        let s = &self.service;
        let record = s
            .registry
            .evict(&name, s.clock.now())
            .map_err(CaError::from)?;
        self.audit(
            "EvictNode",
            Some(name.clone()),
            format!("serial={}", record.serial),
        );
        let td = s.authority.trust_domain();
        Ok(Response::new(node_message(
            td,
            &record,
            None,
            &record.agent_version,
        )))
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
