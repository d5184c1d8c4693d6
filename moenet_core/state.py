"""The state directory: small JSON/bytes files written atomically, and typed documents.

Plugins keep their last-known desired state, outboxes and flags here, so a crash or
a reboot never loses what the agent knew. A write goes to a temporary file in the
same directory, is fsync'd, renamed over the old file, and the directory is
fsync'd: a reader sees the old content or the new one, never a torn file.

Typed documents
---------------

:meth:`StateStore.load` and :meth:`StateStore.save` read and write an attrs class
(a *document class*, one per file) through cattrs: camelCase keys, the strict JSON
types of the config structurer (a string is never a number, a list never a
string), attrs validators (``**checked(fn)``) and ``check`` metadata applied. A
class that has its own codec (``to_json()`` and a ``from_json(data[, where])``
classmethod) can be used inside a document after :func:`json_codec` ``(cls)``.

**One versioning rule** for every state file:

- A document is a JSON object whose ``"version"`` key (a positive integer) sits
  next to the document class's own fields: ``{"version": 1, "entries": [...]}``.
  This is the layout every state file had before this API existed, so those files
  load as they are. The document class therefore has no top-level field
  called ``version``.
- The code says which version it reads and writes (``version=``, default 1).
- A file of a **newer** version is refused with :class:`StateError` (it is never
  read as empty: empty state means "remove everything" to a reconciler). The
  operator upgrades the agent or moves the file away.
- A file of an **older** version (a file without ``"version"`` counts as version
  0) goes through ``migrate(old_version, fields) -> fields`` (``fields``: the
  object without ``"version"``), which returns the current layout; without a
  ``migrate`` it is refused.
- A file that is not JSON, not an object, or does not structure into the class
  raises :class:`StateError` naming the file and every problem found.
- :meth:`StateStore.save` writes only when the content differs (returns False
  otherwise), so an unchanged cycle touches no file.

Bump the version only when old files cannot be read as the new class (a field
renamed or its meaning changed); adding a field with a default needs no bump.

Corrupt files
-------------

Every read goes through :func:`moenet_core.jsonlimits.loads`, so a file that is
not JSON, nests deeper than the limit or holds a number past Python's digit limit
is a :class:`StateError`, never another exception. A corrupt file never stops the
agent from starting (``tests/unit/test_corrupt_state.py``). What happens next
depends on what the file means:

- **Warning and a safe default** (the data can be re-learnt, or "nothing" is
  safe): ``maintenance.json`` (moved aside to ``.bad``, maintenance off), the
  bootstrap cache (ignored), rtt ``links.json`` and sessions ``latency.json``
  (tiers re-measured), ibgp ``nodes.json`` and bird ``applied.json`` (ignored
  until the next CP answer), a reconciler's saved ``answer.json`` (the CP's next
  answer is used), the file CP's send log, ``updater.json`` (updates paused with
  an error until the file is fixed).
- **A failed cycle naming the file** (a default would read as "the agent owns
  nothing" and leave, or tear down, what the file records): sessions
  ``state.json``, ``applied.json``, ``outbox.json`` and ``answer.json``, mesh
  ``state.json``, loopback ``addresses.json``. The agent runs, the task reports
  the error with the path in ``/status`` until the operator fixes or moves the
  file.
"""

from __future__ import annotations

import contextlib
import enum
import inspect
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast, get_args, get_origin, overload

import attrs
import cattrs
from cattrs.cols import mapping_structure_factory
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from . import jsonlimits
from .config import _format_cattrs_error, camel, make_converter
from .errors import MoenetError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")

T = TypeVar("T")

#: The key holding a document's version.
VERSION_KEY = "version"

Migrate = Callable[[int, dict[str, Any]], Mapping[str, Any]]
"""``migrate(old_version, fields) -> fields``: an older document's fields (the
object without ``"version"``) in the current layout."""


class StateError(MoenetError):
    """A state file could not be read or written."""


# ------------------------------------------------------------- converter


def _codec_structure(cls: Any) -> Callable[[Any, type], Any]:
    from_json = cls.from_json
    try:
        params = [
            p
            for p in inspect.signature(from_json).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        ]
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        params = []
    if len(params) >= 2:
        return lambda value, _t: from_json(value, cls.__name__)
    return lambda value, _t: from_json(value)


def make_state_converter() -> cattrs.Converter:
    """The converter of state documents: the config's strict structurer (camelCase
    keys, strict JSON types) plus camelCase unstructuring, strict tuples, sets and
    enums (a string is not a tuple of characters, ``true`` is not a status code),
    and ``check`` metadata."""
    conv = make_converter()
    # Order matters: a hook registered later wins over an earlier one.
    _register_attrs_hooks(conv)
    _register_collection_hooks(conv)
    _register_mapping_hook(conv)
    _register_enum_hooks(conv)
    return conv


