"""The interactive tools: the CPU tool's behaviour and bad input, the shared cache, and SAM with a tiny
randomly initialised model saved as a checkpoint and loaded by path."""
import numpy as np
import pytest
import torch

from model.core.clicks import Click
from model.core.masks import iou
from model.tools import ImageCache, Segmenter, make_segmenter
from model.tools.classical import ClassicalTool
from tests.synthetic import record_predictions, scene


@pytest.fixture(scope="module")
def classical():
    return Segmenter(ClassicalTool(), ImageCache(64 << 20))


def test_one_click_segments_a_distinct_object(classical):
    image, target = scene(320, 240, seed=3)
    result = classical.predict(image, [Click(160, 120, True)])
    assert result.mask.shape == target.shape
    assert iou(result.mask, target) >= 0.9
    assert 0.0 <= result.score <= 1.0


def test_negative_click_removes_a_wrong_region(classical):
    image, target = scene(320, 240, seed=4)
    wrong = target.copy()
    wrong[:60, :80] = True  # a slab of background wrongly included
    result = classical.predict(image, [Click(160, 120, True), Click(30, 25, False)], previous=wrong)
    assert not result.mask[25, 30]
    assert iou(result.mask, target) >= 0.85


def test_positive_click_adds_a_missed_part(classical):
    image, target = scene(320, 240, seed=5)
    partial = target.copy()
    partial[:, 170:] = False  # the right part of the object is missing
    first = classical.predict(image, [Click(140, 120, True)], previous=partial)
    ys, xs = np.nonzero(target & ~partial)
    far = int(np.argmax(xs))
    result = classical.predict(image, [Click(140, 120, True), Click(float(xs[far] - 5), float(ys[far]), True)],
                               previous=first)
    assert iou(result.mask, target) > iou(partial, target)


