//! A request's parameters. ARI takes them from the query string and, for JSON bodies, from the
//! body's top-level fields; routing reads a few of them (ids a client chooses, `originator`,
//! the placement hint `ast_id`) and the forwarded query drops what is the gateway's alone.

use crate::ari::auth::query_param;

/// Query parameters that never reach a node: the placement hint and the client's credentials
/// (nodes are reached with their own).
const GATEWAY_ONLY: [&str; 2] = ["ast_id", "api_key"];

pub struct Params<'a> {
    query: &'a str,
    body: Option<serde_json::Map<String, serde_json::Value>>,
}

impl<'a> Params<'a> {
    pub fn new(query: Option<&'a str>, content_type: Option<&str>, body: &[u8]) -> Params<'a> {
        let json = content_type.is_some_and(|c| c.trim_start().starts_with("application/json"));
        let body = if json && !body.is_empty() { serde_json::from_slice(body).ok() } else { None };
        Params { query: query.unwrap_or(""), body }
    }

    /// The parameter, from the query string first, else from a JSON body.
    pub fn get(&self, name: &str) -> Option<String> {
        if let Some(v) = query_param(self.query, name) {
            return Some(v);
        }
        match self.body.as_ref()?.get(name)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Null => None,
            other => Some(other.to_string()),
        }
        .filter(|v| !v.is_empty())
    }

    /// A comma-separated list parameter (`channel=a,b`, `eventSource=...`).
    pub fn list(&self, name: &str) -> Vec<String> {
        self.get(name).map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()).unwrap_or_default()
    }

    /// The query string to forward (raw, as the client encoded it), without gateway-only
    /// parameters and without `drop`.
    pub fn forwarded_query(&self, drop: &[&str]) -> String {
        self.query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .filter(|pair| {
                let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
                let key = percent_encoding::percent_decode_str(key).decode_utf8_lossy();
                !GATEWAY_ONLY.contains(&key.as_ref()) && !drop.contains(&key.as_ref())
            })
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// Encodes a query value (for queries the gateway writes itself).
pub fn encode_value(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_wins_over_body_and_lists_split() {
        let body = br#"{"channelId":"from-body","otherChannelId":"o","timeout":30}"#;
        let p = Params::new(Some("channelId=q&channel=a,%20b,"), Some("application/json; charset=utf-8"), body);
        assert_eq!(p.get("channelId").as_deref(), Some("q"));
        assert_eq!(p.get("otherChannelId").as_deref(), Some("o"));
        assert_eq!(p.get("timeout").as_deref(), Some("30"));
        assert_eq!(p.list("channel"), ["a", "b"]);
        assert_eq!(p.get("missing"), None);
    }

    #[test]
    fn a_body_that_is_not_json_is_not_read() {
        let p = Params::new(None, Some("text/plain"), br#"{"channelId":"x"}"#);
        assert_eq!(p.get("channelId"), None);
    }

    #[test]
    fn gateway_only_parameters_are_not_forwarded() {
        let p = Params::new(Some("endpoint=Local%2F1%40x&ast_id=02:00&api_key=app:secret&app=a"), None, b"");
        assert_eq!(p.forwarded_query(&[]), "endpoint=Local%2F1%40x&app=a");
        assert_eq!(p.forwarded_query(&["app"]), "endpoint=Local%2F1%40x");
        assert_eq!(Params::new(Some("%61st_id=x"), None, b"").forwarded_query(&[]), "");
    }
}
