//! The web console at `/` (docs/CONSOLE.md): pages for the topology, an
//! explorer of merged metrics, alarms, events and health, refreshed every
//! few seconds.
//!
//! Everything the browser loads is compiled into the binary
//! (`include_bytes!` of `assets/`): plain ES modules, one stylesheet, no
//! build step, nothing fetched from elsewhere at run time. The page reads
//! the node through the same JSON API as any client, plus two small
//! endpoints of its own:
//!
//! - `GET /api/v1/status` ([`status`]): this node, its upstream link, its
//!   downstream sources with the completeness of the last minutes, and the
//!   tiers below them as far as their forwarded self-metrics tell.
//! - `GET /api/v1/labels?metric=NAME` ([`labels`]): the label names and
//!   values of a metric's series, for the explorer's pickers.
//!
//! The page and its assets hold no data, so they are served without a
//! token ([`is_public`], used by [`crate::api::auth::Scope::of_path`]); the
//! page asks for `http.token` when a data call is refused, keeps it in the
//! tab's `sessionStorage` and sends it as a bearer header.
//!
//! # Layout
//! - this file: the embedded assets, their routes and headers.
//! - [`status`]: `GET /api/v1/status`.
//! - [`tiers`]: the tiers below the direct sources, from self-metrics.
//! - [`labels`]: `GET /api/v1/labels`.
//! - `assets/`: `index.html`, `console.css`, `errors.js` (collects script
//!   errors into the page), `app.js` (routing, refresh, token) and the
//!   modules it imports: `api.js`, `dom.js`, `format.js`, `chart.js`
//!   (the SVG line chart) and one module per page under `pages/`.

pub mod labels;
pub mod status;
pub mod tiers;

use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::ApiState;

