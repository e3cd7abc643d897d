//! A pool: N Asterisk nodes with res_scale, optionally a Consul agent and a RabbitMQ broker,
//! or clustered Consul and RabbitMQ in containers (`cluster.rs`), all private to one test.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::cluster::Cluster;
use crate::consul::Consul;
use crate::node::{Node, NodePorts, NodeSpec, PoolPlace};
use crate::ports::free_port;
use crate::rabbitmq::RabbitMq;
use crate::testbed::Testbed;

pub struct PoolBuilder {
    nodes: usize,
    consul: bool,
    consul_token: Option<String>,
    rabbitmq: bool,
    rabbitmq_tls: bool,
    preload_module: bool,
    same_eid: bool,
    res_scale_conf: Option<String>,
    extra_aors: usize,
    /// The nodes' broker user: (user, password) with the `node` permissions of grant.sh.
    amqp_user: Option<(String, String)>,
    /// (RabbitMQ nodes, Consul servers) of a clustered pool.
    cluster: Option<(usize, usize)>,
    /// The nodes of a clustered pool on its network, each at its own address.
    nodes_on_network: bool,
}

impl Default for PoolBuilder {
    fn default() -> Self {
        PoolBuilder {
            nodes: 1,
            consul: false,
            consul_token: None,
            rabbitmq: false,
            rabbitmq_tls: false,
            preload_module: true,
            same_eid: false,
            res_scale_conf: None,
            extra_aors: 0,
            amqp_user: None,
            cluster: None,
            nodes_on_network: false,
        }
    }
}

impl PoolBuilder {
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    pub fn with_consul(mut self) -> Self {
        self.consul = true;
        self
    }

    /// Consul with ACLs on (default deny) and `token` as its management token.
    pub fn with_consul_acl(mut self, token: &str) -> Self {
        self.consul = true;
        self.consul_token = Some(token.to_string());
        self
    }

    pub fn with_rabbitmq(mut self) -> Self {
        self.rabbitmq = true;
        self
    }

    /// RabbitMQ, and the nodes connect as `user` with only the permissions
    /// `configs/rabbitmq/grant.sh node` gives (instead of the administrator guest).
    pub fn with_rabbitmq_user(mut self, user: &str, password: &str) -> Self {
        self.rabbitmq = true;
        self.amqp_user = Some((user.to_string(), password.to_string()));
        self
    }

    /// A RabbitMQ cluster of `brokers` nodes and a Consul cluster of `servers` servers, each
    /// broker and agent in a container of its own, with a Consul client agent per Asterisk
    /// node: every node lists all brokers in `[amqp] url` and talks to its own agent
    /// (`{consul_url}` is that agent's URL, `{amqp_url}` the list). Instead of `with_consul`
    /// and `with_rabbitmq`.
    pub fn clustered(mut self, brokers: usize, servers: usize) -> Self {
        self.cluster = Some((brokers, servers));
        self
    }

    /// In a clustered pool, every Asterisk node a container on the cluster's network at an
    /// address of its own (instead of the host's loopback), so a test can cut one off with
    /// `Node::disconnect`. Tests reach it at `node.ip`.
    pub fn nodes_on_the_cluster_network(mut self) -> Self {
        self.nodes_on_network = true;
        self
    }

    /// RabbitMQ with an amqps listener too (`{amqps_url}`, `{ca_file}` in res_scale.conf).
    pub fn with_rabbitmq_tls(mut self) -> Self {
        self.rabbitmq = true;
        self.rabbitmq_tls = true;
        self
    }

    /// Boot without `load => res_scale.so`; the test loads it with `module load`.
    pub fn without_module_loaded(mut self) -> Self {
        self.preload_module = false;
        self
    }

    /// Gives every node the same entity ID (a misconfiguration res_scale must refuse).
    pub fn same_eid(mut self) -> Self {
        self.same_eid = true;
        self
    }

    /// res_scale.conf for every node. `{consul_url}` and `{amqp_url}` are replaced by the
    /// pool's own services. Without this call a config pointing at the pool's services (or
    /// with them disabled when the pool has none) is written.
    pub fn res_scale_conf(mut self, text: &str) -> Self {
        self.res_scale_conf = Some(text.to_string());
        self
    }

    /// Adds `n` AORs named `bench-aor-0` .. `bench-aor-<n-1>` (`max_contacts = 20`, no endpoint)
    /// to every node's pjsip.conf, for benchmarks that announce many contacts.
    pub fn extra_aors(mut self, n: usize) -> Self {
        self.extra_aors = n;
        self
    }

