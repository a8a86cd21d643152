"""Which policy version answers a project: its active version in the registry, read on every request, so
a promotion or a rollback (by any process) is served from the next request on, without a restart.
Trained versions are LoRA adapters on the one loaded base policy, or, for the SegAgent-Qwen server, model
names it serves from the registry folder it shares with us."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from model.agent.loop import Agent
from model.flywheel.registry import BASE_VERSION, Registry, RegistryError
from model.flywheel.remote_training import untrainable_reason
from model.flywheel.scopes import scope_for
from model.flywheel.versions import version_policy
from model.policies import PolicyError
from model.settings import Settings

from .capabilities import Capabilities, Capability, make_agent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Serving:
    """What answers one project's requests: its version's name and the agent acting with it."""

    project: str
    version: str
    agent: Capability[Agent]


class VersionServer:
    def __init__(self, settings: Settings, capabilities: Capabilities, registry: Registry):
        self.settings = settings
        self.capabilities = capabilities
        self.registry = registry
        self._agents: dict[tuple[str, str], Agent] = {}  # (scope, version) -> the agent serving it
        self.errors: dict[str, str] = {}  # scope -> why its active version cannot be served
        self._lock = threading.Lock()

    @property
    def trainable(self) -> str | None:
        """None when this backend's policy can be fine-tuned and served per version, else why not."""
        caps = self.capabilities
        if not caps.policy.on:
            return f"no policy to fine-tune ({caps.policy.reason})"
        untrainable = untrainable_reason(self.settings)
        if untrainable:
            return untrainable
        if not caps.tool.on:
            return f"the interactive tool is off ({caps.tool.reason})"
        return None

    def scope(self, project: str) -> str:
        """The registry scope of a project: its own, or the shared one (SEGAGENT_POLICY_SCOPE=shared)."""
        return scope_for(project, shared=self.settings.policy_scope == "shared")

    def version_name(self, scope: str, version: str) -> str:
        agent = "-agent" if self.capabilities.policy.on else ""
        scoped = f"{scope}-" if scope and version != BASE_VERSION else ""
        return f"segagent-{self.capabilities.tool.name or 'none'}{agent}-{scoped}{version}"

    @property
    def base_version(self) -> str:
        """The model_version of what the settings alone serve (v0), before any training."""
        return self.version_name("", BASE_VERSION)

    def serving(self, project: str) -> Serving:
        base = Serving(project, self.base_version, self.capabilities.agent)
        if not project or self.trainable:
            return base
        scope = self.scope(project)
        version = self.registry.active(scope)
        if version == BASE_VERSION:
            return base
        agent = self._agent(scope, version)
        if agent is None:
            return base
        return Serving(project, self.version_name(scope, version), Capability("agent", agent))

    def _agent(self, scope: str, version: str) -> Agent | None:
        with self._lock:
            if (scope, version) in self._agents:
                return self._agents[(scope, version)]
            try:
                meta = self.registry.version(scope, version)
                if meta.get("base") != self.settings.policy:
                    raise PolicyError(f"{version} was trained for {meta.get('base')}, not for {self.settings.policy}")
                policy = version_policy(self.capabilities.policy.get(), scope, version,
                                        str(self.registry.adapter_path(scope, version)))
            except (PolicyError, RegistryError) as exc:
                if self.errors.get(scope) != str(exc):
                    log.error("%s: cannot serve %s, serving the base version: %s", scope, version, exc)
                self.errors[scope] = str(exc)
                return None
            prm = self.capabilities.agent.get().scorer
            self._agents[(scope, version)] = make_agent(self.settings, self.capabilities.tool.get(), policy, prm)
            self.errors.pop(scope, None)
            log.info("%s: serving %s", scope, version)
            return self._agents[(scope, version)]
