"""Drive the gateway with aioquic's HTTP/3 example client (an implementation nobody here wrote).

Imports `HttpClient` from `http3_client.py` of aioquic's source distribution (the directory
is given by --examples), then does GET /healthz and POST /v1/messages and prints one JSON
line: {"healthz": status, "send": status}.
"""

import argparse
import asyncio
import json
import sys
from urllib.parse import urlparse


def status_of(events):
    from aioquic.h3.events import HeadersReceived

    for event in events:
        if isinstance(event, HeadersReceived):
            for name, value in event.headers:
                if name == b":status":
                    return int(value)
    return None


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--credential", required=True)
    parser.add_argument("--body", required=True)
    args = parser.parse_args()

    sys.path.insert(0, args.examples)
    from http3_client import HttpClient  # noqa: E402  (aioquic's example client)
    from aioquic.asyncio.client import connect
    from aioquic.h3.connection import H3_ALPN
    from aioquic.quic.configuration import QuicConfiguration

    url = urlparse(args.url)
    configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    configuration.load_verify_locations(args.ca)
    with open(args.body, "rb") as f:
        body = f.read()
    async with connect(url.hostname, url.port, configuration=configuration, create_protocol=HttpClient) as client:
        health = await client.get(f"{args.url}/healthz")
        send = await client.post(
            f"{args.url}/v1/messages",
            data=body,
            headers={
                "content-type": "application/x-protobuf",
                "authorization": f"Bearer {args.credential}",
            },
        )
    print(json.dumps({"healthz": status_of(health), "send": status_of(send)}))


asyncio.run(main())
