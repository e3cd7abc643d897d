//! One Asterisk 22 node of a test pool: its generated config, its process (a Docker container
//! or a chroot), and the ways a test talks to it (CLI, ARI, logs, thread count).

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::ari::Ari;
use crate::child::{print_log_tail, tied_command};
use crate::testbed::Testbed;
use crate::wait;

pub const ARI_USER: &str = "ari";
pub const ARI_PASSWORD: &str = "ari-secret";
/// The PJSIP endpoint (and auth) the nodes of a pool call each other with.
pub const POOL_ENDPOINT: &str = "res_scale_pool";
pub const POOL_SECRET: &str = "pool-secret";
/// How long a CLI command may take before the test fails (a wedged node must not hang CI).
const CLI_TIMEOUT: Duration = Duration::from_secs(60);
/// The file pjsip.conf includes if it exists: the node's extension state publisher.
const BLF_CONFIG: &str = "pjsip_blf.conf";
/// Where Debian's asterisk-modules put the modules inside the rootfs.
const SYSTEM_MODULES: &str = "/usr/lib/x86_64-linux-gnu/asterisk/modules";

/// Every module a node loads (autoload=no does not pull in dependencies).
const MODULES: &[&str] = &[
    "pbx_config",
    "app_dial",
    "app_playback",
    "app_echo",
    "app_stasis",
    "func_callerid",
    "func_channel",
    "func_cut",
    "func_devstate",
    "codec_ulaw",
    "codec_alaw",
    "format_wav",
    "format_gsm",
    "format_pcm",
    "res_timing_timerfd",
    "bridge_simple",
    "bridge_native_rtp",
    "bridge_softmix",
    "bridge_holding",
    "chan_bridge_media",
    "res_pjproject",
    "res_sorcery_config",
    "res_sorcery_memory",
    "res_sorcery_astdb",
    "res_rtp_asterisk",
    "res_pjsip",
    "res_pjsip_session",
    "res_pjsip_pubsub",
    "chan_pjsip",
    "res_pjsip_authenticator_digest",
    "res_pjsip_endpoint_identifier_user",
    "res_pjsip_endpoint_identifier_ip",
    "res_pjsip_registrar",
    "res_pjsip_sdp_rtp",
    "res_pjsip_caller_id",
    "res_pjsip_nat",
    "res_pjsip_outbound_authenticator_digest",
    "res_stasis",
    "res_websocket_client",
    "res_ari_model",
    "res_http_websocket",
    "res_ari",
    "res_ari_applications",
    "res_ari_asterisk",
    "res_ari_bridges",
    "res_ari_channels",
    "res_ari_device_states",
    "res_ari_endpoints",
    "res_ari_events",
    "res_ari_playbacks",
    "res_ari_recordings",
    "res_ari_sounds",
    "res_stasis_answer",
    "res_stasis_playback",
    "res_stasis_recording",
    "res_stasis_snoop",
    "res_stasis_device_state",
    // Busy lamps: extension state PUBLISHed to Kamailio (see `Node::publish_extension_state`).
    "res_pjsip_outbound_publish",
    "res_pjsip_exten_state",
    "res_pjsip_dialog_info_body_generator",
    // MWI: SUBSCRIBE/NOTIFY message-summary, and MinivmMWI (run by `channel originate`) to set a
    // mailbox's counts.
    "res_pjsip_mwi",
    "res_pjsip_mwi_body_generator",
    "app_minivm",
    "res_clioriginate",
];

/// The last line of a generated config file (`modules`, `pjsip`, `extensions`): a test or
/// benchmark adds to a node's config with `node.write_config("pjsip_extra.conf", ...)` before
/// a (re)start or reload. The file may be absent.
fn extra_include(stem: &str) -> String {
    format!("#tryinclude {stem}_extra.conf\n")
}

/// How a node is set up before it boots.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub name: String,
    pub eid: String,
    /// `load => res_scale.so` in modules.conf.
    pub preload_module: bool,
    /// Contents of res_scale.conf; `None` leaves the file out.
    pub res_scale_conf: Option<String>,
    /// Extra AORs `bench-aor-0` .. `bench-aor-<n-1>` (no endpoint) in pjsip.conf, for contacts
    /// announced by a benchmark.
    pub extra_aors: usize,
    /// A container on this Docker network at this address instead of the host's network
    /// (loopback): then `docker network disconnect` cuts the node off.
    pub address: Option<NodeAddress>,
}

