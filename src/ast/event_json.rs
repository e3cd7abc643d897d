//! Asterisk's event JSON written straight into a message body. `ast_json_dump_string_format`
//! would do the same, but it runs on the Stasis callback's thread and allocates several times
//! per event through Asterisk's JSON allocator (jansson grows its buffer by copying, and each
//! allocation carries a mutex of Asterisk's); the dump was two thirds of the callback's time
//! (BENCHMARKS.md). Walking the JSON costs only our own buffer. Members keep Asterisk's order.

use std::ffi::CStr;
use std::sync::Arc;

use res_scale_core::amqp::event::{write_integer, write_number, write_string, Event, EventWriter, Seq};

use crate::sys;

/// Deeper than any ARI event (they nest about five levels); past it the event counts as
/// malformed rather than risking the Asterisk thread's stack.
const MAX_DEPTH: u32 = 64;

/// The body of `json`, an event object of `app`; None if it is not an object or nests deeper
/// than MAX_DEPTH.
///
/// # Safety
/// `json` must be a live ast_json that no other thread modifies during the call (Asterisk lends
/// the event to the Stasis callback on these terms).
pub unsafe fn to_event(json: *mut sys::ast_json, app: Arc<str>, seq: Seq) -> Option<Event> {
    // SAFETY (whole body): json and every value reached from it are live and unmodified for the
    // call (caller's contract); the pointers Asterisk returns are borrowed from json.
    unsafe {
        if sys::ast_json_typeof(json) != sys::AST_JSON_OBJECT {
            return None;
        }
        let mut writer = EventWriter::new(app, seq);
        for_each_member(json, |key, value| {
            if writer.key(key) {
                match string_of(value) {
                    Some(text) => writer.top_string(text),
                    None => write_value(value, writer.out(), 1)?,
                }
            }
            Some(())
        })?;
        Some(writer.finish())
    }
}

/// Calls `visit` with each member's key and value, in Asterisk's order; stops at the first None.
unsafe fn for_each_member(object: *mut sys::ast_json, mut visit: impl FnMut(&[u8], *mut sys::ast_json) -> Option<()>) -> Option<()> {
    // SAFETY: object is a live JSON object (caller); the iterator and the key and value it
    // yields are borrowed from it and used before the next step.
    unsafe {
        let mut member = sys::ast_json_object_iter(object);
        while !member.is_null() {
            visit(CStr::from_ptr(sys::ast_json_object_iter_key(member)).to_bytes(), sys::ast_json_object_iter_value(member))?;
            member = sys::ast_json_object_iter_next(object, member);
        }
    }
    Some(())
}

/// The bytes of a JSON string value (up to a NUL it may hold), None for other types.
unsafe fn string_of<'a>(value: *mut sys::ast_json) -> Option<&'a [u8]> {
    // SAFETY: value is live (caller); string_get returns NULL for non-strings, else a string
    // owned by value.
    unsafe {
        let text = sys::ast_json_string_get(value);
        (!text.is_null()).then(|| CStr::from_ptr(text).to_bytes())
    }
}

unsafe fn write_value(value: *mut sys::ast_json, out: &mut Vec<u8>, depth: u32) -> Option<()> {
    if depth > MAX_DEPTH {
        return None;
    }
    // SAFETY: as in to_event: value and what it holds are live and unmodified for the call.
    unsafe {
        match sys::ast_json_typeof(value) {
            sys::AST_JSON_OBJECT => {
                out.push(b'{');
                let mut first = true;
                for_each_member(value, |key, member| {
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    write_string(out, key);
                    out.push(b':');
                    write_value(member, out, depth + 1)
                })?;
                out.push(b'}');
            }
            sys::AST_JSON_ARRAY => {
                out.push(b'[');
                for i in 0..sys::ast_json_array_size(value) {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_value(sys::ast_json_array_get(value, i), out, depth + 1)?;
                }
                out.push(b']');
            }
            sys::AST_JSON_STRING => write_string(out, string_of(value).unwrap_or_default()),
            sys::AST_JSON_INTEGER => write_integer(out, sys::ast_json_integer_get(value)),
            sys::AST_JSON_REAL => write_number(out, sys::ast_json_real_get(value)),
            sys::AST_JSON_TRUE => out.extend_from_slice(b"true"),
            sys::AST_JSON_FALSE => out.extend_from_slice(b"false"),
            _ => out.extend_from_slice(b"null"),
        }
    }
    Some(())
}
