"""The flywheel's training side: the registry, the split, the gate, LoRA runs with the tiny VLM (which
learn), the backend serving promoted versions without a restart, rollback, the triggers, and jobs that
fail or are killed leaving the active version serving.

The data: trajectories toward objects in the top-left corner of their images. The tiny VLM is taught
to click the centre, so it misses them; a few epochs of LoRA on the trajectories move its clicks onto
the objects, which the gate sees as a better episode mIoU.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from model.cli import main as cli
from model.core.masks import iou
from model.flywheel.finetune import split_by_task
from model.flywheel.gate import decide
from model.flywheel.job import JobSpec, run_job
from model.flywheel.registry import JobState, Registry, RegistryError
from model.flywheel.scopes import scope_for
from model.flywheel.sources import simulated
from model.flywheel.trajectories import TrajectoryStore, TrajectorySummary
from model.settings import Settings
from model.tools import make_segmenter
from tests.apps import App
from tests.synthetic import png_bytes, scene
from tests.test_backend import ONE_LABEL, brush_annotation, decode

ROOT = Path(__file__).resolve().parent.parent
CORNER = {"center": (40, 30), "axes": (30, 22)}
QUICK = {"train_epochs": 5, "train_learning_rate": 1e-2, "train_accumulation": 1, "gate_episodes": 4,
         "agent_steps": 2}


def add_trajectories(data: Path, tasks, project: str = "3") -> None:
    store = TrajectoryStore(data / "trajectories")
    segmenter = make_segmenter("classical")
    for task in tasks:
        image, target = scene(160, 120, seed=task, **CORNER)
        sha = store.put_image(image)
        record = simulated(segmenter, image, target, "scratch", "Object", "a red blob", sha)
        store.replace_annotation(project, task, 1000 + task, "v1", [record])


@pytest.fixture(scope="module")
def trajectories(tmp_path_factory):
    """A data folder with scratch trajectories of six tasks of project 3 (copied by each test)."""
    data = tmp_path_factory.mktemp("flywheel-data")
    add_trajectories(data, range(1, 7))
    return data


@pytest.fixture
def data(trajectories, tmp_path):
    shutil.copytree(trajectories, tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture(scope="module")
def trained(trajectories, taught_vlm, tmp_path_factory):
    """One promoted version, v1, trained in-process as `python -m model train` does."""
    data = tmp_path_factory.mktemp("trained") / "data"
    shutil.copytree(trajectories, data)
    result = run_job(spec(data, taught_vlm))
    return data, result


def spec(data: Path, base, job_id: str | None = None, **changes) -> JobSpec:
    """A job of project 3 as `python -m model train` runs it, with QUICK changed by `changes`."""
    return JobSpec(scope="project-3", job_id=job_id,
                   settings=Settings(data_dir=data, policy=str(base), **{**QUICK, **changes}))


def settings(data: Path, base, **overrides) -> Settings:
    return Settings(**{"data_dir": data, "policy": str(base), "banned_subnets": "169.254.0.0/16",
                       "agent_steps": 2, "train_epochs": 20, "train_learning_rate": 1e-2, "gate_episodes": 4,
                       **overrides})


def wait_for(check, timeout: float = 120, every: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"not within {timeout} s")


# ---------------------------------------------------------------- registry, split, gate
def test_registry_refuses_names_that_are_not_its_own(tmp_path):
    registry = Registry(tmp_path)
    assert scope_for("12") == "project-12" and scope_for("12", shared=True) == "shared"
    for bad in ("../12", "12/..", "", "x"):
        with pytest.raises(RegistryError):
            scope_for(bad)
    with pytest.raises(RegistryError):
        registry.scope_dir("project-1/../../etc")
    with pytest.raises(RegistryError):
        registry.job_path("project-1_../../x_abcdef")
    with pytest.raises(RegistryError):
        registry.version("project-1", "v0")  # the base is not a trained version
    with pytest.raises(RegistryError):
        registry.rollback("project-1")  # serving the base: nothing to roll back
    assert registry.active("project-1") == "v0" and registry.versions("project-1") == []


def test_split_by_task_keeps_both_sides_and_stays_stable():
    def summaries(tasks):
        return [TrajectorySummary(i, "3", task, "scratch", 2) for i, task in enumerate(tasks)]

    assert split_by_task(summaries([1, 1]), 0.2) == (summaries([1, 1]), [])  # one task: nothing to hold out
    train, held = split_by_task(summaries([1, 2]), 0.2)
    assert len(train) == 1 and len(held) == 1
    _, held_of_20 = split_by_task(summaries(range(20)), 0.2)
    _, held_of_200 = split_by_task(summaries(range(200)), 0.2)
    held_tasks = {s.task_id for s in held_of_20}
    assert 1 <= len(held_tasks) < 20
    assert held_tasks <= {s.task_id for s in held_of_200}  # a task held out stays held out as data grows
    assert 20 <= len({s.task_id for s in held_of_200}) <= 60


def test_gate_promotes_only_what_is_not_worse():
    active = {"episode_miou": 0.6, "action_accuracy": 0.8, "click_distance": 100.0}
    assert decide(dict(active), active)[0]  # equal is not worse
    assert decide({**active, "episode_miou": 0.7}, active)[0]
    promoted, why = decide({**active, "episode_miou": 0.55}, active)
    assert not promoted and "episode_miou" in why
    assert not decide({**active, "action_accuracy": 0.7}, active)[0]
    assert not decide({**active, "click_distance": 150.0}, active)[0]
    assert decide({**active, "episode_miou": 0.55}, active, tolerance=0.1)[0]


# ---------------------------------------------------------------- training jobs
def test_lora_run_lowers_the_loss_and_registers_a_promoted_version(trained, taught_vlm):
    data, result = trained
    losses = result.training["epoch_losses"]
    assert result.state is JobState.promoted and result.version == "v1"
    assert losses[-1] < 0.5 * losses[0], losses
    registry = Registry(data / "models")
    assert registry.active("project-3") == "v1"
    [meta] = registry.versions("project-3")
    assert meta["base"] == str(taught_vlm) and meta["parent"] == "v0" and meta["status"] == "promoted"
    assert meta["data"]["train_trajectories"] + meta["data"]["held_out_trajectories"] == 6
    assert meta["data"]["held_out_trajectories"] >= 1 and meta["created"] <= time.time()
    assert meta["training"]["config"]["seed"] == 0
    assert (registry.adapter_path("project-3", "v1") / "adapter_config.json").exists()
    gate = meta["gate"]
    # the centre-clicking base misses the corner objects; the trained version clicks them
    assert gate["active"]["episode_miou"] < 0.3 < 0.8 < gate["candidate"]["episode_miou"]
    assert gate["candidate"]["click_distance"] < gate["active"]["click_distance"]
    assert registry.history("project-3")[-1]["version"] == "v1"


def test_a_failing_job_leaves_the_active_version(trained, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(trained[0], data)
    job_id = Registry(data / "models").new_job_id("project-3")
    with pytest.raises(Exception):
        run_job(spec(data, tmp_path / "no-such-model", job_id=job_id))
    registry = Registry(data / "models")
    job = registry.job(job_id)
    assert job.state is JobState.failed and "no-such-model" in job.error
    assert registry.active("project-3") == "v1"
    assert [m["name"] for m in registry.versions("project-3")] == ["v1"]
    assert not (data / "models" / "project-3" / "versions" / "v2").exists()


def test_a_worse_candidate_is_kept_but_not_promoted(trained, taught_vlm, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(trained[0], data)
    # a learning rate that destroys the model
    result = run_job(spec(data, taught_vlm, train_epochs=2, train_learning_rate=5.0))
    assert result.state is JobState.rejected and result.version == "v2" and "worse" in result.reason
    registry = Registry(data / "models")
    assert registry.active("project-3") == "v1"
    assert registry.version("project-3", "v2")["parent"] == "v1"
    assert registry.version("project-3", "v2")["status"] == "rejected"


def test_one_task_is_not_enough_to_train(taught_vlm, tmp_path):
    add_trajectories(tmp_path, [1])
    result = run_job(spec(tmp_path, taught_vlm))
    assert result.state is JobState.skipped and "two tasks" in result.reason
    assert Registry(tmp_path / "models").versions("project-3") == []


def test_cli_lists_versions_and_rolls_back(trained, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(trained[0], data)
    assert cli(["versions", "--data-dir", str(data), "--project", "3"]) == 0
    listing = capsys.readouterr().out
    assert "active v1" in listing and "promoted" in listing
    assert cli(["rollback", "--data-dir", str(data), "--project", "3"]) == 0
    assert Registry(data / "models").active("project-3") == "v0"
    assert cli(["rollback", "--data-dir", str(data), "--project", "3", "--to", "v1"]) == 0
    assert Registry(data / "models").active("project-3") == "v1"
    with pytest.raises(SystemExit):
        cli(["rollback", "--data-dir", str(data), "--project", "3", "--to", "v7"])


# ---------------------------------------------------------------- the backend serving versions
@pytest.fixture(scope="module")
def corner_image(image_server):
    image, mask = scene(160, 120, seed=99, **CORNER)
    (image_server.folder / "corner.png").write_bytes(png_bytes(image))
    return f"{image_server.url}/corner.png", mask


def auto_predict(client, url, project="3.1700000000"):
    task = {"id": 1, "data": {"image": url, "prompt": "a red blob"}}  # the description the trajectories have
    response = client.post("/predict", json={"tasks": [task], "label_config": ONE_LABEL, "project": project})
    assert response.status_code == 200, response.json
    return response.json


def test_backend_picks_up_a_promotion_without_restart_and_rolls_back(data, taught_vlm, corner_image):
    url, mask = corner_image
    client = App(settings(data, taught_vlm)).client
    base = auto_predict(client, url)
    assert base["model_version"] == "segagent-classical-agent-v0"
    missed = decode(base["results"][0]["result"][0]) if base["results"][0]["result"] else mask & False

    run_job(spec(data, taught_vlm))  # as a worker would, while the backend runs
    promoted = auto_predict(client, url)
    assert promoted["model_version"] == "segagent-classical-agent-project-3-v1"
    assert iou(decode(promoted["results"][0]["result"][0]), mask) > 0.8 > iou(missed, mask)
    assert auto_predict(client, url, project="4.1")["model_version"] == "segagent-classical-agent-v0"

    listed = client.get("/versions").json["versions"]
    assert listed == ["segagent-classical-agent-v0", "segagent-classical-agent-project-3-v1"]
    assert client.get("/versions?project=4").json["versions"] == ["segagent-classical-agent-v0"]
    assert client.post("/setup", json={"project": "3.17", "schema": ONE_LABEL}).json["model_version"].endswith("-v1")
    status = client.get("/status?project=3").json
    assert status["active_version"].endswith("project-3-v1")
    assert status["training"]["scopes"]["project-3"]["versions"] == 1

    rolled = client.post("/rollback", json={"project": 3}).json
    assert rolled["active_version"] == "segagent-classical-agent-v0"
    assert auto_predict(client, url)["model_version"] == "segagent-classical-agent-v0"
    again = client.post("/rollback", json={"project": "3", "version": "segagent-classical-agent-project-3-v1"})
    assert again.json["active_version"].endswith("-v1") and auto_predict(client, url)["model_version"].endswith("-v1")

    assert client.post("/rollback", json={"project": "3", "version": "v9"}).status_code == 404
    assert client.post("/rollback", json={"project": "../3"}).status_code == 400
    assert client.post("/rollback", json={"project": "3", "version": ["v1"]}).status_code == 400
    assert client.get("/versions?project=abc").status_code == 400
    assert client.post("/job_status", json={"job": "../../etc/passwd"}).status_code == 400
    assert client.post("/job_status", json={"job": "project-3_1_abcdef"}).status_code == 410


def test_start_training_runs_a_worker_process_and_promotes(data, taught_vlm):
    client = App(settings(data, taught_vlm)).client
    assert client.get("/health").json["capabilities"]["training"] == {"on": True, "runner": "process", "reason": None}
    answer = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3, "title": "p"}}).json
    assert answer["status"] == "queued" and answer["job"].startswith("project-3_")
    second = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}}).json
    assert second == {**answer, "status": "running"}  # one job per project at a time
    job = wait_for(lambda: (lambda j: j if j["job_status"] in ("finished", "failed") else None)(
        client.post("/job_status", json={"job": answer["job"]}).json))
    assert job["job_status"] == "finished" and job["state"] == "promoted", job
    assert job["runner"] == "process" and Path(job["log"]).read_text().count("LoRA") >= 1
    assert "segagent-classical-agent-project-3-v1" in client.get("/versions").json["versions"]
    training = client.get("/status").json["training"]
    assert training["last_job"]["id"] == answer["job"] and training["state"] == "promoted"
    assert training["scopes"]["project-3"]["new_trajectories"] == 0
    assert 'segagent_training_jobs_total{trigger="request"} 1.0' in client.get("/metrics").text


def test_a_killed_job_is_reported_and_the_active_version_serves_on(data, taught_vlm):
    client = App(settings(data, taught_vlm, train_epochs=100000)).client
    job_id = client.post("/train", json={"project": "3.1700000000", "annotations": []}).json["job"]
    pid = wait_for(lambda: (lambda j: j.get("pid") if j["state"] == "running" else None)(
        client.post("/job_status", json={"job": job_id}).json))
    os.kill(pid, signal.SIGKILL)
    job = wait_for(lambda: (lambda j: j if j["state"] == "failed" else None)(
        client.get("/status").json["training"]["last_job"]))
    assert "killed by signal 9" in job["error"] and "active version is unchanged" in job["error"]
    assert client.get("/status?project=3").json["active_version"] == "segagent-classical-agent-v0"
    assert Registry(data / "models").versions("project-3") == []  # the half-trained adapter is no version


# ---------------------------------------------------------------- triggers
def annotate(client, image_url: str, mask, task_id: int, project: int = 5) -> None:
    payload = brush_annotation(mask, annotation_id=100 + task_id)
    payload["project"]["id"] = project
    payload["task"] = {"id": task_id, "data": {"image": image_url, "prompt": "a red blob"}}
    assert client.post("/webhook", json=payload).json["status"] == "ok"


def finished_job(registry: Registry, scope: str):
    jobs = registry.jobs(scope)
    return jobs[-1] if jobs and not jobs[-1].state.active else None


def test_every_n_new_trajectories_start_a_job(taught_vlm, image_server, tmp_path):
    client = App(settings(tmp_path, taught_vlm, train_every=2)).client
    url = f"{image_server.url}/object.png"
    annotate(client, url, image_server.mask, task_id=1)
    time.sleep(1)
    assert Registry(tmp_path / "models").jobs("project-5") == []  # one annotation's trajectories: not yet
    annotate(client, url, image_server.mask, task_id=2)
    job = wait_for(lambda: finished_job(Registry(tmp_path / "models"), "project-5"))
    assert "SEGAGENT_TRAIN_EVERY=2" in job.trigger and job.state in (JobState.promoted, JobState.rejected), job
    assert job.through_id == client.get("/status").json["trajectories"]["total"]
    assert client.get("/status?project=5").json["training"]["scopes"]["project-5"]["new_trajectories"] == 0


def test_the_interval_trigger_trains_projects_with_new_trajectories(data, taught_vlm):
    App(settings(data, taught_vlm, train_interval=0.5))
    job = wait_for(lambda: finished_job(Registry(data / "models"), "project-3"))
    assert job.trigger.startswith("interval") and job.state is JobState.promoted, job


# ---------------------------------------------------------------- RQ + Redis
def test_with_redis_an_rq_worker_runs_the_job(data, taught_vlm, redis_url):
    client = App(settings(data, taught_vlm, redis_url=redis_url)).client
    assert client.get("/status").json["training"]["runner"] == "rq"
    job_id = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}}).json["job"]
    wait_for(lambda: _queued(redis_url))
    # the compose file's `worker` service runs this command
    worker = subprocess.run([str(Path(sys.executable).with_name("rq")), "worker", "--burst", "--url", redis_url,
                             "segagent-training"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert worker.returncode == 0, worker.stderr[-2000:]
    job = client.post("/job_status", json={"job": job_id}).json
    assert job["job_status"] == "finished" and job["state"] == "promoted", job
    assert client.get("/versions?project=3").json["versions"][-1].endswith("project-3-v1")

    # a job lost from Redis (flushed, expired) does not block the next one, and is reported failed
    lost = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}}).json["job"]
    wait_for(lambda: Registry(data / "models").job(lost).enqueued)  # in the RQ queue
    from redis import Redis

    Redis.from_url(redis_url).flushdb()
    assert client.post("/job_status", json={"job": lost}).json["job_status"] == "queued"  # a read changes nothing
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 3}}).json["status"] == "queued"
    job = client.post("/job_status", json={"job": lost}).json
    assert job["job_status"] == "failed" and "gone from the RQ queue" in job["error"]


def _queued(redis_url: str) -> int:
    from redis import Redis
    from rq import Queue

    return Queue("segagent-training", connection=Redis.from_url(redis_url)).count


def test_legacy_train_keeps_the_annotations_it_carries_before_the_job(taught_vlm, image_server, tmp_path):
    """Label Studio without the START_TRAINING flag posts /train with every annotated task: those the
    webhook never brought become trajectories first, then the job runs on them."""
    client = App(settings(tmp_path, taught_vlm)).client
    event = brush_annotation(image_server.mask, annotation_id=77)
    task = {"id": 9, "data": {"image": f"{image_server.url}/object.png"}, "annotations": [event["annotation"]]}
    answer = client.post("/train", json={"annotations": [task], "project": "6.1700000000",
                                         "label_config": event["project"]["label_config"]}).json
    assert answer["status"] == "queued" and answer["scope"] == "project-6"
    job = wait_for(lambda: finished_job(Registry(tmp_path / "models"), "project-6"))
    assert job.state is JobState.skipped and "two tasks" in job.reason  # one task: nothing to hold out
    assert job.data["trajectories"] >= 1  # the carried annotation's trajectories were there before it ran
    assert client.get("/status").json["annotations"]["annotations"] == 1


def test_served_versions_beyond_the_loaded_limit_load_again(trained, taught_vlm):
    """Adapters are kept loaded up to a limit; a version whose adapter was evicted still answers."""
    from model.policies.base import Observation
    from model.policies.prompts import instruction, observation_image
    from model.policies.transformers_vlm import TransformersPolicy

    adapter = str(Registry(trained[0] / "models").adapter_path("project-3", "v1"))
    policy = TransformersPolicy(str(taught_vlm))
    policy.adapters.limit = 1
    first, second = policy.with_adapter("one", adapter), policy.with_adapter("two", adapter)  # two evicts one
    image, mask = scene(160, 120, seed=99, **CORNER)
    observation = Observation(observation_image(image, mask & False), instruction("a red blob"))
    assert first.act([observation]) == second.act([observation]) != policy.act([observation])
    assert first.act([observation])[0][0].startswith("Positive point: (2")  # the corner, not (500, 500)


def test_an_adapter_that_did_not_load_loads_once_its_folder_is_whole(trained, taught_vlm, tmp_path):
    """An adapter whose weights are missing is a clear error, and the same name loads once its folder is
    whole (a job still writing it, say) and answers as the version does."""
    from model.policies.base import Observation, PolicyError
    from model.policies.prompts import instruction, observation_image
    from model.policies.transformers_vlm import TransformersPolicy

    adapter = Registry(trained[0] / "models").adapter_path("project-3", "v1")
    broken = tmp_path / "adapter"
    shutil.copytree(adapter, broken)
    weights = next(broken.glob("adapter_model.*"))
    kept = weights.read_bytes()
    weights.unlink()
    policy = TransformersPolicy(str(taught_vlm))
    good = policy.with_adapter("good", str(adapter))  # the model is a PeftModel from here on
    with pytest.raises(PolicyError, match="cannot load adapter"):
        policy.with_adapter("mended", str(broken))
    weights.write_bytes(kept)
    mended = policy.with_adapter("mended", str(broken))
    image, mask = scene(160, 120, seed=99, **CORNER)
    observation = Observation(observation_image(image, mask & False), instruction("a red blob"))
    assert mended.act([observation]) == good.act([observation]) != policy.act([observation])


def test_a_shared_policy_serves_every_project(data, taught_vlm, corner_image):
    """SEGAGENT_POLICY_SCOPE=shared: one policy trained on all projects' trajectories, served to all."""
    add_trajectories(data, [21, 22], project="8")
    client = App(settings(data, taught_vlm, policy_scope="shared")).client
    assert cli(["train", "--data-dir", str(data), "--shared", "--base", str(taught_vlm), "--epochs", "5",
                "--learning-rate", "0.01", "--accumulation", "1", "--gate-episodes", "4"]) == 0
    meta = Registry(data / "models").version("shared", "v1")
    assert meta["data"]["trajectories"] == 8 and meta["status"] == "promoted"  # projects 3 and 8
    url, _ = corner_image
    for project in ("3.1", "8.1", "12.1"):
        assert auto_predict(client, url, project=project)["model_version"] == "segagent-classical-agent-shared-v1"
    assert client.get("/versions").json["versions"][-1] == "segagent-classical-agent-shared-v1"
