//! The gateway's configuration: a TOML file, then `SCALE_GATEWAY_<SECTION>_<KEY>` environment
//! variables over it, then validation. Every problem is collected and reported at once, before
//! any port is bound, so an operator fixes the file in one pass.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use res_scale_core::duration;
use toml::{Table, Value};

/// One client account (what ARI applications authenticate with).
#[derive(Clone)]
pub struct Client {
    pub user: String,
    pub password: String,
    /// Only GET and OPTIONS, as an ARI `read_only = yes` user.
    pub read_only: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client {{ user: {:?}, password: <hidden>, read_only: {} }}", self.user, self.read_only)
    }
}

#[derive(Debug, Clone)]
pub struct Tls {
    pub cert_file: String,
    pub key_file: String,
}

#[derive(Debug, Clone)]
pub struct Consul {
    pub url: Vec<String>,
    pub token: String,
    pub apps_prefix: String,
    /// The service the nodes register as (res_scale.conf `[consul] service_name`).
    pub node_service: String,
    /// The service this gateway registers itself as.
    pub service_name: String,
    pub check_ttl: Duration,
    pub deregister_after: Duration,
}

#[derive(Debug, Clone)]
pub struct Amqp {
    pub url: Vec<String>,
    pub events_exchange: String,
    pub queue_max_length: u32,
    /// `queue_type = "quorum"`: the applications' queues are quorum queues, replicated on every
    /// broker of a RabbitMQ cluster (`"classic"`, the default, keeps each on one broker).
    pub quorum_queues: bool,
    /// Deliveries handed to a socket's writer before they are acknowledged: what a slow client
    /// can hold in the gateway's memory per application.
    pub prefetch: u16,
    pub heartbeat: Duration,
    pub ca_file: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Apps {
    pub linger: Duration,
}

#[derive(Clone)]
pub struct Nodes {
    pub ari_user: String,
    pub ari_password: String,
    pub request_timeout: Duration,
    /// How long each node has to answer an ownership question or its part of a pool-wide
    /// read; a node slower than that is left out of the answer.
    pub probe_timeout: Duration,
    pub ca_file: Option<String>,
}

impl std::fmt::Debug for Nodes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Nodes {{ ari_user: {:?}, ari_password: <hidden>, request_timeout: {:?}, probe_timeout: {:?}, ca_file: {:?} }}",
            self.ari_user, self.request_timeout, self.probe_timeout, self.ca_file
        )
    }
}

#[derive(Debug, Clone)]
pub struct Ownership {
    /// An entry nobody confirmed for this long is forgotten (a safety net: entries normally go
    /// with the resource's Destroyed/Finished event or a 404 from the owner).
    pub ttl: Duration,
}

/// Cross-node bridges: how the gateway joins a channel on one node to a bridge on another.
#[derive(Debug, Clone)]
pub struct Bridging {
    /// The PJSIP endpoint every node has for the other pool members (configs/asterisk/pjsip.conf).
    pub endpoint: String,
    /// How long setting up a helper leg (call, answer, both sides bridged) may take.
    pub leg_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_header_bytes: usize,
    pub max_frame_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub instance_id: String,
    /// `scheme://host[:port]` that clients use, when a proxy in front of the gateway changes
    /// it; otherwise api-docs' basePath is built from the request's Host header.
    pub public_url: Option<String>,
    pub drain_timeout: Duration,
    pub log_format: LogFormat,
    pub tls: Option<Tls>,
    pub clients: Vec<Client>,
    pub consul: Consul,
    pub amqp: Amqp,
    pub apps: Apps,
    pub nodes: Nodes,
    pub ownership: Ownership,
    pub bridging: Bridging,
    pub limits: Limits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Reads the file (if any), applies the environment, validates. `Err` lists every problem.
pub fn load(path: Option<&str>, env: &BTreeMap<String, String>) -> Result<Config, Vec<String>> {
    let mut table = match path {
        None => Table::new(),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| vec![format!("{path}: cannot read: {e}")])?;
            text.parse::<Table>().map_err(|e| vec![format!("{path}: {}", e.to_string().trim_end())])?
        }
    };
    apply_env(&mut table, env);
    from_table(&table)
}

