"""The SAM 2 tool with a tiny randomly initialised SAM 2: the shipped tiny config composed by hydra with
overrides that shrink it (about half a million weights), written as a YAML file, its weights saved as a
checkpoint, both loaded by path the way users load Meta's. Nothing is downloaded: URLs are served on
loopback. Also SEGAGENT_DEVICE, which both SAM tools honour."""
from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from model.core.clicks import Click
from model.settings import Settings
from model.tools import make_segmenter, tool_options
from model.tools.loading import CheckpointError, DeviceError
from model.tools.sam2 import Sam2ConfigError, config_for, load_config
from tests.synthetic import FileServer, record_predictions, scene

# sam2's own modules still call torch.jit.script
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")

SHIPPED_TINY = "configs/sam2.1/sam2.1_hiera_t.yaml"
MEDIUM, WIDTH = 16, 32  # memory features, hidden width
# the shipped tiny SAM 2.1 shrunk: 128-pixel input, a 5-block Hiera from 8 channels, 32-wide heads
TINY_OVERRIDES = [
    "++model.image_size=128",
    "++model.image_encoder.trunk.embed_dim=8",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.image_encoder.trunk.window_spec=[4,2,2,2]",
    "++model.image_encoder.trunk.window_pos_embed_bkg_spatial_size=[2,2]",
    f"++model.image_encoder.neck.d_model={WIDTH}",
    "++model.image_encoder.neck.backbone_channel_list=[64,32,16,8]",
    f"++model.image_encoder.neck.position_encoding.num_pos_feats={WIDTH}",
    f"++model.memory_attention.d_model={WIDTH}",
    "++model.memory_attention.num_layers=1",
    f"++model.memory_attention.layer.d_model={WIDTH}",
    "++model.memory_attention.layer.dim_feedforward=32",
    f"++model.memory_attention.layer.self_attention.embedding_dim={WIDTH}",
    "++model.memory_attention.layer.self_attention.feat_sizes=[8,8]",
    f"++model.memory_attention.layer.cross_attention.embedding_dim={WIDTH}",
    "++model.memory_attention.layer.cross_attention.feat_sizes=[8,8]",
    f"++model.memory_attention.layer.cross_attention.kv_in_dim={MEDIUM}",
    f"++model.memory_encoder.out_dim={MEDIUM}",
    f"++model.memory_encoder.in_dim={WIDTH}",
    f"++model.memory_encoder.position_encoding.num_pos_feats={MEDIUM}",
    f"++model.memory_encoder.mask_downsampler.embed_dim={WIDTH}",
    "++model.memory_encoder.mask_downsampler.total_stride=4",
    f"++model.memory_encoder.fuser.layer.dim={WIDTH}",
    "++model.memory_encoder.fuser.num_layers=1",
]


@pytest.fixture(scope="module")
def tiny_sam2(tmp_path_factory):
    """(checkpoint path, config path, the model as built): a tiny SAM 2 saved as Meta saves theirs."""
    import sam2  # noqa: F401  (initialises hydra on the package's configs)
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    folder = tmp_path_factory.mktemp("sam2")
    config = compose(config_name=SHIPPED_TINY, overrides=TINY_OVERRIDES)
    OmegaConf.save(config, folder / "sam2.1_tiny_random.yaml")
    torch.manual_seed(0)
    model = instantiate(config.model, _recursive_=True)
    assert sum(p.numel() for p in model.parameters()) < 600_000
    torch.save({"model": model.state_dict()}, folder / "tiny_sam2.pt")
    return folder / "tiny_sam2.pt", folder / "sam2.1_tiny_random.yaml", model


@pytest.fixture
def segmenter(tiny_sam2):
    checkpoint, config, _ = tiny_sam2
    return make_segmenter("sam2", sam2_checkpoint=str(checkpoint), sam2_config=str(config), device="cpu")


@pytest.fixture
def spy(segmenter, monkeypatch):
    """Every call to SAM2ImagePredictor.predict: its keywords and its answer."""
    return record_predictions(segmenter.tool._predictor, monkeypatch)


def test_loads_by_path_and_encodes_each_image_once(tiny_sam2, segmenter, spy):
    _, _, original = tiny_sam2
    loaded = segmenter.tool.model
    assert segmenter.name == "sam2" and segmenter.tool.device == "cpu"
    for key, value in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    image, _ = scene(96, 80, seed=2)
    first = segmenter.predict(image, [Click(48, 40, True)])
    assert first.mask.shape == (80, 96) and first.mask.dtype == bool and 0.0 <= first.score <= 1.0
    assert first.state.shape == (1, 32, 32)  # the low-resolution logits for the next step
    segmenter.predict(image.copy(), [Click(48, 40, True), Click(10, 10, False)], previous=first)
    assert (segmenter.cache.misses, segmenter.cache.hits) == (1, 1)
    assert segmenter.cache.size_bytes > 0
    other, _ = scene(96, 80, seed=3)
    segmenter.predict(other, [Click(20, 20, True)])
    assert (segmenter.cache.misses, segmenter.cache.hits) == (2, 1)
    assert len(spy) == 3


