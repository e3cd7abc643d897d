//! The text of `scale show nodes` and `scale show apps`.

use std::fmt::Write;
use std::time::Duration;

use super::api::ServiceInstance;
use super::apps::{AppsTable, EventCounters};
use crate::status::format_utc;

/// One row per node of the pool; `own_id` is marked with `*`.
pub fn render_nodes(instances: &[ServiceInstance], own_id: &str, age: Option<Duration>, error: Option<&str>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "  {:<26} {:<12} {:<18} {:<22} {:<34} Apps", "Node ID", "Health", "EID", "SIP address", "ARI URL");
    let mut sorted: Vec<&ServiceInstance> = instances.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    for s in &sorted {
        let meta = |k: &str| s.meta.get(k).filter(|v| !v.is_empty()).cloned().unwrap_or_else(|| "-".into());
        let mark = if s.id == own_id { "*" } else { " " };
        let _ = writeln!(out, "{mark} {:<26} {:<12} {:<18} {:<22} {:<34} {}", s.id, s.health(), meta("eid"), format!("{}:{}", s.address, s.port), meta("ari_url"), meta("apps"));
    }
    let freshness = match age {
        Some(age) => format!("as of {:.1} s ago", age.as_secs_f64()),
        None => "Consul not reached yet".into(),
    };
    let _ = writeln!(out, "{} node(s), {freshness}; * = this node", sorted.len());
    if let Some(e) = error {
        let _ = writeln!(out, "Last Consul error: {e} (the list may be stale)");
    }
    out
}

pub fn render_apps(table: &AppsTable, counters: &EventCounters, prefix: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "  {:<30} {:<21} Events", "Application", "Added (UTC)");
    for (name, added) in &table.apps {
        let _ = writeln!(out, "  {:<30} {:<21} {}", name, format_utc(*added), counters.get(name));
    }
    let state = if table.state.is_empty() { "starting" } else { &table.state };
    let _ = writeln!(out, "{} application(s) from Consul prefix '{prefix}' ({state}, index {})", table.apps.len(), table.index);
    if !table.invalid.is_empty() {
        let names: Vec<&str> = table.invalid.iter().map(String::as_str).collect();
        let _ = writeln!(out, "Skipped invalid names: {}", names.join(", "));
    }
    if let Some(e) = &table.last_error {
        let _ = writeln!(out, "Last error: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consul::api::CheckState;

    #[test]
    fn nodes_table_marks_this_node_and_shows_health_and_meta() {
        let node = |id: &str, status: &str, maint: bool| {
            let mut checks = vec![CheckState { id: format!("res_scale:{id}"), status: status.into() }];
            if maint {
                checks.push(CheckState { id: format!("_service_maintenance:{id}"), status: "critical".into() });
            }
            ServiceInstance {
                node: "agent".into(),
                id: id.into(),
                address: "127.0.0.1".into(),
                port: 5060,
                meta: [("eid".to_string(), "02:00:00:00:00:01".to_string()), ("apps".to_string(), "conf,queue".to_string())].into(),
                checks,
            }
        };
        let text = render_nodes(&[node("b", "passing", true), node("a", "passing", false)], "a", Some(Duration::from_millis(300)), None);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("* a ") && lines[1].contains("passing") && lines[1].ends_with("conf,queue"), "{text}");
        assert!(lines[2].starts_with("  b ") && lines[2].contains("maintenance"), "{text}");
        assert!(lines[3].starts_with("2 node(s), as of 0.3 s ago"), "{text}");
    }
}
