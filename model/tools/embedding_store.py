"""Image encodings kept on disk: written once per image and model, read by every process that shares the folder.

A deep tool's encoding (SAM's image embedding, SAM 2's features) costs seconds on a CPU; the memory cache
(base.ImageCache) keeps it for one process only. This store keeps it in SEGAGENT_DATA_DIR/embeddings, bounded
in bytes with the least recently used evicted, so that a pre-annotation worker's encoding serves the web
process's first click, and a restart loses nothing.

Under it is diskcache (an SQLite index and one file per entry): several processes read and write it at once,
each write is one transaction, and reads count as uses for the eviction. An entry is the tool's arrays as an
uncompressed .npz (no pickle; zip's CRC tells a damaged file), floats in the store's precision (float16
halves the bytes). Entries go through diskcache's get, set and delete (and volume, for the bound); on a folder
several machines share (SEGAGENT_BLOB_DIR), where SQLite does not belong, through shared_entries.SharedEntries,
which has the same calls: one file per entry, written by atomic renames, bounded by sweeps.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import sqlite3
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

import diskcache
import numpy as np

from model.tools.shared_entries import SharedEntries

log = logging.getLogger(__name__)

T = TypeVar("T")
Precision = Literal["float16", "float32"]
FORMAT = "v1"  # in every key: a change of the entry's format makes new keys, never misread old entries
FLOAT16_MAX = float(np.finfo(np.float16).max)
STORE_ERRORS = (OSError, sqlite3.Error, diskcache.Timeout)


class _Disk(diskcache.Disk):
    """diskcache's Disk, without the partly written file a failed write (a full disk) would leave behind."""

    def _write(self, full_path, iterator, mode, encoding=None):  # diskcache 5.6.3's private hook
        try:
            return super()._write(full_path, iterator, mode, encoding)
        except OSError:
            with contextlib.suppress(OSError):
                os.remove(full_path)
            raise


def pack(arrays: dict[str, np.ndarray], precision: Precision) -> bytes:
    """The arrays as .npz bytes; floats in the precision asked for (an array float16 cannot hold stays float32)."""
    kept = {}
    for name, array in arrays.items():
        if (precision == "float16" and array.dtype.kind == "f" and array.size
                and float(np.abs(array).max()) < FLOAT16_MAX):
            array = array.astype(np.float16)
        kept[name] = array
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **kept)
    return buffer.getvalue()


def unpack(blob: bytes) -> dict[str, np.ndarray]:
    """The arrays again, floats as float32. A damaged entry raises ValueError."""
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as loaded:
            return {name: _float32(loaded[name]) for name in loaded.files}
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as exc:
        raise ValueError(f"unreadable entry: {type(exc).__name__}: {exc}") from exc


def _float32(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float32) if array.dtype.kind == "f" else array


def file_identity(path: str | Path) -> str:
    """A weights or config file as part of a model's identity: its absolute path, size and modification time
    (cheap, the same for every process that sees the file at that path, and changed when it is rewritten)."""
    resolved = Path(path).resolve()
    stat = resolved.stat()
    return f"{resolved}:{stat.st_size}:{stat.st_mtime_ns}"


def out_of_space(exc: BaseException) -> bool:
    return ((isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT))
            or getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL)


