"""`segagent-worker`: an RQ worker for the backend's background work (REDIS_URL), the one entry point the compose
file and the README use.

Pre-annotation and annotation work run in RQ's SimpleWorker: the job runs in the worker process itself, which
builds the backend's components (the tool, the policy, the quality scorer, the stores) once, before its first
job, and keeps them for every job after it. RQ's default worker forks a work horse per job, so whatever a job
builds is thrown away with the fork: with SAM or a policy on a GPU every task would pay the model's load (and a
CUDA context cannot cross a fork anyway). The price of running in-process is that a job that crashes the
interpreter takes the worker with it; the compose file restarts it, and the stores say what is still owed.

Training (`--fork`) is the other way round: one job at a time, each in a forked work horse that builds what it
needs and gives all its memory back when it ends, and the worker builds nothing up front."""
from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from typing import Any

from model.settings import Settings

from .connection import redact_logs
from .container import Backend
from .dispatch import KINDS, QUEUES, Kind

log = logging.getLogger("backend.worker")

_backend: Backend | None = None
_built = 0  # how many times this process built the backend (once, for a worker that keeps its models)
_lock = threading.Lock()


def perform(kind: Kind, *args: Any) -> Any:
    """The RQ job of every kind (backend/dispatch.py enqueues it by name)."""
    if kind == "train":  # in a trainer's forked work horse, which builds only what training needs
        from .training_runs import run_here

        return {"kind": kind, "result": run_here(*args).to_json(), "pid": os.getpid()}
    result = _this_process_backend().handlers[kind](*args)
    return {"kind": kind, "result": result, "pid": os.getpid(), "built": _built}


def _this_process_backend() -> Backend:
    global _backend, _built
    with _lock:
        if _backend is None:
            started = time.perf_counter()
            _backend = Backend.build(Settings(), worker=True)
            _built += 1
            log.info("worker %d: the backend is built (tool %s) in %.1f s", os.getpid(),
                     _backend.capabilities.tool.name or "off", time.perf_counter() - started)
        return _backend


def main(argv: list[str] | None = None) -> int:
    """`segagent-worker [KIND ...] [--fork] [--burst]` (also `python -m backend worker ...`)."""
    parser = argparse.ArgumentParser(prog="segagent-worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("kinds", nargs="*", metavar="KIND",
                        help=f"the kinds of work to take, of {', '.join(KINDS)} (default: preannotate annotation)")
    parser.add_argument("--fork", action="store_true",
                        help="run each job in a forked work horse and build nothing up front (for training)")
    parser.add_argument("--burst", action="store_true", help="stop when the queues are empty")
    parser.add_argument("--url", default=os.environ.get("REDIS_URL", ""), help="the Redis URL (default: REDIS_URL)")
    args = parser.parse_args(argv)
    unknown = [kind for kind in args.kinds if kind not in KINDS]
    if unknown:
        parser.error(f"unknown kinds of work {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redact_logs()
    if not args.url:
        parser.error("the worker needs Redis: set REDIS_URL or pass --url")
    from redis import Redis
    from rq import SimpleWorker, Worker

    if not args.fork:
        _this_process_backend()  # before the first job, so that the first task does not pay for it
    worker_class = Worker if args.fork else SimpleWorker
    kinds = dict.fromkeys(args.kinds or ["preannotate", "annotation"])
    worker = worker_class([QUEUES[kind] for kind in kinds], connection=Redis.from_url(args.url))
    worker.work(burst=args.burst, with_scheduler=True, logging_level=os.environ.get("LOG_LEVEL", "INFO"))
    if _backend is not None:
        _backend.close()
    return 0
