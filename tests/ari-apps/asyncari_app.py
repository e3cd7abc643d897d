"""An ordinary ARI application written with asyncari (PyPI), unmodified: it answers every
channel that enters its Stasis app and plays a tone to it. It prints each event it receives,
and what it did, as one JSON object per line, so the integration tests can check both.

usage: asyncari_app.py BASE_URL APP USER PASSWORD
"""
import json
import sys

import anyio
import asyncari


def say(**fields):
    print(json.dumps(fields), flush=True)


async def handle(channel_id, channel):
    try:
        await channel.answer()
        say(answered=channel_id)
        playback = await channel.play(media="tone:ring;tonezone=us")
        say(playing=channel_id, playback=playback.id)
    except Exception as e:  # the test reads this line; the app itself keeps going
        say(error=f"{type(e).__name__}: {e}", channel=channel_id)


async def main(base_url, app, user, password):
    async with asyncari.connect(base_url, [app], user, password) as client:
        say(ready=True)
        async for msg in client:
            event = msg._orig_msg
            print(json.dumps(event), flush=True)
            if event["type"] == "StasisStart":
                client.taskgroup.start_soon(handle, event["channel"]["id"], msg.channel)


if __name__ == "__main__":
    try:
        anyio.run(main, *sys.argv[1:5])
    except KeyboardInterrupt:
        pass
