"""Policies behind one protocol (base.py): in-process transformers VLMs, a remote OpenAI-compatible
endpoint, and the released SegAgent-Qwen checkpoint served through that same remote protocol."""
from __future__ import annotations

from model.policies.base import Policy, PolicyError


def make_policy(spec: str, adapter: str | None = None, answer_format: str = "segagent",
                model: str | None = None, device: str = "auto") -> Policy:
    """A policy from a setting: an http(s) URL is a remote endpoint (serving `model`, or the first model
    it lists), anything else a local path or hub id, run on `device` (SEGAGENT_DEVICE: auto, cuda or cpu;
    cuda without a usable GPU raises DeviceError)."""
    if spec.startswith(("http://", "https://")):
        from model.policies.remote import RemotePolicy

        return RemotePolicy(spec, model=model, answer_format=answer_format)
    from model.policies.transformers_vlm import TransformersPolicy
    from model.tools.loading import resolve_device

    return TransformersPolicy(spec, adapter=adapter, device=resolve_device(device))


__all__ = ["Policy", "PolicyError", "make_policy"]
