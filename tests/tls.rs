//! TLS wherever a tier crosses a network, and listeners that keep a node
//! answering: real `strata` processes on loopback, with certificates made
//! here (rcgen) and written to the test's temp dir.
//!
//! - Federation over TLS (`https://` upstream, `ca_file`) and over mTLS
//!   (`grpc.client_ca_file`, `upstream.cert_file`) delivers exact totals; an
//!   edge without a certificate, or with one of another CA, is refused at
//!   the handshake and nothing of its data is merged.
//! - A plaintext client, an HTTP/1.1 request and garbage bytes on a gRPC
//!   port are refused, and the node goes on serving.
//! - HTTPS ingest and query (and `strata query --ca-file`), a webhook over
//!   HTTPS, SIGHUP rotation, start-up refusals naming the key.
//! - Idle connections beyond `max_connections` and a slowloris client do
//!   not keep `/health` from answering.

mod util;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use util::*;

// ---------------------------------------------------------------------------
// Certificates

/// A test certificate authority; its certificates are valid for 127.0.0.1
/// and localhost, usable by servers and clients alike.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    name: String,
}

/// A certificate and key written as PEM files.
struct Issued {
    cert: PathBuf,
    key: PathBuf,
    der: Vec<u8>,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("strata test {name}"));
        let key = KeyPair::generate().expect("a CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("a CA certificate");
        std::fs::write(dir.join(format!("{name}.pem")), issuer.pem()).expect("writing the CA");
        Ca {
            issuer,
            dir: dir.to_path_buf(),
            name: name.to_string(),
        }
    }

    /// The PEM file of the CA's certificate.
    fn file(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.name))
    }

    /// A certificate named `name`, signed by this CA, written to
    /// `<name>.crt` and `<name>.key`.
    fn issue(&self, name: &str) -> Issued {
        let mut params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &self.issuer).expect("a certificate");
        let issued = Issued {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
            der: cert.der().to_vec(),
        };
        std::fs::write(&issued.cert, cert.pem()).expect("writing a certificate");
        std::fs::write(&issued.key, key.serialize_pem()).expect("writing a key");
        issued
    }
}

fn toml_path(path: &Path) -> String {
    serde_json::to_string(&path.to_string_lossy()).expect("strings serialize")
}

/// `[grpc]` serves TLS with `server`.
fn grpc_tls(config: NodeConfig, server: &Issued) -> NodeConfig {
    config
        .set(
            "grpc",
            &format!("tls_cert_file = {}", toml_path(&server.cert)),
        )
        .set(
            "grpc",
            &format!("tls_key_file = {}", toml_path(&server.key)),
        )
}

/// `[http]` serves HTTPS with `server`.
fn http_tls(config: NodeConfig, server: &Issued) -> NodeConfig {
    config
        .set(
            "http",
            &format!("tls_cert_file = {}", toml_path(&server.cert)),
        )
        .set(
            "http",
            &format!("tls_key_file = {}", toml_path(&server.key)),
        )
}

