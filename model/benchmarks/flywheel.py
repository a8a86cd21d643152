"""bench-flywheel: what one turn of the flywheel gains on a dataset's objects that it never trained on.

1. Split: each object goes to the annotated or the held-out side by a seeded hash of its name, so an
   object keeps its side whatever else the dataset holds (objects of one image share a name, and a side).
2. Annotate: on each annotated object the base policy's agent takes K steps from an empty mask, then the
   simulated annotator corrects the agent's mask toward IoU 0.95 (model/flywheel/sources.py, as the
   backend does with a submitted annotation): those corrections are the scope's trajectories, source
   "correction", one task per image, the object's description (category, caption) as the prompt.
3. Train: one training job exactly as in production (run_job: LoRA, the gate, the registry).
4. Evaluate, on the held-out objects, the base version (v0) and the trained one whether or not the gate
   promoted it: the IoU after K agent steps from an empty mask, and the clicks the simulated annotator
   needs from the agent's mask to IoU 0.85 and 0.90 (0 when the agent got there; `max_clicks` when the
   annotator never does, which the fraction reached tells apart).
"""
from __future__ import annotations

import gc
import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model.agent.loop import Agent, AgentConfig, EpisodeTask
from model.annotator.clicker import generate_trajectory
from model.core.clicks import Click
from model.core.datasets import Dataset, Sample
from model.core.masks import iou
from model.flywheel.job import JobSpec, run_job
from model.flywheel.registry import BASE_VERSION, JobRecord, JobState
from model.flywheel.scopes import scope_for
from model.flywheel.sources import simulated
from model.flywheel.stores import policy_registry, trajectory_store
from model.flywheel.trajectories import TrajectoryStore
from model.flywheel.versions import version_policy
from model.policies import Policy, make_policy
from model.quality.scorers import PolicyScorer
from model.settings import Settings
from model.tools import Segmenter, ToolResult, segmenter_from

THRESHOLDS = (0.85, 0.90)
LABEL = "Object"
NO_DESCRIPTION = "the object"  # an object the dataset does not describe (GrabCut)


@dataclass(frozen=True)
class BenchConfig:
    held_out: float = 0.5  # fraction of the objects held out
    seed: int = 0  # of the split
    max_clicks: int = 20  # the annotator's, per object: the count of an object never brought to a threshold
    batch_size: int = 8  # episodes the agent advances together
    project: str = "1"  # the Label Studio project the trajectories are filed under
    shared: bool = False  # train the policy all projects share instead of the project's

    @property
    def scope(self) -> str:
        return scope_for(self.project, shared=self.shared)


class BenchError(RuntimeError):
    """The benchmark cannot compare: its work folder is not fresh (the base would not be the base), or a
    side of the split is empty."""


def is_held_out(name: str, fraction: float, seed: int = 0) -> bool:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < fraction


def description(sample: Sample) -> str:
    return sample.prompt or NO_DESCRIPTION


def side(dataset: Dataset, config: BenchConfig, held_out: bool) -> Iterator[Sample]:
    return (s for s in dataset if is_held_out(s.name, config.held_out, config.seed) == held_out)


def policy_from(settings: Settings) -> Policy:
    """The base policy the settings name, built as the backend builds it."""
    return make_policy(settings.policy, adapter=settings.policy_adapter or None,
                       answer_format=settings.policy_format, model=settings.policy_model or None,
                       device=settings.device)


def agent_for(settings: Settings, segmenter: Segmenter, policy: Policy) -> Agent:
    """The agent as the backend runs it: SEGAGENT_AGENT_STEPS steps, its samples and PRM."""
    scorer = PolicyScorer(policy, observation=settings.policy_format) if settings.prm == "policy" else None
    return Agent(segmenter, policy, AgentConfig.from_settings(settings), scorer)


