//! Bearer-token authentication of the HTTP API and the native gRPC ingest.
//!
//! `[http] token` guards every route but `/health`, `/health/{component}`,
//! `/ready` (probes must work without secrets) and the console's page and
//! assets (no data: the page must load to ask for the token);
//! `[http] ingest_token`, when set, is accepted beside it on the ingest
//! routes only, so that applications which send data cannot read it.
//! Without `token` the API is open.
//!
//! A request without a token, or with a wrong one, is answered 401 with
//! `WWW-Authenticate: Bearer` and `{"status":"error","errorType":"unauthorized",…}`;
//! the ingest token on a read route is answered 403 (`errorType`
//! `"forbidden"`, RFC 6750's `insufficient_scope`). Refusals are counted
//! (`strata_http_unauthorized_total`, `strata_grpc_unauthorized_total`) and
//! logged at most once per [`LOG_EVERY_MS`], so a scanner cannot flood the log.
//!
//! Tokens are compared in constant time ([`constant_time_eq`]); the federation
//! receiver compares each source's token with the same function.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::context::now_ms;
use crate::core::stats::Stats;
use crate::status::{Class, Classify};

/// Refusals are logged at most once per this many milliseconds (each is counted).
pub const LOG_EVERY_MS: i64 = 10_000;

/// What a route lets a token do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Health and readiness probes, and the console's page and assets (they
    /// hold no data; the calls it makes for data need the token): no token.
    Exempt,
    /// Sending data: `http.token` or `http.ingest_token`.
    Ingest,
    /// Reading and administration: `http.token` only.
    Read,
}

impl Scope {
    /// The scope of an HTTP path.
    ///
    /// The console's page (`/`) and its assets (exactly the files it serves
    /// under `/console/`, [`crate::api::console::is_public`]) need no token:
    /// the page must load to ask for one. Everything it shows comes from
    /// data routes, which keep needing the token.
    pub fn of_path(path: &str) -> Scope {
        if path == "/health"
            || path.starts_with("/health/")
            || path == "/ready"
            || crate::api::console::is_public(path)
        {
            Scope::Exempt
        } else if path == "/api/v1/ingest"
            || path == crate::inputs::otlp::HTTP_PATH
            || path == crate::inputs::remote_write::HTTP_PATH
        {
            Scope::Ingest
        } else {
            Scope::Read
        }
    }
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token: send Authorization: Bearer <token> (http.token)")]
    Missing,
    #[error("wrong bearer token")]
    Wrong,
    /// The ingest token on a route that needs `http.token`.
    #[error("the ingest token (http.ingest_token) may only send data: this route needs http.token")]
    IngestOnly,
}

impl Classify for AuthError {
    fn class(&self) -> Class {
        match self {
            AuthError::IngestOnly => Class::Forbidden,
            AuthError::Missing | AuthError::Wrong => Class::Unauthenticated,
        }
    }
}

/// The node's tokens (`http.token`, `http.ingest_token`).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    token: Option<String>,
    ingest_token: Option<String>,
}

impl std::fmt::Debug for Tokens {
    /// Never the tokens themselves.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("ingest_token", &self.ingest_token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl Tokens {
    /// Tokens from the config; an empty string is no token.
    pub fn new(token: &str, ingest_token: &str) -> Tokens {
        let set = |t: &str| (!t.is_empty()).then(|| t.to_string());
        Tokens {
            token: set(token),
            ingest_token: set(ingest_token),
        }
    }

