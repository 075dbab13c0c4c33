//! What the HTTP-level fuzz targets share: an arbitrary request, and serving it through a router
//! wrapped in the real hardening stack (`common::http::harden`) on a single-thread runtime.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use common::config::HttpConfig;
use http::{HeaderName, HeaderValue, Method, Request, StatusCode};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use tower::ServiceExt as _;

/// Largest body the fuzzed stack accepts (small, so 413 is reachable).
pub const BODY_LIMIT: usize = 4096;

/// The hardening stack as both services configure it, with a trusted proxy network and a CORS
/// origin so those code paths run too.
pub fn harden(router: Router) -> Router {
    let config = HttpConfig {
        trusted_proxies: vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
        cors_origins: vec!["https://admin.voketag.example".to_owned()],
        body_limit_bytes: BODY_LIMIT,
        request_timeout: Duration::from_secs(5),
    };
    common::http::harden(router, &config)
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a tokio runtime")
    })
}

/// Serves `request` and reads the whole response: its status and body.
pub fn serve(router: &Router, request: Request<Body>) -> (StatusCode, Bytes) {
    runtime().block_on(async {
        let response = match router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a response body");
        (status, body)
    })
}

/// Serves `request` and panics on a 5xx: the property every HTTP target checks.
pub fn assert_no_5xx(router: &Router, request: Request<Body>) -> StatusCode {
    // The request is in the crash input (`cargo fuzz fmt` shows it); the answer is here.
    let (status, body) = serve(router, request);
    assert!(
        !status.is_server_error(),
        "{status}: {}",
        String::from_utf8_lossy(&body)
    );
    status
}

/// An arbitrary request: mostly to `path_prefix`, with headers the stack reads.
#[derive(Debug, Arbitrary)]
pub struct FuzzRequest<'a> {
    method: FuzzMethod<'a>,
    /// Appended to the target's path prefix, or used as the whole URI.
    path: &'a [u8],
    whole_uri: bool,
    headers: Vec<(FuzzHeader<'a>, &'a [u8])>,
    content_type: Option<ContentType<'a>>,
    body: &'a [u8],
    peer: Peer,
}

#[derive(Debug, Arbitrary)]
enum FuzzMethod<'a> {
    Get,
    Post,
    Options,
    Head,
    Other(&'a [u8]),
}

#[derive(Debug, Arbitrary)]
enum FuzzHeader<'a> {
    ForwardedFor,
    ApiKey,
    RequestId,
    Origin,
    AccessControlRequestMethod,
    Cookie,
    DeviceId,
    CsrfToken,
    Authorization,
    UserAgent,
    ContentLength,
    IdempotencyKey,
    Traceparent,
    Other(&'a [u8]),
}

#[derive(Debug, Arbitrary)]
enum ContentType<'a> {
    Json,
    JsonCharset,
    ProblemJson,
    Text,
    Other(&'a [u8]),
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Peer {
    Loopback,
    TrustedProxy,
    V4([u8; 4]),
    V6([u8; 16]),
}

impl FuzzRequest<'_> {
    /// The request, or `None` when the parts do not make a valid HTTP request (a server would
    /// have refused those bytes before routing).
    pub fn build(&self, path_prefix: &str) -> Option<Request<Body>> {
        let method = match &self.method {
            FuzzMethod::Get => Method::GET,
            FuzzMethod::Post => Method::POST,
            FuzzMethod::Options => Method::OPTIONS,
            FuzzMethod::Head => Method::HEAD,
            FuzzMethod::Other(m) => Method::from_bytes(m).ok()?,
        };
        let uri = if self.whole_uri {
            http::Uri::try_from(self.path).ok()?
        } else {
            let mut uri = path_prefix.as_bytes().to_vec();
            uri.extend_from_slice(self.path);
            http::Uri::try_from(uri).ok()?
        };
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(ct) = &self.content_type {
            let value: &[u8] = match ct {
                ContentType::Json => b"application/json",
                ContentType::JsonCharset => b"application/json; charset=utf-8",
                ContentType::ProblemJson => b"application/problem+json",
                ContentType::Text => b"text/plain",
                ContentType::Other(v) => v,
            };
            builder = builder.header(
                http::header::CONTENT_TYPE,
                HeaderValue::from_bytes(value).ok()?,
            );
        }
        for (name, value) in self.headers.iter().take(16) {
            let name = match name {
                FuzzHeader::ForwardedFor => HeaderName::from_static("x-forwarded-for"),
                FuzzHeader::ApiKey => HeaderName::from_static("x-api-key"),
                FuzzHeader::RequestId => HeaderName::from_static("x-request-id"),
                FuzzHeader::Origin => http::header::ORIGIN,
                FuzzHeader::AccessControlRequestMethod => {
                    http::header::ACCESS_CONTROL_REQUEST_METHOD
                }
                FuzzHeader::Cookie => http::header::COOKIE,
                FuzzHeader::DeviceId => HeaderName::from_static("x-device-id"),
                FuzzHeader::CsrfToken => HeaderName::from_static("x-csrf-token"),
                FuzzHeader::Authorization => http::header::AUTHORIZATION,
                FuzzHeader::UserAgent => http::header::USER_AGENT,
                FuzzHeader::ContentLength => http::header::CONTENT_LENGTH,
                FuzzHeader::IdempotencyKey => HeaderName::from_static("idempotency-key"),
                FuzzHeader::Traceparent => HeaderName::from_static("traceparent"),
                FuzzHeader::Other(n) => HeaderName::from_bytes(n).ok()?,
            };
            builder = builder.header(name, HeaderValue::from_bytes(value).ok()?);
        }
        let mut request = builder.body(Body::from(self.body.to_vec())).ok()?;
        let peer = match self.peer {
            Peer::Loopback => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Peer::TrustedProxy => IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)),
            Peer::V4(b) => IpAddr::V4(Ipv4Addr::from(b)),
            Peer::V6(b) => IpAddr::V6(Ipv6Addr::from(b)),
        };
        // What `common::server::serve` puts there for a real connection.
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::new(peer, 40_000)));
        Some(request)
    }
}