def _register_attrs_hooks(conv: cattrs.Converter) -> None:
    """attrs classes as camelCase objects both ways; structuring refuses a
    non-object and applies each field's ``check`` metadata."""

    def attrs_structure(cls: type) -> Callable[[Any, type], Any]:
        fields = attrs.fields(cls)
        renames = {f.name: override(rename=camel(f.name)) for f in fields}
        base: Callable[[Any, type], Any] = make_dict_structure_fn(cls, conv, **renames)  # type: ignore[arg-type]
        checks = [(f.name, f.metadata["check"]) for f in fields if "check" in f.metadata]

        def hook(value: Any, t: type) -> Any:
            if not isinstance(value, dict):
                raise TypeError(f"expected an object, got {json.dumps(value)[:40]}")
            obj = base(value, t)
            for name, fn in checks:
                if (msg := fn(getattr(obj, name))) is not None:
                    raise ValueError(f"{camel(name)}: {msg}")
            return obj

        return hook

    def attrs_unstructure(cls: type) -> Callable[[Any], Any]:
        renames = {f.name: override(rename=camel(f.name)) for f in attrs.fields(cls)}
        return make_dict_unstructure_fn(cls, conv, **renames)  # type: ignore[arg-type]

    conv.register_structure_hook_factory(attrs.has, attrs_structure)
    conv.register_unstructure_hook_factory(attrs.has, attrs_unstructure)


def _register_collection_hooks(conv: cattrs.Converter) -> None:
    """``tuple[X, ...]``, sets and frozensets only from a JSON list (cattrs would
    take a string as its characters); sets unstructure sorted, so a saved file
    does not change from run to run."""

    def is_collection(tp: Any) -> bool:
        origin = get_origin(tp)
        if origin is tuple:
            args = get_args(tp)
            return len(args) == 2 and args[1] is Ellipsis
        return origin in (frozenset, set)

    def strict_collection(tp: Any) -> Callable[[Any, type], Any]:
        origin = get_origin(tp)
        elem = get_args(tp)[0]

        def hook(value: Any, _t: type) -> Any:
            if not isinstance(value, list | tuple):
                raise TypeError(f"expected a list, got {json.dumps(value)[:40]}")
            return origin(conv.structure(v, elem) for v in value)

        return hook

    conv.register_structure_hook_factory(is_collection, strict_collection)

    def is_set(tp: Any) -> bool:
        return get_origin(tp) in (frozenset, set) or tp is frozenset or tp is set

    conv.register_unstructure_hook_factory(
        is_set, lambda _tp: lambda value: sorted(conv.unstructure(v) for v in value)
    )


def _register_mapping_hook(conv: cattrs.Converter) -> None:
    """``collections.abc.Mapping[K, V]`` structured as a dict, only from a JSON object."""

    def is_abc_mapping(tp: Any) -> bool:
        return get_origin(tp) is Mapping

    def abc_mapping(tp: Any) -> Callable[[Any, type], Any]:
        args = get_args(tp)
        default = mapping_structure_factory(cast(Any, dict)[args] if args else dict, conv)

        def hook(value: Any, t: type) -> Any:
            if not isinstance(value, dict):
                raise TypeError(f"expected an object, got {json.dumps(value)[:40]}")
            return default(value, t)

        return hook

    conv.register_structure_hook_factory(is_abc_mapping, abc_mapping)


def _register_enum_hooks(conv: cattrs.Converter) -> None:
    """Enums from a JSON scalar of a member's value, never from a bool (``true``
    would pass as 1); written as their value."""

    def is_enum(tp: Any) -> bool:
        return isinstance(tp, type) and issubclass(tp, enum.Enum)

    def strict_enum(value: Any, tp: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | str | float):
            raise TypeError(f"expected one of {[m.value for m in tp]}, got {json.dumps(value)[:40]}")
        return tp(value)

    # By class, not by predicate: an IntEnum is an int, and the strict int hook
    # (registered by class) would otherwise take it.
    for base in (enum.Enum, enum.IntEnum, enum.StrEnum):
        conv.register_structure_hook(base, strict_enum)
    conv.register_unstructure_hook_factory(is_enum, lambda _tp: lambda v: v.value)


STATE_CONVERTER = make_state_converter()


def json_codec(cls: type[T]) -> type[T]:
    """Read and write ``cls`` in state documents through its own codec: the
    ``to_json()`` method and the ``from_json(data)`` (or ``from_json(data,
    where)``) classmethod, which raises on bad input. For record classes that
    already have a strict JSON form; usable as a class decorator. Idempotent."""
    STATE_CONVERTER.register_structure_hook(cls, _codec_structure(cls))
    STATE_CONVERTER.register_unstructure_hook(cls, lambda obj: obj.to_json())
    return cls


