//! Exponential backoff with full jitter, for every reconnect loop (Consul, AMQP): the delay
//! doubles from `initial` up to `max`, and each wait is drawn uniformly from its upper half so
//! that nodes restarted together do not retry in lock-step.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff { initial, max, current: initial }
    }

    /// The next wait, then doubles the ceiling.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = ceiling / 2;
        half + half.mul_f64(rand::random::<f64>())
    }

    /// After a success: the next failure starts from `initial` again.
    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays[1] >= Duration::from_millis(100) && delays[1] <= Duration::from_millis(200));
        for d in &delays[4..] {
            assert!(*d >= Duration::from_millis(500) && *d <= Duration::from_secs(1), "{d:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    /// Nodes restarted together must not retry in lock-step: at the cap, the waits differ.
    #[test]
    fn waits_at_the_cap_are_spread_over_its_upper_half() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..20).map(|_| b.next_delay()).collect();
        let distinct: std::collections::BTreeSet<Duration> = delays.iter().copied().collect();
        assert!(distinct.len() >= 10, "20 waits at the cap took only {} distinct values: {delays:?}", distinct.len());
        let (low, high) = (delays.iter().min().unwrap(), delays.iter().max().unwrap());
        assert!(*high - *low >= Duration::from_millis(100), "20 waits at the cap all within {:?}: {delays:?}", *high - *low);
        assert!(delays.iter().all(|d| *d >= Duration::from_millis(500) && *d <= Duration::from_secs(1)), "{delays:?}");
    }
}
