"""The ``updater`` config section, and what the updater takes from ``autoUpdate``.

``autoUpdate`` (a core section, Go-compatible, and one the control plane may set)
switches the updater on, sets the check period (``checkInterval``, minutes), the
channel and the GitHub repository. Everything that decides *what code may run on
this node* lives in ``updater``, a plugin section, which the core never takes from
the control plane: the pinned public key above all, but also the feed URL, where
virtual environments live and how the agent is restarted.

Each check is attached twice with the core's ``checked(fn)``, as the other
plugins do: as core ``check`` metadata (the error lands on the field's own
path, ``updater.publicKey: ...``) and as an attrs validator (an object built in
code is held to the same rules).
"""

from __future__ import annotations

import os
import re

import attrs

from moenet_core.config import AutoUpdateConfig, checked

from .fetch import url_problem
from .verify import load_public_key

#: The project's repository, used when ``autoUpdate.githubRepo`` is empty.
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
    """Section ``updater`` (local only: the control plane cannot set it)."""

    public_key: str = attrs.field(default="", **checked(check_public_key))
    """Base64 of the 32-byte Ed25519 public key releases are signed with. Required
    when ``autoUpdate.enabled``: no key, no updates."""
    feed_url: str = attrs.field(default="", **checked(check_feed_url))
    """The releases feed (GitHub releases JSON). Default:
    ``https://api.github.com/repos/<autoUpdate.githubRepo>/releases``. HTTPS only
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


def feed_url(section: UpdaterConfig, auto: AutoUpdateConfig) -> str:
    """The feed to read: ``updater.feedUrl``, else the GitHub releases API of the repo."""
    if section.feed_url:
        return section.feed_url
    repo = auto.github_repo or DEFAULT_REPO
    return f"https://api.github.com/repos/{repo}/releases"


def problems(section: UpdaterConfig | None, auto: AutoUpdateConfig) -> list[str]:
    """What stops the updater from running with this configuration."""
    out: list[str] = []
    if section is None or not section.public_key:
        out.append(
            "updater.publicKey: required when autoUpdate.enabled is true (the base64 Ed25519 "
            "public key releases are signed with; see scripts/sign-release). No key, no updates"
        )
    if auto.github_repo and not REPO_RE.match(auto.github_repo):
        out.append(f"autoUpdate.githubRepo: must be 'owner/name' (got {auto.github_repo!r})")
    return out
