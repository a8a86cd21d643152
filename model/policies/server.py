"""`python -m model serve-policy`: an OpenAI-compatible chat-completions server over an in-process
transformers VLM, so that backend replicas can share one policy process (or a pool of them)."""
from __future__ import annotations

from model.policies.base import Observation
from model.policies.openai_protocol import create_chat_app
from model.policies.transformers_vlm import TransformersPolicy


def create_policy_app(policy: TransformersPolicy, model_id: str):
    def answer(image, text: str, samples: int, temperature: float) -> list[str]:
        [answers] = policy.act([Observation(image, text)], samples=samples, temperature=temperature)
        return answers

    return create_chat_app(answer, model_id)
