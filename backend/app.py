"""The HTTP edge: Label Studio's ML backend protocol (with /job_status) plus /rollback, /status, /quality
and /metrics. Each route validates its body against a schema (schemas.py), parses it into the model's
terms once (labelstudio/parsing.py), calls the component that does the work, and formats the answer;
errors become statuses through the one table in errors.py."""
from __future__ import annotations

import hmac
import logging
import time
from typing import Any

from flask import Flask, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from werkzeug.exceptions import HTTPException

from . import page, page_html, schemas, status
from .container import Backend
from .errors import Busy, InvalidLabelConfig, message_for, status_for
from .labelstudio.config import Schema
from .task_predictions import predict_task

log = logging.getLogger("backend")
# Label Studio makes the project webhook of a connected model with no headers: its events come without credentials
WEBHOOK_HINT = (" (Label Studio's webhook sends no credentials unless told: the backend gives it the header after "
                "/setup where it can, see the log lines of webhook_auth; else add the header Authorization: Basic "
                "<base64 of user:password> to the project's webhook, docs/deployment.md)")
# the page loads nothing from anywhere (no script at all, inline styles and SVG), is never framed or cached
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
                "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store", "Vary": "Accept"}


def create_app(backend: Backend) -> Flask:
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = backend.settings.max_request_bytes
    _guard_and_account(app, backend)
    _label_studio_protocol(app, backend)
    _operations(app, backend)
    return app


def body(model: type[schemas.Body]) -> Any:
    return schemas.parse(model, request.get_json(silent=True, force=True))


def query(model: type[schemas.Body]) -> Any:
    return schemas.parse(model, request.args.to_dict())


def route() -> str:
    return request.url_rule.rule if request.url_rule else "unmatched"


def _guard_and_account(app: Flask, backend: Backend) -> None:
    """Basic auth on every route but /health, metrics of every answer, errors as statuses."""
    settings, metrics = backend.settings, backend.metrics

    @app.before_request
    def authenticate() -> Response | None:
        g.started = time.perf_counter()
        if not settings.basic_auth or request.path == "/health":
            return None
        try:
            auth = request.authorization
        except ValueError:  # werkzeug: a Basic header with non-ASCII characters
            auth = None
        if auth is not None and auth.type != "basic":
            auth = None
        user = ((auth.username if auth else "") or "").encode()
        password = ((auth.password if auth else "") or "").encode()
        if hmac.compare_digest(user, settings.basic_auth_user.encode()) & hmac.compare_digest(
                password, settings.basic_auth_pass.encode()):
            return None
        log.warning("%s %s: refused, bad or missing basic auth%s", request.method, request.path,
                    WEBHOOK_HINT if request.path == "/webhook" and auth is None else "")
        response = jsonify(error="authentication required")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Basic realm="segagent"'
        return response

    @app.after_request
    def account(response: Response) -> Response:
        metrics.requests.labels(route(), request.method, str(response.status_code)).inc()
        metrics.latency.labels(route()).observe(time.perf_counter() - g.get("started", time.perf_counter()))
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        log.warning("%s %s -> %d: %s", request.method, request.path, exc.code, exc.description)
        return jsonify(error=exc.description), exc.code

    @app.errorhandler(Exception)
    def error(exc: Exception):
        code = status_for(exc)
        if code is None:
            metrics.errors.labels(route(), "internal").inc()
            log.exception("%s %s failed", request.method, request.path)
            return jsonify(error=f"internal error: {type(exc).__name__}"), 500
        message = message_for(exc)
        metrics.errors.labels(route(), type(exc).__name__).inc()
        log.warning("%s %s -> %d: %s", request.method, request.path, code, message[:500].encode("unicode_escape")
                    .decode("ascii"))
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Busy) else {}
        return jsonify(error=message), code, headers


