//! The hardening stack, served for real on a random port.

mod support;

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use common::config::{Env, HttpConfig};
use common::health::ReadinessCheck;
use common::http::{ClientIp, Json, error_response, harden};
use secrecy::SecretString;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const SECURITY_HEADERS: [(&str, &str); 7] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    (
        "strict-transport-security",
        "max-age=31536000; includeSubDomains",
    ),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    ("referrer-policy", "no-referrer"),
    ("x-xss-protection", "0"),
    ("cache-control", "no-store"),
];

#[derive(Deserialize)]
struct Item {
    #[allow(dead_code)]
    name: String,
    #[allow(dead_code)]
    count: u32,
}

fn routes() -> Router {
    Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/ip",
            get(|ClientIp(ip): ClientIp| async move { ip.to_string() }),
        )
        .route(
            "/items",
            post(|Json(_): Json<Item>| async { StatusCode::CREATED }),
        )
        .route(
            "/broken",
            get(|| async { error_response(StatusCode::CONFLICT, "already_exists", "It exists.") }),
        )
        .route(
            "/panic",
            get(|| async {
                if true {
                    panic!("handler bug");
                }
                "unreachable"
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
}

fn http_config(pairs: &[(&str, &str)]) -> HttpConfig {
    common::CommonConfig::from_env(&Env::from_pairs(pairs.iter().copied()), "127.0.0.1:0")
        .expect("valid test config")
        .http
}

async fn spawn_hardened(pairs: &[(&str, &str)]) -> String {
    let mut config = http_config(pairs);
    config.request_timeout = Duration::from_millis(300);
    config.body_limit_bytes = 1024;
    support::serve(harden(routes(), &config)).await.0
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn assert_security_headers(resp: &reqwest::Response) {
    for (name, value) in SECURITY_HEADERS {
        assert_eq!(
            resp.headers().get(name).and_then(|v| v.to_str().ok()),
            Some(value),
            "{name} on {} {}",
            resp.status(),
            resp.url()
        );
    }
    assert!(
        resp.headers().contains_key("x-request-id"),
        "x-request-id on {}",
        resp.status()
    );
}

async fn json_error(resp: reqwest::Response) -> (StatusCode, serde_json::Value) {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        ct.starts_with("application/json"),
        "content-type {ct} on {status}"
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["error"].is_string(), "{body}");
    assert!(body["detail"].is_string(), "{body}");
    (status, body)
}

#[tokio::test]
async fn security_headers_on_success_and_every_error() {
    let base = spawn_hardened(&[]).await;
    let c = client();

    let ok = c.get(format!("{base}/ok")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_security_headers(&ok);

    let missing = c.get(format!("{base}/nope")).send().await.unwrap();
    assert_security_headers(&missing);
    let (status, body) = json_error(missing).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    let wrong_method = c.delete(format!("{base}/ok")).send().await.unwrap();
    assert_security_headers(&wrong_method);
    assert!(wrong_method.headers().contains_key("allow"));
    let (status, body) = json_error(wrong_method).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );

    let huge = c
        .post(format!("{base}/items"))
        .header("content-type", "application/json")
        .body(format!("{{\"name\":\"{}\",\"count\":1}}", "x".repeat(4096)))
        .send()
        .await
        .unwrap();
    assert_security_headers(&huge);
    let (status, body) = json_error(huge).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );

    let handler_error = c.get(format!("{base}/broken")).send().await.unwrap();
    assert_security_headers(&handler_error);
    let (status, body) = json_error(handler_error).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("already_exists"))
    );

    let panicked = c.get(format!("{base}/panic")).send().await.unwrap();
    assert_security_headers(&panicked);
    let (status, body) = json_error(panicked).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        !body.to_string().contains("handler bug"),
        "panic message leaked: {body}"
    );
}

