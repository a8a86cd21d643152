"""The SAM 2 tool (Meta's sam2 package, SAM 2.1): a checkpoint path or URL and a model config, on
SEGAGENT_DEVICE.

The config is one shipped inside the sam2 package (configs/sam2.1/sam2.1_hiera_t.yaml, _s, _b+, _l),
chosen from the checkpoint's file name when that is one of Meta's, or a YAML file of the same form (the
tests' tiny random SAM 2 is one). The model is built from it with hydra's instantiate, as sam2's own
build_sam2 does, with the same post-processing options, and the checkpoint's "model" state dict is
loaded into it strictly. SAM2ImagePredictor does the work: set_image once per image (its features are
what the Segmenter caches), predict per step.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch

from model.core.clicks import Click
from model.tools.base import Box, Encoded, ToolResult
from model.tools.embedding_store import file_identity
from model.tools.loading import CheckpointError, resolve_checkpoint, resolve_device
from model.tools.sam_prompts import best, prompts, stretched_frame

log = logging.getLogger(__name__)

# What sam2's build_sam2 sets on top of a config for inference, so that the model is built as Meta's is:
# when one mask is asked for and it is not stable, the decoder falls back to the best of its three (this
# tool asks for three at every step, as SegAgent's evaluation does, so the fallback does not come into play).
POSTPROCESSING = (
    "model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability=true",
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta=0.05",
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh=0.98",
)


class Sam2ConfigError(ValueError):
    """SAM2_CONFIG is missing, names no config, or names one that does not build a SAM 2."""


def meta_configs() -> dict[str, str]:
    """Meta's checkpoint file names and the shipped config each was trained with (sam2's own table)."""
    from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES

    return {checkpoint: config for config, checkpoint in HF_MODEL_ID_TO_FILENAMES.values()}


def shipped_configs() -> list[str]:
    """The SAM 2.1 model configs inside the sam2 package, by the names SAM2_CONFIG takes."""
    return sorted(config for config in meta_configs().values() if config.startswith("configs/sam2.1/"))


def config_for(checkpoint: str, config: str | None = None) -> str:
    """The config to build: the one given, else the one of Meta's checkpoint of that file name."""
    if config:
        return config
    name = checkpoint.rstrip("/").rsplit("/", 1)[-1]
    known = meta_configs()
    if name in known:
        return known[name]
    raise Sam2ConfigError(
        f"SAM2_CONFIG is needed: {name} is not one of Meta's SAM 2 checkpoint file names ({', '.join(known)}); "
        f"name a shipped config ({', '.join(shipped_configs())}) or a YAML file")


def config_path(config: str) -> Path:
    """The file of a shipped config's name, else the YAML file named."""
    import sam2

    shipped = Path(sam2.__file__).parent / config
    path = shipped if shipped.is_file() else Path(config).expanduser()
    if not path.is_file():
        raise Sam2ConfigError(f"SAM 2 config {config!r} is neither one of the sam2 package's "
                              f"({', '.join(shipped_configs())}) nor a YAML file")
    return path


def load_config(config: str):
    """A shipped config by its name, else a YAML file of the same form; with sam2's post-processing."""
    from omegaconf import OmegaConf

    path = config_path(config)
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:
        raise Sam2ConfigError(f"cannot read SAM 2 config {path}: {exc}") from exc
    if not OmegaConf.is_dict(loaded) or "model" not in loaded or "defaults" in loaded:
        raise Sam2ConfigError(f"{path} is not a SAM 2 model config (a 'model' section, no defaults list)")
    merged = OmegaConf.merge(loaded, OmegaConf.from_dotlist(list(POSTPROCESSING)))
    OmegaConf.resolve(merged)
    return merged


