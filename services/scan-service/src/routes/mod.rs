//! The scan service's routes.

pub mod openapi;
pub mod scan;

use std::sync::Arc;

use axum::Router;

use crate::scan::Scanner;
use crate::timing::TimingLayer;

/// Shared state of the handlers.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The scan use case.
    pub scanner: Arc<Scanner>,
    /// `scan_requests_total` by status.
    pub requests: Arc<scan::RequestCounters>,
}

/// The API routes and their OpenAPI document (health routes are merged in by `startup`).
pub fn router(state: AppState, timing: TimingLayer) -> Router {
    Router::new()
        .merge(scan::router(timing))
        .route("/openapi.json", axum::routing::get(openapi::serve))
        .with_state(state)
}