#[tokio::test]
async fn streamed_body_over_the_limit_is_413_json() {
    let base = spawn_hardened(&[]).await;
    // No Content-Length: the limit is enforced while reading the stream.
    let chunks: Vec<Result<&'static [u8], std::io::Error>> = std::iter::once(&b"{\"name\":\""[..])
        .chain(std::iter::repeat_n(&b"xxxxxxxxxxxxxxxx"[..], 200))
        .map(Ok)
        .collect();
    let resp = client()
        .post(format!("{base}/items"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_security_headers(&resp);
    let (status, _) = json_error(resp).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn malformed_json_wrong_shape_and_content_type_are_json_errors() {
    let base = spawn_hardened(&[]).await;
    let c = client();
    let post = |body: &'static str, ct: &'static str| {
        c.post(format!("{base}/items"))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let (s, b) = json_error(post("{not json", "application/json").await.unwrap()).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_json"))
    );
    let (s, b) = json_error(post(r#"{"name":"a"}"#, "application/json").await.unwrap()).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_body"))
    );
    assert!(b["detail"].as_str().unwrap().contains("count"), "{b}");
    let (s, b) = json_error(
        post(r#"{"name":"a","count":"many"}"#, "application/json")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_body"))
    );
    let (s, b) = json_error(
        post(r#"{"name":"a","count":1}"#, "text/plain")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (s, b["error"].as_str()),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("unsupported_media_type")
        )
    );
    let ok = post(r#"{"name":"a","count":1}"#, "application/json")
        .await
        .unwrap();
    assert_eq!(ok.status(), 201);
}

#[tokio::test]
async fn request_timeout_is_503_json() {
    let base = spawn_hardened(&[]).await;
    let resp = client().get(format!("{base}/slow")).send().await.unwrap();
    assert_security_headers(&resp);
    // The timeout's bare 503 says when to come back, as the services' dependency-down ones do.
    assert_eq!(
        resp.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    let (status, _) = json_error(resp).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn request_id_kept_when_sane_replaced_when_not() {
    let base = spawn_hardened(&[]).await;
    let c = client();
    let resp = c
        .get(format!("{base}/ok"))
        .header("x-request-id", "abc-123.X_y:z")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "abc-123.X_y:z");

    let resp = c
        .get(format!("{base}/nope"))
        .header("x-request-id", "trace-404")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["x-request-id"],
        "trace-404",
        "errors carry it too"
    );

    for insane in ["has space", "<script>alert(1)</script>", &"a".repeat(200)] {
        let resp = c
            .get(format!("{base}/ok"))
            .header("x-request-id", insane)
            .send()
            .await
            .unwrap();
        let id = resp.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(id, insane);
        assert!(
            uuid::Uuid::parse_str(id).is_ok(),
            "a fresh UUID replaces {insane:?}, got {id}"
        );
    }
    let resp = c.get(format!("{base}/ok")).send().await.unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok());
}

#[tokio::test]
async fn cors_preflight_allowed_for_listed_origin_only() -> TestResult {
    let base = spawn_hardened(&[("CORS_ORIGINS", "https://admin.example.com")]).await;
    let c = client();
    let preflight = |origin: &'static str| {
        c.request(reqwest::Method::OPTIONS, format!("{base}/items"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,idempotency-key,x-csrf-token",
            )
            .send()
    };
    let allowed = preflight("https://admin.example.com").await?;
    assert!(allowed.status().is_success());
    let h = allowed.headers();
    assert_eq!(
        h["access-control-allow-origin"],
        "https://admin.example.com"
    );
    assert_eq!(h["access-control-allow-credentials"], "true");
    let methods = h["access-control-allow-methods"]
        .to_str()?
        .to_ascii_uppercase();
    for m in ["GET", "POST", "DELETE"] {
        assert!(methods.contains(m), "{methods}");
    }
    let headers = h["access-control-allow-headers"]
        .to_str()?
        .to_ascii_lowercase();
    let mut listed: Vec<&str> = headers.split(',').map(str::trim).collect();
    listed.sort_unstable();
    let mut contract = [
        "authorization",
        "content-type",
        "x-api-key",
        "x-csrf-token",
        "x-device-id",
        "idempotency-key",
        "x-request-id",
    ];
    contract.sort_unstable();
    assert_eq!(listed, contract, "exactly the contract's request headers");
    assert_security_headers(&allowed);

    // Nothing of CORS for an origin that is not listed, or for no origin at all.
    let no_cors = |resp: &reqwest::Response, what: &str| {
        let cors: Vec<_> = resp
            .headers()
            .keys()
            .filter(|name| name.as_str().starts_with("access-control-"))
            .collect();
        assert!(cors.is_empty(), "{what}: {cors:?}");
    };
    let refused = preflight("https://evil.example").await?;
    no_cors(&refused, "preflight of another origin");

    let simple = c
        .get(format!("{base}/ok"))
        .header("origin", "https://admin.example.com")
        .send()
        .await?;
    assert_eq!(
        simple.headers()["access-control-allow-origin"],
        "https://admin.example.com"
    );
    // An error from a panic is readable by the console too.
    let panicked = c
        .get(format!("{base}/panic"))
        .header("origin", "https://admin.example.com")
        .send()
        .await?;
    assert_eq!(panicked.status(), 500);
    assert_eq!(
        panicked.headers()["access-control-allow-origin"],
        "https://admin.example.com"
    );
    let exposed = simple.headers()["access-control-expose-headers"]
        .to_str()?
        .to_ascii_lowercase();
    for name in [
        "x-request-id",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
        "retry-after",
        "idempotent-replayed",
    ] {
        assert!(exposed.contains(name), "{name} missing from {exposed}");
    }
    let foreign = c
        .get(format!("{base}/ok"))
        .header("origin", "https://evil.example")
        .send()
        .await?;
    no_cors(&foreign, "request of another origin");
    let no_origin = c.get(format!("{base}/ok")).send().await?;
    no_cors(&no_origin, "request without an origin");
    Ok(())
}

/// An OPTIONS request that is not a preflight (no `Origin`, or no
/// `Access-Control-Request-Method`) gets the routes' JSON 405 whether CORS is on or off; before,
/// CORS on answered it 200 with an empty body.
#[tokio::test]
async fn options_that_is_no_preflight_is_405_json_with_or_without_cors() {
    let c = client();
    for pairs in [
        &[][..],
        &[("CORS_ORIGINS", "https://admin.example.com")][..],
    ] {
        let base = spawn_hardened(pairs).await;
        let bare = c
            .request(reqwest::Method::OPTIONS, format!("{base}/items"))
            .send()
            .await
            .unwrap();
        assert_security_headers(&bare);
        let (status, body) = json_error(bare).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{pairs:?}: {body}");
        assert_eq!(body["error"], "method_not_allowed", "{pairs:?}");
        let origin_only = c
            .request(reqwest::Method::OPTIONS, format!("{base}/items"))
            .header("origin", "https://admin.example.com")
            .send()
            .await
            .unwrap();
        assert_eq!(origin_only.status(), 405, "{pairs:?}");
    }
}

#[tokio::test]
async fn no_cors_headers_without_configured_origins() {
    let base = spawn_hardened(&[]).await;
    let resp = client()
        .request(reqwest::Method::OPTIONS, format!("{base}/items"))
        .header("origin", "https://admin.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn forwarded_for_believed_only_from_trusted_proxy() {
    let c = client();
    let untrusted = spawn_hardened(&[("TRUSTED_PROXIES", "10.0.0.0/8")]).await;
    let ip = c
        .get(format!("{untrusted}/ip"))
        .header("x-forwarded-for", "198.51.100.7")
        .send()
        .await
        .unwrap();
    assert_eq!(
        ip.text().await.unwrap(),
        "127.0.0.1",
        "spoofed header from an untrusted peer is ignored"
    );

    let trusted = spawn_hardened(&[("TRUSTED_PROXIES", "127.0.0.1/32")]).await;
    let ip = c
        .get(format!("{trusted}/ip"))
        .header("x-forwarded-for", "6.6.6.6, 198.51.100.7")
        .send()
        .await
        .unwrap();
    assert_eq!(
        ip.text().await.unwrap(),
        "198.51.100.7",
        "the hop the trusted proxy saw"
    );
    let ip = c.get(format!("{trusted}/ip")).send().await.unwrap();
    assert_eq!(ip.text().await.unwrap(), "127.0.0.1");
}

fn health_app(pg: sqlx::PgPool, redis_url: &str) -> Router {
    let redis = common::db::redis_pool(
        &SecretString::from(redis_url.to_owned()),
        Duration::from_millis(200),
        2,
    )
    .unwrap();
    harden(
        common::health::routes(vec![
            ReadinessCheck::postgres(pg),
            ReadinessCheck::redis(redis),
        ]),
        &http_config(&[]),
    )
}

fn common_test_pg_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/voketag_test".to_owned())
}

/// A pool on a new, migrated database (readiness also checks the schema). `common::testing`
/// is behind a feature this crate's own tests are not built with.
async fn migrated_pool() -> sqlx::PgPool {
    let admin = common_test_pg_url();
    let name = format!("voketag_t_{}", uuid::Uuid::new_v4().simple());
    let admin_pool = sqlx::PgPool::connect(&admin).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin_pool)
        .await
        .unwrap();
    admin_pool.close().await;
    let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
    let pool = common::db::pg_pool(
        &SecretString::from(format!("{base}/{name}")),
        "voketag-test",
        2,
        std::time::Duration::from_secs(60),
    )
    .unwrap();
    common::db::MIGRATOR.run(&pool).await.unwrap();
    pool
}

#[tokio::test]
async fn readyz_ok_with_real_dependencies_and_503_naming_dead_redis() {
    let c = client();
    let pg = migrated_pool().await;
    let (live, _t1) = support::serve(health_app(pg.clone(), "redis://127.0.0.1:6379")).await;
    let resp = c.get(format!("{live}/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["checks"]["postgres"], "ok");
    assert_eq!(body["checks"]["redis"], "ok");

    // Port 1 on loopback: nothing listens there.
    let (dead, _t2) = support::serve(health_app(pg, "redis://127.0.0.1:1")).await;
    let healthz = c.get(format!("{dead}/healthz")).send().await.unwrap();
    assert_eq!(healthz.status(), 200, "liveness does not depend on Redis");
    let resp = c.get(format!("{dead}/readyz")).send().await.unwrap();
    assert_security_headers(&resp);
    let (status, body) = json_error(resp).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["failing"], serde_json::json!(["redis"]));
    assert_eq!(body["checks"]["postgres"], "ok");

    let metrics = c.get(format!("{dead}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
}

#[tokio::test]
async fn graceful_shutdown_lets_in_flight_requests_finish() {
    let router = Router::new().route(
        "/work",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            "done"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = CancellationToken::new();
    let server = tokio::spawn(common::server::serve(listener, router, token.clone()));
    let in_flight = tokio::spawn(async move {
        reqwest::get(format!("http://{addr}/work"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    token.cancel();
    assert_eq!(in_flight.await.unwrap(), "done");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        reqwest::get(format!("http://{addr}/work")).await.is_err(),
        "no longer accepting"
    );
}

/// Whether the peer closes `read`'s connection within `limit` (what it sends first is read
/// and ignored).
async fn closed_within(read: &mut (impl tokio::io::AsyncRead + Unpin), limit: Duration) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// A server with one `/ok` route on a free port, reading request heads within `header_timeout`.
async fn ok_server(
    header_timeout: Duration,
) -> (
    std::net::SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let router = Router::new().route("/ok", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = CancellationToken::new();
    let server = tokio::spawn(common::server::serve_with(
        listener,
        router,
        token.clone(),
        header_timeout,
    ));
    (addr, token, server)
}

/// Sends a whole `GET /ok` on `stream`, keeping it open, and checks the answer.
async fn get_ok(stream: &mut tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    stream
        .write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = [0u8; 256];
    let n = stream.read(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nok"), "{answer}");
}

/// Slowloris: clients that connect and send nothing, or half a request's head, or one header
/// line now and then, each hold a connection and a file descriptor for as long as they like
/// unless the server bounds how long a request's head may take. With `axum::serve` (no timer on
/// hyper's connections) all of these stayed open for minutes.
#[tokio::test]
async fn connections_that_do_not_send_a_request_head_in_time_are_closed() {
    use tokio::io::AsyncWriteExt as _;
    use tokio::net::TcpStream;

    let limit = Duration::from_secs(1);
    let (addr, token, _server) = ok_server(limit).await;

    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial
        .write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let (mut trickle_read, mut trickle_write) =
        TcpStream::connect(addr).await.unwrap().into_split();
    let trickler = tokio::spawn(async move {
        let _ = trickle_write.write_all(b"GET /ok HTTP/1.1\r\n").await;
        for i in 0..40 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let line = format!("X-Trickle-{i}: still here\r\n");
            if trickle_write.write_all(line.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    // A whole request is answered, and its keep-alive connection then waits at most as long
    // for the next one.
    let mut whole = TcpStream::connect(addr).await.unwrap();
    get_ok(&mut whole).await;

    // Not cut before the bound (the head's wait began at most a few ms ago)...
    assert!(
        !closed_within(&mut silent, Duration::from_millis(300)).await,
        "a silent connection was closed long before the bound"
    );
    // ...but soon after it.
    let margin = Duration::from_secs(8);
    assert!(
        closed_within(&mut silent, margin).await,
        "a silent connection stayed open"
    );
    assert!(
        closed_within(&mut partial, margin).await,
        "half a request head stayed open"
    );
    assert!(
        closed_within(&mut trickle_read, margin).await,
        "a trickled request head stayed open"
    );
    assert!(
        closed_within(&mut whole, margin).await,
        "an idle keep-alive connection stayed open"
    );
    trickler.abort();
    token.cancel();
}

/// Shutdown closes a keep-alive connection that sits between requests at once, rather than
/// waiting for the drain timeout (10 s) or the header-read bound: a deploy must not wait on
/// clients that merely keep a connection open.
#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_at_once() {
    // The bound is the default's: shutdown must not wait for it either.
    let (addr, token, server) = ok_server(common::server::HEADER_READ_TIMEOUT).await;
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    get_ok(&mut idle).await;

    token.cancel();
    let stopped = tokio::time::timeout(Duration::from_secs(3), server).await;
    assert!(
        stopped.is_ok_and(|joined| joined.is_ok_and(|served| served.is_ok())),
        "serve still waiting on an idle keep-alive connection"
    );
    assert!(
        closed_within(&mut idle, Duration::from_secs(1)).await,
        "the idle connection is still open"
    );
}

/// Sends `request` on a new connection to `addr` as an HTTP client does (the whole request, then
/// the answer) and reads the answer until the server closes. Returns the answer's status, its
/// head's lines in lower case, and its body.
async fn raw_exchange(addr: &str, request: Vec<u8>) -> (u16, Vec<String>, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let exchange = async {
        stream.write_all(&request).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.map(|_| answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the server closes the connection after its answer")
        .unwrap_or_else(|e| panic!("sending the request or reading the answer failed: {e}"));
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a whole head");
    let mut lines = head.lines().map(str::to_ascii_lowercase);
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("status line {status_line}"));
    (status, lines.collect(), body.to_owned())
}

/// hyper answers a request head it cannot take (bad bytes, a URI over 64 KiB, a head over its
/// buffer or with too many headers) by itself, before the router. That answer was a bare status
/// line; it must be the contract's JSON error with the security headers and a request id like
/// every other response. hyper stops reading a head that is too large part way; the rest must
/// still be taken, or closing the connection resets it, and a client still sending its request
/// (16 MiB here, more than the socket buffers hold) then gets an error instead of the answer.
#[tokio::test]
async fn request_heads_hyper_refuses_get_the_contracts_json_error() {
    let base = spawn_hardened(&[]).await;
    let addr = base.trim_start_matches("http://").to_owned();
    let many_headers: String = (0..300).map(|i| format!("X-H{i}: v\r\n")).collect();
    let cases: [(&str, Vec<u8>, u16, &str); 6] = [
        (
            // Over hyper's URI bound (65,534 bytes), within the head bound (96 KiB).
            "a 70 KB URI",
            format!(
                "GET /ok?q={} HTTP/1.1\r\nHost: x\r\n\r\n",
                "a".repeat(70_000)
            )
            .into_bytes(),
            414,
            "uri_too_long",
        ),
        (
            "a control byte in a header",
            b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Odd: a\x01b\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            "a broken request line",
            b"GET  /ok HTTP/1.1 extra\r\nHost: x\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            "300 headers",
            format!("GET /ok HTTP/1.1\r\nHost: x\r\n{many_headers}\r\n").into_bytes(),
            431,
            "request_header_fields_too_large",
        ),
        (
            // Over `MAX_HEAD_BYTES`, within hyper's default buffer (about 400 KiB).
            "a 120 KB header",
            format!(
                "GET /ok HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "b".repeat(120_000)
            )
            .into_bytes(),
            431,
            "request_header_fields_too_large",
        ),
        (
            "a 16 MiB header",
            format!(
                "GET /ok HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
                "b".repeat(16 << 20)
            )
            .into_bytes(),
            431,
            "request_header_fields_too_large",
        ),
    ];
    for (what, request, status, code) in cases {
        let (got, head, body) = raw_exchange(&addr, request).await;
        assert_eq!(got, status, "{what}: {head:?} {body}");
        for (name, value) in SECURITY_HEADERS {
            let line = format!("{name}: {}", value.to_ascii_lowercase());
            assert!(head.contains(&line), "{what}: {line} missing in {head:?}");
        }
        for line in ["content-type: application/json", "connection: close"] {
            assert!(
                head.contains(&line.to_owned()),
                "{what}: {line} missing in {head:?}"
            );
        }
        let id = head
            .iter()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .unwrap_or_else(|| panic!("{what}: no request id in {head:?}"));
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{what}: request id {id}");
        let body: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
        assert_eq!(body["error"], code, "{what}: {body}");
        assert!(
            body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{what}: {body}"
        );
    }
    // The connection loop goes on serving, and the head bound holds a URI as long as hyper
    // takes, with headers.
    let r = client().get(format!("{base}/ok")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let long = format!("{base}/ok?q={}", "a".repeat(65_000));
    let r = client()
        .get(long)
        .header("x-filler", "f".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

/// A client that stops sending its body half-way, or trickles it, is answered 408 (its fault)
/// once the body's bound (half the request timeout here) has passed, not the request
/// timeout's 503 (a failure of the service, which the 5xx alerts count).
#[tokio::test]
async fn a_stalled_or_trickled_request_body_is_408_not_503() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let base = spawn_hardened(&[]).await;
    let addr = base.trim_start_matches("http://").to_owned();
    let head = "POST /items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                Content-Length: 100\r\n\r\n";
    for trickle in [false, true] {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(b"{\"name\":").await.unwrap();
        // For 1 s, a byte every 50 ms, or nothing (the request timeout is 300 ms).
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if trickle {
                stream.write_all(b" ").await.unwrap();
            }
        }
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
            .await
            .expect("an answer")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]).to_ascii_lowercase();
        assert!(
            answer.starts_with("http/1.1 408"),
            "trickle {trickle}: {answer}"
        );
        assert!(
            answer.contains("x-content-type-options: nosniff"),
            "{answer}"
        );
        assert!(
            answer.contains("\"error\":\"request_timeout\""),
            "trickle {trickle}: {answer}"
        );
    }
}

/// A route that answers before reading the body (413 for a declared length over the limit)
/// leaves the rest unread when hyper closes the connection. A client that sends its whole
/// request before reading (16 MiB, more than the socket buffers hold) must get the 413, not a
/// broken pipe: the server reads and discards the rest before closing.
#[tokio::test]
async fn a_client_still_sending_a_refused_body_gets_the_answer() {
    let base = spawn_hardened(&[]).await;
    let addr = base.trim_start_matches("http://");
    let body = "x".repeat(16 << 20);
    let request = format!(
        "POST /items HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (status, head, body) = raw_exchange(addr, request.into_bytes()).await;
    assert_eq!(status, 413, "{head:?} {body}");
    assert!(
        head.contains(&"x-content-type-options: nosniff".to_owned()),
        "{head:?}"
    );
    let body: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
    assert_eq!(body["error"], "payload_too_large", "{body}");
}
