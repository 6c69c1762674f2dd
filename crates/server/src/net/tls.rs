//! TLS: the process's one crypto provider, the PEM files a config names,
//! the listeners' server configs (reloadable), and the clients' configs.
//!
//! **One provider.** Every TLS user — the two listeners (tokio-rustls), the
//! forwarder (tonic) and the HTTP clients (ureq: webhooks, `strata query`) —
//! runs on the same rustls with its `ring` provider. The binary installs it
//! as the process default at start ([`install_crypto_provider`]); the configs
//! built here name it explicitly ([`provider`]), so nothing depends on a
//! provider picked from feature flags.
//!
//! **Roots.** A client verifies its server against the CA file its config
//! names (`upstream.ca_file`, `alarm[].webhook_ca_file`,
//! `alarms.alertmanager_ca_file`, `strata query --ca-file`), else against
//! the operating system's roots, read with `rustls-native-certs` (on Linux
//! the usual bundle, e.g. `/etc/ssl/certs/ca-certificates.crt`, or
//! `SSL_CERT_FILE` / `SSL_CERT_DIR`).
//!
//! **Errors** name the config key and the file: `grpc.tls_cert_file
//! /etc/strata/grpc.pem: holds no PEM certificate`. [`check_files`] loads every
//! file a config names and reports each problem as a [`ConfigProblem`], for
//! `strata check-config` and for start-up.
//!
//! **Rotation.** A [`ServerTls`] holds the listener's current
//! `rustls::ServerConfig`; each new connection takes the one current then.
//! [`ServerTls::reload`] re-reads the certificate, the key and the client CA
//! and swaps the config in whole: new connections use the new files,
//! established ones keep theirs. A file that cannot be loaded leaves the old
//! config in place.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use crate::config::{Config, ConfigProblem, GrpcConfig, HttpConfig, UpstreamConfig};

/// How long a client (the forwarder) waits for its TLS handshake.
pub const CLIENT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Installs rustls's `ring` provider as the process default. Called once at
/// start; a second call (or a provider installed by an embedding program)
/// leaves the installed one in place.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The provider every TLS config of the node is built with: the process
/// default, else `ring`.
pub fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// A TLS file that cannot be used, naming its config key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key} {}: {problem}", path.display())]
pub struct TlsFileError {
    /// The config key (or CLI flag) that names the file.
    pub key: String,
    pub path: PathBuf,
    pub problem: String,
}

impl TlsFileError {
    fn new(key: &str, path: &Path, problem: impl Into<String>) -> TlsFileError {
        TlsFileError {
            key: key.to_owned(),
            path: path.to_owned(),
            problem: problem.into(),
        }
    }

    /// As a config problem: the key, then the file and what is wrong with it.
    pub fn to_problem(&self) -> ConfigProblem {
        ConfigProblem {
            key: self.key.clone(),
            message: format!("{}: {}", self.path.display(), self.problem),
        }
    }
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|e| TlsFileError::new(key, path, format!("cannot read: {e}")))
}

/// The certificates of a PEM file, in order, and the file's bytes.
pub fn load_certs(
    key: &str,
    path: &Path,
) -> Result<(Vec<CertificateDer<'static>>, Vec<u8>), TlsFileError> {
    let bytes = read(key, path)?;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
    match certs {
        Err(e) => Err(TlsFileError::new(key, path, format!("not valid PEM: {e}"))),
        Ok(certs) if certs.is_empty() => Err(TlsFileError::new(
            key,
            path,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        )),
        Ok(certs) => Ok((certs, bytes)),
    }
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1), and the file's bytes.
pub fn load_key(key: &str, path: &Path) -> Result<(PrivateKeyDer<'static>, Vec<u8>), TlsFileError> {
    let bytes = read(key, path)?;
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(k) => Ok((k, bytes)),
        Err(pem::Error::NoItemsFound) => Err(TlsFileError::new(
            key,
            path,
            "holds no PEM private key (-----BEGIN PRIVATE KEY-----, RSA PRIVATE KEY or EC PRIVATE KEY)",
        )),
        Err(e) => Err(TlsFileError::new(key, path, format!("not valid PEM: {e}"))),
    }
}

/// The CA certificates of a PEM file as trust anchors, and the file's bytes.
pub fn load_roots(key: &str, path: &Path) -> Result<(RootCertStore, Vec<u8>), TlsFileError> {
    let (certs, bytes) = load_certs(key, path)?;
    Ok((roots_of(key, path, certs)?, bytes))
}

/// `certs` (read from `path`) as trust anchors; an error names the first
/// one that is not usable as a CA.
fn roots_of(
    key: &str,
    path: &Path,
    certs: Vec<CertificateDer<'static>>,
) -> Result<RootCertStore, TlsFileError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            TlsFileError::new(
                key,
                path,
                format!("certificate {} is not usable as a CA: {e}", i + 1),
            )
        })?;
    }
    Ok(roots)
}

