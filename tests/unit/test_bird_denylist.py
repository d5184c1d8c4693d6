"""Deny lists: the file parser and the CP field (untrusted input, fuzzed), the merge,
the rendered ``denylist.conf`` (parsed by the real BIRD), the local config key and
the ``birdDenyList`` task (last good kept). Root-free: BIRD routing is in
``tests/component/test_bird_denylist_netns.py``."""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers.bird import cp_data
from helpers.render import write_tree
from hypothesis import given, settings
from hypothesis import strategies as st
from moenet_bird.apply import default_bird_binary
from moenet_bird.backend import BirdRoutingBackend
from moenet_bird.client import BirdClient
from moenet_bird.config import BirdConfig
from moenet_bird.denylist import (
    MAX_ENTRIES,
    DenyList,
    DenyListError,
    DenyListSources,
    DenyListSourcesError,
    DenyPrefix,
    deny_list_from_policy,
    parse_deny_entry,
    parse_deny_text,
)
from moenet_bird.names import BirdConfigError
from moenet_bird.policy import parse_bird_config
from moenet_bird.render import effective_deny_list, render_tree
from moenet_bird.roa import LocalRouting

from moenet_core.config import structure
from moenet_core.testing import ManualClock, plugin_context

GOOD = """\
# node-local deny list
172.20.66.0/24+          # the /24 and every more specific
172.22.0.0/24            # exactly this one
fd42:dead::/32{48,64}
AS4242420666
4242420667   # bare number
as4242420666             # a duplicate, in another spelling

"""


# ----------------------------------------------------------------- parser


def test_good_file_parses_sorted_unique_and_normalised() -> None:
    deny = parse_deny_text(GOOD, "f")
    assert deny.asns == (4242420666, 4242420667)
    assert deny.patterns(4) == ["172.20.66.0/24+", "172.22.0.0/24"]
    assert deny.patterns(6) == ["fd42:dead::/32{48,64}"]
    assert parse_deny_text(GOOD.encode(), "f") == deny  # bytes as read from disk


@pytest.mark.parametrize(
    ("entry", "pattern"),
    [
        ("172.20.0.0/24{24,24}", "172.20.0.0/24"),  # exact, however spelt
        ("172.20.0.0/24{24,32}", "172.20.0.0/24+"),
        ("fd42::/16{16,128}", "fd42::/16+"),
        ("FD42:0:0::/48", "fd42::/48"),  # canonical spelling
        ("10.0.0.0/8{16,24}", "10.0.0.0/8{16,24}"),
    ],
)
def test_patterns_are_normalised(entry: str, pattern: str) -> None:
    got = parse_deny_entry(entry)
    assert isinstance(got, DenyPrefix) and got.pattern() == pattern


def test_an_empty_file_is_an_empty_list_not_an_error() -> None:
    assert parse_deny_text("# nothing denied\n\n", "f") == DenyList()
    assert not DenyList()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("172.20.66.1/24", "f:1: '172.20.66.1/24' is not a network"),  # host bits
        ("172.20.66.0/33", "f:1: '172.20.66.0/33' is not a network"),
        ("172.20.66.0/24{20,28}", "f:1: {20,28} must satisfy 24 <= lo <= hi"),
        ("172.20.66.0/24{28,26}", "f:1: {28,26} must satisfy"),
        ("fd42::/48{48,129}", "f:1: {48,129} must satisfy"),
        ("172.20.66.0/24-", "f:1: not a prefix"),
        ("AS0", "f:1: AS0 is not a usable AS number"),
        ("AS4294967295", "f:1: AS4294967295 is not a usable"),
        ("AS 4242420666", "f:1: not a prefix"),
        ('include "/etc/passwd";', "f:1: not a prefix"),
        ("172.20.66.0/24+ AS4242420666", "f:1: not a prefix"),  # one entry per line
        ("# ok\n172.20.66.0/24, 172.20.67.0/24", "f:2: not a prefix"),
        ("x" * 300, "f:1: line longer than 256"),
    ],
)
def test_malformed_is_refused_as_a_whole_naming_the_line(text: str, why: str) -> None:
    with pytest.raises(DenyListError) as exc:
        parse_deny_text(text, "f")
    assert any(p.startswith(why) for p in exc.value.problems), exc.value.problems


