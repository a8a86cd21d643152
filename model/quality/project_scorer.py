"""A project's own quality scorer: the shipped offline scorer (the prior) with a small correction fitted on the
project's labels (the true IoU of its predictions, learned from the annotators' corrections).

The correction works on the prior's logit and the standardised features:

    score = sigmoid(scale * logit(prior(x)) + shift + weights . (x - mean) / std)

fitted by least squares on the IoU with a ridge penalty pulling (scale, shift, weights) toward the identity
(1, 0, 0) with `strength` labels' worth of weight: with few labels the candidate stays the prior, with many it
follows them. Two numbers and a weight per feature (59), fitted in milliseconds (L-BFGS), so a refit needs no
torch and no GPU.

`refit` is the whole step as a plain function: split the labels by task (as the policy's gate does), fit the
candidate on the training tasks, measure it and the active scorer on the held-out tasks (Pearson and MAE) and say
whether it may be promoted (not worse on either).
"""
from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.quality import scorers
from model.quality.scorers import FEATURES, QualityModel


def _features_version() -> str:
    """A tag of what quality_features computes: the version the scorer declares (if it does), the feature names and
    the code of quality_features and of the private helpers of its module. Labels of another tag were computed by
    other code and are not fitted on (they stay stored, counted as stale)."""
    module = inspect.getmodule(scorers.quality_features)
    assert module is not None  # a function defined in a module
    code = "".join(inspect.getsource(function) for name, function in sorted(vars(module).items())
                   if inspect.isfunction(function) and function.__module__ == module.__name__
                   and (name == "quality_features" or name.startswith("_")))
    declared = getattr(scorers, "FEATURES_VERSION", "")
    return hashlib.sha256(f"{declared}\n{','.join(FEATURES)}\n{code}".encode()).hexdigest()[:12]


FEATURES_VERSION = _features_version()
EPSILON = 1e-4  # probabilities clipped away from 0 and 1 before their logit
WEIGHT_PULL = 10.0


class TooFewLabels(ValueError):
    """The labels do not yet allow a split into training and held-out tasks of the sizes needed."""