/// A certificate and its key, checked to belong together.
fn load_pair(
    cert_key: &str,
    cert_path: &Path,
    key_key: &str,
    key_path: &Path,
) -> Result<(rustls::sign::CertifiedKey, Vec<u8>, Vec<u8>), TlsFileError> {
    let (certs, cert_pem) = load_certs(cert_key, cert_path)?;
    let (key, key_pem) = load_key(key_key, key_path)?;
    let certified = rustls::sign::CertifiedKey::from_der(certs, key, &provider()).map_err(|e| {
        TlsFileError::new(
            cert_key,
            cert_path,
            format!("does not go with {key_key} {}: {e}", key_path.display()),
        )
    })?;
    Ok((certified, cert_pem, key_pem))
}

/// What a listener serves TLS with: its files, and the config built from
/// them that new connections take.
pub struct ServerTls {
    files: ServerFiles,
    /// Swapped whole by [`ServerTls::reload`].
    current: RwLock<Arc<ServerConfig>>,
}

/// The files a listener's TLS is read from, and what it speaks.
struct ServerFiles {
    /// `http` or `grpc`: the section whose keys name the files.
    section: &'static str,
    cert_file: PathBuf,
    key_file: PathBuf,
    /// When set, clients must present a certificate signed by one of its CAs.
    client_ca_file: Option<PathBuf>,
    /// `h2` for gRPC, `http/1.1` for the API.
    alpn: Vec<Vec<u8>>,
}

impl ServerTls {
    /// The HTTP listener's TLS, when `http.tls_cert_file` is set.
    pub fn for_http(http: &HttpConfig) -> Result<Option<Arc<ServerTls>>, TlsFileError> {
        let (Some(cert), Some(key)) = (&http.tls_cert_file, &http.tls_key_file) else {
            return Ok(None);
        };
        ServerTls::load(ServerFiles {
            section: "http",
            cert_file: cert.clone(),
            key_file: key.clone(),
            client_ca_file: None,
            alpn: vec![b"http/1.1".to_vec()],
        })
        .map(Some)
    }

    /// The gRPC listener's TLS, when `grpc.tls_cert_file` is set.
    pub fn for_grpc(grpc: &GrpcConfig) -> Result<Option<Arc<ServerTls>>, TlsFileError> {
        let (Some(cert), Some(key)) = (&grpc.tls_cert_file, &grpc.tls_key_file) else {
            return Ok(None);
        };
        ServerTls::load(ServerFiles {
            section: "grpc",
            cert_file: cert.clone(),
            key_file: key.clone(),
            client_ca_file: grpc.client_ca_file.clone(),
            alpn: vec![b"h2".to_vec()],
        })
        .map(Some)
    }

    fn load(files: ServerFiles) -> Result<Arc<ServerTls>, TlsFileError> {
        let config = files.build()?;
        Ok(Arc::new(ServerTls {
            files,
            current: RwLock::new(Arc::new(config)),
        }))
    }

    /// What a new connection's handshake runs with.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().clone())
    }

    /// Re-reads the files; new connections use them, established ones keep
    /// theirs. On error the current config stays.
    pub fn reload(&self) -> Result<(), TlsFileError> {
        let config = self.files.build()?;
        *self.current.write() = Arc::new(config);
        Ok(())
    }

    /// `http` or `grpc`.
    pub fn section(&self) -> &'static str {
        self.files.section
    }
}

impl ServerFiles {
    /// A server config from the files as they are now.
    fn build(&self) -> Result<ServerConfig, TlsFileError> {
        let s = self.section;
        let cert_key = format!("{s}.tls_cert_file");
        let (certified, _, _) = load_pair(
            &cert_key,
            &self.cert_file,
            &format!("{s}.tls_key_file"),
            &self.key_file,
        )?;
        let versions = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsFileError::new(&cert_key, &self.cert_file, e.to_string()))?;
        let builder = match &self.client_ca_file {
            None => versions.with_no_client_auth(),
            Some(path) => {
                let ca_key = format!("{s}.client_ca_file");
                let (roots, _) = load_roots(&ca_key, path)?;
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .map_err(|e| TlsFileError::new(&ca_key, path, e.to_string()))?;
                versions.with_client_cert_verifier(verifier)
            }
        };
        let resolver = rustls::sign::SingleCertAndKey::from(certified);
        let mut config = builder.with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = self.alpn.clone();
        Ok(config)
    }
}

/// Reloads the listeners' certificates (SIGHUP); cheap to clone.
#[derive(Clone, Default)]
pub struct Reloader {
    servers: Vec<Arc<ServerTls>>,
}

