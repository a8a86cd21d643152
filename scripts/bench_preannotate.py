"""Pre-annotation throughput against a real Label Studio 1.23 (the test suite's cached install): a project
of N tasks, each a GrabCut image with a rectangle around its object, pre-annotated in refine mode by the
backend started with `make serve`, through POST /preannotate. Prints tasks per minute, the mIoU of the
stored predictions against the objects' masks, and one annotator's clicks (p50) before and while the
project is pre-annotated.

    python scripts/bench_preannotate.py ../shared/data/grabcut --tasks 200
"""
from __future__ import annotations

import argparse
import json
import os
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
from tests.synthetic import FileServer  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2, help="SEGAGENT_PREANNOTATE_WORKERS")
    parser.add_argument("--click-seconds", type=float, default=20, help="how long the annotator clicks, each time")
    args = parser.parse_args()
    entries = json.loads((args.dataset / "manifest.json").read_text())
    root = Path(tempfile.mkdtemp())
    (root / "backend").mkdir()
    with running_label_studio(root / "label-studio") as label_studio, FileServer(args.dataset) as images:
        ls_client = LabelStudio(base_url=label_studio["url"], api_key=label_studio["token"])
        env = {"LABEL_STUDIO_URL": label_studio["url"], "LABEL_STUDIO_API_KEY": label_studio["token"],
               "SEGAGENT_PREANNOTATE_WORKERS": str(args.workers), "LOG_LEVEL": "WARNING"}
        with make_serve(root / "backend", **env) as backend:
            project = ls_client.projects.create(title="bench pre-annotation", label_config=CONFIG)
            ls_client.projects.import_tasks(id=project.id, request=tasks_for(args.dataset, entries, images.url,
                                                                          args.tasks))
            sequences, _ = click_sequences(args.dataset, entries)
            idle = clicks_p50(backend["url"], images.url, sequences, args.click_seconds)
            started = time.time()
            requests.post(f"{backend['url']}/preannotate", json={"project": project.id}, timeout=600).raise_for_status()
            busy = clicks_p50(backend["url"], images.url, sequences, args.click_seconds)
            while True:
                progress = requests.get(f"{backend['url']}/status", timeout=30).json()["preannotation"][str(project.id)]
                if not progress["remaining"]:
                    break
                time.sleep(1)
            elapsed = time.time() - started
        summary = {"tasks": args.tasks, "seconds": round(elapsed, 1),
                   "tasks_per_minute": round(60 * args.tasks / elapsed, 1),
                   "done": progress["done"], "failed": progress["failed"], "workers": args.workers,
                   "stored_miou": round(stored_miou(ls_client, project.id, args.dataset), 4),
                   "one_annotator_click_p50": {"idle": idle, "while_preannotating": busy},
                   "machine": f"{os.cpu_count()} CPU cores"}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
