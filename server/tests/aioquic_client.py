#!/usr/bin/env python3
"""One HTTP/3 request with aioquic's H3Connection: an HTTP/3 client independent of the server's own
stack (h3 + quinn), used by server/tests/h3_interop.rs.

usage: aioquic_client.py HOST PORT CAFILE METHOD PATH BODY_FILE|none [CONTENT_TYPE]

The server certificate must chain to CAFILE and be valid for the name `localhost`. Prints one JSON
object on stdout: {"status": N, "headers": {name: value}, "body": "<UTF-8 text>", "alpn": "h3"}.
Exits 2 on usage errors and 1 when the request fails (the reason on stderr).
"""

import asyncio
import json
import sys

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, StreamReset

TIMEOUT_S = 15


class H3Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._http = H3Connection(self._quic)
        self._waiters = {}
        self._responses = {}

    def quic_event_received(self, event):
        if isinstance(event, ConnectionTerminated):
            for waiter in self._waiters.values():
                if not waiter.done():
                    waiter.set_exception(
                        ConnectionError(f"connection closed: {event.reason_phrase!r} ({event.error_code})")
                    )
            return
        if isinstance(event, StreamReset) and event.stream_id in self._waiters:
            self._waiters.pop(event.stream_id).set_exception(
                ConnectionError(f"stream reset with error code {event.error_code}")
            )
            return
        for h3_event in self._http.handle_event(event):
            self._h3_event(h3_event)

    def _h3_event(self, event):
        stream_id = getattr(event, "stream_id", None)
        response = self._responses.get(stream_id)
        if response is None:
            return
        if isinstance(event, HeadersReceived):
            if "status" not in response:
                for name, value in event.headers:
                    if name == b":status":
                        response["status"] = int(value)
                    elif not name.startswith(b":"):
                        response["headers"][name.decode()] = value.decode()
        elif isinstance(event, DataReceived):
            response["body"] += event.data
        if getattr(event, "stream_ended", False):
            waiter = self._waiters.pop(stream_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(self._responses.pop(stream_id))

    async def request(self, method, authority, path, body, content_type):
        stream_id = self._quic.get_next_available_stream_id()
        headers = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
            (b"user-agent", b"aioquic-interop-test"),
        ]
        if body is not None:
            headers.append((b"content-type", content_type.encode()))
            headers.append((b"content-length", str(len(body)).encode()))
        waiter = self._loop.create_future()
        self._waiters[stream_id] = waiter
        self._responses[stream_id] = {"headers": {}, "body": b""}
        self._http.send_headers(stream_id=stream_id, headers=headers, end_stream=body is None)
        if body is not None:
            self._http.send_data(stream_id=stream_id, data=body, end_stream=True)
        self.transmit()
        return await asyncio.wait_for(waiter, timeout=TIMEOUT_S)


async def main(host, port, cafile, method, path, body, content_type):
    configuration = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN, server_name="localhost")
    configuration.load_verify_locations(cafile)
    async with connect(host, port, configuration=configuration, create_protocol=H3Client) as client:
        response = await client.request(method, f"localhost:{port}", path, body, content_type)
        alpn = client._quic.tls.alpn_negotiated
        client.close()
    if "status" not in response:
        raise ConnectionError("the response has no :status")
    return {
        "status": response["status"],
        "headers": response["headers"],
        "body": response["body"].decode("utf-8", errors="replace"),
        "alpn": alpn,
    }


if __name__ == "__main__":
    if len(sys.argv) not in (7, 8):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    host, port, cafile, method, path, body_file = sys.argv[1:7]
    content_type = sys.argv[7] if len(sys.argv) == 8 else "application/json"
    body = None
    if body_file != "none":
        with open(body_file, "rb") as f:
            body = f.read()
    try:
        result = asyncio.run(
            asyncio.wait_for(main(host, int(port), cafile, method, path, body, content_type), TIMEOUT_S + 5)
        )
    except Exception as e:  # noqa: BLE001 - any failure is reported the same way
        print(f"aioquic_client: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
