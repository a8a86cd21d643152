"""python -m model preannotate --project ID: ask a running backend to pre-annotate a Label Studio project
in the background, and follow its progress. The backend does the work (it holds Label Studio's address
and token, the tool and the policy); this command only asks and watches, so it can run anywhere that
reaches the backend. At the end it says what this run did: predictions written, tasks skipped (and why),
tasks failed, and its rate (tasks finished over this run's wall time). Exit codes: 0 done, 1 some tasks
failed, 2 no backend answered (or the backend refused the request)."""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

import requests
from tqdm import tqdm

POLL_SECONDS = 2.0
NO_BACKEND = 2


class BackendError(Exception):
    """No SegAgent backend answered at the address given, or it refused the request."""


def add_commands(commands: argparse._SubParsersAction) -> None:
    command = commands.add_parser("preannotate", help="pre-annotate a Label Studio project through a running backend")
    command.add_argument("--project", required=True, type=int, help="the Label Studio project id")
    command.add_argument("--tasks", type=int, nargs="*", help="only these task ids (default: every task)")
    command.add_argument("--backend", default=os.environ.get("SEGAGENT_BACKEND_URL", "http://127.0.0.1:9090"),
                         help="the backend's address (default: SEGAGENT_BACKEND_URL or http://127.0.0.1:9090)")
    command.add_argument("--no-wait", action="store_true", help="queue the tasks and return")
    command.set_defaults(run=_preannotate)


def _preannotate(args: argparse.Namespace) -> int:
    session = requests.Session()
    user, password = args.settings.basic_auth_user, args.settings.basic_auth_pass
    if user and password:
        session.auth = (user, password)
    backend = args.backend.rstrip("/")
    project = str(args.project)
    try:
        before = _progress(session, backend, project)
        started = time.monotonic()
        queued = _ask(session, "POST", backend, "/preannotate", json={"project": args.project, "tasks": args.tasks},
                      timeout=120)
        again = queued["asked"] - queued["queued"]
        print(f"{queued['queued']} tasks queued ({queued['asked']} asked for) with {queued['model_version']}"
              + (f"; {again} were queued with it before (a task is predicted once per model version)" if again else ""))
        if args.no_wait:
            return 0
        after = _follow(session, backend, project)
    except BackendError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return NO_BACKEND
    return _report(before, after, time.monotonic() - started)


def _ask(session: requests.Session, method: str, backend: str, path: str, **kwargs) -> dict:
    """The backend's JSON answer; BackendError when nothing (or something else than the backend) answers, or when
    it refuses."""
    try:
        answer = session.request(method, f"{backend}{path}", **kwargs)
    except requests.RequestException as exc:
        raise BackendError(f"no backend answers at {backend} ({type(exc).__name__}): start it, or give its address "
                           "with --backend or SEGAGENT_BACKEND_URL") from exc
    try:
        body = answer.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and answer.status_code >= 400 and "error" in body:
        raise BackendError(f"the backend refused ({answer.status_code}): {body['error']}")
    if not isinstance(body, dict) or answer.status_code >= 400:
        raise BackendError(f"{backend}{path.split('?')[0]} answered HTTP {answer.status_code}, not as the SegAgent "
                           "backend does: is the backend at this address?")
    return body


def _progress(session: requests.Session, backend: str, project: str) -> dict:
    """The project's pre-annotation progress (empty counts before its first task)."""
    status = _ask(session, "GET", backend, f"/status?project={project}", timeout=30)
    return status.get("preannotation", {}).get(project) or {"done": 0, "failed": 0, "remaining": 0, "total": 0,
                                                            "written": 0, "skipped": {}, "failures": []}


def _follow(session: requests.Session, backend: str, project: str) -> dict:
    progress = _progress(session, backend, project)
    with tqdm(total=progress["total"], initial=progress["done"] + progress["failed"], unit="task") as bar:
        while progress["remaining"]:
            time.sleep(POLL_SECONDS)
            progress = _progress(session, backend, project)
            bar.total = progress["total"]
            bar.update(progress["done"] + progress["failed"] - bar.n)
            bar.set_postfix(written=progress["written"], skipped=sum(progress["skipped"].values()),
                            failed=progress["failed"])
    return progress


def _report(before: dict, after: dict, seconds: float) -> int:
    """What this run did (after less before), and its rate over its own wall time; 1 when a task failed."""
    written = after["written"] - before["written"]
    skipped = Counter(after["skipped"]) - Counter(before["skipped"])
    failed = after["failed"] - before["failed"]
    finished = written + sum(skipped.values()) + failed
    rate = 60.0 * finished / seconds if seconds > 0 else 0.0
    print(f"{finished} tasks in {seconds:.1f} s ({rate:.1f} tasks/min): {written} predictions written, "
          f"{sum(skipped.values())} skipped, {failed} failed")
    for reason, count in skipped.most_common():
        print(f"  skipped {count}: {reason}")
    for failure in after["failures"][:failed]:
        print(f"  task {failure['task']} failed: {failure['reason']}")
    return 1 if failed else 0
