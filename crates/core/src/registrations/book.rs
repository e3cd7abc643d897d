//! What a node knows about registrations, and the rules that apply a message to PJSIP:
//!
//! - a node never applies its own messages;
//! - per (origin, AOR), only a message newer than the last applied counts ([`SeqTracker`]);
//! - a contact belongs to the origin that announced it last: only that origin's WITHDRAW removes
//!   it, and REPLACE removes only that origin's contacts of the AOR;
//! - a contact that a phone registered on this node is never touched by messages from others,
//!   including one this node applied and its registrar then refreshed for a REGISTER with the
//!   same URI (the phone moved here): from then on it is this node's;
//! - bad input is refused with a reason, counted, logged (rate-limited), and the next message
//!   still applies.
//!
//! [`Book`] holds the contacts applied from others; [`LocalBook`] the ones phones registered
//! here, with the seq under which each was published.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use super::message::{self, Contact, Kind, Message, Rejection, Update};
use super::seq::SeqTracker;
use crate::amqp::signing::{self, Signature};
use crate::rate_log::RateLimitedLog;

/// PJSIP's contacts, as the book changes them. The module's implementation calls the location
/// API of res_pjsip.
///
/// `applied` is what the book last wrote to the contact. Where the stored contact is no longer
/// that (see [`same_registration`]), or carries an endpoint, this node's registrar made or
/// refreshed it for a phone: nothing is written and the answer is [`Refusal::RegisteredHere`].
pub trait Location {
    /// Creates the contact in the AOR, or refreshes it (expiry, path, user agent, via, call id).
    fn upsert(&mut self, aor: &str, contact: &Contact, applied: Option<&Contact>) -> Result<(), Refusal>;
    /// Deletes the contact from the AOR; an absent contact is not an error.
    fn remove(&mut self, aor: &str, applied: &Contact) -> Result<(), Refusal>;
    /// Whether the contact is still the one the book applied (Ok also when it is gone).
    fn check(&mut self, aor: &str, applied: &Contact) -> Result<(), Refusal>;
    /// Waits, if need be, until the store can take another change without falling behind;
    /// called before each update, while the book is not locked.
    fn pace(&mut self) {}
}

/// Whether a stored contact is still the registration the book wrote. A registrar refresh
/// always sets a new expiry (now + Expires) and the phone's user agent; it never touches the
/// via or call id, so those tell nothing.
pub fn same_registration(stored: &Contact, applied: &Contact) -> bool {
    stored.expires == applied.expires && stored.user_agent == applied.user_agent
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The AOR is not configured on this node.
    UnknownAor,
    /// Asterisk refused the contact (res_pjsip logged why, e.g. an unusable URI).
    Refused,
    /// A phone registered the contact on this node (the registrar made or refreshed it).
    RegisteredHere,
}

/// The reasons a message (or one contact of a batch) is rejected, each with its counter.
pub const REASONS: [&str; 10] = ["too_large", "bad_json", "unknown_type", "missing_field", "bad_field", "unknown_aor", "refused", "expired", "unsigned", "bad_signature"];

#[derive(Debug, Default)]
pub struct Counters {
    /// Contacts created or refreshed in PJSIP.
    pub applied: AtomicU64,
    /// Contacts removed from PJSIP by WITHDRAW, REPLACE or node loss.
    pub removed: AtomicU64,
    /// Our own messages coming back from the exchange.
    pub ignored_own: AtomicU64,
    /// Duplicates, out-of-order messages, withdrawals by an origin that no longer owns the
    /// contact, and announcements for contacts a phone registered on this node.
    pub ignored_stale: AtomicU64,
    pub rejected: [AtomicU64; REASONS.len()],
    /// Messages this node published (its phones' registrations, SYNC requests and replies).
    pub published: AtomicU64,
    /// Messages that could not be queued for publishing (queue full).
    pub publish_dropped: AtomicU64,
    pub sync_requests_answered: AtomicU64,
    /// Contacts withdrawn because the node that announced them left the pool.
    pub node_loss_removed: AtomicU64,
    /// Applied contacts that this node's registrar refreshed for a phone (same AOR and URI):
    /// they became this node's.
    pub taken_over: AtomicU64,
}

impl Counters {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn reject(&self, reason: &str) {
        if let Some(i) = REASONS.iter().position(|r| *r == reason) {
            Self::count(&self.rejected[i]);
        }
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(Self::get).sum()
    }

    /// `reason=count` for every reason seen, e.g. `bad_json=2 unknown_aor=1`, or `-`.
    pub fn rejected_by_reason(&self) -> String {
        let seen: Vec<String> = REASONS.iter().zip(&self.rejected).filter(|(_, c)| Self::get(c) > 0).map(|(r, c)| format!("{r}={}", Self::get(c))).collect();
        if seen.is_empty() {
            "-".into()
        } else {
            seen.join(" ")
        }
    }
}

/// One contact and who it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub origin: String,
    pub seq: u64,
    pub contact: Contact,
}

impl Entry {
    pub fn expires(&self) -> u64 {
        self.contact.expires.unwrap_or(0)
    }

    fn update(&self, aor: &str) -> Update {
        Update { kind: Kind::Announce, aor: aor.to_string(), contact: self.contact.clone(), origin: self.origin.clone(), seq: self.seq }
    }
}

/// (AOR, contact URI).
pub type Key = (String, String);

/// What a message asks of the caller besides what the book did itself.
#[derive(Debug, PartialEq, Eq)]
pub enum Handled {
    Done,
    /// Another node asks for everything we know.
    SyncRequest {
        origin: String,
    },
}

