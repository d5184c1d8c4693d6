"""ROA: the static-file parser (untrusted input), the mode and its sources, the local
config keys, the sources task, the ``bird.roa`` health verdict, and the isolation
decision of the aggregates task. Root-free: BIRD itself is in
``tests/component/test_bird_roa_netns.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import moenet_bird
import pytest
from aiohttp import web
from helpers.bird import cp_data
from hypothesis import given, settings
from hypothesis import strategies as st
from moenet_bird.aggregates import Aggregates
from moenet_bird.backend import BirdRoutingBackend
from moenet_bird.client import BirdClient
from moenet_bird.config import BirdConfig
from moenet_bird.policy import RpkiServer, parse_bird_config
from moenet_bird.roa import (
    LocalRouting,
    RoaEntry,
    RoaFileError,
    StaticRoa,
    effective_roa_mode,
    parse_roa_text,
    render_entries,
    roa_source_problem,
    rpki_caches,
)
from moenet_bird.roa_health import RoaHealth, parse_route_count
from moenet_bird.roa_sources import RoaSources, RoaSourcesError, fetch_roa
from moenet_bird.sync import BirdConfigSync, BirdSyncError
from moenet_bird.testing import sample_bird_config

from moenet_core import ApplyResult, ConfigError
from moenet_core.config import structure
from moenet_core.testing import ManualClock, StubControlPlane, plugin_context

GOOD = """#
# dn42_roa_bird2_4.conf (excerpt)
#
route 172.20.0.0/14 max 29 as 4242420000;
route 172.20.42.0/27 max 29 as 4242421234;   # trailing comment
route 10.0.0.0/8 max 24 as 0;