/// Where a node of its own address lives.
#[derive(Debug, Clone)]
pub struct NodeAddress {
    pub network: String,
    pub ip: String,
}

enum Process {
    Chroot(Child),
    Docker(String),
}

pub struct Node {
    pub name: String,
    pub eid: String,
    pub sip_port: u16,
    pub http_port: u16,
    /// Where SIP and HTTP listen: 127.0.0.1, or the node's own address on its network.
    pub ip: String,
    address: Option<NodeAddress>,
    /// The node's folder as the host sees it.
    pub dir: PathBuf,
    /// The same folder as Asterisk sees it (inside the rootfs).
    pub inner_dir: String,
    container: String,
    pool_dir: PathBuf,
    pool_inner: String,
    testbed: Testbed,
    process: Option<Process>,
}

/// Where a pool's folder is, on the host and inside the rootfs.
pub struct PoolPlace {
    pub id: String,
    pub dir: PathBuf,
    pub inner: String,
}

/// The loopback ports one node uses.
#[derive(Debug, Clone, Copy)]
pub struct NodePorts {
    pub sip: u16,
    pub http: u16,
    /// First of 200 RTP ports.
    pub rtp_base: u16,
}

impl Node {
    /// Lays out the node's folder under `pool_dir` (seen as `pool_inner` inside the rootfs).
    pub(crate) fn create(testbed: &Testbed, pool: &PoolPlace, spec: &NodeSpec, ports: NodePorts) -> Node {
        let dir = pool.dir.join(&spec.name);
        let inner_dir = format!("{}/{}", pool.inner, spec.name);
        for sub in ["etc", "modules", "run", "log", "lib", "spool", "cache"] {
            fs::create_dir_all(dir.join(sub)).unwrap();
        }
        // Every system module is linked in, plus a copy of the module under test; the symlinks
        // resolve inside the rootfs, whether it is a chroot or a container.
        for entry in fs::read_dir(testbed.rootfs.join(SYSTEM_MODULES.trim_start_matches('/'))).unwrap() {
            let name = entry.unwrap().file_name();
            std::os::unix::fs::symlink(Path::new(SYSTEM_MODULES).join(&name), dir.join("modules").join(&name)).unwrap();
        }
        let node = Node {
            name: spec.name.clone(),
            eid: spec.eid.clone(),
            sip_port: ports.sip,
            http_port: ports.http,
            ip: spec.address.as_ref().map_or_else(|| "127.0.0.1".to_string(), |a| a.ip.clone()),
            address: spec.address.clone(),
            container: format!("res_scale-{}-{}", pool.id, spec.name),
            pool_dir: pool.dir.clone(),
            pool_inner: pool.inner.clone(),
            dir,
            inner_dir,
            testbed: testbed.clone(),
            process: None,
        };
        node.install_module(&testbed.module);
        node.write_configs(spec, ports.rtp_base);
        node
    }

    /// Installs a module build the way `make install` does: a temp file renamed over the old one.
    pub fn install_module(&self, module: &Path) {
        let tmp = self.dir.join("modules/.res_scale.so.tmp");
        fs::copy(module, &tmp).unwrap_or_else(|e| panic!("copy {}: {e}", module.display()));
        fs::rename(&tmp, self.dir.join("modules/res_scale.so")).unwrap();
    }

