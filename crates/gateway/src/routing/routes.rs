//! Which way each ARI request goes, from its method and path (Asterisk 22's REST API,
//! rest-api/api-docs/*.json): to the node owning the resource it names, to a node chosen for a
//! new resource, to every node (pool-wide reads, node-wide writes), or to any one node.

use crate::owners::Kind;

use super::merge::Merge;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// To the node owning the resource whose id is path segment `index`.
    Owner(Kind, usize),
    /// A new resource (originate, create, externalMedia, new bridge): placed on a node. When
    /// the client chose an id (`id_param`, or path segment `id_index`) that the gateway knows,
    /// the owner answers (with its 409, as one Asterisk would).
    Create { kind: Kind, id_param: &'static str, id_index: Option<usize> },
    /// `POST /bridges/{bridgeId}`: updates the bridge where it exists, else creates it.
    OwnerOrCreate(Kind, usize),
    /// `addChannel` / `removeChannel` of the bridge named by segment `index`: channels of
    /// other nodes join through a helper leg.
    Members { index: usize, adding: bool },
    /// `DELETE /bridges/{id}`: its helper legs go first (remote members leave it), then the
    /// owner destroys it.
    DestroyBridge(usize),
    /// Asked of every serving node, answers merged.
    Merge(Merge),
    /// Node-wide state (global variables, modules, custom device states, mailboxes, event
    /// filters): changed on every serving node so the pool stays one Asterisk.
    Broadcast(Option<Merge>),
    /// A stored recording (a file on one node's disk), named by path segment `index`.
    StoredRecording(usize),
    /// `/applications/{app}/subscription`: each event source to the node(s) it lives on.
    Subscription,
    /// `POST /events/user/{eventName}`: to the node of its channel/bridge source, if any.
    UserEvent,
    /// Anything node-local and the same everywhere (asterisk/info, sounds, ...), and paths
    /// ARI does not know (the node gives its own 404/405).
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub action: Action,
    /// What to learn from a successful answer: the id (`name` for recordings) of the object
    /// it carries, owned by the node that answered.
    pub learn: Option<Kind>,
}

fn route(action: Action) -> Route {
    Route { action, learn: None }
}

fn learning(action: Action, kind: Kind) -> Route {
    Route { action, learn: Some(kind) }
}

/// The route of a request; `s` are the decoded path segments after `/ari/`.
pub fn classify(method: &str, s: &[&str]) -> Route {
    use Action::*;
    use Kind::*;
    let write = method != "GET" && method != "HEAD" && method != "OPTIONS";
    match (method, s) {
        // ARI answers OPTIONS with the Allow header of the path, the same on every node.
        ("OPTIONS", _) => route(Any),
        ("GET", ["channels"]) => route(Merge(super::merge::Merge::Channels)),
        ("POST", ["channels"] | ["channels", "create"]) => learning(Create { kind: Channel, id_param: "channelId", id_index: None }, Channel),
        ("POST", ["channels", "externalMedia"]) => learning(Create { kind: Channel, id_param: "channelId", id_index: None }, Channel),
        ("POST", ["channels", _]) => learning(Create { kind: Channel, id_param: "channelId", id_index: Some(1) }, Channel),
        ("POST", ["channels", _, "snoop", ..]) => learning(Owner(Channel, 1), Channel),
        ("POST", ["channels", _, "play", ..]) => learning(Owner(Channel, 1), Playback),
        ("POST", ["channels", _, "record"]) => learning(Owner(Channel, 1), Recording),
        (_, ["channels", _, ..]) => route(Owner(Channel, 1)),

        ("GET", ["bridges"]) => route(Merge(super::merge::Merge::Bridges)),
        ("POST", ["bridges"]) => learning(Create { kind: Bridge, id_param: "bridgeId", id_index: None }, Bridge),
        ("POST", ["bridges", _]) => learning(OwnerOrCreate(Bridge, 1), Bridge),
        ("POST", ["bridges", _, "addChannel"]) => route(Members { index: 1, adding: true }),
        ("POST", ["bridges", _, "removeChannel"]) => route(Members { index: 1, adding: false }),
        ("DELETE", ["bridges", _]) => route(DestroyBridge(1)),
        ("POST", ["bridges", _, "play", ..]) => learning(Owner(Bridge, 1), Playback),
        ("POST", ["bridges", _, "record"]) => learning(Owner(Bridge, 1), Recording),
        (_, ["bridges", _, ..]) => route(Owner(Bridge, 1)),

        (_, ["playbacks", _, ..]) => route(Owner(Playback, 1)),
        ("GET", ["recordings", "stored"]) => route(Merge(super::merge::Merge::StoredRecordings)),
        (_, ["recordings", "stored", _, ..]) => route(StoredRecording(2)),
        (_, ["recordings", "live", _, ..]) => route(Owner(Recording, 2)),

        ("GET", ["endpoints"] | ["endpoints", _]) => route(Merge(super::merge::Merge::Endpoints)),
        ("GET", ["endpoints", _, _]) => route(Merge(super::merge::Merge::Endpoint)),

        ("GET", ["applications"]) => route(Merge(super::merge::Merge::Applications)),
        ("GET", ["applications", _]) => route(Merge(super::merge::Merge::Application)),
        (_, ["applications", _, "subscription"]) => route(Subscription),
        ("PUT", ["applications", _, "eventFilter"]) => route(Broadcast(Some(super::merge::Merge::Application))),

        ("GET", ["deviceStates"]) => route(Merge(super::merge::Merge::DeviceStates)),
        (_, ["deviceStates", _]) if write => route(Broadcast(None)),
        (_, ["mailboxes", _]) if write => route(Broadcast(None)),
        (_, ["asterisk", ..]) if write => route(Broadcast(None)),

        ("POST", ["events", "user", _]) => route(UserEvent),
        _ => route(Any),
    }
}

