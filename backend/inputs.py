"""What a request asks for, in the model's terms: validated once at the edge (schemas.py, with the Label
Studio results typed by labelstudio/results.py), turned into these by labelstudio/parsing.py, then predicted
or learned from. Positions stay in Label Studio's percentages until the image's size is known; `to_pixels`
is the one place they become pixels."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from model.core.clicks import Click


@dataclass(frozen=True)
class PercentBox:
    x: float
    y: float
    width: float
    height: float
    id: str | None = None  # the rectangle region's id in Label Studio

    def to_pixels(self, width: int, height: int) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in pixels, clipped to the image."""
        x0, y0 = max(self.x, 0.0) * width / 100.0, max(self.y, 0.0) * height / 100.0
        x1 = min(self.x + self.width, 100.0) * width / 100.0
        y1 = min(self.y + self.height, 100.0) * height / 100.0
        return x0, y0, x1, y1


@dataclass(frozen=True)
class PercentClick:
    x: float
    y: float
    positive: bool
    id: str | None = None  # the keypoint region's id in Label Studio: it says which clicks a request sent before

    def to_pixels(self, width: int, height: int) -> Click:
        return Click(self.x * width / 100.0, self.y * height / 100.0, self.positive).clipped(width, height)


@dataclass(frozen=True)
class Interaction:
    """What an annotator did in the labeling editor: smart clicks, a smart box, the label, a text prompt."""

    clicks: tuple[PercentClick, ...] = ()
    box: PercentBox | None = None
    label: str | None = None
    text: str | None = None

    @property
    def has_geometry(self) -> bool:
        return bool(self.clicks) or self.box is not None


@dataclass
class Start:
    """Where refine mode starts: a box or a mask the task already has."""

    label: str
    box: PercentBox | None = None
    mask: np.ndarray | None = None


@dataclass
class TaskInput:
    """One task of a predict request."""

    id: int | None
    image: str  # the reference in the task's image field
    prompt: str | None = None
    interaction: Interaction = field(default_factory=Interaction)
    starts: list[Start] = field(default_factory=list)


@dataclass
class Region:
    """A submitted region: its label, its mask, and the result type it came as."""

    label: str
    mask: np.ndarray
    source: str  # brushlabels or polygonlabels
    region_id: str | None = None  # Label Studio's id: the backend's object id when it was a suggestion accepted


@dataclass
class AnnotationInput:
    """An annotation Label Studio submitted (created, updated or sent with /train)."""

    project: str
    task_id: int
    annotation_id: int
    version: str  # updated_at (or created_at): a replay of the same version changes nothing
    image: str
    prompt: str | None
    regions: list[Region]
    task_data: dict
    cancelled: bool = False
