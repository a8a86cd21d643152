"""The simulated project stream: does refitting the offline quality scorer on a project's own labels score
that project's next annotations better than the shipped weights?

The stream: the dataset's objects in a seeded order. For each object, the CPU tool's prediction after k
clicks of the simulated annotator (model/annotator/clicker.py) is what the annotator corrects, and the
true mask is the annotation, so the label is IoU(prediction, true mask) and the features are what
`quality_features` reads off the prediction. k is drawn from 1-4 per object, `per_object` distinct values
(one run of clicks, its masks kept at each k), so IoUs spread; an object's annotations come one after
another. At each refit point n, the project scorer is refitted on the first n labels (the backend's refit,
model/quality/project_scorer.py: the shipped weights as its prior, a gate on held-out labels split by
task, a task being an image as in Label Studio) and the shipped and refitted scorers score the next `window`
annotations. An image's objects come one after another, and the annotations past n of an image among the refit's
labels are skipped: what is scored is of images the refit has not seen.

Domains (`DOMAINS`): `photo` is the dataset's images as they are; `microscopy` is a synthetic stand-in for
images unlike the natural photographs the scorer was trained on (`transform_image` says exactly what).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import pickle
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from model.annotator.clicker import next_click
from model.benchmarks.quality import checked_samples
from model.core.clicks import Click
from model.core.datasets import Dataset, Sample, image_groups
from model.core.masks import iou
from model.quality import scorers
from model.tools.base import Segmenter, ToolResult

DOMAINS = {
    "photo": "the dataset's images as they are (natural photographs, like the scorer's training data)",
    "microscopy": "synthetic, microscopy-like: each image made grey (ITU-R 601 luma), its contrast halved around "
                  "mid-grey (x0.5 + 64), blurred (Gaussian, sigma 1.5 px), and given Gaussian noise (sigma 8 "
                  "levels, seeded per object), the three channels equal",
}
MAX_CLICKS = 4
REFIT_POINTS = (50, 100, 200)
WINDOW = 100

# refit(prior, features, ious, task_ids) -> (candidate, gate figures, promote): the backend's project refit
Refit = Callable[..., tuple]


class StreamTooShort(ValueError):
    """The stream holds too few annotations for a refit point and the window scored after it."""


@dataclass
class Annotation:
    """One label of the stream: the prediction an annotator corrected, read as the scorer reads it."""

    task: int  # the object's image (its first object's index in the dataset): what the refit's gate splits by
    obj: int  # the object's index in the dataset
    name: str
    clicks: int
    iou: float  # of the prediction with the true mask (the annotation)
    features: np.ndarray | None  # None for an empty prediction or one of the whole image (no features)


def transform_image(image: np.ndarray, domain: str, seed: int = 0, index: int = 0) -> np.ndarray:
    """The image as the domain shows it (see DOMAINS); deterministic for (seed, index)."""
    if domain == "photo":
        return image
    if domain != "microscopy":
        raise ValueError(f"unknown domain {domain!r}; choose from {', '.join(DOMAINS)}")
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32) * 0.5 + 64.0
    blurred = cv2.GaussianBlur(gray, (0, 0), 1.5)
    noisy = blurred + np.random.default_rng([seed, index]).normal(0.0, 8.0, gray.shape)
    return np.repeat(np.clip(np.rint(noisy), 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def click_counts(seed: int, index: int, per_object: int) -> list[int]:
    """The click counts whose predictions an object contributes: distinct, drawn from 1..MAX_CLICKS."""
    rng = np.random.default_rng([seed, index, 1])
    return sorted(int(k) for k in rng.choice(np.arange(1, MAX_CLICKS + 1), size=per_object, replace=False))


def predictions(segmenter: Segmenter, image: np.ndarray, sample: Sample, counts: Sequence[int]) -> dict[int, np.ndarray]:
    """The tool's mask after each of `counts` clicks of the simulated annotator (one run of clicks). When no
    error is left to click on, later counts keep the last mask."""
    encoded = segmenter.encode(image)
    pred = np.zeros_like(sample.target)
    previous: ToolResult | None = None
    clicks: list[Click] = []
    masks = {}
    for count in range(1, max(counts) + 1):
        click = next_click(pred, sample.target, sample.ignore)
        if click is not None:
            clicks.append(click)
            previous = segmenter.predict(encoded, clicks, previous=previous)
            pred = previous.mask
        if count in counts:
            masks[count] = pred.copy()
    return masks


def _source_key(*code) -> str:
    """Changes whenever what the code computes may have: the source of each function of this module given (its own
    steps, not the rest of it), and of the module that defines anything else given."""
    sources = (inspect.getsource(c) if inspect.isfunction(c) and c.__module__ == __name__
               else inspect.getsource(inspect.getmodule(c) or c) for c in code)
    return hashlib.sha256("\n".join(sources).encode()).hexdigest()[:12]


def _content_key(sample: Sample) -> str:
    """The object's pixels and masks: a cache entry of another dataset of the same name, or of the same dataset
    with an image or mask since changed, is not read back."""
    digest = hashlib.sha256(str(sample.image.shape).encode() + sample.image.tobytes())
    for mask in (sample.target,) if sample.ignore is None else (sample.target, sample.ignore):
        digest.update(np.packbits(mask).tobytes())
    return digest.hexdigest()[:12]


def _object_annotations(segmenter: Segmenter, sample: Sample, index: int, task: int, domain: str, seed: int,
                        per_object: int, cache: Path | None) -> list[Annotation]:
    """An object's annotations; the tool's masks and the features are cached under `cache` when given."""
    stem = f"{domain}_{seed}_{per_object}_{index}_{task}_{_content_key(sample)}" if cache else ""
    if cache:  # the masks' code: the tool, the simulated annotator's clicks and the image they are made on
        cache = cache / _source_key(type(segmenter.tool), next_click, predictions, click_counts, transform_image)
    masks_file = cache / "masks" / f"{stem}.pkl" if cache else None
    features_key = _source_key(scorers, scorers.quality_features, iou, transform_image)
    features_file = cache / f"features_{features_key}" / f"{stem}.pkl" if cache else None
    if features_file and features_file.exists():
        return pickle.loads(features_file.read_bytes())
    image = transform_image(sample.image, domain, seed, index)
    if masks_file and masks_file.exists():
        packed = pickle.loads(masks_file.read_bytes())
        masks = {k: np.unpackbits(bits, count=sample.target.size).reshape(sample.target.shape).astype(bool)
                 for k, bits in packed.items()}
    else:
        masks = predictions(segmenter, image, sample, click_counts(seed, index, per_object))
        if masks_file:
            masks_file.parent.mkdir(parents=True, exist_ok=True)
            masks_file.write_bytes(pickle.dumps({k: np.packbits(m.ravel()) for k, m in masks.items()}))
    rows = []
    for count, mask in sorted(masks.items()):
        features = scorers.quality_features(image, mask) if mask.any() and not mask.all() else None
        rows.append(Annotation(task, index, sample.name, count, iou(mask, sample.target, sample.ignore), features))
    if features_file:
        features_file.parent.mkdir(parents=True, exist_ok=True)
        features_file.write_bytes(pickle.dumps(rows))
    return rows


_worker_segmenter: Segmenter | None = None


def _init_worker(make_segmenter: Callable[[], Segmenter]) -> None:
    global _worker_segmenter
    cv2.setNumThreads(1)
    _worker_segmenter = make_segmenter()


def _in_worker(args) -> list[Annotation]:
    assert _worker_segmenter is not None  # set by _init_worker before any task runs
    return _object_annotations(_worker_segmenter, *args)


def _annotate(dataset: Dataset, wanted: set[int], groups: Sequence[int], make_segmenter: Callable[[], Segmenter],
              domain: str, seed: int, per_object: int, cache: Path | None, workers: int,
              bar) -> dict[int, list[Annotation]]:
    """The annotations of the objects whose indices are `wanted`, by index (`groups`: each object's image)."""
    jobs = ((sample, index, groups[index], domain, seed, per_object, cache)
            for index, sample in enumerate(checked_samples(dataset)) if index in wanted and sample.target.any())
    found: dict[int, list[Annotation]] = {}
    if workers <= 1:
        segmenter = make_segmenter()
        for job in jobs:
            rows = _object_annotations(segmenter, *job)
            found[rows[0].obj] = rows
            bar.update()
        return found
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(make_segmenter,)) as pool:
        for rows in pool.map(_in_worker, jobs):
            found[rows[0].obj] = rows
            bar.update()
    return found


