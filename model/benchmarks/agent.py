"""Benchmark of the agent: episodes from each sample's text prompt, mIoU and cIoU, and the loop's speed."""
from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model.agent.loop import EpisodeTask
from model.core.datasets import Dataset, Sample
from model.core.masks import iou


def benchmark_agent(agent, dataset: Dataset, batch_size: int = 1, progress: bool = True) -> tuple[list[dict], dict]:
    """Episodes from each sample's text prompt; per-sample IoU and totals for cIoU, and the agent's timings."""
    rows: list[dict] = []
    batch: list[Sample] = []
    bar = tqdm(total=len(dataset), desc=f"{dataset.name} (agent)", unit="img", disable=not progress)

    def flush():
        episodes = agent.run_many([EpisodeTask(s.image, s.prompt or "the object") for s in batch])
        for sample, episode in zip(batch, episodes):
            valid = ~sample.ignore if sample.ignore is not None else np.ones_like(sample.target)
            rows.append({"image": sample.name, "prompt": sample.prompt, "iou": iou(episode.mask, sample.target,
                                                                               sample.ignore),
                         "intersection": int((episode.mask & sample.target & valid).sum()),
                         "union": int(((episode.mask | sample.target) & valid).sum()),
                         "steps": len(episode.steps), "stop": episode.stop_reason, "score": episode.score})
        bar.update(len(batch))
        batch.clear()

    started = time.perf_counter()
    for sample in dataset:
        batch.append(sample)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    bar.close()
    elapsed = time.perf_counter() - started
    steps = max(agent.steps_taken, 1)
    timing = {"seconds_total": round(elapsed, 2), "steps": agent.steps_taken,
              "steps_per_second": round(agent.steps_taken / elapsed, 3) if elapsed else 0.0,
              "seconds_per_step": {part: round(seconds / steps, 4) for part, seconds in agent.seconds.items()}}
    return rows, timing


def summarize_agent(rows: list[dict], timing: dict, dataset: str, tool: str, policy: str) -> dict:
    intersection = sum(r["intersection"] for r in rows)
    union = sum(r["union"] for r in rows)
    return {"dataset": dataset, "tool": tool, "policy": policy, "images": len(rows),
            "miou": float(np.mean([r["iou"] for r in rows])) if rows else 0.0,
            "ciou": intersection / union if union else 1.0,
            "steps_mean": float(np.mean([r["steps"] for r in rows])) if rows else 0.0,
            "stop_reasons": {reason: sum(r["stop"] == reason for r in rows) for reason in {r["stop"] for r in rows}},
            **timing, "machine": f"{os.cpu_count()} CPU cores"}


def write_agent_report(out: Path, summary: dict, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    with open(out / "per_image.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "prompt", "iou", "steps", "stop", "score"],
                                extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
