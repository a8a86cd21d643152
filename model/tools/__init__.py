"""Interactive segmentation tools behind one protocol (see base.py)."""
from __future__ import annotations

from pathlib import Path

from model.tools.base import Box, Encoded, ImageCache, Segmenter, Tool, ToolResult

TOOL_NAMES = ("classical", "sam")


def make_tool(name: str, sam_checkpoint: str | None = None, data_dir: str | Path = "data",
              sam_sha256: str | None = None) -> Tool:
    """Build a tool by name. SAM needs a checkpoint; the classical tool needs nothing."""
    if name == "classical":
        from model.tools.classical import ClassicalTool

        return ClassicalTool()
    if name == "sam":
        if not sam_checkpoint:
            raise ValueError("the sam tool needs a checkpoint (SAM_CHECKPOINT or --sam-checkpoint)")
        from model.tools.sam import SamTool

        return SamTool(sam_checkpoint, data_dir=data_dir, sha256=sam_sha256)
    raise ValueError(f"unknown tool {name!r}; choose one of {', '.join(TOOL_NAMES)}")


def make_segmenter(name: str, cache_bytes: int = 512 << 20, **kwargs) -> Segmenter:
    return Segmenter(make_tool(name, **kwargs), ImageCache(cache_bytes))


__all__ = [
    "TOOL_NAMES",
    "Box",
    "Encoded",
    "ImageCache",
    "Segmenter",
    "Tool",
    "ToolResult",
    "make_segmenter",
    "make_tool",
]
