"""The prompt templates and the observation image, shared by inference, training and export.

The templates are plain strings with no imports beyond the standard library, so that the SegAgent-Qwen
server (its own, older environment) uses these very strings.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

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


@dataclass(frozen=True)
class ObservationFormat:
    """What a family of policies sees: the mask's opacity, whether the picture is shrunk here (bilinear, to the
    caller's longest side) or left at full resolution for the model's own processor, and how it travels to a
    remote policy (a PIL format; JPEG at PIL's default quality)."""

    alpha: float
    shrink: bool
    encoding: str

    @property
    def media_type(self) -> str:
        return "image/" + self.encoding.lower()

    @property
    def suffix(self) -> str:
        return ".jpg" if self.encoding == "JPEG" else "." + self.encoding.lower()

    def encode(self, picture) -> bytes:
        """The bytes a remote policy is sent."""
        buffer = io.BytesIO()
        picture.save(buffer, format=self.encoding)
        return buffer.getvalue()


# Keyed by the setting policy_format. "segagent": in-process transformers VLMs and generic endpoints.
# "segagent-qwen": the released checkpoint, as SegAgent's evaluation code shows it: the full-resolution overlay
# saved as a .jpg, which Qwen-VL's own transform then resizes to 448 x 448 (bicubic, aspect ratio not kept).
OBSERVATION_FORMATS = {
    "segagent": ObservationFormat(alpha=0.4, shrink=True, encoding="PNG"),
    "segagent-qwen": ObservationFormat(alpha=0.5, shrink=False, encoding="JPEG"),
}


def observation_format(name: str) -> ObservationFormat:
    if name not in OBSERVATION_FORMATS:
        raise ValueError(f"observation format must be one of {sorted(OBSERVATION_FORMATS)}, not {name!r}")
    return OBSERVATION_FORMATS[name]


def observation_image(image, mask, color: str = "green", max_side: int | None = None,
                      observation: str = "segagent"):
    """The image with the current mask as a semi-transparent overlay (a PIL image) in the observation format
    named `observation`; a format that shrinks makes it at most max_side pixels a side."""
    from PIL import Image

    from model.core.masks import render_overlay

    if color not in COLORS:
        raise ValueError(f"overlay colour must be one of {sorted(COLORS)}")
    form = observation_format(observation)
    picture = Image.fromarray(render_overlay(image, mask, COLORS[color], form.alpha))
    if form.shrink and max_side and max(picture.size) > max_side:
        scale = max_side / max(picture.size)
        picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                                 Image.Resampling.BILINEAR)
    return picture
