"""Start a real agent core in a test with an explicit plugin list."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..agent import Agent
from ..clock import Clock
from ..config import AgentConfig, build_config
from ..plugins import AgentPluginManager
from ..state import StateStore


class AgentHarness:
    """``async with AgentHarness(config, plugins=[("name", module)]) as h: h.agent``.

    Nothing is loaded from entry points: the test says which plugins exist, so
    plugins installed in the environment cannot change the result. Block lists
    (``plugins.disable``, ``disabled=``) apply as in production. The API
    listens only when ``api=True`` (on the config's ``server.listen``).
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        *,
        plugins: Sequence[tuple[str, object]] = (),
        state_dir: str | Path,
        clock: Clock | None = None,
        env: Mapping[str, str] | None = None,
        disabled: Sequence[str] = (),
        api: bool = False,
    ) -> None:
        self.raw = dict(config)
        self.plugins = list(plugins)
        self.state_dir = Path(state_dir)
        self.clock = clock
        self.env = dict(env or {})
        self.disabled = list(disabled)
        self.api = api
        self.config: AgentConfig | None = None
        self.warnings: list[str] = []
        self._agent: Agent | None = None

    @property
    def agent(self) -> Agent:
        assert self._agent is not None, "harness not started"
        return self._agent

    def build(self) -> Agent:
        """Create the agent without starting it."""
        raw = dict(self.raw)
        raw.setdefault("state", {"directory": str(self.state_dir)})
        self.config, self.warnings = build_config(raw, env=self.env)
        pm = AgentPluginManager()
        for name in [*self.disabled, *self.config.plugins.disable]:
            pm.set_blocked(name)
        allow = self.config.plugins.enable
        for name, plugin in self.plugins:
            if allow is not None and name not in allow:
                pm.set_blocked(name)
            pm.register_plugin(plugin, name)
        self._agent = Agent(
            self.config,
            pm,
            clock=self.clock,
            state=StateStore(self.config.state.directory),
            config_warnings=self.warnings,
            api=self.api,
        )
        return self._agent

    async def __aenter__(self) -> AgentHarness:
        agent = self.build()
        await agent.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._agent is not None:
            await self._agent.stop()
