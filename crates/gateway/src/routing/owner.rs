//! Finding the node that owns a resource: the ownership map first; on a miss every serving
//! node is asked at once and the first that has it is remembered. An owner that is no longer
//! serving means the resource is gone (its node left or died), as ARI's 404 says.

use axum::http::StatusCode;
use futures_util::stream::{FuturesUnordered, StreamExt};

use super::path::encode_segment;
use super::upstream::{send, Outgoing};
use crate::ari::errors::{ari_error, ari_error_with_reason};
use crate::owners::Kind;
use crate::pool::Node;
use crate::state::Gateway;
use axum::response::Response;

/// Where a node answers for the resource itself.
fn probe_path(kind: Kind, id: &str) -> String {
    let id = encode_segment(id);
    match kind {
        Kind::Channel => format!("channels/{id}"),
        Kind::Bridge => format!("bridges/{id}"),
        Kind::Playback => format!("playbacks/{id}"),
        Kind::Recording => format!("recordings/live/{id}"),
    }
}

/// ARI's answer for a resource no node has (res/ari/resource_*.c).
pub fn not_found(kind: Kind, method: &str) -> Response {
    match kind {
        Kind::Channel => ari_error(StatusCode::NOT_FOUND, "Channel not found"),
        // Bridge operations other than GET answer through find_bridge(), whose reason phrase
        // is "Not found".
        Kind::Bridge if method != "GET" => ari_error_with_reason(StatusCode::NOT_FOUND, "Not found", "Bridge not found"),
        Kind::Bridge => ari_error(StatusCode::NOT_FOUND, "Bridge not found"),
        Kind::Playback => ari_error(StatusCode::NOT_FOUND, "Playback not found"),
        Kind::Recording => ari_error(StatusCode::NOT_FOUND, "Recording not found"),
    }
}

/// The serving node that owns the resource, or `None` if no serving node has it.
pub async fn locate(gw: &Gateway, kind: Kind, id: &str) -> Option<Node> {
    if let Some(eid) = gw.owners.lookup(kind, id) {
        return match gw.pool.node(&eid) {
            Some(node) if node.serving() => Some(node),
            _ => {
                gw.owners.forget(kind, id);
                None
            }
        };
    }
    let node = ask(gw, &probe_path(kind, id)).await?;
    gw.owners.learn(kind, id, &node.eid);
    tracing::debug!(kind = kind.label(), id, node = %node.eid, "owner found by asking the pool");
    Some(node)
}

/// Asks every serving node whether it has `path` (a GET that answers 200); the first that
/// says yes wins.
pub async fn ask(gw: &Gateway, path: &str) -> Option<Node> {
    let question = Outgoing::get(path.to_string());
    let timeout = Some(gw.config.nodes.probe_timeout);
    let mut asking: FuturesUnordered<_> = gw
        .pool
        .serving()
        .into_iter()
        .map(|node| {
            let question = &question;
            async move {
                let has_it = send(gw, &node, question, timeout).await.is_ok_and(|a| a.status.is_success());
                (node, has_it)
            }
        })
        .collect();
    while let Some((node, has_it)) = asking.next().await {
        if has_it {
            return Some(node);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_name_the_resource_itself() {
        assert_eq!(probe_path(Kind::Channel, "1.2"), "channels/1.2");
        assert_eq!(probe_path(Kind::Recording, "a b"), "recordings/live/a%20b");
        assert_eq!(probe_path(Kind::Bridge, "x/.."), "bridges/x%2F..");
    }

    #[test]
    fn not_found_is_what_asterisk_says() {
        assert_eq!(not_found(Kind::Channel, "GET").status(), StatusCode::NOT_FOUND);
        let r = not_found(Kind::Bridge, "POST");
        assert_eq!(r.extensions().get::<hyper::ext::ReasonPhrase>().map(|r| r.as_bytes()), Some(&b"Not found"[..]));
    }
}
