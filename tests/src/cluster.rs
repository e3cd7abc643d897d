//! Clustered services for the fault tests: a RabbitMQ cluster (nodes joined with
//! `rabbitmqctl join_cluster`) and a Consul cluster (servers, and one client agent per Asterisk
//! node), every broker and agent a container of its own with its own address on a user-defined
//! Docker network private to one test. The Asterisk nodes run on the host's network and reach
//! the containers at those addresses, so a test can stop, kill, pause or cut off any one broker
//! or agent without touching the others.
//!
//! The images are configs/docker/Dockerfile's `rabbitmq` and `consul` stages, which
//! tests/provision.sh builds. Containers are named `res_scale-<pool id>-<role><n>`, so the
//! pool's reaper removes those a killed test process left behind.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::consul::ConsulApi;
use crate::node::NodeAddress;
use crate::wait;

const RABBITMQ_IMAGE: &str = "res_scale/rabbitmq";
const CONSUL_IMAGE: &str = "res_scale/consul";
/// The account configs/docker/rabbitmq.conf creates at a broker's first start.
pub const AMQP_USER: &str = "res_scale";
pub const AMQP_PASSWORD: &str = "demo-amqp-secret";
/// Host numbers on the network: brokers .11.., Consul servers .21.., client agents .31...
const BROKER_HOST: u8 = 11;
const SERVER_HOST: u8 = 21;
const AGENT_HOST: u8 = 31;
/// Asterisk nodes of their own address (`PoolBuilder::nodes_on_the_cluster_network`): .41...
const NODE_HOST: u8 = 41;

/// Runs `docker <args>`; the output on success, the error text otherwise.
fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker").args(args).output().map_err(|e| format!("docker: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("docker {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn must(args: &[&str]) -> String {
    docker(args).unwrap_or_else(|e| panic!("{e}"))
}

/// A user-defined bridge network with a /24 of its own, removed on drop.
pub struct Network {
    pub name: String,
    /// The first three octets, e.g. `10.251.7`.
    prefix: String,
}

impl Network {
    /// Takes the first free 10.251.x.0/24 from a start that differs per test process, so that
    /// parallel tests rarely collide (a collision only moves to the next one).
    fn create(name: &str) -> Network {
        let start = std::process::id() as usize;
        for step in 0..250 {
            let prefix = format!("10.251.{}", 1 + (start + step * 7) % 250);
            match docker(&["network", "create", "--driver", "bridge", "--subnet", &format!("{prefix}.0/24"), name]) {
                Ok(_) => return Network { name: name.to_string(), prefix },
                Err(e) if e.contains("overlaps") => continue,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("no free 10.251.x.0/24 for network {name}");
    }

    pub fn ip(&self, host: u8) -> String {
        format!("{}.{host}", self.prefix)
    }

    /// The host's own address on the network (its gateway): where SIPp on the host sends from
    /// to reach a node of its own address.
    pub fn host_ip(&self) -> String {
        self.ip(1)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = docker(&["network", "rm", &self.name]);
    }
}

/// One service container at a fixed address. It is not started with `--rm`: a stopped or
/// killed container can be started again with its data (a broker comes back as the same cluster
/// node). Removed on drop.
pub struct Container {
    pub name: String,
    /// Its host name, which is also its DNS name on the network.
    pub host: String,
    pub ip: String,
    network: String,
}

impl Container {
    fn run(network: &Network, name: String, host: &str, ip: String, image: &str, command: &[&str]) -> Container {
        let mut args = vec!["run", "-d", "--name", &name, "--hostname", host, "--network", &network.name, "--network-alias", host, "--ip", &ip, image];
        args.extend_from_slice(command);
        must(&args);
        Container { name, host: host.to_string(), ip, network: network.name.clone() }
    }

    /// `docker kill`: SIGKILL, no clean shutdown.
    pub fn kill(&self) {
        must(&["kill", &self.name]);
    }

    /// `docker stop`: a clean shutdown.
    pub fn stop(&self) {
        must(&["stop", "-t", "10", &self.name]);
    }

    /// Starts a stopped or killed container again, at the same address with the same data.
    pub fn start(&self) {
        must(&["start", &self.name]);
    }

    /// `docker pause`: the processes are frozen; connections stay open and go silent.
    pub fn pause(&self) {
        must(&["pause", &self.name]);
    }

    pub fn unpause(&self) {
        must(&["unpause", &self.name]);
    }

    /// Cuts the container off the network: packets to and from it are lost.
    pub fn disconnect(&self) {
        must(&["network", "disconnect", &self.network, &self.name]);
    }

    /// Puts a cut-off container back on the network at its old address and name.
    pub fn connect(&self) {
        must(&["network", "connect", "--ip", &self.ip, "--alias", &self.host, &self.network, &self.name]);
    }

    /// Runs a command in the container and returns its output; `Err` with what it printed if
    /// it failed.
    pub fn exec(&self, command: &[&str]) -> Result<String, String> {
        let mut args = vec!["exec", &self.name];
        args.extend_from_slice(command);
        docker(&args)
    }

    pub fn logs(&self) -> String {
        let out = Command::new("docker").args(["logs", "--tail", "80", &self.name]).output().map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)));
        out.unwrap_or_default()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if std::thread::panicking() {
            crate::child::print_log_tail(&self.name, &self.logs(), 40);
        }
        let _ = docker(&["rm", "-f", "-v", &self.name]);
    }
}