# ------------------------------------------------------------- documents


def _check_class(cls: type) -> None:
    if not attrs.has(cls):
        raise TypeError(f"{cls!r} is not an attrs class; state documents are attrs classes")
    if any(camel(f.name) == VERSION_KEY for f in attrs.fields(cls)):
        raise TypeError(f"{cls.__name__} has a field named 'version', which the document's version uses")


def _check_version(version: int) -> None:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"a document version is a positive integer (got {version!r})")


def document_fields(
    raw: Any, *, version: int = 1, migrate: Migrate | None = None, where: str = "state document"
) -> dict[str, Any]:
    """The fields of a parsed document (without ``"version"``) in the layout of
    ``version``, after the versioning rule (see the module); raises
    :class:`StateError` naming ``where``."""
    _check_version(version)
    if not isinstance(raw, dict):
        raise StateError(f"state file {where}: expected a JSON object with a {VERSION_KEY!r}")
    have = raw.get(VERSION_KEY, 0)
    if isinstance(have, bool) or not isinstance(have, int) or have < 0:
        raise StateError(f"state file {where}: {VERSION_KEY!r} must be a positive integer (got {have!r})")
    fields = {k: v for k, v in raw.items() if k != VERSION_KEY}
    if have > version:
        raise StateError(
            f"state file {where} has version {have}, written by a newer moenet-agent (this one reads "
            f"version {version}); refusing to read it as empty: upgrade the agent, or move the file away"
        )
    if have < version:
        what = f"version {have}" if VERSION_KEY in raw else "no version"
        if migrate is None:
            raise StateError(
                f"state file {where} has {what}, older than the version {version} this agent reads, "
                "and no migration is known: move the file away"
            )
        try:
            migrated = migrate(have, fields)
        except StateError:
            raise
        except Exception as exc:
            raise StateError(f"state file {where}: cannot migrate from {what}: {exc}") from None
        if not isinstance(migrated, Mapping):
            raise StateError(f"state file {where}: migration from {what} did not give an object")
        fields = {k: v for k, v in migrated.items() if k != VERSION_KEY}
    return fields


def from_document(
    cls: type[T],
    raw: Any,
    *,
    version: int = 1,
    migrate: Migrate | None = None,
    where: str = "state document",
) -> T:
    """Structure a parsed document into ``cls`` (see the module for the rule);
    raises :class:`StateError` naming ``where`` and every problem."""
    _check_class(cls)
    fields = document_fields(raw, version=version, migrate=migrate, where=where)
    try:
        return STATE_CONVERTER.structure(fields, cls)
    except Exception as exc:
        problems = _format_cattrs_error(exc, "") if isinstance(exc, cattrs.BaseValidationError) else []
        detail = "; ".join(problems) or f"{type(exc).__name__}: {exc}"
        raise StateError(f"state file {where} is not a valid {cls.__name__}: {detail}") from None


def to_document(obj: Any, *, version: int = 1) -> dict[str, Any]:
    """``obj`` (an instance of a document class) as ``{"version": version, ...}``."""
    _check_version(version)
    _check_class(type(obj))
    data = STATE_CONVERTER.unstructure(obj)
    return {VERSION_KEY: version, **data}


@attrs.frozen(kw_only=True)
class SavedAnswer:
    """A saved control-plane answer, raw (``{"version": 1, "answer": ...}``): what a
    reconciler serves when the CP is unreachable. ``state.save(name,
    SavedAnswer(answer=raw))`` / ``state.load(name, SavedAnswer)``; re-validate
    ``answer`` after loading."""

    answer: Any


def _encode(value: Any) -> bytes:
    return json.dumps(value, indent=1, sort_keys=True).encode() + b"\n"


