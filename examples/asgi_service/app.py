"""A small Starlette service with two handlers that block its event loop.

    python -m loopwatch run --threshold 0.05 -m uvicorn app:app --workers 2

``GET /health`` awaits; ``GET /reports/{day}`` calls a synchronous client
(``time.sleep`` stands in for it) and ``POST /login`` hashes a password on the
loop (PBKDF2, with as many rounds as take 80 ms on this machine: OpenSSL
builds differ by 2x). With ``ASGI_SERVICE_FIXED=1`` both run through ``@loopwatch.offload``:
the client in a thread, the hash too (hashlib's PBKDF2 releases the GIL).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import loopwatch

FIXED = os.environ.get("ASGI_SERVICE_FIXED") == "1"


def fetch_report(day: str) -> dict[str, object]:
    time.sleep(0.08)  # a synchronous HTTP client, a legacy database driver...
    return {"day": day, "rows": 42}


def hash_password(password: str) -> str:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), b"salt", ROUNDS).hex()


if FIXED:
    fetch_report = loopwatch.offload("thread")(fetch_report)
    hash_password = loopwatch.offload("thread")(hash_password)


async def health(request: Request) -> JSONResponse:
    await asyncio.sleep(0)
    return JSONResponse({"status": "up", "pid": os.getpid()})


async def report(request: Request) -> JSONResponse:
    day = request.path_params["day"]
    rows = await fetch_report(day) if FIXED else fetch_report(day)
    return JSONResponse(rows)


async def login(request: Request) -> JSONResponse:
    body = await request.json()
    digest = await hash_password(body["password"]) if FIXED else hash_password(body["password"])
    return JSONResponse({"user": body["user"], "ok": bool(digest)})


app = Starlette(routes=[
    Route("/health", health),
    Route("/reports/{day}", report),
    Route("/login", login, methods=["POST"]),
])


def _rounds_for(seconds: float) -> int:
    # CPU time, not wall time: on a busy machine, wall time also counts waiting for a CPU
    start = time.thread_time()
    hashlib.pbkdf2_hmac("sha256", b"calibrate", b"salt", 20_000)
    return max(20_000, round(20_000 * seconds / max(time.thread_time() - start, 1e-6)))


ROUNDS = _rounds_for(0.08)
