"""``moenet-agent``: run the daemon, validate a config, list plugins, show status.

The Go agent's flags keep working: ``-c FILE``, ``-v``/``-version``,
``-validate`` and ``-config FILE``; with no subcommand the agent runs.
Exit codes: 0 ok, 1 invalid configuration or failed check, 2 usage error,
3 the local API could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import platform
import re
import sys
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from loguru import logger

from . import HOOK_API_VERSION
from . import lean_imports as _lean_imports  # noqa: F401 - before anything imports aiohttp
from .config import AgentConfig, build_config
from .context import CommandContext
from .descriptors import BackendSpec, TaskSpec
from .errors import ConfigError, MoenetError, PluginError
from .plugins import AgentPluginManager
from .version import __version__

COMMANDS = ("run", "validate", "plugins", "status", "plan", "version")
_GO_FLAGS = {"-validate": "validate", "--validate": "validate", "-version": "version", "-v": "version"}


def _translate_go_flags(argv: list[str]) -> list[str]:
    """Map the Go agent's single-dash flags onto subcommands."""
    out: list[str] = []
    command = None
    for arg in argv:
        if arg in _GO_FLAGS:
            command = _GO_FLAGS[arg]
        elif arg == "-config":
            out.append("-c")
        elif arg.startswith("-config="):
            out.append("--config=" + arg.split("=", 1)[1])
        else:
            out.append(arg)
    starts_with_option = not out or out[0].startswith("-")
    names_a_command = any(a in COMMANDS for a in out)
    asks_help = any(a in ("-h", "--help") for a in out)
    if command is None and starts_with_option and not names_a_command and not asks_help:
        command = "run"  # the Go agent's "moenet-agent -c FILE"
    if command is not None:
        # Options before the command stay global; the command goes in front of the rest.
        out = [command, *out]
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moenet-agent",
        description="DN42 node agent: makes WireGuard, BIRD 3 and nftables match the control plane.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("-c", "--config", metavar="FILE", help="config file (default: search path)")
        return p

    add("run", "run the agent (the default)")
    p = add("validate", "check the config file and every enabled plugin's section; start nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add("plugins", "list plugins: distribution, hooks, tasks, backends, status")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = add("status", "ask the running agent for its status (local API)")
    p.add_argument("--url", help="API base URL (default: from server.listen)")
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    p = add("plan", "show what a reconciler (sessions, mesh, ibgp, ...) would change now; changes nothing")
    p.add_argument(
        "plugin", nargs="?", default="sessions", help="the plugin whose reconciler to ask (default: sessions)"
    )
    p.add_argument("--url", help="API base URL (default: from server.listen)")
    p.add_argument("--json", action="store_true", help="print the raw JSON")
    p = sub.add_parser("version", help="print version information", description="print version information")
    p.add_argument("-c", "--config", help=argparse.SUPPRESS)
    return parser


CommandHandler = Callable[[argparse.Namespace, CommandContext], int]
"""``handler(args, cmd) -> exit code`` of a plugin's subcommand."""
CommandRegistrar = Callable[[str, str, CommandHandler], argparse.ArgumentParser]
"""``register(name, help, handler) -> parser``: what ``moenet_cli_commands`` receives."""


def _is_legacy(handler: Callable[..., int]) -> bool:
    """Hook API 1 handlers were ``handler(args, config)``: tell them by the
    second parameter's name (deprecated; they get the config until API 2)."""
    try:
        params = list(inspect.signature(handler).parameters.values())
    except (TypeError, ValueError):
        return False
    return len(params) >= 2 and params[1].name == "config"


def _run_command(
    handler: Callable[..., int], plugin: str, args: argparse.Namespace, config: AgentConfig | None
) -> int:
    if _is_legacy(handler):
        warnings.warn(
            f"plugin {plugin!r}: command handler {getattr(handler, '__qualname__', handler)!r} takes "
            "(args, config); take (args, cmd) and use cmd.config (a CommandContext)",
            DeprecationWarning,
            stacklevel=2,
        )
        return handler(args, config)
    return handler(args, CommandContext(config, plugin=plugin))


def _config_arg(argv: Sequence[str]) -> str | None:
    """``-c FILE`` / ``--config FILE`` / ``--config=FILE`` from a raw command line."""
    for i, arg in enumerate(argv):
        if arg in ("-c", "--config") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def add_plugin_commands(
    parser: argparse.ArgumentParser, argv: Sequence[str]
) -> dict[str, tuple[str, CommandHandler]]:
    """Let plugins add subcommands (``moenet_cli_commands``); returns name -> (plugin, handler)."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    handlers: dict[str, tuple[str, CommandHandler]] = {}
    owners: dict[str, str] = {}
    try:
        config, _, _ = _try_local_config(_config_arg(argv))
    except ConfigError:
        config = None
    pm = make_plugin_manager(config)
    for impl in reversed(pm.hook.moenet_cli_commands.get_hookimpls()):
        plugin = pm.owner_of(impl.plugin_name)

        def register(
            name: str, help_: str, handler: CommandHandler, plugin: str = plugin
        ) -> argparse.ArgumentParser:
            if name in sub.choices:
                other = owners.get(name, "the core")
                raise PluginError(
                    f"command {name!r} of plugin {plugin!r} is already provided by {other}", [plugin]
                )
            p: argparse.ArgumentParser = sub.add_parser(name, help=f"{help_} [{plugin}]", description=help_)
            p.add_argument("-c", "--config", metavar="FILE", help="config file (default: search path)")
            handlers[name], owners[name] = (plugin, handler), plugin
            return p

        try:
            impl.function(register)
        except Exception as exc:
            print(f"moenet-agent: plugin {plugin!r} could not add its commands: {exc}", file=sys.stderr)
    return handlers


def main(argv: Sequence[str] | None = None) -> int:
    raw = _translate_go_flags(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    handlers: dict[str, tuple[str, CommandHandler]] = {}
    if raw and (raw[0] not in COMMANDS or raw[0] in ("-h", "--help")):
        handlers = add_plugin_commands(parser, raw)
    args = parser.parse_args(raw)
    command = args.command or "run"
    try:
        if command in handlers:
            config, warnings, _ = _try_local_config(args.config)
            for w in warnings:
                print(f"warning: {w}", file=sys.stderr)
            plugin, handler = handlers[command]
            return _run_command(handler, plugin, args, config)
        if command == "version":
            return cmd_version()
        if command == "validate":
            return cmd_validate(args.config, as_json=args.json)
        if command == "plugins":
            return cmd_plugins(args.config, as_json=args.json)
        if command == "status":
            return cmd_status(args.config, args.url, as_json=args.json)
        if command == "plan":
            return cmd_plan(args.config, args.url, args.plugin, as_json=args.json)
        return cmd_run(args.config)
    except ConfigError as exc:
        print(f"moenet-agent: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


# ------------------------------------------------------------------ shared


def disabled_plugins(
    config: AgentConfig | None, env: dict[str, str] | os._Environ[str]
) -> tuple[set[str], set[str] | None]:
    """Block and allow lists from config and ``MOENET_DISABLE_PLUGINS``."""
    disabled = {n.strip() for n in env.get("MOENET_DISABLE_PLUGINS", "").split(",") if n.strip()}
    enabled = None
    if config is not None:
        disabled |= set(config.plugins.disable)
        enabled = set(config.plugins.enable) if config.plugins.enable is not None else None
    return disabled, enabled


def make_plugin_manager(config: AgentConfig | None) -> AgentPluginManager:
    """A manager with every installed plugin loaded, honouring block lists."""
    pm = AgentPluginManager()
    if os.environ.get("MOENET_DISABLE_PLUGIN_AUTOLOAD", "") in ("1", "true", "yes"):
        return pm
    disabled, enabled = disabled_plugins(config, os.environ)
    pm.load_entrypoints(disabled=disabled, enabled=enabled)
    return pm


def _try_local_config(path: str | None) -> tuple[AgentConfig | None, list[str], str | None]:
    """The config without contacting a CP (bootstrap files validate locally)."""
    from .config import find_config_file, read_config_file

    try:
        file = find_config_file(path)
    except ConfigError as exc:
        if path:
            raise
        return None, [], exc.problems[0]
    cfg, warnings = build_config(read_config_file(file), source=str(file))
    return cfg, warnings, None


# ---------------------------------------------------------------- commands


def cmd_version() -> int:
    import aiohttp
    import pluggy

    print(f"moenet-agent {__version__}")
    print(f"hook API {HOOK_API_VERSION}")
    print(f"python {platform.python_version()}, pluggy {pluggy.__version__}, aiohttp {aiohttp.__version__}")
    return 0


def cmd_validate(path: str | None, *, as_json: bool = False) -> int:
    from .agent import structure_plugin_sections

    problems: list[str] = []
    warnings: list[str] = []
    config = None
    source = None
    try:
        config, warnings, _ = _try_local_config(path or None)
        if config is None:
            raise ConfigError(["no config file found (pass -c FILE)"])
        source = config.source
    except ConfigError as exc:
        problems.extend(exc.problems)
        source = exc.source
    plugins: list[dict[str, Any]] = []
    if config is not None:
        pm = make_plugin_manager(config)
        sections = structure_plugin_sections(config, pm)
        warnings.extend(sections.warnings)
        for errs in sections.problems.values():
            problems.extend(errs)
        # The checks the start runs (key files, template directory...): what they
        # refuse makes the plugin fail at start, so validate refuses it too.
        pm.collect("moenet_configure", config=config)
        for record in pm.records.values():
            if record.status in ("failed", "incompatible") and not record.error.startswith("config:"):  # type: ignore[union-attr]
                problems.append(f"plugin {record.name}: {record.error}")
        try:
            pm.collect_descriptors(
                "moenet_tasks",
                TaskSpec,
                key=lambda s: s.name,
                describe=lambda k: f"task {k!r}",
                config=config,
            )
            pm.collect_descriptors(
                "moenet_backends",
                BackendSpec,
                key=lambda s: (s.kind, s.name),
                describe=lambda k: f"backend {k[1]!r} of kind {k[0]!r}",
                config=config,
            )
        except PluginError as exc:
            problems.append(str(exc))
        pm.describe_provided(config)
        plugins = pm.listing()
    ok = not problems
    if as_json:
        print(
            json.dumps(
                {
                    "ok": ok,
                    "source": source,
                    "mode": config.mode if config else None,
                    "problems": problems,
                    "warnings": warnings,
                    "plugins": plugins,
                },
                indent=2,
            )
        )
    else:
        for w in warnings:
            print(f"warning: {w}")
        if ok:
            assert config is not None
            active = [p["name"] for p in plugins if p["status"] == "active"]
            print(f"OK: {source} ({config.mode} mode; plugins: {', '.join(active) or 'none'})")
        else:
            print(f"invalid configuration{f' in {source}' if source else ''}:", file=sys.stderr)
            for p in problems:
                print(f"  - {p}", file=sys.stderr)
    return 0 if ok else 1


def cmd_plugins(path: str | None, *, as_json: bool = False) -> int:
    from .agent import structure_plugin_sections

    config, _, missing = _try_local_config(path)
    pm = make_plugin_manager(config)
    if config is not None:
        structure_plugin_sections(config, pm)
        pm.describe_provided(config)
    else:
        pm.describe_provided(AgentConfig())
    # One shape for fleet tooling: each entry is what GET /status lists under
    # "plugins" (moenet_core.plugins.describe_plugin; "info" needs a running agent).
    listing = pm.listing()
    if as_json:
        print(
            json.dumps(
                {"version": __version__, "hookApiVersion": HOOK_API_VERSION, "plugins": listing}, indent=2
            )
        )
        return 0
    if missing:
        print(f"(no config file: {missing}; tasks and backends need one to be listed)")
    if not listing:
        print("no plugins installed")
        return 0
    rows = [("NAME", "STATUS", "DISTRIBUTION", "TASKS", "BACKENDS", "HOOKS")]
    for r in listing:
        dist = f"{r['distribution']} {r['version']}" if r["distribution"] else "-"
        hooks = ",".join(h.removeprefix("moenet_") for h in r["hooks"]) or "-"
        rows.append(
            (r["name"], r["status"], dist, ",".join(r["tasks"]) or "-", ",".join(r["backends"]) or "-", hooks)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])
    for r in listing:
        if r["error"]:
            print(f"{r['name']}: {r['error']}")
    return 0


def _api_url(path: str | None, url: str | None) -> str:
    """The local API's base URL: ``url``, else from ``server.listen`` (a wildcard
    listener is reached on loopback)."""
    if url is not None:
        return url.rstrip("/")
    config, _, _ = _try_local_config(path)
    listen = config.server.listen if config else "127.0.0.1:24368"
    host, _, port = listen.rpartition(":")
    host = host or "127.0.0.1"
    if host in ("0.0.0.0", "::", "[::]"):  # noqa: S104 - a wildcard listener is reached on loopback
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def _api_request(path: str | None, target: str) -> urllib.request.Request:
    """A GET of ``target`` on the local API carrying ``server.token`` when the
    config has one: sensitive routes (``/plugins/<plugin>/plan``) need it."""
    try:
        config, _, _ = _try_local_config(path)
    except ConfigError:
        config = None  # with --url a broken or missing file only means: no token
    token = config.server.token if config is not None else None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return urllib.request.Request(target, headers=headers)  # noqa: S310 (local API)


def cmd_status(path: str | None, url: str | None, *, as_json: bool = False) -> int:
    url = _api_url(path, url)
    try:
        with urllib.request.urlopen(_api_request(path, url + "/status"), timeout=10) as resp:  # noqa: S310
            data = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"moenet-agent: cannot reach the agent at {url}: {exc}", file=sys.stderr)
        return 3
    if as_json:
        print(json.dumps(data, indent=2))
        return 0
    print(render_status(data))
    return 0


def cmd_plan(path: str | None, url: str | None, plugin: str, *, as_json: bool = False) -> int:
    """``GET /plugins/<plugin>/plan`` of the running agent: every reconciler
    (:class:`~moenet_core.reconcile.Reconciler`) serves one. A plan needs the
    backends only the agent has built, so the command asks it rather than
    building them a second time (and racing it over the same devices)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", plugin):
        print(f"moenet-agent plan: {plugin!r} is not a plugin name", file=sys.stderr)
        return 2
    target = _api_url(path, url) + f"/plugins/{plugin}/plan"
    try:
        with urllib.request.urlopen(_api_request(path, target), timeout=60) as resp:  # noqa: S310
            data = json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            detail = json.load(exc).get("error")
        except (ValueError, AttributeError):
            detail = exc.reason
        print(f"moenet-agent plan: {detail}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"moenet-agent plan: cannot reach the agent at {target}: {exc}", file=sys.stderr)
        return 3
    if as_json:
        print(json.dumps(data, indent=2))
        return 0
    print(render_plan(data))
    return 0


def render_plan(data: dict[str, Any]) -> str:
    """A reconciler's plan as short readable lines."""
    head = f"answer: {data.get('answer')}" + (f" ({data['problem']})" if data.get("problem") else "")
    body = [f"  {line}" for line in data.get("lines", [])]
    return "\n".join([head, *body, "nothing to change" if data.get("empty") else "changes pending"])


def render_status(data: dict[str, Any]) -> str:
    """The ``/status`` answer as a short human-readable report."""
    node = data.get("node", {})
    maint = data.get("maintenance", {})
    cp = data.get("controlPlane", {})
    lines = [
        f"moenet-agent {data.get('version')}  node {node.get('name')} "
        f"(id {node.get('id')}, {node.get('mode')} mode)",
        f"uptime {int(data.get('uptime', 0))} s   control plane: {cp.get('source')} "
        f"(breaker {cp.get('breaker')})   "
        f"maintenance: {'ON since ' + str(maint.get('since')) if maint.get('enabled') else 'off'}",
        "",
        f"{'TASK':<18}{'PLUGIN':<14}{'EVERY':>7}  {'RUNS':>5} {'FAILS':>5}  LAST",
    ]
    for t in data.get("tasks", []):
        last = t.get("last") or {}
        state = "running" if t.get("running") else ("ok" if last.get("ok") else (last.get("error") or "-"))
        if not last and not t.get("running"):
            state = "not run yet"
        lines.append(
            f"{t['name']:<18}{t.get('plugin', ''):<14}{int(t.get('interval', 0)):>6}s  "
            f"{t.get('runs', 0):>5} {t.get('failures', 0):>5}  {str(state)[:60]}"
        )
    for name, why in data.get("tasksNotStarted", {}).items():
        lines.append(f"{name:<18}{'':<14}{'':>7}  not started: {why}")
    lines.append("")
    lines.append("PLUGINS  " + "  ".join(f"{p['name']}={p['status']}" for p in data.get("plugins", [])))
    sessions = data.get("sessions") or {}
    lines.append(
        "SESSIONS " + ("  ".join(f"{k}={v}" for k, v in sorted(sessions.items())) or "none reported")
    )
    lines.extend(render_session_lines(data))
    return "\n".join(lines)


def _session_views(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every plugin's per-session view (``info.sessions`` of its ``moenet_status_info``)."""
    out: list[dict[str, Any]] = []
    for plugin in data.get("plugins") or []:
        info = plugin.get("info") if isinstance(plugin, dict) else None
        views = info.get("sessions") if isinstance(info, dict) else None
        if isinstance(views, list):
            out.extend(v for v in views if isinstance(v, dict))
    return out


def render_session_lines(data: dict[str, Any]) -> list[str]:
    """A line per session: name, ASN, interface, status, BGP state, routes
    in/out, RTT and health ("-" where the collector has not measured yet)."""
    views = _session_views(data)
    if not views:
        return []

    def cell(value: Any) -> str:
        return "-" if value is None or value == "" else str(value)

    lines = [
        "",
        f"{'NAME':<20}{'ASN':<12}{'INTERFACE':<16}{'STATUS':<18}{'BGP':<13}"
        f"{'ROUTES IN/OUT':>14}{'RTT':>10}  HEALTH",
    ]
    for v in views:
        rtt = v.get("rttMs")
        routes = (
            f"{v['routesIn']}/{v['routesOut']}"
            if v.get("routesIn") is not None or v.get("routesOut") is not None
            else "-"
        )
        health = cell(v.get("health"))
        lines.append(
            f"{cell(v.get('name') or v.get('uuid'))[:19]:<20}{cell(v.get('asn')):<12}"
            f"{cell(v.get('interface'))[:15]:<16}{cell(v.get('status'))[:17]:<18}"
            f"{cell(v.get('bgpState'))[:12]:<13}{routes:>14}"
            f"{(f'{float(rtt):.1f}ms' if isinstance(rtt, (int, float)) else '-'):>10}  {health}"
        )
        if v.get("lastError"):
            lines.append(f"    error: {str(v['lastError'])[:200]}")
    return lines


def cmd_run(path: str | None) -> int:
    from .lean_imports import trust_store_by_directory

    trust_store_by_directory()  # before anything imports aiohttp
    from .agent import Agent
    from .bootstrap import load_config
    from .logs import add_secret, setup_logging

    # Log in the configured format from the first line on (bootstrap logs before
    # the full config exists); a broken file is reported by load_config below.
    early: dict[str, Any] = {}
    try:
        from .config import find_config_file, read_config_file

        early = read_config_file(find_config_file(path)).get("logging") or {}
    except (ConfigError, AttributeError):
        pass
    try:
        setup_logging(fmt=str(early.get("format", "auto")), level=str(early.get("level", "INFO")))
    except ValueError:
        setup_logging()

    async def run() -> int:
        config, warnings = await load_config(path)
        setup_logging(fmt=config.logging.format, level=config.logging.level)
        for secret in (config.control_plane.token, config.bootstrap.token, config.server.token):
            add_secret(secret)
        for w in warnings:
            logger.warning("config: {}", w)
        pm = make_plugin_manager(config)
        agent = Agent(config, pm, config_warnings=warnings)
        return await agent.run()

    try:
        return asyncio.run(run())
    except (PluginError, MoenetError) as exc:
        if isinstance(exc, ConfigError):
            raise
        logger.error("{}", exc)
        return 1
