//! Identifies the process behind a request on the agent's Unix socket.
use tonic::Request;
use tonic::transport::server::UdsConnectInfo;

use crate::attest::{AttestError, Attestor, PeerCred, Workload};

/// Attests the caller of `req` from its SO_PEERCRED credentials.
pub fn attest_caller<T>(attestor: &Attestor, req: &Request<T>) -> Result<Workload, tonic::Status> {
    let cred = req
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .map(|c| PeerCred {
            pid: c.pid(),
            uid: c.uid(),
            gid: c.gid(),
        })
        .ok_or_else(|| tonic::Status::unauthenticated(AttestError::NoCredentials.to_string()))?;
    attestor
        .attest(cred)
        .map_err(|e| tonic::Status::unauthenticated(e.to_string()))
}

/// A short description of a workload for errors and logs.
pub fn describe(w: &Workload) -> String {
    let path = w
        .path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "?".into());
    format!(
        "pid {} uid {} gid {} path {path}",
        w.pid.unwrap_or(0),
        w.uid,
        w.gid
    )
}
