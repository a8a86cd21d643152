"""Quality scoring of masks: an estimate of a mask's IoU with the object a description names.

With a policy loaded, the policy itself is the scorer (a process reward model): it is shown the mask
as an overlay and asked for the mask's IoU, as SegAgent's annotation filtering does. The same scorer
guides the agent's tree search.
"""
from __future__ import annotations

import re

import numpy as np

from .policies.base import Observation, Policy, PolicyError
from .prompts import QUALITY_QUESTION, observation_image

_NUMBER = re.compile(r"(\d+(?:\.\d+)?)\s*(%?)")


def parse_quality(text: str) -> float | None:
    """The IoU an answer states, as a fraction; None when it states none. 0-100 (or a percent) and
    0-1 are both understood."""
    match = _NUMBER.search(text or "")
    if not match:
        return None
    value = float(match.group(1))
    if match.group(2) == "%" or value > 1.0:
        value /= 100.0
    return value if 0.0 <= value <= 1.0 else None


class PolicyScorer:
    """The policy asked for the mask's IoU; the mean of `samples` answers that parse."""

    def __init__(self, policy: Policy, samples: int = 1, observation_side: int = 448):
        self.policy = policy
        self.samples = samples
        self.observation_side = observation_side

    def __call__(self, image: np.ndarray, mask: np.ndarray, description: str) -> float:
        picture = observation_image(image, mask, max_side=self.observation_side)
        question = QUALITY_QUESTION.format(description=description.strip() or "the object")
        [answers] = self.policy.act([Observation(picture, question)], samples=self.samples,
                                    temperature=0.0 if self.samples == 1 else 0.7)
        values = [v for v in (parse_quality(a) for a in answers) if v is not None]
        if not values:
            raise PolicyError(f"the policy stated no IoU: {answers[:1]}")
        return float(np.mean(values))
