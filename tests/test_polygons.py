"""Masks traced into polygons and rasterised back (the way Label Studio's polygons are read: pycocotools
on continuous coordinates): the same mask, within the tolerance, with few vertices; holes kept empty."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.core.datasets import read_target
from model.core.masks import iou, polygons_to_mask
from model.core.polygons import mask_to_polygons

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def rasterised(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    return polygons_to_mask([p.reshape(-1).tolist() for p in polygons], *shape)


def test_a_square_is_four_corners_on_pixel_corners():
    mask = np.zeros((20, 30), bool)
    mask[5:15, 10:25] = True
    [polygon] = mask_to_polygons(mask, 1.0)
    assert sorted(map(tuple, polygon)) == [(10, 5), (10, 15), (25, 5), (25, 15)]
    assert (rasterised([polygon], mask.shape) == mask).all()


def test_each_connected_part_is_a_polygon_largest_first_and_specks_are_dropped():
    mask = np.zeros((60, 60), bool)
    mask[5:15, 5:15] = True  # 100 pixels
    mask[30:50, 30:50] = True  # 400 pixels
    mask[55, 55] = True  # a speck
    polygons = mask_to_polygons(mask, 1.0)
    assert len(polygons) == 2
    assert polygons[0][:, 0].min() == 30 and polygons[1][:, 0].min() == 5


def test_a_hole_stays_empty_through_a_keyhole():
    yy, xx = np.mgrid[:100, :100]
    radius = np.hypot(yy - 50, xx - 50)
    ring = (radius < 40) & (radius >= 15)
    [polygon] = mask_to_polygons(ring, 1.0)
    back = rasterised([polygon], ring.shape)
    assert not back[50, 50]  # the hole
    assert iou(back, ring) > 0.97


def test_the_tolerance_trades_vertices_for_fidelity():
    yy, xx = np.mgrid[:200, :200]
    disk = np.hypot(yy - 100, xx - 100) < 80
    fine, coarse = mask_to_polygons(disk, 0.5)[0], mask_to_polygons(disk, 3.0)[0]
    assert len(coarse) < len(fine)
    assert iou(rasterised([coarse], disk.shape), disk) > 0.98


@pytest.mark.skipif(not DATA.is_dir(), reason="the benchmark data (../shared/data) is not beside this checkout")
@pytest.mark.parametrize("dataset", ["grabcut", "coco_mval_dev"])
def test_benchmark_masks_come_back_at_the_default_tolerance(dataset):
    from model.settings import Settings

    tolerance = Settings.model_fields["polygon_tolerance"].default
    root = DATA / dataset
    ious, vertices = [], []
    for entry in json.loads((root / "manifest.json").read_text()):
        target, _ = read_target(root / entry["mask"])
        polygons = mask_to_polygons(target, tolerance)
        ious.append(iou(rasterised(polygons, target.shape), target))
        vertices.append(sum(len(p) for p in polygons))
    assert np.mean(ious) >= 0.98 and min(ious) >= 0.93 and np.mean(np.array(ious) >= 0.95) >= 0.99
    assert np.median(vertices) <= 150  # measured: GrabCut's large, detailed masks 97, COCO's 20
