//! ARI's error answers, as Asterisk 22 sends them (res/res_ari.c, main/http.c): a compact
//! `{"message": ...}` body with `Content-Type: application/json`, the status code, and for a
//! few answers the reason phrase Asterisk uses (bridges say "Not found", lower-case f).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Asterisk's `WWW-Authenticate` for ARI (ari.conf `auth_realm` default).
const CHALLENGE: &str = "Basic realm=\"Asterisk REST Interface\"";

pub fn ari_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache, no-store"));
    response
}

/// The same, with a reason phrase other than the standard one.
pub fn ari_error_with_reason(status: StatusCode, reason: &'static str, message: &str) -> Response {
    let mut response = ari_error(status, message);
    response.extensions_mut().insert(hyper::ext::ReasonPhrase::from_static(reason.as_bytes()));
    response
}

pub fn unauthorized() -> Response {
    let mut response = ari_error(StatusCode::UNAUTHORIZED, "Authentication required");
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(CHALLENGE));
    response
}

pub fn resource_not_found() -> Response {
    ari_error(StatusCode::NOT_FOUND, "Resource not found")
}

/// What Asterisk's core HTTP server answers for a path outside `/ari/`.
pub fn http_not_found() -> Response {
    let body = "<!DOCTYPE HTML PUBLIC \"-//IETF//DTD HTML 2.0//EN\">\r\n<html><head>\r\n<title>404 Not Found</title>\r\n</head><body>\r\n<h1>Not Found</h1>\r\n<p>The requested URL was not found on this server.</p>\r\n<hr />\r\n<address>scale-gateway</address>\r\n</body></html>\r\n";
    (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "text/html")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthorized_is_what_asterisk_sends() {
        let r = unauthorized();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], CHALLENGE);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
    }
}