    fn write_configs(&self, spec: &NodeSpec, rtp_base: u16) {
        let d = &self.inner_dir;
        self.write_config(
            "asterisk.conf",
            &format!(
                "[directories]\nastcachedir => {d}/cache\nastetcdir => {d}/etc\nastmoddir => {d}/modules\n\
                 astvarlibdir => /var/lib/asterisk\nastdbdir => {d}/lib\nastkeydir => {d}/lib\n\
                 astdatadir => /usr/share/asterisk\nastagidir => /usr/share/asterisk/agi-bin\n\
                 astspooldir => {d}/spool\nastrundir => {d}/run\nastlogdir => {d}/log\nastsbindir => /usr/sbin\n\
                 [options]\nsystemname = {}\nentityid = {}\nverbose = 3\n",
                spec.name, spec.eid
            ),
        );
        let mut modules = String::from("[modules]\nautoload = no\n");
        for m in MODULES {
            modules.push_str(&format!("load => {m}.so\n"));
        }
        if spec.preload_module {
            modules.push_str("load => res_scale.so\n");
        }
        modules.push_str(&extra_include("modules"));
        self.write_config("modules.conf", &modules);
        self.write_config("logger.conf", "[general]\ndateformat = %F %T.%3q\n[logfiles]\nmessages.log => notice,warning,error,verbose(3)\nconsole => notice,warning,error\n");
        self.write_config("http.conf", &format!("[general]\nenabled = yes\nbindaddr = {}\nbindport = {}\n", self.ip, self.http_port));
        self.write_config(
            "ari.conf",
            &format!("[general]\nenabled = yes\npretty = no\nallowed_origins = *\n[{ARI_USER}]\ntype = user\nread_only = no\npassword = {ARI_PASSWORD}\npassword_format = plain\n"),
        );
        self.write_config("rtp.conf", &format!("[general]\nrtpstart = {rtp_base}\nrtpend = {}\n", rtp_base + 199));
        // Contacts that res_scale learns from other nodes live in memory, never in astdb.
        self.write_config("sorcery.conf", "[res_pjsip]\ncontact = memory\n");
        let mut pjsip = format!(
            "[global]\ntype = global\nendpoint_identifier_order = username,ip\n\
             [transport-udp]\ntype = transport\nprotocol = udp\nbind = {}:{}\n",
            self.ip, self.sip_port
        );
        for user in ["alice", "bob", "carol"] {
            pjsip.push_str(&format!(
                "[{user}]\ntype = endpoint\ncontext = from-sip\ndisallow = all\nallow = ulaw\nauth = {user}-auth\naors = {user}\ndirect_media = no\n\
                 [{user}-auth]\ntype = auth\nauth_type = userpass\nusername = {user}\npassword = {user}-secret\n\
                 [{user}]\ntype = aor\nmax_contacts = 5\nremove_existing = yes\n"
            ));
        }
        // SIPp phones that register without authentication: dave for the registration tests,
        // 1001 and 1002 for the busy lamp tests.
        for user in ["dave", "1001", "1002"] {
            pjsip.push_str(&format!("[{user}]\ntype = endpoint\ncontext = from-sip\ndisallow = all\nallow = ulaw\naors = {user}\ndirect_media = no\n[{user}]\ntype = aor\nmax_contacts = 5\n"));
        }
        // erin subscribes for MWI (SIPp, no authentication) to mailbox 1001@default.
        pjsip.push_str("[erin]\ntype = endpoint\ncontext = from-sip\ndisallow = all\nallow = ulaw\naors = erin\n[erin]\ntype = aor\nmax_contacts = 5\nmailboxes = 1001@default\n");
        pjsip.push_str("[sipp]\ntype = endpoint\ncontext = from-sip\ndisallow = all\nallow = ulaw\ndirect_media = no\n");
        // The pool's own members: scale-gateway's helper legs between nodes (see
        // configs/asterisk/pjsip.conf for the same endpoint as operators configure it).
        pjsip.push_str(&format!(
            "[{POOL_ENDPOINT}]\ntype = auth\nauth_type = userpass\nusername = {POOL_ENDPOINT}\npassword = {POOL_SECRET}\n\
             [{POOL_ENDPOINT}]\ntype = endpoint\ncontext = res-scale-pool\ndisallow = all\nallow = ulaw\ndirect_media = no\n\
             from_user = {POOL_ENDPOINT}\nauth = {POOL_ENDPOINT}\noutbound_auth = {POOL_ENDPOINT}\n"
        ));
        for i in 0..spec.extra_aors {
            pjsip.push_str(&format!("[bench-aor-{i}]\ntype = aor\nmax_contacts = 20\n"));
        }
        pjsip.push_str(&format!("#tryinclude \"{BLF_CONFIG}\"\n"));
        pjsip.push_str(&extra_include("pjsip"));
        self.write_config("pjsip.conf", &pjsip);
        let mut extensions = String::from(
            "[from-sip]\nexten => 100,1,Answer()\n same => n,Wait(5)\n same => n,Hangup()\n\
             exten => 101,1,Answer()\n same => n,Wait(300)\n same => n,Hangup()\n\
             exten => 102,1,Answer()\n same => n,Echo()\n same => n,Hangup()\n\
             exten => 7000,1,Answer()\n same => n,Stasis(conf)\n same => n,Hangup()\n\
             exten => 8000,1,Stasis(conference)\n same => n,Hangup()\n\
             exten => _X.,1,Stasis(conf)\n same => n,Hangup()\n\
             exten => _[a-z].,1,Dial(PJSIP/${EXTEN},10)\n same => n,Hangup()\n\
             [hints]\nexten => agent1,hint,Custom:agent1\nexten => dave,hint,PJSIP/dave\n\
             exten => 1001,hint,PJSIP/1001\nexten => 1002,hint,PJSIP/1002\n\
             [res-scale-pool]\n\
             exten => _[0-9a-f].,1,Stasis(${CUT(EXTEN,~,2)},${CUT(EXTEN,~,1)})\n same => n,Hangup()\n",
        );
        extensions.push_str(&extra_include("extensions"));
        self.write_config("extensions.conf", &extensions);
        match &spec.res_scale_conf {
            Some(text) => self.write_config("res_scale.conf", text),
            None => {
                let _ = fs::remove_file(self.dir.join("etc/res_scale.conf"));
            }
        }
    }

