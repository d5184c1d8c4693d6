"""Shared test helpers (moved from ``test_nftables_netns``)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest
from moenet_nftables import NftablesFirewall

from moenet_core.testing import NetNS


def host_ruleset() -> str:
    return subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=True).stdout


@pytest.fixture(autouse=True)
def host_ruleset_untouched() -> Iterator[None]:
    before = host_ruleset()
    yield
    assert host_ruleset() == before, "a test changed the host's own nftables ruleset"


class Recording(NftablesFirewall):
    """Records every nft invocation, to count reads and writes."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, ...]] = []

    async def _nft(self, *args: str, script: str | None = None):
        self.calls.append(args)
        return await super()._nft(*args, script=script)

    def writes(self) -> list[tuple[str, ...]]:
        return [c for c in self.calls if c == ("-f", "-")]


def raw_objects(ns: NetNS, *what: str) -> list[dict]:
    return [
        o for o in json.loads(ns.run("nft", "-j", "list", *what).stdout)["nftables"] if "metainfo" not in o
    ]


def rule_by_comment(ns: NetNS, comment: str) -> dict:
    [rule] = [
        o["rule"]
        for o in raw_objects(ns, "table", "inet", "moenet_agent")
        if "rule" in o and o["rule"].get("comment") == comment
    ]
    return rule


def counter_of(rule: dict) -> int:
    [packets] = [e["counter"]["packets"] for e in rule["expr"] if "counter" in e]
    return packets
