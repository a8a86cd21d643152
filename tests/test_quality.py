"""Quality scoring: the corruption protocol, the offline scorer on masks whose quality the test knows,
bad input, the benchmark's metrics, and the score command."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.benchmarks.quality import metrics
from model.core.masks import iou
from model.quality.corruptions import KINDS, corrupt, corruptions
from model.quality.scorers import (
    FEATURES,
    FEATURES_VERSION,
    WEIGHTS,
    OfflineScorer,
    QualityModel,
    quality_features,
    train_quality_model,
)
from tests.synthetic import scene

ROOT = Path(__file__).resolve().parent.parent


def test_corruptions_are_seeded_and_cover_every_kind():
    _, mask = scene(200, 150, seed=1)
    _, other = scene(120, 90, seed=2, center=(30, 30), axes=(20, 15))
    first = corruptions(mask, 3, 0, other)
    again = corruptions(mask, 3, 0, other)
    assert [k for k, _ in first] == list(KINDS)
    assert all((a == b).all() for (_, a), (_, b) in zip(first, again))
    ious = {kind: iou(m, mask) for kind, m in first}
    assert ious["untouched"] == 1.0
    assert ious["dilated"] < 1.0 and ious["eroded"] < 1.0 and ious["shifted"] < 1.0
    assert ious["wrong_object"] < 0.5
    other_object = corruptions(mask, 4, 0, other)  # another object index draws other strengths
    assert any((a != b).any() for (_, a), (_, b) in zip(first, other_object))
    with pytest.raises(ValueError):
        corrupt(mask, "melted", np.random.default_rng(0))


def test_the_shipped_scorer_prefers_the_right_mask():
    scorer = OfflineScorer()
    image, mask = scene(320, 240, seed=5)
    shifted = np.roll(mask, 60, axis=1)
    fat = corrupt(mask, "dilated", np.random.default_rng(1))
    _, other = scene(320, 240, seed=6, center=(60, 50), axes=(40, 30))  # another object's outline, off this one
    good = scorer(image, mask, "a red blob")
    assert good > scorer(image, shifted, "a red blob") and good > scorer(image, fat, "a red blob")
    assert good > scorer(image, other, "a red blob")
    assert 0.0 <= good <= 1.0


def test_bad_input_gets_a_defined_score_or_a_clear_error():
    scorer = OfflineScorer()
    image, mask = scene(64, 48)
    assert scorer(image, np.zeros_like(mask)) == 0.0
    assert scorer(image, np.ones_like(mask)) == 0.0
    with pytest.raises(ValueError, match="the mask is"):
        scorer(image, np.zeros((10, 10), bool))
    flat = np.full((48, 64, 3), 128, np.uint8)
    assert 0.0 <= scorer(flat, mask) <= 1.0
    tiny = np.zeros((48, 64), bool)
    tiny[10, 10] = True  # one pixel
    assert 0.0 <= scorer(image, tiny) <= 1.0
    big_image = np.zeros((2000, 3000, 3), np.uint8)
    big_mask = np.zeros((2000, 3000), bool)
    big_mask[5, 7] = True  # vanishes at the working size
    assert len(quality_features(big_image, big_mask)) == len(FEATURES)


def test_trained_model_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, len(FEATURES)))
    target = 1 / (1 + np.exp(-features[:, 0]))
    model = train_quality_model(features, target, epochs=200, trained_on={"datasets": ["synthetic"]})
    assert np.corrcoef(model.predict(features), target)[0, 1] > 0.9
    model.save(tmp_path / "w.json")
    loaded = QualityModel.load(tmp_path / "w.json")
    assert np.allclose(loaded.predict(features), model.predict(features), atol=1e-4)
    assert loaded.trained_on == {"datasets": ["synthetic"]}
    assert np.allclose(loaded.low, model.low, atol=1e-5) and np.allclose(loaded.high, model.high, atol=1e-5)
    # features beyond what training saw are read as its extremes: one wild ratio cannot swing the score
    wild = features[:1].copy()
    wild[0, 0] = 1e6
    at_edge = features[:1].copy()
    at_edge[0, 0] = model.high[0]
    assert loaded.predict(wild)[0] == pytest.approx(loaded.predict(at_edge)[0])


def test_the_shipped_weights_match_the_features(tmp_path):
    data = json.loads(WEIGHTS.read_text())
    assert tuple(data["features"]) == FEATURES and data["features_version"] == FEATURES_VERSION
    assert QualityModel.load().layers[0][0].shape[1] == len(FEATURES)
    stale = {**data, "features_version": FEATURES_VERSION - 1}
    (tmp_path / "stale.json").write_text(json.dumps(stale))
    with pytest.raises(ValueError, match="retrain it"):
        QualityModel.load(tmp_path / "stale.json")


def test_features_are_named_finite_and_deterministic():
    image, mask = scene(320, 240, seed=3)
    first = quality_features(image, mask)
    assert first.shape == (len(FEATURES),) and np.isfinite(first).all()
    assert np.array_equal(first, quality_features(image, mask))
    named = dict(zip(FEATURES, first))
    shifted = dict(zip(FEATURES, quality_features(image, np.roll(mask, 50, axis=1))))
    # the object's own outline keeps more of itself under GrabCut and lies where its colours change
    assert named["grabcut_keeps"] > shifted["grabcut_keeps"]
    assert named["core_colour_contrast"] > shifted["core_colour_contrast"]


def test_metrics_in_percent():
    truth = np.array([0.1, 0.5, 0.9, 1.0])
    result = metrics(truth + 0.1, truth)
    assert result["n"] == 4 and result["pearson"] == pytest.approx(1.0)
    assert result["mae"] == pytest.approx(10.0) and result["mse"] == pytest.approx(100.0)
    assert result["ece"] == pytest.approx(10.0)


@pytest.fixture(scope="module")
def candidate_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("candidates")
    entries = []
    for index in range(6):
        image, mask = scene(160, 120, seed=index)
        candidate = np.roll(mask, 8 * index, axis=1)
        Image.fromarray(image).save(folder / f"i{index}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"m{index}.png")
        Image.fromarray(candidate.astype(np.uint8) * 255).save(folder / f"c{index}.png")
        entries.append({"image": f"i{index}.png", "mask": f"m{index}.png", "candidate": f"c{index}.png",
                        "category": "blob"})
    (folder / "manifest.json").write_text(json.dumps(entries))
    return folder


def test_score_command_with_candidates(candidate_folder, tmp_path):
    result = subprocess.run([sys.executable, "-m", "model", "score", "--dataset", str(candidate_folder),
                             "--candidates", "--out", str(tmp_path / "c")], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["n"] == 6 and summary["protocol"] == "candidates"
    assert summary["pearson"] > 0.5  # the further the candidate is shifted, the lower the estimate
    assert (tmp_path / "c" / "scatter.png").read_bytes()[:4] == b"\x89PNG"


def test_score_command_cross_validates_on_corruptions(candidate_folder, tmp_path):
    result = subprocess.run([sys.executable, "-m", "model", "score", "--dataset", str(candidate_folder),
                             "--folds", "2", "--out", str(tmp_path / "s")], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["n"] == 6 * len(KINDS)
    assert {"pearson", "spearman", "mae", "mse", "ece", "per_kind"} <= set(summary)
    assert "2-fold cross-validation by object" in summary["protocol"]
    assert "each fold's scorer learns from about 3 " in result.stderr  # 6 objects: figures that say little
    assert summary["per_kind"]["untouched"]["true_iou"] == 1.0


def _manifest(folder: Path, count: int, sizes: dict[int, tuple[int, int]] | None = None,
              missing: int | None = None) -> Path:
    """`count` scenes as a manifest folder; `sizes` gives some masks another size, `missing` names no mask file."""
    folder.mkdir(parents=True)
    entries = []
    for index in range(count):
        image, mask = scene(96, 72, seed=index, center=(30 + 5 * index, 36), axes=(14, 10))
        Image.fromarray(image).save(folder / f"i{index}.png")
        if index != missing:
            picture = Image.fromarray(mask.astype(np.uint8) * 255)
            picture.resize((sizes or {}).get(index, picture.size)).save(folder / f"m{index}.png")
        entries.append({"image": f"i{index}.png", "mask": f"m{index}.png", "category": "blob"})
    (folder / "manifest.json").write_text(json.dumps(entries))
    return folder


def test_the_wrong_object_is_another_objects_mask_whatever_the_number_of_objects(tmp_path, monkeypatch):
    import model.benchmarks.quality as scoring
    from model.core.datasets import open_dataset

    monkeypatch.setattr(scoring, "quality_features", lambda image, mask: np.zeros(3))  # the masks are the subject
    for count in (2, 3, 7, 8):  # 7: the object 7 places on is the object itself
        rows = scoring.corrupted_features(open_dataset(_manifest(tmp_path / str(count), count)), progress=False)
        wrong = [r for r in rows if r.kind == "wrong_object"]
        assert len(wrong) == count and all(r.iou < 1.0 for r in wrong), count
    with pytest.raises(scoring.DatasetError, match="two objects"):
        scoring.corrupted_features(open_dataset(_manifest(tmp_path / "one", 1)), progress=False)


def test_cross_validation_needs_two_folds_with_objects_to_train_on():
    import model.benchmarks.quality as scoring

    rows = [scoring.Scored(0, 0, kind, 0.5, np.zeros(3)) for kind in KINDS]
    with pytest.raises(ValueError, match="2 folds or more"):
        scoring.cross_validated(rows, folds=1)
    with pytest.raises(scoring.DatasetError, match="nothing to train on"):
        scoring.cross_validated(rows, folds=5)  # one object: its fold trains on nothing


def _exit_message(argv: list[str]) -> str:
    from model.cli import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code not in (0, None)
    return str(exited.value.code)


def test_score_and_fit_scorer_refuse_bad_data_with_a_clear_error(tmp_path, capsys):
    missing = _manifest(tmp_path / "missing", 3, missing=1)
    resized = _manifest(tmp_path / "resized", 3, sizes={2: (48, 36)})
    good = _manifest(tmp_path / "good", 3)
    afile = tmp_path / "afile"
    afile.write_text("")
    out = str(tmp_path / "out")
    for command in (["score", "--workers", "1", "--out", out], ["fit-scorer", "--workers", "1", "--out", out]):
        assert "m1.png" in _exit_message([*command, "--dataset", str(missing)])
        assert "48 x 36" in _exit_message([*command, "--dataset", str(resized)])
        assert "no dataset" in _exit_message([*command, "--dataset", str(tmp_path / "absent")])
    assert "not a folder" in _exit_message(["score", "--dataset", str(good), "--out", str(afile)])
    assert "is a folder" in _exit_message(["fit-scorer", "--dataset", str(good), "--out", str(tmp_path)])
    assert "the dataset itself" in _exit_message(["score", "--dataset", str(good), "--train-extra", str(good),
                                                  "--out", out])
    from model.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["score", "--dataset", str(good), "--folds", "1", "--out", out])
    assert exited.value.code == 2 and "at least 2" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # -1 dropped the last object silently
        main(["score", "--dataset", str(good), "--limit", "-1", "--out", out])
    assert exited.value.code == 2 and "at least 1" in capsys.readouterr().err
    assert not Path(out).exists()


def test_score_candidates_refuses_a_missing_or_misfit_candidate(candidate_folder, tmp_path):
    import shutil

    for name, broken in (("missing", None), ("misfit", (40, 30))):
        folder = tmp_path / name
        shutil.copytree(candidate_folder, folder)
        if broken:
            Image.open(folder / "c2.png").resize(broken).save(folder / "c2.png")
        else:
            (folder / "c2.png").unlink()
        message = _exit_message(["score", "--dataset", str(folder), "--candidates", "--out", str(tmp_path / "o")])
        assert "i2.png" in message and ("c2.png" in message if name == "missing" else "not all of one size" in message)


def test_cross_validation_keeps_the_objects_of_one_image_in_one_fold(tmp_path, monkeypatch):
    import model.benchmarks.quality as scoring
    from model.core.datasets import open_dataset

    folder = _manifest(tmp_path / "shared", 5)
    entries = json.loads((folder / "manifest.json").read_text())
    entries[1]["image"] = entries[3]["image"] = "i0.png"  # three objects of one photograph, as COCO has
    (folder / "manifest.json").write_text(json.dumps(entries))
    monkeypatch.setattr(scoring, "quality_features", lambda image, mask: np.zeros(3))
    rows = scoring.corrupted_features(open_dataset(folder), progress=False)
    assert {r.sample: r.group for r in rows} == {0: 0, 1: 0, 2: 2, 3: 0, 4: 4}

    class Remembers:  # estimates 1 for a row of an image it was trained on, else 0
        def __init__(self, features, ious, seed=0):
            self.groups = {int(f[0]) for f in features}

        def predict(self, features):
            return np.array([float(int(features[0]) in self.groups)])

    monkeypatch.setattr(scoring, "train_quality_model", Remembers)
    tagged = [scoring.Scored(r.sample, r.group, r.kind, r.iou, np.array([r.group, 0.0, 0.0])) for r in rows]
    assert not scoring.cross_validated(tagged, folds=3).any()  # by object alone, object 1 was scored by a model
    # trained on objects 0 and 3, of its image
