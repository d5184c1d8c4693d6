"""``moenet-agent plan``: what a ``sessionSync`` would change, without changing anything.

A plan needs what only the running agent has: the backends it built (the tunnel
list, the firewall set) and the sessions state. Rather than building backends
from the installed plugins a second time in the CLI process (and racing the
agent over the same devices), the command asks the running agent's local API
for ``GET /plugins/sessions/plan``; the route fetches, parses, observes and plans
(``SessionSync.preview``), persisting and writing nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

from aiohttp import web

from moenet_core.errors import MoenetError

from .task import live_task

if TYPE_CHECKING:
    from moenet_core.cli import CommandRegistrar
    from moenet_core.config import AgentConfig

ROUTE = "/plugins/sessions/plan"
EXIT_FAILED = 1
EXIT_UNREACHABLE = 3


async def plan_route(request: web.Request) -> web.StreamResponse:
    """``GET /plugins/sessions/plan``: the plan as JSON (503 when no task runs)."""
    task = live_task()
    if task is None:
        return web.json_response({"error": "sessionSync is not running"}, status=503)
    try:
        return web.json_response(await task.preview())
    except MoenetError as exc:
        return web.json_response({"error": str(exc)}, status=502)


def add_plan_command(register: CommandRegistrar) -> None:
    p = register("plan", "show what a session sync would change on this node (changes nothing)", plan_command)
    p.add_argument("--url", help="the agent's local API (default: from server.listen)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


def _api_url(config: AgentConfig | None) -> str:
    listen = config.server.listen if config is not None else "127.0.0.1:24368"
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "::", "[::]"):  # noqa: S104 - a wildcard listener is reached on loopback
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def plan_command(args: argparse.Namespace, config: AgentConfig | None) -> int:
    url = (args.url or _api_url(config)).rstrip("/") + ROUTE
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 (local API)
            data = json.load(resp)
    except urllib.error.HTTPError as exc:
        try:
            detail = json.load(exc).get("error")
        except ValueError:
            detail = exc.reason
        print(f"moenet-agent plan: {detail}", file=sys.stderr)
        return EXIT_FAILED
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"moenet-agent plan: cannot reach the agent at {url}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(json.dumps(data, indent=2) if args.json else render_plan(data))
    return 0


def render_plan(data: dict[str, Any]) -> str:
    """The plan as a short human-readable report."""
    lines = [f"answer: {data.get('answer')}" + (f" ({data['problem']})" if data.get("problem") else "")]
    changing = [s for s in data.get("sessions", []) if s.get("drift") or s.get("report")]
    for s in changing:
        lines.append(
            f"  {s['uuid']} {s.get('interface') or '-'} [{s.get('status')}] {s['kind']}: "
            f"tunnel {s['tunnel']}, routing {s['routing']}"
            + (f", report {json.dumps(s['report'])}" if s.get("report") else "")
        )
        lines.extend(f"      - {d}" for d in s.get("drift", []))
    if not changing:
        lines.append("  no session changes")
    system = data.get("system", {})
    fw, rt, guard = system.get("firewall", {}), system.get("routing", {}), system.get("guard", {})
    lines.append(f"firewall: open {fw.get('open')} close {fw.get('close')}")
    lines.append(f"routing: {'one reconfigure' if rt.get('changed') else 'unchanged'}")
    if guard.get("refused"):
        lines.append(f"GUARD REFUSED: {guard.get('reason')} (digest {guard.get('digest')})")
    return "\n".join(lines)
