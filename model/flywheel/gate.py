"""The gate: a candidate version against the active one, on the held-out trajectories.

- next-action accuracy: on each held-out step, does the policy answer the recorded kind of action
  (positive or negative point)? An answer that does not parse is wrong;
- click distance: how far its click lands from the recorded one, in the policy's [0, 1000) units
  (an answer with no click counts as the image's diagonal, 1414);
- episode mIoU: the policy's own episodes from an empty mask with the tool, one per held-out object.

The candidate is promoted when it is not worse than the active version on any of the three (within
`tolerance`: IoU and accuracy points as fractions, distance in thousandths of that scale).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from model.agent.loop import Agent, AgentConfig, EpisodeTask
from model.core.masks import iou
from model.flywheel.finetune import TurnReader, turns_of
from model.flywheel.trajectories import TrajectoryStore, TrajectorySummary
from model.policies.actions import ActionParseError, parse_action
from model.policies.base import Observation, Policy
from model.tools import Segmenter

NO_CLICK_DISTANCE = 1000 * math.sqrt(2)


@dataclass
class GateConfig:
    max_turns: int = 200  # held-out steps asked for their next action
    episodes: int = 16  # held-out objects segmented from scratch
    steps: int = 3  # agent steps per episode
    batch_size: int = 8
    tolerance: float = 0.0
    observation: str = "segagent"  # what the policy is shown (the setting policy_format)


def next_action_metrics(policy: Policy, reader: TurnReader, held_out: list[TrajectorySummary],
                        config: GateConfig) -> dict:
    turns = turns_of(held_out, config.max_turns)
    correct, distances, parsed = 0, [], 0
    for start in range(0, len(turns), config.batch_size):
        batch = turns[start:start + config.batch_size]
        read = [reader(turn) for turn in batch]
        answers = policy.act([Observation(picture, text) for picture, text, _ in read])
        for (_, _, truth), (answer,) in zip(read, answers):
            expected = parse_action(truth)  # written by format_action's default convention
            try:
                action = parse_action(answer, policy.coordinates)
            except ActionParseError:
                distances.append(NO_CLICK_DISTANCE)
                continue
            parsed += 1
            correct += action.kind == expected.kind
            if action.point is None:
                distances.append(NO_CLICK_DISTANCE)
            else:
                assert expected.point is not None  # the truth is a recorded click (supervised_turn), never Finish
                distances.append(1000 * math.dist(action.point, expected.point))
    count = max(len(turns), 1)
    return {"turns": len(turns), "action_accuracy": correct / count, "parse_rate": parsed / count,
            "click_distance": float(np.mean(distances)) if distances else NO_CLICK_DISTANCE}


def episode_metrics(policy: Policy, segmenter: Segmenter, store: TrajectoryStore,
                    held_out: list[TrajectorySummary], config: GateConfig) -> dict:
    """One episode per held-out object (its scratch trajectory's target, else any), from an empty mask."""
    objects: dict[tuple, int] = {}
    for summary in sorted(held_out, key=lambda s: s.source != "scratch"):
        objects.setdefault((summary.project, summary.task_id, summary.label), summary.id)
    chosen = sorted(objects.values())[:config.episodes]
    records = [store.record(i) for i in chosen]
    agent = Agent(segmenter, policy, AgentConfig(max_steps=config.steps, observation_format=config.observation))
    ious = []
    for start in range(0, len(records), config.batch_size):
        batch = records[start:start + config.batch_size]
        episodes = agent.run_many([EpisodeTask(store.image(r.image_sha), r.prompt or r.label) for r in batch])
        ious += [iou(episode.mask, record.target) for episode, record in zip(episodes, batch)]
    return {"episodes": len(ious), "episode_miou": float(np.mean(ious)) if ious else 0.0}


def measure(policy: Policy, segmenter: Segmenter, store: TrajectoryStore, held_out: list[TrajectorySummary],
             config: GateConfig, reader: TurnReader) -> dict:
    return {**next_action_metrics(policy, reader, held_out, config),
            **episode_metrics(policy, segmenter, store, held_out, config)}


def decide(candidate: dict, active: dict, tolerance: float = 0.0) -> tuple[bool, str]:
    """(promote, why): not worse than the active version on any metric."""
    worse = []
    for metric in ("episode_miou", "action_accuracy"):
        if candidate[metric] < active[metric] - tolerance:
            worse.append(f"{metric} {candidate[metric]:.3f} < {active[metric]:.3f}")
    if candidate["click_distance"] > active["click_distance"] + 1000 * tolerance:
        worse.append(f"click_distance {candidate['click_distance']:.1f} > {active['click_distance']:.1f}")
    if worse:
        return False, "worse than the active version: " + "; ".join(worse)
    return True, (f"not worse than the active version (episode mIoU {candidate['episode_miou']:.3f} vs "
                  f"{active['episode_miou']:.3f}, next-action accuracy {candidate['action_accuracy']:.3f} vs "
                  f"{active['action_accuracy']:.3f})")
