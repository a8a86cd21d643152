"""One way to predict a task, for /predict and for pre-annotation alike: the task in the model's terms, predicted
in its mode (interactive, refine, concepts or auto: prediction.py), and written as Label Studio's prediction."""
from __future__ import annotations

import uuid
from dataclasses import replace

from model.settings import Settings

from .labelstudio import formatting, parsing
from .labelstudio.config import Schema
from .prediction import Predictor
from .schemas import PredictContext, TaskBody
from .serving import Serving
from .sessions import Annotator


def predict_task(settings: Settings, predictor: Predictor, task: TaskBody, schema: Schema, serving: Serving,
                 context: PredictContext | None = None) -> dict | None:
    """Label Studio's prediction for the task ({"result", "score", "model_version"}); None when the task gives
    nothing to predict from (no clicks, no rectangles, no policy and no concepts)."""
    task_input = parsing.task_input(task, schema, context, settings.prompt_fields, serving.agent.on,
                                    settings.max_image_pixels, settings.max_mask_pixels)
    regions = predictor.predict(task_input, schema, serving, Annotator.from_drafts((task.model_extra or {}).get("drafts")))
    if regions is None:
        return None
    if not task_input.interaction.has_geometry and task_input.id is not None:
        # a click on or next to one of these regions later refines it (sessions.py): each keeps its id
        regions = [replace(region, id=region.id or uuid.uuid4().hex[:10]) for region in regions]
        predictor.predicted.record(serving.project, task_input.id, serving.version,
                                   [(region.id or "", region.label, region.mask, region.score) for region in regions])
    return formatting.prediction(regions, schema, serving.version, settings.return_clicks,
                                 settings.polygon_tolerance)
