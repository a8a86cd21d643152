"""A stand-in for the part of Label Studio 1.23's API that pre-annotation uses, on 127.0.0.1: a project's task
list, a task, its predictions, creating one, and the project's label config; and its webhooks, listed and their
headers changed. `written` records the predictions the backend wrote, `webhook_edits` each webhook change,
`authorizations` each request's Authorization header; `answer_every_call_with`, when set, is the HTTP status of
every answer (an unauthorised or broken Label Studio)."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

CONFIG = """
<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image"><Label value="Object"/></BrushLabels>
  <RectangleLabels name="box" toName="image" smart="true"><Label value="Object"/></RectangleLabels>
</View>"""


class LabelStudioProject:
    def __init__(self, project: int, tasks: dict[int, dict], answer_every_call_with: int | None = None,
                 webhooks: list[dict] | None = None):
        self.project, self.tasks = project, tasks
        self.webhooks = webhooks or []  # each {"id", "url", "headers"}, all of this project
        self.webhook_edits: list[tuple[int, dict]] = []
        self.predictions: dict[int, list[dict]] = {task_id: list(task.get("predictions", []))
                                                   for task_id, task in tasks.items()}
        self.written: list[dict] = []
        self.authorizations: list[str | None] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: object) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self):
                stand_in.authorizations.append(self.headers.get("Authorization"))
                if answer_every_call_with:
                    return self._send(answer_every_call_with, {"detail": "refused"})
                url = urlsplit(self.path)
                query, parts = parse_qs(url.query), url.path.strip("/").split("/")
                if parts == ["api", "tasks"]:
                    return self._send(200, {"tasks": [{"id": task_id} for task_id in stand_in.tasks],
                                            "total": len(stand_in.tasks)})
                if parts[:2] == ["api", "tasks"] and int(parts[2]) in stand_in.tasks:
                    task_id = int(parts[2])
                    return self._send(200, {"id": task_id, "data": stand_in.tasks[task_id]["data"],
                                            "predictions": stand_in.predictions[task_id]})
                if parts == ["api", "predictions"]:
                    return self._send(200, stand_in.predictions.get(int(query["task"][0]), []))
                if parts == ["api", "projects", str(stand_in.project)]:
                    return self._send(200, {"id": stand_in.project, "label_config": CONFIG})
                if parts == ["api", "webhooks"]:
                    mine = query.get("project") == [str(stand_in.project)]
                    return self._send(200, [{**hook, "project": stand_in.project} for hook in stand_in.webhooks
                                            if mine])
                return self._send(404, {"detail": "not found"})

            def do_PATCH(self):
                stand_in.authorizations.append(self.headers.get("Authorization"))
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                parts = urlsplit(self.path).path.strip("/").split("/")
                hooks = [hook for hook in stand_in.webhooks if parts == ["api", "webhooks", str(hook["id"])]]
                if answer_every_call_with or not hooks or not self.path.endswith("/"):
                    return self._send(answer_every_call_with or 404, {"detail": "refused"})
                stand_in.webhook_edits.append((hooks[0]["id"], body))
                hooks[0].update(body)
                return self._send(200, hooks[0])

            def do_POST(self):
                stand_in.authorizations.append(self.headers.get("Authorization"))
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                if answer_every_call_with or urlsplit(self.path).path != "/api/predictions/":
                    return self._send(answer_every_call_with or 404, {"detail": "refused"})
                stand_in.written.append(body)
                stand_in.predictions[int(body["task"])].append(body)
                return self._send(201, {"id": len(stand_in.written), **body})

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LabelStudioProject:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
