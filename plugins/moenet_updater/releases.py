"""Release selection from a GitHub releases feed: pure functions, no I/O.

The feed is the JSON list ``GET /repos/{owner}/{repo}/releases`` returns: objects
with ``tag_name``, ``prerelease``, ``draft`` and ``assets`` (``name``,
``browser_download_url``). Versions are PEP 440 (``packaging.version``): tags
such as ``v1.2.3``, ``1.2.3rc1`` or ``1.3.0.dev4`` parse; a tag that does not
(``dev-3f2a1b0``) is skipped with a note.

Each release gets a class:

- ``stable``: neither flagged ``prerelease`` on GitHub nor a PEP 440 pre- or
  dev-release;
- ``beta``: flagged ``prerelease``, or a PEP 440 pre-release (``a``/``b``/``rc``),
  and not a dev-release;
- ``dev``: a PEP 440 dev-release (``.devN``).

Channels take the newest release of their classes: ``stable`` = stable;
``beta`` = stable or beta (a newer stable beats an older beta, unlike the Go
agent, which only ever looked at pre-releases); ``dev`` = any of them. Drafts
are never taken. Only versions strictly newer than the running one count, and
never one remembered as bad (the newest good one is taken instead).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import attrs
from packaging.version import InvalidVersion, Version

CHANNELS: dict[str, frozenset[str]] = {
    "stable": frozenset({"stable"}),
    "beta": frozenset({"stable", "beta"}),
    "dev": frozenset({"stable", "beta", "dev"}),
}
WHEEL_PROJECT = "moenet_agent"
SUMS = "SHA256SUMS"
SIGNATURE = "SHA256SUMS.sig"
REQUIREMENTS = "requirements.txt"


def parse_version(tag: str) -> Version | None:
    """The PEP 440 version of a tag (a leading ``v`` is allowed), or None."""
    try:
        return Version(tag.strip())
    except InvalidVersion:
        return None


def wheel_name(version: Version) -> str:
    """The wheel a release of ``version`` must carry (normalised version, pure Python)."""
    return f"{WHEEL_PROJECT}-{version}-py3-none-any.whl"


@attrs.frozen(kw_only=True)
class Release:
    tag: str
    version: Version
    prerelease: bool = False
    """As flagged on GitHub."""
    assets: Mapping[str, str] = attrs.field(factory=dict)
    """Asset name -> download URL."""

    @property
    def kind(self) -> str:
        """``stable``, ``beta`` or ``dev`` (see the module docstring)."""
        if self.version.is_devrelease:
            return "dev"
        if self.prerelease or self.version.is_prerelease:
            return "beta"
        return "stable"

    @property
    def wheel(self) -> str:
        return wheel_name(self.version)


def parse_feed(data: Any) -> tuple[list[Release], list[str]]:
    """The releases in a feed, and a note for each entry skipped.

    Drafts are left out silently (they are never candidates); an entry without
    a tag, with an unparseable tag, or that is not an object is noted.
    """
    if not isinstance(data, list):
        raise ValueError(f"the release feed must be a JSON list of releases, got {type(data).__name__}")
    releases: list[Release] = []
    notes: list[str] = []
    for i, item in enumerate(data):
        if not isinstance(item, Mapping):
            notes.append(f"entry {i}: not an object; skipped")
            continue
        if item.get("draft") is True:
            continue
        tag = item.get("tag_name")
        if not isinstance(tag, str) or not tag.strip():
            notes.append(f"entry {i}: no tag_name; skipped")
            continue
        version = parse_version(tag)
        if version is None:
            notes.append(f"tag {tag[:80]!r} is not a PEP 440 version; skipped")
            continue
        assets: dict[str, str] = {}
        raw_assets = item.get("assets")
        for asset in raw_assets if isinstance(raw_assets, list) else ():
            if not isinstance(asset, Mapping):
                continue
            name, url = asset.get("name"), asset.get("browser_download_url")
            if isinstance(name, str) and isinstance(url, str) and name not in assets:
                assets[name] = url
        releases.append(
            Release(tag=tag, version=version, prerelease=item.get("prerelease") is True, assets=assets)
        )
    return releases, notes


def candidates(releases: Collection[Release], channel: str, current: Version) -> list[Release]:
    """Releases of ``channel`` newer than ``current``, newest first (bad ones included)."""
    kinds = CHANNELS[channel]
    found = [r for r in releases if r.kind in kinds and r.version > current]
    return sorted(found, key=lambda r: r.version, reverse=True)


def select_release(
    releases: Collection[Release], channel: str, current: Version, bad: Collection[str] = ()
) -> Release | None:
    """The release to install: the newest of ``channel`` newer than ``current``
    whose version is not in ``bad`` (normalised version strings), or None."""
    for release in candidates(releases, channel, current):
        if str(release.version) not in bad:
            return release
    return None
