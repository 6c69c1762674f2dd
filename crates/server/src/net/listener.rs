//! The accept loop both listeners share: take a slot, then (in the
//! connection's own task) the TLS handshake within its timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::conn::Conn;
use super::slots::{Slot, Slots};
use super::tls::ServerTls;

/// How one listener accepts connections.
#[derive(Clone)]
pub struct ListenerSettings {
    /// `http` or `grpc`: names the listener in logs.
    pub name: &'static str,
    /// Connections held at once (`*.max_connections`); see [`Slots`].
    pub max_connections: usize,
    /// From accept until the connection is ready to serve: the TLS handshake
    /// and, on the gRPC port, the HTTP/2 preface (`*.handshake_timeout_ms`).
    pub handshake_timeout: Duration,
    /// Present when the listener serves TLS.
    pub tls: Option<Arc<ServerTls>>,
}

/// Accepts connections until `stop` is cancelled, handing each one with its
/// slot to `serve` (which must not block: it spawns). A connection the
/// listener has no room for is closed at once.
pub async fn accept_loop(
    listener: TcpListener,
    settings: &ListenerSettings,
    stop: &CancellationToken,
    mut serve: impl FnMut(TcpStream, SocketAddr, Slot),
) {
    let slots = Slots::new(settings.name, settings.max_connections);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors, or a connection reset before it
                // was accepted: wait a moment instead of spinning.
                tracing::warn!(listener = settings.name, error = %e, "accepting a connection failed");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                }
            }
        };
        let admitted = tokio::select! {
            _ = stop.cancelled() => return,
            admitted = slots.admit_or_wait() => admitted,
        };
        match admitted {
            Ok(slot) => serve(tcp, peer, slot),
            Err(why) => tracing::debug!(
                listener = settings.name, %peer, ?why,
                "connection closed: no room (every connection is serving a request, or evicted ones are still closing)"
            ),
        }
    }
}

/// Makes an accepted connection ready: the TLS handshake when the listener
/// serves TLS, within the handshake timeout. `None` (logged) when the
/// handshake fails or times out, or the slot was evicted meanwhile.
pub async fn prepare(
    tcp: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    settings: &ListenerSettings,
) -> Option<Conn> {
    let _ = tcp.set_nodelay(true);
    let Some(tls) = &settings.tls else {
        return Some(Conn::plain(tcp, peer, slot));
    };
    let acceptor = tls.acceptor();
    let state = slot.state().clone();
    let handshake = tokio::time::timeout(settings.handshake_timeout, acceptor.accept(tcp));
    let outcome = tokio::select! {
        _ = state.evicted() => return None,
        outcome = handshake => outcome,
    };
    match outcome {
        Ok(Ok(stream)) => Some(Conn::tls(stream, peer, slot)),
        Ok(Err(e)) if refused_certificate(&e) => {
            // Worth an operator's eye: a client with no certificate, or one
            // the client CA did not sign (or an expired one), under mTLS.
            tracing::info!(listener = settings.name, %peer, error = %e, "TLS handshake failed: client certificate refused");
            None
        }
        Ok(Err(e)) => {
            tracing::debug!(listener = settings.name, %peer, error = %e, "TLS handshake failed: connection refused");
            None
        }
        Err(_) => {
            tracing::debug!(listener = settings.name, %peer, timeout_ms = settings.handshake_timeout.as_millis() as u64, "TLS handshake timed out: connection closed");
            None
        }
    }
}

/// Whether a failed handshake refused the client's certificate (rather than
/// a client that does not speak TLS, or went away).
fn refused_certificate(e: &std::io::Error) -> bool {
    matches!(
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_))
    )
}
