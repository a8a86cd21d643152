"""What the CPU tool answers to a box alone (Label Studio's smart rectangle), for five boxes per object.
The right answer is the object's part inside the box: for a box wholly inside the object the whole box,
for a loose box the object, for a box across the object's edge the object's part inside it.

    python scripts/bench_boxes.py [../shared/data/grabcut] [--limit N] [--workers 2]

The boxes, from the object's mask (GrabCut's unknown band, value 128, is left out of every count):
- loose: the object's bounding box with a margin of 10% of its width (height) on each side, clipped to
  the image. Reported: the mean IoU of the answer with the object.
- inside: a square centred on the object's deepest point (the maximum of its distance transform, d), of
  side 1.2 d, so that its corners lie 0.85 d from the centre, inside the object; shrunk a pixel at a time
  in the rare case the rounded square still holds a pixel that is not the object's. Reported: the median
  and mean fraction of the box the answer covers, the fraction of boxes covered at least 90%, and the
  mean fraction of the answer outside the object (the mask leaking beyond it).
- partial: the loose box shifted right, left, down or up until its near edge lies on the object's median
  column or row (half the object's pixels on either side), whichever of the four loses the least area
  to the image's edges (the first on a tie), clipped. About half the object is inside it, on one side
  of a box that is otherwise background. Reported: the mean IoU with the object's part inside the box.
- half: the loose box with its left edge moved to the object's median column: the object's right half
  and the margins around it, the box across the object's edge of the API tests. Reported as partial.
- clipped: the loose box with its left edge moved to the column that leaves a fifth of the object's pixels
  outside it: a box drawn a little short on one side. Reported as partial.

The synthetic scene of the tests (tests/synthetic.py, seed 1, a red ellipse on a noisy blue-green
background) is measured too, with these five boxes and the two of tests/test_request_edge.py: a box of
10% of the image's sides around the object's centroid, and one from the centroid to 20 pixels past the
object's right, top and bottom.
"""
from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.core.datasets import Sample, open_dataset
from model.core.masks import iou
from model.tools.classical import ClassicalTool
from tests.synthetic import scene

Box = tuple[int, int, int, int]


def loose_box(target: np.ndarray, margin: float = 0.1) -> Box:
    rows, cols = np.nonzero(target)
    x1, y1, x2, y2 = int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1
    dx, dy = round(margin * (x2 - x1)), round(margin * (y2 - y1))
    height, width = target.shape
    return max(0, x1 - dx), max(0, y1 - dy), min(width, x2 + dx), min(height, y2 + dy)


def inside_box(target: np.ndarray) -> Box:
    depth = cv2.distanceTransform(np.pad(target, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    cy, cx = (int(v) for v in np.unravel_index(int(np.argmax(depth)), depth.shape))
    half = max(1, round(0.6 * float(depth[cy, cx])))
    while half > 1 and not target[cy - half:cy + half, cx - half:cx + half].all():
        half -= 1
    return cx - half, cy - half, cx + half, cy + half


def partial_box(target: np.ndarray) -> Box:
    x1, y1, x2, y2 = loose_box(target)
    height, width = target.shape
    rows, cols = np.nonzero(target)
    column, row = int(np.median(cols)), int(np.median(rows))
    shifted = [(column, y1, column + x2 - x1, y2), (column - (x2 - x1), y1, column, y2),
               (x1, row, x2, row + y2 - y1), (x1, row - (y2 - y1), x2, row)]
    clipped = [(max(0, a), max(0, b), min(width, c), min(height, d)) for a, b, c, d in shifted]
    return max(clipped, key=lambda box: (box[2] - box[0]) * (box[3] - box[1]))


def half_box(target: np.ndarray) -> Box:
    _, y1, x2, y2 = loose_box(target)
    return int(np.median(np.nonzero(target)[1])), y1, x2, y2


def clipped_box(target: np.ndarray) -> Box:
    _, y1, x2, y2 = loose_box(target)
    return int(np.percentile(np.nonzero(target)[1], 20)), y1, x2, y2


BOXES: dict[str, Callable[[np.ndarray], Box]] = {
    "loose": loose_box, "inside": inside_box, "partial": partial_box, "half": half_box, "clipped": clipped_box}


def test_boxes(target: np.ndarray) -> dict[str, Box]:
    """The boxes of tests/test_request_edge.py, in pixels, for a 320 x 240 scene."""
    rows, cols = np.nonzero(target)
    cx, cy = cols.mean(), rows.mean()
    return {"test inside": (round(cx - 16), round(cy - 12), round(cx + 16), round(cy + 12)),
            "test across": (round(cx), int(rows.min()) - 20, int(cols.max()) + 20, int(rows.max()) + 20)}


def measure(sample: Sample, boxes: dict[str, Box], tool: ClassicalTool) -> dict[str, float]:
    """For each box, the figure its kind reports (an inside box's also its fraction outside the object)."""
    encoded = tool.encode(sample.image)
    target, ignore = sample.target, sample.ignore
    keep = np.ones_like(target) if ignore is None else ~ignore
    figures = {}
    for kind, (x1, y1, x2, y2) in boxes.items():
        answer = tool.predict(encoded, [], box=(x1, y1, x2, y2)).mask
        region = np.zeros_like(target)
        region[y1:y2, x1:x2] = True
        if kind == "loose":
            figures[kind] = iou(answer, target, ignore)
        elif kind.endswith("inside"):
            figures[kind] = float((answer & region).sum() / region.sum())
            kept = answer & keep
            figures[f"{kind} outside"] = float((kept & ~target).sum() / max(1, kept.sum()))
        else:
            figures[kind] = iou(answer, target & region, ignore)
    return figures


def _measure_in_worker(sample: Sample) -> dict[str, float]:
    cv2.setNumThreads(1)
    return measure(sample, {kind: make(sample.target) for kind, make in BOXES.items()}, ClassicalTool())


def report(name: str, rows: list[dict[str, float]]) -> None:
    covered = np.array([r["inside"] for r in rows])
    print(f"{name}: {len(rows)} objects")
    print(f"  loose    mean IoU with the object                {np.mean([r['loose'] for r in rows]):.3f}")
    print(f"  inside   box covered: median {np.median(covered):.3f}, mean {covered.mean():.3f}, "
          f"{np.mean(covered >= 0.9):.0%} of boxes >= 90%; answer outside the object "
          f"{np.mean([r['inside outside'] for r in rows]):.3f}")
    for kind in ("partial", "half", "clipped"):
        print(f"  {kind:8} mean IoU with the object's part in the box {np.mean([r[kind] for r in rows]):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", type=Path, nargs="?", default=Path("../shared/data/grabcut"),
                        help="a manifest folder")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    started = time.perf_counter()
    image, target = scene(320, 240, seed=1)
    boxes = {kind: make(target) for kind, make in BOXES.items()} | test_boxes(target)
    synthetic = measure(Sample("scene", image, target, None, None), boxes, ClassicalTool())
    report("synthetic scene", [synthetic])
    print(f"  tests'   inside box covered {synthetic['test inside']:.3f} (outside the object "
          f"{synthetic['test inside outside']:.3f}); across box IoU {synthetic['test across']:.3f}")
    dataset = open_dataset(args.dataset).limit(args.limit)
    # spawned, not forked: OpenCV's threads in this process would deadlock forked workers
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        rows = list(pool.map(_measure_in_worker, dataset))
    report(dataset.name, rows)
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
