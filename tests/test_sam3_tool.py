"""The SAM 3 tool on a tiny random SAM 3 (tests/tiny_sam3.py), loaded by path as users load facebook/sam3: clicks,
a box and the previous step give masks at the image's size; find_instances matches transformers' own image
inference (the processor, Sam3Model from pixels, post_process_instance_segmentation); the encoding goes to arrays
and back; weights from a local folder, or from the hub at a pinned commit, downloaded once (the hub faked by
monkeypatching huggingface_hub.snapshot_download: nothing is downloaded here)."""
from __future__ import annotations

import logging
import shutil
import threading

import numpy as np
import pytest
import torch

from model.core.clicks import Click
from model.core.masks import iou
from model.settings import Settings
from model.tools import make_segmenter, make_tool, segmenter_from
from model.tools.base import Encoded, Instance, ToolInputError
from model.tools.hub_weights import resolve_weights
from model.tools.loading import CheckpointError
from tests.tiny_sam3 import tiny_sam3_folder

REVISION = "0123456789abcdef0123456789abcdef01234567"
TOKEN = "hf_s3cretTokenValue"


@pytest.fixture(scope="module", autouse=True)
def offline():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tiny_sam3_folder(tmp_path_factory)


@pytest.fixture(scope="module")
def segmenter(folder, tmp_path_factory):
    settings = Settings(tool="sam3", sam3_checkpoint=str(folder), device="cpu",
                        data_dir=tmp_path_factory.mktemp("data"))
    return segmenter_from(settings)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(3)
    picture = (rng.random((60, 90, 3)) * 255).astype(np.uint8)
    picture[15:45, 20:60] = (200, 40, 40)
    return picture


def test_loaded_by_path_from_the_settings(segmenter, folder):
    assert Settings(sam3_checkpoint=str(folder)).tool == "sam3"
    assert segmenter.name == "sam3" and segmenter.supports_concepts
    assert segmenter.tool.device == "cpu" and segmenter.tool.weights == f"local folder {folder}"


def test_clicks_give_masks_at_the_image_size(segmenter, image):
    first = segmenter.predict(image, [Click(30, 25, True)])
    assert first.mask.shape == image.shape[:2] and first.mask.dtype == bool
    assert 0.0 <= first.score <= 1.0 and first.state.shape == (1, 32, 32)
    corrected = segmenter.predict(image, [Click(30, 25, True), Click(70, 50, False)], previous=first)
    assert corrected.mask.shape == image.shape[:2]
    alone = segmenter.predict(image, [Click(30, 25, True), Click(70, 50, False)])
    assert not np.array_equal(corrected.state, alone.state)  # the previous step's logits were used
    assert not np.array_equal(alone.state, first.state)  # and the negative click


def test_a_box_alone_and_with_a_click(segmenter, image):
    boxed = segmenter.predict(image, [], box=(20, 15, 60, 45))
    assert boxed.mask.shape == image.shape[:2] and 0.0 <= boxed.score <= 1.0
    both = segmenter.predict(image, [Click(40, 30, False)], box=(20, 15, 60, 45))
    assert not np.array_equal(both.state, boxed.state)


def test_a_mask_handed_in_starts_the_tracker(segmenter, image):
    start = np.zeros(image.shape[:2], bool)
    start[15:45, 20:60] = True
    from_mask = segmenter.predict(image, [Click(70, 50, False)], previous=start)
    assert from_mask.mask.shape == image.shape[:2]
    assert not np.array_equal(from_mask.state, segmenter.predict(image, [Click(70, 50, False)]).state)
    with pytest.raises(ToolInputError):
        segmenter.predict(image, [Click(95, 10, True)])  # outside the 90 x 60 image


def reference(folder, image, phrase, threshold):
    """transformers' own image inference, from pixels: what find_instances must match."""
    from transformers import Sam3Model, Sam3Processor

    processor = Sam3Processor.from_pretrained(folder)
    model = Sam3Model.from_pretrained(folder).eval()
    with torch.no_grad():
        outputs = model(**processor(images=image, text=phrase, return_tensors="pt"))
    return processor.post_process_instance_segmentation(outputs, threshold=threshold,
                                                        target_sizes=[image.shape[:2]])[0]


