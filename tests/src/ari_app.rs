//! A third-party ARI application under test: one of the Python scripts in `tests/ari-apps/`,
//! run with the testbed's venv of unmodified public client libraries (asyncari, aioari). Each
//! script prints one JSON object per line (every event it received, and what it did); this
//! collects them so a test can wait for what it expects.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::child::{print_log_tail, terminate, tied_command};
use crate::testbed::Testbed;
use crate::wait;

pub struct AriApp {
    name: String,
    child: Option<Child>,
    lines: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
}

impl AriApp {
    /// Runs `tests/ari-apps/<script>` with `args`.
    pub fn start(script: &str, args: &[&str]) -> AriApp {
        AriApp::start_path(&Path::new(env!("CARGO_MANIFEST_DIR")).join("ari-apps").join(script), args)
    }

    /// Runs one of the shipped examples, `examples/<path>`, with `args`.
    pub fn example(path: &str, args: &[&str]) -> AriApp {
        AriApp::start_path(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(path), args)
    }

    fn start_path(path: &Path, args: &[&str]) -> AriApp {
        let testbed = Testbed::load();
        let script = path.file_name().unwrap_or_default().to_string_lossy().to_string();
        let mut child = tied_command(&testbed.ari_python, "KILL")
            .arg("-u")
            .arg(path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", testbed.ari_python.display()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let value = serde_json::from_str(&line).unwrap_or_else(|_| serde_json::json!({ "unparsed": line }));
                sink.lock().unwrap().push(value);
            }
        });
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        AriApp { name: script, child: Some(child), lines, stderr }
    }

    /// Everything printed so far.
    pub fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every received event (lines with a `type`).
    pub fn events(&self) -> Vec<Value> {
        self.lines().into_iter().filter(|l| l.get("type").is_some()).collect()
    }

    /// Waits for a line that satisfies `matches` and returns it.
    pub fn expect(&self, what: &str, within: Duration, matches: impl Fn(&Value) -> bool) -> Value {
        wait::try_until(within, Duration::from_millis(50), || self.lines().into_iter().find(|l| matches(l)))
            .unwrap_or_else(|| panic!("{}: no line with {what} within {within:?}; got:\n{}\nstderr:\n{}", self.name, self.render(), self.stderr()))
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn render(&self) -> String {
        self.lines().iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
    }

    /// The script's PID (the interpreter runs it in place of `setpriv`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(3));
        }
    }
}

impl Drop for AriApp {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            print_log_tail(&self.name, &self.stderr(), 40);
        }
    }
}
