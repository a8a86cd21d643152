"""Label Studio makes the connected model's project webhook with no headers, so with basic auth on its events
(annotations, Start training, new tasks) would be refused. After a project's /setup this gives that webhook the
backend's Authorization header through Label Studio's API, where it lacks it.

Which webhook: the one whose URL is the address Label Studio used for /setup with `/webhook` after it, the URL
Label Studio itself builds for the model it connects (`ml_backend.url + '/webhook'`); no other webhook is read for
credentials or touched. The header goes only to the Label Studio host of the project's host-and-token pair
(connection.py). It runs in a thread of its own: Label Studio waits for /setup's answer, and it calls /setup once
before the webhook exists (when it checks the URL) and again right after making it."""
from __future__ import annotations

import base64
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from model.settings import Settings

from .connection import LabelStudioConnection
from .errors import LabelStudioFailed

log = logging.getLogger(__name__)


class WebhookAuth:
    def __init__(self, settings: Settings, connection: LabelStudioConnection):
        self.on = settings.basic_auth and settings.webhook_auth
        token = base64.b64encode(f"{settings.basic_auth_user}:{settings.basic_auth_pass}".encode()).decode()
        self._header = f"Basic {token}"
        self._connection = connection
        self._outcome: dict[str, tuple[bool, str]] = {}  # project -> (given, what the last try did)
        self._pending: set[str] = set()  # projects with a try waiting or under way: /setup adds no second one
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="webhook-auth")

    def after_setup(self, project: str, backend_url: str) -> None:
        """Check, in the background, that the project's webhook to `backend_url` has the header, and give it. Each
        /setup checks again (one read), since a webhook deleted and made anew in Label Studio has none."""
        if not self.on or not project:
            return
        with self._lock:
            if project in self._pending:
                return
            self._pending.add(project)
        self._pool.submit(self._try, project, backend_url.rstrip("/") + "/webhook")

    def _try(self, project: str, webhook_url: str) -> None:
        try:
            given, outcome = self._give(project, webhook_url)
        except Exception as exc:  # a future would keep it unseen: say it, and let the next /setup try again
            log.exception("project %s: giving Label Studio's webhook the basic auth header failed", project)
            given, outcome = False, f"{type(exc).__name__} (see the backend's log)"
        with self._lock:
            self._pending.discard(project)
            self._outcome[project] = (given, outcome)

    def _give(self, project: str, webhook_url: str) -> tuple[bool, str]:
        """Whether the project's webhook to `webhook_url` has the header now, and what was done; a failure is logged,
        and the next /setup tries again."""
        label_studio = self._connection.for_project(project)
        if not label_studio.known:
            log.info("project %s: Label Studio is unknown (no LABEL_STUDIO_URL, and /setup sent no host and token), "
                     "so its webhook cannot be given the basic auth header: set it by hand (docs/deployment.md)",
                     project)
            return False, "Label Studio is unknown (no host and token)"
        try:
            hooks = [hook for hook in label_studio.webhooks(project)
                     if isinstance(hook, dict) and str(hook.get("url", "")).rstrip("/") == webhook_url]
            if not hooks:
                log.info("project %s: Label Studio has no webhook to %s yet", project, webhook_url)
                return False, f"Label Studio has no webhook to {webhook_url}"
            for hook in hooks:
                headers = hook.get("headers")
                headers = headers if isinstance(headers, dict) else {}
                if headers.get("Authorization") != self._header:
                    label_studio.set_webhook_headers(int(hook["id"]), {**headers, "Authorization": self._header})
                    log.info("project %s: gave Label Studio's webhook %s (to %s) this backend's basic auth header",
                             project, hook["id"], webhook_url)
        except (LabelStudioFailed, KeyError, TypeError, ValueError) as exc:
            log.warning("project %s: could not give Label Studio's webhook to %s the basic auth header, its events "
                        "will be refused until it has it (docs/deployment.md): %s", project, webhook_url, exc)
            return False, str(exc)
        return True, f"given to the webhook to {webhook_url}"

    def problem(self, project: str) -> str:
        """Why the project's webhook was not given the header at the last try; "" when it was, or no try was made."""
        with self._lock:
            given, outcome = self._outcome.get(project, (True, ""))
        return "" if given else outcome

    def projects_not_given(self) -> list[str]:
        with self._lock:
            return [project for project, (given, _) in self._outcome.items() if not given]

    def status(self, project: str) -> str:
        """What the last try for the project did, for /status."""
        if not self.on:
            return "off (no basic auth, or SEGAGENT_WEBHOOK_AUTH=false)"
        with self._lock:
            given, outcome = self._outcome.get(project, (True, ""))
        if not outcome:
            return "not tried: no /setup for the project since the backend started"
        return outcome if given else f"not given: {outcome}"

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