/// The contacts applied from other origins; owned by the thread that applies messages.
#[derive(Debug)]
pub struct Book {
    origin: String,
    remote: BTreeMap<Key, Entry>,
    seq: SeqTracker,
    log: RateLimitedLog,
    /// `[registrations] unsigned_origins`.
    unsigned_origins: Vec<String>,
}

impl Book {
    /// `origin` is this node's own (its EID).
    pub fn new(origin: &str) -> Book {
        Book { origin: origin.to_string(), remote: BTreeMap::new(), seq: SeqTracker::default(), log: RateLimitedLog::new("registrations"), unsigned_origins: Vec::new() }
    }

    /// With a pool key, these origins' single messages are applied unsigned too (see
    /// [`signing::admits_unsigned`]).
    pub fn with_unsigned_origins(mut self, origins: Vec<String>) -> Book {
        self.unsigned_origins = origins;
        self
    }

    /// Whether a message whose signature the bus found to be `signature` may be handled;
    /// if not, it is counted and logged (rate-limited). An unsigned ANNOUNCE, WITHDRAW or
    /// REPLACE passes when its origin is one of `unsigned_origins`: batches and SYNC requests
    /// come from nodes, which sign, and a batch speaks for many origins.
    pub fn admits(&mut self, body: &[u8], signature: Signature, counters: &Counters) -> bool {
        let Some((reason, why)) = signature.refusal() else { return true };
        if signature == Signature::Missing && !self.unsigned_origins.is_empty() {
            if let Ok(Message::Single(update)) = message::decode(body) {
                if signing::admits_unsigned(&self.unsigned_origins, &update.origin) {
                    return true;
                }
            }
        }
        counters.reject(reason);
        // The origin it claims, for the operator (decoded only when a line is due).
        let from = || match message::decode(body) {
            Ok(Message::Single(Update { origin, .. }) | Message::Batch { origin, .. } | Message::SyncRequest { origin }) => format!(" claiming origin {origin}"),
            Err(_) => String::new(),
        };
        self.log.warn(reason, || format!("message{} refused ({reason}): {why}", from()));
        false
    }

    pub fn entries(&self) -> &BTreeMap<Key, Entry> {
        &self.remote
    }

    /// Decodes and applies one message body. `local` tells whether a phone registered the
    /// contact on this node.
    pub fn handle(&mut self, body: &[u8], loc: &mut impl Location, local: &dyn Fn(&Key) -> bool, counters: &Counters, now: u64) -> Handled {
        handle_in(self, body, loc, local, counters, now)
    }

    /// As [`Book::handle`], for a book behind a lock that is taken for each update of a batch,
    /// not for the whole message: readers (the CLI) never wait behind a batch of Asterisk calls.
    pub fn handle_shared(book: &Mutex<Book>, body: &[u8], loc: &mut impl Location, local: &dyn Fn(&Key) -> bool, counters: &Counters, now: u64) -> Handled {
        handle_in(book, body, loc, local, counters, now)
    }

    fn reject(&mut self, counters: &Counters, rejection: &Rejection, context: &str) {
        counters.reject(rejection.reason());
        let reason = rejection.reason();
        self.log.warn(reason, || format!("message refused ({reason}){context}: {rejection}"));
    }

    fn refuse(&mut self, counters: &Counters, reason: &'static str, update: &Update, why: &str) {
        counters.reject(reason);
        self.log.warn(reason, || format!("{} of {} for AOR '{}' from {} not applied ({reason}): {why}", kind_name(update.kind), update.contact.uri, update.aor, update.origin));
    }

    /// Applies one update from the exchange.
    pub fn apply(&mut self, update: Update, loc: &mut impl Location, local: &dyn Fn(&Key) -> bool, counters: &Counters, now: u64) {
        if update.origin == self.origin {
            Counters::count(&counters.ignored_own);
            return;
        }
        let key = (update.aor.clone(), update.contact.uri.clone());
        if local(&key) {
            Counters::count(&counters.ignored_stale);
            return;
        }
        if !self.seq.accept(&update.origin, &update.aor, update.seq) {
            Counters::count(&counters.ignored_stale);
            return;
        }
        match update.kind {
            Kind::Withdraw => match self.remote.get(&key) {
                Some(entry) if entry.origin == update.origin => self.remove(&key, loc, counters),
                _ => Counters::count(&counters.ignored_stale),
            },
            Kind::Replace => {
                let owned: Vec<Key> = self.remote.iter().filter(|((aor, _), e)| *aor == update.aor && e.origin == update.origin).map(|(k, _)| k.clone()).collect();
                for k in owned.iter().filter(|k| **k != key) {
                    self.remove(k, loc, counters);
                }
                self.announce(key, update, loc, counters, now);
            }
            Kind::Announce => self.announce(key, update, loc, counters, now),
        }
    }

    fn announce(&mut self, key: Key, update: Update, loc: &mut impl Location, counters: &Counters, now: u64) {
        let expires = update.contact.expires.unwrap_or(0);
        if expires <= now {
            self.refuse(counters, "expired", &update, &format!("it expired {} s ago", now - expires));
            if self.remote.get(&key).is_some_and(|e| e.origin == update.origin) {
                self.remove(&key, loc, counters);
            }
            return;
        }
        match loc.upsert(&update.aor, &update.contact, self.remote.get(&key).map(|e| &e.contact)) {
            Ok(()) => {
                Counters::count(&counters.applied);
                self.remote.insert(key, Entry { origin: update.origin, seq: update.seq, contact: update.contact });
            }
            Err(Refusal::RegisteredHere) => self.taken_over(&key, counters),
            Err(Refusal::UnknownAor) => self.refuse(counters, "unknown_aor", &update, "no such AOR on this node"),
            Err(Refusal::Refused) => self.refuse(counters, "refused", &update, "res_pjsip refused the contact"),
        }
    }

