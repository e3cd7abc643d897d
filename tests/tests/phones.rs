//! The tone phone (`tests/sip-phones/tone_phone.py`) that the audio checks of other tests rely
//! on, against a real Asterisk 22 node: what it plays comes back through Echo() and is heard for
//! most of the call, and its analysis says "not heard" for a frequency nobody plays and for a
//! line that carries silence.

use std::time::Duration;

use res_scale_tests::phone::{Caller, TonePhone};
use res_scale_tests::Pool;

/// Audio per call: enough windows to tell "most of the call" from "a moment".
const AUDIO: Duration = Duration::from_secs(3);

fn uri(exten: &str, pool: &Pool) -> String {
    format!("sip:{exten}@127.0.0.1:{}", pool.node(0).sip_port)
}

#[test]
fn two_phones_calling_echo_each_hear_their_own_tone_and_not_the_other() {
    let pool = Pool::builder().nodes(1).start();
    let low = TonePhone::call(&uri("102", &pool), Some(1000), &Caller::user("sipp"), &[1000, 1400]);
    let high = TonePhone::call(&uri("102", &pool), Some(1400), &Caller::user("sipp"), &[1000, 1400]);
    low.wait_connected();
    high.wait_connected();
    std::thread::sleep(AUDIO);
    let (low, high) = (low.hang_up(), high.hang_up());

    let most = 0.8 * AUDIO.as_secs_f64();
    assert!(low.tone_seconds(1000) >= most, "1000 Hz came back for less than {most:.1} s: {low:?}");
    assert!(high.tone_seconds(1400) >= most, "1400 Hz came back for less than {most:.1} s: {high:?}");
    assert!(low.share(1000) > 0.9 && high.share(1400) > 0.9, "echoes not pure: {low:?} {high:?}");
    // Each call's echo is its own: the other phone's tone is not in it.
    assert_eq!(low.tone_seconds(1400), 0.0, "{low:?}");
    assert_eq!(high.tone_seconds(1000), 0.0, "{high:?}");
    assert!(low.share(1400) < 0.05 && high.share(1000) < 0.05, "{low:?} {high:?}");
    assert_eq!((low.code, high.code), (Some(200), Some(200)));
}

#[test]
fn a_call_that_answers_with_silence_is_heard_as_silence() {
    let pool = Pool::builder().nodes(1).start();
    // 101 answers and waits: Asterisk sends nothing back. alice also proves the digest path.
    let phone = TonePhone::call(&uri("101", &pool), Some(1000), &Caller::with_password("alice", "alice-secret"), &[1000]);
    phone.wait_connected();
    std::thread::sleep(AUDIO);
    let heard = phone.hang_up();

    assert!(heard.seconds >= AUDIO.as_secs_f64() - 0.5, "the call's audio was not recorded: {heard:?}");
    assert_eq!(heard.seconds_with_sound, 0.0, "{heard:?}");
    assert_eq!(heard.tone_seconds(1000), 0.0, "{heard:?}");
    assert_eq!(heard.share(1000), 0.0, "{heard:?}");
}
