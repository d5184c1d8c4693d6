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
