//! A private RabbitMQ broker: its own node name, ports, epmd, data and log folders, bound to
//! loopback, started as our own child processes (their PIDs are ours to stop).
//!
//! The broker is started through /usr/lib/rabbitmq/bin/rabbitmq-server, not Debian's
//! /usr/sbin wrapper: the wrapper `su`s to the rabbitmq user, so killing the PID we hold would
//! leave the broker running.

use std::fs;
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::child::{terminate, tied_command};
use crate::ports::free_port;
use crate::wait;

const BIN: &str = "/usr/lib/rabbitmq/bin";
/// A clean stop takes about a second; past this the broker is killed.
const STOP_GRACE: Duration = Duration::from_secs(20);

pub struct RabbitMq {
    pub port: u16,
    /// The amqps listener, when started with TLS (certificates in `<dir>/tls`).
    pub tls_port: Option<u16>,
    pub node_name: String,
    dir: PathBuf,
    dist_port: u16,
    epmd_port: u16,
    epmd: Option<Child>,
    server: Option<Child>,
}

impl RabbitMq {
    /// `tls`: also listen for amqps, with a certificate for 127.0.0.1 signed by a CA made for
    /// this broker (`ca_file()`).
    pub fn start(dir: &Path, tls: bool) -> RabbitMq {
        for sub in ["mnesia", "log", "home"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let port = free_port();
        let mut conf = format!("listeners.tcp.default = 127.0.0.1:{port}\nloopback_users = none\n");
        let tls_port = tls.then(|| {
            let tls_port = free_port();
            let t = make_certificates(&dir.join("tls"));
            conf.push_str(&format!(
                "listeners.ssl.default = 127.0.0.1:{tls_port}\nssl_options.cacertfile = {}\nssl_options.certfile = {}\nssl_options.keyfile = {}\nssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n",
                t.join("ca.pem").display(),
                t.join("server.pem").display(),
                t.join("server.key").display()
            ));
            tls_port
        });
        fs::write(dir.join("rabbitmq.conf"), conf).unwrap();
        fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        fs::write(dir.join("rabbitmq-env.conf"), "").unwrap();
        let mut mq = RabbitMq { port, tls_port, node_name: format!("res_scale-{port}@localhost"), dir: dir.to_path_buf(), dist_port: free_port(), epmd_port: free_port(), epmd: None, server: None };
        let epmd = mq.command("/usr/bin/epmd").args(["-address", "127.0.0.1", "-port", &mq.epmd_port.to_string()]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn epmd");
        mq.epmd = Some(epmd);
        mq.restart();
        mq
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// The amqps URL, when started with TLS.
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port.map(|p| format!("amqps://guest:guest@127.0.0.1:{p}/%2f"))
    }

    /// The CA that signed the broker's certificate (PEM), on the host.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("tls/ca.pem")
    }

    fn command(&self, program: &str) -> Command {
        let d = &self.dir;
        // TERM: the server script stops the Erlang VM it started on TERM.
        let mut c = tied_command(program, "TERM");
        c.env("HOME", d.join("home"))
            .env("RABBITMQ_NODENAME", &self.node_name)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("RABBITMQ_PID_FILE", d.join("rabbit.pid"))
            .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}")
            .env("RABBITMQ_CTL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}")
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            // A crash dump lands in the working directory.
            .current_dir(d)
            .stdin(Stdio::null())
            // Its own process group: a Ctrl-C meant for us must not reach it before our teardown.
            .process_group(0);
        c
    }

    /// Starts the broker (again, keeping its data) and waits until AMQP accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        let log = fs::File::create(self.dir.join("server.out")).unwrap();
        let server = self.command(&format!("{BIN}/rabbitmq-server")).stdout(log.try_clone().unwrap()).stderr(log).spawn().expect("spawn rabbitmq-server");
        self.server = Some(server);
        let addr = format!("127.0.0.1:{}", self.tls_port.unwrap_or(self.port));
        wait::until("RabbitMQ to accept AMQP connections", Duration::from_secs(60), Duration::from_millis(100), || {
            if let Some(Ok(Some(status))) = self.server.as_mut().map(Child::try_wait) {
                let out = fs::read_to_string(self.dir.join("server.out")).unwrap_or_default();
                panic!("rabbitmq-server exited ({status}) during start:\n{out}");
            }
            TcpStream::connect(&addr).ok().map(|_| ())
        });
    }

    /// Stops the broker (SIGTERM: a clean stop in about a second) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            terminate(&mut server, STOP_GRACE);
        }
    }

    /// The host PID of the Erlang VM running the broker (what the broker writes to its PID
    /// file once it has started).
    pub fn vm_pid(&self) -> Option<u32> {
        fs::read_to_string(self.dir.join("rabbit.pid")).ok()?.trim().parse().ok()
    }

    /// Creates `user` with the permissions of `role` (node, kamailio, app) as
    /// `configs/rabbitmq/grant.sh` gives them, and returns the user's URL.
    pub fn grant(&self, role: &str, user: &str, password: &str) -> String {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/rabbitmq/grant.sh");
        let out = self.command("bash").arg(&script).args([role, user, password]).env("RABBITMQCTL", format!("{BIN}/rabbitmqctl -n {}", self.node_name)).output().expect("run grant.sh");
        assert!(out.status.success(), "grant.sh {role} {user}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        format!("amqp://{user}:{password}@127.0.0.1:{}/%2f", self.port)
    }

    /// Runs rabbitmqctl against this broker, e.g. `["list_queues"]`.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = self.command(&format!("{BIN}/rabbitmqctl")).arg("-n").arg(&self.node_name).args(args).output().expect("run rabbitmqctl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// A CA and a server certificate for 127.0.0.1 (IP subject alternative name), made with the
/// openssl command line in `dir`.
pub fn make_certificates(dir: &Path) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("server.ext"), "subjectAltName = IP:127.0.0.1\n").unwrap();
    let steps: [&[&str]; 3] = [
        &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=res_scale test CA", "-keyout", "ca.key", "-out", "ca.pem"],
        &["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr"],
        &["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2", "-extfile", "server.ext", "-out", "server.pem"],
    ];
    for args in steps {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("run openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    dir.to_path_buf()
}

impl Drop for RabbitMq {
    fn drop(&mut self) {
        self.stop();
        // epmd last: the broker deregisters from it on the way out.
        if let Some(mut epmd) = self.epmd.take() {
            terminate(&mut epmd, STOP_GRACE);
        }
    }
}
