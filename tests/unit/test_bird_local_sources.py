"""The shared base of the local-sources tasks (:mod:`moenet_bird.local_sources`),
through a minimal subclass: bookkeeping per source, the size cap, re-reading only
on change, combining, applying only a change, and the errors a run raises."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from loguru import logger
from moenet_bird.backend import BirdRoutingBackend
from moenet_bird.client import BirdClient
from moenet_bird.config import BirdConfig
from moenet_bird.denylist import DenyList
from moenet_bird.local_sources import LocalSources, OfflineContext
from moenet_bird.names import BirdConfigError

from moenet_core import ApplyResult, MoenetError, StateStore
from moenet_core.testing import ManualClock, plugin_context


class NumbersError(MoenetError):
    pass


class Numbers(LocalSources[list[int], DenyList]):
    """One AS number per line; the files' union becomes ``LocalRouting.deny``."""

    what = "number file"
    field = "deny"
    applied_what = "numbers"
    error_type = NumbersError
    max_bytes = 64
    entries_metric = ("test_numbers", "Numbers of each file.")
    errors_metric = ("test_numbers_errors_total", "Number files refused or not read.")

    def __init__(self, ctx: Any, files: list[str]) -> None:
        self.parsed = 0
        super().__init__(ctx, files)

    def _parse(self, data: bytes, source: str) -> list[int]:
        self.parsed += 1
        lines = data.decode().split()
        if not all(x.isdigit() for x in lines):
            raise BirdConfigError([f"{source}: not a number"], source=source)
        return [int(x) for x in lines]

    def _combine(self, entries: list[list[int]]) -> DenyList:
        return DenyList.of(asns=(n for e in entries for n in e))

    def _describe(self, entries: list[int]) -> str:
        return f"{len(entries)} numbers"

    def _result(self, value: DenyList, applied: bool | None) -> dict[str, Any]:
        return {"asns": value.asns, "applied": applied}


def _backend(tmp_path: Path) -> BirdRoutingBackend:
    return BirdRoutingBackend(BirdClient(str(tmp_path / "no.ctl")), str(tmp_path / "etc"))


def _ctx(tmp_path: Path, backend: BirdRoutingBackend) -> Any:
    return plugin_context(
        "bird",
        state_dir=tmp_path / "state",
        section=BirdConfig(),
        backends={"routing": backend},
        clock=ManualClock(),
    )


def _errors(ctx: Any, source: Path) -> float | None:
    return ctx.metrics.registry.get_sample_value(  # type: ignore[no-any-return]
        "moenet_bird_test_numbers_errors_total", {"source": str(source)}
    )


async def test_read_at_build_keep_last_good_and_apply_only_a_change(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_text("1\n2\n")
    b.write_text("3\n")
    backend = _backend(tmp_path)
    ctx = _ctx(tmp_path, backend)
    task = Numbers(ctx, [str(a), str(b)])
    # Before the first apply the value goes straight into the backend's local additions.
    assert backend.local.deny.asns == (1, 2, 3) and task.value == backend.local.deny
    assert task.parsed == 2
    assert await task.run_once() == {"asns": (1, 2, 3), "applied": None}
    assert task.parsed == 2  # unchanged files: a stat each, not read again

    a.write_text("1\nx\n")
    with pytest.raises(NumbersError, match=rf"^{re.escape(f'{a}: refused: {a}: not a number')}$"):
        await task.run_once()
    assert backend.local.deny.asns == (1, 2, 3) and task.errors == {str(a): f"refused: {a}: not a number"}
    assert _errors(ctx, a) == 1.0

    a.write_bytes(b"7\n" * 40)  # over max_bytes: refused unread
    b.unlink()
    with pytest.raises(NumbersError) as exc:
        await task.run_once()
    assert (
        str(exc.value)
        == f"{a}: refused: {a}: larger than 64 bytes; {b}: cannot read: No such file or directory"
    )
    assert backend.local.deny.asns == (1, 2, 3)  # both keep their last good entries

    a.write_text("4\n")
    b.write_text("")
    assert await task.run_once() == {"asns": (4,), "applied": None}
    assert task.errors == {} and backend.local.deny.asns == (4,)


async def test_a_failed_apply_is_the_runs_error(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.write_text("1\n")
    backend = _backend(tmp_path)
    backend.last_result = ApplyResult(ok=True, changed=True)  # after the first apply: no direct set
    calls: list[DenyList] = []

    async def set_local(local: Any) -> ApplyResult:
        calls.append(local.deny)
        return ApplyResult(ok=False, changed=False, error="BIRD said no")

    backend.set_local = set_local  # type: ignore[method-assign]
    task = Numbers(_ctx(tmp_path, backend), [str(a)])
    assert backend.local.deny == DenyList() and calls == []
    with pytest.raises(NumbersError, match=r"^numbers not applied: BIRD said no; retried next run$"):
        await task.run_once()
    assert calls == [DenyList.of(asns=[1])]


def test_offline_context_reads_without_a_backend(tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.write_text("5\n")
    ctx = OfflineContext(BirdConfig(), StateStore(tmp_path / "state"), logger)
    task = Numbers(ctx, [str(a), str(tmp_path / "absent")])
    assert task.value.asns == (5,)
    assert task.errors == {str(tmp_path / "absent"): "cannot read: No such file or directory"}
    assert task._backend_or_none() is None
    assert not (tmp_path / "state").exists()  # nothing written
