"""The project scorer's maths (model/quality/project_scorer.py) on synthetic features: a correction of the shipped
scorer fitted on a project's labels, the split by task, the gate."""
from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from model.quality.project_scorer import (
    FEATURES_VERSION,
    CorrectedModel,
    Correction,
    TooFewLabels,
    decide,
    figures,
    fit_correction,
    held_out_tasks,
    load,
    pearson_noise,
    refit,
    save,
)
from model.quality.scorers import FEATURES, QualityModel


def random_prior(seed: int = 0) -> QualityModel:
    """A shipped-like scorer with random weights (16 -> 16 -> 16 -> 1), standardising nothing."""
    rng = np.random.default_rng(seed)
    sizes = [len(FEATURES), 16, 16, 1]
    layers = [(rng.normal(0, 1.5 / np.sqrt(n_in), (n_out, n_in)), rng.normal(0, 0.1, n_out))
              for n_in, n_out in pairwise(sizes)]
    return QualityModel(np.zeros(len(FEATURES)), np.ones(len(FEATURES)), layers)


@pytest.fixture(scope="module")
def prior() -> QualityModel:
    return random_prior()


def domain(prior: QualityModel, count: int, seed: int = 0):
    """Features of a 'domain' the prior misjudges: the true IoU is lower than it says, the more so the higher the
    fourth feature (edge ratio). One task per 5 labels."""
    rng = np.random.default_rng(seed)
    features = prior.mean + prior.std * rng.normal(size=(count, len(FEATURES)))
    standard = (features[:, 3] - prior.mean[3]) / prior.std[3]
    ious = np.clip(prior.predict(features) - 0.15 - 0.15 * standard + 0.05 * rng.normal(size=count), 0, 1)
    return features, ious, [f"task-{i // 5}" for i in range(count)]


def test_the_identity_correction_is_the_prior(prior):
    features, _, _ = domain(prior, 50)
    assert np.allclose(CorrectedModel(prior, Correction()).predict(features), prior.predict(features))


def test_a_biased_prior_is_corrected_and_promoted(prior):
    features, ious, tasks = domain(prior, 400)
    candidate, gate, promote = refit(prior, features, ious, tasks)
    assert promote, gate
    assert gate["candidate"]["mae"] < 0.6 * gate["active"]["mae"]
    assert gate["candidate"]["pearson"] > gate["active"]["pearson"] + 0.05
    assert gate["held_out"] + gate["train"] == 400 and gate["held_out"] >= 5
    assert not np.allclose(candidate.predict(features), prior.predict(features))


def test_few_labels_keep_the_candidate_near_the_prior(prior):
    features, ious, _ = domain(prior, 400)
    few = fit_correction(prior, features[:5], ious[:5], strength=1.0)
    many = fit_correction(prior, features, ious, strength=1.0)
    moved = lambda model: float(np.mean(np.abs(model.predict(features) - prior.predict(features))))  # noqa: E731
    assert moved(few) < moved(many)
    held = fit_correction(prior, features, ious, strength=1e6)  # held to the prior: barely moves
    assert moved(held) < 0.01


def test_a_worse_candidate_is_not_promoted(prior):
    features, ious, tasks = domain(prior, 400)
    good, _, _ = refit(prior, features, ious, tasks)
    # a candidate held to the (biased) prior, against the corrected scorer active now
    _, gate, promote = refit(prior, features, ious, tasks, active=good, strength=1e6)
    assert not promote
    assert gate["candidate"]["mae"] > gate["active"]["mae"]
    assert gate["reason"].startswith("worse than the active scorer")


