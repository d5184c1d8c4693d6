"""Domain values shared between the core, plugins and the control plane."""

from __future__ import annotations

import enum


class SessionStatus(enum.IntEnum):
    """eBGP session status codes, numbered as the seed specification numbers them.

    The Go agent used a different numbering (iedon's); we follow the seed, which is
    what the CP documents.
    """

    DISABLED = 0
    ACTIVE = 1
    ERROR = 2
    PENDING_REVIEW = 3
    QUEUED_FOR_SETUP = 4
    QUEUED_FOR_DELETE = 5
    SETUP_FAILED = 6


class StatusScheme(enum.StrEnum):
    """How a CP numbers session statuses (``controlPlane.statusScheme``).

    ``seed``: :class:`SessionStatus` as it is. ``go``: the Go agent's (iedon's)
    numbering, 0 Deleted, 1 Disabled, 2 Enabled, 3 PendingApproval, 4
    QueuedForSetup, 5 QueuedForDelete, 6 Problem, 7 Teardown; mapped both ways by
    :func:`status_from_wire` and :func:`status_to_wire`. The scheme is local
    configuration only: it is never guessed from what the CP sends.
    """

    SEED = "seed"
    GO = "go"


#: The Go agent's status names by code (go-agent.md §4.1).
GO_STATUS_NAMES: dict[int, str] = {
    0: "Deleted",
    1: "Disabled",
    2: "Enabled",
    3: "PendingApproval",
    4: "QueuedForSetup",
    5: "QueuedForDelete",
    6: "Problem",
    7: "Teardown",
}

#: Go code -> what the agent does with it. Deleted and Teardown both mean "not on
#: this node" (the tunnel and BGP session are removed, like Disabled); Problem is a
#: session the CP still wants, kept configured and repaired (our ERROR).
GO_TO_STATUS: dict[int, SessionStatus] = {
    0: SessionStatus.DISABLED,
    1: SessionStatus.DISABLED,
    2: SessionStatus.ACTIVE,
    3: SessionStatus.PENDING_REVIEW,
    4: SessionStatus.QUEUED_FOR_SETUP,
    5: SessionStatus.QUEUED_FOR_DELETE,
    6: SessionStatus.ERROR,
    7: SessionStatus.DISABLED,
}

#: Status reported -> Go code. A finished delete is reported 0 (Deleted) instead,
#: as the Go agent did (:func:`status_to_wire`).
STATUS_TO_GO: dict[SessionStatus, int] = {
    SessionStatus.DISABLED: 1,
    SessionStatus.ACTIVE: 2,
    SessionStatus.ERROR: 6,
    SessionStatus.PENDING_REVIEW: 3,
    SessionStatus.QUEUED_FOR_SETUP: 4,
    SessionStatus.QUEUED_FOR_DELETE: 5,
    SessionStatus.SETUP_FAILED: 6,
}


def status_codes(scheme: StatusScheme | str) -> str:
    """The valid codes of ``scheme``, for error messages (``0-6``, ``0-7``)."""
    return "0-7" if StatusScheme(scheme) is StatusScheme.GO else "0-6"


def status_from_wire(code: int, scheme: StatusScheme | str) -> SessionStatus:
    """The status a CP code means under ``scheme``; ValueError for an unknown code."""
    if isinstance(code, bool) or not isinstance(code, int):
        raise ValueError(f"not a status code: {code!r}")
    if StatusScheme(scheme) is StatusScheme.GO:
        if code not in GO_TO_STATUS:
            raise ValueError(f"unknown status code {code} (the go scheme has {status_codes(scheme)})")
        return GO_TO_STATUS[code]
    if code not in SessionStatus._value2member_map_:
        raise ValueError(f"unknown status code {code} (the seed scheme has {status_codes(scheme)})")
    return SessionStatus(code)


def status_to_wire(status: SessionStatus, scheme: StatusScheme | str, *, deleted: bool = False) -> int:
    """The code to send for ``status`` under ``scheme``; ``deleted``: the report
    acknowledges a finished delete (Go: 0 Deleted; seed: the status as it is)."""
    if StatusScheme(scheme) is StatusScheme.GO:
        return 0 if deleted else STATUS_TO_GO[status]
    return int(status)
