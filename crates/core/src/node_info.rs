//! Where other nodes reach this one, when res_scale.conf does not say: the first PJSIP
//! transport (pjsip.conf) and the HTTP server (http.conf).

use crate::config::RawConfig;

/// Host and port, with the host as written (IPv6 without brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub host: String,
    pub port: u16,
}

impl Address {
    /// Parses `host:port` or `[v6]:port`.
    pub fn parse(text: &str) -> Option<Address> {
        let (host, port) = text.trim().rsplit_once(':')?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        Some(Address { host: host.to_string(), port: port.parse().ok()? })
    }

    /// True for 0.0.0.0 / :: (a bind to every interface, which nobody can dial).
    pub fn is_unspecified(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified())
    }

    pub fn url_host(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

fn value<'a>(section: &'a crate::config::RawSection, key: &str) -> Option<&'a str> {
    section.entries.iter().find(|e| e.key == key).map(|e| e.value.trim())
}

/// The first UDP/TCP/TLS transport of pjsip.conf: its external signaling address if it binds
/// to every interface and has one, else its bind address.
pub fn sip_transport(pjsip: &RawConfig) -> Option<Address> {
    let transport = pjsip.sections.iter().find(|s| value(s, "type") == Some("transport") && matches!(value(s, "protocol").unwrap_or("udp"), "udp" | "tcp" | "tls"))?;
    let default_port = if value(transport, "protocol") == Some("tls") { 5061 } else { 5060 };
    let bind = value(transport, "bind").unwrap_or("0.0.0.0");
    let mut address = Address::parse(bind).unwrap_or(Address { host: bind.to_string(), port: default_port });
    if address.is_unspecified() {
        if let Some(external) = value(transport, "external_signaling_address").filter(|v| !v.is_empty()) {
            address.host = external.to_string();
            if let Some(port) = value(transport, "external_signaling_port").and_then(|p| p.parse().ok()) {
                address.port = port;
            }
        }
    }
    Some(address)
}

/// The ARI base URL from http.conf `[general]` (bindaddr, bindport, prefix).
pub fn ari_url(http: &RawConfig) -> Option<(Address, String)> {
    let general = http.sections.iter().find(|s| s.name == "general")?;
    let host = value(general, "bindaddr").unwrap_or("0.0.0.0").to_string();
    let port = value(general, "bindport").and_then(|p| p.parse().ok()).unwrap_or(8088);
    let address = Address { host, port };
    let prefix = value(general, "prefix").unwrap_or("").trim_matches('/');
    let path = if prefix.is_empty() { "/ari".to_string() } else { format!("/{prefix}/ari") };
    Some((address, path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RawEntry, RawSection};

    fn section(name: &str, entries: &[(&str, &str)]) -> RawSection {
        RawSection { name: name.into(), entries: entries.iter().map(|(k, v)| RawEntry { key: k.to_string(), value: v.to_string(), line: 1 }).collect() }
    }

    #[test]
    fn first_sip_transport_wins_and_websockets_are_skipped() {
        let cfg = RawConfig {
            sections: vec![
                section("alice", &[("type", "endpoint")]),
                section("ws", &[("type", "transport"), ("protocol", "ws"), ("bind", "10.0.0.1:8089")]),
                section("udp", &[("type", "transport"), ("protocol", "udp"), ("bind", "10.0.0.1:5070")]),
                section("tcp", &[("type", "transport"), ("protocol", "tcp"), ("bind", "10.0.0.1:5080")]),
            ],
        };
        assert_eq!(sip_transport(&cfg), Some(Address { host: "10.0.0.1".into(), port: 5070 }));
    }

    #[test]
    fn wildcard_bind_uses_the_external_address_when_given() {
        let cfg = RawConfig { sections: vec![section("t", &[("type", "transport"), ("bind", "0.0.0.0:5060"), ("external_signaling_address", "198.51.100.7"), ("external_signaling_port", "5062")])] };
        assert_eq!(sip_transport(&cfg), Some(Address { host: "198.51.100.7".into(), port: 5062 }));
        let bare = RawConfig { sections: vec![section("t", &[("type", "transport"), ("bind", "0.0.0.0")])] };
        let a = sip_transport(&bare).unwrap();
        assert!(a.is_unspecified() && a.port == 5060);
    }

    #[test]
    fn ari_url_follows_http_conf() {
        let cfg = RawConfig { sections: vec![section("general", &[("bindaddr", "192.0.2.5"), ("bindport", "8090"), ("prefix", "asterisk")])] };
        let (addr, path) = ari_url(&cfg).unwrap();
        assert_eq!((addr.host.as_str(), addr.port, path.as_str()), ("192.0.2.5", 8090, "/asterisk/ari"));
        assert_eq!(Address::parse("[::1]:5060").unwrap().url_host(), "[::1]");
    }
}
