"""Tests that block the event loop, to see what ``pytest --loopwatch`` says about them.

    pytest --loopwatch --loopwatch-threshold=0.05 examples/pytest_blocking.py

``test_awaits`` passes; ``test_sleeps_in_the_loop`` and ``test_uses_slow_fixture``
fail with the blocking line and its stack; ``test_expects_a_block`` blocks on
purpose and checks what loopwatch saw. ``--loopwatch-mode=warn`` turns the
failures into warnings, ``--loopwatch-mode=report`` only lists them at the end.
"""

import asyncio
import hashlib
import time

import pytest
import pytest_asyncio


@pytest_asyncio.fixture
async def slow_fixture():
    # CPU-bound work in a fixture blocks the loop too; loopwatch names the fixture.
    hashlib.pbkdf2_hmac("sha256", b"secret", b"salt", 300_000)
    yield


@pytest.mark.asyncio
async def test_awaits():
    await asyncio.sleep(0.1)


@pytest.mark.asyncio
async def test_sleeps_in_the_loop():
    time.sleep(0.15)  # should be: await asyncio.sleep(0.15)


@pytest.mark.asyncio
async def test_uses_slow_fixture(slow_fixture):
    await asyncio.sleep(0)


@pytest.mark.loopwatch(allow=True)
@pytest.mark.asyncio
async def test_expects_a_block(loopwatch):
    time.sleep(0.15)
    await asyncio.sleep(0)  # the block is known once its loop iteration has ended
    assert [block.function for block in loopwatch.blocks] == ["test_expects_a_block"]
