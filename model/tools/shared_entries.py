"""Entries in a folder several machines mount (SEGAGENT_BLOB_DIR/embeddings): the embedding store's get, set,
delete and volume without SQLite, whose locks a network file system does not keep.

An entry is one file named by the SHA-256 of its key, fanned out in 256 subfolders by its first two hex digits.
A write goes to a partial file of its own (a unique name in the same subfolder) and is renamed over the entry's
name: a reader on any machine sees the whole file or none, and the last writer wins. A failed write (a full
disk) removes its partial file; one left by a killed writer is never read (reads open entry names only) and a
sweep removes it once it is an hour old. A read sets the file's modification time to now (on NFS the server's
clock), so that the oldest modification time is the least recently used entry on every machine.

The byte bound is kept by a sweep: list the entries with their sizes and times, delete the oldest until the
rest fits. A process sweeps after a write that takes its estimate (the last sweep's total plus its own writes
since) past the bound, and at least every SWEEP_SECONDS while it writes, for the other machines' writes. One
sweep at a time per process; sweeps on two machines at once both delete the oldest, and a file already gone is
counted as freed, so at worst a little more than needed is evicted.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

SUFFIX = ".entry"
PARTIAL = ".part"
SWEEP_SECONDS = 60.0
PARTIAL_MAX_AGE = 3600.0  # a partial file older than this was left by a writer that died


@dataclass(frozen=True)
class _File:
    path: Path
    size: int
    mtime: float
    partial: bool


class SharedEntries:
    """Bytes by key in a shared folder, bounded in bytes, least recently used out (see the module's docstring).

    The calls the embedding store makes of diskcache: get, set, delete, volume, len, close. OSError passes."""

    def __init__(self, folder: str | Path, max_bytes: int, sweep_seconds: float = SWEEP_SECONDS):
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.sweep_seconds = sweep_seconds
        self.folder.mkdir(parents=True, exist_ok=True)
        self._estimate = 0
        self._last_sweep = float("-inf")
        self._lock = threading.Lock()  # guards the estimate and the time of the last sweep
        self._sweeping = threading.Lock()

    def path(self, key: str) -> Path:
        name = hashlib.sha256(key.encode()).hexdigest()
        return self.folder / name[:2] / (name[2:] + SUFFIX)

    def get(self, key: str) -> bytes | None:
        """The entry's bytes, or None when there is none; a read marks it as used."""
        path = self.path(key)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        with contextlib.suppress(FileNotFoundError):  # evicted since: the bytes read are still whole
            os.utime(path)
        return blob

    def set(self, key: str, blob: bytes) -> None:
        """Write the entry (replacing any), then sweep if the bound may be passed. A failure raises OSError and
        leaves no partial file."""
        path = self.path(key)
        path.parent.mkdir(exist_ok=True)
        partial = path.with_name(f"{path.name}.{uuid.uuid4().hex}{PARTIAL}")
        try:
            with open(partial, "xb") as file:
                file.write(blob)
            os.replace(partial, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(partial)
            raise
        with self._lock:
            self._estimate += len(blob)
            due = (self._estimate > self.max_bytes
                   or time.monotonic() - self._last_sweep >= self.sweep_seconds)
        if due:
            self.sweep()

    def delete(self, key: str) -> bool:
        try:
            os.remove(self.path(key))
        except FileNotFoundError:
            return False
        return True

    def sweep(self) -> int | None:
        """Remove stale partial files and the least recently used entries past the bound; the bytes kept, or
        None when this process is already sweeping."""
        if not self._sweeping.acquire(blocking=False):
            return None
        try:
            now = time.time()
            entries = []
            for found in self._files():
                if not found.partial:
                    entries.append(found)
                elif now - found.mtime > PARTIAL_MAX_AGE:
                    _remove(found.path)
            entries.sort(key=lambda found: found.mtime)
            total = sum(found.size for found in entries)
            for found in entries:
                if total <= self.max_bytes:
                    break
                _remove(found.path)  # gone already (another machine's sweep): freed all the same
                total -= found.size
            with self._lock:
                self._estimate, self._last_sweep = total, time.monotonic()
            return total
        finally:
            self._sweeping.release()

    def _files(self) -> list[_File]:
        """The entries and partial files, with their sizes and modification times; those that vanish while
        listed are left out."""
        found: list[_File] = []
        subfolders: list[str] = []
        with contextlib.suppress(FileNotFoundError), os.scandir(self.folder) as top:
            subfolders = [entry.path for entry in top if len(entry.name) == 2 and entry.is_dir()]
        for subfolder in subfolders:
            with contextlib.suppress(FileNotFoundError), os.scandir(subfolder) as files:
                for entry in files:
                    partial = entry.name.endswith(PARTIAL)
                    if not (partial or entry.name.endswith(SUFFIX)):
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        stat = entry.stat()
                        found.append(_File(Path(entry.path), stat.st_size, stat.st_mtime, partial))
        return found

    def volume(self) -> int:
        """The entries' bytes now (a listing of the folder)."""
        return sum(found.size for found in self._files() if not found.partial)

    def __len__(self) -> int:
        return sum(not found.partial for found in self._files())

    def close(self) -> None:
        """Nothing is held open between calls."""


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)
