//! The model of `res_scale.conf` and its validation.
//!
//! The module reads the file with Asterisk's own config API and hands the result over as a
//! [`RawConfig`]; [`Config::from_raw`] turns it into typed settings, or into the complete list
//! of problems so that an operator fixes them all in one go instead of one per reload.

use std::fmt;
use std::time::Duration;

use crate::duration;
use crate::state::devices::DevicePatterns;

/// The file name Asterisk looks up in its config directory.
pub const FILE_NAME: &str = "res_scale.conf";

/// One `key = value` line as Asterisk parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    pub key: String,
    pub value: String,
    pub line: u32,
}

/// One `[section]` as Asterisk parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSection {
    pub name: String,
    pub entries: Vec<RawEntry>,
}

/// The whole file, sections in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawConfig {
    pub sections: Vec<RawSection>,
}

/// One problem in the file, with enough context to find and fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub section: String,
    pub key: Option<String>,
    pub value: Option<String>,
    pub line: Option<u32>,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{FILE_NAME} [{}]", self.section)?;
        if let Some(key) = &self.key {
            write!(f, " {key}")?;
        }
        if let Some(value) = &self.value {
            write!(f, " = '{value}'")?;
        }
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// A value that must never show in logs or CLI output (a key): its `Debug` is `****`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: &str) -> Secret {
        Secret(value.to_string())
    }

    /// The value itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("****")
    }
}

