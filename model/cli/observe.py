"""python -m model observe: the very image bytes a policy is sent for an image and its current mask, in an
observation format (segagent-qwen: the full-resolution JPEG its own processor resizes; segagent: the PNG), to look
at or to compare with other code."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from model.policies.prompts import COLORS, OBSERVATION_FORMATS


def add_commands(commands: argparse._SubParsersAction) -> None:
    observe = commands.add_parser("observe", help="write the image bytes a policy is sent for an image and a mask")
    observe.add_argument("--image", required=True, type=Path)
    observe.add_argument("--mask", required=True, type=Path, help="an image of the image's size, nonzero: the object")
    observe.add_argument("--format", required=True, choices=sorted(OBSERVATION_FORMATS), dest="observation",
                         help="the observation format (the setting SEGAGENT_POLICY_FORMAT)")
    observe.add_argument("--out", required=True, type=Path)
    observe.add_argument("--color", default="green", choices=sorted(COLORS), help="the overlay's colour")
    observe.set_defaults(run=_observe)


def _observe(args: argparse.Namespace) -> int:
    from model.agent.loop import AgentConfig
    from model.core.imageio import ImageError, load_image
    from model.policies.prompts import observation_format, observation_image

    try:
        image = load_image(args.image)
    except (ImageError, OSError) as exc:
        raise SystemExit(f"error: {args.image}: {exc}") from exc
    mask = _read_mask(args.mask)
    if mask.shape != image.shape[:2]:
        raise SystemExit(f"error: the mask is {mask.shape[1]} x {mask.shape[0]} pixels and the image "
                         f"{image.shape[1]} x {image.shape[0]}: they must be the same size")
    form = observation_format(args.observation)
    picture = observation_image(image, mask, args.color, AgentConfig.observation_side, args.observation)
    args.out.write_bytes(form.encode(picture))
    print(f"{args.out}: {picture.width} x {picture.height} {form.encoding}, as a {args.observation} policy sees it")
    return 0


def _read_mask(path: Path) -> np.ndarray:
    """A bool mask from an image file: nonzero in any colour band is the object (a palette image: nonzero index)."""
    from PIL import Image

    try:
        with Image.open(path) as picture:
            array = np.asarray(picture)
            if "A" in picture.getbands():
                array = array[..., :-1]  # transparency is no part of the object
    except OSError as exc:  # PIL's UnidentifiedImageError among them
        raise SystemExit(f"error: {path}: not a readable mask: {exc}") from exc
    return np.asarray(array.reshape(array.shape[0], array.shape[1], -1).any(axis=2), bool)