def test_find_instances_matches_transformers_image_inference(segmenter, folder, image):
    every = segmenter.find_instances(image, "cat", 0.0)
    threshold = float(np.median([instance.score for instance in every]))
    instances = segmenter.find_instances(image, "cat", threshold)
    expected = reference(folder, image, "cat", threshold)
    kept = [i for i in range(len(expected["scores"])) if expected["masks"][i].any()]
    order = sorted(kept, key=lambda i: -float(expected["scores"][i]))
    assert 0 < len(instances) == len(order) < len(every)
    for instance, i in zip(instances, order):
        assert isinstance(instance, Instance) and instance.mask.dtype == bool
        assert instance.mask.shape == image.shape[:2] and instance.mask.any()
        assert threshold < instance.score <= 1.0
        assert instance.score == pytest.approx(float(expected["scores"][i]), abs=1e-4)
        assert np.mean(instance.mask != expected["masks"][i].numpy().astype(bool)) < 0.001
        box = np.clip(expected["boxes"][i].numpy(), 0, [90, 60, 90, 60])
        assert np.allclose(instance.box, box, atol=0.05)
    scores = [instance.score for instance in instances]
    assert scores == sorted(scores, reverse=True)


def test_find_instances_thresholds_and_refusals(segmenter, image):
    assert segmenter.find_instances(image, "dog", 1.0) == []
    assert len(segmenter.find_instances(image, "dog", 0.0)) > 0
    assert segmenter.find_instances(image, "a very long description " * 20, 0.0)  # cut to 32 tokens, no error
    for phrase, threshold in (("  ", 0.5), ("dog", 1.5), ("dog", -0.1)):
        with pytest.raises(ToolInputError):
            segmenter.find_instances(image, phrase, threshold)


def test_the_image_is_encoded_once_for_clicks_and_phrases(folder, image, tmp_path):
    segmenter = make_segmenter("sam3", sam3_checkpoint=str(folder), device="cpu", data_dir=tmp_path)
    segmenter.find_instances(image, "cat", 0.5)
    segmenter.find_instances(image, "car", 0.5)
    segmenter.predict(image, [Click(30, 25, True)])
    assert segmenter.cache.misses == 1 and segmenter.cache.hits == 2


def test_a_tool_without_concepts_refuses_a_phrase(image):
    classical = make_segmenter("classical")
    assert not classical.supports_concepts
    with pytest.raises(ToolInputError, match="sam3"):
        classical.find_instances(image, "cat", 0.5)


def test_encoded_arrays_round_trip(segmenter, image):
    encoded = segmenter.encode(image)
    arrays = segmenter.tool.encoded_arrays(encoded)
    assert all(array.dtype == np.float32 for array in arrays.values())
    assert sum(array.nbytes for array in arrays.values()) == encoded.nbytes
    again = segmenter.tool.encoded_from_arrays(arrays, encoded.shape)
    assert isinstance(again, Encoded) and again.shape == encoded.shape
    clicks = [Click(30, 25, True), Click(70, 50, False)]
    assert np.array_equal(segmenter.predict(again, clicks).mask, segmenter.predict(encoded, clicks).mask)
    found, refound = segmenter.find_instances(encoded, "cat", 0.0), segmenter.find_instances(again, "cat", 0.0)
    assert [i.score for i in found] == [i.score for i in refound]
    assert all(np.array_equal(a.mask, b.mask) for a, b in zip(found, refound))
    # through float16, the embedding store's default precision
    half = segmenter.tool.encoded_from_arrays({k: v.astype(np.float16) for k, v in arrays.items()}, encoded.shape)
    assert iou(segmenter.predict(half, clicks).mask, segmenter.predict(encoded, clicks).mask) > 0.99
    with pytest.raises(ValueError):
        segmenter.tool.encoded_from_arrays({**arrays, "vit": arrays["vit"][:, :, :4]}, encoded.shape)
    with pytest.raises(KeyError):
        segmenter.tool.encoded_from_arrays({k: v for k, v in arrays.items() if k != "tracker0"}, encoded.shape)


