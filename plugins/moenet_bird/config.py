"""The ``bird`` config section: BIRD's control socket, the directories the agent
writes, and how it applies.

The Go agent's keys (``controlSocket``, ``poolSize``, ``poolSizeMax``,
``configDir``, ``peerConfDir``, ``ibgpConfDir``, ``ebgpConfTemplateFile``) keep
their names; the keys of the former ``birdAgent`` section (``birdBinary``,
``applyDebounce``, ``loopbackInterface``) moved here, and ``birdAgent`` is read
as a deprecated alias of this section.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import attrs

from moenet_core import ConfigSection
from moenet_core.config import check, positive

if TYPE_CHECKING:
    from moenet_core.config import AgentConfig

_IFNAME = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_GROUP = re.compile(r"^(?:[0-9]{1,10}|[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?)$")


def _binary(value: object) -> str | None:
    if value == "" or (isinstance(value, str) and value.startswith("/")):
        return None
    return "must be an absolute path (or empty: search PATH, then /opt/moenet-bird3/bin/bird)"


def _debounce(value: object) -> str | None:
    if isinstance(value, int | float) and 0 <= value <= 5:
        return None
    return "must be 0-5 seconds"


def _group(value: object) -> str | None:
    if isinstance(value, str) and (value == "" or _GROUP.match(value)):
        return None
    return "must be a group name or a numeric gid (or empty: the group BIRD already reads with)"


def _ifname(value: object) -> str | None:
    if isinstance(value, str) and _IFNAME.match(value):
        return None
    return "must be a Linux interface name (1-15 letters, digits, '_', '.', '-')"


@attrs.define(kw_only=True)
class BirdConfig:
    """BIRD 3: control socket, the directories the agent writes, and how it applies."""

    control_socket: str = "/var/run/bird/bird.ctl"
    """BIRD's control socket: every query and ``configure`` goes through it. The
    ``routing/bird`` backend is available when it exists or a ``bird`` binary is found."""
    pool_size: int = attrs.field(default=5, metadata=check(positive, cp=True))
    """Idle control-socket connections kept open for read commands."""
    pool_size_max: int = attrs.field(default=10, metadata=check(positive, cp=True))
    """Most read connections open at once; callers beyond that wait. Not smaller
    than ``poolSize``. Reconfigurations use one connection of their own."""
    config_dir: str = "/etc/bird"
    """Directory of BIRD's configuration, where the agent writes ``moenet.conf``
    and its other files, ``peers/*.conf``, ``ibgp/*.conf``, and ``bird.conf``
    unless the operator keeps their own (see docs/bird.md)."""
    peer_conf_dir: str = "/etc/bird/peers"
    """Accepted for compatibility with the Go agent's files; the agent always
    writes eBGP peers to ``<configDir>/peers`` and logs a warning when this is set
    to another directory."""
    ibgp_conf_dir: str = "/etc/bird/ibgp"
    """Accepted for compatibility with the Go agent's files; the agent always
    writes iBGP sessions to ``<configDir>/ibgp`` and logs a warning when this is
    set to another directory."""
    template_dir: str = ""
    """Operator templates that override the shipped ones, file by file."""
    ebgp_conf_template_file: str = ""
    """Accepted for Go-agent compatibility; unused (see ``templateDir``): a
    non-empty value is warned about."""
    group: str = attrs.field(default="", metadata=check(_group))
    """Group given read access to the files the agent writes: they are 0640 and its
    directories 0750 whatever the agent's umask, owned by the agent (root), never
    world-readable. A name or a numeric gid. Empty (the default) picks, in order: the
    group of an existing ``<configDir>/bird.conf``, then the group of ``configDir``,
    then ``bird`` (Debian's ``bird3`` runs BIRD as ``-u bird -g bird``) if that group
    exists, skipping root's group 0 in the first two; with none of them the files
    stay root's (enough for a BIRD running as root). An unknown name refuses the
    apply. Setting the group needs ``CAP_CHOWN`` or membership of the group: under
    the shipped unit add ``SupplementaryGroups=<group>`` in a drop-in (a BIRD that
    runs as ``bird`` also makes its control socket ``0660 bird:bird``, so the agent
    needs that membership to talk to it at all)."""
    bird_binary: str = attrs.field(default="", metadata=check(_binary))
    """``bird`` for the ``bird -p`` parse check when the daemon is not running."""
    apply_debounce: float = attrs.field(default=0.05, metadata=check(_debounce))
    """Seconds to wait before an apply so owners declaring together share one configure."""
    loopback_interface: str = attrs.field(default="dummy0", metadata=check(_ifname))
    """Interface holding the node's loopbacks (BIRD's ``direct`` protocol reads it)."""

    def __attrs_post_init__(self) -> None:
        if self.pool_size_max < self.pool_size:
            raise ValueError("poolSizeMax: must not be smaller than poolSize")


#: Deprecated: the old name of this class (the ``birdAgent`` section's).
BirdAgentConfig = BirdConfig

SECTION = ConfigSection(
    name="bird",
    type=BirdConfig,
    aliases=("birdAgent",),
    description="BIRD 3: control socket and pool, config and template directories, bird binary, "
    "apply debounce, loopback interface",
)


def section_of(config: AgentConfig) -> BirdConfig:
    """The ``bird`` section of ``config`` (defaults when it is invalid), for hooks
    that get only the config."""
    section = SECTION.of(config)
    return section if isinstance(section, BirdConfig) else BirdConfig()
