"""The OpenAI chat-completions messages our policy servers accept and answer. Only inline (data:)
images are accepted: a server never fetches what a request names."""
from __future__ import annotations

import base64
import io
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


MAX_TOKENS = 1024  # an action is a dozen tokens; a boxed answer some thirty
MAX_BODY_BYTES = 256 * 1024 * 1024  # an 80-megapixel observation as a PNG data URL fits
MAX_IMAGE_PIXELS = 80_000_000  # the backend's own limit on a task image (SEGAGENT_MAX_IMAGE_PIXELS)
# chat requests being answered or waiting for the model at once; more are refused (503) rather than queued
# without end. A backend process asks at most 8 at a time (RemotePolicy's concurrency), its workers as many.
MAX_IN_FLIGHT = 32


class BadChatRequest(ValueError):
    pass


class TooLarge(BadChatRequest):
    """The request's image has more pixels than the server decodes, or needs more memory than it has free."""


@dataclass(frozen=True)
class ChatRequest:
    image: bytes  # as sent: a server that hands a file to its model keeps the encoding the client chose
    media_type: str  # "image/jpeg", "image/png", ...
    text: str
    samples: int
    temperature: float
    model: str | None
    max_tokens: int | None = None


def parse_chat_request(body) -> ChatRequest:
    """The last user message of a chat-completions request: its one image, its text, n and temperature."""
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
            images.append(_inline_image(part.get("image_url")))
    if len(images) != 1:
        raise BadChatRequest("exactly one image is expected")
    try:
        samples = int(body.get("n") or 1)
        temperature = float(body.get("temperature") or 0.0)
    except (TypeError, ValueError) as exc:
        raise BadChatRequest("n and temperature must be numbers") from exc
    if not 1 <= samples <= 16:
        raise BadChatRequest("n must be between 1 and 16")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadChatRequest("model must be a string")
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)
                                   or not 1 <= max_tokens <= MAX_TOKENS):
        raise BadChatRequest(f"max_tokens must be a whole number from 1 to {MAX_TOKENS}")
    (media_type, data), = images
    return ChatRequest(data, media_type, "\n".join(texts), samples, temperature, model, max_tokens)


def _inline_image(image_url) -> tuple[str, bytes]:
    url = (image_url or {}).get("url", "") if isinstance(image_url, dict) else ""
    if not isinstance(url, str) or not url.startswith("data:image/") or ";base64," not in url:
        raise BadChatRequest("images must be inline data: URLs")
    header, payload = url.split(",", 1)
    try:
        return header[len("data:"):].split(";", 1)[0], base64.b64decode(payload, validate=True)
    except ValueError as exc:
        raise BadChatRequest(f"the image is not valid base64: {exc}") from exc


def chat_response(model_id: str, answers: list[str]) -> dict:
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion", "created": int(time.time()),
            "model": model_id, "choices": [{"index": i, "finish_reason": "stop",
                                            "message": {"role": "assistant", "content": text}}
                                           for i, text in enumerate(answers)]}


def models_response(model_ids: list[str]) -> dict:
    return {"object": "list", "data": [{"id": model_id, "object": "model", "owned_by": "segagent"}
                                       for model_id in model_ids]}


class UnknownModel(LookupError):
    """A request names a model the server does not serve."""


class ModelUnavailable(RuntimeError):
    """The model a request names exists but cannot answer now (its weights fail to load)."""


def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS):
    """The image as RGB; its size, read from its header, checked before its pixels are decoded."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise TooLarge(f"the image is {width} x {height}: more than the {max_pixels} pixels this server "
                               "decodes")
            return image.convert("RGB")
    except MemoryError as exc:
        raise TooLarge("the image needs more memory than this server has free to decode it") from exc
    except BadChatRequest:
        raise
    except Exception as exc:  # Pillow raises whatever the bytes make it raise
        raise BadChatRequest(f"the image does not decode: {type(exc).__name__}: {exc}") from exc


def create_chat_app(answer: Callable[[ChatRequest], list[str]], model_ids: Callable[[], list[str]],
                    health: Callable[[], dict] | None = None, max_in_flight: int = MAX_IN_FLIGHT):
    """A Flask app speaking the chat-completions protocol over `answer`: /health, /v1/models and
    /v1/chat/completions (bad requests get 400, an image too large or a request that runs out of memory
    413, an unknown model 404, more than `max_in_flight` at once 503 with Retry-After, each with a log line
    and the reason). /health never waits for the model."""
    from flask import Flask, jsonify, request

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES  # larger bodies: 413 before they are read
    in_flight = threading.BoundedSemaphore(max_in_flight)

    def error(status: int, message: str, kind: str):
        log.warning("chat request refused (%d): %s", status, message)
        return jsonify(error={"message": message, "type": kind}), status

    @app.get("/health")
    def health_check():
        return jsonify(status="UP", model=model_ids()[0], **(health() if health else {}))

    @app.get("/v1/models")
    def models():
        return jsonify(models_response(model_ids()))

    @app.post("/v1/chat/completions")
    def chat():
        if not in_flight.acquire(blocking=False):
            body, status = error(503, f"busy: {max_in_flight} requests are being answered or waiting; retry later",
                                 "server_busy")
            return body, status, {"Retry-After": "1"}
        try:
            chat_request = parse_chat_request(request.get_json(silent=True))
            answers = answer(chat_request)
        except TooLarge as exc:
            return error(413, str(exc), "request_too_large")
        except MemoryError:
            return error(413, "answering the request needs more memory than this server has free", "request_too_large")
        except BadChatRequest as exc:
            return error(400, str(exc), "invalid_request_error")
        except UnknownModel as exc:
            return error(404, str(exc), "model_not_found")
        except ModelUnavailable as exc:
            return error(503, str(exc), "model_unavailable")
        finally:
            in_flight.release()
        return jsonify(chat_response(chat_request.model or model_ids()[0], answers))

    return app
