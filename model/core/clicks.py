"""A click on an image: the unit of interaction between annotator, policy and tool."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Click:
    """A click in pixel coordinates (x to the right, y down); positive adds, negative removes."""

    x: float
    y: float
    positive: bool

    def clipped(self, width: int, height: int) -> Click:
        """The same click moved inside an image of the given size."""
        return Click(min(max(self.x, 0.0), width - 1.0), min(max(self.y, 0.0), height - 1.0), self.positive)

    def inside(self, width: int, height: int) -> bool:
        return 0 <= self.x < width and 0 <= self.y < height

    @property
    def pixel(self) -> tuple[int, int]:
        """(row, column) of the pixel the click falls on."""
        return int(self.y), int(self.x)
