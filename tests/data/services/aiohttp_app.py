"""A small aiohttp service: the same routes as asgi_app, for python -m aiohttp.web."""

import asyncio
import time

from aiohttp import web


async def fast(request):
    await asyncio.sleep(0.001)
    return web.Response(text="ok")


async def report(request):
    time.sleep(0.12)  # blocks: waiting
    return web.Response(text="report")


async def user(request):
    time.sleep(0.12)  # blocks: waiting, for a user
    return web.Response(text=request.match_info["user_id"])


def init(argv=None):
    app = web.Application()
    app.router.add_get("/fast", fast)
    app.router.add_get("/report", report)
    app.router.add_get("/users/{user_id}", user)
    return app


def app():
    """For gunicorn's aiohttp worker: ``gunicorn 'aiohttp_app:app()'``."""
    return init()
