"""End to end, the flywheel: annotations submitted in Label Studio 1.23 become trajectories in the
backend (started with `make serve` and the tiny VLM as its policy); Label Studio's own "Start training"
API sends START_TRAINING; a worker process fine-tunes, gates and promotes a new version, which
Label Studio then lists among the model's versions and whose predictions "Retrieve predictions" stores."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import requests
from label_studio_sdk import LabelStudio
from label_studio_sdk.converter import brush

from model.core.masks import iou
from tests.e2e.conftest import make_serve
from tests.synthetic import png_bytes, scene

pytestmark = pytest.mark.e2e

CONFIG = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image"><Label value="Object"/></BrushLabels></View>"""
TRAINING_DEADLINE = 240  # seconds, from "Start training" to a new version (the figure)


def _brush(mask: np.ndarray) -> dict:
    return {"from_name": "tag", "to_name": "image", "type": "brushlabels", "original_width": mask.shape[1],
            "original_height": mask.shape[0], "image_rotation": 0,
            "value": {"format": "rle", "rle": brush.mask2rle(mask.astype(np.uint8) * 255), "brushlabels": ["Object"]}}


def test_annotations_to_trajectories_to_start_training_to_a_new_version(label_studio, image_server, taught_vlm,
                                                                         tmp_path):
    env = {"SEGAGENT_POLICY": str(taught_vlm), "SEGAGENT_AGENT_STEPS": "2", "SEGAGENT_TRAIN_EVERY": "0",
           "SEGAGENT_TRAIN_EPOCHS": "20", "SEGAGENT_TRAIN_LR": "0.01", "SEGAGENT_GATE_EPISODES": "4"}
    with make_serve(tmp_path, **env) as server:
        client = LabelStudio(base_url=label_studio["url"], api_key=label_studio["token"])
        project = client.projects.create(title="segagent training e2e", label_config=CONFIG)
        ml = client.ml.create(project=project.id, url=server["url"], is_interactive=False, title="SegAgent")
        masks = {}
        for seed in (11, 12, 13):  # objects in the top-left corner, where the base policy never clicks
            image, mask = scene(160, 120, seed=seed, center=(40, 30), axes=(30, 22))
            (image_server.folder / f"corner-{seed}.png").write_bytes(png_bytes(image))
            masks[f"{image_server.url}/corner-{seed}.png"] = mask
        client.projects.import_tasks(id=project.id, request=[{"data": {"image": url, "prompt": "a red blob"}}
                                                             for url in masks])
        tasks = list(client.tasks.list(project=project.id))
        # pre-annotated first, as a team works: every annotation then corrects our prediction. Left to Label
        # Studio's own requests, some tasks had a prediction when annotated and some not, and the training data
        # (scratch and correction trajectories) changed from run to run
        client.actions.create(id="retrieve_tasks_predictions", project=project.id,
                              selected_items={"all": True, "excluded": []})
        assert all(client.tasks.get(id=task.id).predictions for task in tasks)
        for task in tasks:
            client.annotations.create(id=task.id, result=[_brush(masks[task.data["image"]])], was_cancelled=False)

        def status() -> dict:
            return requests.get(f"{server['url']}/status", params={"project": project.id}, timeout=10).json()

        def recorded() -> dict:
            return {source: status()["trajectories"][source] for source in ("scratch", "correction")}

        deadline = time.time() + 120
        while time.time() < deadline and recorded() != {"scratch": len(tasks), "correction": len(tasks)}:
            time.sleep(1)
        assert recorded() == {"scratch": len(tasks), "correction": len(tasks)}, status()["annotation_jobs"]

        started = time.time()
        client.ml.train(id=ml.id)  # Label Studio's "Start training"
        new_version = f"segagent-classical-agent-project-{project.id}-v1"
        while time.time() - started < TRAINING_DEADLINE:
            if new_version in requests.get(f"{server['url']}/versions", timeout=10).json()["versions"]:
                break
            time.sleep(2)
        training = status()["training"]
        job = training["last_job"] or {}
        why = {key: job.get(key) for key in ("state", "reason", "error", "seconds", "gate", "data")}  # in full
        assert new_version in requests.get(f"{server['url']}/versions", timeout=10).json()["versions"], json.dumps(why)
        print("job:", json.dumps(why))
        print(f"Start training -> {new_version} listed in {time.time() - started:.1f} s")
        assert training["last_job"]["trigger"] == "requested by Label Studio"
        assert status()["active_version"] == new_version

        headers = {"Authorization": f"Token {label_studio['token']}"}
        listed = requests.get(f"{label_studio['url']}/api/ml/{ml.id}/versions", headers=headers, timeout=30).json()
        assert new_version in listed["versions"]
        setup = requests.post(f"{server['url']}/setup", json={"project": f"{project.id}.1", "schema": CONFIG},
                              timeout=10).json()
        assert setup["model_version"] == new_version

        # "Retrieve predictions": the new version answers, and it has learnt where these objects are
        client.actions.create(id="retrieve_tasks_predictions", project=project.id,
                              selected_items={"all": True, "excluded": []})
        for task in tasks:
            [prediction] = [p for p in client.tasks.get(id=task.id).predictions or [] if p.model_version == new_version]
            [region] = prediction.result
            mask = brush.decode_rle(region["value"]["rle"]).reshape(120, 160, 4)[:, :, 3] > 0
            assert iou(mask, masks[task.data["image"]]) > 0.8