def load_sam2(path: str | Path, config: str, device: str):
    """Build the SAM 2 the config describes and load the checkpoint's weights into it, strictly."""
    from hydra.utils import instantiate

    cfg = load_config(config)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read SAM 2 checkpoint {path}: {exc}") from exc
    state = saved.get("model") if isinstance(saved, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a SAM 2 checkpoint (no 'model' state dict)")
    try:
        model = instantiate(cfg.model, _recursive_=True)
    except Exception as exc:
        raise Sam2ConfigError(f"SAM 2 config {config} does not build a model: {exc}") from exc
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # the same names with other shapes
        raise CheckpointError(f"{path} does not fit {config}: {str(exc)[:500]}") from exc
    if missing or unexpected:
        raise CheckpointError(f"{path} does not fit {config}: {len(missing)} weights missing {missing[:3]}, "
                              f"{len(unexpected)} unexpected {unexpected[:3]}")
    return model.to(device).eval()


class Sam2Tool:
    name = "sam2"

    def __init__(self, checkpoint: str, config: str | None = None, data_dir: str | Path = "data",
                 sha256: str | None = None, device: str = "auto"):
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        self.device = resolve_device(device)
        self.config = config_for(checkpoint, config)  # before any download: a missing config fails at once
        local = resolve_checkpoint(checkpoint, data_dir, sha256, what="SAM 2", sha_variable="SAM2_CHECKPOINT_SHA256")
        self.model = load_sam2(local, self.config, self.device)
        # the weights' and the config's identity, for the embedding store's keys
        weights = f"sha256:{sha256.lower()}" if sha256 else file_identity(local)
        self.model_id = f"{weights}|{file_identity(config_path(self.config))}"
        self._predictor = SAM2ImagePredictor(self.model)
        # the predictor assumes a 1024-pixel model; the backbone's three levels are at strides 4, 8 and 16
        size = self.model.image_size
        self._predictor._bb_feat_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]
        self._lock = threading.Lock()  # the predictor holds one image's state at a time
        log.info("SAM 2 %s from %s on %s", self.config, local, self.device)

    @torch.inference_mode()
    def encode(self, image: np.ndarray) -> Encoded:
        with self._lock:
            self._predictor.set_image(image)
            features, original_size = self._predictor._features, self._predictor._orig_hw
        tensors = [features["image_embed"], *features["high_res_feats"]]
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        return Encoded(shape=image.shape[:2], data=(features, original_size), nbytes=nbytes)

    def encoded_arrays(self, encoded: Encoded) -> dict[str, np.ndarray]:
        features = encoded.data[0]
        levels = {f"high_res_feats_{i}": t for i, t in enumerate(features["high_res_feats"])}
        return {name: t.float().cpu().numpy() for name, t in {"image_embed": features["image_embed"], **levels}.items()}

    def encoded_from_arrays(self, arrays: dict[str, np.ndarray], shape: tuple[int, int]) -> Encoded:
        """An encoding read back (the embedding store's): the backbone's three levels on this tool's device."""
        sizes = self._predictor._bb_feat_sizes  # finest first; the embedding is the coarsest
        names = [f"high_res_feats_{i}" for i in range(len(sizes) - 1)] + ["image_embed"]
        tensors = []
        for name, size in zip(names, sizes, strict=True):
            array = arrays[name]
            if array.ndim != 4 or array.shape[0] != 1 or tuple(array.shape[2:]) != tuple(size):
                raise ValueError(f"{name} of shape {array.shape}, this SAM 2's is (1, C, {size[0]}, {size[1]})")
            tensors.append(torch.from_numpy(array).to(self.device, torch.float32))
        features = {"image_embed": tensors[-1], "high_res_feats": tensors[:-1]}
        size = (int(shape[0]), int(shape[1]))
        return Encoded(shape=size, data=(features, [size]), nbytes=sum(t.numel() * t.element_size() for t in tensors))

    @torch.inference_mode()
    def predict(self, encoded: Encoded, clicks: Sequence[Click], box: Box | None = None,
                previous: ToolResult | np.ndarray | None = None) -> ToolResult:
        with self._lock:
            predictor = self._predictor
            predictor._features, predictor._orig_hw = encoded.data
            predictor._is_image_set, predictor._is_batch = True, False
            frame = partial(stretched_frame, low_res=self.model.sam_prompt_encoder.mask_input_size[0])
            masks, scores, low_res = predictor.predict(**prompts(clicks, box, previous, frame))
        return best(masks, scores, low_res)
