//! What `scale show status` prints. Kept here, away from the CLI plumbing, so the layout is
//! unit-tested.

use std::fmt::Write;
use std::time::Duration;

/// The state of one subsystem (consul, amqp, registrations) and its counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubsystemLine {
    pub name: &'static str,
    pub state: String,
    pub counters: Vec<(&'static str, u64)>,
}

/// Everything the status command shows.
#[derive(Debug, Clone)]
pub struct StatusReport {
    pub version: &'static str,
    pub asterisk_version: String,
    pub node_id: String,
    pub eid: String,
    pub system_name: String,
    pub uptime: Duration,
    pub config_source: String,
    pub config: Vec<(&'static str, String)>,
    pub subsystems: Vec<SubsystemLine>,
}

impl StatusReport {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let system_name = if self.system_name.is_empty() { "(not set)" } else { &self.system_name };
        let _ = writeln!(out, "res_scale {} on Asterisk {}", self.version, self.asterisk_version);
        let _ = writeln!(out, "  {:<15} {}", "Node ID:", self.node_id);
        let _ = writeln!(out, "  {:<15} {}", "Entity ID:", self.eid);
        let _ = writeln!(out, "  {:<15} {}", "System name:", system_name);
        let _ = writeln!(out, "  {:<15} {}", "Uptime:", format_uptime(self.uptime));
        let _ = writeln!(out, "  {:<15} {}", "Config:", self.config_source);
        for (section, line) in &self.config {
            let _ = writeln!(out, "    {:<15} {}", format!("[{section}]"), line);
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "  {:<15} {:<22} Counters", "Subsystem", "State");
        for s in &self.subsystems {
            let counters = if s.counters.is_empty() { "-".to_string() } else { s.counters.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ") };
            let _ = writeln!(out, "  {:<15} {:<22} {}", s.name, s.state, counters);
        }
        out
    }
}

/// `3d 04:05:06`, or `04:05:06` under a day.
pub fn format_uptime(d: Duration) -> String {
    let s = d.as_secs();
    let (days, h, m, sec) = (s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60);
    if days > 0 {
        format!("{days}d {h:02}:{m:02}:{sec:02}")
    } else {
        format!("{h:02}:{m:02}:{sec:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_formats() {
        assert_eq!(format_uptime(Duration::from_secs(59)), "00:00:59");
        assert_eq!(format_uptime(Duration::from_secs(3 * 86_400 + 4 * 3_600 + 5 * 60 + 6)), "3d 04:05:06");
    }

    #[test]
    fn renders_identity_config_and_one_line_per_subsystem() {
        let r = StatusReport {
            version: "0.1.0",
            asterisk_version: "22.10.1".into(),
            node_id: "asterisk-020000000001".into(),
            eid: "02:00:00:00:00:01".into(),
            system_name: String::new(),
            uptime: Duration::from_secs(61),
            config_source: "/etc/asterisk/res_scale.conf".into(),
            config: vec![("amqp", "enabled=yes".into())],
            subsystems: vec![SubsystemLine { name: "consul", state: "disabled".into(), counters: vec![] }, SubsystemLine { name: "amqp", state: "connected".into(), counters: vec![("published", 3)] }],
        };
        let text = r.render();
        assert!(text.starts_with("res_scale 0.1.0 on Asterisk 22.10.1\n"), "{text}");
        assert!(text.contains("  Node ID:        asterisk-020000000001\n"), "{text}");
        assert!(text.contains("  System name:    (not set)\n"), "{text}");
        assert!(text.contains("  Uptime:         00:01:01\n"), "{text}");
        assert!(text.contains("    [amqp]          enabled=yes\n"), "{text}");
        assert!(text.contains("  consul          disabled               -\n"), "{text}");
        assert!(text.contains("  amqp            connected              published=3\n"), "{text}");
    }
}

/// `2026-11-22 13:40:01` (UTC) for a wall-clock time.
pub fn format_utc(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3_600, rem / 60 % 60, rem % 60)
}

#[cfg(test)]
mod utc_tests {
    use super::format_utc;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_utc(UNIX_EPOCH), "1970-01-01 00:00:00");
        assert_eq!(format_utc(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29 00:00:00");
        assert_eq!(format_utc(UNIX_EPOCH + Duration::from_secs(1_795_345_201)), "2026-11-22 11:00:01");
    }
}
