"""Benchmark datasets: manifest folders, COCO-style JSON, and SegAgent's evaluation JSON.

Every reader yields `Sample`s: an RGB image, a bool target mask, an optional ignore mask (GrabCut's
unknown band, value 128) and the object's text prompt.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from model.core.imageio import load_image
from model.core.masks import polygons_to_mask, rle_decode

UNKNOWN_BAND = 128


@dataclass
class Sample:
    name: str
    image: np.ndarray
    target: np.ndarray
    ignore: np.ndarray | None
    prompt: str | None


def read_target(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """A 0/255 (or 0/1) mask image; pixels of value 128 are the ignore band."""
    values = np.array(Image.open(path).convert("L"))
    ignore = values == UNKNOWN_BAND
    target = values > UNKNOWN_BAND if ignore.any() else values > 0
    return target, (ignore if ignore.any() else None)


def image_groups(samples: Iterable[Sample]) -> list[int]:
    """For each sample, the index of the first sample of the same image (pixel for pixel): a dataset may hold
    several objects of one photograph, and a benchmark that must not measure on what it trained on keeps them
    together (COCO MVal dev: 17 of its 240 objects share 8 images)."""
    first: dict[str, int] = {}
    groups = []
    for index, sample in enumerate(samples):
        digest = hashlib.sha256(str(sample.image.shape).encode() + np.ascontiguousarray(sample.image).tobytes())
        groups.append(first.setdefault(digest.hexdigest(), index))
    return groups


class Dataset:
    """A list of samples read lazily from disk."""

    def __init__(self, name: str, entries: list[dict], loader):
        self.name = name
        self.entries = entries
        self._loader = loader

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Sample]:
        for entry in self.entries:
            yield self._loader(entry)

    def limit(self, count: int | None) -> Dataset:
        return self if count is None else Dataset(self.name, self.entries[:count], self._loader)


def open_dataset(path: str | Path, images_dir: str | Path | None = None) -> Dataset:
    """Open a manifest folder, a COCO JSON file or a SegAgent JSON file, whichever `path` is."""
    path = Path(path)
    if path.is_dir():
        return _manifest_dataset(path)
    if not path.is_file():
        raise FileNotFoundError(f"no dataset at {path}")
    data = json.loads(path.read_text())
    root = Path(images_dir) if images_dir else path.parent
    if isinstance(data, dict) and "annotations" in data and "images" in data:
        return _coco_dataset(path.stem, data, root)
    entries = data.get("data") if isinstance(data, dict) else data  # SegAgent's files wrap the list in "data"
    if isinstance(entries, list) and entries and isinstance(entries[0], dict) and "gt_ann" in entries[0]:
        return _segagent_dataset(path.stem, entries, root)
    raise ValueError(f"{path} is neither a COCO annotation file nor a SegAgent dataset JSON")


def _manifest_dataset(folder: Path) -> Dataset:
    entries = json.loads((folder / "manifest.json").read_text())

    def load(entry: dict) -> Sample:
        target, ignore = read_target(folder / entry["mask"])
        return Sample(Path(entry["image"]).stem, load_image(folder / entry["image"]), target, ignore,
                      entry.get("category"))

    return Dataset(folder.name, entries, load)


def _decode_segmentation(segmentation, height: int, width: int) -> np.ndarray:
    if isinstance(segmentation, dict):
        return rle_decode({"size": segmentation.get("size", [height, width]), "counts": segmentation["counts"]})
    return polygons_to_mask(segmentation, height, width)


def _coco_dataset(name: str, data: dict, root: Path) -> Dataset:
    images = {img["id"]: img for img in data["images"]}
    categories = {c["id"]: c["name"] for c in data.get("categories", [])}
    entries = [ann for ann in data["annotations"] if not ann.get("iscrowd")]

    def load(ann: dict) -> Sample:
        info = images[ann["image_id"]]
        target = _decode_segmentation(ann["segmentation"], info["height"], info["width"])
        return Sample(f"{Path(info['file_name']).stem}_{ann['id']}", load_image(root / info["file_name"]),
                      target, None, categories.get(ann.get("category_id")))

    return Dataset(name, entries, load)


class CocoImages:
    """The images of a folder by the COCO image id their names end with: COCO_train2014_000000581857.jpg
    (2014 style) or 000000581857.jpg (2017 style) for id 581857. The folder is listed once, when first asked."""

    NAME = re.compile(r"(?:.*_)?(\d{12})")

    def __init__(self, folder: Path):
        self.folder = folder

    @cached_property
    def _by_id(self) -> dict[int, list[str]]:
        if not self.folder.is_dir():
            raise FileNotFoundError(f"no images folder {self.folder} to find COCO image ids in")
        suffixes = Image.registered_extensions()
        by_id: defaultdict[int, list[str]] = defaultdict(list)
        for entry in os.scandir(self.folder):
            path = Path(entry.name)
            named = self.NAME.fullmatch(path.stem)
            if named and path.suffix.lower() in suffixes:
                by_id[int(named.group(1))].append(entry.name)
        return dict(by_id)

    def file_name(self, image_id: int) -> str:
        found = sorted(self._by_id.get(image_id, []))
        if not found:
            raise FileNotFoundError(f"COCO image id {image_id}: no image in {self.folder} is named "
                                    f"*_{image_id:012d} or {image_id:012d}, whatever its extension")
        if len(found) > 1:
            raise ValueError(f"COCO image id {image_id}: several images in {self.folder} are named for it "
                             f"({', '.join(found)}); keep one")
        return found[0]


def _segagent_dataset(name: str, data: list, root: Path) -> Dataset:
    """One sample per caption: SegAgent's evaluation runs every caption of an object. An image_name is a
    file name, or an integer COCO image id (refCOCO's), found by the name its file ends with."""
    entries = []
    for entry in data:
        captions = entry["gt_ann"].get("caption")
        for caption in captions if isinstance(captions, list) else [captions]:
            entries.append({**entry, "caption": caption})
    coco = CocoImages(root)

    def load(entry: dict) -> Sample:
        image_id = entry["image_name"]
        is_id = isinstance(image_id, int) and not isinstance(image_id, bool)
        image_name = coco.file_name(image_id) if is_id else str(image_id)
        if "." not in Path(image_name).name:
            image_name += ".jpg"  # as SegAgent's evaluation code completes bare names
        target = _decode_segmentation(entry["gt_ann"]["segmentation"], entry["height"], entry["width"])
        return Sample(Path(image_name).stem, load_image(root / image_name), target, None, entry["caption"])

    return Dataset(name, entries, load)