/// One file the console's page loads.
struct Asset {
    /// Where the browser asks for it.
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    /// Changes whenever the file does, so a browser revalidates cheaply.
    etag: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// An asset of `assets/` served at `path`, with an ETag computed at compile time.
macro_rules! asset {
    ($path:literal, $file:literal, $content_type:expr) => {{
        const BODY: &[u8] = include_bytes!(concat!("assets/", $file));
        const ETAG: [u8; 18] = etag(BODY);
        Asset {
            path: $path,
            content_type: $content_type,
            body: BODY,
            etag: match std::str::from_utf8(&ETAG) {
                Ok(s) => s,
                Err(_) => panic!("etags are ASCII"),
            },
        }
    }};
}

/// The page and every file it loads. Paths other than `/` live under
/// `/console/`, so they cannot shadow an API route.
const ASSETS: &[Asset] = &[
    asset!("/", "index.html", HTML),
    asset!("/console/console.css", "console.css", CSS),
    asset!("/console/favicon.svg", "favicon.svg", SVG),
    asset!("/console/errors.js", "errors.js", JS),
    asset!("/console/app.js", "app.js", JS),
    asset!("/console/api.js", "api.js", JS),
    asset!("/console/dom.js", "dom.js", JS),
    asset!("/console/format.js", "format.js", JS),
    asset!("/console/chart.js", "chart.js", JS),
    asset!("/console/pages/topology.js", "pages/topology.js", JS),
    asset!("/console/pages/explore.js", "pages/explore.js", JS),
    asset!("/console/pages/alarms.js", "pages/alarms.js", JS),
    asset!("/console/pages/events.js", "pages/events.js", JS),
    asset!("/console/pages/health.js", "pages/health.js", JS),
];

/// `"<16 hex digits>"`: FNV-1a of `body`, quoted as an ETag is.
const fn etag(body: &[u8]) -> [u8; 18] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < body.len() {
        h ^= body[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    let digits = b"0123456789abcdef";
    let mut out = [b'"'; 18];
    let mut j = 0;
    while j < 16 {
        out[1 + j] = digits[((h >> (60 - 4 * j)) & 0xf) as usize];
        j += 1;
    }
    out
}

/// Whether `path` is the console's page or one of its assets: served
/// without a token, since they hold no data (the calls they make for data
/// need it). Any other path under `/console/` is not.
pub fn is_public(path: &str) -> bool {
    ASSETS.iter().any(|a| a.path == path)
}

/// The console's routes: the page, its assets and its two endpoints.
pub fn routes() -> Router<Arc<ApiState>> {
    Router::new()
        .route("/", get(index))
        .route("/console/{*file}", get(console_file))
        .route("/api/v1/status", get(status::status))
        .route("/api/v1/labels", get(labels::labels))
}

/// `GET /`: the page.
async fn index(headers: HeaderMap) -> Response {
    serve("/", &headers)
}

/// `GET /console/{file}`: one of the page's assets.
async fn console_file(Path(file): Path<String>, headers: HeaderMap) -> Response {
    serve(&format!("/console/{file}"), &headers)
}

/// The asset at `path` (404 when there is none), or 304 when the browser
/// already holds this version of it.
fn serve(path: &str, request: &HeaderMap) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.path == path) else {
        return crate::api::json::error(StatusCode::NOT_FOUND, format!("no console file {path}"));
    };
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == asset.etag.as_bytes());
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (StatusCode::OK, asset.body).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(header::ETAG, HeaderValue::from_static(asset.etag));
    // Revalidated on every load: a new binary serves its own console at once.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
             frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_public_and_nothing_else_is() {
        for asset in ASSETS {
            assert!(is_public(asset.path), "{}", asset.path);
            assert!(!asset.body.is_empty(), "{} is empty", asset.path);
        }
        for other in [
            "/console/",
            "/console/nope.js",
            "/console/../api/v1/query",
            "/api/v1/status",
            "/api/v1/labels",
            "/index.html",
            "",
        ] {
            assert!(!is_public(other), "{other}");
        }
    }

    #[test]
    fn etags_differ_with_the_content_and_are_quoted_hex() {
        let a = etag(b"console");
        let b = etag(b"consolf");
        assert_ne!(a, b);
        assert_eq!(a[0], b'"');
        assert_eq!(a[17], b'"');
        assert!(a[1..17].iter().all(u8::is_ascii_hexdigit));
        let paths: std::collections::BTreeSet<_> = ASSETS.iter().map(|a| a.path).collect();
        assert_eq!(paths.len(), ASSETS.len(), "asset paths are unique");
    }

    #[test]
    fn every_module_the_page_imports_is_served() {
        // Every relative import of every script, resolved against its own
        // path, must be an asset: a missing one would only fail in a browser.
        let mut imports = 0;
        for asset in ASSETS.iter().filter(|a| a.content_type == JS) {
            let text = std::str::from_utf8(asset.body).unwrap_or_default();
            for line in text.lines().filter(|l| l.starts_with("import ")) {
                let Some(spec) = line.split(['\'', '"']).nth(1) else {
                    continue;
                };
                let dir = asset.path.rsplit_once('/').map_or("", |(d, _)| d);
                let resolved = resolve(dir, spec);
                imports += 1;
                assert!(
                    is_public(&resolved),
                    "{} imports {spec} ({resolved}), which is not served",
                    asset.path
                );
            }
        }
        assert!(imports >= 15, "only {imports} imports found");
    }

    /// `spec` (`./x.js`, `../y.js`) relative to the directory `dir`.
    fn resolve(dir: &str, spec: &str) -> String {
        let mut parts: Vec<&str> = dir.split('/').filter(|p| !p.is_empty()).collect();
        for part in spec.split('/') {
            match part {
                "." => {}
                ".." => {
                    parts.pop();
                }
                p => parts.push(p),
            }
        }
        format!("/{}", parts.join("/"))
    }

    #[test]
    fn the_page_loads_its_assets_by_relative_paths() {
        // Relative, so the console also works behind a proxy under a prefix.
        let index = std::str::from_utf8(ASSETS[0].body).unwrap_or_default();
        for asset in &ASSETS[1..] {
            let relative = &asset.path[1..];
            if asset.path.ends_with(".css")
                || asset.path.ends_with("errors.js")
                || asset.path.ends_with("app.js")
            {
                assert!(index.contains(&format!("\"{relative}\"")), "{relative}");
            }
        }
        assert!(!index.contains("http://") && !index.contains("https://"));
    }
}
