"""The simulated project stream (model/benchmarks/quality_stream.py) on a tiny synthetic dataset: its labels, the
split at each refit point, the refit's figures and the command's summary."""
from __future__ import annotations

import functools
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from model.benchmarks import quality_stream as qs
from model.cli import main
from model.core.datasets import open_dataset
from model.quality import project_scorer
from model.quality.scorers import FEATURES, QualityModel
from model.tools import make_segmenter
from tests.synthetic import scene

OBJECTS = 8


def _scene(index: int) -> tuple[np.ndarray, np.ndarray]:
    """A 160 x 120 noisy scene with an ellipse of its own place, size and contrast (some hard to tell apart)."""
    rng = np.random.default_rng(index)
    mask = np.zeros((120, 160), np.uint8)
    cv2.ellipse(mask, (50 + 8 * index, 40 + 5 * index), (18 + 3 * index, 14 + 2 * index), 20, 0, 360, 1, -1)
    image = rng.normal(0, 25, (120, 160, 3)) + np.array([90, 110, 120])
    image += mask[..., None] * (15 + 12 * index) * np.array([1.0, -0.5, -0.5])
    return np.clip(image, 0, 255).astype(np.uint8), mask.astype(bool)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Eight scenes as a manifest folder."""
    root = tmp_path_factory.mktemp("stream") / "tiny"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    entries = []
    for index in range(OBJECTS):
        image, mask = _scene(index)
        Image.fromarray(image).save(root / "images" / f"{index}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / f"{index}.png")
        entries.append({"image": f"images/{index}.png", "mask": f"masks/{index}.png", "category": "blob"})
    (root / "manifest.json").write_text(json.dumps(entries))
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("stream-cache")


@pytest.fixture(scope="module")
def stream(folder, cache):
    return qs.project_stream(open_dataset(folder), functools.partial(make_segmenter, "classical"), "photo", seed=3,
                             per_object=2, cache=cache, progress=False)


def test_the_stream_labels_each_prediction_with_its_iou_and_features(stream, folder, cache):
    assert len(stream) == 2 * OBJECTS
    for row in stream:
        assert 0.0 <= row.iou <= 1.0
        assert row.features is not None and row.features.shape == (len(FEATURES),)
        assert 1 <= row.clicks <= qs.MAX_CLICKS
    tasks = [row.task for row in stream]
    # an object's annotations come one after another, at distinct click counts, objects in a seeded order
    assert tasks[::2] == tasks[1::2] and sorted(tasks[::2]) == list(range(OBJECTS))
    assert all(a.clicks < b.clicks for a, b in zip(stream[::2], stream[1::2]))
    assert tasks[::2] == [int(i) for i in np.random.default_rng(3).permutation(OBJECTS)]
    again = qs.project_stream(open_dataset(folder), functools.partial(make_segmenter, "classical"), "photo", seed=3,
                              per_object=2, cache=cache, progress=False, needed=5)
    assert 5 <= len(again) < len(stream)  # only the objects the five annotations need
    assert [(r.task, r.clicks, r.iou) for r in again] == [(r.task, r.clicks, r.iou) for r in stream[:len(again)]]


def test_the_microscopy_domain_is_a_deterministic_grey_noisy_image():
    image, _ = scene(64, 48, seed=1)
    made = qs.transform_image(image, "microscopy", seed=0, index=2)
    assert made.shape == image.shape and made.dtype == np.uint8
    assert (made[..., 0] == made[..., 1]).all() and (made[..., 1] == made[..., 2]).all()
    assert np.array_equal(made, qs.transform_image(image, "microscopy", seed=0, index=2))
    assert not np.array_equal(made, qs.transform_image(image, "microscopy", seed=0, index=3))
    assert qs.transform_image(image, "photo") is image
    with pytest.raises(ValueError, match="unknown domain"):
        qs.transform_image(image, "x-ray")


def test_a_refit_point_never_scores_an_object_it_was_fitted_on():
    rows = [qs.Annotation(task, task, str(task), clicks, 0.5, np.zeros(3)) for task in (4, 1, 7, 2)
            for clicks in (1, 3)]
    train, scored = qs.split_at(rows, 3, 4)
    assert [r.task for r in train] == [4, 4, 1]
    assert [r.task for r in scored] == [7, 7, 2, 2]  # the second annotation of object 1 is skipped


def test_the_objects_of_one_image_are_one_task_annotated_together_and_never_scored_after_it(folder, tmp_path):
    import shutil

    shared = tmp_path / "tiny"
    shutil.copytree(folder, shared)
    entries = json.loads((shared / "manifest.json").read_text())
    entries[5]["image"] = entries[2]["image"]  # objects 2 and 5 of one photograph
    (shared / "manifest.json").write_text(json.dumps(entries))
    stream = qs.project_stream(open_dataset(shared), functools.partial(make_segmenter, "classical"), "photo", seed=3,
                               per_object=1, progress=False)
    shuffled = [int(i) for i in np.random.default_rng(3).permutation(OBJECTS)]
    shuffled.remove(5)
    shuffled.insert(shuffled.index(2) + 1, 5)  # where object 2 comes, both
    assert [a.obj for a in stream] == shuffled and {a.task for a in stream if a.obj in (2, 5)} == {2}
    cut = shuffled.index(2) + 1  # the labels end between the image's two objects
    train, scored = qs.split_at(stream, cut, OBJECTS)
    assert [a.obj for a in train] == shuffled[:cut] and [a.obj for a in scored] == shuffled[cut + 1:]  # not 5


def test_each_refit_point_scores_the_next_window_with_both_scorers(stream):
    refit = functools.partial(project_scorer.refit, min_held_out=2)  # the backend's refit, on a tiny project
    results = qs.evaluate_refits(stream, QualityModel.load(), refit, points=(6, 10), window=4)
    assert [r["labels"] for r in results] == [6, 10]
    for result in results:
        assert result["scored"] == 4 and result["objects_scored"] == 2
        for scorer in ("shipped", "refitted", "served"):
            assert set(result[scorer]) == {"pearson", "mae", "ece"}
        assert isinstance(result["promoted"], bool) and "candidate" in result["gate"]
    refused = qs.evaluate_refits(stream, QualityModel.load(), points=(4,), window=4)[0]
    assert refused["refitted"] is None and not refused["promoted"] and "refused" in refused["gate"]
    assert refused["served"] == refused["shipped"]
    with pytest.raises(ValueError, match="too few"):
        qs.evaluate_refits(stream, QualityModel.load(), points=(14,), window=4)


def test_another_order_keeps_each_objects_annotations_together(stream):
    shuffled = qs.reordered(stream, np.random.default_rng(0))
    assert sorted((a.task, a.clicks) for a in shuffled) == sorted((a.task, a.clicks) for a in stream)
    objects = [a.task for a in shuffled]
    assert len(set(objects)) == len([t for i, t in enumerate(objects) if i == 0 or objects[i - 1] != t])
    assert objects != [a.task for a in stream]


def test_the_goal_over_orders_starts_with_the_seeded_stream(stream):
    prior = QualityModel.load()
    refit = functools.partial(project_scorer.refit, min_held_out=2)
    streams = {"photo": stream, "microscopy": stream}
    seeded = qs.goal(qs.evaluate_refits(stream, prior, refit, points=(6, 10), window=4),
                     qs.evaluate_refits(stream, prior, refit, points=(6, 10), window=4), at=10)
    once = qs.over_orders(streams, prior, 1, seed=0, points=(6, 10), window=4, refit=refit)
    assert once["differing_stream_met"] == {"microscopy": int(seeded["differing_stream_met"])}
    assert once["photo_served_never_worse"] == int(seeded["photo_served_never_worse"])
    assert once["goal_met"] == int(seeded["differing_stream_met"] and seeded["photo_served_never_worse"])
    many = qs.over_orders(streams, prior, 5, seed=0, points=(6, 10), window=4, refit=refit)
    assert many["orders"] == 5 and many["at"] == 10
    assert 0 <= many["differing_stream_met"]["microscopy"] <= 5 and 0 <= many["photo_served_never_worse"] <= 5
    assert many["goal_met"] <= min(many["differing_stream_met"]["microscopy"], many["photo_served_never_worse"])
    assert set(many["served_minus_shipped"]["photo"]) == {"pearson", "mae_cut"}


def test_the_command_writes_the_summary_of_both_streams(folder, cache, tmp_path):
    out = tmp_path / "out"
    assert main(["quality-stream", "--dataset", str(folder), "--domain", "photo", "--domain", "microscopy",
                 "--seed", "3", "--refit-at", "4", "6", "--window", "4", "--cache", str(cache), "--orders", "2",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["streams"]) == {"photo", "microscopy"}
    assert "synthetic" in summary["streams"]["microscopy"]["what"]
    for found in summary["streams"].values():
        assert [r["labels"] for r in found["refits"]] == [4, 6]
        assert all({"shipped", "refitted", "served", "promoted", "gate"} <= set(r) for r in found["refits"])
    # judged at the last refit point (200 labels in the benchmark), as over the orders
    assert set(summary["goal"]["microscopy"]) == {"photo_served_never_worse", "differing_stream_met"}
    assert summary["over_orders"]["orders"] == 2 and summary["over_orders"]["at"] == 6
    lines = (out / "stream.csv").read_text().splitlines()
    assert lines[0].startswith("domain,position,task,object") and len(lines) == 1 + 2 * 2 * OBJECTS


def test_the_orders_do_not_depend_on_the_order_of_the_domains(stream):
    prior = QualityModel.load()
    refit = functools.partial(project_scorer.refit, min_held_out=2)
    other = list(reversed(stream))  # a second domain's stream, of the same objects
    forward = qs.over_orders({"photo": stream, "microscopy": other}, prior, 4, seed=0, points=(6, 10), window=4,
                             refit=refit)
    backward = qs.over_orders({"microscopy": other, "photo": stream}, prior, 4, seed=0, points=(6, 10), window=4,
                              refit=refit)
    assert forward == backward


def _bad_folder(root, size: tuple[int, int] | None = None, missing: bool = False):
    """Three of the scenes, the second's mask of another size or not there."""
    root.mkdir()
    entries = []
    for index in range(3):
        image, mask = _scene(index)
        Image.fromarray(image).save(root / f"{index}.png")
        picture = Image.fromarray(mask.astype(np.uint8) * 255)
        if index == 1 and size:
            picture = picture.resize(size)
        if not (index == 1 and missing):
            picture.save(root / f"m{index}.png")
        entries.append({"image": f"{index}.png", "mask": f"m{index}.png"})
    (root / "manifest.json").write_text(json.dumps(entries))
    return root