/// The upstream presents `client` to an mTLS upstream.
fn client_cert(config: NodeConfig, client: &Issued) -> NodeConfig {
    config
        .set(
            "upstream",
            &format!("cert_file = {}", toml_path(&client.cert)),
        )
        .set(
            "upstream",
            &format!("key_file = {}", toml_path(&client.key)),
        )
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS client trusting `ca`, speaking `alpn`.
fn client_config(ca: &Path, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("reading the CA") {
        roots
            .add(cert.expect("a CA certificate"))
            .expect("a usable CA");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// A finished TLS handshake with `addr`, verified with `config`.
fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>, String> {
    let mut tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1").expect("an IP server name");
    let mut conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// The certificate the server at `addr` presents to a new connection.
fn served_cert(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> Result<Vec<u8>, String> {
    let stream = tls_connect(addr, config)?;
    let certs = stream.conn.peer_certificates().ok_or("no certificate")?;
    Ok(certs[0].to_vec())
}

/// `GET path` on an open HTTP/1.1 connection (kept alive): status and body.
fn get_on<S: std::io::Read + std::io::Write>(stream: &mut S, path: &str) -> (u16, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: strata\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .expect("sending a request");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("reading the answer");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let status = head[9..12].parse().expect("a status code");
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .expect("a content-length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("reading the body");
    (status, String::from_utf8_lossy(&body).to_string())
}

/// An HTTPS client of the tests trusting `ca` (the node's own provider).
fn https_agent(ca: &Path) -> ureq::Agent {
    let tls = strata_server::net::tls::http_client_tls("ca", Some(ca)).expect("the test CA");
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .tls_config(tls)
        .build()
        .into()
}

/// Waits until the server closes `tcp` (EOF or reset); how long it took.
fn closed_by_server(tcp: &mut TcpStream) -> Duration {
    let start = Instant::now();
    tcp.set_read_timeout(Some(DEADLINE))
        .expect("setting a read timeout");
    let mut buf = [0u8; 256];
    loop {
        match tcp.read(&mut buf) {
            Ok(0) | Err(_) => return start.elapsed(),
            Ok(_) => assert!(start.elapsed() < DEADLINE, "the server never closed"),
        }
    }
}

/// `/health/forwarder` of `edge`: its one check's detail.
fn forwarder_detail(edge: &Node) -> String {
    let (_, v) = get_json(&edge.url("/health/forwarder"));
    v["checks"][0]["detail"].as_str().unwrap_or("").to_string()
}

// ---------------------------------------------------------------------------
// Federation

/// `n` counter samples of `metric` at `base`: their total is `n`.
fn counters(metric: &str, base: i64, n: i64) -> Vec<Value> {
    (0..n)
        .map(|i| sample(metric, "counter", &[], base + i, json!(1)))
        .collect()
}

#[test]
fn federation_over_tls_delivers_exact_totals() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let server = ca.issue("global");
    let global = Node::start(grpc_tls(
        NodeConfig::new(dir.path(), "global").downstream("edge"),
        &server,
    ));
    let edge = Node::start(NodeConfig::new(dir.path(), "edge").upstream_https(&global, &ca.file()));
    let base = base_minute_ms();
    ingest_ok(&edge, &counters("tls_requests", base, 250), true);
    wait_forwarded(&edge, &global, 0);
    assert_eq!(counter_total(&global, "tls_requests", base), 250);
    // The forwarder speaks TLS: nothing plaintext reached the TLS port.
    assert!(
        !global.log().contains("TLS handshake failed"),
        "{}",
        global.log_tail(20)
    );
}

#[test]
fn federation_over_mtls_merges_only_edges_with_an_accepted_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let other_ca = Ca::new(dir.path(), "other-ca");
    let server = ca.issue("global");
    let global = Node::start(
        grpc_tls(NodeConfig::new(dir.path(), "global"), &server)
            .set(
                "grpc",
                &format!("client_ca_file = {}", toml_path(&ca.file())),
            )
            .downstream("edge-ok")
            .downstream("edge-nocert")
            .downstream("edge-foreign"),
    );
    let https = |id: &str| NodeConfig::new(dir.path(), id).upstream_https(&global, &ca.file());
    let ok = Node::start(client_cert(https("edge-ok"), &ca.issue("edge-ok")));
    let nocert = Node::start(https("edge-nocert"));
    let foreign = Node::start(client_cert(
        https("edge-foreign"),
        &other_ca.issue("edge-foreign"),
    ));
    let base = base_minute_ms();
    ingest_ok(&ok, &counters("mtls_requests", base, 120), true);
    ingest_ok(&nocert, &counters("mtls_requests", base, 7), true);
    ingest_ok(&foreign, &counters("mtls_requests", base, 9), true);
    wait_forwarded(&ok, &global, 0);

    // The refused edges keep trying, and keep failing.
    for edge in [&nocert, &foreign] {
        wait_for(&format!("{} to fail twice", edge.id), |last| {
            *last = forwarder_detail(edge);
            let failures = last
                .split_once(" failed streams")
                .and_then(|(before, _)| before.rsplit('(').next()?.parse::<u64>().ok());
            (failures >= Some(2)).then_some(())
        });
    }
    // Refused at the handshake, each for its reason.
    let log = global.log();
    assert!(log.contains("client certificate refused"), "{log}");
    assert!(log.contains("peer sent no certificates"), "{log}");
    assert!(log.contains("UnknownIssuer"), "{log}");
    // Only the accepted edge's data is merged: a total of 120, not 136.
    assert_eq!(counter_total(&global, "mtls_requests", base), 120);
    for id in ["edge-nocert", "edge-foreign"] {
        let s = global.source(id).expect("a declared source is listed");
        assert_eq!(s["connected"], false, "{s}");
        assert_eq!(s["committed_seq"], 0, "{s}");
        assert_eq!(s["batches"], 0, "{s}");
        assert!(s["epoch_fingerprint"].is_null(), "{id} said hello: {s}");
    }
    assert!(committed_seq(&global, "edge-ok") > 0);
}

#[test]
fn plaintext_http1_and_garbage_on_a_grpc_port_are_refused_and_it_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let global = Node::start(grpc_tls(
        NodeConfig::new(dir.path(), "global")
            .downstream("edge")
            .downstream("intruder"),
        &ca.issue("global"),
    ));
    // A plaintext gRPC client on the TLS port: refused before its Hello.
    let refused = FedStream::open(&global, "intruder", 7, &token_of("intruder"));
    assert!(refused.is_err(), "a plaintext client was served");
    // Garbage and HTTP/1.1, on the TLS port and on a plaintext gRPC port.
    let plain = Node::start(NodeConfig::new(dir.path(), "plain"));
    for addr in [global.grpc, plain.grpc] {
        for bytes in [
            &b"\x00\xffgarbage\r\n\r\n\x16\x03"[..],
            &b"GET / HTTP/1.1\r\nHost: strata\r\n\r\n"[..],
        ] {
            let mut tcp = TcpStream::connect(addr).expect("connecting");
            tcp.write_all(bytes).expect("sending");
            let took = closed_by_server(&mut tcp);
            assert!(
                took < Duration::from_secs(5),
                "{addr}: closed after {took:?}"
            );
        }
    }
    // Both ports still serve: an edge federates over TLS, native ingest
    // answers on the plaintext port.
    let edge = Node::start(NodeConfig::new(dir.path(), "edge").upstream_https(&global, &ca.file()));
    let base = base_minute_ms();
    ingest_ok(&edge, &counters("after_garbage", base, 33), true);
    wait_forwarded(&edge, &global, 0);
    assert_eq!(counter_total(&global, "after_garbage", base), 33);
    assert_eq!(counter_total(&global, "intruder_total", base), 0);
    let intruder = global.source("intruder").expect("declared");
    assert_eq!(intruder["committed_seq"], 0, "{intruder}");
    // The plaintext port's receiver answers (a refusal of the unknown source,
    // not a connection failure).
    match FedStream::open(&plain, "nobody", 1, "wrong") {
        Err(status) => assert_ne!(status.code(), tonic::Code::Unavailable, "{status}"),
        Ok(_) => panic!("an undeclared source was welcomed"),
    }
    let (status, _) = get_json(&plain.url("/health"));
    assert_eq!(status, 200);
}

// ---------------------------------------------------------------------------
// HTTPS API, `strata query`, webhooks

#[test]
fn https_ingest_and_query_work_with_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let node = Node::start(http_tls(
        NodeConfig::new(dir.path(), "solo"),
        &ca.issue("solo"),
    ));
    let agent = https_agent(&ca.file());
    let base = base_minute_ms();
    let url = format!("https://{}/api/v1/ingest?wait=commit", node.http);
    let mut resp = agent
        .post(&url)
        .send(ndjson(&counters("https_requests", base, 42)).as_str())
        .expect("HTTPS ingest");
    let answer: Value = resp.body_mut().read_json().expect("a JSON answer");
    assert_eq!(
        (resp.status().as_u16(), &answer["accepted"]),
        (200, &json!(42))
    );

    let (from, to) = range_of(base);
    let query = format!("https://{}/api/v1/query", node.http);
    let mut resp = agent
        .get(&query)
        .query_pairs([
            ("q", "https_requests"),
            ("from", &from),
            ("to", &to),
            ("step", "all"),
        ])
        .call()
        .expect("HTTPS query");
    let answer: Value = resp.body_mut().read_json().expect("a JSON answer");
    assert_eq!(
        answer["data"]["series"][0]["points"][0]["value"]["count"], 42,
        "{answer}"
    );

    // Plain http to the HTTPS port gets no answer.
    let plain = new_agent().get(&node.url("/health")).call();
    assert!(plain.is_err(), "plain http was answered: {plain:?}");

    // `strata query` with the CA, and without (the system's roots do not
    // know the test CA).
    let addr = format!("https://{}", node.http);
    let ca_file = ca.file().to_string_lossy().to_string();
    let args = [
        "https_requests",
        "--addr",
        &addr,
        "--from",
        &from,
        "--to",
        &to,
        "--step",
        "all",
    ];
    let (ok, stdout, stderr) =
        strata_query(&[&args[..], &["--ca-file", &ca_file, "--json"]].concat());
    assert!(ok, "{stderr}");
    assert!(stdout.contains("\"count\": 42"), "{stdout}");
    let (ok, _, stderr) = strata_query(&args);
    assert!(!ok, "an unknown CA was trusted");
    assert!(stderr.contains(&addr), "{stderr}");
    let missing = dir.path().join("absent.pem").to_string_lossy().to_string();
    let (ok, _, stderr) = strata_query(&[&args[..], &["--ca-file", &missing]].concat());
    assert!(
        !ok && stderr.contains("--ca-file") && stderr.contains("absent.pem"),
        "{stderr}"
    );
}

/// An HTTPS webhook receiver: every request's JSON body, answered 200.
fn https_receiver(server: &Issued) -> (u16, std::sync::mpsc::Receiver<Value>) {
    let certs: Vec<_> = CertificateDer::pem_file_iter(&server.cert)
        .expect("reading the certificate")
        .map(|c| c.expect("a certificate"))
        .collect();
    let key = PrivateKeyDer::from_pem_file(&server.key).expect("reading the key");
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("a server config"),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding");
    let port = listener.local_addr().expect("an address").port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
            let conn = rustls::ServerConnection::new(config.clone()).expect("a connection");
            let mut stream = rustls::StreamOwned::new(conn, tcp);
            if let Some(body) = read_request(&mut stream) {
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                let _ = stream.flush();
                let _ = tx.send(body);
            }
        }
    });
    (port, rx)
}