class StateStore:
    """A directory of named state files. ``scoped(name)`` gives a sub-store
    (each plugin gets ``plugins/<name>``)."""

    def __init__(self, root: str | os.PathLike[str], *, mode: int = 0o700) -> None:
        self.root = Path(root)
        self._mode = mode

    def _path(self, name: str) -> Path:
        if not _NAME.match(name):
            raise StateError(f"invalid state file name {name!r}")
        return self.root / name

    def path(self, name: str) -> Path:
        """The file's path (it may not exist)."""
        return self._path(name)

    def ensure(self) -> None:
        """Create the directory (mode 0700) if needed."""
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=self._mode)
        except OSError as exc:
            raise StateError(f"cannot create state directory {self.root}: {exc.strerror}") from exc

    def scoped(self, name: str) -> StateStore:
        """A store in the subdirectory ``name``."""
        return StateStore(self._path(name), mode=self._mode)

    def read_bytes(self, name: str) -> bytes | None:
        """The file's content, or None when it does not exist."""
        try:
            return self._path(name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {self._path(name)}: {exc.strerror}") from exc

    def write_bytes(self, name: str, data: bytes, *, mode: int = 0o600) -> None:
        """Replace the file atomically with ``data``."""
        target = self._path(name)
        self.ensure()
        try:
            atomic_write(target, data, mode=mode)
        except OSError as exc:
            raise StateError(f"cannot write {target}: {exc.strerror}") from exc

    def read_json(self, name: str, default: Any = None) -> Any:
        """Parsed JSON content, or ``default`` when the file does not exist.

        A corrupt file raises :class:`StateError` rather than silently reading as
        empty: empty state can mean "remove everything" to a reconciler.
        """
        raw = self.read_bytes(name)
        if raw is None:
            return default
        try:
            return jsonlimits.loads(raw)
        except ValueError as exc:  # also nesting too deep (never RecursionError)
            raise StateError(f"state file {self._path(name)} is not valid JSON: {exc}") from None

    def write_json(self, name: str, value: Any) -> None:
        """Replace the file atomically with ``value`` as JSON."""
        self.write_bytes(name, _encode(value))

    def write_json_if_changed(self, name: str, value: Any) -> bool:
        """:meth:`write_json`, only when the file's content differs; True when written.
        An unreadable or corrupt existing file is replaced."""
        data = _encode(value)
        try:
            old = self.read_bytes(name)
        except StateError:
            old = None
        if old is not None:
            if old == data:
                return False
            with contextlib.suppress(ValueError):
                if jsonlimits.loads(old) == json.loads(data):
                    return False
        self.write_bytes(name, data)
        return True

    # ----------------------------------------------------- typed documents

    def load_document(
        self, name: str, *, version: int = 1, migrate: Migrate | None = None
    ) -> dict[str, Any] | None:
        """The fields of a versioned document (without ``"version"``), migrated to
        ``version``; None when the file does not exist. For files whose content has
        its own codec; :meth:`load` structures into a class. Raises :class:`StateError`."""
        raw = self.read_json(name)
        if raw is None:
            return None
        return document_fields(raw, version=version, migrate=migrate, where=str(self._path(name)))

    def save_document(self, name: str, fields: Mapping[str, Any], *, version: int = 1) -> bool:
        """Write ``{"version": version, **fields}``; False (nothing written) when unchanged."""
        _check_version(version)
        if VERSION_KEY in fields:
            raise ValueError(f"document fields must not contain {VERSION_KEY!r}")
        return self.write_json_if_changed(name, {VERSION_KEY: version, **fields})

    @overload
    def load(
        self, name: str, cls: type[T], *, version: int = 1, migrate: Migrate | None = None
    ) -> T | None: ...

    @overload
    def load(
        self, name: str, cls: type[T], *, version: int = 1, migrate: Migrate | None = None, default: T
    ) -> T: ...

    def load(
        self,
        name: str,
        cls: type[T],
        *,
        version: int = 1,
        migrate: Migrate | None = None,
        default: Any = None,
    ) -> Any:
        """The document ``name`` as a ``cls`` (an attrs class), read by the
        versioning rule of this module; ``default`` (None if not given) when the
        file does not exist. Raises :class:`StateError` naming the file for a
        corrupt or invalid file, a newer version, or an older one without
        ``migrate``."""
        raw = self.read_json(name)
        if raw is None:
            return default
        return from_document(cls, raw, version=version, migrate=migrate, where=str(self._path(name)))

    def save(self, name: str, obj: Any, *, version: int = 1) -> bool:
        """Write ``obj`` (an instance of a document class) as version ``version``,
        atomically, only when the content differs: True when written."""
        return self.write_json_if_changed(name, to_document(obj, version=version))

    # -------------------------------------------------------------- files

    def delete(self, name: str) -> bool:
        """Remove the file; False when it did not exist."""
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            return False
        _fsync_dir(self.root)
        return True

    def names(self) -> list[str]:
        """Names of the files present (temporary files excluded), sorted."""
        try:
            return sorted(p.name for p in self.root.iterdir() if p.is_file() and not p.name.startswith("."))
        except FileNotFoundError:
            return []


def atomic_write(
    path: str | os.PathLike[str], data: bytes, *, mode: int = 0o600, replace: bool = True
) -> bool:
    """Write ``data`` to ``path`` so a reader sees the old content or the new, never a torn file.

    The data goes to a temporary file in the same directory (created with
    ``mode`` from the start, so a secret is never readable by others), is
    fsync'd, then renamed over ``path`` — or, with ``replace=False``, linked
    into place only if ``path`` does not exist yet (returns False when it did:
    someone else's file wins). The directory is fsync'd so the rename survives
    a crash. Raises OSError; the temporary file never stays behind.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)
            except FileExistsError:
                return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(target.parent)
    return True


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
