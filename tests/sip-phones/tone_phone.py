#!/usr/bin/env python3
"""A SIP phone that proves audio flows: it places one call, plays a pure tone into it once the
call is answered, records what it hears, and on exit says which frequencies the recording held.

Run with the testbed's pjsua2 venv (tests/provision.sh):

    $RES_SCALE_CACHE/pjsua2-venv/bin/python tests/sip-phones/tone_phone.py \
        --uri sip:102@127.0.0.1:5060 --user sipp --tone 1000 --listen 1000,1400 --duration 3

Status lines on stdout, one event each, `WORD key=value ...`:
    READY sip-port=<local UDP port>
    CONNECTED call-id=<Call-ID>
    MEDIA tone=<Hz or none> recording=<path>
    DISCONNECTED code=<last SIP status> reason=<text> connected=<seconds>
    FAILED reason=<text>                       (then exit status 1)
    ANALYSIS <one line of JSON>                (last line, also when the call failed)

The call ends when the far end hangs up, after --duration seconds connected, on a line on
stdin, or on SIGTERM/SIGINT. pjsua's own log (SIP messages included) goes to --log, never to
stdout.

The analysis cuts the recording into windows and measures, with the Goertzel algorithm, the
share of each window's energy at each --listen frequency: a pure tone at that frequency gives
about 1, silence or another tone about 0.
    heard              {Hz: share of all recorded energy at Hz}
    seconds_with_tone  {Hz: seconds of windows that are not silent and have at least a fifth of
                        their energy at Hz (each of a few mixed tones counts)}
    seconds_with_sound seconds of windows louder than the silence threshold
    seconds            length of the recording
"""

import argparse
import json
import math
import os
import random
import signal
import sys
import threading
import time
import wave

import pjsua2 as pj

# Windows of 100 ms resolve frequencies 10 Hz apart and still show a tone starting late.
WINDOW_SECONDS = 0.1
# A window quieter than this (RMS, dB below full scale) counts as silence: a jitter buffer's
# or a bridge's zero frames, not a tone that got quieter through a codec.
SILENCE_DBFS = -50.0
# A window holds a tone when at least this share of its energy is at the tone's frequency: low
# enough that each of up to four equally loud tones mixed together (a conference) counts, far
# above what a codec's noise puts at a frequency nobody plays (well under 1%).
TONE_SHARE = 0.2
# The tone's loudness: well below clipping (ulaw round trips stay clean), far above silence.
TONE_VOLUME = 8000
# RTP above Linux's ephemeral range (32768-60999) and the test nodes' RTP (10000-32599): ports
# that neither the kernel nor a pool hands out.
RTP_PORT_FIRST = 61000
RTP_PORT_RANGE = 4000
# How long a BYE (or CANCEL) may take to end the call before the phone gives up on it.
HANGUP_SECONDS = 5.0


# Status lines go to the stdout the phone was given; everything else that writes to fd 1 (pjlib
# logs before its log config applies) is sent to stderr, so stdout stays machine-readable.
STATUS = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)


