"""`python -m model serve-policy`: an OpenAI-compatible chat-completions server over an in-process
transformers VLM, so that backend replicas can share one policy process (or a pool of them).

An image's size is read from its header before it is decoded (more than max_pixels: 413), and at most
`decoded_at_once` images are decoded and held at a time, until their answer: the model answers one
request at a time anyway, and the others wait with only their encoded bytes."""
from __future__ import annotations

import threading

from model.policies.base import Observation
from model.policies.openai_protocol import MAX_IMAGE_PIXELS, ChatRequest, UnknownModel, create_chat_app, decode_image
from model.policies.transformers_vlm import TransformersPolicy

DECODED_AT_ONCE = 2  # one being answered, the next ready


def create_policy_app(policy: TransformersPolicy, model_id: str, max_pixels: int = MAX_IMAGE_PIXELS,
                      decoded_at_once: int = DECODED_AT_ONCE):
    decoding = threading.BoundedSemaphore(decoded_at_once)

    def answer(request: ChatRequest) -> list[str]:
        if request.model not in (None, model_id):
            raise UnknownModel(f"this server serves {model_id!r}, not {request.model!r}")
        with decoding:
            observation = Observation(decode_image(request.image, max_pixels), request.text)
            [answers] = policy.act([observation], samples=request.samples, temperature=request.temperature)
        return answers

    return create_chat_app(answer, lambda: [model_id])