    fn remove(&mut self, key: &Key, loc: &mut impl Location, counters: &Counters) {
        if let Some(entry) = self.remote.remove(key) {
            match loc.remove(&key.0, &entry.contact) {
                Err(Refusal::RegisteredHere) => Counters::count(&counters.taken_over),
                // Any other failure means the contact is already gone (expired, deleted by hand).
                _ => Counters::count(&counters.removed),
            }
        }
    }

    /// The registrar refreshed an applied contact for a phone: it is no longer ours to change.
    fn taken_over(&mut self, key: &Key, counters: &Counters) {
        if self.remote.remove(key).is_some() {
            Counters::count(&counters.taken_over);
        }
    }

    /// A contact without endpoint changed in PJSIP (`seen`, as the observer reported it): if it
    /// is one the book applied and no longer what the book wrote, the stored contact is checked
    /// and, when the registrar refreshed it, given up to this node.
    pub fn refreshed(&mut self, key: &Key, seen: &Contact, loc: &mut impl Location, counters: &Counters) {
        let Some(entry) = self.remote.get(key) else { return };
        // Our own write, or one so alike that a refresh could not be told from it.
        if same_registration(seen, &entry.contact) {
            return;
        }
        // `seen` may be an older write of ours reported late: only the stored contact counts.
        if loc.check(&key.0, &entry.contact) == Err(Refusal::RegisteredHere) {
            self.taken_over(key, counters);
        }
    }

    /// Removes every contact announced by `origin` (a node that left the pool) and forgets its
    /// sequence numbers; returns how many contacts went.
    pub fn withdraw_origin(&mut self, origin: &str, loc: &mut impl Location, counters: &Counters) -> usize {
        withdraw_origin_in(self, origin, loc, counters)
    }

    /// As [`Book::withdraw_origin`], for a book behind a lock that is taken for each contact
    /// (a lost node may have announced thousands).
    pub fn withdraw_origin_shared(book: &Mutex<Book>, origin: &str, loc: &mut impl Location, counters: &Counters) -> usize {
        withdraw_origin_in(book, origin, loc, counters)
    }

    /// Forgets contacts whose expiry has passed (PJSIP deletes them itself).
    pub fn sweep(&mut self, now: u64) {
        self.remote.retain(|_, e| e.expires() > now);
    }

    /// Removes every contact this book applied (at unload: nothing would keep them right),
    /// until `deadline`; the book forgets the rest (they expire in PJSIP by themselves).
    /// Returns how many were removed and how many left.
    pub fn clear(&mut self, loc: &mut impl Location, deadline: Instant) -> (usize, usize) {
        let all = std::mem::take(&mut self.remote);
        let count = all.len();
        let mut removed = 0;
        for ((aor, _), entry) in all {
            if Instant::now() >= deadline {
                break;
            }
            let _ = loc.remove(&aor, &entry.contact);
            removed += 1;
        }
        (removed, count - removed)
    }

    /// Everything still valid, as announcements keeping their origin and seq (a SYNC reply).
    pub fn known(&self, now: u64) -> Vec<Update> {
        announcements(&self.remote, now)
    }
}

/// The entries still valid at `now` as announcements keeping their origin and seq, in seq
/// order: a receiver applies only a seq newer than the last of the same origin and AOR, so in
/// the map's (URI) order the older of two contacts of one AOR would be refused.
fn announcements(entries: &BTreeMap<Key, Entry>, now: u64) -> Vec<Update> {
    let mut updates: Vec<Update> = entries.iter().filter(|(_, e)| e.expires() > now).map(|((aor, _), e)| e.update(aor)).collect();
    updates.sort_by_key(|u| u.seq);
    updates
}

/// A book reached directly, or through its lock (taken for each call).
trait Access {
    fn with<R>(&mut self, f: impl FnOnce(&mut Book) -> R) -> R;
}

impl Access for &mut Book {
    fn with<R>(&mut self, f: impl FnOnce(&mut Book) -> R) -> R {
        f(self)
    }
}

