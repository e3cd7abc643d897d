//! The soak: two nodes with a real Consul and RabbitMQ under every kind of traffic at once for a
//! bounded time, with a broker restart in the middle. `make soak` runs it for 15 minutes
//! (`soak` binary); `tests/tests/soak.rs` runs a 2-minute version in CI.
//!
//! Traffic: calls into a Stasis application on both nodes in turn (events), SIPp phones that
//! register, refresh and unregister on both nodes in turn (registrations), and an application
//! added and removed in Consul every 20 s. Every `sample_every` the RSS and thread count of each
//! Asterisk are taken. At the end it waits for the events to arrive and reports what a user
//! cares about: every call's StasisStart..StasisEnd received, registrations the same on every
//! node as the phones left them, no channel and no extra application left.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::amqp::{AmqpProbe, Received};
use crate::kamailio::Register;
use crate::ports::free_port;
use crate::{wait, Node, Pool};

const APP: &str = "soak";
const QUEUE: &str = "soak-events";
/// The phones of the churn (AORs without authentication in every node's pjsip.conf).
const PHONES: [&str; 3] = ["dave", "1001", "1002"];

/// One sample of both nodes.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: Duration,
    /// Per node: (RSS in MiB, threads).
    pub nodes: Vec<(f64, usize)>,
}

#[derive(Debug)]
pub struct SoakReport {
    pub samples: Vec<Sample>,
    pub calls: usize,
    /// Calls whose StasisStart and StasisEnd both arrived.
    pub calls_complete: usize,
    /// Per node: events the module queued, and those confirmed by the broker.
    pub queued_confirmed: Vec<(u64, u64)>,
    pub events_received: usize,
    pub duplicates: usize,
    pub registers: usize,
    /// Per phone: what the phone's last REGISTER left (a contact or none), and what each node
    /// holds.
    pub registrations: BTreeMap<String, (Option<String>, Vec<Vec<String>>)>,
    pub app_rounds: usize,
    /// Channels and extra applications still there at the end, per node.
    pub left_over: Vec<(usize, Vec<String>)>,
}

impl SoakReport {
    pub fn registrations_consistent(&self) -> bool {
        self.registrations.values().all(|(truth, held)| held.iter().all(|contacts| contacts.as_slice() == truth.as_slice()))
    }

    pub fn nothing_left(&self) -> bool {
        self.left_over.iter().all(|(channels, apps)| *channels == 0 && apps.is_empty())
    }

    /// Node `i`'s RSS in the samples from `window` on against its RSS at `base`: the largest
    /// relative change (0.05 = 5 %).
    pub fn rss_drift(&self, i: usize, base: Duration, window: Duration) -> Option<f64> {
        let base = self.samples.iter().find(|s| s.at >= base)?.nodes[i].0;
        self.samples.iter().filter(|s| s.at >= window).map(|s| (s.nodes[i].0 - base).abs() / base).reduce(f64::max)
    }

    pub fn print(&self) {
        println!("{:>8}  {}", "minute", (1..=self.samples[0].nodes.len()).map(|n| format!("node{n} RSS MiB / threads")).collect::<Vec<_>>().join("   "));
        for s in &self.samples {
            println!("{:>8.1}  {}", s.at.as_secs_f64() / 60.0, s.nodes.iter().map(|(rss, threads)| format!("{rss:>14.1} / {threads:<7}")).collect::<Vec<_>>().join("   "));
        }
        println!("calls: {} placed, {} with StasisStart..StasisEnd received", self.calls, self.calls_complete);
        println!("events: {} received ({} duplicates); per node queued/confirmed: {:?}", self.events_received, self.duplicates, self.queued_confirmed);
        println!("registrations: {} REGISTERs; consistent at the end: {}", self.registers, self.registrations_consistent());
        println!("applications added and removed: {} rounds; left over (channels, apps) per node: {:?}", self.app_rounds, self.left_over);
    }
}

fn apps_of(node: &Node) -> Vec<String> {
    let listed = node.ari().get("/applications");
    listed.json().as_array().map(|a| a.iter().filter_map(|app| app["name"].as_str().map(str::to_string)).collect()).unwrap_or_default()
}