route fd42:4242:1234::/48 max 64 as 4242421234;
"""


# ----------------------------------------------------------------- parser


def test_good_file_parses_sorted_and_renders_back() -> None:
    entries = parse_roa_text(GOOD, "f")
    assert entries == sorted(entries)
    assert RoaEntry(4, "172.20.0.0/14", 29, 4242420000) in entries
    assert RoaEntry(4, "10.0.0.0/8", 24, 0) in entries  # AS0: "never valid" ROAs are legitimate
    assert render_entries(entries, 6) == "route fd42:4242:1234::/48 max 64 as 4242421234;\n"
    # What we render parses back to the same entries.
    again = parse_roa_text(render_entries(entries, 4) + render_entries(entries, 6), "r")
    assert again == entries


def test_duplicates_collapse_and_bytes_are_accepted() -> None:
    text = b"route 172.20.0.0/14 max 29 as 1;\r\nroute 172.20.0.0/14 max 29 as 1;\r\n"
    assert parse_roa_text(text, "f") == [RoaEntry(4, "172.20.0.0/14", 29, 1)]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("route 172.20.0.0/14 max 29 as 4242420000", "not 'route <prefix>"),  # no ';'
        ("route 172.20.0.1/14 max 29 as 1;", "host bits set"),
        ("route 172.20.0.0/14 max 13 as 1;", "max 13 must be 14-32"),
        ("route 172.20.0.0/14 max 33 as 1;", "max 33 must be 14-32"),
        ("route fd00::/8 max 129 as 1;", "max 129 must be 8-128"),
        ("route 172.20.0.0/14 max 29 as 4294967295;", "not a usable AS number"),
        ("route 172.20.0.0/14 max 29 as 99999999999;", "not 'route <prefix>"),
        ('include "/etc/shadow";', "not 'route <prefix>"),
        ("route 172.20.0.0/14 max 29 as 1; protocol static x {}", "not 'route <prefix>"),
        ("route 172.20.0.0/14 max 29 as 1; }", "not 'route <prefix>"),
        ("/* c */ route 172.20.0.0/14 max 29 as 1;", "not 'route <prefix>"),
        ("route 1.2.3.4.5/8 max 29 as 1;", "not a network"),
    ],
)
def test_malformed_is_refused_as_a_whole_naming_the_line(text: str, why: str) -> None:
    with pytest.raises(RoaFileError) as exc:
        parse_roa_text("route 172.21.0.0/16 max 24 as 7;\n" + text, "roa.conf")
    message = "; ".join(exc.value.problems)
    assert why in message and "roa.conf:2" in message, message


@pytest.mark.parametrize("text", ["", "# only comments\n\n", "\n"])
def test_a_file_without_entries_is_refused(text: str) -> None:
    """An empty or truncated download must not empty the static ROAs."""
    with pytest.raises(RoaFileError, match="no ROA entry"):
        parse_roa_text(text, "roa.conf")


def test_non_ascii_and_huge_input_are_refused() -> None:
    with pytest.raises(RoaFileError, match="not ASCII"):
        parse_roa_text("route 172.20.0.0/14 max 29 as 1;\n# é\n".encode(), "f")
    with pytest.raises(RoaFileError, match="larger than"):
        parse_roa_text(b"#" * (16 * 1024 * 1024 + 1), "f")


def test_too_many_problems_stop_early() -> None:
    with pytest.raises(RoaFileError) as exc:
        parse_roa_text("garbage\n" * 1000, "f")
    assert len(exc.value.problems) == 6 and "stopped after 5" in exc.value.problems[-1]


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400))
def test_fuzz_any_text_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        entries = parse_roa_text(text, "fuzz")
    except RoaFileError as exc:
        assert exc.problems
        return
    # Whatever passes renders to lines of exactly our own shape.
    for e in entries:
        assert e.line() == f"route {e.prefix} max {e.max_len} as {e.asn};"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.ip_addresses(v=4) | st.ip_addresses(v=6),
            st.integers(0, 128),
            st.integers(0, 128),
            st.integers(0, 4294967294),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_fuzz_valid_entries_round_trip(raw: list[tuple[Any, int, int, int]]) -> None:
    import ipaddress

    lines = []
    for addr, plen, mlen, asn in raw:
        width = addr.max_prefixlen
        plen %= width + 1
        net = ipaddress.ip_network(f"{addr}/{plen}", strict=False)
        mlen = plen + mlen % (width - plen + 1)
        lines.append(f"route {net} max {mlen} as {asn};")
    entries = parse_roa_text("\n".join(lines), "gen")
    rendered = render_entries(entries, 4) + render_entries(entries, 6)
    assert parse_roa_text(rendered, "again") == entries
    assert StaticRoa.of(entries).count4 + StaticRoa.of(entries).count6 == len(entries)


# ----------------------------------------------------------------- mode and sources


def _policy(**over: Any) -> Any:
    return parse_bird_config(cp_data(**over))[0]


def test_mode_precedence_local_then_cp_then_strict() -> None:
    assert effective_roa_mode(_policy(roaMode=""), LocalRouting()) == "strict"
    assert effective_roa_mode(_policy(roaMode="loose"), LocalRouting()) == "loose"
    assert effective_roa_mode(_policy(roaMode="loose"), LocalRouting(roa_mode="strict")) == "strict"
    assert effective_roa_mode(_policy(roaMode="strict"), LocalRouting(roa_mode="loose")) == "loose"


def test_cp_roa_mode_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"policy\.roaMode: must be strict or loose"):
        parse_bird_config(cp_data(roaMode="off"))


def test_strict_without_any_source_is_a_problem_and_each_source_fixes_it() -> None:
    bare = _policy(roaMode="strict")
    problem = roa_source_problem(bare, LocalRouting(), False)
    assert problem is not None and "bird.roaFiles" in problem and "policy.rpkiServers" in problem
    assert roa_source_problem(bare, LocalRouting(), True) is None  # a static file
    cache = RpkiServer(name="local", host="127.0.0.1", port=8082)
    assert roa_source_problem(bare, LocalRouting(rpki_servers=(cache,)), False) is None
    with_cp = _policy(roaMode="strict", rpkiServers=[{"name": "a", "host": "rpki.akae.re"}])
    assert roa_source_problem(with_cp, LocalRouting(), False) is None
    assert roa_source_problem(_policy(roaMode="loose"), LocalRouting(), False) is None


def test_local_caches_win_a_name_clash() -> None:
    pol = _policy(rpkiServers=[{"name": "a", "host": "rpki.akae.re"}, {"name": "b", "host": "10.0.0.1"}])
    local = LocalRouting(rpki_servers=(RpkiServer(name="a", host="127.0.0.1", port=3323),))
    caches = {s.symbol: s for s in rpki_caches(pol, local)}
    assert sorted(caches) == ["rpki_a", "rpki_b"]
    assert caches["rpki_a"].host == "127.0.0.1"


# ----------------------------------------------------------------- local config


def _section(raw: dict[str, Any]) -> tuple[BirdConfig | None, list[str]]:
    return structure(BirdConfig, raw, "bird", [])


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"roaMode": "off"}, "bird.roaMode"),
        ({"roaFiles": ["relative.conf"]}, "bird.roaFiles"),
        ({"roaUrls": ["http://example.com/roa.conf"]}, "bird.roaUrls"),
        ({"roaUrls": ["https://user:pw@example.com/roa.conf"]}, "bird.roaUrls"),
        ({"roaUrls": ["ftp://example.com/roa.conf"]}, "bird.roaUrls"),
        ({"rpkiServers": [{"name": "x y", "host": "127.0.0.1"}]}, "bird.rpkiServers"),
        ({"rpkiServers": [{"name": "a", "host": "a;b"}]}, "bird.rpkiServers"),
        ({"rpkiExpire": 100}, "bird.rpkiExpire"),
        ({"routeRefreshSpread": -1}, "bird.routeRefreshSpread"),
        ({"isolationHoldDown": "1m"}, "bird.isolationHoldDown"),
    ],
)
def test_bad_local_keys_name_the_field(raw: dict[str, Any], field: str) -> None:
    section, problems = _section(raw)
    assert section is None and any(p.startswith(field) for p in problems), problems


def test_good_local_keys() -> None:
    section, problems = _section(
        {
            "roaMode": "strict",
            "roaFiles": ["/var/lib/dn42/roa4.conf"],
            "roaUrls": ["https://dn42.burble.com/roa/dn42_roa_bird2_4.conf", "http://127.0.0.1:8080/r"],
            "rpkiServers": [{"name": "localrtr", "host": "127.0.0.1", "port": 8082}],
            "rpkiExpire": 7200,
        }
    )
    assert problems == [] and section is not None
    assert [s.symbol for s in section.local_rpki_servers] == ["rpki_localrtr"]
    assert section.roa_source_problem() is None


def _validate(tmp_path: Path, bird: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """``moenet-agent validate`` on a config with this ``bird`` section."""
    cfg = {
        "node": {"name": "jp1"},
        "controlPlane": {"source": "file", "file": str(tmp_path / "cp.json")},
        "state": {"directory": str(tmp_path / "state")},
        "sessions": {"privateKeyPath": str(tmp_path / "k")},
        "bird": bird,
    }
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOENET_")}
    return subprocess.run(
        [sys.executable, "-m", "moenet_core", "validate", "-c", str(tmp_path / "c.json")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )


def test_validate_refuses_pinned_strict_without_a_local_source(tmp_path: Path) -> None:
    res = _validate(tmp_path, {"roaMode": "strict"})
    assert res.returncode == 1, res.stderr
    assert "bird.roaMode: strict is pinned locally" in res.stderr and "bird.roaFiles" in res.stderr
    res = _validate(tmp_path, {"roaMode": "strict", "roaFiles": [str(tmp_path / "roa.conf")]})
    assert res.returncode == 0, res.stderr


def test_pinned_strict_without_a_local_source_is_refused_with_what_to_set() -> None:
    section, _ = _section({"roaMode": "strict"})
    assert section is not None
    problem = section.roa_source_problem()
    assert problem is not None
    for key in ("bird.rpkiServers", "bird.roaFiles", "bird.roaUrls", "loose"):
        assert key in problem
    for ok in ({}, {"roaMode": "loose"}, {"roaMode": "strict", "roaFiles": ["/x"]}):
        s, _ = _section(ok)
        assert s is not None and s.roa_source_problem() is None


# ----------------------------------------------------------------- sources task


def _backend(tmp_path: Path) -> BirdRoutingBackend:
    return BirdRoutingBackend(BirdClient(str(tmp_path / "no.ctl")), str(tmp_path / "etc"))


def _ctx(tmp_path: Path, backend: BirdRoutingBackend, **section: Any) -> Any:
    return plugin_context(
        "bird",
        state_dir=tmp_path / "state",
        section=BirdConfig(**section),
        backends={"routing": backend},
        clock=ManualClock(),
    )


async def test_sources_load_at_build_keep_last_good_and_reread_only_on_change(tmp_path: Path) -> None:
    f = tmp_path / "roa4.conf"
    f.write_text(GOOD)
    backend = _backend(tmp_path)
    task = RoaSources(_ctx(tmp_path, backend, roa_files=[str(f)]))
    # Loaded when built, before any apply: the first render carries them.
    assert backend.local.static.count4 == 3 and backend.local.static.count6 == 1
    assert "route 172.20.0.0/14 max 29 as 4242420000;" in backend.local.static.roa4

    # A malformed version is refused as a whole; the last good entries stay.
    f.write_text(GOOD + 'route 172.20.0.0/14 max 29 as 1; include "x";\n')
    with pytest.raises(RoaSourcesError, match=r"refused: .*roa4.conf:9: not"):
        await task.run_once()
    assert backend.local.static.count4 == 3
    assert task.sources[str(f)].error

    # Fixed: taken; the file is not re-read while it is unchanged.
    f.write_text("route 172.22.0.0/16 max 24 as 5;\n")
    assert (await task.run_once())["roa4"] == 1
    assert backend.local.static.roa4 == "route 172.22.0.0/16 max 24 as 5;\n"
    reads = 0
    real = parse_roa_text

    def counting(*a: Any) -> Any:
        nonlocal reads
        reads += 1
        return real(*a)

    import moenet_bird.roa_sources as rs

    rs.parse_roa_text = counting  # type: ignore[assignment]
    try:
        await task.run_once()
    finally:
        rs.parse_roa_text = real
    assert reads == 0


async def test_a_missing_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    backend = _backend(tmp_path)
    task = RoaSources(_ctx(tmp_path, backend, roa_files=[str(tmp_path / "absent.conf")]))
    with pytest.raises(RoaSourcesError, match="cannot read"):
        await task.run_once()
    assert backend.local.static == StaticRoa()


@pytest.fixture
async def roa_server() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    served: dict[str, Any] = {"body": GOOD, "status": 200, "hits": 0}

    async def handler(_req: web.Request) -> web.Response:
        served["hits"] += 1
        return web.Response(text=served["body"], status=served["status"])

    async def away(_req: web.Request) -> web.Response:
        raise web.HTTPFound("http://example.com/roa.conf")

    app = web.Application()
    app.router.add_get("/roa.conf", handler)
    app.router.add_get("/away", away)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/roa.conf", served
    finally:
        await runner.cleanup()


async def test_url_is_fetched_validated_saved_and_restored(
    tmp_path: Path, roa_server: tuple[str, dict[str, Any]]
) -> None:
    url, served = roa_server
    backend = _backend(tmp_path)
    task = RoaSources(_ctx(tmp_path, backend, roa_urls=[url]))
    assert backend.local.static == StaticRoa()
    assert (await task.run_once())["roa4"] == 3 and served["hits"] == 1

    served["body"] = "<html>oops</html>"  # a broken mirror: refused, the last good stays
    with pytest.raises(RoaSourcesError, match="refused"):
        await task.run_once()
    assert backend.local.static.count4 == 3
    served["status"] = 503
    with pytest.raises(RoaSourcesError, match="HTTP 503"):
        await task.run_once()
    assert backend.local.static.count4 == 3

    # A restart has the saved copy before its first fetch.
    backend2 = _backend(tmp_path)
    RoaSources(_ctx(tmp_path, backend2, roa_urls=[url]))
    assert backend2.local.static.count4 == 3


async def test_fetch_caps_the_size_and_refuses_a_redirect_off_https(
    roa_server: tuple[str, dict[str, Any]],
) -> None:
    url, _ = roa_server
    assert (await fetch_roa(url)).decode() == GOOD
    with pytest.raises(RoaSourcesError, match="larger than 10 bytes"):
        await fetch_roa(url, limit=10)
    with pytest.raises(RoaSourcesError, match="only https"):
        await fetch_roa(url.replace("/roa.conf", "/away"))


# ----------------------------------------------------------------- health and aggregates


def test_route_count_parse() -> None:
    lines = ["2 of 2 routes for 2 networks in table dn42_roa"]
    assert parse_route_count(lines, "dn42_roa") == 2
    assert parse_route_count(lines, "dn42_roa_v6") is None


def test_health_verdicts(tmp_path: Path) -> None:
    backend = _backend(tmp_path)
    health = RoaHealth(_ctx(tmp_path, backend, roa_max_age=3600))
    assert health.verdict() is None  # nothing observed yet: no check
    health.entries, health.caches = {"dn42_roa": 1500, "dn42_roa_v6": 900}, {"rpki_a": True, "rpki_b": False}
    check = health.verdict()
    assert check is not None and check.verdict == "healthy" and "1 of 2 RTR caches up" in check.reason
    health.entries = {"dn42_roa": 0, "dn42_roa_v6": 900}
    check = health.verdict()
    assert check is not None and check.verdict == "degraded" and "dn42_roa empty" in check.reason
    health.entries, health.caches = {"dn42_roa": 5, "dn42_roa_v6": 5}, {"rpki_a": False}
    check = health.verdict()
    assert check is not None and check.verdict == "degraded" and "every RTR cache is down" in check.reason


def test_loose_without_any_source_is_a_choice_not_a_fault(tmp_path: Path) -> None:
    health = RoaHealth(_ctx(tmp_path, _backend(tmp_path)))
    health.entries, health.caches = {"dn42_roa": 0, "dn42_roa_v6": 0}, {}
    check = health.verdict()
    assert check is not None and check.verdict == "degraded"  # strict (no policy yet): empty is a fault
    health._mode = lambda: "loose"  # type: ignore[method-assign]
    check = health.verdict()
    assert check is not None and check.verdict == "healthy" and "origin validation is off" in check.reason
    health.caches = {"rpki_a": False}  # loose, but a cache is configured and down: a fault again
    check = health.verdict()
    assert check is not None and check.verdict == "degraded"


def test_health_reports_a_stale_static_file(tmp_path: Path) -> None:
    f = tmp_path / "roa.conf"
    f.write_text(GOOD)
    old = time.time() - 7200
    os.utime(f, (old, old))
    backend = _backend(tmp_path)
    ctx = _ctx(tmp_path, backend, roa_files=[str(f)], roa_max_age=3600)
    sources = RoaSources(ctx)
    health = RoaHealth(ctx)
    health._sources = lambda: sources  # type: ignore[method-assign]
    health.entries, health.caches = {"dn42_roa": 3, "dn42_roa_v6": 1}, {}
    check = health.verdict()
    assert check is not None and check.verdict == "degraded" and "2 h old" in check.reason


def test_isolation_decision_holds_down_and_recovers_at_once(tmp_path: Path) -> None:
    agg = Aggregates(_ctx(tmp_path, _backend(tmp_path), isolation_hold_down=60))
    assert agg.decide({}, 0.0)  # single-node network: always announced
    assert agg.decide({"ibgp_a_2": "Established", "ibgp_b_3": "Active"}, 1.0)
    assert agg.decide({"ibgp_a_2": "Active", "ibgp_b_3": "Active"}, 10.0)  # a blip
    assert agg.decide({"ibgp_a_2": "Connect"}, 69.0)
    assert not agg.decide({"ibgp_a_2": "Connect"}, 70.0)  # down for 60 s: withdraw
    assert agg.decide({"ibgp_a_2": "Established"}, 71.0)  # back at once
    assert agg.decide({"ibgp_a_2": "Idle"}, 72.0)  # hold-down starts over


def test_isolation_withdrawal_can_be_switched_off(tmp_path: Path) -> None:
    agg = Aggregates(_ctx(tmp_path, _backend(tmp_path), withdraw_isolated=False, isolation_hold_down=0))
    assert agg.decide({"ibgp_a_2": "Active"}, 0.0) and agg.decide({"ibgp_a_2": "Active"}, 1000.0)


# ----------------------------------------------------------------- the sync refuses strict without a source


async def test_sync_refuses_a_strict_policy_without_any_roa_source(tmp_path: Path) -> None:
    cp = StubControlPlane("hkg1")
    backend = _backend(tmp_path)
    applied: list[str] = []

    async def set_policy(policy: Any, config_hash: str, raw: Any = None) -> ApplyResult:
        applied.append(config_hash)
        return ApplyResult(ok=True, changed=True)

    backend.set_policy = set_policy  # type: ignore[method-assign]

    def task(bird: dict[str, Any]) -> BirdConfigSync:
        ctx = plugin_context(
            "bird",
            state_dir=tmp_path / "state",
            config={"node": {"name": "hkg1", "id": 3}, "bird": bird},
            plugins=[("bird", moenet_bird)],
            backends={"routing": backend},
            cp=cp,
        )
        return BirdConfigSync(ctx)

    cp.set("bird-config", sample_bird_config(config_hash="s1", policy={"roaMode": "strict"}))
    with pytest.raises(BirdSyncError) as err:
        await task({}).run_once()
    assert "no ROA source" in str(err.value) and "bird.roaFiles" in str(err.value)
    assert "keeping the last good policy" in str(err.value) and applied == []
    assert "no ROA source" in (backend.sync_error or "")
    # Any source makes the same policy acceptable: a local file, or loose pinned locally.
    await task({"roaFiles": [str(tmp_path / "roa.conf")]}).run_once()
    assert applied == ["s1"]
    cp.set("bird-config", sample_bird_config(config_hash="s2", policy={"roaMode": ""}))
    await task({"roaMode": "loose"}).run_once()
    assert applied == ["s1", "s2"]
