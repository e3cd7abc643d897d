//! What an application must not see of a cross-node bridge, and what it must see instead: the
//! helper calls and helper bridges never appear (not in events, not in listings); a member on
//! another node enters and leaves the application's own bridge, whose `channels` list every
//! member of every node, as on one Asterisk.

use serde_json::Value;

use super::registry::{Registry, HELPER_BRIDGE_PREFIX, HELPER_CALL_PREFIX};

#[derive(Debug, PartialEq)]
pub enum Verdict {
    Keep,
    Drop,
    Rewrite(String),
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// The application bridge `bridge` as one Asterisk would show it: `base` (the node's own view,
/// or the last one seen) with the helper calls replaced by the members they carry.
fn bridge_view(reg: &Registry, bridge: &str, base: Option<&Value>, entering: Option<&str>, leaving: Option<&str>) -> Option<Value> {
    let mut view = base.or_else(|| reg.snapshots.get(bridge))?.clone();
    let mut channels: Vec<String> = view
        .get("channels")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|c| !reg.helper_channels.contains(*c) && !c.starts_with(HELPER_CALL_PREFIX))
        .map(str::to_string)
        .collect();
    for member in reg.members(bridge).into_iter().map(String::as_str).chain(entering) {
        if !channels.iter().any(|c| c == member) {
            channels.push(member.to_string());
        }
    }
    channels.retain(|c| Some(c.as_str()) != leaving);
    if let Some(obj) = view.as_object_mut() {
        obj.insert("channels".into(), channels.into_iter().map(Value::String).collect());
        // The helper bridge's own id when `base` was not the application's bridge.
        obj.insert("id".into(), Value::String(bridge.to_string()));
    }
    Some(view)
}

/// How helpers are recognised in events: helper calls by their channel name (the pool
/// endpoint's, `PJSIP/<endpoint>-`), helper bridges by their id prefix.
pub struct Marks {
    pub helper_call_name: String,
}

impl Marks {
    /// Whether the raw event may name a helper (a cheap look before any parsing).
    fn may_name_helper(&self, body: &[u8]) -> bool {
        memchr::memmem::find(body, HELPER_BRIDGE_PREFIX.as_bytes()).is_some() || memchr::memmem::find(body, self.helper_call_name.as_bytes()).is_some()
    }

    /// Whether the raw event may describe a bridge (to be remembered).
    fn may_name_bridge(body: &[u8]) -> bool {
        memchr::memmem::find(body, b"\"bridge\"").is_some()
    }
}

/// Learns what the event shows of helpers; `true` when it is about a helper call.
fn learn(reg: &mut Registry, marks: &Marks, event: &Value, kind: &str, channel: Option<&str>) -> bool {
    let helper_call = channel.is_some_and(|c| reg.helper_channels.contains(c)) || str_at(event, "/channel/name").is_some_and(|n| n.starts_with(&marks.helper_call_name));
    if helper_call {
        let channel = channel.unwrap_or_default();
        reg.helper_channels.insert(channel.to_string());
        if kind == "ChannelDestroyed" {
            reg.retire(None, Some(channel));
        }
    }
    if let Some(helper) = str_at(event, "/bridge/id").filter(|b| b.starts_with(HELPER_BRIDGE_PREFIX)) {
        if reg.see_helper_bridge(helper, str_at(event, "/bridge/name")).is_some() {
            let helper = helper.to_string();
            match (kind, channel) {
                ("ChannelEnteredBridge", Some(c)) if !helper_call => {
                    reg.seen_members.entry(helper).or_default().insert(c.to_string());
                }
                ("ChannelLeftBridge", Some(c)) => {
                    if let Some(members) = reg.seen_members.get_mut(&helper) {
                        members.remove(c);
                    }
                }
                ("BridgeDestroyed", _) => reg.retire(Some(&helper), None),
                _ => {}
            }
        }
    }
    helper_call
}

