//! Accepts TCP connections and completes TLS handshakes off the accept path, at most
//! `max_handshakes` at a time, yielding streams that tonic serves. A connection with a client
//! certificate lives no longer than that certificate: at its expiry the connection is closed,
//! so a client must reconnect with its renewed SVID.
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pki::Clock;
use pki::svid::CertInfo;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use crate::metrics::Metrics;

/// A slow or silent client cannot hold a handshake slot longer than this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A served connection: TLS over TCP, closed when its client certificate expires.
pub type Connection = Expiring<TlsStream<TcpStream>>;

/// Streams of completed TLS connections from `listener`. When `max_handshakes` are in
/// progress, accepting pauses (new connections wait in the kernel's backlog).
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    max_handshakes: usize,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
) -> ReceiverStream<io::Result<Connection>> {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let acceptor = TlsAcceptor::from(config);
    let slots = Arc::new(Semaphore::new(max_handshakes.max(1)));
    tokio::spawn(async move {
        loop {
            let Ok(slot) = slots.clone().acquire_owned().await else {
                break;
            };
            let (tcp, peer) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                break;
            }
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let clock = clock.clone();
            let metrics = metrics.clone();
            metrics.tls_handshakes.inc();
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                metrics.tls_handshakes.dec();
                drop(slot);
                match handshake {
                    Ok(Ok(tls)) => {
                        let lifetime = client_cert_lifetime(&tls, clock.as_ref());
                        let conn =
                            Expiring::new(tls, lifetime, metrics.expired_connections.clone());
                        let _ = tx.send(Ok(conn)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// How long the client certificate of `tls` remains valid; `None` without one.
fn client_cert_lifetime(tls: &TlsStream<TcpStream>, clock: &dyn Clock) -> Option<Duration> {
    let leaf = tls.get_ref().1.peer_certificates()?.first()?;
    let not_after = CertInfo::parse(leaf.as_ref()).ok()?.not_after;
    Some(not_after.duration_since(clock.now()).unwrap_or_default())
}

/// An I/O stream that fails every read and write once its deadline passes, which makes the
/// HTTP/2 server drop the connection.
#[derive(Debug)]
pub struct Expiring<S> {
    inner: S,
    deadline: Option<Pin<Box<Sleep>>>,
    expired: Counter,
    counted: bool,
}

impl<S> Expiring<S> {
    pub fn new(inner: S, lifetime: Option<Duration>, expired: Counter) -> Self {
        Self {
            inner,
            deadline: lifetime.map(|d| Box::pin(tokio::time::sleep(d))),
            expired,
            counted: false,
        }
    }

    fn check(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(deadline) = self.deadline.as_mut() else {
            return Ok(());
        };
        if deadline.as_mut().poll(cx).is_pending() {
            return Ok(());
        }
        if !self.counted {
            self.counted = true;
            self.expired.inc();
            tracing::debug!("closing a connection whose client certificate expired");
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "client certificate expired",
        ))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Expiring<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Expiring<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check(cx)?;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for Expiring<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_stream_fails_once_its_deadline_passes() {
        let (a, mut b) = tokio::io::duplex(64);
        let expired = Counter::default();
        let mut s = Expiring::new(a, Some(Duration::from_secs(30)), expired.clone());
        b.write_all(b"hi").await.unwrap();
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).await.unwrap();
        tokio::time::advance(Duration::from_secs(31)).await;
        let err = s.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(s.write_all(b"x").await.is_err());
        assert_eq!(expired.get(), 1);
        let (c, _peer) = tokio::io::duplex(8);
        let mut forever = Expiring::new(c, None, Counter::default());
        tokio::time::advance(Duration::from_secs(86400)).await;
        forever.write_all(b"ok").await.unwrap();
    }
}
