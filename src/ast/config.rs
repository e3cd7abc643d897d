//! Reads a config file through Asterisk's own parser (includes, templates, `#exec` and
//! comments behave as in every other Asterisk config) and hands it over as a `RawConfig`.

use std::ffi::{CStr, CString};
use std::ptr;

use res_scale_core::config::{RawConfig, RawEntry, RawSection};

use crate::sys;

pub enum Loaded {
    Config(RawConfig),
    Missing,
    /// Only when asked for changes only: the file is the same as at the last load.
    Unchanged,
    /// Asterisk could not parse the file; it logged why.
    Unparsable,
}

pub fn load(file: &str, only_if_changed: bool) -> Loaded {
    let name = CString::new(file).expect("config file names have no NUL");
    let mut cfg: *mut sys::ast_config = ptr::null_mut();
    // SAFETY: name is a valid C string; cfg is a valid out-pointer.
    let status = unsafe { sys::res_scale_config_load(name.as_ptr(), only_if_changed as i32, &mut cfg) };
    match status {
        sys::RES_SCALE_CONFIG_OK => {
            // SAFETY: the shim returned a real config (not a sentinel); we own it and
            // destroy it right after copying everything out.
            let raw = unsafe { copy_out(cfg) };
            unsafe { sys::ast_config_destroy(cfg) };
            Loaded::Config(raw)
        }
        sys::RES_SCALE_CONFIG_MISSING => Loaded::Missing,
        sys::RES_SCALE_CONFIG_UNCHANGED => Loaded::Unchanged,
        _ => Loaded::Unparsable,
    }
}

/// # Safety
/// `cfg` must be a valid config returned by ast_config_load2 and not destroyed meanwhile.
unsafe fn copy_out(cfg: *mut sys::ast_config) -> RawConfig {
    let text = |p: *const std::os::raw::c_char| {
        // SAFETY: Asterisk's category and variable strings are NUL-terminated and live as long
        // as the config.
        if p.is_null() {
            String::new()
        } else {
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    let mut sections = Vec::new();
    let mut category: *mut sys::ast_category = ptr::null_mut();
    loop {
        // The filtered browse walks categories one by one, so a section given twice is seen
        // twice (plain ast_category_browse + ast_variable_browse would only see the first).
        // SAFETY: cfg is valid; category is NULL or the previous result.
        category = unsafe { sys::ast_category_browse_filtered(cfg, ptr::null(), category, ptr::null()) };
        if category.is_null() {
            break;
        }
        // SAFETY: category is a live category of cfg.
        let name = text(unsafe { sys::ast_category_get_name(category) });
        let mut entries = Vec::new();
        // SAFETY: as above; the variable list is a NULL-terminated linked list owned by cfg.
        let mut var = unsafe { sys::ast_category_first(category) };
        while !var.is_null() {
            // SAFETY: var is a live node of the list.
            let v = unsafe { &*var };
            entries.push(RawEntry { key: text(v.name), value: text(v.value), line: v.lineno.max(0) as u32 });
            var = v.next;
        }
        sections.push(RawSection { name, entries });
    }
    RawConfig { sections }
}
