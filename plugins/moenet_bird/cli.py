"""``moenet-agent render --out DIR``: the whole BIRD tree, without touching BIRD.

Operators diff what the agent would write against ``/etc/bird`` before letting
it loose, or review a CP policy change. The policy comes from ``--policy FILE``
(the CP's ``bird-config`` answer as JSON) or, by default, from the configured
control plane (HTTP or the standalone file); eBGP peers from ``--peers FILE``
(a JSON list of :class:`~moenet_core.intents.EbgpPeerIntent` objects in
``intent_to_json`` form, ``kind`` optional, each with the ``uuid`` the backend
would know it by, a session uuid or any fragment key, and optionally its
``owner``, default ``sessions``: the protocol name derives from them as in the
routing backend); iBGP neighbours from ``--ibgp FILE`` (a JSON list of
:class:`~moenet_core.intents.IbgpNeighborIntent` objects: ``nodeId``,
``nodeName``, ``loopbackIpv4/6``, ``isRr``, ``rrClient``; the policy's
``ibgpPeers`` are never rendered).
What the local config adds is rendered as the agent renders it after a start
(:func:`local_additions`): ``bird.roaMode``, ``bird.rpkiServers``, the route
collector settings, the static ROAs of ``bird.roaFiles`` (and the saved copy of
each ``bird.roaUrls`` download: nothing is fetched) and ``bird.denyListFiles``,
read by the ``birdRoaSources`` / ``birdDenyList`` tasks' own code; a source that
cannot be used is left out, as the agent leaves it out, with a warning.
Nothing is sent to BIRD and nothing outside ``DIR`` is written. The files'
includes are relative, so the tree means the same in ``DIR`` as in
``/etc/bird``; ``--no-bird-conf`` renders what the agent writes next to an
operator's own ``bird.conf``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import attrs

from moenet_core import CommandContext, ConfigError, ControlPlaneError
from moenet_core.intents import EbgpPeerIntent, IbgpNeighborIntent, IntentError, intent_from_json

from .config import section_of
from .denylist import DenyListSources
from .local_sources import OfflineContext, configured_local
from .policy import BgpPeer, BirdPolicy, parse_bird_config, peer_id, validate_ibgp, validate_peers
from .render import render_tree
from .roa import LocalRouting
from .roa_sources import RoaSources

if TYPE_CHECKING:
    from moenet_core import AgentConfig, CommandRegistrar

PLUGIN = "bird"
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


T = TypeVar("T")


def _load_list(
    data: Any,
    kind: str,
    name: str,
    what: str,
    make: Callable[[dict[str, Any], Any, str], T],
    validate: Callable[[list[T]], list[str]],
) -> list[T]:
    """Intents of ``kind`` from a JSON list (``intent_to_json``'s form, ``kind``
    optional), each turned into what the renderer takes by ``make(extra keys,
    intent, path)``; every problem with its path."""
    if not isinstance(data, list):
        raise ConfigError([f"{name}: expected a JSON list of {what} objects"])
    items: list[T] = []
    problems: list[str] = []
    for i, item in enumerate(data):
        path = f"{name}[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{path}: expected an object")
            continue
        if item.get("kind", kind) != kind:
            problems.append(f"{path}.kind: must be {kind!r} (got {item['kind']!r})")
            continue
        extra = {k: item[k] for k in ("uuid", "owner") if k in item}
        try:
            intent = intent_from_json(
                {k: v for k, v in item.items() if k not in extra} | {"kind": kind}, path
            )
            items.append(make(extra, intent, path))
        except (IntentError, ValueError) as exc:
            problems.append(str(exc))
    if not problems:
        problems = validate(items)
    if problems:
        raise ConfigError(problems)
    return items


def _peer(extra: dict[str, Any], intent: Any, path: str) -> BgpPeer:
    key, owner = extra.get("uuid"), extra.get("owner", "sessions")
    if not isinstance(key, str) or not key:
        raise ValueError(f"{path}.uuid: required: the session uuid or fragment key the peer is known by")
    if not isinstance(owner, str) or not owner:
        raise ValueError(f"{path}.owner: must be a plugin name")
    return BgpPeer(peer_id(owner, key), intent)


def _neighbour(extra: dict[str, Any], intent: Any, path: str) -> IbgpNeighborIntent:
    if extra:
        raise ValueError(f"{path}: {', '.join(sorted(extra))}: not a field of an iBGP neighbour")
    return intent  # type: ignore[no-any-return]


def load_peers(data: Any) -> list[BgpPeer]:
    """eBGP peers from JSON, every problem with its path."""
    return _load_list(data, EbgpPeerIntent.kind, "peers", "peer", _peer, validate_peers)


def load_ibgp(data: Any) -> list[IbgpNeighborIntent]:
    """iBGP neighbours from JSON, every problem with its path."""
    return _load_list(data, IbgpNeighborIntent.kind, "ibgp", "neighbour", _neighbour, validate_ibgp)


def local_additions(cmd: CommandContext) -> tuple[LocalRouting, list[str]]:
    """What the local config adds to the CP's policy, as the running agent has it
    after a start: the ``bird`` section's pins, and what the ``birdRoaSources`` and
    ``birdDenyList`` tasks read when they are built (the same classes, on an
    :class:`OfflineContext`: no backend, nothing fetched, nothing written). Also a
    line for each source left out."""
    if cmd.config is None:
        return LocalRouting(), []
    section = section_of(cmd.config)
    ctx = OfflineContext(section, cmd.state, cmd.log)
    roa, deny = RoaSources(ctx), DenyListSources(ctx)
    problems = [
        f"{task.what} {name}: {error}; left out"
        for task in (roa, deny)
        for name, error in task.errors.items()
    ]
    problems += [
        f"{roa.what} {url}: no saved download in the state directory (render fetches nothing); left out"
        for url in roa.urls
        if roa.sources[url].entries is None
    ]
    return attrs.evolve(configured_local(section), static=roa.static, deny=deny.deny), problems


def render_command(args: argparse.Namespace, cmd: CommandContext | AgentConfig | None) -> int:
    """The ``render`` command. The CLI passes a :class:`CommandContext`; scripts
    and tests may pass just the config (or None)."""
    if not isinstance(cmd, CommandContext):
        cmd = CommandContext(cmd, plugin=PLUGIN)
    config = cmd.config
    try:
        if args.policy:
            data = _read_json(args.policy, "--policy")
        elif config is None:
            raise ConfigError(["no config file found: pass -c FILE, or --policy FILE"])
        else:
            data = cmd.run(cmd.cp.fetch("bird-config"))
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
    local, local_problems = local_additions(cmd)
    for w in [*warnings, *local_problems]:
        print(f"warning: {w}", file=sys.stderr)
    section = section_of(config) if config else None
    tree = render_tree(
        policy,
        peers,
        ibgp_peers=ibgp,
        maintenance=args.maintenance,
        template_dir=(section.template_dir or None) if section else None,
        loopback_interface=section.loopback_interface if section else "dummy0",
        bird_conf=not args.no_bird_conf,
        local=local,
    )
    out = Path(args.out)
    for rel, text in sorted(tree.items()):
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
        print(target)
    return 0
