//! A connection's socket as hyper sees it: hyper's own answers to refused request heads become
//! the contract's, and closing lingers until the client has sent what it was sending.
//!
//! hyper answers a request head it cannot take by itself, before any service sees the request:
//! 400 for a malformed head (a bad byte in a header, a broken request line), 414 for a URI over
//! 65,534 bytes, 431 for a head larger than its read buffer or with more than 100 headers. That
//! answer is a status line, `content-length: 0` and `date`, and nothing else, while the contract
//! wants every response, errors included, to carry the JSON error body, the security headers and
//! an `X-Request-ID` (CONTRACT 3.6).
//!
//! hyper has no hook for that answer, so [`Socket`] wraps a connection's socket, recognises
//! the answer when hyper writes it (a whole head with one of those three statuses and no
//! `x-request-id`, which every response of the router has) and writes the contract's answer in
//! its place, with `connection: close`, since hyper closes the connection after it.
//!
//! hyper then drops the socket, often with part of the refused request still unread (it stops
//! reading at its buffer's limit, or at the first bad byte). The same happens when a route
//! answers before reading the whole body (413 for a body over the limit). Closing a socket with
//! unread data makes the kernel send a reset, and a client still sending its request then gets
//! a "broken pipe" or "connection reset" error instead of the answer. So a connection the server
//! closes before the client has closed its side is not closed at once: it stops sending, and
//! what the client still sends is read and thrown away until it closes its side, for at most
//! [`LINGER`] (a "lingering close", as Apache and nginx do it).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::http::{HeaderValue, Response, StatusCode, header};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};

use crate::http::error::{ErrorBody, default_error};
use crate::http::request_id::X_REQUEST_ID;
use crate::http::security_headers;

/// How long a client may go on sending after the server has closed its side of the connection.
pub const LINGER: Duration = Duration::from_secs(2);

/// A request header with an error of its own when its value holds a byte hyper refuses (a
/// control character), such as `Idempotency-Key` and `invalid_idempotency_key`: the client
/// gets that error rather than the generic `bad_request`.
#[derive(Debug, Clone, Copy)]
pub struct HeaderError {
    /// The header's name, lowercase.
    pub name: &'static str,
    /// The error code.
    pub error: &'static str,
    /// The human sentence.
    pub detail: &'static str,
}

/// A connection's socket as the server uses it: hyper's own answer to a refused request head is
/// replaced by the contract's, and the close lingers (see the module's documentation).
pub struct Socket<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// `None` only once dropped.
    inner: Option<S>,
    /// The contract's answer being written in place of hyper's.
    replacing: Option<Replacement>,
    /// Whether the client has closed its side (a read found the end): no need to linger then.
    peer_closed: bool,
    /// Headers with an error of their own (none: nothing below is looked at).
    header_errors: &'static [HeaderError],
    /// The listed header whose value, in the last read, holds a byte no header may carry.
    suspect: Option<HeaderError>,
}

struct Replacement {
    bytes: Vec<u8>,
    written: usize,
    /// The length of hyper's answer, reported as written once ours is.
    stands_for: usize,
}

impl<S> Socket<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Wraps a connection's socket.
    pub fn new(inner: S) -> Self {
        Self::with_header_errors(inner, &[])
    }

    /// Wraps a connection's socket; a head refused for a control character in one of
    /// `header_errors` gets that header's error.
    pub fn with_header_errors(inner: S, header_errors: &'static [HeaderError]) -> Self {
        Self {
            inner: Some(inner),
            replacing: None,
            peer_closed: false,
            header_errors,
            suspect: None,
        }
    }

    fn inner(&mut self) -> io::Result<Pin<&mut S>> {
        self.inner
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    /// Writes the rest of the replacement; done, it counts as hyper's answer written whole.
    fn poll_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(mut replacement) = self.replacing.take() else {
            return Poll::Ready(Ok(0));
        };
        while replacement.written < replacement.bytes.len() {
            let rest = &replacement.bytes[replacement.written..];
            let written = match self.inner()?.poll_write(cx, rest) {
                Poll::Ready(written) => written?,
                Poll::Pending => {
                    self.replacing = Some(replacement);
                    return Poll::Pending;
                }
            };
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            replacement.written += written;
        }
        Poll::Ready(Ok(replacement.stands_for))
    }

    /// Starts replacing `buf` if it is hyper's own answer to a refused head.
    fn recognise(&mut self, buf: &[u8]) -> bool {
        match refused_status(buf) {
            Some(status) => {
                let (code, detail) = self
                    .suspect
                    .take()
                    .filter(|_| status == StatusCode::BAD_REQUEST)
                    .map_or_else(|| default_error(status), |e| (e.error, e.detail));
                self.replacing = Some(Replacement {
                    bytes: answer(status, code, detail),
                    written: 0,
                    stands_for: buf.len(),
                });
                true
            }
            None => false,
        }
    }
}

