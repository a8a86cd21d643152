"""Load on the backend as `make serve` runs it (gunicorn, one process, THREADS threads) over loopback: N
clients, each clicking objects of GrabCut images (one request per click, carrying every click so far),
for a fixed time. Idle, and while the backend learns from a burst of submitted annotations. Prints
requests/s, p50 and p95 per request, the server's peak RSS, and the tool's own time per click on the
same clicks. The clicks are the simulated annotator's, worked out once beforehand with the tool in this
process (that run is the tool's own time), so that the clients spend no CPU beside the server's.

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
from pathlib import Path

import numpy as np
import requests
from label_studio_sdk.converter import brush

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from model.annotator.clicker import next_click  # noqa: E402
from model.core.datasets import read_target  # noqa: E402
from tests.synthetic import FileServer, free_port  # noqa: E402

CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image"><Label value="Object"/></BrushLabels>
<KeyPointLabels name="kp" toName="image" smart="true"><Label value="Object" smart="true"/></KeyPointLabels></View>"""
CLICKS_PER_OBJECT = 5


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


def click_sequences(dataset: Path, entries: list[dict]) -> tuple[list[tuple[dict, list[dict]]], list[float]]:
    """Per object, the simulated annotator's keypoints after each click; and the tool's time per click."""
    from model.core.imageio import load_image
    from model.tools import make_segmenter

    segmenter, sequences, seconds = make_segmenter("classical"), [], []
    for entry in entries:
        image = load_image(dataset / entry["image"])
        target, ignore = read_target(dataset / entry["mask"])
        height, width = target.shape
        predicted, clicks, points, result = np.zeros_like(target), [], [], None
        for _ in range(CLICKS_PER_OBJECT):
            click = next_click(predicted, target, ignore)
            if click is None:
                break
            clicks.append(click)
            points.append({"type": "keypointlabels", "from_name": "kp", "to_name": "image",
                           "is_positive": click.positive, "value": {"x": 100 * click.x / width,
                                                                    "y": 100 * click.y / height,
                                                                    "keypointlabels": ["Object"]}})
            started = time.perf_counter()
            result = segmenter.predict(image, clicks, previous=result)
            seconds.append(time.perf_counter() - started)
            predicted = result.mask
        sequences.append((entry, points))
    return sequences, seconds


def client(url: str, images: str, sequences: list, until: float, seed: int, times: list) -> None:
    session, rng = requests.Session(), random.Random(seed)
    while time.time() < until:
        task_id, (entry, points) = rng.randrange(1_000_000), rng.choice(sequences)
        for count in range(1, len(points) + 1):
            if time.time() >= until:
                return
            body = {"tasks": [{"id": task_id, "data": {"image": f"{images}/{entry['image']}"}}], "project": "1",
                    "label_config": CONFIG, "params": {"context": {"result": points[:count]}}}
            started = time.perf_counter()
            session.post(f"{url}/predict", json=body, timeout=120).raise_for_status()
            times.append(time.perf_counter() - started)


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


def run(url: str, images: str, sequences: list, clients: int, seconds: float) -> dict:
    times: list[float] = []
    until = time.time() + seconds
    threads = [threading.Thread(target=client, args=(url, images, sequences, until, n, times))
               for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"clients": clients, "requests": len(times), "requests_per_second": round(len(times) / seconds, 2),
            "p50": round(float(np.percentile(times, 50)), 3), "p95": round(float(np.percentile(times, 95)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("THREADS", 8)))
    parser.add_argument("--burst", type=int, default=200, help="annotations submitted for the 'learning' runs")
    args = parser.parse_args()
    entries = json.loads((args.dataset / "manifest.json").read_text())
    sequences, tool_seconds = click_sequences(args.dataset, entries)
    server, url = start_server(Path(tempfile.mkdtemp()), args.threads)
    rows = []
    try:
        with FileServer(args.dataset) as images:
            run(url, images.url, sequences, 1, 5)  # warm-up: imports, caches
            for clients in (1, 8):
                rows.append({"load": "idle", **run(url, images.url, sequences, clients, args.seconds)})
            feeder = threading.Thread(target=burst, args=(url, images.url, entries, args.dataset, args.burst))
            feeder.start()
            for clients in (1, 8):
                rows.append({"load": "learning", **run(url, images.url, sequences, clients, args.seconds)})
            feeder.join()
            backlog = requests.get(f"{url}/status", timeout=10).json()["derived_work"]
        summary = {"rows": rows, "tool_seconds_per_click_p50": round(float(np.median(tool_seconds)), 3),
                   "peak_rss_mb": round(peak_rss_mb(worker_of(server.pid)), 1), "threads": args.threads,
                   "learning_backlog_at_end": backlog, "machine": f"{os.cpu_count()} CPU cores"}
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # the learning backlog is owed in its data folder, thrown away
        server.wait(timeout=30)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
