//! `make bench` (part four): device state propagation between two nodes, res_scale against
//! Asterisk's own res_pjsip_publish_asterisk, side by side in one run on the same two nodes
//! (Asterisk in Docker, RabbitMQ, Consul). The nodes restart between mechanisms, each time with
//! only one of them sharing state (res_scale's `[state] enabled = no` while the other runs),
//! and the mechanisms take turns, round after round.
//!
//! Each node has 3,001 hints (`lat*`, `burst*`, `feed*`, `sync`, on `Custom:` devices of the
//! same names). Changes are made on node A with AMI `Setvar` of `DEVICE_STATE(Custom:...)`
//! (func_devstate, as `devstate change` does, without a CLI process per change) and observed
//! as AMI ExtensionStatus events of node B's hints, stamped on arrival: the hint is what BLF,
//! queues and pickup see, and AMI reports it straight from the hint callback (ARI deviceState
//! events report the device, not the hint, and add a Stasis app and JSON on the way).
//!
//! 1. latency: 1,000 changes at 100/s, one per device, until B's hint reports each.
//! 2. burst: 10 × 1,000 changes written to A's AMI as fast as A takes them, until each device's
//!    hint on B reports its last state: the rate B receives and applies, and what is lost.
//! 3. feed (res_scale only): 20 × 1,000 messages of a foreign origin published straight to the
//!    exchange `res_scale.state`, until B applied them all and each hint reports its last state
//!    (target >= 10,000/s with the hint machinery running): once while they are published
//!    (bounded by the publisher and the broker), once queued at the broker while B's Asterisk
//!    is stopped, timed from when it continues.
//!
//! `cargo run --release -p res-scale-tests --bin state-bench [-- <rounds>]` (default 2)

mod runs;
mod setup;

use res_scale_tests::amqp::AmqpProbe;
use res_scale_tests::stats::quantile;

use runs::{Feed, Latency, Rate};
use setup::{Bench, Mechanism};

const BURST_PASSES: usize = 10;
const FEED_PASSES: usize = 20;

struct Round {
    mechanism: Mechanism,
    load: String,
    latency: Latency,
    burst: Rate,
    /// res_scale only: the live feed and the queued one.
    feeds: Option<(Rate, Rate)>,
}

fn main() {
    let rounds: usize = std::env::args().nth(1).map(|n| n.parse().expect("rounds: a number")).unwrap_or(2);
    let mut bench = Bench::start();
    let broker_url = bench.pool.rabbitmq.as_ref().unwrap().url();
    let probe = AmqpProbe::new(&broker_url);
    println!("device state benchmark, 2 nodes, {} cores, {rounds} round(s), {} hints per node", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0), 3 * setup::DEVICES + 1);
    let mut results = Vec::new();
    for round in 0..rounds {
        // Who goes first alternates, so that a node's warm-up or a busy spell of the machine
        // does not always fall on the same side.
        let mut order = [Mechanism::ResScale, Mechanism::PjsipPublish];
        if round % 2 == 1 {
            order.reverse();
        }
        for mechanism in order {
            let (mut a, b) = bench.switch_to(mechanism);
            let load = load_average();
            let watch = (mechanism == Mechanism::ResScale).then_some(broker_url.as_str());
            let mut latency = runs::latency(&mut a, &b, results.len(), watch);
            latency.samples.sort();
            println!("round {} {:<27} load {load}: latency {}", round + 1, mechanism.name(), latency_text(&latency));
            let counted = (mechanism == Mechanism::ResScale).then(|| (bench.node(0), bench.node(1)));
            let burst = runs::burst(&mut a, &b, BURST_PASSES, counted);
            println!("round {} {:<27} burst from A: {}", round + 1, mechanism.name(), rate_text(&burst));
            let feeds = (mechanism == Mechanism::ResScale).then(|| {
                let live = runs::feed(&probe, bench.node(1), &b, FEED_PASSES, Feed::Live);
                println!("round {} {:<27} feed to the exchange, live: {}", round + 1, mechanism.name(), rate_text(&live));
                let queued = runs::feed(&probe, bench.node(1), &b, FEED_PASSES, Feed::Queued);
                println!("round {} {:<27} feed to the exchange, queued: {}", round + 1, mechanism.name(), rate_text(&queued));
                (live, queued)
            });
            results.push(Round { mechanism, load, latency, burst, feeds });
        }
    }
    print_table(&results);
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn latency_text(l: &Latency) -> String {
    let to_broker = match l.to_broker.is_empty() {
        true => String::new(),
        false => format!(" (of which A -> broker -> a consumer: p50 {:.1} ms, p99 {:.1} ms, {} delivered)", ms(quantile(&l.to_broker, 0.5)), ms(quantile(&l.to_broker, 0.99)), l.to_broker.len()),
    };
    let text = match l.samples.is_empty() {
        true => format!("none of {} seen", l.lost),
        false => format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, {} of {} seen, {} lost",
            ms(quantile(&l.samples, 0.5)),
            ms(quantile(&l.samples, 0.99)),
            ms(*l.samples.last().unwrap()),
            l.samples.len(),
            l.samples.len() + l.lost,
            l.lost
        ),
    };
    format!("{text}{to_broker}")
}

