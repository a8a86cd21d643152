"""What the embedding store's tests share: a tiny random SAM saved as a checkpoint, a segmenter on a store whose
encodings are counted, arrays of a given size, and a file that finds the disk full part-way through a write."""
from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import torch

from model.core.clicks import Click
from model.core.imageio import image_digest
from model.tools import make_segmenter

TINY_SAM = {"encoder_embed_dim": 32, "encoder_depth": 2, "encoder_num_heads": 2, "global_attn_indexes": [1],
            "image_size": 64, "patch_size": 16, "window_size": 2, "prompt_embed_dim": 32,
            "decoder_mlp_dim": 64, "decoder_num_heads": 2, "iou_head_hidden_dim": 32}
CLICKS = [Click(48, 40, True), Click(10, 10, False)]
MB = 1 << 20


def write_tiny_sam(path: Path) -> Path:
    from model.tools.sam import build_sam

    torch.manual_seed(0)
    torch.save({"config": TINY_SAM, "model": build_sam(TINY_SAM).state_dict()}, path)
    return path


def sam(checkpoint: Path, folder: Path | None, store_bytes: int = 64 * MB, precision: str = "float16",
        shared: bool = False):
    """A tiny SAM segmenter on the store in `folder` (the blob folder's kind when `shared`), and the list its
    encodings are counted in."""
    segmenter = make_segmenter("sam", sam_checkpoint=str(checkpoint), device="cpu", store_folder=folder,
                               store_bytes=store_bytes, store_precision=precision, store_shared=shared)
    encodes: list[str] = []
    encode = segmenter.tool.encode

    def counted(image):
        encodes.append(image_digest(image))
        return encode(image)

    segmenter.tool.encode = counted
    return segmenter, encodes


def arrays_of(megabytes: float, seed: int) -> dict[str, np.ndarray]:
    return {"features": np.random.default_rng(seed).random(int(megabytes * MB) // 4, dtype=np.float32)}


class FullDiskFile:
    """A file that takes 1000 bytes and then finds the disk full (patched in for a module's `open`)."""

    def __init__(self, path, *args, **kwargs):
        self._file = open(path, *args, **kwargs)

    def write(self, chunk):
        self._file.write(chunk[:1000])
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()
