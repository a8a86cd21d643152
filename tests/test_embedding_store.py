"""The embedding store: a deep tool's image encodings on disk, shared by processes and kept across restarts.

A tiny random SAM (and SAM 2) is saved as a checkpoint and loaded by path; encodings are counted by wrapping the
tool's encode. Another process is a real subprocess on the same folder."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from model.core.imageio import image_digest
from model.core.masks import iou
from model.settings import Settings
from model.tools import EmbeddingStore, StorableTool, make_segmenter, segmenter_from
from model.tools.embedding_store import pack, unpack
from tests.embedding_helpers import CLICKS, FullDiskFile, arrays_of, sam, write_tiny_sam
from tests.synthetic import scene

ROOT = Path(__file__).resolve().parents[1]
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_tiny_sam(tmp_path_factory.mktemp("sam") / "tiny_sam.pth")


def entry_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.val"))


def test_the_sam_tools_follow_the_storable_protocol(checkpoint, tmp_path):
    segmenter, _ = sam(checkpoint, tmp_path / "store")
    assert isinstance(segmenter.tool, StorableTool) and segmenter.store is not None
    assert str(checkpoint.resolve()) in segmenter.tool.model_id
    classical = make_segmenter("classical", store_folder=tmp_path / "classical", store_bytes=1 << 20)
    assert not isinstance(classical.tool, StorableTool) and classical.store is None
    assert not (tmp_path / "classical").exists()  # the CPU tool is cheap: nothing stored, no folder


def test_a_second_process_reads_the_encoding_instead_of_encoding(checkpoint, tmp_path):
    image, _ = scene(96, 80, seed=2)
    first, encodes = sam(checkpoint, tmp_path / "store")
    expected = first.predict(image, CLICKS)
    assert len(encodes) == 1 and first.store.writes == 1 and len(entry_files(tmp_path / "store")) == 1
    np.save(tmp_path / "image.npy", image)
    script = f"""
import json, numpy as np
from tests.embedding_helpers import sam, CLICKS
from pathlib import Path
segmenter, encodes = sam(Path({str(checkpoint)!r}), Path({str(tmp_path / 'store')!r}))
result = segmenter.predict(np.load({str(tmp_path / 'image.npy')!r}), CLICKS)
np.save({str(tmp_path / 'mask.npy')!r}, result.mask)
print(json.dumps({{"encodes": len(encodes), **segmenter.store.status()}}))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    other = json.loads(done.stdout.strip().splitlines()[-1])
    assert other["encodes"] == 0 and other["hits"] == 1 and other["misses"] == 0 and other["entries"] == 1
    assert iou(np.load(tmp_path / "mask.npy"), expected.mask) > 0.95  # float16 features: near, see round trip


def test_the_store_outlives_its_segmenter(checkpoint, tmp_path):
    image, _ = scene(96, 80, seed=4)
    before, encodes = sam(checkpoint, tmp_path / "store", precision="float32")
    expected = before.predict(image, CLICKS)
    before.store.close()
    after, encodes_after = sam(checkpoint, tmp_path / "store", precision="float32")
    again = after.predict(image, CLICKS)
    after.predict(image, CLICKS[:1])  # the memory cache now
    assert (len(encodes), len(encodes_after)) == (1, 0)
    assert (after.store.hits, after.cache.misses, after.cache.hits) == (1, 1, 1)
    assert np.array_equal(again.mask, expected.mask)  # float32: the same features, the same mask