/// Judges one application event; remembers the application bridges' latest snapshots.
pub fn judge(reg: &mut Registry, marks: &Marks, body: &[u8]) -> Verdict {
    let plain = reg.is_empty() && !marks.may_name_helper(body);
    if plain && !Marks::may_name_bridge(body) {
        return Verdict::Keep;
    }
    let Ok(mut event) = serde_json::from_slice::<Value>(body) else { return Verdict::Keep };
    let kind = str_at(&event, "/type").unwrap_or("").to_string();
    let channel = str_at(&event, "/channel/id").map(str::to_string);
    reg.remember(&kind, event.get("bridge"));
    if plain {
        return Verdict::Keep;
    }
    if learn(reg, marks, &event, &kind, channel.as_deref()) {
        // A helper call in an application's bridge: that bridge is a cross-node one, and this
        // is its snapshot (a replica that did not set the leg up has none yet).
        if let Some(bridge) = event.get("bridge").filter(|b| str_at(b, "/id").is_some_and(|id| !id.starts_with(HELPER_BRIDGE_PREFIX))) {
            let id = str_at(bridge, "/id").unwrap_or_default().to_string();
            reg.snapshots.insert(id, bridge.clone());
        }
        return Verdict::Drop;
    }
    let Some(bridge) = str_at(&event, "/bridge/id").map(str::to_string) else { return Verdict::Keep };
    let (entering, leaving) = match kind.as_str() {
        "ChannelEnteredBridge" => (channel.as_deref(), None),
        "ChannelLeftBridge" => (None, channel.as_deref()),
        _ => (None, None),
    };
    let view = if let Some(app_bridge) = reg.helper_bridges.get(&bridge).cloned() {
        // A member entering or leaving the helper bridge on its own node is, for the
        // application, that member entering or leaving the application's bridge.
        if entering.is_none() && leaving.is_none() {
            return Verdict::Drop;
        }
        // Without a snapshot of the application's bridge (its legs are another replica's),
        // the bridge as its node last showed it stands in, or else the helper bridge's own.
        let stand_in = (!reg.snapshots.contains_key(&app_bridge)).then(|| {
            reg.occupied.get(&app_bridge).cloned().unwrap_or_else(|| {
                let mut own = event.get("bridge").cloned().unwrap_or_default();
                own["name"] = Value::String(String::new());
                own
            })
        });
        bridge_view(reg, &app_bridge, stand_in.as_ref(), entering, leaving)
    } else if reg.bridges.contains_key(&bridge) || reg.snapshots.contains_key(&bridge) || reg.helper_bridges.values().any(|b| *b == bridge) {
        let own = event.get("bridge").cloned();
        if let Some(own) = &own {
            reg.snapshots.insert(bridge.clone(), own.clone());
        }
        bridge_view(reg, &bridge, own.as_ref(), entering, leaving)
    } else {
        return Verdict::Keep;
    };
    match view {
        Some(view) => {
            event["bridge"] = view;
            Verdict::Rewrite(event.to_string())
        }
        None => Verdict::Drop,
    }
}

/// Rewrites a REST answer (or a pool-wide listing) the same way: helper calls, helper bridges
/// and the helper application are left out; application bridges list every member.
pub fn rewrite_answer(reg: &Registry, marks: &Marks, helper_app: &str, value: &mut Value) {
    rewrite(reg, marks, helper_app, value);
}

fn hidden(reg: &Registry, marks: &Marks, helper_app: &str, item: &Value) -> bool {
    let name = str_at(item, "/name");
    match str_at(item, "/id") {
        Some(id) if reg.helper_channels.contains(id) || reg.helper_bridges.contains_key(id) || id.starts_with(HELPER_BRIDGE_PREFIX) || id.starts_with(HELPER_CALL_PREFIX) => true,
        // A helper call of any replica, by its name; the helper applications of every replica.
        Some(_) if name.is_some_and(|n| n.starts_with(&marks.helper_call_name)) && item.get("dialplan").is_some() => true,
        _ => name.is_some_and(|n| n == helper_app || n.starts_with(HELPER_APP_PREFIX)) && item.get("channel_ids").is_some(),
    }
}

/// Every replica's helper application is named this and its instance id.
pub const HELPER_APP_PREFIX: &str = "scale-gateway-";