/// `SCALE_GATEWAY_LISTEN` sets `listen`, `SCALE_GATEWAY_CONSUL_URL` sets `[consul] url`, and
/// so on. `SCALE_GATEWAY_CLIENTS` is `user:password[,user:password...]`. Values are strings;
/// the reader converts them as it would a TOML string.
fn apply_env(table: &mut Table, env: &BTreeMap<String, String>) {
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("SCALE_GATEWAY_") else { continue };
        let rest = rest.to_ascii_lowercase();
        if rest == "clients" {
            let clients = value
                .split(',')
                .filter(|c| !c.trim().is_empty())
                .map(|c| {
                    let (user, password) = c.trim().split_once(':').unwrap_or((c.trim(), ""));
                    let mut t = Table::new();
                    t.insert("user".into(), Value::String(user.into()));
                    t.insert("password".into(), Value::String(password.into()));
                    Value::Table(t)
                })
                .collect();
            table.insert("clients".into(), Value::Array(clients));
            continue;
        }
        match SECTIONS.iter().find(|s| rest.starts_with(&format!("{s}_"))) {
            Some(section) => {
                let key = &rest[section.len() + 1..];
                let entry = table.entry(section.to_string()).or_insert_with(|| Value::Table(Table::new()));
                if let Value::Table(t) = entry {
                    t.insert(key.to_string(), Value::String(value.clone()));
                }
            }
            None => {
                table.insert(rest, Value::String(value.clone()));
            }
        }
    }
}

const SECTIONS: [&str; 8] = ["tls", "consul", "amqp", "apps", "nodes", "ownership", "bridging", "limits"];
const TOP_KEYS: [&str; 6] = ["listen", "instance_id", "public_url", "drain_timeout", "log_format", "clients"];

/// Pulls typed values out of one table, recording a line per problem.
struct Reader<'a> {
    section: &'static str,
    table: Option<&'a Table>,
    errors: &'a mut Vec<String>,
    known: Vec<&'static str>,
}

impl<'a> Reader<'a> {
    fn new(root: &'a Table, section: &'static str, errors: &'a mut Vec<String>) -> Reader<'a> {
        let table = match root.get(section) {
            None => None,
            Some(Value::Table(t)) => Some(t),
            Some(_) => {
                errors.push(format!("[{section}] must be a table"));
                None
            }
        };
        Reader { section, table, errors, known: Vec::new() }
    }

    fn top(root: &'a Table, errors: &'a mut Vec<String>) -> Reader<'a> {
        Reader { section: "", table: Some(root), errors, known: Vec::new() }
    }

    fn name(&self, key: &str) -> String {
        if self.section.is_empty() {
            key.to_string()
        } else {
            format!("[{}] {key}", self.section)
        }
    }

