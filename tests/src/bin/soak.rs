//! `make soak`: the soak of `res_scale_tests::soak` for 15 minutes (`--minutes N` for another
//! length), sampling every minute; prints the samples and the totals and exits non-zero when
//! something was lost or left, or memory was not flat (the last 5 minutes against minute 5).

use std::time::Duration;

use res_scale_tests::soak;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let minutes: u64 = match args.iter().position(|a| a == "--minutes") {
        Some(i) => args.get(i + 1).and_then(|m| m.parse().ok()).unwrap_or_else(|| panic!("--minutes takes a number")),
        None => 15,
    };
    let report = soak::run(Duration::from_secs(minutes * 60), Duration::from_secs(60));
    report.print();
    let mut failed = Vec::new();
    if report.calls_complete != report.calls {
        failed.push(format!("{} of {} calls lack StasisStart or StasisEnd", report.calls - report.calls_complete, report.calls));
    }
    if !report.registrations_consistent() {
        failed.push(format!("registrations differ from the phones' last REGISTER: {:?}", report.registrations));
    }
    if !report.nothing_left() {
        failed.push(format!("left over: {:?}", report.left_over));
    }
    // Memory flat: every sample of the last 5 minutes within 5 % of minute 5.
    if minutes >= 10 {
        for i in 0..report.samples[0].nodes.len() {
            let drift = report.rss_drift(i, Duration::from_secs(5 * 60), Duration::from_secs((minutes - 5) * 60)).unwrap_or(f64::INFINITY);
            println!("node{}: RSS drift over the last 5 minutes {:.1} %", i + 1, drift * 100.0);
            if drift > 0.05 {
                failed.push(format!("node{} RSS drifted {:.1} % in the last 5 minutes", i + 1, drift * 100.0));
            }
        }
    }
    if !failed.is_empty() {
        eprintln!("soak FAILED: {}", failed.join("; "));
        std::process::exit(1);
    }
    println!("soak OK");
}
