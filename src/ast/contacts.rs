//! PJSIP contacts, through `asterisk-headers/contacts.c`: creating, refreshing and deleting
//! contacts of configured AORs (the location API, under the registrar's AOR lock), and the
//! sorcery observer that reports every contact change on this node.
//!
//! The observer runs on sorcery's serializer thread, an Asterisk thread: the sink it calls
//! must only copy and queue. A contact that the registrar created for a REGISTER carries the
//! endpoint that registered; the ones this module applies carry none, which is how the two
//! are told apart.

use std::ffi::{c_int, CStr, CString};
use std::os::raw::c_char;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use res_scale_core::registrations::book::{LocalChange, Location, Refusal};
use res_scale_core::registrations::message::Contact;

use crate::ast::gate::Gate;
use crate::ast::guard::guarded;
use crate::sys;

/// Receives every contact change on this node.
pub trait ContactSink: Send + Sync {
    /// `registered_here`: a phone registered it on this node (as opposed to contacts that
    /// res_scale applied from other nodes).
    fn changed(&self, change: LocalChange, aor: &str, contact: Contact, registered_here: bool);
}

static SINK: RwLock<Option<Arc<dyn ContactSink>>> = RwLock::new(None);
static GATE: Gate = Gate::new();

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

/// Reports every contact that exists now to the sink, as `Registered`.
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

#[no_mangle]
extern "C" fn rs_scale_contact_changed(change: sys::res_scale_contact_change, fields: *const sys::res_scale_contact_fields) {
    let _pass = GATE.enter();
    guarded("the contact observer", (), || {
        // SAFETY: the shim passes a struct that lives for the duration of the call (or NULL).
        let Some(f) = (unsafe { fields.as_ref() }) else { return };
        let sink = SINK.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(sink) = sink else { return };
        let id = text(f.id);
        // The id is "<aor>;@<hash>" (location.c); AOR names cannot hold ";@".
        let Some((aor, _)) = id.split_once(";@") else { return };
        let contact = Contact {
            uri: text(f.uri),
            expires: u64::try_from(f.expires).ok(),
            path: text(f.path),
            user_agent: text(f.user_agent),
            via_addr: text(f.via_addr),
            via_port: u16::try_from(f.via_port).unwrap_or(0),
            call_id: text(f.call_id),
        };
        let registered_here = !text(f.endpoint).is_empty();
        let change = if change == sys::RES_SCALE_CONTACT_DELETE { LocalChange::Unregistered } else { LocalChange::Registered };
        sink.changed(change, aor, contact, registered_here);
    });
}

/// The contacts of this node's PJSIP.
pub struct AsteriskLocation;

impl Location for AsteriskLocation {
    fn upsert(&mut self, aor: &str, contact: &Contact) -> Result<(), Refusal> {
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
        // SAFETY: every pointer is a live NUL-terminated string for the duration of the call.
        match unsafe { sys::res_scale_contact_upsert(aor.as_ptr(), &fields) } {
            sys::RES_SCALE_CONTACT_CREATED | sys::RES_SCALE_CONTACT_UPDATED => Ok(()),
            sys::RES_SCALE_CONTACT_NO_AOR => Err(Refusal::UnknownAor),
            _ => Err(Refusal::Refused),
        }
    }

    fn remove(&mut self, aor: &str, uri: &str) -> Result<(), Refusal> {
        let (Ok(aor), Ok(uri)) = (CString::new(aor), CString::new(uri)) else {
            return Err(Refusal::Refused);
        };
        // SAFETY: both are live NUL-terminated strings for the duration of the call.
        match unsafe { sys::res_scale_contact_remove(aor.as_ptr(), uri.as_ptr()) } {
            sys::RES_SCALE_CONTACT_REMOVED | sys::RES_SCALE_CONTACT_ABSENT => Ok(()),
            sys::RES_SCALE_CONTACT_NO_AOR => Err(Refusal::UnknownAor),
            _ => Err(Refusal::Refused),
        }
    }
}