def test_non_ascii_huge_and_many_problems() -> None:
    with pytest.raises(DenyListError, match="not ASCII"):
        parse_deny_text("172.20.66.0/24\nAS\uff14\uff12\n".encode(), "f")
    with pytest.raises(DenyListError, match="not ASCII"):
        parse_deny_text("AS\uff14\uff12", "f")
    with pytest.raises(DenyListError, match="larger than"):
        parse_deny_text(b"#" * (4 * 1024 * 1024 + 1), "f")
    with pytest.raises(DenyListError) as exc:
        parse_deny_text("garbage\n" * 100, "f")
    assert len(exc.value.problems) == 6 and "stopped after 5" in exc.value.problems[-1]


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=300))
def test_fuzz_any_input_parses_or_is_refused_cleanly(data: str | bytes) -> None:
    try:
        deny = parse_deny_text(data, "fuzz")
    except DenyListError as exc:
        assert exc.problems and all(p.startswith("fuzz") for p in exc.problems)
        return
    # Whatever passes is made of our own, re-parseable shapes only.
    for p in deny.prefixes:
        again = parse_deny_entry(p.pattern())
        assert again == p
    assert all(1 <= a <= 4294967294 for a in deny.asns)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.ip_addresses(v=4) | st.ip_addresses(v=6), st.integers(0, 128), st.integers(0, 128)),
        max_size=20,
    ),
    st.lists(st.integers(1, 4294967294), max_size=10),
)
def test_fuzz_valid_entries_round_trip(raw: list[tuple[Any, int, int]], asns: list[int]) -> None:
    lines = []
    for addr, plen, extra in raw:
        width = addr.max_prefixlen
        plen %= width + 1
        net = ipaddress.ip_network(f"{addr}/{plen}", strict=False)
        lo = plen + extra % (width - plen + 1)
        lines.append(f"{net}{{{lo},{width}}}")
    lines += [f"AS{a}" for a in asns]
    deny = parse_deny_text("\n".join(lines), "gen")
    rendered = "\n".join([*deny.patterns(4), *deny.patterns(6), *(f"AS{a}" for a in deny.asns)])
    assert parse_deny_text(rendered, "again") == deny
    assert len(deny.asns) == len(set(asns))


# ----------------------------------------------------------------- the CP's field


def _policy(deny: Any = None, **over: Any) -> Any:
    data = cp_data()
    if deny is not None:
        data["policy"]["denyList"] = deny
    data["policy"].update(over)
    return parse_bird_config(data)[0]


def test_policy_field_is_optional_and_parsed() -> None:
    assert _policy().policy.deny_list == DenyList()
    p = _policy({"prefixes": ["172.20.66.0/24+", "fd42:dead::/48"], "asns": [4242420666, "AS4242420667"]})
    assert p.policy.deny_list.patterns(4) == ["172.20.66.0/24+"]
    assert p.policy.deny_list.asns == (4242420666, 4242420667)
    assert _policy({"prefixes": None}).policy.deny_list == DenyList()


@pytest.mark.parametrize(
    ("deny", "expected"),
    [
        ("172.20.66.0/24", "policy.denyList: expected an object"),
        ({"prefixes": "172.20.66.0/24"}, "policy.denyList.prefixes: expected a list"),
        ({"prefixes": ["172.20.66.1/24"]}, "policy.denyList.prefixes[0]: '172.20.66.1/24' is not a network"),
        ({"prefixes": ["ok", 5]}, "policy.denyList.prefixes[0]: not a prefix"),
        ({"prefixes": ["172.20.66.0/24", 5]}, "policy.denyList.prefixes[1]: expected a string"),
        ({"prefixes": ["AS4242420666"]}, "policy.denyList.prefixes[0]: an AS number belongs in asns"),
        ({"asns": ["172.20.66.0/24"]}, "policy.denyList.asns[0]: a prefix belongs in prefixes"),
        ({"asns": [0]}, "policy.denyList.asns[0]: AS0 is not a usable"),
        ({"asns": [True]}, "policy.denyList.asns[0]: expected a string or a number"),
        ({"asns": [-1]}, "policy.denyList.asns[0]: not a prefix"),
        ({"asns": [1], "communities": []}, "policy.denyList.communities: unknown key"),
        ({"asns": list(range(1, MAX_ENTRIES + 2))}, "policy.denyList.asns: more than"),
    ],
)
def test_a_bad_policy_field_is_refused_naming_the_entry(deny: Any, expected: str) -> None:
    with pytest.raises(BirdConfigError) as exc:
        _policy(deny)
    assert any(p.startswith(expected) for p in exc.value.problems), exc.value.problems


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=30),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
        max_leaves=12,
    )
)
def test_fuzz_policy_field_never_crashes(raw: Any) -> None:
    deny, problems = deny_list_from_policy(raw)
    assert isinstance(deny, DenyList)
    assert all(p.startswith("policy.denyList") for p in problems)


# ----------------------------------------------------------------- merge and render


def test_local_and_cp_lists_merge_and_render_into_one_file(tmp_path: Path) -> None:
    pol = _policy({"prefixes": ["172.20.66.0/24+", "fd42:66::/48"], "asns": [4242420666]})
    local = LocalRouting(deny=parse_deny_text("172.20.66.0/24+\n172.22.0.0/24\nAS4242420668\n", "f"))
    merged = effective_deny_list(pol, local)
    assert merged.patterns(4) == ["172.20.66.0/24+", "172.22.0.0/24"]
    assert merged.patterns(6) == ["fd42:66::/48"]
    assert merged.asns == (4242420666, 4242420668)
    tree = render_tree(pol, local=local)
    text = tree["denylist.conf"]
    assert "define MOENET_DENY_NETS = [\n  172.20.66.0/24+,\n  172.22.0.0/24\n];" in text
    assert "define MOENET_DENY_NETSv6 = [\n  fd42:66::/48\n];" in text
    assert "4242420666,\n  4242420668\n];" in text
    # Checked on both imports; moenet.conf includes the list before the filters.
    assert "if moenet_denied() then return false;" in tree["filters.conf"].split("function dn42_ebgp_out")[0]
    ibgp_in = tree["filters.conf"].split("function moenet_ibgp_in()")[1].split("}")[0]
    assert "moenet_denied()" in ibgp_in
    moenet = tree["moenet.conf"]
    assert moenet.index('include "denylist.conf";') < moenet.index('include "filters.conf";')