def project_stream(dataset: Dataset, make_segmenter: Callable[[], Segmenter], domain: str = "photo", seed: int = 0,
                   per_object: int = 2, cache: Path | None = None, workers: int = 1, needed: int | None = None,
                   progress: bool = True) -> list[Annotation]:
    """The objects' annotations, objects in a seeded order, those of one image together (where its first object
    comes); with `needed`, only as many objects as make that many annotations with features (all objects when there
    are too few)."""
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; choose from {', '.join(DOMAINS)}")
    if not 1 <= per_object <= MAX_CLICKS:
        raise ValueError(f"per_object must be within 1-{MAX_CLICKS}")
    folder = Path(cache) / dataset.name if cache else None
    groups = image_groups(checked_samples(dataset))
    order = [int(i) for i in np.random.default_rng(seed).permutation(len(dataset))]
    first: dict[int, int] = {}
    for position, index in enumerate(order):
        first.setdefault(groups[index], position)
    order.sort(key=lambda index: first[groups[index]])
    by_object: dict[int, list[Annotation]] = {}
    taken = 0
    bar = tqdm(total=len(dataset), desc=f"{dataset.name} ({domain} stream)", unit="obj", disable=not progress)
    while True:
        stream = [a for index in order[:taken] for a in by_object.get(index, [])]
        featured = sum(a.features is not None for a in stream)
        if taken >= len(order) or (needed is not None and featured >= needed):
            break
        more = len(order) if needed is None else max(4, -(-(needed - featured) // per_object) + 2)
        by_object.update(_annotate(dataset, set(order[taken:taken + more]), groups, make_segmenter, domain, seed,
                                   per_object, folder, workers, bar))
        taken += more
    bar.close()
    return stream


def split_at(stream: Sequence[Annotation], labels: int, window: int) -> tuple[list[Annotation], list[Annotation]]:
    """The first `labels` annotations, and the next `window` of tasks (images) not among them."""
    train = list(stream[:labels])
    seen = {a.task for a in train}
    rest = [a for a in stream[labels:] if a.task not in seen]
    return train, rest[:window]


def _matrix(rows: Sequence[Annotation]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, IoUs and tasks of the rows with features, row for row."""
    usable = [(r.features, r) for r in rows if r.features is not None]
    return (np.stack([features for features, _ in usable]), np.array([r.iou for _, r in usable]),
            np.array([r.task for _, r in usable]))


def _figures(estimates: np.ndarray, truth: np.ndarray) -> dict:
    from model.benchmarks.quality import metrics

    with warnings.catch_warnings():  # a constant side: Pearson is undefined (None) and scipy warns
        warnings.simplefilter("ignore")
        found = metrics(estimates, truth)
    defined = bool(np.ptp(estimates) > 0 and np.ptp(truth) > 0)
    return {"pearson": round(found["pearson"], 4) if defined else None, "mae": round(found["mae"], 2),
            "ece": round(found["ece"], 2)}


def evaluate_refits(stream: Sequence[Annotation], prior, refit: Refit | None = None,
                    points: Sequence[int] = REFIT_POINTS, window: int = WINDOW) -> list[dict]:
    """At each refit point, as the backend goes: the labels so far refitted from the prior and gated against
    the scorer served until then; then the shipped weights, the candidate and what is served now (the
    candidate if promoted, else the scorer served before) score the next `window` annotations. Predictions
    with no features (empty, or the whole image) are left out: the scorer gives them 0 without features, and a
    refit cannot learn from them."""
    from model.quality import project_scorer

    fit = refit or project_scorer.refit
    stream = [a for a in stream if a.features is not None]
    served_model = prior
    results = []
    for labels in points:
        train, scored = split_at(stream, labels, window)
        if len(train) < labels or len(scored) < window:
            raise StreamTooShort(f"the stream has {len(stream)} annotations: too few for {labels} labels and "
                                 f"{window} scored after them")
        features, ious, tasks = _matrix(train)
        try:
            candidate, gate, promote = fit(prior, features, ious, tasks.tolist(), active=served_model)
        except project_scorer.TooFewLabels as exc:
            candidate, gate, promote = None, {"refused": str(exc)}, False
        served_model = candidate if promote else served_model
        test_features, truth, _ = _matrix(scored)
        results.append({
            "labels": labels, "scored": len(scored), "objects_trained": len({a.obj for a in train}),
            "objects_scored": len({a.obj for a in scored}), "true_iou_mean": round(float(truth.mean()), 4),
            "shipped": _figures(prior.predict(test_features), truth),
            "refitted": _figures(candidate.predict(test_features), truth) if candidate else None,
            "served": _figures(served_model.predict(test_features), truth), "promoted": bool(promote),
            "gate": _jsonable(gate)})
    return results


def run(dataset: Dataset, domains: Sequence[str], make_segmenter: Callable[[], Segmenter], seed: int = 0,
        per_object: int = 2, points: Sequence[int] = REFIT_POINTS, window: int = WINDOW, cache: Path | None = None,
        workers: int = 1, progress: bool = True, orders: int = 1) -> tuple[dict, dict[str, list[Annotation]]]:
    """The benchmark on each domain's stream of the dataset: (summary, the streams); with `orders` above 1, the
    goal over that many orders of the same objects too (`over_orders`)."""
    from model.quality import project_scorer
    from model.quality.scorers import QualityModel

    prior = QualityModel.load()
    streams, results = {}, {}
    for domain in domains:
        needed = max(points) + window + per_object  # an object split by a refit point has its rest skipped
        streams[domain] = project_stream(dataset, make_segmenter, domain, seed, per_object, cache, workers, needed,
                                         progress)
        results[domain] = evaluate_refits(streams[domain], prior, points=points, window=window)
    summary = {
        "dataset": dataset.name, "objects": len(dataset), "seed": seed, "tool": "classical",
        "clicks": f"{per_object} distinct counts of 1-{MAX_CLICKS} per object, seeded", "window": window,
        "shipped_weights": {**prior.trained_on, "digest": project_scorer.prior_digest()},
        "features": len(scorers.FEATURES), "features_version": project_scorer.FEATURES_VERSION,
        "streams": {domain: {"what": DOMAINS[domain], "objects": len({a.obj for a in streams[domain]}),
                             "annotations": sum(a.features is not None for a in streams[domain]),
                             "left_out": sum(a.features is None for a in streams[domain]),
                             "true_iou_mean": round(float(np.mean([a.iou for a in streams[domain]])), 4),
                             "refits": results[domain]} for domain in domains}}
    others = [d for d in domains if d != "photo"]
    if others:
        summary["goal"] = {d: goal(results.get("photo", []), results[d], max(points)) for d in others}
        if orders > 1:
            summary["over_orders"] = over_orders(streams, prior, orders, seed, points, window)
    return summary, streams


def reordered(stream: Sequence[Annotation], rng: np.random.Generator) -> list[Annotation]:
    """The same annotations with the images in another order, each image's annotations kept together."""
    by_task: dict[int, list[Annotation]] = {}
    for annotation in stream:
        by_task.setdefault(annotation.task, []).append(annotation)
    tasks = list(by_task)
    return [a for position in rng.permutation(len(tasks)) for a in by_task[tasks[position]]]


def over_orders(streams: Mapping[str, Sequence[Annotation]], prior, orders: int, seed: int,
                points: Sequence[int] = REFIT_POINTS, window: int = WINDOW, refit: Refit | None = None) -> dict:
    """Issue #21's goal over `orders` projects made of the same annotations: the seeded stream, then the objects
    shuffled (each domain's by a generator seeded by `seed` and the order's number alone, so that the figures do not
    depend on the order the domains come in, and streams of the same objects share each order). One stream is one
    project, and which objects come first moves its figures by more than the goal's margins; this counts the projects
    that meet the goal (both its parts, and each alone), and averages what is served against the shipped weights
    after the last refit."""
    met = {domain: 0 for domain in streams if domain != "photo"}
    photo_never_worse, both, last = 0, 0, max(points)
    changes: dict[str, list[tuple[float, float]]] = {domain: [] for domain in streams}
    for order in range(orders):
        results = {domain: evaluate_refits(stream if order == 0 else
                                           reordered(stream, np.random.default_rng([seed, 1, order])), prior, refit,
                                           points, window) for domain, stream in streams.items()}
        for domain, refits in results.items():
            end = next(r for r in refits if r["labels"] == last)
            changes[domain].append((_pearson(end["served"]) - _pearson(end["shipped"]),
                                    1 - end["served"]["mae"] / end["shipped"]["mae"]))
        verdicts = {domain: goal(results.get("photo", []), refits, last) for domain, refits in results.items()
                    if domain != "photo"}
        for domain, verdict in verdicts.items():
            met[domain] += verdict["differing_stream_met"]
        never_worse = all(verdict.get("photo_served_never_worse", True) for verdict in verdicts.values())
        photo_never_worse += never_worse
        both += never_worse and all(verdict["differing_stream_met"] for verdict in verdicts.values())
    return {"orders": orders, "at": last, "goal_met": both, "differing_stream_met": met,
            "photo_served_never_worse": photo_never_worse if "photo" in streams else None,
            "served_minus_shipped": {domain: {"pearson": round(float(np.mean([c[0] for c in found])), 4),
                                              "mae_cut": round(float(np.mean([c[1] for c in found])), 4)}
                                     for domain, found in changes.items()}}


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def _pearson(figures: dict) -> float:
    return figures["pearson"] if figures["pearson"] is not None else 0.0


def goal(photo: Sequence[dict], other: Sequence[dict], at: int = 200) -> dict:
    """Issue #21's goal, on what the backend serves (the promoted candidate, else the shipped weights): after
    `at` labels, Pearson at least 0.05 higher or MAE at least 20% lower than the shipped weights on the
    differing stream, and never worse than them on the other, at any refit point (an undefined Pearson: 0)."""
    out: dict = {}
    rows = [r for r in other if r["labels"] == at]
    if rows:
        served, shipped = rows[0]["served"], rows[0]["shipped"]
        out["differing_stream_met"] = bool(_pearson(served) >= _pearson(shipped) + 0.05
                                           or served["mae"] <= 0.8 * shipped["mae"])
    if photo:
        out["photo_served_never_worse"] = all(_pearson(r["served"]) >= _pearson(r["shipped"])
                                              and r["served"]["mae"] <= r["shipped"]["mae"] for r in photo)
    return out


def write_report(out: Path, summary: dict, streams: Mapping[str, Sequence[Annotation]], prior) -> None:
    """summary.json, and stream.csv: every annotation of every stream in order, with the shipped estimate."""
    import csv

    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    with open(out / "stream.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["domain", "position", "task", "object", "name", "clicks", "true_iou", "shipped_estimate"])
        for domain, stream in streams.items():
            for position, row in enumerate(stream):
                estimate = round(float(prior.predict(row.features)[0]), 4) if row.features is not None else ""
                writer.writerow([domain, position, row.task, row.obj, row.name, row.clicks, round(row.iou, 4),
                                 estimate])
