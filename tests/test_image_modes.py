"""Every image decodes to the RGB uint8 a browser shows of it (model/core/imageio.py): EXIF orientation applied,
each mode converted sensibly, the first frame of several, the pixel limit checked before decoding, and memory
bounded by the pixels decoded (measured in a child process whose address space is capped)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from model.core.imageio import ImageError, ImageTooLarge, decode_image

ROOT = Path(__file__).resolve().parents[1]
ORIENTATION = 0x0112
WHITE = [255, 255, 255]


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def oriented(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pillow_s_exif_transpose_does(orientation):
    stored = np.random.default_rng(orientation).integers(0, 256, (30, 40, 3), np.uint8)
    data = encoded(Image.fromarray(stored), "JPEG", exif=oriented(orientation))
    with Image.open(io.BytesIO(data)) as img:  # JPEG is lossy: the reference is the same decoder's pixels
        expected = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    decoded = decode_image(data)
    assert decoded.shape == ((30, 40, 3) if orientation < 5 else (40, 30, 3))
    assert (decoded == expected).all()


@pytest.mark.parametrize("orientation, upright", [
    (3, lambda a: a[::-1, ::-1]),
    (6, lambda a: np.rot90(a, -1)),  # the camera held a quarter turn anticlockwise: shown turned clockwise
    (8, lambda a: np.rot90(a, 1)),
])
def test_exif_orientation_in_a_png_turns_the_pixels_exactly(orientation, upright):
    stored = np.random.default_rng(orientation).integers(0, 256, (30, 40, 3), np.uint8)
    decoded = decode_image(encoded(Image.fromarray(stored), "PNG", exif=oriented(orientation)))
    assert (decoded == upright(stored)).all() and decoded.flags.c_contiguous


def test_xmp_orientation_counts_like_exif():
    stored = np.random.default_rng(0).integers(0, 256, (30, 40, 3), np.uint8)
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    decoded = decode_image(encoded(Image.fromarray(stored), "PNG", pnginfo=_png_text("XML:com.adobe.xmp", xmp)))
    assert (decoded == np.rot90(stored, -1)).all()


@pytest.mark.parametrize("exif", [
    b"Exif\x00\x00" + b"\xff" * 40,  # not TIFF at all
    b"Exif\x00\x00II*\x00\xff\xff\xff\x7f",  # its first directory far past the end
    b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01\x00\x09\x00\x00",  # 9
], ids=["garbage", "truncated", "orientation-9"])
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow says so, and reads on
def test_broken_exif_leaves_the_image_as_stored_as_browsers_do(exif):
    jpeg = encoded(Image.new("RGB", (8, 6), (200, 10, 10)), "JPEG")
    with_exif = jpeg[:2] + b"\xff\xe1" + (len(exif) + 2).to_bytes(2, "big") + exif + jpeg[2:]
    assert (decode_image(with_exif) == decode_image(jpeg)).all()


def _png_text(key: str, value: bytes):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt(key, value.decode())
    return info


SIXTEEN = np.array([[0, 128, 255, 256, 4095, 32768, 65280, 65535]], np.uint16)
SIXTEEN_AS_BROWSERS_SHOW = [0, 0, 1, 1, 16, 128, 254, 255]  # round(v * 255 / 65535): the full range, not clipped


@pytest.mark.parametrize("fmt, dtype", [("PNG", "<u2"), ("TIFF", "<u2"), ("TIFF", ">u2")])
def test_sixteen_bit_gray_is_scaled_from_its_full_range(fmt, dtype):
    decoded = decode_image(encoded(Image.fromarray(SIXTEEN.astype(dtype)), fmt))
    assert decoded.dtype == np.uint8 and decoded.shape == (1, 8, 3)
    assert decoded[0, :, 0].tolist() == SIXTEEN_AS_BROWSERS_SHOW
    assert (decoded == decoded[:, :, :1]).all()


def test_sixteen_bit_colour_png_keeps_its_colours():
    rgb = np.stack([SIXTEEN[0], SIXTEEN[0][::-1], np.full(8, 30000, np.uint16)], axis=-1)[None]
    ok, png = cv2.imencode(".png", rgb[:, :, ::-1])  # OpenCV writes BGR
    assert ok
    decoded = decode_image(png.tobytes()).astype(int)
    assert np.abs(decoded - rgb.astype(int) * 255 / 65535).max() <= 1


def test_float_tiff_is_stretched_over_its_finite_range():
    values = np.array([[-2.0, 0.0, 0.5, 1.0, 2.0, np.nan, np.inf, -np.inf]], np.float32)
    decoded = decode_image(encoded(Image.fromarray(values), "TIFF"))
    assert decoded[0, :, 0].tolist() == [0, 128, 159, 191, 255, 0, 255, 0]
    assert (decoded == decoded[:, :, :1]).all()


def test_a_float_image_in_zero_to_one_is_not_black_and_a_flat_one_is_quietly_black():
    ramp = np.linspace(0.25, 0.75, 64, dtype=np.float32).reshape(8, 8)
    decoded = decode_image(encoded(Image.fromarray(ramp), "TIFF"))
    assert decoded.min() == 0 and decoded.max() == 255
    flat = np.full((8, 8), 0.5, np.float32)
    with np.errstate(all="raise"):
        assert decode_image(encoded(Image.fromarray(flat), "TIFF")).max() == 0


def test_thirty_two_bit_integers_are_stretched_over_their_range():
    values = np.array([[-1000, 0, 599_000, 999_000]], np.int32)
    assert decode_image(encoded(Image.fromarray(values), "TIFF"))[0, :, 0].tolist() == [0, 0, 153, 255]


def _palette_with_a_transparent_entry(fmt: str) -> bytes:
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 0, 255])
    img.putpixel((1, 0), 1)
    return encoded(img, fmt, transparency=1)


@pytest.mark.parametrize("data, expected", [
    (_palette_with_a_transparent_entry("PNG"), [[255, 0, 0], WHITE]),
    (_palette_with_a_transparent_entry("GIF"), [[255, 0, 0], WHITE]),
    (encoded(Image.fromarray(np.array([[[255, 0, 0, 255], [255, 0, 0, 0], [0, 0, 0, 128]]], np.uint8)), "PNG"),
     [[255, 0, 0], WHITE, [127, 127, 127]]),
    (encoded(Image.frombytes("LA", (2, 1), bytes([100, 255, 0, 0])), "PNG"),
     [[100, 100, 100], WHITE]),
    (encoded(Image.fromarray(np.array([[10, 20]], np.uint8)), "PNG", transparency=20), [[10, 10, 10], WHITE]),
], ids=["palette", "GIF", "RGBA", "LA", "gray-tRNS"])
def test_transparent_pixels_are_shown_over_white(data, expected):
    decoded = decode_image(data)
    assert np.abs(decoded[0].astype(int) - np.array(expected)).max() <= 1


def test_cmyk_and_one_bit_images_go_through_pillow_s_conversion():
    cmyk = encoded(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    with Image.open(io.BytesIO(cmyk)) as img:
        assert (decode_image(cmyk) == np.asarray(img.convert("RGB"))).all()
    bits = Image.new("1", (9, 2))
    bits.putpixel((3, 1), 1)
    decoded = decode_image(encoded(bits, "PNG"))
    assert decoded[1, 3].tolist() == WHITE and decoded.sum() == 3 * 255


def test_of_several_frames_the_first_is_used():
    red, blue = Image.new("RGB", (4, 3), (255, 0, 0)), Image.new("RGB", (4, 3), (0, 0, 255))
    gif = encoded(red, "GIF", save_all=True, append_images=[blue])
    tiff = encoded(red, "TIFF", save_all=True, append_images=[Image.new("RGB", (40, 30), (0, 0, 255))])
    for data in (gif, tiff):
        decoded = decode_image(data)
        assert decoded.shape == (3, 4, 3) and (decoded == [255, 0, 0]).all()


def test_the_pixel_limit_is_checked_on_the_header_before_any_pixel_is_decoded():
    whole = encoded(Image.new("L", (100, 100)), "PNG")
    header_only = whole[:33] + _png_chunk(b"IDAT", b"not deflated") + _png_chunk(b"IEND", b"")
    with pytest.raises(ImageTooLarge, match="100 x 100 pixels, more than 5000"):
        decode_image(header_only, max_pixels=5000)
    with pytest.raises(ImageError, match="not a readable image"):
        decode_image(header_only)  # within the limit, it is decoded, and found broken
    with pytest.raises(ImageTooLarge):  # over Pillow's own bomb limit too: the same error, not "unreadable"
        decode_image(whole[:8] + _png_ihdr(100_000, 100_000) + whole[33:], max_pixels=10**11)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def _png_ihdr(width: int, height: int) -> bytes:
    return _png_chunk(b"IHDR", width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0]))


MEMORY_PROBE = textwrap.dedent("""
    import json, resource, sys
    from model.core.imageio import decode_image

    def status(field):  # VmHWM, not ru_maxrss: that one carries over the forking parent's peak
        with open("/proc/self/status") as lines:
            return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(field + ":"))

    data = open(sys.argv[1], "rb").read()
    budget = status("VmSize") + int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (budget, budget))
    before = status("VmHWM")
    image = decode_image(data)
    print(json.dumps({"shape": list(image.shape), "dtype": str(image.dtype), "grown": status("VmHWM") - before}))
