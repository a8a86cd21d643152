"""Qwen-VL-Chat (the released SegAgent-Qwen checkpoint's architecture) loaded with its own remote code, on
the device SEGAGENT_DEVICE names, with the LoRA adapters of trained versions loaded beside the base (peft's
named adapters) and chosen per call. Runs in the policy server's environment (transformers 4.32)."""
from __future__ import annotations

import logging
import os
import threading
import unicodedata
from contextlib import contextmanager

from model.policies.adapters import LoadedAdapters
from model.policies.prompts import SEGAGENT_QWEN_TURN
from model.tools.loading import resolve_device

log = logging.getLogger("segagent-qwen")
DEFAULT_MODEL = "zzzmmz/SegAgent-Model"  # on ModelScope
LORA_TARGETS = ("c_attn", "attn.c_proj", "w1", "w2")  # Qwen-VL-Chat's attention and MLP projections


class PromptError(ValueError):
    """A prompt that cannot be given to the model."""


class AdapterError(RuntimeError):
    """A trained version's adapter does not load on this base."""


# Of Qwen-VL's special tokens, the ones a request's text may carry: SegAgent's prompts and answers use them
TEXT_TAGS = frozenset({"<ref>", "</ref>", "<box>", "</box>", "<quad>", "</quad>"})


def build_prompt(image_path: str, text: str) -> str:
    """The whole chat turn, as SegAgent's evaluation code builds it (the image is referenced by path)."""
    return SEGAGENT_QWEN_TURN.format(image=image_path, text=text)


def prompt_ids(tokenizer, image_path: str, text: str) -> list[int]:
    """The token ids of build_prompt(image_path, text), with `text` (a request's, or a training turn's) taken as
    text: an <img> tag in it, however it is nested, is the characters it is, never a path Qwen-VL would open or
    fetch, and <|im_end|> cannot close the turn. <ref> and <box> stay Qwen-VL's own tokens, as SegAgent wrote them."""
    head, tail = SEGAGENT_QWEN_TURN.split("{text}")
    text = unicodedata.normalize("NFC", text)  # as Qwen-VL's tokenizer does
    ids = tokenizer(head.format(image=image_path)).input_ids
    ids += tokenizer.tokenizer.encode(text, allowed_special=set(TEXT_TAGS), disallowed_special=())
    ids += tokenizer(tail).input_ids
    if ids.count(tokenizer.img_start_id) != 1 or ids.count(tokenizer.img_end_id) != 1:
        raise PromptError("the prompt must hold exactly one image")  # the path itself held an image tag
    return ids


def model_path(model: str, cache_dir: str | None) -> str:
    """A local folder as it is; a ModelScope id fetched into `cache_dir` on first use."""
    if os.path.isdir(model):
        return model
    from modelscope import snapshot_download

    log.info("fetching %s from ModelScope into %s (first start only)", model, cache_dir)
    return snapshot_download(model, cache_dir=cache_dir)


def load_qwen(path: str, device: str):
    """(tokenizer, model) of a Qwen-VL-Chat folder: bf16 on a GPU, fp32 on the CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
    precision = {"bf16": True} if device.startswith("cuda") else {"fp32": True}
    model = AutoModelForCausalLM.from_pretrained(path, device_map=device, trust_remote_code=True, **precision)
    return tokenizer, model


class QwenPolicyModel:
    """Greedy or sampled answers of the base model or of one of its adapters, one generation at a time."""

    def __init__(self, model: str, cache_dir: str | None = None, device: str = "auto", max_adapters: int = 8,
                 max_new_tokens: int = 64):
        self.device = resolve_device(device)
        self.path = model_path(model, cache_dir)
        self.tokenizer, self.model = load_qwen(self.path, self.device)
        self.max_new_tokens = max_new_tokens
        self.adapters = LoadedAdapters(max_adapters)
        self._lock = threading.Lock()
        log.info("Qwen-VL policy %s loaded on %s", self.path, self.device)

    def answer(self, image_path: str, text: str, samples: int, temperature: float,
               adapter: tuple[str, str] | None = None, max_new_tokens: int | None = None) -> list[str]:
        """`adapter`: (name, folder) of a LoRA adapter to answer through; None: the base model."""
        import torch

        input_ids = torch.tensor([prompt_ids(self.tokenizer, image_path, text)], device=self.device)
        stops = [self.tokenizer.im_end_id, self.tokenizer.im_start_id, self.tokenizer.eod_id]
        sampling = samples > 1 or temperature > 0
        options = {"temperature": max(temperature, 0.7), "top_p": 0.95} if sampling else {}
        if adapter is not None:
            self._prepare(*adapter)  # without the lock: generations with other adapters go on
        with self._lock, torch.inference_mode(), self._acting_as(adapter) as qwen:
            output = qwen.generate(input_ids, stop_words_ids=[[stop] for stop in stops], do_sample=sampling,
                                   num_return_sequences=samples,
                                   max_new_tokens=min(max_new_tokens or self.max_new_tokens, self.max_new_tokens),
                                   generation_config=qwen.generation_config, **options)
        return [self._decode(row[input_ids.shape[1]:].tolist(), stops) for row in output]

    def _decode(self, tokens: list[int], stops: list[int]) -> str:
        """The answer up to its first stop token, with Qwen-VL's own tags (<ref>, <box>) kept, as SegAgent's
        evaluation code reads them. Image tokens are left out: an answer has no image, and Qwen-VL's decoder
        fails on an image tag that is not closed."""
        end = next((i for i, token in enumerate(tokens) if token in stops), len(tokens))
        image = {self.tokenizer.img_start_id, self.tokenizer.img_end_id, self.tokenizer.img_pad_id}
        kept = [token for token in tokens[:end] if token not in image]
        return str(self.tokenizer.decode(kept, skip_special_tokens=False)).strip()

    @contextmanager
    def _acting_as(self, adapter: tuple[str, str] | None):
        """The Qwen model to generate with (call with the lock held): its own generate() takes the stop words."""
        from peft import PeftModel

        if adapter is None:
            if isinstance(self.model, PeftModel):
                with self.model.disable_adapter():
                    yield self.model.base_model.model
            else:
                yield self.model
            return
        self._attach(*adapter)
        assert isinstance(self.model, PeftModel)  # _attach made it one
        self.model.set_adapter(adapter[0])
        yield self.model.base_model.model

    def _prepare(self, name: str, folder: str) -> None:
        with self._adapter_errors(name, folder):
            self.adapters.prepare(name, folder)

    def _attach(self, name: str, folder: str) -> None:
        with self._adapter_errors(name, folder):
            self.model = self.adapters.attach(self.model, name, folder)

    @contextmanager
    def _adapter_errors(self, name: str, folder: str):
        try:
            yield
        except Exception as exc:
            log.exception("adapter %s from %s does not load", name, folder)
            raise AdapterError(f"the adapter in {folder} does not load on this base: {exc}") from exc
