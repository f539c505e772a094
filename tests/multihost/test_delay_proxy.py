"""The delay proxy the slow-link test relies on: bytes intact and in order,
each direction late by at least the delay, and a close passed on. In process,
on loopback; no namespaces needed."""

from __future__ import annotations

import asyncio
import os
import time

from intgrads_zmq.testing.delay_proxy import DelayProxy

DELAY = 0.05


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _through_proxy(check) -> None:
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    proxy = DelayProxy(("127.0.0.1", 0), ("127.0.0.1", echo.sockets[0].getsockname()[1]), DELAY)
    stop = asyncio.Event()
    serving = asyncio.create_task(proxy.serve(stop))
    while proxy.port is None:
        await asyncio.sleep(0.01)
    try:
        await asyncio.wait_for(check(proxy.port), 30)
    finally:
        stop.set()
        await serving
        echo.close()


def test_bytes_arrive_intact_in_order_and_one_round_trip_late():
    payload = os.urandom(3 << 20)  # many chunks each way

    async def check(port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        start = time.monotonic()
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        round_trip = time.monotonic() - start
        writer.write(payload)
        echoed = await reader.readexactly(len(payload))
        writer.write_eof()
        assert await reader.read() == b""  # the close went through to the echo server and back
        writer.close()
        assert echoed == payload
        assert round_trip >= 2 * DELAY  # a lower bound only: the proxy never forwards early

    asyncio.run(_through_proxy(check))
