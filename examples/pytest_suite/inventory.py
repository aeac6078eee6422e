"""A small async inventory client: one function awaits properly, one blocks the event loop."""

from __future__ import annotations

import asyncio
import time

_STOCK = {"sku-1": 12, "sku-2": 0}


async def stock_level(sku: str) -> int:
    """How many items are in stock (fine: it awaits while it waits)."""
    await asyncio.sleep(0.01)  # stands in for an async database query
    return _STOCK.get(sku, 0)


def _legacy_reserve(sku: str, quantity: int) -> bool:
    # A synchronous client for an old warehouse service: it waits for the
    # answer without letting the event loop run anything else.
    time.sleep(0.15)
    if _STOCK.get(sku, 0) < quantity:
        return False
    _STOCK[sku] -= quantity
    return True


async def reserve(sku: str, quantity: int) -> bool:
    """Reserve items (blocks the event loop: it calls a synchronous client)."""
    return _legacy_reserve(sku, quantity)
