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

from typing import Any

import attrs

from moenet_core import SavedAnswer, StateError, StateStore, json_codec, sweep_partial_writes
from moenet_core.config import checked

from .model import SessionsPayloadError, parse_sessions
from .records import Previous, RecordError, Report

ANSWER_FILE = "answer.json"
STATE_FILE = "state.json"
OUTBOX_FILE = "outbox.json"

ANSWER_VERSION = 1
OUTBOX_VERSION = 1
#: The version of ``state.json``: the one :meth:`Previous.to_json` writes.
PREVIOUS_VERSION: int = Previous().to_json().get("version", 1)


json_codec(Report)


"""Nothing known of the saved answer yet (None is a valid answer)."""


class SessionStateError(StateError):
    """A sessions state file exists but is unusable."""


class SessionStore:
    """The last valid CP answer and the reconciler's memory.

    The agent is the only writer of these files, so what was last loaded or
    saved is kept in memory: an unchanged cycle neither parses nor encodes them
    again (at 1 000 sessions that was most of a no-op cycle). A file edited by
    hand while the agent runs is therefore read at the next start.
    """

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._answer_digest: bytes | None = None
        self._previous: Previous | None = None
        # A write the agent was killed in the middle of leaves its temporary file (the
        # old content is intact): nobody reads it, so it goes.
        sweep_partial_writes(store.root)

    @property
    def saved_digest(self) -> bytes | None:
        """The CP digest of the answer last saved by this store (None: none yet)."""
        return self._answer_digest

    def load_answer(self) -> Any | None:
        """The last valid CP answer (raw JSON, re-parse with ``parse_sessions``), or None."""
        try:
            saved = self.store.load(ANSWER_FILE, SavedAnswer, version=ANSWER_VERSION)
        except StateError as exc:
            raise SessionStateError(str(exc)) from None
        if saved is None:
            return None
        try:
            parse_sessions(saved.answer)
        except SessionsPayloadError as exc:
            raise SessionStateError(
                f"{self.store.path(ANSWER_FILE)}: saved answer is unusable: {exc}"
            ) from None
        return saved.answer

    def save_answer(self, answer: Any, digest: bytes | None = None) -> bool:
        """Persist ``answer`` (only call with an answer ``parse_sessions`` accepted).
        Returns False, writing nothing, when its ``digest`` (the CP client's, see
        ``ControlPlane.fetch_digest``) is the one saved last; without a digest the
        answer is written (the state store skips an identical file)."""
        if digest is not None and digest == self._answer_digest:
            return False
        written = self.store.save(ANSWER_FILE, SavedAnswer(answer=answer), version=ANSWER_VERSION)
        self._answer_digest = digest
        return written

    def load_previous(self) -> Previous:
        """The persisted memory; empty only when the file does not exist."""
        if self._previous is not None:
            return self._previous
        where = str(self.store.path(STATE_FILE))
        try:
            fields = self.store.load_document(STATE_FILE, version=PREVIOUS_VERSION)
            if fields is None:
                return Previous()
            self._previous = Previous.from_json({"version": PREVIOUS_VERSION, **fields}, where)
        except (StateError, RecordError) as exc:
            raise SessionStateError(str(exc)) from None
        return self._previous

    def save_previous(self, previous: Previous) -> bool:
        """Persist ``previous``; False (nothing written) when unchanged."""
        if previous == self._previous:
            # Equal: keep the newest objects anyway. They are the ones the planner
            # hands on each cycle, so the next comparison is an identity check per
            # session (not every field of every intent, as after a restart).
            self._previous = previous
            return False
        doc = previous.to_json()
        version = doc.pop("version", PREVIOUS_VERSION)
        written = self.store.save_document(STATE_FILE, doc, version=version)
        self._previous = previous
        return written


def _attempts(v: int) -> str | None:
    return None if v >= 0 else "must be a non-negative integer"


@attrs.frozen(kw_only=True)
class OutboxEntry:
    """A queued report and its delivery attempts."""

    report: Report
    attempts: int = attrs.field(default=0, **checked(_attempts))
    last_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"report": self.report.to_json(), "attempts": self.attempts, "lastError": self.last_error}


@attrs.frozen(kw_only=True)
class OutboxDoc:
    """``outbox.json``: the queued reports, oldest first."""

    entries: list[OutboxEntry]


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
        try:
            doc = self.store.load(self.name, OutboxDoc, version=OUTBOX_VERSION)
        except StateError as exc:
            raise SessionStateError(str(exc)) from None
        return [] if doc is None else list(doc.entries)

    def _save(self) -> None:
        self.store.save(self.name, OutboxDoc(entries=list(self._entries)), version=OUTBOX_VERSION)

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
