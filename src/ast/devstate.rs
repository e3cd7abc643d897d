//! Device state, through `asterisk-headers/devstate.c`: the subscription that hears of every
//! state this node itself publishes (per-EID states with this node's EID: never aggregates,
//! never states that came from other nodes), and the calls that hand other nodes' states to
//! Asterisk under their EIDs.
//!
//! The subscription's callback runs on a Stasis thread, an Asterisk thread: the sink it calls
//! must only copy and queue. Unsubscribing waits until the callback no longer runs.

use std::ffi::{c_int, CStr, CString};
use std::os::raw::c_char;
use std::sync::Arc;

use res_scale_core::state::book::{DeviceStates, Refused};
use res_scale_core::state::message::DeviceState;

use crate::ast::guard::guarded;
use crate::ast::sink::Sink;
use crate::sys;

/// Receives every change of this node's own device states.
pub trait StateSink: Send + Sync {
    fn changed(&self, device: &str, state: &str, cachable: bool);
    /// A state this node holds, as [`report_local`] finds it.
    fn held(&self, device: &str, state: &str, cachable: bool);
}

static SINK: Sink<dyn StateSink> = Sink::new();

/// Subscribes and delivers to `sink` from now on.
pub fn subscribe(sink: Arc<dyn StateSink>) -> Result<(), String> {
    SINK.set(Some(sink));
    // SAFETY: subscribes a plain C function of the shim to Asterisk's device state topic.
    if unsafe { sys::res_scale_devstate_subscribe() } != 0 {
        unsubscribe();
        return Err("could not subscribe to Asterisk's device state topic".into());
    }
    Ok(())
}

/// Ends the subscription (waiting for a callback under way), then forgets the sink.
pub fn unsubscribe() {
    // SAFETY: ends our subscription if there is one; joins its last callback.
    unsafe { sys::res_scale_devstate_unsubscribe() };
    SINK.set(None);
}

/// # Safety
/// `p` must be NULL or a NUL-terminated string alive for the call.
pub(super) unsafe fn text(p: *const c_char) -> Option<String> {
    // SAFETY: guaranteed by the caller.
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// Hands every state of this node's own that Asterisk holds to the sink's `held` (states set
/// before the module was loaded are known to nobody else yet).
pub fn report_local() {
    // SAFETY: walks Asterisk's device state cache; calls rs_scale_device_state_held.
    unsafe { sys::res_scale_devstate_report_local() };
}

/// # Safety
/// `device` and `state` must be NULL or NUL-terminated strings alive for the call.
unsafe fn to_sink(what: &str, device: *const c_char, state: *const c_char, deliver: impl FnOnce(&dyn StateSink, &str, &str)) {
    guarded(what, (), || {
        // SAFETY: guaranteed by the caller.
        let (Some(device), Some(state)) = (unsafe { text(device) }, unsafe { text(state) }) else { return };
        if let Some(sink) = SINK.get() {
            deliver(&*sink, &device, &state);
        }
    });
}

#[no_mangle]
extern "C" fn rs_scale_device_state_changed(device: *const c_char, state: *const c_char, cachable: c_int) {
    // SAFETY: the shim passes the message's device name and ast_devstate_str's static name,
    // both alive for the call (or NULL).
    unsafe { to_sink("the device state callback", device, state, |sink, d, s| sink.changed(d, s, cachable != 0)) };
}

#[no_mangle]
extern "C" fn rs_scale_device_state_held(device: *const c_char, state: *const c_char, cachable: c_int) {
    // SAFETY: as above, from the cached message being reported.
    unsafe { to_sink("the device state report", device, state, |sink, d, s| sink.held(d, s, cachable != 0)) };
}

/// What Asterisk makes of a device over every origin (what hints and DEVICE_STATE() see).
pub fn aggregate(device: &str) -> String {
    let Ok(device) = CString::new(device) else { return "UNKNOWN".into() };
    // SAFETY: a live C string; the answer is one of ast_devstate_str's static names.
    unsafe { text(sys::res_scale_devstate_aggregate(device.as_ptr())) }.unwrap_or_else(|| "UNKNOWN".into())
}

/// Asterisk's device and (in `ast::mwi`) mailbox states.
pub struct AsteriskStates;

impl DeviceStates for AsteriskStates {
    fn apply(&mut self, s: &DeviceState) -> Result<(), Refused> {
        let (Ok(device), Ok(state), Ok(origin)) = (CString::new(s.device.as_str()), CString::new(s.state), CString::new(s.origin.as_str())) else {
            return Err(Refused);
        };
        // SAFETY: live C strings for the duration of the call.
        let rc = unsafe { sys::res_scale_devstate_apply(device.as_ptr(), state.as_ptr(), c_int::from(s.cachable), origin.as_ptr()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(Refused)
        }
    }

    fn forget(&mut self, device: &str, origin: &str) {
        let (Ok(device), Ok(origin)) = (CString::new(device), CString::new(origin)) else { return };
        // SAFETY: live C strings for the duration of the call.
        unsafe { sys::res_scale_devstate_forget(device.as_ptr(), origin.as_ptr()) };
    }
}
