//! A minimal ARI REST client for tests (what a third-party client would send).

use std::time::{Duration, Instant};

use base64::Engine;

pub struct Ari {
    base: String,
    auth: String,
    agent: ureq::Agent,
}

/// Status code, body and how long the request took.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub elapsed: Duration,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl Ari {
    pub fn new(base: &str, user: &str, password: &str) -> Ari {
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(10)).build();
        Ari { base: base.trim_end_matches('/').to_string(), auth: format!("Basic {auth}"), agent }
    }

    pub fn get(&self, path: &str) -> Reply {
        self.send("GET", path)
    }

    pub fn post(&self, path: &str) -> Reply {
        self.send("POST", path)
    }

    /// POST with a JSON body.
    pub fn post_json(&self, path: &str, body: &serde_json::Value) -> Reply {
        let started = Instant::now();
        let result = self.agent.post(&format!("{}{path}", self.base)).set("Authorization", &self.auth).set("Content-Type", "application/json").send_string(&body.to_string());
        Self::reply("POST", path, result, started)
    }

    pub fn delete(&self, path: &str) -> Reply {
        self.send("DELETE", path)
    }

    fn send(&self, method: &str, path: &str) -> Reply {
        let started = Instant::now();
        let result = self.agent.request(method, &format!("{}{path}", self.base)).set("Authorization", &self.auth).call();
        Self::reply(method, path, result, started)
    }

    fn reply(method: &str, path: &str, result: Result<ureq::Response, ureq::Error>, started: Instant) -> Reply {
        let (status, body) = match result {
            Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
            Err(e) => panic!("{method} {path}: {e}"),
        };
        Reply { status, body, elapsed: started.elapsed() }
    }
}
