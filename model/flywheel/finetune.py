"""LoRA fine-tuning of the policy on trajectories: one supervised turn per step, exactly as exported
(model/export.py: the observation and instruction inference shows in, the recorded action's text out),
the loss on the answer's tokens only. The split into training and held-out trajectories is by task, stable as data
grows: a task once held out stays held out."""
from __future__ import annotations

import hashlib
import logging
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from model.flywheel.export import supervised_turn
from model.flywheel.trajectories import TrajectoryStore, TrajectorySummary

if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 1
    learning_rate: float = 2e-4
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")  # the language model's attention
    accumulation: int = 4  # turns per optimizer step
    max_turns: int = 4000  # per epoch, the newest trajectories first
    held_out: float = 0.2  # the fraction of tasks held out for the gate
    seed: int = 0
    observation_side: int = 448
    color: str = "green"
    device: str = "auto"  # SEGAGENT_DEVICE: auto, cuda (refused without a usable GPU) or cpu


def split_by_task(summaries: list[TrajectorySummary], fraction: float, seed: int = 0
                  ) -> tuple[list[TrajectorySummary], list[TrajectorySummary]]:
    """(training, held out). A task is held out by a hash of its identity, so the tasks seen so far keep
    their side when new ones arrive; with two tasks or more, at least one is on each side (while too few
    tasks fall under `fraction`, the lowest-ranked one is held out)."""
    def rank(task: tuple[str, int]) -> float:
        digest = hashlib.sha256(f"{seed}:{task[0]}:{task[1]}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2 ** 64

    tasks = sorted({(s.project, s.task_id) for s in summaries}, key=rank)
    held = {t for t in tasks if rank(t) < fraction}
    if len(tasks) >= 2:
        if not held:
            held = {tasks[0]}
        if len(held) == len(tasks):
            held.discard(tasks[-1])
    else:
        held = set()
    train = [s for s in summaries if (s.project, s.task_id) not in held and s.steps]
    return train, [s for s in summaries if (s.project, s.task_id) in held and s.steps]


@dataclass(frozen=True)
class Turn:
    trajectory_id: int
    position: int


def turns_of(summaries: list[TrajectorySummary], limit: int) -> list[Turn]:
    turns = [Turn(s.id, p) for s in sorted(summaries, key=lambda s: -s.id) for p in range(s.steps)]
    return turns[:limit]


class TurnReader:
    """A turn's observation, instruction and answer, read from the store (the last trajectories and
    images read are kept: turns of one trajectory come together more often than not)."""

    def __init__(self, store: TrajectoryStore, color: str, side: int, observation: str = "segagent"):
        self.store, self.color, self.side, self.observation = store, color, side, observation
        self._record = lru_cache(maxsize=8)(store.record)
        self._image = lru_cache(maxsize=4)(store.image)

    def __call__(self, turn: Turn) -> tuple[Image.Image, str, str]:
        record = self._record(turn.trajectory_id)
        return supervised_turn(self._image(record.image_sha), record, record.steps[turn.position], self.color,
                               self.side, self.observation)


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def device_and_dtype(device: str) -> tuple[str, torch.dtype]:
    """The device SEGAGENT_DEVICE resolves to, and the dtype trained in there."""
    import torch

    from model.tools.loading import resolve_device

    resolved = resolve_device(device)
    return resolved, torch.bfloat16 if resolved == "cuda" else torch.float32


def answer_loss(model, processor, picture, text: str, answer: str, device: str) -> torch.Tensor:
    """The policy's loss on `answer` (and the end of its turn) after the user turn (picture, text)."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    batch = processor(text=[prompt + answer + processor.tokenizer.eos_token], images=[picture],
                      return_tensors="pt").to(device)
    prompt_length = processor(text=[prompt], images=[picture], return_tensors="pt")["input_ids"].shape[1]
    labels = batch["input_ids"].clone()
    labels[:, :prompt_length] = -100
    return model(**batch, labels=labels).loss


def train_lora(base: str, store: TrajectoryStore, train: list[TrajectorySummary], out: Path, config: TrainConfig,
               parent_adapter: str | None = None, progress: Callable[[float, float], None] | None = None) -> dict:
    """Fine-tune a LoRA adapter on `train` (continuing `parent_adapter`, else a new one on the base),
    saved to `out`; returns the mean loss of each epoch and counts."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from tqdm import tqdm
    from transformers import AutoModelForImageTextToText, AutoProcessor

    seed_everything(config.seed)
    device, dtype = device_and_dtype(config.device)
    processor = AutoProcessor.from_pretrained(base)
    base_model = AutoModelForImageTextToText.from_pretrained(base, dtype=dtype)
    model: PeftModel
    if parent_adapter:
        model = PeftModel.from_pretrained(base_model, parent_adapter, is_trainable=True)
    else:
        model = get_peft_model(base_model, LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha,
                                                      lora_dropout=config.lora_dropout,
                                                      target_modules=list(config.lora_targets)))
    del base_model  # the peft model holds it: `del model` below must free it all
    model.to(device).train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate)
    turns = turns_of(train, config.max_turns)
    read = TurnReader(store, config.color, config.observation_side)
    epoch_losses, started, total = [], time.time(), config.epochs * len(turns)
    with tqdm(total=total, desc="LoRA", unit="turn", file=sys.stderr, mininterval=2) as bar:
        for epoch in range(config.epochs):
            order = list(turns)
            random.Random(config.seed + epoch).shuffle(order)
            losses = []
            for index, turn in enumerate(order):
                loss = answer_loss(model, processor, *read(turn), device)
                (loss / config.accumulation).backward()
                losses.append(float(loss.detach()))
                if (index + 1) % config.accumulation == 0 or index + 1 == len(order):
                    optimizer.step()
                    optimizer.zero_grad()
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", epoch=epoch + 1)
                if progress:
                    progress((epoch * len(order) + index + 1) / max(total, 1), float(np.mean(losses[-20:])))
            epoch_losses.append(float(np.mean(losses)))
            log.info("epoch %d/%d: mean loss %.4f over %d turns", epoch + 1, config.epochs, epoch_losses[-1],
                     len(order))
    model.save_pretrained(str(out))
    del model, optimizer
    if device == "cuda":
        torch.cuda.empty_cache()  # the gate loads the policy again in this process
    return {"epoch_losses": epoch_losses, "turns": len(turns), "seconds": round(time.time() - started, 1),
            "trainable_parameters": sum(p.numel() for p in parameters), "device": device}
