"""The model's answers as Label Studio results: brush regions in its RLE or polygons (one per connected
part, vertices in percent), and the agent's clicks as keypoints."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import numpy as np

from model.core.clicks import Click
from model.core.polygons import mask_to_polygons

from .brush_rle import mask_to_rle
from .config import Schema


@dataclass
class RegionPrediction:
    """One predicted object: its brush label, mask and estimated IoU, the clicks that made it, and the region
    id to answer it with (None: a new one)."""

    label: str
    mask: np.ndarray
    score: float
    clicks: list[Click] = field(default_factory=list)
    id: str | None = None


def brush_result(region: RegionPrediction, schema: Schema) -> dict:
    """The region as a brushlabels result. Label Studio's editor, accepting a suggestion, replaces the region
    of the same id: an interactive object's answers all carry its id, so refining it keeps one region."""
    height, width = region.mask.shape
    return {
        "id": region.id or uuid.uuid4().hex[:10],
        "from_name": schema.region_name,
        "to_name": schema.image_name,
        "type": "brushlabels",
        "origin": "prediction",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": mask_to_rle(region.mask),
                  "brushlabels": [region.label]},
        "score": round(float(region.score), 4),
        "readonly": False,
    }


def polygon_results(region: RegionPrediction, schema: Schema, tolerance: float) -> list[dict]:
    """A polygonlabels result per connected part of the mask (holes through keyhole cuts); with a region id,
    the parts' ids derive from it, so that refining an object replaces its parts (see brush_result)."""
    height, width = region.mask.shape
    return [{
        "id": _part_id(region.id, part), "from_name": schema.region_name, "to_name": schema.image_name,
        "type": "polygonlabels", "origin": "prediction", "original_width": int(width),
        "original_height": int(height), "image_rotation": 0,
        "value": {"points": [[round(100.0 * x / width, 4), round(100.0 * y / height, 4)] for x, y in polygon],
                  "closed": True, "polygonlabels": [region.label]},
        "score": round(float(region.score), 4), "readonly": False,
    } for part, polygon in enumerate(mask_to_polygons(region.mask, tolerance))]


def _part_id(region_id: str | None, part: int) -> str:
    if region_id is None:
        return uuid.uuid4().hex[:10]
    return region_id if part == 0 else f"{region_id}-{part}"


def keypoint_results(region: RegionPrediction, schema: Schema) -> list[dict]:
    """The agent's clicks as keypoint regions, so annotators see why the mask is what it is."""
    height, width = region.mask.shape
    return [{
        "id": uuid.uuid4().hex[:10], "from_name": schema.keypoint_names[0], "to_name": schema.image_name,
        "type": "keypointlabels", "origin": "prediction", "original_width": int(width),
        "original_height": int(height), "image_rotation": 0, "is_positive": bool(click.positive),
        "value": {"x": 100.0 * click.x / width, "y": 100.0 * click.y / height, "width": 0.5,
                  "keypointlabels": [region.label]},
        "readonly": True,
    } for click in region.clicks]


def prediction(regions: list[RegionPrediction], schema: Schema, version: str, with_clicks: bool,
               polygon_tolerance: float) -> dict:
    """One task's prediction: its regions, the lowest of their scores (what active learning sorts by: a task is as
    uncertain as its least certain region), the version."""
    results = []
    for region in regions:
        if schema.region_type == "polygonlabels":
            results += polygon_results(region, schema, polygon_tolerance)
        else:
            results.append(brush_result(region, schema))
        if with_clicks and schema.keypoint_names:
            results += keypoint_results(region, schema)
    score = min((float(r.score) for r in regions), default=0.0)
    return {"result": results, "score": round(score, 4), "model_version": version}
