//! This node's identity as published in Consul: IDs from Asterisk, addresses from
//! res_scale.conf or, when it is silent, from pjsip.conf and http.conf.

use res_scale_core::config::{self, Config};
use res_scale_core::consul::registration::NodeIdentity;
use res_scale_core::node_info::{self, Address};

use crate::ast::config::Loaded;
use crate::ast::{config as ast_config, identity};

/// Stands in for an address that binds to every interface and so cannot be dialled.
const FALLBACK_HOST: &str = "127.0.0.1";

pub fn identity(config: &Config, eid: &str, system_name: &str) -> NodeIdentity {
    let sip = sip_address(config);
    NodeIdentity {
        node_id: node_id(config, eid),
        service_name: config.consul.service_name.clone(),
        eid: eid.to_string(),
        system_name: system_name.to_string(),
        sip_host: sip.host,
        sip_port: sip.port,
        ari_url: ari_url(config),
        asterisk_version: identity::asterisk_version(),
        instance: format!("{:016x}", rand::random::<u64>()),
    }
}

fn read(file: &str) -> Option<res_scale_core::config::RawConfig> {
    match ast_config::load(file, false) {
        Loaded::Config(raw) => Some(raw),
        _ => None,
    }
}

fn sip_address(config: &Config) -> Address {
    if let Some(address) = config.general.sip_address.as_deref().and_then(Address::parse) {
        return address;
    }
    let mut address = read("pjsip.conf").and_then(|raw| node_info::sip_transport(&raw)).unwrap_or_else(|| {
        tracing::warn!("no PJSIP transport found in pjsip.conf; advertising {FALLBACK_HOST}:5060 (set sip_address in res_scale.conf)");
        Address { host: FALLBACK_HOST.into(), port: 5060 }
    });
    if address.is_unspecified() {
        tracing::warn!("the PJSIP transport binds to every interface; advertising {FALLBACK_HOST} (set sip_address in res_scale.conf)");
        address.host = FALLBACK_HOST.into();
    }
    address
}

fn ari_url(config: &Config) -> String {
    if let Some(url) = &config.general.ari_url {
        return url.clone();
    }
    let Some((mut address, path)) = read("http.conf").and_then(|raw| node_info::ari_url(&raw)) else {
        tracing::warn!("http.conf has no [general] section; advertising http://{FALLBACK_HOST}:8088/ari (set ari_url in res_scale.conf)");
        return format!("http://{FALLBACK_HOST}:8088/ari");
    };
    if address.is_unspecified() {
        address.host = FALLBACK_HOST.into();
    }
    format!("http://{}:{}{path}", address.url_host(), address.port)
}

/// The Consul service ID this node uses.
pub fn node_id(config: &Config, eid: &str) -> String {
    config.general.node_id.clone().unwrap_or_else(|| config::default_node_id(eid))
}
