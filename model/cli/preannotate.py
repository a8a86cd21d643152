"""python -m model preannotate --project ID: ask a running backend to pre-annotate a Label Studio project
in the background, and follow its progress. The backend does the work (it holds Label Studio's address
and token, the tool and the policy); this command only asks and watches, so it can run anywhere that
reaches the backend."""
from __future__ import annotations

import argparse
import os
import time

import requests
from tqdm import tqdm

POLL_SECONDS = 2.0


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
    answer = session.post(f"{backend}/preannotate", json={"project": args.project, "tasks": args.tasks}, timeout=120)
    if answer.status_code >= 400:
        raise SystemExit(f"error: {answer.json().get('error', answer.text)}")
    queued = answer.json()
    print(f"{queued['queued']} tasks queued ({queued['asked']} asked for) with {queued['model_version']}")
    if args.no_wait:
        return 0
    return _follow(session, backend, str(args.project))


def _follow(session: requests.Session, backend: str, project: str) -> int:
    progress = session.get(f"{backend}/status?project={project}", timeout=30).json()["preannotation"][project]
    with tqdm(total=progress["total"], initial=progress["done"] + progress["failed"], unit="task") as bar:
        while progress["remaining"]:
            time.sleep(POLL_SECONDS)
            progress = session.get(f"{backend}/status?project={project}", timeout=30).json()["preannotation"][project]
            bar.total = progress["total"]
            bar.update(progress["done"] + progress["failed"] - bar.n)
            bar.set_postfix(failed=progress["failed"], per_minute=progress["tasks_per_minute"])
    for failure in progress["failures"]:
        print(f"task {failure['task']}: {failure['reason']}")
    return 1 if progress["failed"] else 0
