//! A private Kamailio 5.6 running `configs/kamailio/kamailio.cfg` (registrar, dispatcher to the
//! Asterisk nodes, registration events to RabbitMQ) on a free loopback UDP port, as our own child
//! process in its own process group, plus a SIPp REGISTER helper.
//!
//! Everything the config lets an operator change is passed with `-A` defines, so the config file
//! itself is used unmodified. Kamailio's stderr log goes to `<dir>/kamailio.log`; its tail is
//! printed when a test panics while the `Kamailio` is alive.

use std::fs;
use std::net::UdpSocket;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::child::{print_log_tail, terminate, tied_command};
use crate::pool::Pool;
use crate::ports::free_port;
use crate::wait;

/// The config under test, from the repository.
pub fn config_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/kamailio/kamailio.cfg")
}

/// The SIPp scenarios of the tests.
pub fn sipp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sipp")
}

/// What a Kamailio is started with.
#[derive(Debug, Clone)]
pub struct KamailioSpec {
    pub amqp_url: String,
    /// `origin` of the published messages (`REGISTRAR_ID`).
    pub registrar_id: String,
    /// Dispatcher destinations of set 1, e.g. `sip:127.0.0.1:5060`.
    pub destinations: Vec<String>,
    /// Further `-A` defines, e.g. `UL_TIMER_INTERVAL=1`.
    pub defines: Vec<String>,
}

impl KamailioSpec {
    pub fn new(amqp_url: &str) -> KamailioSpec {
        KamailioSpec { amqp_url: amqp_url.to_string(), registrar_id: "kamailio".to_string(), destinations: Vec::new(), defines: Vec::new() }
    }
}

pub struct Kamailio {
    pub sip_port: u16,
    pub dir: PathBuf,
    pub spec: KamailioSpec,
    ctl_socket: PathBuf,
    child: Option<Child>,
}

impl Kamailio {
    /// Writes the dispatcher list into `dir`, starts Kamailio and waits until it answers on its
    /// control socket and to a SIP OPTIONS.
    pub fn start(dir: &Path, spec: KamailioSpec) -> Kamailio {
        let run = dir.join("run");
        fs::create_dir_all(&run).unwrap();
        let list: String = spec.destinations.iter().map(|d| format!("1 {d} 0 0\n")).collect();
        let list_file = dir.join("dispatcher.list");
        fs::write(&list_file, format!("# setid destination flags priority\n{list}")).unwrap();
        let sip_port = free_port();
        let ctl_socket = run.join("kamailio_ctl");
        let mut kamailio = Kamailio { sip_port, dir: dir.to_path_buf(), spec, ctl_socket, child: None };

        let mut defines = vec![
            format!("SIP_LISTEN=udp:127.0.0.1:{sip_port}"),
            format!("AMQP_URL=\"{}\"", kamailio.spec.amqp_url),
            format!("REGISTRAR_ID=\"{}\"", kamailio.spec.registrar_id),
            format!("DISPATCHER_LIST=\"{}\"", list_file.display()),
            format!("CTL_SOCKET=\"unix:{}\"", kamailio.ctl_socket.display()),
            "CHILDREN=2".to_string(),
        ];
        defines.extend(kamailio.spec.defines.iter().cloned());

        let log = fs::File::create(dir.join("kamailio.log")).unwrap();
        let mut command = tied_command("kamailio", "TERM");
        command.arg("-f").arg(config_file()).args(["-DD", "-E"]).arg("-Y").arg(&run).arg("-P").arg(run.join("kamailio.pid"));
        for define in &defines {
            command.arg("-A").arg(define);
        }
        fs::write(dir.join("command.txt"), format!("{command:?}\n")).unwrap();
        let child = command
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group: a Ctrl-C meant for us must not reach it before our teardown,
            // and a SIGKILL to the group reaches every Kamailio process and nothing else.
            .process_group(0)
            .spawn()
            .expect("spawn kamailio");
        kamailio.child = Some(child);

        wait::until("kamailio to answer on its control socket and to SIP OPTIONS", Duration::from_secs(20), Duration::from_millis(100), || {
            if let Some(Ok(Some(status))) = kamailio.child.as_mut().map(Child::try_wait) {
                panic!("kamailio exited ({status}) during start:\n{}", kamailio.log());
            }
            kamailio.kamcmd(&["core.version"])?;
            kamailio.sip_options().then_some(())
        });
        kamailio
    }

