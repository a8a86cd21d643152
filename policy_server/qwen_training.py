"""LoRA fine-tuning of a Qwen-VL-Chat policy (the released SegAgent-Qwen checkpoint) on exported turns, in
the policy server's environment (transformers 4.32, peft 0.5). The flywheel's job (model/flywheel/job.py)
exports the turns, hands this a spec, then gates and registers the adapter it saved, as for any policy.

    python -m policy_server.qwen_training SPEC.json     (a worker process beside the job)
    rq worker segagent-training-qwen                   (in the policy image: train_adapter(spec) by RQ)

The spec: {"turns": turns.jsonl, "out": adapter folder, "parent": adapter folder or null, "result": where
to write the outcome (optional), "base": model folder or ModelScope id (default: $SEGAGENT_QWEN_MODEL),
"device", "epochs", "learning_rate", "lora_rank", "lora_alpha", "lora_dropout", "accumulation", "seed",
"gradient_checkpointing" (default: on a GPU)}.
Each turn: {"image": a JPEG beside turns.jsonl, "text": the instruction, "answer": the action text}.
The loss is on the answer's tokens and the end of the turn only.
"""
from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from pathlib import Path

from model.tools.loading import resolve_device
from policy_server.qwen_model import DEFAULT_MODEL, LORA_TARGETS, TEXT_TAGS, load_qwen, model_path, prompt_ids

log = logging.getLogger("segagent-qwen-training")
DEFAULTS = {"epochs": 1, "learning_rate": 2e-4, "lora_rank": 16, "lora_alpha": 32, "lora_dropout": 0.05,
            "accumulation": 4, "seed": 0, "device": "auto", "parent": None}


def read_turns(path: Path) -> list[dict]:
    turns = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for turn in turns:
        turn["image"] = str(path.parent / turn["image"])
    return turns


def turn_tensors(tokenizer, turn: dict, device: str):
    """(input ids, labels) of one turn: the labels are the answer and <|im_end|>, the prompt is masked."""
    import torch

    prompt = prompt_ids(tokenizer, turn["image"], turn["text"])
    answer = [*answer_ids(tokenizer, turn["answer"]), tokenizer.im_end_id]
    ids = torch.tensor([prompt + answer], device=device)
    labels = torch.tensor([[-100] * len(prompt) + answer], device=device)
    return ids, labels


def answer_ids(tokenizer, answer: str) -> list[int]:
    """An answer's ids as the model writes them: its <ref>/<box> tags are Qwen-VL's tokens, nothing else is special."""
    return tokenizer.tokenizer.encode(answer, allowed_special=set(TEXT_TAGS), disallowed_special=())


def checkpoint_gradients(model) -> None:
    """Recompute the activations in the backward pass instead of keeping them (the 9.6 B base in bf16 leaves
    little room). Qwen-VL writes the image features into the embeddings' output in place, so that output must
    be a copy that requires grad (a leaf that does cannot be written in place), for the LoRA weights inside the
    checkpointed blocks to get their gradients."""
    qwen = model.base_model.model
    qwen.gradient_checkpointing_enable()
    qwen.transformer.wte.register_forward_hook(lambda module, inputs, output: output.requires_grad_(True).clone())


def lora_model(model, spec: dict):
    from peft import LoraConfig, PeftModel, get_peft_model

    if spec["parent"]:
        return PeftModel.from_pretrained(model, spec["parent"], is_trainable=True)
    return get_peft_model(model, LoraConfig(r=spec["lora_rank"], lora_alpha=spec["lora_alpha"],
                                            lora_dropout=spec["lora_dropout"], target_modules=list(LORA_TARGETS),
                                            task_type="CAUSAL_LM"))


def train_adapter(spec: dict) -> dict:
    """Train, save the adapter to spec["out"], and return (and write to spec["result"]) what happened."""
    import torch

    spec = {**DEFAULTS, **spec}
    device = resolve_device(spec["device"])
    random.seed(spec["seed"])
    torch.manual_seed(spec["seed"])
    base = model_path(spec.get("base") or os.environ.get("SEGAGENT_QWEN_MODEL", DEFAULT_MODEL),
                      os.environ.get("SEGAGENT_QWEN_CACHE"))
    tokenizer, model = load_qwen(base, device)
    model = lora_model(model, spec)
    if spec.get("gradient_checkpointing", device.startswith("cuda")):
        checkpoint_gradients(model)
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=spec["learning_rate"])
    turns = read_turns(Path(spec["turns"]))
    started, epoch_losses = time.time(), []
    for epoch in range(spec["epochs"]):
        order = list(turns)
        random.Random(spec["seed"] + epoch).shuffle(order)
        losses = []
        for index, turn in enumerate(order):
            ids, labels = turn_tensors(tokenizer, turn, device)
            loss = model(input_ids=ids, labels=labels).loss
            (loss / spec["accumulation"]).backward()
            losses.append(float(loss.detach()))
            if (index + 1) % spec["accumulation"] == 0 or index + 1 == len(order):
                optimizer.step()
                optimizer.zero_grad()
        epoch_losses.append(sum(losses) / max(len(losses), 1))
        log.info("epoch %d/%d: mean loss %.4f over %d turns", epoch + 1, spec["epochs"], epoch_losses[-1], len(order))
    model.save_pretrained(spec["out"])
    result = {"epoch_losses": epoch_losses, "turns": len(turns), "seconds": round(time.time() - started, 1),
              "trainable_parameters": sum(p.numel() for p in parameters), "device": device,
              "lora_targets": list(LORA_TARGETS), "base": base}
    if spec.get("result"):
        Path(spec["result"]).write_text(json.dumps(result))
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(json.dumps(train_adapter(json.loads(Path(sys.argv[1]).read_text()))))
