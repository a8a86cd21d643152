"""The prompt templates and the observation image, shared by inference, training and export.

The templates are plain strings with no imports, so that the SegAgent-Qwen server (its own, older
environment) uses these very strings.
"""
from __future__ import annotations

# SegAgent's instruction, word for word as its released evaluation code asks it
INSTRUCTION = ("Please optimize the semi-transparent green mask in a point-wise manner based on the image and "
               "description content, so that it covers the target object as accurately as possible. The object "
               "description is as follows:<ref>{description}</ref>")

# The whole turn the released SegAgent-Qwen checkpoint (Qwen-VL-Chat) is given
SEGAGENT_QWEN_TURN = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                      "Picture 1: <img>{image}</img>\n{text}<|im_end|>\n<|im_start|>assistant\n")

QUALITY_QUESTION = ("How well does the semi-transparent green mask cover the object described as "
                    "<ref>{description}</ref>? Answer with its IoU with the object, a number from 0 to 100.")

COLORS = {"green": (0, 255, 0), "red": (255, 0, 0), "blue": (0, 0, 255)}


def instruction(description: str) -> str:
    return INSTRUCTION.format(description=description.strip() or "the object")


def observation_image(image, mask, color: str = "green", alpha: float = 0.4, max_side: int | None = None):
    """The image with the current mask as a semi-transparent overlay (a PIL image), at most max_side
    pixels a side."""
    from PIL import Image

    from model.core.masks import render_overlay

    if color not in COLORS:
        raise ValueError(f"overlay colour must be one of {sorted(COLORS)}")
    picture = Image.fromarray(render_overlay(image, mask, COLORS[color], alpha))
    if max_side and max(picture.size) > max_side:
        scale = max_side / max(picture.size)
        picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                                 Image.Resampling.BILINEAR)
    return picture
