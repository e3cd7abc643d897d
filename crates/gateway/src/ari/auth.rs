//! Client authentication, as ARI does it (res/res_ari.c): HTTP Basic if the request has an
//! `Authorization` header, otherwise the `api_key=user:password` query parameter (raw or
//! percent-encoded). Wrong or missing credentials get ARI's 401. Credentials are compared in
//! constant time, and every account is compared, so timing tells nothing about which matched.

use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::Response;
use base64::Engine;
use subtle::ConstantTimeEq;

use super::errors::{ari_error, unauthorized};
use crate::config::Client;

/// The credentials a request carries, if any.
fn credentials(headers: &HeaderMap, query: Option<&str>) -> Option<(String, String)> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        // As in Asterisk: a present Authorization header is the only source, even if bad.
        let text = value.to_str().ok()?;
        let (scheme, encoded) = text.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
        let decoded = String::from_utf8(decoded).ok()?;
        let (user, password) = decoded.split_once(':')?;
        return Some((user.to_string(), password.to_string()));
    }
    let api_key = query_param(query?, "api_key")?;
    let (user, password) = api_key.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// The first value of a query parameter, percent-decoded (`+` is a space, as in forms).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(key) == name).then(|| decode(value))
    })
}

fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(&text.replace('+', " ")).decode_utf8_lossy().into_owned()
}

fn matches(client: &Client, user: &str, password: &str) -> bool {
    let user_ok = client.user.as_bytes().ct_eq(user.as_bytes());
    let password_ok = client.password.as_bytes().ct_eq(password.as_bytes());
    bool::from(user_ok & password_ok)
}

/// The account the request authenticates as, or the answer to send instead: 401 for wrong
/// or missing credentials, 403 for a read-only account that tries to change something.
pub fn authenticate<'a>(clients: &'a [Client], method: &Method, headers: &HeaderMap, query: Option<&str>) -> Result<&'a Client, Response> {
    let Some((user, password)) = credentials(headers, query) else { return Err(unauthorized()) };
    let mut found = None;
    for client in clients {
        if matches(client, &user, &password) && found.is_none() {
            found = Some(client);
        }
    }
    let client = found.ok_or_else(unauthorized)?;
    if client.read_only && method != Method::GET && method != Method::OPTIONS {
        return Err(ari_error(StatusCode::FORBIDDEN, "Write access denied"));
    }
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn clients() -> Vec<Client> {
        vec![Client { user: "app".into(), password: "s3cr:et".into(), read_only: false }, Client { user: "ro".into(), password: "x".into(), read_only: true }]
    }

    fn basic(user_pass: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(user_pass));
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(&v).unwrap());
        h
    }

    #[test]
    fn basic_and_api_key_are_accepted() {
        let c = clients();
        assert_eq!(authenticate(&c, &Method::GET, &basic("app:s3cr:et"), None).unwrap().user, "app");
        assert_eq!(authenticate(&c, &Method::GET, &HeaderMap::new(), Some("app=x&api_key=app:s3cr:et")).unwrap().user, "app");
        assert_eq!(authenticate(&c, &Method::GET, &HeaderMap::new(), Some("api_key=app%3As3cr%3Aet")).unwrap().user, "app");
    }

    #[test]
    fn wrong_missing_or_shadowed_credentials_get_401() {
        let c = clients();
        for (headers, query) in
            [(basic("app:wrong"), None), (HeaderMap::new(), None), (HeaderMap::new(), Some("api_key=app:wrong")), (basic("app:wrong"), Some("api_key=app:s3cr:et")), (basic("nobody"), None)]
        {
            let r = authenticate(&c, &Method::GET, &headers, query).unwrap_err();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{headers:?} {query:?}");
        }
    }

    #[test]
    fn read_only_accounts_may_only_read() {
        let c = clients();
        assert!(authenticate(&c, &Method::GET, &basic("ro:x"), None).is_ok());
        assert_eq!(authenticate(&c, &Method::POST, &basic("ro:x"), None).unwrap_err().status(), StatusCode::FORBIDDEN);
    }
}
