"""The quality-scorer benchmark: corrupt each object's mask by a seeded protocol (model/corruptions.py),
score every corrupted mask, and compare the estimates with the true IoU (in percent, as SegAgent's
Table 3): Pearson, Spearman, MAE, MSE, and calibration (expected calibration error)."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from model.core.datasets import Dataset, Sample, image_groups, read_target
from model.core.masks import iou
from model.quality.corruptions import corruptions
from model.quality.scorers import OfflineScorer, quality_features, train_quality_model


class DatasetError(ValueError):
    """Data a benchmark cannot use: a file missing or unreadable, a mask not of its image's size, too few objects."""


def checked_samples(dataset: Dataset) -> Iterator[Sample]:
    """The dataset's samples; DatasetError naming the object for a file that cannot be read or a mask whose size
    is not its image's (the features would read the mask against the wrong pixels)."""
    samples = iter(dataset)
    for position in range(len(dataset)):
        try:
            sample = next(samples)
        except KeyError as exc:
            raise DatasetError(f"{dataset.name}, object {position}: its entry has no {exc}") from exc
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{dataset.name}, object {position}: {exc}") from exc
        if sample.target.shape != sample.image.shape[:2]:
            raise DatasetError(f"{dataset.name}, object {position} ({sample.name}): the mask is "
                               f"{sample.target.shape[1]} x {sample.target.shape[0]}, the image "
                               f"{sample.image.shape[1]} x {sample.image.shape[0]}")
        yield sample


@dataclass
class Scored:
    sample: int  # index of the object in the dataset
    group: int  # index of the first object of its image: the unit of cross-validation
    kind: str
    iou: float
    features: np.ndarray | None


def _corrupted_rows(args) -> list[Scored]:
    index, group, sample, other, seed = args
    rows = []
    for kind, mask in corruptions(sample.target, index, seed, other):
        features = quality_features(sample.image, mask) if mask.any() and not mask.all() else None
        rows.append(Scored(index, group, kind, iou(mask, sample.target, sample.ignore), features))
    return rows


def corrupted_features(dataset: Dataset, seed: int = 0, workers: int = 1, progress: bool = True) -> list[Scored]:
    """Features and true IoU of every corrupted mask. The wrong object comes from the sample 7 places on (1 place
    on in a dataset of 7 objects, where 7 places on is the object itself)."""
    samples = list(checked_samples(dataset))
    if len(samples) < 2:
        raise DatasetError(f"{dataset.name} has {len(samples)} object: the corruption protocol needs two objects or "
                           "more (the wrong object is another's mask)")
    step = 7 if 7 % len(samples) else 1
    groups = image_groups(samples)
    jobs = [(i, groups[i], s, samples[(i + step) % len(samples)].target, seed) for i, s in enumerate(samples)
            if s.target.any()]
    bar = tqdm(total=len(jobs), desc=f"{dataset.name} (corrupt + features)", unit="obj", disable=not progress)
    rows: list[Scored] = []
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for chunk in pool.map(_corrupted_rows, jobs):
                rows += chunk
                bar.update()
    else:
        for job in jobs:
            rows += _corrupted_rows(job)
            bar.update()
    bar.close()
    return rows


def feature_matrix(rows: list[Scored]) -> tuple[np.ndarray, np.ndarray]:
    usable = [(r.features, r.iou) for r in rows if r.features is not None]
    return np.stack([features for features, _ in usable]), np.array([value for _, value in usable])


def cross_validated(rows: list[Scored], folds: int = 5, extra: Sequence[Scored] = (), seed: int = 0) -> np.ndarray:
    """Out-of-fold estimates: each object's masks scored by a model trained on the other folds (split by
    object, the objects of one image in one fold, so no object or image is both trained and measured on) plus the
    `extra` rows."""
    if folds < 2:
        raise ValueError(f"cross-validation needs 2 folds or more, not {folds}")
    estimates = np.zeros(len(rows))
    for fold in range(folds):
        if not any(r.group % folds == fold for r in rows):
            continue
        train = [r for r in rows if r.group % folds != fold and r.features is not None] + list(extra)
        if not train:
            raise DatasetError(f"fold {fold} of {folds} has nothing to train on: "
                               f"{len({r.sample for r in rows})} objects with masks")
        model = train_quality_model(*feature_matrix(train), seed=seed)
        for position, row in enumerate(rows):
            if row.group % folds == fold:
                estimates[position] = model.predict(row.features)[0] if row.features is not None else 0.0
    return estimates


