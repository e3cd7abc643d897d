//! A pool of the test harness (Consul, RabbitMQ, two Asterisk 22 nodes with res_scale loaded,
//! and scale-gateway in front of them, on loopback ports, no images of its own) that stays up
//! until Ctrl-C, printing how to reach each part. `make run` is the Dockerized pool instead.
//!
//! Options: `--nodes N` (default 2), `--once` (print the status and tear down at once).

use std::sync::mpsc;

use res_scale_tests::gateway::{Gateway, CLIENT_PASSWORD, CLIENT_USER};
use res_scale_tests::node::{ARI_PASSWORD, ARI_USER};
use res_scale_tests::Pool;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let once = args.iter().any(|a| a == "--once");
    let nodes = args.iter().position(|a| a == "--nodes").and_then(|i| args.get(i + 1)).map(|n| n.parse().expect("--nodes takes a number")).unwrap_or(2);

    let (stop_tx, stop_rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = stop_tx.send(());
    })
    .expect("install the Ctrl-C handler");

    eprintln!("starting Consul, RabbitMQ and {nodes} Asterisk node(s)...");
    let pool = Pool::builder().nodes(nodes).with_consul().with_rabbitmq().start();

    for node in &pool.nodes {
        println!("==== {} ({}) ====", node.name, node.eid);
        print!("{}", node.cli("scale show status"));
        println!("  SIP udp:127.0.0.1:{}  ARI http://127.0.0.1:{}/ari ({ARI_USER}/{ARI_PASSWORD})", node.sip_port, node.http_port);
        println!("  logs and config: {}\n", node.dir.display());
    }
    let gateway = Gateway::start(&pool, "gateway", &[]);
    gateway.wait_healthy(nodes);
    println!("==== scale-gateway: the pool as one Asterisk ====");
    println!("  ARI      {}/ari ({CLIENT_USER}/{CLIENT_PASSWORD}), events ws://127.0.0.1:{}/ari/events?app=<name>", gateway.url(), gateway.port);
    println!("  health   {}/healthz   metrics {}/metrics", gateway.url(), gateway.url());
    println!("  config and log: {}\n", gateway.dir.display());
    if let Some(consul) = &pool.consul {
        println!("Consul   {}", consul.url());
    }
    if let Some(mq) = &pool.rabbitmq {
        println!("RabbitMQ {}", mq.url());
    }
    if once {
        return;
    }
    println!("\nThe pool runs until Ctrl-C.");
    let _ = stop_rx.recv();
    eprintln!("stopping the pool...");
}
