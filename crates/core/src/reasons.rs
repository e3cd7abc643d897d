//! Counters of refused input, one per reason, for the CLI (`bad_json=2 unknown_state=1`).

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug)]
pub struct ByReason<const N: usize> {
    reasons: [&'static str; N],
    counts: [AtomicU64; N],
}

impl<const N: usize> ByReason<N> {
    pub fn new(reasons: [&'static str; N]) -> ByReason<N> {
        ByReason { reasons, counts: std::array::from_fn(|_| AtomicU64::new(0)) }
    }

    /// Counts one refusal; a reason not in the list is not counted.
    pub fn count(&self, reason: &str) {
        if let Some(i) = self.reasons.iter().position(|r| *r == reason) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn get(&self, reason: &str) -> u64 {
        self.reasons.iter().position(|r| *r == reason).map_or(0, |i| self.counts[i].load(Ordering::Relaxed))
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// `reason=count` for every reason seen, e.g. `bad_json=2 unknown_state=1`, or `-`.
    pub fn by_reason(&self) -> String {
        let seen: Vec<String> = self.reasons.iter().zip(&self.counts).map(|(r, c)| (r, c.load(Ordering::Relaxed))).filter(|(_, n)| *n > 0).map(|(r, n)| format!("{r}={n}")).collect();
        if seen.is_empty() {
            "-".into()
        } else {
            seen.join(" ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_known_reasons_in_their_order() {
        let r = ByReason::new(["bad_json", "too_large"]);
        assert_eq!(r.by_reason(), "-");
        for reason in ["too_large", "bad_json", "bad_json", "nonsense"] {
            r.count(reason);
        }
        assert_eq!((r.total(), r.get("bad_json"), r.get("nonsense")), (3, 2, 0));
        assert_eq!(r.by_reason(), "bad_json=2 too_large=1");
    }
}
