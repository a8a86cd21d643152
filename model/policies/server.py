"""`python -m model serve-policy`: an OpenAI-compatible chat-completions server over an in-process
transformers VLM, so that backend replicas can share one policy process (or a pool of them)."""
from __future__ import annotations

from model.policies.base import Observation
from model.policies.openai_protocol import ChatRequest, UnknownModel, create_chat_app, decode_image
from model.policies.transformers_vlm import TransformersPolicy


def create_policy_app(policy: TransformersPolicy, model_id: str):
    def answer(request: ChatRequest) -> list[str]:
        if request.model not in (None, model_id):
            raise UnknownModel(f"this server serves {model_id!r}, not {request.model!r}")
        observation = Observation(decode_image(request.image), request.text)
        [answers] = policy.act([observation], samples=request.samples, temperature=request.temperature)
        return answers

    return create_chat_app(answer, lambda: [model_id])