    fn raw(&mut self, key: &'static str) -> Option<&'a Value> {
        self.known.push(key);
        self.table.and_then(|t| t.get(key))
    }

    fn string(&mut self, key: &'static str, default: &str) -> String {
        match self.raw(key) {
            None => default.to_string(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => {
                let e = format!("{} = {v}: expected a string", self.name(key));
                self.errors.push(e);
                default.to_string()
            }
        }
    }

    /// A string that must be one of `choices` (the first is the default).
    fn choice(&mut self, key: &'static str, choices: &[&str]) -> String {
        let value = self.string(key, choices[0]);
        if choices.contains(&value.as_str()) {
            return value;
        }
        let e = format!("{} = \"{value}\": expected one of {}", self.name(key), choices.join(", "));
        self.errors.push(e);
        choices[0].to_string()
    }

    fn optional(&mut self, key: &'static str) -> Option<String> {
        Some(self.string(key, "")).filter(|s| !s.is_empty())
    }

    /// A list: a TOML array of strings, or one comma-separated string.
    fn list(&mut self, key: &'static str, default: &str) -> Vec<String> {
        let items: Vec<String> = match self.raw(key) {
            None => default.split(',').map(str::to_string).collect(),
            Some(Value::String(s)) => s.split(',').map(|x| x.trim().to_string()).collect(),
            Some(Value::Array(a)) if a.iter().all(Value::is_str) => a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
            Some(v) => {
                let e = format!("{} = {v}: expected a list of strings", self.name(key));
                self.errors.push(e);
                Vec::new()
            }
        };
        let items: Vec<String> = items.into_iter().filter(|s| !s.is_empty()).collect();
        if items.is_empty() {
            let e = format!("{}: needs at least one entry", self.name(key));
            self.errors.push(e);
        }
        items
    }

    fn number(&mut self, key: &'static str, default: u64, min: u64, max: u64) -> u64 {
        let value = match self.raw(key) {
            None => return default,
            Some(Value::Integer(i)) => u64::try_from(*i).ok(),
            Some(Value::String(s)) => s.trim().parse().ok(),
            Some(_) => None,
        };
        match value.filter(|v| (min..=max).contains(v)) {
            Some(v) => v,
            None => {
                let shown = self.raw(key).map(Value::to_string).unwrap_or_default();
                let e = format!("{} = {shown}: expected a whole number from {min} to {max}", self.name(key));
                self.errors.push(e);
                default
            }
        }
    }

    fn boolean(&mut self, key: &'static str, default: bool) -> bool {
        match self.raw(key) {
            None => default,
            Some(Value::Boolean(b)) => *b,
            Some(Value::String(s)) if matches!(s.as_str(), "yes" | "true" | "1") => true,
            Some(Value::String(s)) if matches!(s.as_str(), "no" | "false" | "0") => false,
            Some(v) => {
                let e = format!("{} = {v}: expected true or false", self.name(key));
                self.errors.push(e);
                default
            }
        }
    }

    fn duration(&mut self, key: &'static str, default: &str, min: Duration) -> Duration {
        let fallback = duration::parse(default).expect("defaults parse");
        let text = match self.raw(key) {
            None => return fallback,
            Some(Value::String(s)) => s.clone(),
            Some(v) => {
                let e = format!("{} = {v}: expected a duration such as \"30s\" or \"1m\"", self.name(key));
                self.errors.push(e);
                return fallback;
            }
        };
        match duration::parse(&text) {
            Ok(d) if d >= min => d,
            Ok(_) => {
                let e = format!("{} = \"{text}\": must be at least {}", self.name(key), duration::format(min));
                self.errors.push(e);
                fallback
            }
            Err(why) => {
                let e = format!("{} = \"{text}\": {why}", self.name(key));
                self.errors.push(e);
                fallback
            }
        }
    }

    /// Reports keys this section does not have (a typo would otherwise be silently ignored).
    fn finish(self) {
        let Some(table) = self.table else { return };
        for key in table.keys() {
            let known = self.known.contains(&key.as_str()) || (self.section.is_empty() && (SECTIONS.contains(&key.as_str()) || TOP_KEYS.contains(&key.as_str())));
            if !known {
                self.errors.push(format!("{}: unknown key", if self.section.is_empty() { key.clone() } else { format!("[{}] {key}", self.section) }));
            }
        }
    }
}

fn check_urls(errors: &mut Vec<String>, what: &str, urls: &[String], schemes: &[&str]) {
    for u in urls {
        match url_scheme(u) {
            Some(s) if schemes.contains(&s) => {}
            _ => errors.push(format!("{what} = \"{}\": expected a {} URL", mask_url(u), schemes.join(" or "))),
        }
    }
}

fn url_scheme(u: &str) -> Option<&str> {
    u.split_once("://").map(|(s, _)| s).filter(|_| u.len() > u.find("://").unwrap_or(0) + 3)
}

/// A URL with any password replaced, for messages and logs.
pub fn mask_url(u: &str) -> String {
    match (u.find("://"), u.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &u[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &u[..s + 3], &u[at..])
        }
        _ => u.to_string(),
    }
}

fn default_instance_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "scale-gateway".into())
}

