"""A plain WebSocket client of /ari/events (aiohttp, as aioari uses it): prints every frame
as one JSON line, except BenchEvent frames (the test hook's bursts), which it only counts and
checks for order. Prints {"summary": ...} when it ends: after --expect bench events (received
or reported lost), after --idle seconds without a frame, or when the server closes the socket
({"closed": code} first).

usage: ws_events.py URL APPS USER PASSWORD [--expect N] [--idle S] [--slow K:MS] [--report-gaps] [--latency]
  --slow K:MS  sleep MS milliseconds after every K frames (a slow application)
  --latency    report p50/p99 of (arrival - sent_ns) over the bench events, in microseconds
"""
import argparse
import asyncio
import json
import time

import aiohttp


async def main(a):
    query = f"app={a.apps}&api_key={a.user}:{a.password}"
    if a.report_gaps:
        query += "&reportGaps=true"
    url = f"{a.url.replace('http', 'ws', 1)}/ari/events?{query}"
    bench, lost, out_of_order, last_seq, frames, delays = 0, 0, 0, {}, 0, []
    started = None
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, autoping=True, max_msg_size=0) as ws:
            print(json.dumps({"ready": True}), flush=True)
            while True:
                if a.expect and bench + lost >= a.expect:
                    break
                try:
                    msg = await asyncio.wait_for(ws.receive(), a.idle)
                except asyncio.TimeoutError:
                    break
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                    print(json.dumps({"closed": ws.close_code, "reason": str(msg.extra or "")}), flush=True)
                    break
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                frames += 1
                started = started or time.monotonic()
                event = json.loads(msg.data)
                if event.get("type") == "BenchEvent":
                    bench += 1
                    if a.latency:
                        delays.append((time.time_ns() - event["sent_ns"]) / 1000)
                    key = (event.get("application"), event.get("asterisk_id"))
                    if key in last_seq and event["seq"] <= last_seq[key]:
                        out_of_order += 1
                    last_seq[key] = event["seq"]
                else:
                    if event.get("type") == "EventsLost":
                        lost += event.get("count", 0)
                    print(json.dumps(event), flush=True)
                if a.slow_every and frames % a.slow_every == 0:
                    await asyncio.sleep(a.slow_ms / 1000)
    elapsed = time.monotonic() - started if started else 0.0
    summary = {"bench": bench, "lost": lost, "out_of_order": out_of_order, "frames": frames, "seconds": round(elapsed, 3)}
    if delays:
        delays.sort()
        summary["latency_us"] = {q: round(delays[min(len(delays) - 1, int(len(delays) * f))]) for q, f in (("p50", 0.5), ("p99", 0.99))}
    print(json.dumps({"summary": summary}), flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("apps")
    p.add_argument("user")
    p.add_argument("password")
    p.add_argument("--expect", type=int, default=0)
    p.add_argument("--idle", type=float, default=3600)
    p.add_argument("--slow", default="")
    p.add_argument("--report-gaps", action="store_true")
    p.add_argument("--latency", action="store_true")
    a = p.parse_args()
    a.slow_every, a.slow_ms = (int(x) for x in a.slow.split(":")) if a.slow else (0, 0)
    asyncio.run(main(a))
