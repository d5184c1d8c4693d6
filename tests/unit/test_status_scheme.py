"""``controlPlane.statusScheme``: the Go agent's status numbering, both ways."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from moenet_sessions.model import Invalid, Session, parse_sessions
from moenet_sessions.records import Report

from moenet_core.config import ControlPlaneConfig, structure
from moenet_core.models import (
    GO_STATUS_NAMES,
    SessionStatus,
    StatusScheme,
    status_from_wire,
    status_to_wire,
)

KEY = base64.b64encode(b"\x01" * 32).decode()
UUID = "00000000-0000-4000-8000-000000000001"


def item(status: Any) -> dict[str, Any]:
    return {
        "uuid": UUID,
        "asn": 4242420001,
        "status": status,
        "interface": "wg1",
        "endpoint": "198.51.100.1:51820",
        "credential": KEY,
        "ipv6LinkLocal": "fe80::1",
        "port": 20001,
    }


GO_IN = {
    0: SessionStatus.DISABLED,  # Deleted: nothing on the node
    1: SessionStatus.DISABLED,
    2: SessionStatus.ACTIVE,
    3: SessionStatus.PENDING_REVIEW,
    4: SessionStatus.QUEUED_FOR_SETUP,
    5: SessionStatus.QUEUED_FOR_DELETE,
    6: SessionStatus.ERROR,  # Problem: still wanted, kept configured and repaired
    7: SessionStatus.DISABLED,  # Teardown
}


@pytest.mark.parametrize(("code", "status"), sorted(GO_IN.items()))
def test_go_codes_in(code: int, status: SessionStatus) -> None:
    assert status_from_wire(code, "go") is status
    ok, bad = parse_sessions([item(code)], status_scheme="go")
    assert bad == [] and isinstance(ok[0], Session) and ok[0].status is status


def test_go_scheme_differs_from_seed_where_the_numbers_clash() -> None:
    # 1 is ACTIVE in the seed's numbering and Disabled in Go's: the scheme decides.
    (seed,), _ = parse_sessions([item(1)])
    (go,), _ = parse_sessions([item(1)], status_scheme=StatusScheme.GO)
    assert seed.status is SessionStatus.ACTIVE and go.status is SessionStatus.DISABLED
    assert set(GO_STATUS_NAMES) == set(GO_IN)


@pytest.mark.parametrize(
    ("scheme", "code"), [("seed", 7), ("seed", -1), ("go", 8), ("go", "2"), ("go", True)]
)
def test_unknown_codes_are_invalid_naming_the_field(scheme: str, code: Any) -> None:
    ok, bad = parse_sessions([item(code)], status_scheme=scheme)
    assert ok == [] and len(bad) == 1 and isinstance(bad[0], Invalid)
    reason = bad[0].reason
    assert f"sessions[{UUID}].status" in reason
    assert ("0-7" if scheme == "go" else "0-6") in reason and f"statusScheme {scheme}" in reason


def test_seed_is_unchanged() -> None:
    for s in SessionStatus:
        assert status_from_wire(int(s), "seed") is s
        assert status_to_wire(s, "seed") == int(s)
        assert status_to_wire(s, "seed", deleted=True) == int(s)


def test_go_codes_out() -> None:
    assert status_to_wire(SessionStatus.ACTIVE, "go") == 2
    assert status_to_wire(SessionStatus.ERROR, "go") == 6
    assert status_to_wire(SessionStatus.SETUP_FAILED, "go") == 6
    assert status_to_wire(SessionStatus.DISABLED, "go") == 1
    assert status_to_wire(SessionStatus.DISABLED, "go", deleted=True) == 0
    for s in SessionStatus:  # every status has a Go code
        assert status_to_wire(s, "go") in GO_STATUS_NAMES


def test_reports_on_the_wire() -> None:
    active = Report(uuid=UUID, status=SessionStatus.ACTIVE)
    failed = Report(uuid=UUID, status=SessionStatus.SETUP_FAILED, last_error="no key")
    deleted = Report(uuid=UUID, status=SessionStatus.DISABLED, removed=True, deleted=True)
    echo = Report(uuid=UUID, status=SessionStatus.DISABLED, removed=True)
    assert active.to_wire("seed") == {"uuid": UUID, "status": 1}
    assert active.to_wire("go") == {"uuid": UUID, "status": 2}
    assert failed.to_wire("go") == {"uuid": UUID, "status": 6, "lastError": "no key"}
    assert failed.to_wire("seed") == {"uuid": UUID, "status": 6, "lastError": "no key"}
    # A finished delete: seed says DISABLED + removed, Go says Deleted (what the Go agent sent).
    assert deleted.to_wire("seed") == {"uuid": UUID, "status": 0, "removed": True}
    assert deleted.to_wire("go") == {"uuid": UUID, "status": 0}
    # A removal that only echoes the CP's own Disabled/Deleted/Teardown: nothing for the Go CP.
    assert echo.to_wire("seed") == {"uuid": UUID, "status": 0, "removed": True}
    assert echo.to_wire("go") is None
    # The flag survives the state file.
    assert Report.from_json(deleted.to_json()).deleted is True
    assert Report.from_json(echo.to_json()).deleted is False
    assert Report.from_json(deleted.to_json()).to_wire("go") == {"uuid": UUID, "status": 0}


def test_config_option() -> None:
    cfg, errs = structure(ControlPlaneConfig, {}, "controlPlane", [])
    assert errs == [] and cfg is not None and cfg.status_scheme == "seed"
    cfg, errs = structure(ControlPlaneConfig, {"statusScheme": "go"}, "controlPlane", [])
    assert errs == [] and cfg is not None and cfg.status_scheme == "go"
    _, errs = structure(ControlPlaneConfig, {"statusScheme": "iedon"}, "controlPlane", [])
    assert len(errs) == 1 and "controlPlane.statusScheme" in errs[0]