fn from_table(root: &Table) -> Result<Config, Vec<String>> {
    let mut errors = Vec::new();

    let mut top = Reader::top(root, &mut errors);
    let listen_text = top.string("listen", "127.0.0.1:8090");
    let instance_id = top.string("instance_id", "");
    let public_url = top.optional("public_url");
    let drain_timeout = top.duration("drain_timeout", "10s", Duration::ZERO);
    let log_format = top.string("log_format", "text");
    top.known.push("clients");
    top.finish();
    let listen = listen_text.parse::<SocketAddr>();
    if listen.is_err() {
        errors.push(format!("listen = \"{listen_text}\": expected address:port, e.g. 127.0.0.1:8090"));
    }
    let log_format = match log_format.as_str() {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            errors.push(format!("log_format = \"{other}\": expected \"text\" or \"json\""));
            LogFormat::Text
        }
    };
    if let Some(u) = &public_url {
        check_urls(&mut errors, "public_url", std::slice::from_ref(u), &["http", "https"]);
    }
    let instance_id = if instance_id.is_empty() { default_instance_id() } else { instance_id };
    if !instance_id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        errors.push(format!("instance_id = \"{instance_id}\": use letters, digits, '-', '_', '.' (it names queues and the Consul service)"));
    }

    let clients = read_clients(root, &mut errors);

    let tls = {
        let mut r = Reader::new(root, "tls", &mut errors);
        let cert = r.optional("cert_file");
        let key = r.optional("key_file");
        r.finish();
        match (cert, key) {
            (None, None) => None,
            (Some(cert_file), Some(key_file)) => Some(Tls { cert_file, key_file }),
            _ => {
                errors.push("[tls]: set both cert_file and key_file, or neither".into());
                None
            }
        }
    };

    let consul = {
        let mut r = Reader::new(root, "consul", &mut errors);
        let c = Consul {
            url: r.list("url", "http://127.0.0.1:8500"),
            token: r.string("token", ""),
            apps_prefix: r.string("apps_prefix", "res_scale/apps/"),
            node_service: r.string("node_service", "asterisk"),
            service_name: r.string("service_name", "scale-gateway"),
            check_ttl: r.duration("check_ttl", "10s", Duration::from_secs(1)),
            deregister_after: r.duration("deregister_after", "1m", Duration::from_secs(60)),
        };
        r.finish();
        c
    };
    check_urls(&mut errors, "[consul] url", &consul.url, &["http", "https"]);
    if !consul.apps_prefix.ends_with('/') {
        errors.push(format!("[consul] apps_prefix = \"{}\": must end with '/'", consul.apps_prefix));
    }

    let amqp = {
        let mut r = Reader::new(root, "amqp", &mut errors);
        let a = Amqp {
            url: r.list("url", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            events_exchange: r.string("events_exchange", "res_scale.events"),
            queue_max_length: r.number("queue_max_length", 100_000, 1, 100_000_000) as u32,
            quorum_queues: r.choice("queue_type", &["classic", "quorum"]) == "quorum",
            prefetch: r.number("prefetch", 1000, 1, 65_535) as u16,
            heartbeat: r.duration("heartbeat", "30s", Duration::ZERO),
            ca_file: r.optional("ca_file"),
        };
        r.finish();
        a
    };
    check_urls(&mut errors, "[amqp] url", &amqp.url, &["amqp", "amqps"]);

    let apps = {
        let mut r = Reader::new(root, "apps", &mut errors);
        let a = Apps { linger: r.duration("linger", "30s", Duration::from_secs(1)) };
        r.finish();
        a
    };

    let nodes = {
        let mut r = Reader::new(root, "nodes", &mut errors);
        let n = Nodes {
            ari_user: r.string("ari_user", ""),
            ari_password: r.string("ari_password", ""),
            request_timeout: r.duration("request_timeout", "10s", Duration::from_millis(100)),
            probe_timeout: r.duration("probe_timeout", "2s", Duration::from_millis(50)),
            ca_file: r.optional("ca_file"),
        };
        r.finish();
        n
    };
    if nodes.ari_user.is_empty() {
        errors.push("[nodes] ari_user: required (the ARI user of the nodes' ari.conf)".into());
    }

    let ownership = {
        let mut r = Reader::new(root, "ownership", &mut errors);
        let o = Ownership { ttl: r.duration("ttl", "6h", Duration::from_secs(1)) };
        r.finish();
        o
    };

    let bridging = {
        let mut r = Reader::new(root, "bridging", &mut errors);
        let b = Bridging { endpoint: r.string("endpoint", "res_scale_pool"), leg_timeout: r.duration("leg_timeout", "5s", Duration::from_millis(100)) };
        r.finish();
        b
    };
    if bridging.endpoint.is_empty() || !bridging.endpoint.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        errors.push(format!("[bridging] endpoint = \"{}\": expected a PJSIP endpoint name", bridging.endpoint));
    }

    let limits = {
        let mut r = Reader::new(root, "limits", &mut errors);
        let l = Limits {
            max_body_bytes: r.number("max_body_bytes", 1 << 20, 1024, 1 << 30) as usize,
            max_header_bytes: r.number("max_header_bytes", 16 * 1024, 1024, 1 << 20) as usize,
            max_frame_bytes: r.number("max_frame_bytes", 64 * 1024, 1024, 1 << 26) as usize,
        };
        r.finish();
        l
    };

    for file in [amqp.ca_file.as_deref(), nodes.ca_file.as_deref(), tls.as_ref().map(|t| t.cert_file.as_str()), tls.as_ref().map(|t| t.key_file.as_str())].into_iter().flatten() {
        if let Err(e) = std::fs::metadata(file) {
            errors.push(format!("{file}: {e}"));
        }
    }

    let Ok(listen) = listen else { return Err(errors) };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Config {
        listen,
        instance_id,
        public_url: public_url.map(|u| u.trim_end_matches('/').to_string()),
        drain_timeout,
        log_format,
        tls,
        clients,
        consul,
        amqp,
        apps,
        nodes,
        ownership,
        bridging,
        limits,
    })
}