def test_new_weights_are_a_new_key(checkpoint, tmp_path):
    image, _ = scene(96, 80, seed=4)
    first, _ = sam(checkpoint, tmp_path / "store")
    first.encode(image)
    stat = checkpoint.stat()
    os.utime(checkpoint, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # the file rewritten
    second, encodes = sam(checkpoint, tmp_path / "store")
    second.encode(image)
    assert second.tool.model_id != first.tool.model_id and len(encodes) == 1 and len(second.store) == 2


def test_concurrent_misses_in_one_process_encode_and_write_once(checkpoint, tmp_path):
    image, _ = scene(96, 80, seed=5)
    segmenter, encodes = sam(checkpoint, tmp_path / "store")
    threads = [threading.Thread(target=segmenter.predict, args=(image, CLICKS)) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(encodes) == 1 and segmenter.store.writes == 1 and segmenter.store.misses == 1


def test_past_its_bound_the_least_recently_used_goes(tmp_path):
    store = EmbeddingStore(tmp_path / "store", max_bytes=int(3.5 * (1 << 20)), precision="float32")
    keys = [store.key("sam", "model", f"image{i}") for i in range(5)]
    for i in range(3):
        store.put(keys[i], arrays_of(1, i))
    assert store.load(keys[0], dict) is not None  # image0 used: image1 is now the least recently used
    store.put(keys[3], arrays_of(1, 3))
    assert store.load(keys[1], dict) is None and all(store.load(keys[i], dict) is not None for i in (0, 2, 3))
    for i in range(5):
        store.put(keys[i], arrays_of(1, 10 + i))
        assert store.size_bytes <= store.max_bytes
    assert len(store) == 3 and len(entry_files(tmp_path / "store")) == 3
    store.put(keys[0], arrays_of(4, 0))  # larger than the bound: not kept, nothing evicted for it
    assert len(store) == 3 and store.size_bytes <= store.max_bytes


def test_a_lowered_bound_evicts_down_to_it_at_the_next_write(tmp_path):
    store = EmbeddingStore(tmp_path / "store", max_bytes=8 << 20, precision="float32")
    for i in range(6):
        store.put(store.key("sam", "m", str(i)), arrays_of(1, i))
    store.close()
    smaller = EmbeddingStore(tmp_path / "store", max_bytes=int(2.5 * (1 << 20)), precision="float32")
    smaller.put(smaller.key("sam", "m", "new"), arrays_of(1, 9))
    assert smaller.size_bytes <= smaller.max_bytes and len(smaller) == 2
    assert smaller.load(smaller.key("sam", "m", "new"), dict) is not None


WRITER = """
import sys, numpy as np
from model.tools.embedding_store import EmbeddingStore
def arrays_of(megabytes, seed):
    return {"features": np.random.default_rng(seed).random(int(megabytes * (1 << 20)) // 4, dtype=np.float32)}
store = EmbeddingStore(sys.argv[1], max_bytes=6 << 20, precision="float32")
name = sys.argv[2]
for i in range(25):
    store.put(store.key("sam", "m", f"{name}{i % 12}"), arrays_of(0.5, i))
    found = store.load(store.key("sam", "m", f"{'b' if name == 'a' else 'a'}{i % 12}"), dict)
    assert found is None or found["features"].shape == (131072,)
assert store.errors == 0, store.status()
"""


def test_processes_writing_and_reading_at_once_keep_it_whole_and_bounded(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "store"), name], cwd=ROOT, env=env,
                                stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    for writer in writers:
        _, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err
    store = EmbeddingStore(tmp_path / "store", max_bytes=6 << 20, precision="float32")
    assert store.size_bytes <= store.max_bytes and len(store) == len(entry_files(tmp_path / "store")) > 0
    for key in store._cache.iterkeys():
        assert store.load(key, dict)["features"].shape == (131072,)


@pytest.mark.parametrize("damage", ["truncated", "flipped", "missing", "another shape"])
def test_a_damaged_entry_is_a_miss_and_is_written_again(checkpoint, tmp_path, caplog, damage):
    image, _ = scene(96, 80, seed=6)
    first, _ = sam(checkpoint, tmp_path / "store")
    expected = first.predict(image, CLICKS)
    (path,) = entry_files(tmp_path / "store")
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flipped":
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(data)
    elif damage == "missing":
        path.unlink()
    else:
        key = first.store.key("sam", first.tool.model_id, image_digest(image))
        first.store.put(key, {"features": np.zeros((1, 32, 2, 2), np.float32)})
    second, encodes = sam(checkpoint, tmp_path / "store")
    with caplog.at_level(logging.WARNING, logger="model.tools.embedding_store"):
        result = second.predict(image, CLICKS)
    assert len(encodes) == 1 and second.store.misses == 1 and second.store.writes == 1
    assert iou(result.mask, expected.mask) > 0.95
    if damage != "missing":  # a file diskcache cannot find is its own miss
        assert "is a miss and is dropped" in caplog.text
    third, encodes = sam(checkpoint, tmp_path / "store")
    third.predict(image, CLICKS)
    assert encodes == [] and third.store.hits == 1


def test_a_full_disk_is_logged_and_the_encoding_still_served(checkpoint, tmp_path, caplog, monkeypatch):
    import diskcache.core

    monkeypatch.setattr(diskcache.core, "open", FullDiskFile, raising=False)
    image, _ = scene(96, 80, seed=7)
    segmenter, encodes = sam(checkpoint, tmp_path / "store")
    with caplog.at_level(logging.WARNING, logger="model.tools.embedding_store"):
        result = segmenter.predict(image, CLICKS)
    assert result.mask.shape == (80, 96) and len(encodes) == 1
    assert segmenter.store.errors == 1 and segmenter.store.writes == 0 and len(segmenter.store) == 0
    assert "the disk is full" in caplog.text
    assert entry_files(tmp_path / "store") == []  # the partly written file is not left behind
    segmenter.predict(image, CLICKS)
    assert len(encodes) == 1  # still in memory


def test_float16_round_trip_gives_near_features_and_the_same_masks(checkpoint, tmp_path):
    segmenter, _ = sam(checkpoint, None)
    tool = segmenter.tool
    for seed in range(3):
        image, _ = scene(96, 80, seed=seed)
        encoded = segmenter.encode(image)
        arrays = tool.encoded_arrays(encoded)
        blob = pack(arrays, "float16")
        assert len(blob) < 0.6 * len(pack(arrays, "float32"))
        back = tool.encoded_from_arrays(unpack(blob), image.shape[:2])
        assert back.data[0].dtype == torch.float32 and back.data[1:] == encoded.data[1:]
        assert torch.allclose(back.data[0], encoded.data[0], rtol=1e-3, atol=1e-3)
        for clicks in (CLICKS[:1], CLICKS):
            full, half = tool.predict(encoded, clicks), tool.predict(back, clicks)
            assert iou(half.mask, full.mask) > 0.99 and abs(half.score - full.score) < 1e-2


def test_what_float16_cannot_hold_is_kept_as_float32():
    arrays = {"big": np.array([1e6, -3.0], np.float32), "small": np.array([0.5], np.float32)}
    back = unpack(pack(arrays, "float16"))
    assert back["big"].tolist() == [1e6, -3.0] and back["small"].tolist() == [0.5]
    assert all(array.dtype == np.float32 for array in back.values())


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_sam2_round_trip_through_the_store(tmp_path):
    """SAM 2's three levels stored and read back by another segmenter: no encoding, near masks."""
    import sam2  # noqa: F401  (initialises hydra on the package's configs)
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from tests.test_sam2 import SHIPPED_TINY, TINY_OVERRIDES

    config = compose(config_name=SHIPPED_TINY, overrides=TINY_OVERRIDES)
    OmegaConf.save(config, tmp_path / "tiny.yaml")
    torch.manual_seed(0)
    torch.save({"model": instantiate(config.model, _recursive_=True).state_dict()}, tmp_path / "tiny.pt")
    options = {"sam2_checkpoint": str(tmp_path / "tiny.pt"), "sam2_config": str(tmp_path / "tiny.yaml"),
               "device": "cpu", "store_folder": tmp_path / "store", "store_bytes": 64 << 20}
    image, _ = scene(96, 80, seed=3)
    first = make_segmenter("sam2", **options)
    expected = first.predict(image, CLICKS)
    assert set(first.tool.encoded_arrays(first.encode(image))) == {"image_embed", "high_res_feats_0",
                                                                   "high_res_feats_1"}
    second = make_segmenter("sam2", **options)
    second.tool.encode = None  # an encoding would fail
    result = second.predict(image, CLICKS)
    assert second.store.hits == 1 and iou(result.mask, expected.mask) > 0.95


def test_settings_place_and_bound_the_store(checkpoint, tmp_path, monkeypatch):
    for name in ("SEGAGENT_TOOL", "SAM2_CHECKPOINT", "SEGAGENT_EMBEDDING_STORE_MB",
                 "SEGAGENT_EMBEDDING_STORE_PRECISION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SAM_CHECKPOINT", str(checkpoint))
    monkeypatch.setenv("SEGAGENT_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("SEGAGENT_DEVICE", "cpu")
    segmenter = segmenter_from(Settings())
    assert segmenter.store is not None and segmenter.store.folder == tmp_path / "embeddings"
    assert segmenter.store.max_bytes == 2048 << 20 and segmenter.store.precision == "float16"
    monkeypatch.setenv("SEGAGENT_EMBEDDING_STORE_MB", "0")
    assert segmenter_from(Settings()).store is None


def test_a_store_that_cannot_open_leaves_the_tool_on(checkpoint, tmp_path, caplog):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "cache.db").write_bytes(b"not a database" * 100)
    with caplog.at_level(logging.ERROR, logger="model.tools.embedding_store"):
        segmenter, _ = sam(checkpoint, tmp_path / "store")
    assert segmenter.store is None and "is off" in caplog.text
    assert segmenter.predict(scene(96, 80, seed=1)[0], CLICKS).mask.shape == (80, 96)


def test_a_click_through_the_backend_fills_the_store_status_reports_it(checkpoint, tmp_path, image_server):
    from tests.apps import App
    from tests.test_backend import keypoint, predict

    app = App(Settings(data_dir=tmp_path, tool="sam", sam_checkpoint=str(checkpoint), device="cpu",
                       banned_subnets="169.254.0.0/16"))
    response = predict(app.client, f"{image_server.url}/object.png", {"result": [keypoint(50, 50)]})
    assert response.status_code == 200
    store = app.client.get("/status").json["embedding_store"]
    assert store["folder"] == str(tmp_path / "embeddings") and store["entries"] == 1
    assert (store["misses"], store["writes"], store["errors"]) == (1, 1, 0)
    assert 0 < store["bytes"] <= store["max_bytes"] == 2048 << 20