impl Access for &Mutex<Book> {
    fn with<R>(&mut self, f: impl FnOnce(&mut Book) -> R) -> R {
        f(&mut self.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

fn handle_in(mut book: impl Access, body: &[u8], loc: &mut impl Location, local: &dyn Fn(&Key) -> bool, counters: &Counters, now: u64) -> Handled {
    let message = match message::decode(body) {
        Ok(message) => message,
        Err(rejection) => {
            book.with(|b| b.reject(counters, &rejection, ""));
            return Handled::Done;
        }
    };
    match message {
        Message::Single(update) => {
            loc.pace();
            book.with(|b| b.apply(update, loc, local, counters, now));
        }
        Message::Batch { updates, .. } => {
            for update in updates {
                loc.pace();
                book.with(|b| b.apply(update, loc, local, counters, now));
            }
        }
        Message::SyncRequest { origin } if book.with(|b| b.origin == origin) => Counters::count(&counters.ignored_own),
        Message::SyncRequest { origin } => return Handled::SyncRequest { origin },
    }
    Handled::Done
}

fn withdraw_origin_in(mut book: impl Access, origin: &str, loc: &mut impl Location, counters: &Counters) -> usize {
    let owned: Vec<Key> = book.with(|b| b.remote.iter().filter(|(_, e)| e.origin == origin).map(|(k, _)| k.clone()).collect());
    for key in &owned {
        loc.pace();
        book.with(|b| b.remove(key, loc, counters));
        Counters::count(&counters.node_loss_removed);
    }
    book.with(|b| b.seq.forget_origin(origin));
    owned.len()
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Announce => "ANNOUNCE",
        Kind::Withdraw => "WITHDRAW",
        Kind::Replace => "REPLACE",
    }
}

/// A change of a contact that a phone registered on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalChange {
    /// Created or refreshed.
    Registered,
    Unregistered,
    /// Listed by the snapshot taken at start (see [`LocalBook::snapshot_begins`]).
    Found,
}

/// The contacts phones registered on this node, and the seq each was last published with.
#[derive(Debug)]
pub struct LocalBook {
    origin: String,
    next_seq: u64,
    entries: BTreeMap<Key, Entry>,
    /// While the start snapshot runs: the contacts the observer reported meanwhile.
    touched: Option<BTreeSet<Key>>,
}

impl LocalBook {
    /// `first_seq` must exceed every seq this node used before (the module starts from the
    /// clock in microseconds, so a restarted node is not mistaken for a replay).
    pub fn new(origin: &str, first_seq: u64) -> LocalBook {
        LocalBook { origin: origin.to_string(), next_seq: first_seq, entries: BTreeMap::new(), touched: None }
    }

    /// The start snapshot (every contact there is, reported as `Found`) runs while the
    /// observer already reports changes, in either order: what the observer reported since
    /// this call is newer than the snapshot, whose report of the same contact is then dropped.
    /// Otherwise a phone that unregistered meanwhile would come back as a ghost.
    pub fn snapshot_begins(&mut self) {
        self.touched = Some(BTreeSet::new());
    }

    pub fn snapshot_ends(&mut self) {
        self.touched = None;
    }

    pub fn contains(&self, key: &Key) -> bool {
        self.entries.contains_key(key)
    }

    pub fn entries(&self) -> &BTreeMap<Key, Entry> {
        &self.entries
    }

