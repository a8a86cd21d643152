"""Quality scoring of masks: an estimate of a mask's IoU with the object a description names.

1. With a policy loaded, the policy itself can be the scorer (a process reward model): it is shown
   the mask as an overlay and asked for the mask's IoU, as SegAgent's annotation filtering does. The
   same scorer guides the agent's tree search.
2. Offline (no policy, the default on a CPU): `OfflineScorer`, image evidence read off the mask at
   256 pixels a side (how much GrabCut started from the mask keeps of it; how well the mask agrees
   with superpixels at four scales; how strongly its boundary sits on image edges and separates
   colours; colour-histogram overlap inside and around it; its shape), mapped to an IoU by a small
   MLP (16 features -> 16 -> 16 -> 1) trained on masks corrupted by the protocol of
   model/corruptions.py. Its weights ship in model/quality/weights.json; `python -m model fit-scorer`
   retrains them.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np

from model.core.masks import iou
from model.policies.base import Observation, Policy, PolicyError
from model.policies.prompts import QUALITY_QUESTION, observation_image

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
WORK_SIDE = 256
FEATURES = ("grabcut_keeps", "histogram_overlap", "ring_histogram_overlap", "edge_ratio", "compactness",
            "log_components", "area_fraction", "superpixels_25", "superpixels_50", "superpixels_200",
            "superpixels_800", "strong_edge_support", "canny_support", "boundary_contrast", "log_edge_ratio",
            "log_boundary_contrast")


def _boundary(mask: np.ndarray) -> np.ndarray:
    return cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def _mean(values: np.ndarray, default: float) -> float:
    return float(values.mean()) if values.size else default


def quality_features(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The evidence the offline scorer reads, for a non-empty mask that is not the whole image."""
    from skimage.segmentation import felzenszwalb

    height, width = mask.shape
    scale = min(1.0, WORK_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if scale < 1 else image
    m = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0 if scale < 1 else mask
    if not m.any():  # a sliver that vanished at the working size: read it at its own place
        m = cv2.resize(mask.astype(np.uint8), size, interpolation=cv2.INTER_AREA) > 0
        if not m.any():
            m = np.zeros(small.shape[:2], bool)
            m[min(int(np.argmax(mask.any(axis=1)) * scale), size[1] - 1),
              min(int(np.argmax(mask.any(axis=0)) * scale), size[0] - 1)] = True
    area = int(m.sum())
    radius = max(2, int(0.15 * np.sqrt(area)))
    m8 = m.astype(np.uint8)
    dilated, eroded = cv2.dilate(m8, _disk(radius)) > 0, cv2.erode(m8, _disk(radius)) > 0
    ring, band = dilated & ~m, m & ~eroded

    lab = cv2.cvtColor(small, cv2.COLOR_RGB2LAB)
    bins = (lab // 32).astype(np.int32)
    index = bins[..., 0] * 64 + bins[..., 1] * 8 + bins[..., 2]

    def histogram(selection):
        counts = np.bincount(index[selection], minlength=512).astype(float)
        return counts / max(counts.sum(), 1.0)

    overlap = float(np.sum(np.sqrt(histogram(m) * histogram(~m)))) if (~m).any() else 1.0
    ring_overlap = float(np.sum(np.sqrt(histogram(band) * histogram(ring)))) if ring.any() and band.any() else 1.0

    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gradient = np.asarray(cv2.magnitude(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1)),
                          dtype=np.float32)
    on_boundary = _mean(gradient[_boundary(m)], 0.0)
    step = max(2, radius // 2)
    outside = _mean(gradient[_boundary(cv2.dilate(m8, _disk(step)) > 0)], on_boundary)
    inner = cv2.erode(m8, _disk(step)) > 0
    inside = _mean(gradient[_boundary(inner)], outside) if inner.any() else outside
    edge_ratio = on_boundary / (0.5 * (outside + inside) + 1e-3)

    keeps = _grabcut_keeps(small, m, dilated)
    contours, _ = cv2.findContours(m8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    perimeter = cv2.arcLength(max(contours, key=cv2.contourArea), True) if contours else 0.0
    compactness = 4 * np.pi * area / max(perimeter ** 2, 1.0)
    components = cv2.connectedComponents(m8)[0] - 1

    superpixels = []
    for felzenszwalb_scale in (25, 50, 200, 800):
        segments = felzenszwalb(small, scale=felzenszwalb_scale, sigma=0.8, min_size=20)
        counts = np.bincount(segments.ravel())
        covered = np.bincount(segments.ravel(), weights=m.ravel().astype(float), minlength=len(counts))
        superpixels.append(iou((covered / np.maximum(counts, 1))[segments] > 0.5, m))

    boundary = _boundary(m)
    strong_support = _mean((gradient > np.percentile(gradient, 75))[boundary], 0.0)
    edges = cv2.Canny(gray.astype(np.uint8), 50, 150) > 0
    canny_support = _mean((cv2.dilate(edges.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0)[boundary], 0.0)
    blurred = cv2.blur(lab.astype(np.float32), (5, 5))
    inner_band = m & ~(cv2.erode(m8, np.ones((5, 5), np.uint8)) > 0)
    outer_band = (cv2.dilate(m8, np.ones((5, 5), np.uint8)) > 0) & ~m
    across = float(np.linalg.norm(blurred[inner_band].mean(0) - blurred[outer_band].mean(0))) \
        if inner_band.any() and outer_band.any() else 0.0
    texture = float(np.linalg.norm(np.diff(blurred, axis=1), axis=2).mean()) + 1e-3 if blurred.shape[1] > 1 else 1.0
    contrast = across / texture

    values = [keeps, overlap, ring_overlap, edge_ratio, compactness, np.log(max(components, 1)), area / m.size,
              *superpixels, strong_support, canny_support, contrast, np.log(max(edge_ratio, 1e-3)),
              np.log(max(contrast, 1e-3))]
    return np.nan_to_num(np.asarray(values, np.float64))


def _grabcut_keeps(image: np.ndarray, mask: np.ndarray, around: np.ndarray) -> float:
    """IoU of the mask with what GrabCut makes of it when started from it: a mask that follows the
    object's colours survives; one that does not is pulled toward what the colours say."""
    labels = np.full(mask.shape, cv2.GC_PR_BGD, np.uint8)
    labels[mask] = cv2.GC_PR_FGD
    x, y, w, h = cv2.boundingRect(around.astype(np.uint8))
    pad = int(0.3 * max(w, h)) + 4
    x1, y1 = max(0, x - pad), max(0, y - pad)
    x2, y2 = min(mask.shape[1], x + w + pad), min(mask.shape[0], y + h + pad)
    roi = np.ascontiguousarray(labels[y1:y2, x1:x2])
    if not (roi == cv2.GC_PR_BGD).any() or min(roi.shape) < 2:
        return 1.0
    cv2.setRNGSeed(0)
    # the rect is unused with GC_INIT_WITH_MASK: (0, 0, 0, 0) is the empty Rect that None stood for
    cv2.grabCut(np.ascontiguousarray(image[y1:y2, x1:x2]), roi, (0, 0, 0, 0), np.zeros((1, 65)), np.zeros((1, 65)),
                2, cv2.GC_INIT_WITH_MASK)
    kept = np.zeros_like(mask)
    kept[y1:y2, x1:x2] = (roi == cv2.GC_FGD) | (roi == cv2.GC_PR_FGD)
    return iou(kept, mask)


class QualityModel:
    """Standardised features -> MLP -> sigmoid, evaluated in numpy (no torch needed to score)."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, layers: list[tuple[np.ndarray, np.ndarray]],
                 trained_on: dict | None = None):
        self.mean, self.std, self.layers, self.trained_on = mean, std, layers, trained_on or {}

    def predict(self, features: np.ndarray) -> np.ndarray:
        x = (np.atleast_2d(features) - self.mean) / self.std
        for index, (weight, bias) in enumerate(self.layers):
            x = x @ weight.T + bias
            if index < len(self.layers) - 1:
                x = np.maximum(x, 0.0)
        return 1.0 / (1.0 + np.exp(-x[:, 0]))

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({
            "features": FEATURES, "mean": self.mean.round(6).tolist(), "std": self.std.round(6).tolist(),
            "layers": [[w.round(6).tolist(), b.round(6).tolist()] for w, b in self.layers],
            "trained_on": self.trained_on}))

    @classmethod
    def load(cls, path: Path = WEIGHTS) -> QualityModel:
        data = json.loads(Path(path).read_text())
        if tuple(data["features"]) != FEATURES:
            raise ValueError(f"{path} was trained on other features; retrain it with python -m model fit-scorer")
        return cls(np.array(data["mean"]), np.array(data["std"]),
                   [(np.array(w), np.array(b)) for w, b in data["layers"]], data.get("trained_on"))


def train_quality_model(features: np.ndarray, ious: np.ndarray, seed: int = 0, hidden: int = 16,
                        epochs: int = 300, trained_on: dict | None = None) -> QualityModel:
    import torch

    mean, std = features.mean(0), features.std(0) + 1e-9
    torch.manual_seed(seed)
    inputs = torch.tensor((features - mean) / std, dtype=torch.float32)
    targets = torch.tensor(ious, dtype=torch.float32)
    net = torch.nn.Sequential(torch.nn.Linear(features.shape[1], hidden), torch.nn.ReLU(),
                              torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(epochs):  # full batch: a few thousand rows
        optimizer.zero_grad()
        loss = ((torch.sigmoid(net(inputs)[:, 0]) - targets) ** 2).mean()
        loss.backward()
        optimizer.step()
    layers = [(layer.weight.detach().numpy().astype(np.float64), layer.bias.detach().numpy().astype(np.float64))
              for layer in net if isinstance(layer, torch.nn.Linear)]
    return QualityModel(mean, std, layers, trained_on)


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
