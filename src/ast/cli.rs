//! Registration of CLI commands. A command is plain Rust data ([`Command`]); this file turns a
//! list of them into the `ast_cli_entry` table Asterisk wants and routes calls back.

use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int};
use std::ptr;

use crate::ast::guard::guarded;
use crate::sys;

/// What a command handler returns.
pub enum Outcome {
    /// Printed as is.
    Output(String),
    /// Asterisk prints the usage text.
    ShowUsage,
    /// Printed, and the command counts as failed.
    Failed(String),
}

/// One CLI command. `summary` must be unique among the commands: it identifies the command
/// when Asterisk calls back.
pub struct Command {
    /// The words, e.g. `c"scale show status"`.
    pub words: &'static CStr,
    pub summary: &'static CStr,
    pub usage: &'static CStr,
    /// Receives the words typed after the command's own words.
    pub run: fn(&[String]) -> Outcome,
    /// Candidates for the word at `position` (counted after the command's own words).
    pub complete: fn(position: usize) -> &'static [&'static str],
}

/// For commands without arguments to complete.
pub fn no_completion(_: usize) -> &'static [&'static str] {
    &[]
}

/// The commands registered with Asterisk; unregistered on drop.
pub struct Registration {
    entries: Box<[sys::ast_cli_entry]>,
}

// SAFETY: the table holds raw pointers that Asterisk writes only while registering and
// unregistering (both done by the owner of this value) and reads under its own CLI list lock;
// moving the owning Box between threads does not move the entries.
unsafe impl Send for Registration {}

static COMMANDS: std::sync::RwLock<&'static [Command]> = std::sync::RwLock::new(&[]);

impl Registration {
    pub fn new(commands: &'static [Command]) -> Result<Registration, String> {
        *COMMANDS.write().unwrap_or_else(|e| e.into_inner()) = commands;
        let mut entries: Box<[sys::ast_cli_entry]> = commands
            .iter()
            .map(|c| {
                // SAFETY: ast_cli_entry is a plain C struct for which all-zero is the documented
                // "unset" state (AST_CLI_DEFINE sets only handler and summary).
                let mut e: sys::ast_cli_entry = unsafe { std::mem::zeroed() };
                e.handler = Some(handler);
                e.summary = c.summary.as_ptr();
                e
            })
            .collect();
        // SAFETY: the entries live in a heap allocation that does not move and outlives the
        // registration (Drop unregisters before freeing); the module handle comes from the shim.
        let rc = unsafe {
            sys::__ast_cli_register_multiple(entries.as_mut_ptr(), entries.len() as c_int, sys::res_scale_self())
        };
        if rc != 0 {
            // Asterisk registers what it can; take back whatever went in.
            drop(Registration { entries });
            return Err("Asterisk refused to register the CLI commands (see the log above)".into());
        }
        Ok(Registration { entries })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // SAFETY: the same table that was registered.
        unsafe { sys::ast_cli_unregister_multiple(self.entries.as_mut_ptr(), self.entries.len() as c_int) };
        // Asterisk skips an entry that is running right now and leaves it linked; freeing it
        // would leave a dangling entry in Asterisk's list, so such a table is leaked instead.
        if self.entries.iter().any(|e| !e._full_cmd.is_null()) {
            tracing::warn!("a scale CLI command was running during unload; its table is kept");
            std::mem::forget(std::mem::take(&mut self.entries));
        }
    }
}

fn find(e: *const sys::ast_cli_entry) -> Option<&'static Command> {
    let commands = *COMMANDS.read().unwrap_or_else(|e| e.into_inner());
    // SAFETY: Asterisk passes one of the entries we registered.
    let summary = unsafe { (*e).summary };
    commands.iter().find(|c| c.summary.as_ptr() == summary)
}

unsafe extern "C" fn handler(e: *mut sys::ast_cli_entry, cmd: c_int, a: *mut sys::ast_cli_args) -> *mut c_char {
    guarded("a scale CLI command", sys::CLI_FAILURE, || {
        let Some(command) = find(e) else { return sys::CLI_FAILURE };
        match cmd {
            sys::CLI_INIT => {
                // SAFETY: e is our entry; Asterisk copies `command` and keeps `usage`, both
                // static strings.
                unsafe {
                    (*e).command = command.words.as_ptr() as *mut c_char;
                    (*e).usage = command.usage.as_ptr();
                }
                ptr::null_mut()
            }
            sys::CLI_GENERATE => {
                // SAFETY: Asterisk passes valid args during CLI_GENERATE.
                let (pos, word, n, own) = unsafe { ((*a).pos, text((*a).word), (*a).n, (*e).args) };
                let position = (pos - own).max(0) as usize;
                let candidate = (command.complete)(position)
                    .iter()
                    .filter(|c| c.starts_with(word.as_str()))
                    .nth(n.max(0) as usize);
                // Asterisk frees the completion with its own allocator: hand it a malloc'd copy.
                candidate.map_or(ptr::null_mut(), |c| {
                    let c = CString::new(*c).unwrap_or_default();
                    // SAFETY: strdup copies a valid C string into malloc'd memory.
                    unsafe { libc::strdup(c.as_ptr()) }
                })
            }
            _ => {
                // SAFETY: Asterisk passes argc valid argv strings; e->args is the word count.
                let (fd, args) = unsafe {
                    let a = &*a;
                    let own = (*e).args.max(0) as usize;
                    let words: Vec<String> =
                        (0..a.argc.max(0) as usize).map(|i| text(*a.argv.add(i))).collect();
                    (a.fd, words.get(own..).map(<[String]>::to_vec).unwrap_or_default())
                };
                match (command.run)(&args) {
                    Outcome::Output(out) => {
                        print(fd, &out);
                        sys::CLI_SUCCESS
                    }
                    Outcome::ShowUsage => sys::CLI_SHOWUSAGE,
                    Outcome::Failed(out) => {
                        print(fd, &out);
                        sys::CLI_FAILURE
                    }
                }
            }
        }
    })
}

fn text(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: Asterisk's CLI strings are NUL-terminated and live through the call.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

fn print(fd: c_int, out: &str) {
    let out = CString::new(out.replace('\0', "")).unwrap_or_default();
    // SAFETY: a "%s" format with one valid C string argument.
    unsafe { sys::ast_cli(fd, c"%s".as_ptr(), out.as_ptr()) };
}