def test_the_command_refuses_bad_input_with_a_message(folder, tmp_path, capsys):
    def refused(*argv: str) -> str:
        with pytest.raises(SystemExit) as exited:
            main(["quality-stream", *argv])
        assert exited.value.code not in (0, None)
        return str(exited.value.code)

    out = str(tmp_path / "out")
    small = ["--refit-at", "2", "--window", "2", "--out", out]
    assert "m1.png" in refused("--dataset", str(_bad_folder(tmp_path / "missing", missing=True)), *small)
    assert "80 x 60" in refused("--dataset", str(_bad_folder(tmp_path / "resized", size=(80, 60))), *small)
    assert "too few for 200 labels" in refused("--dataset", str(folder), "--out", out)  # 8 objects, 16 annotations
    assert "no dataset" in refused("--dataset", str(tmp_path / "absent"), *small)
    afile = tmp_path / "afile"
    afile.write_text("")
    assert "not a folder" in refused("--dataset", str(folder), "--refit-at", "2", "--window", "2", "--out", str(afile))
    assert "not a folder" in refused("--dataset", str(folder), *small, "--cache", str(afile))
    for flag, value in (("--orders", "0"), ("--refit-at", "0"), ("--window", "-1"), ("--per-object", "5")):
        assert refused("--dataset", str(folder), *small, flag, value) == "2"  # argparse's usage error
        assert flag in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_cache_is_not_reused_once_the_images_transform_changes(folder, tmp_path, monkeypatch):
    def make(cache=None):
        return qs.project_stream(open_dataset(folder), functools.partial(make_segmenter, "classical"), "microscopy",
                                 seed=3, per_object=1, cache=cache, progress=False, needed=4)

    def plain(image, domain, seed=0, index=0):
        return image  # the microscopy domain redefined: the photographs themselves

    cached = make(tmp_path)
    monkeypatch.setattr(qs, "transform_image", plain)
    changed, fresh = make(tmp_path), make()
    assert [r.iou for r in changed] == [r.iou for r in fresh]
    assert all(np.array_equal(a.features, b.features) for a, b in zip(changed, fresh))
    assert not all(np.array_equal(a.features, b.features) for a, b in zip(changed, cached))


