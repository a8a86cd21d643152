"""Weights in transformers' folder layout (SAM 3): a local folder written by save_pretrained, or a Hugging Face hub
name at a pinned commit, downloaded once per data volume into SEGAGENT_DATA_DIR/checkpoints/hub.

A hub name is only accepted with the commit to use (a 40-character hash): a branch or a tag can move, and
the weights under a name must not change without the operator asking. Processes that share the data folder
download once: the others wait on the target's lock file, then find the folder there. The download goes into
a `.part` folder renamed when complete, so an interrupted one is resumed, never taken for whole. The token
(HF_TOKEN) goes to huggingface_hub's snapshot_download only, which sends it to the hub's endpoint; it is never
logged nor put in an error message.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from model.tools.loading import CheckpointError

log = logging.getLogger(__name__)

HUB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
# what a transformers model folder needs (config, weights, processor, tokenizer); not facebook/sam3's sam3.pt,
# the original checkpoint of the same weights
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt"]


@dataclass(frozen=True)
class Weights:
    folder: Path  # a folder transformers' from_pretrained reads
    source: str  # where they came from, for /health: "local folder X" or "hub NAME@REV, cached at X"
    identity: str  # changes when the weights do (the embedding store's model id)


def resolve_weights(checkpoint: str, revision: str | None, data_dir: str | Path, token: str | None = None, *,
                    what: str = "SAM 3", variable: str = "SAM3_CHECKPOINT",
                    revision_variable: str = "SAM3_REVISION") -> Weights:
    """The local folder of the weights `checkpoint` names: itself when it is a folder here, else a hub name
    downloaded at `revision` (a commit hash, required) once into data_dir/checkpoints/hub."""
    local = Path(checkpoint).expanduser()
    if local.is_dir():
        return Weights(local, f"local folder {local}", f"folder:{folder_identity(local)}")
    if local.exists() or not HUB_NAME.match(checkpoint):
        raise CheckpointError(f"{what} checkpoint {checkpoint} is not a folder ({variable} is a folder written by "
                              "transformers' save_pretrained, or a hub name such as facebook/sam3)")
    if not revision:
        raise CheckpointError(f"{variable}={checkpoint} is no folder here, so it is read as a hub name, and a hub name "
                              f"needs {revision_variable}: the commit to download (a 40-character hash, shown on the "
                              "model's 'Files and versions' page)")
    revision = revision.strip().lower()
    if not COMMIT.match(revision):
        raise CheckpointError(f"{revision_variable}={revision} is not a commit hash (40 hexadecimal characters): a "
                              "branch or a tag can move, so the weights would change without anyone asking")
    target = Path(data_dir) / "checkpoints" / "hub" / checkpoint.replace("/", "--") / revision
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{revision}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (target / "config.json").is_file():
            _download(checkpoint, revision, target, token, what)
    return Weights(target, f"hub {checkpoint}@{revision}, cached at {target}", f"hub:{checkpoint}@{revision}")


def _download(name: str, revision: str, target: Path, token: str | None, what: str) -> None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

    partial = target.with_name(target.name + ".part")
    log.info("downloading %s %s@%s into %s (once per data folder)", what, name, revision, target)
    try:
        snapshot_download(repo_id=name, revision=revision, local_dir=partial, token=token or None,
                          allow_patterns=ALLOW_PATTERNS)
    except GatedRepoError as exc:
        raise CheckpointError(f"{name} is gated: request access on its hub page with your account, then set HF_TOKEN "
                              f"to a read token of that account{' (the one given was refused)' if token else ''}") from exc
    except RevisionNotFoundError as exc:
        raise CheckpointError(f"{name} has no commit {revision}") from exc
    except RepositoryNotFoundError as exc:
        raise CheckpointError(f"{name} is not a model on the hub, or it is private and HF_TOKEN cannot read it") from exc
    except Exception as exc:  # offline, a network error, a full disk: said without the token
        message = str(exc).replace(token, "***") if token else str(exc)
        raise CheckpointError(f"cannot download {name}@{revision}: {type(exc).__name__}: {message[:500]}") from exc
    if not (partial / "config.json").is_file():
        raise CheckpointError(f"{name}@{revision} has no config.json: not a transformers model folder")
    partial.replace(target)


def folder_identity(folder: Path) -> str:
    """A digest of a local folder's config and of its weight files' names, sizes and modification times: it
    changes when the weights are replaced (a copy elsewhere counts as new), without reading gigabytes."""
    digest = hashlib.sha256()
    config = folder / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for path in sorted(folder.glob("*.safetensors")):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]