def test_weights_that_are_not_there_are_refused(tmp_path, folder):
    with pytest.raises(CheckpointError, match="SAM3_REVISION"):
        make_tool("sam3", sam3_checkpoint="facebook/sam3", data_dir=tmp_path, device="cpu")
    with pytest.raises(CheckpointError, match="not a commit hash"):
        make_tool("sam3", sam3_checkpoint="facebook/sam3", sam3_revision="main", data_dir=tmp_path, device="cpu")
    with pytest.raises(CheckpointError, match="is not a folder"):
        make_tool("sam3", sam3_checkpoint=str(tmp_path / "nowhere" / "sam3" / "x"), data_dir=tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a SAM 3 folder"):
        make_tool("sam3", sam3_checkpoint=str(tmp_path / "empty"), data_dir=tmp_path, device="cpu")
    with pytest.raises(ValueError, match="SAM3_CHECKPOINT"):
        make_tool("sam3", data_dir=tmp_path)


class FakeHub:
    """huggingface_hub.snapshot_download for a hub that holds the tiny SAM 3 at REVISION."""

    def __init__(self, folder, fail_first=False):
        self.folder, self.fail_first, self.calls, self.tokens = folder, fail_first, 0, []
        self.lock = threading.Lock()

    def __call__(self, repo_id, *, revision, local_dir, token, allow_patterns, **_):
        with self.lock:
            self.calls += 1
            self.tokens.append(token)
        assert repo_id == "facebook/sam3" and revision == REVISION and "*.safetensors" in allow_patterns
        shutil.copytree(self.folder, local_dir, dirs_exist_ok=True)
        if self.fail_first and self.calls == 1:
            raise OSError("connection reset by peer")
        return str(local_dir)


def test_a_hub_name_is_downloaded_once_at_its_commit(folder, tmp_path, monkeypatch, caplog):
    hub = FakeHub(folder)
    monkeypatch.setattr("huggingface_hub.snapshot_download", hub)
    caplog.set_level(logging.DEBUG)
    found = []
    threads = [threading.Thread(target=lambda: found.append(resolve_weights("facebook/sam3", REVISION, tmp_path, TOKEN)))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    target = tmp_path / "checkpoints" / "hub" / "facebook--sam3" / REVISION
    assert hub.calls == 1 and hub.tokens == [TOKEN] and {weights.folder for weights in found} == {target}
    tool = make_tool("sam3", sam3_checkpoint="facebook/sam3", sam3_revision=REVISION.upper(), data_dir=tmp_path,
                     hf_token=TOKEN, device="cpu")
    assert hub.calls == 1 and tool.weights == f"hub facebook/sam3@{REVISION}, cached at {target}"
    assert tool.model_id == f"hub:facebook/sam3@{REVISION}"
    assert TOKEN not in caplog.text and REVISION in caplog.text


def test_an_interrupted_download_is_not_taken_for_whole(folder, tmp_path, monkeypatch):
    hub = FakeHub(folder, fail_first=True)
    monkeypatch.setattr("huggingface_hub.snapshot_download", hub)
    with pytest.raises(CheckpointError, match="connection reset") as refused:
        resolve_weights("facebook/sam3", REVISION, tmp_path, TOKEN)
    assert TOKEN not in str(refused.value)
    target = tmp_path / "checkpoints" / "hub" / "facebook--sam3" / REVISION
    assert not target.exists()
    assert resolve_weights("facebook/sam3", REVISION, tmp_path, TOKEN).folder == target and hub.calls == 2


def test_a_gated_model_says_how_to_get_access(tmp_path, monkeypatch):
    from huggingface_hub.errors import GatedRepoError

    def gated(*args, **kwargs):
        error = GatedRepoError.__new__(GatedRepoError)  # its __init__ wants an HTTP response
        Exception.__init__(error, f"401 for token {TOKEN}")
        raise error

    monkeypatch.setattr("huggingface_hub.snapshot_download", gated)
    with pytest.raises(CheckpointError, match="request access") as refused:
        resolve_weights("facebook/sam3", REVISION, tmp_path, TOKEN)
    assert TOKEN not in str(refused.value) and "HF_TOKEN" in str(refused.value)


def test_the_token_is_a_secret(folder):
    settings = Settings(sam3_checkpoint=str(folder), hf_token=TOKEN)
    assert TOKEN not in repr(settings)
    from model.settings import SECRETS

    assert "hf_token" in SECRETS


def test_health_says_where_the_tool_runs_and_its_weights_came_from(folder, tmp_path):
    from tests.apps import App

    app = App(Settings(tool="sam3", sam3_checkpoint=str(folder), device="cpu", data_dir=tmp_path))
    tool = app.client.get("/health").json["capabilities"]["tool"]
    assert tool == {"on": True, "name": "sam3", "error": None, "device": "cpu", "weights": f"local folder {folder}"}


def test_the_embedding_store_keeps_the_encoding_for_another_process(folder, image, tmp_path):
    settings = Settings(tool="sam3", sam3_checkpoint=str(folder), device="cpu", data_dir=tmp_path)
    clicks = [Click(30, 25, True), Click(70, 50, False)]
    first = segmenter_from(settings)
    expected, instances = first.predict(image, clicks).mask, first.find_instances(image, "cat", 0.0)
    other = segmenter_from(settings)  # as another process: its memory cache is empty

    def no_encoding(image):
        raise AssertionError("encoded again")

    other.tool.encode = no_encoding
    assert iou(other.predict(image, clicks).mask, expected) > 0.99  # read back from float16
    assert len(other.find_instances(image, "cat", 0.0)) == len(instances)