/// Words of ARI's paths; every other segment is an id. Bounds the route label of the metrics.
const LITERALS: [&str; 57] = [
    "channels",
    "bridges",
    "playbacks",
    "recordings",
    "endpoints",
    "applications",
    "deviceStates",
    "mailboxes",
    "asterisk",
    "sounds",
    "events",
    "create",
    "externalMedia",
    "answer",
    "ring",
    "dtmf",
    "mute",
    "hold",
    "moh",
    "silence",
    "play",
    "record",
    "variable",
    "snoop",
    "dial",
    "rtp_statistics",
    "continue",
    "move",
    "redirect",
    "transfer_progress",
    "addChannel",
    "removeChannel",
    "videoSource",
    "control",
    "stop",
    "pause",
    "file",
    "copy",
    "subscription",
    "eventFilter",
    "sendMessage",
    "refer",
    "user",
    "info",
    "ping",
    "modules",
    "logging",
    "rotate",
    "config",
    "dynamic",
    "live",
    "stored",
    "api-docs",
    "resources.json",
    "ws",
    "unmute",
    "rtp",
];

/// The route template for metrics and logs, e.g. `/channels/{id}/answer`.
pub fn template(s: &[&str]) -> String {
    if s.len() > 8 {
        return "/{other}".into();
    }
    let mut out = String::new();
    for seg in s {
        out.push('/');
        out.push_str(if LITERALS.contains(seg) { seg } else { "{id}" });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::merge::Merge as M;
    use Action::*;
    use Kind::*;

    fn c(method: &str, path: &str) -> Route {
        classify(method, &path.split('/').collect::<Vec<_>>())
    }

    #[test]
    fn resources_go_to_their_owner() {
        assert_eq!(c("GET", "channels/abc").action, Owner(Channel, 1));
        assert_eq!(c("DELETE", "channels/abc").action, Owner(Channel, 1));
        assert_eq!(c("POST", "channels/abc/answer").action, Owner(Channel, 1));
        assert_eq!(c("POST", "channels/abc/dial").action, Owner(Channel, 1));
        assert_eq!(c("DELETE", "bridges/b1").action, DestroyBridge(1));
        assert_eq!(c("POST", "bridges/b1/addChannel").action, Members { index: 1, adding: true });
        assert_eq!(c("POST", "bridges/b1/removeChannel").action, Members { index: 1, adding: false });
        assert_eq!(c("POST", "bridges/b1/moh").action, Owner(Bridge, 1));
        assert_eq!(c("POST", "playbacks/p/control").action, Owner(Playback, 1));
        assert_eq!(c("POST", "recordings/live/r/stop").action, Owner(Recording, 2));
        assert_eq!(c("GET", "recordings/stored/r/file").action, StoredRecording(2));
    }

    #[test]
    fn creates_are_placed_and_learned() {
        let originate = c("POST", "channels");
        assert_eq!(originate.action, Create { kind: Channel, id_param: "channelId", id_index: None });
        assert_eq!(originate.learn, Some(Channel));
        assert_eq!(c("POST", "channels/create").action, Create { kind: Channel, id_param: "channelId", id_index: None });
        assert_eq!(c("POST", "channels/myid").action, Create { kind: Channel, id_param: "channelId", id_index: Some(1) });
        assert_eq!(c("POST", "bridges").learn, Some(Bridge));
        assert_eq!(c("POST", "bridges/b1").action, OwnerOrCreate(Bridge, 1));
        assert_eq!(c("POST", "channels/x/play/p1").learn, Some(Playback));
        assert_eq!(c("POST", "bridges/x/record").learn, Some(Recording));
        assert_eq!(c("POST", "channels/x/snoop/s1").learn, Some(Channel));
        assert_eq!(c("POST", "channels/x/answer").learn, None);
    }

    #[test]
    fn pool_wide_reads_and_node_wide_writes() {
        assert_eq!(c("GET", "channels").action, Merge(M::Channels));
        assert_eq!(c("GET", "applications/a").action, Merge(M::Application));
        assert_eq!(c("GET", "endpoints/PJSIP").action, Merge(M::Endpoints));
        assert_eq!(c("GET", "endpoints/PJSIP/alice").action, Merge(M::Endpoint));
        assert_eq!(c("GET", "deviceStates").action, Merge(M::DeviceStates));
        assert_eq!(c("PUT", "deviceStates/Stasis:x").action, Broadcast(None));
        assert_eq!(c("GET", "deviceStates/Stasis:x").action, Any);
        assert_eq!(c("POST", "asterisk/variable").action, Broadcast(None));
        assert_eq!(c("GET", "asterisk/info").action, Any);
        assert_eq!(c("POST", "applications/a/subscription").action, Subscription);
        assert_eq!(c("DELETE", "applications/a/subscription").action, Subscription);
        assert_eq!(c("GET", "nothing/here").action, Any);
    }

    #[test]
    fn templates_hide_ids() {
        assert_eq!(template(&["channels", "1733.5", "play", "p-1"]), "/channels/{id}/play/{id}");
        assert_eq!(template(&["asterisk", "info"]), "/asterisk/info");
        assert_eq!(template(&["x"; 9]), "/{other}");
    }
}
