"""Label Studio JSON in, the model's terms out (backend/inputs.py): a predict request's tasks and
context, and a submitted annotation's regions as masks."""
from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
from label_studio_sdk.converter import brush

from model.core.masks import polygons_to_mask

from ..errors import InvalidRequest
from ..inputs import AnnotationInput, Interaction, PercentBox, PercentClick, Region, Start, TaskInput
from ..schemas import AnnotationBody, TaskBody
from .config import Schema
from .geometry import extent, image_size, percent

log = logging.getLogger(__name__)

MAX_RLE_ITEMS = 4_000_000  # an RLE longer than this is refused rather than decoded in pure Python
MAX_POLYGON_POINTS = 100_000


def task_input(task: TaskBody, schema: Schema, context: dict | None, prompt_fields: tuple[str, ...],
               with_masks: bool, max_pixels: int) -> TaskInput:
    image = task.data.get(schema.image_key)
    return TaskInput(id=task.id, image=image if isinstance(image, str) else "",
                     prompt=task_prompt(task.data, prompt_fields), interaction=interaction(context, schema),
                     starts=task_starts(task, schema, with_masks, max_pixels))


def task_prompt(data: dict, prompt_fields: tuple[str, ...]) -> str | None:
    for name in prompt_fields:
        value = data.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _value(result: dict) -> dict:
    value = result.get("value")
    return value if isinstance(value, dict) else {}


def _labels(value: dict, kind: str) -> list[str]:
    labels = value.get(kind)
    if labels is None:
        return []
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise InvalidRequest(f"value.{kind} must be a list of label names")
    return labels


def interaction(context: dict | None, schema: Schema) -> Interaction:
    """Smart keypoints, a smart rectangle, the selected label and TextArea text from a predict context."""
    results = (context or {}).get("result") or []
    if not isinstance(results, list):
        raise InvalidRequest("params.context.result must be a list")
    clicks: list[PercentClick] = []
    box, label, text = None, None, None
    for item in results:
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            raise InvalidRequest("every context result needs a 'value' object")
        kind, value = str(item.get("type", "")).lower(), item["value"]
        if kind == "textarea":
            words = value.get("text")
            words = " ".join(map(str, words)) if isinstance(words, list) else words
            text = words.strip()[:2000] if isinstance(words, str) and words.strip() else text
        elif kind in ("keypointlabels", "rectanglelabels"):
            label = next(iter(_labels(value, kind)), label)
            x, y = percent(value.get("x"), "value.x"), percent(value.get("y"), "value.y")
            if kind == "keypointlabels":
                clicks.append(PercentClick(x, y, bool(item.get("is_positive", True)), _region_id(item)))
            else:
                box = PercentBox(x, y, extent(value.get("width"), "value.width"),
                                 extent(value.get("height"), "value.height"), _region_id(item))
    return Interaction(tuple(clicks), box, label, text)


def _region_id(item: dict) -> str | None:
    """The region's id in the labeling editor, which it sends again with each request until accepted."""
    value = item.get("id")
    return str(value)[:64] if isinstance(value, (str, int)) and not isinstance(value, bool) and value != "" else None


def _task_results(task: TaskBody, schema: Schema, kinds: tuple[str, ...]) -> Iterator[tuple[str, dict]]:
    """(origin, result) for the task's annotations first, then its predictions."""
    for origin in ("annotations", "predictions"):
        for item in getattr(task, origin) or []:
            results = item.get("result") if isinstance(item, dict) else None
            for result in results if isinstance(results, list) else []:
                if (isinstance(result, dict) and str(result.get("type", "")).lower() in kinds
                        and result.get("to_name") in (None, schema.image_name)):
                    yield origin, result