    /// Kamailio in front of every node of the pool (dispatcher set 1, keepalives every second,
    /// registrations to the pool's broker, or to the last node of its RabbitMQ cluster), once
    /// it takes every node as active.
    pub fn in_front_of(pool: &Pool) -> Kamailio {
        let amqp_url = match (&pool.rabbitmq, &pool.cluster) {
            (Some(rabbitmq), _) => rabbitmq.url(),
            (None, Some(cluster)) => cluster.rabbitmq.last_url(),
            (None, None) => panic!("the pool has no broker for Kamailio"),
        };
        let mut spec = KamailioSpec::new(&amqp_url);
        spec.destinations = pool.nodes.iter().map(|n| format!("sip:127.0.0.1:{}", n.sip_port)).collect();
        spec.defines = vec!["DS_PING_INTERVAL=1".into()];
        let kamailio = Kamailio::start(&pool.dir.join("kamailio"), spec);
        let active = format!("Kamailio sees all {} nodes", pool.nodes.len());
        wait::until(&active, Duration::from_secs(20), Duration::from_millis(200), || kamailio.kamcmd(&["dispatcher.list"]).filter(|l| l.matches("FLAGS: AP").count() == pool.nodes.len()).map(|_| ()));
        kamailio
    }

    /// The main process's PID (its workers are its children).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs kamcmd against the control socket; `None` when it fails.
    pub fn kamcmd(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("kamcmd").arg("-s").arg(format!("unix:{}", self.ctl_socket.display())).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Sends an OPTIONS to Kamailio itself; true when a 200 comes back within a second.
    pub fn sip_options(&self) -> bool {
        let Ok(socket) = UdpSocket::bind("127.0.0.1:0") else { return false };
        let local = socket.local_addr().unwrap();
        let _ = socket.set_read_timeout(Some(Duration::from_millis(200)));
        let call_id = format!("ready-{}-{}", std::process::id(), local.port());
        let request = format!(
            "OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{call_id}\r\nMax-Forwards: 70\r\n\
             From: <sip:probe@127.0.0.1>;tag=probe\r\nTo: <sip:127.0.0.1:{port}>\r\nCall-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            port = self.sip_port
        );
        if socket.send_to(request.as_bytes(), ("127.0.0.1", self.sip_port)).is_err() {
            return false;
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = socket.recv(&mut buf) {
                if buf[..n].starts_with(b"SIP/2.0 200") {
                    return true;
                }
            }
        }
        false
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("kamailio.log")).unwrap_or_default()
    }

    /// SIGTERM to the main process (it stops its children), up to 10 s, then SIGKILL to the
    /// process group we created for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        let pid = child.id();
        terminate(&mut child, Duration::from_secs(10));
        // Whatever of the group is left (a straggling child).
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pid}")]).stderr(Stdio::null()).status();
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_log_tail(&format!("kamailio.log ({})", self.dir.display()), &self.log(), 60);
        }
        self.stop();
    }
}

/// One REGISTER sent by SIPp (`tests/sipp/register.xml`) and its 200.
#[derive(Debug, Clone)]
pub struct Register {
    pub user: String,
    pub call_id: String,
    pub cseq: u32,
    pub expires: u32,
    pub user_agent: String,
    /// SIPp's local UDP port (also the Contact's port).
    pub local_port: u16,
}

