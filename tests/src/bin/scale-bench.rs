//! `make bench`: measurements against a real pool. Each benchmark prints its figures with the
//! command that made them, ready for BENCHMARKS.md.
//!
//! Benchmarks: `apps` (Consul KV write -> Stasis application registered on every node).

use std::time::{Duration, Instant};

use res_scale_tests::Pool;

fn main() {
    let which: Vec<String> = std::env::args().skip(1).collect();
    let all = which.is_empty();
    if all || which.iter().any(|w| w == "apps") {
        app_propagation(100);
    }
}

/// Median, p99 and max of a sample, in milliseconds.
fn summary(samples: &mut [Duration]) -> String {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!("median {:.1} ms, p99 {:.1} ms, max {:.1} ms (n={})", ms(at(0.5)), ms(at(0.99)), ms(*samples.last().unwrap()), samples.len())
}

/// Time from a KV write (or delete) until every node has (or no longer has) the application,
/// seen through each node's ARI (`GET /applications/<name>`), polled every 2 ms.
fn app_propagation(rounds: usize) {
    let pool = Pool::builder().nodes(2).with_consul().start();
    let consul = pool.consul.as_ref().unwrap();
    let aris: Vec<_> = pool.nodes.iter().map(|n| n.ari()).collect();
    let until_all = |name: &str, present: bool| {
        let started = Instant::now();
        let mut pending: Vec<usize> = (0..aris.len()).collect();
        while !pending.is_empty() {
            assert!(started.elapsed() < Duration::from_secs(10), "{name} did not propagate");
            pending.retain(|&i| (aris[i].get(&format!("/applications/{name}")).status == 200) != present);
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    };
    let (mut adds, mut deletes) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let name = format!("bench-{round}");
        let t = Instant::now();
        consul.put_kv(&format!("res_scale/apps/{name}"), "{}");
        until_all(&name, true);
        adds.push(t.elapsed());
        let t = Instant::now();
        consul.delete_kv(&format!("res_scale/apps/{name}"));
        until_all(&name, false);
        deletes.push(t.elapsed());
    }
    println!("## App propagation (Consul KV -> Stasis app on every node), 2 nodes, {rounds} adds and {rounds} deletes");
    println!("- add:    {}", summary(&mut adds));
    println!("- delete: {}", summary(&mut deletes));
}