@dataclass(frozen=True)
class Correction:
    scale: float = 1.0
    shift: float = 0.0
    weights: tuple[float, ...] = field(default_factory=tuple)  # one per feature; empty: none

    def to_json(self) -> dict:
        return {"scale": self.scale, "shift": self.shift, "weights": list(self.weights)}

    @classmethod
    def from_json(cls, data: dict) -> Correction:
        try:
            return cls(float(data["scale"]), float(data["shift"]), tuple(float(w) for w in data["weights"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a correction: {type(exc).__name__} {exc}") from exc


def prior_digest(path: Path = scorers.WEIGHTS) -> str:
    """Which shipped weights a correction was fitted on top of."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPSILON, 1 - EPSILON)
    return np.log(p / (1 - p))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


class CorrectedModel(QualityModel):
    """The prior's prediction corrected; a QualityModel, so OfflineScorer takes it as it is."""

    def __init__(self, prior: QualityModel, correction: Correction):
        super().__init__(prior.mean, prior.std, prior.layers, prior.trained_on)
        self.prior, self.correction = prior, correction

    def predict(self, features: np.ndarray) -> np.ndarray:
        return _sigmoid(_design(self.prior, np.atleast_2d(features)) @ _params(self.correction, self.prior))


def _design(prior: QualityModel, features: np.ndarray) -> np.ndarray:
    """Per row: the prior's logit, 1, the standardised features (clipped: a feature far outside what the prior
    saw moves the score only so far)."""
    standard = np.clip((features - prior.mean) / prior.std, -5, 5)
    return np.column_stack([_logit(prior.predict(features)), np.ones(len(features)), standard])


def _params(correction: Correction, prior: QualityModel) -> np.ndarray:
    weights = correction.weights or (0.0,) * len(prior.mean)
    return np.array([correction.scale, correction.shift, *weights])


def fit_correction(prior: QualityModel, features: np.ndarray, ious: np.ndarray, strength: float = 1.0
                   ) -> CorrectedModel:
    """The correction minimising mean squared error on these labels plus strength/n times the squared distance of
    its numbers from the identity's."""
    from scipy.optimize import minimize

    design = _design(prior, np.asarray(features, np.float64))
    target = np.asarray(ious, np.float64)
    identity = _params(Correction(), prior)
    # the feature weights are pulled WEIGHT_PULL times harder than the calibration (scale, shift): a few labels
    # move the scores' level first, and their ranking only as labels accrue
    penalty = strength / max(len(target), 1) * np.r_[1.0, 1.0, np.full(len(identity) - 2, WEIGHT_PULL)]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        predicted = _sigmoid(design @ theta)
        error = predicted - target
        gradient = 2 * design.T @ (error * predicted * (1 - predicted)) / len(target)
        return (float(np.mean(error ** 2) + np.sum(penalty * (theta - identity) ** 2)),
                gradient + 2 * penalty * (theta - identity))

    theta = minimize(loss, identity, jac=True, method="L-BFGS-B", options={"maxiter": 500}).x
    return CorrectedModel(prior, Correction(float(theta[0]), float(theta[1]), tuple(float(w) for w in theta[2:])))


def held_out_tasks(task_ids: Sequence, fraction: float = 0.2, seed: int = 0) -> set:
    """The tasks held out, by a hash of each task's id, so a task keeps its side as new ones arrive; with two
    tasks or more, at least one on each side (model/flywheel/finetune.py's split_by_task, for labels)."""
    def rank(task: object) -> float:
        digest = hashlib.sha256(f"{seed}:{task}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2 ** 64

    tasks = sorted(set(task_ids), key=rank)
    if len(tasks) < 2:
        return set()
    held = {t for t in tasks if rank(t) < fraction} or {tasks[0]}
    if len(held) == len(tasks):
        held.discard(tasks[-1])
    return held


def figures(predicted: np.ndarray, ious: np.ndarray) -> dict:
    """Pearson (0 where either side is constant) and MAE of scores against true IoUs."""
    predicted, ious = np.asarray(predicted, np.float64), np.asarray(ious, np.float64)
    pearson = 0.0
    if len(ious) > 1 and predicted.std() > 1e-12 and ious.std() > 1e-12:
        pearson = float(np.corrcoef(predicted, ious)[0, 1])
    return {"pearson": round(pearson, 4), "mae": round(float(np.mean(np.abs(predicted - ious))), 4)}


def pearson_noise(pearson: float, labels: int) -> float:
    """One standard error of a Pearson correlation measured on `labels` labels (Fisher's z, whose standard error
    is 1 / sqrt(n - 3), taken back to r by its slope 1 - r^2)."""
    return float((1 - min(pearson * pearson, 1.0)) / np.sqrt(max(labels - 3, 1)))


def decide(candidate: dict, active: dict, held_out: int, tolerance: float = 0.0) -> tuple[bool, str]:
    """(promote, why): not worse than the active scorer on the held-out labels: MAE not higher, Pearson not lower
    by more than its own noise on that many labels (one standard error; a strict Pearson rule rejected candidates
    that did better on the next annotations, docs/benchmarks.md), both give or take `tolerance`."""
    allowance = pearson_noise(active["pearson"], held_out) + tolerance
    worse = []
    if candidate["pearson"] < active["pearson"] - allowance:
        worse.append(f"Pearson {candidate['pearson']:.3f} < {active['pearson']:.3f} - {allowance:.3f}")
    if candidate["mae"] > active["mae"] + tolerance:
        worse.append(f"MAE {candidate['mae']:.4f} > {active['mae']:.4f}")
    if worse:
        return False, "worse than the active scorer on held-out labels: " + "; ".join(worse)
    return True, (f"not worse than the active scorer on held-out labels (Pearson {candidate['pearson']:.3f} vs "
                  f"{active['pearson']:.3f}, allowed {allowance:.3f} lower; MAE {candidate['mae']:.3f} vs "
                  f"{active['mae']:.3f})")


def refit(prior: QualityModel, features: np.ndarray, ious: np.ndarray, task_ids: Sequence,
          active: QualityModel | None = None, *, held_out: float = 0.2, strength: float = 1.0,
          tolerance: float = 0.0, min_held_out: int = 5, seed: int = 0) -> tuple[CorrectedModel, dict, bool]:
    """(candidate, gate figures, promote). The candidate is the prior corrected on the labels of the training
    tasks; the gate measures it and `active` (default: the prior) on the held-out tasks' labels. TooFewLabels
    when there are not two tasks, or fewer than `min_held_out` held-out labels."""
    features, ious = np.atleast_2d(np.asarray(features, np.float64)), np.asarray(ious, np.float64)
    tasks = np.asarray(list(task_ids), dtype=object)
    if not (len(features) == len(ious) == len(tasks)):
        raise ValueError(f"{len(features)} feature rows, {len(ious)} IoUs and {len(tasks)} task ids")
    held = held_out_tasks(list(tasks), held_out, seed)
    test = np.array([t in held for t in tasks], bool)
    if not held or test.sum() < min_held_out or (~test).sum() == 0:
        raise TooFewLabels(f"{len(ious)} labels of {len(set(tasks.tolist()))} tasks: {int(test.sum())} held out, "
                           f"at least {min_held_out} held-out labels of another task than the training ones needed")
    candidate = fit_correction(prior, features[~test], ious[~test], strength)
    mine = figures(candidate.predict(features[test]), ious[test])
    theirs = figures((active or prior).predict(features[test]), ious[test])
    promote, reason = decide(mine, theirs, int(test.sum()), tolerance)
    gate = {"candidate": mine, "active": theirs, "train": int((~test).sum()), "held_out": int(test.sum()),
            "held_out_tasks": len(held), "reason": reason}
    return candidate, gate, promote


def save(model: CorrectedModel, path: Path, prior: str) -> None:
    """The correction alone (the prior is the shipped weights, named by their digest)."""
    path.write_text(json.dumps({**model.correction.to_json(), "prior": prior, "features_version": FEATURES_VERSION}))


def load(path: Path, prior: QualityModel) -> CorrectedModel:
    """ValueError when the file holds no correction of this prior (another number of features, a number that is
    not finite); OSError when it cannot be read."""
    correction = Correction.from_json(json.loads(Path(path).read_text()))
    if len(correction.weights) not in (0, len(prior.mean)):
        raise ValueError(f"{len(correction.weights)} weights for {len(prior.mean)} features")
    if not np.isfinite([correction.scale, correction.shift, *correction.weights]).all():
        raise ValueError("a number that is not finite")
    return CorrectedModel(prior, correction)
