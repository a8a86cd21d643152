"""The episode loop: the policy looks at the image with the mask so far and acts; the tool applies the
click; repeat. Greedy decoding, or PRM-guided tree search: sample K candidate actions, apply each with
the tool (the image is encoded once), score each resulting mask with a process reward model, keep the
best. Episodes of several tasks advance together, so the policy answers them in one batch."""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from model.core.clicks import Click
from model.core.masks import iou
from model.policies.actions import Action, ActionParseError, parse_action
from model.policies.base import Observation, Policy, PolicyError
from model.policies.prompts import instruction, observation_image
from model.tools import Encoded, Segmenter, ToolResult

if TYPE_CHECKING:
    from model.settings import Settings

log = logging.getLogger(__name__)

# image, mask, description -> estimated IoU of the mask with the described object, in [0, 1]
Scorer = Callable[[np.ndarray, np.ndarray, str], float]


@dataclass
class AgentConfig:
    max_steps: int = 5  # the paper evaluates 1 to 7
    samples: int = 1  # K candidates per step; above 1, PRM-guided search
    temperature: float = 0.8  # for sampling candidates and for retries after unparsable answers
    max_retries: int = 2  # extra policy calls when no answer parses
    overlay_color: str = "green"
    observation_side: int = 448  # longest side of the image the policy sees, in a format that shrinks it
    observation_format: str = "segagent"  # model/policies/prompts.py: the policy's family (setting policy_format)
    converged_iou: float = 0.995  # a step whose mask changes less than this ends the episode

    @classmethod
    def from_settings(cls, settings: Settings) -> AgentConfig:
        """The agent as the backend runs it (the benchmarks that measure it too)."""
        return cls(max_steps=settings.agent_steps, samples=settings.agent_samples,
                   observation_format=settings.policy_format)


@dataclass
class EpisodeStep:
    text: str
    action: Action
    click: Click
    mask: np.ndarray
    score: float


@dataclass
class Episode:
    description: str
    initial_mask: np.ndarray
    steps: list[EpisodeStep] = field(default_factory=list)
    stop_reason: str = "budget"
    parse_failures: int = 0
    score: float = 0.0

    @property
    def mask(self) -> np.ndarray:
        return self.steps[-1].mask if self.steps else self.initial_mask

    @property
    def clicks(self) -> list[Click]:
        return [s.click for s in self.steps]


@dataclass
class EpisodeTask:
    image: np.ndarray
    description: str
    initial_mask: np.ndarray | None = None  # refine an existing mask
    box: tuple[float, float, float, float] | None = None  # start from a box (pixels)


@dataclass
class _State:
    task: EpisodeTask
    episode: Episode
    encoded: Encoded
    previous: ToolResult | np.ndarray | None
    box: tuple | None
    active: bool = True