    pub fn start(self) -> Pool {
        let testbed = Testbed::load();
        reap_orphaned_containers();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let id = format!("{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst));
        let inner = format!("/srv/res_scale/{id}");
        let dir = testbed.rootfs.join(inner.trim_start_matches('/'));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let place = PoolPlace { id: id.clone(), dir: dir.clone(), inner };

        let consul = self.consul.then(|| Consul::start(&testbed, &dir.join("consul"), self.consul_token.as_deref()));
        let rabbitmq = self.rabbitmq.then(|| RabbitMq::start(&dir.join("rabbitmq"), self.rabbitmq_tls));
        let cluster = self.cluster.map(|(brokers, servers)| Cluster::start(&id, brokers, servers, self.nodes));
        // Each node's own Consul agent in a clustered pool, else the pool's one agent.
        let consul_url_of = |i: usize| match &cluster {
            Some(cluster) => Some(cluster.consul.agent(i).url()),
            None => consul.as_ref().map(|c| c.url()),
        };
        let amqp_url = match &cluster {
            Some(cluster) => Some(cluster.rabbitmq.urls()),
            None => rabbitmq.as_ref().map(|mq| match &self.amqp_user {
                Some((user, password)) => mq.grant("node", user, password),
                None => mq.url(),
            }),
        };
        let conf = self
            .res_scale_conf
            .clone()
            .unwrap_or_else(|| default_conf(consul_url_of(0).is_some().then_some("{consul_url}"), amqp_url.as_deref()))
            .replace("{amqp_url}", amqp_url.as_deref().unwrap_or(""))
            .replace("{amqps_url}", &rabbitmq.as_ref().and_then(RabbitMq::tls_url).unwrap_or_default())
            // Asterisk sees the pool folder at the same path inside the rootfs.
            .replace("{ca_file}", &rabbitmq.as_ref().map(|mq| format!("/{}", mq.ca_file().strip_prefix(&testbed.rootfs).unwrap().display())).unwrap_or_default());

        // A random middle part keeps EIDs apart across pools; the last byte is the node number.
        let salt = std::process::id() as u16 ^ (COUNTER.load(Ordering::SeqCst) as u16).rotate_left(8);
        let mut nodes = Vec::new();
        for i in 1..=self.nodes {
            let spec = NodeSpec {
                name: format!("node{i}"),
                eid: format!("02:{:02x}:{:02x}:00:00:{:02x}", salt >> 8, salt & 0xff, if self.same_eid { 1 } else { i }),
                preload_module: self.preload_module,
                res_scale_conf: Some(conf.replace("{consul_url}", consul_url_of(i - 1).as_deref().unwrap_or(""))),
                extra_aors: self.extra_aors,
                address: cluster.as_ref().filter(|_| self.nodes_on_network).map(|c| c.node_address(i)),
            };
            // RTP ranges sit below Linux's ephemeral range (32768-60999), where free_port and
            // every outgoing connection take their ports.
            let ports = NodePorts { sip: free_port(), http: free_port(), rtp_base: 10_000 + (free_port() % 113) * 200 };
            nodes.push(Node::create(&testbed, &place, &spec, ports));
        }
        let mut pool = Pool { nodes, consul, rabbitmq, cluster, dir };
        for node in &mut pool.nodes {
            node.start();
        }
        pool
    }
}

/// Removes the containers (nodes, brokers, agents) and networks of test processes that died
/// without their teardown (killed by a timeout, say): their names carry the PID of the process
/// that made them.
fn reap_orphaned_containers() {
    for (list, remove) in [(&["ps", "-a", "--format", "{{.Names}}"][..], &["rm", "-f", "-v"][..]), (&["network", "ls", "--format", "{{.Name}}"], &["network", "rm"])] {
        let Ok(out) = Command::new("docker").args(list).args(["--filter", "name=^res_scale-"]).output() else {
            return;
        };
        for name in String::from_utf8_lossy(&out.stdout).lines() {
            let owner = name.strip_prefix("res_scale-").and_then(|rest| rest.split('-').next()).and_then(|pid| pid.parse::<u32>().ok());
            if let Some(pid) = owner.filter(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                eprintln!("removing {name}, left behind by test process {pid}");
                let _ = Command::new("docker").args(remove).arg(name).output();
            }
        }
    }
}

/// The res_scale.conf a pool gets unless the test gives its own: each subsystem pointed at
/// the pool's service, or disabled when the pool has none.
fn default_conf(consul_url: Option<&str>, amqp_url: Option<&str>) -> String {
    let section = |name: &str, url: Option<&str>, extra: &str| match url {
        Some(url) => format!("[{name}]\nenabled = yes\nurl = {url}\n{extra}"),
        None => format!("[{name}]\nenabled = no\n"),
    };
    let registrations = if amqp_url.is_some() { "yes" } else { "no" };
    format!("{}{}[registrations]\nenabled = {registrations}\n", section("consul", consul_url, "check_ttl = 3s\n"), section("amqp", amqp_url, ""))
}

pub struct Pool {
    pub nodes: Vec<Node>,
    pub consul: Option<Consul>,
    pub rabbitmq: Option<RabbitMq>,
    /// The clustered services of a `clustered` pool.
    pub cluster: Option<Cluster>,
    /// The pool's folder on the host: node folders, service data and logs.
    pub dir: PathBuf,
}

impl Pool {
    pub fn builder() -> PoolBuilder {
        PoolBuilder::default()
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    pub fn node_mut(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i]
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Nodes first (they talk to the services), then the services.
        self.nodes.clear();
        self.consul = None;
        self.rabbitmq = None;
        self.cluster = None;
        if std::thread::panicking() || std::env::var_os("RES_SCALE_KEEP").is_some() {
            eprintln!("pool folder kept for inspection: {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
