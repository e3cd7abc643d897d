#!/usr/bin/env python3
"""Mouth-to-ear latency through a conference, measured on one clock: one pjsua2 endpoint places
two calls into it, a talker and a listener. A tone generator plays short bursts into the talker's
call and, at the same time, into a recorder; the listener's call plays into the same recorder.
Both reach the recorder through pjsua's one conference bridge, in the same media clock tick, so
each burst appears in the recording twice: as sent (the "mouth") and, later, as the listener
heard it (the "ear"). The gap between the two onsets is the mouth-to-ear latency: the talker's
encoder and RTP, everything between the calls (nodes, bridges, helper legs), and the listener's
jitter buffer; the phone's own share is the same for every path, so differences between paths
are the paths' own.

Run with the testbed's pjsua2 venv (it uses tone_phone.py's endpoint and account set-up):

    $RES_SCALE_CACHE/pjsua2-venv/bin/python tests/sip-phones/mouth_to_ear.py \\
        --talker sip:8000@127.0.0.1:5060 --listener sip:8000@127.0.0.1:5062 --bursts 20

Status lines as tone_phone.py's: READY, CONNECTED (once per call), MEDIA, DISCONNECTED, FAILED,
and last `RESULT {"latency_ms": [one per burst heard], "bursts": n, "heard": n}`.
"""

import argparse
import json
import time

import pjsua2 as pj

import tone_phone
from tone_phone import say

TONE_HZ = 1000
# A burst shorter than any latency through a node keeps the mouth and ear onsets apart.
BURST_MS = 10
# A sample louder than this (of full scale) starts a burst once the line was quiet for QUIET_MS.
ONSET_LEVEL = 0.05
QUIET_MS = 5


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--talker", required=True, help="the talker's call, e.g. sip:8000@127.0.0.1:5060")
    p.add_argument("--listener", required=True, help="the listener's call")
    p.add_argument("--silent", action="append", default=[], help="a further call that sends and records nothing, placed first "
                   "(a conference of three or more is mixed, one of two may be passed through as it is); repeatable")
    p.add_argument("--user", default="sipp", help="the From user of both calls")
    p.add_argument("--password", help="digest password for --user, if the far end challenges")
    p.add_argument("--bursts", type=int, default=20)
    p.add_argument("--period-ms", type=int, default=500, help="from one burst to the next")
    p.add_argument("--settle", type=float, default=2.0, help="seconds between both calls up and the first burst")
    p.add_argument("--record", default="mouth_to_ear.wav")
    p.add_argument("--log", default="mouth_to_ear.log", help="pjsua's log")
    return p.parse_args()


class Leg(pj.Call):
    """One of the two calls; the main loop reads its state."""

    def __init__(self, account):
        super().__init__(account)
        self.audio = None
        self.ended = False

    def onCallState(self, prm):
        info = self.getInfo()
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED:
            say("CONNECTED", call_id=info.callIdString)
        elif info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.ended = True
            say("DISCONNECTED", code=info.lastStatusCode, reason=info.lastReason.replace(" ", "_"))

    def onCallMediaState(self, prm):
        # Kept in a name: the media vector of a temporary CallInfo is freed under Python.
        info = self.getInfo()
        for media in info.media:
            if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                self.audio = self.getAudioMedia(media.index)


def bursts(period_ms):
    tone = pj.ToneGenerator()
    tone.createToneGenerator()
    desc = pj.ToneDesc()
    desc.freq1, desc.freq2 = TONE_HZ, 0
    desc.on_msec, desc.off_msec = BURST_MS, period_ms - BURST_MS
    desc.volume = tone_phone.TONE_VOLUME
    tones = pj.ToneDescVector()
    tones.append(desc)
    tone.play(tones, True)
    return tone


def run(ep, args):
    """Both calls, the bursts, the hang-up; False if a call was not answered."""
    account = tone_phone.make_account(args)
    silent = [Leg(account) for _ in args.silent]
    talker, listener = Leg(account), Leg(account)
    for leg, uri in list(zip(silent, args.silent)) + [(talker, args.talker), (listener, args.listener)]:
        leg.makeCall(uri, pj.CallOpParam(True))
        deadline = time.monotonic() + args.answer_timeout
        while leg.audio is None and not leg.ended and time.monotonic() < deadline:
            ep.libHandleEvents(20)
        if leg.audio is None:
            say("FAILED", reason=f"not_answered:{uri}")
            return False
    settled = time.monotonic() + args.settle
    while time.monotonic() < settled:
        ep.libHandleEvents(20)
    recorder = pj.AudioMediaRecorder()
    recorder.createRecorder(args.record)
    listener.audio.startTransmit(recorder)
    tone = bursts(args.period_ms)
    # The recorder hears the bursts as they go out; the talker's call sends them on.
    tone.startTransmit(recorder)
    tone.startTransmit(talker.audio)
    say("MEDIA", tone=TONE_HZ, recording=args.record)
    until = time.monotonic() + args.bursts * args.period_ms / 1000 + 0.2
    while time.monotonic() < until and not (talker.ended or listener.ended):
        ep.libHandleEvents(20)
    tone.stopTransmit(talker.audio)
    del tone, recorder  # the recorder writes the WAV header's lengths when destroyed
    legs = silent + [talker, listener]
    for leg in legs:
        if not leg.ended:
            leg.hangup(pj.CallOpParam(True))
    deadline = time.monotonic() + tone_phone.HANGUP_SECONDS
    while not all(leg.ended for leg in legs) and time.monotonic() < deadline:
        ep.libHandleEvents(20)
    del talker, listener, silent, legs, account  # pjsua asserts at libDestroy if a Call object still exists
    return True


def onsets(samples, rate):
    """Sample indexes where a burst starts: loud after at least QUIET_MS of quiet."""
    quiet_needed = rate * QUIET_MS // 1000
    found, quiet = [], quiet_needed
    for i, x in enumerate(samples):
        if abs(x) >= ONSET_LEVEL:
            if quiet >= quiet_needed:
                found.append(i)
            quiet = 0
        else:
            quiet += 1
    return found


def latencies(path, period_ms):
    """Per burst, ms from its mouth onset to its ear onset. Mouth onsets fall on the period's
    grid from the first onset (the generator's own timing); every other onset is an ear onset,
    paired with the last mouth onset before it."""
    rate, samples = tone_phone.read_samples(path)
    found = onsets(samples, rate)
    if not found:
        return 0, []
    period = rate * period_ms / 1000
    first = found[0]
    on_grid = lambda i: abs((i - first) / period - round((i - first) / period)) * period <= rate / 1000
    mouths = [i for i in found if on_grid(i)]
    result = []
    for ear in (i for i in found if not on_grid(i)):
        before = [m for m in mouths if m < ear]
        if before:
            result.append(round((ear - before[-1]) * 1000 / rate, 2))
    return len(mouths), result


def main():
    args = parse_args()
    args.answer_timeout = 15.0
    ep, sip_port = tone_phone.start_endpoint(args.log)
    say("READY", sip_port=sip_port)
    ok = run(ep, args)
    ep.libDestroy()
    sent, heard = latencies(args.record, args.period_ms) if ok else (0, [])
    print("RESULT " + json.dumps({"latency_ms": heard, "bursts": sent, "heard": len(heard)}), file=tone_phone.STATUS, flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