/// Runs the soak for `total` with a broker restart at half time, sampling every `sample_every`.
pub fn run(total: Duration, sample_every: Duration) -> SoakReport {
    // Persistent events: the events waiting in the application's queue when the broker restarts
    // are kept only so (a restart drops a queue's transient messages).
    let conf = "[consul]\nenabled = yes\nurl = {consul_url}\ncheck_ttl = 3s\n[amqp]\nenabled = yes\nurl = {amqp_url}\npersistent = yes\n[registrations]\nenabled = yes\n";
    let mut pool = Pool::builder().nodes(2).with_consul().with_rabbitmq().res_scale_conf(conf).start();
    for node in &pool.nodes {
        node.wait_connected("registrations");
    }
    let consul = pool.consul.as_ref().unwrap();
    consul.put_kv(&format!("res_scale/apps/{APP}"), "{}");
    for node in &pool.nodes {
        wait::until(&format!("{APP} on {}", node.name), Duration::from_secs(10), Duration::from_millis(50), || apps_of(node).iter().any(|a| a == APP).then_some(()));
        wait::until("events connected", Duration::from_secs(10), Duration::from_millis(50), || node.cli("scale show amqp").contains("State:         connected").then_some(()));
    }
    // The main thread restarts the broker while the traffic threads use the rest of the pool.
    let mut rabbitmq = pool.rabbitmq.take().unwrap();
    let probe = AmqpProbe::new(&rabbitmq.url());
    probe.bind_queue_to_existing(QUEUE, "res_scale.events", &format!("stasis.app.{APP}.#"));
    let dir = pool.dir.join("sipp");
    std::fs::create_dir_all(&dir).unwrap();
    let nodes = &pool.nodes;
    let consul = pool.consul.as_ref().unwrap();

    let stop = AtomicBool::new(false);
    // Set while the broker restarts: the probe reads through it, and a read that the broker
    // breaks off fails the probe.
    let restarting = AtomicBool::new(false);
    let received = Mutex::new(Vec::<Received>::new());
    let started = Instant::now();
    let take_sample = || Sample { at: started.elapsed(), nodes: nodes.iter().map(|n| (n.rss_mib(), n.thread_count())).collect() };
    let mut samples = vec![take_sample()];
    let (channels, (registers, last), app_rounds) = std::thread::scope(|s| {
        // Events are read as they come, so the queue never holds the whole soak.
        let reader = s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                if restarting.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                let got = probe.drain(QUEUE, 1, Duration::from_millis(500));
                received.lock().unwrap().extend(got);
            }
        });
        let calls = s.spawn(|| {
            let mut channels = Vec::new();
            for node in nodes.iter().cycle() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let reply = node.ari().post(&format!("/channels?endpoint=Local/100@from-sip&app={APP}"));
                if let Some(id) = reply.json()["id"].as_str().filter(|_| reply.status == 200) {
                    std::thread::sleep(Duration::from_millis(200));
                    node.ari().delete(&format!("/channels/{id}"));
                    channels.push(id.to_string());
                }
                std::thread::sleep(Duration::from_millis(300));
            }
            channels
        });
        let churn = s.spawn(|| {
            // Each round, each phone: unregisters the contact the last round left (where it was
            // made), registers a new one on a node, refreshes it, and every other round
            // unregisters it again.
            let mut left: BTreeMap<&str, (Register, &Node)> = BTreeMap::new();
            let mut sent = 0;
            for round in 0u32.. {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                for (p, user) in PHONES.iter().enumerate() {
                    if let Some((phone, node)) = left.remove(user) {
                        let bye = Register { cseq: phone.cseq + 1, expires: 0, ..phone };
                        bye.send(&dir, node.sip_port).unwrap_or_else(|e| panic!("{user} unregisters: {e}"));
                        sent += 1;
                    }
                    let node = &nodes[(round as usize + p) % nodes.len()];
                    let phone = Register { user: user.to_string(), call_id: format!("{user}-soak-{round}"), cseq: 1, expires: 120, user_agent: "SIPp soak".into(), local_port: free_port() };
                    let refresh = Register { cseq: 2, ..phone.clone() };
                    for step in [&phone, &refresh] {
                        step.send(&dir, node.sip_port).unwrap_or_else(|e| panic!("{user} registers on {}: {e}", node.name));
                    }
                    sent += 2;
                    if round % 2 == 0 {
                        Register { cseq: 3, expires: 0, ..refresh }.send(&dir, node.sip_port).unwrap_or_else(|e| panic!("{user} unregisters: {e}"));
                        sent += 1;
                    } else {
                        left.insert(user, (refresh, node));
                    }
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
            let truth: BTreeMap<String, Option<String>> = PHONES.iter().map(|user| (user.to_string(), left.get(user).map(|(phone, _)| phone.contact_uri()))).collect();
            (sent, truth)
        });
        let apps = s.spawn(|| {
            let mut rounds = 0;
            while !stop.load(Ordering::SeqCst) {
                let extra = format!("res_scale/apps/soak-extra-{rounds}");
                consul.put_kv(&extra, "{}");
                std::thread::sleep(Duration::from_secs(10));
                consul.delete_kv(&extra);
                std::thread::sleep(Duration::from_secs(10));
                rounds += 1;
            }
            rounds
        });

        let mut restarted = false;
        while started.elapsed() < total {
            std::thread::sleep(sample_every.min(total.saturating_sub(started.elapsed())));
            if !restarted && started.elapsed() >= total / 2 {
                restarting.store(true, Ordering::SeqCst);
                // The reader's last read (at most 500 ms) ends first.
                std::thread::sleep(Duration::from_secs(1));
                rabbitmq.restart();
                restarting.store(false, Ordering::SeqCst);
                restarted = true;
            }
            samples.push(take_sample());
        }
        stop.store(true, Ordering::SeqCst);
        let out = (calls.join().unwrap(), churn.join().unwrap(), apps.join().unwrap());
        reader.join().unwrap();
        out
    });

    // What was still on its way arrives.
    let complete = |messages: &[Received]| {
        let mut seen: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for m in messages {
            if let (Some(channel), Some(kind)) = (m.json["channel"]["id"].as_str(), m.json["type"].as_str()) {
                seen.entry(channel).or_default().insert(kind);
            }
        }
        channels.iter().filter(|c| seen.get(c.as_str()).is_some_and(|k| k.contains("StasisStart") && k.contains("StasisEnd"))).count()
    };
    let mut messages = received.into_inner().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while complete(&messages) < channels.len() && Instant::now() < deadline {
        messages.extend(probe.drain(QUEUE, 1, Duration::from_millis(500)));
    }
    let registrations = last
        .into_iter()
        .map(|(user, truth)| {
            let held = nodes
                .iter()
                .map(|n| {
                    wait::try_until(Duration::from_secs(10), Duration::from_millis(100), || Some(n.contact_uris(&user)).filter(|c| *c == truth.iter().cloned().collect::<Vec<_>>()))
                        .unwrap_or_else(|| n.contact_uris(&user))
                })
                .collect();
            (user, (truth, held))
        })
        .collect();
    let left_over = nodes
        .iter()
        .map(|n| {
            let active = wait::try_until(Duration::from_secs(10), Duration::from_millis(100), || Some(n.ari().get("/channels").json().as_array().map_or(0, Vec::len)).filter(|c| *c == 0))
                .unwrap_or_else(|| n.ari().get("/channels").json().as_array().map_or(0, Vec::len));
            (active, apps_of(n).into_iter().filter(|a| a != APP).collect())
        })
        .collect();
    let distinct: BTreeSet<&str> = messages.iter().map(|m| m.body.as_str()).collect();
    let report = SoakReport {
        calls_complete: complete(&messages),
        calls: channels.len(),
        queued_confirmed: nodes.iter().map(|n| (n.amqp_counter("Queued"), n.amqp_counter("Confirmed"))).collect(),
        duplicates: messages.len() - distinct.len(),
        events_received: messages.len(),
        samples,
        registers,
        registrations,
        app_rounds,
        left_over,
    };
    pool.rabbitmq = Some(rabbitmq);
    report
}
