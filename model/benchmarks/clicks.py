"""Benchmarks of the interactive tools: clicks to reach an IoU (NoC), mIoU per click, time per click."""
from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model.annotator.clicker import next_click
from model.core.clicks import Click
from model.core.datasets import Dataset, Sample
from model.core.masks import iou
from model.tools.base import Segmenter, ToolResult


@dataclass
class ClickRun:
    """One image of a NoC benchmark: the IoU after each click and the tool's time for each."""

    name: str
    ious: list[float]
    seconds: list[float]
    encode_seconds: float


def noc(ious: list[float], threshold: float, max_clicks: int) -> int:
    """Clicks needed to reach the threshold; max_clicks when it is never reached."""
    for index, value in enumerate(ious[:max_clicks]):
        if value >= threshold:
            return index + 1
    return max_clicks


def run_clicks(segmenter: Segmenter, sample: Sample, max_clicks: int, stop_iou: float | None = None) -> ClickRun:
    """Let the simulated annotator click on one sample, up to max_clicks or until stop_iou is reached."""
    started = time.perf_counter()
    encoded = segmenter.encode(sample.image)
    encode_seconds = time.perf_counter() - started
    pred = np.zeros_like(sample.target)
    previous: ToolResult | None = None
    clicks: list[Click] = []
    ious: list[float] = []
    seconds: list[float] = []
    for _ in range(max_clicks):
        click = next_click(pred, sample.target, sample.ignore)
        if click is None:  # nothing left to correct: the IoU stays where it is
            ious.append(ious[-1] if ious else iou(pred, sample.target, sample.ignore))
            continue
        clicks.append(click)
        started = time.perf_counter()
        previous = segmenter.predict(encoded, clicks, previous=previous)
        seconds.append(time.perf_counter() - started)
        pred = previous.mask
        ious.append(iou(pred, sample.target, sample.ignore))
        if stop_iou is not None and ious[-1] >= stop_iou:
            break
    return ClickRun(sample.name, ious, seconds, encode_seconds)


_worker_segmenter: Segmenter | None = None


def _init_worker(make_segmenter: Callable[[], Segmenter]) -> None:
    global _worker_segmenter
    import cv2

    cv2.setNumThreads(1)
    _worker_segmenter = make_segmenter()


def _run_in_worker(args) -> ClickRun:
    sample, max_clicks, stop_iou = args
    assert _worker_segmenter is not None  # set by _init_worker, the pool's initializer, before any task runs
    return run_clicks(_worker_segmenter, sample, max_clicks, stop_iou)


def benchmark_clicks(
    make_segmenter: Callable[[], Segmenter],
    dataset: Dataset,
    max_clicks: int = 20,
    workers: int = 1,
    stop_iou: float | None = None,
    progress: bool = True,
) -> list[ClickRun]:
    """Run the click benchmark on every sample; with workers > 1, in that many processes."""
    jobs = ((sample, max_clicks, stop_iou) for sample in dataset)
    bar = tqdm(total=len(dataset), desc=f"{dataset.name}", unit="img", disable=not progress)
    runs: list[ClickRun] = []
    if workers <= 1:
        _init_worker(make_segmenter)
        for job in jobs:
            runs.append(_run_in_worker(job))
            bar.update()
    else:
        with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(make_segmenter,)) as pool:
            for run in pool.map(_run_in_worker, jobs):
                runs.append(run)
                bar.update()
    bar.close()
    return runs


def summarize_clicks(runs: list[ClickRun], dataset: str, tool: str, max_clicks: int, seconds_total: float) -> dict:
    padded = np.array([r.ious + [r.ious[-1]] * (max_clicks - len(r.ious)) for r in runs])
    per_click = np.concatenate([r.seconds for r in runs]) if runs else np.zeros(0)
    return {
        "dataset": dataset,
        "tool": tool,
        "images": len(runs),
        "max_clicks": max_clicks,
        "noc85": float(np.mean([noc(r.ious, 0.85, max_clicks) for r in runs])),
        "noc90": float(np.mean([noc(r.ious, 0.90, max_clicks) for r in runs])),
        "nof85": int(sum(noc(r.ious, 0.85, max_clicks) == max_clicks and max(r.ious) < 0.85 for r in runs)),
        "nof90": int(sum(noc(r.ious, 0.90, max_clicks) == max_clicks and max(r.ious) < 0.90 for r in runs)),
        "miou_at_click": [round(float(v), 4) for v in padded.mean(axis=0)],
        "seconds_per_click_p50": float(np.median(per_click)) if per_click.size else 0.0,
        "seconds_per_click_p90": float(np.percentile(per_click, 90)) if per_click.size else 0.0,
        "seconds_encode_p50": float(np.median([r.encode_seconds for r in runs])) if runs else 0.0,
        "seconds_total": round(seconds_total, 2),
        "machine": f"{os.cpu_count()} CPU cores",
    }


def write_click_report(out: Path, summary: dict, runs: list[ClickRun]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    max_clicks = summary["max_clicks"]
    with open(out / "per_image.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "noc85", "noc90", "iou_click1", "iou_final", "seconds_per_click_mean"])
        for r in runs:
            writer.writerow([r.name, noc(r.ious, 0.85, max_clicks), noc(r.ious, 0.90, max_clicks),
                             round(r.ious[0], 4), round(r.ious[-1], 4),
                             round(float(np.mean(r.seconds)), 4) if r.seconds else 0.0])
    _plot_miou(out / "miou_per_click.png", summary)


def _plot_miou(path: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = summary["miou_at_click"]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(1, len(values) + 1), values, marker="o")
    ax.set_xlabel("clicks")
    ax.set_ylabel("mIoU")
    ax.set_ylim(0, 1)
    ax.set_xticks(range(1, len(values) + 1, max(1, len(values) // 10)))
    ax.grid(alpha=0.3)
    ax.set_title(f"{summary['tool']} on {summary['dataset']}: NoC@85 {summary['noc85']:.2f}, NoC@90 {summary['noc90']:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
