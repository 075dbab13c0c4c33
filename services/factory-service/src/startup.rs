//! Builds the factory service: pools, routes, layers, and the listener.

use std::net::SocketAddr;

use anyhow::Context as _;
use axum::Router;
use common::health::{self, ReadinessCheck};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::FactoryConfig;

/// A built factory service, bound to its listener and ready to serve.
pub struct Application {
    listener: TcpListener,
    router: Router,
}

impl Application {
    /// Connects (lazily) to the dependencies, builds the routes and binds `BIND_ADDR`
    /// (port 0 picks a free port: tests do that).
    pub async fn build(config: FactoryConfig) -> anyhow::Result<Self> {
        let pool = common::db::pg_pool(&config.common.database_url, 16)?;
        let redis = common::db::redis_pool(&config.common.redis_url, config.common.redis_timeout, 16)?;
        let router = Router::new().merge(health::routes(vec![
            ReadinessCheck::postgres(pool),
            ReadinessCheck::redis(redis),
        ]));
        let router = common::http::harden(router, &config.common.http);
        let listener = TcpListener::bind(config.common.bind_addr)
            .await
            .with_context(|| format!("binding {}", config.common.bind_addr))?;
        Ok(Self { listener, router })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown` is cancelled, then drains in-flight requests.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        common::server::serve(self.listener, self.router, shutdown)
            .await
            .context("serving HTTP")
    }
}
