"""In-process transformers VLMs: AutoProcessor + AutoModelForImageTextToText with the model's own chat
template, from a local path or a hub id, optionally with a LoRA adapter (peft) on top.
bf16 on a GPU, fp32 on a CPU; observations of several tasks are generated in one batch."""
from __future__ import annotations

import logging
import threading

import torch

from ..actions import Coordinates
from .base import Observation, PolicyError

log = logging.getLogger(__name__)


class TransformersPolicy:
    def __init__(self, path: str, adapter: str | None = None, device: str | None = None,
                 max_new_tokens: int = 32, coordinates: Coordinates = Coordinates()):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.name = path if adapter is None else f"{path}+{adapter}"
        self.coordinates = coordinates
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        try:
            self.processor = AutoProcessor.from_pretrained(path)
            model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
            if adapter:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, adapter)
        except Exception as exc:
            raise PolicyError(f"cannot load policy {self.name}: {exc}") from exc
        self.model = model.to(self.device).eval()
        self.processor.tokenizer.padding_side = "left"  # generation continues on the right
        self.max_new_tokens = max_new_tokens
        self._lock = threading.Lock()

    def prompt(self, observation: Observation) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": observation.text}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    @torch.inference_mode()
    def act(self, observations: list[Observation], samples: int = 1, temperature: float = 0.0) -> list[list[str]]:
        if not observations:
            return []
        inputs = self.processor(text=[self.prompt(o) for o in observations], images=[o.image for o in observations],
                                return_tensors="pt", padding=True).to(self.device)
        sampling = samples > 1 or temperature > 0
        options = {"do_sample": True, "temperature": max(temperature, 0.7), "top_p": 0.95} if sampling else {
            "do_sample": False}
        with self._lock:
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, num_return_sequences=samples,
                                         **options)
        texts = self.processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return [texts[i * samples:(i + 1) * samples] for i in range(len(observations))]
