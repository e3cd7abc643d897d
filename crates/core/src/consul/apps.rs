//! Stasis applications from Consul: every key under the apps prefix names an application that
//! every node creates. A blocking query watches the prefix; after every answer (and so after
//! every reconnect) the whole set is reconciled against what this node has registered.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::api::{ConsulApi, KvEntry};
use super::registration::Request;
use crate::amqp::event::Seq;
use crate::backoff::Backoff;
use crate::state_log::{Severity, StateLog};

/// How long one blocking query waits for a change.
const WATCH_WAIT: Duration = Duration::from_secs(60);

/// Creates and removes Stasis applications in Asterisk. Calls may block briefly (Asterisk
/// locks), so they never run on an async worker.
pub trait StasisApps: Send + Sync + 'static {
    fn register(&self, name: &str) -> Result<(), String>;
    fn unregister(&self, name: &str);
    /// Registers `name` again when an ARI client took it over and has let it go since
    /// (res_stasis unregisters an app with its client's socket); whether it did.
    fn reclaim(&self, name: &str) -> bool;
}

/// How often the applications a client took over are looked at again.
const RECLAIM_EVERY: Duration = Duration::from_secs(2);

/// Events seen per application; the Stasis callback bumps these without taking a lock that
/// anything slow holds. Each count is also the event's place in its application's sequence.
#[derive(Debug, Default)]
pub struct EventCounters {
    by_app: RwLock<HashMap<Arc<str>, AppSequence>>,
}

#[derive(Debug)]
struct AppSequence {
    events: AtomicU64,
    /// The clock in microseconds when the application was added: a consumer that sees another
    /// start knows a new sequence began (the node restarted or the app was created again).
    start: u64,
}

impl EventCounters {
    /// Counts one event of `app`. Returns the application's shared name (events carry it
    /// without allocating) and the event's seq, or None if the app is not (or no longer) ours.
    pub fn count(&self, app: &str) -> Option<(Arc<str>, Seq)> {
        let by_app = self.by_app.read().unwrap_or_else(|e| e.into_inner());
        let (name, sequence) = by_app.get_key_value(app)?;
        let before = sequence.events.fetch_add(1, Ordering::Relaxed);
        Some((name.clone(), Seq { value: sequence.start + before, start: sequence.start }))
    }

    pub fn get(&self, app: &str) -> u64 {
        self.by_app.read().unwrap_or_else(|e| e.into_inner()).get(app).map_or(0, |c| c.events.load(Ordering::Relaxed))
    }

    fn add(&self, app: &str) {
        let start = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        self.by_app.write().unwrap_or_else(|e| e.into_inner()).entry(app.into()).or_insert(AppSequence { events: AtomicU64::new(0), start });
    }

    fn remove(&self, app: &str) {
        self.by_app.write().unwrap_or_else(|e| e.into_inner()).remove(app);
    }
}

/// The applications this node has registered in Asterisk, and the watch's health.
#[derive(Debug, Default)]
pub struct AppsTable {
    pub apps: BTreeMap<String, SystemTime>,
    pub state: String,
    pub last_error: Option<String>,
    pub index: u64,
    pub answers: u64,
    pub failures: u64,
    /// Keys under the prefix that are not valid application names (logged once each).
    pub invalid: BTreeSet<String>,
    /// Set at unload: nothing may be registered any more.
    closed: bool,
}

/// A Stasis application name we accept: what ARI clients and dialplans can use safely.
pub fn valid_app_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The application names in a KV listing; invalid ones are collected apart.
pub fn app_names(prefix: &str, entries: &[KvEntry]) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut valid = BTreeSet::new();
    let mut invalid = BTreeSet::new();
    for entry in entries {
        let Some(name) = entry.key.strip_prefix(prefix) else { continue };
        // The folder key itself (Consul UIs create one) is no application.
        if name.is_empty() {
            continue;
        }
        if valid_app_name(name) {
            valid.insert(name.to_string());
        } else {
            invalid.insert(name.to_string());
        }
    }
    (valid, invalid)
}

pub struct AppsWatcher<C, S> {
    pub api: Arc<C>,
    pub prefix: String,
    pub stasis: Arc<S>,
    pub table: Arc<Mutex<AppsTable>>,
    pub counters: Arc<EventCounters>,
    pub registration: mpsc::Sender<Request>,
}

impl<C: ConsulApi, S: StasisApps> AppsWatcher<C, S> {
    /// Follows the KV prefix until shutdown, and meanwhile takes back the applications that a
    /// client took over and left.
    pub async fn run(self, shutdown: CancellationToken) {
        let reclaim = reclaim_left_apps(self.table.clone(), self.stasis.clone(), shutdown.clone());
        tokio::join!(self.watch(shutdown), reclaim);
    }

