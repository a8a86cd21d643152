"""Label Studio JSON in, the model's terms out (backend/inputs.py): a predict request's tasks and
context, and a submitted annotation's regions as masks."""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np

from model.core.masks import polygons_to_mask

from ..errors import InvalidRequest, MasksTooLarge
from ..inputs import AnnotationInput, Interaction, PercentBox, PercentClick, Region, Start, TaskInput
from ..schemas import AnnotationBody, PredictContext, TaskBody, TaskData, TaskLabels, Unreadable
from .brush_rle import rle_to_mask
from .config import Schema
from .results import BrushResult, KeypointResult, PolygonResult, RectangleResult, Result, TextAreaResult

log = logging.getLogger(__name__)


class MaskBudget:
    """The pixels a request's masks may take, each within max_pixels and all together within max_total (a
    pixel of a mask is a byte of memory), spent before a mask is made."""

    def __init__(self, max_pixels: int, max_total: int):
        self.max_pixels = max_pixels
        self.max_total = max_total
        self.spent = 0

    def spend(self, results: Sequence[BrushResult | PolygonResult]) -> None:
        for result in results:
            width, height = result.image_size(self.max_pixels)
            self.spent += width * height
        if self.spent > self.max_total:
            raise MasksTooLarge(f"the request's masks would take {self.spent} pixels, more than the "
                                f"{self.max_total} allowed (SEGAGENT_MAX_MASK_PIXELS)")


def task_input(task: TaskBody, schema: Schema, context: PredictContext | None, prompt_fields: tuple[str, ...],
               with_masks: bool, max_pixels: int, max_mask_pixels: int) -> TaskInput:
    image = task.data.get(schema.image_key)
    return TaskInput(id=task.id, image=image if isinstance(image, str) else "",
                     prompt=task_prompt(task.data, prompt_fields), interaction=interaction(context),
                     starts=task_starts(task, schema, with_masks, MaskBudget(max_pixels, max_mask_pixels)))


def task_prompt(data: dict, prompt_fields: tuple[str, ...]) -> str | None:
    for name in prompt_fields:
        value = data.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def interaction(context: PredictContext | None) -> Interaction:
    """Smart keypoints, a smart rectangle, the selected label and TextArea text from a predict context."""
    clicks: list[PercentClick] = []
    box, label, text = None, None, None
    for result in (context.result if context else None) or []:
        if isinstance(result, TextAreaResult):
            text = result.value.text.strip()[:2000] or text
        elif isinstance(result, KeypointResult):
            label = result.label or label
            clicks.append(PercentClick(result.value.x, result.value.y, result.is_positive, result.id))
        elif isinstance(result, RectangleResult):
            label = result.label or label
            box = _box(result, result.id)
    return Interaction(tuple(clicks), box, label, text)


def _box(result: RectangleResult, region_id: str | None) -> PercentBox:
    value = result.value
    return PercentBox(value.x, value.y, value.width, value.height, region_id)


def task_starts(task: TaskBody, schema: Schema, with_masks: bool, budget: MaskBudget) -> list[Start]:
    """Rectangles (and, with_masks, brush masks) a task already has: imported predictions, another model's
    or an earlier version's, or annotations; those of annotations win over those of predictions. A
    malformed one, or a mask past the budget, is skipped with a warning: it is the task's data, not the
    request, that is wrong."""
    wanted = (RectangleResult, BrushResult) if with_masks else (RectangleResult,)
    for labelled in (task.annotations, task.predictions):
        starts: list[Start] = []
        for result in _results(labelled or []):
            if isinstance(result, Unreadable):
                log.warning("task %s: skipping part of a stored annotation or prediction: %s", task.id, result.problem)
            elif isinstance(result, wanted) and result.to_name in (None, schema.image_name):
                try:
                    starts.append(_start(result, schema, budget))
                except InvalidRequest as exc:
                    log.warning("task %s: skipping a %s it already has: %s", task.id, result.kind, exc)
        if starts:
            return starts
    return []


def _results(labelled: list[TaskLabels | Unreadable]) -> Iterator[Result | Unreadable]:
    for item in labelled:
        yield from [item] if isinstance(item, Unreadable) else item.result or []


def _start(result: RectangleResult | BrushResult, schema: Schema, budget: MaskBudget) -> Start:
    label = schema.choose_label(result.label)
    if isinstance(result, RectangleResult):
        return Start(label, box=_box(result, None))
    budget.spend([result])
    return Start(label, mask=decode_brush(result, budget.max_pixels))


def decode_brush(result: BrushResult, max_pixels: int) -> np.ndarray:
    """The bool mask of a brushlabels result (whose RLE fits its image: results.py checked that)."""
    width, height = result.image_size(max_pixels)
    try:
        return rle_to_mask(result.value.rle, height, width)
    except ValueError as exc:
        raise InvalidRequest(f"the RLE does not decode: {exc}") from exc


def decode_polygon(result: PolygonResult, max_pixels: int) -> np.ndarray:
    width, height = result.image_size(max_pixels)
    flat = [coordinate for x, y in result.value.points for coordinate in (x * width / 100.0, y * height / 100.0)]
    return polygons_to_mask([flat], height, width)


def annotation_regions(results: Sequence[Result], schema: Schema, budget: MaskBudget) -> list[Region]:
    """Every brush (and polygon) region of an annotation on the schema's image, as masks (their pixels
    counted against the budget before any is made); brush results that belong to one region id (Label
    Studio may split them) are merged."""
    drawn = [(index, result) for index, result in enumerate(results)
             if isinstance(result, (BrushResult, PolygonResult)) and result.to_name in (None, schema.image_name)]
    budget.spend([result for _, result in drawn])
    max_pixels = budget.max_pixels
    regions: dict[str, Region] = {}
    for index, result in drawn:
        mask = decode_brush(result, max_pixels) if isinstance(result, BrushResult) else decode_polygon(result, max_pixels)
        key = result.id or str(index)
        if key in regions and regions[key].mask.shape == mask.shape:
            regions[key].mask |= mask
        else:
            regions[key] = Region(result.label or "unlabelled", mask, result.kind, result.id)
    return list(regions.values())


def annotation_input(project: str, task: TaskData, annotation: AnnotationBody, schema: Schema,
                     prompt_fields: tuple[str, ...], max_pixels: int, max_mask_pixels: int) -> AnnotationInput:
    image = task.data.get(schema.image_key)
    regions = [] if annotation.was_cancelled else annotation_regions(annotation.result or [], schema,
                                                                     MaskBudget(max_pixels, max_mask_pixels))
    return AnnotationInput(
        project=project, task_id=task.id or 0, annotation_id=annotation.id,
        version=str(annotation.updated_at or annotation.created_at or ""),
        image=image if isinstance(image, str) else "", prompt=task_prompt(task.data, prompt_fields),
        regions=regions, task_data=dict(task.data), cancelled=annotation.was_cancelled)
