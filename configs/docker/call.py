"""`make call`: callers into the running Dockerized pool (`make run`), through Kamailio.

Each caller is one SIPp (configs/docker/caller.xml) that dials 8000, sends audio and keeps the
call up for a few seconds. Meanwhile this finds each caller's channel on the nodes (by its
caller ID, asking each node's own ARI), and asks the gateway whether the channel is in bridge
`conf` (what the conference application sees), each node what it holds itself, and the node
how much audio went each way. Exits 0 only if every caller got through and is in `conf`, its
node received its audio and, when someone else is in `conf` too, sent it the conference.

usage: call.py [--callers N] [--hold SECONDS]
RES_SCALE_DEMO_NET: the network's first three octets (default 10.250.53), as for `make run`.
"""
import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

NET = os.environ.get("RES_SCALE_DEMO_NET", "10.250.53")
KAMAILIO = f"{NET}.20"
GATEWAY = (f"http://{NET}.30:8088/ari", "app", "demo-app-secret")
NODES = {name: (f"http://{NET}.{host}:8088/ari", "scale-gateway", "demo-ari-secret") for name, host in (("node1", 21), ("node2", 22))}
BRIDGE = "conf"
SCENARIO = Path(__file__).with_name("caller.xml")
# The pool is on a local network: a proxy from the environment must not be asked for it.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
# How long the callers have to show up in the bridge once SIPp runs; the calls last longer, so
# that what is measured afterwards (audio, each node's view) is measured while they are up.
JOIN_TIMEOUT = 5.0


def get(ari, path):
    """GET on an ARI; the JSON answer, or None for a 404."""
    url, user, password = ari
    request = urllib.request.Request(url + path)
    request.add_header("Authorization", "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
    try:
        with HTTP.open(request, timeout=5) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return None
        raise


def local_address():
    """This host's address on the pool's network (the one Kamailio and the nodes reach)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.connect((KAMAILIO, 5060))
    address = probe.getsockname()[0]
    probe.close()
    return address


def free_udp_port(address):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


class Caller:
    def __init__(self, name, address, hold, workdir):
        self.name = name
        self.out = workdir / f"{name}.out"
        self.errors = workdir / f"{name}-errors.log"
        args = ["sipp", "-sf", str(SCENARIO), "-s", "8000", "-key", "caller", name,
                "-i", address, "-p", str(free_udp_port(address)), "-mp", str(free_udp_port(address)),
                "-d", str(int(hold * 1000)), "-m", "1", "-timeout", f"{int(hold) + 20}s", "-timeout_error",
                "-nostdin", "-trace_err", "-error_file", str(self.errors), f"{KAMAILIO}:5060"]
        with open(self.out, "w") as out:
            self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
        self.node = None
        self.channel = None

    def find(self):
        """Looks for this caller's channel on every node: the one from Kamailio (pjsip.conf
        [kamailio]) with the caller's name as caller ID."""
        for node, ari in NODES.items():
            for channel in get(ari, "/channels") or []:
                if channel["name"].startswith("PJSIP/kamailio-") and channel["caller"]["number"] == self.name:
                    self.node, self.channel = node, channel
                    return True
        return False

    def rtp(self):
        """(packets received, packets sent) by the node on this call, or None."""
        stats = get(NODES[self.node], f"/channels/{self.channel['id']}/rtp_statistics")
        return (stats["rxcount"], stats["txcount"]) if stats else None

    def finish(self, within):
        """SIPp's verdict: None if the call went as scripted, else what went wrong."""
        try:
            code = self.process.wait(timeout=within)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return f"SIPp did not finish within {within:.0f} s"
        if code == 0:
            return None
        text = self.errors.read_text(errors="replace") if self.errors.exists() else self.out.read_text(errors="replace")
        return f"SIPp exited with {code}: {text.strip()[-600:]}"


def bridge_members(ari):
    bridge = get(ari, f"/bridges/{BRIDGE}")
    return None if bridge is None else set(bridge["channels"])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--callers", type=int, default=2)
    p.add_argument("--hold", type=float, default=10.0, help="seconds each call stays up (default 10, at least 8)")
    args = p.parse_args()
    if args.hold < JOIN_TIMEOUT + 3:
        p.error(f"--hold must be at least {JOIN_TIMEOUT + 3:.0f} s")

    try:
        info = get(GATEWAY, "/asterisk/info")
        address = local_address()
    except (OSError, ValueError) as e:
        info = e
    if not isinstance(info, dict):
        sys.exit(f"call: the pool's gateway does not answer at {GATEWAY[0]} ({info or 'not found'}): start the pool with `make run`")
    if bridge_members(GATEWAY) is None:
        sys.exit(f"call: the gateway has no bridge {BRIDGE}: is the conference application up (docker logs res-scale-demo-conference)?")

    workdir = Path(tempfile.mkdtemp(prefix="res-scale-call-"))
    print(f"call: {args.callers} caller(s) from {address} dial sip:8000@{KAMAILIO}:5060, {args.hold:.0f} s each (SIPp output: {workdir})")
    callers = []
    for i in range(args.callers):
        callers.append(Caller(f"caller{i + 1}", address, args.hold, workdir))
        time.sleep(0.3)  # in order, so that Kamailio's round robin alternates

    # Until every caller is in the gateway's bridge (or the time is up); then, a second later
    # and while the calls are still up, the bridge again, each node's own view and the audio.
    deadline = time.monotonic() + JOIN_TIMEOUT
    while time.monotonic() < deadline:
        for caller in callers:
            if caller.channel is None:
                caller.find()
        members = bridge_members(GATEWAY) or set()
        if all(c.channel and c.channel["id"] in members for c in callers):
            break
        time.sleep(0.3)
    time.sleep(1.0)
    members = bridge_members(GATEWAY) or set()
    node_bridges = {node: bridge_members(ari) for node, ari in NODES.items()}
    rtp = {c.name: c.rtp() if c.channel else None for c in callers}

    failures = 0
    for caller in callers:
        if caller.channel is None:
            print(f"{caller.name}: NOT FOUND on any node (no channel with caller ID {caller.name})")
            failures += 1
            continue
        joined = caller.channel["id"] in members
        received, sent = rtp[caller.name] or (0, 0)
        # A mixing bridge sends a caller the others' audio: nothing while it is alone in it.
        audio = received > 0 and (sent > 0 or not joined or len(members) < 2)
        print(f"{caller.name}: on {caller.node} (channel {caller.channel['id']}, {caller.channel['name']}), "
              f"{'IN' if joined else 'NOT in'} bridge {BRIDGE}, audio {received} packets in / {sent} out")
        failures += (not joined) + (not audio)
    names = {c.channel["id"]: c.name for c in callers if c.channel}

    def named(ids):
        return ", ".join(f"{i} ({names.get(i, 'helper call of another node')})" for i in sorted(ids)) or "no channels"

    print(f"bridge {BRIDGE} through the gateway: {named(members)}")
    for node, held in node_bridges.items():
        print(f"  {node} itself: " + (f"no bridge {BRIDGE}" if held is None else f"bridge {BRIDGE} with {named(held)}"))

    for caller in callers:
        problem = caller.finish(within=args.hold + 25)
        if problem:
            print(f"{caller.name}: {problem}")
            failures += 1
    if failures:
        print(f"call: FAILED ({failures} problem(s)); the conference application says why a caller "
              f"did not join: docker logs res-scale-demo-conference; SIPp's output: {workdir}")
        sys.exit(1)
    shutil.rmtree(workdir)
    print(f"call: OK, every caller was in bridge {BRIDGE}, with audio")


if __name__ == "__main__":
    main()