impl Register {
    /// The Contact URI the scenario sends.
    pub fn contact_uri(&self) -> String {
        self.contact_uri_from("127.0.0.1")
    }

    /// The Contact URI the scenario sends from `local_ip`.
    pub fn contact_uri_from(&self, local_ip: &str) -> String {
        format!("sip:{}@{local_ip}:{};transport=udp", self.user, self.local_port)
    }

    /// Runs SIPp once against `sip_port`; Err with SIPp's output when the REGISTER did not get
    /// its 200 (SIPp exits non-zero) or SIPp did not finish within 15 s.
    pub fn send(&self, dir: &Path, sip_port: u16) -> Result<(), String> {
        self.send_scenario(dir, sip_port, "register.xml")
    }

    /// As `send`, with another scenario of `tests/sipp` taking the same keys (e.g.
    /// `unregister_all.xml`: `Contact: *`, `Expires: 0`).
    pub fn send_scenario(&self, dir: &Path, sip_port: u16, scenario: &str) -> Result<(), String> {
        self.send_between(dir, "127.0.0.1", &format!("127.0.0.1:{sip_port}"), scenario)
    }

    /// As `send_scenario`, from `local_ip` to `target` (`ip:port`): a node of its own address.
    pub fn send_between(&self, dir: &Path, local_ip: &str, target: &str, scenario: &str) -> Result<(), String> {
        let mut args: Vec<String> = vec!["-sf".into(), sipp_dir().join(scenario).display().to_string()];
        args.extend(["-s".into(), self.user.clone(), "-i".into(), local_ip.into(), "-p".into(), self.local_port.to_string()]);
        args.extend(["-m", "1", "-timeout", "10s", "-timeout_error"].map(String::from));
        // SIPp matches replies to its call by Call-ID: a fixed -cid_str is [call_id].
        args.extend(["-cid_str".into(), self.call_id.replace('%', "%%")]);
        args.extend(["-key".into(), "reg_cseq".into(), self.cseq.to_string()]);
        args.extend(["-key".into(), "reg_expires".into(), self.expires.to_string()]);
        args.extend(["-key".into(), "reg_user_agent".into(), self.user_agent.clone()]);
        args.push(target.to_string());
        Sipp::spawn(dir, &format!("register-{}-{}", self.call_id, self.cseq), &args).wait(Duration::from_secs(15))
    }
}

/// A SIPp process of ours (own process group), killed on drop if still running.
pub struct Sipp {
    name: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl Sipp {
    /// Starts `sipp <args> -nostdin -trace_err` in `dir`; its screen output goes to
    /// `<dir>/<name>.out`, its errors to `<dir>/<name>-errors.log`.
    pub fn spawn(dir: &Path, name: &str, args: &[String]) -> Sipp {
        fs::create_dir_all(dir).unwrap();
        let out = fs::File::create(dir.join(format!("{name}.out"))).unwrap();
        let child = tied_command("sipp", "KILL")
            .args(args)
            .args(["-nostdin", "-trace_err", "-error_file"])
            .arg(dir.join(format!("{name}-errors.log")))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("spawn sipp");
        Sipp { name: name.to_string(), dir: dir.to_path_buf(), child: Some(child) }
    }

    /// Waits up to `within` for SIPp to exit; Ok when it exited 0 (every call succeeded), else
    /// Err with its output (a SIPp still running is killed).
    pub fn wait(mut self, within: Duration) -> Result<(), String> {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let output = || {
            let out = fs::read_to_string(self.dir.join(format!("{}.out", self.name))).unwrap_or_default();
            let errors = fs::read_to_string(self.dir.join(format!("{}-errors.log", self.name))).unwrap_or_default();
            format!("{out}\n{errors}")
        };
        match status {
            Some(status) if status.success() => Ok(()),
            Some(status) => Err(format!("sipp {} exited with {status}:\n{}", self.name, output())),
            None => Err(format!("sipp {} did not finish within {within:?}:\n{}", self.name, output())),
        }
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
