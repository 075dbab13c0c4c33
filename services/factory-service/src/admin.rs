//! The admin console: plain HTML, CSS and JavaScript modules from `admin/`, embedded in the
//! binary (no build step, no CDN, works offline) and served under `/admin/`.
//!
//! The page itself is public; every API call it makes carries the signed-in user's bearer
//! token. Console responses carry their own Content-Security-Policy, which the hardening
//! layer keeps (it only adds the API's stricter policy where none is set).

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use common::http::error_response;
use sha2::{Digest, Sha256};

/// The console's policy: only its own scripts, styles and API; no inline code, no framing,
/// no plugins, no `<base>` tricks, forms post only to us.
pub const CONSOLE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; font-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'; object-src 'none'";

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $type:expr) => {
        Asset {
            path: $path,
            content_type: $type,
            body: include_bytes!(concat!("../admin/", $path)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of the console. A new file under `admin/` must be listed here to be served.
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("styles.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("session.js", JS),
    asset!("action.js", JS),
    asset!("errors.js", JS),
    asset!("dom.js", JS),
    asset!("pages/signin.js", JS),
    asset!("pages/keys.js", JS),
    asset!("pages/catalog.js", JS),
    asset!("pages/tags.js", JS),
    asset!("pages/audit.js", JS),
];

/// Strong ETags, computed once: the bytes never change while the process runs, so a browser
/// revalidating gets a 304 instead of the file again.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| {
            let digest = Sha256::digest(a.body);
            HeaderValue::from_str(&format!("\"{}\"", hex::encode(&digest[..16])))
                .expect("hex is a valid header value")
        })
        .collect()
});

/// `GET /admin` (redirect), `GET /admin/` and `GET /admin/{file}`; no state, no auth.
pub fn routes() -> Router {
    Router::new()
        // Relative module URLs resolve against the directory, so the page must end in `/`.
        .route("/admin", get(|| async { Redirect::permanent("/admin/") }))
        .route(
            "/admin/",
            get(|headers: HeaderMap| async move { serve("index.html", &headers) }),
        )
        .route(
            "/admin/{*file}",
            get(|Path(file): Path<String>, headers: HeaderMap| async move {
                serve(&file, &headers)
            }),
        )
}

/// Whether the request's `If-None-Match` matches `etag` (RFC 9110 13.1.2): `*`, or a list of
/// entity tags compared weakly (`W/"x"` matches `"x"`), over every header line.
fn none_match(request: &HeaderMap, etag: &HeaderValue) -> bool {
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| {
            tag == "*" || tag.strip_prefix("W/").unwrap_or(tag).as_bytes() == etag.as_bytes()
        })
}

fn serve(path: &str, request: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|a| a.path == path) else {
        return error_response(StatusCode::NOT_FOUND, "not_found", "No such resource.");
    };
    let asset = &ASSETS[i];
    let etag = &ETAGS[i];
    let fresh = none_match(request, etag);
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let headers = response.headers_mut();
    if !fresh {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
    }
    headers.insert(header::ETAG, etag.clone());
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONSOLE_CSP),
    );
    // Always revalidate: a deploy must never leave a browser running old modules against a
    // new API. The ETag makes revalidation cheap.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Keep other sites' windows and embedders away from the console's browsing context.
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_served_with_the_console_policy() {
        for asset in ASSETS {
            let response = serve(asset.path, &HeaderMap::new());
            assert_eq!(response.status(), StatusCode::OK, "{}", asset.path);
            let h = response.headers();
            assert_eq!(h[header::CONTENT_TYPE], asset.content_type);
            assert_eq!(h[header::CONTENT_SECURITY_POLICY], CONSOLE_CSP);
        }
    }

    #[test]
    fn unknown_files_and_traversal_are_404() {
        for path in ["nope.js", "../Cargo.toml", "pages/../app.js", ""] {
            assert_eq!(
                serve(path, &HeaderMap::new()).status(),
                StatusCode::NOT_FOUND
            );
        }
    }

    #[test]
    fn every_file_in_the_folder_is_listed() {
        fn walk(dir: &std::path::Path, base: &std::path::Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, base, out);
                } else {
                    let rel = path.strip_prefix(base).unwrap();
                    out.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("admin");
        let mut files = Vec::new();
        walk(&base, &base, &mut files);
        for file in files {
            assert!(
                ASSETS.iter().any(|a| a.path == file),
                "admin/{file} is not in ASSETS"
            );
        }
    }

    #[test]
    fn a_matching_etag_is_304() {
        let etag = serve("app.js", &HeaderMap::new()).headers()[header::ETAG].clone();
        let etag = etag.to_str().unwrap();
        let status = |values: &[&str]| {
            let mut request = HeaderMap::new();
            for v in values {
                request.append(header::IF_NONE_MATCH, HeaderValue::from_str(v).unwrap());
            }
            serve("app.js", &request).status()
        };
        // The strong tag, its weak form, in a list, on a later line, or `*` (RFC 9110 13.1.2).
        for matching in [
            vec![etag.to_owned()],
            vec![format!("W/{etag}")],
            vec![format!("\"other\", W/{etag}")],
            vec!["\"other\"".to_owned(), etag.to_owned()],
            vec!["*".to_owned()],
        ] {
            let values: Vec<&str> = matching.iter().map(String::as_str).collect();
            assert_eq!(status(&values), StatusCode::NOT_MODIFIED, "{matching:?}");
        }
        assert_eq!(status(&["\"other\""]), StatusCode::OK);
        assert_eq!(status(&[]), StatusCode::OK);
    }

    #[test]
    fn no_inline_script_or_style_in_the_page() {
        let html = std::str::from_utf8(ASSETS[0].body).unwrap();
        assert!(!html.contains("<script>") && !html.contains("<style") && !html.contains("style="));
        // No event-handler attributes (onclick=, onload=, ...).
        assert!(
            !html
                .split_whitespace()
                .any(|w| w.starts_with("on") && w.contains('='))
        );
    }
}
