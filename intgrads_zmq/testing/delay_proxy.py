"""A TCP proxy that adds a fixed one-way delay, for testing slow links.

The kernel here has no netem, so latency is made in user space: every chunk
read from one side is written to the other ``delay`` seconds after it
arrived. Chunks are queued, not slept on one by one, so the link keeps its
bandwidth and only gains latency (a round trip gains 2 x delay); order is kept.

    python -m intgrads_zmq.testing.delay_proxy --listen 0.0.0.0:5557 --target 127.0.0.1:5556 --delay 0.05

Runs until SIGTERM. Prints ``listening`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time

CHUNK = 1 << 16


def split_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def _read_into(reader: asyncio.StreamReader, queue: asyncio.Queue) -> None:
    """Stamp each chunk with its arrival time; None marks the end."""
    try:
        while chunk := await reader.read(CHUNK):
            await queue.put((time.monotonic(), chunk))
    except ConnectionError:
        pass
    await queue.put((time.monotonic(), None))


async def _write_from(queue: asyncio.Queue, writer: asyncio.StreamWriter, delay: float) -> None:
    """Write each chunk when it is ``delay`` old; close (half) at the end."""
    try:
        while True:
            arrived, chunk = await queue.get()
            wait = arrived + delay - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if chunk is None:
                break
            writer.write(chunk)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def _one_way(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    queue: asyncio.Queue = asyncio.Queue()
    await asyncio.gather(_read_into(reader, queue), _write_from(queue, writer, delay))


class DelayProxy:
    """Accepts on ``listen`` and relays each connection to ``target`` with ``delay`` each way."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], delay: float) -> None:
        self.listen, self.target, self.delay = listen, target, delay
        self.connections = 0
        self.port: int | None = None  # the port listened on (``listen`` may ask for port 0)

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_one_way(client_reader, server_writer, self.delay),
                             _one_way(server_reader, client_writer, self.delay))

    async def serve(self, stop: asyncio.Event) -> None:
        server = await asyncio.start_server(self._relay, *self.listen)
        self.port = server.sockets[0].getsockname()[1]
        print(f"listening on {self.listen[0]}:{self.port} -> {self.target[0]}:{self.target[1]} "
              f"with {self.delay * 1000:.0f} ms each way", flush=True)
        async with server:
            await stop.wait()


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    proxy = DelayProxy(split_address(args.listen), split_address(args.target), args.delay)
    await proxy.serve(stop)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT to accept on")
    parser.add_argument("--target", required=True, help="HOST:PORT to relay to")
    parser.add_argument("--delay", type=float, required=True, help="seconds added in each direction")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
