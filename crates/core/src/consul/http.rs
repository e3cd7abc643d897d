//! The Consul HTTP API over reqwest: several agent URLs tried in order (the last one that
//! answered is tried first), an optional ACL token, http or https.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::Deserialize;

use super::api::{CheckState, ConsulApi, ConsulError, ConsulResult, Indexed, KvEntry, ServiceInstance, ServiceRegistration};

/// Time allowed for a request that is not a blocking query.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub struct HttpConsul {
    urls: Vec<String>,
    token: String,
    client: reqwest::Client,
    preferred: AtomicUsize,
}

impl HttpConsul {
    pub fn new(urls: &[String], token: &str) -> Result<HttpConsul, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .user_agent(concat!("res_scale/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(HttpConsul { urls: urls.iter().map(|u| u.trim_end_matches('/').to_string()).collect(), token: token.to_string(), client, preferred: AtomicUsize::new(0) })
    }

    /// The agent URL the last successful request went to.
    pub fn current_url(&self) -> &str {
        &self.urls[self.preferred.load(Ordering::Relaxed) % self.urls.len()]
    }

    /// Sends a request to the preferred agent, then to the others in order while they cannot be
    /// reached. `build` adds the body and query to a request for a given base URL.
    async fn send(&self, method: Method, path: &str, timeout: Duration, build: impl Fn(RequestBuilder) -> RequestBuilder) -> ConsulResult<Response> {
        let start = self.preferred.load(Ordering::Relaxed);
        let mut last_error = String::new();
        for i in 0..self.urls.len() {
            let index = (start + i) % self.urls.len();
            let mut request = self.client.request(method.clone(), format!("{}{path}", self.urls[index])).timeout(timeout);
            if !self.token.is_empty() {
                request = request.header("X-Consul-Token", &self.token);
            }
            match build(request).send().await {
                Ok(response) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(response);
                }
                // The URL with its query adds noise; the agent's base URL says enough.
                Err(e) => last_error = format!("{}: {}", self.urls[index], error_chain(&e.without_url())),
            }
        }
        Err(ConsulError::Unreachable(last_error))
    }
}

/// reqwest's top-level message is vague ("error sending request"); the causes say why.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn expect_ok(response: Response, what: &str) -> ConsulResult<Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    let detail = format!("{what}: HTTP {status}: {}", body.trim());
    // Consul 1.8 answers 500 "Unknown check ..." or "... does not have associated TTL" for a
    // check it lost; later versions answer 404.
    if status == StatusCode::NOT_FOUND || body.contains("Unknown check") || body.contains("Unknown service") || body.contains("does not have associated TTL") {
        Err(ConsulError::NotFound(detail))
    } else if status == StatusCode::FORBIDDEN || body.contains("Permission denied") || body.contains("ACL not found") {
        Err(ConsulError::Forbidden(detail))
    } else {
        Err(ConsulError::Failed(detail))
    }
}