def test_the_matrix_keeps_each_label_with_its_features():
    rows = [qs.Annotation(1, 1, "a", 1, 0.2, None), qs.Annotation(2, 2, "b", 1, 0.7, np.ones(3))]
    features, ious, tasks = qs._matrix(rows)
    assert len(features) == len(ious) == len(tasks) == 1 and ious[0] == 0.7 and tasks[0] == 2


def test_the_cache_is_not_shared_by_datasets_of_one_name(tmp_path):
    def folder_of(root, first: int):
        """Two of the scenes, from the `first`, as a manifest folder named `tiny`."""
        root = root / "tiny"
        root.mkdir(parents=True)
        for index in range(2):
            image, mask = _scene(first + index)
            Image.fromarray(image).save(root / f"{index}.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / f"m{index}.png")
        (root / "manifest.json").write_text(json.dumps([{"image": f"{i}.png", "mask": f"m{i}.png"} for i in range(2)]))
        return root

    def make(folder, cache=None):
        return qs.project_stream(open_dataset(folder), functools.partial(make_segmenter, "classical"), "photo",
                                 seed=0, per_object=1, cache=cache, progress=False)

    make(folder_of(tmp_path / "a", 0), tmp_path / "cache")
    other = folder_of(tmp_path / "b", 5)
    found, fresh = make(other, tmp_path / "cache"), make(other)
    assert [(r.iou, r.features.tolist()) for r in found] == [(r.iou, r.features.tolist()) for r in fresh]
