//! PJSIP contacts, through `asterisk-headers/contacts.c`: creating, refreshing and deleting
//! contacts of configured AORs (the location API, under the registrar's AOR lock), and the
//! sorcery observer that reports every contact change on this node.
//!
//! The observer runs on sorcery's serializer thread, an Asterisk thread: the sink it calls
//! must only copy and queue. A contact that the registrar created for a REGISTER carries the
//! endpoint that registered; the ones this module applies carry none. The registrar also
//! refreshes a contact this module applied when a phone registers the same URI here (it keeps
//! the empty endpoint): before changing a contact, the module compares it with what it wrote
//! (under the AOR lock, see [`same_registration`]) and leaves a refreshed one to the phone,
//! reporting it to the sink as registered here.
//!
//! Pacing: sorcery tells its observers of every contact change through tasks on its
//! `sorcery/contact` serializer, and while that queue is over its high-water mark (1,500 tasks)
//! res_pjsip turns new SIP requests away. A SYNC or batch of thousands of contacts would get
//! there within milliseconds, so every change waits while more than [`MAX_BACKLOG`] tasks are
//! queued there.

use std::ffi::{c_int, c_long, c_void, CStr, CString};
use std::os::raw::c_char;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use res_scale_core::registrations::book::{same_registration, LocalChange, Location, Refusal};
use res_scale_core::rate_log::RateLimitedLog;
use res_scale_core::registrations::message::Contact;

use crate::ast::gate::Gate;
use crate::ast::guard::guarded;
use crate::sys;

/// Receives every contact change on this node.
pub trait ContactSink: Send + Sync {
    /// `registered_here`: a phone registered it on this node (as opposed to contacts that
    /// res_scale applied from other nodes, and those the registrar refreshed before the module
    /// noticed: both come without endpoint).
    fn changed(&self, change: LocalChange, aor: &str, contact: Contact, registered_here: bool);
}

static SINK: RwLock<Option<Arc<dyn ContactSink>>> = RwLock::new(None);
static GATE: Gate = Gate::new();

/// Tasks queued for sorcery's contact observers at most before the next change waits: two
/// thirds of the serializer's high-water mark, which leaves room for the registrar's changes.
pub const MAX_BACKLOG: c_long = 1_000;
/// How long one change waits for the queue at most: a serializer that does not move is
/// Asterisk's trouble, and applying stalls no longer than this per change.
const MAX_PAUSE: Duration = Duration::from_millis(500);
static PACE_LOG: Mutex<Option<RateLimitedLog>> = Mutex::new(None);

fn backlog() -> c_long {
    // SAFETY: reads the size of the queue the shim holds a reference to, under its lock.
    unsafe { sys::res_scale_contact_backlog() }
}

