//! A SIP phone whose audio is checked by content: `tests/sip-phones/tone_phone.py` (pjsua2, run
//! with the testbed's venv) places one call, plays a pure tone into it once answered and records
//! what it hears. When the call ends it reports how much of the recording was at each frequency
//! the test listens for, so a test can say "this caller heard that caller's 1400 Hz for three
//! seconds" instead of "some RTP packets arrived".
//!
//! Every wait is bounded: a phone that never connects or never finishes fails the test.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use crate::child::{print_log_tail, terminate, tied_command};
use crate::testbed::Testbed;
use crate::wait;

/// How long the far end may take to answer (the script gives up a little earlier, at 15 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// From the hang-up to the analysis: the BYE (the script waits at most 5 s for its answer),
/// pjsua's shutdown (about 1 s) and the analysis of the recording.
const FINISH_TIMEOUT: Duration = Duration::from_secs(20);

static PHONES: AtomicUsize = AtomicUsize::new(0);

/// Who the phone calls as: the From user Asterisk identifies the endpoint by, and the digest
/// password if the endpoint authenticates.
#[derive(Debug, Clone)]
pub struct Caller {
    user: String,
    password: Option<String>,
}

impl Caller {
    /// An endpoint without authentication, identified by its From user (the nodes' `sipp`).
    pub fn user(name: &str) -> Caller {
        Caller { user: name.to_string(), password: None }
    }

    /// An endpoint that challenges (the nodes' alice, bob and carol use `<user>-secret`).
    pub fn with_password(name: &str, password: &str) -> Caller {
        Caller { user: name.to_string(), password: Some(password.to_string()) }
    }
}

/// What a phone heard during its call, from the script's analysis of its recording.
#[derive(Debug, Clone)]
pub struct Heard {
    /// Length of the recording (from the moment the call's audio was up).
    pub seconds: f64,
    /// Seconds that were not silence.
    pub seconds_with_sound: f64,
    /// The last SIP status of the call (200 for a call that was answered and ended).
    pub code: Option<u16>,
    share: HashMap<u32, f64>,
    tone_seconds: HashMap<u32, f64>,
}

impl Heard {
    /// Seconds in which `hz` was clearly present (at least a fifth of the sound; each tone of
    /// a small mix, such as a conference, counts).
    pub fn tone_seconds(&self, hz: u32) -> f64 {
        *self.tone_seconds.get(&hz).unwrap_or_else(|| panic!("the phone did not listen for {hz} Hz: {self:?}"))
    }

    /// Share (0..1) of everything the phone heard that was at `hz`.
    pub fn share(&self, hz: u32) -> f64 {
        *self.share.get(&hz).unwrap_or_else(|| panic!("the phone did not listen for {hz} Hz: {self:?}"))
    }

    fn parse(json: &str) -> Result<Heard, String> {
        let value: Value = serde_json::from_str(json).map_err(|e| format!("{e}: {json}"))?;
        let number = |key: &str| value[key].as_f64().ok_or_else(|| format!("no number {key} in {json}"));
        let per_hz = |key: &str| -> Result<HashMap<u32, f64>, String> {
            let map = value[key].as_object().ok_or_else(|| format!("no object {key} in {json}"))?;
            map.iter()
                .map(|(hz, v)| {
                    let hz_number = hz.parse().map_err(|_| format!("{key}: {hz} is no frequency"))?;
                    Ok((hz_number, v.as_f64().ok_or_else(|| format!("{key}.{hz} is no number"))?))
                })
                .collect()
        };
        Ok(Heard { seconds: number("seconds")?, seconds_with_sound: number("seconds_with_sound")?, code: None, share: per_hz("heard")?, tone_seconds: per_hz("seconds_with_tone")? })
    }
}

