//! Any res_scale.conf Asterisk could hand over: validation must accept it or report problems,
//! never panic, and every report must name a section.
#![no_main]

use libfuzzer_sys::fuzz_target;
use res_scale_core::config::{Config, RawConfig, RawEntry, RawSection};

/// Reads the fuzz input as an Asterisk-style file: `[section]` lines and `key = value` lines.
fn raw(text: &str) -> RawConfig {
    let mut sections: Vec<RawSection> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            sections.push(RawSection { name: name.to_string(), entries: vec![] });
        } else if let (Some((k, v)), Some(section)) = (line.split_once('='), sections.last_mut()) {
            section.entries.push(RawEntry { key: k.trim().to_string(), value: v.trim().to_string(), line: i as u32 + 1 });
        }
    }
    RawConfig { sections }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match Config::from_raw(&raw(&text)) {
        Ok(config) => {
            let _ = config.summary();
        }
        Err(errors) => {
            assert!(!errors.is_empty());
            for e in errors {
                assert!(!e.to_string().is_empty());
            }
        }
    }
});
