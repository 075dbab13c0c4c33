//! `X-Request-ID`: the caller's when it is a sane token, else a new UUID; echoed on the response.

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use bytes::Bytes;
use tower_http::request_id::{MakeRequestId, RequestId};

/// The header name.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Whether a caller-supplied id may be kept: 1 to 128 of `A-Z a-z 0-9 - _ . :`.
pub fn is_sane(id: &[u8]) -> bool {
    (1..=128).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Drops an insane caller id so that `SetRequestId` replaces it with a fresh one.
pub fn drop_insane(mut req: Request) -> Request {
    let insane = req.headers().get_all(&X_REQUEST_ID).iter().count() > 1
        || req
            .headers()
            .get(&X_REQUEST_ID)
            .is_some_and(|v| !is_sane(v.as_bytes()));
    if insane {
        req.headers_mut().remove(&X_REQUEST_ID);
    }
    req
}

/// Makes UUID v4 request ids.
#[derive(Debug, Clone, Copy, Default)]
pub struct MakeUuid;

impl MakeRequestId for MakeUuid {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        // Hyphenated into a buffer on the stack: no `Display` machinery and no `String` on the
        // way to the header value (this runs for nearly every request). The buffer then becomes
        // the value's shared owner, so the copies for the request's extensions and the response
        // count references: from a copied slice, the first clone would allocate a second time.
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
        HeaderValue::from_maybe_shared(Bytes::from_owner(buf))
            .ok()
            .map(RequestId::new)
    }
}

#[cfg(test)]
mod tests {
    use super::is_sane;

    #[test]
    fn sanity() {
        assert!(is_sane(b"abc-123_x.y:z"));
        assert!(!is_sane(b""));
        assert!(!is_sane(b"has space"));
        assert!(!is_sane(b"<script>"));
        assert!(!is_sane(&[b'a'; 129]));
    }
}
