"""SAM 3 at its real size (transformers' Sam3VideoConfig defaults: facebook/sam3's architecture, about 860 M
parameters) with random weights, loaded by path through the sam3 tool: seconds to load, to encode an image, to
find a phrase's instances given the encoding, and per click. Random weights cost what trained ones do; what they
find means nothing. Prints JSON.

    python scripts/bench_sam3.py --folder bench/sam3-random --encodes 3 --phrases 4 --clicks 20
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.core.clicks import Click
from model.tools import make_segmenter
from tests.tiny_sam3 import build_tokenizer


def build_real_size(folder: Path) -> float:
    """A random SAM 3 of facebook/sam3's architecture written into folder (once); its parameters in millions.
    The tokenizer is the tests' small CLIP BPE (ids within the real vocabulary): the real one is not here."""
    from transformers import Sam3ImageProcessor, Sam3Processor, Sam3VideoConfig, Sam3VideoModel

    if (folder / "config.json").is_file():
        with torch.device("meta"):
            return sum(p.numel() for p in Sam3VideoModel(Sam3VideoConfig()).parameters()) / 1e6
    torch.manual_seed(0)
    model = Sam3VideoModel(Sam3VideoConfig()).eval()
    model.save_pretrained(folder)
    Sam3Processor(image_processor=Sam3ImageProcessor(), tokenizer=build_tokenizer()).save_pretrained(folder)
    return sum(p.numel() for p in model.parameters()) / 1e6


def timed(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=Path("bench/sam3-random"), help="where the model is written")
    parser.add_argument("--encodes", type=int, default=3)
    parser.add_argument("--phrases", type=int, default=4)
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--size", type=int, nargs=2, default=(768, 1024), metavar=("HEIGHT", "WIDTH"))
    args = parser.parse_args()

    build = time.perf_counter()
    parameters = build_real_size(args.folder)
    build = time.perf_counter() - build
    os.environ["HF_HUB_OFFLINE"] = "1"
    load = time.perf_counter()
    segmenter = make_segmenter("sam3", sam3_checkpoint=str(args.folder), device="cpu")
    load = time.perf_counter() - load
    tool = segmenter.tool
    rng = np.random.default_rng(0)
    height, width = args.size
    images = [(rng.random((height, width, 3)) * 255).astype(np.uint8) for _ in range(args.encodes)]
    encode, encodings = [], []
    for image in images:
        started = time.perf_counter()
        encodings.append(tool.encode(image))
        encode.append(time.perf_counter() - started)
    encoded = encodings[0]
    words = ["cat", "red car", "person on a bicycle", "dog", "tree"]
    phrases = [timed(lambda i=i: tool.find_instances(encoded, words[i % len(words)], 0.5))
               for i in range(args.phrases)]
    result = tool.predict(encoded, [Click(width / 2, height / 2, True)])
    clicks = []
    for i in range(args.clicks):
        click = Click(float(rng.uniform(0, width - 1)), float(rng.uniform(0, height - 1)), bool(i % 2))
        clicks.append(timed(lambda click=click: tool.predict(encoded, [click], None, result)))
    print(json.dumps({
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} with "
                   f"{torch.get_num_threads()} threads",
        "parameters_millions": round(parameters, 1), "image": f"{width} x {height}",
        "build_and_save_s": round(build, 1), "load_s": round(load, 1),
        "encode_s": [round(s, 2) for s in encode], "encoding_mb": round(encoded.nbytes / 2**20, 1),
        "find_instances_s": [round(s, 2) for s in phrases],
        "click_s_median": round(statistics.median(clicks), 3), "click_s_max": round(max(clicks), 3),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