/// Keys shorter than this are refused: an HMAC key is only as strong as it is unguessable.
pub const MIN_POOL_KEY_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct General {
    /// Consul service ID of this node; `None` means `asterisk-<eid without colons>`.
    pub node_id: Option<String>,
    /// `host:port` advertised in Consul; `None` means the first PJSIP transport.
    pub sip_address: Option<String>,
    /// How the gateway reaches this node's ARI; `None` means derived from http.conf.
    pub ari_url: Option<String>,
    /// Signs every message published to the registrations and state exchanges and verifies
    /// every one received (see `amqp::signing`); `None`: nothing signed or verified.
    pub pool_key: Option<Secret>,
    /// A second key accepted but never used to sign, for a rotation.
    pub pool_key_accepted: Option<Secret>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consul {
    pub enabled: bool,
    /// Agents tried in order.
    pub urls: Vec<String>,
    pub token: String,
    pub service_name: String,
    pub check_ttl: Duration,
    pub deregister_after: Duration,
    pub apps_prefix: String,
}

impl Default for Consul {
    fn default() -> Self {
        Consul {
            enabled: true,
            urls: vec!["http://127.0.0.1:8500".into()],
            token: String::new(),
            service_name: "asterisk".into(),
            check_ttl: Duration::from_secs(15),
            deregister_after: Duration::from_secs(60),
            apps_prefix: "res_scale/apps/".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Amqp {
    pub enabled: bool,
    /// Brokers, failover in order.
    pub urls: Vec<String>,
    pub events_exchange: String,
    pub queue_capacity: usize,
    pub persistent: bool,
    pub confirms: bool,
    /// Zero turns heartbeats off.
    pub heartbeat: Duration,
    /// PEM file of CA certificates trusted for amqps, besides the system's.
    pub ca_file: Option<String>,
}

impl Default for Amqp {
    fn default() -> Self {
        Amqp {
            enabled: true,
            urls: vec!["amqp://guest:guest@127.0.0.1:5672/%2f".into()],
            events_exchange: "res_scale.events".into(),
            queue_capacity: 10_000,
            persistent: false,
            // Without confirms, events handed to a connection that just died are lost.
            confirms: true,
            heartbeat: Duration::from_secs(30),
            ca_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registrations {
    pub enabled: bool,
    pub exchange: String,
    pub publish_local: bool,
    pub sync_on_start: bool,
    pub withdraw_on_node_loss: bool,
    /// PJSIP's contacts in res_scale's indexed store instead of sorcery's `memory` wizard.
    pub indexed_contacts: bool,
    /// With a pool key: origins whose unsigned single registrations are applied anyway
    /// (registrars that cannot sign, such as Kamailio).
    pub unsigned_origins: Vec<String>,
}

impl Default for Registrations {
    fn default() -> Self {
        Registrations {
            enabled: true,
            exchange: "res_scale.registrations".into(),
            publish_local: true,
            sync_on_start: true,
            withdraw_on_node_loss: true,
            indexed_contacts: true,
            unsigned_origins: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// None: on when [amqp] is (see [`State::is_enabled`]).
    pub enabled: Option<bool>,
    pub exchange: String,
    /// The devices whose state is shared (published and applied).
    pub devices: DevicePatterns,
    /// Mailbox (MWI) state is shared too.
    pub mwi: bool,
    /// The mailboxes (`mailbox@context`) whose state is shared, with the patterns of `devices`.
    pub mailboxes: DevicePatterns,
}

impl Default for State {
    fn default() -> Self {
        State { enabled: None, exchange: "res_scale.state".into(), devices: DevicePatterns::default(), mwi: true, mailboxes: DevicePatterns::default() }
    }
}

impl State {
    /// Device state travels over the brokers of [amqp]: without a setting of its own it is on
    /// when [amqp] is.
    pub fn is_enabled(&self, amqp: &Amqp) -> bool {
        self.enabled.unwrap_or(amqp.enabled)
    }
}

/// Everything `res_scale.conf` configures. `Default` is what an absent file means.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Config {
    pub general: General,
    pub consul: Consul,
    pub amqp: Amqp,
    pub registrations: Registrations,
    pub state: State,
}

/// Why a single `key = value` was not accepted.
enum Reject {
    UnknownKey,
    Invalid(String),
}

impl From<String> for Reject {
    fn from(reason: String) -> Self {
        Reject::Invalid(reason)
    }
}

type Setter<T> = fn(&mut T, &str, &str) -> Result<(), Reject>;

impl Config {
    /// Validates the whole file. On failure every problem is reported, not just the first.
    pub fn from_raw(raw: &RawConfig) -> Result<Config, Vec<ConfigError>> {
        let mut config = Config::default();
        let mut errors = Vec::new();
        let mut seen: Vec<(&str, &str, u32)> = Vec::new();

        for section in &raw.sections {
            let name = section.name.as_str();
            for entry in &section.entries {
                if let Some(&(_, _, first)) = seen.iter().find(|(s, k, _)| *s == name && *k == entry.key) {
                    errors.push(error_at(name, entry, format!("given more than once (first on line {first})")));
                    continue;
                }
                seen.push((name, &entry.key, entry.line));
            }
            let outcome = match name {
                "general" => apply(section, &mut config.general, set_general, &mut errors),
                "consul" => apply(section, &mut config.consul, set_consul, &mut errors),
                "amqp" => apply(section, &mut config.amqp, set_amqp, &mut errors),
                "registrations" => apply(section, &mut config.registrations, set_registrations, &mut errors),
                "state" => apply(section, &mut config.state, set_state, &mut errors),
                _ => Err(()),
            };
            if outcome.is_err() {
                errors.push(ConfigError { section: name.to_string(), key: None, value: None, line: None, reason: "unknown section (known: general, consul, amqp, registrations, state)".into() });
            }
        }
        check_relations(&config, &mut errors);
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(errors)
        }
    }

    /// One line per section for `scale show status`, secrets masked.
    pub fn summary(&self) -> Vec<(&'static str, String)> {
        let on_off = |b: bool| if b { "yes" } else { "no" };
        let c = &self.consul;
        let a = &self.amqp;
        let r = &self.registrations;
        let st = &self.state;
        let g = &self.general;
        let auto = |v: &Option<String>| v.clone().unwrap_or_else(|| "(auto)".into());
        let secret = |v: &Option<Secret>| if v.is_some() { "****" } else { "(none)" };
        vec![
            (
                "general",
                format!(
                    "node_id={} sip_address={} ari_url={} pool_key={} pool_key_accepted={}",
                    auto(&g.node_id),
                    auto(&g.sip_address),
                    auto(&g.ari_url),
                    secret(&g.pool_key),
                    secret(&g.pool_key_accepted)
                ),
            ),
            (
                "consul",
                format!(
                    "enabled={} url={} token={} service_name={} check_ttl={} deregister_after={} apps_prefix={}",
                    on_off(c.enabled),
                    c.urls.join(","),
                    if c.token.is_empty() { "(none)" } else { "****" },
                    c.service_name,
                    duration::format(c.check_ttl),
                    duration::format(c.deregister_after),
                    c.apps_prefix
                ),
            ),
            (
                "amqp",
                format!(
                    "enabled={} url={} events_exchange={} queue_capacity={} persistent={} confirms={} heartbeat={} ca_file={}",
                    on_off(a.enabled),
                    a.urls.iter().map(|u| mask_password(u)).collect::<Vec<_>>().join(","),
                    a.events_exchange,
                    a.queue_capacity,
                    on_off(a.persistent),
                    on_off(a.confirms),
                    duration::format(a.heartbeat),
                    a.ca_file.as_deref().unwrap_or("(system)")
                ),
            ),
            (
                "registrations",
                format!(
                    "enabled={} exchange={} publish_local={} sync_on_start={} withdraw_on_node_loss={} indexed_contacts={} unsigned_origins={}",
                    on_off(r.enabled),
                    r.exchange,
                    on_off(r.publish_local),
                    on_off(r.sync_on_start),
                    on_off(r.withdraw_on_node_loss),
                    on_off(r.indexed_contacts),
                    if r.unsigned_origins.is_empty() { "(none)".into() } else { r.unsigned_origins.join(",") }
                ),
            ),
            (
                "state",
                format!(
                    "enabled={} exchange={} devices={} mwi={} mailboxes={}",
                    match st.enabled {
                        Some(enabled) => on_off(enabled).to_string(),
                        None => format!("{} (as [amqp])", on_off(st.is_enabled(a))),
                    },
                    st.exchange,
                    st.devices,
                    on_off(st.mwi),
                    st.mailboxes
                ),
            ),
        ]
    }
}

/// The Consul service ID a node uses when `node_id` is not set.
pub fn default_node_id(eid: &str) -> String {
    format!("asterisk-{}", eid.replace(':', ""))
}

/// Replaces the password of a URL with `****`, for logs and CLI output.
pub fn mask_password(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("****"));
            url.to_string()
        }
        _ => text.to_string(),
    }
}

/// The value of a config line as an error may show it: secrets masked.
fn shown_value(section: &str, key: &str, value: &str) -> String {
    match (section, key) {
        ("general", "pool_key" | "pool_key_accepted") | ("consul", "token") => "****".into(),
        ("amqp", "url") => value.split(',').map(|u| mask_password(u.trim())).collect::<Vec<_>>().join(","),
        _ => value.to_string(),
    }
}

fn error_at(section: &str, entry: &RawEntry, reason: String) -> ConfigError {
    ConfigError { section: section.to_string(), key: Some(entry.key.clone()), value: Some(shown_value(section, &entry.key, &entry.value)), line: Some(entry.line), reason }
}

/// Feeds every entry of a known section to its setter; `Err` means the section is unknown.
fn apply<T>(section: &RawSection, target: &mut T, set: Setter<T>, errors: &mut Vec<ConfigError>) -> Result<(), ()> {
    for entry in &section.entries {
        match set(target, &entry.key, entry.value.trim()) {
            Ok(()) => {}
            Err(Reject::UnknownKey) => errors.push(error_at(&section.name, entry, "unknown key (see configs/res_scale.conf.sample for the keys of this section)".into())),
            Err(Reject::Invalid(reason)) => errors.push(error_at(&section.name, entry, reason)),
        }
    }
    Ok(())
}

fn set_general(g: &mut General, key: &str, v: &str) -> Result<(), Reject> {
    match key {
        "node_id" => g.node_id = optional(v, identifier)?,
        "sip_address" => g.sip_address = optional(v, host_port)?,
        "ari_url" => g.ari_url = optional(v, |v| url_with_scheme(v, &["http", "https"]))?,
        "pool_key" => g.pool_key = pool_key(v)?,
        "pool_key_accepted" => g.pool_key_accepted = pool_key(v)?,
        _ => return Err(Reject::UnknownKey),
    }
    Ok(())
}

fn set_consul(c: &mut Consul, key: &str, v: &str) -> Result<(), Reject> {
    match key {
        "enabled" => c.enabled = boolean(v)?,
        "url" => c.urls = list(v, |u| url_with_scheme(u, &["http", "https"]))?,
        "token" => c.token = v.to_string(),
        "service_name" => c.service_name = identifier(v)?,
        "check_ttl" => c.check_ttl = duration_between(v, Duration::from_secs(3), None)?,
        "deregister_after" => {
            // Consul itself treats anything shorter as one minute.
            c.deregister_after = duration_between(v, Duration::from_secs(60), None)?
        }
        "apps_prefix" => c.apps_prefix = kv_prefix(v)?,
        _ => return Err(Reject::UnknownKey),
    }
    Ok(())
}

fn set_amqp(a: &mut Amqp, key: &str, v: &str) -> Result<(), Reject> {
    match key {
        "enabled" => a.enabled = boolean(v)?,
        "url" => a.urls = list(v, |u| url_with_scheme(u, &["amqp", "amqps"]))?,
        "events_exchange" => a.events_exchange = exchange_name(v)?,
        "queue_capacity" => a.queue_capacity = whole_number(v, 1, 1_000_000)?,
        "persistent" => a.persistent = boolean(v)?,
        "confirms" => a.confirms = boolean(v)?,
        // AMQP carries the heartbeat as 16-bit seconds.
        "heartbeat" => a.heartbeat = duration_between(v, Duration::ZERO, Some(Duration::from_secs(65_535)))?,
        "ca_file" => a.ca_file = optional(v, pem_file)?,
        _ => return Err(Reject::UnknownKey),
    }
    Ok(())
}

fn set_registrations(r: &mut Registrations, key: &str, v: &str) -> Result<(), Reject> {
    match key {
        "enabled" => r.enabled = boolean(v)?,
        "exchange" => r.exchange = exchange_name(v)?,
        "publish_local" => r.publish_local = boolean(v)?,
        "sync_on_start" => r.sync_on_start = boolean(v)?,
        "withdraw_on_node_loss" => r.withdraw_on_node_loss = boolean(v)?,
        "indexed_contacts" => r.indexed_contacts = boolean(v)?,
        "unsigned_origins" => r.unsigned_origins = if v.is_empty() { Vec::new() } else { list(v, identifier)? },
        _ => return Err(Reject::UnknownKey),
    }
    Ok(())
}

fn set_state(s: &mut State, key: &str, v: &str) -> Result<(), Reject> {
    match key {
        "enabled" if v.is_empty() => s.enabled = None,
        "enabled" => s.enabled = Some(boolean(v)?),
        "exchange" => s.exchange = exchange_name(v)?,
        "devices" => s.devices = DevicePatterns::parse(v)?,
        "mwi" => s.mwi = boolean(v)?,
        "mailboxes" => s.mailboxes = DevicePatterns::parse(v)?,
        _ => return Err(Reject::UnknownKey),
    }
    Ok(())
}

/// Rules that involve more than one key.
fn check_relations(config: &Config, errors: &mut Vec<ConfigError>) {
    let amqp = &config.amqp;
    let state = &config.state;
    let others = [(amqp.enabled, "[amqp] events_exchange", &amqp.events_exchange), (config.registrations.enabled, "[registrations] exchange", &config.registrations.exchange)];
    for (_, name, _) in others.iter().filter(|(on, _, exchange)| *on && state.is_enabled(amqp) && **exchange == state.exchange) {
        errors.push(ConfigError { section: "state".into(), key: Some("exchange".into()), value: Some(state.exchange.clone()), line: None, reason: format!("must differ from {name}") });
    }
    let general = &config.general;
    if general.pool_key.is_none() && general.pool_key_accepted.is_some() {
        errors.push(ConfigError {
            section: "general".into(),
            key: Some("pool_key_accepted".into()),
            value: Some("****".into()),
            line: None,
            reason: "set without pool_key (it only adds a second key to the one that signs)".into(),
        });
    }
    if amqp.enabled && config.registrations.enabled && amqp.events_exchange == config.registrations.exchange {
        errors.push(ConfigError {
            section: "registrations".into(),
            key: Some("exchange".into()),
            value: Some(config.registrations.exchange.clone()),
            line: None,
            reason: "must differ from [amqp] events_exchange".into(),
        });
    }
}

/// Same words as Asterisk's ast_true()/ast_false().
fn boolean(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" | "y" | "t" | "1" | "on" => Ok(true),
        "no" | "false" | "n" | "f" | "0" | "off" => Ok(false),
        _ => Err("expected yes or no".into()),
    }
}

fn optional(v: &str, parse: impl Fn(&str) -> Result<String, String>) -> Result<Option<String>, String> {
    if v.is_empty() {
        Ok(None)
    } else {
        parse(v).map(Some)
    }
}

fn list(v: &str, parse: impl Fn(&str) -> Result<String, String>) -> Result<Vec<String>, String> {
    let items: Vec<&str> = v.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if items.is_empty() {
        return Err("expected at least one value (comma-separated list)".into());
    }
    items.into_iter().map(parse).collect()
}

/// Empty: no key.
fn pool_key(v: &str) -> Result<Option<Secret>, String> {
    if v.is_empty() {
        return Ok(None);
    }
    if v.chars().count() < MIN_POOL_KEY_LEN {
        return Err(format!("too short: at least {MIN_POOL_KEY_LEN} characters (e.g. the output of `openssl rand -hex 32`)"));
    }
    Ok(Some(Secret::new(v)))
}

fn identifier(v: &str) -> Result<String, String> {
    let ok = !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(v.to_string())
    } else {
        Err("expected 1 to 128 characters among letters, digits, '-', '_' and '.'".into())
    }
}

fn host_port(v: &str) -> Result<String, String> {
    let bad = || "expected host:port, e.g. 192.0.2.10:5060 or [2001:db8::1]:5060".to_string();
    let (host, port) = v.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = if let Some(inner) = host.strip_prefix('[') { inner.strip_suffix(']').is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok()) } else { !host.is_empty() && !host.contains(':') };
    match port.parse::<u16>() {
        Ok(p) if p > 0 && host_ok => Ok(v.to_string()),
        _ => Err(bad()),
    }
}

fn url_with_scheme(v: &str, schemes: &[&str]) -> Result<String, String> {
    let url = url::Url::parse(v).map_err(|e| format!("not a URL: {e}"))?;
    if !schemes.contains(&url.scheme()) {
        return Err(format!("scheme must be one of: {}", schemes.join(", ")));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("URL has no host".into());
    }
    Ok(v.to_string())
}

fn duration_between(v: &str, min: Duration, max: Option<Duration>) -> Result<Duration, String> {
    let d = duration::parse(v)?;
    if d < min {
        return Err(format!("must be at least {}", duration::format(min)));
    }
    if let Some(max) = max.filter(|max| d > *max) {
        return Err(format!("must be at most {}", duration::format(max)));
    }
    Ok(d)
}

fn whole_number(v: &str, min: usize, max: usize) -> Result<usize, String> {
    match v.parse::<usize>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from {min} to {max}")),
    }
}

