"""What a request may cost in memory: brush masks by their decoded area (each region within the image pixel
limit, all of a request's within SEGAGENT_MAX_MASK_PIXELS, refused with 413 before any is decoded), decoded
without amplifying (only the mask is allocated), and the policy server's images by their pixels, read from
the header (413), with a memory error a 413 with its reason. Checked on real servers on loopback whose memory
is capped (RLIMIT_AS), as tests/test_request_edge.py does."""
from __future__ import annotations

import base64
import io
import json
import os
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from label_studio_sdk.converter import brush

from backend.labelstudio.brush_rle import mask_to_rle, rle_to_mask
from tests.synthetic import free_port
from tests.test_backend import CONFIG

ROOT = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 8000, 10000  # 80 megapixels: the default pixel limit of one image


@pytest.mark.parametrize("seed", range(40))
def test_the_decoder_reads_what_the_sdk_reads(seed):
    rng = np.random.default_rng(seed)
    height, width = (int(side) for side in rng.integers(1, 60, 2))
    mask = rng.random((height, width)) < rng.random()
    if seed % 2:
        mask = np.zeros((height, width), bool)
        mask[rng.integers(0, height):, rng.integers(0, width):] = True
    rgba = rng.integers(0, 3, (height, width, 4)).astype(np.uint8) * 100  # alpha apart from the other channels
    for rle in (brush.mask2rle(mask.astype(np.uint8) * 255), mask_to_rle(mask), brush.encode_rle(rgba.ravel())):
        expected = brush.decode_rle(rle).reshape(height, width, 4)[:, :, 3] > 0
        assert (rle_to_mask(rle, height, width) == expected).all()


def test_a_truncated_rle_is_refused():
    rle = mask_to_rle(np.eye(20, dtype=bool))
    with pytest.raises(ValueError, match="ends before"):
        rle_to_mask(rle[:len(rle) // 2], 20, 20)


def _virtual_size(pid: int | str = "self") -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmSize:"))) * 1024


def test_a_full_80_megapixel_brush_region_decodes_in_little_more_than_its_mask(tmp_path):
    """In a process allowed 200 MB beyond what it holds after its imports: the 80 MB mask fits, the SDK's four
    bytes a pixel (320 MB) would not."""
    rle = mask_to_rle(np.ones((HEIGHT, WIDTH), bool))
    (tmp_path / "rle.json").write_text(json.dumps(rle))
    script = textwrap.dedent(f"""
        import json, resource
        from backend.labelstudio.parsing import decode_brush
        from backend.labelstudio.results import BrushResult
        from tests.test_request_memory import _virtual_size
        result = BrushResult.model_validate({{"type": "brushlabels", "original_width": {WIDTH},
            "original_height": {HEIGHT}, "value": {{"rle": json.load(open({str(tmp_path / "rle.json")!r}))}}}})
        limit = _virtual_size() + (200 << 20)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        print(int(decode_brush(result, 80_000_000).sum()))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MALLOC_ARENA_MAX": "1"})
    assert done.returncode == 0 and done.stdout.split()[-1] == str(WIDTH * HEIGHT), done.stderr[-2000:]


def _capped(limit_bytes: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    return apply


def _wait_up(url: str, server: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and server.poll() is None:
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return
        except requests.RequestException:
            time.sleep(0.5)
    raise RuntimeError(log.read_text()[-3000:])


def _full_regions(count: int) -> dict:
    rle = mask_to_rle(np.ones((HEIGHT, WIDTH), bool))  # 16 KiB of RLE for 80 megapixels
    results = [{"id": f"r{i}", "type": "brushlabels", "from_name": "tag", "to_name": "image",
                "original_width": WIDTH, "original_height": HEIGHT,
                "value": {"format": "rle", "rle": rle, "brushlabels": ["Object"]}} for i in range(count)]
    return {"action": "ANNOTATION_CREATED", "project": {"id": 3, "label_config": CONFIG},
            "task": {"id": 7, "data": {"image": "http://127.0.0.1:9/x.png"}},
            "annotation": {"id": 90 + count, "updated_at": "2026-01-01T00:00:00Z", "result": results}}


def test_a_real_server_with_capped_memory_refuses_masks_past_the_request_budget(tmp_path):
    port = free_port()
    env = {**os.environ, "SEGAGENT_DATA_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1", "SEGAGENT_TOOL": "classical"}
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen([sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                                   "--threads", "2", "backend.wsgi:app"], cwd=ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT, preexec_fn=_capped(6 << 30))
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_up(url, server, log_path)
            many = requests.post(f"{url}/webhook", json=_full_regions(100), timeout=60)  # 1.6 MB, 8 G pixels
            assert many.status_code == 413 and "SEGAGENT_MAX_MASK_PIXELS" in many.json()["error"], many.text
            within = requests.post(f"{url}/webhook", json=_full_regions(3), timeout=120)  # 240 M pixels
            assert within.status_code == 200 and within.json()["regions"] == 3, within.text
            assert requests.get(f"{url}/health", timeout=5).ok and server.poll() is None
        finally:
            server.terminate()
            server.wait(timeout=20)


def _png(width: int, height: int) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, "PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _chat(url: str, image: str) -> requests.Response:
    return requests.post(f"{url}/v1/chat/completions", timeout=120, json={"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": "the blob"}]}]})


def test_the_policy_server_bounds_images_by_pixels_and_answers_memory_errors_with_413(taught_vlm, tmp_path):
    port = free_port()
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen([sys.executable, "-m", "model", "serve-policy", "--policy", str(taught_vlm),
                                   "--port", str(port), "--model-id", "tiny"], cwd=ROOT, stdout=log,
                                  stderr=subprocess.STDOUT, env={**os.environ, "MALLOC_ARENA_MAX": "2"})
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_up(url, server, log_path)
            assert _chat(url, _png(64, 48)).status_code == 200
            # from here on, 150 MB beyond what the server holds once started
            limit = _virtual_size(server.pid) + (150 << 20)
            resource.prlimit(server.pid, resource.RLIMIT_AS, (limit, limit))

            huge = _chat(url, _png(12000, 12000))  # some 400 KiB of PNG for 144 megapixels
            assert huge.status_code == 413 and "pixels" in huge.json()["error"]["message"], huge.text
            within = _chat(url, _png(8000, 8000))  # within the pixel limit; 192 MB as RGB
            assert within.status_code == 413 and "memory" in within.json()["error"]["message"], within.text
            garbage = _chat(url, "data:image/png;base64," + base64.b64encode(b"not an image").decode())
            assert garbage.status_code == 400 and "does not decode" in garbage.json()["error"]["message"]
            assert requests.get(f"{url}/health", timeout=10).ok and server.poll() is None
        finally:
            server.terminate()
            server.wait(timeout=20)
