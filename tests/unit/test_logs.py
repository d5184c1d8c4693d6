"""Tests for moenet_core.logs: JSON/text sinks, redaction, the stdlib bridge."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger

from moenet_core import logs
from moenet_core.logs import add_secret, clear_secrets, reset_logging, setup_logging


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    clear_secrets()
    yield
    reset_logging()
    clear_secrets()
    logging.getLogger().setLevel(logging.WARNING)


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_line_fields_and_extras_flattened() -> None:
    out = io.StringIO()
    setup_logging(fmt="json", stream=out)
    logger.bind(session="s-1", asn=4242420001, plugin="wireguard", resource="sessions").info(
        "hello {}", "world"
    )
    (line,) = json_lines(out)
    assert list(line)[:3] == ["time", "level", "msg"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    assert line["level"] == "INFO"
    assert line["msg"] == "hello world"
    assert line["session"] == "s-1"
    assert line["asn"] == 4242420001
    assert line["plugin"] == "wireguard"
    assert line["resource"] == "sessions"
    assert "exc" not in line
    # one compact object per line
    assert "\n" not in out.getvalue().rstrip("\n")
    assert ": " not in out.getvalue()


def test_json_non_serialisable_extra_becomes_str_and_reserved_names_kept_apart() -> None:
    out = io.StringIO()
    setup_logging(fmt="json", stream=out)

    class Thing:
        def __str__(self) -> str:
            return "thing!"

    logger.bind(obj=Thing(), nested={"a": [1, "x"]}, msg="clash").info("m")
    (line,) = json_lines(out)
    assert line["obj"] == "thing!"
    assert line["nested"] == {"a": [1, "x"]}
    assert line["msg"] == "m"
    assert line["extra.msg"] == "clash"


def test_json_contextualize_extras() -> None:
    out = io.StringIO()
    setup_logging(fmt="json", stream=out)
    with logger.contextualize(task="sessionSync"):
        logger.info("run")
    assert json_lines(out)[0]["task"] == "sessionSync"


@pytest.mark.parametrize(
    "key",
    [
        "token",
        "cp_token",
        "apiToken",
        "secret",
        "password",
        "private_key",
        "privateKey",
        "psk",
        "preshared_key",
        "presharedKey",
        "Authorization",
    ],
)
def test_secret_named_extras_redacted(key: str) -> None:
    out = io.StringIO()
    setup_logging(fmt="json", stream=out)
    logger.bind(**{key: "hunter2-value"}).info("x")
    assert json_lines(out)[0][key] == "***"
    assert "hunter2-value" not in out.getvalue()


def test_nested_secret_key_redacted() -> None:
    out = io.StringIO()
    setup_logging(fmt="json", stream=out)
    logger.bind(peer={"name": "p", "psk": "abcdefgh"}).info("x")
    assert json_lines(out)[0]["peer"] == {"name": "p", "psk": "***"}


def test_public_key_is_not_secret() -> None:
    out = io.StringIO()
    setup_logging(fmt="json", stream=out)
    logger.bind(public_key="pubkeyvalue=").info("x")
    assert json_lines(out)[0]["public_key"] == "pubkeyvalue="


def test_add_secret_redacts_message_extras_and_traceback() -> None:
    out = io.StringIO()
    setup_logging(fmt="json", stream=out)
    add_secret("s3cr3t-token-value")
    add_secret("abc")  # too short: ignored
    add_secret(None)
    logger.bind(url="https://cp/?t=s3cr3t-token-value").info("calling with s3cr3t-token-value abc")
    try:
        raise RuntimeError("bad token s3cr3t-token-value")
    except RuntimeError:
        logger.exception("failed")
    first, second = json_lines(out)
    assert first["msg"] == "calling with *** abc"
    assert first["url"] == "https://cp/?t=***"
    assert "Traceback" in second["exc"]
    assert "RuntimeError: bad token ***" in second["exc"]
    assert "s3cr3t-token-value" not in out.getvalue()


def test_longer_secret_containing_shorter_is_replaced_whole() -> None:
    out = io.StringIO()
    setup_logging(fmt="json", stream=out)
    add_secret("abcdef")
    add_secret("abcdefghij")
    logger.info("abcdefghij")
    assert json_lines(out)[0]["msg"] == "***"


def test_exception_field() -> None:
    out = io.StringIO()
    setup_logging(fmt="json", stream=out)
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        logger.opt(exception=True).error("boom")
    (line,) = json_lines(out)
    assert line["level"] == "ERROR"
    assert "ZeroDivisionError" in line["exc"]


def test_sink_does_not_mutate_record_extra() -> None:
    """Redaction happens in our sink only: another sink sees the record untouched."""
    out = io.StringIO()
    setup_logging(fmt="json", stream=out)
    seen: list[dict[str, Any]] = []
    hid = logger.add(lambda m: seen.append(dict(m.record["extra"])), format="{message}")
    try:
        logger.bind(token="original-token", peer="p").info("x")
    finally:
        logger.remove(hid)
    assert json_lines(out)[0]["token"] == "***"
    assert seen == [{"token": "original-token", "peer": "p"}]


def test_stdlib_logging_is_intercepted() -> None:
    out = io.StringIO()
    setup_logging(fmt="json", stream=out)
    logging.getLogger("aiohttp.server").warning("oops %s", 42)
    logging.getLogger("aiohttp.access").info("GET /metrics 200")  # suppressed
    logging.getLogger("aiohttp.access").warning("access problem")
    lines = json_lines(out)
    assert [(ln["level"], ln["msg"], ln["logger"]) for ln in lines] == [
        ("WARNING", "oops 42", "aiohttp.server"),
        ("WARNING", "access problem", "aiohttp.access"),
    ]


def test_stdlib_exception_is_intercepted() -> None:
    out = io.StringIO()
    setup_logging(fmt="json", stream=out)
    try:
        raise ValueError("nope")
    except ValueError:
        logging.getLogger("asyncio").exception("task died")
    (line,) = json_lines(out)
    assert line["level"] == "ERROR"
    assert "ValueError: nope" in line["exc"]


def test_text_mode_format() -> None:
    out = io.StringIO()
    setup_logging(fmt="text", stream=out)
    logger.bind(plugin="wireguard", task="sync", peer="a b", asn=4242420001, token="xyzxyzxyz").info(
        "line one\nforged"
    )
    text = out.getvalue()
    assert "\x1b[" not in text  # not a TTY: no colour
    assert re.fullmatch(
        r"\d\d:\d\d:\d\d\.\d{3} INFO     \[wireguard/sync\] line one\\nforged "
        r'peer="a b" asn=4242420001 token=\*\*\*\n',
        text,
    ), text


def test_text_mode_plugin_only_and_no_prefix() -> None:
    out = io.StringIO()
    setup_logging(fmt="text", stream=out)
    logger.bind(plugin="bird").warning("a")
    logger.error("b")
    first, second = out.getvalue().splitlines()
    assert first.endswith("WARNING  [bird] a")
    assert second.endswith("ERROR    b")


def test_text_mode_exception_follows_line() -> None:
    out = io.StringIO()
    setup_logging(fmt="text", stream=out)
    try:
        raise KeyError("k")
    except KeyError:
        logger.exception("failed")
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("ERROR    failed")
    assert lines[1].startswith("Traceback")
    assert lines[-1] == "KeyError: 'k'"


def test_colour_only_on_tty_and_auto_mode() -> None:
    tty = TtyStream()
    setup_logging(fmt="text", stream=tty)
    logger.info("coloured")
    assert "\x1b[" in tty.getvalue()

    tty2 = TtyStream()
    setup_logging(fmt="auto", stream=tty2)  # a terminal: text
    logger.info("hi")
    assert not tty2.getvalue().startswith("{")

    pipe = io.StringIO()
    setup_logging(fmt="auto", stream=pipe)  # not a terminal: JSON
    logger.info("hi")
    assert json_lines(pipe)[0]["msg"] == "hi"


def test_setup_is_idempotent() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging(fmt="json", stream=first)
    setup_logging(fmt="json", stream=second)
    logger.info("once")
    logging.getLogger("x").warning("stdlib once")
    assert first.getvalue() == ""
    assert [ln["msg"] for ln in json_lines(second)] == ["once", "stdlib once"]
    intercepts = [h for h in logging.getLogger().handlers if isinstance(h, logs.InterceptHandler)]
    assert len(intercepts) == 1


def test_level_filter_and_case_insensitive() -> None:
    out = io.StringIO()
    setup_logging(fmt="json", level="warning", stream=out)
    logger.info("hidden")
    logging.getLogger("pyroute2").info("hidden too")
    logger.warning("shown")
    assert [ln["msg"] for ln in json_lines(out)] == ["shown"]

    out2 = io.StringIO()
    setup_logging(fmt="json", level="Debug", stream=out2)
    logger.debug("dbg")
    assert json_lines(out2)[0]["level"] == "DEBUG"


@pytest.mark.parametrize("level", ["verbose", "", "NOTICE", "10"])  # TRACE is valid: test_logging_levels
def test_invalid_level_raises(level: str) -> None:
    with pytest.raises(ValueError, match="invalid log level"):
        setup_logging(level=level, stream=io.StringIO())


def test_invalid_format_raises() -> None:
    with pytest.raises(ValueError, match="invalid log format"):
        setup_logging(fmt="xml", stream=io.StringIO())