    /// Makes the node PUBLISH the state of the hints of context `hints` whose extension matches
    /// `exten_regex` to the presence server `server` (e.g. `127.0.0.1:5060`), as
    /// configs/asterisk/pjsip.conf does for the Dockerized pool, and reloads the publishers.
    pub fn publish_extension_state(&self, server: &str, exten_regex: &str) {
        self.write_config(
            BLF_CONFIG,
            &format!(
                "[blf]\ntype = outbound-publish\nserver_uri = sip:{server}\nfrom_uri = sip:{server}\nevent = dialog\nmulti_user = yes\n\
                 @body = application/dialog-info+xml\n@context = ^hints$\n@exten = {exten_regex}\n"
            ),
        );
        self.cli("module reload res_pjsip_outbound_publish.so");
    }

    /// Waits until `scale show <subsystem>` (e.g. `states`, `registrations`) says its bus is
    /// connected.
    pub fn wait_connected(&self, subsystem: &str) {
        wait::until(&format!("{subsystem} connected on {}", self.name), Duration::from_secs(15), Duration::from_millis(50), || {
            self.cli(&format!("scale show {subsystem}")).contains("State:       connected").then_some(())
        });
    }

    /// The state `core show hint` reports for extension `exten` of context hints (e.g. InUse).
    pub fn hint_state(&self, exten: &str) -> String {
        let text = self.cli(&format!("core show hint {exten}"));
        text.split("State:").nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap_or_else(|| panic!("no hint state in: {text}")).to_string()
    }

    pub fn wait_hint(&self, exten: &str, state: &str) {
        wait::until(&format!("hint {exten} {state} on {}", self.name), Duration::from_secs(5), Duration::from_millis(20), || (self.hint_state(exten) == state).then_some(()));
    }

    /// Writes (or replaces) a file in the node's config folder.
    pub fn write_config(&self, file: &str, contents: &str) {
        fs::write(self.dir.join("etc").join(file), contents).unwrap();
    }

    fn asterisk_conf(&self) -> String {
        format!("{}/etc/asterisk.conf", self.inner_dir)
    }

    /// Cuts a node of its own address off its network: it reaches no broker, no Consul agent,
    /// no phone, and none reaches it (the CLI still answers, through `docker exec`).
    pub fn disconnect(&self) {
        let address = self.address.as_ref().expect("only a node of its own address can be cut off");
        let out = Command::new("docker").args(["network", "disconnect", &address.network, &self.container]).output().expect("run docker");
        assert!(out.status.success(), "docker network disconnect {}: {}", self.name, String::from_utf8_lossy(&out.stderr));
    }

    /// Puts a cut-off node back on its network at its address.
    pub fn connect(&self) {
        let address = self.address.as_ref().expect("only a node of its own address can be cut off");
        let out = Command::new("docker").args(["network", "connect", "--ip", &address.ip, &address.network, &self.container]).output().expect("run docker");
        assert!(out.status.success(), "docker network connect {}: {}", self.name, String::from_utf8_lossy(&out.stderr));
    }

