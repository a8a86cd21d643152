"""The policy protocol: observations in, action texts out.

An observation is what an annotator sees: the image with the current mask overlaid, and the object's
description. The policy answers text; parsing it is the agent's business (model/actions.py), so a
policy never needs to know the grammar.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from PIL import Image

from model.policies.actions import Coordinates


class PolicyError(RuntimeError):
    """The policy could not answer (model failure, remote endpoint down)."""


@dataclass
class Observation:
    image: Image.Image  # with the current mask overlaid
    text: str  # the instruction, with the description in it


class Policy(Protocol):
    name: str
    coordinates: Coordinates

    def act(self, observations: list[Observation], samples: int = 1, temperature: float = 0.0) -> list[list[str]]:
        """For each observation, `samples` answers (greedy when samples == 1 and temperature == 0)."""
        ...