/// One request's JSON body; `None` when the client went away (a failed
/// handshake included).
fn read_request(stream: &mut impl std::io::Read) -> Option<Value> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).ok()?;
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:")?.trim().parse().ok())?;
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).ok()?;
    serde_json::from_slice(&body).ok()
}

#[test]
fn a_webhook_over_https_is_verified_against_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let (trusted_port, trusted) = https_receiver(&ca.issue("hook"));
    let (untrusted_port, untrusted) = https_receiver(&ca.issue("other-hook"));
    let rule = |name: &str, port: u16, ca_line: &str| {
        format!(
            "[[alarm]]\nname = \"{name}\"\nmetric = \"hook_requests\"\nfield = \"count\"\n\
             op = \">\"\nthreshold = 0.0\nwebhooks = [\"https://127.0.0.1:{port}/hook\"]\n{ca_line}\n"
        )
    };
    let ca_line = format!("webhook_ca_file = {}", toml_path(&ca.file()));
    let node = Node::start(
        NodeConfig::new(dir.path(), "alarmed")
            .raw(&rule("trusted", trusted_port, &ca_line))
            .raw(&rule("system_roots", untrusted_port, "")),
    );
    ingest_ok(&node, &counters("hook_requests", base_minute_ms(), 3), true);
    let body = trusted
        .recv_timeout(DEADLINE)
        .expect("the notification over https");
    assert_eq!(
        (&body["alarm"], &body["state"]),
        (&json!("trusted"), &json!("firing")),
        "{body}"
    );
    // The rule without a CA file trusts the system's roots only: the test
    // CA's certificate is refused, and nothing is delivered.
    let url = format!("https://127.0.0.1:{untrusted_port}/hook");
    wait_for("the untrusted webhook to fail", |last| {
        let log = node.log();
        *last = node.log_tail(5);
        log.lines()
            .any(|l| l.contains("alarm notification not delivered") && l.contains(&url))
            .then_some(())
    });
    assert!(
        untrusted.try_recv().is_err(),
        "delivered to an unverified server"
    );
}