def striped_scene(seed: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic scene with its object painted in diagonal stripes of three colours."""
    image, target = scene(320, 240, seed=seed)
    rows, cols = np.mgrid[:240, :320]
    colours = np.array([[200, 70, 50], [230, 200, 40], [90, 40, 120]])
    stripes = colours[(rows + cols) // 12 % 3] + np.random.default_rng(seed).normal(0, 10, (240, 320, 3))
    return np.where(target[..., None], np.clip(stripes, 0, 255), image).astype(np.uint8), target


def test_box_alone_gives_the_object(classical):
    image, target = scene(320, 240, seed=6)
    rows, cols = np.nonzero(target)
    box = (cols.min() - 8, rows.min() - 8, cols.max() + 8, rows.max() + 8)
    assert iou(classical.predict(image, box=box).mask, target) >= 0.85


@pytest.mark.parametrize("make_scene", [lambda: scene(320, 240, seed=6), striped_scene], ids=["plain", "striped"])
def test_a_box_inside_the_object_gives_the_whole_box(classical, make_scene):
    image, target = make_scene()
    rows, cols = np.nonzero(target)
    cx, cy = int(cols.mean()), int(rows.mean())
    for x1, y1, x2, y2 in [(cx - 16, cy - 12, cx + 16, cy + 12), (cx - 40, cy - 30, cx + 40, cy + 30)]:
        mask = classical.predict(image, box=(x1, y1, x2, y2)).mask
        assert mask[y1:y2, x1:x2].mean() >= 0.95
        assert (mask & target).sum() >= 0.99 * mask.sum()


@pytest.mark.parametrize("make_scene, least", [(lambda: scene(320, 240, seed=6), 0.95), (striped_scene, 0.8)],
                         ids=["plain", "striped"])
def test_a_box_across_the_edge_gives_the_objects_part_in_it(classical, make_scene, least):
    """The object's right half with margins around it, and a loose box shifted right by half the object."""
    image, target = make_scene()
    rows, cols = np.nonzero(target)
    cx = int(cols.mean())
    x1, y1, x2, y2 = cols.min() - 8, rows.min() - 8, cols.max() + 8, rows.max() + 8
    for box in [(cx, rows.min() - 20, cols.max() + 20, rows.max() + 20), (cx, y1, cx + x2 - x1, y2)]:
        mask = classical.predict(image, box=box).mask
        part = np.zeros_like(target)
        part[box[1]:box[3], box[0]:box[2]] = target[box[1]:box[3], box[0]:box[2]]
        assert iou(mask, part) >= least
        assert (mask & target).sum() >= 0.95 * mask.sum()


def test_results_are_reproducible(classical):
    image, _ = scene(320, 240, seed=7)
    a = classical.predict(image, [Click(160, 120, True)]).mask
    b = classical.predict(image, [Click(160, 120, True)]).mask
    assert (a == b).all()


@pytest.mark.parametrize("image", [
    np.zeros((1, 1, 3), np.uint8),
    np.zeros((2, 3), np.uint8),
    np.zeros((40, 50, 4), np.uint8),
    np.full((40, 50), 40000, np.uint16),
])
def test_degenerate_and_odd_images_give_a_mask(classical, image):
    height, width = image.shape[:2]
    result = classical.predict(image, [Click(width // 2, height // 2, True)])
    assert result.mask.shape == (height, width) and result.mask.dtype == bool
    assert result.mask[height // 2, width // 2]  # the clicked pixel is always kept


def test_a_large_image_works():
    segmenter = Segmenter(ClassicalTool(), ImageCache(1 << 30))
    image = np.zeros((8000, 8000, 3), np.uint8)
    image[3000:5000, 3000:5000] = 200
    result = segmenter.predict(image, [Click(4000, 4000, True)])
    assert result.mask.shape == (8000, 8000)
    assert iou(result.mask, image[:, :, 0] > 0) > 0.9


def test_bad_clicks_are_refused(classical):
    image, _ = scene(64, 48)
    with pytest.raises(ValueError, match="outside"):
        classical.predict(image, [Click(64, 10, True)])
    with pytest.raises(ValueError, match="at least one click"):
        classical.predict(image, [])
    with pytest.raises(ValueError, match="previous mask"):
        classical.predict(image, [Click(5, 5, True)], previous=np.zeros((3, 3), bool))


def test_cache_encodes_once_and_evicts_by_bytes():
    segmenter = Segmenter(ClassicalTool(), ImageCache(max_bytes=320 * 240 * 3 * 2))
    images = [scene(320, 240, seed=s)[0] for s in range(3)]
    segmenter.predict(images[0], [Click(10, 10, True)])
    segmenter.predict(images[0].copy(), [Click(20, 10, True)])
    assert (segmenter.cache.hits, segmenter.cache.misses) == (1, 1)
    for image in images[1:]:
        segmenter.predict(image, [Click(10, 10, True)])
    assert len(segmenter.cache) == 2 and segmenter.cache.size_bytes <= segmenter.cache.max_bytes


# ---------------------------------------------------------------- SAM

TINY_SAM = {"encoder_embed_dim": 32, "encoder_depth": 2, "encoder_num_heads": 2, "global_attn_indexes": [1],
            "image_size": 64, "patch_size": 16, "window_size": 2, "prompt_embed_dim": 32,
            "decoder_mlp_dim": 64, "decoder_num_heads": 2, "iou_head_hidden_dim": 32}


@pytest.fixture(scope="module")
def tiny_sam_checkpoint(tmp_path_factory):
    from model.tools.sam import build_sam

    torch.manual_seed(0)
    model = build_sam(TINY_SAM)
    assert sum(p.numel() for p in model.parameters()) < 500_000
    path = tmp_path_factory.mktemp("sam") / "tiny_sam.pth"
    torch.save({"config": TINY_SAM, "model": model.state_dict()}, path)
    return path, model


def test_tiny_sam_loads_by_path_and_predicts(tiny_sam_checkpoint):
    path, original = tiny_sam_checkpoint
    segmenter = make_segmenter("sam", sam_checkpoint=str(path))
    loaded = segmenter.tool.model
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    image, _ = scene(96, 80, seed=2)
    first = segmenter.predict(image, [Click(48, 40, True)])
    assert first.mask.shape == (80, 96) and first.mask.dtype == bool
    assert first.state.shape == (1, 16, 16)  # low-resolution logits for the next step
    second = segmenter.predict(image, [Click(48, 40, True), Click(10, 10, False)], previous=first)
    assert second.mask.shape == (80, 96)
    boxed = segmenter.predict(image, box=(20, 20, 70, 60))
    assert boxed.mask.shape == (80, 96)
    assert segmenter.cache.misses == 1 and segmenter.cache.hits == 2


@pytest.fixture
def sam_spy(tiny_sam_checkpoint, monkeypatch):
    """A tiny SAM's segmenter, and every call to its SamPredictor.predict: its keywords and its answer."""
    segmenter = make_segmenter("sam", sam_checkpoint=str(tiny_sam_checkpoint[0]))
    return segmenter, record_predictions(segmenter.tool._predictor, monkeypatch)


def test_sam_asks_for_three_masks_at_every_step_and_keeps_the_best(sam_spy):
    segmenter, calls = sam_spy
    image, _ = scene(96, 80, seed=2)
    first = segmenter.predict(image, [Click(48, 40, True)])
    second = segmenter.predict(image, [Click(48, 40, True), Click(5, 5, False)], previous=first)
    segmenter.predict(image, box=(20, 20, 70, 60))
    segmenter.predict(image, [Click(5, 5, False)], previous=second.mask)
    assert [call["multimask_output"] for call in calls] == [True] * 4
    assert calls[1]["mask_input"] is first.state  # the kept mask's own logits, fed back
    for call, result in zip(calls[:2], (first, second)):
        masks, scores, low_res = call["answer"]
        kept = int(np.argmax(scores))
        assert masks.shape == (3, 80, 96) and low_res.shape == (3, 16, 16)
        assert np.array_equal(result.mask, masks[kept]) and np.array_equal(result.state[0], low_res[kept])


def test_a_mask_given_to_sam_is_its_start_in_the_padded_frame(sam_spy):
    from segment_anything.utils.transforms import ResizeLongestSide

    from tests.test_sam_prompts import HEIGHT, WIDTH, assert_drawn, rectangle

    segmenter, calls = sam_spy
    image, _ = scene(WIDTH, HEIGHT, seed=3)
    segmenter.predict(image, [Click(5, 5, False)], previous=rectangle())
    input_height, input_width = ResizeLongestSide.get_preprocess_shape(HEIGHT, WIDTH, 64)  # the tiny SAM's side
    assert (input_height, input_width) == (38, 64)
    assert_drawn(calls[0]["mask_input"], 16, (4 * HEIGHT / input_height, 4 * WIDTH / input_width))
    assert calls[0]["point_labels"].tolist() == [1, 0]  # the mask's deepest point, then the click given


def test_sam_checkpoint_errors_are_clear(tmp_path):
    from model.tools.sam import CheckpointError, resolve_checkpoint

    with pytest.raises(CheckpointError, match="does not exist"):
        make_segmenter("sam", sam_checkpoint=str(tmp_path / "missing.pth"))
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        make_segmenter("sam", sam_checkpoint=str(bad))
    with pytest.raises(CheckpointError, match="SHA-256"):
        resolve_checkpoint("https://example.invalid/sam_vit_b.pth", tmp_path)
    with pytest.raises(ValueError, match="needs a checkpoint"):
        make_segmenter("sam")
    with pytest.raises(ValueError, match="unknown tool"):
        make_segmenter("magic")


def test_sam_url_download_is_checked_against_its_hash(tmp_path, tiny_sam_checkpoint):
    import hashlib

    from model.tools.sam import CheckpointError, resolve_checkpoint
    from tests.synthetic import FileServer

    path, _ = tiny_sam_checkpoint
    served = tmp_path / "served"
    served.mkdir()
    (served / "tiny.pth").write_bytes(path.read_bytes())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with FileServer(served) as server:
        with pytest.raises(CheckpointError, match="expected"):
            resolve_checkpoint(f"{server.url}/tiny.pth", tmp_path / "data", sha256="0" * 64)
        local = resolve_checkpoint(f"{server.url}/tiny.pth", tmp_path / "data", sha256=digest)
        assert local.read_bytes() == path.read_bytes()
    assert resolve_checkpoint(f"{server.url}/tiny.pth", tmp_path / "data", sha256=digest) == local  # cached
