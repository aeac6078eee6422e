"""Find the blocking call in a small aiohttp-free web-ish service, then print the report.

    python examples/find_blocking.py

A handler that calls time.sleep (standing in for a synchronous database or
HTTP client) stalls every other request on the loop; loopwatch names the line.
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
    results = await asyncio.gather(*(handle_request(n) for n in range(3)))
    print(f"served {len(results)} requests")


if __name__ == "__main__":
    with loopwatch.watch(threshold=0.05) as session:
        asyncio.run(main())
    report = session.report()
    for site in report.sites:
        print(f"{site.site}: blocked {site.count} time(s), {site.total * 1000:.0f} ms in all "
              f"({site.kind}) -> {site.advice}")