impl<S> AsyncRead for Socket<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = ready!(this.inner()?.poll_read(cx, buf));
        if read.is_ok() && buf.filled().len() == before && buf.remaining() > 0 {
            this.peer_closed = true;
        }
        if !this.header_errors.is_empty() && read.is_ok() {
            // hyper refuses a head at the first bad byte, so the read that brought it is the
            // one to look into. A header name and its bad byte in two reads (rare) get the
            // generic answer.
            this.suspect = header_error(&buf.filled()[before..], this.header_errors);
        }
        Poll::Ready(read)
    }
}

impl<S> AsyncWrite for Socket<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.replacing.is_some() || this.recognise(buf) {
            return this.poll_replacement(cx);
        }
        this.inner()?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // hyper queues a head and the body's chunks as separate slices; its answer to a refused
        // head is a head alone.
        let first = bufs.iter().find(|buf| !buf.is_empty());
        if this.replacing.is_some() || first.is_some_and(|buf| this.recognise(buf)) {
            return this.poll_replacement(cx);
        }
        this.inner()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(S::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.replacing.is_some() {
            ready!(this.poll_replacement(cx))?;
        }
        this.inner()?.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.replacing.is_some() {
            ready!(this.poll_replacement(cx))?;
        }
        this.inner()?.poll_shutdown(cx)
    }
}

impl<S> Drop for Socket<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn drop(&mut self) {
        if self.peer_closed {
            return;
        }
        let (Some(mut socket), Ok(runtime)) =
            (self.inner.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        runtime.spawn(async move {
            let _ = tokio::time::timeout(LINGER, async {
                // Stop sending (the client reads the end of the answer), then take what the
                // client still sends until it closes its side.
                let _ = socket.shutdown().await;
                let mut discard = [0u8; 8192];
                while matches!(socket.read(&mut discard).await, Ok(n) if n > 0) {}
            })
            .await;
        });
    }
}

/// hyper's own answer is a status line, `content-length` and `date`: about 100 bytes. Every
/// answer of the router carries the security headers alone in more than this, so a longer head
/// is not looked into.
const LONGEST_REFUSAL: usize = 256;

/// The status of hyper's own answer to a refused head, if `buf` is exactly that: one whole head
/// (no body) with status 400, 414 or 431 and no `x-request-id`.
fn refused_status(buf: &[u8]) -> Option<StatusCode> {
    if buf.len() > LONGEST_REFUSAL {
        return None;
    }
    let status = match buf.strip_prefix(b"HTTP/1.1 ")?.get(..4)? {
        b"400 " => StatusCode::BAD_REQUEST,
        b"414 " => StatusCode::URI_TOO_LONG,
        b"431 " => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        _ => return None,
    };
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    if head_end != buf.len() {
        return None;
    }
    let has_request_id = buf[..head_end]
        .split(|&b| b == b'\n')
        .any(|line| line.len() > 13 && line[..13].eq_ignore_ascii_case(b"x-request-id:"));
    (!has_request_id).then_some(status)
}