def test_the_first_click_asks_for_three_masks_and_keeps_the_best(segmenter, spy):
    image, _ = scene(96, 80, seed=4)
    first = segmenter.predict(image, [Click(48, 40, True)])
    masks, scores, low_res = spy[0]["answer"]
    assert spy[0]["multimask_output"] is True and spy[0]["mask_input"] is None
    assert masks.shape == (3, 80, 96) and scores.shape == (3,)
    best = int(np.argmax(scores))
    assert np.array_equal(first.mask, masks[best] > 0) and first.score == pytest.approx(float(scores[best]))
    assert np.array_equal(first.state[0], low_res[best])


def test_the_previous_logits_are_fed_back_and_three_masks_come_out_again(segmenter, spy):
    image, _ = scene(96, 80, seed=5)
    first = segmenter.predict(image, [Click(48, 40, True)])
    second = segmenter.predict(image, [Click(48, 40, True), Click(8, 8, False)], previous=first)
    assert spy[1]["multimask_output"] is True
    assert spy[1]["mask_input"] is first.state  # reached the predictor as it was returned
    assert spy[1]["point_labels"].tolist() == [1, 0]
    masks, scores, low_res = spy[1]["answer"]
    assert masks.shape == (3, 80, 96) and scores.shape == (3,)
    best = int(np.argmax(scores))
    assert np.array_equal(second.mask, masks[best] > 0) and np.array_equal(second.state[0], low_res[best])


def test_a_box_alone_or_with_clicks(segmenter, spy):
    image, _ = scene(96, 80, seed=6)
    boxed = segmenter.predict(image, box=(20, 15, 70, 60))
    assert boxed.mask.shape == (80, 96)
    assert spy[0]["box"].tolist() == [20, 15, 70, 60] and spy[0]["point_coords"] is None
    assert spy[0]["multimask_output"] is True
    segmenter.predict(image, [Click(45, 40, True)], box=(20, 15, 70, 60), previous=boxed)
    assert spy[1]["box"] is not None and spy[1]["mask_input"] is boxed.state
    assert spy[1]["multimask_output"] is True


def test_a_mask_given_to_sam2_is_its_start_stretched_to_its_square(segmenter, spy):
    from tests.test_sam_prompts import HEIGHT, WIDTH, assert_drawn, rectangle

    image, _ = scene(WIDTH, HEIGHT, seed=7)
    segmenter.predict(image, [Click(5, 5, False)], previous=rectangle())
    # the tiny SAM 2 takes 128-pixel squares: its low-resolution frame is 32 x 32, the image stretched over it
    assert_drawn(spy[0]["mask_input"], 32, (HEIGHT / 32, WIDTH / 32))
    assert spy[0]["point_labels"].tolist() == [1, 0] and spy[0]["multimask_output"] is True


def test_a_url_checkpoint_needs_its_sha256_and_must_match_it(tiny_sam2, tmp_path):
    checkpoint, config, _ = tiny_sam2
    with pytest.raises(CheckpointError, match="needs SAM2_CHECKPOINT_SHA256"):
        make_segmenter("sam2", sam2_checkpoint="https://example.invalid/sam2.1_hiera_tiny.pt", device="cpu",
                       data_dir=tmp_path)
    served = tmp_path / "served"
    served.mkdir()
    (served / "tiny_sam2.pt").write_bytes(checkpoint.read_bytes())
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    with FileServer(served) as server:
        url = f"{server.url}/tiny_sam2.pt"
        with pytest.raises(CheckpointError, match=f"expected {'0' * 64}"):
            make_segmenter("sam2", sam2_checkpoint=url, sam2_sha256="0" * 64, sam2_config=str(config),
                           data_dir=tmp_path / "data", device="cpu")
        assert not list((tmp_path / "data" / "checkpoints").iterdir())  # nothing kept
        segmenter = make_segmenter("sam2", sam2_checkpoint=url, sam2_sha256=digest.upper(), sam2_config=str(config),
                                   data_dir=tmp_path / "data", device="cpu")
    assert (tmp_path / "data" / "checkpoints" / "tiny_sam2.pt").read_bytes() == checkpoint.read_bytes()
    assert segmenter.predict(scene(64, 48)[0], [Click(30, 20, True)]).mask.shape == (48, 64)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a usable GPU")
def test_cuda_without_a_gpu_is_refused_when_the_tool_is_built(tiny_sam2):
    checkpoint, config, _ = tiny_sam2
    with pytest.raises(DeviceError, match=r"SEGAGENT_DEVICE=cuda, but no usable CUDA GPU.*SEGAGENT_DEVICE=cpu"):
        make_segmenter("sam2", sam2_checkpoint=str(checkpoint), sam2_config=str(config), device="cuda")
    with pytest.raises(DeviceError, match="no usable CUDA GPU"):  # the SAM tool too, before its checkpoint
        make_segmenter("sam", sam_checkpoint="/nowhere/sam_vit_b.pth", device="cuda")
    auto = make_segmenter("sam2", sam2_checkpoint=str(checkpoint), sam2_config=str(config), device="auto")
    assert auto.tool.device == "cpu"


