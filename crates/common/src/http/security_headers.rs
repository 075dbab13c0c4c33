//! The security headers of CONTRACT 3.6, on every response including errors.

use axum::http::{HeaderName, HeaderValue, header};
use tower::ServiceBuilder;
use tower::layer::util::{Identity, Stack};
use tower_http::set_header::SetResponseHeaderLayer;

/// The API's Content-Security-Policy. A route may set its own (the admin console does);
/// this one is added only when none is present.
pub const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";

type L = SetResponseHeaderLayer<HeaderValue>;
/// The layer stack type returned by [`layer`].
pub type SecurityHeadersLayer =
    Stack<L, Stack<L, Stack<L, Stack<L, Stack<L, Stack<L, Stack<L, Identity>>>>>>>;

/// Adds the contract's security headers to every response.
pub fn layer() -> SecurityHeadersLayer {
    let set = |name: HeaderName, value: &'static str| {
        SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value))
    };
    let default = |name: HeaderName, value: &'static str| {
        SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value))
    };
    ServiceBuilder::new()
        .layer(set(header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(set(header::X_FRAME_OPTIONS, "DENY"))
        .layer(set(
            header::STRICT_TRANSPORT_SECURITY,
            "max-age=31536000; includeSubDomains",
        ))
        .layer(default(header::CONTENT_SECURITY_POLICY, API_CSP))
        .layer(set(header::REFERRER_POLICY, "no-referrer"))
        .layer(set(header::X_XSS_PROTECTION, "0"))
        .layer(default(header::CACHE_CONTROL, "no-store"))
        .into_inner()
}
