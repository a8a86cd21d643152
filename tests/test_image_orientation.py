"""An EXIF-rotated photo through the real app, served from a loopback file server: the editor shows it upright
(browsers apply EXIF orientation, and Label Studio's results carry that upright size), so clicks, boxes,
predictions, annotations and what is learned from them all refer to the upright image."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from model.core.imageio import image_digest
from model.core.masks import iou
from tests.synthetic import FileServer, png_bytes, scene
from tests.test_backend import _wait_for, brush_annotation, decode, keypoint, make_app, predict, rectangle_around

ORIENTATION = 0x0112
TURNED_BACK_CLOCKWISE = 6  # the pixels are stored a quarter turn anticlockwise of how they are shown


def _with_orientation(image: np.ndarray, fmt: str, **options) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = TURNED_BACK_CLOCKWISE
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, exif=exif, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A 320 x 240 scene shown upright, its object off-centre (up and left), stored turned in a JPEG and a PNG."""
    shown, mask = scene(320, 240, seed=3, center=(90, 80), axes=(50, 38))
    stored = np.ascontiguousarray(np.rot90(shown, 1))  # 240 wide, 320 tall
    folder = tmp_path_factory.mktemp("rotated")
    (folder / "rotated.jpg").write_bytes(_with_orientation(stored, "JPEG", quality=95))
    (folder / "rotated.png").write_bytes(_with_orientation(stored, "PNG"))
    (folder / "upright.png").write_bytes(png_bytes(shown))
    with FileServer(folder) as server:
        server.shown, server.mask = shown, mask
        yield server


def test_a_click_on_the_object_as_shown_gives_its_mask_as_shown(tmp_path, photos):
    client = make_app(tmp_path).client
    rows, cols = np.nonzero(photos.mask)
    click = keypoint(100 * cols.mean() / 320, 100 * rows.mean() / 240)  # percentages of the upright 320 x 240
    response = predict(client, f"{photos.url}/rotated.jpg", {"result": [click]})
    assert response.status_code == 200, response.json
    [region] = response.json["results"][0]["result"]
    assert (region["original_width"], region["original_height"]) == (320, 240)
    assert iou(decode(region), photos.mask) >= 0.85

    boxed = predict(client, f"{photos.url}/rotated.jpg", {"result": [rectangle_around(photos.mask)]})
    [region] = boxed.json["results"][0]["result"]
    assert (region["original_width"], region["original_height"]) == (320, 240)
    assert iou(decode(region), photos.mask) >= 0.85


def test_an_annotation_drawn_on_the_photo_as_shown_is_learned_from(tmp_path, photos):
    app = make_app(tmp_path)
    client = app.client
    url = f"{photos.url}/rotated.jpg"
    rows, cols = np.nonzero(photos.mask)
    assert predict(client, url, {"result": [keypoint(100 * cols.mean() / 320, 100 * rows.mean() / 240)]}
                   ).status_code == 200
    payload = brush_annotation(photos.mask, annotation_id=51)  # original_width 320, original_height 240
    payload["task"] = {"id": 7, "data": {"image": url}}
    assert client.post("/webhook", json=payload).status_code == 200
    jobs = lambda: client.get("/status").json["background_jobs"]["annotation"]  # noqa: E731
    assert _wait_for(lambda: jobs()["pending"] == 0 and jobs()["done"] + jobs()["failed"] == 1)
    assert jobs()["failed"] == 0, jobs()["last_error"]
    records = list(app.backend.trajectories.records())
    assert {r.source for r in records} == {"human", "scratch"}
    for record in records:
        assert record.target.shape == photos.mask.shape
        assert app.backend.trajectories.image(record.image_sha).shape == (240, 320, 3)
    human = next(r for r in records if r.source == "human")
    first = human.steps[0].click
    assert photos.mask[int(first.y), int(first.x)]  # the real click, on the object as shown


def test_one_picture_has_one_digest_however_it_is_stored(tmp_path, photos):
    fetcher = make_app(tmp_path).backend.fetcher
    upright = fetcher.fetch(f"{photos.url}/upright.png")
    turned = fetcher.fetch(f"{photos.url}/rotated.png")
    assert (turned == photos.shown).all() and image_digest(turned) == image_digest(upright)
    assert fetcher.size_bytes == photos.shown.nbytes  # cached once, by content
