//! Pool-wide reads: the answers of every serving node made into the one answer a single
//! Asterisk would give. Lists are concatenated with duplicates removed (an object the nodes
//! share, like an application or an endpoint, appears once with the ids of every node).

use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    Channels,
    Bridges,
    StoredRecordings,
    DeviceStates,
    /// `GET /endpoints`, `GET /endpoints/{tech}`.
    Endpoints,
    /// `GET /endpoints/{tech}/{resource}`.
    Endpoint,
    Applications,
    /// `GET /applications/{app}`, and the answers of subscription and event filter changes.
    Application,
}

/// Id lists that are unions across nodes, per object kind.
const APPLICATION_IDS: [&str; 4] = ["channel_ids", "bridge_ids", "endpoint_ids", "device_names"];
const ENDPOINT_IDS: [&str; 1] = ["channel_ids"];

impl Merge {
    /// Merges the successful answers (in node order). `None` if an answer is not the JSON
    /// shape ARI documents.
    pub fn merge(self, answers: Vec<Value>) -> Option<Value> {
        match self {
            Merge::Channels | Merge::Bridges => list(answers, &["id"], &[]),
            Merge::StoredRecordings | Merge::DeviceStates => list(answers, &["name"], &[]),
            Merge::Endpoints => list(answers, &["technology", "resource"], &ENDPOINT_IDS),
            Merge::Applications => list(answers, &["name"], &APPLICATION_IDS),
            Merge::Endpoint => single(answers, &ENDPOINT_IDS),
            Merge::Application => single(answers, &APPLICATION_IDS),
        }
    }
}

fn key_of(object: &Map<String, Value>, key: &[&str]) -> Vec<Value> {
    key.iter().map(|k| object.get(*k).cloned().unwrap_or(Value::Null)).collect()
}

fn list(answers: Vec<Value>, key: &[&str], unions: &[&str]) -> Option<Value> {
    let mut out: Vec<Map<String, Value>> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for answer in answers {
        let Value::Array(items) = answer else { return None };
        for item in items {
            let Value::Object(object) = item else { return None };
            let k = key_of(&object, key);
            match index.get(&k) {
                Some(&i) => absorb(&mut out[i], object, unions),
                None => {
                    index.insert(k, out.len());
                    out.push(object);
                }
            }
        }
    }
    Some(Value::Array(out.into_iter().map(Value::Object).collect()))
}

fn single(answers: Vec<Value>, unions: &[&str]) -> Option<Value> {
    let mut answers = answers.into_iter();
    let Value::Object(mut first) = answers.next()? else { return None };
    for answer in answers {
        let Value::Object(object) = answer else { return None };
        absorb(&mut first, object, unions);
    }
    Some(Value::Object(first))
}

/// Adds another node's view of the same object: id lists become unions, and an endpoint is
/// online if it is online anywhere (it registered through that node).
fn absorb(into: &mut Map<String, Value>, other: Map<String, Value>, unions: &[&str]) {
    for field in unions {
        let Some(Value::Array(extra)) = other.get(*field) else { continue };
        if let Some(Value::Array(mine)) = into.get_mut(*field) {
            for v in extra {
                if !mine.contains(v) {
                    mine.push(v.clone());
                }
            }
        } else {
            into.insert(field.to_string(), Value::Array(extra.clone()));
        }
    }
    if other.get("state").and_then(Value::as_str) == Some("online") && into.contains_key("technology") {
        into.insert("state".into(), Value::from("online"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn channel_lists_are_concatenated_without_duplicates() {
        let a = json!([{"id": "1.1", "name": "PJSIP/a"}, {"id": "1.2"}]);
        let b = json!([{"id": "2.1"}, {"id": "1.2"}]);
        let merged = Merge::Channels.merge(vec![a, b]).unwrap();
        let ids: Vec<_> = merged.as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["1.1", "1.2", "2.1"]);
    }

    #[test]
    fn applications_carry_the_ids_of_every_node() {
        let a = json!([{"name": "app", "channel_ids": ["1.1"], "bridge_ids": [], "endpoint_ids": [], "device_names": []}]);
        let b = json!([{"name": "app", "channel_ids": ["2.1"], "bridge_ids": ["b"], "endpoint_ids": [], "device_names": []}, {"name": "other", "channel_ids": []}]);
        let merged = Merge::Applications.merge(vec![a, b]).unwrap();
        assert_eq!(merged[0]["channel_ids"], json!(["1.1", "2.1"]));
        assert_eq!(merged[0]["bridge_ids"], json!(["b"]));
        assert_eq!(merged[1]["name"], "other");
        let one = Merge::Application.merge(vec![json!({"name": "app", "channel_ids": ["1"]}), json!({"name": "app", "channel_ids": ["2", "1"]})]).unwrap();
        assert_eq!(one["channel_ids"], json!(["1", "2"]));
    }

    #[test]
    fn an_endpoint_is_online_if_any_node_has_it_online() {
        let a = json!([{"technology": "PJSIP", "resource": "alice", "state": "offline", "channel_ids": []}]);
        let b = json!([{"technology": "PJSIP", "resource": "alice", "state": "online", "channel_ids": ["2.1"]}, {"technology": "PJSIP", "resource": "bob", "state": "offline", "channel_ids": []}]);
        let merged = Merge::Endpoints.merge(vec![a, b]).unwrap();
        assert_eq!(merged.as_array().unwrap().len(), 2);
        assert_eq!(merged[0]["state"], "online");
        assert_eq!(merged[0]["channel_ids"], json!(["2.1"]));
    }

    #[test]
    fn shapes_other_than_ari_are_refused() {
        assert_eq!(Merge::Channels.merge(vec![json!({"message": "x"})]), None);
        assert_eq!(Merge::Application.merge(vec![]), None);
        assert_eq!(Merge::Bridges.merge(vec![]), Some(json!([])));
    }
}
