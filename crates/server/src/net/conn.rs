//! One accepted connection: TCP or TLS over TCP, with the slot it holds and
//! the bytes already read to check what it speaks.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::slots::Slot;

/// The bytes an HTTP/2 client opens its connection with (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection a listener serves.
pub struct Conn {
    io: Io,
    /// Bytes read ahead (the HTTP/2 preface), handed out again first.
    replay: Vec<u8>,
    replayed: usize,
    remote: SocketAddr,
    local: Option<SocketAddr>,
    /// Freed when the connection is dropped.
    slot: Slot,
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl Conn {
    pub fn plain(tcp: TcpStream, remote: SocketAddr, slot: Slot) -> Conn {
        let local = tcp.local_addr().ok();
        Conn::new(Io::Plain(tcp), remote, local, slot)
    }

    pub fn tls(
        tls: tokio_rustls::server::TlsStream<TcpStream>,
        remote: SocketAddr,
        slot: Slot,
    ) -> Conn {
        let local = tls.get_ref().0.local_addr().ok();
        Conn::new(Io::Tls(Box::new(tls)), remote, local, slot)
    }

    fn new(io: Io, remote: SocketAddr, local: Option<SocketAddr>, slot: Slot) -> Conn {
        Conn {
            io,
            replay: Vec::new(),
            replayed: 0,
            remote,
            local,
            slot,
        }
    }

    pub fn slot(&self) -> &Slot {
        &self.slot
    }

    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// Reads the HTTP/2 connection preface, stopping at the first byte that
    /// differs (an HTTP/1.1 request, a TLS hello on a plaintext port,
    /// garbage). The bytes are handed out again to whoever reads next.
    pub async fn expect_h2_preface(&mut self) -> Result<(), String> {
        let mut buf = [0u8; H2_PREFACE.len()];
        let mut n = 0;
        while n < buf.len() {
            let read = self
                .read(&mut buf[n..])
                .await
                .map_err(|e| format!("reading the HTTP/2 preface: {e}"))?;
            if read == 0 {
                return Err("closed before the HTTP/2 preface".into());
            }
            if buf[n..n + read] != H2_PREFACE[n..n + read] {
                return Err("not an HTTP/2 connection preface (HTTP/1.1, TLS, or garbage?)".into());
            }
            n += read;
        }
        self.replay = buf.to_vec();
        self.replayed = 0;
        Ok(())
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.replayed < this.replay.len() {
            let rest = &this.replay[this.replayed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.replayed += n;
            return Poll::Ready(Ok(()));
        }
        match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo {
            local_addr: self.local,
            remote_addr: Some(self.remote),
        }
    }
}