def task_starts(task: TaskBody, schema: Schema, with_masks: bool, max_pixels: int) -> list[Start]:
    """Rectangles (and, with_masks, brush masks) a task already has: imported predictions, another model's
    or an earlier version's, or annotations; those of annotations win over those of predictions. A
    malformed one is skipped with a warning: it is the task's data, not the request, that is wrong."""
    kinds = ("rectanglelabels", "brushlabels") if with_masks else ("rectanglelabels",)
    found: dict[str, list[Start]] = {"annotations": [], "predictions": []}
    for origin, result in _task_results(task, schema, kinds):
        value = _value(result)
        kind = str(result["type"]).lower()
        try:
            label = schema.choose_label(next(iter(_labels(value, kind)), None))
            if kind == "rectanglelabels":
                box = PercentBox(percent(value.get("x"), "value.x"), percent(value.get("y"), "value.y"),
                                 extent(value.get("width"), "value.width"),
                                 extent(value.get("height"), "value.height"))
                found[origin].append(Start(label, box=box))
            else:
                found[origin].append(Start(label, mask=decode_brush(result, max_pixels)))
        except InvalidRequest as exc:
            log.warning("task %s: skipping a %s it already has: %s", task.id, kind, exc)
    return found["annotations"] or found["predictions"]


def decode_brush(result: dict, max_pixels: int) -> np.ndarray:
    """The bool mask of a brushlabels result; InvalidRequest when the RLE is malformed or oversized."""
    value = _value(result)
    rle = value.get("rle", result.get("rle"))
    width, height = image_size(result, max_pixels)
    if not isinstance(rle, list) or len(rle) < 8 or len(rle) > MAX_RLE_ITEMS:
        raise InvalidRequest("a brush result's 'rle' must be a list of byte values")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in rle):
        raise InvalidRequest("a brush result's 'rle' holds values that are not bytes")
    declared = int.from_bytes(bytes(rle[:4]), "big")
    if declared != width * height * 4:
        raise InvalidRequest(f"the RLE declares {declared} values, the image needs {width * height * 4}")
    try:
        flat = brush.decode_rle(rle)
    except Exception as exc:  # the SDK's decoder raises whatever the bytes make it raise
        raise InvalidRequest(f"the RLE does not decode: {type(exc).__name__}") from exc
    return flat.reshape(height, width, 4)[:, :, 3] > 0


def decode_polygon(result: dict, max_pixels: int) -> np.ndarray:
    width, height = image_size(result, max_pixels)
    points = (result.get("value") or {}).get("points")
    if not isinstance(points, list) or not 3 <= len(points) <= MAX_POLYGON_POINTS:
        raise InvalidRequest("a polygon result needs value.points: a list of at least 3 [x, y] points")
    flat: list[float] = []
    for point in points:
        if not isinstance(point, (list, tuple)) or len(point) != 2:
            raise InvalidRequest("a polygon point must be [x, y]")
        flat += [percent(point[0], "a polygon's x") * width / 100.0, percent(point[1], "a polygon's y") * height / 100.0]
    return polygons_to_mask([flat], height, width)


def annotation_regions(results: list[dict[str, Any]], schema: Schema, max_pixels: int) -> list[Region]:
    """Every brush (and polygon) region of an annotation on the schema's image, as masks; brush
    results that belong to one region id (Label Studio may split them) are merged."""
    regions: dict[str, Region] = {}
    for index, result in enumerate(results):
        kind = str(result.get("type", "")).lower()
        if result.get("to_name") not in (None, schema.image_name) or kind not in ("brushlabels", "polygonlabels"):
            continue
        value = _value(result)
        mask = decode_brush(result, max_pixels) if kind == "brushlabels" else decode_polygon(result, max_pixels)
        label = next(iter(_labels(value, kind)), "unlabelled")
        key = str(result.get("id") or index)
        if key in regions and regions[key].mask.shape == mask.shape:
            regions[key].mask |= mask
        else:
            regions[key] = Region(label, mask, kind, str(result["id"]) if result.get("id") else None)
    return list(regions.values())


def annotation_input(project: str, task: TaskBody, annotation: AnnotationBody, schema: Schema,
                     prompt_fields: tuple[str, ...], max_pixels: int) -> AnnotationInput:
    image = task.data.get(schema.image_key)
    regions = [] if annotation.was_cancelled else annotation_regions(annotation.result or [], schema, max_pixels)
    return AnnotationInput(
        project=project, task_id=task.id or 0, annotation_id=annotation.id,
        version=str(annotation.updated_at or annotation.created_at or ""),
        image=image if isinstance(image, str) else "", prompt=task_prompt(task.data, prompt_fields),
        regions=regions, task_data=dict(task.data), cancelled=annotation.was_cancelled)
