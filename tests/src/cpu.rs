//! CPU time (user + system) that processes have used so far, from `/proc/<pid>/stat`, for
//! benchmarks that say what a workload cost. The kernel counts in ticks of 10 ms (USER_HZ 100
//! on Linux), so a figure is only as fine as that.

use std::collections::HashMap;
use std::time::Duration;

const TICK: Duration = Duration::from_millis(10);

/// One process, all its threads (0 when it is gone).
pub fn process(pid: u32) -> Duration {
    stat(pid).map_or(Duration::ZERO, |s| s.cpu)
}

/// A process and every process below it as they are now (Kamailio's workers, the Erlang VM's
/// helpers). Descendants that exited and were reaped count in their parent's `cutime`, which
/// is included, so a short-lived child's time is not lost once waited for.
pub fn tree(root: u32) -> Duration {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        if let Some(s) = stat(pid) {
            children.entry(s.ppid).or_default().push(pid);
        }
    }
    let mut total = Duration::ZERO;
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        if let Some(s) = stat(pid) {
            total += s.cpu + s.reaped_children;
        }
        todo.extend(children.get(&pid).into_iter().flatten());
    }
    total
}

/// CPU time of this process's children that have exited and been waited for.
pub fn reaped_children() -> Duration {
    stat(std::process::id()).map_or(Duration::ZERO, |s| s.reaped_children)
}

struct Stat {
    ppid: u32,
    cpu: Duration,
    reaped_children: Duration,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (name) state ppid ..." and the name may hold spaces: split after the last ')'.
    // After it, field 4 (ppid) is index 1, utime/stime (14, 15) are 11 and 12, cutime/cstime
    // (16, 17) are 13 and 14.
    let fields: Vec<u64> = text.rsplit_once(')')?.1.split_whitespace().skip(1).take(14).map(|f| f.parse().unwrap_or(0)).collect();
    let ticks = |a: usize, b: usize| TICK * (fields.get(a).copied().unwrap_or(0) + fields.get(b).copied().unwrap_or(0)) as u32;
    Some(Stat { ppid: *fields.first()? as u32, cpu: ticks(10, 11), reaped_children: ticks(12, 13) })
}
