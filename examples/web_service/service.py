"""A tiny HTTP/1.1 service on asyncio streams, with one handler that blocks the event loop.

    python examples/web_service/service.py             # serve on 127.0.0.1:8080 (blocking login)
    python examples/web_service/service.py --fixed     # the same with the fix applied
    curl localhost:8080/health
    curl -d '{"user": "ada", "password": "lovelace"}' localhost:8080/login

Routes: ``GET /health`` answers at once; ``POST /login`` checks a password
with PBKDF2-HMAC-SHA256 at 600 000 rounds (OWASP's recommendation), 0.1 to
0.2 s of CPU with most OpenSSL builds. Called on the event loop, that hash
stalls every other request, ``/health`` included, for as long as it runs.

The service runs under ``loopwatch.watch(mode="log", on_block=...)`` as it
would in production: each block is logged with its line and counted by the
callback; Ctrl-C stops it and prints the count. ``demo.py`` next to this file
fires load at both versions and compares them.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import logging
import signal
import threading
from collections import Counter
from typing import Any

import loopwatch

ROUNDS = 600_000
SALT = b"loopwatch-example-salt"  # one salt per user in real life
USERS = {  # the stored hash of "lovelace"
    "ada": bytes.fromhex("3c8ba6d148121a68bb5c189e3001efe5e70626211cd22a0c4c029630621c3c4f"),
}
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found"}


def hash_password(password: str) -> bytes:
    """The slow, deliberate part of a login: 0.1 to 0.2 s of CPU."""
    return hashlib.pbkdf2_hmac("sha256", password.encode(), SALT, ROUNDS)


# The fix. loopwatch's advice for this block is 'CPU-bound in C code that releases
# the GIL: @loopwatch.offload("thread")': hashlib lets go of the GIL while it
# hashes, so a thread runs it in parallel with the loop (no pickling, no process).
# ("process" would work too, at the cost of sending each call to another process.)
@loopwatch.offload("thread")
def hash_password_in_thread(password: str) -> bytes:
    """``hash_password``, awaited: it runs in loopwatch's shared thread pool."""
    return hash_password(password)


class Service:
    """The request handlers; ``fixed`` picks how ``/login`` hashes the password."""

    def __init__(self, *, fixed: bool) -> None:
        self.fixed = fixed

    async def login(self, body: bytes) -> tuple[int, dict[str, Any]]:
        try:
            credentials = json.loads(body)
            user, password = credentials["user"], credentials["password"]
        except (ValueError, KeyError, TypeError):
            return 400, {"error": 'expected {"user": ..., "password": ...}'}
        if self.fixed:
            digest = await hash_password_in_thread(password)
        else:
            digest = hash_password(password)  # runs on the event loop: nothing else does
        if hmac.compare_digest(digest, USERS.get(user, b"")):
            return 200, {"user": user, "ok": True}
        return 401, {"user": user, "ok": False}

    async def route(self, method: str, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if (method, path) == ("GET", "/health"):
            return 200, {"status": "up"}
        if (method, path) == ("POST", "/login"):
            return await self.login(body)
        return 404, {"error": f"no route for {method} {path}"}

    async def handle_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Serve requests on one keep-alive connection until the client closes it."""
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    return  # the client closed the connection between requests
                request_line, *header_lines = head.decode("latin-1").split("\r\n")
                headers = dict(
                    (name.strip().lower(), value.strip())
                    for name, _, value in (line.partition(":") for line in header_lines if line)
                )
                try:
                    method, path, _version = request_line.split(" ", 2)
                    body = await reader.readexactly(int(headers.get("content-length", "0")))
                except ValueError:
                    status, payload = 400, {"error": "malformed request"}
                    headers["connection"] = "close"
                else:
                    status, payload = await self.route(method, path, body)
                data = json.dumps(payload).encode()
                writer.write(
                    f"HTTP/1.1 {status} {REASONS[status]}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
                    .encode() + data
                )
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away mid-request
        finally:
            writer.close()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
        """Listen on host:port (0: any free port; ``server.sockets[0]`` says which)."""
        return await asyncio.start_server(self.handle_connection, host, port)


class BlockCounter:
    """An ``on_block`` callback: count blocks per line, as a metrics exporter would.

    loopwatch calls it from its watchdog thread, so it only does quick,
    thread-safe work (in production: increment a Prometheus counter, say).
    """

    def __init__(self) -> None:
        self.by_site: Counter[str] = Counter()
        self.blocks: list[loopwatch.Block] = []
        self._lock = threading.Lock()

    def __call__(self, block: loopwatch.Block) -> None:
        with self._lock:
            self.by_site[block.site or "<unknown>"] += 1
            self.blocks.append(block)


async def serve(port: int, *, fixed: bool) -> None:
    """Serve until Ctrl-C or SIGTERM (a service manager's stop), then close cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):  # Windows: Ctrl-C raises instead
            pass
    server = await Service(fixed=fixed).start(port=port)
    port = server.sockets[0].getsockname()[1]  # the one picked, if port was 0
    version = "fixed" if fixed else "blocking"
    print(f"serving the {version} version on http://127.0.0.1:{port} (Ctrl-C stops)", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8080, help="0: any free port")
    parser.add_argument("--fixed", action="store_true", help="hash passwords off the loop")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    counter = BlockCounter()
    # Production settings: log each block (a WARNING on the "loopwatch" logger)
    # and count it; 50 ms is long enough that a healthy service never trips it.
    with loopwatch.watch(threshold=0.05, mode="log", on_block=counter):
        try:
            asyncio.run(serve(args.port, fixed=args.fixed))
        except KeyboardInterrupt:
            pass
        except OSError as error:  # most likely the port is taken
            parser.exit(1, f"cannot serve on port {args.port}: {error.strerror}; "
                           f"try --port with another number (0: any free port)\n")
    print(f"blocks over 50 ms, by line: {dict(counter.by_site) or 'none'}")


if __name__ == "__main__":
    main()
