"""The OpenAI chat-completions messages our policy servers accept and answer. Only inline (data:)
images are accepted: a server never fetches what a request names."""
from __future__ import annotations

import base64
import io
import logging
import time
import uuid
from collections.abc import Callable

log = logging.getLogger(__name__)


class BadChatRequest(ValueError):
    pass


def parse_chat_request(body) -> tuple[bytes, str, int, float]:
    """(image bytes, text, n, temperature) of the last user message of a chat-completions request."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
        raise BadChatRequest("'messages' must be a non-empty list")
    message = body["messages"][-1]
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise BadChatRequest("the last message has no content")
    texts, images = [], []
    for part in content:
        if not isinstance(part, dict):
            raise BadChatRequest("content parts must be objects")
        if part.get("type") == "text":
            texts.append(str(part.get("text", "")))
        elif part.get("type") == "image_url":
            url = (part.get("image_url") or {}).get("url", "")
            if not isinstance(url, str) or not url.startswith("data:image/") or ";base64," not in url:
                raise BadChatRequest("images must be inline data: URLs")
            try:
                images.append(base64.b64decode(url.split(",", 1)[1], validate=True))
            except ValueError as exc:
                raise BadChatRequest(f"the image is not valid base64: {exc}") from exc
    if len(images) != 1:
        raise BadChatRequest("exactly one image is expected")
    try:
        samples = int(body.get("n") or 1)
        temperature = float(body.get("temperature") or 0.0)
    except (TypeError, ValueError) as exc:
        raise BadChatRequest("n and temperature must be numbers") from exc
    if not 1 <= samples <= 16:
        raise BadChatRequest("n must be between 1 and 16")
    return images[0], "\n".join(texts), samples, temperature


def chat_response(model_id: str, answers: list[str]) -> dict:
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
            "model": model_id, "choices": [{"index": i, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": text}}
                                           for i, text in enumerate(answers)]}


def models_response(model_id: str) -> dict:
    return {"object": "list", "data": [{"id": model_id, "object": "model", "owned_by": "segagent"}]}


def decode_image(data: bytes):
    from PIL import Image

    try:
        return Image.open(io.BytesIO(data)).convert("RGB")
    except Exception as exc:
        raise BadChatRequest(f"the image does not decode: {exc}") from exc


# (image, text, samples, temperature) -> answers
Answer = Callable[[object, str, int, float], list[str]]


def create_chat_app(answer: Answer, model_id: str):
    """A Flask app speaking the chat-completions protocol over `answer`: /health, /v1/models and
    /v1/chat/completions (bad requests get 400 and a log line)."""
    from flask import Flask, jsonify, request

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
            picture = decode_image(image)
        except BadChatRequest as exc:
            log.warning("chat request refused: %s", exc)
            return jsonify(error={"message": str(exc), "type": "invalid_request_error"}), 400
        return jsonify(chat_response(model_id, answer(picture, text, samples, temperature)))

    return app
