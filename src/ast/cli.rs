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

/// The `ast_cli_entry` table Asterisk links into its list of commands. It is made once and
/// never freed: Asterisk leaves an entry that is running at unload linked (cli.c), a late
/// lookup may still run an entry it just unregistered, and the next load registers the same
/// entries again (Asterisk accepts an entry that is still linked). The library is never
/// unmapped (`-z nodelete`, build.rs), so its handler stays valid too. Asterisk writes to the
/// entries (in use counts, list links) at any time: Rust reaches them only through the raw
/// pointer, never through a reference.
struct Table {
    commands: &'static [Command],
    entries: *mut sys::ast_cli_entry,
}

// SAFETY: the entries are only touched through the raw pointer, by Asterisk under its CLI
// list lock or during (un)registration, which lifecycle serialises; the commands are static.
unsafe impl Send for Table {}
// SAFETY: as above; Table itself is never written after it is made.
unsafe impl Sync for Table {}

static TABLE: std::sync::OnceLock<Table> = std::sync::OnceLock::new();

impl Table {
    fn new(commands: &'static [Command]) -> Table {
        let entries: Box<[sys::ast_cli_entry]> = commands
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
        Table { commands, entries: Box::leak(entries).as_mut_ptr() }
    }

    fn len(&self) -> c_int {
        self.commands.len() as c_int
    }
}

/// The commands registered with Asterisk; unregistered on drop.
pub struct Registration {
    table: &'static Table,
}

impl Registration {
    /// Registers `commands`, which must be the same list at every load (the table is made from
    /// the first one).
    pub fn new(commands: &'static [Command]) -> Result<Registration, String> {
        let table = TABLE.get_or_init(|| Table::new(commands));
        if !std::ptr::eq(table.commands, commands) {
            return Err("a different list of CLI commands than at the first load".into());
        }
        // SAFETY: the table lives as long as the process; the module handle comes from the shim.
        let rc = unsafe { sys::__ast_cli_register_multiple(table.entries, table.len(), sys::res_scale_self()) };
        if rc != 0 {
            // Asterisk registers what it can; take back whatever went in.
            drop(Registration { table });
            return Err("Asterisk refused to register the CLI commands (see the log above)".into());
        }
        Ok(Registration { table })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let table = self.table;
        // SAFETY: the table that was registered, alive as long as the process.
        unsafe { sys::ast_cli_unregister_multiple(table.entries, table.len()) };
        // SAFETY: in bounds; Asterisk clears _full_cmd of every entry it unlinked, just now on
        // this thread.
        let kept = (0..table.commands.len()).any(|i| unsafe { !(*table.entries.add(i))._full_cmd.is_null() });
        if kept {
            tracing::warn!("a scale CLI command was running during unload; Asterisk keeps it listed until the next load");
        }
    }
}

fn find(e: *const sys::ast_cli_entry) -> Option<&'static Command> {
    let commands = TABLE.get()?.commands;
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
                let candidate = (command.complete)(position).iter().filter(|c| c.starts_with(word.as_str())).nth(n.max(0) as usize);
                // Asterisk frees the completion with ast_free: it must come from ast_strdup
                // (another allocator than libc's in MALLOC_DEBUG builds).
                candidate.map_or(ptr::null_mut(), |c| {
                    let c = CString::new(*c).unwrap_or_default();
                    // SAFETY: copies a valid C string with Asterisk's allocator.
                    unsafe { sys::res_scale_strdup(c.as_ptr()) }
                })
            }
            _ => {
                // SAFETY: Asterisk passes argc valid argv strings; e->args is the word count.
                let (fd, args) = unsafe {
                    let a = &*a;
                    let own = (*e).args.max(0) as usize;
                    let words: Vec<String> = (0..a.argc.max(0) as usize).map(|i| text(*a.argv.add(i))).collect();
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
