"""The sessions plugin's persistent state: last valid answer, memory, outbox.

Three files in the plugin's :class:`~moenet_core.state.StateStore`, each written
atomically:

- ``answer.json``: the last CP answer whose shape was valid. When the CP is
  unreachable, and right after a restart, the reconciler keeps serving it instead
  of an empty list (which would mean "remove everything").
- ``state.json``: :class:`~.records.Previous` (configured per uuid, last reports,
  CP statuses seen).
- ``outbox.json``: status reports waiting for the CP, FIFO, one per uuid.

A file that exists but does not decode raises :class:`SessionStateError` naming
the file: an operator must look, the agent must not start from "nothing".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from moenet_core.state import StateError, StateStore

from .model import SessionsPayloadError, parse_sessions
from .records import Previous, RecordError, Report

ANSWER_FILE = "answer.json"
STATE_FILE = "state.json"
OUTBOX_FILE = "outbox.json"


class SessionStateError(StateError):
    """A sessions state file exists but is unusable."""


class SessionStore:
    """The last valid CP answer and the reconciler's memory."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def load_answer(self) -> Any | None:
        """The last valid CP answer (raw JSON, re-parse with ``parse_sessions``), or None."""
        raw = self.store.read_json(ANSWER_FILE)
        if raw is None:
            return None
        if not isinstance(raw, Mapping) or raw.get("version") != 1 or "answer" not in raw:
            raise SessionStateError(f"{self.store.path(ANSWER_FILE)}: not a version-1 saved answer")
        try:
            parse_sessions(raw["answer"])
        except SessionsPayloadError as exc:
            raise SessionStateError(
                f"{self.store.path(ANSWER_FILE)}: saved answer is unusable: {exc}"
            ) from None
        return raw["answer"]

    def save_answer(self, answer: Any) -> bool:
        """Persist ``answer`` (only call with an answer ``parse_sessions`` accepted).
        Returns False, writing nothing, when it equals the saved one."""
        doc = {"version": 1, "answer": answer}
        if self.store.read_json(ANSWER_FILE) == doc:
            return False
        self.store.write_json(ANSWER_FILE, doc)
        return True

    def load_previous(self) -> Previous:
        """The persisted memory; empty only when the file does not exist."""
        raw = self.store.read_json(STATE_FILE)
        if raw is None:
            return Previous()
        try:
            return Previous.from_json(raw, str(self.store.path(STATE_FILE)))
        except RecordError as exc:
            raise SessionStateError(str(exc)) from None

    def save_previous(self, previous: Previous) -> bool:
        """Persist ``previous``; False (nothing written) when unchanged."""
        doc = previous.to_json()
        if self.store.read_json(STATE_FILE) == doc:
            return False
        self.store.write_json(STATE_FILE, doc)
        return True


@attrs.frozen(kw_only=True)
class OutboxEntry:
    """A queued report and its delivery attempts."""

    report: Report
    attempts: int = 0
    last_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"report": self.report.to_json(), "attempts": self.attempts, "lastError": self.last_error}


class Outbox:
    """Persisted FIFO of status reports, coalesced per uuid.

    A newer report for a uuid replaces an undelivered older one (it moves to the
    end, attempts reset): the CP only needs the latest truth. ``ack`` removes an
    entry only if it is still the report that was sent, so a report queued while
    the older one was in flight is not lost.
    """

    def __init__(self, store: StateStore, name: str = OUTBOX_FILE) -> None:
        self.store = store
        self.name = name
        self._entries = self._load()

    def _load(self) -> list[OutboxEntry]:
        raw = self.store.read_json(self.name)
        if raw is None:
            return []
        where = str(self.store.path(self.name))
        if (
            not isinstance(raw, Mapping)
            or raw.get("version") != 1
            or not isinstance(raw.get("entries"), list)
        ):
            raise SessionStateError(f"{where}: not a version-1 outbox")
        out: list[OutboxEntry] = []
        for i, e in enumerate(raw["entries"]):
            if not isinstance(e, Mapping):
                raise SessionStateError(f"{where}: entries[{i}] must be an object")
            attempts, last_error = e.get("attempts", 0), e.get("lastError")
            if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
                raise SessionStateError(f"{where}: entries[{i}].attempts must be a non-negative integer")
            if last_error is not None and not isinstance(last_error, str):
                raise SessionStateError(f"{where}: entries[{i}].lastError must be a string")
            try:
                report = Report.from_json(e.get("report"), f"{where}: entries[{i}].report")
            except RecordError as exc:
                raise SessionStateError(str(exc)) from None
            out.append(OutboxEntry(report=report, attempts=attempts, last_error=last_error))
        return out

    def _save(self) -> None:
        self.store.write_json(self.name, {"version": 1, "entries": [e.to_json() for e in self._entries]})

    def put(self, report: Report) -> None:
        """Queue ``report``, replacing an undelivered one for the same uuid."""
        if any(e.report == report for e in self._entries):
            return
        self._entries = [e for e in self._entries if e.report.uuid != report.uuid]
        self._entries.append(OutboxEntry(report=report))
        self._save()

    def pending(self) -> list[OutboxEntry]:
        """Undelivered reports, oldest first."""
        return list(self._entries)

    def ack(self, uuid: str, report: Report) -> bool:
        """The CP accepted ``report``: drop it unless a newer one replaced it."""
        before = len(self._entries)
        self._entries = [e for e in self._entries if not (e.report.uuid == uuid and e.report == report)]
        if len(self._entries) == before:
            return False
        self._save()
        return True

    def failed(self, uuid: str, report: Report, error: str) -> None:
        """A delivery attempt failed: count it (the entry stays for the next try)."""
        changed = False
        for i, e in enumerate(self._entries):
            if e.report.uuid == uuid and e.report == report:
                self._entries[i] = attrs.evolve(e, attempts=e.attempts + 1, last_error=error[:512])
                changed = True
        if changed:
            self._save()

    def __len__(self) -> int:
        return len(self._entries)
