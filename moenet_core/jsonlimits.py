"""JSON from outside the agent, parsed with limits.

Everything the agent parses from the control plane, the config file, the local API
and the state directory goes through :func:`loads`: the JSON is parsed, then its
nesting depth is checked against :data:`MAX_DEPTH`. Two reasons:

- ``json.loads`` of deeply nested input raises :class:`RecursionError`, which is
  not a :class:`ValueError` and escaped every ``except ValueError`` around a parse
  (a CP answer of 100 000 ``[`` crash-looped a bootstrapping agent).
- Input that ``json.loads`` does accept (a few hundred levels) still reaches code
  that walks it recursively (config structuring, ``deep_merge``, log rendering,
  ``json.dumps`` of a state file) and could hit the recursion limit there, far
  from the boundary where the input came in.

So the limit is applied once, at the boundary, and an over-deep document is a
:class:`JSONLimitError` (a :class:`ValueError`, so each caller's existing
"not valid JSON" handling turns it into its own typed error).
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["MAX_DEPTH", "JSONLimitError", "check_depth", "loads"]

#: Deepest nesting of objects and arrays accepted (``[]`` is depth 1). Real CP
#: answers, configs and state files stay below 10.
MAX_DEPTH = 64


class JSONLimitError(ValueError):
    """The JSON is nested deeper than allowed."""


def check_depth(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Raise :class:`JSONLimitError` when ``value`` (parsed JSON: dicts, lists,
    scalars) nests containers deeper than ``max_depth``. Iterative: a deep value
    cannot make the check itself recurse."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            raise JSONLimitError(f"JSON nested deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def loads(data: str | bytes | bytearray, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` that raises only :class:`ValueError` (a
    :class:`json.JSONDecodeError`, Python's int-digit limit, undecodable bytes, or
    :class:`JSONLimitError` for nesting deeper than ``max_depth``)."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise JSONLimitError(f"JSON nested deeper than {max_depth} levels") from None
    check_depth(value, max_depth)
    return value