fn consul_index(response: &Response) -> u64 {
    response.headers().get("X-Consul-Index").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn blocking_timeout(wait: Duration) -> Duration {
    // Consul adds up to wait/16 of jitter to a blocking query.
    wait + wait / 16 + REQUEST_TIMEOUT
}

fn wait_param(wait: Duration) -> String {
    format!("{}ms", wait.as_millis())
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawKv {
    key: String,
    value: Option<String>,
    #[serde(default)]
    modify_index: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawHealth {
    node: RawNode,
    service: RawService,
    #[serde(default)]
    checks: Vec<RawCheck>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawNode {
    node: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawService {
    #[serde(rename = "ID")]
    id: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawCheck {
    #[serde(rename = "CheckID")]
    check_id: String,
    status: String,
}

impl ConsulApi for HttpConsul {
    async fn register_service(&self, registration: &ServiceRegistration) -> ConsulResult<()> {
        let r = self.send(Method::PUT, "/v1/agent/service/register", REQUEST_TIMEOUT, |r| r.json(registration)).await?;
        expect_ok(r, "register service").await.map(drop)
    }

    async fn deregister_service(&self, service_id: &str) -> ConsulResult<()> {
        let r = self.send(Method::PUT, &format!("/v1/agent/service/deregister/{service_id}"), REQUEST_TIMEOUT, |r| r).await?;
        expect_ok(r, "deregister service").await.map(drop)
    }

    async fn pass_check(&self, check_id: &str, note: &str) -> ConsulResult<()> {
        let r = self.send(Method::PUT, &format!("/v1/agent/check/pass/{check_id}"), REQUEST_TIMEOUT, |r| r.query(&[("note", note)])).await?;
        expect_ok(r, "pass TTL check").await.map(drop)
    }

    async fn set_maintenance(&self, service_id: &str, enable: bool, reason: &str) -> ConsulResult<()> {
        let enable = if enable { "true" } else { "false" };
        let r = self.send(Method::PUT, &format!("/v1/agent/service/maintenance/{service_id}"), REQUEST_TIMEOUT, |r| r.query(&[("enable", enable), ("reason", reason)])).await?;
        expect_ok(r, "set maintenance").await.map(drop)
    }

    async fn kv_list(&self, prefix: &str, index: u64, wait: Duration) -> ConsulResult<Indexed<Vec<KvEntry>>> {
        let query = [("recurse", String::new()), ("index", index.to_string()), ("wait", wait_param(wait))];
        let r = self.send(Method::GET, &format!("/v1/kv/{prefix}"), blocking_timeout(wait), |r| r.query(&query)).await?;
        let index = consul_index(&r);
        // 404 is how Consul says "no key under this prefix".
        if r.status() == StatusCode::NOT_FOUND {
            return Ok(Indexed { index, value: vec![] });
        }
        let r = expect_ok(r, "list KV").await?;
        let raw: Vec<RawKv> = r.json().await.map_err(|e| ConsulError::Failed(format!("list KV: unreadable answer: {e}")))?;
        let value = raw
            .into_iter()
            .map(|kv| KvEntry { key: kv.key, value: kv.value.and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok()).unwrap_or_default(), modify_index: kv.modify_index })
            .collect();
        Ok(Indexed { index, value })
    }

    async fn kv_put(&self, key: &str, value: &[u8]) -> ConsulResult<()> {
        let r = self.send(Method::PUT, &format!("/v1/kv/{key}"), REQUEST_TIMEOUT, |r| r.body(value.to_vec())).await?;
        let r = expect_ok(r, "put KV").await?;
        // Consul answers `true`, or `false` when it did not write (only with cas or locks).
        match r.text().await.map_err(|e| ConsulError::Failed(format!("put KV: unreadable answer: {e}")))?.trim() {
            "true" => Ok(()),
            other => Err(ConsulError::Failed(format!("put KV '{key}': Consul answered {other}"))),
        }
    }

    async fn kv_delete(&self, key: &str, cas: Option<u64>) -> ConsulResult<bool> {
        let query: Vec<(&str, String)> = cas.map(|index| ("cas", index.to_string())).into_iter().collect();
        let r = self.send(Method::DELETE, &format!("/v1/kv/{key}"), REQUEST_TIMEOUT, |r| r.query(&query)).await?;
        let r = expect_ok(r, "delete KV").await?;
        Ok(r.text().await.map_err(|e| ConsulError::Failed(format!("delete KV: unreadable answer: {e}")))?.trim() == "true")
    }

    async fn health_service(&self, name: &str, index: u64, wait: Duration) -> ConsulResult<Indexed<Vec<ServiceInstance>>> {
        let query = [("index", index.to_string()), ("wait", wait_param(wait))];
        let r = self.send(Method::GET, &format!("/v1/health/service/{name}"), blocking_timeout(wait), |r| r.query(&query)).await?;
        let index = consul_index(&r);
        let r = expect_ok(r, "service health").await?;
        let raw: Vec<RawHealth> = r.json().await.map_err(|e| ConsulError::Failed(format!("service health: unreadable answer: {e}")))?;
        let value = raw
            .into_iter()
            .map(|h| ServiceInstance {
                node: h.node.node,
                id: h.service.id,
                address: h.service.address,
                port: h.service.port,
                meta: h.service.meta.unwrap_or_default(),
                checks: h.checks.into_iter().map(|c| CheckState { id: c.check_id, status: c.status }).collect(),
            })
            .collect();
        Ok(Indexed { index, value })
    }
}
