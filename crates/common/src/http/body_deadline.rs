//! A request body must arrive within a bound once the handler starts reading it. A client that
//! stops sending half-way is answered 408 `request_timeout`, its own fault, rather than
//! waiting out the request timeout and getting 503: that answer says the service failed, and
//! it counts towards the 5xx ratio the alerts watch, so a few slow clients could page on-call.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{Request, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Sleep;

use super::error::error_response;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a request body may take, from when it is first read: half the request timeout, at
/// most 10 s. A body slower than that is a stalled or trickling client; the service's own
/// slowness (the rest of the request timeout) still gets 503.
pub fn body_timeout(request_timeout: Duration) -> Duration {
    (request_timeout / 2).min(Duration::from_secs(10))
}

/// Request mapper: bounds the body by `timeout` (see [`body_timeout`]).
pub fn bound<B>(request: Request<B>, timeout: Duration) -> Request<Deadline<B>> {
    request.map(|body| Deadline {
        body,
        timeout,
        sleep: None,
    })
}

/// A request body that fails with [`BodyTimedOut`] when it has not ended within its timeout of
/// being first polled. A body without data is never polled, so a GET costs no timer.
pub struct Deadline<B> {
    body: B,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<B> HttpBody for Deadline<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        // What has arrived is taken first, even past the deadline.
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let timeout = this.timeout;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut)))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The error of a [`Deadline`] body whose time ran out.
#[derive(Debug)]
pub struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive in time")
    }
}

impl std::error::Error for BodyTimedOut {}

/// The answer to a request whose body could not be read, by what `error` (or an error behind
/// it) says: 408 when the body did not arrive in time, 413 when it was too large, else 400.
pub fn unreadable_body(error: &(dyn std::error::Error + 'static)) -> Response {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<BodyTimedOut>() {
            return error_response(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "The request body did not arrive in time.",
            );
        }
        if e.is::<http_body_util::LengthLimitError>() {
            return error_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "The request body is too large.",
            );
        }
        cause = e.source();
    }
    error_response(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "The request body could not be read.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_half_the_request_timeout_at_most_10_s() {
        assert_eq!(
            body_timeout(Duration::from_secs(30)),
            Duration::from_secs(10)
        );
        assert_eq!(body_timeout(Duration::from_secs(4)), Duration::from_secs(2));
    }

    #[tokio::test]
    async fn causes_are_found_behind_other_errors() {
        let status = |e: &(dyn std::error::Error + 'static)| unreadable_body(e).status();
        let timed_out = axum::Error::new(BodyTimedOut);
        assert_eq!(status(&timed_out), StatusCode::REQUEST_TIMEOUT);
        let too_large = axum::body::to_bytes(axum::body::Body::from("ab"), 1).await;
        assert_eq!(
            too_large.err().map(|e| status(&e)),
            Some(StatusCode::PAYLOAD_TOO_LARGE)
        );
        assert_eq!(
            status(&std::io::Error::other("reset")),
            StatusCode::BAD_REQUEST
        );
    }
}