// ---------------------------------------------------------------------------
// Rotation

/// Replaces `target`'s files with `source`'s (write aside, then rename).
fn install(source: &Issued, target: &Issued) {
    for (from, to) in [(&source.cert, &target.cert), (&source.key, &target.key)] {
        let aside = to.with_extension("new");
        std::fs::copy(from, &aside).expect("copying");
        std::fs::rename(&aside, to).expect("renaming");
    }
}

#[test]
fn sighup_rotates_the_server_certificates_and_a_bad_file_keeps_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let live = ca.issue("live");
    let first_der = live.der.clone();
    let config = http_tls(grpc_tls(NodeConfig::new(dir.path(), "node"), &live), &live)
        .set("http", "header_read_timeout_ms = 60000");
    let node = Node::start(config);
    let http_client = client_config(&ca.file(), b"http/1.1");
    let grpc_client = client_config(&ca.file(), b"h2");
    assert_eq!(
        served_cert(node.http, http_client.clone()),
        Ok(first_der.clone())
    );
    assert_eq!(
        served_cert(node.grpc, grpc_client.clone()),
        Ok(first_der.clone())
    );
    let mut before = tls_connect(node.http, http_client.clone()).expect("connecting");
    assert_eq!(get_on(&mut before, "/health").0, 200);

    let second = ca.issue("second");
    install(&second, &live);
    node.sighup();
    for (addr, client) in [(node.http, &http_client), (node.grpc, &grpc_client)] {
        wait_for(&format!("{addr} to serve the new certificate"), |last| {
            let served = served_cert(addr, client.clone());
            *last = format!("{:?}", served.as_ref().map(|d| d == &first_der));
            (served.as_ref() == Ok(&second.der)).then_some(())
        });
    }
    // The connection made before the reload goes on with its certificate.
    assert_eq!(
        before.conn.peer_certificates().map(|c| c[0].to_vec()),
        Some(first_der)
    );
    assert_eq!(get_on(&mut before, "/health").0, 200);

    // A key that is not PEM: the reload fails naming the file, and the
    // second certificate stays in service.
    std::fs::write(&live.key, "not a key\n").expect("breaking the key");
    node.sighup();
    wait_for("the failed reload to be logged", |last| {
        *last = node.log_tail(3);
        node.log()
            .lines()
            .any(|l| {
                l.contains("TLS reload failed")
                    && l.contains("http.tls_key_file")
                    && l.contains(&*live.key.to_string_lossy())
            })
            .then_some(())
    });
    assert_eq!(
        served_cert(node.http, http_client.clone()),
        Ok(second.der.clone())
    );
    assert_eq!(served_cert(node.grpc, grpc_client), Ok(second.der.clone()));
    let mut after = tls_connect(node.http, http_client).expect("connecting");
    assert_eq!(get_on(&mut after, "/health").0, 200);
}

