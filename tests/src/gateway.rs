//! A real `scale-gateway` process in front of a test pool: its config points at the pool's
//! Consul and RabbitMQ and uses the nodes' ARI account; clients log in as `app` / `app-secret`.
//! Started through `setpriv --pdeathsig` like every service of a test, stopped on drop.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::ari::Ari;
use crate::child::{print_log_tail, terminate, tied_command};
use crate::node::{ARI_PASSWORD, ARI_USER};
use crate::ports::free_port;
use crate::wait;
use crate::Pool;

pub const CLIENT_USER: &str = "app";
pub const CLIENT_PASSWORD: &str = "app-secret";

/// The binary under test: `RES_SCALE_GATEWAY`, else the workspace's release build. (Not a
/// `SCALE_GATEWAY_*` name: the gateway reads those as its own configuration.)
pub fn binary() -> PathBuf {
    let path = std::env::var("RES_SCALE_GATEWAY").map(PathBuf::from).unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/scale-gateway"));
    assert!(path.is_file(), "gateway under test {} not found: run `make test` (it builds it), or set RES_SCALE_GATEWAY", path.display());
    path
}

pub struct Gateway {
    pub port: u16,
    pub instance_id: String,
    pub dir: PathBuf,
    config: PathBuf,
    /// `SCALE_GATEWAY_*` settings over the generated file, as an operator's environment.
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Gateway {
    /// A gateway named `instance_id` for `pool` (which needs Consul and RabbitMQ); `env` sets
    /// keys over the generated config (`SCALE_GATEWAY_APPS_LINGER`, ...).
    pub fn start(pool: &Pool, instance_id: &str, env: &[(&str, &str)]) -> Gateway {
        let consul = pool.consul.as_ref().expect("the gateway needs the pool's Consul");
        let mq = pool.rabbitmq.as_ref().expect("the gateway needs the pool's RabbitMQ");
        let dir = pool.dir.join(format!("gateway-{instance_id}"));
        fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let text = format!(
            "listen = \"127.0.0.1:{port}\"\ninstance_id = \"{instance_id}\"\ndrain_timeout = \"3s\"\n\
             [[clients]]\nuser = \"{CLIENT_USER}\"\npassword = \"{CLIENT_PASSWORD}\"\n\
             [nodes]\nari_user = \"{ARI_USER}\"\nari_password = \"{ARI_PASSWORD}\"\n\
             [consul]\nurl = \"{}\"\ncheck_ttl = \"3s\"\n\
             [amqp]\nurl = \"{}\"\n",
            consul.url(),
            mq.url()
        );
        let config = dir.join("scale-gateway.toml");
        fs::write(&config, text).unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut gateway = Gateway { port, instance_id: instance_id.to_string(), dir, config, env, child: None };
        gateway.restart();
        gateway
    }

    /// (Re)starts the process on the same port and config, and waits until it listens.
    pub fn restart(&mut self) {
        self.stop();
        let log = fs::OpenOptions::new().create(true).append(true).open(self.dir.join("gateway.log")).unwrap();
        let child = tied_command(binary(), "TERM")
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "info,scale_gateway=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn scale-gateway");
        self.child = Some(child);
        let port = self.port;
        wait::until("the gateway listens", Duration::from_secs(20), Duration::from_millis(50), || std::net::TcpStream::connect(("127.0.0.1", port)).ok());
    }

    /// SIGTERM, as an operator's `systemctl stop`; returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        terminate(&mut child, Duration::from_secs(10));
        child.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An ARI client of the gateway, with the client account.
    pub fn ari(&self) -> Ari {
        Ari::new(&format!("{}/ari", self.url()), CLIENT_USER, CLIENT_PASSWORD)
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default()
    }

    /// `GET /healthz` until it answers 200 (Consul, RabbitMQ and `nodes` serving nodes).
    pub fn wait_healthy(&self, nodes: usize) {
        let url = format!("{}/healthz", self.url());
        wait::until(&format!("gateway healthy with {nodes} nodes"), Duration::from_secs(30), Duration::from_millis(100), || {
            // 503 until RabbitMQ is connected too; the body says how many nodes serve.
            let body = match ureq::get(&url).call() {
                Ok(r) | Err(ureq::Error::Status(_, r)) => r.into_string().ok()?,
                Err(_) => return None,
            };
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            (v["nodes"]["serving"].as_u64()? as usize >= nodes).then_some(())
        });
    }

    /// `GET /metrics` as text.
    pub fn metrics(&self) -> String {
        ureq::get(&format!("{}/metrics", self.url())).call().map(|r| r.into_string().unwrap_or_default()).unwrap_or_default()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            print_log_tail(&format!("gateway {}", self.instance_id), &self.log(), 60);
        }
    }
}

/// An answer read off the wire, for requests a normal client library would rewrite (paths
/// with `..`, encoded slashes) or answers whose exact headers matter.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Sends `METHOD target HTTP/1.1` with `headers` to 127.0.0.1:`port` exactly as given.
pub fn raw_request(port: u16, method: &str, target: &str, headers: &[(&str, &str)]) -> RawReply {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut request = format!("{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|c| c.parse().ok()).unwrap_or(0);
    let headers = lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string())).collect::<Vec<_>>();
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked { dechunk(body) } else { body.to_string() };
    RawReply { status, headers, body }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}