def test_only_denylist_conf_changes_with_the_list() -> None:
    pol = _policy()
    a = render_tree(pol)
    b = render_tree(pol, local=LocalRouting(deny=parse_deny_text("AS4242420666", "f")))
    assert {k for k in a if a[k] != b.get(k)} == {"denylist.conf"}


@pytest.mark.parametrize(
    "local",
    [
        "",
        "AS4242420666",
        "172.20.66.0/24+",
        "fd42:dead::/32{48,64}",
        "172.20.66.0/24+\nfd42::/16+\nAS1\nAS4294967294",
    ],
)
def test_every_shape_parses_in_bird(local: str, tmp_path: Path) -> None:
    """Empty sets are left out (BIRD has no empty prefix-set literal)."""
    tree = render_tree(_policy(), local=LocalRouting(deny=parse_deny_text(local, "f")))
    conf = write_tree(tree, tmp_path)
    bird = default_bird_binary()
    assert bird is not None, "no bird binary (scripts/install-bird)"
    res = subprocess.run([bird, "-p", "-c", str(conf)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout == "" and res.stderr == "", res.stderr


# ----------------------------------------------------------------- local key and task


@pytest.mark.parametrize(
    "files",
    [["relative.txt"], ["/a\nb"], ["/a", "/a"], [f"/{i}" for i in range(9)], "/one/path", [5]],
)
def test_bad_local_files_key_names_the_field(files: Any) -> None:
    section, problems = structure(BirdConfig, {"denyListFiles": files}, "bird", [])
    assert section is None and any(p.startswith("bird.denyListFiles") for p in problems), problems


def _backend(tmp_path: Path) -> BirdRoutingBackend:
    return BirdRoutingBackend(BirdClient(str(tmp_path / "no.ctl")), str(tmp_path / "etc"))


def _ctx(tmp_path: Path, backend: BirdRoutingBackend, files: list[str]) -> Any:
    return plugin_context(
        "bird",
        state_dir=tmp_path / "state",
        section=BirdConfig(deny_list_files=files),
        backends={"routing": backend},
        clock=ManualClock(),
    )


async def test_task_loads_at_build_keeps_last_good_and_merges_files(tmp_path: Path) -> None:
    f1, f2 = tmp_path / "a.txt", tmp_path / "b.txt"
    f1.write_text("172.20.66.0/24+\n")
    f2.write_text("AS4242420666\n")
    backend = _backend(tmp_path)
    task = DenyListSources(_ctx(tmp_path, backend, [str(f1), str(f2)]))
    # Loaded when built, before any apply: the first render carries them.
    assert backend.local.deny == parse_deny_text("172.20.66.0/24+\nAS4242420666", "x")

    # A malformed version of one file: refused as a whole, its last good entries stay.
    f1.write_text("172.20.66.0/24+\n172.20.67.0/24 ; include x\n")
    with pytest.raises(DenyListSourcesError, match=r"a.txt: refused: .*a.txt:2: not a prefix"):
        await task.run_once()
    assert backend.local.deny == parse_deny_text("172.20.66.0/24+\nAS4242420666", "x")

    # Fixed: taken; the other file's entries stay merged in.
    f1.write_text("fd42:66::/48\n")
    assert (await task.run_once())["prefixes"] == 1
    assert backend.local.deny == parse_deny_text("fd42:66::/48\nAS4242420666", "x")

    # Emptied on purpose: an empty list is a list.
    f1.write_text("")
    await task.run_once()
    assert backend.local.deny == parse_deny_text("AS4242420666", "x")

    # A file that disappears keeps its last good entries, and says so.
    f2.unlink()
    with pytest.raises(DenyListSourcesError, match="cannot read"):
        await task.run_once()
    assert backend.local.deny.asns == (4242420666,)


async def test_a_file_missing_from_the_start_is_an_error_not_a_crash(tmp_path: Path) -> None:
    backend = _backend(tmp_path)
    task = DenyListSources(_ctx(tmp_path, backend, [str(tmp_path / "absent.txt")]))
    assert backend.local.deny == DenyList()
    with pytest.raises(DenyListSourcesError, match="cannot read"):
        await task.run_once()


async def test_no_files_is_a_quiet_no_op(tmp_path: Path) -> None:
    backend = _backend(tmp_path)
    task = DenyListSources(_ctx(tmp_path, backend, []))
    assert await task.run_once() == {"prefixes": 0, "asns": 0, "applied": None}