// ---------------------------------------------------------------------------
// Start-up refusals

/// A refused config: what it tries, its `(section, line)`s, the key the
/// refusal must name and what it must say.
type Refused<'a> = (&'a str, Vec<(&'a str, String)>, &'a str, &'a str);

/// Configs start-up must refuse, with certificates written to `dir`.
fn refused_configs(dir: &Path) -> Vec<Refused<'static>> {
    let ca = Ca::new(dir, "ca");
    let good = ca.issue("good");
    let other = ca.issue("other");
    let garbage = dir.join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN CERTIFICATE-----\n!!!\n").expect("writing");
    let absent = dir.join("absent.pem");
    let p = |path: &Path| toml_path(path);
    vec![
        (
            "cert without key",
            vec![("http", format!("tls_cert_file = {}", p(&good.cert)))],
            "http.tls_cert_file",
            "without http.tls_key_file",
        ),
        (
            "key without cert",
            vec![("grpc", format!("tls_key_file = {}", p(&good.key)))],
            "grpc.tls_key_file",
            "without grpc.tls_cert_file",
        ),
        (
            "unreadable cert",
            vec![
                ("grpc", format!("tls_cert_file = {}", p(&absent))),
                ("grpc", format!("tls_key_file = {}", p(&good.key))),
            ],
            "grpc.tls_cert_file",
            "cannot read",
        ),
        (
            "unparsable cert",
            vec![
                ("http", format!("tls_cert_file = {}", p(&garbage))),
                ("http", format!("tls_key_file = {}", p(&good.key))),
            ],
            "http.tls_cert_file",
            "not valid PEM",
        ),
        (
            "a cert as the key",
            vec![
                ("http", format!("tls_cert_file = {}", p(&good.cert))),
                ("http", format!("tls_key_file = {}", p(&good.cert))),
            ],
            "http.tls_key_file",
            "no PEM private key",
        ),
        (
            "key of another cert",
            vec![
                ("grpc", format!("tls_cert_file = {}", p(&good.cert))),
                ("grpc", format!("tls_key_file = {}", p(&other.key))),
            ],
            "grpc.tls_cert_file",
            "does not go with grpc.tls_key_file",
        ),
        (
            "client CA without a server cert",
            vec![("grpc", format!("client_ca_file = {}", p(&ca.file())))],
            "grpc.client_ca_file",
            "without grpc.tls_cert_file",
        ),
        (
            "unparsable client CA",
            vec![
                ("grpc", format!("tls_cert_file = {}", p(&good.cert))),
                ("grpc", format!("tls_key_file = {}", p(&good.key))),
                ("grpc", format!("client_ca_file = {}", p(&good.key))),
            ],
            "grpc.client_ca_file",
            "no PEM certificate",
        ),
        (
            "upstream cert without key",
            vec![
                ("upstream", "endpoint = \"https://127.0.0.1:1\"".into()),
                ("upstream", format!("cert_file = {}", p(&good.cert))),
            ],
            "upstream.cert_file",
            "without upstream.key_file",
        ),
        (
            "TLS files with http://",
            vec![
                ("upstream", "endpoint = \"http://127.0.0.1:1\"".into()),
                ("upstream", format!("ca_file = {}", p(&ca.file()))),
            ],
            "upstream.ca_file",
            "endpoint is http://",
        ),
        (
            "unreadable upstream CA",
            vec![
                ("upstream", "endpoint = \"https://127.0.0.1:1\"".into()),
                ("upstream", format!("ca_file = {}", p(&absent))),
            ],
            "upstream.ca_file",
            "cannot read",
        ),
    ]
}

