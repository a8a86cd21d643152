"""What the deep tools (SAM, SAM 2) share when they load: the checkpoint, a local path or an http(s) URL
downloaded once and checked against its SHA-256, and the device they run on (SEGAGENT_DEVICE, which the
in-process policy and its training share)."""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import urllib.request
from pathlib import Path

log = logging.getLogger(__name__)

DEVICES = ("auto", "cuda", "cpu")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match its expected hash or its model."""


class DeviceError(RuntimeError):
    """The device asked for cannot be used on this machine."""


def resolve_checkpoint(checkpoint: str, data_dir: str | Path, sha256: str | None = None, *, what: str = "SAM",
                       sha_variable: str = "SAM_CHECKPOINT_SHA256") -> Path:
    """A local path for the checkpoint; an http(s) URL is downloaded once into data_dir/checkpoints.

    A download is only accepted with the SHA-256 it must have (sha_variable names the setting that gives
    it), and is checked against it; a file already there with that hash is not downloaded again.
    """
    if not checkpoint.startswith(("http://", "https://")):
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise CheckpointError(f"{what} checkpoint {path} does not exist")
        return path
    if not sha256:
        raise CheckpointError(f"downloading a {what} checkpoint needs {sha_variable}, its expected SHA-256")
    target = Path(data_dir) / "checkpoints" / checkpoint.rstrip("/").rsplit("/", 1)[-1]
    target.parent.mkdir(parents=True, exist_ok=True)
    # processes sharing the data dir (the backend and a worker) download it once: the others wait on the
    # folder's lock, then find it there
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        if not (target.is_file() and sha256_of(target) == sha256.lower()):
            _download(checkpoint, target, sha256, what)
    finally:
        os.close(folder)  # and the lock with it
    return target


def _download(checkpoint: str, target: Path, sha256: str, what: str) -> None:
    partial_file = target.with_suffix(target.suffix + ".part")
    log.info("downloading %s checkpoint %s to %s", what, checkpoint, target)
    with urllib.request.urlopen(checkpoint, timeout=60) as response, open(partial_file, "wb") as out:
        while chunk := response.read(1 << 20):
            out.write(chunk)
    actual = sha256_of(partial_file)
    if actual != sha256.lower():
        partial_file.unlink()
        raise CheckpointError(f"{checkpoint} has SHA-256 {actual}, expected {sha256}")
    partial_file.replace(target)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_device(device: str = "auto") -> str:
    """The torch device for SEGAGENT_DEVICE ("cuda" or "cpu"): auto is CUDA when a usable GPU is there, else
    the CPU, with a warning when torch is a CUDA build (a GPU was likely meant: a driver too old for it, or a
    container without the GPU).

    cuda on a machine without a usable GPU is refused here, when the tool or the policy is built, rather than
    at its first request.
    """
    import torch

    device = (device or "auto").lower()
    if device not in DEVICES:
        raise DeviceError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "cpu":
        return "cpu"
    usable, reason = _cuda_usable(torch)
    if device == "auto":
        if not usable and torch.version.cuda:
            log.warning("SEGAGENT_DEVICE=auto runs on the CPU: no usable CUDA GPU (%s); set SEGAGENT_DEVICE=cuda to "
                        "refuse to start without one, or cpu to mean the CPU", reason)
        return "cuda" if usable else "cpu"
    if not usable:
        raise DeviceError(f"SEGAGENT_DEVICE=cuda, but no usable CUDA GPU: {reason}; "
                          "set SEGAGENT_DEVICE=cpu (or auto) to run on the CPU")
    return "cuda"


def _cuda_usable(torch) -> tuple[bool, str]:
    if not torch.cuda.is_available():
        if torch.version.cuda:
            return False, (f"torch {torch.__version__}, built for CUDA {torch.version.cuda}, sees no GPU: no NVIDIA "
                           "driver, one older than that CUDA needs, or no GPU given to the container")
        return False, f"this torch is built without CUDA (torch {torch.__version__})"
    try:
        torch.zeros(1, device="cuda")
    except Exception as exc:  # a GPU that is there but cannot be used (driver, memory, mode)
        return False, f"{type(exc).__name__}: {exc}"
    return True, ""
