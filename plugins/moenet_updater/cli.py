"""``moenet-agent updater status|forget VERSION|rollback``: the updater's state by hand.

- ``status`` prints the saved state (pending update, bad versions, last result)
  and where ``current`` and ``previous`` point, as JSON.
- ``forget VERSION`` removes a version from the bad list, so it is offered again.
- ``rollback`` undoes a pending update: ``current`` back to the previous target,
  the version remembered as bad. Meant for a systemd ``OnFailure=`` unit running
  the *previous* version's binary when the new one cannot even start
  (``contrib/systemd/moenet-agent-rollback.service``, see the README); run it
  only while the agent is stopped. It does not restart anything. With
  ``--require-pending`` it exits :data:`NOTHING_ROLLED_BACK` (3) unless it
  switched ``current`` back, so the unit restarts the agent only after a
  rollback (a crash loop without a pending update is left for the operator).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moenet_core import StateError
from moenet_core.config import merge_sections, structure

from . import state as state_file
from .config import SECTION, UpdaterConfig
from .install import InstallError, Layout
from .task import revert_link

if TYPE_CHECKING:
    from moenet_core import AgentConfig, CommandContext, CommandRegistrar

#: ``rollback --require-pending``: no pending update, or ``current`` was changed by hand.
NOTHING_ROLLED_BACK = 3


def add_commands(register: CommandRegistrar) -> None:
    p = register("updater", "self-update state: status, forget a bad version, roll back", updater_command)
    p.add_argument("action", choices=("status", "forget", "rollback"), help="what to do")
    p.add_argument("version", nargs="?", help="the version to forget (forget only)")
    p.add_argument(
        "--require-pending",
        action="store_true",
        help=f"rollback: exit {NOTHING_ROLLED_BACK} unless a pending update was rolled back "
        "(for the OnFailure= unit: restart the agent only then)",
    )


def _section(config: AgentConfig) -> UpdaterConfig | None:
    merged = merge_sections(config.plugin_sections, [SECTION])  # with the old autoUpdate keys
    raw = merged.values.get(SECTION.name)
    section, problems = structure(UpdaterConfig, {} if raw is None else raw, SECTION.name, [])
    for problem in problems:
        print(f"config: {problem}", file=sys.stderr)
    return section


def updater_command(args: argparse.Namespace, cmd: CommandContext) -> int:
    config = cmd.config
    if config is None:
        print("no config file found (pass -c FILE)", file=sys.stderr)
        return 2
    section = _section(config)
    if section is None:
        return 1
    store = cmd.state
    layout = Layout(Path(section.venv_root))
    try:
        st = state_file.load(store)
    except StateError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    action: str = args.action
    if action == "status":
        out: dict[str, Any] = {
            **st.to_json(),
            "current": str(layout.target(layout.current) or ""),
            "previous": str(layout.target(layout.previous) or ""),
            "autoUpdate": {"enabled": section.enabled, "channel": section.channel},
        }
        print(json.dumps(out, indent=2))
        return 0
    if action == "forget":
        if not args.version:
            print("updater forget: which version?", file=sys.stderr)
            return 2
        if st.bad.pop(args.version, None) is None:
            print(f"{args.version} is not remembered as bad", file=sys.stderr)
            return 1
        state_file.save(store, st)
        print(f"{args.version} forgotten: it will be offered again")
        return 0
    strict: bool = getattr(args, "require_pending", False)
    pending = st.pending
    if pending is None:
        print("nothing pending; nothing to roll back")
        return NOTHING_ROLLED_BACK if strict else 0
    try:
        outcome = revert_link(layout, pending)
    except (OSError, InstallError) as exc:
        print(f"cannot switch {layout.current} back to {pending.previous}: {exc}", file=sys.stderr)
        return 1
    st.pending = None
    how = "by the OnFailure= unit: the service failed to start" if strict else "by hand"
    if outcome != "elsewhere":
        st.bad[pending.version] = {
            "reason": f"rolled back by 'moenet-agent updater rollback' ({how})",
            "at": time.time(),
        }
    st.last_result = f"rolled back {pending.version} {how} ({outcome})"
    state_file.save(store, st)
    if outcome == "elsewhere":
        print(f"{layout.current} was changed by hand; the pending update to {pending.version} is dropped")
        return NOTHING_ROLLED_BACK if strict else 0
    print(f"{layout.current} -> {layout.target(layout.current)}; {pending.version} remembered as bad")
    return 0