fn rate_text(r: &Rate) -> String {
    let done = match (r.done, r.per_second()) {
        (Some(d), Some(rate)) => format!("all hints final after {:.0} ms: {rate:.0} changes/s", ms(d)),
        _ => format!("{} device(s) never reached their final state", r.lost),
    };
    let applied = r.applied.map(|d| format!(", all applied after {:.0} ms ({:.0}/s)", ms(d), r.n as f64 / d.as_secs_f64())).unwrap_or_default();
    let messages = r.messages.map(|[published, dropped, applied]| format!("; A published {published} ({dropped} dropped), B applied {applied}")).unwrap_or_default();
    format!("{} changes sent in {:.0} ms{applied}, {done}, {} hint change(s) reported{messages}", r.n, ms(r.sent), r.events)
}

fn latency_quantile(r: &Round, q: f64) -> Option<f64> {
    (!r.latency.samples.is_empty()).then(|| ms(quantile(&r.latency.samples, q)))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Each mechanism's median over the rounds and every round's figure, then the ratio of the
/// medians, ours / theirs.
fn print_table(results: &[Round]) {
    let of = |m: Mechanism| results.iter().filter(move |r| r.mechanism == m).collect::<Vec<_>>();
    let (ours, theirs) = (of(Mechanism::ResScale), of(Mechanism::PjsipPublish));
    type Figure = fn(&Round) -> Option<f64>;
    let rows: [(&str, Figure); 9] = [
        ("latency p50, ms", |r| latency_quantile(r, 0.5)),
        ("latency p99, ms", |r| latency_quantile(r, 0.99)),
        ("latency max, ms", |r| r.latency.samples.last().map(|d| ms(*d))),
        ("latency: lost of 1,000", |r| Some(r.latency.lost as f64)),
        ("burst from A: changes/s at B", |r| r.burst.per_second()),
        ("burst from A: A's own Setvar/s", |r| Some(r.burst.n as f64 / r.burst.sent.as_secs_f64())),
        ("burst: devices lost of 1,000", |r| Some(r.burst.lost as f64)),
        ("feed, live: changes/s at B", |r| r.feeds.as_ref().and_then(|(live, _)| live.per_second())),
        ("feed, queued: changes/s at B", |r| r.feeds.as_ref().and_then(|(_, queued)| queued.per_second())),
    ];
    let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.1}") });
    // None when any round has no figure (a mechanism that does not take part, or lost changes).
    let median = |rounds: &[&Round], f: Figure| {
        let mut values: Vec<f64> = rounds.iter().map(|r| f(r)).collect::<Option<_>>()?;
        values.sort_by(f64::total_cmp);
        let mid = values.len() / 2;
        (!values.is_empty()).then(|| if values.len() % 2 == 1 { values[mid] } else { (values[mid - 1] + values[mid]) / 2.0 })
    };
    let column = |rounds: &[&Round], f: Figure| format!("{} ({})", cell(median(rounds, f)), rounds.iter().map(|r| cell(f(r))).collect::<Vec<_>>().join(" / "));
    println!();
    println!("| median (each round) | res_scale | res_pjsip_publish_asterisk | ours / theirs |");
    println!("|---|---|---|---|");
    for (label, f) in rows {
        let ratio = match (median(&ours, f), median(&theirs, f)) {
            (Some(o), Some(t)) if t > 0.0 => format!("{:.2}", o / t),
            _ => "-".to_string(),
        };
        println!("| {label} | {} | {} | {ratio} |", column(&ours, f), column(&theirs, f));
    }
    let loads = |rounds: &[&Round]| rounds.iter().map(|r| r.load.clone()).collect::<Vec<_>>().join("; ");
    println!("load averages at each phase's start: res_scale {}; res_pjsip_publish_asterisk {}", loads(&ours), loads(&theirs));
}
