"""LoRA adapters loaded by name onto one model with peft, a bounded number at a time: how the in-process
policy (transformers_vlm.py) and the SegAgent-Qwen server (policy_server/qwen_model.py) serve trained
versions. The peft calls used here are the same in peft 0.5 (the Qwen server's environment) and the
backend's peft.

Loading an adapter is two steps. Reading its folder (config and weights: from a disk, or a folder shared
between machines, the slow part) touches no model, so it holds up only the requests for that adapter, and
two requests for it read it once. Attaching what was read changes the model's modules, so it runs under
the lock of the model's owner, as a generation does; it is a copy in memory.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import Any, Protocol

log = logging.getLogger(__name__)


class AdapterFiles(Protocol):
    def read(self, folder: str) -> Any:
        """What attach needs of the adapter in `folder`; raises when the folder holds no whole adapter."""

    def attach(self, model, name: str, read: Any):
        """`model` with `read` attached as `name`, in eval mode (a new wrapper the first time); raises with
        nothing left half attached."""

    def detach(self, model, name: str) -> None: ...


class PeftFiles:
    """LoRA adapters as peft saves them: the config and the weights, read onto the CPU."""

    def read(self, folder: str) -> tuple[Any, dict]:
        from peft import LoraConfig
        from peft.utils import load_peft_weights

        config = LoraConfig.from_pretrained(folder)
        config.inference_mode = True
        return config, load_peft_weights(folder, device="cpu")

    def attach(self, model, name: str, read: tuple[Any, dict]):
        from peft import PeftModel, get_peft_model, set_peft_model_state_dict

        config, weights = read
        first = not isinstance(model, PeftModel)
        if first:
            model = get_peft_model(model, config, adapter_name=name)  # the model class peft picks for the task
        else:
            model.add_adapter(name, config)
        try:
            set_peft_model_state_dict(model, weights, adapter_name=name)
        except Exception:
            if first:
                model.unload()  # the base model's own modules back
            else:
                model.delete_adapter(name)  # its modules without its weights
            raise
        return model.eval()

    def detach(self, model, name: str) -> None:
        model.delete_adapter(name)


class LoadedAdapters:
    """The adapters attached to a model, least recently used first. Beyond `limit` the oldest is detached;
    it is loaded again when next asked for. A caller first prepares an adapter (without the model's lock),
    then attaches it and generates (with it)."""

    def __init__(self, limit: int = 8, files: AdapterFiles | None = None):
        self.limit = limit
        self.files: AdapterFiles = files or PeftFiles()
        self._attached: OrderedDict[str, str] = OrderedDict()  # name -> folder
        self._reads: dict[str, Future] = {}  # name -> its folder's content, read or being read, until attached
        self._lock = threading.Lock()  # guards the two above, never held while reading or attaching

    def prepare(self, name: str, folder: str) -> None:
        """Read the adapter `name` unless it is attached or being read; a second caller waits for the first
        one's read (and gets its error). Call without the model's lock."""
        with self._lock:
            if name in self._attached:
                return
            pending = self._reads.get(name)
            if pending is None:
                pending = self._reads[name] = Future()
                reader = True
            else:
                reader = False
        if not reader:
            pending.result()
            return
        try:
            pending.set_result(self.files.read(folder))
        except BaseException as exc:
            with self._lock:
                self._reads.pop(name, None)  # a failed read is not kept: the next request reads again
            pending.set_exception(exc)
            raise

    def attach(self, model, name: str, folder: str):
        """`model` with the adapter `name` attached, as the most recently used: from what prepare read, or
        read now when another load detached it meanwhile. Call with the model's lock held."""
        with self._lock:
            if name in self._attached:
                self._attached.move_to_end(name)
                return model
            pending = self._reads.get(name)
        try:
            model = self.files.attach(model, name, pending.result() if pending else self.files.read(folder))
        finally:
            with self._lock:
                self._reads.pop(name, None)
        with self._lock:
            self._attached[name] = folder
            evicted = [self._attached.popitem(last=False)[0] for _ in range(len(self._attached) - self.limit)]
        log.info("adapter %s loaded from %s", name, folder)
        for old in evicted:
            self.files.detach(model, old)
            log.info("adapter %s unloaded (more than %d loaded)", old, self.limit)
        return model