def with_scorer(rows: list[Scored], scorer: OfflineScorer) -> np.ndarray:
    return np.array([scorer.model.predict(r.features)[0] if r.features is not None else 0.0 for r in rows])


def metrics(estimates: np.ndarray, truth: np.ndarray, bins: int = 10) -> dict:
    """Agreement of estimated and true IoU, in percent."""
    from scipy.stats import pearsonr, spearmanr

    estimates, truth = np.asarray(estimates, float), np.asarray(truth, float)
    error = (estimates - truth) * 100
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(estimates, edges) - 1, 0, bins - 1)
    ece = sum(abs(estimates[which == b].mean() - truth[which == b].mean()) * np.mean(which == b)
              for b in range(bins) if np.any(which == b))
    return {"n": len(truth), "pearson": float(pearsonr(estimates, truth)[0]),
            "spearman": float(spearmanr(estimates, truth)[0]), "mae": float(np.abs(error).mean()),
            "mse": float((error ** 2).mean()), "ece": float(ece * 100)}


def per_kind(rows: list[Scored], estimates: np.ndarray) -> dict:
    kinds = sorted({r.kind for r in rows})
    return {kind: {"n": sum(r.kind == kind for r in rows),
                   "true_iou": round(float(np.mean([r.iou for r in rows if r.kind == kind])), 4),
                   "estimated": round(float(np.mean([e for r, e in zip(rows, estimates) if r.kind == kind])), 4)}
            for kind in kinds}


def candidate_rows(folder: Path, scorer) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Each manifest entry's `candidate` mask scored against its `mask`."""
    from model.core.imageio import load_image

    try:
        entries = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{folder}: no manifest of candidates ({exc})") from exc
    names, estimates, truth = [], [], []
    for entry in entries:
        if "candidate" not in entry:
            raise DatasetError(f"manifest entry {entry.get('image')} has no 'candidate' mask")
        try:
            image = load_image(folder / entry["image"])
            target, ignore = read_target(folder / entry["mask"])
            candidate = np.array(Image.open(folder / entry["candidate"]).convert("L")) > 127
        except (OSError, ValueError, KeyError) as exc:
            raise DatasetError(f"manifest entry {entry.get('image')}: {type(exc).__name__} {exc}") from exc
        if not image.shape[:2] == target.shape == candidate.shape:
            raise DatasetError(f"manifest entry {entry['image']}: the image, its mask and its candidate are not all "
                               f"of one size ({image.shape[:2]}, {target.shape}, {candidate.shape}, height x width)")
        names.append(entry["image"])
        estimates.append(scorer(image, candidate, entry.get("category") or ""))
        truth.append(iou(candidate, target, ignore))
    return names, np.array(estimates), np.array(truth)


def write_score_report(out: Path, summary: dict, estimates: np.ndarray, truth: np.ndarray,
                       labels: list[str]) -> None:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    summary = {**summary, "machine": f"{os.cpu_count()} CPU cores"}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    with open(out / "scores.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["item", "true_iou", "estimated_iou"])
        writer.writerows(zip(labels, np.round(truth, 4), np.round(estimates, 4)))
    fig, (scatter, reliability) = plt.subplots(1, 2, figsize=(10, 4.5))
    scatter.scatter(truth * 100, estimates * 100, s=6, alpha=0.4)
    scatter.plot([0, 100], [0, 100], color="grey", lw=1)
    scatter.set_xlabel("true IoU (%)")
    scatter.set_ylabel("estimated IoU (%)")
    scatter.set_title(f"Pearson {summary['pearson']:.3f}, MAE {summary['mae']:.1f}")
    edges = np.linspace(0, 1, 11)
    which = np.clip(np.digitize(estimates, edges) - 1, 0, 9)
    centres = [estimates[which == b].mean() * 100 for b in range(10) if np.any(which == b)]
    actual = [truth[which == b].mean() * 100 for b in range(10) if np.any(which == b)]
    reliability.plot([0, 100], [0, 100], color="grey", lw=1)
    reliability.plot(centres, actual, marker="o")
    reliability.set_xlabel("estimated IoU (%), binned")
    reliability.set_ylabel("mean true IoU (%)")
    reliability.set_title(f"calibration: ECE {summary['ece']:.1f}")
    fig.tight_layout()
    fig.savefig(out / "scatter.png", dpi=100)
    plt.close(fig)