#[test]
fn start_up_refuses_unusable_tls_settings_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = refused_configs(dir.path());
    for (i, (case, lines, key, what)) in cases.iter().enumerate() {
        let mut config = NodeConfig::new(dir.path(), &format!("refused-{i}"));
        for (section, line) in lines {
            config = config.set(section, line);
        }
        let (ok, text) = check_config_of(&config);
        assert!(!ok, "{case}: check-config accepted it");
        assert!(text.contains(key) && text.contains(what), "{case}: {text}");
        let (status, text) = run_refused(&config);
        assert!(!status.success(), "{case}: run started");
        assert!(text.contains(key) && text.contains(what), "{case}: {text}");
        assert!(!text.contains("\"listening\""), "{case}: {text}");
    }
    // A webhook CA that holds no certificate (written by `refused_configs`).
    let garbage = dir.path().join("garbage.pem");
    let webhook = NodeConfig::new(dir.path(), "webhook").raw(&format!(
        "[[alarm]]\nname = \"a\"\nmetric = \"m\"\nfield = \"count\"\nwebhooks = [\"https://127.0.0.1:1/\"]\nwebhook_ca_file = {}\n",
        toml_path(&garbage)
    ));
    let (ok, text) = check_config_of(&webhook);
    assert!(!ok && text.contains("alarm[0].webhook_ca_file"), "{text}");
    let (status, text) = run_refused(&webhook);
    assert!(
        !status.success() && text.contains("alarm[0].webhook_ca_file"),
        "{text}"
    );
}