def test_the_config_comes_from_meta_s_file_names_or_must_be_given(tiny_sam2, tmp_path):
    checkpoint, _, _ = tiny_sam2
    base = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"
    assert config_for(f"{base}/sam2.1_hiera_tiny.pt") == SHIPPED_TINY
    assert config_for("/models/sam2.1_hiera_base_plus.pt") == "configs/sam2.1/sam2.1_hiera_b+.yaml"
    assert config_for("/models/sam2.1_hiera_large.pt", "configs/sam2.1/sam2.1_hiera_s.yaml").endswith("_s.yaml")
    assert load_config(SHIPPED_TINY).model.image_encoder.trunk.embed_dim == 96  # read from the package
    with pytest.raises(Sam2ConfigError, match=re.escape("SAM2_CONFIG is needed: tiny_sam2.pt")):
        make_segmenter("sam2", sam2_checkpoint=str(checkpoint), device="cpu")
    with pytest.raises(Sam2ConfigError, match="neither one of the sam2 package's"):
        make_segmenter("sam2", sam2_checkpoint=str(checkpoint), sam2_config="configs/sam2.1/huge.yaml", device="cpu")
    with pytest.raises(ValueError, match="needs a checkpoint"):
        make_segmenter("sam2", device="cpu")
    not_sam2 = tmp_path / "other.pt"
    torch.save({"weights": {}}, not_sam2)
    with pytest.raises(CheckpointError, match="not a SAM 2 checkpoint"):
        make_segmenter("sam2", sam2_checkpoint=str(not_sam2), sam2_config=SHIPPED_TINY, device="cpu")


def test_a_checkpoint_that_does_not_fit_its_config_is_refused(tiny_sam2):
    checkpoint, _, _ = tiny_sam2
    with pytest.raises(CheckpointError, match=re.escape(f"does not fit {SHIPPED_TINY}")):
        make_segmenter("sam2", sam2_checkpoint=str(checkpoint), sam2_config=SHIPPED_TINY, device="cpu")


def test_settings_choose_sam2_and_carry_its_options(monkeypatch, tiny_sam2):
    checkpoint, config, _ = tiny_sam2
    for name in ("SAM_CHECKPOINT", "SEGAGENT_TOOL", "SEGAGENT_DEVICE", "SAM2_CONFIG", "SAM2_CHECKPOINT_SHA256"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SAM2_CHECKPOINT", str(checkpoint))
    monkeypatch.setenv("SAM2_CONFIG", str(config))
    monkeypatch.setenv("SEGAGENT_DEVICE", "CPU")
    settings = Settings()
    assert settings.tool == "sam2" and settings.device == "cpu"
    options = tool_options(settings)
    assert options["sam2_checkpoint"] == str(checkpoint) and options["sam2_config"] == str(config)
    assert options["sam2_sha256"] is None and options["device"] == "cpu"
    assert make_segmenter(settings.tool, **options).name == "sam2"


def test_the_evaluate_command_runs_sam2(tiny_sam2, tmp_path):
    from model.cli import main

    checkpoint, config, _ = tiny_sam2
    (tmp_path / "data").mkdir()
    image, mask = scene(96, 80, seed=1)
    Image.fromarray(image).save(tmp_path / "data" / "a.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "data" / "a_mask.png")
    (tmp_path / "data" / "manifest.json").write_text(json.dumps([{"image": "a.png", "mask": "a_mask.png"}]))
    out = tmp_path / "report"
    assert main(["evaluate", "--dataset", str(tmp_path / "data"), "--tool", "sam2", "--max-clicks", "2",
                 "--sam2-checkpoint", str(checkpoint), "--sam2-config", str(config), "--device", "cpu",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tool"] == "sam2" and summary["images"] == 1 and len(summary["miou_at_click"]) == 2


def test_the_backend_serves_clicks_with_sam2(tiny_sam2, tmp_path, image_server):
    from model.settings import Settings
    from tests.apps import App
    from tests.test_backend import keypoint, predict

    checkpoint, config, _ = tiny_sam2
    app = App(Settings(data_dir=tmp_path, tool="sam2", sam2_checkpoint=str(checkpoint), sam2_config=str(config),
                       device="cpu", banned_subnets="169.254.0.0/16"))
    assert app.client.get("/health").json["capabilities"]["tool"] == {"on": True, "name": "sam2", "error": None}
    response = predict(app.client, f"{image_server.url}/object.png", {"result": [keypoint(50, 50)]})
    assert response.status_code == 200 and response.json["model_version"].startswith("segagent-sam2-")
    [region] = response.json["results"][0]["result"]
    assert region["type"] == "brushlabels"  # a random model's mask means nothing: this checks the wiring
