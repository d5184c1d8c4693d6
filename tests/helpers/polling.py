"""Waiting for a condition in async tests: poll with a deadline, never sleep as sync."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest


async def until(what: str, cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``cond`` (yielding to the loop) until it holds; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
