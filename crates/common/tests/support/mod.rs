//! What the common crate's integration tests share: starting an app on a random port.
// Each test file is its own crate and uses only some of these.
#![allow(dead_code)]

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use tokio_util::sync::CancellationToken;

/// Log output kept in memory, for `common::telemetry::init_with_writer`.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    /// What was written so far.
    pub fn text(&self) -> String {
        let bytes = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Serves `router` on a random loopback port; returns its base URL (`http://127.0.0.1:<port>`)
/// and the token that stops it.
pub async fn serve(router: Router) -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = CancellationToken::new();
    tokio::spawn(common::server::serve(listener, router, token.clone()));
    (format!("http://{addr}"), token)
}

/// [`serve`] behind the shared hardening stack, configured from an empty environment.
pub async fn serve_hardened(router: Router) -> (String, CancellationToken) {
    let config = common::CommonConfig::from_env(&common::Env::default(), "127.0.0.1:0")
        .expect("the default configuration is valid");
    serve(common::http::harden(router, &config.http)).await
}
