"""Trajectories: the store (migrations, replay/update/delete, images by content, surviving kill -9),
where trajectories come from, and the ShareGPT export."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from model.core.clicks import Click
from model.core.masks import iou
from model.flywheel.sources import from_human_clicks, simulated
from model.flywheel.trajectories import TrajectoryStore
from model.tools import make_segmenter
from tests.synthetic import scene

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def example():
    image, target = scene(160, 120, seed=3)
    return image, target


def test_simulated_and_human_trajectories(example):
    image, target = example
    segmenter = make_segmenter("classical")
    scratch = simulated(segmenter, image, target, "scratch", "Object", "a red blob", "sha")
    assert scratch.steps and scratch.steps[0].click.positive
    assert scratch.steps[-1].iou >= 0.9 and not scratch.steps[0].mask_before.any()
    rough = np.roll(target, 25, axis=1)
    correction = simulated(segmenter, image, target, "correction", "Object", "a red blob", "sha", initial=rough)
    assert (correction.steps[0].mask_before == rough).all()
    assert correction.steps[-1].iou > iou(rough, target)
    human = from_human_clicks([(Click(80, 60, True), scratch.steps[0].mask_after)], target, "Object", "blob", "sha")
    assert human.source == "human" and human.steps[0].iou == pytest.approx(scratch.steps[0].iou)


def test_store_replays_updates_deletes_and_counts(tmp_path, example):
    image, target = example
    store = TrajectoryStore(tmp_path)
    assert store.schema_version == 1
    sha = store.put_image(image)
    assert store.put_image(image.copy()) == sha and (store.image(sha) == image).all()
    segmenter = make_segmenter("classical")
    record = simulated(segmenter, image, target, "scratch", "Object", "blob", sha)
    assert store.replace_annotation("1", 5, 11, "v1", [record])
    assert not store.replace_annotation("1", 5, 11, "v1", [record, record])  # a replay stores nothing new
    assert store.counts() == {"total": 1, "correction": 0, "scratch": 1, "human": 0}
    human = from_human_clicks([(Click(80, 60, True), target)], target, "Object", "blob", sha)
    assert store.replace_annotation("1", 5, 11, "v2", [record, human])  # an update replaces
    assert store.counts("1")["total"] == 2 and store.counts("2")["total"] == 0
    [first, second] = list(store.records("1"))
    assert (first.target == target).all() and first.steps[0].click == record.steps[0].click
    assert (second.steps[0].mask_after == target).all()
    reopened = TrajectoryStore(tmp_path)  # migrations are not applied twice
    assert reopened.counts()["total"] == 2
    assert reopened.delete_annotations([11]) == 2 and reopened.counts()["total"] == 0


WRITER = """
import sys, numpy as np
sys.path.insert(0, {root!r})
from model.core.clicks import Click
from model.flywheel.trajectories import StepRecord, TrajectoryRecord, TrajectoryStore
store = TrajectoryStore({folder!r})
mask = np.zeros((300, 300), bool); mask[50:250, 50:250] = True
step = StepRecord(Click(1, 1, True), mask, mask, 1.0)
print("ready", flush=True)
i = 0
while True:
    i += 1
    store.replace_annotation("p", i, i, "v", [TrajectoryRecord("scratch", "L", "p", "x", mask, [step] * 20)])
"""


def test_store_survives_kill_9_during_writes(tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", WRITER.format(root=str(ROOT), folder=str(tmp_path))],
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "ready"
    time.sleep(1.5)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    store = TrajectoryStore(tmp_path)
    count = store.counts()["total"]
    assert count > 0
    records = list(store.records())
    assert len(records) == count and all(len(r.steps) == 20 for r in records)  # no half-written trajectory


def test_export_sharegpt(tmp_path, example):
    image, target = example
    store = TrajectoryStore(tmp_path / "data" / "trajectories")
    sha = store.put_image(image)
    record = simulated(make_segmenter("classical"), image, target, "scratch", "Object", "a red blob", sha)
    store.replace_annotation("1", 5, 11, "v1", [record])
    out = tmp_path / "export"
    result = subprocess.run([sys.executable, "-m", "model", "export", "--data-dir", str(tmp_path / "data"),
                             "--out", str(out), "--format", "sharegpt"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    examples = json.loads((out / "segagent.json").read_text())
    assert len(examples) == len(record.steps)
    first = examples[0]
    assert first["conversations"][0]["value"].startswith("<image>Please optimize the semi-transparent green mask")
    assert "<ref>a red blob</ref>" in first["conversations"][0]["value"]
    assert first["conversations"][1]["value"] == "Positive point: (500, 500)"
    assert (out / first["images"][0]).exists()
    info = json.loads((out / "dataset_info.json").read_text())
    assert info["segagent"]["formatting"] == "sharegpt" and info["segagent"]["file_name"] == "segagent.json"
    qwen = subprocess.run([sys.executable, "-m", "model", "export", "--data-dir", str(tmp_path / "data"),
                           "--out", str(tmp_path / "qwen"), "--policy-format", "segagent-qwen"], cwd=ROOT,
                          capture_output=True, text=True)
    assert qwen.returncode == 0, qwen.stderr
    [first_qwen, *_] = json.loads((tmp_path / "qwen" / "segagent.json").read_text())
    assert first_qwen["images"][0].endswith(".jpg")  # the released policy's observation
    assert first_qwen["conversations"][1]["value"] == "Positive point: (500, 500)"  # the centre: same either way
