//! An ARI application's events WebSocket read by the test process itself: every frame is
//! stamped with its arrival (`Instant`) as it comes off the socket, so a benchmark times
//! "request sent -> event seen by the application" on one clock, without a script's start-up,
//! parsing or printing in between. Connecting registers the application, as any ARI client's
//! socket does.

use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Frame {
    pub at: Instant,
    pub event: Value,
}

type Frames = Arc<(Mutex<Vec<Frame>>, Condvar)>;

pub struct EventSocket {
    frames: Frames,
    stream: TcpStream,
}

impl EventSocket {
    /// Opens `/ari/events?app=<app>` of the ARI server at `base` (`http://127.0.0.1:<port>`).
    pub fn connect(base: &str, app: &str, user: &str, password: &str) -> EventSocket {
        let address = base.trim_start_matches("http://").trim_end_matches('/');
        let stream = TcpStream::connect(address).unwrap_or_else(|e| panic!("connect {address}: {e}"));
        stream.set_nodelay(true).unwrap();
        let url = format!("ws://{address}/ari/events?app={app}&api_key={user}:{password}");
        let (mut socket, _) = tungstenite::client(url.as_str(), stream.try_clone().unwrap()).unwrap_or_else(|e| panic!("events WebSocket {url}: {e}"));
        let frames: Frames = Arc::default();
        let sink = frames.clone();
        std::thread::spawn(move || {
            // Ends when the socket closes (also when `EventSocket` is dropped: it shuts it down).
            while let Ok(message) = socket.read() {
                let at = Instant::now();
                let Ok(text) = message.to_text() else { continue };
                let Ok(event) = serde_json::from_str::<Value>(text) else { continue };
                let (lock, arrived) = &*sink;
                lock.lock().unwrap_or_else(|e| e.into_inner()).push(Frame { at, event });
                arrived.notify_all();
            }
        });
        EventSocket { frames, stream }
    }

    /// The first frame (received so far or later) whose event satisfies `matches`; panics
    /// with `what` after `within`.
    pub fn wait_for(&self, what: &str, within: Duration, matches: impl Fn(&Value) -> bool) -> Frame {
        let deadline = Instant::now() + within;
        let (lock, arrived) = &*self.frames;
        let mut frames = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(frame) = frames.iter().find(|f| matches(&f.event)) {
                return frame.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let kinds: Vec<String> = frames.iter().rev().take(20).map(|f| f.event["type"].to_string()).collect();
                panic!("no event with {what} within {within:?} (last types: {kinds:?})");
            }
            frames = arrived.wait_timeout(frames, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }
}

impl Drop for EventSocket {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}
