"""Loading the configuration, including bootstrap mode.

In bootstrap mode the file holds only ``bootstrap.{apiUrl,nodeName,token}`` (and
local settings such as ``server``); the rest comes from ``GET
/agent/{node}/config``. The CP being down at start must not crash-loop the agent:
the fetch is retried with capped exponential backoff until it succeeds, and if a
previous answer is cached in the state directory the agent starts from that
cache after the first failed attempt (and logs that it did).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from loguru import logger

from .clock import Clock, SystemClock
from .config import AgentConfig, build_config, find_config_file, is_bootstrap, read_config_file
from .controlplane import HttpControlPlane
from .errors import ConfigError, ControlPlaneError
from .retry import RetryPolicy
from .state import StateError, StateStore

CACHE_FILE = "bootstrap-config.json"
#: Backoff between bootstrap rounds (each round already retries inside the client).
BOOTSTRAP_BACKOFF = RetryPolicy(max_retries=0, initial_delay=2.0, max_delay=120.0, multiplier=2.0)


async def load_config(
    path: str | None,
    *,
    env: Mapping[str, str] | None = None,
    clock: Clock | None = None,
    use_cache_only: bool = False,
    offline: bool = False,
) -> tuple[AgentConfig, list[str]]:
    """Find, read and validate the config; in bootstrap mode fetch the rest.

    ``offline`` validates a bootstrap file without contacting the CP (for
    ``moenet-agent validate``); ``use_cache_only`` takes the cached CP answer
    when there is one (for SIGHUP reloads, which must not block on the CP).
    """
    env = os.environ if env is None else env
    file = find_config_file(path)
    raw = read_config_file(file)
    source = str(file)
    if not is_bootstrap(raw) or offline:
        return build_config(raw, env=env, source=source)

    # Validate the local part first: a broken file should fail now, not after the CP answers.
    local, warnings = build_config(raw, env=env, source=source)
    store = StateStore(local.state.directory)
    cached = _read_cache(store)
    if use_cache_only and cached is not None:
        return build_config(raw, env=env, remote=cached, source=source)
    remote = await fetch_remote_config(
        local,
        clock=clock or SystemClock(),
        cached=cached,
        validate=lambda answer: build_config(raw, env=env, remote=answer, source=source),
    )
    config, more = build_config(raw, env=env, remote=remote, source=source)
    more = [w for w in more if w not in warnings]  # the local part's warnings come again
    if remote is not cached:
        try:
            store.write_json(CACHE_FILE, remote)
        except StateError as exc:
            logger.warning("could not cache the bootstrap config: {}", exc)
    return config, warnings + more


def _read_cache(store: StateStore) -> Any:
    try:
        return store.read_json(CACHE_FILE, None)
    except StateError as exc:
        logger.warning("ignoring the cached bootstrap config: {}", exc)
        return None


async def fetch_remote_config(
    local: AgentConfig,
    *,
    clock: Clock,
    cached: Any = None,
    validate: Callable[[Any], object] | None = None,
) -> Any:
    """``GET /agent/{node}/config`` until it returns a config that validates.

    Falls back to ``cached`` (a previous good answer) after the first failed
    round. An answer that does not validate is treated like an outage: logged
    with every problem, then retried, so a CP-side fix is picked up without
    restarting the agent.
    """
    boot = local.bootstrap
    rng = random.Random()
    attempt = 0
    cp = HttpControlPlane(
        base_url=boot.api_url,
        node=boot.node_name,
        token=boot.token,
        clock=clock,
        request_timeout=local.control_plane.request_timeout,
        max_response_bytes=local.control_plane.max_response_bytes,
    )
    try:
        while True:
            try:
                remote = await cp.fetch("config")
                if validate is not None:
                    validate(remote)
                logger.bind(node=boot.node_name).info("fetched node configuration from the control plane")
                return remote
            except ControlPlaneError as exc:
                problem = f"control plane unavailable: {exc}"
            except ConfigError as exc:
                problem = "control plane sent an invalid config: " + "; ".join(exc.problems)
            except Exception as exc:  # a bug must not skip the cache and crash-loop the agent
                logger.opt(exception=exc).error("bootstrap: unexpected error reading the CP's config")
                problem = f"control plane config could not be used: {type(exc).__name__}: {exc}"
            if cached is not None:
                logger.error("{}; starting from the cached configuration", problem)
                return cached
            delay = BOOTSTRAP_BACKOFF.delay(attempt, rng)
            attempt += 1
            logger.error("bootstrap: {}; retrying in {:.0f} s", problem, delay)
            await clock.sleep(delay)
    finally:
        await cp.aclose()


def config_path_hint(path: str | None) -> Path | None:
    """The file ``load_config`` would use, or None."""
    try:
        return find_config_file(path)
    except ConfigError:
        return None