/// A byte that no header value may hold (RFC 9110 5.5; httparse refuses it): a control
/// character other than tab. CR and LF end lines, so they are not counted.
fn is_refused_byte(b: u8) -> bool {
    (b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n')) || b == 0x7f
}

/// The error of the header whose line in `read` holds the first refused byte, if it is one of
/// `header_errors`.
fn header_error(read: &[u8], header_errors: &[HeaderError]) -> Option<HeaderError> {
    let bad = read.iter().position(|&b| is_refused_byte(b))?;
    let start = read[..bad]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let line = &read[start..bad];
    let name = &line[..line.iter().position(|&b| b == b':')?];
    header_errors
        .iter()
        .find(|e| name.eq_ignore_ascii_case(e.name.as_bytes()))
        .copied()
}

/// The contract's answer for `status` with error `code` and `detail`, as bytes on the wire.
fn answer(status: StatusCode, code: &str, detail: &str) -> Vec<u8> {
    let body = serde_json::to_vec(&ErrorBody {
        error: code.to_owned(),
        detail: detail.to_owned(),
    })
    .unwrap_or_default();
    let mut response = security_headers::apply(Response::new(()));
    let headers = response.headers_mut();
    let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut id);
    let date = chrono::Utc::now()
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string();
    for (name, value) in [
        (header::CONTENT_TYPE, "application/json"),
        (header::CONNECTION, "close"),
        (X_REQUEST_ID.clone(), id),
        (header::DATE, date.as_str()),
    ] {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));

    let mut bytes = Vec::with_capacity(512 + body.len());
    bytes.extend_from_slice(b"HTTP/1.1 ");
    bytes.extend_from_slice(status.as_str().as_bytes());
    bytes.push(b' ');
    bytes.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    bytes.extend_from_slice(b"\r\n");
    for (name, value) in response.headers() {
        bytes.extend_from_slice(name.as_str().as_bytes());
        bytes.extend_from_slice(b": ");
        bytes.extend_from_slice(value.as_bytes());
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(b"\r\n");
    bytes.extend_from_slice(&body);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_bare_refusal_is_recognised() {
        let bare = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        assert_eq!(refused_status(bare), Some(StatusCode::URI_TOO_LONG));
        assert_eq!(
            refused_status(b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n"),
            Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
        );
        // The router's own answers carry a request id, or a body, or another status.
        let ours = b"HTTP/1.1 400 Bad Request\r\nX-Request-Id: abc\r\n\r\n";
        assert_eq!(refused_status(ours), None);
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(refused_status(with_body), None);
        assert_eq!(refused_status(b"HTTP/1.1 404 Not Found\r\n\r\n"), None);
        assert_eq!(refused_status(b"HTTP/1.1 400 Bad Request\r\n"), None);
        assert_eq!(refused_status(b"{\"error\":\"x\"}"), None);
        // The router's answers are longer than any of hyper's (the security headers alone).
        let long = format!(
            "HTTP/1.1 400 Bad Request\r\nx-padding: {}\r\n\r\n",
            "p".repeat(300)
        );
        assert_eq!(refused_status(long.as_bytes()), None);
        assert!(
            String::from_utf8(answer(StatusCode::BAD_REQUEST, "bad_request", "x"))
                .is_ok_and(|a| a.len() > LONGEST_REFUSAL)
        );
    }

    #[test]
    fn the_replacement_is_the_contracts_error() {
        let (code, detail) = default_error(StatusCode::URI_TOO_LONG);
        let bytes = answer(StatusCode::URI_TOO_LONG, code, detail);
        let text = String::from_utf8(bytes).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{head}");
        for line in [
            "x-content-type-options: nosniff",
            "content-type: application/json",
            "connection: close",
            &format!("content-length: {}", body.len()),
        ] {
            assert!(head.contains(line), "{line} missing in {head}");
        }
        let body: ErrorBody = serde_json::from_str(body).expect("the contract's body");
        assert_eq!(body.error, "uri_too_long");
    }

    #[test]
    fn a_refused_byte_is_traced_to_its_header() {
        const ERRORS: &[HeaderError] = &[HeaderError {
            name: "idempotency-key",
            error: "invalid_idempotency_key",
            detail: "d",
        }];
        let found = |read: &[u8]| header_error(read, ERRORS).map(|e| e.error);
        assert_eq!(
            found(b"POST /v1/x HTTP/1.1\r\nHost: h\r\nIdempotency-Key: ab\x7fc\r\n"),
            Some("invalid_idempotency_key")
        );
        assert_eq!(
            found(b"POST /v1/x HTTP/1.1\r\nIDEMPOTENCY-KEY:\x01\r\n\r\n"),
            Some("invalid_idempotency_key")
        );
        // Another header, a bad byte in the request line, or none at all.
        assert_eq!(found(b"GET / HTTP/1.1\r\nX-Request-ID: a\x01\r\n"), None);
        assert_eq!(found(b"GET /a\x01b HTTP/1.1\r\n"), None);
        assert_eq!(found(b"GET / HTTP/1.1\r\nIdempotency-Key: a\tb\r\n"), None);
    }
}
