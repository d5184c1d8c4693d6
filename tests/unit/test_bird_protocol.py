"""The BIRD control-socket protocol layer on recorded transcripts (no daemon needed).

``tests/data/bird`` holds every transcript of research/bird3.md §3.4 verbatim plus
a few recorded from a live BIRD 3.3.2 (see its README).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import moenet_bird
import pytest
from moenet_bird.protocol import (
    LEAN_DETAILS,
    MAX_COMMAND_BYTES,
    AsyncMessage,
    BirdConfigError,
    BirdError,
    BirdProtocolError,
    ProtocolsParser,
    ReconfigState,
    Reply,
    ReplyAssembler,
    ReplyLine,
    encode_command,
    parse_config_status,
    parse_configure,
    parse_protocols,
    parse_replies,
    parse_status,
    quote,
)

from moenet_core.backends import ProtocolState

DATA = Path(__file__).parents[1] / "data" / "bird"
ANNOTATION = re.compile(r" {6}\(.*\)\Z")
FRAGMENTS = {"show-protocols-all-bgp-down", "show-protocols-all-rpki", "show-route-ibgp"}

assert moenet_bird.__doc__


def transcript(name: str) -> tuple[list[str], list[str]]:
    """(commands sent, protocol lines) of one file; annotations dropped."""
    commands: list[str] = []
    lines: list[str] = []
    for raw in (DATA / f"{name}.txt").read_text().split("\n")[:-1]:
        if raw.startswith(">>> "):
            commands.append(raw[4:])
        elif not ANNOTATION.match(raw):
            lines.append(raw)
    return commands, lines


def replies(name: str) -> list[Reply]:
    got, _, tail = parse_replies(transcript(name)[1])
    assert tail == ()
    return got


def reply_to(name: str, command: str) -> Reply:
    """The reply to ``command`` (first occurrence) in a transcript file."""
    commands, lines = transcript(name)
    got, _, _ = parse_replies(lines)
    return got[commands.index(command)]


ALL = sorted(p.stem for p in DATA.glob("*.txt"))


def test_data_is_there():
    assert len(ALL) == 21
    assert {"show-protocols-all-bgp", "configure-errors", "live-reconfigure-progress"} <= set(ALL)


# ----------------------------------------------------------------- framing


@pytest.mark.parametrize("name", ALL)
def test_every_transcript_frames_into_one_reply_per_command(name):
    commands, lines = transcript(name)
    got, asyncs, tail = parse_replies(lines)
    if name in FRAGMENTS:
        # Elided with "..." in the research notes: no final line, but framing holds.
        assert got == [] and tail and tail[0].code in (1002, 1007)
        return
    assert tail == ()
    # 'reload bgp NAME' without a direction answers twice (bird3.md §3.4).
    double = sum(1 for c in commands if re.fullmatch(r"reload bgp \S+", c))
    expected = len(commands) + double if commands else 1
    assert len(got) == expected
    assert [a.text for a in asyncs] == (
        ["Config timeout expired, starting undo"] if name == "configure-auto-undo" else []
    )


def test_replies_never_span_a_command_boundary():
    """Each '>>>' line in a transcript falls between two replies, never inside one."""
    for name in ALL:
        if name in FRAGMENTS or name == "live-undo-while-reconfiguring":  # two pipelined commands
            continue
        asm = ReplyAssembler()
        for raw in (DATA / f"{name}.txt").read_text().split("\n")[:-1]:
            if raw.startswith(">>> "):
                assert asm.partial == (), (name, raw)
            elif not ANNOTATION.match(raw):
                asm.feed(raw)


def test_continuation_inherits_code_and_keeps_its_indentation():
    reply = replies("show-protocols-all-bgp")[0]
    assert reply.code == 0
    neighbor = next(line for line in reply.lines if "Neighbor address" in line.text)
    # One space stripped, the rest is BIRD's own indentation.
    assert neighbor == ReplyLine(1006, "    Neighbor address: fe80::b%vA")
    assert reply.lines[-2] == ReplyLine(1006, "")  # the " " line closing the protocol block
    assert [line.code for line in reply.lines[:3]] == [2002, 1002, 1006]


def test_go_agents_end_of_reply_rule_would_have_desynchronised():
    """The Go agent ended a reply at any line whose fifth character is a space."""
    _, lines = transcript("show-protocols-all-bgp")
    go_end = next(i for i, raw in enumerate(lines) if len(raw) > 4 and raw[4] == " ")
    assert lines[go_end].startswith("   ")  # a continuation line, far from the real end
    assert go_end < len(lines) - 1
    asm = ReplyAssembler()
    assert all(asm.feed(raw) is None for raw in lines[: go_end + 1])
    got, _, tail = parse_replies(lines)
    assert len(got) == 1 and tail == () and len(got[0].lines) == len(lines)


def test_route_attribute_continuations_with_tabs():
    reply = replies("show-route-wrapped")[0]
    assert reply.lines[2] == ReplyLine(1012, "\tbgp_community: (64511,1000) (64511,1001) … (64511,1035)")
    assert reply.lines[3] == ReplyLine(1012, "\t\t(64511,1036) (64511,1037) … (64511,1072)")
    assert reply.lines[-2].code == 1008


@pytest.mark.parametrize(
    "raw",
    [
        "    three-or-more spaces",
        "     Routes:         1 imported, 1 filtered, 1 exported, 1 preferred",
        " 0000 looks like a code but is continuation",
        " ",
        " \t\tdouble tab",
    ],
)
def test_space_lines_are_continuations(raw):
    asm = ReplyAssembler()
    assert asm.feed("1006-  Created:") is None
    assert asm.feed(raw) is None
    reply = asm.feed("0000 ")
    assert isinstance(reply, Reply)
    assert reply.lines[1] == ReplyLine(1006, raw[1:])


def test_async_lines_do_not_end_or_break_a_reply():
    asm = ReplyAssembler()
    assert asm.feed("1007-Table master4:") is None
    assert asm.feed("+Config timeout expired, starting undo") == AsyncMessage(
        "Config timeout expired, starting undo"
    )
    assert asm.feed(" 10.0.0.0/24 unreachable") is None
    reply = asm.feed("0000 ")
    assert isinstance(reply, Reply)
    assert [line.code for line in reply.lines] == [1007, 1007, 0]
    assert asm.feed("+idle message") == AsyncMessage("idle message")
    assert asm.partial == ()


@pytest.mark.parametrize(
    "raw",
    ["", "garbage", "12345 five digits", "000a-x", "0000", "0000x", "\t0000 tab", "-0000 "],
)
def test_invalid_lines_are_protocol_errors(raw):
    asm = ReplyAssembler()
    asm.feed("1000-BIRD 3.3.2")
    with pytest.raises(BirdProtocolError):
        asm.feed(raw)


def test_continuation_outside_a_reply_is_a_protocol_error():
    with pytest.raises(BirdProtocolError):
        ReplyAssembler().feed(" orphan")
    asm = ReplyAssembler()
    asm.feed("0000 ")
    with pytest.raises(BirdProtocolError):
        asm.feed(" after the end")


def test_empty_final_text():
    reply = ReplyAssembler().feed("0000 ")
    assert isinstance(reply, Reply)
    assert reply.code == 0 and reply.lines == (ReplyLine(0, ""),) and reply.ok


# ------------------------------------------------------------------ errors


def test_an_error_line_anywhere_makes_the_reply_an_error():
    reply = reply_to("enable-disable-reload-errors", "reload filters all")
    assert reply.code == 0  # the final code alone says OK...
    assert not reply.ok
    assert [e.text for e in reply.errors] == ["dn42_igp: reload failed", "dn42_lo: reload failed"]
    with pytest.raises(BirdError) as exc:
        reply.raise_for_error("reload filters all")
    assert exc.value.code == 8006
    assert exc.value.message == "dn42_igp: reload failed\ndn42_lo: reload failed"
    assert not isinstance(exc.value, BirdConfigError)
    assert "8006" in str(exc.value) and "reload filters all" in str(exc.value)


@pytest.mark.parametrize(
    ("command", "code", "message"),
    [
        ("disable nosuchproto", 9001, "syntax error, unexpected CF_SYM_UNDEFINED, expecting CF_SYM_KNOWN"),
        ('disable "nomatch*"', 8003, "No protocols match"),
        ("show protocols dn42_roa", 9001, "Protocol name required"),
        ("reload bgp in dn42_as4242420002", 8006, "dn42_as4242420002: not reloading, not up"),
        ("configure check", 8007, "Access denied"),
        ("echo all", 9001, "syntax error"),
    ],
)
def test_error_replies(command, code, message):
    reply = reply_to("enable-disable-reload-errors", command)
    with pytest.raises(BirdError) as exc:
        reply.raise_for_error(command)
    assert exc.value.code == code
    assert exc.value.message.startswith(message)
    assert exc.value.reply is reply


def test_ok_replies_pass():
    for command in ("disable dn42_as4242420002", 'restart "dn42_*"', "restrict"):
        reply = reply_to("enable-disable-reload-errors", command)
        assert reply.ok and reply.raise_for_error() is reply
    assert reply_to("enable-disable-reload-errors", 'restart "dn42_*"').texts(12) == [
        "dn42_igp: restarted",
        "dn42_as4242420002: restarted",
        "dn42_lo: restarted",
    ]
    assert reply_to("show-route", "show route for 10.9.9.9").errors == (ReplyLine(8001, "Network not found"),)


# -------------------------------------------------------------- configure


def test_config_errors_carry_file_line_and_message():
    commands, lines = transcript("configure-errors")
    got = parse_replies(lines)[0]
    for command, reply in zip(commands, got, strict=True):
        with pytest.raises(BirdConfigError) as exc:
            parse_configure(reply, command)
        assert exc.value.code == 8002
    with pytest.raises(BirdConfigError) as exc:
        parse_configure(got[1], commands[1])
    err = exc.value
    assert err.message == "lab/A-broken.conf:244:3 syntax error, unexpected CF_SYM_UNDEFINED"
    assert (err.file, err.line, err.column) == ("lab/A-broken.conf", 244, 3)
    assert err.detail == "syntax error, unexpected CF_SYM_UNDEFINED"
    assert err.command == 'configure "lab/A-broken.conf"'
    with pytest.raises(BirdConfigError) as exc:
        parse_configure(got[2], commands[2])
    assert exc.value.file is None and exc.value.message == "lab/nonexistent.conf: No such file or directory"
    with pytest.raises(BirdConfigError) as exc:
        parse_configure(got[3], commands[3])
    assert exc.value.line == 242 and exc.value.detail.startswith("Kernel syncer (kernel4) already attached")


def test_reading_configuration_is_never_success_on_its_own():
    """The Go agent took '0002-' as success; 0002 precedes every 8002."""
    reply = Reply((ReplyLine(2, "Reading configuration from x.conf"), ReplyLine(8002, "x.conf:1:1 boom")))
    with pytest.raises(BirdConfigError):
        parse_configure(reply, "configure")


def test_configure_results():
    check = parse_configure(reply_to("greeting-status-configure", "configure check"), "configure check")
    assert (check.code, check.message, check.path) == (20, "Configuration OK", "lab/A.conf")
    done = parse_configure(reply_to("greeting-status-configure", "configure"), "configure")
    assert done.code == ReconfigState.DONE and not done.asynchronous
    progress = parse_configure(replies("configure-in-progress")[0], "configure")
    assert progress.code == ReconfigState.IN_PROGRESS and progress.asynchronous
    soft = parse_configure(replies("configure-soft")[0], 'configure soft "lab/A-roa.conf"')
    assert (soft.code, soft.path) == (3, "lab/A-roa.conf")
    queued = parse_configure(replies("configure-timeout-queued-confirm")[0], "configure timeout 60")
    assert (queued.code, queued.undo_in) == (5, 60.0) and queued.asynchronous
    confirmed = parse_configure(replies("configure-timeout-queued-confirm")[2], "configure confirm")
    assert (confirmed.code, confirmed.message) == (18, "Reconfiguration confirmed")
    nothing = parse_configure(replies("configure-timeout-queued-confirm")[3], "configure confirm")
    assert nothing.code == 19
    timed = parse_configure(replies("configure-auto-undo")[0], "configure timeout 3")
    assert (timed.code, timed.undo_in, timed.path) == (3, 3.0, "lab/A-comm.conf")
    undo = parse_configure(replies("configure-undo")[0], "configure undo")
    assert undo.code == 4 and undo.path is None


def test_config_status():
    statuses = [
        parse_config_status(r) for r in replies("configure-in-progress")[1:]
    ]  # 0004 first, then 0003 after polling
    assert [s.state for s in statuses] == [ReconfigState.IN_PROGRESS, ReconfigState.DONE]
    assert statuses[1].idle and not statuses[0].idle
    queued = parse_config_status(replies("configure-timeout-queued-confirm")[1])
    assert queued.state is ReconfigState.QUEUED and queued.undo_in == pytest.approx(59.999)
    idle = parse_config_status(reply_to("greeting-status-configure", "configure status"))
    assert idle.idle and idle.undo_in is None


def test_live_reconfiguration_progress_is_visible_until_it_has_finished():
    commands, lines = transcript("live-reconfigure-progress")
    got = parse_replies(lines)[0][1:]  # skip the greeting
    states = [
        parse_config_status(r).state
        for c, r in zip(commands[1:], got, strict=True)
        if c == "configure status"
    ]
    assert states[0] is ReconfigState.IN_PROGRESS and states[-1] is ReconfigState.DONE
    status = [parse_status(r) for c, r in zip(commands[1:], got, strict=True) if c == "show status"]
    assert [s.reconfiguring for s in status] == [True, False]
    # A queued undo: BIRD's last words before it aborted.
    _, undo_lines = transcript("live-undo-while-reconfiguring")
    last = parse_replies(undo_lines)[0][-1]
    assert parse_configure(last, "configure undo").code == ReconfigState.QUEUED


def test_status():
    status = parse_status(reply_to("greeting-status-configure", "show status"))
    assert status.version == "3.3.2"
    assert status.router_id == "172.20.1.1"
    assert status.hostname == "vm"
    assert status.last_reconfiguration == "2026-11-27 19:25:35.838"
    assert status.message == "Daemon is up and running" and not status.reconfiguring


# --------------------------------------------------------------- commands


def test_commands_are_validated():
    assert encode_command("show status") == b"show status\n"
    for bad in ("show status\nconfigure", "show\rstatus", "", "   ", "a\0b"):
        with pytest.raises(ValueError):
            encode_command(bad)
    with pytest.raises(ValueError, match="too long"):
        encode_command("show route for " + "x" * MAX_COMMAND_BYTES)
    for twice in ("reload bgp", "reload bgp dn42_x", "RELOAD BGP dn42_x"):
        with pytest.raises(ValueError, match="two replies"):
            encode_command(twice)
    assert encode_command("reload bgp in dn42_x") == b"reload bgp in dn42_x\n"
    assert encode_command("reload bgp out") == b"reload bgp out\n"


def test_quote_refuses_what_bird_cannot_read():
    assert quote("/etc/bird/bird.conf") == '"/etc/bird/bird.conf"'
    for bad in ('a"b', "a\\b", "a\nb", "a\tb"):
        with pytest.raises(ValueError):
            quote(bad)


# -------------------------------------------------------------- protocols


def test_show_protocols_table():
    protos = parse_protocols(replies("show-protocols")[0])
    assert [p.name for p in protos] == [
        "roa_lab4",
        "roa_lab6",
        "kernel4",
        "kernel6",
        "own4",
        "own6",
        "rpki_burble",
        "dn42_igp",
        "dn42_as4242420002",
        "ibgp_node_c",
        "device1",
        "dn42_lo",
    ]
    by = {p.name: p for p in protos}
    assert isinstance(by["own4"], ProtocolState)
    assert (by["roa_lab6"].proto, by["roa_lab6"].table, by["roa_lab6"].state) == (
        "Static",
        "dn42_roa_v6",
        "up",
    )
    assert by["rpki_burble"].table is None and by["rpki_burble"].info == "Transport-Error"
    assert by["rpki_burble"].state == "start"
    assert by["dn42_as4242420002"].info == "Established"  # the %-14s padding is stripped
    assert by["dn42_as4242420002"].since == "19:25:40.841"
    assert by["device1"].info == "" and by["device1"].bgp_state is None and by["device1"].routes == {}


def test_show_protocols_with_epoch_times_and_flush():
    protos = parse_protocols(replies("show-protocols-timeformat")[1])
    assert [(p.name, p.state, p.since, p.info) for p in protos] == [
        ("dn42_as4242420002", "up", "1795807415", "Established"),
        ("dn42_as4242420009", "down", "1795807409", ""),
    ]
    flush = parse_protocols(reply_to("enable-disable-reload-errors", "show protocols dn42_as4242420002"))
    assert [(p.state, p.info) for p in flush] == [("flush", "Flush")]


def test_show_protocols_all_bgp_established():
    [p] = parse_protocols(replies("show-protocols-all-bgp")[0])
    assert (p.name, p.proto, p.table, p.state, p.since) == (
        "dn42_as4242420002",
        "BGP",
        None,
        "up",
        "19:25:40.841",
    )
    assert p.info == "Established" and p.bgp_state == "Established"
    assert p.neighbor == "fe80::b%vA" and p.neighbor_as == 4242420002 and p.local_as == 4242420001
    assert p.last_error is None
    assert p.routes == {
        "ipv4": {"imported": 1, "filtered": 1, "exported": 1, "preferred": 1},
        "ipv6": {"imported": 1, "filtered": 0, "exported": 1, "preferred": 1},
    }
    v4 = p.channels["ipv4"]
    assert (v4.state, v4.import_state, v4.export_state, v4.table) == ("UP", "UP", "READY", "master4")
    assert v4.details["Import limit"] == "9000" and v4.details["BGP Next hop"] == ":: fe80::a"
    assert "Action" not in v4.details  # a sub-item of the limit, not a fact of the channel
    assert p.details["Session"] == "external AS4"
    assert p.details["Source address"] == "fe80::a"
    assert "AF announced" not in p.details  # capability sub-items stay out


def test_show_protocols_all_bgp_not_up():
    _, lines = transcript("show-protocols-all-bgp-down")
    _, _, tail = parse_replies(lines)
    connect, down = parse_protocols(tail)
    assert (connect.state, connect.info, connect.bgp_state) == ("start", "Connect", "Connect")
    assert connect.neighbor == "fe80::9%vA" and connect.neighbor_as == 4242420009
    assert connect.routes == {}  # no 'Routes:' line while the channel is DOWN
    assert connect.channels["ipv4"].state == "DOWN" and connect.channels["ipv4"].imported is None
    assert (down.state, down.info, down.bgp_state, down.since) == ("down", "", "Down", "19:23:29.408")
    assert down.channels == {}


def test_show_protocols_all_rpki():
    _, lines = transcript("show-protocols-all-rpki")
    [p] = parse_protocols(parse_replies(lines)[2])
    assert (p.proto, p.state, p.info) == ("RPKI", "start", "Transport-Error")
    assert p.details["Status"] == "Transport-Error" and p.details["Cache port"] == "8082"
    assert p.details["Refresh timer"] == "---"
    assert list(p.channels) == ["roa4"]  # "No aspa channel" is not a channel
    assert p.bgp_state is None and p.neighbor is None


def test_show_protocols_all_live():
    commands, lines = transcript("live-show-protocols-all")
    reply = parse_replies(lines)[0][commands.index("show protocols all")]
    by = {p.name: p for p in parse_protocols(reply)}
    assert list(by) == ["device1", "s1", "s2", "b1", "b2"]
    assert by["s1"].routes == {"ipv4": {"imported": 2, "filtered": 0, "exported": 0, "preferred": 2}}
    assert by["s2"].table == "t2" and by["s2"].channels["ipv4"].table == "t2"
    b1, b2 = by["b1"], by["b2"]
    assert (b1.bgp_state, b1.neighbor, b1.neighbor_as, b1.local_as) == (
        "Established",
        "127.0.0.2",
        65002,
        65001,
    )
    assert b1.details["Router ID"] == "192.0.2.11"
    assert b1.routes["ipv4"] == {"imported": 3, "filtered": 0, "exported": 2, "preferred": 3}
    assert b1.channels["ipv4"].filtered == 0  # import table on: reported
    assert b2.routes["ipv4"] == {"imported": 1, "filtered": 0, "exported": 3, "preferred": 1}
    assert b2.channels["ipv4"].filtered is None  # not reported without an import table


def test_last_error_and_padded_info():
    reply = parse_replies(
        [
            "1002-dn42_as4242420003 BGP        ---        start  1795807409    Active        Socket: Connection reset by peer",
            "1006-  Created:            1795807400",
            "   BGP state:          Active",
            "     Neighbor address: fe80::3%wg-as4242420003",
            "     Neighbor AS:      4242420003",
            "     Local AS:         4242420001",
            "     Last error:       Socket: Connection reset by peer",
            " ",
            "1002-longer_name_than_ten BGP --- up 2026-11-27 19:25:35  Established   ",
            "1002-x Kernel master4 up 2026-11-27",
            "0000 ",
        ]
    )[0][0]
    a, b, c = parse_protocols(reply)
    assert a.info == "Active        Socket: Connection reset by peer"
    assert a.last_error == "Socket: Connection reset by peer" and a.neighbor == "fe80::3%wg-as4242420003"
    assert (b.name, b.since, b.info) == ("longer_name_than_ten", "2026-11-27 19:25:35", "Established")
    assert (c.since, c.info) == ("2026-11-27", "")


def test_unparsable_protocol_row():
    with pytest.raises(BirdProtocolError):
        parse_protocols([ReplyLine(1002, "only three fields")])


def test_protocols_reply_with_error_raises():
    with pytest.raises(BirdError):
        parse_protocols(reply_to("enable-disable-reload-errors", "show protocols dn42_roa"))


def synthetic_reply(count: int) -> list[str]:
    """``show protocols all`` for ``count`` BGP sessions, built from the real block."""
    _, lines = transcript("show-protocols-all-bgp")
    header, row, block = lines[0], lines[1], lines[2:-1]
    out = [header]
    for i in range(count):
        name = f"dn42_as{4242420000 + i}_{i % 7}"
        out.append(row.replace("dn42_as4242420002", name))
        out.extend(line.replace("1 imported", f"{i} imported") for line in block)
    out.append("0000 ")
    return out


def test_a_thousand_protocols():
    lines = synthetic_reply(1000)
    start = time.perf_counter()
    got, _, tail = parse_replies(lines)
    framed = time.perf_counter()
    protos = parse_protocols(got[0])
    parsed = time.perf_counter()
    assert tail == () and len(got) == 1
    assert len(protos) == 1000 and len({p.name for p in protos}) == 1000
    assert protos[999].routes["ipv4"]["imported"] == 999
    assert all(p.bgp_state == "Established" and set(p.routes) == {"ipv4", "ipv6"} for p in protos)
    print(
        f"\n1000 protocols, {len(lines)} lines: framing {1000 * (framed - start):.1f} ms,"
        f" parsing {1000 * (parsed - framed):.1f} ms"
    )
    assert parsed - start < 5.0  # generous: a 2-core CI machine; measured ~0.1 s


def feed_all(asm: ReplyAssembler, lines: list[str]) -> Reply:
    out = [asm.feed(line) for line in lines]
    assert all(x is None for x in out[:-1]) and isinstance(out[-1], Reply)
    return out[-1]


def test_protocols_parsed_as_the_lines_arrive():
    """The client's way: a ProtocolsParser as the assembler's sink takes every row and
    detail line, so the reply keeps only its header and final line, and the result is
    what parsing the whole reply gives."""
    lines = synthetic_reply(1000)
    whole = parse_protocols(parse_replies(lines)[0][0])
    asm = ReplyAssembler()
    asm.sink = parser = ProtocolsParser()
    reply = feed_all(asm, lines)
    assert [line.code for line in reply.lines] == [2002, 0]
    assert parser.result() == whole and len(whole) == 1000
    assert parser.result()[999].routes["ipv4"]["imported"] == 999
    assert [p.details for p in parser.result()] == [p.details for p in whole]  # eq=False field

    # Error lines are never taken: the reply still carries the verdict.
    commands, raw = transcript("enable-disable-reload-errors")
    asm = ReplyAssembler()
    asm.sink = ProtocolsParser()
    seen = [got for got in map(asm.feed, raw) if isinstance(got, Reply)]
    with pytest.raises(BirdError, match="dn42_roa"):
        seen[commands.index("show protocols dn42_roa")].raise_for_error("show protocols dn42_roa")


def test_a_lean_read_keeps_the_typed_fields_and_only_the_limits_in_details() -> None:
    """The node's periodic read gives the typed fields exactly as a full read does;
    its details keep only what has no typed field (the channels' route limits);
    few-valued texts are shared."""
    lines = synthetic_reply(50)
    full = parse_protocols(parse_replies(lines)[0][0])
    asm = ReplyAssembler()
    asm.sink = parser = ProtocolsParser(lean=True)
    feed_all(asm, lines)
    lean = parser.result()
    assert lean == full  # every compared field (details are eq=False)
    limits = 0
    for a, b in zip(lean, full, strict=True):
        assert dict(a.details) == {} and b.details
        for name, ch in a.channels.items():
            wanted = {k: v for k, v in b.channels[name].details.items() if k in LEAN_DETAILS}
            assert dict(ch.details) == wanted and "Routes" in b.channels[name].details
            limits += len(wanted)
    assert limits > 0  # the reply has limits, and the lean read kept them
    assert lean[0].bgp_state is lean[1].bgp_state