/// A RabbitMQ cluster of `n` nodes, `rabbit@rmq1` .. `rabbit@rmqN`. Every container of the
/// image shares the Erlang cookie the package made, so the nodes may join each other.
pub struct RabbitCluster {
    pub nodes: Vec<Container>,
}

impl RabbitCluster {
    fn start(network: &Network, pool_id: &str, n: usize) -> RabbitCluster {
        let nodes: Vec<Container> =
            (1..=n).map(|i| Container::run(network, format!("res_scale-{pool_id}-rmq{i}"), &format!("rmq{i}"), network.ip(BROKER_HOST + i as u8 - 1), RABBITMQ_IMAGE, &[])).collect();
        let cluster = RabbitCluster { nodes };
        for i in 0..n {
            cluster.wait_running(i);
        }
        // One at a time: joins that overlap can fail on the peer's schema lock.
        let first = format!("rabbit@{}", cluster.nodes[0].host);
        for node in &cluster.nodes[1..] {
            for step in [&["stop_app"][..], &["join_cluster", &first], &["start_app"]] {
                let mut command = vec!["rabbitmqctl", "-q"];
                command.extend_from_slice(step);
                node.exec(&command).unwrap_or_else(|e| panic!("{}: rabbitmqctl {}: {e}", node.name, step.join(" ")));
            }
        }
        let running = cluster.running_nodes(0);
        assert_eq!(running.len(), n, "cluster formed with {running:?}");
        cluster
    }

    /// Waits until node `i` has booted (after a start or a restart).
    pub fn wait_running(&self, i: usize) {
        let node = &self.nodes[i];
        wait::until(&format!("{} to boot", node.name), Duration::from_secs(90), Duration::from_millis(500), || node.exec(&["rabbitmqctl", "-q", "await_startup", "--timeout", "5"]).ok());
    }

    /// The cluster's running nodes as node `i` sees them (`rabbit@rmq1`, ...).
    pub fn running_nodes(&self, i: usize) -> Vec<String> {
        let out = self.nodes[i].exec(&["rabbitmqctl", "-q", "eval", "rabbit_nodes:list_running()."]).unwrap_or_default();
        out.split(|c: char| !(c.is_alphanumeric() || c == '@' || c == '_')).filter(|w| w.starts_with("rabbit@")).map(str::to_string).collect()
    }

    /// The URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("amqp://{AMQP_USER}:{AMQP_PASSWORD}@{}:5672/%2f", self.nodes[i].ip)
    }

    /// The URL of the last node: the one the fault tests leave up, for consumers and Kamailio.
    pub fn last_url(&self) -> String {
        self.url(self.nodes.len() - 1)
    }

    /// Every node's URL, comma-separated, as `[amqp] url` takes them (failover in this order).
    pub fn urls(&self) -> String {
        (0..self.nodes.len()).map(|i| self.url(i)).collect::<Vec<_>>().join(",")
    }

    /// The node a `scale show amqp` output names as its broker.
    pub fn index_of_broker(&self, show_amqp: &str) -> Option<usize> {
        let line = show_amqp.lines().find(|l| l.trim_start().starts_with("Broker:"))?;
        self.nodes.iter().position(|node| line.contains(&format!("@{}:", node.ip)))
    }
}

