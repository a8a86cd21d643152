"""One training job of a scope: read its trajectories, split them by task, fine-tune a LoRA adapter from
the active version, gate it against the active version on the held-out part, register it, and promote
it if it passed. The same function runs from the CLI (`python -m model train`), in the backend's worker
process and in an RQ worker; its progress and outcome go to the job's file in the registry.

A failure anywhere leaves the active version as it was: the registry changes only after the gate, by
renaming one file.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from pydantic import BaseModel, ConfigDict, field_serializer, field_validator

from model.flywheel.finetune import TrainConfig, TurnReader, split_by_task, train_lora
from model.flywheel.gate import GateConfig, decide, measure
from model.flywheel.registry import BASE_VERSION, Busy, JobRecord, JobState, Registry, this_host
from model.flywheel.remote_training import is_remote_qwen, train_remote, untrainable_reason
from model.flywheel.scopes import project_of
from model.flywheel.stores import policy_registry, trajectory_store
from model.flywheel.versions import version_policy
from model.policies.base import Policy
from model.settings import SECRETS, Settings

log = logging.getLogger(__name__)


class JobSpec(BaseModel):
    """What a job trains (the scope) with which settings; `job_id` None: the job allocates one."""

    model_config = ConfigDict(frozen=True)

    scope: str
    job_id: str | None = None
    settings: Settings

    @field_validator("settings")
    @classmethod
    def _absolute_data_dir(cls, settings: Settings) -> Settings:
        # the job may run in another working directory (a worker process, an RQ worker); the spec carries no
        # credentials, so the database's URL is the environment's where the job runs
        return settings.model_copy(update={"data_dir": settings.data_dir.resolve(),
                                           "database_url": settings.database_url or Settings().database_url})

    @field_serializer("settings")
    def _without_secrets(self, settings: Settings) -> dict:
        return settings.model_dump(mode="json", exclude=set(SECRETS))

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    @property
    def train(self) -> TrainConfig:
        s = self.settings
        return TrainConfig(epochs=s.train_epochs, learning_rate=s.train_learning_rate, lora_rank=s.train_lora_rank,
                           lora_alpha=2 * s.train_lora_rank, accumulation=s.train_accumulation,
                           max_turns=s.train_max_turns, held_out=s.train_held_out, seed=s.train_seed, device=s.device)

    @property
    def gate(self) -> GateConfig:
        s = self.settings
        return GateConfig(max_turns=s.gate_turns, episodes=s.gate_episodes, steps=s.agent_steps,
                          tolerance=s.gate_tolerance, observation=s.policy_format)


def run_job(spec: JobSpec | dict) -> JobRecord:
    """Run one job; returns its final state (also written to its job file). Raises on failure, after
    recording it, so that a worker marks the job failed too."""
    spec = JobSpec.model_validate(spec)
    registry = policy_registry(spec.settings)
    job_id = spec.job_id or registry.new_job_id(spec.scope)
    try:
        with registry.lock(spec.scope), registry.heartbeat(job_id):
            return _run_locked(spec, registry, job_id)
    except Busy as exc:
        return registry.write_job(job_id, state=JobState.skipped, reason=str(exc), finished=time.time())
    except Exception as exc:
        log.exception("training job %s failed", job_id)
        registry.write_job(job_id, state=JobState.failed, error=f"{type(exc).__name__}: {exc}", finished=time.time())
        raise


def _run_locked(spec: JobSpec, registry: Registry, job_id: str) -> JobRecord:
    scope, base = spec.scope, spec.settings.policy
    registry.write_job(job_id, state=JobState.running, stage="data", pid=os.getpid(), host=this_host(),
                       started=time.time(), progress=0.0)
    store = trajectory_store(spec.settings)
    summaries = store.summaries(project_of(scope))
    through = max((s.id for s in summaries), default=0)
    train, held_out = split_by_task(summaries, spec.train.held_out, spec.train.seed)
    data = {"trajectories": len(summaries), "train_trajectories": len(train), "held_out_trajectories": len(held_out),
            "train_steps": sum(s.steps for s in train), "held_out_steps": sum(s.steps for s in held_out),
            "tasks": len({(s.project, s.task_id) for s in summaries}),
            "sources": {source: sum(s.source == source for s in train) for source in {s.source for s in train}},
            "through_id": through}
    registry.write_job(job_id, through_id=through, data=data)
    if not train or not held_out:
        reason = (f"{len(summaries)} trajectories from {data['tasks']} tasks: training needs trajectories of at least "
                  "two tasks (one is held out for the gate)")
        log.info("job %s skipped: %s", job_id, reason)
        return registry.write_job(job_id, state=JobState.skipped, reason=reason, finished=time.time())
    untrainable = untrainable_reason(spec.settings)
    if untrainable:
        log.info("job %s skipped: %s", job_id, untrainable)
        return registry.write_job(job_id, state=JobState.skipped, reason=untrainable, finished=time.time())

    parent = registry.active(scope)
    if parent != BASE_VERSION and registry.version(scope, parent).get("base") != base:
        log.warning("the active version %s of %s was trained on another base; training from the base", parent, scope)
        parent = BASE_VERSION
    parent_adapter = str(registry.adapter_path(scope, parent)) if parent != BASE_VERSION else (
        spec.settings.policy_adapter or None)
    name, folder = registry.allocate(scope)
    registry.write_job(job_id, stage="training", version=name, parent=parent)
    try:
        return _train_gate_register(spec, registry, job_id, store, train, held_out, data, parent, parent_adapter,
                                    name, folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # never registered: no version to list or serve
        raise


def _train_gate_register(spec, registry, job_id, store, train, held_out, data, parent, parent_adapter, name,
                         folder) -> JobRecord:
    from model.tools import segmenter_from

    scope, settings, started = spec.scope, spec.settings, time.time()
    last_beat = [0.0]

    def progress(fraction: float, loss: float) -> None:
        if time.time() - last_beat[0] > 2:
            last_beat[0] = time.time()
            registry.write_job(job_id, progress=round(fraction, 3), loss=round(loss, 4))

    adapter = folder / "adapter"
    if is_remote_qwen(settings):
        training = train_remote(settings, store, train, adapter, spec.train, parent_adapter)
    else:
        training = train_lora(settings.policy, store, train, adapter, spec.train, parent_adapter, progress)
    registry.write_job(job_id, stage="gate", progress=1.0, training=training)

    segmenter = segmenter_from(settings)
    active, candidate = _active_and_candidate(settings, scope, parent, parent_adapter, name, str(adapter),
                                              training["device"])
    reader = TurnReader(store, spec.train.color, spec.train.observation_side, settings.policy_format)
    active_metrics = measure(active, segmenter, store, held_out, spec.gate, reader)
    candidate_metrics = measure(candidate, segmenter, store, held_out, spec.gate, reader)
    promoted, reason = decide(candidate_metrics, active_metrics, spec.gate.tolerance)
    log.info("job %s: %s %s: %s", job_id, name, "promoted" if promoted else "rejected", reason)

    meta = registry.register(scope, name, {
        "base": settings.policy, "base_adapter": settings.policy_adapter or None, "parent": parent, "created": time.time(),
        "status": "promoted" if promoted else "rejected", "reason": reason, "job": job_id, "data": data,
        "training": {**training, "config": asdict(spec.train)},
        "gate": {"candidate": candidate_metrics, "active": active_metrics, "tolerance": spec.gate.tolerance,
                 "tool": settings.tool}}, promote_over=parent, why=f"job {job_id}: {reason}")
    reason = meta["reason"]  # rejected after all when a rollback (or another promotion) came while this job trained
    return registry.write_job(job_id, state=JobState(meta["status"]), stage="done", version=name, reason=reason,
                              finished=time.time(),
                              seconds=round(time.time() - started, 1), gate=meta["gate"])


def _active_and_candidate(settings: Settings, scope: str, parent: str, parent_adapter: str | None, name: str,
                          adapter: str, device: str) -> tuple[Policy, Policy]:
    """The policy serving now and the one just trained, as the gate asks them: in this process, or the
    SegAgent-Qwen server asked for each by name."""
    if is_remote_qwen(settings):
        from model.policies.remote import RemotePolicy

        base = RemotePolicy(settings.policy, model=settings.policy_model or None, answer_format=settings.policy_format)
        active = base if parent == BASE_VERSION else version_policy(base, scope, parent, parent_adapter or "")
        return active, version_policy(base, scope, name, adapter)
    from model.policies.transformers_vlm import TransformersPolicy

    policy = TransformersPolicy(settings.policy, adapter=parent_adapter, device=device)
    return policy, policy.with_adapter("candidate", adapter)


if __name__ == "__main__":  # python -m model.flywheel.job SPEC.json: how the backend starts a job in a process of its own
    import json
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_job(json.loads(Path(sys.argv[1]).read_text()))
