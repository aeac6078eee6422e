"""Checked by mypy (test_offload_typing.py), never run: what type checkers see through @offload."""

from __future__ import annotations

from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, assert_type

from loopwatch.offload import offload


@offload("process")
def parse(blob: bytes, *, strict: bool = False) -> dict[str, int]:
    return {}


@offload("thread")
async def fetch(url: str) -> bytes:
    return b""


@offload
def auto(n: int) -> float:
    return n / 2


@offload(ThreadPoolExecutor())
def with_executor(n: int) -> str:
    return str(n)


class Service:
    @offload("thread")
    def handle(self, n: int) -> int:
        return n

    @classmethod
    @offload("process")
    def build(cls, name: str) -> Service:
        return cls()

    @staticmethod
    @offload("thread")
    def helper(x: int) -> list[int]:
        return [x]


async def usage() -> None:
    assert_type(await parse(b"x", strict=True), dict[str, int])
    assert_type(await fetch("u"), bytes)
    assert_type(await auto(3), float)
    assert_type(await with_executor(3), str)
    assert_type(parse(b"x"), Coroutine[Any, Any, dict[str, int]]).close()
    service = Service()
    assert_type(await service.handle(1), int)
    assert_type(await Service.build("a"), Service)
    assert_type(await Service.helper(2), list[int])
    await parse("not bytes")  # type: ignore[arg-type]
    await fetch()  # type: ignore[call-arg]