    async fn watch(&self, shutdown: CancellationToken) {
        let mut log = StateLog::new("consul apps");
        let mut index = 0;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let answer = tokio::select! {
                _ = shutdown.cancelled() => return,
                answer = self.api.kv_list(&self.prefix, index, WATCH_WAIT) => answer,
            };
            match answer {
                Ok(listing) => {
                    backoff.reset();
                    // An index that goes backwards means a new agent or a snapshot restore.
                    index = if listing.index < index { 0 } else { listing.index };
                    let (desired, invalid) = app_names(&self.prefix, &listing.value);
                    self.note_invalid(invalid);
                    if let Some(apps) = self.reconcile(desired).await {
                        let _ = self.registration.send(Request::Apps(apps)).await;
                    }
                    let prefix = &self.prefix;
                    log.enter("watching", Severity::Info, &format!("watching '{prefix}' for Stasis applications"));
                    let mut t = self.lock();
                    t.state = "watching".into();
                    t.index = index;
                    t.answers += 1;
                }
                Err(e) => {
                    // Registered applications stay as they are while Consul is away.
                    index = 0;
                    log.enter("unreachable", Severity::Warning, &format!("cannot watch applications: {e}; keeping the {} registered, retrying", self.lock().apps.len()));
                    {
                        let mut t = self.lock();
                        t.state = "unreachable".into();
                        t.last_error = Some(e.to_string());
                        t.failures += 1;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                    }
                }
            }
        }
    }

    fn note_invalid(&self, invalid: BTreeSet<String>) {
        let mut t = self.lock();
        for name in invalid.difference(&t.invalid) {
            tracing::warn!("consul apps: skipping key '{}{name}': an application name is 1 to 128 letters, digits, '-', '_' or '.'", self.prefix);
        }
        t.invalid = invalid;
    }

    /// Brings Asterisk to `desired`; returns the new list if it changed.
    async fn reconcile(&self, desired: BTreeSet<String>) -> Option<Vec<String>> {
        let table = self.table.clone();
        let stasis = self.stasis.clone();
        let counters = self.counters.clone();
        tokio::task::spawn_blocking(move || apply(&table, stasis.as_ref(), &counters, &desired)).await.ok().flatten()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AppsTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Every [`RECLAIM_EVERY`], each of our applications that a client took over and left is
/// registered again: without this the node would lack it until its Consul key changed.
async fn reclaim_left_apps<S: StasisApps>(table: Arc<Mutex<AppsTable>>, stasis: Arc<S>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RECLAIM_EVERY) => {}
        }
        let (table, stasis) = (table.clone(), stasis.clone());
        let _ = tokio::task::spawn_blocking(move || reclaim(&table, stasis.as_ref())).await;
    }
}

/// Under the table lock, as [`apply`], so that an unload in progress never races it.
pub fn reclaim(table: &Mutex<AppsTable>, stasis: &dyn StasisApps) {
    let t = table.lock().unwrap_or_else(|e| e.into_inner());
    if t.closed {
        return;
    }
    for name in t.apps.keys() {
        if stasis.reclaim(name) {
            tracing::warn!("consul apps: Stasis application '{name}' was let go by the client that took it over; registered again for res_scale");
        }
    }
}

/// Registers what is missing and unregisters what is gone, under the table lock so that an
/// unload in progress ([`close`]) and a late reconcile never interleave.
pub fn apply(table: &Mutex<AppsTable>, stasis: &dyn StasisApps, counters: &EventCounters, desired: &BTreeSet<String>) -> Option<Vec<String>> {
    let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
    if t.closed {
        return None;
    }
    let mut changed = false;
    let gone: Vec<String> = t.apps.keys().filter(|a| !desired.contains(*a)).cloned().collect();
    for name in gone {
        stasis.unregister(&name);
        counters.remove(&name);
        t.apps.remove(&name);
        tracing::info!("consul apps: Stasis application '{name}' removed");
        changed = true;
    }
    let missing: Vec<&String> = desired.iter().filter(|a| !t.apps.contains_key(*a)).collect();
    for name in missing {
        // The counter exists first so the very first event is counted.
        counters.add(name);
        match stasis.register(name) {
            Ok(()) => {
                t.apps.insert(name.clone(), SystemTime::now());
                tracing::info!("consul apps: Stasis application '{name}' registered");
                changed = true;
            }
            Err(e) => {
                counters.remove(name);
                t.last_error = Some(format!("registering '{name}': {e}"));
                tracing::error!("consul apps: could not register Stasis application '{name}': {e}");
            }
        }
    }
    changed.then(|| t.apps.keys().cloned().collect())
}

