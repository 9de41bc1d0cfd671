//! The CA's refusal reasons and the one place they become gRPC statuses.
use pki::CsrError;
use tonic::{Code, Status};

use crate::registry::RegistryError;

/// Why a request was refused. Nothing is issued and no state changes in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("invalid CSR: {0}")]
    InvalidCsr(#[from] CsrError),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl CaError {
    /// A short stable label for metrics and audit lines.
    pub fn reason(&self) -> String {
        match self {
            CaError::InvalidCsr(e) => e.reason().into(),
            CaError::InvalidArgument(_) => "invalid_argument".into(),
            CaError::Unauthenticated(_) => "unauthenticated".into(),
            CaError::PermissionDenied(_) => "permission_denied".into(),
            CaError::NotFound(_) => "not_found".into(),
            CaError::Internal(_) => "internal".into(),
        }
    }
}

impl From<RegistryError> for CaError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::UnknownToken
            | RegistryError::ExpiredToken
            | RegistryError::UsedToken => CaError::Unauthenticated(e.to_string()),
            RegistryError::InvalidNode(_) | RegistryError::InvalidEntry(_) => {
                CaError::InvalidArgument(e.to_string())
            }
            RegistryError::NoSuchEntry(_) | RegistryError::NoSuchNode(_) => {
                CaError::NotFound(e.to_string())
            }
            RegistryError::Evicted(_) | RegistryError::UnknownNodeSvid { .. } => {
                CaError::PermissionDenied(e.to_string())
            }
            RegistryError::Persist(_) => CaError::Internal(e.to_string()),
        }
    }
}

impl From<CaError> for Status {
    fn from(e: CaError) -> Self {
        let code = match &e {
            CaError::InvalidCsr(_) | CaError::InvalidArgument(_) => Code::InvalidArgument,
            CaError::Unauthenticated(_) => Code::Unauthenticated,
            CaError::PermissionDenied(_) => Code::PermissionDenied,
            CaError::NotFound(_) => Code::NotFound,
            // Internal details stay in the log, not in the reply.
            CaError::Internal(_) => return Status::internal("internal error"),
        };
        Status::new(code, e.to_string())
    }
}
