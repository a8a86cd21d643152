"""The policy a registered version stands for: the base policy acting through that version's LoRA adapter.

An in-process policy loads the adapter beside the others it holds; a remote policy (the SegAgent-Qwen
server) is asked for the model named after the version, and the server loads the adapter from the
registry folder it shares with us.
"""
from __future__ import annotations

from model.policies.base import Policy, PolicyError


def version_policy(policy: Policy, scope: str, version: str, adapter_path: str) -> Policy:
    """`policy` acting as `version` of `scope` (its adapter at `adapter_path`, as this process sees it)."""
    for_version = getattr(policy, "for_version", None)
    if for_version is not None:
        return for_version(scope, version)
    with_adapter = getattr(policy, "with_adapter", None)
    if with_adapter is None:
        raise PolicyError(f"{policy.name} cannot act as a trained version")
    return with_adapter(f"{scope}_{version}".replace("-", "_"), adapter_path)
