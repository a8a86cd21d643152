"""Pre-annotation throughput against a real Label Studio 1.23 (the test suite's cached install): a project
of N tasks, each a GrabCut image with a rectangle around its object, pre-annotated in refine mode by the
backend started with `make serve`, through POST /preannotate. Prints tasks per minute, the mIoU of the
stored predictions against the objects' masks, and one annotator's clicks (p50) before and while the
project is pre-annotated. With --runner both, the same project is pre-annotated twice, by the backend's
own threads and by one `segagent-worker` through a real redis-server, and the ratio of their rates printed;
--sam-vit-b-random puts SAM ViT-B at its real size (random weights) behind both.

    python scripts/bench_preannotate.py ../shared/data/grabcut --tasks 200
    python scripts/bench_preannotate.py ../shared/data/grabcut --tasks 20 --runner both --sam-vit-b-random \
        --click-seconds 0
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
from label_studio_sdk import LabelStudio
from label_studio_sdk.converter import brush

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.core.datasets import read_target  # noqa: E402
from model.core.masks import iou  # noqa: E402
from tests.e2e.conftest import make_serve, running_label_studio  # noqa: E402
from tests.e2e.test_label_studio import CONFIG, _bbox_percent  # noqa: E402
from tests.postgres_server import database_for  # noqa: E402
from tests.synthetic import FileServer, free_port  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from bench_load import click_sequences, client  # noqa: E402


def tasks_for(dataset: Path, entries: list[dict], images: str, count: int) -> list[dict]:
    tasks = []
    for index in range(count):
        entry = entries[index % len(entries)]
        target, _ = read_target(dataset / entry["mask"])
        box = {"from_name": "box", "to_name": "image", "type": "rectanglelabels",
               "value": {**_bbox_percent(target), "rectanglelabels": ["Object"]}}
        tasks.append({"data": {"image": f"{images}/{entry['image']}?task={index}", "mask": entry["mask"]},
                      "predictions": [{"model_version": "detector", "result": [box]}]})
    return tasks


def stored_miou(client: LabelStudio, project: int, dataset: Path) -> float:
    ious = []
    for task in client.tasks.list(project=project, fields="all"):
        full = client.tasks.get(id=task.id)
        ours = [p for p in full.predictions or [] if str(p.model_version or "").startswith("segagent-")]
        target, ignore = read_target(dataset / full.data["mask"])
        for prediction in ours[:1]:
            region = prediction.result[0]
            mask = brush.decode_rle(region["value"]["rle"]).reshape(target.shape[0], target.shape[1], 4)[:, :, 3] > 0
            ious.append(iou(mask, target, ignore))
    return float(np.mean(ious)) if ious else 0.0


def clicks_p50(url: str, images: str, sequences: list, seconds: float) -> float:
    times: list[float] = []
    client(url, images, sequences, time.time() + seconds, 0, times)
    return round(float(np.median(times)), 3)


def random_sam_vit_b(folder: Path) -> Path:
    """SAM ViT-B at its real size with random weights (the real weights are not on these machines): what it costs,
    not what it segments."""
    import torch

    from model.tools.sam import RELEASED, build_sam

    path = folder / "sam_vit_b_random.pth"
    torch.manual_seed(0)
    torch.save(build_sam(RELEASED[768]).state_dict(), path)
    return path


@contextlib.contextmanager
def redis_and_worker(folder: Path, env: dict):
    """A redis-server on loopback and one `segagent-worker preannotate` beside the backend, with its settings."""
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(folder)], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    worker = None
    try:
        time.sleep(1)
        worker_env = {**os.environ, **env, "REDIS_URL": url, "SEGAGENT_DATA_DIR": str(folder / "backend")}
        with open(folder / "worker.log", "w") as log:
            worker = subprocess.Popen([str(Path(sys.executable).with_name("segagent-worker")), "preannotate"],
                                      env=worker_env, stdout=log, stderr=subprocess.STDOUT)
        yield url
    finally:
        for process in (worker, redis):
            if process is not None:
                process.terminate()
                process.wait(30)


def preannotate_once(args: argparse.Namespace, runner: str, label_studio: dict, images: str, root: Path) -> dict:
    """One project of args.tasks tasks pre-annotated by a backend started with `make serve`, its work run in
    the backend's own threads (process) or by one RQ worker (rq)."""
    entries = json.loads((args.dataset / "manifest.json").read_text())
    ls_client = LabelStudio(base_url=label_studio["url"], api_key=label_studio["token"])
    folder = root / runner
    (folder / "backend").mkdir(parents=True)
    env = {"LABEL_STUDIO_URL": label_studio["url"], "LABEL_STUDIO_API_KEY": label_studio["token"],
           "SEGAGENT_PREANNOTATE_WORKERS": str(args.workers), "LOG_LEVEL": "WARNING"}
    if args.sam_checkpoint:
        env.update({"SAM_CHECKPOINT": str(args.sam_checkpoint), "SEGAGENT_TOOL": "sam"})
    with contextlib.ExitStack() as stack:
        if runner == "rq":
            env["REDIS_URL"] = stack.enter_context(redis_and_worker(folder, env))
        backend = stack.enter_context(make_serve(folder / "backend", **env))
        project = ls_client.projects.create(title=f"bench pre-annotation ({runner})", label_config=CONFIG)
        ls_client.projects.import_tasks(id=project.id, request=tasks_for(args.dataset, entries, images, args.tasks))
        sequences, _ = click_sequences(args.dataset, entries)
        idle = clicks_p50(backend["url"], images, sequences, args.click_seconds) if args.click_seconds else None
        started = time.time()
        requests.post(f"{backend['url']}/preannotate", json={"project": project.id}, timeout=600).raise_for_status()
        busy = clicks_p50(backend["url"], images, sequences, args.click_seconds) if args.click_seconds else None
        while True:
            progress = requests.get(f"{backend['url']}/status", timeout=30).json()["preannotation"][str(project.id)]
            if not progress["remaining"]:
                break
            time.sleep(0.5)
        elapsed = time.time() - started
    return {"runner": runner, "tasks": args.tasks, "seconds": round(elapsed, 1),
            "tasks_per_minute": round(60 * args.tasks / elapsed, 2), "done": progress["done"],
            "failed": progress["failed"], "stored_miou": round(stored_miou(ls_client, project.id, args.dataset), 4),
            "one_annotator_click_p50": {"idle": idle, "while_preannotating": busy}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2, help="SEGAGENT_PREANNOTATE_WORKERS")
    parser.add_argument("--click-seconds", type=float, default=20,
                        help="how long the annotator clicks, each time (0: no clicks)")
    parser.add_argument("--runner", choices=["process", "rq", "both"], default="process",
                        help="the backend's own threads, one RQ worker (segagent-worker, a real redis-server), or both")
    parser.add_argument("--sam-vit-b-random", action="store_true",
                        help="the SAM tool with a ViT-B of random weights, written by this script")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite",
                        help="where the stores are: SQLite files, or a throwaway PostgreSQL cluster on this machine")
    args = parser.parse_args()
    with database_for(args.database) as database_url:
        os.environ["SEGAGENT_DATABASE_URL"] = database_url  # the backend and its RQ worker inherit it
        summary = measure(args)
    print(json.dumps({**summary, "database": args.database}, indent=2))


def measure(args: argparse.Namespace) -> dict:
    root = Path(tempfile.mkdtemp())
    args.sam_checkpoint = random_sam_vit_b(root) if args.sam_vit_b_random else None
    runners = ["process", "rq"] if args.runner == "both" else [args.runner]
    with running_label_studio(root / "label-studio") as label_studio, FileServer(args.dataset) as images:
        runs = [preannotate_once(args, runner, label_studio, images.url, root) for runner in runners]
    summary = {"runs": runs, "tool": "sam (ViT-B, random weights)" if args.sam_checkpoint else "classical",
               "machine": f"{os.cpu_count()} CPU cores"}
    if len(runs) == 2:
        summary["rq_over_process"] = round(runs[1]["tasks_per_minute"] / runs[0]["tasks_per_minute"], 3)
    return summary


if __name__ == "__main__":
    main()
