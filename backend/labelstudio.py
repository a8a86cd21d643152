"""Label Studio's formats: label configs, interactive contexts, brush results and annotations.

Coordinates arrive and leave as percentages of the image size (Label Studio's convention) and are
converted to pixels here, in one place.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

import numpy as np
from label_studio_sdk.converter import brush
from label_studio_sdk.label_interface import LabelInterface

from model.core.clicks import Click
from model.core.masks import polygons_to_mask

from .errors import ApiError, BadConfig

log = logging.getLogger(__name__)

MAX_RLE_ITEMS = 4_000_000  # an RLE longer than this is refused rather than decoded in pure Python


@dataclass(frozen=True)
class Schema:
    """What the backend uses of a label config."""

    image_name: str
    image_key: str  # the task data field holding the image URL
    brush_name: str
    labels: tuple[str, ...]
    keypoint_names: tuple[str, ...] = ()
    rectangle_names: tuple[str, ...] = ()
    textarea_names: tuple[str, ...] = ()
    polygon_names: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: str) -> "Schema":
        if not isinstance(config, str) or not config.strip():
            raise BadConfig("the request has no label_config, and no project was set up with one")
        try:
            interface = LabelInterface(config)
        except Exception as exc:
            raise BadConfig(f"the label config is not valid XML: {exc}") from exc
        images = [o for o in interface.objects if o.tag == "Image"]
        if not images:
            raise BadConfig("the label config has no <Image> tag")
        image_names = {o.name: o for o in images}
        brushes = [c for c in interface.controls if c.tag == "BrushLabels" and set(c.to_name) & set(image_names)]
        if not brushes:
            raise BadConfig("the label config has no <BrushLabels> tag bound to an <Image>")
        control = brushes[0]
        image = image_names[next(n for n in control.to_name if n in image_names)]
        bound = [c for c in interface.controls if image.name in (c.to_name or [])]

        def names(tag: str) -> tuple[str, ...]:
            return tuple(c.name for c in bound if c.tag == tag)

        return cls(
            image_name=image.name,
            image_key=image.value.lstrip("$"),
            brush_name=control.name,
            labels=tuple(control.labels),
            keypoint_names=names("KeyPointLabels"),
            rectangle_names=names("RectangleLabels"),
            textarea_names=tuple(c.name for c in interface.controls if c.tag == "TextArea"),
            polygon_names=names("PolygonLabels"),
        )


@dataclass
class Interaction:
    """What an annotator did in the labeling editor: clicks, a box, the label and a text prompt."""

    clicks: list[Click] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None
    label: str | None = None
    text: str | None = None

    @property
    def empty(self) -> bool:
        return not self.clicks and self.box is None


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise ApiError(f"{what} must be a number, got {value!r}")
    return float(value)


def parse_context(context, schema: Schema, width: int, height: int) -> Interaction:
    """Smart keypoints, a rectangle, the selected label and TextArea text from a predict context."""
    interaction = Interaction()
    if context is None:
        return interaction
    if not isinstance(context, dict):
        raise ApiError("params.context must be an object")
    results = context.get("result") or []
    if not isinstance(results, list):
        raise ApiError("params.context.result must be a list")
    for item in results:
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            raise ApiError("every context result needs a 'value' object")
        kind = str(item.get("type", "")).lower()
        value = item["value"]
        if kind == "textarea":
            text = value.get("text")
            text = " ".join(map(str, text)) if isinstance(text, list) else text
            if isinstance(text, str) and text.strip():
                interaction.text = text.strip()
            continue
        if kind not in ("keypointlabels", "rectanglelabels"):
            continue
        x = _number(value.get("x"), "value.x") * width / 100.0
        y = _number(value.get("y"), "value.y") * height / 100.0
        labels = value.get(kind)
        if isinstance(labels, list) and labels:
            interaction.label = str(labels[0])
        if kind == "keypointlabels":
            click = Click(x, y, bool(item.get("is_positive", True)))
            if not (-0.5 <= x <= width + 0.5 and -0.5 <= y <= height + 0.5):
                raise ApiError(f"keypoint ({value.get('x')}%, {value.get('y')}%) lies outside the image")
            interaction.clicks.append(click.clipped(width, height))
        else:
            w = _number(value.get("width"), "value.width") * width / 100.0
            h = _number(value.get("height"), "value.height") * height / 100.0
            interaction.box = (x, y, x + w, y + h)
    return interaction


def choose_label(schema: Schema, wanted: str | None) -> str:
    """The brush label for a region: the one asked for if the BrushLabels tag has it, else the only one."""
    if wanted and wanted in schema.labels:
        return wanted
    if len(schema.labels) == 1:
        return schema.labels[0]
    if wanted:
        raise ApiError(f"label {wanted!r} is not one of the BrushLabels {list(schema.labels)}")
    raise ApiError("several BrushLabels and none selected: select a label first")


def task_prompt(task: dict, prompt_fields: tuple[str, ...]) -> str | None:
    data = task.get("data") or {}
    for name in prompt_fields:
        value = data.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def brush_region(mask: np.ndarray, schema: Schema, label: str, score: float) -> dict:
    """A brushlabels result in Label Studio's RLE format."""
    height, width = mask.shape
    return {
        "id": uuid.uuid4().hex[:10],
        "from_name": schema.brush_name,
        "to_name": schema.image_name,
        "type": "brushlabels",
        "origin": "prediction",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": brush.mask2rle(mask.astype(np.uint8) * 255),
                  "brushlabels": [label]},
        "score": round(float(score), 4),
        "readonly": False,
    }