def say(word, **fields):
    print(" ".join([word] + [f"{k.replace('_', '-')}={v}" for k, v in fields.items()]), file=STATUS, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--uri", required=True, help="whom to call, e.g. sip:102@127.0.0.1:5060")
    p.add_argument("--user", default="sipp", help="the From user (the endpoint Asterisk identifies)")
    p.add_argument("--password", help="digest password for --user, if the far end challenges")
    p.add_argument("--tone", type=int, default=0, help="Hz of the tone to play; 0 plays nothing")
    p.add_argument("--listen", default="", help="comma-separated Hz to look for in the recording")
    p.add_argument("--record", default="heard.wav", help="WAV file of what the phone hears")
    p.add_argument("--log", default="tone_phone.log", help="pjsua's log")
    p.add_argument("--duration", type=float, help="hang up after this many seconds connected")
    p.add_argument("--answer-timeout", type=float, default=15.0, help="give up if not connected by then")
    args = p.parse_args()
    args.listen = [int(f) for f in args.listen.split(",") if f.strip()]
    return args


class Phone(pj.Call):
    """One outgoing call; the main loop reads its state, pjsua's callbacks only record it."""

    def __init__(self, account, args):
        super().__init__(account)
        self.args = args
        self.connected_at = None
        self.ended = False
        self.tone = None
        self.recorder = None

    def onCallState(self, prm):
        info = self.getInfo()
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED and self.connected_at is None:
            self.connected_at = time.monotonic()
            say("CONNECTED", call_id=info.callIdString)
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.ended = True
            connected = time.monotonic() - self.connected_at if self.connected_at else 0.0
            say("DISCONNECTED", code=info.lastStatusCode, reason=info.lastReason.replace(" ", "_"),
                connected=f"{connected:.2f}")

    def onCallMediaState(self, prm):
        if self.recorder is not None:
            return
        info = self.getInfo()
        for media in info.media:
            if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                self.connect_audio(self.getAudioMedia(media.index))
                return

    def connect_audio(self, call_audio):
        self.recorder = pj.AudioMediaRecorder()
        self.recorder.createRecorder(self.args.record)
        call_audio.startTransmit(self.recorder)
        if self.args.tone:
            self.tone = pj.ToneGenerator()
            self.tone.createToneGenerator()
            desc = pj.ToneDesc()
            desc.freq1 = self.args.tone
            desc.freq2 = 0
            # The longest segment pjmedia takes (a 16-bit count of ms), looped without a gap.
            desc.on_msec = 30000
            desc.off_msec = 0
            desc.volume = TONE_VOLUME
            tones = pj.ToneDescVector()
            tones.append(desc)
            self.tone.play(tones, True)
            self.tone.startTransmit(call_audio)
        say("MEDIA", tone=self.args.tone or "none", recording=self.args.record)

    def release_media(self):
        # The recorder writes the WAV header's lengths when it is destroyed.
        self.tone = None
        self.recorder = None


def start_endpoint(log_path):
    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    # Callbacks run only inside libHandleEvents on this thread: no pjsua thread enters Python.
    cfg.uaConfig.threadCnt = 0
    cfg.uaConfig.mainThreadOnly = True
    cfg.logConfig.consoleLevel = 0
    cfg.logConfig.level = 5
    cfg.logConfig.filename = log_path
    cfg.logConfig.msgLogging = True
    # A tone must reach the far end as it is: no silence suppression, no echo canceller.
    cfg.medConfig.noVad = True
    cfg.medConfig.ecTailLen = 0
    # The calls are G.711: the bridge runs at its rate, so nothing is resampled on the way.
    cfg.medConfig.clockRate = 8000
    cfg.medConfig.sndClockRate = 8000
    ep.libInit(cfg)
    # There is no sound card: the null device only clocks the conference bridge.
    ep.audDevManager().setNullDev()
    for codec in ep.codecEnum2():
        ep.codecSetPriority(codec.codecId, 255 if codec.codecId.startswith("PCMU/") else 0)
    transport = pj.TransportConfig()
    transport.boundAddress = "127.0.0.1"
    transport.port = 0
    transport_id = ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, transport)
    ep.libStart()
    return ep, ep.transportGetInfo(transport_id).localName.rsplit(":", 1)[1]


