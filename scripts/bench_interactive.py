"""Latency of interactive requests as Label Studio sends them: the backend in-process (Flask's test
client), task images served over HTTP on loopback, the simulated annotator's clicks as smart keypoints,
one request per click (each carries every click so far). Prints the median and p90 per request.

    python scripts/bench_interactive.py ../shared/data/grabcut --clicks 5
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.app import create_app
from backend.container import Backend
from model.annotator.clicker import next_click
from model.core.datasets import read_target
from model.core.masks import iou
from model.settings import Settings
from tests.synthetic import FileServer

CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image"><Label value="Object"/></BrushLabels>
<KeyPointLabels name="kp" toName="image" smart="true"><Label value="Object" smart="true"/></KeyPointLabels></View>"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, help="a manifest folder")
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--limit", type=int, default=20)
    args = parser.parse_args()
    from label_studio_sdk.converter import brush

    entries = json.loads((args.dataset / "manifest.json").read_text())[:args.limit]
    backend = Backend.build(Settings(data_dir=Path(tempfile.mkdtemp())))
    client = create_app(backend).test_client()
    seconds, first_request, final_ious = [], [], []
    with FileServer(args.dataset) as server:
        for task_id, entry in enumerate(entries):
            target, ignore = read_target(args.dataset / entry["mask"])
            height, width = target.shape
            pred, points = np.zeros_like(target), []
            for step in range(args.clicks):
                click = next_click(pred, target, ignore)
                if click is None:
                    break
                points.append({"type": "keypointlabels", "from_name": "kp", "to_name": "image",
                               "is_positive": click.positive,
                               "value": {"x": 100 * click.x / width, "y": 100 * click.y / height,
                                         "keypointlabels": ["Object"]}})
                body = {"tasks": [{"id": task_id, "data": {"image": f"{server.url}/{entry['image']}"}}],
                        "label_config": CONFIG, "params": {"context": {"result": points}}}
                started = time.perf_counter()
                response = client.post("/predict", json=body)
                elapsed = time.perf_counter() - started
                (first_request if step == 0 else seconds).append(elapsed)
                region = response.json["results"][0]["result"][0]
                pred = brush.decode_rle(region["value"]["rle"]).reshape(height, width, 4)[:, :, 3] > 0
            final_ious.append(iou(pred, target, ignore))
    print(json.dumps({"images": len(entries), "clicks": args.clicks,
                      "first_request_p50": round(float(np.median(first_request)), 3),
                      "later_request_p50": round(float(np.median(seconds)), 3),
                      "later_request_p90": round(float(np.percentile(seconds, 90)), 3),
                      "miou_after_last_click": round(float(np.mean(final_ious)), 3)}, indent=2))


if __name__ == "__main__":
    main()
