//! Many small JSON items sent as few messages: a SYNC answer or a re-announcement is cut into
//! batches that each stay under a byte bound, so that every receiver accepts them.

use serde_json::Value;

/// Room for the envelope around the items (type, origin, brackets).
const ENVELOPE: usize = 256;

/// Packs `items` into as few bodies as fit under `max_bytes` each (an item larger than that
/// on its own gets a batch of its own); `envelope` wraps one batch's items into its message.
pub fn encode(items: impl IntoIterator<Item = Value>, max_bytes: usize, envelope: impl Fn(Vec<Value>) -> Value) -> Vec<Vec<u8>> {
    let mut batches = Vec::new();
    let mut batch: Vec<Value> = Vec::new();
    let mut size = ENVELOPE;
    for item in items {
        let item_size = item.to_string().len() + 1;
        if size + item_size > max_bytes && !batch.is_empty() {
            batches.push(envelope(std::mem::take(&mut batch)).to_string().into_bytes());
            size = ENVELOPE;
        }
        size += item_size;
        batch.push(item);
    }
    if !batch.is_empty() {
        batches.push(envelope(batch).to_string().into_bytes());
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_item_goes_in_exactly_one_batch_under_the_bound() {
        let items: Vec<Value> = (0..1000).map(|i| json!({"n": i, "pad": "x".repeat(50)})).collect();
        let bodies = encode(items.clone(), 8 * 1024, |items| json!({"type": "T", "items": items}));
        assert!(bodies.len() > 5);
        assert!(bodies.iter().all(|b| b.len() <= 8 * 1024), "each under the bound");
        let back: Vec<Value> = bodies.iter().flat_map(|b| serde_json::from_slice::<Value>(b).unwrap()["items"].as_array().unwrap().clone()).collect();
        assert_eq!(back, items, "all of them, in order");
        assert!(encode(Vec::new(), 1024, |items| json!(items)).is_empty(), "nothing to say: no message");
    }
}
