"""A MongoDB wire-protocol server for the tests: mongoeco's proxy over its in-memory engine.

Runs under the Python >= 3.13 of ``.venv-mongo`` (``make mongo-venv``), never the project's
venv. It listens on 127.0.0.1 (``--port 0``: a free port), prints one line with its URI,
e.g. ``mongodb://127.0.0.1:40123/?directConnection=true``, and serves until it gets
SIGTERM/SIGINT or its standard input closes (so it dies with the test run that started it).

    .venv-mongo/bin/python tests/mongo_server.py [--host 127.0.0.1] [--port 0]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys


async def serve(host: str, port: int) -> None:
    from mongoeco.engines.memory import MemoryEngine
    from mongoeco.wire.proxy import AsyncMongoEcoProxyServer

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def stdin_closed() -> None:
        if not sys.stdin.buffer.read1(1 << 16):  # EOF: whoever started us is gone
            loop.remove_reader(sys.stdin.fileno())
            stop.set()

    if not sys.stdin.isatty():
        loop.add_reader(sys.stdin.fileno(), stdin_closed)

    async with AsyncMongoEcoProxyServer(host=host, port=port, engine=MemoryEngine()) as server:
        print(server.address.uri, flush=True)
        await stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 = any free port")
    args = ap.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