/// One call of `tone_phone.py`, killed (by PID) when dropped.
pub struct TonePhone {
    name: String,
    dir: PathBuf,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    stdout_reader: Option<JoinHandle<()>>,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl TonePhone {
    /// Calls `uri` as `caller`; once answered, plays `tone_hz` (None: plays nothing) and
    /// records what it hears, to be analysed at `listen_hz`.
    pub fn call(uri: &str, tone_hz: Option<u32>, caller: &Caller, listen_hz: &[u32]) -> TonePhone {
        let testbed = Testbed::load();
        let n = PHONES.fetch_add(1, Ordering::Relaxed);
        let name = format!("phone {n} ({} -> {uri})", caller.user);
        let dir = std::env::temp_dir().join(format!("res_scale-phone-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("sip-phones/tone_phone.py");
        let listen: Vec<String> = listen_hz.iter().map(u32::to_string).collect();
        let mut command = tied_command(&testbed.pjsua_python, "KILL");
        command
            .arg("-u")
            .arg(&script)
            .args(["--uri", uri, "--user", &caller.user])
            .args(["--tone", &tone_hz.unwrap_or(0).to_string(), "--listen", &listen.join(",")])
            .arg("--record")
            .arg(dir.join("heard.wav"))
            .arg("--log")
            .arg(dir.join("pjsua.log"));
        if let Some(password) = &caller.password {
            command.args(["--password", password]);
        }
        let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", testbed.pjsua_python.display()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (out, err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let sink = lines.clone();
        let stdout_reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        TonePhone { name, dir, stdin: child.stdin.take(), child: Some(child), stdout_reader: Some(stdout_reader), lines, stderr }
    }

    /// Waits until the call is answered and returns its Call-ID; panics if it fails or is not
    /// answered within 20 s.
    pub fn wait_connected(&self) -> String {
        let outcome = wait::try_until(CONNECT_TIMEOUT, Duration::from_millis(20), || {
            self.lines().iter().find_map(|line| {
                if let Some(call_id) = line.strip_prefix("CONNECTED call-id=") {
                    Some(Ok(call_id.to_string()))
                } else if line.starts_with("FAILED") || line.starts_with("DISCONNECTED") {
                    Some(Err(line.clone()))
                } else {
                    None
                }
            })
        });
        match outcome {
            Some(Ok(call_id)) => call_id,
            Some(Err(line)) => panic!("{}: the call was not answered: {line}\n{}", self.name, self.render()),
            None => panic!("{}: not answered within {CONNECT_TIMEOUT:?}\n{}", self.name, self.render()),
        }
    }

    /// Hangs up and returns what the phone heard.
    pub fn hang_up(mut self) -> Heard {
        if let Some(mut stdin) = self.stdin.take() {
            // The phone may have ended already (the far end hung up): then nobody reads.
            let _ = stdin.write_all(b"hangup\n");
        }
        self.finish()
    }

    /// Waits up to `within` for the far end to end the call and returns what the phone heard.
    pub fn wait_ended(mut self, within: Duration) -> Heard {
        let ended = wait::try_until(within, Duration::from_millis(20), || self.lines().iter().any(|l| l.starts_with("DISCONNECTED") || l.starts_with("FAILED")).then_some(()));
        if ended.is_none() {
            panic!("{}: the far end did not end the call within {within:?}\n{}", self.name, self.render());
        }
        self.finish()
    }

    fn finish(&mut self) -> Heard {
        let mut child = self.child.take().expect("a phone finishes once");
        let exited = wait::try_until(FINISH_TIMEOUT, Duration::from_millis(20), || child.try_wait().ok().flatten());
        if exited.is_none() {
            terminate(&mut child, Duration::from_secs(3));
            panic!("{}: did not finish within {FINISH_TIMEOUT:?} of the hang-up\n{}", self.name, self.render());
        }
        // Every line is read once the pipe is closed.
        if let Some(reader) = self.stdout_reader.take() {
            let _ = reader.join();
        }
        let lines = self.lines();
        let analysis = lines.iter().find_map(|l| l.strip_prefix("ANALYSIS "));
        let mut heard = match analysis.map(Heard::parse) {
            Some(Ok(heard)) => heard,
            Some(Err(e)) => panic!("{}: unreadable analysis: {e}\n{}", self.name, self.render()),
            None => panic!("{}: exited without an analysis\n{}", self.name, self.render()),
        };
        heard.code = lines.iter().find_map(|l| l.strip_prefix("DISCONNECTED code=")).and_then(|rest| rest.split_whitespace().next()).and_then(|code| code.parse().ok());
        heard
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The status lines and stderr, for a failure message.
    fn render(&self) -> String {
        let stderr = self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone();
        format!("status lines:\n{}\nstderr:\n{stderr}\n(recording and pjsua log in {})", self.lines().join("\n"), self.dir.display())
    }
}

impl Drop for TonePhone {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(3));
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("pjsua.log")).unwrap_or_default();
            print_log_tail(&format!("{} pjsua log (kept in {})", self.name, self.dir.display()), &log, 60);
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
