//! The security headers of CONTRACT 3.6, on every response including errors.

use axum::http::{HeaderValue, Response, header};

/// The API's Content-Security-Policy. A route may set its own (the admin console does);
/// this one is added only when none is present.
pub const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

/// Response mapper: sets the contract's security headers. `Content-Security-Policy` and
/// `Cache-Control` are defaults a route may override; the others always win.
pub fn apply<B>(mut response: Response<B>) -> Response<B> {
    let headers = response.headers_mut();
    // One growth of the map for all seven rather than one per power of two passed.
    headers.reserve(7);
    let set = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=31536000; includeSubDomains",
        ),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_XSS_PROTECTION, "0"),
    ];
    for (name, value) in set {
        headers.insert(name, HeaderValue::from_static(value));
    }
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, API_CSP),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers
            .entry(name)
            .or_insert_with(|| HeaderValue::from_static(value));
    }
    response
}