    /// Checks the `Authorization` header value (HTTP header or gRPC
    /// metadata) presented for `scope`.
    pub fn check(&self, scope: Scope, authorization: Option<&[u8]>) -> Result<(), AuthError> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        if scope == Scope::Exempt {
            return Ok(());
        }
        let presented = authorization.and_then(bearer).ok_or(AuthError::Missing)?;
        if constant_time_eq(presented, token.as_bytes()) {
            return Ok(());
        }
        match &self.ingest_token {
            Some(ingest) if constant_time_eq(presented, ingest.as_bytes()) => match scope {
                Scope::Ingest | Scope::Exempt => Ok(()),
                Scope::Read => Err(AuthError::IngestOnly),
            },
            _ => Err(AuthError::Wrong),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` value (the scheme is
/// case-insensitive); `None` for another scheme.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") || !rest.starts_with(b" ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Whether `a` and `b` are equal, in time that depends on their lengths
/// only, never on where they first differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= std::hint::black_box(x ^ y);
    }
    diff == 0
}

/// Counts refusals and logs them, at most once per [`LOG_EVERY_MS`].
#[derive(Debug, Default)]
pub struct RefusalLog {
    last_logged_ms: AtomicI64,
    /// Refusals not logged since the last line.
    quiet: AtomicU64,
}

impl RefusalLog {
    /// Logs `e` for `what` (a route or a gRPC method) unless a refusal was
    /// logged less than [`LOG_EVERY_MS`] ago.
    pub fn refused(&self, what: &str, e: AuthError) {
        let now = now_ms();
        let last = self.last_logged_ms.load(Ordering::Relaxed);
        let due = now.saturating_sub(last) >= LOG_EVERY_MS
            && self
                .last_logged_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if !due {
            self.quiet.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let unlogged = self.quiet.swap(0, Ordering::Relaxed);
        tracing::warn!(
            request = what,
            error = %e,
            unlogged_since_last = unlogged,
            "request refused: no valid token (further refusals within 10 s are only counted)"
        );
    }
}

/// What the HTTP middleware needs.
#[derive(Debug)]
pub struct HttpAuth {
    pub tokens: Arc<Tokens>,
    pub stats: Arc<Stats>,
    pub log: RefusalLog,
}

/// The router's authentication layer: refuses a request its token does not
/// allow before any handler (or the body) is touched.
pub async fn http(State(auth): State<Arc<HttpAuth>>, request: Request, next: Next) -> Response {
    let scope = Scope::of_path(request.uri().path());
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    match auth.tokens.check(scope, presented) {
        Ok(()) => next.run(request).await,
        Err(e) => {
            Stats::add(&auth.stats.http_unauthorized_total, 1);
            let what = format!("{} {}", request.method(), request.uri().path());
            auth.log.refused(&what, e);
            let mut answer = refusal(e);
            if !drained(request.into_body()).await {
                // The rest of the body is never read: the connection cannot
                // carry another request, and the client must know.
                answer
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            answer
        }
    }
}

/// Most of a refused request's body read (and discarded) so that its
/// connection can serve the next request.
const DRAIN_BYTES: usize = 64 << 10;

/// Reads and discards `body` if it ends within [`DRAIN_BYTES`] and a second;
/// whether it did.
async fn drained(body: axum::body::Body) -> bool {
    use tokio_stream::StreamExt as _;
    let mut stream = body.into_data_stream();
    let drain = async {
        let mut read = 0usize;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => read += chunk.len(),
                Err(_) => return false,
            }
            if read > DRAIN_BYTES {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(std::time::Duration::from_secs(1), drain)
        .await
        .unwrap_or(false)
}

/// The 401 (or 403) answer: the JSON error with its `errorType`, and the
/// `WWW-Authenticate` challenge (RFC 6750).
fn refusal(e: AuthError) -> Response {
    let (error_type, challenge) = match e {
        AuthError::Missing => ("unauthorized", "Bearer realm=\"strata\""),
        AuthError::Wrong => (
            "unauthorized",
            "Bearer realm=\"strata\", error=\"invalid_token\"",
        ),
        AuthError::IngestOnly => (
            "forbidden",
            "Bearer realm=\"strata\", error=\"insufficient_scope\"",
        ),
    };
    let body = json!({"status": "error", "errorType": error_type, "error": e.to_string()});
    let mut response = (e.class().http_status(), axum::Json(body)).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(constant_time_eq(b"", b""));
        for other in [&b"secreT"[..], b"secret2", b"secre", b"", b"\0secret"] {
            assert!(!constant_time_eq(b"secret", other), "{other:?}");
            assert!(!constant_time_eq(other, b"secret"), "{other:?}");
        }
    }

    #[test]
    fn bearer_values_are_parsed_strictly() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"BEARER abc"), Some(&b"abc"[..]));
        for bad in [
            &b"Basic abc"[..],
            b"Bearer",
            b"Bearer ",
            b"Bearerabc",
            b"abc",
            b"",
        ] {
            assert_eq!(bearer(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn scopes_follow_the_routes() {
        assert_eq!(Scope::of_path("/health"), Scope::Exempt);
        assert_eq!(Scope::of_path("/health/store"), Scope::Exempt);
        assert_eq!(Scope::of_path("/ready"), Scope::Exempt);
        assert_eq!(Scope::of_path("/healthz"), Scope::Read);
        assert_eq!(Scope::of_path("/api/v1/ingest"), Scope::Ingest);
        assert_eq!(Scope::of_path("/v1/metrics"), Scope::Ingest);
        assert_eq!(Scope::of_path("/api/v1/write"), Scope::Ingest);
        for read in ["/api/v1/query", "/metrics", "/api/v1/quarantine", "/nope"] {
            assert_eq!(Scope::of_path(read), Scope::Read, "{read}");
        }
    }

    #[test]
    fn the_console_page_and_its_assets_need_no_token_but_its_data_does() {
        for public in [
            "/",
            "/console/app.js",
            "/console/console.css",
            "/console/pages/explore.js",
        ] {
            assert_eq!(Scope::of_path(public), Scope::Exempt, "{public}");
        }
        for read in [
            "/api/v1/status",
            "/api/v1/labels",
            "/api/v1/sources",
            "/api/v1/alarms",
            "/api/v1/events",
            "/console/",
            "/console/nope.js",
            "/console/app.js/",
            "/console/../api/v1/status",
            "//",
            "/index.html",
        ] {
            assert_eq!(Scope::of_path(read), Scope::Read, "{read}");
        }
        let tokens = Tokens::new("read-token", "");
        assert_eq!(tokens.check(Scope::of_path("/"), None), Ok(()));
        assert_eq!(
            tokens.check(Scope::of_path("/api/v1/status"), None),
            Err(AuthError::Missing)
        );
    }

    #[test]
    fn each_token_opens_its_scopes_only() {
        let open = Tokens::new("", "");
        assert_eq!(open.check(Scope::Read, None), Ok(()));
        let tokens = Tokens::new("read-token", "ingest-token");
        let check = |scope, value: &str| tokens.check(scope, Some(value.as_bytes()));
        assert_eq!(check(Scope::Read, "Bearer read-token"), Ok(()));
        assert_eq!(check(Scope::Ingest, "Bearer read-token"), Ok(()));
        assert_eq!(check(Scope::Ingest, "Bearer ingest-token"), Ok(()));
        assert_eq!(
            check(Scope::Read, "Bearer ingest-token"),
            Err(AuthError::IngestOnly)
        );
        assert_eq!(check(Scope::Read, "Bearer nope"), Err(AuthError::Wrong));
        assert_eq!(
            check(Scope::Ingest, "Basic read-token"),
            Err(AuthError::Missing)
        );
        assert_eq!(tokens.check(Scope::Ingest, None), Err(AuthError::Missing));
        assert_eq!(tokens.check(Scope::Exempt, None), Ok(()));
        assert!(!format!("{tokens:?}").contains("read-token"));
    }
}