class Agent:
    def __init__(self, segmenter: Segmenter, policy: Policy, config: AgentConfig | None = None,
                 scorer: Scorer | None = None):
        self.segmenter = segmenter
        self.policy = policy
        self.config = config or AgentConfig()
        self.scorer = scorer
        self.seconds: dict[str, float] = defaultdict(float)  # where the time goes: policy, tool, render, score
        self.steps_taken = 0

    @contextmanager
    def _timed(self, part: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] += time.perf_counter() - started

    def run(self, task: EpisodeTask) -> Episode:
        return self.run_many([task])[0]

    def run_many(self, tasks: list[EpisodeTask]) -> list[Episode]:
        states = [self._start(task) for task in tasks]
        for _ in range(self.config.max_steps):
            active = [s for s in states if s.active]
            if not active:
                break
            for state, candidates in zip(active, self._candidates(active)):
                self._step(state, candidates)
                self.steps_taken += 1
        for state in states:
            episode = state.episode
            episode.score = self._score(state.task, episode.mask, state.previous)
        return [s.episode for s in states]

    def _start(self, task: EpisodeTask) -> _State:
        encoded = self.segmenter.encode(task.image)
        height, width = task.image.shape[:2]
        previous: ToolResult | np.ndarray | None = None
        if task.initial_mask is not None:
            initial = task.initial_mask.astype(bool)
            previous = initial
        elif task.box is not None:
            previous = self.segmenter.predict(encoded, box=task.box)
            initial = previous.mask
        else:
            initial = np.zeros((height, width), bool)
        episode = Episode(task.description, initial)
        return _State(task, episode, encoded, previous, task.box)

    def _observation(self, state: _State) -> Observation:
        with self._timed("render"):
            picture = observation_image(state.task.image, state.episode.mask, self.config.overlay_color,
                                        self.config.observation_side, self.config.observation_format)
        return Observation(picture, instruction(state.task.description))

    def _candidates(self, states: list[_State]) -> list[list[tuple[str, Action]]]:
        """Parsed candidate actions per state; states whose answers never parse get an empty list."""
        samples = self.config.samples
        temperature = 0.0 if samples == 1 else self.config.temperature
        parsed: list[list[tuple[str, Action]]] = [[] for _ in states]
        pending = list(range(len(states)))
        for _attempt in range(self.config.max_retries + 1):
            observations = [self._observation(states[i]) for i in pending]
            with self._timed("policy"):
                answers = self.policy.act(observations, samples, temperature)
            still = []
            for index, texts in zip(pending, answers):
                for text in texts:
                    try:
                        parsed[index].append((text, parse_action(text, self.policy.coordinates)))
                    except ActionParseError as exc:
                        states[index].episode.parse_failures += 1
                        log.debug("unparsable policy answer: %s", exc)
                if not parsed[index]:
                    still.append(index)
            pending = still
            if not pending:
                break
            temperature = self.config.temperature  # retry by sampling
        return parsed

    def _step(self, state: _State, candidates: list[tuple[str, Action]]) -> None:
        episode = state.episode
        if not candidates:
            state.active, episode.stop_reason = False, "parse_failure"
            return
        height, width = state.task.image.shape[:2]
        tried: list[tuple[float, str, Action, Click | None, ToolResult | None]] = []
        click: Click | None
        result: ToolResult | None
        for text, action in candidates:
            if action.kind == "finish":
                tried.append((self._score(state.task, episode.mask, state.previous), text, action, None, None))
                continue
            click = action.click(width, height)
            if any(c.pixel == click.pixel for c in episode.clicks):
                tried.append((-1.0, text, action, click, None))  # a repeated click: the policy is stuck
                continue
            box = state.box or action.pixel_box(width, height)
            with self._timed("tool"):
                result = self.segmenter.predict(state.encoded, [*episode.clicks, click], box=box,
                                                previous=state.previous)
            score = self._score(state.task, result.mask, result) if len(candidates) > 1 else result.score
            tried.append((score, text, action, click, result))
            if len(candidates) == 1:
                break
        score, text, action, click, result = max(tried, key=lambda item: item[0])
        if action.kind == "finish":
            state.active, episode.stop_reason = False, "finish"
            return
        if result is None:
            state.active, episode.stop_reason = False, "repeated_click"
            return
        assert click is not None  # a tool result is only ever tried with its click
        if state.box is None and action.box is not None:
            state.box = action.pixel_box(width, height)
        changed = iou(result.mask, episode.mask) < self.config.converged_iou
        episode.steps.append(EpisodeStep(text, action, click, result.mask, float(score)))
        state.previous = result
        if not changed:
            state.active, episode.stop_reason = False, "converged"

    def _score(self, task: EpisodeTask, mask: np.ndarray, result) -> float:
        tool_score = float(result.score) if isinstance(result, ToolResult) else 0.0
        if self.scorer is None:
            return tool_score
        try:
            with self._timed("score"):
                return float(self.scorer(task.image, mask, task.description))
        except PolicyError as exc:
            log.warning("the scorer failed, using the tool's own score: %s", exc)
            return tool_score