// ---------------------------------------------------------------------------
// Listener robustness

/// Opens `n` connections to `addr` that send nothing.
fn idle_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| TcpStream::connect(addr).expect("connecting"))
        .collect()
}

/// How many of `conns` the server has closed.
fn closed(conns: &mut [TcpStream]) -> usize {
    let mut n = 0;
    for c in conns.iter_mut() {
        c.set_nonblocking(true).expect("non-blocking");
        let mut buf = [0u8; 16];
        match c.read(&mut buf) {
            Ok(0) => n += 1,
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => n += 1,
            _ => {}
        }
        c.set_nonblocking(false).expect("blocking");
    }
    n
}

#[test]
fn idle_connections_beyond_max_connections_leave_the_node_answering() {
    let dir = tempfile::tempdir().unwrap();
    // Timeouts far beyond the test: only the connection bound makes room.
    let global = Node::start(
        NodeConfig::new(dir.path(), "global")
            .downstream("edge")
            .set("http", "max_connections = 50")
            .set("http", "header_read_timeout_ms = 600000")
            .set("grpc", "max_connections = 50")
            .set("grpc", "handshake_timeout_ms = 600000"),
    );
    let mut http_idle = idle_connections(global.http, 100);
    let mut grpc_idle = idle_connections(global.grpc, 100);
    let start = Instant::now();
    let (status, v) = get_json(&global.url("/health"));
    assert_eq!(status, 200, "{v}");
    let base = base_minute_ms();
    let edge = Node::start(NodeConfig::new(dir.path(), "edge").upstream(&global));
    ingest_ok(&edge, &counters("crowded", base, 17), true);
    wait_forwarded(&edge, &global, 0);
    assert_eq!(counter_total(&global, "crowded", base), 17);
    assert!(
        start.elapsed() < Duration::from_secs(120),
        "{:?}",
        start.elapsed()
    );
    // The bound holds: the oldest idle connections were closed to make room.
    for (name, conns) in [("http", &mut http_idle), ("grpc", &mut grpc_idle)] {
        wait_for(
            &format!("{name}: at least 50 idle connections closed"),
            |last| {
                let n = closed(conns);
                *last = format!("{n} closed");
                (n >= 50).then_some(())
            },
        );
    }
}

#[test]
fn slow_clients_are_cut_at_the_header_and_handshake_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let plain = Node::start(
        NodeConfig::new(dir.path(), "plain").set("http", "header_read_timeout_ms = 1000"),
    );
    let tls = Node::start(
        http_tls(NodeConfig::new(dir.path(), "tls"), &ca.issue("tls"))
            .set("http", "handshake_timeout_ms = 1000")
            .set("grpc", "handshake_timeout_ms = 1000"),
    );
    // Slowloris: headers trickled, one line every 100 ms, never finished.
    let mut tcp = TcpStream::connect(plain.http).expect("connecting");
    tcp.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("setting a read timeout");
    tcp.write_all(b"GET /health HTTP/1.1\r\nHost: strata\r\n")
        .expect("sending");
    let start = Instant::now();
    let mut answer = Vec::new();
    let cut = loop {
        assert!(start.elapsed() < DEADLINE, "never cut");
        let mut buf = [0u8; 256];
        match tcp.read(&mut buf) {
            Ok(0) => break start.elapsed(),
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                if tcp.write_all(b"X-Slow: 1\r\n").is_err() {
                    break start.elapsed();
                }
            }
            Err(_) => break start.elapsed(),
        }
    };
    assert!(cut >= Duration::from_millis(900), "cut after {cut:?}");
    assert!(
        !String::from_utf8_lossy(&answer).contains("200"),
        "answered: {answer:?}"
    );
    // Connections that never start their TLS handshake or HTTP/2 preface.
    for addr in [tls.http, tls.grpc, plain.grpc] {
        let mut idle = TcpStream::connect(addr).expect("connecting");
        let took = closed_by_server(&mut idle);
        assert!(
            took < Duration::from_secs(30),
            "{addr}: closed after {took:?}"
        );
    }
    let (status, _) = get_json(&plain.url("/health"));
    assert_eq!(status, 200);
}