""")


@pytest.fixture(scope="module")
def huge_images(tmp_path_factory) -> dict[str, Path]:
    """8000 x 10000 pixels (the default limit), mostly flat so that the files are small, as a bomb's would be."""
    folder = tmp_path_factory.mktemp("huge")
    gray16 = Image.new("I;16", (8000, 10000), 1000)
    gray16.paste(60000, (0, 0, 8000, 10))
    gray16.save(folder / "gray16.png")
    del gray16
    depth = Image.new("F", (8000, 10000), 0.5)
    depth.save(folder / "float.tif", compression="tiff_deflate")
    del depth
    photo = Image.new("RGB", (5000, 4000), (90, 120, 200))
    photo.save(folder / "rotated.jpg", exif=oriented(6), quality=80)
    return {"gray16": folder / "gray16.png", "float": folder / "float.tif", "rotated": folder / "rotated.jpg"}


@pytest.mark.parametrize("name, shape, bytes_a_pixel", [
    ("gray16", (10000, 8000, 3), 5),  # 2 decoded + 3 of RGB
    ("float", (10000, 8000, 3), 7),  # 4 decoded + 3 of RGB
    ("rotated", (5000, 4000, 3), 8),  # 4 decoded, twice while it is turned upright
])
def test_memory_is_bounded_by_the_pixels_decoded(huge_images, name, shape, bytes_a_pixel):
    pixels = shape[0] * shape[1]
    budget = pixels * bytes_a_pixel + (200 << 20)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    probe = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(huge_images[name]), str(budget)], cwd=ROOT,
                           env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    decoded = json.loads(probe.stdout)
    assert tuple(decoded["shape"]) == shape and decoded["dtype"] == "uint8"
    assert decoded["grown"] <= pixels * bytes_a_pixel + (64 << 20), f"{decoded['grown'] / pixels:.2f} bytes a pixel"
