//! Identifies the process behind each connection on the agent's Unix socket: attested once,
//! when the connection is accepted, and bound to it; each request re-checks the process.
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Request;
use tonic::transport::server::Connected;

use crate::attest::{AttestError, Attestor, PeerCred, Workload};

/// The attestation of a connection, as every request on it sees it.
#[derive(Debug, Clone)]
pub struct ConnectionPeer(Arc<Result<Workload, AttestError>>);

/// A Unix-socket connection with the attestation made when it was accepted.
#[derive(Debug)]
pub struct AttestedConnection {
    stream: UnixStream,
    peer: ConnectionPeer,
}

impl AttestedConnection {
    /// Attests the peer of a freshly accepted `stream`, before anything is read from it.
    pub fn accept(stream: UnixStream, attestor: &Attestor) -> Self {
        let attested = match stream.peer_cred() {
            Ok(c) => attestor.attest(PeerCred {
                pid: c.pid(),
                uid: c.uid(),
                gid: c.gid(),
            }),
            Err(_) => Err(AttestError::NoCredentials),
        };
        Self {
            stream,
            peer: ConnectionPeer(Arc::new(attested)),
        }
    }
}

impl Connected for AttestedConnection {
    type ConnectInfo = ConnectionPeer;

    fn connect_info(&self) -> ConnectionPeer {
        self.peer.clone()
    }
}

impl AsyncRead for AttestedConnection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for AttestedConnection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Accepts connections on `listener`, attesting each peer as it is accepted.
pub fn attested_incoming(
    listener: UnixListener,
    attestor: Attestor,
) -> ReceiverStream<io::Result<AttestedConnection>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept on the agent socket failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let conn = AttestedConnection::accept(stream, &attestor);
            if tx.send(Ok(conn)).await.is_err() {
                break;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// The workload behind `req`: its connection's attestation, provided the same process still
/// runs the same executable.
pub fn attest_caller<T>(attestor: &Attestor, req: &Request<T>) -> Result<Workload, tonic::Status> {
    let peer = req
        .extensions()
        .get::<ConnectionPeer>()
        .ok_or_else(|| tonic::Status::unauthenticated(AttestError::NoCredentials.to_string()))?;
    let workload = match peer.0.as_ref() {
        Ok(w) => w.clone(),
        Err(e) => return Err(tonic::Status::unauthenticated(e.to_string())),
    };
    still_same(attestor, &workload)?;
    Ok(workload)
}

/// Refuses a workload whose process exited or exec'd since its connection was attested.
pub fn still_same(attestor: &Attestor, workload: &Workload) -> Result<(), tonic::Status> {
    attestor
        .verify_unchanged(workload)
        .map_err(|e| tonic::Status::permission_denied(e.to_string()))
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
