//! Order statistics of benchmark samples.

use std::time::Duration;

/// The `q` quantile of sorted samples (nearest rank), e.g. 0.5 for the median.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