    /// Records the change and returns the message that tells the pool, if any.
    pub fn changed(&mut self, change: LocalChange, aor: &str, contact: Contact) -> Option<Update> {
        let key = (aor.to_string(), contact.uri.clone());
        match (change, &mut self.touched) {
            (LocalChange::Found, Some(touched)) if touched.contains(&key) => return None,
            (LocalChange::Found, _) => {}
            (_, Some(touched)) => {
                touched.insert(key.clone());
            }
            (_, None) => {}
        }
        let kind = match change {
            LocalChange::Registered | LocalChange::Found => Kind::Announce,
            LocalChange::Unregistered => {
                self.entries.remove(&key)?;
                Kind::Withdraw
            }
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let update = Update { kind, aor: aor.to_string(), contact, origin: self.origin.clone(), seq };
        if kind == Kind::Announce {
            self.entries.insert(key, Entry { origin: self.origin.clone(), seq, contact: update.contact.clone() });
        }
        Some(update)
    }

    /// Forgets contacts whose expiry has passed without a deletion being reported.
    pub fn sweep(&mut self, now: u64) {
        self.entries.retain(|_, e| e.expires() > now);
    }

    pub fn known(&self, now: u64) -> Vec<Update> {
        announcements(&self.entries, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// PJSIP as a map, with the AORs it knows.
    #[derive(Default)]
    struct FakeLocation {
        aors: Vec<&'static str>,
        contacts: BTreeMap<Key, Contact>,
        /// Calls of `pace`, each checked to come while `book` (if set) is not locked.
        paced: usize,
        book: Option<std::sync::Arc<Mutex<Book>>>,
    }

    impl FakeLocation {
        /// Err(RegisteredHere) when the stored contact is not what the book applied.
        fn owned(&self, aor: &str, uri: &str, applied: Option<&Contact>) -> Result<(), Refusal> {
            match (self.contacts.get(&(aor.to_string(), uri.to_string())), applied) {
                (Some(stored), Some(applied)) if !same_registration(stored, applied) => Err(Refusal::RegisteredHere),
                _ => Ok(()),
            }
        }

        /// This node's registrar refreshes the contact for a REGISTER.
        fn register(&mut self, aor: &str, uri: &str, expires: u64) {
            let contact = Contact { uri: uri.into(), expires: Some(expires), user_agent: "phone".into(), ..Default::default() };
            self.contacts.insert((aor.into(), uri.into()), contact);
        }
    }

    impl Location for FakeLocation {
        fn upsert(&mut self, aor: &str, contact: &Contact, applied: Option<&Contact>) -> Result<(), Refusal> {
            if !self.aors.contains(&aor) {
                return Err(Refusal::UnknownAor);
            }
            self.owned(aor, &contact.uri, applied)?;
            self.contacts.insert((aor.into(), contact.uri.clone()), contact.clone());
            Ok(())
        }
        fn remove(&mut self, aor: &str, applied: &Contact) -> Result<(), Refusal> {
            self.owned(aor, &applied.uri, Some(applied))?;
            self.contacts.remove(&(aor.to_string(), applied.uri.clone()));
            Ok(())
        }
        fn check(&mut self, aor: &str, applied: &Contact) -> Result<(), Refusal> {
            self.owned(aor, &applied.uri, Some(applied))
        }
        fn pace(&mut self) {
            assert!(self.book.as_ref().is_none_or(|b| b.try_lock().is_ok()), "paced with the book locked: the CLI would wait");
            self.paced += 1;
        }
    }

    const NOW: u64 = 1_800_000_000;

    fn announce(kind: &str, aor: &str, uri: &str, origin: &str, seq: u64) -> Vec<u8> {
        format!(r#"{{"type":"{kind}","aor":"{aor}","contact":{{"uri":"{uri}","expires":{}}},"origin":"{origin}","seq":{seq}}}"#, NOW + 60).into_bytes()
    }

    fn setup() -> (Book, FakeLocation, Counters) {
        (Book::new("me"), FakeLocation { aors: vec!["alice", "bob"], ..Default::default() }, Counters::default())
    }

    fn no_local(_: &Key) -> bool {
        false
    }

    #[test]
    fn every_change_is_paced_before_the_book_is_locked() {
        let (book, mut loc, c) = setup();
        let book = std::sync::Arc::new(Mutex::new(book));
        loc.book = Some(book.clone());
        Book::handle_shared(&book, &announce("ANNOUNCE", "alice", "sip:a@h", "n1", 1), &mut loc, &no_local, &c, NOW);
        assert_eq!(loc.paced, 1);
        let batch = format!(
            r#"{{"type":"ANNOUNCE","origin":"n1","contacts":[{{"aor":"bob","contact":{{"uri":"sip:b@h","expires":{e}}},"origin":"n1","seq":2}},{{"aor":"alice","contact":{{"uri":"sip:c@h","expires":{e}}},"origin":"n1","seq":3}}]}}"#,
            e = NOW + 60
        );
        Book::handle_shared(&book, batch.as_bytes(), &mut loc, &no_local, &c, NOW);
        assert_eq!((loc.paced, loc.contacts.len()), (3, 3));
        assert_eq!(Book::withdraw_origin_shared(&book, "n1", &mut loc, &c), 3);
        assert_eq!((loc.paced, loc.contacts.len()), (6, 0));
    }

    #[test]
    fn announce_withdraw_and_ownership() {
        let (mut book, mut loc, c) = setup();
        book.handle(&announce("ANNOUNCE", "alice", "sip:a@h1", "n1", 1), &mut loc, &no_local, &c, NOW);
        assert_eq!(loc.contacts.len(), 1);
        // The phone moved to n2: n2 owns the contact now; n1's late WITHDRAW changes nothing.
        book.handle(&announce("ANNOUNCE", "alice", "sip:a@h1", "n2", 1), &mut loc, &no_local, &c, NOW);
        book.handle(&announce("WITHDRAW", "alice", "sip:a@h1", "n1", 2), &mut loc, &no_local, &c, NOW);
        assert_eq!(loc.contacts.len(), 1);
        assert_eq!(book.entries()[&("alice".into(), "sip:a@h1".into())].origin, "n2");
        book.handle(&announce("WITHDRAW", "alice", "sip:a@h1", "n2", 2), &mut loc, &no_local, &c, NOW);
        assert!(loc.contacts.is_empty());
        assert_eq!((Counters::get(&c.applied), Counters::get(&c.removed), Counters::get(&c.ignored_stale)), (2, 1, 1));
    }

    #[test]
    fn duplicates_old_messages_and_own_messages_change_nothing() {
        let (mut book, mut loc, c) = setup();
        book.handle(&announce("ANNOUNCE", "alice", "sip:a@h1", "n1", 5), &mut loc, &no_local, &c, NOW);
        book.handle(&announce("WITHDRAW", "alice", "sip:a@h1", "n1", 4), &mut loc, &no_local, &c, NOW);
        book.handle(&announce("ANNOUNCE", "alice", "sip:a@h1", "n1", 5), &mut loc, &no_local, &c, NOW);
        book.handle(&announce("ANNOUNCE", "bob", "sip:b@h1", "me", 9), &mut loc, &no_local, &c, NOW);
        assert_eq!(loc.contacts.len(), 1);
        assert_eq!((Counters::get(&c.applied), Counters::get(&c.ignored_stale), Counters::get(&c.ignored_own)), (1, 2, 1));
    }

    #[test]
    fn replace_swaps_only_that_origins_contacts() {
        let (mut book, mut loc, c) = setup();
        book.handle(&announce("ANNOUNCE", "alice", "sip:a@h1", "n1", 1), &mut loc, &no_local, &c, NOW);
        book.handle(&announce("ANNOUNCE", "alice", "sip:a@h2", "n1", 2), &mut loc, &no_local, &c, NOW);
        book.handle(&announce("ANNOUNCE", "alice", "sip:a@h3", "n2", 1), &mut loc, &no_local, &c, NOW);
        book.handle(&announce("REPLACE", "alice", "sip:a@h4", "n1", 3), &mut loc, &no_local, &c, NOW);
        let uris: Vec<&str> = loc.contacts.keys().map(|(_, u)| u.as_str()).collect();
        assert_eq!(uris, ["sip:a@h3", "sip:a@h4"]);
    }

    #[test]
    fn bad_input_is_counted_by_reason_and_the_next_message_applies() {
        let (mut book, mut loc, c) = setup();
        book.handle(b"{nope", &mut loc, &no_local, &c, NOW);
        book.handle(&vec![b' '; message::MAX_MESSAGE_BYTES + 1], &mut loc, &no_local, &c, NOW);
        book.handle(&announce("ANNOUNCE", "nobody", "sip:x@h", "n1", 1), &mut loc, &no_local, &c, NOW);
        let expired = format!(r#"{{"type":"ANNOUNCE","aor":"alice","contact":{{"uri":"sip:a@h","expires":{}}},"origin":"n1","seq":2}}"#, NOW - 5);
        book.handle(expired.as_bytes(), &mut loc, &no_local, &c, NOW);
        book.handle(&announce("ANNOUNCE", "alice", "sip:a@h1", "n1", 3), &mut loc, &no_local, &c, NOW);
        assert_eq!(c.rejected_by_reason(), "too_large=1 bad_json=1 unknown_aor=1 expired=1");
        assert_eq!(loc.contacts.len(), 1);
    }

    #[test]
    fn contacts_registered_here_are_never_touched_by_others() {
        let (mut book, mut loc, c) = setup();
        let local = |k: &Key| k.1 == "sip:a@h1";
        book.handle(&announce("ANNOUNCE", "alice", "sip:a@h1", "n1", 1), &mut loc, &local, &c, NOW);
        assert!(loc.contacts.is_empty());
    }

    #[test]
    fn a_contact_the_registrar_refreshed_is_never_changed_or_removed_by_its_origin() {
        let (mut book, mut loc, c) = setup();
        let key: Key = ("alice".into(), "sip:a@h1".into());
        book.handle(&announce("ANNOUNCE", "alice", "sip:a@h1", "n1", 1), &mut loc, &no_local, &c, NOW);
        book.handle(&announce("ANNOUNCE", "alice", "sip:a@h2", "n1", 2), &mut loc, &no_local, &c, NOW);
        // The phone registers here with the URI n1 announced.
        loc.register("alice", "sip:a@h1", NOW + 3600);
        let seen = loc.contacts[&key].clone();
        book.refreshed(&key, &seen, &mut loc, &c);
        assert!(!book.entries().contains_key(&key), "the book still claims the contact");
        // The module records it in the LocalBook meanwhile.
        let here = |k: &Key| *k == key;
        book.handle(&announce("ANNOUNCE", "alice", "sip:a@h1", "n1", 3), &mut loc, &here, &c, NOW);
        book.handle(&announce("WITHDRAW", "alice", "sip:a@h1", "n1", 4), &mut loc, &here, &c, NOW);
        assert_eq!(loc.contacts[&key], seen, "n1 changed or removed the phone's registration");
        // Found only when n1 acts (no observer report): a withdrawal leaves it too.
        loc.register("alice", "sip:a@h2", NOW + 3600);
        book.handle(&announce("WITHDRAW", "alice", "sip:a@h2", "n1", 5), &mut loc, &here, &c, NOW);
        assert!(loc.contacts.contains_key(&("alice".into(), "sip:a@h2".into())));
        assert_eq!(Counters::get(&c.taken_over), 2);
        // An older write of ours reported late is not a refresh.
        book.handle(&announce("ANNOUNCE", "alice", "sip:a@h3", "n1", 6), &mut loc, &no_local, &c, NOW);
        let stale = Contact { uri: "sip:a@h3".into(), expires: Some(NOW + 1), ..Default::default() };
        book.refreshed(&("alice".into(), "sip:a@h3".into()), &stale, &mut loc, &c);
        assert_eq!(book.entries().len(), 1);
    }

    #[test]
    fn batches_apply_each_item_with_its_origin_and_sync_requests_are_reported() {
        let (mut book, mut loc, c) = setup();
        let batch = format!(
            r#"{{"type":"ANNOUNCE","origin":"n9","contacts":[{{"aor":"alice","contact":{{"uri":"sip:a@h1","expires":{e}}},"origin":"kam","seq":7}},{{"aor":"bob","contact":{{"uri":"sip:b@h1","expires":{e}}},"origin":"me","seq":1}}]}}"#,
            e = NOW + 30
        );
        book.handle(batch.as_bytes(), &mut loc, &no_local, &c, NOW);
        assert_eq!(loc.contacts.len(), 1, "our own contact in someone's reply is not applied");
        assert_eq!(book.known(NOW)[0].origin, "kam");
        assert!(book.known(NOW + 31).is_empty());
        assert_eq!(book.handle(br#"{"type":"SYNC_REQUEST","origin":"n5"}"#, &mut loc, &no_local, &c, NOW), Handled::SyncRequest { origin: "n5".into() });
        assert_eq!(book.handle(br#"{"type":"SYNC_REQUEST","origin":"me"}"#, &mut loc, &no_local, &c, NOW), Handled::Done);
    }

    #[test]
    fn node_loss_removes_that_nodes_contacts_and_forgets_its_counter() {
        let (mut book, mut loc, c) = setup();
        book.handle(&announce("ANNOUNCE", "alice", "sip:a@h1", "n1", 10), &mut loc, &no_local, &c, NOW);
        book.handle(&announce("ANNOUNCE", "bob", "sip:b@h1", "n2", 1), &mut loc, &no_local, &c, NOW);
        assert_eq!(book.withdraw_origin("n1", &mut loc, &c), 1);
        assert_eq!(loc.contacts.len(), 1);
        book.handle(&announce("ANNOUNCE", "alice", "sip:a@h1", "n1", 1), &mut loc, &no_local, &c, NOW);
        assert_eq!(loc.contacts.len(), 2, "a node that comes back starts a new count");
        assert_eq!(book.clear(&mut loc, Instant::now() + Duration::from_secs(60)), (2, 0));
        assert!(loc.contacts.is_empty());
    }

    #[test]
    fn the_start_snapshot_never_revives_a_contact_the_observer_reported_meanwhile() {
        let mut local = LocalBook::new("me", 1);
        let gone = Contact { uri: "sip:a@h1".into(), expires: Some(NOW + 60), ..Default::default() };
        let kept = Contact { uri: "sip:a@h2".into(), expires: Some(NOW + 60), ..Default::default() };
        local.snapshot_begins();
        // The phone unregisters after the snapshot read it; its deletion is reported first.
        assert_eq!(local.changed(LocalChange::Unregistered, "alice", gone.clone()), None);
        assert_eq!(local.changed(LocalChange::Found, "alice", gone.clone()), None, "the snapshot revived a deleted contact");
        assert!(!local.contains(&("alice".into(), gone.uri.clone())));
        assert_eq!(local.changed(LocalChange::Found, "alice", kept).map(|u| u.kind), Some(Kind::Announce));
        local.snapshot_ends();
        assert_eq!(local.changed(LocalChange::Found, "alice", gone).map(|u| u.kind), Some(Kind::Announce));
    }

    #[test]
    fn local_book_numbers_its_messages_and_withdraws_only_what_it_announced() {
        let mut local = LocalBook::new("me", 100);
        let contact = Contact { uri: "sip:a@h1".into(), expires: Some(NOW + 60), ..Default::default() };
        let a = local.changed(LocalChange::Registered, "alice", contact.clone()).unwrap();
        assert_eq!((a.kind, a.seq, a.origin.as_str()), (Kind::Announce, 100, "me"));
        assert!(local.contains(&("alice".into(), "sip:a@h1".into())));
        let w = local.changed(LocalChange::Unregistered, "alice", contact.clone()).unwrap();
        assert_eq!((w.kind, w.seq), (Kind::Withdraw, 101));
        assert_eq!(local.changed(LocalChange::Unregistered, "alice", contact), None);
    }

    #[test]
    fn rejections_are_counted_by_reason_and_in_total() {
        let c = Counters::default();
        for reason in ["bad_json", "bad_json", "expired", "not_a_reason"] {
            c.reject(reason);
        }
        assert_eq!(c.rejected_total(), 3);
        assert_eq!(c.rejected_by_reason(), "bad_json=2 expired=1");
    }

    #[test]
    fn an_expired_announce_removes_only_its_owners_contact() {
        let (mut book, mut loc, c) = setup();
        book.handle(&announce("ANNOUNCE", "alice", "sip:a@h1", "n1", 1), &mut loc, &no_local, &c, NOW);
        // At NOW + 60 the announcement (expires NOW + 60) has expired.
        book.handle(&announce("ANNOUNCE", "alice", "sip:a@h1", "n2", 1), &mut loc, &no_local, &c, NOW + 60);
        assert_eq!(loc.contacts.len(), 1, "another origin's expired ANNOUNCE leaves n1's contact");
        book.handle(&announce("ANNOUNCE", "alice", "sip:a@h1", "n1", 2), &mut loc, &no_local, &c, NOW + 60);
        assert!(loc.contacts.is_empty() && book.entries().is_empty(), "the owner's expired ANNOUNCE removes it");
    }

    #[test]
    fn expired_contacts_are_swept_and_left_out_of_sync_replies() {
        let (mut book, mut loc, c) = setup();
        book.handle(&announce("ANNOUNCE", "alice", "sip:a@h1", "n1", 7), &mut loc, &no_local, &c, NOW);
        let known = book.known(NOW + 59);
        assert_eq!((known.len(), known[0].origin.as_str(), known[0].seq), (1, "n1", 7), "a SYNC reply keeps origin and seq");
        assert!(book.known(NOW + 60).is_empty(), "expired at its expiry time");
        book.sweep(NOW + 59);
        assert_eq!(book.entries().len(), 1);
        book.sweep(NOW + 60);
        assert!(book.entries().is_empty());
    }

    #[test]
    fn a_sync_reply_gives_every_contact_of_an_aor_to_a_node_that_holds_none() {
        let (mut book, mut loc, c) = setup();
        // Registered in this order: the URI sorting first came second.
        book.handle(&announce("ANNOUNCE", "alice", "sip:b@h1", "kam", 5), &mut loc, &no_local, &c, NOW);
        book.handle(&announce("ANNOUNCE", "alice", "sip:a@h1", "kam", 6), &mut loc, &no_local, &c, NOW);
        let (mut joining, mut joining_loc, jc) = setup();
        for update in book.known(NOW) {
            joining.apply(update, &mut joining_loc, &no_local, &jc, NOW);
        }
        assert_eq!(joining_loc.contacts.len(), 2, "the joining node has both contacts: {:?}", joining_loc.contacts);
    }

    #[test]
    fn the_local_book_knows_its_phones_until_they_expire() {
        let mut local = LocalBook::new("me", 100);
        let contact = Contact { uri: "sip:a@h1".into(), expires: Some(NOW + 60), ..Default::default() };
        local.changed(LocalChange::Registered, "alice", contact);
        let key: Key = ("alice".into(), "sip:a@h1".into());
        assert!(local.contains(&key) && !local.contains(&("alice".into(), "sip:other@h1".into())));
        assert_eq!(local.entries().len(), 1);
        let known = local.known(NOW + 59);
        assert_eq!((known.len(), known[0].origin.as_str(), known[0].seq), (1, "me", 100));
        assert!(local.known(NOW + 60).is_empty());
        local.sweep(NOW + 59);
        assert!(local.contains(&key));
        local.sweep(NOW + 60);
        assert!(!local.contains(&key));
    }

    #[test]
    fn kinds_are_named_as_on_the_wire() {
        assert_eq!([Kind::Announce, Kind::Withdraw, Kind::Replace].map(kind_name), ["ANNOUNCE", "WITHDRAW", "REPLACE"]);
    }

    /// Collects the message of every event logged while it is the subscriber.
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
        fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            struct Message<'a>(&'a mut String);
            impl tracing::field::Visit for Message<'_> {
                fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                    if field.name() == "message" {
                        *self.0 = format!("{value:?}");
                    }
                }
            }
            let mut text = String::new();
            event.record(&mut Message(&mut text));
            self.0.lock().unwrap().push(text);
        }
    }

    #[test]
    fn a_refusal_is_logged_with_its_reason_and_repeats_are_held_back() {
        use tracing_subscriber::layer::SubscriberExt;
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (mut book, mut loc, c) = setup();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(Capture(lines.clone())), || {
            // Other tests reach the same log call concurrently without a subscriber; the
            // interest tracing cached for it then may predate this one.
            tracing::callsite::rebuild_interest_cache();
            for _ in 0..3 {
                book.handle(b"{not json", &mut loc, &no_local, &c, NOW);
            }
        });
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("registrations: message refused (bad_json)"), "{lines:?}");
        assert_eq!(c.rejected_total(), 3);
    }

    /// What the applier does with a delivery: the signature first, then the message.
    fn deliver(book: &mut Book, body: &[u8], signature: Signature, loc: &mut FakeLocation, c: &Counters) {
        if book.admits(body, signature, c) {
            book.handle(body, loc, &no_local, c, NOW);
        }
    }

    #[test]
    fn with_a_pool_key_only_verified_messages_apply() {
        let (book, mut loc, c) = setup();
        let mut book = book.with_unsigned_origins(vec!["kamailio".into()]);
        deliver(&mut book, &announce("ANNOUNCE", "alice", "sip:a@h1", "n1", 1), Signature::Missing, &mut loc, &c);
        deliver(&mut book, &announce("ANNOUNCE", "alice", "sip:a@h2", "n1", 2), Signature::Invalid, &mut loc, &c);
        assert!(loc.contacts.is_empty(), "a forged message applied");
        assert_eq!(c.rejected_by_reason(), "unsigned=1 bad_signature=1");
        deliver(&mut book, &announce("ANNOUNCE", "alice", "sip:a@h3", "n1", 3), Signature::Verified, &mut loc, &c);
        deliver(&mut book, &announce("ANNOUNCE", "bob", "sip:b@h1", "n1", 4), Signature::NotChecked, &mut loc, &c);
        assert_eq!(loc.contacts.len(), 2, "verified, and without a key everything as before");
        assert_eq!(c.rejected_total(), 2);
    }

    #[test]
    fn unsigned_origins_pass_unsigned_single_messages_only() {
        let (book, mut loc, c) = setup();
        let mut book = book.with_unsigned_origins(vec!["kamailio".into()]);
        deliver(&mut book, &announce("ANNOUNCE", "alice", "sip:a@h1", "kamailio-1764633000", 1), Signature::Missing, &mut loc, &c);
        assert_eq!(loc.contacts.len(), 1, "Kamailio's registration");
        deliver(&mut book, &announce("WITHDRAW", "alice", "sip:a@h1", "kamailio-1764633000", 2), Signature::Missing, &mut loc, &c);
        assert!(loc.contacts.is_empty(), "and its withdrawal");
        deliver(&mut book, &announce("ANNOUNCE", "alice", "sip:a@h2", "02:00:00:00:00:09", 1), Signature::Missing, &mut loc, &c);
        deliver(&mut book, &announce("ANNOUNCE", "alice", "sip:a@h3", "kamailio-1", 3), Signature::Invalid, &mut loc, &c);
        let batch = format!(r#"{{"type":"ANNOUNCE","origin":"kamailio","contacts":[{}]}}"#, String::from_utf8(announce("ANNOUNCE", "alice", "sip:a@h4", "n1", 1)).unwrap());
        deliver(&mut book, batch.as_bytes(), Signature::Missing, &mut loc, &c);
        let mut sync = Handled::Done;
        if book.admits(br#"{"type":"SYNC_REQUEST","origin":"kamailio"}"#, Signature::Missing, &c) {
            sync = book.handle(br#"{"type":"SYNC_REQUEST","origin":"kamailio"}"#, &mut loc, &no_local, &c, NOW);
        }
        assert!(loc.contacts.is_empty() && sync == Handled::Done, "another origin, a bad signature, a batch and a SYNC request need a signature");
        assert_eq!(c.rejected_by_reason(), "unsigned=3 bad_signature=1");
        let (mut strict, _, c) = setup();
        deliver(&mut strict, &announce("ANNOUNCE", "alice", "sip:a@h1", "kamailio", 1), Signature::Missing, &mut loc, &c);
        assert_eq!((loc.contacts.len(), c.rejected_by_reason().as_str()), (0, "unsigned=1"), "no unsigned origins by default");
    }

    #[test]
    fn a_signature_refusal_says_which_origin_the_message_claims() {
        use tracing_subscriber::layer::SubscriberExt;
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (mut book, mut loc, c) = setup();
        tracing::subscriber::with_default(tracing_subscriber::registry().with(Capture(lines.clone())), || {
            tracing::callsite::rebuild_interest_cache();
            for seq in 1..=3 {
                deliver(&mut book, &announce("ANNOUNCE", "alice", "sip:a@h1", "n7", seq), Signature::Invalid, &mut loc, &c);
            }
        });
        let lines = lines.lock().unwrap();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("registrations: message claiming origin n7 refused (bad_signature): its x-res-scale-signature verifies with neither"), "{lines:?}");
    }
}