/// Waits until the observers' queue has room for one more change (see the module's doc).
fn pace() {
    if backlog() <= MAX_BACKLOG {
        return;
    }
    let start = Instant::now();
    while backlog() > MAX_BACKLOG {
        if start.elapsed() >= MAX_PAUSE {
            let mut log = PACE_LOG.lock().unwrap_or_else(|e| e.into_inner());
            log.get_or_insert_with(|| RateLimitedLog::new("registrations")).warn("pacing", || {
                format!("sorcery's contact observers still have {} tasks queued after {MAX_PAUSE:?}; applying on", backlog())
            });
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

pub fn set_sink(sink: Option<Arc<dyn ContactSink>>) {
    *SINK.write().unwrap_or_else(|e| e.into_inner()) = sink;
}

/// Adds or removes the sorcery observer on contacts.
pub fn observe(on: bool) -> Result<(), String> {
    // SAFETY: res_pjsip is loaded (it is in our .requires); the observer is a static struct of
    // plain functions in the shim.
    let rc = unsafe { sys::res_scale_contact_observe(c_int::from(on)) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("ast_sorcery_observer_add on 'contact' returned {rc}"))
    }
}

/// Reports every contact that exists now to the sink, as `Found`.
pub fn report_all() {
    // SAFETY: reads the contacts through sorcery; calls our callback synchronously.
    unsafe { sys::res_scale_contact_report_all() }
}

/// Waits until no observer callback runs in our code.
pub fn wait_idle(timeout: Duration) -> bool {
    GATE.wait_idle(timeout)
}

fn text(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: the shim passes NUL-terminated strings valid for the duration of the callback.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn sink() -> Option<Arc<dyn ContactSink>> {
    SINK.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// The AOR (from the id, "<aor>;@<hash>" as location.c makes it; AOR names cannot hold ";@"),
/// the contact, and whether it carries an endpoint.
fn contact_of(f: &sys::res_scale_contact_fields) -> Option<(String, Contact, bool)> {
    let id = text(f.id);
    let (aor, _) = id.split_once(";@")?;
    let contact = Contact {
        uri: text(f.uri),
        expires: u64::try_from(f.expires).ok(),
        path: text(f.path),
        user_agent: text(f.user_agent),
        via_addr: text(f.via_addr),
        via_port: u16::try_from(f.via_port).unwrap_or(0),
        call_id: text(f.call_id),
    };
    Some((aor.to_string(), contact, !text(f.endpoint).is_empty()))
}

#[no_mangle]
extern "C" fn rs_scale_contact_changed(change: sys::res_scale_contact_change, fields: *const sys::res_scale_contact_fields) {
    let _pass = GATE.enter();
    guarded("the contact observer", (), || {
        // SAFETY: the shim passes a struct that lives for the duration of the call (or NULL).
        let Some(f) = (unsafe { fields.as_ref() }) else { return };
        let Some(sink) = sink() else { return };
        let Some((aor, contact, registered_here)) = contact_of(f) else { return };
        let change = match change {
            sys::RES_SCALE_CONTACT_DELETE => LocalChange::Unregistered,
            sys::RES_SCALE_CONTACT_EXISTS => LocalChange::Found,
            _ => LocalChange::Registered,
        };
        sink.changed(change, &aor, contact, registered_here);
    });
}

/// The shim's `ours` callback: `data` is the `Option<&Contact>` the book last applied. A
/// contact that a phone registered here is reported to the sink at once, so that the pool
/// hears of it even if the observer's report of the refresh came before the book let go.
unsafe extern "C" fn ours(data: *mut c_void, stored: *const sys::res_scale_contact_fields) -> c_int {
    guarded("the contact ownership check", 0, || {
        // SAFETY: the caller (AsteriskLocation, below) passes a live Option<&Contact> as data
        // for the duration of its call; the shim passes the stored fields for this call.
        let (applied, stored) = unsafe { (&*(data as *const Option<&Contact>), stored.as_ref()) };
        let Some((aor, contact, endpoint)) = stored.and_then(contact_of) else { return 0 };
        if !endpoint && applied.is_none_or(|applied| same_registration(&contact, applied)) {
            return 1;
        }
        if let Some(sink) = sink() {
            sink.changed(LocalChange::Registered, &aor, contact, true);
        }
        0
    })
}

/// What the shim's contact functions answered.
fn outcome(result: sys::res_scale_contact_result) -> Result<(), Refusal> {
    match result {
        sys::RES_SCALE_CONTACT_CREATED | sys::RES_SCALE_CONTACT_UPDATED | sys::RES_SCALE_CONTACT_REMOVED | sys::RES_SCALE_CONTACT_ABSENT | sys::RES_SCALE_CONTACT_APPLIED => Ok(()),
        sys::RES_SCALE_CONTACT_NO_AOR => Err(Refusal::UnknownAor),
        sys::RES_SCALE_CONTACT_REGISTERED_HERE => Err(Refusal::RegisteredHere),
        _ => Err(Refusal::Refused),
    }
}

/// The contacts of this node's PJSIP.
pub struct AsteriskLocation;

impl Location for AsteriskLocation {
    fn upsert(&mut self, aor: &str, contact: &Contact, applied: Option<&Contact>) -> Result<(), Refusal> {
        let strings = [aor, &contact.uri, &contact.path, &contact.user_agent, &contact.via_addr, &contact.call_id].map(CString::new);
        let [Ok(aor), Ok(uri), Ok(path), Ok(user_agent), Ok(via_addr), Ok(call_id)] = strings else {
            return Err(Refusal::Refused);
        };
        let fields = sys::res_scale_contact_fields {
            id: std::ptr::null(),
            uri: uri.as_ptr(),
            path: path.as_ptr(),
            user_agent: user_agent.as_ptr(),
            via_addr: via_addr.as_ptr(),
            call_id: call_id.as_ptr(),
            endpoint: c"".as_ptr(),
            expires: contact.expires.and_then(|e| i64::try_from(e).ok()).unwrap_or(0) as _,
            via_port: c_int::from(contact.via_port),
        };
        let data = &applied as *const Option<&Contact> as *mut c_void;
        // SAFETY: every pointer is a live NUL-terminated string for the duration of the call,
        // and `data` is the Option<&Contact> that `ours` expects, alive as long.
        outcome(unsafe { sys::res_scale_contact_upsert(aor.as_ptr(), &fields, Some(ours), data) })
    }

    fn remove(&mut self, aor: &str, applied: &Contact) -> Result<(), Refusal> {
        stored(aor, applied, sys::res_scale_contact_remove)
    }

    fn check(&mut self, aor: &str, applied: &Contact) -> Result<(), Refusal> {
        stored(aor, applied, sys::res_scale_contact_check)
    }

    fn pace(&mut self) {
        pace();
    }
}

type StoredCall = unsafe extern "C" fn(*const c_char, *const c_char, sys::res_scale_contact_ours, *mut c_void) -> sys::res_scale_contact_result;

/// Runs a shim function on the stored contact `applied` names.
fn stored(aor: &str, applied: &Contact, call: StoredCall) -> Result<(), Refusal> {
    let (Ok(aor), Ok(uri)) = (CString::new(aor), CString::new(applied.uri.as_str())) else {
        return Err(Refusal::Refused);
    };
    let applied = Some(applied);
    let data = &applied as *const Option<&Contact> as *mut c_void;
    // SAFETY: both strings are live NUL-terminated strings for the duration of the call, and
    // `data` is the Option<&Contact> that `ours` expects, alive as long.
    outcome(unsafe { call(aor.as_ptr(), uri.as_ptr(), Some(ours), data) })
}
