"""Load on the backend as `make serve` runs it (gunicorn, one process, THREADS threads) over loopback: N
clients, each clicking objects of GrabCut images (one request per click, carrying every click so far),
for a fixed time. Idle, and while the backend learns from a burst of submitted annotations. Prints
requests/s, p50 and p95 per request and the server's peak RSS; and against the targets: a click's p50
through HTTP over the tool's own p50 on the very clicks one idle client sent (the tool called in this
process right after that row, its image cache warm as the server's is), eight clients' throughput over
one client's, and how much background learning slows one client. The clicks are the simulated
annotator's, worked out once beforehand with the tool in this process, so that the clients spend no
CPU beside the server's; a warm-up sends each object's first click once (every image fetched and
encoded by the server before the rows).

    python scripts/bench_load.py ../shared/data/grabcut --seconds 30
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
from label_studio_sdk.converter import brush

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.annotator.clicker import next_click  # noqa: E402
from model.core.clicks import Click  # noqa: E402
from model.core.datasets import read_target  # noqa: E402
from model.core.imageio import load_image  # noqa: E402
from model.tools import Segmenter, ToolResult, make_segmenter  # noqa: E402
from tests.postgres_server import database_for  # noqa: E402
from tests.synthetic import FileServer, free_port  # noqa: E402

CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image"><Label value="Object"/></BrushLabels>
<KeyPointLabels name="kp" toName="image" smart="true"><Label value="Object" smart="true"/></KeyPointLabels></View>"""
CLICKS_PER_OBJECT = 5
TARGETS = {"http_over_tool_p50": 1.1, "eight_over_one_client_throughput": 1.6, "learning_slowdown_one_client": 0.25}


@dataclass
class ObjectClicks:
    """One object's clicks: as Label Studio sends them (keypoints in percent), and as the tool took them, with
    the tool's result after each."""

    entry: dict
    points: list[dict]
    clicks: list[Click]
    results: list[ToolResult]


def start_server(data: Path, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "SEGAGENT_DATA_DIR": str(data), "SEGAGENT_BANNED_SUBNETS": "169.254.0.0/16",
           "LOG_LEVEL": "WARNING"}
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                               "--threads", str(threads), "--timeout", "300", "backend.wsgi:app"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return server, url
        except requests.RequestException:
            time.sleep(0.5)
    raise RuntimeError("the backend did not start")


def worker_of(pid: int) -> int:
    """gunicorn's worker: the master's child."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(children[0]) if children else pid


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def click_sequences(dataset: Path, entries: list[dict],
                    segmenter: Segmenter | None = None) -> tuple[list[ObjectClicks], list[float]]:
    """Per object, the simulated annotator's clicks, worked out with the CPU tool (`segmenter`, whose image
    cache this warms); and the tool's time per click (its cache cold on each object's first)."""
    segmenter = segmenter or make_segmenter("classical")
    objects: list[ObjectClicks] = []
    seconds: list[float] = []
    for entry in entries:
        image = load_image(dataset / entry["image"])
        target, ignore = read_target(dataset / entry["mask"])
        height, width = target.shape
        predicted, clicked = np.zeros_like(target), ObjectClicks(entry, [], [], [])
        for _ in range(CLICKS_PER_OBJECT):
            click = next_click(predicted, target, ignore)
            if click is None:
                break
            clicked.clicks.append(click)
            clicked.points.append({"type": "keypointlabels", "from_name": "kp", "to_name": "image",
                                   "is_positive": click.positive, "value": {"x": 100 * click.x / width,
                                                                            "y": 100 * click.y / height,
                                                                            "keypointlabels": ["Object"]}})
            started = time.perf_counter()
            result = segmenter.predict(image, clicked.clicks, previous=clicked.results[-1] if clicked.results else None)
            seconds.append(time.perf_counter() - started)
            clicked.results.append(result)
            predicted = result.mask
        objects.append(clicked)
    return objects, seconds


def tool_seconds(segmenter: Segmenter, dataset: Path, objects: list[ObjectClicks],
                 sent: list[tuple[int, int]]) -> list[float]:
    """The tool's own time on the clicks sent: (object, clicks so far) each, from the result before, as the
    server computed them."""
    images: dict[int, np.ndarray] = {}
    seconds = []
    for index, count in sent:
        clicked = objects[index]
        image = images.setdefault(index, load_image(dataset / clicked.entry["image"]))
        started = time.perf_counter()
        segmenter.predict(image, clicked.clicks[:count], previous=clicked.results[count - 2] if count > 1 else None)
        seconds.append(time.perf_counter() - started)
    return seconds


def predict_body(images: str, task_id: int, clicked: ObjectClicks, count: int) -> dict:
    return {"tasks": [{"id": task_id, "data": {"image": f"{images}/{clicked.entry['image']}"}}], "project": "1",
            "label_config": CONFIG, "params": {"context": {"result": clicked.points[:count]}}}


def client(url: str, images: str, objects: list[ObjectClicks], until: float, seed: int, times: list,
           shed: list, sent: list | None = None) -> None:
    """Click random objects until `until`: the seconds of each request answered in `times`, and (object, clicks so
    far) of each in `sent`. A click answered 503 (more at once than the backend takes) goes in `shed` and is sent
    again after its Retry-After, as the person would click again."""
    session, rng = requests.Session(), random.Random(seed)
    while time.time() < until:
        task_id, index = rng.randrange(1_000_000), rng.randrange(len(objects))
        for count in range(1, len(objects[index].points) + 1):
            while True:
                if time.time() >= until:
                    return
                started = time.perf_counter()
                answer = session.post(f"{url}/predict", json=predict_body(images, task_id, objects[index], count),
                                      timeout=120)
                if answer.status_code != 503:
                    break
                shed.append(time.perf_counter() - started)
                time.sleep(float(answer.headers.get("Retry-After", 1)))
            answer.raise_for_status()
            times.append(time.perf_counter() - started)
            if sent is not None:
                sent.append((index, count))


def warm_up(url: str, images: str, objects: list[ObjectClicks]) -> None:
    """Each object's first click once: the server has fetched and encoded every image before the rows."""
    with requests.Session() as session:
        for index, clicked in enumerate(objects):
            session.post(f"{url}/predict", json=predict_body(images, 1_000_000 + index, clicked, 1),
                         timeout=120).raise_for_status()


