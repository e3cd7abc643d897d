//! A private Consul 1.8.7 dev agent on free loopback ports, and the HTTP API of any agent
//! (`ConsulApi`: the dev agent's, or a cluster agent's in a container).

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::child::tied_command;
use crate::ports::free_port;
use crate::testbed::Testbed;
use crate::wait;

pub struct Consul {
    pub http_port: u16,
    api: ConsulApi,
    binary: PathBuf,
    dir: PathBuf,
    ports: [u16; 3],
    child: Option<Child>,
}

impl Consul {
    /// `token`: turn ACLs on with default deny and this management token.
    pub fn start(testbed: &Testbed, dir: &Path, token: Option<&str>) -> Consul {
        fs::create_dir_all(dir).unwrap();
        let http_port = free_port();
        let api = ConsulApi::with_token(&format!("http://127.0.0.1:{http_port}"), token.map(str::to_string));
        let mut consul = Consul { http_port, api, binary: testbed.consul.clone(), dir: dir.to_path_buf(), ports: [free_port(), free_port(), free_port()], child: None };
        consul.restart();
        consul
    }

    /// The agent's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the agent (a dev agent forgets everything: services, checks, KV).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the agent if it runs, then starts a fresh dev agent on the same ports.
    pub fn restart(&mut self) {
        self.stop();
        let log = fs::File::create(self.dir.join("consul.log")).unwrap();
        let [server, serf_lan, serf_wan] = self.ports;
        let child = tied_command(&self.binary, "KILL")
            .args(["agent", "-dev", "-client", "127.0.0.1", "-bind", "127.0.0.1"])
            .args(["-http-port", &self.http_port.to_string(), "-dns-port", "-1", "-grpc-port", "-1"])
            .args(["-server-port", &server.to_string()])
            .args(["-serf-lan-port", &serf_lan.to_string(), "-serf-wan-port", &serf_wan.to_string()])
            .args(self.api.token.iter().flat_map(|t| {
                let acl = format!("acl {{ enabled = true\n default_policy = \"deny\"\n tokens {{ master = \"{t}\"\n agent = \"{t}\" }} }}");
                ["-hcl".to_string(), acl]
            }))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group: a Ctrl-C meant for us must not reach it before our teardown.
            .process_group(0)
            .spawn()
            .expect("spawn consul");
        self.child = Some(child);
        self.api.wait_leader("consul to elect itself leader");
    }
}

impl std::ops::Deref for Consul {
    type Target = ConsulApi;

    fn deref(&self) -> &ConsulApi {
        &self.api
    }
}

impl Drop for Consul {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The HTTP API of one Consul agent.
#[derive(Debug, Clone)]
pub struct ConsulApi {
    url: String,
    /// With ACLs on (default deny), the management token every request of ours carries.
    pub token: Option<String>,
    http: ureq::Agent,
}

impl ConsulApi {
    pub fn new(url: &str) -> ConsulApi {
        ConsulApi::with_token(url, None)
    }

    fn with_token(url: &str, token: Option<String>) -> ConsulApi {
        // Bounds on every call: a wedged agent fails the test instead of hanging it, and a
        // killed or cut-off agent (a container whose address is gone) fails fast instead of
        // after ureq's 30 s default connect timeout.
        let http = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(1)).timeout(Duration::from_secs(10)).build();
        ConsulApi { url: url.to_string(), token, http }
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The address (`ip:port`) of the cluster's Raft leader, `None` while it has none or the
    /// agent does not answer.
    pub fn leader(&self) -> Option<String> {
        let body = self.request("GET", "/v1/status/leader").timeout(Duration::from_secs(2)).call().ok()?.into_string().ok()?;
        Some(body.trim().trim_matches('"').to_string()).filter(|leader| !leader.is_empty())
    }

    /// Waits (20 s at most) until the agent knows a leader.
    pub fn wait_leader(&self, what: &str) {
        wait::until(what, Duration::from_secs(20), Duration::from_millis(100), || self.leader());
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        let request = self.http.request(method, &format!("{}{path}", self.url));
        match &self.token {
            Some(token) => request.set("X-Consul-Token", token),
            None => request,
        }
    }

    /// GET a Consul API path and parse the JSON answer.
    pub fn get(&self, path: &str) -> serde_json::Value {
        self.try_get(path).unwrap_or_else(|e| panic!("consul GET {path}: {e}"))
    }

    /// `get`, with an error instead of a panic (an agent without a leader answers 500).
    pub fn try_get(&self, path: &str) -> Result<serde_json::Value, String> {
        let body = self.request("GET", path).call().map_err(|e| e.to_string())?.into_string().map_err(|e| e.to_string())?;
        serde_json::from_str(&body).map_err(|e| e.to_string())
    }

    /// Writes a KV key.
    pub fn put_kv(&self, key: &str, value: &str) {
        self.put(&format!("/v1/kv/{key}"), value);
    }

    pub fn delete_kv(&self, key: &str) {
        self.delete(&format!("/v1/kv/{key}"));
    }

    /// `/v1/health/service/<name>`: every instance with its checks.
    pub fn health(&self, service: &str) -> Vec<serde_json::Value> {
        self.get(&format!("/v1/health/service/{service}")).as_array().cloned().unwrap_or_default()
    }

    pub fn put(&self, path: &str, body: &str) {
        self.request("PUT", path).send_string(body).expect("consul PUT");
    }

    pub fn delete(&self, path: &str) {
        self.request("DELETE", path).call().expect("consul DELETE");
    }
}