/// AMQP 0-9-1 exchange names; the `amq.` prefix belongs to the broker.
fn exchange_name(v: &str) -> Result<String, String> {
    let ok = !v.is_empty() && v.len() <= 255 && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if !ok {
        return Err("expected 1 to 255 characters among letters, digits, '-', '_', '.' and ':'".into());
    }
    if v.starts_with("amq.") {
        return Err("names starting with 'amq.' are reserved by the broker".into());
    }
    Ok(v.to_string())
}

/// A readable file with at least one PEM certificate (read now, so a typo fails the load).
fn pem_file(v: &str) -> Result<String, String> {
    if !v.starts_with('/') {
        return Err("expected an absolute path to a PEM file".into());
    }
    // Only a plain, reasonably sized file: /dev/zero or a FIFO would hang the load.
    let meta = std::fs::metadata(v).map_err(|e| format!("cannot read it: {e}"))?;
    if !meta.is_file() || meta.len() > 1024 * 1024 {
        return Err("expected a regular PEM file of at most 1 MiB".into());
    }
    let text = std::fs::read_to_string(v).map_err(|e| format!("cannot read it: {e}"))?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err("holds no PEM certificate".into());
    }
    Ok(v.to_string())
}

fn kv_prefix(v: &str) -> Result<String, String> {
    if v.is_empty() || v.starts_with('/') || !v.ends_with('/') {
        return Err("expected a Consul KV folder such as res_scale/apps/ (no leading '/', trailing '/')".into());
    }
    Ok(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> RawConfig {
        // A tiny stand-in for Asterisk's parser, enough for tests: [section] and key = value.
        let mut sections: Vec<RawSection> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                sections.push(RawSection { name: name.into(), entries: vec![] });
            } else if let Some((k, v)) = line.split_once('=') {
                sections.last_mut().unwrap().entries.push(RawEntry { key: k.trim().into(), value: v.trim().into(), line: i as u32 + 1 });
            }
        }
        RawConfig { sections }
    }

    #[test]
    fn the_sample_file_documents_the_defaults_and_every_key() {
        let sample = include_str!("../../../configs/res_scale.conf.sample");
        let active: String = sample.lines().filter(|l| !l.trim_start().starts_with(';')).map(|l| format!("{l}\n")).collect();
        assert_eq!(Config::from_raw(&raw(&active)), Ok(Config::default()), "sample values differ from the defaults");
        // Commented-out keys (`;key =`) must be real keys too.
        let all: String = sample
            .lines()
            .map(|l| l.strip_prefix(';').filter(|k| k.contains(" =") && !k.starts_with(' ')).unwrap_or(l))
            .filter(|l| !l.trim_start().starts_with(';'))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(Config::from_raw(&raw(&all)).is_ok(), "{:?}", Config::from_raw(&raw(&all)));
        assert!(all.contains("node_id =") && all.contains("token ="));
    }

    #[test]
    fn empty_file_means_defaults() {
        assert_eq!(Config::from_raw(&RawConfig::default()), Ok(Config::default()));
    }

    #[test]
    fn reads_every_section() {
        let c = Config::from_raw(&raw("[general]\nnode_id = ast-1\nsip_address = 10.0.0.1:5060\nari_url = http://10.0.0.1:8088/ari\n\
             [consul]\nenabled = no\nurl = http://a:8500, https://b:8501\ntoken = s3cret\ncheck_ttl = 30s\n\
             deregister_after = 2m\napps_prefix = applications/\n\
             [amqp]\nurl = amqps://u:p@broker/vh\nqueue_capacity = 500\npersistent = yes\nconfirms = off\nheartbeat = 0\n\
             [registrations]\npublish_local = no\nwithdraw_on_node_loss = false\n"))
        .unwrap();
        assert_eq!(c.general.node_id.as_deref(), Some("ast-1"));
        assert_eq!(c.general.sip_address.as_deref(), Some("10.0.0.1:5060"));
        assert!(!c.consul.enabled);
        assert_eq!(c.consul.urls, ["http://a:8500", "https://b:8501"]);
        assert_eq!(c.consul.check_ttl, Duration::from_secs(30));
        assert_eq!(c.consul.deregister_after, Duration::from_secs(120));
        assert_eq!(c.consul.apps_prefix, "applications/");
        assert_eq!(c.amqp.queue_capacity, 500);
        assert!(c.amqp.persistent && !c.amqp.confirms);
        assert_eq!(c.amqp.heartbeat, Duration::ZERO);
        assert!(!c.registrations.publish_local && !c.registrations.withdraw_on_node_loss);
        assert!(c.registrations.sync_on_start);
    }

    #[test]
    fn reports_every_problem_at_once_with_context() {
        let errors = Config::from_raw(&raw("[consul]\ncheck_ttl = soon\nurl = ftp://x\nbogus = 1\n\
             [amqp]\nqueue_capacity = -3\nenabled = maybe\nevents_exchange = amq.topic\n\
             [general]\nsip_address = nohost\n\
             [extra]\nx = 1\n"))
        .unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(errors.len(), 8, "{text:#?}");
        assert!(text.contains(&"res_scale.conf [consul] check_ttl = 'soon' (line 2): expected a number with an optional unit (ms, s, m, h), e.g. 15s".to_string()));
        assert!(text.iter().any(|t| t.starts_with("res_scale.conf [consul] url = 'ftp://x' (line 3): scheme must be")));
        assert!(text.iter().any(|t| t.starts_with("res_scale.conf [consul] bogus = '1' (line 4): unknown key")));
        assert!(text.iter().any(|t| t.contains("[amqp] queue_capacity = '-3' (line 6): expected a whole number from 1 to 1000000")));
        assert!(text.iter().any(|t| t.contains("[amqp] enabled = 'maybe' (line 7): expected yes or no")));
        assert!(text.iter().any(|t| t.contains("[amqp] events_exchange = 'amq.topic' (line 8): names starting with 'amq.'")));
        assert!(text.iter().any(|t| t.contains("[general] sip_address = 'nohost' (line 10): expected host:port")));
        assert!(text.iter().any(|t| t == "res_scale.conf [extra]: unknown section (known: general, consul, amqp, registrations, state)"));
    }

    #[test]
    fn bounds_are_enforced() {
        let e = Config::from_raw(&raw("[consul]\ncheck_ttl = 1s\nderegister_after = 30s\n[amqp]\nheartbeat = 20h\n")).unwrap_err();
        let text: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert!(text[0].ends_with("check_ttl = '1s' (line 2): must be at least 3s"), "{text:?}");
        assert!(text[1].ends_with("deregister_after = '30s' (line 3): must be at least 1m"), "{text:?}");
        assert!(text[2].ends_with("heartbeat = '20h' (line 5): must be at most 65535s"), "{text:?}");
    }

    #[test]
    fn repeated_key_is_an_error_even_across_repeated_sections() {
        let e = Config::from_raw(&raw("[amqp]\npersistent = yes\n[amqp]\npersistent = no\n")).unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].to_string(), "res_scale.conf [amqp] persistent = 'no' (line 4): given more than once (first on line 2)");
    }

    #[test]
    fn state_follows_amqp_unless_set_and_needs_its_own_exchange() {
        let c = Config::from_raw(&raw("[state]\ndevices = PJSIP/*, !Local/*\n")).unwrap();
        assert!(c.state.is_enabled(&c.amqp) && c.state.devices.shares("PJSIP/alice") && !c.state.devices.shares("Local/x"));
        let c = Config::from_raw(&raw("[amqp]\nenabled = no\n")).unwrap();
        assert!(!c.state.is_enabled(&c.amqp), "off with [amqp]");
        let c = Config::from_raw(&raw("[amqp]\nenabled = no\n[state]\nenabled = yes\n")).unwrap();
        assert!(c.state.is_enabled(&c.amqp), "on by its own setting");
        let e = Config::from_raw(&raw("[state]\nexchange = res_scale.registrations\n")).unwrap_err();
        assert_eq!(e[0].to_string(), "res_scale.conf [state] exchange = 'res_scale.registrations': must differ from [registrations] exchange");
        assert!(Config::from_raw(&raw("[state]\ndevices = PJSIP/*, !\n")).is_err());
    }

    #[test]
    fn mailbox_state_is_shared_unless_said_otherwise() {
        assert!(Config::default().state.mwi && Config::default().state.mailboxes.shares("1001@default"));
        let c = Config::from_raw(&raw("[state]\nmwi = no\nmailboxes = *@default, !9*\n")).unwrap();
        assert!(!c.state.mwi && c.state.mailboxes.shares("1001@default") && !c.state.mailboxes.shares("1001@sales") && !c.state.mailboxes.shares("9000@default"));
        assert!(Config::from_raw(&raw("[state]\nmwi = maybe\n")).is_err());
    }

    #[test]
    fn same_exchange_for_events_and_registrations_is_refused() {
        let e = Config::from_raw(&raw("[registrations]\nexchange = res_scale.events\n")).unwrap_err();
        assert_eq!(e[0].reason, "must differ from [amqp] events_exchange");
    }

    #[test]
    fn ca_file_must_be_a_readable_pem_file() {
        let dir = std::env::temp_dir().join(format!("res_scale-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pem = dir.join("ca.pem");
        std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").unwrap();
        let junk = dir.join("junk.txt");
        std::fs::write(&junk, "hello").unwrap();
        let ok = Config::from_raw(&raw(&format!("[amqp]\nca_file = {}\n", pem.display()))).unwrap();
        assert_eq!(ok.amqp.ca_file.as_deref(), Some(pem.to_str().unwrap()));
        let cases = [
            ("relative.pem", "absolute path"),
            ("/nonexistent/ca.pem", "cannot read it"),
            (junk.to_str().unwrap(), "no PEM certificate"),
            ("/dev/zero", "regular PEM file"),
            ("/", "regular PEM file"),
        ];
        for (value, reason) in cases {
            let e = Config::from_raw(&raw(&format!("[amqp]\nca_file = {value}\n"))).unwrap_err();
            assert!(e[0].reason.contains(reason), "{value}: {}", e[0]);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn empty_optional_values_mean_automatic() {
        let c = Config::from_raw(&raw("[general]\nnode_id =\nsip_address =\n")).unwrap();
        assert_eq!(c.general, General::default());
    }

    #[test]
    fn host_port_accepts_names_v4_and_bracketed_v6() {
        for ok in ["pbx1.example.net:5060", "192.0.2.1:5070", "[2001:db8::1]:5060"] {
            assert!(host_port(ok).is_ok(), "{ok}");
        }
        for bad in ["2001:db8::1:5060", ":5060", "host:0", "host:99999", "[nothex]:5060"] {
            assert!(host_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn summary_masks_secrets() {
        let c = Config::from_raw(&raw("[consul]\ntoken = topsecret\n[amqp]\nurl = amqp://user:hunter2@mq:5672/%2f\n")).unwrap();
        let text = format!("{:?}", c.summary());
        assert!(!text.contains("topsecret") && !text.contains("hunter2"), "{text}");
        assert!(text.contains("token=****"));
        assert!(text.contains("amqp://user:****@mq:5672/%2f"));
    }

    const KEY: &str = "0123456789abcdef-pool-key";
    const OLD_KEY: &str = "fedcba9876543210-old-key";

    #[test]
    fn pool_keys_are_read_and_never_shown() {
        let c = Config::from_raw(&raw(&format!("[general]\npool_key = {KEY}\npool_key_accepted = {OLD_KEY}\n[registrations]\nunsigned_origins = kamailio, edge-1\n"))).unwrap();
        assert_eq!(c.general.pool_key.as_ref().map(Secret::expose), Some(KEY));
        assert_eq!(c.general.pool_key_accepted.as_ref().map(Secret::expose), Some(OLD_KEY));
        assert_eq!(c.registrations.unsigned_origins, ["kamailio", "edge-1"]);
        for text in [format!("{:?}", c.summary()), format!("{c:?}")] {
            assert!(!text.contains(KEY) && !text.contains(OLD_KEY), "{text}");
        }
        assert!(format!("{:?}", c.summary()).contains("pool_key=**** pool_key_accepted=****"));
        let unset = Config::default();
        assert!(unset.general.pool_key.is_none() && unset.registrations.unsigned_origins.is_empty(), "off by default");
        assert!(format!("{:?}", unset.summary()).contains("pool_key=(none) pool_key_accepted=(none)"));
    }

    #[test]
    fn pool_key_errors_do_not_show_the_key() {
        let e = Config::from_raw(&raw("[general]\npool_key = short-secret\n")).unwrap_err();
        assert_eq!(e[0].to_string(), "res_scale.conf [general] pool_key = '****' (line 2): too short: at least 16 characters (e.g. the output of `openssl rand -hex 32`)");
        let e = Config::from_raw(&raw(&format!("[general]\npool_key = {KEY}\npool_key = {OLD_KEY}\n[consul]\ntoken = a\ntoken = b\n[amqp]\nurl = amqp://u:hunter2@mq\nurl = amqp://u:hunter2@mq\n")))
            .unwrap_err();
        let text: Vec<String> = e.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(text.iter().all(|t| !t.contains(OLD_KEY) && !t.contains("= 'b'") && !t.contains("hunter2")), "{text:?}");
        let e = Config::from_raw(&raw(&format!("[general]\npool_key_accepted = {OLD_KEY}\n"))).unwrap_err();
        assert_eq!(e[0].to_string(), "res_scale.conf [general] pool_key_accepted = '****': set without pool_key (it only adds a second key to the one that signs)");
        assert!(Config::from_raw(&raw("[registrations]\nunsigned_origins = kamailio, bad name\n")).is_err());
    }

    #[test]
    fn default_node_id_strips_colons() {
        assert_eq!(default_node_id("02:00:00:00:00:01"), "asterisk-020000000001");
    }
}
