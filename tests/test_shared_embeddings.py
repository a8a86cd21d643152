"""The embedding store on a folder several machines share (SEGAGENT_BLOB_DIR): one file per entry, atomic renames,
LRU by modification time, bounded by sweeps. Another machine is a real subprocess on the same folder; the tool is
a tiny random SAM saved as a checkpoint and loaded by path."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from model.core.masks import iou
from model.settings import Settings
from model.tools import EmbeddingStore, segmenter_from, shared_entries
from model.tools.embedding_store import unpack
from model.tools.shared_entries import PARTIAL, SUFFIX, SharedEntries
from tests.embedding_helpers import CLICKS, MB, FullDiskFile, arrays_of, sam, write_tiny_sam
from tests.synthetic import scene

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return write_tiny_sam(tmp_path_factory.mktemp("sam") / "tiny_sam.pth")


def shared_sam(checkpoint: Path, folder: Path, store_bytes: int = 64 * MB):
    """A tiny SAM segmenter on the shared store in `folder`, and the list its encodings are counted in."""
    return sam(checkpoint, folder, store_bytes, shared=True)


def entries(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*" + SUFFIX))


def partials(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*" + PARTIAL))


def test_the_tool_serves_a_first_click_from_an_encoding_another_machine_stored(checkpoint, tmp_path):
    image, _ = scene(96, 80, seed=2)
    np.save(tmp_path / "image.npy", image)
    script = f"""
import json, numpy as np
from pathlib import Path
from tests.test_shared_embeddings import shared_sam, CLICKS
segmenter, encodes = shared_sam(Path({str(checkpoint)!r}), Path({str(tmp_path / 'blobs')!r}))
np.save({str(tmp_path / 'mask.npy')!r}, segmenter.predict(np.load({str(tmp_path / 'image.npy')!r}), CLICKS).mask)
print(json.dumps({{"encodes": len(encodes), **segmenter.store.status()}}))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=ENV)
    assert done.returncode == 0, done.stderr
    other = json.loads(done.stdout.strip().splitlines()[-1])
    assert other["shared"] and (other["encodes"], other["writes"], other["entries"]) == (1, 1, 1)
    segmenter, _ = shared_sam(checkpoint, tmp_path / "blobs")
    segmenter.tool.encode = None  # an encoding would fail
    result = segmenter.predict(image, CLICKS)
    assert segmenter.store.hits == 1 and segmenter.store.misses == 0
    assert iou(result.mask, np.load(tmp_path / "mask.npy")) > 0.95  # float32 there, the stored float16 here
    assert not list((tmp_path / "blobs").rglob("*.db")) and partials(tmp_path / "blobs") == []


WRITER = """
import sys, numpy as np
from model.tools.embedding_store import EmbeddingStore
def arrays_of(megabytes, seed):
    return {"features": np.random.default_rng(seed).random(int(megabytes * (1 << 20)) // 4, dtype=np.float32)}
store = EmbeddingStore(sys.argv[1], max_bytes=6 << 20, precision="float32", shared=True)
name = sys.argv[2]
for i in range(25):
    store.put(store.key("sam", "m", f"{name}{i % 12}"), arrays_of(0.5, i))
    found = store.load(store.key("sam", "m", f"{'b' if name == 'a' else 'a'}{i % 12}"), dict)
    assert found is None or found["features"].shape == (131072,)
assert store.errors == 0, store.status()
"""


def test_two_machines_writing_and_reading_at_once_share_whole_entries(tmp_path):
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "blobs"), name], cwd=ROOT, env=ENV,
                                stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    for writer in writers:
        _, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err
    assert partials(tmp_path / "blobs") == [] and entries(tmp_path / "blobs")
    for path in entries(tmp_path / "blobs"):
        assert unpack(path.read_bytes())["features"].shape == (131072,)
    kept = SharedEntries(tmp_path / "blobs", 6 * MB)
    assert kept.sweep() == kept.volume() <= 6 * MB and len(kept) == len(entries(tmp_path / "blobs")) > 0


def age(paths: list[Path], seconds_ago: float) -> None:
    """Set the files' modification times in the past, the first the oldest (as if written that long ago)."""
    start = time.time() - seconds_ago
    for i, path in enumerate(paths):
        os.utime(path, (start + i, start + i))


def test_past_its_bound_the_least_recently_used_goes_a_read_counts_as_a_use(tmp_path):
    store = EmbeddingStore(tmp_path / "blobs", max_bytes=int(3.5 * MB), precision="float32", shared=True)
    keys = [store.key("sam", "model", f"image{i}") for i in range(5)]
    for i in range(3):
        store.put(keys[i], arrays_of(1, i))
    paths = [store._cache.path(key) for key in keys]
    age(paths[:3], 1000)  # image0 the oldest
    assert store.load(keys[0], dict) is not None  # image0 used: image1 is now the least recently used
    store.put(keys[3], arrays_of(1, 3))  # past the bound: a sweep
    assert not paths[1].exists() and all(paths[i].exists() for i in (0, 2, 3))
    assert store.load(keys[1], dict) is None and len(store) == 3 and store.size_bytes <= store.max_bytes
    for i in range(5):
        store.put(keys[i], arrays_of(1, 10 + i))
        assert store.size_bytes <= store.max_bytes
    store.put(keys[0], arrays_of(4, 0))  # larger than the bound: not kept, nothing evicted for it
    assert len(store) == 3 and store.size_bytes <= store.max_bytes


