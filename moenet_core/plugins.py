"""The plugin manager: discovery, blocking, isolation and provenance.

Built on :class:`pluggy.PluginManager` with four changes that an agent running
unattended on a router needs:

- **Tolerant discovery.** Entry points of group ``moenet`` are loaded one by one;
  a plugin that fails to import is recorded as ``failed`` and the rest load.
- **Blocking before import.** ``plugins.disable``, the ``plugins.enable``
  allow-list and ``MOENET_DISABLE_PLUGINS`` are applied to entry-point *names*
  before anything is imported, so a crashing plugin can always be switched off.
- **Per-plugin calls.** Collect hooks are called implementation by
  implementation: a plugin that raises (or returns a coroutine from a sync
  hook) is marked ``failed`` and its results are dropped; the others count.
  Every descriptor is stamped with the providing plugin.
- **Conflicts are errors.** Two plugins providing one task name or one
  ``(kind, name)`` backend is a :class:`PluginError` naming both.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import attrs
import pluggy
from loguru import logger

from . import hookspecs
from .errors import PluginError

ENTRY_POINT_GROUP = "moenet"

#: Hooks allowed to return awaitables (awaited by the core).
ASYNC_HOOKS = frozenset({"moenet_startup", "moenet_shutdown"})

S = TypeVar("S")


@attrs.define
class PluginRecord:
    """What the manager knows about one plugin; :func:`describe_plugin` turns it
    into the entry ``moenet-agent plugins --json`` and ``/status`` show."""

    name: str
    status: str = "active"
    """``active``, ``blocked``, ``failed`` or ``incompatible``."""
    distribution: str | None = None
    version: str | None = None
    module: str | None = None
    error: str | None = None
    hooks: list[str] = attrs.field(factory=list)
    tasks: list[str] = attrs.field(factory=list)
    backends: list[str] = attrs.field(factory=list)
    sections: list[str] = attrs.field(factory=list)
    runtime_errors: int = 0
    last_runtime_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


#: The keys of one plugin's description, in order (``moenet-agent plugins --json``
#: and ``GET /status`` both give exactly these; docs/api.md documents them).
DESCRIPTION_KEYS = (
    "name",
    "status",
    "error",
    "distribution",
    "version",
    "module",
    "hooks",
    "tasks",
    "backends",
    "sections",
    "features",
    "runtimeErrors",
    "lastRuntimeError",
    "info",
)


def describe_plugin(
    record: PluginRecord, *, features: Iterable[str] = (), info: object = None
) -> dict[str, Any]:
    """One plugin as fleet tooling sees it: the shape of every entry of
    ``moenet-agent plugins --json`` and of ``GET /status``'s ``plugins``.

    ``tasks``, ``backends`` (``kind:name``) and ``sections`` are what the plugin
    *provides*; whether a task runs or a backend was chosen is in ``/status``'s
    ``tasks``, ``tasksNotStarted`` and ``backends``. ``features`` are its
    ``moenet_features``; ``info`` its ``moenet_status_info`` (only a running agent
    has one, so the command line always gives null). Lists are sorted, so two
    listings of the same plugins compare equal.
    """
    return {
        "name": record.name,
        "status": record.status,
        "error": record.error,
        "distribution": record.distribution,
        "version": record.version,
        "module": record.module,
        "hooks": sorted(record.hooks),
        "tasks": sorted(set(record.tasks)),
        "backends": sorted(set(record.backends)),
        "sections": sorted(set(record.sections)),
        "features": sorted({str(f) for f in features}),
        "runtimeErrors": record.runtime_errors,
        "lastRuntimeError": record.last_runtime_error,
        "info": dict(info) if isinstance(info, Mapping) else info,
    }


def _describe_exc(exc: BaseException) -> str:
    """One line: the type and the message (multi-line messages joined)."""
    text = "; ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class AgentPluginManager(pluggy.PluginManager):
    """pluggy's manager plus records, tolerant loading and isolated calls."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self._owners: dict[str, str] = {}
        """Registered name -> plugin name (run-time hook objects belong to a plugin)."""
        # Historic: pluggy replays this to every plugin as it registers.
        self.hook.moenet_addhooks.call_historic(kwargs={"pluginmanager": self})

    # ------------------------------------------------------------ loading

    def load_entrypoints(
        self,
        *,
        disabled: Iterable[str] = (),
        enabled: Iterable[str] | None = None,
        group: str = ENTRY_POINT_GROUP,
    ) -> None:
        """Register every entry point of ``group`` that is not blocked.

        ``disabled`` names are never imported; with ``enabled`` set, only those
        names are. A name provided by two distributions loads neither.
        """
        blocked = {n.strip() for n in disabled if n.strip()}
        allow = None if enabled is None else {n.strip() for n in enabled if n.strip()}
        seen: dict[str, tuple[importlib.metadata.EntryPoint, importlib.metadata.Distribution]] = {}
        clashes: dict[str, list[str]] = {}
        for dist in importlib.metadata.distributions():
            for ep in dist.entry_points:
                if ep.group != group:
                    continue
                if ep.name in seen:
                    prev_dist = seen[ep.name][1]
                    if prev_dist.metadata["Name"] == dist.metadata["Name"]:
                        continue  # the same distribution seen twice on sys.path
                    clashes.setdefault(ep.name, [prev_dist.metadata["Name"]]).append(dist.metadata["Name"])
                    continue
                seen[ep.name] = (ep, dist)
        for name in sorted(seen):
            ep, dist = seen[name]
            record = PluginRecord(
                name=name,
                distribution=dist.metadata["Name"],
                version=dist.version,
                module=ep.value,
            )
            self.records[name] = record
            if name in clashes:
                record.status = "failed"
                record.error = (
                    f"entry point {name!r} is provided by {', '.join(clashes[name])}; uninstall one"
                )
                continue
            if name in blocked or (allow is not None and name not in allow):
                record.status = "blocked"
                record.error = "disabled by configuration" if name in blocked else "not in plugins.enable"
                self.set_blocked(name)
                continue
            try:
                module = ep.load()
            except Exception as exc:
                record.status = "failed"
                record.error = f"import failed: {_describe_exc(exc)}"
                logger.bind(plugin=name).opt(exception=exc).error(
                    "plugin {} failed to import; it stays off (disable it with plugins.disable)", name
                )
                continue
            self._register_checked(module, name, record)
        for name in (allow or set()) - set(seen) - blocked:
            logger.warning("plugins.enable names {!r}, which is not installed", name)
        self._finish_loading()

    def register_plugin(
        self, plugin: object, name: str, *, distribution: str | None = None, version: str | None = None
    ) -> PluginRecord:
        """Register an already-imported plugin (tests, harnesses, explicit lists)."""
        record = PluginRecord(
            name=name,
            distribution=distribution,
            version=version,
            module=getattr(plugin, "__name__", type(plugin).__name__),
        )
        self.records[name] = record
        if self.is_blocked(name):
            record.status = "blocked"
            record.error = "disabled by configuration"
            return record
        self._register_checked(plugin, name, record)
        self._finish_loading()
        return record

    def _register_checked(self, plugin: object, name: str, record: PluginRecord) -> None:
        try:
            self.register(plugin, name=name)
        except Exception as exc:
            record.status = "incompatible"
            record.error = _describe_exc(exc)
            logger.bind(plugin=name).error("plugin {} does not match this hook API: {}", name, record.error)
            return
        self._owners[name] = name

    def _finish_loading(self) -> None:
        """Drop plugins implementing hooks nobody specified (written for another
        version of the agent). Runs after every plugin had its ``moenet_addhooks``."""
        for name, record in self.records.items():
            if record.status != "active":
                continue
            plugin = self.get_plugin(name)
            if plugin is None:
                continue
            unknown = []
            for caller in self.get_hookcallers(plugin) or []:
                if caller.spec is None:
                    for impl in caller.get_hookimpls():
                        if impl.plugin is plugin and not impl.optionalhook:
                            unknown.append(caller.name)
            if unknown:
                self.unregister(plugin)
                record.status = "incompatible"
                record.error = f"implements unknown hooks: {', '.join(sorted(set(unknown)))}"
                logger.bind(plugin=name).error("plugin {} is incompatible: {}", name, record.error)
            else:
                record.hooks = sorted(c.name for c in self.get_hookcallers(plugin) or [])

    # ---------------------------------------------------- run-time objects

    def register_runtime(self, owner: str, obj: object) -> str:
        """Register hook implementations on an object that belongs to ``owner``."""
        name = f"{owner}:{type(obj).__name__}:{id(obj):x}"
        self.register(obj, name=name)
        self._owners[name] = owner
        return name

    def unregister_runtime(self, name: str) -> None:
        if self.get_plugin(name) is not None:
            self.unregister(name=name)
        self._owners.pop(name, None)

    def owner_of(self, registered_name: str) -> str:
        return self._owners.get(registered_name, registered_name)

    # ------------------------------------------------------------ queries

    def active(self, name: str) -> bool:
        record = self.records.get(name)
        return record is None or record.status == "active"

    def mark_failed(self, plugin: str, error: str) -> None:
        """Take a plugin out of service: its later hook results are ignored."""
        record = self.records.get(plugin)
        if record is not None and record.status == "active":
            record.status = "failed"
            record.error = error
        logger.bind(plugin=plugin).error("plugin {} failed: {}", plugin, error)

    def _note_runtime_error(self, plugin: str, hook: str, exc: BaseException) -> None:
        record = self.records.get(plugin)
        if record is not None:
            record.runtime_errors += 1
            record.last_runtime_error = f"{hook}: {_describe_exc(exc)}"
        logger.bind(plugin=plugin).opt(exception=exc).error("plugin {} raised in {}", plugin, hook)

    def _impls(self, hook_name: str) -> list[pluggy.HookImpl]:
        """Implementations in pluggy call order (LIFO, tryfirst/trylast honoured)."""
        caller: pluggy.HookCaller = getattr(self.hook, hook_name)
        return [i for i in reversed(caller.get_hookimpls()) if self.active(self.owner_of(i.plugin_name))]

    @staticmethod
    def _call_impl(impl: pluggy.HookImpl, kwargs: Mapping[str, Any]) -> Any:
        return impl.function(*[kwargs[arg] for arg in impl.argnames])

    def _reject_awaitable(self, hook_name: str, plugin: str, result: Any) -> None:
        if hook_name in ASYNC_HOOKS or not inspect.isawaitable(result):
            return
        if inspect.iscoroutine(result):
            result.close()
        raise PluginError(
            f"plugin {plugin!r}: hook {hook_name} returned an awaitable, but hooks are synchronous; "
            "return a descriptor whose factory builds your async object",
            [plugin],
        )

    # ------------------------------------------------------------- calling

    def collect(
        self,
        hook_name: str,
        *,
        setup: bool = True,
        per_plugin: Callable[[str], Mapping[str, Any]] | None = None,
        **kwargs: Any,
    ) -> list[tuple[str, Any]]:
        """Call every implementation separately; returns ``(plugin, result)``.

        ``per_plugin(plugin)`` adds arguments of that plugin's own (its context).

        A raising plugin is marked failed when ``setup`` (start-up hooks) or
        has the error recorded otherwise (run-time hooks); either way its
        result is skipped and the others still count.
        """
        out: list[tuple[str, Any]] = []
        for impl in self._impls(hook_name):
            plugin = self.owner_of(impl.plugin_name)
            try:
                args = {**kwargs, **per_plugin(plugin)} if per_plugin is not None else kwargs
                result = self._call_impl(impl, args)
                self._reject_awaitable(hook_name, plugin, result)
                if inspect.isgenerator(result):
                    result = list(result)
            except Exception as exc:
                if setup:
                    self.mark_failed(plugin, f"{hook_name}: {_describe_exc(exc)}")
                else:
                    self._note_runtime_error(plugin, hook_name, exc)
                continue
            if result is not None:
                out.append((plugin, result))
        return out

    def broadcast(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Deliver an event to every implementation; failures are logged, counted
        against the plugin, and never reach the caller."""
        return self.collect(hook_name, setup=False, **kwargs)

    def first_result(self, hook_name: str, **kwargs: Any) -> tuple[str, Any] | None:
        """firstresult semantics with isolation: ``(plugin, result)`` or None."""
        for impl in self._impls(hook_name):
            plugin = self.owner_of(impl.plugin_name)
            try:
                result = self._call_impl(impl, kwargs)
                self._reject_awaitable(hook_name, plugin, result)
            except Exception as exc:
                self._note_runtime_error(plugin, hook_name, exc)
                continue
            if result is not None:
                return plugin, result
        return None

    def collect_descriptors(
        self,
        hook_name: str,
        kind: type[S],
        key: Callable[[S], Any],
        describe: Callable[[Any], str],
        **kwargs: Any,
    ) -> dict[Any, S]:
        """Collect descriptors of type ``kind``, stamp their plugin, and index
        them by ``key``; raises :class:`PluginError` on a duplicate key."""
        found: dict[Any, S] = {}
        for plugin, result in self.collect(hook_name, **kwargs):
            items = [result] if isinstance(result, kind) else result
            try:
                items = list(items)
                bad = [i for i in items if not isinstance(i, kind)]
                if bad:
                    raise TypeError(f"expected {kind.__name__} items, got {type(bad[0]).__name__}")
            except TypeError as exc:
                self.mark_failed(plugin, f"{hook_name}: {exc}")
                continue
            for item in items:
                stamped = attrs.evolve(item, plugin=plugin)  # type: ignore[misc]
                k = key(stamped)
                if k in found:
                    other = getattr(found[k], "plugin", "?")
                    raise PluginError(
                        f"{describe(k)} is provided by both {other!r} and {plugin!r}; "
                        "disable one of them (plugins.disable)",
                        [other, plugin],
                    )
                found[k] = stamped
        return found

    def describe_provided(self, config: Any) -> None:
        """Fill each record's tasks and backends from the hooks, without building
        anything (for ``moenet-agent plugins`` and ``validate``)."""
        for plugin, result in self.collect("moenet_tasks", config=config):
            record = self.records.get(plugin)
            if record is not None and not record.tasks:
                record.tasks = [getattr(t, "name", "?") for t in result]
        for plugin, result in self.collect("moenet_backends", config=config):
            record = self.records.get(plugin)
            if record is not None and not record.backends:
                record.backends = [f"{getattr(b, 'kind', '?')}:{getattr(b, 'name', '?')}" for b in result]

    def features_by_plugin(self) -> dict[str, list[str]]:
        """Each active plugin's ``moenet_features`` (run-time objects count for
        their plugin); a raising implementation is recorded and skipped."""
        out: dict[str, list[str]] = {}
        for plugin, result in self.collect("moenet_features", setup=False):
            try:
                out.setdefault(plugin, []).extend(str(f) for f in result)
            except TypeError as exc:
                self._note_runtime_error(plugin, "moenet_features", exc)
        return out

    def listing(self, info: Mapping[str, object] | None = None) -> list[dict[str, Any]]:
        """Every known plugin described by :func:`describe_plugin`, sorted by name;
        ``info`` maps plugin names to their ``moenet_status_info``."""
        features = self.features_by_plugin()
        infos = info or {}
        return [
            describe_plugin(self.records[n], features=features.get(n, ()), info=infos.get(n))
            for n in sorted(self.records)
        ]
