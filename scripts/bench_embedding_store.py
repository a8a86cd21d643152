"""The embedding store, measured (make bench-embeddings): the first click on a pre-annotated task with SAM ViT-B at
its real size (random weights, as scripts/bench_preannotate.py --sam-vit-b-random writes them), with the store
that another process's pre-annotation filled, against without it; and what the store's float16 changes.

For each of the first N images of a dataset (GrabCut): a separate process pre-annotates it (encodes it, one
click, the encoding written to the store); then this process, a fresh segmenter as the web process has, answers
the first click of the task (read from the store + predict) and a later click (from memory). Without the store,
the first click encodes the image. Seconds are medians over the images.

Precision: the same image encoded once at full precision, and that encoding through the store's float16 and
back; the simulated annotator's clicks (toward the ground truth, chosen on the full-precision path) replayed
on both, each path feeding back its own logits; the IoU of the two masks at each click. With random weights
SAM's masks are near-random, so this says how much float16 moves this decoder's answer, not what it costs
a trained SAM's accuracy; the tests' tiny random SAM is measured the same way.

    python scripts/bench_embedding_store.py ../shared/data/grabcut --images 3 --out bench/embedding_store.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from model.annotator.clicker import next_click  # noqa: E402
from model.core.datasets import open_dataset  # noqa: E402
from model.core.imageio import image_digest  # noqa: E402
from model.core.masks import iou  # noqa: E402
from model.tools import Segmenter, make_segmenter  # noqa: E402
from model.tools.embedding_store import pack, unpack  # noqa: E402

TINY_SAM = {"encoder_embed_dim": 32, "encoder_depth": 2, "encoder_num_heads": 2, "global_attn_indexes": [1],
            "image_size": 64, "patch_size": 16, "window_size": 2, "prompt_embed_dim": 32,
            "decoder_mlp_dim": 64, "decoder_num_heads": 2, "iou_head_hidden_dim": 32}  # the tests' tiny SAM


def segmenter(checkpoint: Path, store: Path | None) -> Segmenter:
    return make_segmenter("sam", sam_checkpoint=str(checkpoint), device="cpu", store_folder=store,
                          store_bytes=4 << 30 if store else 0)


def timed(call) -> tuple[float, object]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def preannotate(checkpoint: Path, store: Path, images: list[Path]) -> None:
    """The other process: each image encoded (kept in the store) and one click, as a pre-annotation does."""
    tool = segmenter(checkpoint, store)
    seconds = []
    for path in images:
        image = np.load(path)
        elapsed, _ = timed(lambda image=image: tool.encode(image))
        tool.predict(image, [first_click(np.load(path.with_suffix(".target.npy")))])
        seconds.append(elapsed)
    print(json.dumps({"encode_s": seconds, "writes": tool.store.writes if tool.store else 0}))


def first_click(target: np.ndarray):
    return next_click(np.zeros_like(target), target)


def clicks_compared(tool: Segmenter, image: np.ndarray, target: np.ndarray, clicks: int) -> list[float]:
    """IoU of the float16 path's mask with the full-precision path's, at each of the annotator's clicks."""
    full = tool.encode(image)
    half = tool.tool.encoded_from_arrays(unpack(pack(tool.tool.encoded_arrays(full), "float16")), image.shape[:2])
    sequence, ious, previous_full, previous_half = [], [], None, None
    for _ in range(clicks):
        click = next_click(previous_full.mask if previous_full else np.zeros_like(target), target)
        if click is None:
            break
        sequence.append(click)
        previous_full = tool.predict(full, sequence, previous=previous_full)
        previous_half = tool.predict(half, sequence, previous=previous_half)
        ious.append(round(float(iou(previous_half.mask, previous_full.mask)), 4))
    return ious


