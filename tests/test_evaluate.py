"""Dataset readers and the evaluate command, on small synthetic datasets written like the real ones."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from model.benchmarks.clicks import noc
from model.core.datasets import open_dataset
from model.core.masks import rle_encode
from tests.synthetic import scene

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def manifest_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("manifest")
    (folder / "images").mkdir()
    (folder / "masks").mkdir()
    entries = []
    for index in range(3):
        image, mask = scene(160, 120, seed=index)
        values = mask.astype(np.uint8) * 255
        band = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        values[band] = 128  # GrabCut's unknown band
        Image.fromarray(image).save(folder / "images" / f"s{index}.jpg", quality=95)
        Image.fromarray(values).save(folder / "masks" / f"s{index}.png")
        entries.append({"image": f"images/s{index}.jpg", "mask": f"masks/s{index}.png", "category": "blob"})
    (folder / "manifest.json").write_text(json.dumps(entries))
    return folder


def test_manifest_reader_keeps_the_unknown_band(manifest_folder):
    dataset = open_dataset(manifest_folder)
    samples = list(dataset)
    assert len(samples) == 3 and samples[0].prompt == "blob"
    assert samples[0].ignore is not None and samples[0].ignore.any()
    assert not (samples[0].target & samples[0].ignore).any()
    assert len(dataset.limit(2)) == 2


def test_coco_and_segagent_json_readers(tmp_path):
    image, mask = scene(64, 48, seed=1)
    Image.fromarray(image).save(tmp_path / "a.png")
    coco = {"images": [{"id": 1, "file_name": "a.png", "height": 48, "width": 64}],
            "categories": [{"id": 5, "name": "blob"}],
            "annotations": [{"id": 9, "image_id": 1, "category_id": 5, "iscrowd": 0, "segmentation": rle_encode(mask)},
                            {"id": 10, "image_id": 1, "category_id": 5, "iscrowd": 0,
                             "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]},
                            {"id": 11, "image_id": 1, "category_id": 5, "iscrowd": 1, "segmentation": []}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    samples = list(open_dataset(tmp_path / "coco.json"))
    assert len(samples) == 2  # the crowd annotation is left out
    assert (samples[0].target == mask).all() and samples[0].prompt == "blob"
    assert samples[1].target.sum() == 400

    segagent = {"data": [{"image_name": "a.png", "height": 48, "width": 64,
                          "gt_ann": {"caption": ["the red blob", "blob in the middle"],
                                     "segmentation": rle_encode(mask)}}]}
    (tmp_path / "seg.json").write_text(json.dumps(segagent))
    first, second = open_dataset(tmp_path / "seg.json", images_dir=tmp_path)
    assert (first.prompt, second.prompt) == ("the red blob", "blob in the middle")
    assert (first.target == mask).all()

    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError):
        open_dataset(tmp_path / "other.json")


def test_noc_counts_clicks_to_the_threshold():
    assert noc([0.5, 0.86, 0.91], 0.85, 20) == 2
    assert noc([0.5, 0.86, 0.91], 0.90, 20) == 3
    assert noc([0.5, 0.6], 0.90, 20) == 20


def test_evaluate_command_writes_the_report(manifest_folder, tmp_path):
    out = tmp_path / "report"
    result = subprocess.run([sys.executable, "-m", "model", "evaluate", "--dataset", str(manifest_folder),
                             "--tool", "classical", "--max-clicks", "5", "--limit", "2", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert {"dataset", "tool", "images", "noc85", "noc90", "miou_at_click", "seconds_per_click_p50",
            "seconds_total"} <= set(summary)
    assert summary["images"] == 2 and len(summary["miou_at_click"]) == 5
    assert summary["noc90"] <= 3  # a distinct blob: one or two clicks
    assert summary["miou_at_click"][-1] >= 0.9
    rows = list(csv.DictReader(open(out / "per_image.csv")))
    assert [r["image"] for r in rows] == ["s0", "s1"]
    assert (out / "miou_per_click.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_with_a_policy_runs_episodes_from_prompts(manifest_folder, taught_vlm, tmp_path):
    out = tmp_path / "agent"
    result = subprocess.run([sys.executable, "-m", "model", "evaluate", "--dataset", str(manifest_folder),
                             "--policy", str(taught_vlm), "--steps", "2", "--batch-size", "2", "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 3 and summary["miou"] >= 0.5 and summary["ciou"] >= 0.5
    assert summary["steps"] == 6 and summary["steps_per_second"] > 0  # a click, then the repeat that ends it
    assert set(summary["seconds_per_step"]) == {"policy", "tool", "render"}
    assert summary["stop_reasons"] == {"repeated_click": 3}


def test_simulate_command_gives_a_project_a_head_start(manifest_folder, tmp_path):
    from model.flywheel.trajectories import TrajectoryStore

    command = [sys.executable, "-m", "model", "simulate", "--dataset", str(manifest_folder), "--data-dir",
               str(tmp_path), "--project", "4"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    store = TrajectoryStore(tmp_path / "trajectories")
    records = list(store.records("4"))
    assert len(records) == len(open_dataset(manifest_folder)) and store.counts("4")["scratch"] == len(records)
    assert all(r.annotation_id < 0 and r.steps for r in records)  # never one of Label Studio's annotation ids
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, timeout=300)  # a replay adds nothing
    assert store.counts("4")["total"] == len(records)
    bad = subprocess.run([*command[:-1], "../4"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "project id" in bad.stderr
