"""A small Starlette service: one route awaits, two block the loop (waiting, computing).

Each answers with the pid of the process that served it (for --workers runs).
"""

import asyncio
import os
import time

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def fast(request):
    await asyncio.sleep(0.001)
    return PlainTextResponse(str(os.getpid()))


async def report(request):
    time.sleep(0.12)  # blocks: waiting
    return PlainTextResponse(str(os.getpid()))


async def user(request):
    deadline = time.thread_time() + 0.12
    while time.thread_time() < deadline: pass  # noqa: E701  (blocks: computing)
    return PlainTextResponse(str(os.getpid()))


app = Starlette(routes=[
    Route("/fast", fast),
    Route("/report", report),
    Route("/users/{user_id}", user),
])
