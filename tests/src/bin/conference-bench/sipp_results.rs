//! What a SIPp run wrote: its statistics file and its response times.

use std::path::Path;
use std::time::Duration;

/// The one file in `dir` whose name ends with `suffix` (SIPp names them `<scenario>_<pid>...`).
fn sipp_file(dir: &Path, suffix: &str) -> Option<String> {
    let path = std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).find(|p| p.to_string_lossy().ends_with(suffix))?;
    std::fs::read_to_string(path).ok()
}

/// Successful and failed calls from SIPp's statistics file (its last, cumulative line).
pub fn sipp_counts(dir: &Path) -> (u64, u64) {
    let text = sipp_file(dir, "_.csv").unwrap_or_default();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(';').collect();
    let last: Vec<&str> = lines.last().unwrap_or_default().split(';').collect();
    let column = |name: &str| header.iter().position(|h| *h == name).and_then(|i| last.get(i)).and_then(|v| v.parse().ok()).unwrap_or(0);
    (column("SuccessfulCall(C)"), column("FailedCall(C)"))
}

/// Every call's INVITE -> 200 time ("setup" in the scenario), from `-trace_rtt` (whole ms).
pub fn sipp_setup_times(dir: &Path) -> Vec<Duration> {
    let text = sipp_file(dir, "_rtt.csv").unwrap_or_default();
    text.lines().skip(1).filter_map(|l| l.split(';').nth(1)?.parse::<f64>().ok()).map(|ms| Duration::from_secs_f64(ms / 1e3)).collect()
}
