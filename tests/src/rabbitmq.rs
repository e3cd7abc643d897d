//! A private RabbitMQ broker: its own node name, ports, data and log folders, bound to
//! loopback, started as our own child process (its PID is ours to stop).

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::ports::free_port;
use crate::wait;

pub struct RabbitMq {
    pub port: u16,
    pub node_name: String,
    dir: PathBuf,
    dist_port: u16,
    child: Option<Child>,
}

impl RabbitMq {
    pub fn start(dir: &Path) -> RabbitMq {
        fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let mut mq = RabbitMq {
            port,
            node_name: format!("res_scale-{port}@localhost"),
            dir: dir.to_path_buf(),
            dist_port: free_port(),
            child: None,
        };
        mq.restart();
        mq
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        let d = &self.dir;
        c.env("RABBITMQ_NODENAME", &self.node_name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq"))
            .env("RABBITMQ_PID_FILE", d.join("rabbitmq.pid"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdin(Stdio::null());
        c
    }

    /// Starts the broker (again, keeping its data) and waits until AMQP accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        fs::write(self.dir.join("enabled_plugins"), "[].\n").unwrap();
        fs::write(self.dir.join("rabbitmq.conf"), "loopback_users = none\n").unwrap();
        let log = fs::File::create(self.dir.join("server.out")).unwrap();
        let child = self
            .command("rabbitmq-server")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn rabbitmq-server");
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        wait::until("RabbitMQ to accept AMQP connections", Duration::from_secs(60), Duration::from_millis(200), || {
            TcpStream::connect(&addr).ok().map(|_| ())
        });
    }

    /// Stops the broker and waits for its process to end.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let _ = self.command("rabbitmqctl").args(["-n", &self.node_name, "stop"]).output();
        if wait_exit(&mut child, Duration::from_secs(20)).is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<()> {
    let steps = within.as_millis() / 100;
    (0..steps).find_map(|_| {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return Some(());
        }
        std::thread::sleep(Duration::from_millis(100));
        None
    })
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        self.stop();
    }
}
