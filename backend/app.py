"""The Flask app: Label Studio's ML backend protocol (with /job_status) plus /rollback, /status,
/quality and /metrics."""
from __future__ import annotations

import hmac
import logging
import time

from flask import Flask, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException

from model.settings import Settings

from .errors import ApiError, BadConfig
from .labelstudio import Schema
from .metrics import Metrics
from .service import Service

log = logging.getLogger("backend")


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings()
    metrics = Metrics()
    service = Service(settings, metrics)
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_request_bytes
    app.extensions["segagent"] = service

    def json_body() -> dict:
        body = request.get_json(silent=True, force=True)
        if not isinstance(body, dict):
            raise ApiError("the request body must be a JSON object")
        return body

    @app.before_request
    def start() -> Response | None:
        g.started = time.perf_counter()
        if settings.basic_auth and request.path != "/health":
            auth = request.authorization
            user_ok = hmac.compare_digest((auth.username if auth else "") or "", settings.basic_auth_user)
            pass_ok = hmac.compare_digest((auth.password if auth else "") or "", settings.basic_auth_pass)
            if not (auth and user_ok and pass_ok):
                log.warning("%s %s: refused, bad or missing basic auth", request.method, request.path)
                response = jsonify(error="authentication required")
                response.status_code = 401
                response.headers["WWW-Authenticate"] = 'Basic realm="segagent"'
                return response
        return None

    @app.after_request
    def account(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.requests.labels(route, request.method, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - g.get("started", time.perf_counter()))
        return response

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        route = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.errors.labels(route, type(exc).__name__).inc()
        log.warning("%s %s -> %d: %s", request.method, request.path, exc.status, exc.message)
        return jsonify(error=exc.message), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        log.warning("%s %s -> %d: %s", request.method, request.path, exc.code, exc.description)
        return jsonify(error=exc.description), exc.code

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        route = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.errors.labels(route, "internal").inc()
        log.exception("%s %s failed", request.method, request.path)
        return jsonify(error=f"internal error: {type(exc).__name__}"), 500

    @app.get("/")
    @app.get("/health")
    def health():
        return jsonify(service.health())

    @app.post("/setup")
    def setup():
        return jsonify(service.setup(json_body()))

    @app.post("/validate")
    def validate():
        body = json_body()
        try:
            Schema.from_config(body.get("config") or body.get("label_config") or "")
        except BadConfig as exc:
            raise ApiError(exc.message, 422) from exc
        return jsonify(status="ok")

    @app.post("/predict")
    def predict():
        return jsonify(service.predict(json_body()))

    @app.post("/webhook")
    def webhook():
        return jsonify(service.webhook(json_body()))

    @app.post("/train")
    def train():
        return jsonify(service.train(json_body()))

    @app.post("/job_status")
    def job_status():
        return jsonify(service.job_status(json_body()))

    @app.get("/versions")
    def versions():
        return jsonify(service.versions(request.args.get("project")))

    @app.post("/rollback")
    def rollback():
        return jsonify(service.rollback(json_body()))

    @app.get("/status")
    def status():
        return jsonify(service.status(request.args.get("project")))

    @app.get("/quality")
    def quality():
        try:
            limit = min(max(int(request.args.get("limit", 50)), 1), 1000)
        except ValueError as exc:
            raise ApiError("limit must be an integer") from exc
        return jsonify(service.quality(request.args.get("project"), limit))

    @app.get("/metrics")
    def prometheus():
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)

    return app
