//! The two session cookies, exactly as CONTRACT 3.1 names and flags them, and reading them
//! back from a `Cookie` header.

use axum::http::{HeaderMap, HeaderValue, header};

/// The refresh token cookie (HttpOnly: scripts never see it).
pub const REFRESH_COOKIE: &str = "__Host-vt_refresh";
/// The CSRF cookie (readable by the console's script, which echoes it in `X-CSRF-Token`).
pub const CSRF_COOKIE: &str = "__Host-vt_csrf";

/// `Set-Cookie` values that store the refresh and CSRF tokens for `max_age_secs`.
pub fn set(refresh: &str, csrf: &str, max_age_secs: u64) -> [HeaderValue; 2] {
    [
        cookie(&format!(
            "{REFRESH_COOKIE}={refresh}; Path=/; Max-Age={max_age_secs}; HttpOnly; Secure; SameSite=Strict"
        )),
        cookie(&format!(
            "{CSRF_COOKIE}={csrf}; Path=/; Max-Age={max_age_secs}; Secure; SameSite=Strict"
        )),
    ]
}

/// `Set-Cookie` values that delete both cookies.
pub fn clear() -> [HeaderValue; 2] {
    [
        cookie(&format!(
            "{REFRESH_COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict"
        )),
        cookie(&format!(
            "{CSRF_COOKIE}=; Path=/; Max-Age=0; Secure; SameSite=Strict"
        )),
    ]
}

fn cookie(value: &str) -> HeaderValue {
    // Tokens are base64url and the rest is fixed text, so the value is always a valid header.
    HeaderValue::from_str(value).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The value of cookie `name` in the request's `Cookie` headers. A name sent twice is refused
/// (`None`): an attacker able to plant a cookie must not be able to shadow the real one.
pub fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut found = None;
    for value in headers.get_all(header::COOKIE) {
        let Ok(value) = value.to_str() else { continue };
        for pair in value.split(';') {
            let Some((k, v)) = pair.trim().split_once('=') else {
                continue;
            };
            if k == name {
                if found.is_some() {
                    return None;
                }
                found = Some(v);
            }
        }
    }
    found.filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_refuses_duplicates() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; __Host-vt_csrf=x.y; b=2".parse().unwrap(),
        );
        assert_eq!(get(&h, CSRF_COOKIE), Some("x.y"));
        assert_eq!(get(&h, REFRESH_COOKIE), None);
        h.append(header::COOKIE, "__Host-vt_csrf=z".parse().unwrap());
        assert_eq!(get(&h, CSRF_COOKIE), None);
    }

    #[test]
    fn flags() {
        let [r, c] = set("rt", "ct", 60);
        let r = r.to_str().unwrap();
        assert!(
            r.contains("HttpOnly")
                && r.contains("Secure")
                && r.contains("SameSite=Strict")
                && r.contains("Path=/")
        );
        let c = c.to_str().unwrap();
        assert!(!c.contains("HttpOnly") && c.contains("Secure"));
    }
}
