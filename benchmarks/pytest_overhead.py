"""What ``pytest --loopwatch`` and ``--loopwatch-strict`` cost on a suite of many short async tests.

Generates a suite of short pytest-asyncio tests (default 500, in 10 modules;
every fourth with an async fixture, every fifth with a sync fixture that writes
a file, every tenth making one short blocking call on the loop: ``os.path.exists``)
into a temporary directory, then runs it plain, with ``--loopwatch`` and with
``--loopwatch-strict --loopwatch-mode=report``, interleaved so that machine
noise hits all alike, and prints the median and fastest wall times and their
ratios to the plain run. Targets: ``--loopwatch`` <= 1.05x, strict <= 1.15x.

    python benchmarks/pytest_overhead.py [--tests 500] [--repeat 5]
"""

from __future__ import annotations

import argparse
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODULE_HEAD = '''\
import asyncio
import os

import pytest
import pytest_asyncio


@pytest_asyncio.fixture
async def resource():
    await asyncio.sleep(0)
    yield {"ready": True}
    await asyncio.sleep(0)


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("data")
    return path

'''

TEST = '''
@pytest.mark.asyncio
async def test_{n}({fixtures}):
    await asyncio.sleep(0)
    total = sum(range({n} % 50 + 10))
    assert total >= 0{blocking}
'''
BLOCKING = "\n    assert os.path.exists(__file__)"

INI = """\
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""


def generate(root: Path, tests: int, modules: int = 10) -> None:
    """Write the suite: `tests` tests over `modules` files (see the module's docstring)."""
    (root / "pytest.ini").write_text(INI)
    per_module = -(-tests // modules)
    for m in range(modules):
        body = [MODULE_HEAD]
        for n in range(m * per_module, min(tests, (m + 1) * per_module)):
            fixtures = ["resource"] * (n % 4 == 0) + ["data_file"] * (n % 5 == 0)
            body.append(TEST.format(
                n=n, fixtures=", ".join(fixtures), blocking=BLOCKING if n % 10 == 0 else ""
            ))
        (root / f"test_generated_{m:02}.py").write_text("".join(body))


Run = tuple[float, float, float]
"""Process wall time, pytest's own reported duration, CPU time of the process (all threads)."""


def run_once(root: Path, extra: list[str]) -> Run:
    """Run the suite once in a fresh interpreter."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=root, capture_output=True, text=True)
    wall = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    if done.returncode != 0:
        sys.exit(f"suite failed ({' '.join(extra) or 'plain'}):\n{done.stdout}\n{done.stderr}")
    found = re.search(r"passed in ([\d.]+)s", done.stdout)
    return wall, float(found.group(1)) if found else float("nan"), cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threshold", default="0.1")
    args = parser.parse_args()

    modes = {
        "plain": [],
        "--loopwatch": ["--loopwatch", f"--loopwatch-threshold={args.threshold}"],
        "--loopwatch-strict": [
            "--loopwatch-strict", "--loopwatch-mode=report",
            f"--loopwatch-threshold={args.threshold}",
        ],
    }
    runs: dict[str, list[Run]] = {label: [] for label in modes}
    with tempfile.TemporaryDirectory(prefix="loopwatch-bench-") as tmp:
        root = Path(tmp)
        generate(root, args.tests)
        run_once(root, [])  # warm the import and bytecode caches
        for _ in range(args.repeat):
            for label, extra in modes.items():
                runs[label].append(run_once(root, extra))

    def median(label: str, index: int) -> float:
        return statistics.median(r[index] for r in runs[label])

    def best(label: str, index: int) -> float:
        return min(r[index] for r in runs[label])

    columns = range(3)
    print(f"{args.tests} short pytest-asyncio tests, {args.repeat} interleaved runs each")
    print(f"{'':36}{'process wall':>14}{'pytest says':>14}{'process CPU':>14}   process walls")
    for label in modes:
        walls = ", ".join(f"{r[0]:.2f}" for r in runs[label])
        cells = "".join(f"{median(label, i):>13.2f}s" for i in columns)
        print(f"{label + ', median':36}{cells}   [{walls}]")
    for label in list(modes)[1:]:
        ratios = "".join(f"{median(label, i) / median('plain', i):>13.3f}x" for i in columns)
        print(f"{label + ', ratio of medians':36}{ratios}")
        # On a busy machine noise only ever adds time: the fastest runs compare the costs.
        ratios = "".join(f"{best(label, i) / best('plain', i):>13.3f}x" for i in columns)
        print(f"{label + ', ratio of fastest':36}{ratios}")


if __name__ == "__main__":
    main()
