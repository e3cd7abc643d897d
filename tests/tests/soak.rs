//! The soak's 2-minute version (`make soak` runs 15 minutes): calls, registration churn, apps
//! added and removed and a broker restart on two real nodes at once, and afterwards nothing
//! lost, nothing left and the registrations as the phones left them.

use std::time::Duration;

use res_scale_tests::soak;

#[test]
fn two_minutes_of_everything_at_once_with_a_broker_restart_lose_nothing_and_leave_nothing() {
    let report = soak::run(Duration::from_secs(120), Duration::from_secs(20));
    report.print();
    assert!(report.calls > 100 && report.registers > 50 && report.app_rounds >= 5, "too little traffic: {report:?}");
    assert_eq!(report.calls_complete, report.calls, "calls without StasisStart..StasisEnd");
    assert!(report.registrations_consistent(), "registrations against the phones' last REGISTER: {:?}", report.registrations);
    assert!(report.nothing_left(), "left over (channels, extra apps) per node: {:?}", report.left_over);
    for (node, (queued, confirmed)) in report.queued_confirmed.iter().enumerate() {
        assert_eq!(queued, confirmed, "node{}: events queued but never confirmed", node + 1);
    }
}
