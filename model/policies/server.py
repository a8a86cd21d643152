"""`python -m model serve-policy`: an OpenAI-compatible chat-completions server over an in-process
transformers VLM, so that backend replicas can share one policy process (or a pool of them)."""
from __future__ import annotations

import logging

from flask import Flask, jsonify, request

from .base import Observation
from .openai_protocol import BadChatRequest, chat_response, decode_image, models_response, parse_chat_request
from .transformers_vlm import TransformersPolicy

log = logging.getLogger(__name__)


def create_policy_app(policy: TransformersPolicy, model_id: str) -> Flask:
    app = Flask(__name__)

    @app.get("/health")
    def health():
        return jsonify(status="UP", model=model_id)

    @app.get("/v1/models")
    def models():
        return jsonify(models_response(model_id))

    @app.post("/v1/chat/completions")
    def chat():
        try:
            image, text, samples, temperature = parse_chat_request(request.get_json(silent=True))
            observation = Observation(decode_image(image), text)
        except BadChatRequest as exc:
            log.warning("chat request refused: %s", exc)
            return jsonify(error={"message": str(exc), "type": "invalid_request_error"}), 400
        [answers] = policy.act([observation], samples=samples, temperature=temperature)
        return jsonify(chat_response(model_id, answers))

    return app
