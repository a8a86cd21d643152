"""The action grammar between policy and tool: the one place that formats and parses action text.

    Positive point: (x, y)      add the pixel's region to the mask
    Negative point: (x, y)      remove it
    <box>(x1,y1),(x2,y2)</box>  an optional box before a point (the released model may emit one)
    Finish                      the mask is done

Coordinates are integers in [0, 1000) by default (what the released SegAgent model emits), or floats
in [0, 1). SegAgent's released Qwen checkpoint writes points as (row, column): `Coordinates(order="yx")`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from model.core.clicks import Click

_NUMBER = r"[-+]?\d+(?:\.\d+)?"
_POINT = re.compile(rf"(positive|negative)\s*point\s*[:=]?\s*[\(\[]\s*({_NUMBER})\s*,\s*({_NUMBER})\s*[\)\]]",
                    re.IGNORECASE)
_BOX = re.compile(rf"<box>\s*\(\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\)\s*,\s*\(\s*({_NUMBER})\s*,\s*({_NUMBER})\s*\)\s*</box>",
                  re.IGNORECASE)
_FINISH = re.compile(r"^\W*(finish|finished|done|stop)\b", re.IGNORECASE)


class ActionParseError(ValueError):
    """The text holds no valid action."""


@dataclass(frozen=True)
class Coordinates:
    scale: Literal["int1000", "unit"] = "int1000"
    order: Literal["xy", "yx"] = "xy"

    def to_text(self, fx: float, fy: float) -> tuple[str, str]:
        """Fractions of width and height -> the two numbers as the policy writes them."""
        if self.scale == "int1000":
            a, b = (str(min(int(f * 1000), 999)) for f in (fx, fy))
        else:
            a, b = (f"{min(f, 0.999):.3f}" for f in (fx, fy))
        return (a, b) if self.order == "xy" else (b, a)

    def to_fractions(self, first: str, second: str) -> tuple[float, float]:
        """The two numbers of the text -> fractions (fx, fy) in [0, 1); ActionParseError when out of range."""
        values = []
        for text in (first, second):
            if self.scale == "int1000":
                if not re.fullmatch(r"[-+]?\d+", text):
                    raise ActionParseError(f"{text!r} is not an integer coordinate")
                integer = int(text)
                if not 0 <= integer < 1000:
                    raise ActionParseError(f"coordinate {integer} is outside [0, 1000)")
                values.append(integer / 1000.0)
            else:
                fraction = float(text)
                if not 0 <= fraction < 1:
                    raise ActionParseError(f"coordinate {fraction} is outside [0, 1)")
                values.append(fraction)
        fa, fb = values
        return (fa, fb) if self.order == "xy" else (fb, fa)


@dataclass(frozen=True)
class Action:
    """A parsed action, in fractions of the image size: kind is "positive", "negative" or "finish"."""

    kind: Literal["positive", "negative", "finish"]
    point: tuple[float, float] | None = None  # (fx, fy)
    box: tuple[float, float, float, float] | None = None  # (fx1, fy1, fx2, fy2)

    def click(self, width: int, height: int) -> Click:
        if self.point is None:
            raise ValueError("a finish action has no click")
        fx, fy = self.point
        return Click(min(fx * width, width - 1.0), min(fy * height, height - 1.0), self.kind == "positive")

    def pixel_box(self, width: int, height: int) -> tuple[float, float, float, float] | None:
        if self.box is None:
            return None
        x1, y1, x2, y2 = self.box
        return x1 * width, y1 * height, x2 * width, y2 * height


def parse_action(text: str, coords: Coordinates = Coordinates()) -> Action:
    """The action a policy's answer holds. Never raises anything but ActionParseError."""
    if not isinstance(text, str):
        raise ActionParseError("the answer is not text")
    box = None
    box_match = _BOX.search(text)
    if box_match:
        x1, y1 = coords.to_fractions(box_match.group(1), box_match.group(2))
        x2, y2 = coords.to_fractions(box_match.group(3), box_match.group(4))
        if coords.order == "yx":  # boxes are (x, y) even where points are (y, x), as Qwen-VL writes them
            x1, y1, x2, y2 = y1, x1, y2, x2
        box = (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
    point = _POINT.search(text)
    if point:
        fx, fy = coords.to_fractions(point.group(2), point.group(3))
        return Action("positive" if point.group(1).lower() == "positive" else "negative", (fx, fy), box)
    if _FINISH.search(text.strip()):
        return Action("finish")
    raise ActionParseError(f"no action in {text[:80]!r}")


def format_action(action: Action, coords: Coordinates = Coordinates()) -> str:
    """The text of an action, as a policy should write it (training targets use this)."""
    if action.kind == "finish":
        return "Finish"
    assert action.point is not None, "a positive or negative action has a point"  # as parse_action makes them
    a, b = coords.to_text(*action.point)
    text = f"{'Positive' if action.kind == 'positive' else 'Negative'} point: ({a}, {b})"
    if action.box is not None:
        x1, y1, x2, y2 = action.box
        p1, p2 = Coordinates(coords.scale).to_text(x1, y1), Coordinates(coords.scale).to_text(x2, y2)
        text = f"<box>({p1[0]},{p1[1]}),({p2[0]},{p2[1]})</box> {text}"
    return text


def action_for_click(click: Click, width: int, height: int) -> Action:
    return Action("positive" if click.positive else "negative", (click.x / width, click.y / height))
