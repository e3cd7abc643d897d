//! Ownership learned from events: every resource an event names lives on the node that sent
//! it (`asterisk_id`), and the events that end a resource end its entry. Only the id fields
//! are read, borrowed from the body; the rest of the JSON is skipped, not built.

use std::borrow::Cow;

use serde::Deserialize;

use crate::owners::{Eid, Kind, Owners};

#[derive(Deserialize)]
struct Id<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Named<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

/// The id-bearing members of ARI events (gateway-notes.md section 4.2).
#[derive(Deserialize)]
pub struct EventIds<'a> {
    #[serde(borrow, rename = "type", default)]
    pub kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub asterisk_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    channel: Option<Id<'a>>,
    #[serde(borrow, default)]
    replace_channel: Option<Id<'a>>,
    #[serde(borrow, default)]
    caller: Option<Id<'a>>,
    #[serde(borrow, default)]
    peer: Option<Id<'a>>,
    #[serde(borrow, default)]
    forwarded: Option<Id<'a>>,
    #[serde(borrow, default)]
    transferee: Option<Id<'a>>,
    #[serde(borrow, default)]
    transfer_target: Option<Id<'a>>,
    #[serde(borrow, default)]
    transferer_first_leg: Option<Id<'a>>,
    #[serde(borrow, default)]
    transferer_second_leg: Option<Id<'a>>,
    #[serde(borrow, default)]
    destination_threeway_channel: Option<Id<'a>>,
    #[serde(borrow, default)]
    bridge: Option<Id<'a>>,
    #[serde(borrow, default)]
    bridge_from: Option<Id<'a>>,
    #[serde(borrow, default)]
    transferer_first_leg_bridge: Option<Id<'a>>,
    #[serde(borrow, default)]
    transferer_second_leg_bridge: Option<Id<'a>>,
    #[serde(borrow, default)]
    destination_threeway_bridge: Option<Id<'a>>,
    #[serde(borrow, default)]
    playback: Option<Id<'a>>,
    #[serde(borrow, default)]
    recording: Option<Named<'a>>,
}

impl<'a> EventIds<'a> {
    pub fn parse(body: &'a [u8]) -> Result<EventIds<'a>, serde_json::Error> {
        serde_json::from_slice(body)
    }

    fn channels(&self) -> impl Iterator<Item = &str> {
        [
            &self.channel,
            &self.replace_channel,
            &self.caller,
            &self.peer,
            &self.forwarded,
            &self.transferee,
            &self.transfer_target,
            &self.transferer_first_leg,
            &self.transferer_second_leg,
            &self.destination_threeway_channel,
        ]
        .into_iter()
        .flatten()
        .map(|c| c.id.as_ref())
    }

    fn bridges(&self) -> impl Iterator<Item = &str> {
        [&self.bridge, &self.bridge_from, &self.transferer_first_leg_bridge, &self.transferer_second_leg_bridge, &self.destination_threeway_bridge].into_iter().flatten().map(|b| b.id.as_ref())
    }

    /// Records what the event says `node` owns, or forgets what it says has ended.
    pub fn apply(&self, owners: &Owners, node: &Eid) {
        // The resource an ending event is about; everything else it names is still alive.
        let ended = match self.kind.as_ref() {
            "ChannelDestroyed" => self.channel.as_ref().map(|c| (Kind::Channel, c.id.as_ref())),
            "BridgeDestroyed" => self.bridge.as_ref().map(|b| (Kind::Bridge, b.id.as_ref())),
            "PlaybackFinished" => self.playback.as_ref().map(|p| (Kind::Playback, p.id.as_ref())),
            "RecordingFinished" | "RecordingFailed" => self.recording.as_ref().map(|r| (Kind::Recording, r.name.as_ref())),
            _ => None,
        };
        let learn = |kind: Kind, id: &str| {
            if ended == Some((kind, id)) {
                owners.forget(kind, id);
            } else {
                owners.learn(kind, id, node);
            }
        };
        self.channels().for_each(|id| learn(Kind::Channel, id));
        self.bridges().for_each(|id| learn(Kind::Bridge, id));
        if let Some(p) = &self.playback {
            learn(Kind::Playback, &p.id);
        }
        if let Some(r) = &self.recording {
            learn(Kind::Recording, &r.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn apply(owners: &Owners, node: &Eid, body: &str) {
        EventIds::parse(body.as_bytes()).unwrap().apply(owners, node);
    }

    #[test]
    fn learns_every_resource_an_event_names_and_forgets_the_one_that_ended() {
        let owners = Owners::new(Duration::from_secs(60));
        let a: Eid = "02:00:00:00:00:0a".into();
        apply(
            &owners,
            &a,
            r#"{"application":"conf","type":"StasisStart","args":[],"channel":{"id":"c1","name":"PJSIP/x","caller":{"name":"","number":""}},"replace_channel":{"id":"c0"},"asterisk_id":"02:00:00:00:00:0a"}"#,
        );
        apply(&owners, &a, r#"{"type":"Dial","caller":{"id":"c1"},"peer":{"id":"c2"},"dialstatus":""}"#);
        apply(&owners, &a, r#"{"type":"ChannelEnteredBridge","bridge":{"id":"b1","channels":["c1"]},"channel":{"id":"c1"}}"#);
        apply(&owners, &a, r#"{"type":"PlaybackStarted","playback":{"id":"p1","target_uri":"channel:c1"}}"#);
        apply(&owners, &a, r#"{"type":"RecordingStarted","recording":{"name":"r\u00e91","target_uri":"bridge:b1"}}"#);
        for (kind, id) in [(Kind::Channel, "c0"), (Kind::Channel, "c1"), (Kind::Channel, "c2"), (Kind::Bridge, "b1"), (Kind::Playback, "p1"), (Kind::Recording, "ré1")] {
            assert_eq!(owners.lookup(kind, id), Some(a.clone()), "{kind:?} {id}");
        }

        apply(&owners, &a, r#"{"type":"PlaybackFinished","playback":{"id":"p1"}}"#);
        apply(&owners, &a, r#"{"type":"RecordingFailed","recording":{"name":"ré1"}}"#);
        apply(&owners, &a, r#"{"type":"ChannelDestroyed","channel":{"id":"c2"},"cause":16}"#);
        apply(&owners, &a, r#"{"type":"BridgeDestroyed","bridge":{"id":"b1"}}"#);
        for (kind, id) in [(Kind::Playback, "p1"), (Kind::Recording, "ré1"), (Kind::Channel, "c2"), (Kind::Bridge, "b1")] {
            assert_eq!(owners.lookup(kind, id), None, "{kind:?} {id} ended");
        }
        assert_eq!(owners.lookup(Kind::Channel, "c1"), Some(a.clone()), "still alive");
    }

    #[test]
    fn events_without_resources_or_with_odd_shapes_are_harmless() {
        let owners = Owners::new(Duration::from_secs(60));
        let a: Eid = "a".into();
        apply(&owners, &a, r#"{"type":"DeviceStateChanged","device_state":{"name":"PJSIP/x","state":"INUSE"}}"#);
        apply(&owners, &a, r#"{"type":"ChannelVarset","variable":"X","value":"1"}"#);
        assert!(owners.counts().is_empty());
        assert!(EventIds::parse(b"not json").is_err());
        assert!(EventIds::parse(br#"{"type":"StasisStart","channel":"not an object"}"#).is_err());
    }
}
