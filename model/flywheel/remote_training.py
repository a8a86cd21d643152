"""Fine-tuning the released SegAgent-Qwen policy, which runs behind its own server in its own environment
(transformers 4.32): the job exports the training turns exactly as that policy sees them (the full-resolution
JPEG overlay, its instruction, the action as it writes it: row then column), and the trainer of that
environment (policy_server/qwen_training.py) fits a LoRA adapter on them, in one of two places:

- SEGAGENT_POLICY_PYTHON: the interpreter of the policy's environment on this machine; a worker process;
- REDIS_URL: an RQ worker of the policy's image, `rq worker segagent-training-qwen`, sharing the data folder.

The adapter lands in the version's folder of the registry, which the policy server reads too: the gate then
asks the server for the candidate by name, and a promoted version is served the same way, without a restart.
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import requests

from model.flywheel.finetune import TrainConfig, TurnReader, turns_of
from model.flywheel.trajectories import TrajectoryStore, TrajectorySummary
from model.policies.actions import format_action, parse_action
from model.policies.prompts import observation_format
from model.policies.remote import ANSWER_FORMATS
from model.settings import Settings

log = logging.getLogger(__name__)
FORMAT = "segagent-qwen"
QUEUE = "segagent-training-qwen"
TRAINER = "policy_server.qwen_training"
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # where policy_server/ lies beside model/


class TrainerUnavailable(RuntimeError):
    """The policy's environment has no trainer this job can reach."""


def is_remote_qwen(settings: Settings) -> bool:
    return settings.policy.startswith(("http://", "https://")) and settings.policy_format == FORMAT


def untrainable_reason(settings: Settings) -> str | None:
    """Why the settings' policy cannot be fine-tuned by a job; None when it can."""
    if not settings.policy:
        return "no policy to fine-tune (SEGAGENT_POLICY is empty)"
    if not settings.policy.startswith(("http://", "https://")):
        return None
    if settings.policy_format != FORMAT:
        return (f"a remote endpoint is fine-tuned only as the SegAgent-Qwen server (SEGAGENT_POLICY_FORMAT={FORMAT}), "
                "which trains and serves versions; for another server use `python -m model export`")
    if not (settings.policy_python or settings.redis_url):
        return ("the SegAgent-Qwen policy trains in its own environment: set SEGAGENT_POLICY_PYTHON to its "
                f"interpreter, or REDIS_URL with `rq worker {QUEUE}` running in the policy image")
    return None


def export_turns(store: TrajectoryStore, train: list[TrajectorySummary], folder: Path, config: TrainConfig) -> int:
    """turns.jsonl and one JPEG per turn in `folder`: what the Qwen trainer reads."""
    folder.mkdir(parents=True, exist_ok=True)
    form = observation_format(FORMAT)
    read = TurnReader(store, config.color, config.observation_side, FORMAT)
    turns = turns_of(train, config.max_turns)
    with open(folder / "turns.jsonl", "w") as lines:
        for turn in turns:
            picture, text, answer = read(turn)
            name = f"{turn.trajectory_id}_{turn.position}{form.suffix}"
            (folder / name).write_bytes(form.encode(picture))
            action = format_action(parse_action(answer), ANSWER_FORMATS[FORMAT])
            lines.write(json.dumps({"image": name, "text": text, "answer": action}) + "\n")
    return len(turns)


def train_remote(settings: Settings, store: TrajectoryStore, train: list[TrajectorySummary], out: Path,
                 config: TrainConfig, parent_adapter: str | None) -> dict:
    """Train the version's adapter into `out` in the policy's environment; returns the trainer's account."""
    reason = untrainable_reason(settings)
    if reason:
        raise TrainerUnavailable(reason)
    # the job's own folder: a trainer a dead job left running writes there, never into this job's adapter
    work = Path(tempfile.mkdtemp(prefix=".training-", dir=out.parent))
    try:
        export_turns(store, train, work, config)
        spec = {"base": served_base(settings.policy), "turns": str(work / "turns.jsonl"), "out": str(work / "adapter"),
                "parent": parent_adapter, "result": str(work / "result.json"), "device": settings.device,
                **{key: value for key, value in asdict(config).items()
                   if key in ("epochs", "learning_rate", "lora_rank", "lora_alpha", "lora_dropout", "accumulation",
                              "seed")}}
        timeout = 0.9 * settings.train_timeout  # within the job's own limit, so that this job stops the trainer
        if settings.policy_python:
            result = _in_process(settings.policy_python, spec, work, timeout)
        else:
            result = _by_rq(settings.redis_url, spec, timeout)
        (work / "adapter").rename(out)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)  # full-resolution pictures: only the adapter is kept


def served_base(policy_url: str) -> str:
    """The weights the SegAgent-Qwen server serves (its /health says where they lie in its environment): the
    base the adapter is trained on, so that the server can load it on top."""
    root = policy_url.rstrip("/").removesuffix("/v1")
    try:
        response = requests.get(f"{root}/health", timeout=30)
        response.raise_for_status()
        return str(response.json()["base"])
    except (requests.RequestException, KeyError, ValueError) as exc:
        raise TrainerUnavailable(f"the SegAgent-Qwen server at {root} does not say which base it serves: {exc}") from exc


def _in_process(python: str, spec: dict, work: Path, timeout: float) -> dict:
    (work / "spec.json").write_text(json.dumps(spec))
    command = [python, "-m", TRAINER, str(work / "spec.json")]
    if shutil.which("setpriv"):  # the trainer dies with this job (killed by the backend, by RQ or by the kernel)
        command = ["setpriv", "--pdeathsig", "KILL", *command]
    started = time.time()
    done = subprocess.run(command, cwd=PROJECT_ROOT, timeout=timeout, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the SegAgent-Qwen trainer ({python}) failed with status {done.returncode}: "
                           f"{done.stderr.strip()[-2000:]}")
    log.info("the SegAgent-Qwen trainer finished in %.0f s; its log ends: %s", time.time() - started,
             done.stderr.strip()[-500:])
    return json.loads(Path(spec["result"]).read_text())


def _by_rq(redis_url: str, spec: dict, timeout: float) -> dict:
    from redis import Redis
    from rq import Queue
    from rq.command import send_stop_job_command

    queue = Queue(QUEUE, connection=Redis.from_url(redis_url))
    job = queue.enqueue(f"{TRAINER}.train_adapter", spec, job_timeout=int(timeout), result_ttl=86400)
    log.info("SegAgent-Qwen training enqueued as RQ job %s on %s", job.id, QUEUE)
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = job.get_status(refresh=True)
        if status == "finished":
            return dict(job.return_value() or {})
        if status in ("failed", "stopped", "canceled"):
            result = job.latest_result()
            raise RuntimeError(f"the SegAgent-Qwen trainer's RQ job {job.id} {status}: "
                               f"{(result.exc_string or '').strip()[-2000:] if result else 'no result'}")
        time.sleep(2)
    if job.get_status(refresh=True) == "started":
        send_stop_job_command(queue.connection, job.id)
    else:
        job.cancel()
    raise TimeoutError(f"the SegAgent-Qwen trainer's RQ job {job.id} did not finish in {timeout:.0f} s")
