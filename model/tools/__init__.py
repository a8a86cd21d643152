"""Interactive segmentation tools behind one protocol (see base.py)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.tools.base import Box, Encoded, ImageCache, Segmenter, StorableTool, Tool, ToolResult
from model.tools.embedding_store import EmbeddingStore, Precision, open_store

if TYPE_CHECKING:
    from model.settings import Settings

TOOL_NAMES = ("classical", "sam", "sam2", "sam3")


def make_tool(name: str, sam_checkpoint: str | None = None, data_dir: str | Path = "data",
              sam_sha256: str | None = None, sam2_checkpoint: str | None = None, sam2_sha256: str | None = None,
              sam2_config: str | None = None, device: str = "auto", sam3_checkpoint: str | None = None,
              sam3_revision: str | None = None, hf_token: str | None = None) -> Tool:
    """Build a tool by name. SAM and SAM 2 need a checkpoint (SAM 2 a config too, unless the checkpoint is
    one of Meta's), SAM 3 a folder or a hub name with its revision; they run on `device` (auto, cuda or cpu).
    The classical tool needs nothing."""
    if name == "classical":
        from model.tools.classical import ClassicalTool

        return ClassicalTool()
    if name == "sam":
        if not sam_checkpoint:
            raise ValueError("the sam tool needs a checkpoint (SAM_CHECKPOINT or --sam-checkpoint)")
        from model.tools.sam import SamTool

        return SamTool(sam_checkpoint, data_dir=data_dir, sha256=sam_sha256, device=device)
    if name == "sam2":
        if not sam2_checkpoint:
            raise ValueError("the sam2 tool needs a checkpoint (SAM2_CHECKPOINT or --sam2-checkpoint)")
        from model.tools.sam2 import Sam2Tool

        return Sam2Tool(sam2_checkpoint, config=sam2_config, data_dir=data_dir, sha256=sam2_sha256, device=device)
    if name == "sam3":
        if not sam3_checkpoint:
            raise ValueError("the sam3 tool needs its weights (SAM3_CHECKPOINT: a folder, or facebook/sam3 with "
                             "SAM3_REVISION)")
        from model.tools.sam3 import Sam3Tool

        return Sam3Tool(sam3_checkpoint, revision=sam3_revision, data_dir=data_dir, token=hf_token, device=device)
    raise ValueError(f"unknown tool {name!r}; choose one of {', '.join(TOOL_NAMES)}")


def make_segmenter(name: str, cache_bytes: int = 512 << 20, store_folder: str | Path | None = None,
                   store_bytes: int = 0, store_precision: Precision = "float16", store_shared: bool = False,
                   **kwargs) -> Segmenter:
    """A tool behind its memory cache and, when the tool's encodings can be stored and store_folder and
    store_bytes are given, the embedding store in that folder (store_shared: a folder several machines mount)."""
    tool = make_tool(name, **kwargs)
    store = None
    if store_folder is not None and isinstance(tool, StorableTool):
        store = open_store(store_folder, store_bytes, store_precision, store_shared)
    return Segmenter(tool, ImageCache(cache_bytes), store)


def tool_options(settings: Settings) -> dict[str, Any]:
    """make_tool's keywords from the settings, for every tool."""
    return {"sam_checkpoint": settings.sam_checkpoint or None, "sam_sha256": settings.sam_sha256 or None,
            "sam2_checkpoint": settings.sam2_checkpoint or None, "sam2_sha256": settings.sam2_sha256 or None,
            "sam2_config": settings.sam2_config or None, "device": settings.device, "data_dir": settings.data_dir,
            "sam3_checkpoint": settings.sam3_checkpoint or None, "sam3_revision": settings.sam3_revision or None,
            "hf_token": settings.hf_token or None}


def segmenter_from(settings: Settings) -> Segmenter:
    """The tool the settings choose (SEGAGENT_TOOL), with its cache (SEGAGENT_TOOL_CACHE_MB) and the embedding
    store (SEGAGENT_EMBEDDING_STORE_MB): files in SEGAGENT_BLOB_DIR/embeddings when the machines share a blob
    folder, else diskcache in SEGAGENT_DATA_DIR/embeddings."""
    shared = settings.blob_dir is not None
    return make_segmenter(settings.tool, cache_bytes=settings.tool_cache_bytes,
                          store_folder=Path(settings.blobs if shared else settings.data_dir) / "embeddings",
                          store_bytes=settings.embedding_store_bytes, store_shared=shared,
                          store_precision=settings.embedding_store_precision, **tool_options(settings))


__all__ = [
    "TOOL_NAMES",
    "Box",
    "EmbeddingStore",
    "Encoded",
    "ImageCache",
    "Segmenter",
    "StorableTool",
    "Tool",
    "ToolResult",
    "make_segmenter",
    "make_tool",
    "segmenter_from",
    "tool_options",
]
