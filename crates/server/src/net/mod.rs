//! The network edge of a tier: the two listeners' accept loops, TLS, and the
//! limits that keep a node answering under idle, slow or hostile clients.
//!
//! - [`tls`]: the one crypto provider (rustls with `ring`), PEM loading with
//!   errors naming the config key, the listeners' reloadable server configs
//!   ([`tls::ServerTls`], [`tls::Reloader`] for SIGHUP), and the clients'
//!   configs (the forwarder's, the HTTP clients').
//! - [`slots`]: the bound on a listener's connections (`max_connections`) and
//!   which connection makes room for a new one.
//! - [`listener`]: the accept loop both listeners share and the TLS handshake
//!   under its timeout.
//! - [`http`]: the HTTP/1.1 listener (hyper), with the header read timeout.
//! - [`grpc`]: the gRPC listener's connections, checked (TLS, HTTP/2 preface)
//!   before tonic serves them.
//! - [`conn`]: one accepted connection, plain or TLS.
//!
//! What each listener guarantees, per connection, from accept on:
//!
//! | stage | HTTP | gRPC |
//! |---|---|---|
//! | slot | `http.max_connections`; the oldest connection without a request makes room | `grpc.max_connections`; the oldest connection not yet established makes room |
//! | TLS handshake | `http.handshake_timeout_ms` | `grpc.handshake_timeout_ms`, client certificate checked under mTLS |
//! | protocol | request headers within `http.header_read_timeout_ms` (also between requests) | HTTP/2 preface within the same handshake deadline, else closed |
//! | after | one request at a time per connection | HTTP/2 keepalive pings end connections to vanished peers |

pub mod conn;
pub mod grpc;
pub mod http;
pub mod listener;
pub mod slots;
pub mod tls;

pub use listener::ListenerSettings;