/// Unregisters every application and refuses further registrations (module unload).
pub fn close(table: &Mutex<AppsTable>, stasis: &dyn StasisApps, counters: &EventCounters) {
    let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
    t.closed = true;
    for name in std::mem::take(&mut t.apps).into_keys() {
        stasis.unregister(&name);
        counters.remove(&name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct FakeStasis {
        calls: Mutex<Vec<String>>,
        refuse: Option<&'static str>,
    }

    impl StasisApps for FakeStasis {
        fn register(&self, name: &str) -> Result<(), String> {
            self.calls.lock().unwrap().push(format!("+{name}"));
            if self.refuse == Some(name) {
                return Err("refused".into());
            }
            Ok(())
        }
        fn unregister(&self, name: &str) {
            self.calls.lock().unwrap().push(format!("-{name}"));
        }
        fn reclaim(&self, name: &str) -> bool {
            self.calls.lock().unwrap().push(format!("?{name}"));
            false
        }
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_app_is_looked_at_for_reclaiming_until_unload() {
        let stasis = FakeStasis::default();
        let table = Mutex::new(AppsTable::default());
        let counters = EventCounters::default();
        apply(&table, &stasis, &counters, &set(&["a", "b"]));
        stasis.calls.lock().unwrap().clear();
        reclaim(&table, &stasis);
        assert_eq!(*stasis.calls.lock().unwrap(), ["?a", "?b"]);
        close(&table, &stasis, &counters);
        stasis.calls.lock().unwrap().clear();
        reclaim(&table, &stasis);
        assert!(stasis.calls.lock().unwrap().is_empty(), "nothing is taken back after unload");
    }

    #[test]
    fn names_come_from_keys_and_bad_ones_are_set_apart() {
        let kv = |k: &str| KvEntry { key: k.into(), value: b"{}".to_vec(), modify_index: 1 };
        let (valid, invalid) = app_names("res_scale/apps/", &[kv("res_scale/apps/"), kv("res_scale/apps/conf"), kv("res_scale/apps/bad name"), kv("res_scale/apps/a/b"), kv("other/x")]);
        assert_eq!(valid, set(&["conf"]));
        assert_eq!(invalid, set(&["bad name", "a/b"]));
    }

    #[test]
    fn reconcile_adds_removes_and_reports_changes_only() {
        let table = Mutex::new(AppsTable::default());
        let stasis = FakeStasis::default();
        let counters = EventCounters::default();
        assert_eq!(apply(&table, &stasis, &counters, &set(&["a", "b"])), Some(vec!["a".into(), "b".into()]));
        assert_eq!(apply(&table, &stasis, &counters, &set(&["a", "b"])), None);
        assert_eq!(apply(&table, &stasis, &counters, &set(&["b", "c"])), Some(vec!["b".into(), "c".into()]));
        assert_eq!(*stasis.calls.lock().unwrap(), ["+a", "+b", "-a", "+c"]);
        assert_eq!((counters.count("b").map(|(name, _)| name).as_deref(), counters.count("a")), (Some("b"), None));
        assert_eq!(counters.get("b"), 1);
    }

    #[test]
    fn seq_rises_by_one_per_event_from_the_clock_and_a_recreated_app_starts_anew() {
        let table = Mutex::new(AppsTable::default());
        let stasis = FakeStasis::default();
        let counters = EventCounters::default();
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_micros() as u64;
        apply(&table, &stasis, &counters, &set(&["a", "b"]));
        let seqs: Vec<Seq> = (0..3).map(|_| counters.count("a").unwrap().1).collect();
        let start = seqs[0].start;
        assert!(start >= now, "the sequence starts from the clock in microseconds");
        assert_eq!(seqs, [0, 1, 2].map(|n| Seq { value: start + n, start }));
        let b = [counters.count("b").unwrap().1, counters.count("b").unwrap().1];
        assert_eq!((b[0].value, b[1].value), (b[0].start, b[0].start + 1), "each app counts on its own");

        apply(&table, &stasis, &counters, &set(&["b"]));
        std::thread::sleep(Duration::from_millis(2));
        apply(&table, &stasis, &counters, &set(&["a", "b"]));
        let again = counters.count("a").unwrap().1;
        assert!(again.start > start, "a new sequence announces itself by its start");
        assert_eq!(again.value, again.start);
    }

    #[test]
    fn a_refused_app_is_retried_on_the_next_answer() {
        let table = Mutex::new(AppsTable::default());
        let stasis = FakeStasis { refuse: Some("x"), ..Default::default() };
        let counters = EventCounters::default();
        assert_eq!(apply(&table, &stasis, &counters, &set(&["x"])), None);
        assert!(table.lock().unwrap().last_error.as_deref().unwrap().contains("refused"));
        apply(&table, &stasis, &counters, &set(&["x"]));
        assert_eq!(*stasis.calls.lock().unwrap(), ["+x", "+x"]);
    }

    #[test]
    fn close_unregisters_everything_and_blocks_late_reconciles() {
        let table = Mutex::new(AppsTable::default());
        let stasis = FakeStasis::default();
        let counters = EventCounters::default();
        apply(&table, &stasis, &counters, &set(&["a"]));
        close(&table, &stasis, &counters);
        assert_eq!(apply(&table, &stasis, &counters, &set(&["a", "b"])), None);
        assert_eq!(*stasis.calls.lock().unwrap(), ["+a", "-a"]);
        assert!(table.lock().unwrap().apps.is_empty());
    }
}
