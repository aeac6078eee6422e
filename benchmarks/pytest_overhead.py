"""What ``pytest --loopwatch`` costs on a suite of many short async tests.

Generates a suite of short pytest-asyncio tests (default 500, in 10 modules,
some with an async fixture) into a temporary directory, then runs it with and
without ``--loopwatch``, interleaved so that machine noise hits both alike, and
prints the median wall time of each and their ratio. The target is <= 1.05x.

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

import pytest
import pytest_asyncio


@pytest_asyncio.fixture
async def resource():
    await asyncio.sleep(0)
    yield {"ready": True}
    await asyncio.sleep(0)

'''

TEST = '''
@pytest.mark.asyncio
async def test_{n}({fixture}):
    await asyncio.sleep(0)
    total = sum(range({n} % 50 + 10))
    assert total >= 0
'''

INI = """\
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
"""


def generate(root: Path, tests: int, modules: int = 10) -> None:
    """Write the suite: `tests` tests over `modules` files; every fourth uses a fixture."""
    (root / "pytest.ini").write_text(INI)
    per_module = -(-tests // modules)
    for m in range(modules):
        body = [MODULE_HEAD]
        for n in range(m * per_module, min(tests, (m + 1) * per_module)):
            body.append(TEST.format(n=n, fixture="resource" if n % 4 == 0 else ""))
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

    watched = ["--loopwatch", f"--loopwatch-threshold={args.threshold}"]
    with tempfile.TemporaryDirectory(prefix="loopwatch-bench-") as tmp:
        root = Path(tmp)
        generate(root, args.tests)
        run_once(root, [])  # warm the import and bytecode caches
        plain: list[Run] = []
        loopwatch: list[Run] = []
        for _ in range(args.repeat):
            plain.append(run_once(root, []))
            loopwatch.append(run_once(root, watched))

    def median(runs: list[Run], index: int) -> float:
        return statistics.median(r[index] for r in runs)

    def best(runs: list[Run], index: int) -> float:
        return min(r[index] for r in runs)

    columns = range(3)
    print(f"{args.tests} short pytest-asyncio tests, {args.repeat} interleaved runs each")
    print(f"{'':24}{'process wall':>14}{'pytest says':>14}{'process CPU':>14}   process walls")
    for label, runs in (("plain, median", plain), ("--loopwatch, median", loopwatch)):
        walls = ", ".join(f"{r[0]:.2f}" for r in runs)
        cells = "".join(f"{median(runs, i):>13.2f}s" for i in columns)
        print(f"{label:24}{cells}   [{walls}]")
    ratios = "".join(f"{median(loopwatch, i) / median(plain, i):>13.3f}x" for i in columns)
    print(f"{'ratio of medians':24}{ratios}")
    # On a busy machine noise only ever adds time: the fastest runs compare the costs.
    ratios = "".join(f"{best(loopwatch, i) / best(plain, i):>13.3f}x" for i in columns)
    print(f"{'ratio of fastest runs':24}{ratios}")

if __name__ == "__main__":
    main()