fn rewrite(reg: &Registry, marks: &Marks, helper_app: &str, value: &mut Value) {
    match value {
        Value::Array(items) => {
            items.retain(|i| !hidden(reg, marks, helper_app, i));
            for item in items {
                rewrite(reg, marks, helper_app, item);
            }
        }
        Value::Object(obj) => {
            if obj.contains_key("bridge_type") {
                if let Some(id) = obj.get("id").and_then(Value::as_str).map(str::to_string) {
                    if reg.bridges.contains_key(&id) || !reg.members(&id).is_empty() {
                        if let Some(view) = bridge_view(reg, &id, Some(&Value::Object(obj.clone())), None, None) {
                            *value = view;
                        }
                        return;
                    }
                }
            }
            for (key, hide) in [("bridge_ids", true), ("channel_ids", false)] {
                if let Some(Value::Array(ids)) = obj.get_mut(key) {
                    ids.retain(|id| {
                        id.as_str().is_none_or(|id| {
                            if hide {
                                !reg.helper_bridges.contains_key(id) && !id.starts_with(HELPER_BRIDGE_PREFIX)
                            } else {
                                !reg.helper_channels.contains(id) && !id.starts_with(HELPER_CALL_PREFIX)
                            }
                        })
                    });
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::registry::Leg;
    use super::*;
    use crate::owners::Eid;

    fn marks() -> Marks {
        Marks { helper_call_name: "PJSIP/res_scale_pool-".into() }
    }

    /// Bridge `conf` on node a; channel `b1` of node b joined through one leg.
    fn registry() -> Registry {
        let mut r = Registry::default();
        let (a, b): (Eid, Eid) = ("a".into(), "b".into());
        r.open("conf", &a, &b, Leg::new("0a0b"));
        r.set_near("conf", &b, "near");
        r.leg_mut("conf", &b).unwrap().members.insert("b1".into());
        r.snapshots.insert("conf".into(), json!({"id": "conf", "bridge_type": "mixing", "channels": ["a1", "near"]}));
        r
    }

    fn rewritten(v: Verdict) -> Value {
        match v {
            Verdict::Rewrite(text) => serde_json::from_str(&text).unwrap(),
            other => panic!("expected a rewrite, got {other:?}"),
        }
    }

    #[test]
    fn helper_calls_never_reach_the_application() {
        let mut r = registry();
        for body in [
            json!({"type": "ChannelEnteredBridge", "bridge": {"id": "conf", "channels": ["a1", "near"]}, "channel": {"id": "near"}}),
            json!({"type": "ChannelEnteredBridge", "bridge": {"id": "scale-helper-0a0b", "channels": ["scale-leg-0a0b"]}, "channel": {"id": "scale-leg-0a0b"}}),
            json!({"type": "BridgeDestroyed", "bridge": {"id": "scale-helper-0a0b", "channels": []}}),
            json!({"type": "ChannelStateChange", "channel": {"id": "near"}}),
        ] {
            assert_eq!(judge(&mut r, &marks(), body.to_string().as_bytes()), Verdict::Drop, "{body}");
        }
    }

    #[test]
    fn a_remote_member_enters_and_leaves_the_applications_bridge() {
        let mut r = registry();
        let entered =
            json!({"type": "ChannelEnteredBridge", "bridge": {"id": "scale-helper-0a0b", "bridge_type": "mixing", "channels": ["scale-leg-0a0b", "b1"]}, "channel": {"id": "b1"}, "asterisk_id": "b"});
        let v = rewritten(judge(&mut r, &marks(), entered.to_string().as_bytes()));
        assert_eq!(v["bridge"], json!({"id": "conf", "bridge_type": "mixing", "channels": ["a1", "b1"]}));
        assert_eq!((&v["channel"]["id"], &v["asterisk_id"]), (&json!("b1"), &json!("b")), "the rest is untouched");

        r.leg_mut("conf", &"b".into()).unwrap().members.remove("b1");
        let left = json!({"type": "ChannelLeftBridge", "bridge": {"id": "scale-helper-0a0b", "channels": ["scale-leg-0a0b"]}, "channel": {"id": "b1"}});
        assert_eq!(rewritten(judge(&mut r, &marks(), left.to_string().as_bytes()))["bridge"]["channels"], json!(["a1"]));
    }

    #[test]
    fn the_bridges_own_events_list_every_member_and_refresh_the_snapshot() {
        let mut r = registry();
        let entered = json!({"type": "ChannelEnteredBridge", "bridge": {"id": "conf", "bridge_type": "mixing", "name": "n", "channels": ["a1", "near", "a2"]}, "channel": {"id": "a2"}});
        let v = rewritten(judge(&mut r, &marks(), entered.to_string().as_bytes()));
        assert_eq!(v["bridge"]["channels"], json!(["a1", "a2", "b1"]));
        assert_eq!(r.snapshots["conf"]["name"], "n");
        // Unrelated events are not even re-serialized.
        let other = json!({"type": "ChannelEnteredBridge", "bridge": {"id": "other", "channels": ["x"]}, "channel": {"id": "x"}});
        assert_eq!(judge(&mut r, &marks(), other.to_string().as_bytes()), Verdict::Keep);
        assert_eq!(judge(&mut Registry::default(), &marks(), entered.to_string().as_bytes()), Verdict::Keep);
    }

    #[test]
    fn a_replica_that_did_not_set_the_leg_up_hides_it_from_the_events_alone() {
        let mut r = Registry::default();
        let near = json!({"type": "ChannelEnteredBridge", "bridge": {"id": "conf", "channels": ["a1", "n9"]}, "channel": {"id": "n9", "name": "PJSIP/res_scale_pool-0000002a"}});
        assert_eq!(judge(&mut r, &marks(), near.to_string().as_bytes()), Verdict::Drop);
        let far = json!({"type": "ChannelEnteredBridge", "bridge": {"id": "scale-helper-77", "name": "scale-gateway-helper:conf", "channels": ["scale-leg-77"]}, "channel": {"id": "scale-leg-77", "name": "PJSIP/res_scale_pool-00000003"}});
        assert_eq!(judge(&mut r, &marks(), far.to_string().as_bytes()), Verdict::Drop);
        let member = json!({"type": "ChannelEnteredBridge", "bridge": {"id": "scale-helper-77", "name": "scale-gateway-helper:conf", "channels": ["scale-leg-77", "b1"]}, "channel": {"id": "b1", "name": "PJSIP/sipp-00000001"}});
        let v = rewritten(judge(&mut r, &marks(), member.to_string().as_bytes()));
        assert_eq!((&v["bridge"]["id"], &v["bridge"]["channels"]), (&json!("conf"), &json!(["a1", "b1"])), "the helper call's event gave the bridge's snapshot");
        // The bridge's own next event lists the remote member instead of the helper call.
        let local = json!({"type": "ChannelEnteredBridge", "bridge": {"id": "conf", "name": "", "channels": ["a1", "n9", "a2"]}, "channel": {"id": "a2", "name": "PJSIP/sipp-00000002"}});
        assert_eq!(rewritten(judge(&mut r, &marks(), local.to_string().as_bytes()))["bridge"]["channels"], json!(["a1", "a2", "b1"]));
        let mut listing = json!([{"id": "scale-helper-77", "bridge_type": "mixing", "channels": []}, {"id": "n9", "name": "PJSIP/res_scale_pool-0000002a", "dialplan": {}}]);
        rewrite_answer(&Registry::default(), &marks(), "helper", &mut listing);
        assert_eq!(listing, json!([]), "helpers are known by their names and ids even with nothing learned");
    }

    #[test]
    fn a_member_seen_before_the_helper_call_joins_the_bridge_as_its_node_last_showed_it() {
        let mut r = Registry::default();
        let own = json!({"type": "ChannelEnteredBridge", "bridge": {"id": "conf", "name": "", "channels": ["a1"]}, "channel": {"id": "a1", "name": "PJSIP/sipp-00000001"}});
        assert_eq!(judge(&mut r, &marks(), own.to_string().as_bytes()), Verdict::Keep);
        // The member node's events arrive before the bridge node's helper call entered.
        let member = json!({"type": "ChannelEnteredBridge", "bridge": {"id": "scale-helper-77", "name": "scale-gateway-helper:conf", "channels": ["scale-leg-77", "b1"]}, "channel": {"id": "b1", "name": "PJSIP/sipp-00000002"}});
        let v = rewritten(judge(&mut r, &marks(), member.to_string().as_bytes()));
        assert_eq!((&v["bridge"]["id"], &v["bridge"]["channels"]), (&json!("conf"), &json!(["a1", "b1"])));
        // An emptied or destroyed bridge is forgotten.
        let left = json!({"type": "ChannelLeftBridge", "bridge": {"id": "other", "channels": []}, "channel": {"id": "x"}});
        judge(&mut r, &marks(), json!({"type": "ChannelEnteredBridge", "bridge": {"id": "other", "channels": ["x"]}, "channel": {"id": "x"}}).to_string().as_bytes());
        assert!(r.occupied.contains_key("other"));
        judge(&mut r, &marks(), left.to_string().as_bytes());
        assert!(!r.occupied.contains_key("other"));
    }

    #[test]
    fn answers_and_listings_hide_helpers() {
        let r = registry();
        let mut bridges = json!([
            {"id": "conf", "bridge_type": "mixing", "channels": ["a1", "near"]},
            {"id": "scale-helper-0a0b", "bridge_type": "mixing", "channels": ["scale-leg-0a0b", "b1"]},
        ]);
        rewrite_answer(&r, &marks(), "helper", &mut bridges);
        assert_eq!(bridges, json!([{"id": "conf", "bridge_type": "mixing", "channels": ["a1", "b1"]}]));

        let mut channels = json!([{"id": "a1"}, {"id": "near"}, {"id": "b1"}, {"id": "scale-leg-0a0b"}]);
        rewrite_answer(&r, &marks(), "helper", &mut channels);
        assert_eq!(channels, json!([{"id": "a1"}, {"id": "b1"}]));

        let mut apps = json!([
            {"name": "conference", "channel_ids": ["b1"], "bridge_ids": ["conf", "scale-helper-0a0b"], "endpoint_ids": [], "device_names": []},
            {"name": "helper", "channel_ids": ["near"], "bridge_ids": [], "endpoint_ids": [], "device_names": []},
        ]);
        rewrite_answer(&Registry::default(), &marks(), "helper", &mut apps);
        assert_eq!(apps.as_array().unwrap().len(), 1, "the helper app is hidden even with no leg up");
        rewrite_answer(&r, &marks(), "helper", &mut apps);
        assert_eq!(apps[0]["bridge_ids"], json!(["conf"]));
    }
}
