"""SegAgent's evaluation JSON names an image by file name, or by an integer COCO image id (refCOCO's): the id
is found among the images folder's files by the name it ends with, in the 2014 and the 2017 styles."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from model.core import datasets
from model.core.datasets import open_dataset
from model.core.masks import rle_encode
from tests.synthetic import scene


def segagent_json(path: Path, image_names: list) -> Path:
    _, mask = scene(32, 24, seed=1)
    entries = [{"image_name": name, "height": 24, "width": 32,
                "gt_ann": {"caption": f"blob {index}", "segmentation": rle_encode(mask)}}
               for index, name in enumerate(image_names)]
    path.write_text(json.dumps({"data": entries}))
    return path


@pytest.fixture
def images(tmp_path):
    """A COCO-like images folder: both naming styles, an image by a plain name, and files that are no match."""
    folder = tmp_path / "images"
    folder.mkdir()
    for seed, name in enumerate(["COCO_train2014_000000581857.jpg", "000000000139.png", "a.png", "b.jpg",
                                 "COCO_train2014_1000000000042.jpg", "x000000000042.jpg"]):
        Image.fromarray(scene(32, 24, seed=seed)[0]).save(folder / name)
    (folder / "000000000007.txt").write_text("not an image")
    return folder


def test_integer_ids_find_their_files_in_either_naming_style(images, tmp_path, monkeypatch):
    listed = []
    real = datasets.os.scandir
    monkeypatch.setattr(datasets.os, "scandir", lambda folder: listed.append(folder) or real(folder))
    path = segagent_json(tmp_path / "refcoco_val.json", [581857, 139, "a.png", "b", 581857])
    samples = list(open_dataset(path, images_dir=images))
    assert [s.name for s in samples] == ["COCO_train2014_000000581857", "000000000139", "a", "b",
                                         "COCO_train2014_000000581857"]
    assert all(s.image.shape == (24, 32, 3) for s in samples)
    assert listed == [images]  # the folder was listed once, not once per sample


def test_an_id_with_no_file_or_several_is_named_in_the_error(images, tmp_path):
    for stray in (42, 7):  # names that merely contain the digits, or a file that is no image
        with pytest.raises(FileNotFoundError, match=rf"COCO image id {stray}: no image in {re.escape(str(images))}"):
            next(iter(open_dataset(segagent_json(tmp_path / "missing.json", [stray]), images_dir=images)))
    Image.fromarray(scene(32, 24)[0]).save(images / "000000581857.jpg")  # now in both styles
    with pytest.raises(ValueError, match="COCO image id 581857: several images .* are named for it "
                                         r"\(000000581857.jpg, COCO_train2014_000000581857.jpg\)"):
        list(open_dataset(segagent_json(tmp_path / "twice.json", [581857]), images_dir=images))
    with pytest.raises(FileNotFoundError, match="no images folder"):
        list(open_dataset(segagent_json(tmp_path / "nowhere.json", [139]), images_dir=tmp_path / "absent"))
