"""The SAM tool (segment-anything): ViT-B/L/H from a checkpoint path or URL, on SEGAGENT_DEVICE.

A checkpoint is either one of Meta's released state dicts (the architecture is recognised from the
image encoder's width), or a dict {"config": {...}, "model": state_dict} for any other size, such as
the tiny random SAM the tests build. Both are built by `build_sam` from segment-anything's own
modeling classes.
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
from model.tools.sam_prompts import best, padded_frame, prompts

__all__ = ["CheckpointError", "SamTool", "build_sam", "load_sam", "resolve_checkpoint"]

log = logging.getLogger(__name__)

# Meta's released architectures, keyed by the image encoder's embedding width
RELEASED = {
    768: {"encoder_embed_dim": 768, "encoder_depth": 12, "encoder_num_heads": 12, "global_attn_indexes": [2, 5, 8, 11]},
    1024: {"encoder_embed_dim": 1024, "encoder_depth": 24, "encoder_num_heads": 16,
           "global_attn_indexes": [5, 11, 17, 23]},
    1280: {"encoder_embed_dim": 1280, "encoder_depth": 32, "encoder_num_heads": 16,
           "global_attn_indexes": [7, 15, 23, 31]},
}
DEFAULTS = {"image_size": 1024, "patch_size": 16, "window_size": 14, "prompt_embed_dim": 256,
            "decoder_mlp_dim": 2048, "decoder_num_heads": 8, "iou_head_hidden_dim": 256}


def build_sam(config: dict):
    """A Sam model of the given architecture, randomly initialised."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    cfg = {**DEFAULTS, **config}
    embedding_size = cfg["image_size"] // cfg["patch_size"]
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=cfg["encoder_depth"], embed_dim=cfg["encoder_embed_dim"], img_size=cfg["image_size"],
            mlp_ratio=4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=cfg["encoder_num_heads"],
            patch_size=cfg["patch_size"], qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=cfg["global_attn_indexes"], window_size=cfg["window_size"],
            out_chans=cfg["prompt_embed_dim"]),
        prompt_encoder=PromptEncoder(
            embed_dim=cfg["prompt_embed_dim"], image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(cfg["image_size"], cfg["image_size"]), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=cfg["prompt_embed_dim"],
                                          mlp_dim=cfg["decoder_mlp_dim"], num_heads=cfg["decoder_num_heads"]),
            transformer_dim=cfg["prompt_embed_dim"], iou_head_depth=3,
            iou_head_hidden_dim=cfg["iou_head_hidden_dim"]),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def load_sam(path: str | Path, device: str):
    """Build the SAM a checkpoint file describes and load its weights."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read SAM checkpoint {path}: {exc}") from exc
    if isinstance(saved, dict) and "config" in saved and "model" in saved:
        config, state = saved["config"], saved["model"]
    else:
        state = saved
        width = state.get("image_encoder.pos_embed", torch.zeros(1, 1, 1, 0)).shape[-1]
        if width not in RELEASED:
            raise CheckpointError(f"{path} is not a SAM ViT-B/L/H checkpoint (encoder width {width})")
        config = RELEASED[width]
    model = build_sam(config)
    model.load_state_dict(state)
    return model.to(device).eval()


class SamTool:
    name = "sam"

    def __init__(self, checkpoint: str, data_dir: str | Path = "data", sha256: str | None = None,
                 device: str = "auto"):
        from segment_anything import SamPredictor

        self.device = resolve_device(device)
        local = resolve_checkpoint(checkpoint, data_dir, sha256)
        self.model = load_sam(local, self.device)
        # the weights' identity, for the embedding store's keys: their checked hash when there is one
        self.model_id = f"sha256:{sha256.lower()}" if sha256 else file_identity(local)
        self._predictor = SamPredictor(self.model)
        self._lock = threading.Lock()  # the predictor holds one image's state at a time

    @torch.inference_mode()
    def encode(self, image: np.ndarray) -> Encoded:
        with self._lock:
            self._predictor.set_image(image)
            features = self._predictor.features
            data = (features, self._predictor.original_size, self._predictor.input_size)
        return Encoded(shape=image.shape[:2], data=data, nbytes=features.numel() * features.element_size())

    def encoded_arrays(self, encoded: Encoded) -> dict[str, np.ndarray]:
        return {"features": encoded.data[0].float().cpu().numpy()}

    def encoded_from_arrays(self, arrays: dict[str, np.ndarray], shape: tuple[int, int]) -> Encoded:
        """An encoding read back (the embedding store's): the features on this tool's device; the sizes SAM
        resized the image to follow from its shape."""
        prompt_encoder = self.model.prompt_encoder
        expected = (1, prompt_encoder.embed_dim, *prompt_encoder.image_embedding_size)
        if arrays["features"].shape != expected:
            raise ValueError(f"features of shape {arrays['features'].shape}, this SAM's are {expected}")
        features = torch.from_numpy(arrays["features"]).to(self.device, torch.float32)
        transform = self._predictor.transform
        input_size = transform.get_preprocess_shape(shape[0], shape[1], transform.target_length)
        size = (int(shape[0]), int(shape[1]))
        return Encoded(shape=size, data=(features, size, input_size), nbytes=features.numel() * features.element_size())

    @torch.inference_mode()
    def predict(self, encoded: Encoded, clicks: Sequence[Click], box: Box | None = None,
                previous: ToolResult | np.ndarray | None = None) -> ToolResult:
        with self._lock:
            predictor = self._predictor
            predictor.features, predictor.original_size, predictor.input_size = encoded.data
            predictor.is_image_set = True
            frame = partial(padded_frame, input_size=predictor.input_size, side=self.model.image_encoder.img_size,
                            low_res=self.model.prompt_encoder.mask_input_size[0])
            masks, scores, low_res = predictor.predict(**prompts(clicks, box, previous, frame))
        return best(masks, scores, low_res)

