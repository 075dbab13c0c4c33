//! Serving HTTP/1.1 with hyper: a bound on how long a connection may take to send a request's
//! head, and graceful shutdown (stop accepting on the signal, drain in-flight requests for up
//! to [`DRAIN_TIMEOUT`], then return).
//!
//! `axum::serve` sets no timer on hyper's connections, so a client that connected and sent
//! nothing, or half a request, or one header line every few seconds, held its connection (and
//! a file descriptor) for as long as it liked: enough such clients exhaust the process's
//! descriptors and nothing else is served (slowloris).
//!
//! A request head that hyper refuses by itself (malformed, URI or head too long) gets the
//! contract's JSON error and security headers rather than hyper's bare status line, and a
//! connection closed while its client is still sending lingers so that the client gets the
//! answer rather than a reset ([`socket`]).

mod socket;

use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::Service as _;

pub use socket::{HeaderError, LINGER, Socket};

/// How long in-flight requests may take to finish after shutdown starts.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection may take to send a request's head (request line and headers), counted
/// from when the server starts waiting for it. It also bounds how long an idle keep-alive
/// connection waits for its next request. Request bodies and the work on a request are bounded
/// by the request timeout layer (`REQUEST_TIMEOUT_SEC`), not by this.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest request head (request line and headers) a connection may send; a larger one is
/// answered 431. It is also the most a connection buffers while it waits for its head: with
/// hyper's default (about 400 KiB), a thousand clients each sending most of a head and then
/// nothing held 400 MiB until their header-read bound ran out. It holds a URI of hyper's own
/// maximum (65,534 bytes, else 414) and its headers.
pub const MAX_HEAD_BYTES: usize = 96 * 1024;

/// Serves `router` on `listener` until `shutdown` is cancelled, then drains.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_with(listener, router, shutdown, HEADER_READ_TIMEOUT).await
}

/// [`serve`], with `header_errors`: headers whose malformed value (a control character, which
/// hyper refuses before any route sees the request) has an error of its own.
pub async fn serve_with_header_errors(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    header_errors: &'static [HeaderError],
) -> std::io::Result<()> {
    serve_connections(
        listener,
        router,
        shutdown,
        HEADER_READ_TIMEOUT,
        header_errors,
    )
    .await
}

/// [`serve`] with another bound on reading a request's head (tests use a short one).
pub async fn serve_with(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    header_timeout: Duration,
) -> std::io::Result<()> {
    serve_connections(listener, router, shutdown, header_timeout, &[]).await
}

async fn serve_connections(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    header_timeout: Duration,
    header_errors: &'static [HeaderError],
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        // hyper's default `half_close(false)` is kept: the end of a client's input is taken for
        // the client gone, and its request is dropped, its work cancelled (an abandoned
        // verification stops at once; the factory runs the writes it must finish, keyed writes,
        // batch creates and decided login attempts, in tasks of their own). A client that
        // half-closes after sending its request (RFC 9112 9.6 allows it; `printf ... | nc` does
        // it) therefore gets no answer.
        .max_buf_size(MAX_HEAD_BYTES);
    // Every connection task holds a receiver; when all are gone, every connection has closed.
    let (open_tx, open_rx) = tokio::sync::watch::channel(());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // The client gave up before we took its connection: nothing to do.
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors, typically; accepting again at once would spin.
                    tracing::error!(error = %e, "accepting a connection failed; retrying in 1 s");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        () = shutdown.cancelled() => break,
                    }
                }
            },
            () = shutdown.cancelled() => break,
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut request = request.map(axum::body::Body::new);
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().call(request)
        });
        let socket = Socket::with_header_errors(stream, header_errors);
        let connection = http.serve_connection(TokioIo::new(socket), service);
        let stop = shutdown.clone();
        let open = open_rx.clone();
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let outcome = tokio::select! {
                outcome = connection.as_mut() => outcome,
                () = stop.cancelled() => {
                    // Idle connections close now; one with a request in flight after its answer.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = outcome {
                // A client going away or sending garbage is its business, not an error of ours.
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
            drop(open);
        });
    }
    // No longer accepting: new connections are refused from here on.
    drop(listener);
    drop(open_rx);
    if tokio::time::timeout(DRAIN_TIMEOUT, open_tx.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open {:?} after shutdown began (requests in flight, or clients \
             still sending a request's head); exiting anyway",
            DRAIN_TIMEOUT
        );
    }
    Ok(())
}

/// Errors of one connection that came and went before it was accepted.
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Cancels `token` on SIGTERM or SIGINT. On unix the handlers are in place when this returns
/// (call it before start-up's slow steps): a signal from then on cancels `token` rather than
/// killing the process. Elsewhere Ctrl-C is listened for once the task first runs.
pub fn cancel_on_signal(token: CancellationToken) {
    #[cfg(unix)]
    let (mut term, mut int) = {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind, name: &'static str| {
            signal(kind)
                .inspect_err(|e| tracing::error!(error = %e, "cannot listen for {name}"))
                .ok()
        };
        (
            listen(SignalKind::terminate(), "SIGTERM"),
            listen(SignalKind::interrupt(), "SIGINT"),
        )
    };
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let received = async |s: &mut Option<tokio::signal::unix::Signal>| match s {
                Some(s) => s.recv().await,
                None => std::future::pending().await,
            };
            tokio::select! {
                _ = received(&mut int) => tracing::info!("SIGINT received; shutting down"),
                _ = received(&mut term) => tracing::info!("SIGTERM received; shutting down"),
            }
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("Ctrl-C received; shutting down");
        }
        token.cancel();
    });
}