def keypoint_regions(clicks, shape: tuple[int, int], schema: "Schema", label: str) -> list[dict]:
    """The agent's clicks as keypoint regions, so annotators see why the mask is what it is."""
    height, width = shape
    return [{
        "id": uuid.uuid4().hex[:10], "from_name": schema.keypoint_names[0], "to_name": schema.image_name,
        "type": "keypointlabels", "origin": "prediction", "original_width": int(width),
        "original_height": int(height), "image_rotation": 0, "is_positive": bool(click.positive),
        "value": {"x": 100.0 * click.x / width, "y": 100.0 * click.y / height, "width": 0.5,
                  "keypointlabels": [label]},
        "readonly": True,
    } for click in clicks]


def decode_brush(result: dict, max_pixels: int) -> np.ndarray:
    """The bool mask of a brushlabels result; ApiError when the RLE is malformed or oversized."""
    value = result.get("value") or {}
    rle = value.get("rle", result.get("rle"))
    width, height = result.get("original_width"), result.get("original_height")
    if not isinstance(width, int) or not isinstance(height, int) or width < 1 or height < 1:
        raise ApiError("a brush result needs positive integer original_width and original_height")
    if width * height > max_pixels:
        raise ApiError(f"a brush result of {width} x {height} pixels is larger than allowed")
    if not isinstance(rle, list) or len(rle) < 8 or len(rle) > MAX_RLE_ITEMS:
        raise ApiError("a brush result's 'rle' must be a list of byte values")
    if not all(isinstance(v, int) and 0 <= v <= 255 for v in rle):
        raise ApiError("a brush result's 'rle' holds values that are not bytes")
    declared = int.from_bytes(bytes(rle[:4]), "big")
    if declared != width * height * 4:
        raise ApiError(f"the RLE declares {declared} values, the image needs {width * height * 4}")
    try:
        flat = brush.decode_rle(rle)
    except Exception as exc:
        raise ApiError(f"the RLE does not decode: {exc}") from exc
    return flat.reshape(height, width, 4)[:, :, 3] > 0


def decode_polygon(result: dict) -> np.ndarray:
    width, height = result["original_width"], result["original_height"]
    points = result["value"]["points"]
    flat = [coord for x, y in points for coord in (x * width / 100.0, y * height / 100.0)]
    return polygons_to_mask([flat], height, width)


@dataclass
class Region:
    label: str
    mask: np.ndarray
    source: str  # brushlabels or polygonlabels


def annotation_regions(results: list, schema: Schema, max_pixels: int) -> list[Region]:
    """Every brush (and polygon) region of an annotation on the schema's image, as masks; brush
    results that belong to one region id (Label Studio may split them) are merged."""
    regions: dict[str, Region] = {}
    for index, result in enumerate(results or []):
        if not isinstance(result, dict):
            raise ApiError("annotation results must be objects")
        kind = str(result.get("type", "")).lower()
        if result.get("to_name") not in (None, schema.image_name):
            continue
        if kind == "brushlabels":
            mask, source = decode_brush(result, max_pixels), kind
        elif kind == "polygonlabels":
            try:
                mask, source = decode_polygon(result), kind
            except (KeyError, TypeError, ValueError) as exc:
                raise ApiError(f"a polygon result is malformed: {exc}") from exc
        else:
            continue
        labels = (result.get("value") or {}).get(kind) or ["unlabelled"]
        key = str(result.get("id") or index)
        if key in regions and regions[key].mask.shape == mask.shape:
            regions[key].mask |= mask
        else:
            regions[key] = Region(str(labels[0]), mask, source)
    return list(regions.values())


@dataclass
class Start:
    """Where an episode starts in refine mode: a box (pixels) or a mask the task already has."""

    label: str | None
    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = None


def _task_results(task: dict, schema: Schema, kinds: tuple[str, ...]):
    """(origin, result) for the task's annotations first, then its predictions."""
    for origin in ("annotations", "predictions"):
        for item in task.get(origin) or []:
            for result in (item or {}).get("result") or [] if isinstance(item, dict) else []:
                if (isinstance(result, dict) and str(result.get("type", "")).lower() in kinds
                        and result.get("to_name") in (None, schema.image_name)):
                    yield origin, result


def has_starts(task: dict, schema: Schema, with_masks: bool) -> bool:
    kinds = ("rectanglelabels", "brushlabels") if with_masks else ("rectanglelabels",)
    return any(True for _ in _task_results(task, schema, kinds))


def task_starts(task: dict, schema: Schema, width: int, height: int, with_masks: bool,
                max_pixels: int) -> list[Start]:
    """Rectangles (and, with_masks, brush masks) a task already has: imported predictions, another model's
    or an earlier version's, or annotations; those of annotations win over those of predictions."""
    kinds = ("rectanglelabels", "brushlabels") if with_masks else ("rectanglelabels",)
    found: dict[str, list[Start]] = {"annotations": [], "predictions": []}
    for origin, result in _task_results(task, schema, kinds):
        value = result.get("value") or {}
        kind = str(result["type"]).lower()
        labels = value.get(kind) or [None]
        try:
            if kind == "rectanglelabels":
                x, y = float(value["x"]) * width / 100.0, float(value["y"]) * height / 100.0
                w, h = float(value["width"]) * width / 100.0, float(value["height"]) * height / 100.0
                found[origin].append(Start(labels[0], box=(x, y, x + w, y + h)))
            else:
                mask = decode_brush(result, max_pixels)
                if mask.shape != (height, width):
                    raise ValueError(f"a {mask.shape[1]} x {mask.shape[0]} mask on a {width} x {height} image")
                found[origin].append(Start(labels[0], mask=mask))
        except (ApiError, KeyError, TypeError, ValueError) as exc:
            log.warning("task %s: skipping a %s it already has: %s", task.get("id"), kind, exc)
    return found["annotations"] or found["predictions"]
