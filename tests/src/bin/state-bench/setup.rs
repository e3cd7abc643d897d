//! The two nodes' configuration for each mechanism: hints and AMI (the same for both), and
//! either res_scale's `[state]` on or res_pjsip_publish_asterisk between the two nodes as its
//! documentation configures it (`Exchanging-Device-and-Mailbox-State-Using-PJSIP`), with
//! res_scale's state sharing off so that only one mechanism runs.

use std::time::{Duration, Instant};

use res_scale_tests::ami::{manager_conf, Ami};
use res_scale_tests::control_socket::socket_cli;
use res_scale_tests::ports::free_port;
use res_scale_tests::{Node, Pool};

/// Devices (and hints of the same name) of each measurement: `Custom:lat0` .. `Custom:lat999`.
pub const DEVICES: usize = 1000;
pub const LATENCY_PREFIX: &str = "lat";
pub const BURST_PREFIX: &str = "burst";
pub const FEED_PREFIX: &str = "feed";
/// The device a phase's start is checked with.
const SYNC: &str = "sync";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    ResScale,
    PjsipPublish,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ResScale => "res_scale",
            Mechanism::PjsipPublish => "res_pjsip_publish_asterisk",
        }
    }
}

/// The pool and how to reach each node's AMI.
pub struct Bench {
    pub pool: Pool,
    ami_ports: Vec<u16>,
    /// Each node's res_scale.conf as the pool wrote it ([state] on with [amqp]).
    res_scale_confs: Vec<String>,
}

impl Bench {
    /// Two nodes with RabbitMQ and Consul, each with AMI and 3,001 hints (`lat*`, `burst*`,
    /// `feed*` and `sync`, context `state-bench`, each on the Custom: device of its name).
    pub fn start() -> Bench {
        let pool = Pool::builder().nodes(2).with_consul().with_rabbitmq().start();
        let mut hints = String::from("[state-bench]\n");
        for prefix in [LATENCY_PREFIX, BURST_PREFIX, FEED_PREFIX] {
            for i in 0..DEVICES {
                hints.push_str(&format!("exten => {prefix}{i},hint,Custom:{prefix}{i}\n"));
            }
        }
        hints.push_str(&format!("exten => {SYNC},hint,Custom:{SYNC}\n"));
        let mut ami_ports = Vec::new();
        let mut res_scale_confs = Vec::new();
        for node in &pool.nodes {
            let port = free_port();
            node.write_config("manager.conf", &manager_conf(port));
            node.write_config("extensions_extra.conf", &hints);
            ami_ports.push(port);
            res_scale_confs.push(std::fs::read_to_string(node.dir.join("etc/res_scale.conf")).unwrap());
        }
        Bench { pool, ami_ports, res_scale_confs }
    }

    pub fn node(&self, i: usize) -> &Node {
        self.pool.node(i)
    }

    /// Restarts both nodes with `mechanism` as the only one sharing state, and returns node A's
    /// AMI (for actions, no events) and node B's (call events: ExtensionStatus) once a change on
    /// A reaches B's hint.
    pub fn switch_to(&mut self, mechanism: Mechanism) -> (Ami, Ami) {
        for node in &mut self.pool.nodes {
            node.stop();
        }
        let sip_ports: Vec<u16> = self.pool.nodes.iter().map(|n| n.sip_port).collect();
        let names: Vec<String> = self.pool.nodes.iter().map(|n| n.name.clone()).collect();
        for (i, node) in self.pool.nodes.iter().enumerate() {
            let peer = 1 - i;
            let (modules, pjsip, state) = match mechanism {
                Mechanism::ResScale => (String::new(), String::new(), ""),
                Mechanism::PjsipPublish => (
                    "load => res_pjsip_outbound_publish.so\nload => res_pjsip_publish_asterisk.so\n".to_string(),
                    publish_asterisk_conf(&names[i], &names[peer], sip_ports[peer]),
                    "[state]\nenabled = no\n",
                ),
            };
            node.write_config("modules_extra.conf", &modules);
            node.write_config("pjsip_extra.conf", &pjsip);
            node.write_config("res_scale.conf", &format!("{}{state}", self.res_scale_confs[i]));
        }
        for node in &mut self.pool.nodes {
            node.start();
        }
        if mechanism == Mechanism::ResScale {
            self.pool.nodes.iter().for_each(|node| node.wait_connected("states"));
        }
        let (mut a, b) = (Ami::connect(self.ami_ports[0], "off"), Ami::connect(self.ami_ports[1], "call"));
        wait_path(&mut a, &b);
        (a, b)
    }
}

/// res_pjsip_publish_asterisk on node `me` towards `peer`, both ways the same shape, as its
/// documentation has it (device state only): the peer's endpoint, an outbound-publish of
/// `asterisk-devicestate` whose Request-URI user (and so From user, which identifies this node
/// at the peer) is this node's name, the inbound-publication the peer's PUBLISHes reach (their
/// Request-URI user is the peer's name) and the asterisk-publication tying both to device state.
fn publish_asterisk_conf(me: &str, peer: &str, peer_port: u16) -> String {
    format!(
        "[{peer}]\ntype = endpoint\ncontext = from-sip\ndisallow = all\nallow = ulaw\n\
         [{peer}-devicestate]\ntype = outbound-publish\nserver_uri = sip:{me}@127.0.0.1:{peer_port}\n\
         event = asterisk-devicestate\n\
         [{peer}]\ntype = inbound-publication\nendpoint = {peer}\nevent_asterisk-devicestate = {peer}\n\
         [{peer}]\ntype = asterisk-publication\ndevicestate_publish = {peer}-devicestate\ndevice_state = yes\n"
    )
}

/// The `state` line of `scale show status`.
pub fn state_line(node: &Node) -> String {
    let text = socket_cli(node, "scale show status");
    text.lines().find(|l| l.trim_start().starts_with("state ")).unwrap_or_else(|| panic!("no state line in:\n{text}")).trim().to_string()
}

/// The extension state number AMI reports (ExtensionStatus `Status`) for a device state.
pub fn hint_status(state: &str) -> &'static str {
    match state {
        "NOT_INUSE" => "0",
        "INUSE" => "1",
        "BUSY" => "2",
        "RINGING" => "8",
        "ONHOLD" => "16",
        other => panic!("no hint status for {other}"),
    }
}

/// Sets `Custom:<device>` on node A (AMI Setvar of func_devstate's DEVICE_STATE()).
pub fn set_state(a: &mut Ami, device: &str, state: &str) -> Instant {
    let variable = format!("DEVICE_STATE(Custom:{device})");
    a.send("Setvar", &[("Variable", variable.as_str()), ("Value", state)])
}

/// Waits until a change on A reaches B's hint (both mechanisms need a moment after boot: AMQP
/// connections, or the first PUBLISH and its answer), trying INUSE and ONHOLD in turns.
fn wait_path(a: &mut Ami, b: &Ami) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for attempt in 0.. {
        let state = ["INUSE", "ONHOLD"][attempt % 2];
        let from = b.event_count();
        set_state(a, SYNC, state);
        let until = Instant::now() + Duration::from_secs(2);
        let mut cursor = from;
        while Instant::now() < until {
            let events = b.events_after(cursor, Duration::from_millis(100));
            cursor += events.len();
            if events.iter().any(|e| e.get("Exten") == Some(SYNC) && e.get("Status") == Some(hint_status(state))) {
                // What the boot published (func_devstate's states from astdb) settles first.
                std::thread::sleep(Duration::from_secs(2));
                return;
            }
        }
        assert!(Instant::now() < deadline, "no state change from node A reached node B's hint within 30 s");
    }
}
