"""The SAM 3 tool (transformers' SAM 3): clicks and boxes as SAM 2's, plus every instance of a short noun phrase.

The weights are facebook/sam3's layout, a folder transformers' Sam3VideoModel reads (hub_weights.py: a local
folder, or the hub at a pinned commit): the detector (Sam3Model: the Perception Encoder ViT, its neck, the
text encoder, DETR, the mask decoder and the presence head), the tracker's neck and the tracker (SAM 2's
prompt encoder and mask decoder). Detector and tracker share the one ViT, as in SAM 3 itself, so an image is
encoded once: the ViT's output is kept (the detector's neck runs again per phrase, a small part of the cost),
with the tracker's features made from it (its neck, the high-resolution projections, its no-memory embedding),
so that a click costs the tracker's decoder only. The tracker's memory modules are loaded and never used.

Sam3VideoModel rather than Sam3Model plus Sam3TrackerModel: with transformers 5.23.0, Sam3TrackerModel read
from this layout keeps the ViT and the neck but leaves the prompt encoder and mask decoder random (its renaming
of `tracker_model.*` does not apply), and it would hold a second copy of the ViT.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.core.clicks import Click
from model.tools.base import Box, Encoded, Instance, ToolResult
from model.tools.hub_weights import resolve_weights
from model.tools.loading import CheckpointError, resolve_device
from model.tools.sam_prompts import prompts, stretched_frame

log = logging.getLogger(__name__)

TRACKER_LEVELS = ("tracker0", "tracker1", "tracker2")


@dataclass
class Sam3Encoding:
    vit: torch.Tensor  # (1, C, g, g): the shared ViT's output, the detector's neck's input
    tracker: list[torch.Tensor]  # the tracker's three levels, (1, C_i, s_i, s_i), high resolution first


def load_sam3(folder: Path, device: str):
    """Sam3VideoModel and Sam3Processor from a save_pretrained folder, in float32, for inference."""
    from transformers import Sam3Processor, Sam3VideoModel

    try:
        model = Sam3VideoModel.from_pretrained(folder, dtype=torch.float32)
        processor = Sam3Processor.from_pretrained(folder)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{folder} is not a SAM 3 folder in facebook/sam3's layout (transformers' "
                              f"Sam3VideoModel and Sam3Processor): {type(exc).__name__}: {str(exc)[:500]}") from exc
    return model.to(device).eval(), processor  # type: ignore[arg-type]


class Sam3Tool:
    name = "sam3"

    def __init__(self, checkpoint: str, revision: str | None = None, data_dir: str | Path = "data",
                 token: str | None = None, device: str = "auto"):
        self.device = resolve_device(device)
        weights = resolve_weights(checkpoint, revision, data_dir, token)
        self.weights = weights.source
        self.model_id = weights.identity
        self.model, self.processor = load_sam3(weights.folder, self.device)
        self.detector = self.model.detector_model
        self.tracker = self.model.tracker_model
        self.side = int(self.tracker.prompt_encoder.input_image_size)  # the square every image is resized to
        self.max_text = int(self.detector.config.text_config.max_position_embeddings)
        log.info("SAM 3 from %s on %s", self.weights, self.device)

    @torch.inference_mode()
    def encode(self, image: np.ndarray) -> Encoded:
        pixels = self.processor.image_processor(images=image, return_tensors="pt")["pixel_values"]
        vit = self.detector.vision_encoder.backbone(pixels.to(self.device)).last_hidden_state
        grid = pixels.shape[-1] // self.detector.config.vision_config.backbone_config.patch_size
        vit = vit.view(1, grid, grid, -1).permute(0, 3, 1, 2).contiguous()
        return self._encoded(Sam3Encoding(vit, self._tracker_levels(vit)), image.shape[:2])

    def _tracker_levels(self, vit: torch.Tensor) -> list[torch.Tensor]:
        """The tracker's image embeddings from the ViT's output, as Sam3VideoModel makes them for its tracker,
        with the no-memory embedding added to the lowest resolution, as on a video's first frame."""
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        flat = vit.flatten(2).transpose(1, 2)
        levels, _ = self.model.get_vision_features_for_tracker(Sam3VisionEncoderOutput(last_hidden_state=flat))
        levels[-1] = levels[-1] + self.tracker.no_memory_embedding
        sizes = self.tracker.config.vision_config.backbone_feature_sizes
        return [level.permute(1, 2, 0).reshape(1, -1, *size).contiguous() for level, size in zip(levels, sizes)]

    @staticmethod
    def _encoded(encoding: Sam3Encoding, shape: tuple[int, int]) -> Encoded:
        nbytes = sum(t.numel() * t.element_size() for t in [encoding.vit, *encoding.tracker])
        return Encoded(shape=(int(shape[0]), int(shape[1])), data=encoding, nbytes=nbytes)

    def encoded_arrays(self, encoded: Encoded) -> dict[str, np.ndarray]:
        encoding: Sam3Encoding = encoded.data
        tensors = {"vit": encoding.vit, **dict(zip(TRACKER_LEVELS, encoding.tracker))}
        return {key: tensor.detach().float().cpu().numpy() for key, tensor in tensors.items()}

    def encoded_from_arrays(self, arrays: dict[str, np.ndarray], shape: tuple[int, int]) -> Encoded:
        expected = self._shapes()
        for key, want in expected.items():
            if tuple(arrays[key].shape) != want:
                raise ValueError(f"{key} is {tuple(arrays[key].shape)}, this SAM 3 makes {want}")
        tensors = {key: torch.from_numpy(np.asarray(arrays[key], np.float32)).to(self.device) for key in expected}
        return self._encoded(Sam3Encoding(tensors["vit"], [tensors[key] for key in TRACKER_LEVELS]), shape)

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        vision = self.tracker.config.vision_config
        grid = self.side // vision.backbone_config.patch_size
        decoder = self.tracker.mask_decoder
        channels = (decoder.conv_s0.out_channels, decoder.conv_s1.out_channels, vision.fpn_hidden_size)
        levels = {key: (1, c, *size) for key, c, size in zip(TRACKER_LEVELS, channels, vision.backbone_feature_sizes)}
        return {"vit": (1, vision.backbone_config.hidden_size, grid, grid), **levels}

    @torch.inference_mode()
    def predict(self, encoded: Encoded, clicks: Sequence[Click], box: Box | None = None,
                previous: ToolResult | np.ndarray | None = None) -> ToolResult:
        """Three masks asked of the tracker, the best rated kept (sam_prompts.py, as for SAM 2: its frame is the
        image stretched to a square too)."""
        height, width = encoded.shape
        low_res = self.tracker.prompt_encoder.mask_input_size[0]
        asked = prompts(clicks, box, previous, partial(stretched_frame, low_res=low_res))
        scale = torch.tensor([self.side / width, self.side / height], device=self.device)
        points = labels = boxes = masks = None
        if asked["point_coords"] is not None:
            points = torch.from_numpy(asked["point_coords"]).to(self.device)[None, None] * scale
            labels = torch.from_numpy(asked["point_labels"]).to(self.device)[None, None]
        if asked["box"] is not None:
            boxes = torch.from_numpy(asked["box"]).to(self.device).view(1, 1, 4) * scale.repeat(2)
        if asked["mask_input"] is not None:
            masks = torch.as_tensor(np.asarray(asked["mask_input"], np.float32), device=self.device).view(
                1, 1, low_res, low_res)
        embeddings = encoded.data.tracker
        sparse, dense = self.tracker.prompt_encoder(input_points=points, input_labels=labels, input_boxes=boxes,
                                                    input_masks=masks)
        logits, scores, _, _ = self.tracker.mask_decoder(
            image_embeddings=embeddings[-1], image_positional_embeddings=self.tracker.get_image_wide_positional_embeddings(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=True,
            high_resolution_features=embeddings[:-1])
        logits, scores = logits[0, 0], scores[0, 0]  # (3, low_res, low_res), (3,)
        best = int(torch.argmax(scores))
        mask = F.interpolate(logits[best][None, None], size=(height, width), mode="bilinear", align_corners=False)
        return ToolResult(mask=(mask[0, 0] > 0).cpu().numpy(), score=float(scores[best].clamp(0, 1)),
                          state=logits[best][None].float().cpu().numpy())

    @torch.inference_mode()
    def find_instances(self, encoded: Encoded, phrase: str, threshold: float) -> list[Instance]:
        """Every instance of the phrase whose score (the presence score times the instance's detection
        probability) is above threshold, the highest first; a detection whose mask is empty at the image's
        size is left out. No non-maximum suppression, as SAM 3's image inference."""
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        vit = encoded.data.vit
        fpn, positions = self.detector.vision_encoder.neck(vit)
        vision = Sam3VisionEncoderOutput(last_hidden_state=vit.flatten(2).transpose(1, 2), fpn_hidden_states=fpn,
                                         fpn_position_encoding=positions)
        text = self.processor.tokenizer([phrase], padding="max_length", max_length=self.max_text, truncation=True,
                                        return_tensors="pt").to(self.device)
        out = self.detector(vision_embeds=vision, input_ids=text["input_ids"], attention_mask=text["attention_mask"])
        scores = (out.pred_logits[0].sigmoid() * out.presence_logits[0].sigmoid()).float()
        height, width = encoded.shape
        size = torch.tensor([width, height, width, height], device=scores.device, dtype=torch.float32)
        instances = []
        for index in torch.argsort(scores, descending=True).tolist():
            score = float(scores[index])
            if score <= threshold:
                break
            logits = F.interpolate(out.pred_masks[0, index][None, None].float(), size=(height, width),
                                   mode="bilinear", align_corners=False)
            mask = (logits[0, 0] > 0).cpu().numpy()
            if mask.any():
                x1, y1, x2, y2 = (out.pred_boxes[0, index].float() * size).clamp(min=0).tolist()
                instances.append(Instance(mask=mask, score=score,
                                          box=(min(x1, width), min(y1, height), min(x2, width), min(y2, height))))
        return instances