impl Reloader {
    pub fn new(servers: Vec<Arc<ServerTls>>) -> Reloader {
        Reloader { servers }
    }

    /// Re-reads every listener's certificate, key and client CA. A listener
    /// whose files cannot be loaded keeps its current ones, and the error,
    /// naming the file, is logged and returned.
    pub fn reload(&self) -> Vec<TlsFileError> {
        if self.servers.is_empty() {
            tracing::info!("reload requested: no listener serves TLS, nothing to reload");
        }
        let mut errors = Vec::new();
        for server in &self.servers {
            match server.reload() {
                Ok(()) => tracing::info!(
                    listener = server.section(),
                    cert_file = %server.files.cert_file.display(),
                    "TLS certificates reloaded: new connections use them"
                ),
                Err(e) => {
                    tracing::error!(listener = server.section(), error = %e, "TLS reload failed: keeping the previous certificates");
                    errors.push(e);
                }
            }
        }
        errors
    }
}

/// The forwarder's TLS for an `https://` upstream, read from the files now
/// (each connection reads them again); `None` for `http://`.
pub fn upstream_client_tls(
    up: &UpstreamConfig,
) -> Result<Option<tonic::transport::ClientTlsConfig>, TlsFileError> {
    if !up.endpoint.starts_with("https://") {
        return Ok(None);
    }
    let mut tls = tonic::transport::ClientTlsConfig::new().timeout(CLIENT_HANDSHAKE_TIMEOUT);
    tls = match &up.ca_file {
        Some(path) => {
            let (_, pem) = load_roots("upstream.ca_file", path)?;
            tls.ca_certificate(tonic::transport::Certificate::from_pem(pem))
        }
        None => tls.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&up.cert_file, &up.key_file) {
        let (_, cert_pem, key_pem) =
            load_pair("upstream.cert_file", cert, "upstream.key_file", key)?;
        tls = tls.identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
    }
    Ok(Some(tls))
}

/// The TLS settings of an HTTP client (webhooks, `strata query`): this
/// process's provider, and the CAs of `ca_file` (named by `key` in errors)
/// or the system's roots.
pub fn http_client_tls(
    key: &str,
    ca_file: Option<&Path>,
) -> Result<ureq::tls::TlsConfig, TlsFileError> {
    let roots: Vec<ureq::tls::Certificate<'static>> = match ca_file {
        Some(path) => {
            let (certs, _) = load_certs(key, path)?;
            roots_of(key, path, certs.clone())?;
            certs
                .iter()
                .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
                .collect()
        }
        None => system_roots()
            .iter()
            .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
            .collect(),
    };
    Ok(http_client_tls_with(roots))
}

/// An HTTP client's TLS settings trusting exactly `roots`.
pub fn http_client_tls_with(roots: Vec<ureq::tls::Certificate<'static>>) -> ureq::tls::TlsConfig {
    ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
        .unversioned_rustls_crypto_provider(provider())
        .build()
}

/// The operating system's trusted roots (empty, with a warning, when none
/// can be read).
fn system_roots() -> Vec<CertificateDer<'static>> {
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::debug!(error = %e, "reading the system's trusted roots");
    }
    if found.certs.is_empty() {
        tracing::warn!(
            "no trusted root certificates found on this system: https connections without a CA file will fail"
        );
    }
    found.certs
}

/// Loads every TLS file `config` names and reports each that cannot be
/// used, naming its key: unreadable, not PEM, no certificate or key in it,
/// a certificate and key that do not belong together, a CA that is not one.
/// Pairs and endpoints are checked by [`Config::validate`]; this reads files.
pub fn check_files(config: &Config) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    if let Err(e) = ServerTls::for_http(&config.http) {
        problems.push(e.to_problem());
    }
    if let Err(e) = ServerTls::for_grpc(&config.grpc) {
        problems.push(e.to_problem());
    }
    if let Some(up) = &config.upstream {
        if let Some(path) = &up.ca_file
            && let Err(e) = load_roots("upstream.ca_file", path)
        {
            problems.push(e.to_problem());
        }
        if let (Some(cert), Some(key)) = (&up.cert_file, &up.key_file)
            && let Err(e) = load_pair("upstream.cert_file", cert, "upstream.key_file", key)
        {
            problems.push(e.to_problem());
        }
    }
    for (i, rule) in config.alarm.iter().enumerate() {
        if let Some(path) = &rule.webhook_ca_file
            && let Err(e) = load_roots(&format!("alarm[{i}].webhook_ca_file"), path)
        {
            problems.push(e.to_problem());
        }
    }
    if let Some(path) = &config.alarms.alertmanager_ca_file
        && let Err(e) = load_roots("alarms.alertmanager_ca_file", path)
    {
        problems.push(e.to_problem());
    }
    problems
}
