"""The ``updater`` config section.

It absorbed the Go agent's ``autoUpdate`` section: ``enabled`` switches the
updater on, ``checkInterval`` (minutes), ``channel`` and ``githubRepo``; the old
``autoUpdate`` spelling is still read as a deprecated alias. Only
``checkInterval`` may come from the control plane (as ``autoUpdate`` in its
bootstrap answer); everything else decides *what code may run on this node*
and is local only: the core ignores it in the CP's answer, with a warning
(``enabled``, ``channel`` and ``githubRepo`` too, the pinned public key above
all, the feed URL, where virtual environments live and how the agent is
restarted).

Each check is attached twice with the core's ``checked(fn)``, as the other
plugins do: as core ``check`` metadata (the error lands on the field's own
path, ``updater.publicKey: ...``) and as an attrs validator (an object built in
code is held to the same rules).
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

import attrs

from moenet_core import ConfigSection, SectionAlias
from moenet_core.config import check, checked, one_of, positive

from .fetch import url_problem
from .verify import load_public_key

if TYPE_CHECKING:
    from moenet_core.config import AgentConfig

#: The project's repository, used when ``updater.githubRepo`` is empty.
DEFAULT_REPO = "moenet/moenet-agent"
DEFAULT_VENV_ROOT = "/opt/moenet-agent"
#: ``--no-block``: the agent asks for its own restart; waiting for the job would
#: mean waiting for our own shutdown.
DEFAULT_RESTART_COMMAND = ("systemctl", "--no-block", "restart", "moenet-agent")
REPO_RE = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")
MIB = 1024 * 1024


def check_public_key(value: str) -> str | None:
    if not value:
        return None
    try:
        load_public_key(value)
    except ValueError as exc:
        return str(exc)
    return None


def check_feed_url(value: str) -> str | None:
    return url_problem(value) if value else None


def check_absolute(value: str) -> str | None:
    if not value:
        return None
    return None if os.path.isabs(value) else f"must be an absolute path (got {value!r})"


def check_command(value: list[str]) -> str | None:
    if not value or not all(isinstance(a, str) for a in value) or not value[0]:
        return "must be a non-empty list of strings: the program and its arguments (no shell)"
    return None


def check_task_names(value: list[str] | None) -> str | None:
    if value is None:
        return None
    bad = [n for n in value if not re.match(r"^[A-Za-z][A-Za-z0-9_]{0,63}$", n)]
    return f"invalid task names: {', '.join(map(repr, bad))}" if bad else None


def check_positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def check_keep(value: int) -> str | None:
    return None if 1 <= value <= 100 else f"must be from 1 to 100 (got {value!r})"


def check_download_cap(value: int) -> str | None:
    return None if 1 * MIB <= value <= 4096 * MIB else "must be from 1 MiB to 4 GiB (bytes)"


@attrs.define(kw_only=True)
class UpdaterConfig:
    """Section ``updater``: the self-updater (off by default). The control plane may
    set ``checkInterval`` (as the Go agent's ``autoUpdate``), nothing else."""

    enabled: bool = False
    """True: the ``updater`` task runs (it then needs ``updater.publicKey``: the
    plugin is refused without it). False: no update check at all."""
    check_interval: float = attrs.field(default=60.0, metadata=check(positive, cp=True))
    """Minutes between update checks (below 1: 60, as the Go agent did)."""
    channel: str = attrs.field(default="stable", metadata=check(one_of("stable", "beta", "dev")))
    """Which releases are taken: ``stable`` only stable releases; ``beta`` also
    pre-releases; ``dev`` also ``.devN`` releases. The newest such release newer
    than the running version is installed, never one remembered as bad."""
    github_repo: str = ""
    """``owner/name`` whose GitHub releases feed is read when ``updater.feedUrl``
    is empty (checked when ``enabled``). Empty: ``moenet/moenet-agent``."""
    public_key: str = attrs.field(default="", **checked(check_public_key))
    """Base64 of the 32-byte Ed25519 public key releases are signed with. Required
    when ``updater.enabled``: no key, no updates."""
    feed_url: str = attrs.field(default="", **checked(check_feed_url))
    """The releases feed (GitHub releases JSON). Default:
    ``https://api.github.com/repos/<updater.githubRepo>/releases``. HTTPS only
    (plain http is accepted for loopback addresses, for tests)."""
    venv_root: str = attrs.field(default=DEFAULT_VENV_ROOT, **checked(check_absolute))
    """Holds ``versions/<version>/`` (one virtual environment each), the ``current``
    link the service runs through, and the ``previous`` link."""
    health_timeout: float = attrs.field(default=600.0, **checked(check_positive))
    """Seconds after the switch within which the new version must be healthy."""
    health_tasks: list[str] | None = attrs.field(default=None, **checked(check_task_names))
    """Tasks that must each finish one run successfully in the new version.
    Default: every task (but the updater) that had succeeded in the old one."""
    restart_command: list[str] = attrs.field(
        factory=lambda: list(DEFAULT_RESTART_COMMAND), **checked(check_command)
    )
    """Run (no shell) to restart the agent after a switch or a rollback."""
    python: str = attrs.field(default="", **checked(check_absolute))
    """Interpreter that creates new virtual environments (default: the running one)."""
    pip_args: list[str] = attrs.field(factory=list)
    """Extra arguments for every ``pip install`` (``--index-url URL``, ``--no-index
    --find-links DIR``...)."""
    extra_requirements: list[str] = attrs.field(factory=list)
    """Installed into each new environment after the agent (third-party plugins)."""
    keep_versions: int = attrs.field(default=3, **checked(check_keep))
    """Environments kept in ``versions/`` (newest first); the current and previous
    ones are never removed."""
    max_download_bytes: int = attrs.field(default=256 * MIB, **checked(check_download_cap))
    """Bytes: the largest wheel the updater downloads (1 MiB to 4 GiB); a larger one
    is refused. The feed, ``SHA256SUMS``, its signature and ``requirements.txt``
    have fixed caps."""
    download_timeout: float = attrs.field(default=600.0, **checked(check_positive))
    """Seconds for one download (the feed, or one artefact)."""
    install_timeout: float = attrs.field(default=900.0, **checked(check_positive))
    """Seconds for each step of an install (venv, each pip run, the smoke test)."""


#: The Go agent's ``autoUpdate`` keys (same names here).
GO_AUTO_UPDATE_KEYS = ("enabled", "checkInterval", "channel", "githubRepo")

SECTION = ConfigSection(
    name="updater",
    type=UpdaterConfig,
    aliases=(SectionAlias(section="autoUpdate", keys={k: k for k in GO_AUTO_UPDATE_KEYS}),),
    description="Self-update: on/off, check interval, channel, pinned Ed25519 key, feed, venv root, "
    "health timeout, restart command",
)


def section_of(config: AgentConfig) -> UpdaterConfig | None:
    """The ``updater`` section of ``config``; None when it is invalid."""
    section = SECTION.of(config)
    return section if isinstance(section, UpdaterConfig) else None


def feed_url(section: UpdaterConfig) -> str:
    """The feed to read: ``updater.feedUrl``, else the GitHub releases API of the repo."""
    if section.feed_url:
        return section.feed_url
    repo = section.github_repo or DEFAULT_REPO
    return f"https://api.github.com/repos/{repo}/releases"


def problems(section: UpdaterConfig | None) -> list[str]:
    """What stops the updater from running with this configuration."""
    out: list[str] = []
    if section is None or not section.public_key:
        out.append(
            "updater.publicKey: required when updater.enabled is true (the base64 Ed25519 "
            "public key releases are signed with; see scripts/sign-release). No key, no updates"
        )
    repo = section.github_repo if section is not None else ""
    if repo and not REPO_RE.match(repo):
        out.append(f"updater.githubRepo: must be 'owner/name' (got {repo!r})")
    return out