/// A Consul cluster: `servers` servers that elect a leader among themselves, and client agents
/// that the Asterisk nodes talk to, each its own.
pub struct ConsulCluster {
    pub servers: Vec<Container>,
    pub agents: Vec<Container>,
}

impl ConsulCluster {
    fn start(network: &Network, pool_id: &str, servers: usize, agents: usize) -> ConsulCluster {
        let server_ips: Vec<String> = (0..servers).map(|i| network.ip(SERVER_HOST + i as u8)).collect();
        let joins: Vec<String> = server_ips.iter().flat_map(|ip| ["-retry-join".to_string(), ip.clone()]).collect();
        let agent_of = |role: &str, i: usize, ip: String, server: bool| {
            let host = format!("{role}{i}");
            let expect = servers.to_string();
            let mut command: Vec<&str> = vec!["consul", "agent", "-data-dir", "/var/lib/consul", "-node", &host, "-bind", &ip, "-client", "0.0.0.0", "-log-level", "info"];
            if server {
                // Raft at its fastest timing (multiplier 1): a test waits seconds, not tens of
                // seconds, for an election.
                command.extend_from_slice(&["-server", "-bootstrap-expect", &expect, "-hcl", "performance { raft_multiplier = 1 }"]);
            }
            command.extend(joins.iter().map(String::as_str));
            Container::run(network, format!("res_scale-{pool_id}-{host}"), &host, ip.clone(), CONSUL_IMAGE, &command)
        };
        let servers: Vec<Container> = server_ips.iter().enumerate().map(|(i, ip)| agent_of("consul", i + 1, ip.clone(), true)).collect();
        let agents: Vec<Container> = (0..agents).map(|i| agent_of("agent", i + 1, network.ip(AGENT_HOST + i as u8), false)).collect();
        let cluster = ConsulCluster { servers, agents };
        for i in 0..cluster.agents.len() {
            cluster.agent(i).wait_leader(&format!("consul agent{} to know a leader", i + 1));
        }
        cluster
    }

    /// The HTTP API of client agent `i` (the one Asterisk node `i` uses).
    pub fn agent(&self, i: usize) -> ConsulApi {
        ConsulApi::new(&format!("http://{}:8500", self.agents[i].ip))
    }

    /// The HTTP API of server `i`.
    pub fn server(&self, i: usize) -> ConsulApi {
        ConsulApi::new(&format!("http://{}:8500", self.servers[i].ip))
    }

    /// The index of the server that leads now, as a server that answers sees it.
    pub fn leader(&self) -> Option<usize> {
        let leader = (0..self.servers.len()).find_map(|i| self.server(i).leader())?;
        self.servers.iter().position(|s| leader.starts_with(&format!("{}:", s.ip)))
    }

    /// Waits until a leader other than server `old` leads, and returns how long that took.
    pub fn wait_new_leader(&self, old: usize, since: Instant) -> (usize, Duration) {
        let new = wait::until("consul to elect a new leader", Duration::from_secs(60), Duration::from_millis(100), || self.leader().filter(|l| *l != old));
        (new, since.elapsed())
    }
}

/// The services of a clustered pool on their own network.
pub struct Cluster {
    pub rabbitmq: RabbitCluster,
    pub consul: ConsulCluster,
    // Dropped last: a network with containers on it cannot be removed.
    pub network: Network,
}

impl Cluster {
    /// `brokers` RabbitMQ nodes, `servers` Consul servers and a client agent per Asterisk node.
    pub fn start(pool_id: &str, brokers: usize, servers: usize, asterisk_nodes: usize) -> Cluster {
        let network = Network::create(&format!("res_scale-{pool_id}"));
        // Consul first: its servers elect a leader while the brokers boot.
        let consul = ConsulCluster::start(&network, pool_id, servers, asterisk_nodes);
        let rabbitmq = RabbitCluster::start(&network, pool_id, brokers);
        Cluster { rabbitmq, consul, network }
    }

    /// The address of Asterisk node `n` (from 1) on the cluster's network.
    pub fn node_address(&self, n: usize) -> NodeAddress {
        NodeAddress { network: self.network.name.clone(), ip: self.network.ip(NODE_HOST + n as u8 - 1) }
    }
}
