"""aioari (PyPI), unmodified: connects (resources.json, then every api-docs file at the
basePath it names), lists the channels and the Asterisk info, prints them as JSON, exits.

usage: aioari_list.py BASE_URL USER PASSWORD
"""
import asyncio
import json
import sys

import aioari


async def main(base_url, user, password):
    client = await aioari.connect(base_url, user, password)
    try:
        channels = await client.channels.list()
        print(json.dumps({"channels": sorted(c.id for c in channels)}), flush=True)
        info = await client.asterisk.getInfo()
        print(json.dumps({"info": info}), flush=True)
    finally:
        await client.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