fn read_clients(root: &Table, errors: &mut Vec<String>) -> Vec<Client> {
    let entries = match root.get("clients") {
        None => {
            errors.push("[[clients]]: at least one client account (user, password) is required".into());
            return Vec::new();
        }
        Some(Value::Array(a)) => a,
        Some(_) => {
            errors.push("clients: expected [[clients]] tables".into());
            return Vec::new();
        }
    };
    let mut clients: Vec<Client> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let Value::Table(t) = entry else {
            errors.push(format!("[[clients]] #{}: expected a table with user and password", i + 1));
            continue;
        };
        let mut r = Reader { section: "clients", table: Some(t), errors, known: Vec::new() };
        let user = r.string("user", "");
        let password = r.string("password", "");
        let read_only = r.boolean("read_only", false);
        r.finish();
        if user.is_empty() || user.contains(':') {
            errors.push(format!("[[clients]] #{}: user must be set and must not contain ':'", i + 1));
        } else if password.is_empty() {
            errors.push(format!("[[clients]] user \"{user}\": password must be set"));
        } else if clients.iter().any(|c| c.user == user) {
            errors.push(format!("[[clients]] user \"{user}\": listed twice"));
        } else {
            clients.push(Client { user, password, read_only });
        }
    }
    if entries.is_empty() {
        errors.push("[[clients]]: at least one client account (user, password) is required".into());
    }
    clients
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, Vec<String>> {
        let mut table: Table = text.parse().unwrap();
        apply_env(&mut table, &env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        from_table(&table)
    }

    const MINIMAL: &str = "[[clients]]\nuser = \"app\"\npassword = \"secret\"\n[nodes]\nari_user = \"gw\"\nari_password = \"pw\"\n";

    #[test]
    fn defaults_fill_every_key() {
        let c = parse(MINIMAL, &[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8090");
        assert_eq!(c.consul.url, ["http://127.0.0.1:8500"]);
        assert_eq!(c.consul.apps_prefix, "res_scale/apps/");
        assert_eq!(c.amqp.queue_max_length, 100_000);
        assert!(!c.amqp.quorum_queues);
        assert_eq!(c.apps.linger, Duration::from_secs(30));
        assert_eq!(c.clients.len(), 1);
        assert!(!c.instance_id.is_empty());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = "listen = \"nowhere\"\nbogus = 1\n[amqp]\nqueue_max_length = \"lots\"\nqueue_type = \"mirrored\"\nurl = \"http://x\"\n[apps]\nlinger = \"soon\"\n[nodes]\nari_password = \"x\"\n";
        let errors = parse(text, &[]).unwrap_err();
        let all = errors.join("\n");
        for expected in [
            "listen = \"nowhere\"",
            "bogus: unknown key",
            "[amqp] queue_max_length",
            "[amqp] queue_type = \"mirrored\": expected one of classic, quorum",
            "[amqp] url",
            "[apps] linger",
            "[nodes] ari_user",
            "[[clients]]",
        ] {
            assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
        }
        assert_eq!(errors.len(), 8, "{all}");
    }

    /// The documented sample holds every key with its default: it parses, names no unknown
    /// key, and gives the same values as an empty file.
    #[test]
    fn the_sample_documents_the_defaults() {
        let sample = include_str!("../../../configs/scale-gateway.toml.sample");
        let env = [("SCALE_GATEWAY_NODES_ARI_USER", "gw")];
        let from_sample = parse(sample, &env).unwrap_or_else(|e| panic!("{e:?}"));
        let defaults = parse("[[clients]]\nuser = \"app\"\npassword = \"change-me\"\n", &env).unwrap();
        assert_eq!(format!("{from_sample:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = [
            ("SCALE_GATEWAY_LISTEN", "127.0.0.1:9999"),
            ("SCALE_GATEWAY_CONSUL_URL", "http://a:8500,http://b:8500"),
            ("SCALE_GATEWAY_APPS_LINGER", "5s"),
            ("SCALE_GATEWAY_AMQP_QUEUE_MAX_LENGTH", "50"),
            ("SCALE_GATEWAY_AMQP_QUEUE_TYPE", "quorum"),
            ("SCALE_GATEWAY_CLIENTS", "x:y,z:w"),
        ];
        let c = parse(MINIMAL, &env).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:9999");
        assert_eq!(c.consul.url, ["http://a:8500", "http://b:8500"]);
        assert_eq!(c.apps.linger, Duration::from_secs(5));
        assert_eq!(c.amqp.queue_max_length, 50);
        assert!(c.amqp.quorum_queues);
        assert_eq!(c.clients.iter().map(|c| c.user.as_str()).collect::<Vec<_>>(), ["x", "z"]);
    }

    #[test]
    fn secrets_stay_out_of_debug_output_and_messages() {
        let c = parse(MINIMAL, &[]).unwrap();
        let shown = format!("{:?} {:?}", c.clients, c.nodes);
        assert!(!shown.contains("secret") && !shown.contains("\"pw\""), "{shown}");
        assert_eq!(mask_url("amqp://guest:hunter2@h:5672/%2f"), "amqp://guest:***@h:5672/%2f");
        let errors = parse(&format!("{MINIMAL}[amqp]\nurl = \"ftp://u:hunter2@h\"\n"), &[]).unwrap_err();
        assert!(!errors.join(" ").contains("hunter2"), "{errors:?}");
    }
}
