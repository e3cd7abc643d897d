"""The conference: every caller that enters the Stasis application is answered and put into one
mixing bridge, "conf". Written against scale-gateway exactly as against one Asterisk, with the
unmodified asyncari client library (PyPI).

usage: conference.py [--url URL] [--user USER] [--password PASSWORD] [--app APP] [--bridge ID]
Each flag defaults to an environment variable: ARI_URL, ARI_USER, ARI_PASSWORD, ARI_APP,
CONFERENCE_BRIDGE (see --help).
"""
import argparse
import logging
import os
import sys

import anyio
import asyncari
from asyncari.model import OperationError
from httpx import HTTPStatusError

log = logging.getLogger("conference")

# What a refused ARI request raises: asyncari wraps the failures of requests made through the
# client's repositories (client.bridges...), not of those made through an object (bridge...).
ARI_ERRORS = (OperationError, HTTPStatusError)


def http_status(error):
    """The HTTP status of a refused ARI request, if it got an answer."""
    response = getattr(error, "response", None) or getattr(error.__cause__, "response", None)
    return getattr(response, "status_code", None)


class Conference:
    def __init__(self, client, bridge_id):
        self.client = client
        self.bridge_id = bridge_id
        self.lock = anyio.Lock()

    async def bridge(self):
        """The bridge, created (mixing) if it does not exist, e.g. after its node restarted."""
        async with self.lock:
            try:
                return await self.client.bridges.get(bridgeId=self.bridge_id)
            except ARI_ERRORS as e:
                if http_status(e) != 404:
                    raise
            bridge = await self.client.bridges.createWithId(bridgeId=self.bridge_id, type="mixing", name=self.bridge_id)
            log.info("created bridge %s", self.bridge_id)
            return bridge

    async def join(self, channel):
        """Answers a caller and adds it to the bridge."""
        who = f"{channel.id} ({channel.caller['number'] or channel.name})"
        try:
            await channel.answer()
            bridge = await self.bridge()
            await bridge.addChannel(channel=channel.id)
        except ARI_ERRORS as e:
            # The caller stays in the application (it hears nothing) until it hangs up.
            log.error("%s could not join %s: %s (HTTP %s)", who, self.bridge_id, e, http_status(e))
            return
        log.info("%s joined %s", who, self.bridge_id)

    async def run(self):
        async for event in self.client:
            kind = event["type"]
            if kind == "StasisStart":
                self.client.taskgroup.start_soon(self.join, event.channel)
            elif kind == "ChannelLeftBridge" and event["bridge"]["id"] == self.bridge_id:
                channel = event["channel"]
                log.info("%s (%s) left %s", channel["id"], channel["caller"]["number"] or channel["name"], self.bridge_id)


async def serve(args):
    """Runs until the connection to the ARI server ends. asyncari keeps one object per resource
    id for the whole process, bound to the client that made it, so a new connection needs a new
    process: whatever supervises the application (Docker's restart policy, systemd) starts it
    again."""
    async with asyncari.connect(args.url, [args.app], args.user, args.password) as client:
        log.info("connected to %s as application %s", args.url, args.app)
        conference = Conference(client, args.bridge)
        await conference.bridge()
        await conference.run()
    log.error("the event socket to %s closed", args.url)


def parse_args(argv):
    env = os.environ.get
    p = argparse.ArgumentParser(description="Every caller in one mixing bridge, over ARI.")
    p.add_argument("--url", default=env("ARI_URL", "http://127.0.0.1:8088/"), help="ARI server: the gateway, or one Asterisk (env ARI_URL)")
    p.add_argument("--user", default=env("ARI_USER", "app"), help="ARI user (env ARI_USER)")
    p.add_argument("--password", default=env("ARI_PASSWORD"), help="ARI password (env ARI_PASSWORD)")
    p.add_argument("--app", default=env("ARI_APP", "conference"), help="Stasis application name (env ARI_APP)")
    p.add_argument("--bridge", default=env("CONFERENCE_BRIDGE", "conf"), help="id of the mixing bridge (env CONFERENCE_BRIDGE)")
    args = p.parse_args(argv)
    if args.password is None:
        p.error("an ARI password is needed (--password or ARI_PASSWORD)")
    if not args.url.endswith("/"):
        args.url += "/"  # asyncari joins "ari/api-docs/..." onto it
    return args


def main(argv):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        anyio.run(serve, args)
    except KeyboardInterrupt:
        return 0
    except Exception:
        log.exception("the application stops")
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