    /// Starts Asterisk and waits until it is fully booted.
    pub fn start(&mut self) {
        assert!(self.process.is_none(), "{} already running", self.name);
        let conf = self.asterisk_conf();
        let console = fs::File::create(self.dir.join("log/console.out")).unwrap();
        assert!(self.address.is_none() || self.testbed.use_docker(), "{}: a node of its own address needs Docker", self.name);
        let network: Vec<&str> = match &self.address {
            Some(address) => vec!["--network", &address.network, "--ip", &address.ip],
            None => vec!["--network", "host"],
        };
        let process = if self.testbed.use_docker() {
            // The pool folder is mounted at the same path it has in the rootfs, so paths in the
            // generated configs are the same for chroot and container.
            let out = Command::new("docker")
                .args(["run", "-d", "--rm", "--name", &self.container])
                .args(&network)
                .arg("-v")
                .arg(format!("{}:{}", self.pool_dir.display(), self.pool_inner))
                .arg(self.testbed.image.as_deref().unwrap())
                .args(["sh", "-c", &format!("exec /usr/sbin/asterisk -C {conf} -f > {}/log/console.out 2>&1", self.inner_dir)])
                .output()
                .expect("run docker");
            assert!(out.status.success(), "docker run failed: {}", String::from_utf8_lossy(&out.stderr));
            Process::Docker(self.container.clone())
        } else {
            let child = tied_command("chroot", "TERM")
                .arg(&self.testbed.rootfs)
                .args(["/usr/sbin/asterisk", "-C", &conf, "-f"])
                .stdin(Stdio::null())
                .stdout(console.try_clone().unwrap())
                .stderr(console)
                // Its own process group: a Ctrl-C meant for us must not reach it before our teardown.
                .process_group(0)
                .spawn()
                .expect("spawn chroot asterisk");
            Process::Chroot(child)
        };
        self.process = Some(process);
        wait::until(&format!("{} to boot", self.name), Duration::from_secs(30), Duration::from_millis(100), || {
            if !self.is_running() {
                panic!("{} exited during boot:\n{}", self.name, self.console());
            }
            let out = self.try_cli("core waitfullybooted")?;
            out.contains("fully booted").then_some(())
        });
    }

