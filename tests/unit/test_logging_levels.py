"""Every ``logging.level`` that ``validate`` accepts also runs (issue 14, item 8):
TRACE, SUCCESS and CRITICAL used to pass ``validate`` and crash ``run``."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
from loguru import logger

from moenet_core.config import build_config
from moenet_core.errors import ConfigError
from moenet_core.logs import reset_logging, setup_logging

ORDER = ["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"]
STDLIB = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR}
STDLIB["CRITICAL"] = logging.CRITICAL


def accepted_levels() -> list[str]:
    """The levels the config validator accepts, found by asking it."""
    out = []
    for name in [*ORDER, "NOTICE", "FATAL", "WARN", "VERBOSE"]:
        try:
            build_config(
                {
                    "node": {"name": "n"},
                    "controlPlane": {"source": "file", "file": "/x"},
                    "logging": {"level": name.lower()},
                },
                env={},
            )
        except ConfigError:
            continue
        out.append(name)
    return out


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    yield
    reset_logging()


def test_the_validator_accepts_every_loguru_level() -> None:
    assert accepted_levels() == ORDER


@pytest.mark.parametrize("level", accepted_levels())
@pytest.mark.parametrize("spelling", [str.upper, str.lower])
def test_every_accepted_level_runs(level: str, spelling: object) -> None:
    stream = io.StringIO()
    setup_logging(fmt="json", level=spelling(level), stream=stream)  # type: ignore[operator]
    for name in ORDER:
        logger.log(name, "loguru {}", name)
    std = logging.getLogger("fuzz.stdlib")
    for name, number in STDLIB.items():
        std.log(number, "stdlib %s", name)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    threshold = ORDER.index(level)
    want_loguru = [f"loguru {n}" for n in ORDER[threshold:]]
    want_std = [f"stdlib {n}" for n in STDLIB if ORDER.index(n) >= threshold]
    assert [x["msg"] for x in lines if x["msg"].startswith("loguru")] == want_loguru
    assert [x["msg"] for x in lines if x["msg"].startswith("stdlib")] == want_std
    assert all(x["level"] == x["msg"].split()[1] for x in lines)


def test_an_unknown_level_is_still_refused() -> None:
    with pytest.raises(ValueError, match="invalid log level"):
        setup_logging(level="VERBOSE")
