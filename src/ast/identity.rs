//! Who this Asterisk is: entity ID, system name, version, config folder.

use std::ffi::CStr;
use std::os::raw::{c_char, c_int};

use crate::sys;

/// The entity ID (`entityid` in asterisk.conf, else derived from a MAC), e.g. `02:00:00:00:00:01`.
pub fn eid() -> String {
    let mut buf = [0 as c_char; 32];
    // SAFETY: buf is writable for its length; ast_eid_default is a plain global struct that
    // Asterisk sets at start-up and never frees.
    unsafe {
        sys::ast_eid_to_str(buf.as_mut_ptr(), buf.len() as c_int, std::ptr::addr_of_mut!(sys::ast_eid_default));
        CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned()
    }
}

/// `systemname` from asterisk.conf, empty when not set.
pub fn system_name() -> String {
    // SAFETY: a global string pointer Asterisk sets at start-up; may be NULL.
    unsafe { string_or_empty(sys::ast_config_AST_SYSTEM_NAME) }
}

/// The version string of the running Asterisk, e.g. `22.10.1+dfsg+...`.
pub fn asterisk_version() -> String {
    // SAFETY: returns a pointer to a static string.
    unsafe { string_or_empty(sys::ast_get_version()) }
}

/// Asterisk's config folder, e.g. `/etc/asterisk`.
pub fn config_dir() -> String {
    // SAFETY: a global string pointer Asterisk sets at start-up.
    unsafe { string_or_empty(sys::ast_config_AST_CONFIG_DIR) }
}

/// # Safety
/// `p` must be NULL or point to a NUL-terminated string that outlives the call.
unsafe fn string_or_empty(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: guaranteed by the caller.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// True once Asterisk has begun to shut down.
pub fn shutting_down() -> bool {
    // SAFETY: reads a core flag; callable from any thread.
    unsafe { sys::ast_shutting_down() != 0 }
}
