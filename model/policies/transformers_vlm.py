"""In-process transformers VLMs: AutoProcessor + AutoModelForImageTextToText with the model's own chat
template, from a local path or a hub id, optionally with a LoRA adapter (peft) on top.
bf16 on a GPU, fp32 on a CPU (the device: SEGAGENT_DEVICE, resolved by the caller; auto when none is given);
observations of several tasks are generated in one batch.

Trained versions are LoRA adapters of the same base: they are loaded next to each other into the one
model (peft's named adapters) and picked per call, so a promotion costs an adapter's load, not a model's.
"""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from model.policies.actions import Coordinates
from model.policies.adapters import LoadedAdapters
from model.policies.base import Observation, PolicyError
from model.tools.loading import resolve_device

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

log = logging.getLogger(__name__)
PIXEL_GRID = Coordinates()  # [0, 1000) integers, (x, y)


class TransformersPolicy:
    def __init__(self, path: str, adapter: str | None = None, device: str | None = None,
                 max_new_tokens: int = 32, coordinates: Coordinates = PIXEL_GRID):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.name = path if adapter is None else f"{path}+{adapter}"
        self.coordinates = coordinates
        self.device = device or resolve_device("auto")
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        try:
            self.processor = AutoProcessor.from_pretrained(path)
            model: PreTrainedModel | PeftModel = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
            if adapter:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, adapter)
        except Exception as exc:
            raise PolicyError(f"cannot load policy {self.name}: {exc}") from exc
        # PreTrainedModel.to is @wraps(nn.Module.to), typed as typeshed's _Wrapped, which has no __get__: the
        # checker passes the device as `self`
        self.model = model.to(self.device).eval()  # type: ignore[arg-type]
        self.startup_adapter = "default" if adapter else None  # peft's name for the first adapter loaded
        self.processor.tokenizer.padding_side = "left"  # generation continues on the right
        self.max_new_tokens = max_new_tokens
        self._lock = threading.Lock()
        self.adapters = LoadedAdapters()  # the trained versions asked for, a bounded number at a time

    def with_adapter(self, name: str, path: str) -> AdapterPolicy:
        """This policy acting through the LoRA adapter at `path`, loaded under `name`."""
        self._prepare(name, path)
        with self._lock:
            self._attach(name, path)
        return AdapterPolicy(self, name, path)

    def _prepare(self, name: str, path: str) -> None:
        """Read an adapter that is not loaded (without the lock: generations with other adapters go on)."""
        with _adapter_errors(path):
            self.adapters.prepare(name, path)

    def _attach(self, name: str, path: str) -> None:
        """Attach an adapter unless it is attached (call with the lock held)."""
        with _adapter_errors(path):
            self.model = self.adapters.attach(self.model, name, path)

    @contextmanager
    def _adapter(self, name: str | None):
        """The adapter a generation runs with (call with the lock held); None: the policy as configured."""
        from peft import PeftModel

        name = name or self.startup_adapter
        if name is not None:
            self.model.set_adapter(name)
            yield
        elif isinstance(self.model, PeftModel):
            with self.model.disable_adapter():
                yield
        else:
            yield

    def prompt(self, observation: Observation) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": observation.text}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    @torch.inference_mode()
    def act(self, observations: list[Observation], samples: int = 1, temperature: float = 0.0,
            adapter: tuple[str, str] | None = None) -> list[list[str]]:
        """`adapter`: (name, path) of a LoRA adapter to act through; None: the policy as configured."""
        if not observations:
            return []
        inputs = self.processor(text=[self.prompt(o) for o in observations], images=[o.image for o in observations],
                                return_tensors="pt", padding=True).to(self.device)
        sampling = samples > 1 or temperature > 0
        options = {"do_sample": True, "temperature": max(temperature, 0.7), "top_p": 0.95} if sampling else {
            "do_sample": False}
        if adapter is not None:
            self._prepare(*adapter)
        with self._lock:
            if adapter is not None:
                self._attach(*adapter)
            with self._adapter(adapter[0] if adapter else None):
                output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens,
                                             num_return_sequences=samples, **options)
        texts = self.processor.batch_decode(output[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return [texts[i * samples:(i + 1) * samples] for i in range(len(observations))]


@contextmanager
def _adapter_errors(path: str):
    try:
        yield
    except Exception as exc:
        raise PolicyError(f"cannot load adapter {path}: {exc}") from exc


class AdapterPolicy:
    """A TransformersPolicy acting through one of its loaded adapters: a trained version."""

    def __init__(self, policy: TransformersPolicy, adapter: str, path: str):
        self.policy = policy
        self.adapter = (adapter, path)
        self.name = f"{policy.name}@{adapter}"
        self.coordinates = policy.coordinates

    def act(self, observations: list[Observation], samples: int = 1, temperature: float = 0.0) -> list[list[str]]:
        return self.policy.act(observations, samples, temperature, adapter=self.adapter)