def burst(url: str, images: str, entries: list[dict], dataset: Path, count: int) -> None:
    """Submitted annotations, as Label Studio's webhook sends them: each becomes learning work."""
    for index in range(count):
        entry = entries[index % len(entries)]
        target, _ = read_target(dataset / entry["mask"])
        result = {"type": "brushlabels", "from_name": "tag", "to_name": "image",
                  "original_width": target.shape[1], "original_height": target.shape[0],
                  "value": {"format": "rle", "rle": brush.mask2rle(target.astype(np.uint8) * 255),
                            "brushlabels": ["Object"]}}
        requests.post(f"{url}/webhook", timeout=60, json={
            "action": "ANNOTATION_CREATED", "project": {"id": 2, "label_config": CONFIG},
            "task": {"id": 5000 + index, "data": {"image": f"{images}/{entry['image']}"}},
            "annotation": {"id": 5000 + index, "updated_at": "1", "result": [result]}})


def run(url: str, images: str, objects: list[ObjectClicks], clients: int, seconds: float,
        sent: list | None = None) -> dict:
    times: list[float] = []
    shed: list[float] = []
    until = time.time() + seconds
    threads = [threading.Thread(target=client, args=(url, images, objects, until, n, times, shed, sent))
               for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"clients": clients, "requests": len(times), "shed_503": len(shed),
            "requests_per_second": round(len(times) / seconds, 2),
            "p50": round(float(np.percentile(times, 50)), 3), "p95": round(float(np.percentile(times, 95)), 3)}


def against_targets(rows: list[dict], tool_p50: float) -> dict:
    """The figures the targets are about, each beside its target and whether it meets it."""
    row = {(r["load"], r["clients"]): r for r in rows}
    idle, learning = row[("idle", 1)], row[("learning", 1)]
    figures = {"http_over_tool_p50": idle["p50"] / tool_p50,
               "eight_over_one_client_throughput": row[("idle", 8)]["requests_per_second"] / idle["requests_per_second"],
               "learning_slowdown_one_client": learning["p50"] / idle["p50"] - 1}
    at_least = {"eight_over_one_client_throughput"}
    return {name: {"value": round(value, 3), "target": f"{'>=' if name in at_least else '<='} {TARGETS[name]}",
                   "met": value >= TARGETS[name] if name in at_least else value <= TARGETS[name]}
            for name, value in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", 8)))
    parser.add_argument("--burst", type=int, default=200, help="annotations submitted for the 'learning' runs")
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite",
                        help="where the stores are: SQLite files, or a throwaway PostgreSQL cluster on this machine")
    args = parser.parse_args()
    with database_for(args.database) as database_url:
        os.environ["SEGAGENT_DATABASE_URL"] = database_url
        summary = measure(args)
    print(json.dumps({**summary, "database": args.database}, indent=2))


def measure(args: argparse.Namespace) -> dict:
    entries = json.loads((args.dataset / "manifest.json").read_text())
    segmenter = make_segmenter("classical")
    objects, _ = click_sequences(args.dataset, entries, segmenter)
    server, url = start_server(Path(tempfile.mkdtemp()), args.threads)
    rows: list[dict] = []
    sent: list[tuple[int, int]] = []
    try:
        with FileServer(args.dataset) as images:
            warm_up(url, images.url, objects)
            rows.append({"load": "idle", **run(url, images.url, objects, 1, args.seconds, sent)})
            tool_p50 = float(np.median(tool_seconds(segmenter, args.dataset, objects, sent)))
            rows.append({"load": "idle", **run(url, images.url, objects, 8, args.seconds)})
            feeder = threading.Thread(target=burst, args=(url, images.url, entries, args.dataset, args.burst))
            feeder.start()
            for clients in (1, 8):
                rows.append({"load": "learning", **run(url, images.url, objects, clients, args.seconds)})
            feeder.join()
            backlog = requests.get(f"{url}/status", timeout=10).json()["derived_work"]
        summary = {"rows": rows, "tool_seconds_per_click_p50": round(tool_p50, 3),
                   "against_targets": against_targets(rows, tool_p50),
                   "peak_rss_mb": round(peak_rss_mb(worker_of(server.pid)), 1), "threads": args.threads,
                   "learning_backlog_at_end": backlog, "machine": f"{os.cpu_count()} CPU cores"}
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # the learning backlog is owed in its data folder, thrown away
        server.wait(timeout=30)
    return summary


if __name__ == "__main__":
    main()