def _batches(samples: Iterable[Sample], size: int) -> Iterator[list[Sample]]:
    batch: list[Sample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _episodes(agent: Agent, samples: Iterable[Sample], batch_size: int) -> Iterator[tuple[Sample, np.ndarray]]:
    """Each sample with the agent's mask after its steps from an empty mask."""
    for batch in _batches(samples, batch_size):
        episodes = agent.run_many([EpisodeTask(s.image, description(s)) for s in batch])
        yield from ((sample, episode.mask) for sample, episode in zip(batch, episodes))


def annotate(agent: Agent, store: TrajectoryStore, samples: Iterable[Sample], config: BenchConfig,
             bar: tqdm) -> dict:
    """The agent's steps then the annotator's corrections on each sample, into the store; what was stored."""
    tasks: dict[str, int] = {}  # image name -> task id
    objects, agent_ious, trajectories, steps = [], [], 0, 0
    for index, (sample, mask) in enumerate(_episodes(agent, samples, config.batch_size), start=1):
        task_id = tasks.setdefault(sample.name, len(tasks) + 1)
        record = simulated(agent.segmenter, sample.image, sample.target, "correction", LABEL, description(sample),
                           store.put_image(sample.image), initial=mask, max_clicks=config.max_clicks)
        # an object the agent got right needs no correction and teaches nothing, as in the backend
        records = [record] if record.steps else []
        # negative annotation ids: never one of Label Studio's
        store.replace_annotation(config.project, task_id, -index, sample.name, records)
        objects.append(sample.name)
        agent_ious.append(iou(mask, sample.target, sample.ignore))
        trajectories += len(records)
        steps += len(record.steps)
        bar.update()
    return {"objects": len(objects), "images": len(tasks), "names": objects, "trajectories": trajectories,
            "steps": steps, "agent_miou": float(np.mean(agent_ious)) if agent_ious else 0.0}


def correction_ious(segmenter: Segmenter, sample: Sample, mask: np.ndarray, max_clicks: int) -> list[float]:
    """The IoU of `mask`, then after each of the annotator's clicks correcting it, until the highest
    threshold is reached, no error is left or `max_clicks` clicks were placed."""
    encoded = segmenter.encode(sample.image)
    last: list[ToolResult | np.ndarray] = [mask]

    def segment(clicks: list[Click], _previous) -> np.ndarray:
        result = segmenter.predict(encoded, clicks, previous=last[0])  # the tool's own state carries on
        last[0] = result
        return result.mask

    trajectory = generate_trajectory(segment, sample.target, initial_mask=mask, ignore=sample.ignore,
                                     target_iou=max(THRESHOLDS), max_clicks=max_clicks)
    return [trajectory.initial_iou, *(s.iou for s in trajectory.steps)]


def clicks_to(ious: list[float], threshold: float, max_clicks: int) -> tuple[int, bool]:
    """(clicks, reached): ious[i] is the IoU after i clicks; never reached counts as max_clicks."""
    for clicks, value in enumerate(ious):
        if value >= threshold:
            return clicks, True
    return max_clicks, False


def evaluate(agent: Agent, samples: Iterable[Sample], config: BenchConfig, bar: tqdm) -> list[dict]:
    """Per held-out object: the IoU after the agent's steps, and the annotator's clicks to each threshold."""
    rows = []
    for sample, mask in _episodes(agent, samples, config.batch_size):
        ious = correction_ious(agent.segmenter, sample, mask, config.max_clicks)
        row: dict = {"name": sample.name, "iou": ious[0], "final_iou": ious[-1]}
        for threshold in THRESHOLDS:
            row[f"clicks_{threshold:.2f}"], row[f"reached_{threshold:.2f}"] = clicks_to(ious, threshold,
                                                                                      config.max_clicks)
        rows.append(row)
        bar.update()
    return rows


def summarize(rows: list[dict], version: str) -> dict:
    summary: dict = {"version": version, "objects": len(rows),
                     "miou": float(np.mean([r["iou"] for r in rows])) if rows else 0.0}
    for threshold in THRESHOLDS:
        key = f"{threshold:.2f}"
        summary[f"clicks_{key}"] = float(np.mean([r[f"clicks_{key}"] for r in rows])) if rows else 0.0
        summary[f"reached_{key}"] = float(np.mean([r[f"reached_{key}"] for r in rows])) if rows else 0.0
    return {**summary, "per_object": rows}


def _fresh(settings: Settings) -> TrajectoryStore:
    for part in ("trajectories", "models"):
        if (settings.data_dir / part).exists():
            raise BenchError(f"{settings.data_dir / part} exists: bench-flywheel trains from the base in a "
                             "work folder of its own (remove it, or give another --data-dir)")
    return trajectory_store(settings)


def run_bench(dataset: Dataset, settings: Settings, config: BenchConfig, progress: bool = True) -> dict:
    """The four phases (see the module's docstring) with the tool and policy `settings` name, in the work
    folder `settings.data_dir`; the report."""
    store, segmenter = _fresh(settings), segmenter_from(settings)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    agent = agent_for(settings, segmenter, policy_from(settings))
    with tqdm(desc=f"{dataset.name}: annotate (agent + corrections)", unit="obj", disable=not progress) as bar:
        annotated = annotate(agent, store, side(dataset, config, held_out=False), config, bar)
    seconds["annotate"] = time.perf_counter() - started
    base, seconds["evaluate_base"] = _timed_evaluation(agent, dataset, config, BASE_VERSION, progress)
    if not annotated["objects"] or not base["objects"]:
        raise BenchError(f"{annotated['objects']} annotated and {base['objects']} held-out objects: the comparison "
                         "needs both (a larger --limit, or another --held-out)")
    del agent  # an in-process policy: its weights make room for the job's training
    gc.collect()

    started = time.perf_counter()
    job = run_job(JobSpec(scope=config.scope, settings=settings))
    seconds["train"] = time.perf_counter() - started
    trained = None
    if job.state in (JobState.promoted, JobState.rejected) and job.version:
        adapter = policy_registry(settings).adapter_path(config.scope, job.version)
        policy = version_policy(policy_from(settings), config.scope, job.version, str(adapter))
        trained, seconds["evaluate_trained"] = _timed_evaluation(agent_for(settings, segmenter, policy), dataset,
                                                                 config, job.version, progress)
    return _report(dataset, settings, config, annotated, base, trained, job, seconds)


def _timed_evaluation(agent: Agent, dataset: Dataset, config: BenchConfig, version: str,
                      progress: bool) -> tuple[dict, float]:
    started = time.perf_counter()
    with tqdm(desc=f"{dataset.name}: evaluate {version}", unit="obj", disable=not progress) as bar:
        rows = evaluate(agent, side(dataset, config, held_out=True), config, bar)
    return summarize(rows, version), time.perf_counter() - started


def _report(dataset: Dataset, settings: Settings, config: BenchConfig, annotated: dict, base: dict,
            trained: dict | None, job: JobRecord, seconds: dict) -> dict:
    delta = None
    if trained is not None:
        delta = {key: trained[key] - base[key] for key in base if key not in ("version", "objects", "per_object")}
    return {
        "dataset": dataset.name, "scope": config.scope, "policy": settings.policy, "tool": settings.tool,
        "steps": settings.agent_steps, "thresholds": list(THRESHOLDS), "config": asdict(config),
        "split": {"annotated": annotated.pop("names"), "held_out": [r["name"] for r in base["per_object"]]},
        "annotated": annotated,
        "job": job.model_dump(mode="json", include={"state", "version", "parent", "reason", "data", "training", "gate"}),
        "base": base, "trained": trained, "delta": delta,
        "seconds": {**{phase: round(value, 1) for phase, value in seconds.items()},
                    "total": round(sum(seconds.values()), 1)},
        "machine": f"{os.cpu_count()} CPU cores",
    }


def table(report: dict) -> str:
    """The report as markdown: base against trained on the held-out objects, then the job and the times."""
    base, trained, annotated, job = report["base"], report["trained"], report["annotated"], report["job"]
    cap = report["config"]["max_clicks"]
    lines = [f"## bench-flywheel: {report['dataset']}", "",
             f"Policy {report['policy']}, tool {report['tool']}, {report['steps']} agent steps, the annotator's "
             f"clicks capped at {cap} (an object never brought to a threshold counts {cap}).",
             f"Annotated: {annotated['objects']} objects of {annotated['images']} images -> "
             f"{annotated['trajectories']} correction trajectories, {annotated['steps']} steps. "
             f"Held out: {base['objects']} objects.", "",
             f"| held-out objects | base {base['version']} | trained {trained['version'] if trained else '-'} "
             "| change |", "|---|---:|---:|---:|"]
    rows = [(f"mIoU after {report['steps']} steps", "miou", "{:.3f}", "{:+.3f}")]
    for threshold in report["thresholds"]:
        key = f"{threshold:.2f}"
        rows += [(f"clicks to IoU {key}", f"clicks_{key}", "{:.2f}", "{:+.2f}"),
                 (f"reached IoU {key}", f"reached_{key}", "{:.0%}", "{:+.0%}")]
    for title, key, shown, change in rows:
        after = shown.format(trained[key]) if trained else "-"
        delta = change.format(report["delta"][key]) if report["delta"] else "-"
        lines.append(f"| {title} | {shown.format(base[key])} | {after} | {delta} |")
    training = job.get("training") or {}
    lines += ["", f"Training job: {job['state']} {job.get('version') or ''} - {job.get('reason') or ''}",
              f"Training: {training.get('turns', 0)} turns per epoch, epoch losses "
              f"{[round(v, 4) for v in training.get('epoch_losses', [])]}, on {training.get('device', '-')}.",
              "Seconds: " + ", ".join(f"{phase} {value}" for phase, value in report["seconds"].items()), ""]
    return "\n".join(lines)


def write_report(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(table(report))
