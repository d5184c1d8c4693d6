"""``moenet-agent render --out DIR``: the whole BIRD tree, without touching BIRD.

Operators diff what the agent would write against ``/etc/bird`` before letting
it loose, or review a CP policy change. The policy comes from ``--policy FILE``
(the CP's ``bird-config`` answer as JSON) or, by default, from the configured
control plane (HTTP or the standalone file); eBGP sessions from ``--peers FILE``
(a JSON list of peer objects, the ``sessions`` fragments of the routing
backend); iBGP neighbours from ``--ibgp FILE`` (a JSON list of the ``ibgp``
owner's neighbour objects: ``nodeId``, ``nodeName``, ``loopbackIpv4/6``,
``isRr``, ``rrClient``; the policy's ``ibgpPeers`` are never rendered).
Nothing is sent to BIRD and nothing outside ``DIR`` is written. The files'
includes are relative, so the tree means the same in ``DIR`` as in
``/etc/bird``; ``--no-bird-conf`` renders what the agent writes next to an
operator's own ``bird.conf``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from moenet_core.config import structure
from moenet_core.errors import ConfigError, ControlPlaneError

from .policy import BirdPolicy, EbgpPeer, IbgpNeighbor, parse_bird_config, validate_ibgp, validate_peers
from .render import render_tree

if TYPE_CHECKING:
    from moenet_core.cli import CommandRegistrar
    from moenet_core.config import AgentConfig

EXIT_INVALID = 1
EXIT_UNREACHABLE = 3


def add_render_command(register: CommandRegistrar) -> None:
    p = register(
        "render", "render the BIRD configuration tree into a directory (BIRD untouched)", render_command
    )
    p.add_argument("--out", required=True, metavar="DIR", help="directory to write the tree into")
    p.add_argument(
        "--policy", metavar="FILE", help="the CP's bird-config answer as JSON (default: ask the CP)"
    )
    p.add_argument("--peers", metavar="FILE", help="JSON list of eBGP peers to render")
    p.add_argument(
        "--ibgp", metavar="FILE", help="JSON list of iBGP neighbours to render (nodeId, nodeName, ...)"
    )
    p.add_argument(
        "--no-bird-conf",
        action="store_true",
        help="leave out bird.conf, as when the operator keeps their own (it includes moenet.conf)",
    )
    p.add_argument("--maintenance", action="store_true", help="render the drained (maintenance) variant")


def _read_json(path: str, what: str) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([f"{what}: cannot read {path}: {exc.strerror}"]) from exc
    except ValueError as exc:
        raise ConfigError([f"{what}: {path} is not valid JSON: {exc}"]) from exc


async def _fetch_policy(config: AgentConfig) -> Any:
    from moenet_core.agent import make_control_plane
    from moenet_core.clock import SystemClock
    from moenet_core.metrics import AgentMetrics
    from moenet_core.state import StateStore

    cp = make_control_plane(
        config, clock=SystemClock(), metrics=AgentMetrics(), state=StateStore(config.state.directory)
    )
    try:
        return await cp.fetch("bird-config")
    finally:
        await cp.aclose()


T = TypeVar("T")


def _load_list(
    data: Any, cls: type[T], name: str, what: str, validate: Callable[[list[T]], list[str]]
) -> list[T]:
    """``cls`` objects from a JSON list (camelCase keys), every problem with its path."""
    if not isinstance(data, list):
        raise ConfigError([f"{name}: expected a JSON list of {what} objects"])
    items: list[T] = []
    problems: list[str] = []
    for i, item in enumerate(data):
        obj, errs = structure(cls, item, f"{name}[{i}]", [])
        problems.extend(errs)
        if obj is not None:
            items.append(obj)
    if not problems:
        problems = validate(items)
    if problems:
        raise ConfigError(problems)
    return items


def load_peers(data: Any) -> list[EbgpPeer]:
    """eBGP peers from JSON, every problem with its path."""
    return _load_list(data, EbgpPeer, "peers", "peer", validate_peers)


def load_ibgp(data: Any) -> list[IbgpNeighbor]:
    """iBGP neighbours from JSON, every problem with its path."""
    return _load_list(data, IbgpNeighbor, "ibgp", "neighbour", validate_ibgp)


def render_command(args: argparse.Namespace, config: AgentConfig | None) -> int:
    try:
        if args.policy:
            data = _read_json(args.policy, "--policy")
        elif config is None:
            raise ConfigError(["no config file found: pass -c FILE, or --policy FILE"])
        else:
            data = asyncio.run(_fetch_policy(config))
        policy: BirdPolicy
        policy, warnings = parse_bird_config(data)
        peers = load_peers(_read_json(args.peers, "--peers")) if args.peers else []
        ibgp = load_ibgp(_read_json(args.ibgp, "--ibgp")) if args.ibgp else []
    except ConfigError as exc:
        print(f"moenet-agent render: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except ControlPlaneError as exc:
        print(f"moenet-agent render: cannot get the policy from the control plane: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    template_dir = (config.bird.template_dir or None) if config else None
    tree = render_tree(
        policy,
        peers,
        ibgp_peers=ibgp,
        maintenance=args.maintenance,
        template_dir=template_dir,
        bird_conf=not args.no_bird_conf,
    )
    out = Path(args.out)
    for rel, text in sorted(tree.items()):
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        print(target)
    return 0
