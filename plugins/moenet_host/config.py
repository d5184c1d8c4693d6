"""The ``host`` config section (local only: the control plane cannot set it)."""

from __future__ import annotations

import fnmatch
import re

import attrs

from moenet_core.config import checked

_PATTERN = re.compile(r"^[A-Za-z0-9_.*?\[\]-]{1,32}$")


def _patterns(value: object) -> str | None:
    if not isinstance(value, list) or not all(isinstance(v, str) and _PATTERN.match(v) for v in value):
        return "must be a list of interface names or shell patterns ('dn42-*') of [A-Za-z0-9_.*?[]-]"
    return None


def _proc_sys(value: object) -> str | None:
    if not isinstance(value, str) or not value.startswith("/"):
        return "must be an absolute path"
    return None


@attrs.define(kw_only=True)
class HostConfig:
    """Section ``host``: the kernel settings a DN42 router needs."""

    manage_sysctls: bool = True
    """Set ``rp_filter`` to 0 on the agent's interfaces (and ``conf.all``, other
    interfaces keeping their filter) and turn forwarding on for both families
    when they are not. False: only check, and report in the node health and the
    log which ``sysctl -w`` to run."""
    interfaces: list[str] = attrs.field(factory=list, **checked(_patterns))
    """More interfaces (names or shell patterns such as ``dn42-*``) treated like
    the agent's own tunnels: tunnels the operator manages outside the agent."""
    proc_sys: str = attrs.field(default="/proc/sys", **checked(_proc_sys))
    """Where ``/proc/sys`` is (tests point it at a fabricated tree)."""

    def matches(self, name: str) -> bool:
        """Whether ``name`` is one of :attr:`interfaces`."""
        return any(fnmatch.fnmatchcase(name, p) for p in self.interfaces)