    /// Whether the Asterisk process is still alive.
    pub fn is_running(&mut self) -> bool {
        match &mut self.process {
            Some(Process::Chroot(child)) => matches!(child.try_wait(), Ok(None)),
            Some(Process::Docker(name)) => {
                Command::new("docker").args(["inspect", "-f", "{{.State.Running}}", name]).output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "true").unwrap_or(false)
            }
            None => false,
        }
    }

    /// Runs a CLI command (`asterisk -rx`); `None` if the node could not be reached. Panics if
    /// it does not answer within a minute.
    pub fn try_cli(&self, command: &str) -> Option<String> {
        let conf = self.asterisk_conf();
        let mut cmd = match &self.process {
            Some(Process::Docker(name)) => {
                let mut c = Command::new("docker");
                c.args(["exec", name, "/usr/sbin/asterisk"]);
                c
            }
            _ => {
                let mut c = Command::new("chroot");
                c.arg(&self.testbed.rootfs).arg("/usr/sbin/asterisk");
                c
            }
        };
        let mut child = cmd.args(["-C", &conf, "-rx", command]).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().ok()?;
        // Read on another thread: a long answer must not fill the pipe while we wait for the exit.
        let mut stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stdout, &mut text);
            text
        });
        // A command that hangs fails the test instead of hanging the whole run.
        let status = wait::try_until(CLI_TIMEOUT, Duration::from_millis(5), || child.try_wait().ok().flatten()).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{}: '{command}' did not answer within {CLI_TIMEOUT:?}", self.name)
        });
        let text = String::from_utf8_lossy(&reader.join().unwrap_or_default()).into_owned();
        if !status.success() || text.contains("Unable to connect to remote asterisk") {
            return None;
        }
        Some(text)
    }

    /// Runs a CLI command; panics if the node does not answer.
    pub fn cli(&self, command: &str) -> String {
        self.try_cli(command).unwrap_or_else(|| panic!("{} did not answer '{command}'", self.name))
    }

    pub fn ari(&self) -> Ari {
        Ari::new(&format!("http://{}:{}/ari", self.ip, self.http_port), ARI_USER, ARI_PASSWORD)
    }

    /// The host PID of the Asterisk process.
    pub fn pid(&self) -> u32 {
        match &self.process {
            Some(Process::Chroot(child)) => child.id(),
            Some(Process::Docker(name)) => {
                let out = Command::new("docker").args(["inspect", "-f", "{{.State.Pid}}", name]).output().unwrap();
                String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
            }
            None => panic!("{} is not running", self.name),
        }
    }

    /// The contact URIs of `aor` (`pjsip show aor`), sorted.
    pub fn contact_uris(&self, aor: &str) -> Vec<String> {
        let shown = self.cli(&format!("pjsip show aor {aor}"));
        // `Contact:  <aor>/<uri>  <hash> <status> <rtt>`, under a header line of the same shape.
        let mut uris: Vec<String> =
            shown.lines().filter_map(|l| l.trim().strip_prefix("Contact:")?.split_whitespace().next()?.split_once('/').map(|(_, uri)| uri.to_string())).filter(|uri| uri.starts_with("sip")).collect();
        uris.sort();
        uris
    }

    /// A counter of `scale show amqp` (`Queued`, `Confirmed`, ...).
    pub fn amqp_counter(&self, label: &str) -> u64 {
        let text = self.cli("scale show amqp");
        let line = text.lines().find(|l| l.trim_start().starts_with(&format!("{label}:"))).unwrap_or_else(|| panic!("no {label} in:\n{text}"));
        line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{line}"))
    }

    /// Resident memory of the Asterisk process, in MiB.
    pub fn rss_mib(&self) -> f64 {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let kib: f64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0.0);
        kib / 1024.0
    }

    /// Threads of the Asterisk process, as the kernel counts them.
    pub fn thread_count(&self) -> usize {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status.lines().find_map(|l| l.strip_prefix("Threads:")).unwrap().trim().parse().unwrap()
    }

    /// Names of the Asterisk process's threads.
    pub fn thread_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for task in fs::read_dir(format!("/proc/{}/task", self.pid())).unwrap().flatten() {
            if let Ok(n) = fs::read_to_string(task.path().join("comm")) {
                names.push(n.trim().to_string());
            }
        }
        names
    }

    /// How many contacts PJSIP holds (`Objects found: N` of `pjsip show contacts`; 0 when none).
    pub fn pjsip_contacts(&self) -> usize {
        self.cli("pjsip show contacts").lines().find_map(|l| l.trim().strip_prefix("Objects found:")).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
    }

    /// The node's messages log (notice and above, verbose 3).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("log/messages.log")).unwrap_or_default()
    }

    /// The log once it contains `text` (panics after 5 s). Asterisk's logger writes on its own
    /// thread, so a line can reach the file just after the CLI command or state change that
    /// caused it is seen.
    pub fn wait_logged(&self, text: &str) -> String {
        crate::wait::until(&format!("{} to log {text:?}", self.name), Duration::from_secs(5), Duration::from_millis(20), || {
            let log = self.log();
            log.contains(text).then_some(log)
        })
    }

    /// Whatever Asterisk wrote to stdout/stderr.
    pub fn console(&self) -> String {
        fs::read_to_string(self.dir.join("log/console.out")).unwrap_or_default()
    }

    /// Stops Asterisk: `core stop now`, then a kill if it does not go within 10 s.
    pub fn stop(&mut self) {
        if self.process.is_none() {
            return;
        }
        let _ = self.try_cli("core stop now");
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(100));
            !self.is_running()
        });
        if !gone {
            eprintln!("{}: did not stop within 10 s; killing it", self.name);
        }
        self.kill();
    }

    /// Ends the process at once.
    pub fn kill(&mut self) {
        match self.process.take() {
            Some(Process::Chroot(mut child)) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Some(Process::Docker(name)) => {
                let _ = Command::new("docker").args(["rm", "-f", &name]).output();
            }
            None => {}
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_log_tail(&format!("{} messages.log ({})", self.name, self.dir.display()), &self.log(), 40);
        }
        self.kill();
    }
}