def test_the_split_is_by_task_and_stable(prior):
    tasks = [f"t{i}" for i in range(40)]
    held = held_out_tasks(tasks)
    assert held and len(held) < len(tasks)
    assert held_out_tasks(tasks + [f"new{i}" for i in range(20)]) >= held  # old tasks keep their side
    assert held_out_tasks(["a", "b"]) in ({"a"}, {"b"})
    assert held_out_tasks(["a", "a"]) == set()
    features, ious, tasks5 = domain(prior, 400)
    _, gate, _ = refit(prior, features, ious, tasks5)
    held5 = held_out_tasks(tasks5)
    assert gate["held_out"] == sum(t in held5 for t in tasks5)  # whole tasks on one side


def test_too_few_labels_or_tasks_are_said(prior):
    features, ious, _ = domain(prior, 12)
    with pytest.raises(TooFewLabels):
        refit(prior, features, ious, ["one task"] * 12)
    with pytest.raises(TooFewLabels):
        refit(prior, features[:4], ious[:4], ["a", "b", "c", "d"])  # one held-out label: under 5
    with pytest.raises(ValueError, match="3 IoUs"):
        refit(prior, features, ious[:3], ["a"] * 12)


def test_figures_and_decide():
    assert figures(np.array([0.1, 0.5, 0.9]), np.array([0.2, 0.5, 0.8])) == {"pearson": 1.0, "mae": 0.0667}
    assert figures(np.array([0.5, 0.5]), np.array([0.2, 0.8]))["pearson"] == 0.0  # a constant side: no correlation
    active = {"pearson": 0.8, "mae": 0.1}
    assert pearson_noise(0.8, 39) == pytest.approx(0.36 / 6)  # Fisher: (1 - r^2) / sqrt(n - 3)
    assert pearson_noise(0.8, 1003) < pearson_noise(0.8, 39) < pearson_noise(0.0, 39)
    assert decide({"pearson": 0.8, "mae": 0.1}, active, held_out=39)[0]  # not worse: promoted
    assert decide({"pearson": 0.75, "mae": 0.05}, active, held_out=39)[0]  # 0.05 lower: within 0.06 of noise
    assert not decide({"pearson": 0.75, "mae": 0.05}, active, held_out=1003)[0]  # not within 0.012
    promoted, why = decide({"pearson": 0.7, "mae": 0.05}, active, held_out=39)
    assert not promoted and "Pearson 0.700 < 0.800 - 0.060" in why
    assert not decide({"pearson": 0.9, "mae": 0.11}, active, held_out=39)[0]  # MAE has no noise allowance
    assert "MAE 0.1002 > 0.1000" in decide({"pearson": 0.9, "mae": 0.1002}, active, held_out=39)[1]  # not 0.100 > 0.100
    assert decide({"pearson": 0.9, "mae": 0.105}, active, held_out=39, tolerance=0.01)[0]
    assert decide({"pearson": 0.7, "mae": 0.1}, active, held_out=39, tolerance=0.05)[0]  # within 0.06 + 0.05


def test_a_pure_shift_of_the_level_is_corrected_and_promoted(prior):
    """Labels a constant 0.2 below what the prior says: the correction fixes the level; its Pearson moves only
    where IoUs are clipped at 0, within the noise of the held-out labels."""
    features, _, tasks = domain(prior, 400)
    ious = np.clip(prior.predict(features) - 0.2 + 0.05 * np.random.default_rng(1).normal(size=400), 0, 1)
    _, gate, promote = refit(prior, features, ious, tasks)
    assert promote, gate
    assert gate["candidate"]["mae"] < 0.5 * gate["active"]["mae"]
    assert gate["candidate"]["pearson"] > gate["active"]["pearson"] - pearson_noise(gate["active"]["pearson"],
                                                                                    gate["held_out"])


def test_a_saved_correction_loads_the_same(prior, tmp_path):
    features, ious, _ = domain(prior, 100)
    model = fit_correction(prior, features, ious)
    save(model, tmp_path / "c.json", prior="abc")
    assert np.allclose(load(tmp_path / "c.json", prior).predict(features), model.predict(features))
    assert '"features_version": "' + FEATURES_VERSION in (tmp_path / "c.json").read_text()
