//! A failing readiness check is logged once, not on every probe: load balancers probe `/readyz`
//! every few seconds, and each failing probe logged a warning (45 in 45 s in an operator's
//! drill), with no line when the dependency came back. Now: one warning with the error, again
//! every 5 minutes while it fails, and one line when it passes again.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::health::{self, ReadinessCheck};
use support::LogBuffer;
use tower::ServiceExt as _;

const FAILED: &str = "readiness check failed";
const BACK: &str = "readiness check passes again";

#[tokio::test(start_paused = true)]
async fn a_failing_readiness_check_is_logged_once_then_every_five_minutes_and_when_it_is_back() {
    let logs = LogBuffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let up = Arc::new(AtomicBool::new(false));
    let check = {
        let up = up.clone();
        ReadinessCheck::new("queue", move || {
            let up = up.load(Ordering::SeqCst);
            async move {
                if up {
                    Ok(())
                } else {
                    Err("connection refused".to_owned())
                }
            }
        })
    };
    let app = health::routes(vec![check]);
    let probe = || async {
        app.clone()
            .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .unwrap()
            .status()
    };

    for _ in 0..10 {
        assert_eq!(probe().await, StatusCode::SERVICE_UNAVAILABLE);
        tokio::time::advance(std::time::Duration::from_secs(5)).await;
    }
    let text = logs.text();
    assert_eq!(text.matches(FAILED).count(), 1, "{text}");
    assert!(text.contains("connection refused"), "{text}");
    assert!(text.contains("queue"), "{text}");

    // Still failing 5 minutes later: said again, once.
    tokio::time::advance(std::time::Duration::from_secs(300)).await;
    for _ in 0..3 {
        assert_eq!(probe().await, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(logs.text().matches(FAILED).count(), 2, "{}", logs.text());

    up.store(true, Ordering::SeqCst);
    for _ in 0..3 {
        assert_eq!(probe().await, StatusCode::OK);
    }
    let text = logs.text();
    assert_eq!(text.matches(BACK).count(), 1, "{text}");
    assert_eq!(text.matches(FAILED).count(), 2, "{text}");
}
