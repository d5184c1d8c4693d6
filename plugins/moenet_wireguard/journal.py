"""Counting writes: the proof that an unchanged spec touches nothing.

Every operation that changes the system (a netlink write, a UAPI ``set``, a
sysctl write, starting a daemon) is recorded in the journal of the call that
made it. ``ensure`` returns True exactly when its journal is non-empty; the
backend adds each journal to its running totals and to the
``moenet_wireguard_tunnel_writes_total{op}`` metric.
"""

from __future__ import annotations

from collections import Counter


class Journal:
    """The writes of one backend call, by operation name."""

    def __init__(self) -> None:
        self.ops: Counter[str] = Counter()

    def record(self, op: str, n: int = 1) -> None:
        self.ops[op] += n

    def __bool__(self) -> bool:
        return bool(self.ops)

    def __len__(self) -> int:
        return sum(self.ops.values())

    def __repr__(self) -> str:
        return f"Journal({dict(self.ops)!r})"
