//! `istio.v1.auth.IstioCertificateService/CreateCertificate`, for istio-agent and ztunnel.
use citadel_api::istio::istio_certificate_service_server::IstioCertificateService;
use citadel_api::istio::{IstioCertificateRequest, IstioCertificateResponse};
use pki::pem::encode_certificate;
use prost_types::value::Kind;
use tonic::{Request, Response, Status};

use super::{context, ttl_from};
use crate::service::CaService;

/// The Istio CA gRPC service.
#[derive(Debug, Clone)]
pub struct IstioApi {
    pub service: CaService,
}

fn impersonated_identity(req: &IstioCertificateRequest) -> Option<String> {
    let value = req.metadata.as_ref()?.fields.get("ImpersonatedIdentity")?;
    match &value.kind {
        Some(Kind::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

#[tonic::async_trait]
impl IstioCertificateService for IstioApi {
    async fn create_certificate(
        &self,
        req: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let ctx = context(&req, "CreateCertificate");
        let body = req.into_inner();
        let impersonated = impersonated_identity(&body);
        let issued = self.service.istio_create(
            &ctx,
            &body.csr,
            ttl_from(body.validity_duration)?,
            impersonated.as_deref(),
        )?;
        // Istio's contract: one PEM certificate per element, leaf first, roots last.
        let mut cert_chain: Vec<String> =
            issued.svid.chain().iter().map(encode_certificate).collect();
        cert_chain.extend(
            issued
                .bundle
                .x509_authorities()
                .iter()
                .map(encode_certificate),
        );
        Ok(Response::new(IstioCertificateResponse { cert_chain }))
    }
}