def first_clicks(tool: Segmenter, files: list[Path], reader: Segmenter | None = None) -> dict:
    """The first and a later click of each task; with a reader (a segmenter of its own, whose memory stays cold)
    the store's read alone too."""
    first, later, load = [], [], []
    for path in files:
        image, target = np.load(path), np.load(path.with_suffix(".target.npy"))
        click = first_click(target)
        if reader is not None and reader.store is not None:
            store, rebuild = reader.store, partial(reader.tool.encoded_from_arrays, shape=image.shape[:2])
            key = store.key("sam", reader.tool.model_id, image_digest(image))
            load.append(timed(partial(store.load, key, rebuild))[0])
        elapsed, answer = timed(partial(tool.predict, image, [click]))
        first.append(elapsed)
        clicks = [click, next_click(answer.mask, target) or click]
        later.append(timed(partial(tool.predict, image, clicks, previous=answer))[0])
    result: dict = {"first_click_s": first, "later_click_s": later}
    if tool.store is not None:
        result.update(load_s=load, store=tool.store.status())
    return result


def tiny_checkpoint(folder: Path) -> Path:
    import torch

    from model.tools.sam import build_sam

    torch.manual_seed(0)
    path = folder / "tiny_sam.pth"
    torch.save({"config": TINY_SAM, "model": build_sam(TINY_SAM).state_dict()}, path)
    return path


def median(values: list[float]) -> float:
    return round(float(np.median(values)), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--clicks", type=int, default=5, help="clicks per image in the precision measure")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--preannotate", nargs="+", help=argparse.SUPPRESS)  # the other process: checkpoint store images
    args = parser.parse_args()
    if args.preannotate:
        checkpoint, store, *images = args.preannotate
        preannotate(Path(checkpoint), Path(store), [Path(p) for p in images])
        return
    from bench_preannotate import random_sam_vit_b

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoint, store = random_sam_vit_b(root), root / "embeddings"
        files = []
        for i, sample in enumerate(open_dataset(args.dataset).limit(args.images)):
            np.save(root / f"{i}.npy", sample.image)
            np.save(root / f"{i}.target.npy", sample.target)
            files.append(root / f"{i}.npy")
        done = subprocess.run([sys.executable, __file__, str(args.dataset), "--preannotate", str(checkpoint),
                               str(store), *map(str, files)], capture_output=True, text=True, check=True)
        other = json.loads(done.stdout.strip().splitlines()[-1])
        stored = first_clicks(segmenter(checkpoint, store), files, reader=segmenter(checkpoint, store))
        tool = segmenter(checkpoint, None)
        cold = first_clicks(tool, files)
        samples = [(np.load(f), np.load(f.with_suffix(".target.npy"))) for f in files]
        vit_b = [clicks_compared(tool, image, target, args.clicks) for image, target in samples]  # from memory
        tiny = segmenter(tiny_checkpoint(root), None)
        tiny_ious = [clicks_compared(tiny, image, target, args.clicks) for image, target in samples]
    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, no GPU",
        "images": len(files), "encode_s": median(other["encode_s"]),
        "first_click_with_store_s": median(stored["first_click_s"]), "store_load_s": median(stored["load_s"]),
        "first_click_without_store_s": median(cold["first_click_s"]),
        "later_click_s": median(stored["later_click_s"] + cold["later_click_s"]),
        "entry_bytes": stored["store"]["bytes"] // max(1, stored["store"]["entries"]),
        "float16_mask_iou_vit_b": {"per_image_per_click": vit_b, "min": min(min(s) for s in vit_b),
                                   "mean": round(float(np.mean([v for s in vit_b for v in s])), 4)},
        "float16_mask_iou_tiny": {"per_image_per_click": tiny_ious, "min": min(min(s) for s in tiny_ious),
                                  "mean": round(float(np.mean([v for s in tiny_ious for v in s])), 4)},
        "raw": {"preannotation": other, "with_store": stored, "without_store": cold},
    }
    summary["first_click_with_store_over_later_click"] = round(
        summary["first_click_with_store_s"] / summary["later_click_s"], 2)
    text = json.dumps(summary, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
