//! Which devices are shared: `[state] devices = PJSIP/*, Custom:*, !Local/*`. A device is
//! shared when no `!` pattern matches it and, if there are patterns without `!`, one of them
//! does; no pattern at all shares every device. `*` stands for any run of characters (none
//! included); matching ignores ASCII case, as Asterisk does for technology names.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DevicePatterns {
    include: Vec<String>,
    exclude: Vec<String>,
}

impl DevicePatterns {
    /// Parses the comma-separated list of the config; empty means every device.
    pub fn parse(list: &str) -> Result<DevicePatterns, String> {
        let mut patterns = DevicePatterns::default();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (target, pattern) = match item.strip_prefix('!') {
                Some(rest) => (&mut patterns.exclude, rest.trim()),
                None => (&mut patterns.include, item),
            };
            if pattern.is_empty() || pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!("'{item}': a pattern is a device name, '*' for any run of characters, optionally led by '!' to exclude"));
            }
            target.push(pattern.to_ascii_lowercase());
        }
        Ok(patterns)
    }

    pub fn shares(&self, device: &str) -> bool {
        let device = device.to_ascii_lowercase();
        !self.exclude.iter().any(|p| glob(p, &device)) && (self.include.is_empty() || self.include.iter().any(|p| glob(p, &device)))
    }
}

impl fmt::Display for DevicePatterns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.include.is_empty() && self.exclude.is_empty() {
            return f.write_str("(all)");
        }
        let items: Vec<String> = self.include.iter().cloned().chain(self.exclude.iter().map(|p| format!("!{p}"))).collect();
        f.write_str(&items.join(","))
    }
}

/// `*` matches any run of characters, everything else itself.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_pattern_shares_everything() {
        let all = DevicePatterns::parse("").unwrap();
        assert!(all.shares("PJSIP/alice") && all.shares("Local/1@x-0001;1"));
        assert_eq!(all.to_string(), "(all)");
    }

    #[test]
    fn includes_and_excludes() {
        let p = DevicePatterns::parse("PJSIP/*, Custom:*, !PJSIP/trunk-*").unwrap();
        assert!(p.shares("PJSIP/alice") && p.shares("pjsip/bob") && p.shares("Custom:agent1"));
        assert!(!p.shares("PJSIP/trunk-1"), "excluded");
        assert!(!p.shares("Queue:sales"), "not included");
        let only_exclude = DevicePatterns::parse("!Local/*").unwrap();
        assert!(only_exclude.shares("PJSIP/alice") && !only_exclude.shares("Local/100@from-sip-00000001;1"));
        assert_eq!(p.to_string(), "pjsip/*,custom:*,!pjsip/trunk-*");
    }

    #[test]
    fn stars_match_any_run_and_the_rest_matches_exactly() {
        for (pattern, text, expected) in [
            ("a*", "a", true),
            ("a*c", "abc", true),
            ("a*c", "abcd", false),
            ("*b*", "abc", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "acb", false),
            ("ab*ba", "aba", false),
            ("abc", "abc", true),
            ("abc", "abcd", false),
            ("*", "", true),
        ] {
            assert_eq!(glob(pattern, text), expected, "{pattern} ~ {text}");
        }
    }

    #[test]
    fn an_empty_pattern_is_an_error() {
        assert!(DevicePatterns::parse("PJSIP/*, !").is_err());
        assert!(DevicePatterns::parse("PJSIP/ a").is_err());
    }
}