def _label_studio_protocol(app: Flask, backend: Backend) -> None:
    settings = backend.settings

    @app.get("/")
    def root():
        """What /health answers, to Label Studio and any JSON client; a browser (HTML preferred to JSON in its
        Accept) gets the flywheel page instead, ?project=ID for one project."""
        if request.accept_mimetypes.best_match(["application/json", "text/html"]) != "text/html":
            return jsonify(status.health(backend)), 200, {"Vary": "Accept"}  # a cache must not hand it to a browser
        html = page_html.render(page.gather(backend, query(schemas.ProjectQuery).project))
        return Response(html, mimetype="text/html", headers=PAGE_HEADERS)

    @app.get("/health")
    def health():
        return jsonify(status.health(backend))

    @app.post("/setup")
    def setup():
        setup = body(schemas.SetupBody)
        if setup.schema_:  # a config refused here (400) leaves the host and token unremembered too
            backend.configs.remember(setup.project, setup.schema_)
        backend.connection.remember_setup(setup.project, setup.hostname, setup.access_token)
        backend.webhook_auth.after_setup(setup.project, request.url_root)  # the address Label Studio calls us at
        return jsonify(model_version=backend.server.serving(setup.project).version)

    @app.post("/validate")
    def validate():
        config = request.get_json(silent=True, force=True)
        config = config if isinstance(config, dict) else {}
        try:
            Schema.from_config(config.get("config") or config.get("label_config") or "", settings.output)
        except InvalidLabelConfig as exc:
            return jsonify(error=exc.message), 422
        return jsonify(status="ok")

    @app.post("/predict")
    def predict():
        predict = body(schemas.PredictBody)
        schema = backend.configs.schema(predict.project, predict.label_config)
        serving = backend.server.serving(predict.project)
        context = predict.params.context if predict.params else None
        results: list[dict | list] = [predict_task(settings, backend.predictor, task, schema, serving, context) or []
                                      for task in predict.tasks]
        return jsonify(results=results, model_version=serving.version)

    @app.post("/webhook")
    def webhook():
        return jsonify(backend.webhooks.handle(body(schemas.WebhookBody)))

    @app.post("/train")
    def train():
        """Legacy /train: the annotations it carries are kept first (those the webhook never brought become
        trajectories too), then a job runs after them."""
        train = body(schemas.TrainBody)
        if train.annotations:
            backend.webhooks.keep_exported(train.project, train.label_config, train.annotations)
        return jsonify(backend.training.start(train.project, "request", "requested by Label Studio"))

    @app.post("/job_status")
    def job_status():
        return jsonify(backend.training.job_status(body(schemas.JobStatusBody).job))


def _operations(app: Flask, backend: Backend) -> None:
    """What an operator uses beside Label Studio: versions, rollback, status, quality, metrics."""

    @app.get("/versions")
    def versions():
        project = query(schemas.ProjectQuery).project
        return jsonify({**backend.training.versions(project), "scorers": backend.scorers.versions_by_project(project)})

    @app.post("/rollback")
    def rollback():
        rollback = body(schemas.RollbackBody)
        if rollback.kind == "scorer":
            return jsonify(backend.scorers.rollback(rollback.project, rollback.version))
        return jsonify(backend.training.rollback(rollback.project, rollback.version))

    @app.post("/preannotate")
    def preannotate():
        """Pre-annotate a project's tasks (all, or those named) in the background; progress in /status."""
        wanted = body(schemas.PreannotateBody)
        return jsonify(backend.preannotator.request(wanted.project, wanted.tasks)), 202

    @app.get("/status")
    def status_route():
        return jsonify(status.status(backend, query(schemas.ProjectQuery).project))

    @app.get("/quality")
    def quality():
        wanted = query(schemas.QualityQuery)
        return jsonify(backend.ingest.quality(wanted.project, wanted.limit))

    @app.get("/metrics")
    def prometheus():
        return Response(generate_latest(backend.metrics.registry), mimetype=CONTENT_TYPE_LATEST)
