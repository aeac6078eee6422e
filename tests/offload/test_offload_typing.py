"""Type checkers see through @offload: ``await f(x)`` has f's return type, bad calls are errors."""

from __future__ import annotations

import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def test_mypy_sees_the_decorated_types() -> None:
    """typing_offload.py passes mypy --strict: assert_type holds and the ignores are needed."""
    api = pytest.importorskip("mypy.api")
    out, err, status = api.run(
        [
            "--strict",
            "--warn-unused-ignores",
            "--no-incremental",
            "--cache-dir",
            os.devnull,
            os.path.join(HERE, "typing_offload.py"),
        ]
    )
    assert status == 0, out + err
