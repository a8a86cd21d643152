"""Quality scoring of masks: an estimate of a mask's IoU with the object a description names.

1. With a policy loaded, the policy itself can be the scorer (a process reward model): it is shown
   the mask as an overlay and asked for the mask's IoU, as SegAgent's annotation filtering does. The
   same scorer guides the agent's tree search.
2. Offline (no policy, the default on a CPU): `OfflineScorer`, image evidence read off the mask at
   256 pixels a side (model/quality/features.py: GrabCut, superpixels, edges and colours at and
   around its boundary, where that evidence puts the boundary instead, its shape), mapped to an IoU
   by a small MLP (57 features -> 16 -> 16 -> 1) trained on masks corrupted by the protocol of
   model/quality/corruptions.py. Its weights ship in model/quality/weights.json; `python -m model fit-scorer`
   retrains them.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from model.policies.base import Observation, Policy, PolicyError
from model.policies.prompts import QUALITY_QUESTION, observation_image
from model.quality.features import FEATURES, FEATURES_VERSION, WORK_SIDE, quality_features

__all__ = ["FEATURES", "FEATURES_VERSION", "WORK_SIDE", "OfflineScorer", "PolicyScorer", "QualityModel",
           "parse_quality", "quality_features", "train_quality_model"]

_NUMBER = re.compile(r"(\d+(?:\.\d+)?)\s*(%?)")


def parse_quality(text: str) -> float | None:
    """The IoU an answer states, as a fraction; None when it states none. 0-100 (or a percent) and
    0-1 are both understood."""
    match = _NUMBER.search(text or "")
    if not match:
        return None
    value = float(match.group(1))
    if match.group(2) == "%" or value > 1.0:
        value /= 100.0
    return value if 0.0 <= value <= 1.0 else None


class PolicyScorer:
    """The policy asked for the mask's IoU; the mean of `samples` answers that parse."""

    def __init__(self, policy: Policy, samples: int = 1, observation_side: int = 448, observation: str = "segagent"):
        self.policy = policy
        self.samples = samples
        self.observation_side = observation_side
        self.observation = observation  # the policy's family: what it is shown (model/policies/prompts.py)

    def __call__(self, image: np.ndarray, mask: np.ndarray, description: str) -> float:
        picture = observation_image(image, mask, max_side=self.observation_side, observation=self.observation)
        question = QUALITY_QUESTION.format(description=description.strip() or "the object")
        [answers] = self.policy.act([Observation(picture, question)], samples=self.samples,
                                    temperature=0.0 if self.samples == 1 else 0.7)
        values = [v for v in (parse_quality(a) for a in answers) if v is not None]
        if not values:
            raise PolicyError(f"the policy stated no IoU: {answers[:1]}")
        return float(np.mean(values))


# ---------------------------------------------------------------- offline: image evidence + a small MLP

WEIGHTS = Path(__file__).with_name("weights.json")


class QualityModel:
    """Features clipped to the range seen in training (1st to 99th percentile) and standardised -> MLP ->
    sigmoid, evaluated in numpy (no torch needed to score)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]],
                 trained_on: dict | None = None, low: np.ndarray | None = None, high: np.ndarray | None = None):
        self.mean, self.std, self.layers, self.trained_on = mean, std, layers, trained_on or {}
        self.low = np.full(len(mean), -np.inf) if low is None else low
        self.high = np.full(len(mean), np.inf) if high is None else high

    def predict(self, features: np.ndarray) -> np.ndarray:
        x = (np.clip(np.atleast_2d(features), self.low, self.high) - self.mean) / self.std
        for index, (weight, bias) in enumerate(self.layers):
            x = x @ weight.T + bias
            if index < len(self.layers) - 1:
                x = np.maximum(x, 0.0)
        return 1.0 / (1.0 + np.exp(-np.clip(x[:, 0], -50, 50)))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({
            "features": FEATURES, "features_version": FEATURES_VERSION, "low": _listed(self.low),
            "high": _listed(self.high), "mean": self.mean.round(6).tolist(), "std": self.std.round(6).tolist(),
            "layers": [[w.round(6).tolist(), b.round(6).tolist()] for w, b in self.layers],
            "trained_on": self.trained_on}))

    @classmethod
    def load(cls, path: Path = WEIGHTS) -> QualityModel:
        data = json.loads(Path(path).read_text())
        if tuple(data["features"]) != FEATURES or data.get("features_version", 1) != FEATURES_VERSION:
            raise ValueError(f"{path} was trained on other features; retrain it with python -m model fit-scorer")
        bounds = [np.array([fill if v is None else v for v in data[key]], float) if key in data else None
                  for key, fill in (("low", -np.inf), ("high", np.inf))]
        return cls(np.array(data["mean"]), np.array(data["std"]),
                   [(np.array(w), np.array(b)) for w, b in data["layers"]], data.get("trained_on"), *bounds)


def _listed(bound: np.ndarray) -> list:
    """A clipping bound as JSON: an infinite one (no clipping) as null."""
    return [None if not np.isfinite(v) else round(float(v), 6) for v in bound]


def train_quality_model(features: np.ndarray, ious: np.ndarray, seed: int = 0, hidden: int = 16,
                        epochs: int = 300, trained_on: dict | None = None, dropout: float = 0.2) -> QualityModel:
    """An MLP (two hidden layers) fitted to the IoUs by cross-entropy on features clipped to their 1st-99th
    percentiles: the clipping keeps a few extreme ratios from steering the fit, the dropout and weight decay
    keep it from learning the training objects by heart (it generalised worse to other objects without)."""
    import torch

    low, high = np.quantile(features, 0.01, axis=0), np.quantile(features, 0.99, axis=0)
    clipped = np.clip(features, low, high)
    mean, std = clipped.mean(0), clipped.std(0) + 1e-9
    torch.manual_seed(seed)
    inputs = torch.tensor((clipped - mean) / std, dtype=torch.float32)
    targets = torch.tensor(ious, dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Linear(features.shape[1], hidden), torch.nn.ReLU(), torch.nn.Dropout(dropout),
                              torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Dropout(dropout),
                              torch.nn.Linear(hidden, 1))
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-2)
    for _ in range(epochs):  # full batch: a few thousand rows
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(inputs)[:, 0], targets)
        loss.backward()
        optimizer.step()
    net.eval()
    layers = [(layer.weight.detach().numpy().astype(np.float64), layer.bias.detach().numpy().astype(np.float64))
              for layer in net if isinstance(layer, torch.nn.Linear)]
    return QualityModel(mean, std, layers, trained_on, low, high)


class OfflineScorer:
    """Estimated IoU of a mask from image evidence alone; defined for every mask of the image's size."""

    def __init__(self, model: QualityModel | None = None):
        self.model = model or QualityModel.load()

    def __call__(self, image: np.ndarray, mask: np.ndarray, description: str = "") -> float:
        if mask.shape != image.shape[:2]:
            raise ValueError(f"the mask is {mask.shape[1]} x {mask.shape[0]}, the image "
                             f"{image.shape[1]} x {image.shape[0]}")
        if not mask.any():
            return 0.0  # an empty mask covers no object
        if mask.all():
            return 0.0  # the whole image is no object's outline
        return float(self.model.predict(quality_features(image, mask))[0])