class EmbeddingStore:
    """Encodings by key, bounded in bytes (index included), least recently used out; safe across processes.

    Nothing here fails a request: an entry that cannot be read is a miss (logged, and removed), a write that
    fails (a full disk) is logged and the encoding is still served. The counts are this process's."""

    def __init__(self, folder: str | Path, max_bytes: int, precision: Precision = "float16", shared: bool = False):
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.precision = precision
        self.shared = shared
        self._cache: diskcache.Cache | SharedEntries
        if shared:  # a folder several machines mount: no SQLite
            self._cache = SharedEntries(self.folder, max_bytes)
        else:
            self._cache = diskcache.Cache(
                str(self.folder), size_limit=max_bytes, eviction_policy="least-recently-used",
                cull_limit=1,  # entries of one model have one size: one in, one out; _bound() handles the rest
                disk=_Disk, disk_min_file_size=0)  # every entry a file, the index small
        self._lock = threading.Lock()
        self.hits = self.misses = self.writes = self.errors = 0

    @staticmethod
    def key(tool: str, model_id: str, digest: str) -> str:
        """An entry's key: the tool, its model (weights, config) and the image, in the store's format."""
        model = hashlib.sha256(model_id.encode()).hexdigest()[:24]
        return f"{FORMAT}:{tool}:{model}:{digest}"

    def load(self, key: str, rebuild: Callable[[dict[str, np.ndarray]], T]) -> T | None:
        """What `rebuild` makes of the arrays stored under the key (the tool's encoding); None when there are
        none, or they cannot be read or rebuilt (then they are dropped)."""
        try:
            blob = self._cache.get(key)
        except STORE_ERRORS as exc:
            log.warning("embedding store: cannot read %s: %s: %s", key, type(exc).__name__, exc)
            self._count("errors", "misses")
            return None
        if not isinstance(blob, bytes):
            self._count("misses")
            return None
        try:
            rebuilt = rebuild(unpack(blob))
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:  # damaged, or arrays of another shape
            self.discard(key, f"{type(exc).__name__}: {exc}")
            self._count("misses")
            return None
        self._count("hits")
        return rebuilt

    def put(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        """Keep the arrays under the key (replacing what is there); a failure is logged, not raised."""
        blob = pack(arrays, self.precision)
        if len(blob) > self.max_bytes:
            log.warning("embedding store: %s (%d bytes) is larger than the store's bound: not kept", key, len(blob))
            return
        try:
            self._cache.set(key, blob)
            self._bound()
        except STORE_ERRORS as exc:
            full = "the disk is full, " if out_of_space(exc) else ""
            log.warning("embedding store: %s not kept (%s%s: %s); the encoding is served from memory", key, full,
                        type(exc).__name__, exc)
            self._count("errors")
            return
        self._count("writes")

    def discard(self, key: str, why: str) -> None:
        """Drop an entry that cannot be used; the next encoding of its image writes it again."""
        log.warning("embedding store: %s is a miss and is dropped: %s", key, why)
        self._count("errors")
        with contextlib.suppress(*STORE_ERRORS):
            self._cache.delete(key)

    def _bound(self) -> None:
        # a set evicts at most one entry (cull_limit); when that is not enough (a larger entry, a lowered bound),
        # one more at a time: Cache.cull() would evict ten at once
        cache = self._cache
        if isinstance(cache, SharedEntries):  # its set sweeps
            return
        while cache.volume() > self.max_bytes and len(cache):
            with cache._transact(retry=True) as (sql, cleanup):  # diskcache 5.6.3's own culling, one entry
                cache._cull(time.time(), sql, cleanup, limit=1)

    def _count(self, *names: str) -> None:
        with self._lock:
            for name in names:
                setattr(self, name, getattr(self, name) + 1)

    @property
    def size_bytes(self) -> int:
        """The store's bytes on disk as it counts them: its entries and its index."""
        return int(self._cache.volume())

    def __len__(self) -> int:
        return len(self._cache)

    def status(self) -> dict:
        try:
            size, entries = self.size_bytes, len(self)
        except STORE_ERRORS as exc:
            return {"folder": str(self.folder), "error": f"{type(exc).__name__}: {exc}"}
        return {"folder": str(self.folder), "shared": self.shared, "entries": entries, "bytes": size,
                "max_bytes": self.max_bytes, "precision": self.precision, "hits": self.hits, "misses": self.misses,
                "writes": self.writes, "errors": self.errors}

    def close(self) -> None:
        self._cache.close()


def open_store(folder: str | Path, max_bytes: int, precision: Precision = "float16",
               shared: bool = False) -> EmbeddingStore | None:
    """The store (diskcache, or `shared`: files on a folder several machines mount), or None (logged) when it is
    off (a bound of 0) or its folder cannot be used: the tool then works from memory only, rather than not at all."""
    if max_bytes <= 0:
        return None
    try:
        return EmbeddingStore(folder, max_bytes, precision, shared)
    except STORE_ERRORS as exc:
        log.error("embedding store %s is off: %s: %s", folder, type(exc).__name__, exc)
        return None