def test_a_sweep_sees_what_other_machines_wrote(tmp_path):
    here, there = (SharedEntries(tmp_path / "blobs", int(2.5 * MB), sweep_seconds=0) for _ in range(2))
    there.set("a", b"x" * MB)
    there.set("b", b"x" * MB)
    age([here.path("a"), here.path("b")], 1000)
    here.set("c", b"x" * MB)  # its own estimate is 1 MB: the sweep is the periodic one
    assert here.get("a") is None and here.get("b") is not None and here.get("c") is not None
    assert here.volume() == there.volume() == 2 * MB and len(there) == 2
    assert there.delete("b") and not there.delete("b") and len(here) == 1


@pytest.mark.parametrize("damage", ["truncated", "flipped"])
def test_a_damaged_file_is_a_miss_and_is_removed(tmp_path, caplog, damage):
    store = EmbeddingStore(tmp_path / "blobs", max_bytes=8 * MB, precision="float32", shared=True)
    key = store.key("sam", "m", "image")
    store.put(key, arrays_of(0.5, 0))
    path = store._cache.path(key)
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="model.tools.embedding_store"):
        assert store.load(key, dict) is None
    assert "is a miss and is dropped" in caplog.text and not path.exists()
    assert (store.misses, store.errors, len(store)) == (1, 1, 0)


def test_a_full_disk_leaves_no_partial_file_and_the_encoding_is_served(checkpoint, tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(shared_entries, "open", FullDiskFile, raising=False)
    image, _ = scene(96, 80, seed=7)
    segmenter, encodes = shared_sam(checkpoint, tmp_path / "blobs")
    with caplog.at_level(logging.WARNING, logger="model.tools.embedding_store"):
        result = segmenter.predict(image, CLICKS)
    assert result.mask.shape == (80, 96) and len(encodes) == 1
    assert segmenter.store.errors == 1 and segmenter.store.writes == 0 and len(segmenter.store) == 0
    assert "the disk is full" in caplog.text
    assert [path for path in (tmp_path / "blobs").rglob("*") if path.is_file()] == []
    segmenter.predict(image, CLICKS)
    assert len(encodes) == 1  # still in memory


KILLED = """
import os, signal, sys
import numpy as np
from model.tools.embedding_store import EmbeddingStore
os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)  # dies between writing and renaming
store = EmbeddingStore(sys.argv[1], max_bytes=8 << 20, precision="float32", shared=True)
store.put(store.key("sam", "m", "image"), {"features": np.ones(1000, np.float32)})
"""


def test_a_partial_file_from_a_killed_writer_is_never_read_and_is_swept(tmp_path):
    done = subprocess.run([sys.executable, "-c", KILLED, str(tmp_path / "blobs")], cwd=ROOT, env=ENV, timeout=300,
                          capture_output=True, text=True)
    assert done.returncode == -9, done.stderr
    (partial,) = partials(tmp_path / "blobs")
    assert partial.stat().st_size > 4000 and entries(tmp_path / "blobs") == []
    store = EmbeddingStore(tmp_path / "blobs", max_bytes=8 * MB, precision="float32", shared=True)
    key = store.key("sam", "m", "image")
    assert store.load(key, dict) is None and (store.misses, store.errors) == (1, 0)
    assert len(store) == 0 and store.size_bytes == 0  # not an entry
    store._cache.sweep()
    assert partial.exists()  # young: it may be a write under way on another machine
    age([partial], 2 * 3600)
    store._cache.sweep()
    assert not partial.exists()
    store.put(key, {"features": np.ones(1000, np.float32)})
    assert store.load(key, dict)["features"].shape == (1000,)


def test_settings_put_the_store_in_the_blob_folder_when_there_is_one(checkpoint, tmp_path, monkeypatch):
    for name in ("SEGAGENT_TOOL", "SAM2_CHECKPOINT", "SEGAGENT_EMBEDDING_STORE_MB",
                 "SEGAGENT_EMBEDDING_STORE_PRECISION", "SEGAGENT_BLOB_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SAM_CHECKPOINT", str(checkpoint))
    monkeypatch.setenv("SEGAGENT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SEGAGENT_DEVICE", "cpu")
    monkeypatch.setenv("SEGAGENT_BLOB_DIR", str(tmp_path / "blobs"))
    store = segmenter_from(Settings()).store
    assert store is not None and store.shared and store.folder == tmp_path / "blobs" / "embeddings"
    assert isinstance(store._cache, SharedEntries) and store.max_bytes == 2048 * MB
    monkeypatch.setenv("SEGAGENT_BLOB_DIR", "")
    store = segmenter_from(Settings()).store
    assert store is not None and not store.shared and store.folder == tmp_path / "data" / "embeddings"
    assert (tmp_path / "data" / "embeddings" / "cache.db").exists()
    assert not list((tmp_path / "blobs").rglob("*.db"))
