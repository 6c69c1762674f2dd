//! The gRPC listener's connections, handed to tonic ready to serve: the
//! TLS handshake (with the client certificate check under mTLS) and the
//! HTTP/2 preface are done first, in each connection's own task, within
//! `grpc.handshake_timeout_ms`.
//!
//! A connection that fails either is closed before tonic sees it: a
//! plaintext client on a TLS port, a client without an accepted
//! certificate, an HTTP/1.1 request, garbage bytes, or a client that sends
//! nothing. Nothing it sent reaches a service, so nothing of it is merged.

use std::io;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use super::conn::Conn;
use super::listener::{ListenerSettings, accept_loop, prepare};

/// Ready connections waiting for tonic to take them; handshakes wait when full.
const READY_QUEUE: usize = 64;

/// Accepts on `listener` until `stop` is cancelled; returns the stream of
/// ready connections for `serve_with_incoming_shutdown`.
pub fn incoming(
    listener: TcpListener,
    settings: ListenerSettings,
    stop: CancellationToken,
) -> ReceiverStream<io::Result<Conn>> {
    let (ready_tx, ready_rx) = mpsc::channel(READY_QUEUE);
    let settings = Arc::new(settings);
    tokio::spawn(async move {
        accept_loop(listener, &settings, &stop, |tcp, peer, slot| {
            let (settings, ready, stop) = (settings.clone(), ready_tx.clone(), stop.clone());
            tokio::spawn(async move {
                let state = slot.state().clone();
                let deadline = tokio::time::Instant::now() + settings.handshake_timeout;
                let prepared = async {
                    let mut conn = prepare(tcp, peer, slot, &settings).await?;
                    let preface = tokio::time::timeout_at(deadline, conn.expect_h2_preface());
                    match preface.await {
                        Ok(Ok(())) => Some(conn),
                        Ok(Err(why)) => {
                            tracing::debug!(listener = settings.name, %peer, %why, "connection refused");
                            None
                        }
                        Err(_) => {
                            tracing::debug!(listener = settings.name, %peer, "no HTTP/2 preface in time: connection closed");
                            None
                        }
                    }
                };
                let conn = tokio::select! {
                    conn = prepared => conn,
                    _ = state.evicted() => None,
                    _ = stop.cancelled() => None,
                };
                if let Some(conn) = conn
                    && state.served()
                {
                    let _ = ready.send(Ok(conn)).await;
                }
            });
        })
        .await;
    });
    ReceiverStream::new(ready_rx)
}
