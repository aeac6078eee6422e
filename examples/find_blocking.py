"""The smallest example: watch a few async requests, then print what blocked the loop.

    python examples/find_blocking.py

Each request awaits a little (fine), then calls a synchronous database driver
(``time.sleep`` stands in for it), which blocks the event loop: while one
request waits for its driver, no other request can run. ``loopwatch.watch()``
names the line; the report says how long the loop was stuck and why.
"""

from __future__ import annotations

import asyncio
import time

import loopwatch


def load_user_from_legacy_db(user_id: int) -> dict[str, object]:
    time.sleep(0.2)  # a synchronous driver call: this is what loopwatch will name
    return {"id": user_id, "name": "Ada"}


async def handle_request(user_id: int) -> dict[str, object]:
    await asyncio.sleep(0.01)  # parsing, auth...: fine
    return load_user_from_legacy_db(user_id)


async def main() -> None:
    start = time.perf_counter()
    results = await asyncio.gather(*(handle_request(n) for n in range(3)))
    print(f"served {len(results)} concurrent requests in {time.perf_counter() - start:.2f} s "
          f"(awaiting alone would take 0.01 s)")


if __name__ == "__main__":
    with loopwatch.watch(threshold=0.05) as session:
        asyncio.run(main())
    report = session.report()
    for block in report.blocks:
        # The three requests woke up together, so their driver calls ran back to back
        # in one turn of the loop: that is one block of about 3 x 0.2 s.
        print(f"block: the loop was stuck for {block.duration:.2f} s at {block.site} "
              f"in {block.function}() ({block.kind}, CPU {block.cpu_ratio or 0:.0%}), "
              f"task {block.task}")
    for site in report.sites:
        print(f"site {site.site}: {site.count} block(s), {site.total:.2f} s in all -> "
              f"{site.advice}")
