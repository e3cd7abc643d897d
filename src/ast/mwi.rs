//! Mailbox (MWI) state, through `asterisk-headers/mwi.c`: the subscription that hears of every
//! mailbox state this node itself publishes or deletes (states with this node's EID in the
//! state: never those that came from other nodes), and the calls that hand other nodes'
//! states to Asterisk under their EIDs, take them back, and read what Asterisk holds.
//!
//! The subscription's callback runs on a Stasis thread, an Asterisk thread: the sink it calls
//! must only copy and queue. Unsubscribing waits until the callback no longer runs.

use std::ffi::{c_int, CString};
use std::os::raw::c_char;
use std::sync::Arc;

use res_scale_core::state::book::Refused;
use res_scale_core::state::mwi::book::Mailboxes;
use res_scale_core::state::mwi::local::Counts;
use res_scale_core::state::mwi::message::MwiState;
use res_scale_core::state::mwi::show::Held;

use crate::ast::devstate::{text, AsteriskStates};
use crate::ast::guard::guarded;
use crate::ast::sink::Sink;
use crate::sys;

/// Receives every change (or deletion) of this node's own mailbox states.
pub trait MwiSink: Send + Sync {
    fn changed(&self, mailbox: &str, new: i32, old: i32, deleted: bool);
    /// A state this node holds, as [`report_local`] finds it.
    fn held(&self, mailbox: &str, new: i32, old: i32);
}

static SINK: Sink<dyn MwiSink> = Sink::new();

/// Subscribes and delivers to `sink` from now on.
pub fn subscribe(sink: Arc<dyn MwiSink>) -> Result<(), String> {
    SINK.set(Some(sink));
    // SAFETY: subscribes a plain C function of the shim to Asterisk's MWI topic.
    if unsafe { sys::res_scale_mwi_subscribe() } != 0 {
        unsubscribe();
        return Err("could not subscribe to Asterisk's MWI topic".into());
    }
    Ok(())
}

/// Ends the subscription (waiting for a callback under way), then forgets the sink.
pub fn unsubscribe() {
    // SAFETY: ends our subscription if there is one; joins its last callback.
    unsafe { sys::res_scale_mwi_unsubscribe() };
    SINK.set(None);
}

/// Hands every state of this node's own that Asterisk holds to the sink's `held` (states set
/// before the module was loaded are known to nobody else yet).
pub fn report_local() {
    // SAFETY: walks Asterisk's MWI cache; calls rs_scale_mwi_held.
    unsafe { sys::res_scale_mwi_report_local() };
}

/// # Safety
/// `mailbox` must be NULL or a NUL-terminated string alive for the call.
unsafe fn to_sink(what: &str, mailbox: *const c_char, deliver: impl FnOnce(&dyn MwiSink, &str)) {
    guarded(what, (), || {
        // SAFETY: guaranteed by the caller.
        let Some(mailbox) = (unsafe { text(mailbox) }) else { return };
        if let Some(sink) = SINK.get() {
            deliver(&*sink, &mailbox);
        }
    });
}

#[no_mangle]
extern "C" fn rs_scale_mwi_changed(mailbox: *const c_char, new: c_int, old: c_int, deleted: c_int) {
    // SAFETY: the shim passes the state's unique id, alive for the call (or NULL).
    unsafe { to_sink("the MWI callback", mailbox, |sink, mailbox| sink.changed(mailbox, new, old, deleted != 0)) };
}

#[no_mangle]
extern "C" fn rs_scale_mwi_held(mailbox: *const c_char, new: c_int, old: c_int) {
    // SAFETY: the shim passes the cached state's unique id, alive for the call (or NULL).
    unsafe { to_sink("the MWI report", mailbox, |sink, mailbox| sink.held(mailbox, new, old)) };
}

/// What Asterisk holds for a mailbox (its one state, from whichever node).
pub fn held(mailbox: &str) -> Held {
    let mailbox = CString::new(mailbox).ok()?;
    let (mut new, mut old) = (0, 0);
    // "xx:xx:xx:xx:xx:xx" and its NUL.
    let mut origin = [0 as c_char; 18];
    // SAFETY: a live C string, out-pointers to locals, and the buffer's true size.
    let rc = unsafe { sys::res_scale_mwi_cached(mailbox.as_ptr(), &mut new, &mut old, origin.as_mut_ptr(), origin.len()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: ast_eid_to_str wrote a NUL-terminated string into the buffer.
    let origin = unsafe { text(origin.as_ptr()) }.unwrap_or_default();
    Some((Counts { new: new.max(0) as u32, old: old.max(0) as u32 }, origin))
}

impl Mailboxes for AsteriskStates {
    fn apply(&mut self, s: &MwiState) -> Result<(), Refused> {
        let (Ok(mailbox), Ok(origin)) = (CString::new(s.mailbox.as_str()), CString::new(s.origin.as_str())) else { return Err(Refused) };
        // The decoder took counts up to i32::MAX only.
        let (new, old) = (c_int::try_from(s.new).map_err(|_| Refused)?, c_int::try_from(s.old).map_err(|_| Refused)?);
        // SAFETY: live C strings for the duration of the call.
        match unsafe { sys::res_scale_mwi_apply(mailbox.as_ptr(), new, old, origin.as_ptr()) } {
            0 => Ok(()),
            _ => Err(Refused),
        }
    }

    fn forget(&mut self, mailbox: &str, origin: &str) -> bool {
        let (Ok(mailbox), Ok(origin)) = (CString::new(mailbox), CString::new(origin)) else { return false };
        // SAFETY: live C strings for the duration of the call.
        unsafe { sys::res_scale_mwi_forget(mailbox.as_ptr(), origin.as_ptr()) == 1 }
    }
}
