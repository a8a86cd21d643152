"""Export trajectories as supervised turns for fine-tuning: one turn per step, the observation (the
image with the mask before the step overlaid) and the instruction in, the action text out. ShareGPT
format with LLaMA-Factory's dataset_info.json, the trainer SegAgent recommends. The prompt, the overlay
and the action text are the very ones inference uses (model/policies/prompts.py, model/policies/actions.py), in an
observation format (by default segagent, the in-process VLMs' that training fine-tunes); the exported images are the
very bytes a remote policy of that format is sent."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from model.flywheel.trajectories import StepRecord, TrajectoryRecord, TrajectoryStore
from model.policies.actions import action_for_click, format_action, parse_action
from model.policies.prompts import instruction, observation_format, observation_image
from model.policies.remote import ANSWER_FORMATS

if TYPE_CHECKING:
    from PIL import Image


def supervised_turn(image, record: TrajectoryRecord, step: StepRecord, color: str = "green", max_side: int = 448,
                    observation: str = "segagent") -> tuple[Image.Image, str, str]:
    """One step as the policy is taught it: (observation picture, instruction, action text)."""
    height, width = image.shape[:2]
    picture = observation_image(image, step.mask_before, color, max_side, observation)
    return picture, instruction(record.prompt or record.label), format_action(action_for_click(step.click, width, height))


def export_sharegpt(store: TrajectoryStore, out: str | Path, project: str | None = None, color: str = "green",
                    max_side: int = 448, name: str = "segagent", observation: str = "segagent") -> int:
    out = Path(out)
    form = observation_format(observation)
    (out / "images").mkdir(parents=True, exist_ok=True)
    examples = []
    for record in store.records(project):
        image = store.image(record.image_sha)
        for position, step in enumerate(record.steps):
            path = f"images/{record.id}_{position}{form.suffix}"
            picture, text, action = supervised_turn(image, record, step, color, max_side, observation)
            action = format_action(parse_action(action), ANSWER_FORMATS[observation])  # as that family writes it
            (out / path).write_bytes(form.encode(picture))
            examples.append({
                "conversations": [{"from": "human", "value": "<image>" + text}, {"from": "gpt", "value": action}],
                "images": [path],
                "source": record.source, "task_id": record.task_id, "project": record.project,
            })
    (out / f"{name}.json").write_text(json.dumps(examples, indent=1))
    (out / "dataset_info.json").write_text(json.dumps({name: {
        "file_name": f"{name}.json", "formatting": "sharegpt",
        "columns": {"messages": "conversations", "images": "images"},
        "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}}},
        indent=2))
    return len(examples)
