//! The factory's JSON request bodies: arbitrary bytes into every request DTO and its validator
//! (never a panic; what a validator accepts is within the documented bounds; what it refuses
//! is a 400), and one arbitrary request through the real hardening stack and JSON extractor to
//! a route that runs the same validators (never a 5xx).
#![no_main]

use std::sync::OnceLock;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use common::http::Json;
use factory_service::FactoryError;
use factory_service::api_keys::{MAX_RATE_LIMIT_PER_MINUTE, NewApiKey};
use factory_service::auth::cookies::{self, CSRF_COOKIE, REFRESH_COOKIE};
use factory_service::auth::routes::LoginRequest;
use factory_service::auth::session::check_device_id;
use factory_service::catalog::batches::{MAX_QUANTITY, NewBatch};
use factory_service::catalog::products::NewProduct;
use factory_service::catalog::tags::{RevokeTag, check_tag_id};
use factory_service::path::Path;
use factory_service::users::{check_password, normalize_email};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use secrecy::ExposeSecret as _;
use voketag_fuzz::{FuzzRequest, assert_no_5xx, harden};

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    /// Fed to every DTO directly.
    body: &'a [u8],
    /// Sent to one route.
    route: Route,
    request: FuzzRequest<'a>,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Route {
    Products,
    Batches,
    Revoke,
    ApiKeys,
    Login,
    Refresh,
}

fn bounded(s: &str, max: usize) -> bool {
    !s.is_empty() && s.chars().count() <= max && s.trim() == s
}

fn refused(e: FactoryError) {
    assert_eq!(e.into_response().status(), StatusCode::BAD_REQUEST);
}

fn product(p: &NewProduct) -> Result<(), FactoryError> {
    let (name, sku) = p.validate()?;
    assert!(bounded(name, 200) && bounded(sku, 100));
    Ok(())
}

fn batch(b: &NewBatch) -> Result<(), FactoryError> {
    let quantity = b.validate()?;
    assert!((1..=MAX_QUANTITY).contains(&i64::from(quantity)));
    assert_eq!(i64::from(quantity), b.quantity);
    Ok(())
}

fn revoke(r: &RevokeTag) -> Result<(), FactoryError> {
    assert!(bounded(r.validate()?, 500));
    Ok(())
}

fn api_key(k: &NewApiKey) -> Result<(), FactoryError> {
    assert!(bounded(k.validate()?, 200));
    if let Some(rate) = k.rate_limit_per_minute {
        assert!((1..=MAX_RATE_LIMIT_PER_MINUTE).contains(&rate));
    }
    Ok(())
}

fn login(l: &LoginRequest) {
    if let Ok(email) = normalize_email(&l.email) {
        assert!(email.len() <= 254 && email.contains('@'));
    }
    let _ = check_password(l.password.expose_secret());
}

fn direct(body: &[u8]) {
    if let Ok(p) = serde_json::from_slice::<NewProduct>(body) {
        product(&p).unwrap_or_else(refused);
    }
    if let Ok(b) = serde_json::from_slice::<NewBatch>(body) {
        batch(&b).unwrap_or_else(refused);
    }
    if let Ok(r) = serde_json::from_slice::<RevokeTag>(body) {
        revoke(&r).unwrap_or_else(refused);
    }
    if let Ok(k) = serde_json::from_slice::<NewApiKey>(body) {
        api_key(&k).unwrap_or_else(refused);
    }
    if let Ok(l) = serde_json::from_slice::<LoginRequest>(body) {
        login(&l);
    }
}

fn device_id(headers: &HeaderMap) -> Result<(), FactoryError> {
    let id = headers.get("x-device-id").and_then(|v| v.to_str().ok());
    check_device_id(id)?;
    Ok(())
}

fn router() -> &'static Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    ROUTER.get_or_init(|| {
        let ok = || StatusCode::NO_CONTENT;
        harden(
            Router::new()
                .route(
                    "/v1/products",
                    post(async move |Json(p): Json<NewProduct>| product(&p).map(|()| ok())),
                )
                .route(
                    "/v1/batches",
                    post(async move |Json(b): Json<NewBatch>| batch(&b).map(|()| ok())),
                )
                .route(
                    "/v1/tags/{tag_id}/revoke",
                    post(
                        async move |Path(tag_id): Path<String>, Json(r): Json<RevokeTag>| {
                            check_tag_id(&tag_id)?;
                            revoke(&r).map(|()| ok())
                        },
                    ),
                )
                .route(
                    "/v1/api-keys",
                    post(async move |Json(k): Json<NewApiKey>| api_key(&k).map(|()| ok())),
                )
                .route(
                    "/v1/auth/login",
                    post(
                        async move |headers: HeaderMap, Json(l): Json<LoginRequest>| {
                            device_id(&headers)?;
                            login(&l);
                            Ok::<_, FactoryError>(ok())
                        },
                    ),
                )
                .route(
                    "/v1/auth/refresh",
                    post(async move |headers: HeaderMap| {
                        device_id(&headers)?;
                        let refresh = cookies::get(&headers, REFRESH_COOKIE);
                        let csrf = cookies::get(&headers, CSRF_COOKIE);
                        assert!(refresh.is_none_or(|v| !v.is_empty()));
                        assert!(csrf.is_none_or(|v| !v.is_empty()));
                        Ok::<_, FactoryError>(ok())
                    }),
                ),
        )
    })
}

fuzz_target!(|input: Input<'_>| {
    direct(input.body);
    let prefix = match input.route {
        Route::Products => "/v1/products",
        Route::Batches => "/v1/batches",
        Route::Revoke => "/v1/tags/",
        Route::ApiKeys => "/v1/api-keys",
        Route::Login => "/v1/auth/login",
        Route::Refresh => "/v1/auth/refresh",
    };
    if let Some(request) = input.request.build(prefix) {
        assert_no_5xx(router(), request);
    }
});
