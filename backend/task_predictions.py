"""One way to predict a task, for /predict and for pre-annotation alike: the task in the model's terms, predicted
in its mode (interactive, refine or auto: prediction.py), and written as Label Studio's prediction."""
from __future__ import annotations

from model.settings import Settings

from .labelstudio import formatting, parsing
from .labelstudio.config import Schema
from .prediction import Predictor
from .schemas import PredictContext, TaskBody
from .serving import Serving


def predict_task(settings: Settings, predictor: Predictor, task: TaskBody, schema: Schema, serving: Serving,
                 context: PredictContext | None = None) -> dict | None:
    """Label Studio's prediction for the task ({"result", "score", "model_version"}); None when the task gives
    nothing to predict from (no clicks, no rectangles, and no policy)."""
    task_input = parsing.task_input(task, schema, context, settings.prompt_fields, serving.agent.on,
                                    settings.max_image_pixels)
    regions = predictor.predict(task_input, schema, serving)
    if regions is None:
        return None
    return formatting.prediction(regions, schema, serving.version, settings.return_clicks,
                                 settings.polygon_tolerance)