def make_account(args):
    cfg = pj.AccountConfig()
    cfg.idUri = f"sip:{args.user}@127.0.0.1"
    if args.password:
        cfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", args.user, 0, args.password))
    media = cfg.mediaConfig.transportConfig
    media.boundAddress = "127.0.0.1"
    media.port = RTP_PORT_FIRST + 2 * random.randrange(RTP_PORT_RANGE // 2)
    media.portRange = RTP_PORT_FIRST + RTP_PORT_RANGE - media.port
    account = pj.Account()
    account.create(cfg)
    return account


def watch_stdin(stop):
    """Any line on stdin asks for the hang-up; end of input alone does not (a phone run by hand
    with stdin closed stays up for its --duration)."""
    for _ in sys.stdin:
        stop.set()
        return


def run_call(ep, args, stop):
    """Places the call and keeps it until it ends; True if it was ever connected."""
    account = make_account(args)
    phone = Phone(account, args)
    call_prm = pj.CallOpParam(True)
    try:
        phone.makeCall(args.uri, call_prm)
    except pj.Error as e:
        say("FAILED", reason=f"makeCall:{e.status}")
        return False
    started = time.monotonic()
    hung_up_at = None
    while not phone.ended:
        ep.libHandleEvents(20)
        now = time.monotonic()
        if hung_up_at is None:
            held = phone.connected_at is not None and args.duration is not None and now - phone.connected_at >= args.duration
            unanswered = phone.connected_at is None and now - started >= args.answer_timeout
            if stop.is_set() or held or unanswered:
                hung_up_at = now
                phone.hangup(pj.CallOpParam(True))
        elif now - hung_up_at > HANGUP_SECONDS:
            say("FAILED", reason="bye_unanswered")
            break
    connected = phone.connected_at is not None
    if not connected:
        say("FAILED", reason="not_answered")
    phone.release_media()
    # pjsua asserts at libDestroy if a Call object still exists.
    del phone
    del account
    return connected


def goertzel_power(samples, rate, hz):
    """|X(hz)|^2 of the samples (the DFT at exactly hz, also between bins)."""
    coeff = 2.0 * math.cos(2.0 * math.pi * hz / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coeff * s1 - s2, s1
    return s1 * s1 + s2 * s2 - coeff * s1 * s2


def read_samples(path):
    """The recording as floats in -1..1 and its sample rate; no samples if there is none (the
    call never had audio)."""
    if not os.path.exists(path):
        return 8000, []
    with wave.open(path, "rb") as w:
        rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
        raw = w.readframes(w.getnframes())
    if width != 2 or channels != 1:
        raise SystemExit(f"{path}: expected 16-bit mono, got {width * 8}-bit x{channels}")
    return rate, [v / 32768.0 for v in memoryview(raw[: len(raw) // 2 * 2]).cast("h")]


def analyse(path, frequencies):
    rate, samples = read_samples(path)
    n = int(rate * WINDOW_SECONDS)
    total_energy = 0.0
    tone_energy = {f: 0.0 for f in frequencies}
    tone_windows = {f: 0 for f in frequencies}
    sound_windows = 0
    for start in range(0, len(samples) - n + 1, n):
        window = samples[start:start + n]
        energy = sum(x * x for x in window)
        total_energy += energy
        loud = energy > 0 and 10 * math.log10(energy / n) > SILENCE_DBFS
        sound_windows += loud
        for f in frequencies:
            # A sine of amplitude A at f: |X|^2 = (A n / 2)^2 and energy = A^2 n / 2.
            at_f = 2.0 * goertzel_power(window, rate, f) / n
            tone_energy[f] += at_f
            if loud and at_f >= TONE_SHARE * energy:
                tone_windows[f] += 1
    return {
        "seconds": round(len(samples) / rate, 2),
        "seconds_with_sound": round(sound_windows * WINDOW_SECONDS, 2),
        "heard": {str(f): round(min(1.0, tone_energy[f] / total_energy), 3) if total_energy else 0.0
                  for f in frequencies},
        "seconds_with_tone": {str(f): round(tone_windows[f] * WINDOW_SECONDS, 2) for f in frequencies},
    }


def main():
    args = parse_args()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    threading.Thread(target=watch_stdin, args=(stop,), daemon=True).start()
    if os.path.exists(args.record):
        os.remove(args.record)
    ep, sip_port = start_endpoint(args.log)
    say("READY", sip_port=sip_port)
    connected = run_call(ep, args, stop)
    ep.libDestroy()
    print("ANALYSIS " + json.dumps(analyse(args.record, args.listen), sort_keys=True), file=STATUS, flush=True)
    return 0 if connected else 1


if __name__ == "__main__":
    sys.exit(main())
