//! A JSON body extractor whose rejections are the contract's JSON errors.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::error_response;

/// Like `axum::Json`, but a bad body answers `{"error","detail"}`: 415 without a JSON content
/// type or with a charset other than UTF-8 (JSON is UTF-8, RFC 8259), 413 over the size limit,
/// 408 for a body that did not arrive in time, 400 for malformed JSON or a body of the wrong
/// shape.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

/// The rejection of [`Json`].
#[derive(Debug)]
pub struct JsonError(Response);

impl IntoResponse for JsonError {
    fn into_response(self) -> Response {
        self.0
    }
}

impl From<JsonRejection> for JsonError {
    fn from(rejection: JsonRejection) -> Self {
        let response = match &rejection {
            JsonRejection::MissingJsonContentType(_) => error_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Send the body as application/json.",
            ),
            JsonRejection::JsonSyntaxError(_) => error_response(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                "The body is not valid JSON.",
            ),
            JsonRejection::JsonDataError(e) => {
                // serde's message names the field and the type expected, never a value.
                error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_body",
                    body_text(e.body_text()),
                )
            }
            JsonRejection::BytesRejection(_)
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                error_response(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "The request body is too large.",
                )
            }
            // Not arrived in time (408), or not readable (400).
            JsonRejection::BytesRejection(e) => super::body_deadline::unreadable_body(e),
            _ => error_response(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "The request body could not be read.",
            ),
        };
        Self(response)
    }
}

fn body_text(text: String) -> String {
    // "Failed to deserialize the JSON body into the target type: missing field `sku` at line 1 column 15"
    let tail = text
        .rsplit_once("target type: ")
        .map_or(text.as_str(), |(_, t)| t);
    let mut detail = format!(
        "The body does not have the expected shape: {}.",
        in_plain_words(&without_type_names(tail))
    );
    // The message may quote the caller's own text (an unknown field's name): cut at a
    // character boundary.
    detail.truncate(crate::text::truncated(&detail, MAX_DETAIL).len());
    detail
}

/// Longest `detail` of a body error, in bytes.
const MAX_DETAIL: usize = 300;

/// serde names the Rust type it expected ("expected struct LoginRequest with 2 elements");
/// the caller only needs to know an object was expected.
fn without_type_names(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("struct ") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "struct ".len()..];
        let name_end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if name_end == 0 {
            out.push_str("struct ");
            rest = after;
            continue;
        }
        let mut tail = &after[name_end..];
        // "… with 2 elements" counts the struct's fields when a sequence was sent instead.
        if let Some(count) = tail.strip_prefix(" with ") {
            let digits = count
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(count.len());
            if digits > 0 {
                let words = &count[digits..];
                tail = words
                    .strip_prefix(" elements")
                    .or_else(|| words.strip_prefix(" element"))
                    .unwrap_or(tail);
            }
        }
        out.push_str("a JSON object");
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// serde names Rust's number types ("invalid type: string \"x\", expected u32"); the caller
/// only needs to know a number was expected. A route that takes a bounded number reads it as an
/// `i64` and says the bounds itself.
fn in_plain_words(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("expected ") {
        let (head, after) = rest.split_at(at + "expected ".len());
        out.push_str(head);
        let end = after
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(after.len());
        let words = match &after[..end] {
            "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => Some("an integer"),
            "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => Some("an integer"),
            "f32" | "f64" => Some("a number"),
            _ => None,
        };
        match words {
            Some(words) => {
                out.push_str(words);
                rest = &after[end..];
            }
            None => rest = after,
        }
    }
    out.push_str(rest);
    out
}

impl<S, T> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = JsonError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if declares_other_charset(req.headers()) {
            return Err(JsonError(error_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Send the body as application/json in UTF-8.",
            )));
        }
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

/// Whether the `Content-Type` names a charset other than UTF-8 (`application/json;
/// charset=latin1`). Such a body would be read as UTF-8 all the same, so it is refused rather
/// than misread; no charset, or `utf-8` in any case, is fine.
fn declares_other_charset(headers: &HeaderMap) -> bool {
    // A content type that does not parse is axum's to refuse as not JSON.
    let Some(mime) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<mime::Mime>().ok())
    else {
        return false;
    };
    // mime compares a charset's value without regard to case.
    mime.get_param(mime::CHARSET)
        .is_some_and(|charset| charset != mime::UTF_8 && charset != "utf8")
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::extract::FromRequest;
    use axum::http::{Request, StatusCode};
    use axum::response::IntoResponse;

    use super::{Json, body_text};

    async fn status_of(content_type: &str) -> StatusCode {
        let request = Request::post("/")
            .header("content-type", content_type)
            .body(Body::from(r#"{"name":"x"}"#))
            .expect("a request");
        match Json::<serde_json::Value>::from_request(request, &()).await {
            Ok(_) => StatusCode::OK,
            Err(rejection) => rejection.into_response().status(),
        }
    }

    #[tokio::test]
    async fn a_charset_other_than_utf8_is_refused_as_the_wrong_media_type() {
        for content_type in [
            "application/json; charset=latin1",
            "application/json; charset=ISO-8859-1",
            "application/json;charset=\"utf-16\"",
        ] {
            assert_eq!(
                status_of(content_type).await,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{content_type}"
            );
        }
        for content_type in [
            "application/json",
            "application/json; charset=utf-8",
            "application/json; charset=UTF-8",
            "application/json;charset=\"utf8\"",
        ] {
            assert_eq!(
                status_of(content_type).await,
                StatusCode::OK,
                "{content_type}"
            );
        }
    }

    const PREFIX: &str = "Failed to deserialize the JSON body into the target type: ";

    #[test]
    fn number_types_are_named_in_plain_words() {
        let detail = body_text(format!(
            "{PREFIX}quantity: invalid type: string \"many\", expected i64 at line 1 column 9"
        ));
        assert_eq!(
            detail,
            "The body does not have the expected shape: quantity: invalid type: string \"many\", \
             expected an integer at line 1 column 9."
        );
        let detail = body_text(format!(
            "{PREFIX}count: invalid value: integer `-1`, expected u32 at line 1 column 30"
        ));
        assert!(detail.contains("expected an integer at line"), "{detail}");
        let detail = body_text(format!(
            "{PREFIX}ratio: invalid type: string \"x\", expected f64"
        ));
        assert!(detail.ends_with("expected a number."), "{detail}");
    }

    #[test]
    fn other_expectations_are_left_as_they_are() {
        for message in [
            "name: invalid type: integer `1`, expected a string at line 1 column 9",
            "missing field `sku` at line 1 column 15",
            "expected u32x at line 1",
            "unknown field `u32`, expected `name` or `sku`",
        ] {
            let detail = body_text(format!("{PREFIX}{message}"));
            assert_eq!(
                detail,
                format!("The body does not have the expected shape: {message}.")
            );
        }
    }
}
